"""Compress on a Dask cluster (`compress --executor dask`, `--scheduler tcp://HOST:PORT`): the `dask` extra.

Tasks are per tensor (with the small tensors just before it), or per run of small tensors. A task names its tensors
and the model file they are in (each worker memory-maps the file itself: the same machine or a shared filesystem),
never ships their data, and returns the encoded streams. The client submits tasks in tensor order, as far ahead of
the oldest task not yet taken as a bounded Window allows (in input bytes, so the other workers keep busy while a big
tensor holds up the order), and takes the results in order: the container gets the same bytes as a serial run, the
client holds one result at a time, and finished results wait in the workers' memory. Global fits come first: a
stage with a fit_plan (scope=global pruning: counts, then digit histograms of the magnitudes) has each pass mapped
on the workers, per tensor, and merged on the client; another stage's `fit` runs on the client, streaming one
tensor at a time, as in a serial run. Dask reruns the tasks of a worker that dies (up to
its `allowed-failures`). Importing this module does not import dask: the cluster starts when the first tensor is
wanted. A folder container decompresses per shard on the same executor (write_shards).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from dcframe.core.errors import ConfigError, DcfError
from dcframe.core.orchestrator import (
    EncodedTensor,
    SideInputs,
    as_dense,
    encode_tensor,
    fit_chains,
    run_steps,
    worker_tensor,
)
from dcframe.core.pipeline import ROOT, Chain, Policy, Step
from dcframe.core.streams import Dense, Stream

SMALL_TENSOR = 1 << 20  # input bytes under which a tensor shares a task (with its neighbours)
BATCH_BYTES = 16 << 20  # input bytes a task of small tensors only grows to
TASKS_PER_WORKER = 2  # tasks always allowed in flight per worker thread, whatever their bytes
MAX_TASKS_PER_WORKER = 32  # tasks in flight per worker thread at most
AHEAD_BYTES = 256 << 20  # input bytes per worker thread that may be submitted beyond the oldest task not taken
SIDE_AHEAD_BYTES = 512 << 20  # side-input bytes (the client holds them) beyond the oldest, past the floor above
DEFAULT_WORKERS = 2  # LocalCluster workers when --jobs is not given
CONNECT_TIMEOUT = 10.0  # seconds to reach a --scheduler before giving up (Dask's own default is 30)
INSTALL_HINT = "pip install 'dcframe[dask]'"
SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"  # the environment a nanny starts its worker process with
# Dask settings for the LocalCluster started here. Dask's monitors wake the event loops of the scheduler, the nannies
# (both in the client's process) and every worker many times a second, each time taking the GIL from the task
# thread: on 2 cores, Dask's defaults cost 0.3 CPU s per worker and 0.6 s in the client per 10 s, idle.
LOCAL_CONFIG = {
    f"{SPAWN_ENVIRON}.MALLOC_TRIM_THRESHOLD_": None,  # see local_cluster
    "distributed.worker.profile.enabled": False,  # a stack sample of the task thread every 10 ms, for the dashboard
    "distributed.admin.system-monitor.interval": "2s",  # host CPU, memory and network counters (Dask: 500 ms)
    "distributed.admin.system-monitor.disk": False,
    "distributed.admin.tick.interval": "500ms",  # the event loop's health check (Dask: 20 ms)
    "distributed.worker.memory.monitor-interval": "500ms",  # the workers' and nannies' RSS checks (Dask: 100 ms)
}
if "forkserver" in multiprocessing.get_all_start_methods():  # POSIX
    # Workers forked from one server that imported Dask and numpy once, rather than spawned processes that each
    # import them (0.7 CPU s a worker), start sooner and stop without the nanny's wait for a spawned process
    LOCAL_CONFIG["distributed.worker.multiprocessing-method"] = "forkserver"

# One task: per tensor (name, model file source or None, the tensor itself when it has no source, chain, side inputs)
Item = tuple[str, "tuple[str, int, int] | None", "Dense | None", Chain, "Mapping[str, np.ndarray] | None"]
# A task as submitted: its items, their input bytes, and the bytes of their side inputs (held by the client)
Task = tuple[list, int, int]


def _distributed():
    """The `distributed` module, or a ConfigError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--executor dask needs Dask's distributed scheduler: {INSTALL_HINT}") from None
    return distributed


