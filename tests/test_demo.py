"""`dcframe demo`: the bundled data and model, the paper's targets, the file it writes and its JSON."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import dcframe
from dcframe import DcfError
from dcframe.analysis import demo
from dcframe.cli import main


def test_bundled_digits_and_model():
    x_train, y_train, x_test, y_test = demo.load_digits()
    assert x_train.shape == (1297, 784) and x_test.shape == (500, 784)
    assert np.bincount(y_test).tolist() == [50] * 10 and len(y_train) == 1297
    images = x_test.reshape(-1, 28, 28)
    assert not images[:, :4].any() and not images[:, 24:].any() and x_test.max() <= 1.0  # 4-pixel border
    model = demo.load_model()
    assert {k: v.shape for k, v in model.items()} == {
        "fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300), "fc2.bias": (100,),
        "fc3.weight": (10, 100), "fc3.bias": (10,)}
    assert sum(v.size for v in model.values()) == 266_610
    assert demo.evaluate(model) == 0.974  # the accuracy dcframe/data/README.md states


def test_resampling_is_exact_integer_bilinear():
    one = np.zeros((1, 8, 8), np.uint8)
    one[0, 3, 3] = 16
    out = demo.resample_28(one)[0]
    # output pixel i samples source position 0.4 i - 0.3: i = 8 -> 2.9 (0.9 of pixel 3), i = 7 -> 2.5 (0.5)
    assert out[4 + 8, 4 + 8] == 207 == out.max()  # round(0.9 * 0.9 * 255 = 206.55)
    assert out[4 + 7, 4 + 8] == 115  # round(0.5 * 0.9 * 255 = 114.75)
    flat = demo.resample_28(np.full((1, 8, 8), 16, np.uint8))[0]
    assert (flat[4:24, 4:24] == 255).all() and flat.sum() == 255 * 400


@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "lenet.dcf"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--json", "-q", "-o", str(path)]) == 0
    return path, json.loads(out.getvalue())


def test_demo_reaches_the_targets(demo_json):
    path, result = demo_json
    assert result["ratio"] >= 45
    assert result["file_bytes"] == path.stat().st_size
    assert result["original_bytes"] == 4 * 266_610
    acc = result["accuracy"]
    assert acc["dense"] - acc["final"] <= 0.005
    assert acc["pruned"] < acc["pruned_retrained"]  # retraining is what recovers the pruned network


def test_decoded_file_scores_exactly_the_reported_accuracy(demo_json):
    path, result = demo_json
    decoded = dcframe.decompress(path)
    assert demo.evaluate(decoded) == result["accuracy"]["final"] == result["accuracy"]["quantized_retrained"]
    for dense in decoded.values():
        values = dense.values()
        if values.ndim == 2:
            kept = values[values != 0]
            assert np.unique(kept).size <= 32
    layers = {r["layer"]: r for r in result["layers"]}
    assert layers["fc1.weight"]["kept_pct"] == pytest.approx(4.0, abs=0.01)
    assert layers["total"]["weights"] == 266_610


def test_demo_json_agrees_with_inspect(demo_json):
    path, result = demo_json
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", "--json", str(path)]) == 0
    inspected = json.loads(out.getvalue())
    assert result["report"] == inspected
    assert result["ratio"] == inspected["ratio"] and result["file_bytes"] == inspected["compressed_bytes"]
    by_name = {t["name"]: t for t in inspected["tensors"]}
    for row in result["layers"][:-1]:
        t = by_name[row["layer"]]
        assert row["rate_pqh"] == t["original_bytes"] / t["compressed_bytes"]
        assert row["weight_bits_pqh"] * row["weights"] * row["kept_pct"] / 100 == pytest.approx(
            8 * t["streams"]["values"])


def test_sweep_small(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "SWEEP", {"pruning": [demo.SWEEP["pruning"][3]],
                                        "quantization": [demo.SWEEP["quantization"][2]]})
    sweep = demo.run_sweep(epochs=0, directory=tmp_path)
    assert sweep["dense_accuracy"] == 0.974
    (prune,), (quant,) = sweep["series"]["pruning"], sweep["series"]["quantization"]
    assert prune["ratio"] > 5 and quant["ratio"] > 5
    assert 0.5 < prune["accuracy"] <= 1 and 0.5 < quant["accuracy"] <= 1


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(DcfError, match="pip install"):
        demo.require_matplotlib()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--sweep", "--plot", "x.png", "-q"]) == 1
    assert "matplotlib" in err.getvalue()


def _console80(monkeypatch):
    from rich.console import Console

    from dcframe import console

    recorder = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(console, "stdout", recorder)
    return recorder


def test_demo_table_at_80_columns_cuts_no_layer_name_or_number(demo_json, monkeypatch):
    from dcframe.commands import demo as command

    recorder = _console80(monkeypatch)
    command._tables(demo_json[1])
    text = recorder.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for layer in demo_json[1]["layers"]:
        row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith(layer["layer"] + " "))
        assert f"{layer['weights']:,}" in row and f"{layer['rate_pqh']:.1f}x" in row
    assert "decoded" in text and f"{100 * demo_json[1]['accuracy']['final']:.2f}%" in text


def test_sweep_table_at_80_columns_keeps_every_pipeline_whole(monkeypatch):
    from dcframe.commands import demo as command
    from dcframe.console import short_pipeline

    recorder = _console80(monkeypatch)
    series = {kind: [{"pipeline": p, "ratio": 10.0 + i, "accuracy": 0.9} for i, p in enumerate(pipelines)]
              for kind, pipelines in demo.SWEEP.items()}
    command._sweep_table({"dense_accuracy": 0.974, "epochs": 0, "series": series})
    text = recorder.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for pipelines in demo.SWEEP.values():
        for pipeline in pipelines:  # every word of every pipeline is printed whole: the rows stay apart
            assert all(word in text for word in short_pipeline(pipeline).split())
    assert all(kind in text for kind in demo.SWEEP)


def test_sweep_with_output_refuses_in_one_line(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--sweep", "-q", "-o", str(tmp_path / "sweep.dcf")]) == 1
    assert err.getvalue().count("\n") == 1 and "--sweep writes no container" in err.getvalue()
    assert not (tmp_path / "sweep.dcf").exists()


def test_demo_file_keeps_the_papers_chains_whatever_the_lossless_preset(demo_json):
    """The demo's weights take Huffman and its biases zstd -19, named by the demo (not the lossless preset's chain)."""
    _, result = demo_json
    chains = {t["name"]: t["pipeline"] for t in result["report"]["tensors"]}
    assert {chains[n] for n in chains if n.endswith(".bias")} == {"raw | zstd(level=19)"}
    assert all(chains[n].endswith("huffman(max_bits=12, segment_size=4096)") for n in chains if n.endswith(".weight"))
    assert all(rule.endswith("| rans") for rule in demo.DemoSettings(coder="rans").rules())
