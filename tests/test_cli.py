"""The CLI as a user meets it: the acceptance path, and every kind of bad input as one clear line and exit 1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dcframe
from dcframe import DcfError, Dense, write_model


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *map(str, args)], capture_output=True, text=True)


def fails(result, *needles):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line.startswith("dcframe: error:") and "\n" not in line, line
    for needle in needles:
        assert needle in line, line


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(1)
    bf16 = (rng.standard_normal((16, 8)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "model.safetensors"
    write_model(path, {
        "fc.weight": rng.standard_normal((32, 16)).astype(np.float32),
        "fc.bias": rng.standard_normal(32).astype(np.float16),
        "emb": Dense(bf16, "BF16"),
        "count": np.array(7, dtype=np.int64),
    })
    return path


def test_acceptance_zstd_roundtrip_is_byte_identical_and_accounted(model, tmp_path):
    out = cli("compress", model, "-o", tmp_path / "m.dcf", "-p", "zstd(level=19)", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / "back.safetensors").returncode == 0
    assert (tmp_path / "back.safetensors").read_bytes() == model.read_bytes()
    inspect = json.loads(cli("inspect", tmp_path / "m.dcf", "--json").stdout)
    assert inspect == report
    size = os.path.getsize(tmp_path / "m.dcf")
    assert inspect["compressed_bytes"] == size
    assert sum(t["compressed_bytes"] for t in inspect["tensors"]) + inspect["overhead_bytes"] == size
    for key in ("original_bytes", "compressed_bytes", "ratio", "tensors"):
        assert key in inspect
    assert {t["dtype"] for t in inspect["tensors"]} == {"F32", "F16", "BF16", "I64"}
    for t in inspect["tensors"]:
        assert set(t) >= {"name", "dtype", "shape", "original_bytes", "compressed_bytes", "pipeline", "streams"}


def test_decompress_to_npz_keeps_bf16_and_selected_tensors(model, tmp_path):
    cli("compress", model, "-o", tmp_path / "m.dcf", "-q")
    assert cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / "part.npz", "--tensor", "emb").returncode == 0
    from dcframe import read_model

    back = read_model(tmp_path / "part.npz")
    assert list(back) == ["emb"] and back["emb"].dtype == "BF16"
    assert back["emb"].array.tobytes() == read_model(model)["emb"].array.tobytes()
    fails(cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / "x.npz", "--tensor", "nope"), "no tensor named 'nope'")


def test_human_tables(model, tmp_path):
    out = cli("compress", model, "-o", tmp_path / "m.dcf", "-q")
    assert out.returncode == 0 and "fc.weight" in out.stdout and "total:" in out.stdout
    assert "zstd" in cli("stages").stdout


def test_missing_file(tmp_path):
    fails(cli("compress", tmp_path / "none.safetensors", "-o", tmp_path / "x.dcf"), "none.safetensors", "no such file")
    fails(cli("inspect", tmp_path / "none.dcf"), "none.dcf")


def test_wrong_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    fails(cli("compress", tmp_path / "notes.txt", "-o", tmp_path / "x.dcf"), "unknown model format")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    fails(cli("compress", tmp_path / "bad.safetensors", "-o", tmp_path / "x.dcf"), "bad.safetensors")
    (tmp_path / "bad.dcf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    fails(cli("inspect", tmp_path / "bad.dcf"), "not a .dcf container")
    assert not (tmp_path / "x.dcf").exists()


def test_truncated_and_bit_flipped_containers(model, tmp_path):
    cli("compress", model, "-o", tmp_path / "m.dcf", "-q")
    data = (tmp_path / "m.dcf").read_bytes()
    (tmp_path / "cut.dcf").write_bytes(data[: len(data) // 2])
    fails(cli("decompress", tmp_path / "cut.dcf", "-o", tmp_path / "o.npz"), "cut.dcf")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    (tmp_path / "flip.dcf").write_bytes(bytes(flipped))
    fails(cli("decompress", tmp_path / "flip.dcf", "-o", tmp_path / "o.npz"), "flip.dcf")
    assert not (tmp_path / "o.npz").exists()
    # one bit flipped anywhere in the file is caught, by a checksum or a structural check
    for pos in range(0, len(data), 2):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        (tmp_path / "flip.dcf").write_bytes(bytes(flipped))
        with pytest.raises(DcfError):
            dcframe.decompress(tmp_path / "flip.dcf")


def test_bad_pipelines(model, tmp_path):
    fails(cli("compress", model, "-o", tmp_path / "x.dcf", "-p", "nosuch"), "stage 'nosuch' is not installed")
    fails(cli("compress", model, "-o", tmp_path / "x.dcf", "-p", "zstd(level="), "cannot parse stage")
    fails(cli("compress", model, "-o", tmp_path / "x.dcf", "-p", "zstd(level=3)", "--preset", "lossless"), "not both")
    fails(cli("compress", model, "-o", tmp_path / "x.dcf", "--rule", "nonsense"), "rule 'nonsense'")
    assert not (tmp_path / "x.dcf").exists()


def test_unwritable_output_leaves_nothing_and_keeps_existing(model, tmp_path):
    fails(cli("compress", model, "-o", tmp_path / "no" / "dir" / "x.dcf"), "cannot write")
    existing = tmp_path / "keep.dcf"
    existing.write_bytes(b"precious")
    fails(cli("compress", model, "-o", existing, "-p", "nosuch"), "nosuch")
    assert existing.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_no_stats_makes_a_smaller_file_that_decodes_the_same(tmp_path):
    rng = np.random.default_rng(3)
    model = tmp_path / "m.npz"
    np.savez(model, w=rng.laplace(0, 0.05, (64, 48)).astype(np.float32))
    with_stats = json.loads(cli("compress", model, "-o", tmp_path / "a.dcf", "--preset", "han", "--json", "-q").stdout)
    without = json.loads(cli("compress", model, "-o", tmp_path / "b.dcf", "--preset", "han", "--json", "-q",
                             "--no-stats").stdout)
    assert "rms" in with_stats["tensors"][0] and "rms" not in without["tensors"][0]
    assert without["compressed_bytes"] < with_stats["compressed_bytes"]
    a, b = dcframe.decompress(tmp_path / "a.dcf"), dcframe.decompress(tmp_path / "b.dcf")
    assert a["w"].array.tobytes() == b["w"].array.tobytes()
