"""dcframe's numcodecs codec in a Zarr array against numcodecs' own Zstd and Blosc on the same array, same chunks.

    python tests/bench/bench_numcodecs.py [--size 2048] [--chunk 512]

Two float32 arrays of size x size: "few values" (200 distinct values, what weight sharing leaves; lossless chains
only) and "normal" (Gaussian weights: lossless chains, then dcframe's 8-bit k-means + Huffman, which is lossy).
Each row writes a Zarr format 2 array to a temporary folder and reads it back: stored bytes (every chunk file), the
ratio against numcodecs' Zstd(level=19) measured in the same run, write and read throughput (array bytes per second),
and whether the read equals the original bit for bit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc, Zstd

from dcframe.bindings.numcodecs_codec import DcframeCodec


def arrays(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"few values": (rng.integers(0, 200, (size, size)) / 7).astype("f4"),
            "normal": (rng.normal(size=(size, size)) * 0.05).astype("f4")}


def codecs(kind: str) -> dict[str, object]:
    rows = {"numcodecs Zstd(level=19)": Zstd(level=19),
            "numcodecs Blosc(zstd, 5, shuffle)": Blosc("zstd", 5, Blosc.SHUFFLE),
            "dcframe lossless (zstd -19)": DcframeCodec("zstd(level=19)")}  # the lossless preset before issue 13
    if kind == "few values":
        rows["dcframe kmeans(bits=8) | huffman"] = DcframeCodec("kmeans(bits=8) | huffman")
    else:
        rows["dcframe kmeans(bits=8) | huffman (lossy)"] = DcframeCodec("kmeans(bits=8) | huffman")
    return rows


def measure(data: np.ndarray, codec: object, chunk: int, folder: Path) -> tuple[int, float, float, bool]:
    """Stored bytes, write and read seconds, and whether the read-back equals the original bit for bit."""
    start = time.perf_counter()
    array = zarr.create_array(str(folder), shape=data.shape, chunks=(chunk, chunk), dtype=data.dtype,
                              compressors=codec, zarr_format=2)
    array[:] = data
    written = time.perf_counter() - start
    start = time.perf_counter()
    back = zarr.open_array(str(folder), mode="r")[:]
    read = time.perf_counter() - start
    stored = sum(p.stat().st_size for p in folder.iterdir() if not p.name.startswith("."))
    return stored, written, read, back.tobytes() == data.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    print("| array | codec | stored bytes | vs Zstd-19 | write MB/s | read MB/s | exact |")
    print("|---|---|---|---|---|---|---|")
    for kind, data in arrays(args.size).items():
        reference = None
        for name, codec in codecs(kind).items():
            with tempfile.TemporaryDirectory() as tmp:
                stored, written, read, exact = measure(data, codec, args.chunk, Path(tmp) / "a.zarr")
            reference = reference or stored
            mb = data.nbytes / 1e6
            cell = name.replace("|", "\\|")  # a pipeline's bar inside a markdown cell
            print(f"| {kind} | {cell} | {stored:,} | {stored / reference:.3f} | {mb / written:.1f} | "
                  f"{mb / read:.1f} | {'yes' if exact else 'no'} |")


if __name__ == "__main__":
    main()
