"""Runs chains over tensors: encode in chain order, decode in reverse, recording every stream's size per stage."""

from __future__ import annotations

import collections
import math
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dcframe.core.dtypes import numpy_dtype
from dcframe.core.errors import DcfError, FormatError, LimitError, ModelIOError
from dcframe.core.pipeline import ROOT, Chain, Policy, Step
from dcframe.core.stage import FitPlan, Stage
from dcframe.core.streams import Bytes, Dense, Stream, Symbols, symbol_counts

Application = tuple[str, list[str], dict[str, Any]]  # input stream, output streams, the stage's meta

# Decompression bombs: while a tensor decodes, no stream any stage produces may exceed
# OUTPUT_FACTOR * max(declared tensor bytes, stored bytes) + OUTPUT_SLACK (spec/FORMAT.md, section 8).
OUTPUT_FACTOR = 8
OUTPUT_SLACK = 1 << 20
DEFAULT_OUTPUT_LIMIT = 1 << 40
_OUTPUT_LIMIT: ContextVar[int] = ContextVar("dcframe_output_limit", default=DEFAULT_OUTPUT_LIMIT)


def output_limit() -> int:
    """The most bytes one stream may hold in the decode now running; a stage checks sizes from meta against it."""
    return _OUTPUT_LIMIT.get()


def check_output(stage_id: str, nbytes: int, what: str = "output") -> None:
    """Refuse (LimitError) to allocate a decoded stream of `nbytes`, read from untrusted meta, beyond output_limit()."""
    limit = _OUTPUT_LIMIT.get()
    if nbytes > limit:
        raise LimitError(f"{stage_id}: {what} of {nbytes} bytes exceeds the {limit}-byte limit for this tensor "
                         f"(a decompression bomb or a damaged file)")


def decode_bound(dtype: str, shape: tuple[int, ...] | list[int], stored_bytes: int) -> int:
    """The output limit of one tensor's decode: a small multiple of its declared or stored size."""
    declared = math.prod(shape) * numpy_dtype(dtype).itemsize
    return OUTPUT_FACTOR * max(declared, stored_bytes) + OUTPUT_SLACK


def stream_nbytes(stream: Stream) -> int:
    """Bytes a decoded stream occupies in memory."""
    if isinstance(stream, Bytes):
        return len(stream.data)
    return int(stream.array.nbytes)


@dataclass(frozen=True)
class Spilled:
    """A final stream a parallel worker left in a spill file: `length` bytes at `offset` of the open file `fd`.

    The parent copies it into the container (ContainerWriter.add) without the bytes passing through Python; `crc`
    is its CRC32, computed by the worker. Valid only until the next tensor is requested from compress_tensors.
    """

    fd: int
    offset: int
    length: int
    crc: int

    def __len__(self) -> int:
        return self.length


