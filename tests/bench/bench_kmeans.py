"""Benchmark of the `kmeans` stage: SSE against the exact optimum, and time, for the old default, the new default,
k-means++ and scikit-learn, all measured in the same run.

Run:  python tests/bench/bench_kmeans.py [--n 1000000,10000000] [--bits 4,6,8] [--repeat 5] [--sklearn-max-n 1000000]
The data are 16-bit tensors, so the exact optimum is computable (method="optimal": dynamic programming over at most
65,536 distinct values): float16 Laplace and Gaussian weights, and float32 Laplace weights rounded to 65,536 levels.
scikit-learn (optional: `pip install scikit-learn`) runs with its defaults (greedy k-means++, n_init=1) on tensors of
at most --sklearn-max-n values. Target: the default within 1% of the optimum at no more than 2x the old default's time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from dcframe_plugins.kmeans import Kmeans

from dcframe import Dense

OLD = {"init": "linear", "method": "lloyd"}  # the defaults before the near-optimal ones
ROWS = [("old default (linear, lloyd)", OLD), ("new default (compander, refine)", {}),
        ("kmeans++, lloyd", {"init": "kmeans++", "method": "lloyd"})]


def tensor(kind: str, n: int, seed: int) -> Dense:
    """Weights with at most 65,536 distinct values, the shape of trained layers' weight histograms."""
    rng = np.random.default_rng(seed)
    if kind == "F16 Laplace":
        return Dense.of(rng.laplace(scale=0.02, size=n).astype(np.float16))
    if kind == "F16 Gaussian":
        return Dense.of(rng.normal(scale=0.02, size=n).astype(np.float16))
    x = rng.laplace(scale=0.02, size=n)
    step = (x.max() - x.min()) / 65535
    return Dense.of((np.round((x - x.min()) / step) * step + x.min()).astype(np.float32))


def sse(dense: Dense, approx: np.ndarray) -> float:
    return float(np.sum(np.square(dense.values().astype(np.float64).ravel() - approx.astype(np.float64).ravel())))


def timed(runs: list[Callable[[], np.ndarray]], repeat: int) -> list[tuple[float, np.ndarray]]:
    """Best time of `repeat` runs of each, and its last result; the runs take turns, so a machine shared with other
    work slows them alike."""
    best, out = [float("inf")] * len(runs), [None] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            out[i] = run()
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, out, strict=True))


def ours(dense: Dense, bits: int, config: dict) -> Callable[[], np.ndarray]:
    stage = Kmeans(bits=bits, **config)

    def run() -> np.ndarray:
        streams, meta = stage.encode(dense)
        return stage.decode(streams, meta).values()
    return run


def sklearn(dense: Dense, bits: int) -> Callable[[], np.ndarray] | None:
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        return None
    x = dense.values().astype(np.float64).reshape(-1, 1)

    def run() -> np.ndarray:
        model = KMeans(n_clusters=1 << bits, n_init=1, random_state=0).fit(x)
        return model.cluster_centers_[model.labels_, 0]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000000,10000000", help="tensor sizes, comma-separated")
    parser.add_argument("--bits", default="4,6,8", help="bit widths, comma-separated")
    parser.add_argument("--kinds", default="F16 Laplace,F16 Gaussian,F32 Laplace 65536 levels")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each of ours, in turns (the best counts)")
    parser.add_argument("--sklearn-max-n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    names = [name for name, _ in ROWS] + ["scikit-learn KMeans"]
    print("SSE / the exact optimum (method=optimal), and seconds (encode + decode; scikit-learn: fit)\n")
    print("| data | n | bits | " + " | ".join(f"{name}: SSE/opt | s" for name in names) + " | new/old time |")
    print("|---|---|---|" + "---|---|" * len(names) + "---|")
    worst_sse, worst_time = 0.0, 0.0
    for n in (int(v) for v in args.n.split(",")):
        for kind in args.kinds.split(","):
            dense = tensor(kind, n, args.seed)
            for bits in (int(b) for b in args.bits.split(",")):
                optimum = sse(dense, ours(dense, bits, {"method": "optimal"})())
                cells, times = [], []
                results = timed([ours(dense, bits, config) for _, config in ROWS], args.repeat)
                for (_, config), (seconds, out) in zip(ROWS, results, strict=True):
                    cells.append(f"{sse(dense, out) / optimum:.4f} | {seconds:.3f}")
                    times.append(seconds)
                    if not config:
                        worst_sse = max(worst_sse, sse(dense, out) / optimum)
                reference = sklearn(dense, bits) if n <= args.sklearn_max_n else None
                if reference is None:
                    cells.append("- | -")
                else:
                    [(seconds, out)] = timed([reference], 1)
                    cells.append(f"{sse(dense, out) / optimum:.4f} | {seconds:.2f}")
                worst_time = max(worst_time, times[1] / times[0])
                print(f"| {kind} | {n:,} | {bits} | " + " | ".join(cells) + f" | {times[1] / times[0]:.2f}x |")
    ok = worst_sse <= 1.01 and worst_time <= 2
    print(f"\nnew default: worst SSE/optimum {worst_sse:.4f}, worst time {worst_time:.2f}x the old default's; "
          f"target (<= 1.01 at <= 2x): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
