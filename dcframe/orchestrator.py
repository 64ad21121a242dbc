"""Runs chains over tensors: encode in chain order, decode in reverse, recording every stream's size per stage."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import DcfError, FormatError
from .pipeline import ROOT, Chain, Policy, Step
from .stage import Stage
from .streams import Bytes, Dense, Stream, Symbols

Application = tuple[str, list[str], dict[str, Any]]  # input stream, output streams, the stage's meta


@dataclass
class EncodedTensor:
    """One tensor after its chain: the final byte streams, what decode needs, and what each stage produced."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chain: Chain
    steps: list[list[Application]]
    streams: dict[str, bytes]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def original_bytes(self) -> int:
        from .dtypes import numpy_dtype

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


def encode_tensor(name: str, tensor: np.ndarray | Dense, chain: Chain, stats: bool = True) -> EncodedTensor:
    """Run one tensor through its chain; with `stats`, also measure entropy, sparsity and reconstruction error."""
    dense = as_dense(tensor)
    steps: list[list[Application]] = []
    sizes: list[dict[str, int]] = []
    entropy: dict[str, float] = {}
    streams: dict[str, Stream] = {ROOT: dense}
    for step in chain.steps:
        run_steps([step], streams, steps, sizes)
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
                  dtype: str, shape: tuple[int, ...] | list[int], where: str = "") -> Dense:
    """Invert a chain: apply each stage's decode in reverse order and check the result's dtype and shape."""
    where = where or "tensor"
    current: dict[str, Stream] = {k: (Bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v)
                                  for k, v in streams.items()}
    if len(steps) != len(stages):
        raise FormatError(f"{where}: {len(steps)} step records for a chain of {len(stages)} stages")
    for stage, applied in zip(reversed(stages), reversed(steps), strict=True):
        for app in reversed(applied):
            if not (isinstance(app, (list, tuple)) and len(app) == 3 and isinstance(app[0], str)
                    and isinstance(app[1], (list, tuple)) and isinstance(app[2], dict)):
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
            except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as exc:
                raise FormatError(f"{where}: stage '{stage.id}' cannot decode its input "
                                  f"({type(exc).__name__}: {exc})") from None
            if result.kind not in stage.takes:
                raise FormatError(f"{where}: stage '{stage.id}' decoded to {result.kind}")
            current[source] = result
    result = current.pop(ROOT, None)
    if current or not isinstance(result, Dense):
        raise FormatError(f"{where}: decoding did not end in one dense tensor (left: {sorted(current)})")
    if result.dtype != dtype or tuple(result.array.shape) != tuple(shape):
        raise FormatError(f"{where}: decoded {result.dtype}{list(result.array.shape)}, "
                          f"record says {dtype}{list(shape)}")
    return result


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
        counts = np.bincount(symbols.astype(np.int64, copy=False))
    else:
        counts = np.unique(symbols, return_counts=True)[1]
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / symbols.size)).sum())


def error_stats(original: Dense, approx: Dense) -> dict[str, float]:
    """Reconstruction error and structure of a lossy result: RMS, max abs error, sparsity, distinct values."""
    a = original.values().astype(np.float64, copy=False).ravel()
    b = approx.values().astype(np.float64, copy=False).ravel()
    if a.size == 0:
        return {"rms": 0.0, "max_abs": 0.0, "sparsity": 0.0, "distinct": 0}
    finite = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[finite]
    return {
        "rms": float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0,
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "sparsity": float(np.count_nonzero(b == 0) / b.size),
        "distinct": int(np.unique(b[b != 0]).size),
    }


def fit_chains(policy: Policy, tensors: Callable[[], Iterator[tuple[str, Dense]]]) -> dict[str, Chain]:
    """Let stages that look at every tensor first (global pruning) fit themselves, per pipeline."""
    fitted: dict[str, Chain] = {}
    for pipeline, chain in list(policy._chains.items()):
        steps = list(chain.steps)
        for i, step in enumerate(steps):
            if type(step.stage).fit is Stage.fit:
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


def compress_tensors(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, stats: bool = True,
                     progress: Callable[[str, int], None] | None = None) -> Iterator[EncodedTensor]:
    """Encode every tensor with the chain the policy chooses for it, lazily, in the mapping's order."""

    def items() -> Iterator[tuple[str, Dense]]:
        for name in tensors:
            yield name, as_dense(tensors[name])

    chains = fit_chains(policy, items)
    for name, dense in items():
        pipeline = policy.pipeline_for(name, dense.array.shape, dense.dtype)
        encoded = encode_tensor(name, dense, chains[pipeline], stats=stats)
        if progress:
            progress(name, dense.nbytes)
        yield encoded

