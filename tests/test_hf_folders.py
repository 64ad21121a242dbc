"""Hugging Face folders in and out: shards and their index, __metadata__, the small files, --single-file, hostile
folders and hostile layouts, pickles refused; a tiny BERT loaded by transformers from the recreated folder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import dcframe
from dcframe.cli import main
from dcframe.core.container import MAX_FILES_BYTES, Container, Layout
from dcframe.core.errors import FormatError, LimitError, ModelIOError
from dcframe.io.hffolder import read_folder, write_folder
from dcframe.io.modelio import read_model, write_model


def safetensors_metadata(path: Path) -> dict:
    """The __metadata__ of a .safetensors file, as its header states it."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__", {})


def tensor_bytes(folder: Path) -> dict[str, bytes]:
    """Every tensor of a folder (name -> dtype, shape and bytes), whatever its shard."""
    tensors = read_folder(folder)
    return {n: (t.dtype, t.array.shape, np.ascontiguousarray(t.array).tobytes()) for n, t in tensors.items()}


def make_sharded(folder: Path, shards: dict[str, dict[str, np.ndarray]], weight_map: dict[str, str] | None = None,
                 extra: dict[str, bytes] | None = None) -> Path:
    """A folder of shards (each with {"format": "pt"}), their index (or `weight_map`) and small files."""
    folder.mkdir()
    for name, tensors in shards.items():
        write_model(folder / name, tensors, metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map if weight_map is not None else
             {t: name for name, tensors in shards.items() for t in tensors}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for name, data in (extra or {"config.json": b'{"model_type": "x"}\n'}).items():
        (folder / name).write_bytes(data)
    return folder


def two_shards() -> dict[str, dict[str, np.ndarray]]:
    r = np.random.default_rng(0)
    return {"model-00001-of-00002.safetensors": {"a.weight": r.normal(size=(4, 3)).astype(np.float32)},
            "model-00002-of-00002.safetensors": {"b.weight": r.normal(size=(5,)).astype(np.float16),
                                                 "b.bias": np.arange(3, dtype=np.int64)}}


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI; (exit code, stderr)."""
    code = main(argv)
    return code, capsys.readouterr().err


# --- a folder of shards, without transformers -----------------------------------------------------------------------

def test_sharded_folder_round_trip_is_exact(tmp_path: Path, capsys) -> None:
    """Shards, their tensors, each shard's __metadata__, the index's weight map and every small file come back."""
    src = make_sharded(tmp_path / "src", two_shards(), extra={"config.json": b'{"a": 1}', "tokenizer.json": b"\x00tok"})
    assert run(["compress", str(src), "-o", str(tmp_path / "m.dcf"), "-q"], capsys)[0] == 0
    with Container(tmp_path / "m.dcf") as c:
        assert c.version == (1, 1)
    assert run(["decompress", str(tmp_path / "m.dcf"), "-o", str(tmp_path / "out"), "-q"], capsys)[0] == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert tensor_bytes(out) == tensor_bytes(src)
    for shard in two_shards():
        assert list(read_model(out / shard)) == list(read_model(src / shard))
        assert safetensors_metadata(out / shard) == {"format": "pt"}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["metadata"]["total_size"] == 4 * 3 * 4 + 5 * 2 + 3 * 8
    for name in ("config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_single_file_merges_the_shards(tmp_path: Path, capsys) -> None:
    """--single-file: one model.safetensors with every tensor and the metadata the shards share; no index."""
    src = make_sharded(tmp_path / "src", two_shards())
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    code, _ = run(["decompress", str(tmp_path / "m.dcf"), "-o", str(tmp_path / "one"), "--single-file", "-q"], capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json", "model.safetensors"]
    merged = read_model(tmp_path / "one" / "model.safetensors")
    assert sorted(merged) == ["a.weight", "b.bias", "b.weight"]
    assert safetensors_metadata(tmp_path / "one" / "model.safetensors") == {"format": "pt"}
    assert tensor_bytes(tmp_path / "one") == tensor_bytes(src)


def test_plain_safetensors_keeps_its_metadata(tmp_path: Path, capsys) -> None:
    """A single .safetensors file through compress and decompress keeps its __metadata__ (it was dropped before)."""
    write_model(tmp_path / "w.safetensors", {"w": np.ones((2, 2), np.float32)}, metadata={"format": "pt", "k": "v"})
    assert run(["compress", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "w.dcf"), "-q"], capsys)[0] == 0
    assert run(["decompress", str(tmp_path / "w.dcf"), "-o", str(tmp_path / "back.safetensors"), "-q"], capsys)[0] == 0
    assert safetensors_metadata(tmp_path / "back.safetensors") == {"format": "pt", "k": "v"}


def test_a_bad_layout_does_not_stop_a_file_output(tmp_path: Path, capsys, monkeypatch) -> None:
    """Decompressing to a .safetensors file with a malformed layout: a warning, the tensors, no __metadata__."""
    write_model(tmp_path / "w.safetensors", {"w": np.ones(3, np.float32)}, metadata={"format": "pt"})
    dcframe.compress(read_model(tmp_path / "w.safetensors"), tmp_path / "w.dcf")

    def hostile(self):
        raise FormatError(f"{self.path}: layout: shard 0 '../x.safetensors': bad")

    monkeypatch.setattr(Container, "layout", hostile)
    code, err = run(["decompress", str(tmp_path / "w.dcf"), "-o", str(tmp_path / "W.SAFETENSORS"), "-q"], capsys)
    assert code == 0 and "warning" in err and "without __metadata__" in err
    assert safetensors_metadata(tmp_path / "W.SAFETENSORS") == {}
    assert read_model(tmp_path / "W.SAFETENSORS")["w"].array.tolist() == [1.0, 1.0, 1.0]


def test_a_container_without_layout_becomes_model_safetensors(tmp_path: Path, capsys) -> None:
    """A container written from arrays (no layout) decompresses into a folder as one model.safetensors."""
    dcframe.compress({"w": np.arange(6, dtype=np.float32)}, tmp_path / "w.dcf")
    assert run(["decompress", str(tmp_path / "w.dcf"), "-o", str(tmp_path / "out"), "-q"], capsys)[0] == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors"]
    assert read_model(tmp_path / "out" / "model.safetensors")["w"].array.tobytes() == np.arange(6, dtype=np.float32
                                                                                                 ).tobytes()


@pytest.mark.parametrize("processes", [True, False])
def test_parallel_compress_of_a_folder_gives_the_serial_bytes(tmp_path: Path, monkeypatch, processes) -> None:
    """Worker processes re-open each tensor's own shard, threads (the lossless chain's default where its kernels
    run) read the folder's mapping: --jobs 2 writes the same file as a serial run either way."""
    from dcframe.core import orchestrator

    if processes:
        monkeypatch.setattr(orchestrator, "threadable", lambda stages: False)
    src = make_sharded(tmp_path / "src", two_shards())
    dcframe.compress(read_folder(src), tmp_path / "serial.dcf", preset="lossless")
    dcframe.compress(read_folder(src), tmp_path / "jobs.dcf", preset="lossless", jobs=2)
    assert (tmp_path / "serial.dcf").read_bytes() == (tmp_path / "jobs.dcf").read_bytes()


