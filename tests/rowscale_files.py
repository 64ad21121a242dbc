"""rowscale files for the decoders written apart from dcframe (libdcf, dcf-js), each holding one tensor `x`: written
by dcframe from tensors with zero-activation rows (more rows than a 4096-row block, rows of one element, rows longer
than a block, no rows, empty rows), through entropy coders, a quantizer, bytegroup and sparse, and crafted ones whose
exponents are all forced to 15 so the products overflow to infinity in every float dtype (NaN elements kept), or
are 0..15 over rows holding every F16 and BF16 pattern (F32 and F64: random patterns of every exponent field)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from container_tools import join, split

import dcframe
from dcframe import Dense

CASES = [  # (pipeline, dtype, shape)
    ("rowscale(shift=15)", "float32", (9000, 3)),                              # 3 blocks of exponents, stored raw
    ("rowscale(shift=3) | rans", "float16", (5000,)),                         # rows of one element
    ("rowscale(shift=2) | huffman", "float64", (3, 5000)),                    # rows longer than a block
    ("rowscale(shift=4) | uniform(rel_step=0.2) | rans", "bfloat16", (70, 70)),
    ("rowscale(shift=2) | bytegroup | zstd | rans", "float32", (300, 40)),
    ("prune(sparsity=0.6) | sparse | rowscale(shift=5) | rans", "float32", (6000, 2)),  # pulled in parts by sparse
    ("rowscale(shift=2) | sparse | rans", "float16", (500, 9)),                 # its values pulled from sparse
    ("rowscale", "float32", (4, 0)),                                           # rows without elements
    ("rowscale", "float64", (0, 3)),                                           # no rows
]


def _tensor(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], big: bool = False) -> Dense:
    """Random values (near the dtype's largest if `big`, with a NaN of payload and -0.0), activation zero on about
    half the rows."""
    f = np.float32 if dtype == "bfloat16" else np.dtype(dtype).type
    scale = float(np.finfo(f).max) / 8 if big else 1.0
    x = np.clip(rng.standard_normal(shape) * scale, -float(np.finfo(f).max), float(np.finfo(f).max)).astype(f)
    if big and x.size >= 3:
        flat = x.reshape(-1)
        flat[1] = -0.0
        bits = flat.view(np.uint32 if f == np.float32 else np.uint64 if f == np.float64 else np.uint16)
        bits[2] = {np.float32: 0x7FA00001, np.float64: 0xFFF4000000000001, np.float16: 0x7D01}[f]
    act = np.ones(shape)
    if shape:
        act[rng.random(shape[0]) < 0.5] = 0.0
    if dtype == "bfloat16":
        return Dense((x.view(np.uint32) >> 16).astype(np.uint16), "BF16", {"activation": act})
    return Dense(x, {"float32": "F32", "float64": "F64", "float16": "F16"}[dtype], {"activation": act})


def _exponents(path: Path, exponents: bytes) -> None:
    """Rewrite `path` (one tensor, rowscale with raw exponents) with these exponents, of alphabet 16."""
    parts = split(path.read_bytes())
    rec, streams = parts.tensors[0]
    for step in rec["steps"]:
        for app in step:
            if app[0] == "exponents" and "alphabet" in app[2]:
                app[2]["alphabet"] = 16
    streams["exponents"] = exponents
    path.write_bytes(join(parts))


def rowscale_files(tmp_path: Path) -> tuple[list[Path], list[bytes], list[str]]:
    """The files, the bytes dcframe decodes each one's `x` to, and a name for each."""
    rng = np.random.default_rng(23)
    files, want, names = [], [], []
    for i, (pipeline, dtype, shape) in enumerate(CASES):
        path = tmp_path / f"rowscale{i}.dcf"
        dcframe.compress({"x": _tensor(rng, dtype, shape)}, path, pipeline=pipeline)
        files.append(path)
        names.append(f"{pipeline} {dtype} {shape}")
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        path = tmp_path / f"rowscale-overflow-{dtype}.dcf"
        dcframe.compress({"x": _tensor(rng, dtype, (40, 3), big=True)}, path, pipeline="rowscale(shift=1)")
        _exponents(path, bytes([15] * 40))
        files.append(path)
        names.append(f"overflow {dtype}")
    # every F16 and BF16 pattern times every 2^e (row e), and F32 / F64 patterns of every exponent field value
    for dtype, w in (("F16", 2), ("BF16", 2), ("F32", 4), ("F64", 8)):
        if w == 2:
            bits = np.tile(np.arange(65536, dtype=np.uint16), (16, 1))
        else:
            ebits = 8 if w == 4 else 11
            u = np.dtype(f"u{w}").type
            bits = rng.integers(0, 2 ** (8 * w), size=(16, 4096), dtype=u)
            field = np.arange(bits.size, dtype=u).reshape(bits.shape) % u(2**ebits)  # each field value, each row
            bits = (bits & ~(u(2**ebits - 1) << u(8 * w - 1 - ebits))) | (field << u(8 * w - 1 - ebits))
        arr = bits if dtype == "BF16" else bits.view({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])
        path = tmp_path / f"rowscale-every-{dtype}.dcf"
        dcframe.compress({"x": Dense(arr, dtype)}, path, pipeline="rowscale")
        _exponents(path, bytes(range(16)))
        files.append(path)
        names.append(f"every pattern {dtype}")
    for path, name in zip(files, names, strict=True):
        c = dcframe.open_container(path)
        assert "rowscale" in {s["id"] for s in c.chains[c.record("x")["chain"]]}, name
        x = c.read("x").array
        if name.startswith("overflow"):
            assert np.isinf(_as_float(x, name)).any(), name
        want.append(np.ascontiguousarray(x).tobytes())
    return files, want, names


def _as_float(x: np.ndarray, name: str) -> np.ndarray:
    """BF16 patterns as float32 values (other dtypes as they are)."""
    return (x.astype(np.uint32) << 16).view(np.float32) if name.endswith("bfloat16") else x
