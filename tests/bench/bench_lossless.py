"""Lossless on a real transformer (issue 13 item 3): the `lossless` preset against zstd and ZipNN, same run.

Run:  python tests/bench/bench_lossless.py [--model HF_FOLDER] [--dtypes F32 BF16 F16] [--chains "..." ...]
      [--kernels c numba numpy] [--runs N] [--no-slow]
The model is all-MiniLM-L6-v2 (22.7 M parameters, fetched and cached as tests/bench/bench_pretrained.py does) or
--model's model.safetensors (e.g. all-mpnet-base-v2, 109 M parameters, 438 MB: start-up weighs less), cast to
each dtype (BF16 rounded to nearest even) and written as one .safetensors file. dcframe rows run the CLI in a
subprocess (`dcframe compress --preset/-p`, then `dcframe decompress` to .safetensors), so their MB/s are wall clock of
what a user runs, start-up and file I/O included (the package byte-compiled first, as pip install leaves it), with
the CPU seconds of each run beside them (a loaded machine stretches the wall clock, not the CPU time), and every
output is compared byte for byte with the input tensors. The preset runs once as installed (DCFRAME_KERNELS unset:
`auto`), then once per kernel path of --kernels that is installed (c, numba, numpy).
zstd rows compress the tensors' concatenated raw bytes in-process (python-zstandard); the ZipNN row (`pip install
zipnn`, benchmark only) is its byte API on the same bytes, with its round trip checked too. Ratios: input tensor
bytes / output bytes (a .dcf file's whole size).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard
from bench_pretrained import fetch_model
from dcframe_plugins import _kernels
from safetensors.numpy import load_file

from dcframe import Dense, read_model, write_model
from dcframe.core.dtypes import f32_to_bf16
from dcframe.core.orchestrator import as_dense

OLD_LOSSLESS = "zstd(level=19)"  # the lossless preset before issue 13: its expansion, as a pipeline
ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
Row = tuple[int, float, float, bool, float | None, float | None]  # bytes, compress s, decompress s, exact, CPU s x2


def cast(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The model's float tensors in `dtype` (BF16 as its uint16 bit patterns)."""
    if dtype == "BF16":
        return {k: f32_to_bf16(v.astype(np.float32)) for k, v in tensors.items()}
    return {k: v.astype({"F32": np.float32, "F16": np.float16}[dtype]) for k, v in tensors.items()}


def write_input(tensors: dict[str, np.ndarray], dtype: str, path: Path) -> None:
    """A .safetensors file of the tensors, BF16 ones stored as BF16."""
    write_model(path, {k: Dense(v, dtype) if dtype == "BF16" else Dense.of(v) for k, v in tensors.items()})