@dataclass
class EncodedTensor:
    """One tensor after its chain: the final byte streams, what decode needs, and what each stage produced."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chain: Chain
    steps: list[list[Application]]
    streams: dict[str, bytes | Spilled]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def original_bytes(self) -> int:
        return math.prod(self.shape) * numpy_dtype(self.dtype).itemsize


def as_dense(array: np.ndarray | Dense) -> Dense:
    """Accept a numpy array or a Dense (needed for BF16 bit patterns)."""
    return array if isinstance(array, Dense) else Dense.of(array)


def run_steps(steps: Iterable[Step], streams: dict[str, Stream], record: list | None = None,
              sizes: list | None = None) -> dict[str, Stream]:
    """Encode `streams` through `steps`, optionally recording applications and per-step stream sizes."""
    for step in steps:
        applied = []
        for name in step.inputs:
            stream = streams.pop(name)
            outputs, meta = step.stage.encode(stream)
            names = step.outputs[name]
            for local, out in zip(step.stage.gives, names, strict=True):
                produced = outputs[local]
                if produced.kind != step.stage.gives[local]:
                    raise DcfError(f"stage '{step.stage.id}' gave {produced.kind} for {local!r}, "
                                   f"but declares {step.stage.gives[local]}")
                streams[out] = produced
            applied.append((name, list(names), meta))
        if record is not None:
            record.append(applied)
        if sizes is not None:
            sizes.append({name: s.nbytes for name, s in streams.items()})
    return streams


SideInputs = Callable[[str, Dense], Mapping[str, np.ndarray]]  # tensor name, tensor -> its side inputs (stage.py)
# Runs the fits and the encoding elsewhere (dcframe.bindings.daskexec.DaskExecutor): (tensors, policy, stats, progress,
# side_inputs) -> the EncodedTensors in the mapping's order, the same as a serial run's (fit_chains with a mapper).
Executor = Callable[[Mapping[str, Any], Policy, bool, Callable[[str, int], None] | None, SideInputs | None],
                    Iterator["EncodedTensor"]]


def encode_tensor(name: str, tensor: np.ndarray | Dense, chain: Chain, stats: bool = True,
                  side: Mapping[str, np.ndarray] | None = None) -> EncodedTensor:
    """Run one tensor through its chain; with `stats`, also measure entropy, sparsity and reconstruction error.

    `side` are the tensor's encode-time side inputs (calibration statistics), handed to the stages on its stream.
    """
    dense = as_dense(tensor)
    if side:
        dense = Dense(dense.array, dense.dtype, dict(side))
    steps: list[list[Application]] = []
    sizes: list[dict[str, int]] = []
    entropy: dict[str, float] = {}
    streams: dict[str, Stream] = {ROOT: dense}
    for step in chain.steps:
        try:
            run_steps([step], streams, steps, sizes)
        except DcfError as exc:  # a user sees which tensor a stage refused, not only why
            raise type(exc)(f"tensor '{name}': {exc}") from None
        if stats:
            for sname, s in streams.items():
                if isinstance(s, Symbols) and sname not in entropy:
                    entropy[sname] = order0_entropy_bits(s.array, s.alphabet)
    final = {}
    for sname, s in streams.items():
        if not isinstance(s, Bytes):
            raise DcfError(f"tensor '{name}': chain ended with a {s.kind} stream {sname!r}")
        final[sname] = s.data
    encoded = EncodedTensor(name, dense.dtype, tuple(dense.array.shape), chain, steps, final)
    if stats:
        encoded.stats = {"stages": sizes, "entropy_bits": entropy}
        if chain.lossy:
            approx = decode_tensor(chain.stages, steps, final, dense.dtype, dense.array.shape)
            encoded.stats.update(error_stats(dense, approx))
    return encoded


def decode_tensor(stages: list[Stage], steps: list[list[Application]], streams: Mapping[str, bytes | Stream],
                  dtype: str, shape: tuple[int, ...] | list[int], where: str = "", limit: int | None = None) -> Dense:
    """Invert a chain: apply each stage's decode in reverse order and check the result's dtype and shape.

    Every stream a stage produces is bounded by `limit` (default: decode_bound of the declared tensor), which the
    stages read through output_limit() before allocating what their meta declares.
    """
    where = where or "tensor"
    current: dict[str, Stream] = {k: (Bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v)
                                  for k, v in streams.items()}
    if len(steps) != len(stages):
        raise FormatError(f"{where}: {len(steps)} step records for a chain of {len(stages)} stages")
    if limit is None:
        try:
            limit = decode_bound(dtype, shape, sum(stream_nbytes(s) for s in current.values()))
        except DcfError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    token = _OUTPUT_LIMIT.set(limit)
    try:
        return _decode(stages, steps, current, dtype, shape, where, limit)
    finally:
        _OUTPUT_LIMIT.reset(token)


def _decode(stages: list[Stage], steps: list[list[Application]], current: dict[str, Stream], dtype: str,
            shape: tuple[int, ...] | list[int], where: str, limit: int) -> Dense:
    for stage, applied in zip(reversed(stages), reversed(steps), strict=True):
        for app in reversed(applied):
            if not (isinstance(app, (list, tuple)) and len(app) == 3 and isinstance(app[0], str)
                    and isinstance(app[1], (list, tuple)) and all(isinstance(o, str) for o in app[1])
                    and isinstance(app[2], dict)):
                raise FormatError(f"{where}: malformed step record for stage '{stage.id}'")
            source, outs, meta = app
            if len(outs) != len(stage.gives) or source in current and source not in outs:
                raise FormatError(f"{where}: stage '{stage.id}' record names streams {outs}, "
                                  f"expected {len(stage.gives)}")
            inputs = {}
            for local, out in zip(stage.gives, outs, strict=True):
                if out not in current:
                    raise FormatError(f"{where}: stage '{stage.id}' needs stream {out!r}, which is missing")
                s = current.pop(out)
                if s.kind != stage.gives[local]:
                    raise FormatError(f"{where}: stage '{stage.id}' expects {stage.gives[local]} for {out!r}, "
                                      f"got {s.kind}")
                inputs[local] = s
            try:
                result = stage.decode(inputs, meta)
            except DcfError as exc:
                raise type(exc)(f"{where}: {exc}") from None
            except (ValueError, TypeError, LookupError, ArithmeticError, MemoryError, struct.error) as exc:
                raise FormatError(f"{where}: stage '{stage.id}' cannot decode its input "
                                  f"({type(exc).__name__}: {exc})") from None
            if not _valid_stream(result) or result.kind not in stage.takes:
                raise FormatError(f"{where}: stage '{stage.id}' decoded to {getattr(result, 'kind', result)!r}")
            if stream_nbytes(result) > limit:
                raise LimitError(f"{where}: stage '{stage.id}' decoded {stream_nbytes(result)} bytes, over the "
                                 f"{limit}-byte limit for this tensor")
            current[source] = result
    result = current.pop(ROOT, None)
    if current or not isinstance(result, Dense):
        raise FormatError(f"{where}: decoding did not end in one dense tensor (left: {sorted(current)})")
    if result.dtype != dtype or tuple(result.array.shape) != tuple(shape) or result.array.dtype != numpy_dtype(dtype):
        raise FormatError(f"{where}: decoded {result.dtype}{list(result.array.shape)}, "
                          f"record says {dtype}{list(shape)}")
    return result


def _valid_stream(s: object) -> bool:
    if isinstance(s, Bytes):
        return isinstance(s.data, (bytes, bytearray, memoryview))
    if isinstance(s, Dense):
        return isinstance(s.array, np.ndarray) and isinstance(s.dtype, str)
    return isinstance(s, Symbols) and isinstance(s.array, np.ndarray) and isinstance(s.alphabet, int)


def roundtrip(chain: Chain, tensor: np.ndarray | Dense) -> Dense:
    """Encode then decode one tensor: the approximation a lossy chain leaves (exact for a lossless one)."""
    dense = as_dense(tensor)
    record: list = []
    streams = run_steps(chain.steps, {ROOT: dense}, record)
    return decode_tensor(chain.stages, record, streams, dense.dtype, dense.array.shape)


def order0_entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Total order-0 (empirical) entropy of a symbol array in bits: the bound any symbol-by-symbol coder meets."""
    if symbols.size == 0:
        return 0.0
    if alphabet <= (1 << 24):
        counts = symbol_counts(symbols)
    else:
        counts = np.unique(symbols, return_counts=True)[1]
    counts = counts[counts > 0].astype(np.float64)
    return float(np.sum(counts * np.log2(symbols.size / counts)))  # >= 0; one symbol gives +0.0, not -0.0