def test_output_folder_must_be_new_or_empty(tmp_path: Path, capsys) -> None:
    """A non-empty folder is refused and left as it was; overwrite replaces the model files and drops stale
    weights of another layout (a loader would pick a stale model.safetensors over the shards)."""
    src = make_sharded(tmp_path / "src", two_shards())
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old weights")
    (out / "notes.txt").write_bytes(b"mine")
    code, err = run(["decompress", str(tmp_path / "m.dcf"), "-o", str(out), "-q"], capsys)
    assert code == 1 and "not empty" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "notes.txt"]
    assert (out / "model.safetensors").read_bytes() == b"old weights"
    (tmp_path / "empty").mkdir()
    assert run(["decompress", str(tmp_path / "m.dcf"), "-o", str(tmp_path / "empty"), "-q"], capsys)[0] == 0
    assert tensor_bytes(tmp_path / "empty") == tensor_bytes(src)
    with Container(tmp_path / "m.dcf") as c:
        write_folder(out, c, overwrite=True)
    assert not (out / "model.safetensors").exists() and (out / "notes.txt").read_bytes() == b"mine"
    assert tensor_bytes(out) == tensor_bytes(src)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging folder was left behind"


def test_a_killed_runs_staging_folder_is_removed(tmp_path: Path) -> None:
    """The hidden staging folder of a run that was killed (its process gone, older than this one) is removed by the
    next folder output beside it; a live process's is not touched."""
    import os
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".out.dcftmp-{child.pid}-abc123.tmp"
    live = tmp_path / f".out.dcftmp-{os.getpid()}-abc456.tmp"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
        os.utime(d, (time.time() - 3600,) * 2)
    src = make_sharded(tmp_path / "src", two_shards())
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    with Container(tmp_path / "m.dcf") as c:
        write_folder(tmp_path / "out", c)
    assert not stale.exists() and live.exists()