def compile_package() -> None:
    """Byte-compile dcframe and its plugins, as pip does when it installs them: a source checkout run with
    PYTHONDONTWRITEBYTECODE would otherwise compile every module again in every CLI run (0.1-0.3 s)."""
    import compileall

    import dcframe_plugins

    import dcframe

    for package in (dcframe, dcframe_plugins):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def dcli(*args: str, kernels: str = "auto") -> tuple[float, float]:
    """Run the dcframe CLI (quiet) with DCFRAME_KERNELS=kernels; return its wall-clock and its CPU seconds (user +
    system, every thread)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dcframe.cli", *args, "-q"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, _kernels.ENV: kernels})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def dcframe_row(flags: list[str], source: Path, tensors: dict[str, np.ndarray], work: Path,
                kernels: str = "auto", runs: int = 1) -> Row:
    """(bytes, compress s, decompress s, exact, compress CPU s, decompress CPU s) of one chain through the CLI: the
    median of `runs` runs each, every output written new (the previous one removed first, outside the clock)."""
    out, back = work / "out.dcf", work / "back.safetensors"

    def timed(*args: str) -> tuple[float, float]:
        times = []
        for _ in range(runs):
            Path(args[args.index("-o") + 1]).unlink(missing_ok=True)
            times.append(dcli(*args, kernels=kernels))
        return float(np.median([t[0] for t in times])), float(np.median([t[1] for t in times]))

    enc, enc_cpu = timed("compress", str(source), "-o", str(out), *flags)
    dec, dec_cpu = timed("decompress", str(out), "-o", str(back))
    restored = read_model(back)
    exact = all(as_dense(restored[k]).array.tobytes() == v.tobytes() for k, v in tensors.items())
    return out.stat().st_size, enc, dec, exact, enc_cpu, dec_cpu


def zstd_row(data: bytes, level: int) -> Row:
    start = time.perf_counter()
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    mid = time.perf_counter()
    back = zstandard.ZstdDecompressor().decompress(packed)
    return len(packed), mid - start, time.perf_counter() - mid, back == data, None, None


def zipnn_row(data: bytes, dtype: str) -> Row | None:
    try:
        import zipnn
    except ImportError:
        return None
    codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPES[dtype])
    start = time.perf_counter()
    packed = codec.compress(data)
    mid = time.perf_counter()
    back = bytes(codec.decompress(packed))
    return len(packed), mid - start, time.perf_counter() - mid, back == data, None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["F32", "BF16", "F16"])
    parser.add_argument("--model", type=Path, help="a Hugging Face folder with model.safetensors (default: "
                        "all-MiniLM-L6-v2, fetched as bench_pretrained.py does)")
    parser.add_argument("--chains", nargs="*", default=[], help="extra pipelines to measure beside the presets")
    parser.add_argument("--kernels", nargs="*", default=["c", "numba", "numpy"], choices=("c", "numba", "numpy"),
                        help="extra rows of the lossless preset on these DCFRAME_KERNELS paths (those installed)")
    parser.add_argument("--runs", type=int, default=1, help="CLI runs per dcframe row (the median is printed)")
    parser.add_argument("--no-slow", action="store_true", help="leave out the zstd -19 rows (minutes of CPU)")
    args = parser.parse_args()
    paths = [k for k in args.kernels if k == "numpy" or _kernels.installed(k)]
    model = load_file(str((args.model or fetch_model()) / "model.safetensors"))
    compile_package()
    print("| dtype | method | ratio | vs ZipNN | compress MB/s | decompress MB/s | exact | CPU s (compress, "
          "decompress) |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        tensors = cast(model, dtype)
        data = b"".join(v.tobytes() for v in tensors.values())
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            source = work / "model.safetensors"
            write_input(tensors, dtype, source)
            rows = [("ZipNN (zipnn, byte API)", zipnn_row(data, dtype))]
            lossless = ["--preset", "lossless"]
            rows += [("dcframe --preset lossless", dcframe_row(lossless, source, tensors, work, runs=args.runs))]
            rows += [(f"dcframe --preset lossless, DCFRAME_KERNELS={k}",
                      dcframe_row(lossless, source, tensors, work, k, args.runs)) for k in paths]
            if not args.no_slow:
                rows += [(f"dcframe -p '{OLD_LOSSLESS}' (old lossless)",
                          dcframe_row(["-p", OLD_LOSSLESS], source, tensors, work))]
            rows += [(f"dcframe -p '{c}'", dcframe_row(["-p", c], source, tensors, work, runs=args.runs))
                     for c in args.chains]
            rows += [(f"zstd -{level} (raw bytes)", zstd_row(data, level)) for level in (3, 19)
                     if level < 19 or not args.no_slow]
        reference = rows[0][1]
        ref_ratio = len(data) / reference[0] if reference else None
        for name, result in rows:
            if result is None:
                print(f"| {dtype} | {name} | not installed | | | | | |")
                continue
            size, enc, dec, exact, enc_cpu, dec_cpu = result
            ratio = len(data) / size
            versus = f"{ratio / ref_ratio:.4f}x" if ref_ratio else "n/a"
            cpu = f"{enc_cpu:.2f}, {dec_cpu:.2f}" if enc_cpu is not None else "(in-process)"
            print(f"| {dtype} | {name} | {ratio:.4f} | {versus} | {len(data) / enc / 1e6:.1f} | "
                  f"{len(data) / dec / 1e6:.1f} | {'yes' if exact else 'NO'} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()
