"""Benchmark of the `huffman` stage against order-0 entropy, the optimal length-limited code and zstd (same run).

Run: python tests/bench/bench_huffman.py [--n 10000000] [--repeat 3] [--medium 10000,100000,1000000]
Prints markdown tables: sizes (payload vs optimal code, side information, total vs entropy and zstd -19),
speeds on --n symbols (huffman encode vs zstd -3 compression, huffman decode vs zstd decompression) and decode speeds on
medium streams (the encoder's segment size and count, side information, huffman vs zstd decode), symbols per second.
"""

from __future__ import annotations

import argparse
import heapq
import time

import numpy as np
import zstandard
from dcframe_plugins.huffman import Huffman

from dcframe import Symbols


def laplace_indices(n: int, levels: int = 32, seed: int = 0, spacing: str = "linear") -> np.ndarray:
    """k-means-like indices: Laplace weights snapped to `levels` centroids (linear: min..max; density: quantiles)."""
    w = np.random.default_rng(seed).laplace(size=n).astype(np.float32)
    if spacing == "density":  # equal-mass bins
        centroids = np.quantile(w, (np.arange(levels) + 0.5) / levels)
    else:  # the paper's linear initialization, then (kmeans) Lloyd iterations on a sample
        centroids = np.linspace(w.min(), w.max(), levels)
        sample = np.sort(w[:: max(1, n // 200_000)]).astype(np.float64)
        for _ in range(60 if spacing == "kmeans" else 0):
            cells = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, sample)
            sums, counts = np.bincount(cells, sample, levels), np.bincount(cells, minlength=levels)
            centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    edges = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(edges, w).astype(np.uint8)


def entropy_bits(freq: np.ndarray) -> float:
    p = freq[freq > 0] / freq.sum()
    return float(-(freq[freq > 0] * np.log2(p)).sum())


def huffman_reference(freq: np.ndarray) -> tuple[int, int]:
    """Unlimited Huffman cost in bits (sum of merged weights) and its deepest leaf, by a plain heap."""
    heap = [(int(f), i, 0) for i, f in enumerate(freq) if f > 0]
    heapq.heapify(heap)
    total, tie = 0, len(heap)
    while len(heap) > 1:
        (a, _, da), (b, _, db) = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, (a + b, tie, max(da, db) + 1))
        tie += 1
    return total, heap[0][2]


def optimal_limited_bits(freq: np.ndarray, limit: int) -> int:
    """Reference: fewest bits of a complete prefix code with lengths <= limit, by dynamic programming over levels.

    Symbols sorted by falling frequency take non-decreasing lengths; at each level, `a` open nodes either become
    leaves (the next symbols) or split into two nodes of the next level.
    """
    f = sorted((int(x) for x in freq if x > 0), reverse=True)
    n = len(f)
    if n == 1:
        return f[0]
    prefix = [0]
    for x in f:
        prefix.append(prefix[-1] + x)
    inf = float("inf")
    best = {}  # (level, i, a) -> cost of placing symbols i.. into a open nodes at this level
    for level in range(limit, 0, -1):
        for i in range(n, -1, -1):
            for a in range(0, n - i + 1):
                if i == n:
                    best[level, i, a] = 0 if a == 0 else inf
                    continue
                value = inf
                for k in range(0, a + 1):  # k of the a nodes become leaves of symbols i..i+k-1
                    rest = 2 * (a - k)
                    if rest > n - i - k or (rest and level == limit):
                        continue
                    tail = 0 if rest == 0 and i + k == n else best.get((level + 1, i + k, rest), inf)
                    value = min(value, level * (prefix[i + k] - prefix[i]) + tail)
                best[level, i, a] = value
    return int(best[1, 0, 2])


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def size_rows(stage: Huffman, name: str, symbols: np.ndarray) -> list[str]:
    n = symbols.size
    freq = np.bincount(symbols, minlength=32)
    outputs, meta = stage.encode(Symbols(symbols, 32))
    data = outputs["data"].data
    tsize = int.from_bytes(data[:4], "little")
    lengths = np.frombuffer(data, np.uint8, count=tsize, offset=4).astype(np.int64)
    code_bits = int(np.dot(freq[:tsize], lengths))
    ref_bits, depth = huffman_reference(freq)
    if depth > stage.max_bits:
        ref_bits = optimal_limited_bits(freq, stage.max_bits)
    optimal = "yes" if code_bits == ref_bits else "NO"
    payload_bytes = code_bits / 8
    side = len(data) - payload_bytes
    h = entropy_bits(freq) / 8
    z19 = len(zstandard.ZstdCompressor(level=19).compress(symbols.tobytes()))
    decoded = stage.decode(outputs, meta).array
    assert decoded.tobytes() == symbols.tobytes()
    return [f"| {name} | {n:,} | {entropy_bits(freq) / n:.4f} | {code_bits / n:.4f} "
            f"| {optimal} (Huffman depth {depth}) "
            f"| {100 * side / payload_bytes:.3f}% | {len(data):,} | {100 * (len(data) / h - 1):+.3f}% "
            f"| {z19:,} ({100 * (z19 / h - 1):+.1f}%) |"]


def speed_row(stage: Huffman, spacing: str, n: int, repeat: int) -> str:
    """Huffman and zstd on the same symbols (as uint8 bytes for zstd), best of `repeat` runs each."""
    symbols = laplace_indices(n, spacing=spacing)
    raw = symbols.tobytes()
    stream = Symbols(symbols, 32)
    t_enc, (outputs, meta) = best_of(repeat, lambda: stage.encode(stream))
    t_dec, decoded = best_of(repeat, lambda: stage.decode(outputs, meta))
    assert decoded.array.tobytes() == raw
    z3 = zstandard.ZstdCompressor(level=3)
    t_z3, frame3 = best_of(repeat, lambda: z3.compress(raw))
    frame19 = zstandard.ZstdCompressor(level=19).compress(raw)
    dz = zstandard.ZstdDecompressor()
    t_zd3, out3 = best_of(repeat, lambda: dz.decompress(frame3))
    t_zd19, out19 = best_of(repeat, lambda: dz.decompress(frame19))
    assert out3 == raw and out19 == raw
    return (f"| laplace {spacing}, {n:,} | {n / t_enc / 1e6:.1f} M | {n / t_z3 / 1e6:.1f} M | 1/{t_enc / t_z3:.1f} "
            f"| {n / t_dec / 1e6:.1f} M | {n / t_zd3 / 1e6:.0f} M / {n / t_zd19 / 1e6:.0f} M "
            f"| 1/{t_dec / t_zd3:.1f} / 1/{t_dec / t_zd19:.1f} |")


def medium_row(stage: Huffman, n: int, repeat: int) -> str:
    """Decode speed on a stream of n k-means indices: the segments the encoder chose, and zstd in the same run."""
    symbols = laplace_indices(n, spacing="kmeans")
    raw = symbols.tobytes()
    outputs, meta = stage.encode(Symbols(symbols, 32))
    data = outputs["data"].data
    tsize = int.from_bytes(data[:4], "little")
    seg = int.from_bytes(data[4 + tsize:8 + tsize], "little")
    lengths = np.frombuffer(data, np.uint8, count=tsize, offset=4).astype(np.int64)
    payload = int(np.dot(np.bincount(symbols, minlength=tsize)[:tsize], lengths)) / 8
    t_dec, decoded = best_of(repeat, lambda: stage.decode(outputs, meta))
    assert decoded.array.tobytes() == raw
    frame3 = zstandard.ZstdCompressor(level=3).compress(raw)
    frame19 = zstandard.ZstdCompressor(level=19).compress(raw)
    dz = zstandard.ZstdDecompressor()
    t_zd3, _ = best_of(repeat, lambda: dz.decompress(frame3))
    t_zd19, _ = best_of(repeat, lambda: dz.decompress(frame19))
    return (f"| {n:,} | {seg:,} x {-(-n // seg):,} | {100 * (len(data) - payload) / payload:.2f}% "
            f"| {len(data):,} / {len(frame19):,} | {n / t_dec / 1e6:.1f} M "
            f"| {n / t_zd3 / 1e6:.0f} M / {n / t_zd19 / 1e6:.0f} M | 1/{t_dec / t_zd3:.1f} / 1/{t_dec / t_zd19:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--medium", default="10000,100000,1000000", help="symbol counts of the medium-size table")
    args = parser.parse_args()
    stage = Huffman()
    print(f"huffman config: {stage.get_config()}\n")
    print("| data | symbols | entropy bits/sym | code bits/sym | = optimal limited code? | side info / payload "
          "| huffman bytes | vs entropy | zstd -19 bytes (vs entropy) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spacing in ("kmeans", "linear", "density"):
        for n in (1_000_000, args.n):
            for row in size_rows(stage, f"laplace 32 levels, {spacing}", laplace_indices(n, spacing=spacing)):
                print(row)

    print("\n| data (10^7-style run) | huffman encode sym/s | zstd -3 compress sym/s | ratio | huffman decode sym/s "
          "| zstd decompress sym/s (of -3 / -19) | ratio (vs -3 / -19) |")
    print("|---|---|---|---|---|---|---|")
    for spacing in ("kmeans", "linear", "density"):
        print(speed_row(stage, spacing, args.n, args.repeat))

    print("\n| medium stream, laplace kmeans, symbols | segment size x segments | side info / payload "
          "| huffman bytes / zstd -19 bytes | huffman decode sym/s | zstd decompress sym/s (of -3 / -19) "
          "| ratio (vs -3 / -19) |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.medium.split(",")):
        print(medium_row(stage, n, max(args.repeat, 5)))

if __name__ == "__main__":
    main()
