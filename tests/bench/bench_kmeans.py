"""Benchmark of the `kmeans` stage against scikit-learn's KMeans: same data, same linear init, same max_iter.

Run:  python tests/bench/bench_kmeans.py [--n 10000000] [--clusters 256] [--max-iter 30]
Needs scikit-learn (benchmark only: `pip install scikit-learn`). Prints a markdown table; the target is >= 50x
faster than scikit-learn with an SSE no worse (within 1e-6 relative).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from dcframe_plugins.kmeans import Kmeans

from dcframe import Dense


def laplace_weights(n: int, seed: int) -> np.ndarray:
    """Laplace-distributed float32 weights, the shape of trained dense layers' weight histograms."""
    return np.random.default_rng(seed).laplace(scale=0.02, size=n).astype(np.float32)


def sse(x: np.ndarray, approx: np.ndarray) -> float:
    return float(np.sum(np.square(x.astype(np.float64) - approx.astype(np.float64))))


def run_ours(x: np.ndarray, clusters: int, max_iter: int, repeat: int) -> tuple[float, float]:
    """Best time of `repeat` encode + decode runs through the stage, and the SSE of the decoded tensor."""
    stage = Kmeans(clusters=clusters, init="linear", max_iter=max_iter, tol=0.0)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        streams, meta = stage.encode(Dense.of(x))
        out = stage.decode(streams, meta)
        best = min(best, time.perf_counter() - start)
    return best, sse(x, out.array)


def run_sklearn(x: np.ndarray, clusters: int, max_iter: int) -> tuple[float, float, int]:
    """One fit of scikit-learn's Lloyd KMeans from the same linear init: time, SSE, iterations run."""
    from sklearn.cluster import KMeans

    init = np.linspace(x.min(), x.max(), clusters, dtype=np.float64).astype(x.dtype).reshape(-1, 1)
    model = KMeans(n_clusters=clusters, init=init, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd",
                   random_state=0)
    start = time.perf_counter()
    model.fit(x.reshape(-1, 1))
    elapsed = time.perf_counter() - start
    return elapsed, sse(x, model.cluster_centers_[model.labels_, 0]), int(model.n_iter_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (the best counts); scikit-learn runs once")
    args = parser.parse_args()

    x = laplace_weights(args.n, args.seed)
    ours_time, ours_sse = run_ours(x, args.clusters, args.max_iter, args.repeat)
    ref_time, ref_sse, ref_iter = run_sklearn(x, args.clusters, args.max_iter)
    conv_time, conv_sse = run_ours(x, args.clusters, 300, 1)

    print(f"{args.n:,} float32 Laplace(0, 0.02) weights, {args.clusters} clusters, linear init, tol=0\n")
    print("| implementation | max_iter | time (s) | SSE | speed-up vs scikit-learn | SSE / scikit-learn's |")
    print("|---|---|---|---|---|---|")
    print(f"| scikit-learn KMeans (lloyd, n_init=1; ran {ref_iter} iterations) | {args.max_iter} | {ref_time:.2f} "
          f"| {ref_sse:.6g} | 1.0x | 1.000000 |")
    print(f"| dcframe kmeans (encode + decode) | {args.max_iter} | {ours_time:.3f} | {ours_sse:.6g} "
          f"| {ref_time / ours_time:.0f}x | {ours_sse / ref_sse:.6f} |")
    print(f"| dcframe kmeans, default max_iter | 300 | {conv_time:.3f} | {conv_sse:.6g} "
          f"| {ref_time / conv_time:.0f}x | {conv_sse / ref_sse:.6f} |")
    ok = ref_time / ours_time >= 50 and ours_sse <= ref_sse * (1 + 1e-6)
    print(f"\ntarget (>= 50x faster at the same max_iter, SSE no worse): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