def local_cluster(workers: int) -> Any:
    """A LocalCluster of `workers` processes with one thread each, quiet, its dashboard on a free port, with
    LOCAL_CONFIG's slower monitors.

    Without Dask's MALLOC_TRIM_THRESHOLD_ for its workers: setting it turns off glibc's adaptive mmap threshold, so
    every large numpy temporary is a fresh mmap faulted in page by page (3x the system time of a han run here).
    Workers log a failed task with its traceback; the client raises the same error, as one line.
    """
    import logging

    import dask

    distributed = _distributed()
    with dask.config.set(LOCAL_CONFIG):  # read when the scheduler and nannies start; nannies pass it to workers
        try:
            return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", silence_logs=logging.CRITICAL)
        except (RuntimeError, OSError, TimeoutError) as exc:
            cause = exc.__cause__ or exc
            raise DcfError(f"cannot start a Dask LocalCluster of {workers} workers ({_first_line(cause)}); a script "
                           f"that starts one needs `if __name__ == '__main__':` around its work (workers are spawned "
                           f"processes that import it)") from None


def encode_batch(items: list[Item], stats: bool) -> list[EncodedTensor]:
    """Worker side: encode each tensor of a task, reading it from its model file, mapped for this task only (a
    mapping kept open would keep every page the worker has read in its RSS, which Dask's memory monitor counts)."""
    models: dict = {}
    out = []
    for name, source, tensor, chain, side in items:
        encoded = encode_tensor(name, worker_tensor(source, name, tensor, models), chain, stats=stats, side=side)
        encoded.chain = None  # type: ignore[assignment]  # the client puts back its own (no need to send it back)
        out.append(encoded)
    return out