HOSTILE = [
    ("missing-shard", lambda s: ({k: v for k, v in s.items() if "00002" not in k}, None),
     "model.safetensors.index.json", "does not have"),
    ("tensor-no-shard-has", lambda s: (s, {"a.weight": "model-00001-of-00002.safetensors", "b.weight":
                                           "model-00002-of-00002.safetensors", "b.bias": "model-00002-of-00002"
                                           ".safetensors", "ghost": "model-00001-of-00002.safetensors"}),
     "model.safetensors.index.json", "'ghost' is listed in model-00001-of-00002.safetensors"),
    ("two-shards-same-name", lambda s: ({**s, "model-00002-of-00002.safetensors": {
        **s["model-00002-of-00002.safetensors"], "a.weight": np.zeros(1, np.float32)}},
        {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
         "b.bias": "model-00002-of-00002.safetensors"}),
     "model-00002-of-00002.safetensors", "'a.weight' is also in model-00001-of-00002.safetensors"),
    ("tensor-not-in-index", lambda s: (s, {"a.weight": "model-00001-of-00002.safetensors",
                                           "b.weight": "model-00002-of-00002.safetensors"}),
     "model-00002-of-00002.safetensors", "'b.bias' is not in model.safetensors.index.json"),
    ("shard-not-in-index", lambda s: (s, {"a.weight": "model-00001-of-00002.safetensors"}),
     "model-00002-of-00002.safetensors", "not in model.safetensors.index.json"),
    ("shard-path-escapes", lambda s: (s, {"a.weight": "../model-00001-of-00002.safetensors"}),
     "model.safetensors.index.json", "no path separator"),
]


@pytest.mark.parametrize("name, edit, file, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_folders_give_one_line_errors(tmp_path: Path, capsys, name, edit, file, message) -> None:
    """A shard missing, a tensor the named shard lacks, a name in two shards, an unlisted tensor, a shard path
    leaving the folder: one line naming the file, exit 1, no output."""
    shards, weight_map = edit(two_shards())
    src = tmp_path / "src"
    make_sharded(src, shards, weight_map)
    if name == "missing-shard":
        (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            t: n for n, ts in two_shards().items() for t in ts}}))
    code, err = run(["compress", str(src), "-o", str(tmp_path / "m.dcf"), "-q"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(src / file) in err and message in err, err
    assert "Traceback" not in err and not (tmp_path / "m.dcf").exists()


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"weight_map": {"a": 1}}', b'{"weight_map": {}}',
                                     b'{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}',
                                     b'{"metadata": {"n": 18014398509481985}, "weight_map": {"a.weight": '
                                     b'"model-00001-of-00002.safetensors"}}'])
def test_malformed_index_files(tmp_path: Path, content: bytes) -> None:
    """An index that is not JSON, not a map of names to shard files, empty, or repeats a name: ModelIOError."""
    src = make_sharded(tmp_path / "src", two_shards())
    (src / "model.safetensors.index.json").write_bytes(content)
    with pytest.raises(ModelIOError, match="model.safetensors.index.json"):
        read_folder(src)


def test_non_weight_file_over_the_limit(tmp_path: Path, capsys) -> None:
    """The folder's small files are bounded in total: the file that goes over is named."""
    src = make_sharded(tmp_path / "src", two_shards(), extra={"config.json": b"{}", "tf_model.h5": b"\0" *
                                                               (MAX_FILES_BYTES + 1)})
    code, err = run(["compress", str(src), "-o", str(tmp_path / "m.dcf"), "-q"], capsys)
    assert code == 1 and str(src / "tf_model.h5") in err and "move it" in err, err


