"""Safe by default (issue: pretrained models): how far tensors moved is reported, and a far move is warned about."""

import json
import subprocess
import sys

import numpy as np

import dcframe


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *args], capture_output=True, text=True)


def test_rel_rms_is_the_rms_error_over_the_tensors_own_rms(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    report = dcframe.compress({"w": w}, tmp_path / "m.dcf", pipeline="kmeans(bits=3) | huffman")
    got = dcframe.decompress(tmp_path / "m.dcf")["w"].array.astype(np.float64)
    expected = np.sqrt(np.mean((got - w) ** 2)) / np.sqrt(np.mean(w.astype(np.float64) ** 2))
    assert abs(report["tensors"][0]["rel_rms"] - expected) < 1e-9


def test_compress_warns_once_when_a_tensor_moved_far_and_not_otherwise(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"l{i}.weight": rng.normal(size=(40, 30)).astype(np.float32) for i in range(3)}
    tensors["l0.bias"] = rng.normal(size=40).astype(np.float32)
    dcframe.write_model(tmp_path / "m.safetensors", tensors)
    far = _cli("compress", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "a.dcf"), "--preset", "han", "--json")
    assert far.returncode == 0
    lines = far.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcframe: warning: 3 of 4 tensors moved more than 20%")
    assert "--preset pretrained" in lines[0]
    report = json.loads(far.stdout)
    assert all(t["rel_rms"] > 0.2 for t in report["tensors"] if t["name"].endswith("weight"))
    near = _cli("compress", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "b.dcf"), "--preset", "quantize8")
    assert near.returncode == 0 and near.stderr == ""
    exact = dcframe.decompress(tmp_path / "b.dcf")["l0.bias"].array
    assert exact.tobytes() == tensors["l0.bias"].tobytes()  # rank 1 stays exact under quantize8 too


def test_pretrained_presets_find_query_key_projections_by_the_names_common_architectures_use():
    from dcframe.core.pipeline import Policy

    names = {"bert": "encoder.layer.0.attention.self.{}.weight",
             "mpnet": "encoder.layer.0.attention.attn.{}.weight",
             "llama": "model.layers.0.self_attn.{}_proj.weight",
             "distilbert": "transformer.layer.0.attention.{}_lin.weight",
             "deberta": "encoder.layer.0.attention.self.{}_proj.weight",
             "t5": "encoder.block.0.layer.0.SelfAttention.{}.weight"}
    short = {"bert": ("query", "key", "value"), "deberta": ("query", "key", "value")}
    for preset in ("pretrained", "pretrained-calibrated"):
        policy = Policy(preset=preset)
        for arch, pattern in names.items():
            q, k, v = (pattern.format(p) for p in short.get(arch, ("q", "k", "v")))
            chains = {n: policy.pipeline_for(n, (64, 64), "F32") for n in (q, k, v)}
            assert chains[q] == chains[k] != chains[v], (preset, arch, chains)
