"""Benchmark of `uniform | huffman` against `kmeans | huffman` at equal distortion (issue 13 item 2).

Run:  python tests/bench/bench_uniform.py [--n 1000000] [--bits 3 4 5 6] [--init linear kmeans++] [--dead-zone 0 0.2]
For each distribution (Laplace, Gaussian) and each kmeans(bits=b, init=...), the uniform step whose MSE equals
kmeans's is found by bisection (for each dead zone; the row keeps the smaller file); the table gives both chains'
bits per weight (Huffman payload + tables + codebook + meta, as stored), the order-0 entropy of each index stream,
and encode seconds (one stage encode plus huffman; the bisection is not timed). The issue's target: uniform >= 10%
fewer bits.
"""

from __future__ import annotations

import argparse
import math
import time

import msgpack
import numpy as np
from dcframe_plugins.huffman import Huffman
from dcframe_plugins.kmeans import Kmeans
from dcframe_plugins.uniform import Uniform

from dcframe import Dense, Stage


def weights(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Float32 weights with a trained layer's scale: Laplace or Gaussian."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(scale=0.02, size=n) if kind == "laplace" else rng.normal(scale=0.02, size=n)
    return x.astype(np.float32)


def quantize(stage: Stage, x: np.ndarray) -> tuple[float, int, float, float]:
    """Encode x with `stage | huffman`: (MSE, stored bytes, entropy of the indices in bits/weight, encode seconds)."""
    start = time.perf_counter()
    outputs, meta = stage.encode(Dense.of(x))
    indices = outputs["indices"]
    coded, huffman_meta = Huffman().encode(indices)
    elapsed = time.perf_counter() - start
    decoded = stage.decode(outputs, meta).array.astype(np.float64)
    size = len(coded["data"].data) + len(msgpack.packb(meta)) + len(msgpack.packb(huffman_meta))
    p = np.bincount(indices.array, minlength=indices.alphabet) / indices.array.size
    p = p[p > 0]
    return float(np.mean((decoded - x) ** 2)), size, float(-(p * np.log2(p)).sum()), elapsed


def matching_step(x: np.ndarray, target: float, dead_zone: float, iterations: int = 40) -> float:
    """The largest step (geometric bisection) whose uniform MSE is at most `target` (MSE grows with the step)."""
    low, high = math.sqrt(target), math.sqrt(12 * target) * 4  # MSE ~ step^2 / 12 for fine steps
    while quantize(Uniform(step=low, dead_zone=dead_zone), x)[0] > target:
        low /= 2
    for _ in range(iterations):
        mid = math.sqrt(low * high)
        if quantize(Uniform(step=mid, dead_zone=dead_zone), x)[0] <= target:
            low = mid
        else:
            high = mid
        if high / low < 1 + 1e-4:
            break
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--init", nargs="+", default=["linear", "kmeans++"], help="kmeans inits to compare against")
    parser.add_argument("--dead-zone", type=float, nargs="+", default=[0.0, 0.2],
                        help="uniform dead zones tried at each MSE (the row shows the one with the fewest bits)")
    args = parser.parse_args()
    print(f"n = {args.n} float32 weights per layer, scale 0.02; sizes as stored (Huffman payload and tables, "
          f"codebook, meta); uniform: the best of dead_zone in {args.dead_zone}\n")
    print("| layer | kmeans | MSE | kmeans+huffman bits/w | uniform step / RMS, dead zone | uniform MSE | "
          "uniform+huffman bits/w | uniform / kmeans | entropy kmeans / uniform | encode s kmeans / uniform |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("laplace", "gaussian"):
        x = weights(kind, args.n)
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        for init in args.init:
            for bits in args.bits:
                k_mse, k_size, k_entropy, k_time = quantize(Kmeans(bits=bits, init=init), x)
                best = None
                for dead_zone in args.dead_zone:
                    step = matching_step(x, k_mse, dead_zone)
                    result = quantize(Uniform(step=step, dead_zone=dead_zone), x)
                    if best is None or result[1] < best[2][1]:
                        best = (step, dead_zone, result)
                step, dead_zone, (u_mse, u_size, u_entropy, u_time) = best
                k_bpw, u_bpw = 8 * k_size / x.size, 8 * u_size / x.size
                print(f"| {kind} | {init}, {bits} bits | {k_mse:.3e} | {k_bpw:.3f} | {step / rms:.4f}, {dead_zone} | "
                      f"{u_mse:.3e} | {u_bpw:.3f} | {u_bpw / k_bpw:.3f} ({100 * (1 - u_bpw / k_bpw):.1f}% fewer) | "
                      f"{k_entropy:.3f} / {u_entropy:.3f} | {k_time:.2f} / {u_time:.2f} |")


if __name__ == "__main__":
    main()