def test_pickles_are_refused_with_how_to_convert(tmp_path: Path, capsys) -> None:
    """A folder with only pytorch_model.bin is refused (never unpickled), saying how to get safetensors."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (tmp_path / "src" / "config.json").write_text("{}")
    code, err = run(["compress", str(tmp_path / "src"), "-o", str(tmp_path / "m.dcf"), "-q"], capsys)
    assert code == 1 and "pytorch_model.bin" in err and "save_pretrained" in err and "safe_serialization=True" in err


def test_pickles_and_subfolders_beside_safetensors_are_skipped_with_a_warning(tmp_path: Path, capsys) -> None:
    """Beside safetensors weights, a pickle and a subfolder are not stored (never read), and the CLI says so."""
    src = make_sharded(tmp_path / "src", two_shards())
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (src / "1_Pooling").mkdir()
    code, err = run(["compress", str(src), "-o", str(tmp_path / "m.dcf"), "-q"], capsys)
    assert code == 0 and "not stored: pytorch_model.bin" in err and "not stored: 1_Pooling/" in err
    assert read_folder(src).layout.files == {"config.json": b'{"model_type": "x"}\n'}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["shards"][0].update(file="..evil.safetensors"), "no '..'"),
    (lambda r: r["shards"][0].update(file="../evil.safetensors"), "path separator"),
    (lambda r: r["files"].update({"sub/x": b""}), "path separator"),
    (lambda r: r["files"].update({"model-00001-of-00002.safetensors": b""}), "another file"),
    (lambda r: r["files"].update({"big": b"\0" * (MAX_FILES_BYTES + 1)}), "over the limit"),
    (lambda r: r.update(tensor_shards=[0]), "one shard number"),
    (lambda r: r.update(tensor_shards=[0, 0, 7]), "one shard number"),
    (lambda r: r.pop("index"), "no index file"),
    (lambda r: r["shards"][1].update(metadata={"format": 1}), "strings to strings"),
])
def test_hostile_layouts_are_refused_before_writing(tmp_path: Path, change, message) -> None:
    """A container's layout names only plain files inside the output folder, within the limits; the tensors of
    such a file still read."""
    src = make_sharded(tmp_path / "src", two_shards())
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    with Container(tmp_path / "m.dcf") as c:
        raw = read_folder(src).layout.to_index(c.names, "x")
        change(raw)
        c._layout = raw  # as a hostile file would state it
        with pytest.raises(FormatError, match=message):
            write_folder(tmp_path / "out", c)
        assert c.read("a.weight").array.shape == (4, 3)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.safetensors").exists()
    with pytest.raises(FormatError):
        Layout.from_index(raw, ["a.weight", "b.weight", "b.bias"], "x")


def _frame(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=3).compress(data)


TOKENS = "".join(f"token{i % 97}\n" for i in range(2000)).encode()  # packs to a small fraction of its size


def test_compressible_files_are_packed_and_come_back_byte_for_byte(tmp_path: Path) -> None:
    """A folder's file that zstd shrinks is stored packed (version 1.2, fewer bytes than the file), one it does not
    shrink stays as it is; the recreated folder holds both byte for byte."""
    src = make_sharded(tmp_path / "src", two_shards(), extra={"vocab.txt": TOKENS, "config.json": b'{"a": 1}'})
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    with Container(tmp_path / "m.dcf") as c:
        assert c.version == (1, 2)
        entry = c._layout["files"]["vocab.txt"]
        assert set(entry) == {"zstd", "size"} and entry["size"] == len(TOKENS) and len(entry["zstd"]) < len(TOKENS) / 10
        assert isinstance(c._layout["files"]["config.json"], bytes)
        write_folder(tmp_path / "out", c)
    assert (tmp_path / "out" / "vocab.txt").read_bytes() == TOKENS
    assert (tmp_path / "out" / "config.json").read_bytes() == (src / "config.json").read_bytes()
    small = make_sharded(tmp_path / "small", two_shards())
    dcframe.compress(read_folder(small), tmp_path / "s.dcf")
    with Container(tmp_path / "s.dcf") as c:
        assert c.version == (1, 1)  # nothing worth packing: the file stays readable as 1.1 wrote it


@pytest.mark.parametrize("entry, error, message", [
    ({"zstd": _frame(TOKENS), "size": len(TOKENS) + 1}, FormatError, "content size"),
    ({"zstd": _frame(TOKENS) + b"\0", "size": len(TOKENS)}, FormatError, "corrupt zstd frame"),
    ({"zstd": _frame(TOKENS) + _frame(b""), "size": len(TOKENS)}, FormatError, "corrupt zstd frame"),
    ({"zstd": b"PK\3\4 not zstd", "size": 4}, FormatError, "does not start with a Zstandard frame"),
    ({"zstd": _frame(TOKENS)[:-3], "size": len(TOKENS)}, FormatError, "vocab.txt"),
    ({"zstd": _frame(TOKENS), "size": MAX_FILES_BYTES}, LimitError, "over the limit"),
    ({"zstd": _frame(TOKENS), "size": -1}, FormatError, "files is not a map"),
    ({"zstd": _frame(TOKENS), "size": True}, FormatError, "files is not a map"),
    ({"zstd": _frame(TOKENS), "size": len(TOKENS), "level": 3}, FormatError, "files is not a map"),
])
def test_hostile_packed_files_are_refused_before_writing(tmp_path: Path, entry, error, message) -> None:
    """A packed file must be one zstd frame of exactly its stated size, within the limits counted by that size; else
    one error naming the file, nothing written, and the tensors still read."""
    src = make_sharded(tmp_path / "src", two_shards(), extra={"big.txt": b"x" * (MAX_FILES_BYTES - 4 * len(TOKENS))})
    dcframe.compress(read_folder(src), tmp_path / "m.dcf")
    with Container(tmp_path / "m.dcf") as c:
        raw = read_folder(src).layout.to_index(c.names, "x")
        raw["files"]["vocab.txt"] = entry
        c._layout = raw
        with pytest.raises(error, match=message):
            write_folder(tmp_path / "out", c)
        assert c.read("a.weight").array.shape == (4, 3)
    assert not (tmp_path / "out").exists()


# --- a real (tiny) Hugging Face model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A tiny BERT saved by transformers in 4 shards (max_shard_size), with a BertTokenizerFast's files."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxy"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True, max_shard_size="5KB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    return folder


def bert_outputs(folder: Path):
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model(**tokenizer(["a b c", "d e"], return_tensors="pt", padding=True)).last_hidden_state


def test_bert_folder_round_trip_loads_in_transformers(bert: Path, tmp_path: Path, capsys) -> None:
    """Compress the folder, decompress to a folder: transformers loads it and gives exactly the same outputs; every
    non-weight file is byte for byte the original."""
    assert run(["compress", str(bert), "-o", str(tmp_path / "bert.dcf"), "-q"], capsys)[0] == 0
    assert run(["decompress", str(tmp_path / "bert.dcf"), "-o", str(tmp_path / "out"), "-q"], capsys)[0] == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in bert.iterdir())
    for f in bert.iterdir():
        if not f.name.endswith(".safetensors"):
            if f.name.endswith(".index.json"):
                assert json.loads(f.read_text())["weight_map"] == json.loads((out / f.name).read_text())["weight_map"]
            else:
                assert (out / f.name).read_bytes() == f.read_bytes(), f.name
        else:
            assert safetensors_metadata(out / f.name) == safetensors_metadata(f) == {"format": "pt"}
    assert tensor_bytes(out) == tensor_bytes(bert)
    assert bert_outputs(out).numpy().tobytes() == bert_outputs(bert).numpy().tobytes()


def test_bert_single_file_loads_in_transformers(bert: Path, tmp_path: Path, capsys) -> None:
    """--single-file on a real sharded checkpoint: one model.safetensors that transformers loads, same outputs."""
    dcframe.compress(read_folder(bert), tmp_path / "bert.dcf")
    code, _ = run(["decompress", str(tmp_path / "bert.dcf"), "-o", str(tmp_path / "one"), "--single-file", "-q"],
                  capsys)
    assert code == 0 and not list((tmp_path / "one").glob("*.index.json"))
    assert bert_outputs(tmp_path / "one").numpy().tobytes() == bert_outputs(bert).numpy().tobytes()