STATS_BLOCK = 1 << 20  # elements per block in error_stats: its float64 temporaries stay a few MB


def error_stats(original: Dense, approx: Dense) -> dict[str, float]:
    """Reconstruction error and structure of a lossy result: RMS (absolute and relative to the tensor's own RMS),
    max abs error, sparsity, distinct values.

    Computed block by block, so the working set stays a few MB beyond the two tensors, whatever their size.
    """
    a_all = original.values().reshape(-1)
    b_all = approx.values().reshape(-1)
    n = a_all.size
    if n == 0:
        return {"rms": 0.0, "max_abs": 0.0, "sparsity": 0.0, "distinct": 0}
    square_sums, energy, count, max_abs, zeros = [], 0.0, 0, 0.0, 0
    for lo in range(0, n, STATS_BLOCK):
        a = a_all[lo:lo + STATS_BLOCK].astype(np.float64, copy=False)
        b = b_all[lo:lo + STATS_BLOCK].astype(np.float64, copy=False)
        finite = np.isfinite(a) & np.isfinite(b)
        diff = a[finite] - b[finite]  # inf - inf would warn; non-finite pairs are not errors to measure
        if diff.size:
            square_sums.append(np.sum(diff * diff))
            energy += float(np.sum(np.square(a[finite])))
            max_abs = max(max_abs, float(np.abs(diff).max()))
        count += diff.size
        zeros += int(np.count_nonzero(b == 0))
    if len(square_sums) == 1:
        rms = float(np.sqrt(square_sums[0] / count))
    else:
        rms = float(np.sqrt(np.sum(square_sums) / count)) if count else 0.0
    signal = math.sqrt(energy / count) if count else 0.0
    return {
        "rms": rms,
        "rel_rms": rms / signal if signal > 0 else 0.0,  # how far the tensor moved, relative to its own RMS
        "max_abs": max_abs,
        "sparsity": float(zeros / n),
        "distinct": int(np.unique(b_all[b_all != 0]).size),
    }


