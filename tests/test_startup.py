"""What a CLI run imports: only the command it runs and what that command needs (start-up is most of a small run)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import dcframe
from dcframe import Dense, compress

ANALYSES = ("dcframe.analysis.tune", "dcframe.analysis.retrain", "dcframe.analysis.compare", "dcframe.commands.tune")


def modules_after(*argv: str) -> set[str]:
    """The dcframe modules a fresh interpreter holds after running `dcframe ARGV`."""
    script = ("import sys; from dcframe.cli import main; code = main(sys.argv[1:]); "
              "print(' '.join(m for m in sys.modules if m.startswith('dcframe'))); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_compress_and_decompress_import_no_analysis_module(tmp_path):
    source, packed = tmp_path / "m.npz", tmp_path / "m.dcf"
    np.savez(source, w=np.arange(64, dtype=np.float32).reshape(8, 8))
    loaded = modules_after("compress", str(source), "-o", str(packed), "-q")
    assert not loaded & set(ANALYSES), loaded & set(ANALYSES)
    assert "dcframe.commands.compress" in loaded and "dcframe.commands.decompress" not in loaded
    loaded = modules_after("decompress", str(packed), "-o", str(tmp_path / "back.npz"), "-q")
    assert not loaded & set(ANALYSES) and "dcframe.commands.compress" not in loaded


def test_help_still_lists_every_command():
    run = subprocess.run([sys.executable, "-m", "dcframe.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("compress", "decompress", "inspect", "verify", "stages", "compare", "demo", "tune", "calibrate"):
        assert command in run.stdout


def test_every_public_name_resolves_lazily(tmp_path):
    for name in dcframe.__all__:
        assert getattr(dcframe, name) is not None, name
    assert set(dcframe.__all__) <= set(dir(dcframe))
    assert compress({"w": Dense.of(np.ones((4, 4), np.float32))}, tmp_path / "a.dcf")["ratio"] > 0
    try:
        dcframe.no_such_name  # noqa: B018 - the attribute access is the test
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown attribute resolved")
