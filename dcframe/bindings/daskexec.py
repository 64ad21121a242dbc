"""Compress on a Dask cluster (`compress --executor dask`, `--scheduler tcp://HOST:PORT`): the `dask` extra.

Tasks are per tensor, or per batch of consecutive small tensors. A task names its tensors and the model file they are
in (each worker memory-maps the file itself: the same machine or a shared filesystem), never ships their data, and
returns the encoded streams. The client submits tasks in tensor order, keeps a bounded number in flight and takes
the results in order, so the container gets the same bytes as a serial run and the client holds one result at a
time. Global fits come first: a stage with a fit_plan (scope=global pruning: counts, then digit histograms of the
magnitudes) has each pass mapped on the workers, per tensor, and merged on the client; another stage's `fit` runs
on the client, streaming one tensor at a time, as in a serial run. Dask reruns the tasks of a worker that dies (up to
its `allowed-failures`). Importing this module does not import dask: the cluster starts when the first tensor is
wanted. A folder container decompresses per shard on the same executor (write_shards).
"""

from __future__ import annotations

import collections
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

SMALL_TENSOR = 1 << 20  # input bytes under which consecutive tensors share a task
BATCH_BYTES = 16 << 20  # input bytes a batch of small tensors grows to
TASKS_PER_WORKER = 2  # tasks in flight per worker thread (one running, one queued behind it)
DEFAULT_WORKERS = 2  # LocalCluster workers when --jobs is not given
CONNECT_TIMEOUT = 10.0  # seconds to reach a --scheduler before giving up (Dask's own default is 30)
INSTALL_HINT = "pip install 'dcframe[dask]'"
SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"  # the environment a nanny starts its worker process with

# One task: per tensor (name, model file source or None, the tensor itself when it has no source, chain, side inputs)
Item = tuple[str, "tuple[str, int, int] | None", "Dense | None", Chain, "Mapping[str, np.ndarray] | None"]


def _distributed():
    """The `distributed` module, or a ConfigError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--executor dask needs Dask's distributed scheduler: {INSTALL_HINT}") from None
    return distributed


def local_cluster(workers: int) -> Any:
    """A LocalCluster of `workers` processes with one thread each, quiet, its dashboard on a free port.

    Without Dask's MALLOC_TRIM_THRESHOLD_ for its workers: setting it turns off glibc's adaptive mmap threshold, so
    every large numpy temporary is a fresh mmap faulted in page by page (3x the system time of a han run here).
    Workers log a failed task with its traceback; the client raises the same error, as one line.
    """
    import logging

    import dask

    distributed = _distributed()
    with dask.config.set({f"{SPAWN_ENVIRON}.MALLOC_TRIM_THRESHOLD_": None}):
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
        with local_cluster(self.workers) as cluster, distributed.Client(cluster) as client:
            yield client

    def __call__(self, tensors: Mapping[str, np.ndarray | Dense], policy: Policy, stats: bool,
                 progress: Callable[[str, int], None] | None,
                 side_inputs: SideInputs | None) -> Iterator[EncodedTensor]:
        """Fit, then encode every tensor on the cluster; yield them in the mapping's order (the orchestrator's
        executor seam). A stage with a fit_plan (global pruning) fits by passes mapped on the workers."""
        with self.client() as client:
            in_flight = TASKS_PER_WORKER * max(1, sum(client.nthreads().values()) or self.workers)

            def items() -> Iterator[tuple[str, Dense]]:  # for a stage that fits only here, through `fit`
                for name in tensors:
                    yield name, as_dense(tensors[name])

            chains = fit_chains(policy, items, partial(_fit_pass, client, tensors, policy, in_flight))
            tasks = _tasks(tensors, policy, chains, side_inputs)
            for batch, results in _ordered(client, encode_batch, tasks, (stats,), in_flight, "encode"):
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


def _batched(entries: Iterable[tuple[Any, int]]) -> Iterator[tuple[list, int]]:
    """(item, input bytes) grouped in order: an item of SMALL_TENSOR bytes or more alone, consecutive smaller ones
    together up to BATCH_BYTES."""
    batch: list = []
    batch_bytes = 0
    for item, nbytes in entries:
        if batch and (nbytes >= SMALL_TENSOR or batch_bytes + nbytes > BATCH_BYTES):
            yield batch, batch_bytes
            batch, batch_bytes = [], 0
        if nbytes >= SMALL_TENSOR:
            yield [item], nbytes
            continue
        batch.append(item)
        batch_bytes += nbytes
    if batch:
        yield batch, batch_bytes


def _tasks(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, chains: dict[str, Chain],
           side_inputs: SideInputs | None) -> Iterator[tuple[list[Item], int]]:
    """Encoding tasks in tensor order, each (items, input bytes): a tensor's model file rather than its data."""
    sources = getattr(tensors, "source", None)

    def entries() -> Iterator[tuple[Item, int]]:
        for name in tensors:
            dense = as_dense(tensors[name])
            chain = chains[policy.pipeline_for(name, dense.array.shape, dense.dtype)]
            source = sources(name) if sources is not None else None
            side = side_inputs(name, dense) if side_inputs else None
            yield (name, source, None if source is not None else dense, chain, side), dense.nbytes

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


def _fit_pass(client: Any, tensors: Mapping[str, np.ndarray | Dense], policy: Policy, in_flight: int,
              pipeline: str, before: list[Step], inputs: tuple[str, ...],
              function: Callable[[Stream], Any]) -> Iterator[Any]:
    """One FitPlan pass on the cluster (an orchestrator.FitMapper): `function`'s results over the streams of every
    tensor of `pipeline`, read from the model files by the workers."""
    sources = getattr(tensors, "source", None)

    def entries() -> Iterator[tuple[tuple, int]]:
        for name in tensors:
            dense = as_dense(tensors[name])
            if policy.pipeline_for(name, dense.array.shape, dense.dtype) == pipeline:
                source = sources(name) if sources is not None else None
                yield (name, source, None if source is not None else dense), dense.nbytes

    for _batch, results in _ordered(client, fit_batch, _batched(entries()), (before, inputs, function), in_flight,
                                    "fit"):
        yield from results


def _ordered(client: Any, function: Callable, tasks: Iterable[tuple[list, int]], args: tuple, in_flight: int,
             label: str) -> Iterator[tuple[list, list]]:
    """Submit function(items, *args) per task, at most `in_flight` not yet taken; yield (items, results) in task
    order. Leaving early (an error, an interrupt) cancels the tasks not taken."""
    pending: collections.deque = collections.deque()
    run = uuid.uuid4().hex[:12]
    try:
        for number, (items, _nbytes) in enumerate(tasks):
            while len(pending) >= in_flight:
                yield _take(pending)
            key = f"dcframe-{label}-{run}-{number}"  # unique per run: never another run's cached result
            pending.append((client.submit(function, items, *args, key=key, pure=False), items))
        while pending:
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