# Runs one pass of a FitPlan elsewhere: (pipeline, the steps before the fitting one, the stream names it takes, the
# pass's function of one stream) -> that function's results over every such stream of the pipeline's tensors.
FitMapper = Callable[[str, list[Step], tuple[str, ...], Callable[[Stream], Any]], Iterable[Any]]


def fit_chains(policy: Policy, tensors: Callable[[], Iterator[tuple[str, Dense]]],
               mapper: FitMapper | None = None) -> dict[str, Chain]:
    """Let stages that look at every tensor first (global pruning) fit themselves, per pipeline.

    With `mapper`, a stage with a fit_plan has its passes mapped by it (an executor, where the tensors are) and
    merged here; the result is the same stage as a local fit.
    """
    fitted: dict[str, Chain] = {}
    for pipeline, chain in list(policy._chains.items()):
        steps = list(chain.steps)
        for i, step in enumerate(steps):
            if type(step.stage).fit is Stage.fit:
                continue
            plan = step.stage.fit_plan() if mapper is not None else None
            if plan is not None:
                steps[i] = replace(step, stage=_run_mapped(plan, mapper, pipeline, steps[:i], tuple(step.inputs)))
                continue

            def inputs(i=i, pipeline=pipeline, steps=steps) -> Iterator[Stream]:
                for name, dense in tensors():
                    if policy.pipeline_for(name, dense.array.shape, dense.dtype) != pipeline:
                        continue
                    streams = run_steps(steps[:i], {ROOT: dense})
                    yield from (streams[n] for n in steps[i].inputs)

            steps[i] = replace(step, stage=step.stage.fit(inputs))
        fitted[pipeline] = Chain(tuple(steps), chain.final)
    return fitted


def _run_mapped(plan: FitPlan, mapper: FitMapper, pipeline: str, before: list[Step],
                inputs: tuple[str, ...]) -> Stage:
    """Drive a FitPlan with each pass mapped by `mapper` over the pipeline's tensors."""
    try:
        request = next(plan)
        while True:
            request = plan.send(mapper(pipeline, before, inputs, request))
    except StopIteration as done:
        return done.value


def compress_tensors(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, stats: bool = True,
                     progress: Callable[[str, int], None] | None = None, jobs: int = 1,
                     spill_dir: str | os.PathLike | None = None,
                     side_inputs: SideInputs | None = None,
                     executor: Executor | None = None) -> Iterator[EncodedTensor]:
    """Encode every tensor with the chain the policy chooses for it, lazily, in the mapping's order.

    With `jobs` > 1, tensors are encoded in that many worker processes, at most 2 * jobs in flight, and yielded in
    order: the same EncodedTensors (so the same file bytes) as a serial run. Global fits run once, here, first.
    When every chain is threadable (the lossless preset's, with compiled kernels), `jobs` threads of this process
    encode them instead (ordered_map), with the same results; `spill_dir` is then unused.
    With `spill_dir` as well (Linux), workers write their final streams to unnamed spill files (memfd, else temporary
    files in `spill_dir`) and the yielded tensors hold Spilled streams instead of bytes, valid only until the next
    tensor is requested: for a ContainerWriter, which copies them in the kernel, so the streams never pass through
    pipes and pickle. Then up to 4 * jobs tensors (at most SPILL_BUDGET input bytes beyond one) are in flight.
    With `executor` (e.g. daskexec.DaskExecutor), it fits and encodes the tensors instead; `jobs` is unused.
    """

    def items() -> Iterator[tuple[str, Dense]]:
        for name in tensors:
            yield name, as_dense(tensors[name])

    if executor is not None:
        yield from executor(tensors, policy, stats, progress, side_inputs)
        return
    chains = fit_chains(policy, items)
    if jobs > 1 and len(tensors) > 1 and all(threadable(chains[p].stages) for p in _pipelines_used(policy, items)):
        yield from _compress_threaded(tensors, policy, chains, stats, progress, jobs, side_inputs)
        return
    if jobs > 1 and len(tensors) > 1:
        yield from _compress_parallel(tensors, policy, chains, stats, progress, jobs, spill_dir, side_inputs)
        return
    for name, dense in items():
        pipeline = policy.pipeline_for(name, dense.array.shape, dense.dtype)
        side = side_inputs(name, dense) if side_inputs else None
        encoded = encode_tensor(name, dense, chains[pipeline], stats=stats, side=side)
        if progress:
            progress(name, dense.nbytes)
        yield encoded