class DaskExecutor:
    """Encodes tensors as Dask tasks; pass it to `dcframe.compress(..., executor=)` (or `compress_tensors`).

    Parameters: `scheduler`, the address of a running scheduler (tcp://HOST:PORT); without it, a LocalCluster of
    `workers` processes with one thread each starts on this machine and stops when the last tensor is taken.
    """

    def __init__(self, scheduler: str | None = None, workers: int = DEFAULT_WORKERS,
                 connect_timeout: float | None = None) -> None:
        if scheduler is None and workers < 1:
            raise ConfigError(f"a Dask LocalCluster needs 1 or more workers, got {workers}")
        self.scheduler, self.workers = scheduler, workers
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A distributed.Client on the scheduler, or on a LocalCluster started (and stopped) here."""
        distributed = _distributed()
        if self.scheduler is not None:
            try:
                client = distributed.Client(self.scheduler, timeout=self.connect_timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise DcfError(f"cannot reach a Dask scheduler at {self.scheduler} within {self.connect_timeout:g} s "
                               f"({_first_line(exc)}); start one with `dask scheduler`, or "
                               f"leave out --scheduler to start a local cluster") from None
            with client:
                yield client
            return
        # Results come straight from the workers (all on this machine), not relayed by the scheduler
        with local_cluster(self.workers) as cluster, distributed.Client(cluster, direct_to_workers=True) as client:
            yield client

    def __call__(self, tensors: Mapping[str, np.ndarray | Dense], policy: Policy, stats: bool,
                 progress: Callable[[str, int], None] | None,
                 side_inputs: SideInputs | None) -> Iterator[EncodedTensor]:
        """Fit, then encode every tensor on the cluster; yield them in the mapping's order (the orchestrator's
        executor seam). A stage with a fit_plan (global pruning) fits by passes mapped on the workers."""
        with self.client() as client:
            threads = max(1, sum(client.nthreads().values()) or self.workers)

            def items() -> Iterator[tuple[str, Dense]]:  # for a stage that fits only here, through `fit`
                for name in tensors:
                    yield name, as_dense(tensors[name])

            chains = fit_chains(policy, items, partial(_fit_pass, client, tensors, policy, threads))
            tasks = _tasks(tensors, policy, chains, side_inputs)
            for batch, results in _ordered(client, encode_batch, tasks, (stats,), Window(threads), "encode"):
                for (name, _source, _tensor, chain, _side), encoded in zip(batch, results, strict=True):
                    encoded.chain = chain  # the very object of every tensor of that pipeline: the writer caches by it
                    if progress:
                        progress(name, encoded.original_bytes)
                    yield encoded

    def write_shards(self, container: str, stamp: tuple[int, int], shards: Mapping[str, tuple[list[str], Any]],
                     progress: Callable[[str, int], None] | None) -> None:
        """Write each shard file (path -> its tensor names and __metadata__) from `container`, one task per shard
        (dcframe.io.hffolder.write_folder's executor seam); progress per shard, as each finishes."""
        from dcframe.io.hffolder import write_shard

        distributed = _distributed()
        run = uuid.uuid4().hex[:12]
        with self.client() as client:
            futures = {client.submit(write_shard, container, stamp, path, names, metadata, pure=False,
                                     key=f"dcframe-shard-{run}-{number}"): path
                       for number, (path, (names, metadata)) in enumerate(shards.items())}
            try:
                for future in distributed.as_completed(futures):
                    done = _result(future, f"shard {os.path.basename(futures[future])}")
                    if progress:
                        progress(os.path.basename(futures[future]), done)
            except Exception:  # a task's error (a damaged tensor, a full disk)
                # A task already running cannot be stopped and writes on into the staging folder, which the caller
                # removes: let the others end first, so nothing of this run is left behind.
                distributed.wait(list(futures))
                raise
            except BaseException:  # an interrupt: stop now (a later run removes a staging folder left over)
                client.cancel(list(futures))
                raise


def _result(future: Any, what: str) -> Any:
    """A task's result; a task whose workers kept dying is a one-line DcfError naming `what`."""
    distributed = _distributed()
    try:
        return future.result()
    except distributed.KilledWorker as exc:
        raise DcfError(f"{what}: a Dask worker died on it {_failures()} times (out of memory?); give the workers "
                       f"more memory ({exc.__class__.__name__})") from None


def _batched(entries: Iterable[tuple[Any, int, int]]) -> Iterator[Task]:
    """(item, input bytes, side-input bytes) grouped in order into Tasks. An item of SMALL_TENSOR input bytes or
    more (a big tensor) takes with it the small ones just before it when those add up to less than SMALL_TENSOR
    (a bias or a norm between two weights is not a task of its own); longer runs of small items are tasks of up to
    BATCH_BYTES."""
    batch: list = []
    batch_bytes = batch_side = 0
    for item, nbytes, side in entries:
        big = nbytes >= SMALL_TENSOR
        if batch and (batch_bytes + nbytes > BATCH_BYTES if not big else batch_bytes >= SMALL_TENSOR):
            yield batch, batch_bytes, batch_side
            batch, batch_bytes, batch_side = [], 0, 0
        batch.append(item)
        batch_bytes += nbytes
        batch_side += side
        if big:
            yield batch, batch_bytes, batch_side
            batch, batch_bytes, batch_side = [], 0, 0
    if batch:
        yield batch, batch_bytes, batch_side


def _tasks(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, chains: dict[str, Chain],
           side_inputs: SideInputs | None) -> Iterator[Task]:
    """Encoding tasks in tensor order: a tensor's model file rather than its data, and its side inputs."""
    sources = getattr(tensors, "source", None)

    def entries() -> Iterator[tuple[Item, int, int]]:
        for name in tensors:
            dense = as_dense(tensors[name])
            chain = chains[policy.pipeline_for(name, dense.array.shape, dense.dtype)]
            source = sources(name) if sources is not None else None
            side = side_inputs(name, dense) if side_inputs else None
            side_bytes = sum(np.asarray(a).nbytes for a in side.values()) if side else 0
            yield (name, source, None if source is not None else dense, chain, side), dense.nbytes, side_bytes

    return _batched(entries())


def fit_batch(items: list[tuple[str, Any, Dense | None]], before: list[Step], inputs: tuple[str, ...],
              function: Callable[[Stream], Any]) -> list[Any]:
    """Worker side of one fit pass: each tensor through the steps before the fitting stage, then `function` of
    each stream that stage takes."""
    models: dict = {}  # mapped for this task only, as in encode_batch
    out = []
    for name, source, tensor in items:
        streams = run_steps(before, {ROOT: worker_tensor(source, name, tensor, models)})
        out.extend(function(streams[n]) for n in inputs)
    return out


def _fit_pass(client: Any, tensors: Mapping[str, np.ndarray | Dense], policy: Policy, threads: int,
              pipeline: str, before: list[Step], inputs: tuple[str, ...],
              function: Callable[[Stream], Any]) -> Iterator[Any]:
    """One FitPlan pass on the cluster (an orchestrator.FitMapper): `function`'s results over the streams of every
    tensor of `pipeline`, read from the model files by the workers."""
    sources = getattr(tensors, "source", None)

    def entries() -> Iterator[tuple[tuple, int, int]]:
        for name in tensors:
            dense = as_dense(tensors[name])
            if policy.pipeline_for(name, dense.array.shape, dense.dtype) == pipeline:
                source = sources(name) if sources is not None else None
                yield (name, source, None if source is not None else dense), dense.nbytes, 0

    for _batch, results in _ordered(client, fit_batch, _batched(entries()), (before, inputs, function),
                                    Window(threads), "fit"):
        yield from results


class Window:
    """How far ahead of the oldest task not yet taken the client submits, for `threads` worker threads.

    Always TASKS_PER_WORKER tasks per thread; beyond that, while the input bytes submitted after the oldest stay
    within threads x max(AHEAD_BYTES, the oldest's bytes) (so the other workers have work for as long as a big
    tensor runs), their side inputs within SIDE_AHEAD_BYTES (the client holds those), and the tasks within
    MAX_TASKS_PER_WORKER per thread. Finished results wait on the workers: at most about a big tensor's input
    bytes' worth of results per worker.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.tasks: collections.deque[tuple[int, int]] = collections.deque()  # (input bytes, side bytes), oldest first
        self.ahead = self.side = 0  # totals over the tasks after the oldest

    def admits(self, nbytes: int, side: int) -> bool:
        """Whether a task of `nbytes` input and `side` side-input bytes may be submitted now."""
        count = len(self.tasks)
        if count < TASKS_PER_WORKER * self.threads:
            return True
        if count >= MAX_TASKS_PER_WORKER * self.threads:
            return False
        limit = self.threads * max(AHEAD_BYTES, self.tasks[0][0])
        return self.ahead + nbytes <= limit and self.side + side <= SIDE_AHEAD_BYTES

    def add(self, nbytes: int, side: int) -> None:
        """A task was submitted."""
        if self.tasks:
            self.ahead += nbytes
            self.side += side
        self.tasks.append((nbytes, side))

    def take(self) -> None:
        """The oldest task was taken: the next one becomes the oldest."""
        self.tasks.popleft()
        if self.tasks:
            self.ahead -= self.tasks[0][0]
            self.side -= self.tasks[0][1]


def _ordered(client: Any, function: Callable, tasks: Iterable[Task], args: tuple, window: Window,
             label: str) -> Iterator[tuple[list, list]]:
    """Submit function(items, *args) per task, as far ahead as `window` admits; yield (items, results) in task
    order. Leaving early (an error, an interrupt) cancels the tasks not taken."""
    pending: collections.deque = collections.deque()
    run = uuid.uuid4().hex[:12]
    try:
        for number, (items, nbytes, side) in enumerate(tasks):
            while pending and not window.admits(nbytes, side):
                window.take()
                yield _take(pending)
            key = f"dcframe-{label}-{run}-{number}"  # unique per run: never another run's cached result
            pending.append((client.submit(function, items, *args, key=key, pure=False), items))
            window.add(nbytes, side)
        while pending:
            window.take()
            yield _take(pending)
    finally:
        if pending:
            client.cancel([future for future, _ in pending])


def _take(pending: collections.deque) -> tuple[list, list]:
    """The oldest task's (items, results); its result may then leave the worker's memory."""
    future, items = pending.popleft()
    results = _result(future, f"tensor '{items[0][0]}'")
    future.release()
    return items, results


def _failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures", 3)) + 1


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]
