"""The Dask executor (`compress --executor dask`, `--scheduler`): the bytes of a serial run, on a LocalCluster of two
process workers; a worker killed mid-run; a failing task; a scheduler nobody runs; dask never imported by dcframe."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dcframe
from dcframe import ConfigError, Dense, read_model, write_model
from dcframe.cli import main
from dcframe.core.orchestrator import fit_chains
from dcframe.io.calibration import Calibration
from dcframe.io.hffolder import read_folder

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'dcframe[dask]')")

from dcframe.bindings import daskexec  # noqa: E402  (after the skip: needs nothing from dask at import, but is only used here)
from dcframe.bindings.daskexec import DaskExecutor  # noqa: E402

GLOBAL_PRUNE = "prune(sparsity=0.8, scope='global') | sparse | kmeans(bits=4) | huffman"


@pytest.fixture(scope="module")
def scheduler():
    """The address of a LocalCluster of two process workers, shared by the tests that do not harm it."""
    with daskexec.local_cluster(2) as cluster:
        yield cluster.scheduler_address


def _tensors(n: int = 6) -> dict[str, np.ndarray | Dense]:
    """Tensors over and under daskexec.SMALL_TENSOR, of every rank and of float, BF16 and integer dtypes."""
    rng = np.random.default_rng(7)
    tensors: dict[str, np.ndarray | Dense] = {}
    for i in range(n):
        tensors[f"layers.{i}.fc.weight"] = (rng.standard_normal((640, 512)) * 0.02).astype(np.float32)  # 1.25 MiB
        tensors[f"layers.{i}.fc.bias"] = rng.standard_normal(640).astype(np.float32)
        tensors[f"layers.{i}.small.weight"] = rng.standard_normal((32, 24)).astype(np.float32)
    tensors["conv.weight"] = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    tensors["emb"] = Dense((rng.standard_normal((64, 32)).astype(np.float32).view(np.uint32) >> 16)
                           .astype(np.uint16), "BF16")
    tensors["count"] = np.arange(5, dtype=np.int64)
    return tensors


def _model(path: Path, n: int = 6) -> Path:
    write_model(path, _tensors(n))
    return path


def _serial_and_dask(tmp_path: Path, tensors, executor: DaskExecutor, **kwargs) -> tuple[bytes, bytes]:
    dcframe.compress(tensors, tmp_path / "serial.dcf", jobs=1, **kwargs)
    dcframe.compress(tensors, tmp_path / "dask.dcf", executor=executor, **kwargs)
    return (tmp_path / "serial.dcf").read_bytes(), (tmp_path / "dask.dcf").read_bytes()


@pytest.mark.parametrize("kwargs, n", [({"preset": "han"}, 6), ({"pipeline": GLOBAL_PRUNE}, 6),
                                       ({"preset": "lossless"}, 2)])  # zstd -19 is slow: fewer tensors
def test_same_bytes_as_serial(tmp_path, scheduler, monkeypatch, kwargs, n):
    monkeypatch.setattr(daskexec, "BATCH_BYTES", 8 << 10)  # small tensors in several batches, not one
    model = read_model(_model(tmp_path / "m.safetensors", n))
    serial, dask = _serial_and_dask(tmp_path, model, DaskExecutor(scheduler), **kwargs)
    assert serial == dask


def test_global_pruning_fits_by_passes_on_the_workers(tmp_path, scheduler, monkeypatch):
    from dcframe_plugins.prune import Prune

    model = read_model(_model(tmp_path / "m.safetensors"))
    dcframe.compress(model, tmp_path / "serial.dcf", pipeline=GLOBAL_PRUNE)

    def no_local_fit(self, streams):
        raise AssertionError("the fit ran on the client")

    monkeypatch.setattr(Prune, "fit", no_local_fit)
    with distributed.Client(scheduler) as client, distributed.get_task_stream(client) as stream:
        dcframe.compress(model, tmp_path / "dask.dcf", pipeline=GLOBAL_PRUNE, executor=DaskExecutor(scheduler))
        mapped = client.run(_maps, str(model.path))
    assert (tmp_path / "dask.dcf").read_bytes() == (tmp_path / "serial.dcf").read_bytes()
    assert not any(mapped.values())  # tasks unmap the model when they end: none of its pages stay in a worker's RSS
    fits = [t["key"] for t in stream.data if str(t["key"]).startswith("dcframe-fit-")]
    assert len({k.split("-")[2] for k in fits}) >= 2  # passes (a run id each): counts, then histograms


def _maps(path: str) -> bool:
    """In a worker: whether the process still maps `path` (Linux; elsewhere: False)."""
    try:
        with open("/proc/self/maps") as f:
            return path in f.read()
    except OSError:
        return False


def test_tasks_batch_small_tensors_in_order_and_read_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(daskexec, "BATCH_BYTES", 8 << 10)
    model = read_model(_model(tmp_path / "m.safetensors", n=2))
    policy = dcframe.Policy(preset="han")
    chains = fit_chains(policy, lambda: iter(model.items()))
    tasks = list(daskexec._tasks(model, policy, chains, None))
    names = [[item[0] for item in items] for items, _, _ in tasks]
    assert [n for group in names for n in group] == list(model)  # every tensor once, in order
    assert ["layers.0.fc.weight"] in names  # a big tensor with no small ones before it: a task of its own
    # the bias and the small weight between two big tensors ride with the next one
    assert ["layers.0.fc.bias", "layers.0.small.weight", "layers.1.fc.weight"] in names
    assert names[-2:] == [["conv.weight"], ["emb", "count"]]  # the small ones at the end: up to BATCH_BYTES
    assert all(item[1] == model.source(item[0]) and item[2] is None for items, _, _ in tasks for item in items)


def test_batches_small_runs_and_riders_by_bytes(monkeypatch):
    monkeypatch.setattr(daskexec, "BATCH_BYTES", 4 << 20)
    mib = 1 << 20
    entries = [("a", 2 * mib, 0), ("b", 10_000, 5), ("c", 20_000, 7), ("d", 3 * mib, 11),  # b, c ride with d
               ("e1", 600_000, 0), ("e2", 600_000, 0), ("f", 2 * mib, 0),  # e1 + e2 >= 1 MiB: a task before f
               *((f"s{i}", mib - 1, 1) for i in range(9))]  # small ones only: tasks of up to 4 MiB
    tasks = list(daskexec._batched(entries))
    assert [[n for n in items] for items, _, _ in tasks] == [
        ["a"], ["b", "c", "d"], ["e1", "e2"], ["f"], ["s0", "s1", "s2", "s3"], ["s4", "s5", "s6", "s7"], ["s8"]]
    assert [(nbytes, side) for _, nbytes, side in tasks[:3]] == [(2 * mib, 0), (3 * mib + 30_000, 23),
                                                                  (1_200_000, 0)]
    assert tasks[4][1:] == (4 * (mib - 1), 4)


def test_the_window_runs_ahead_of_a_big_oldest_task_by_bytes(monkeypatch):
    monkeypatch.setattr(daskexec, "AHEAD_BYTES", 100)
    window = daskexec.Window(threads=2)
    window.add(1000, 0)  # the oldest: 2 threads x 1000 bytes may follow it
    admitted = 0
    while window.admits(100, 0):
        window.add(100, 0)
        admitted += 1
    assert admitted == 20  # (not 3, as with 2 tasks per thread)
    window.take()  # a 100-byte task is the oldest now: 2 x max(AHEAD_BYTES, 100) ahead of it, already more
    assert not window.admits(1, 0) and window.ahead == 1900
    for _ in range(17):
        window.take()
    assert len(window.tasks) == 3 and window.admits(10**12, 0)  # below 2 per thread: always admitted
    window.add(10**12, 0)
    assert not window.admits(100, 0)


def test_the_window_bounds_side_inputs_and_tasks(monkeypatch):
    monkeypatch.setattr(daskexec, "SIDE_AHEAD_BYTES", 250)
    window = daskexec.Window(threads=1)
    for _ in range(2):  # 2 per thread, whatever their side inputs
        assert window.admits(10, 10**9)
        window.add(10, 10**9)
    assert not window.admits(10, 1)
    window.take()
    window.take()
    window.add(10, 100)
    for _ in range(2):
        window.add(10, 100)
    assert window.side == 200 and not window.admits(10, 100) and window.admits(10, 50)
    window = daskexec.Window(threads=1)
    while window.admits(1, 0):
        window.add(1, 0)
    assert len(window.tasks) == daskexec.MAX_TASKS_PER_WORKER


class _FakeFuture:
    def __init__(self, log: list, number: int) -> None:
        self.log, self.number = log, number

    def result(self) -> list:
        self.log.append(("take", self.number))
        return [self.number]

    def release(self) -> None:
        pass


class _FakeClient:
    """Records the order of submissions and takes of daskexec._ordered."""

    def __init__(self) -> None:
        self.log: list = []

    def submit(self, function, items, *args, key, pure):
        number = int(key.rsplit("-", 1)[1])
        self.log.append(("submit", number))
        return _FakeFuture(self.log, number)

    def cancel(self, futures) -> None:
        self.log.append(("cancel", len(futures)))


def test_the_client_submits_past_a_big_tensor_before_taking_it():
    # A big tensor first (an embedding) and small ones after it: while one worker encodes the big one, the other
    # has all the small ones to do; they used to wait behind it, 2 per worker thread (an idle worker for seconds)
    client = _FakeClient()
    tasks = [([("emb",)], 64 << 20, 0)] + [([(f"w{i}",)], 8 << 20, 0) for i in range(15)]
    out = list(daskexec._ordered(client, None, tasks, (), daskexec.Window(threads=2), "encode"))
    assert [items[0][0] for items, _ in out] == ["emb"] + [f"w{i}" for i in range(15)]  # in order
    assert client.log.index(("take", 0)) == 16  # all 16 submitted before the first was taken


def test_in_memory_tensors_and_a_calibration(tmp_path, scheduler):
    tensors = {k: v for k, v in _tensors(2).items() if k.endswith("fc.weight")}  # not from a file: shipped
    rng = np.random.default_rng(1)
    calib = Calibration({name: {"activation": rng.random((1, 512)).astype(np.float32)} for name in tensors})
    serial, dask = _serial_and_dask(tmp_path, tensors, DaskExecutor(scheduler), calibration=calib,
                                    pipeline='prune(sparsity=0.5, criterion="wanda") | kmeans(bits=4) | huffman')
    assert serial == dask


def _folder(path: Path) -> Path:
    tensors = _tensors(4)
    names = list(tensors)
    path.mkdir()
    shards = {f"model-0000{k + 1}-of-00003.safetensors": names[k::3] for k in range(3)}
    for shard, members in shards.items():
        write_model(path / shard, {n: tensors[n] for n in members}, metadata={"format": "pt"})
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    import json

    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text('{"model_type": "x"}\n')
    return path


def test_folder_and_own_local_cluster_from_the_cli(tmp_path, capsys):
    folder = _folder(tmp_path / "model")
    assert main(["compress", str(folder), "-o", str(tmp_path / "serial.dcf"), "--preset", "han", "-j", "1", "-q"]) == 0
    assert main(["compress", str(folder), "-o", str(tmp_path / "dask.dcf"), "--preset", "han", "--executor", "dask",
                 "-j", "2", "-q"]) == 0
    assert (tmp_path / "dask.dcf").read_bytes() == (tmp_path / "serial.dcf").read_bytes()
    assert len(read_folder(folder).shards) == 3


def test_a_killed_worker_is_retried_and_the_bytes_stay(tmp_path):
    model = read_model(_model(tmp_path / "m.safetensors", n=16))
    dcframe.compress(model, tmp_path / "serial.dcf", preset="han")
    with DaskExecutor(workers=2).client() as client:  # the LocalCluster that --executor dask starts
        address = client.scheduler.address
        # Dask's MALLOC_TRIM_THRESHOLD_ would make every large numpy temporary a fresh mmap: not in our workers
        assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
        # nor its monitors' many wake-ups a second (profiler, ticks): they took CPU and the GIL from the tasks
        import dask

        for key, value in daskexec.LOCAL_CONFIG.items():
            if not key.startswith(daskexec.SPAWN_ENVIRON):
                assert set(client.run(dask.config.get, key).values()) == {value}, key
        assert client.direct_to_workers  # results straight from the workers, not through the scheduler
        before = client.run(os.getpid)
        victim = sorted(before.values())[0]
        killed = []

        def progress(name: str, nbytes: int) -> None:  # after the first tensor: tasks are running on both workers
            if not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(name)

        dcframe.compress(model, tmp_path / "dask.dcf", preset="han", progress=progress,
                         executor=DaskExecutor(address))
        client.wait_for_workers(2, timeout=30)
        after = client.run(os.getpid)
    assert killed and victim not in after.values()  # it did die, and its nanny started another
    assert (tmp_path / "dask.dcf").read_bytes() == (tmp_path / "serial.dcf").read_bytes()


def test_a_failing_task_is_one_line_and_leaves_no_output(tmp_path, scheduler, capsys):
    model = _model(tmp_path / "m.safetensors")
    out = tmp_path / "m.dcf"
    out.write_bytes(b"the user's file")
    code = main(["compress", str(model), "-o", str(out), "--preset", "han", "--force", "--scheduler", scheduler,
                 "--rule", "layers.3.fc.weight=prune(sparsity=0.5, criterion=sparsegpt) | zstd", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "layers.3.fc.weight" in err and "hessian" in err and "Traceback" not in err
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcf", "m.safetensors"]  # no temporary left


def test_a_scheduler_nobody_runs_is_one_line_quickly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(daskexec, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = _model(tmp_path / "m.safetensors", n=1)
    start = time.monotonic()
    code = main(["compress", str(model), "-o", str(tmp_path / "m.dcf"), "--scheduler", f"tcp://127.0.0.1:{port}",
                 "-q"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - start < 8
    assert len(err.strip().splitlines()) == 1 and f"tcp://127.0.0.1:{port}" in err and "Traceback" not in err
    assert not (tmp_path / "m.dcf").exists()


def test_scheduler_with_the_local_executor_is_refused(tmp_path, capsys):
    model = _model(tmp_path / "m.safetensors", n=1)
    code = main(["compress", str(model), "-o", str(tmp_path / "m.dcf"), "--executor", "local", "--scheduler",
                 "tcp://127.0.0.1:1", "-q"])
    assert code == 1 and "--executor dask" in capsys.readouterr().err


def test_without_distributed_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    with pytest.raises(ConfigError, match=r"dcframe\[dask\]"):
        dcframe.compress(_tensors(1), tmp_path / "m.dcf", executor=DaskExecutor())
    assert not (tmp_path / "m.dcf").exists()


def test_a_local_cluster_that_cannot_start_is_one_line(tmp_path):
    script = tmp_path / "no_main_guard.py"  # spawned workers re-import it: without the guard they cannot start
    script.write_text("import dcframe, numpy as np\nfrom dcframe.bindings.daskexec import DaskExecutor\n"
                      f"dcframe.compress({{'w': np.ones(4, np.float32)}}, {str(tmp_path / 'm.dcf')!r}, "
                      "executor=DaskExecutor(workers=1))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    # the script's traceback ends with the error; a worker process that re-ran the script may print the same, and
    # Python's resource tracker may then warn about the failed workers' semaphores
    errors = [line for line in done.stderr.splitlines() if line.startswith("dcframe.core.errors.")]
    assert done.returncode != 0 and errors
    assert all(e.startswith("dcframe.core.errors.DcfError: cannot start a Dask LocalCluster") for e in errors)
    assert all("__main__" in e for e in errors) and not (tmp_path / "m.dcf").exists()


def test_dcframe_and_its_cli_never_import_dask():
    code = ("import sys, dcframe, dcframe.api, dcframe.cli; dcframe.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_decompress_a_folder_per_shard_on_the_cluster(tmp_path, scheduler, capsys):
    dcf = tmp_path / "m.dcf"
    assert main(["compress", str(_folder(tmp_path / "model")), "-o", str(dcf), "--preset", "han", "-q"]) == 0
    assert main(["decompress", str(dcf), "-o", str(tmp_path / "local"), "-q"]) == 0
    assert main(["decompress", str(dcf), "-o", str(tmp_path / "dask"), "--scheduler", scheduler, "-q"]) == 0
    local, dask = _files(tmp_path / "local"), _files(tmp_path / "dask")
    assert dask == local and sum(n.endswith(".safetensors") for n in dask) == 3


def test_a_damaged_shard_on_the_cluster_is_one_line_and_writes_nothing(tmp_path, scheduler, capsys):
    dcf = tmp_path / "m.dcf"
    assert main(["compress", str(_folder(tmp_path / "model")), "-o", str(dcf), "-q"]) == 0
    data = bytearray(dcf.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor's stream: its checksum fails on the worker
    dcf.write_bytes(bytes(data))
    code = main(["decompress", str(dcf), "-o", str(tmp_path / "out"), "--scheduler", scheduler, "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(dcf) in err and "checksum" in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcf", "model"]  # no output, no staging folder left
