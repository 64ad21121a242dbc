"""A stage from a separately installed distribution is discovered, listed, used, and named when missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dcframe

EXAMPLE = Path(__file__).parent / "plugin_example"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, cwd=build)
    return target


def cli(*args, plugins=None, extra_env=None):
    env = dict(os.environ)
    env.pop("DCFRAME_PLUGINS", None)
    if plugins:
        env["PYTHONPATH"] = str(plugins) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


def test_third_party_stage_is_listed_used_and_decoded(plugin_dir, tmp_path):
    listing = json.loads(cli("stages", "--json", plugins=plugin_dir).stdout)
    mine = [s for s in listing["stages"] if s["id"] == "byteshuffle"]
    assert mine and mine[0]["package"] == "dcframe-byteshuffle" and mine[0]["parameters"] == {"itemsize": 4}

    model = tmp_path / "m.npz"
    weights = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    np.savez(model, w=weights)
    out = cli("compress", model, "-o", tmp_path / "m.dcf", "-p", "byteshuffle(itemsize=4) | zstd", "--json",
              plugins=plugin_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tensors"][0]["pipeline"] == "raw | byteshuffle(itemsize=4) | zstd(level=19)"
    assert cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / "back.npz", plugins=plugin_dir).returncode == 0
    assert np.load(tmp_path / "back.npz")["w"].tobytes() == weights.tobytes()

    missing = cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / "again.npz")
    assert missing.returncode == 1
    assert "stage 'byteshuffle' (from package 'dcframe-byteshuffle') is not installed" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "again.npz").exists()
    # inspect needs no stage code at all
    assert cli("inspect", tmp_path / "m.dcf", "--json").returncode == 0
    # verify says the stage is missing, not that the file is damaged
    checked = cli("verify", tmp_path / "m.dcf", "--json")
    report = json.loads(checked.stdout)
    assert checked.returncode == 1 and report["unreadable"] == ["w"] and report["damaged"] == []
    assert json.loads(cli("verify", tmp_path / "m.dcf", "--json", plugins=plugin_dir).stdout)["ok"] is True


def test_plugin_allow_list_restricts_loading(plugin_dir):
    listing = json.loads(cli("stages", "--json", plugins=plugin_dir,
                             extra_env={"DCFRAME_PLUGINS": "raw,generic"}).stdout)
    assert {s["id"] for s in listing["stages"]} == {"raw", "zlib", "zstd", "lzma", "bz2"}


def test_stage_contract_helpers_accept_the_builtin_codecs():
    from dcframe.core.registry import get_registry
    from dcframe.testing import check_stage

    for stage_id in ("zlib", "zstd", "lzma", "bz2"):
        check_stage(get_registry().build(stage_id, {}), dcframe.Bytes(bytes(range(256)) * 5))
    check_stage(get_registry().build("raw", {}), dcframe.Dense.of(np.arange(12, dtype=np.float32).reshape(3, 4)))
