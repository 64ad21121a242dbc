"""Threads for chains whose stages release the GIL (orchestrator.threadable): compress gives the bytes of a serial
run, in order, errors in their tensor's turn, and an interrupt never waits for a thread."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import dcframe
from dcframe import DcfError, Policy, read_model, write_model
from dcframe.core.orchestrator import compress_tensors, ordered_map, threadable

C_KERNELS = importlib.util.find_spec("dcframe_plugins._ckernels") is not None
KERNELS = C_KERNELS or importlib.util.find_spec("numba") is not None  # compiled rans and huffman kernels
BYTES_ONLY = "bytegroup | zstd(level=1)"  # threadable with or without kernels


def _tensors(n: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    out = {f"layer{i}.weight": rng.normal(0, 0.05, (64, 40 + i)).astype(np.float32) for i in range(n)}
    out["half"] = rng.normal(0, 1, 300).astype(np.float16)
    out["steps"] = np.arange(7, dtype=np.int64)
    return out


def _stages(pipeline: str) -> list:
    return Policy(pipeline=pipeline).chain_for_pipeline(pipeline).stages


def test_which_chains_are_threadable(monkeypatch):
    assert threadable(_stages(BYTES_ONLY)) and threadable(_stages("zstd(level=3)"))
    assert not threadable(_stages("prune(sparsity=0.5) | zstd"))
    assert not threadable(_stages("kmeans(bits=4) | huffman"))
    lossless = _stages(Policy(preset="lossless").lossless_pipeline())
    assert threadable(lossless) == KERNELS  # rans's numpy path holds the GIL: processes there
    monkeypatch.setenv("DCFRAME_KERNELS", "numpy")
    assert not threadable(lossless) and threadable(_stages(BYTES_ONLY))


def test_the_c_kernels_alone_make_rans_threadable(monkeypatch):
    """Without numba, the C kernels (which release the GIL too) are what decides: threads where they are built,
    also under DCFRAME_KERNELS=c, and processes under DCFRAME_KERNELS=numba."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    lossless = _stages(Policy(preset="lossless").lossless_pipeline())
    assert threadable(lossless) == C_KERNELS
    monkeypatch.setenv("DCFRAME_KERNELS", "c")
    assert threadable(lossless) == C_KERNELS
    monkeypatch.setenv("DCFRAME_KERNELS", "numba")
    assert not threadable(lossless)


@pytest.mark.parametrize("pipeline", [BYTES_ONLY, "zstd(level=1)", None])
def test_threaded_compress_writes_the_serial_bytes_without_processes(tmp_path, monkeypatch, pipeline):
    from dcframe.core import orchestrator

    def no_processes(*args, **kwargs):
        raise AssertionError("a threadable chain went to worker processes")

    if pipeline is not None or KERNELS:  # the lossless preset without kernels takes processes: same bytes
        monkeypatch.setattr(orchestrator, "_compress_parallel", no_processes)
    path = tmp_path / "model.safetensors"
    write_model(path, _tensors())
    dcframe.compress(read_model(path), tmp_path / "serial.dcf", pipeline=pipeline, jobs=1)
    seen = []
    dcframe.compress(read_model(path), tmp_path / "threads.dcf", pipeline=pipeline, jobs=3,
                     progress=lambda name, n: seen.append(name))
    assert (tmp_path / "serial.dcf").read_bytes() == (tmp_path / "threads.dcf").read_bytes()
    assert seen == list(_tensors())


def test_an_error_in_a_thread_names_its_tensor_and_keeps_the_old_output(tmp_path, monkeypatch):
    from dcframe.core import orchestrator

    real = orchestrator.encode_tensor

    def failing(name, *args, **kwargs):
        if name == "layer4.weight":
            raise DcfError(f"tensor '{name}': refused")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(orchestrator, "encode_tensor", failing)
    target = tmp_path / "out.dcf"
    target.write_bytes(b"old output")
    with pytest.raises(DcfError, match="layer4.weight"):
        dcframe.compress(_tensors(), target, pipeline=BYTES_ONLY, jobs=2)
    assert target.read_bytes() == b"old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dcf"]


def test_ordered_map_keeps_order_bounds_what_is_in_flight_and_cancels_the_rest():
    lock, running, most = threading.Lock(), [0], [0]

    def task(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (i % 3))  # later tasks often finish first
        with lock:
            running[0] -= 1
        return i * i

    submitted = []

    def tasks(n: int, nbytes: int = 1):
        for i in range(n):
            submitted.append(i)
            yield (i,), nbytes

    assert list(ordered_map(task, tasks(40), jobs=3)) == [i * i for i in range(40)]
    assert 1 <= most[0] <= 3
    submitted.clear()
    results = ordered_map(task, tasks(40), jobs=3)
    assert next(results) == 0 and len(submitted) <= 2 * 3 + 1  # never more than 2 * jobs ahead of the consumer
    results.close()
    submitted.clear()
    budgeted = ordered_map(task, tasks(10, nbytes=100), jobs=4, budget=150)
    assert next(budgeted) == 0 and len(submitted) <= 3  # 100 bytes beyond the oldest fit, 200 do not
    budgeted.close()


