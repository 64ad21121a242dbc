"""Encode and decode speed of the huffman and rans stages, numpy path and compiled kernels, against zstd (same run).

Run: python tests/bench/bench_decoders.py [--sizes 10000,100000,1000000,10000000] [--levels 32,256] [--time 0.3]
[--clock wall|cpu]
Prints one markdown table: M symbols/s for each coder and path (DCFRAME_KERNELS=numpy / c / numba), beside zstd -19
decompressing and zstd -3 compressing the same symbols as uint8 bytes; the ratios are the coder's speed over zstd's
(decode: over zstd -19 decompress; encode: over zstd -3 compress). Each figure is the best of repeats filling about
--time seconds. Symbols are k-means-like indices of Laplace weights (bench_huffman.py's `laplace_indices`); 32 and
256 levels are the 5-bit and 8-bit alphabets. The c path needs the C extension (built by `pip install .` where a
compiler exists), the numba path numba (the `fast` extra); rows of a path not installed say so. Issue 13's targets:
decode >= 1/2 of zstd at 10^7 symbols and >= 1/4 at 10^5 with the kernels, and huffman's numpy path >= 1/10 at
10^7 and >= 30 M symbols/s at 10^5.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import zstandard
from dcframe_plugins import _kernels
from dcframe_plugins.huffman import Huffman
from dcframe_plugins.rans import Rans

from dcframe import Symbols

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_huffman import laplace_indices  # noqa: E402

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def best_time(fn, budget: float) -> tuple[float, object]:
    """The fastest of at least 3 runs (more while the runs so far took less than `budget` seconds) and a result."""
    best, out, spent, runs = float("inf"), None, 0.0, 0
    while runs < 3 or spent < budget:
        t = clock()
        out = fn()
        dt = clock() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best, out


def coder_times(stage, symbols: np.ndarray, levels: int, path: str, budget: float) -> tuple[float, float, bytes]:
    """Encode and decode seconds of `stage` on one path, and its stream (checked to decode exactly)."""
    os.environ[_kernels.ENV] = path
    stream = Symbols(symbols, levels)
    stage.encode(stream)  # the kernels compile (or load from their cache) outside the timing
    t_enc, (outputs, meta) = best_time(lambda: stage.encode(stream), budget)
    t_dec, decoded = best_time(lambda: stage.decode(outputs, meta), budget)
    assert decoded.array.tobytes() == symbols.tobytes(), (stage.id, path)
    return t_enc, t_dec, outputs["data"].data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--levels", default="32,256")
    ap.add_argument("--time", type=float, default=0.3, help="seconds of repeats per figure (at least 3 runs)")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall time, or this process's CPU time (steadier on a machine others are loading)")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    print(f"clock: {args.clock}\n")
    saved = os.environ.get(_kernels.ENV)
    paths = ["numpy", *_kernels.available()]
    missing = {"c": "C kernels not built (pip install . with a compiler)",
               "numba": "numba not installed (pip install 'dcframe[fast]')"}
    print("| symbols | alphabet | coder | path | encode M sym/s | encode / zstd -3 compress | decode M sym/s "
          "| decode / zstd -19 decompress |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for levels in (int(v) for v in args.levels.split(",")):
            for n in (int(v) for v in args.sizes.split(",")):
                symbols = laplace_indices(n, levels, seed=n, spacing="kmeans")
                raw = symbols.tobytes()
                frame = zstandard.ZstdCompressor(level=19).compress(raw)
                dz = zstandard.ZstdDecompressor()
                z_dec, back = best_time(lambda: dz.decompress(frame), args.time)  # noqa: B023
                z3 = zstandard.ZstdCompressor(level=3)
                z_enc, _ = best_time(lambda: z3.compress(raw), args.time)  # noqa: B023
                assert back == raw
                label = f"| {n:,} | {levels} |"
                print(f"{label} zstd | -19 decompress, -3 compress | {n / z_enc / 1e6:.1f} | 1 | "
                      f"{n / z_dec / 1e6:.1f} | 1 |")
                for stage in (Huffman(), Rans()):
                    streams = {}
                    for path in paths:
                        t_enc, t_dec, streams[path] = coder_times(stage, symbols, levels, path, args.time)
                        print(f"{label} {stage.id} | {path} | {n / t_enc / 1e6:.1f} | 1/{t_enc / z_enc:.1f} "
                              f"| {n / t_dec / 1e6:.1f} | 1/{t_dec / z_dec:.1f} |")
                    assert len(set(streams.values())) == 1, f"{stage.id}: the paths wrote different bytes"
                    for kind, why in missing.items():
                        if kind not in paths:
                            print(f"{label} {stage.id} | {kind} | {why} | | | |")
    finally:
        if saved is None:
            os.environ.pop(_kernels.ENV, None)
        else:
            os.environ[_kernels.ENV] = saved


if __name__ == "__main__":
    main()
