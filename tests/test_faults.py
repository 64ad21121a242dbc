"""No data lost: a failed or interrupted compress or decompress leaves an existing output untouched and no temp file.

Faults simulated: an exception from a stage mid-way, Ctrl-C (KeyboardInterrupt) between tensors, a full disk
(the output file's write raising ENOSPC, at several points), a failing fsync or rename, and a damaged tensor met
while decompressing. Also: the written file gets the usual permissions, not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import dcframe
from dcframe import DcfError, Dense, ModelIOError, write_model
from dcframe.cli import main
from dcframe.core import container as container_module
from dcframe.io import modelio

OLD = b"precious existing output\n"


def _tensors(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {f"layer{i}.weight": rng.standard_normal((64, 32)).astype(np.float32) for i in range(n)}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "out.dcf"
    path.write_bytes(OLD)
    return path


def _assert_untouched(path: Path) -> None:
    assert path.read_bytes() == OLD
    assert _leftovers(path.parent) == []


class Interrupting(dict):
    """A tensor mapping whose `at`-th tensor raises `exc` when it is read (a Ctrl-C or a crash between tensors)."""

    def __init__(self, tensors, at: int, exc: BaseException):
        super().__init__(tensors)
        self._order = list(tensors)
        self.at, self.exc, self.reads = at, exc, 0

    def __getitem__(self, name):
        if name == self._order[self.at]:
            self.reads += 1
            raise self.exc
        return super().__getitem__(name)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("crash mid-way"), DcfError("stage failed")])
def test_interrupted_compress_leaves_existing_output(target, exc):
    tensors = Interrupting(_tensors(), at=2, exc=exc)
    with pytest.raises(type(exc)):
        dcframe.compress(tensors, target, pipeline="zstd(level=1)")
    assert tensors.reads == 1  # it failed after two tensors had been written to the temporary file
    _assert_untouched(target)


def test_stage_exception_mid_way_leaves_existing_output(target, monkeypatch):
    from dcframe_plugins import generic

    calls = []
    original = generic.Zstd._compress

    def flaky(self, data):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("encoder bug")
        return original(self, data)

    monkeypatch.setattr(generic.Zstd, "_compress", flaky)
    with pytest.raises(ValueError):
        dcframe.compress(_tensors(), target, pipeline="zstd(level=1)")
    _assert_untouched(target)


class FullDisk:
    """Wraps a file object: writes fail with ENOSPC once `budget` bytes have been written."""

    def __init__(self, f, budget: int):
        self._f, self.budget = f, budget

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _full_disk_after(monkeypatch, module, budget: int) -> None:
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        return FullDisk(f, budget) if "w" in mode else f

    monkeypatch.setattr(module.os, "fdopen", fdopen)


@pytest.mark.parametrize("budget", [0, 5, 3000, 20000])
def test_disk_full_during_compress_leaves_existing_output(target, monkeypatch, budget):
    _full_disk_after(monkeypatch, container_module, budget)
    with pytest.raises(ModelIOError, match="No space left"):
        dcframe.compress(_tensors(), target, pipeline="zstd(level=1)")
    _assert_untouched(target)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failing_fsync_or_rename_leaves_existing_output(target, monkeypatch, step):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(container_module.os, step, fail)
    with pytest.raises(ModelIOError):
        dcframe.compress(_tensors(), target, pipeline="zstd(level=1)")
    monkeypatch.undo()
    _assert_untouched(target)


def test_cli_ctrl_c_exits_130_and_keeps_output(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.safetensors"
    write_model(model, _tensors())
    target = tmp_path / "m.dcf"
    target.write_bytes(OLD)
    from dcframe.core import orchestrator

    real = orchestrator.encode_tensor
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(orchestrator, "encode_tensor", interrupted)
    assert main(["compress", str(model), "-o", str(target), "-q", "--jobs", "1", "-f"]) == 130
    assert "interrupted" in capsys.readouterr().err
    _assert_untouched(target)


@pytest.fixture
def container(tmp_path) -> Path:
    path = tmp_path / "m.dcf"
    dcframe.compress(_tensors(), path, pipeline="zstd(level=1)")
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("budget", [0, 100, 9000])
def test_disk_full_during_decompress_leaves_existing_output(container, tmp_path, monkeypatch, suffix, budget):
    out = tmp_path / f"back{suffix}"
    out.write_bytes(OLD)
    _full_disk_after(monkeypatch, modelio, budget)
    assert main(["decompress", str(container), "-o", str(out), "-q"]) == 1
    _assert_untouched(out)


def test_damaged_tensor_mid_decompress_leaves_existing_output(container, tmp_path):
    data = bytearray(container.read_bytes())
    with dcframe.open_container(container) as c:
        entry = c.entries["layer2.weight"]
    data[entry.offset + entry.total_length - 10] ^= 0xFF  # inside the third tensor's stream
    container.write_bytes(data)
    out = tmp_path / "back.safetensors"
    out.write_bytes(OLD)
    assert main(["decompress", str(container), "-o", str(out), "-q"]) == 1
    _assert_untouched(out)


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        dcframe.compress(_tensors(1), tmp_path / "a.dcf")
        write_model(tmp_path / "b.safetensors", {"x": Dense.of(np.zeros(3, np.float32))})
    finally:
        os.umask(mask)
    for name in ("a.dcf", "b.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_successful_overwrite_replaces_and_leaves_no_temp(target):
    dcframe.compress(_tensors(2), target, pipeline="zstd(level=1)")
    assert target.read_bytes()[:4] == b"\x89DCF"
    assert _leftovers(target.parent) == []
