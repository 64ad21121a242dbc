"""Parallel compression (`jobs` > 1, `--jobs N`) writes exactly the bytes of a serial run, in the same order."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dcframe
from dcframe import DcfError, Dense, Policy, read_model, write_model
from dcframe.cli import main
from dcframe.core import orchestrator
from dcframe.core.orchestrator import compress_tensors, default_jobs


@pytest.fixture(autouse=True)
def processes(monkeypatch):
    """These tests are about worker processes and spill files: no chain runs in threads here (tests/test_threads.py
    has the threaded path)."""
    monkeypatch.setattr(orchestrator, "threadable", lambda stages: False)


def _model(tmp_path, n: int = 7):
    rng = np.random.default_rng(11)
    tensors = {}
    for i in range(n):
        tensors[f"block{i}.fc.weight"] = rng.standard_normal((96, 64)).astype(np.float32)
        tensors[f"block{i}.fc.bias"] = rng.standard_normal(96).astype(np.float32)
    tensors["conv.weight"] = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    tensors["emb"] = Dense((rng.standard_normal((16, 8)).astype(np.float32).view(np.uint32) >> 16)
                           .astype(np.uint16), "BF16")
    tensors["count"] = np.arange(5, dtype=np.int64)
    path = tmp_path / "model.safetensors"
    write_model(path, tensors)
    return path


@pytest.mark.parametrize("kwargs", [
    {"preset": "han"},
    {"pipeline": "prune(sparsity=0.8, scope='global') | sparse | kmeans(bits=4) | huffman"},  # global fit, once
    {"pipeline": "zstd(level=3)"},
])
def test_jobs_2_writes_the_same_bytes_as_serial(tmp_path, kwargs):
    model = read_model(_model(tmp_path))  # memory-mapped: workers re-open the file themselves
    dcframe.compress(model, tmp_path / "serial.dcf", jobs=1, **kwargs)
    dcframe.compress(model, tmp_path / "parallel.dcf", jobs=2, **kwargs)
    assert (tmp_path / "parallel.dcf").read_bytes() == (tmp_path / "serial.dcf").read_bytes()


def test_in_memory_tensors_in_parallel_keep_order_and_bytes(tmp_path):
    model = read_model(_model(tmp_path, n=3))
    tensors = {name: Dense(np.array(model[name].array), model[name].dtype) for name in reversed(list(model))}
    policy = Policy(preset="han")
    serial = list(compress_tensors(tensors, policy, jobs=1))
    seen = []
    parallel = list(compress_tensors(tensors, policy, jobs=3, progress=lambda name, n: seen.append(name)))
    assert [e.name for e in parallel] == [e.name for e in serial] == list(tensors) == seen
    for a, b in zip(serial, parallel, strict=True):
        assert a.streams == b.streams and a.steps == b.steps and a.stats == b.stats


def test_cli_jobs_flag_same_bytes(tmp_path, monkeypatch):
    from dcframe.commands import compress as command

    monkeypatch.setattr(command, "SMALL_MODEL", 0)  # use the pool even for this small model
    model = _model(tmp_path, n=3)
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}.dcf"
        assert main(["compress", str(model), "-o", str(out), "--preset", "han", "--jobs", jobs, "-q", "--json"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert main(["compress", str(model), "-o", str(tmp_path / "x.dcf"), "--jobs", "0", "-q"]) == 1


def test_worker_errors_reach_the_caller_and_leave_no_file(tmp_path):
    path = _model(tmp_path, n=2)
    model = read_model(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(data)  # the file changes under the compress: the workers, which re-open it, refuse
    os.utime(path, ns=(model.stamp[0] + 10**9, model.stamp[0] + 10**9))
    target = tmp_path / "out.dcf"
    with pytest.raises(DcfError, match="changed while it was being compressed"):
        dcframe.compress(model, target, pipeline="zstd(level=1)", jobs=2)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_default_jobs_is_the_usable_cores():
    assert 1 <= default_jobs() <= 4096


# --- spill files: workers leave their streams in unnamed files beside the output, the writer copies them ---------
def _compress_both(tmp_path, model, **kwargs) -> tuple[bytes, bytes]:
    dcframe.compress(model, tmp_path / "serial.dcf", jobs=1, **kwargs)
    dcframe.compress(model, tmp_path / "parallel.dcf", jobs=2, **kwargs)
    return (tmp_path / "serial.dcf").read_bytes(), (tmp_path / "parallel.dcf").read_bytes()


def test_spilled_streams_many_chunks_more_tensors_than_slots(tmp_path):
    model = read_model(_model(tmp_path, n=12))  # 39 tensors through 8 spill slots, reused
    serial, parallel = _compress_both(tmp_path, model, pipeline="zstd(level=1)", chunk_size=1000)
    assert parallel == serial
    # nothing left behind: the spill files never had a name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "parallel.dcf", "serial.dcf"]


def test_spilled_streams_of_in_memory_tensors(tmp_path):
    model = read_model(_model(tmp_path, n=3))
    tensors = {name: Dense(np.array(model[name].array), model[name].dtype) for name in model}
    serial, parallel = _compress_both(tmp_path, tensors, preset="han", chunk_size=777)
    assert parallel == serial


def test_spill_budget_and_emptying_big_spill_files(tmp_path, monkeypatch):
    from dcframe.core import orchestrator

    monkeypatch.setattr(orchestrator, "SPILL_BUDGET", 30_000)  # fewer tensors in flight than slots, by bytes
    monkeypatch.setattr(orchestrator, "SPILL_KEEP", 4_000)  # the weights' spill files are emptied after use
    model = read_model(_model(tmp_path, n=6))
    serial, parallel = _compress_both(tmp_path, model, pipeline="zstd(level=1)", chunk_size=5000)
    assert parallel == serial


@pytest.mark.parametrize("failing", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_spilled_streams_copied_another_way_where_the_kernel_cannot(tmp_path, monkeypatch, failing):
    import errno

    calls = []

    def cannot(*args):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    for name in failing:
        monkeypatch.setattr(os, name, cannot)
    model = read_model(_model(tmp_path, n=4))
    serial, parallel = _compress_both(tmp_path, model, pipeline="zstd(level=1)", chunk_size=3000)
    assert parallel == serial
    assert len(calls) == len(failing)  # each way is tried once per file, then the next (last: pread and pwrite)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the pool's threads stay quiet
def test_disk_full_while_copying_a_spilled_stream_leaves_the_old_output(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "out.dcf"
    target.write_bytes(b"old output")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    with pytest.raises(dcframe.ModelIOError, match="No space left"):
        dcframe.compress(read_model(_model(tmp_path, n=4)), target, pipeline="zstd(level=1)", jobs=2)
    assert target.read_bytes() == b"old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "out.dcf"]


def test_spilled_tensors_without_a_writer_are_only_valid_until_the_next(tmp_path):
    from dcframe.core.orchestrator import Spilled

    model = read_model(_model(tmp_path, n=2))
    seen = []
    for encoded in compress_tensors(model, Policy(pipeline="zstd(level=1)"), jobs=2, spill_dir=tmp_path):
        stream = encoded.streams["data"]
        assert isinstance(stream, Spilled) and encoded.chain is not None
        data = os.pread(stream.fd, stream.length, stream.offset)  # readable while it is the current tensor
        assert len(data) == stream.length and dcframe.core.container._crc(data) == stream.crc
        seen.append(encoded.name)
    assert seen == list(model)