def test_ordered_map_raises_in_the_failing_tasks_turn():
    def task(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    got = []
    with pytest.raises(ValueError, match="three"):
        for value in ordered_map(task, (((i,), 1) for i in range(10)), jobs=2):
            got.append(value)
    assert got == [0, 1, 2]


INTERRUPTED = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    import dcframe
    from dcframe.core import orchestrator

    real = orchestrator.encode_tensor
    def slow(*args, **kwargs):
        time.sleep(120)
        return real(*args, **kwargs)
    orchestrator.encode_tensor = slow
    tensors = {f"t{i}": np.zeros(1000, np.float32) for i in range(6)}
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while both threads are busy
    try:
        dcframe.compress(tensors, sys.argv[1], pipeline="bytegroup | zstd(level=1)", jobs=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def test_interrupted_threaded_compress_neither_waits_for_its_threads_nor_leaves_files(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "m.dcf")], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.stdout.strip() == "interrupted" and done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30  # the threads sleep 120 s per tensor
    assert "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interrupted.py"]


def test_compress_tensors_in_threads_hands_back_the_policys_chain_objects():
    """The writer caches chains by identity: threaded results carry the very Chain of their pipeline."""
    tensors = _tensors(4)
    policy = Policy(pipeline=BYTES_ONLY)
    encoded = list(compress_tensors(tensors, policy, jobs=2))
    assert [e.name for e in encoded] == list(tensors)
    assert len({id(e.chain) for e in encoded}) == 1 and str(encoded[0].chain).startswith("bytegroup")


@pytest.mark.parametrize("pipeline", [BYTES_ONLY, None])
def test_threaded_decompress_writes_the_serial_file(tmp_path, monkeypatch, pipeline):
    """`decompress -j 2` decodes in threads where the chains allow it (bytegroup | zstd always, the lossless preset
    with kernels) and the file is large enough (here: the threshold lowered), and writes the bytes `-j 1` writes,
    every tensor in order; a small file decodes in one thread."""
    from dcframe.cli import main
    from dcframe.core import container as container_module

    calls = []
    real = container_module.ordered_map
    monkeypatch.setattr(container_module, "ordered_map", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    dcf = tmp_path / "m.dcf"
    dcframe.compress(_tensors(), dcf, pipeline=pipeline)
    assert main(["decompress", str(dcf), "-o", str(tmp_path / "small.safetensors"), "-q", "-j", "2"]) == 0
    assert calls == []  # under THREADS_FROM stored bytes
    monkeypatch.setattr(container_module, "THREADS_FROM", 0)
    assert main(["decompress", str(dcf), "-o", str(tmp_path / "serial.safetensors"), "-q", "-j", "1"]) == 0
    assert calls == []
    assert main(["decompress", str(dcf), "-o", str(tmp_path / "threads.safetensors"), "-q", "-j", "2"]) == 0
    assert calls == ([2] if pipeline is not None or KERNELS else [])
    assert (tmp_path / "serial.safetensors").read_bytes() == (tmp_path / "threads.safetensors").read_bytes()
    with dcframe.open_container(dcf) as c:
        names = list(_tensors())[::-1]  # any order asked for comes back in that order
        got = list(c.read_many(names, jobs=2))
        assert [n for n, _ in got] == names
        for name, dense in got:
            assert dense.array.tobytes() == c.read(name).array.tobytes()


def test_a_damaged_tensor_decoded_in_a_thread_fails_in_its_turn(tmp_path, monkeypatch):
    """The tensors before a damaged one come out; then the serial read's error, naming that tensor."""
    from dcframe.core import container as container_module
    from dcframe.core.container import Container

    monkeypatch.setattr(container_module, "THREADS_FROM", 0)

    dcf = tmp_path / "m.dcf"
    dcframe.compress(_tensors(), dcf, pipeline=BYTES_ONLY)
    with Container(dcf) as c:
        real = c.streams

        def damaged(name, record=None):
            out = real(name, record)
            if name == "layer3.weight":
                out = {k: v[:-5] for k, v in out.items()}  # a stream cut short, past its checksum
            return out

        c.streams = damaged
        names = list(c.names)
        with pytest.raises(DcfError) as serial:
            list(c.read_many(names, jobs=1))
        seen = []
        with pytest.raises(DcfError) as threaded:
            for name, _ in c.read_many(names, jobs=2):
                seen.append(name)
    assert str(threaded.value) == str(serial.value) and "layer3.weight" in str(threaded.value)
    assert type(threaded.value) is type(serial.value)
    assert seen == names[:names.index("layer3.weight")]
