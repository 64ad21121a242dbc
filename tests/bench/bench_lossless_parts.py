"""Where the time of `dcframe compress/decompress --preset lossless` goes (issue 13): each part timed on its own.

Run:  python tests/bench/bench_lossless_parts.py [--dtypes F32 BF16 F16]
Start-up rows run a fresh interpreter per measurement (the median of 3): Python alone, Python with numpy, the CLI's
imports, and rans on a first long stream with each kernel kind installed (DCFRAME_KERNELS=c: the C extension;
=numba: numba with its kernels loaded from their cache), what that stream's first call costs a process. The other
rows run here, in one thread, on all-MiniLM-L6-v2 cast to each dtype (as bench_lossless.py does), tensor by tensor
through the very functions the chain calls, with the kernels `auto` picks (loaded first; --kernels to choose): the
seconds of CPU of each part, and its MB/s of model bytes. Reference rows measured in the same run: zstd -3 on the
whole model's bytes and a plain copy of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import zstandard
from bench_lossless import cast
from bench_pretrained import fetch_model
from dcframe_plugins import _kernels
from dcframe_plugins.bytegroup import join_planes, split_planes
from dcframe_plugins.rans import Rans
from safetensors.numpy import load_file

from dcframe import Bytes, Symbols
from dcframe.core.orchestrator import order0_entropy_bits

FIRST_STREAM = ("import numpy as np; from dcframe_plugins import rans; r = rans.Rans(); "
                "s, m = r.encode(rans.Symbols(np.arange(1 << 18) % 7, 256)); r.decode(s, m)")
STARTUP = {
    "python (no imports)": ("pass", None),
    "python + numpy": ("import numpy", None),
    "python + dcframe CLI imports": ("import dcframe.cli", None),
    "python + rans, first long stream, C kernels": (FIRST_STREAM, "c"),
    "python + rans, first long stream, numba + cached kernels": (FIRST_STREAM, "numba"),
}


def startup_seconds(code: str, kernels: str | None) -> float | None:
    """Median wall-clock seconds of a fresh interpreter running `code` (with DCFRAME_KERNELS=kernels), or None if
    those kernels are not installed."""
    if kernels is not None and not _kernels.installed(kernels):
        return None
    env = {**os.environ, _kernels.ENV: kernels or "auto"}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(totals: dict[str, float], part: str, function: Callable, *args):
    """function(*args), its CPU seconds added to totals[part]."""
    start = time.process_time()
    result = function(*args)
    totals[part] = totals.get(part, 0.0) + time.process_time() - start
    return result


def crc_both(first: bytes, second: bytes) -> tuple[int, int]:
    return zlib.crc32(first), zlib.crc32(second)


def parts(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, float]:
    """CPU seconds of each part of the lossless chain over every tensor, encode and decode."""
    coder, zstd_c, zstd_d = Rans(lanes=256), zstandard.ZstdCompressor(level=5), zstandard.ZstdDecompressor()
    streams, meta = coder.encode(Symbols(np.arange(1 << 18) % 7, 256))  # the kernels' loading: a start-up row
    coder.decode(streams, meta)
    totals: dict[str, float] = {}
    for array in tensors.values():
        planes = timed(totals, "encode: bytegroup split", split_planes, array, dtype)
        mantissa = timed(totals, "encode: mantissa bytes (copy)", planes[1:].tobytes)
        packed = timed(totals, "encode: zstd -5 on the mantissa planes", zstd_c.compress, mantissa)
        exponent = Symbols(planes[0], 256)
        streams, meta = timed(totals, "encode: rans on the exponent plane", coder.encode, exponent)
        timed(totals, "encode: entropy statistics", order0_entropy_bits, planes[0], 256)
        timed(totals, "encode+decode: CRC32 of the stored streams", crc_both, packed, streams["data"].data)
        back = timed(totals, "decode: zstd", zstd_d.decompress, packed)
        symbols = timed(totals, "decode: rans", coder.decode, {"data": Bytes(streams["data"].data)}, meta).array
        out = timed(totals, "decode: bytegroup join", join_planes, symbols,
                    np.frombuffer(back, np.uint8).reshape(planes.shape[0] - 1, -1), dtype)
        assert out.tobytes() == array.tobytes()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["F32", "BF16", "F16"])
    parser.add_argument("--kernels", choices=_kernels.CHOICES, default="auto", help="DCFRAME_KERNELS for the parts")
    args = parser.parse_args()
    print("| start-up (fresh interpreter, wall, median of 3) | seconds |")
    print("|---|---|")
    for name, (code, kernels) in STARTUP.items():
        seconds = startup_seconds(code, kernels)
        print(f"| {name} | {'not installed' if seconds is None else f'{seconds:.3f}'} |", flush=True)
    os.environ[_kernels.ENV] = args.kernels
    kernels = _kernels.compiled(1 << 30)
    print(f"\nparts on the {'numpy' if kernels is None else kernels.__name__.rsplit('.', 1)[-1]} path")
    model = load_file(str(fetch_model() / "model.safetensors"))
    print()
    print("| dtype | part | CPU s | MB/s of model bytes | x zstd -3 compress speed |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        tensors = {k: np.ascontiguousarray(v) for k, v in cast(model, dtype).items()}
        data = b"".join(v.tobytes() for v in tensors.values())
        reference: dict[str, float] = {}
        packed = timed(reference, "zstd -3 compress (whole model, reference)", zstandard.ZstdCompressor(3).compress,
                       data)
        timed(reference, "zstd -3 decompress (whole model, reference)", zstandard.ZstdDecompressor().decompress,
              packed)
        timed(reference, "copy of the model's bytes (reference)", bytearray, data)
        rows = {**reference, **parts(tensors, dtype)}
        zstd3 = reference["zstd -3 compress (whole model, reference)"]
        for part, seconds in rows.items():
            speed = len(data) / seconds / 1e6 if seconds > 0 else float("inf")
            print(f"| {dtype} | {part} | {seconds:.3f} | {speed:.0f} | {zstd3 / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
