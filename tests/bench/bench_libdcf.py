"""Benchmark of libdcf, the C decoder, against references measured in the same run.

Run: python tests/bench/bench_libdcf.py [--repeat 5] [--runs 1] [--sizes 100000,1000000,10000000] [--heap-only]
     [--symbols-only]
Builds libdcf (make, into a temporary folder), then prints three markdown tables (--heap-only: the third alone):
1. decode of a 2000x1000 float32 tensor through `--preset han` and `--preset quantize8`, end to end (a process
   writing the .safetensors file) by `dcf-decode` against `dcframe decompress`, and in-process (dcf_decode into a
   buffer against dcframe's Container.read);
2. huffman / rans symbol decode alone (the stage's stream pulled into one buffer, a byte per symbol for these
   alphabets, as zstd writes them) against zstd decompressing the same symbols (as bytes, compressed at level 19),
   for k-means-like indices of Laplace weights (32 levels, 5 bits) and 8-bit k-means indices of Gaussian weights, at
   each size: ratios of CPU time and of wall time, and of CPU time for the portable loops (a SIMD=0 build). With
   --runs N each row is measured N times (each the best of --repeat) and its ratios are the median [lowest, highest],
   the spread a shared machine gives; --symbols-only prints this table alone;
3. peak heap while decoding one tensor (a counting allocator), beyond the caller's output buffer: memory mode
   (dcf_open_memory), by path (dcf_open_path, which maps the file) and through a read callback (dcf_open_reader over
   stdio, which reads stored bytes on demand), each against the issue's target of output + 1 MiB, for the han,
   quantize8, han-rans, lossless, zstd -19 and zlib files of the 2000x1000 tensor and the largest rans and huffman
   symbol files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import dcframe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_huffman import laplace_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def best_wall(cmd: list[str], repeat: int) -> float:
    """The fastest of `repeat` runs of a command (seconds, wall clock)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def bench(tool: Path, mode: str, path: Path, repeat: int, runs: int = 1) -> list[dict]:
    """dcf-bench's JSON lines for one file (symbols mode: `runs` lines per tensor)."""
    cmd = [str(tool), mode, str(path), str(repeat)] + ([str(runs)] if runs > 1 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def python_read(path: Path, repeat: int) -> float:
    """Best in-process decode time (CPU time, as dcf-bench's) of every tensor with dcframe's reader."""
    best = float("inf")
    for _ in range(repeat):
        c = dcframe.open_container(path)
        t = time.process_time()
        for name in c.names:
            c.read(name)
        best = min(best, time.process_time() - t)
    return best


def spread(values: list[float]) -> str:
    """A ratio over the runs: the median, then [lowest, highest] when there are several."""
    v = sorted(values)
    med = f"{float(np.median(v)):.2f}"
    return med if len(v) == 1 else f"{med} [{v[0]:.2f}, {v[-1]:.2f}]"


def decode_table(args: argparse.Namespace, tmp: Path, files: dict[str, Path], w: np.ndarray, tool: Path,
                 dcfbench: Path) -> None:
    """Table 1: end-to-end and in-process decode against dcframe."""
    cli = str(Path(sys.executable).parent / "dcframe")
    print("## Decode of a 2000x1000 float32 tensor (8 MB), same file")
    print()
    print("| preset | file bytes | dcframe decompress (s) | dcf-decode (s) | end to end | Container.read (ms) "
          "| dcf_decode (ms) | in process | dcf_decode MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, path in files.items():
        out = tmp / "out.safetensors"
        t_py = best_wall([cli, "decompress", str(path), "-o", str(out), "-q", "-f"], max(1, args.repeat // 2))
        t_c = best_wall([str(tool), str(path), str(out)], args.repeat)
        t_pyr = python_read(path, args.repeat)
        t_cr = bench(dcfbench, "decode", path, args.repeat)[0]["seconds"]
        print(f"| {preset} | {path.stat().st_size} | {t_py:.3f} | {t_c:.4f} | {t_py / t_c:.0f}x | "
              f"{1e3 * t_pyr:.1f} | {1e3 * t_cr:.2f} | {t_pyr / t_cr:.0f}x | {w.nbytes / t_cr / 1e6:.0f} |")
    print()


def symbols_table(args: argparse.Namespace, tmp: Path, w: np.ndarray, rng: np.random.Generator, dcfbench: Path,
                  portable: Path) -> None:
    """Table 2: symbol decode against zstd on the same symbols, each row over --runs runs."""
    print("## Symbol decode against zstd decompressing the same symbols (level 19), same run")
    print()
    print(f"Speeds from CPU time (the machine may be shared); the wall-clock ratio beside it. The portable column "
          f"is a SIMD=0 build (what ARM runs). {args.runs} run(s) per row, each the best of {args.repeat}"
          f"{'; ratios: median [lowest, highest]' if args.runs > 1 else ''}.")
    print()
    print("| symbols | source | coder | zstd bytes | coder M sym/s | zstd M sym/s | coder / zstd (CPU) "
          "| coder / zstd (wall) | portable / zstd (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = []
    for n in (int(s) for s in args.sizes.split(",")):
        x = laplace_indices(n, 32).astype(np.float32).reshape(-1, 100 if n % 100 == 0 else 1)
        cases.append((n, "Laplace, 32 levels", x, "kmeans(clusters=32)"))
        g = w.ravel()[:n] if n <= w.size else (rng.standard_normal(n) * 0.05).astype(np.float32)
        cases.append((n, "Gaussian, kmeans 8 bits", g.reshape(-1, 100 if n % 100 == 0 else 1),
                      "kmeans(bits=8, init=linear, method=lloyd)"))
    for n, source, x, quant in cases:
        for coder in ("huffman", "rans"):
            path = tmp / f"sym-{n}-{source[:3]}-{coder}.dcf"
            dcframe.compress({"x": x}, path, pipeline=f"{quant} | {coder}")
            rs = bench(dcfbench, "symbols", path, args.repeat, args.runs)
            ps = bench(portable, "symbols", path, args.repeat, args.runs)
            r = rs[0]
            mps = float(np.median([x["symbols"] / x["seconds"] / 1e6 for x in rs]))
            zmps = float(np.median([x["symbols"] / x["zstd_seconds"] / 1e6 for x in rs]))
            print(f"| {r['symbols']} | {source} | {coder} | {r['zstd_bytes']} | {mps:.0f} | {zmps:.0f} "
                  f"| {spread([x['zstd_seconds'] / x['seconds'] for x in rs])} "
                  f"| {spread([x['zstd_wall_seconds'] / x['wall_seconds'] for x in rs])} "
                  f"| {spread([x['zstd_seconds'] / x['seconds'] for x in ps])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="100000,1000000,10000000", help="symbol counts of the entropy-decode rows")
    ap.add_argument("--runs", type=int, default=1, help="runs of each symbol-decode row (the spread is printed)")
    ap.add_argument("--heap-only", action="store_true", help="only the peak heap table (no timings)")
    ap.add_argument("--symbols-only", action="store_true", help="only the symbol-decode table")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-libdcf-"))
    try:
        build = tmp / "build"
        subprocess.run(["make", "-C", str(ROOT / "libdcf"), f"BUILD={build}", "-j2", "tool", "bench"], check=True,
                       capture_output=True)
        if not args.heap_only:
            subprocess.run(["make", "-C", str(ROOT / "libdcf"), f"BUILD={tmp / 'portable'}", "SIMD=0", "-j2", "bench"],
                           check=True, capture_output=True)
        tool, dcfbench, portable = build / "dcf-decode", build / "dcf-bench", tmp / "portable" / "dcf-bench"
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((2000, 1000)) * 0.05).astype(np.float32)
        files = {}
        for preset in ("han", "quantize8"):
            files[preset] = tmp / f"{preset}.dcf"
            dcframe.compress({"fc.weight": w}, files[preset], preset=preset)

        if args.symbols_only:
            symbols_table(args, tmp, w, rng, dcfbench, portable)
            return
        if not args.heap_only:
            decode_table(args, tmp, files, w, tool, dcfbench)
            symbols_table(args, tmp, w, rng, dcfbench, portable)
        big = max(int(s) for s in args.sizes.split(","))
        for coder in ("huffman", "rans"):
            path = tmp / f"sym-{big}-Lap-{coder}.dcf"
            if not path.exists():
                x = laplace_indices(big, 32).astype(np.float32).reshape(-1, 100 if big % 100 == 0 else 1)
                dcframe.compress({"x": x}, path, pipeline=f"kmeans(clusters=32) | {coder}")
        for name, how in [("han-rans", {"preset": "han-rans"}), ("lossless", {"preset": "lossless"}),
                          ("zstd -19", {"pipeline": "zstd(level=19)"}), ("zlib", {"pipeline": "zlib"})]:
            files[name] = tmp / f"{name.replace(' ', '')}.dcf"
            dcframe.compress({"fc.weight": w}, files[name], **how)
        print()
        print("## Peak heap while decoding one tensor into the caller's buffer (counting allocator)")
        print()
        print("Heap beyond the caller's output buffer; the reference is the output itself: the target is at most "
              "1 MiB more, in every mode (the stored bytes are read through bounded windows).")
        print()
        print("| file | output bytes | stored bytes | memory mode heap | by path heap | read callback heap "
              "| memory <= output + 1 MiB | by path <= output + 1 MiB | read callback <= output + 1 MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        heap_files = [*files.items(), (f"rans Laplace {big}", tmp / f"sym-{big}-Lap-rans.dcf"),
                      (f"huffman Laplace {big}", tmp / f"sym-{big}-Lap-huffman.dcf")]
        for name, path in heap_files:
            for r in bench(dcfbench, "decode", path, 1):
                verdicts = " | ".join(f"{'met' if r[k] <= 2**20 else 'missed'} ({r[k] / 2**10:.0f} KiB)"
                                      for k in ("peak_heap_memory", "peak_heap_path", "peak_heap_reader"))
                print(f"| {name} | {r['bytes']} | {r['region_bytes']} | {r['peak_heap_memory']} "
                      f"| {r['peak_heap_path']} | {r['peak_heap_reader']} | {verdicts} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