def default_jobs() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_WORKER_MODELS: dict[tuple[str, int, int], Mapping[str, Dense]] = {}
WORKER_MODELS_KEPT = 8  # model files (a folder's shards) a worker keeps open
SPILL_SLOTS_PER_JOB = 4  # tensors in flight per worker when results go through spill files
SPILL_BUDGET = 1 << 29  # input bytes in flight beyond the oldest tensor, when results go through spill files
SPILL_KEEP = 1 << 26  # a spill file that grew past this is emptied when its slot frees up


def worker_tensor(source: tuple[str, int, int] | None, name: str, tensor: Dense | None,
                  models: dict | None = None) -> Dense:
    """In a worker: the tensor `name` from its model file (memory-mapped, opened once per `models` cache, by
    default the process's, and checked against the stamp the parent saw), or `tensor` itself when it has no file."""
    if source is None:
        assert tensor is not None
        return tensor
    models = _WORKER_MODELS if models is None else models
    if source not in models:
        from dcframe.io.modelio import read_model

        st = os.stat(source[0])
        if (st.st_mtime_ns, st.st_size) != source[1:]:
            raise ModelIOError(f"{source[0]}: the file changed while it was being compressed")
        if len(models) >= WORKER_MODELS_KEPT:
            models.clear()
        models[source] = read_model(source[0])
    return models[source][name]


def _encode_job(source: tuple[str, int, int] | None, name: str, tensor: Dense | None, chain: Chain,
                stats: bool, spill: int | None = None, side: Mapping[str, np.ndarray] | None = None) -> EncodedTensor:
    """Worker side of a parallel compress: re-open (memory-map) the model file once per process, encode one tensor.

    With `spill` (a spill file's descriptor, inherited through fork), the final streams are written there from
    offset 0 and returned as (offset, length, crc) triples; the chain is left out (the parent has it).
    """
    encoded = encode_tensor(name, worker_tensor(source, name, tensor), chain, stats=stats, side=side)
    encoded.chain = None  # type: ignore[assignment]  # the parent puts back its own (no need to pickle it back)
    if spill is None:
        return encoded
    offset, spilled = 0, {}
    for sname, data in encoded.streams.items():
        view = memoryview(data)
        try:
            done = 0
            while done < len(view):
                done += os.pwrite(spill, view[done:], offset + done)
        except OSError as exc:
            raise ModelIOError(f"cannot write a spill file for tensor '{name}': {exc.strerror or exc}") from None
        spilled[sname] = (offset, len(view), zlib.crc32(view) & 0xFFFFFFFF)
        offset += len(view)
    encoded.streams = spilled  # type: ignore[assignment]  # triples; the parent turns them into Spilled
    return encoded


# Stages whose encode and decode spend their time where Python's GIL is released (zlib, zstd, lzma and bz2 on whole
# streams; numpy on whole byte planes; the compiled kernels of rans and huffman), so that chains of these alone run
# their tensors in threads of this process: no worker processes to start (each importing numba again, 0.3-1 s of
# CPU, where the C kernels are not built), and no streams to hand back through spill files.
THREADED_STAGES = frozenset({"raw", "bytegroup", "zstd", "zlib", "lzma", "bz2"})
KERNEL_STAGES = frozenset({"rans", "huffman"})  # threaded when their compiled kernels can run (C or numba)


def _pipelines_used(policy: Policy, items: Callable[[], Iterator[tuple[str, Dense]]]) -> set[str]:
    """The pipelines the tensors take (the policy also holds chains no tensor may use, e.g. the lossless fallback)."""
    return {policy.pipeline_for(name, dense.array.shape, dense.dtype) for name, dense in items()}


