"""Benchmark of the `rans` stage against the order-0 entropy, the `huffman` stage and zstd -19 (same run, same symbols).

Run: python tests/bench/bench_rans.py [--sizes 10000,100000,1000000,10000000] [--levels 32,256] [--repeat 3]
Prints a markdown table per alphabet: stream size over the order-0 bound (every byte of table, states, offsets
included), and encode / decode speed in M symbols/s, for rans, huffman and zstd -19 (compressing the symbol bytes).
Symbols are k-means-like indices of Laplace weights (tests/bench/bench_huffman.py's `laplace_indices`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import zstandard
from dcframe_plugins.huffman import Huffman
from dcframe_plugins.rans import Rans

from dcframe import Symbols

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_huffman import entropy_bits, laplace_indices  # noqa: E402


def best_time(fn, repeat: int) -> tuple[float, object]:
    """The fastest of `repeat` runs and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def stage_row(stage, symbols: np.ndarray, alphabet: int, repeat: int) -> tuple[int, float, float]:
    """Size in bytes, encode and decode seconds of a symbols -> bytes stage; checks the round trip."""
    t_enc, (outputs, meta) = best_time(lambda: stage.encode(Symbols(symbols, alphabet)), repeat)
    t_dec, decoded = best_time(lambda: stage.decode(dict(outputs), meta), repeat)
    assert np.array_equal(decoded.array, symbols), stage.id
    return len(outputs["data"].data), t_enc, t_dec


def zstd_row(symbols: np.ndarray, repeat: int) -> tuple[int, float, float]:
    raw = symbols.tobytes()
    t_enc, data = best_time(lambda: zstandard.ZstdCompressor(level=19).compress(raw), repeat)
    t_dec, back = best_time(lambda: zstandard.ZstdDecompressor().decompress(data), repeat)
    assert back == raw
    return len(data), t_enc, t_dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--levels", default="32,256")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for levels in (int(v) for v in args.levels.split(",")):
        print(f"\n### {levels} levels (k-means-like indices of Laplace weights)\n")
        print("| symbols | coder | bytes | over entropy | vs zstd -19 size | encode M sym/s | decode M sym/s "
              "| decode vs zstd |")
        print("|---|---|---|---|---|---|---|---|")
        for n in (int(v) for v in args.sizes.split(",")):
            symbols = laplace_indices(n, levels, seed=n, spacing="kmeans")
            bound = entropy_bits(np.bincount(symbols, minlength=levels)) / 8
            repeat = args.repeat if n < 10**7 else 1
            rows = {"rans": stage_row(Rans(), symbols, levels, repeat),
                    "huffman": stage_row(Huffman(), symbols, levels, repeat),
                    "zstd -19": zstd_row(symbols, repeat)}
            z_size, _, z_dec = rows["zstd -19"]
            for name, (size, t_enc, t_dec) in rows.items():
                print(f"| {n:,} | {name} | {size:,} | {100 * (size / bound - 1):+.3f}% | {size / z_size:.4f} "
                      f"| {n / t_enc / 1e6:.2f} | {n / t_dec / 1e6:.2f} | {z_dec / t_dec:.3f} |")


if __name__ == "__main__":
    main()
