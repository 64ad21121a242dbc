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
    assert out.returncode == 0 and "4 tensors:" in out.stdout and "--tensors" in out.stdout
    assert "fc.weight" not in out.stdout  # the summary names pipelines, not tensors (no lossy tensor here)
    listed = cli("inspect", tmp_path / "m.dcf", "--tensors")
    assert listed.returncode == 0 and "fc.weight" in listed.stdout and "4 tensors:" in listed.stdout
    assert cli("inspect", tmp_path / "m.dcf", "-v").stdout == listed.stdout
    assert "zstd" in cli("stages").stdout


def narrow(*args, columns=80):
    """The CLI with stdout piped but COLUMNS set, as a terminal of that width would show it."""
    env = dict(os.environ, COLUMNS=str(columns))
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.fixture
def model100(tmp_path):
    """100 tensors named like a transformer's: long names, lossy matrices and exact vectors under --preset han."""
    rng = np.random.default_rng(2)
    tensors = {}
    for i in range(10):
        for part in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "ffn.lin1", "ffn.lin2"):
            prefix = f"distilbert.transformer.layer.{i}.{part}"
            tensors[f"{prefix}.weight"] = rng.standard_normal((24, 16)).astype(np.float32) * (1 + i)
            tensors[f"{prefix}.bias"] = rng.standard_normal(24).astype(np.float32)
    path = tmp_path / "m100.safetensors"
    write_model(path, tensors)
    return path, list(tensors)


def first_column(text: str, title: str) -> list[str]:
    """The cells of the first column of the table titled `title`, folded pieces joined (names hold no spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rule = next(i for i in range(start, len(lines)) if set(lines[i].strip()) <= set("━╇┡┩─┼├┤"))
    cells: list[str] = []
    for line in lines[rule + 1:]:
        tokens = line.translate(str.maketrans("│┃", "  ")).split()
        if not tokens or set(line.strip()) <= set("─┴└┘"):  # a table ends with a blank line or its bottom edge
            break
        if len(tokens) > 1:
            cells.append(tokens[0])
        else:
            cells[-1] += tokens[0]
    return cells


def test_default_summary_fits_80_columns_and_40_lines(model100, tmp_path):
    path, names = model100
    out = narrow("compress", path, "-o", tmp_path / "m.dcf", "--preset", "han", "-q")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").splitlines()
    assert len(lines) <= 40, out.stdout
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in out.stdout and "..." not in out.stdout
    assert "100 tensors:" in out.stdout and "container overhead" in out.stdout
    assert sum(line.lstrip().startswith(("1 ", "2 ")) for line in lines) == 2  # one row per pipeline
    report = json.loads(cli("inspect", tmp_path / "m.dcf", "--json").stdout)
    lossy = sorted((t for t in report["tensors"] if "rel_rms" in t), key=lambda t: -t["rel_rms"])
    assert first_column(out.stdout, "worst 5 of 50 lossy tensors") == [t["name"] for t in lossy[:5]]
    assert narrow("inspect", tmp_path / "m.dcf").stdout == out.stdout


def test_tensors_flag_lists_every_name_whole_at_80_columns(model100, tmp_path):
    path, names = model100
    out = narrow("compress", path, "-o", tmp_path / "m.dcf", "--preset", "han", "-q", "--tensors")
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout and max(len(line.rstrip()) for line in out.stdout.splitlines()) <= 80
    assert first_column(out.stdout, str(tmp_path / "m.dcf")) == names
    assert first_column(out.stdout, "errors") == [n for n in names if n.endswith(".weight")]
    assert "streams" in out.stdout and "100 tensors:" in out.stdout
    wide = narrow("inspect", tmp_path / "m.dcf", "-v", columns=200)
    assert first_column(wide.stdout, str(tmp_path / "m.dcf")) == names
    assert len(wide.stdout.splitlines()) < len(out.stdout.splitlines())  # no folding needed at 200 columns


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
    fails(cli("compress", model, "-o", existing, "-p", "nosuch", "-f"), "nosuch")  # forced, and still kept
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


def test_existing_output_is_kept_unless_force(model, tmp_path):
    out = tmp_path / "m.dcf"
    out.write_bytes(b"precious")
    fails(cli("compress", model, "-o", out, "-q"), "m.dcf", "already exists", "-f/--force")
    assert out.read_bytes() == b"precious"
    assert cli("compress", model, "-o", out, "-q", "-f").returncode == 0 and out.read_bytes()[:4] != b"prec"
    back = tmp_path / "back.safetensors"
    back.write_bytes(b"mine")
    fails(cli("decompress", out, "-o", back, "-q"), "back.safetensors", "already exists")
    assert back.read_bytes() == b"mine"
    assert cli("decompress", out, "-o", back, "-q", "--force").returncode == 0
    assert back.read_bytes() == model.read_bytes()
    (tmp_path / "dangling.dcf").symlink_to(tmp_path / "nowhere")
    fails(cli("compress", model, "-o", tmp_path / "dangling.dcf", "-q"), "already exists")
    assert not (tmp_path / "nowhere").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    dcframe.compress(read_model_dict(model), out)  # the Python API still replaces, as documented
    assert dcframe.inspect(out)["tensors"][0]["name"] == "fc.weight"


def test_a_missing_input_is_named_before_an_existing_output(model, tmp_path):
    out, back = tmp_path / "m.dcf", tmp_path / "back.npz"
    out.write_bytes(b"precious")
    back.write_bytes(b"mine")
    fails(cli("compress", tmp_path / "typo.safetensors", "-o", out, "-q"), "typo.safetensors", "no such file")
    fails(cli("decompress", tmp_path / "typo.dcf", "-o", back, "-q"), "typo.dcf", "no such file")
    fails(cli("tune", tmp_path / "typo.safetensors", "-o", out, "--budget", "0.1", "-q"), "typo.safetensors",
          "no such file")
    assert out.read_bytes() == b"precious" and back.read_bytes() == b"mine"


def read_model_dict(path):
    return dict(dcframe.read_model(path))


def test_rule_that_matches_nothing_warns_once_per_rule(model, tmp_path):
    out = cli("compress", model, "-o", tmp_path / "m.dcf", "-q", "--rule", "*.weigth=zstd", "--rule",
              "dim:4=zstd(level=3)", "--rule", "fc.*=zstd(level=5)", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("dcframe: warning: --rule '*.weigth=zstd' matched none of the 4 tensors")
    assert "names look like 'fc.weight'" in lines[0]
    assert "'dim:4=zstd(level=3)'" in lines[1] and "ranks 0, 1, 2" in lines[1]
    assert json.loads(out.stdout)["tensors"][0]["pipeline"].endswith("zstd(level=5)")