def threadable(stages: Iterable[Stage]) -> bool:
    """Whether tensors through these stages are best encoded (or decoded) in threads rather than processes."""
    ids = {stage.id for stage in stages}
    if not ids <= THREADED_STAGES | KERNEL_STAGES:
        return False
    if ids & KERNEL_STAGES:  # their numpy path holds the GIL for many small steps: processes do better there
        return _kernels_present()
    return True


def _kernels_present() -> bool:
    """Whether rans's and huffman's compiled kernels can run here under DCFRAME_KERNELS: the C extension
    (dcframe_plugins._ckernels) or numba, each only looked up (importing numba costs 0.3-1 s)."""
    import importlib.util

    choice = os.environ.get("DCFRAME_KERNELS", "").strip().lower() or "auto"
    modules = {"c": "dcframe_plugins._ckernels", "numba": "numba"}
    return any(importlib.util.find_spec(name) is not None for kind, name in modules.items() if choice in ("auto", kind))


def ordered_map(function: Callable[..., Any], tasks: Iterable[tuple[tuple, int]], jobs: int,
                budget: int = SPILL_BUDGET) -> Iterator[Any]:
    """function(*args) of every (args, nbytes) task, run in `jobs` threads and yielded in order: at most 2 * jobs
    tasks in flight, and at most `budget` bytes of them beyond the oldest. An error is raised where its task's
    result would be yielded. Stopping early (an error, Ctrl-C) cancels the tasks not started and waits for none:
    the threads are daemons, so a running task never holds up an interrupted caller or the process's exit."""
    import queue
    import threading
    from concurrent.futures import Future

    todo: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        while (item := todo.get()) is not None:
            future, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:  # handed to the caller, who raises it in the task's turn
                    future.set_exception(exc)

    threads = [threading.Thread(target=work, name=f"dcframe-{i}", daemon=True) for i in range(jobs)]
    for thread in threads:
        thread.start()
    pending: collections.deque = collections.deque()
    waiting = 0
    try:
        for args, nbytes in tasks:
            while pending and (len(pending) >= 2 * jobs or waiting + nbytes > budget):
                future, done = pending.popleft()
                waiting -= done
                yield future.result()
            future = Future()
            todo.put((future, args))
            pending.append((future, nbytes))
            waiting += nbytes
        while pending:
            yield pending.popleft()[0].result()
    finally:
        for future, _ in pending:
            future.cancel()
        for _ in threads:
            todo.put(None)


def _compress_threaded(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, chains: dict[str, Chain],
                       stats: bool, progress: Callable[[str, int], None] | None, jobs: int,
                       side_inputs: SideInputs | None = None) -> Iterator[EncodedTensor]:
    """compress_tensors in `jobs` threads (chains that are threadable): the same tensors, in order."""

    def tasks() -> Iterator[tuple[tuple, int]]:
        for name in tensors:  # the mapping is read here only; a memory-mapped tensor's pages load in its thread
            dense = as_dense(tensors[name])
            side = side_inputs(name, dense) if side_inputs else None
            chain = chains[policy.pipeline_for(name, dense.array.shape, dense.dtype)]
            yield (name, dense, chain, stats, side), dense.nbytes

    for encoded in ordered_map(encode_tensor, tasks(), jobs):
        if progress:
            progress(encoded.name, encoded.original_bytes)
        yield encoded


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the parent process dies, even by SIGKILL (which runs no cleanup).

    Linux: the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG), and a parent that died before
    the call is noticed at once. Elsewhere a daemon thread watches for the parent's PID to change.
    """
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # orphaned before the death signal was armed
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no usable libc: fall back to watching
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="dcframe-parent-watch", daemon=True).start()


def _terminate_workers(pool) -> None:
    """Kill a pool's worker processes now, rather than wait for the tensors they are encoding (SIGKILL: a forked
    worker inherits the CLI's SIGTERM handler, which only interrupts the task; workers hold nothing to clean up)."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # already gone, or closed
            pass


