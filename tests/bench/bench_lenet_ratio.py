"""Compression ratio of the `han` preset on a synthetic LeNet-300-100-shaped model, against zstd -19 on the raw floats.

Run: python tests/bench/bench_lenet_ratio.py [--seed N]
Weights are Laplace-distributed (scale 0.05), as trained fully connected layers roughly are; biases small normals.
Target: the whole file >= 35x smaller than float32 (the paper reports 40x on the trained LeNet-300-100).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

import dcframe

LAYERS = [("fc1", 784, 300), ("fc2", 300, 100), ("fc3", 100, 10)]
TARGET = 35.0


def lenet_300_100(seed: int) -> dict[str, np.ndarray]:
    """Weights (in x out, as the paper lists them) and biases of LeNet-300-100, float32."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, fan_in, fan_out in LAYERS:
        tensors[f"{name}.weight"] = rng.laplace(scale=0.05, size=(fan_in, fan_out)).astype(np.float32)
        tensors[f"{name}.bias"] = rng.normal(scale=0.01, size=fan_out).astype(np.float32)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tensors = lenet_300_100(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lenet.dcf"
        start = time.perf_counter()
        report = dcframe.compress(tensors, path, preset="han")
        elapsed = time.perf_counter() - start
        file_bytes = path.stat().st_size
    original = sum(t.nbytes for t in tensors.values())
    zstd = zstandard.ZstdCompressor(level=19)
    print("| tensor | shape | pipeline | kept | float32 bytes | dcf bytes | ratio | zstd -19 bytes | zstd ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    zstd_total = 0
    for row in report["tensors"]:
        raw = tensors[row["name"]].tobytes()
        z = len(zstd.compress(raw))
        zstd_total += z
        kept = f"{100 * (1 - row['sparsity']):.1f}%" if "sparsity" in row else "100%"
        stages = re.sub(r'[(][^)]*[)]', '', row['pipeline']).replace(' | ', ' &rarr; ')  # no | inside a cell
        print(f"| {row['name']} | {'x'.join(map(str, row['shape']))} | {stages} | {kept} | "
              f"{row['original_bytes']} | {row['compressed_bytes']} | {row['ratio']:.1f}x | {z} | "
              f"{len(raw) / z:.2f}x |")
    print(f"| **whole file** | | han | | {original} | {file_bytes} | **{original / file_bytes:.1f}x** | "
          f"{zstd_total} | {original / zstd_total:.2f}x |")
    print(f"\ncompress time {elapsed:.2f} s; container overhead {report['overhead_bytes']} bytes; "
          f"target >= {TARGET:.0f}x: {'met' if original / file_bytes >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
