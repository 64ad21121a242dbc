"""Calibration files (spec/calibration.md): round trip, matching to a model, hostile files, side inputs in compress."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

import dcframe
from dcframe.core.errors import ConfigError, DcfError
from dcframe.io.calibration import Calibration, as_calibration


def _model(rng):
    return {"fc.weight": rng.normal(size=(8, 6)).astype(np.float32), "fc.bias": np.zeros(8, np.float32),
            "emb.weight": rng.normal(size=(10, 4)).astype(np.float32)}


def _calibration(rng):
    x = rng.normal(size=(50, 6))
    return Calibration({"fc.weight": {"activation": (x * x).mean(0)[None, :].astype(np.float32),
                                      "hessian": (x.T @ x / 50).astype(np.float32)},
                        "emb.weight": {"activation": np.arange(10, dtype=np.float32)[:, None] / np.float32(45),
                                       "token_count": np.arange(10, dtype=np.int64)}}, samples=50, source="test")


def test_round_trip_keeps_every_statistic_bit_for_bit(tmp_path):
    calib = _calibration(np.random.default_rng(0))
    calib.save(tmp_path / "c.safetensors")
    back = Calibration.load(tmp_path / "c.safetensors")
    assert back.samples == 50 and back.source == "test"
    assert set(back.entries) == set(calib.entries)
    for name, stats in calib.entries.items():
        assert set(back.entries[name]) == set(stats)
        for stat, array in stats.items():
            got = back.entries[name][stat]
            assert got.dtype == array.dtype and got.tobytes() == array.tobytes()


def test_side_inputs_are_element_aligned_views_and_the_hessian():
    rng = np.random.default_rng(1)
    model, calib = _model(rng), _calibration(rng)
    side = calib.side_inputs("fc.weight", dcframe.Dense.of(model["fc.weight"]))
    assert side["activation"].shape == (8, 6) and side["hessian"].shape == (6, 6)
    assert np.array_equal(side["activation"][3], calib.entries["fc.weight"]["activation"][0])
    emb = calib.side_inputs("emb.weight", dcframe.Dense.of(model["emb.weight"]))["activation"]
    assert emb.shape == (10, 4) and np.array_equal(emb[:, 2], np.arange(10, dtype=np.float32) / np.float32(45))
    assert calib.side_inputs("fc.bias", dcframe.Dense.of(model["fc.bias"])) == {}


def test_names_match_with_or_without_a_prefix():
    calib = Calibration({"encoder.fc.weight": {"activation": np.ones((1, 3), np.float32)}})
    assert calib.lookup("bert.encoder.fc.weight") is not None
    assert calib.lookup("fc.weight") is not None
    assert calib.lookup("other.weight") is None


@pytest.mark.parametrize("entries, message", [
    ({"nothere.weight": {"activation": np.ones((1, 6), np.float32)}}, "'nothere.weight' is not a tensor of the model"),
    ({"fc.weight": {"activation": np.ones((1, 5), np.float32)}}, "does not broadcast"),
    ({"fc.weight": {"hessian": np.ones((5, 5), np.float32)}}, "its hessian [5, 5]"),
    ({"fc.weight": {"fisher": np.ones((6, 8), np.float32)}}, "its fisher statistic"),
    ({"fc.weight": {"output": np.ones((3, 1), np.float32)}}, "its output statistic [3, 1] does not broadcast"),
])
def test_a_calibration_that_does_not_fit_the_model_names_the_weight(tmp_path, entries, message):
    model = _model(np.random.default_rng(2))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dcframe.compress(model, tmp_path / "m.dcf", pipeline='prune(sparsity=0.5, criterion="wanda")',
                         calibration=Calibration(entries))
    assert not (tmp_path / "m.dcf").exists()


def _safetensors(path, header: dict, data: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize("header, data, message", [
    ({}, b"", "not a dcframe calibration file"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "2"}}, b"", "calibration version '2'"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "1"},
      "w::activation": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, np.float32(np.nan).tobytes(),
     "NaN or infinity"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "1"},
      "w::activation": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, np.float32(-1).tobytes(),
     "negative"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "1"},
      "w::output": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, np.float32(-2).tobytes(),
     "negative"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "1"},
      "w::colour": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, np.float32(1).tobytes(),
     "WEIGHT::STAT"),
    ({"__metadata__": {"format": "dcframe.calibration", "version": "1"},
      "w::activation": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4]}}, np.float32(1).tobytes(),
     "do not fit"),
    ({"__metadata__": {"format": ["dcframe.calibration"]}}, b"", "must map strings to strings"),
])
def test_hostile_calibration_files_are_one_line_errors(tmp_path, header, data, message):
    path = tmp_path / "c.safetensors"
    _safetensors(path, header, data)
    with pytest.raises(DcfError, match=message) as info:
        as_calibration(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_cli_refuses_a_calibration_of_another_model_in_one_line(tmp_path):
    rng = np.random.default_rng(3)
    dcframe.write_model(tmp_path / "m.safetensors", _model(rng))
    Calibration({"other.weight": {"activation": np.ones((1, 6), np.float32)}}).save(tmp_path / "c.safetensors")
    done = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "m.safetensors"), "-o",
                           str(tmp_path / "m.dcf"), "-p", 'prune(sparsity=0.5, criterion="wanda")', "--calibration",
                           str(tmp_path / "c.safetensors")], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "'other.weight'" in done.stderr
    assert not (tmp_path / "m.dcf").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_wanda_through_compress_uses_the_calibration_and_the_file_does_not_depend_on_it(tmp_path, jobs):
    rng = np.random.default_rng(4)
    model = {f"l{i}.weight": rng.normal(size=(16, 6)).astype(np.float32) for i in range(3)}
    act = np.array([[100.0, 100.0, 100.0, 1e-4, 1e-4, 1e-4]], np.float32)  # the last three inputs barely matter
    calib = Calibration({name: {"activation": act} for name in model})
    path = tmp_path / "m.dcf"
    dcframe.compress(model, path, pipeline='prune(sparsity=0.5, criterion="wanda") | zstd', calibration=calib,
                     jobs=jobs)
    out = dcframe.decompress(path)
    for name, w in model.items():
        got = out[name].array
        assert np.all(got[:, 3:] == 0) and np.array_equal(got[:, :3], w[:, :3])  # unimportant inputs pruned
    info = dcframe.inspect(path)
    assert "calibration" not in json.dumps(info["metadata"])


def test_compress_accepts_a_calibration_file_path(tmp_path):
    rng = np.random.default_rng(5)
    model = _model(rng)
    _calibration(rng).save(tmp_path / "c.safetensors")
    report = dcframe.compress(model, tmp_path / "m.dcf", pipeline='kmeans(bits=2, weighting="activation") | huffman',
                              calibration=tmp_path / "c.safetensors")
    chains = {t["name"]: t["pipeline"] for t in report["tensors"]}
    assert "weighting" in chains["fc.weight"] and chains["fc.bias"].startswith("bytegroup")  # lossless