def _open_spills(spill_dir: str | os.PathLike, count: int) -> list:
    """`count` unnamed spill files: in memory (memfd; never written back to a disk) where the system has it, else
    temporary files in `spill_dir` (O_TMPFILE where supported). Nothing to clean up after a crash, either way."""
    import tempfile

    files = []
    try:
        for _ in range(count):
            if hasattr(os, "memfd_create"):
                files.append(open(os.memfd_create("dcframe-spill", os.MFD_CLOEXEC), "r+b", buffering=0))
            else:
                files.append(tempfile.TemporaryFile(dir=spill_dir, prefix=".dcf-spill.", suffix=".tmp", buffering=0))
    except OSError as exc:
        for f in files:
            f.close()
        raise ModelIOError(f"cannot create a spill file in {spill_dir}: {exc.strerror or exc}") from None
    return files


def _compress_parallel(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, chains: dict[str, Chain],
                       stats: bool, progress: Callable[[str, int], None] | None,
                       jobs: int, spill_dir: str | os.PathLike | None = None,
                       side_inputs: SideInputs | None = None) -> Iterator[EncodedTensor]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    sources = getattr(tensors, "source", None)  # model files and folders: workers memory-map the files themselves
    # fork on Linux: workers start at once with every module and plugin loaded, and the caller's __main__ is not
    # re-run (spawn and forkserver would re-import it); elsewhere spawn, the only safe choice there.
    fork = sys.platform.startswith("linux")
    context = multiprocessing.get_context("fork" if fork else "spawn")
    # One spill file per in-flight slot, opened before the pool forks its workers (they inherit the descriptors).
    # A slot is reused once the consumer has asked for the tensor after the one it held. Spilled results cost the
    # parent no memory, so more of them may wait (the workers then keep busy while the parent copies one), bounded
    # by count and by input bytes; results held as bytes in the parent stay at 2 * jobs.
    spills = _open_spills(spill_dir, SPILL_SLOTS_PER_JOB * jobs) if spill_dir is not None and fork else []
    in_flight = len(spills) or 2 * jobs
    free = collections.deque(range(len(spills)))
    waiting_bytes = 0
    pending: collections.deque = collections.deque()
    pool = None
    try:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_die_with_parent,
                                   initargs=(os.getpid(),))

        def drain() -> tuple[EncodedTensor, int | None]:
            nonlocal waiting_bytes
            future, name, nbytes, chain, slot = pending.popleft()
            encoded = future.result()
            waiting_bytes -= nbytes
            encoded.chain = chain  # the very object of every tensor of that pipeline: the writer caches by it
            if slot is not None:
                fd = spills[slot].fileno()
                encoded.streams = {s: Spilled(fd, *where) for s, where in encoded.streams.items()}
            if progress:
                progress(name, nbytes)
            return encoded, slot

        def release(slot: int | None) -> None:
            if slot is None:
                return
            if os.fstat(spills[slot].fileno()).st_size > SPILL_KEEP:
                os.ftruncate(spills[slot].fileno(), 0)  # give back the room a big tensor took
            free.append(slot)

        for name in tensors:
            dense = as_dense(tensors[name])
            chain = chains[policy.pipeline_for(name, dense.array.shape, dense.dtype)]
            nbytes = dense.nbytes
            source = sources(name) if sources is not None else None
            payload = None if source is not None else dense
            side = side_inputs(name, dense) if side_inputs else None
            del dense  # a memory-mapped tensor is read by the worker, not here
            while pending and (len(pending) >= in_flight or spills and waiting_bytes + nbytes > SPILL_BUDGET):
                encoded, done = drain()
                yield encoded
                release(done)  # the consumer is done with that tensor's spilled streams
            slot = free.popleft() if spills else None
            spill = spills[slot].fileno() if slot is not None else None
            pending.append((pool.submit(_encode_job, source, name, payload, chain, stats, spill, side), name, nbytes,
                            chain, slot))
            waiting_bytes += nbytes
        while pending:
            yield drain()[0]
    except BrokenProcessPool:
        raise DcfError("a worker process died (out of memory?); try fewer --jobs") from None
    finally:
        if pool is not None:
            stopped_early = bool(pending)  # an error, Ctrl-C, SIGTERM: the tensors still encoding are not wanted
            if stopped_early:
                # The pool's manager then fails every waiting future itself; cancelling them as well would make
                # it raise InvalidStateError in its thread (Python 3.11), printed as a traceback.
                _terminate_workers(pool)
            pool.shutdown(wait=True, cancel_futures=not stopped_early)
        for f in spills:
            f.close()
