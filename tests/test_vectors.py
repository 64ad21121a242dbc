"""The committed golden vectors (spec/vectors) still decode in Python to their expected bytes, and every invalid one
raises exactly the error class index.json states; the generator reproduces the committed files byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dcframe

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))


def test_index_covers_what_the_spec_promises() -> None:
    """Every built-in stage, the presets, multi-chunk streams, every dtype, BF16, scalars and empty tensors appear."""
    exercised = {e for v in INDEX["valid"] for e in v["exercises"]}
    stages = {s for v in INDEX["valid"] for s in v["stages"]}
    assert {"raw", "zstd", "zlib", "lzma", "bz2", "prune", "sparse", "kmeans", "huffman"} <= stages
    assert {"preset:han-fc", "preset:han-conv", "preset:quantize8", "multi-chunk", "bf16", "shape:scalar",
            "shape:empty"} <= exercised
    dtypes = {t["dtype"] for v in INDEX["valid"] for t in v["tensors"]}
    assert dtypes == {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}
    assert {v["error"] for v in INDEX["invalid"]} == {"FormatError", "IntegrityError", "LimitError",
                                                      "MissingStageError"}
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 1_000_000, f"vectors take {total} bytes"


@pytest.mark.parametrize("vector", INDEX["valid"], ids=[v["file"] for v in INDEX["valid"]])
def test_valid_vector_decodes_to_expected_bytes(vector: dict) -> None:
    """Each tensor decodes to exactly its expected bytes, dtype and shape."""
    expected = (VECTORS / vector["expected"]).read_bytes()
    decoded = dcframe.decompress(VECTORS / vector["file"])
    assert list(decoded) == [t["name"] for t in vector["tensors"]]
    for t in vector["tensors"]:
        got = decoded[t["name"]]
        assert got.dtype == t["dtype"]
        assert list(got.array.shape) == t["shape"]
        want = expected[t["offset"]:t["offset"] + t["length"]]
        assert hashlib.sha256(want).hexdigest() == t["sha256"]
        assert np.ascontiguousarray(got.array).tobytes() == want, f"{vector['file']}: {t['name']}"


@pytest.mark.parametrize("vector", INDEX["invalid"], ids=[v["file"] for v in INDEX["invalid"]])
def test_invalid_vector_raises_stated_class(vector: dict) -> None:
    """Opening (tensor null) or reading the named tensor raises exactly the stated class, nothing else escapes."""
    path = VECTORS / vector["file"]
    with pytest.raises(dcframe.DcfError) as info:
        with dcframe.Container(path) as c:
            assert vector["tensor"] is not None, "the file opened, but the vector says opening must fail"
            c.read(vector["tensor"])
    assert type(info.value).__name__ == vector["error"], str(info.value)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """Two generations give identical bytes (fixed seeds, no timestamp in the container). The committed vectors may
    lag behind encoder improvements (a better k-means gives other valid bytes): `generate.py --check` reports that."""
    for d in ("a", "b"):
        res = subprocess.run([sys.executable, str(VECTORS / "generate.py"), "--out", str(tmp_path / d)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * len(INDEX["valid"]) + len(INDEX["invalid"]) + 1
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
