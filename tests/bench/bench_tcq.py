"""Benchmark of `tcq | rans` against `uniform | rans` at equal distortion (trellis-coded quantization, four states).

Run:  python tests/bench/bench_tcq.py [--n 1048576] [--rel-steps 0.25 0.5 1.0 1.6] [--model HF_FOLDER]
For Laplace and Gaussian weights shaped [n / 1024, 1024] (tcq's runs are the rows), and with --model for the token
embedding and one feed-forward matrix of a real checkpoint, `uniform(step, dead_zone=0.2)` (the presets' dead zone)
sets the mean squared error at each relative step; the tcq step with the same MSE is found by bisection. The table gives
each chain's bits per weight as stored (rANS payload, tables, codebooks, levels and meta), the ratio tcq / uniform, and
encode and decode seconds of the quantizer stage (one run each; the bisection is not timed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgpack
import numpy as np
from dcframe_plugins.rans import Rans
from dcframe_plugins.tcq import Tcq
from dcframe_plugins.uniform import Uniform

from dcframe import Dense, Stage


def coded(stage: Stage, w: np.ndarray) -> tuple[float, float, float, float]:
    """MSE, stored bits per weight, encode and decode seconds of `stage | rans` on `w`."""
    t = time.perf_counter()
    outputs, meta = stage.encode(Dense.of(w))
    t_enc = time.perf_counter() - t
    nbytes = len(msgpack.packb(meta, use_bin_type=True))
    for stream in outputs.values():
        data, rmeta = Rans().encode(stream)
        nbytes += len(data["data"].data) + len(msgpack.packb(rmeta, use_bin_type=True))
    t = time.perf_counter()
    decoded = stage.decode(outputs, meta).array
    t_dec = time.perf_counter() - t
    mse = float(np.mean((decoded.astype(np.float64) - w) ** 2))
    return mse, 8 * nbytes / w.size, t_enc, t_dec


def matching_tcq_step(w: np.ndarray, target: float, guess: float, iterations: int = 18) -> float:
    """The largest tcq step (within 0.1%) whose MSE is at most `target`."""
    low, high = guess / 2, guess * 3
    for _ in range(iterations):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if coded(Tcq(step=mid), w)[0] <= target else (low, mid)
    return low


def layers(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    rows = max(1, args.n // 1024)
    out = [("laplace", rng.laplace(scale=0.02, size=(rows, 1024)).astype(np.float32)),
           ("gaussian", rng.normal(scale=0.02, size=(rows, 1024)).astype(np.float32))]
    if args.model:
        from safetensors.numpy import load_file
        tensors = load_file(next(Path(args.model).glob("*.safetensors")))
        for name in sorted(tensors):
            if name.endswith("word_embeddings.weight") or name.endswith("layer.2.intermediate.dense.weight"):
                out.append((name, tensors[name].astype(np.float32)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 20, help="weights per synthetic layer (default 2^20)")
    parser.add_argument("--rel-steps", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.6],
                        help="uniform steps relative to the layer's RMS")
    parser.add_argument("--model", help="a Hugging Face folder: also its token embedding and one FFN matrix")
    args = parser.parse_args()
    print("| layer | weights | uniform rel step | MSE / RMS^2 | uniform bits/w | tcq bits/w | tcq / uniform | "
          "uniform enc s | tcq enc s | uniform dec s | tcq dec s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, w in layers(args):
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        for rel in args.rel_steps:
            mse, u_bits, u_enc, u_dec = coded(Uniform(step=rel * rms, dead_zone=0.2), w)
            step = matching_tcq_step(w, mse, 1.2 * rel * rms)
            t_mse, t_bits, t_enc, t_dec = coded(Tcq(step=step), w)
            print(f"| {name} | {w.size:,} | {rel} | {mse / rms**2:.4g} (tcq {t_mse / rms**2:.4g}) | {u_bits:.3f} | "
                  f"{t_bits:.3f} | {t_bits / u_bits:.3f} | {u_enc:.2f} | {t_enc:.2f} | {u_dec:.3f} | {t_dec:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
