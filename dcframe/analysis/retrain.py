"""The Deep Compression loop with retraining: approximate, hand the constraints to a retrainer, repeat, then encode.

The core knows no stage's math. A lossy stage declares what it leaves behind in ``imposes``: ``"zeros"`` (weights it
zeroed must stay exactly zero) and/or ``"shared"`` (weights it made equal must stay equal). Phase k runs, for every
tensor, the prefix of its chain up to and including its k-th lossy stage on the current weights, derives the
constraints from that approximation alone, and calls the user's retrainer::

    retrainer(weights: dict[str, np.ndarray], constraints: dict[str, Constraints], phase: PhaseInfo)
        -> dict[str, np.ndarray]

``weights`` are float32 copies: the approximation for tensors with constraints, the current values for tensors on
lossless chains (biases; free to train, absent from ``constraints``). The returned weights must keep every constraint
(checked; a DcfError names the tensor otherwise); tensors left out of the result keep their values. At the end the
retrained weights go through the full chains and the container is written; decoding it gives those weights exactly,
which holds because lossy stages are exact on weights that already keep their own constraints (prune on pruned
weights, kmeans on tensors with <= k distinct values). If one is not, the error names the stage.

A shared value may also be bounded: a stage that encodes tied values exactly only inside an interval (uniform: one
value per bin decodes bit for bit) gives it per shared value in ``Stage.shared_bounds``, and the constraints carry it
(``Constraints.low``/``high``; the interval of every bounding stage of the prefix, intersected). Retrainers keep each
shared value within [low, high] (``Constraints.clamp``, after every step: mlp's and torchretrain's do), and the check
refuses values outside it. The bounds are the tensor's own values, which holds as long as the stages before the
bounding one pass kept values through unchanged (prune and sparse do). Stages fitted over the chain (uniform's
rel_step) are fitted once, when their phase first comes: later phases and the final encoding keep that stage (its
step), since refitting on retrained weights would move the bins.

Global stages (Stage.fit, e.g. prune with scope=global) are fitted on the original weights for phase 1, then refitted
on the current weights before each later phase and before the final encoding: a global sparsity refitted on weights
that already hold that many zeros prunes nothing more, so retrained weights that shrank stay exactly as retrained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcframe.core.container import DEFAULT_CHUNK, ContainerWriter
from dcframe.core.dtypes import is_float
from dcframe.core.errors import DcfError
from dcframe.core.orchestrator import (
    EncodedTensor,
    as_dense,
    compress_tensors,
    decode_tensor,
    encode_tensor,
    fit_chains,
    roundtrip,
)
from dcframe.core.pipeline import Chain, Policy, Rule, build_chain
from dcframe.core.stage import Stage
from dcframe.core.streams import Dense

ZEROS = "zeros"
SHARED = "shared"


@dataclass(frozen=True, eq=False)
class Constraints:
    """What retraining must keep for one tensor.

    mask: bool array of the tensor's shape, True where a weight may be non-zero (None: no pruning constraint).
    assignment: int array with one entry per kept weight (C order), the index of its shared value in codebook.
    codebook: float32 array of the shared values (None with assignment: no sharing constraint).
    """

    mask: np.ndarray | None = None
    assignment: np.ndarray | None = None
    codebook: np.ndarray | None = None
    low: np.ndarray | None = None  # float32 per codebook entry: the least value it may take (None: unbounded)
    high: np.ndarray | None = None  # and the greatest

    @property
    def shared(self) -> bool:
        return self.assignment is not None

    @property
    def bounded(self) -> bool:
        return self.shared and self.low is not None

    def clamp(self, values: np.ndarray) -> np.ndarray:
        """Shared values (one per codebook entry) brought into their bounds, float32 (as they are when unbounded)."""
        values = np.asarray(values, np.float32)
        return np.clip(values, self.low, self.high) if self.bounded else values

    def kept_index(self, size: int) -> np.ndarray:
        """Flat (C order) positions of the weights that are not pruned."""
        return np.arange(size) if self.mask is None else np.flatnonzero(self.mask)

    def project(self, weights: np.ndarray) -> np.ndarray:
        """Weights that keep the constraints: the codebook values where shared, exact +0.0 where pruned."""
        out = np.asarray(weights, dtype=np.float32).copy()
        if self.shared:
            flat = out.reshape(-1)
            flat[self.kept_index(flat.size)] = self.codebook[self.assignment]
        if self.mask is not None:
            out = np.where(self.mask, out, np.float32(0))
        return out

    def violation(self, weights: np.ndarray) -> str | None:
        """Why `weights` break these constraints, or None if they keep them."""
        flat = np.asarray(weights).reshape(-1)
        if self.mask is not None:
            bad = np.count_nonzero(flat[~self.mask.reshape(-1)])
            if bad:
                return f"{bad} pruned weights are no longer zero"
        if self.shared:
            kept = flat[self.kept_index(flat.size)].astype(np.float32, copy=False).view(np.uint32)
            first = np.zeros(len(self.codebook), np.uint32)
            first[self.assignment[::-1]] = kept[::-1]  # the first member's bit pattern per cluster
            bad = np.count_nonzero(kept != first[self.assignment])
            if bad:
                return f"{bad} weights differ from the other weights of their cluster"
            if self.bounded:
                used = np.unique(self.assignment)
                value = first[used].view(np.float32)
                out = np.count_nonzero((value < self.low[used]) | (value > self.high[used]))
                if out:
                    return f"{out} shared values left their bounds (the interval their stage encodes exactly)"
        return None


@dataclass(frozen=True)
class PhaseInfo:
    """Which phase the retrainer is called in: phase `index` of `count`, after the lossy stages named per tensor."""

    index: int
    count: int
    stages: dict[str, str] = field(default_factory=dict)  # tensor -> its k-th lossy stage (if its chain has one)
    imposes: frozenset[str] = frozenset()  # every constraint kind present in this phase
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)  # the caller's channel

    def say(self, message: str) -> None:
        """Report a line of the retrainer's own progress (an epoch's loss) where the caller's progress goes."""
        if self.progress is not None:
            self.progress(message)

    def __str__(self) -> str:
        ids = ", ".join(sorted(set(self.stages.values()))) or "nothing"
        return f"phase {self.index}/{self.count} (after {ids})"


Retrainer = Callable[[dict[str, np.ndarray], dict[str, Constraints], PhaseInfo], Mapping[str, np.ndarray]]
Progress = Callable[[str], None]


Bounds = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


def derive_constraints(approx: np.ndarray, imposes: frozenset[str] | set[str],
                       bounds: Bounds | None = None) -> Constraints | None:
    """Constraints from an approximation alone: zeros stay zero ("zeros"), equal kept values stay tied ("shared");
    `bounds` (codebook -> (low, high) or None, e.g. a stage's shared_bounds) bounds each shared value."""
    approx = np.asarray(approx, dtype=np.float32)
    mask = approx != 0 if ZEROS in imposes else None
    if SHARED not in imposes:
        return Constraints(mask=mask) if mask is not None else None
    kept = approx.reshape(-1) if mask is None else approx[mask]
    codebook, assignment = np.unique(kept, return_inverse=True)
    codebook = codebook.astype(np.float32)
    found = bounds(codebook) if bounds is not None else None
    low, high = (None, None) if found is None else (np.asarray(b, np.float32).reshape(-1) for b in found)
    if low is not None and (low.shape != codebook.shape or high.shape != codebook.shape
                            or not ((low <= codebook) & (codebook <= high)).all()):
        raise DcfError("shared-value bounds must give one interval per shared value, containing it")
    return Constraints(mask=mask, assignment=assignment.reshape(-1).astype(np.int64), codebook=codebook,
                       low=low, high=high)


def prefix_bounds(prefix: Sequence[Stage]) -> Bounds:
    """The shared-value bounds of a chain prefix: every stage's shared_bounds intersected (None if none has any)."""

    def bounds(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        found = []
        for stage in (s for s in prefix if SHARED in s.imposes):
            given = stage.shared_bounds(codebook)
            if given is not None:
                low, high = (np.asarray(b, np.float32).reshape(-1) for b in given)
                if low.shape != codebook.shape or high.shape != codebook.shape \
                        or not ((low <= codebook) & (codebook <= high)).all():
                    raise DcfError(f"stage '{stage.id}': shared_bounds must give one interval per shared value, "
                                   f"containing it")
                found.append((low, high))
        if not found:
            return None
        return (np.max([b[0] for b in found], axis=0).astype(np.float32),
                np.min([b[1] for b in found], axis=0).astype(np.float32))

    return bounds


def lossy_prefixes(chain: Chain) -> list[list[Stage]]:
    """For each lossy stage of a chain, the stages up to and including it."""
    stages = chain.stages
    return [stages[:i + 1] for i, s in enumerate(stages) if s.lossy]


@dataclass
class Retrained:
    """The outcome of the retraining phases: the final weights and the fitted chain of every tensor."""

    weights: dict[str, Dense]
    chains: dict[str, Chain]
    constraints: dict[str, Constraints]
    phases: int
    policy: Policy | None = None  # what chose the chains: parallel encoding refits them from it (None: it cannot)


def retrain_phases(tensors: Mapping[str, np.ndarray | Dense], policy: Policy, retrainer: Retrainer,
                   progress: Progress | None = None) -> Retrained:
    """Run every phase (approximate, derive constraints, retrain, check) and return the retrained weights."""
    say = progress or (lambda message: None)
    originals = {name: as_dense(tensors[name]) for name in tensors}
    fitted = _fit(policy, originals, say)  # phase 1: global stages see the original weights
    chains = _per_tensor(policy, fitted, originals)
    prefixes = {name: lossy_prefixes(chain) for name, chain in chains.items()}
    count = max((len(p) for p in prefixes.values()), default=0)
    current = dict(originals)
    constraints: dict[str, Constraints] = {}
    for k in range(1, count + 1):
        if k > 1:  # refit on weights that keep the earlier zeros: a global sparsity then prunes nothing more
            fitted = _fit(policy, current, say, fitted, k - 1)
            chains = _per_tensor(policy, fitted, current)
            prefixes = {name: lossy_prefixes(chain) for name, chain in chains.items()}
        built: dict[tuple[int, int], Chain] = {}  # prefix chains of this phase, once per (chain, length)
        constraints = {}
        stage_ids = {}
        weights = {}
        for name, dense in current.items():
            if not is_float(dense.dtype):
                continue
            mine = prefixes[name]
            if mine:
                prefix = mine[min(k, len(mine)) - 1]
                key = (id(chains[name]), len(prefix))
                if key not in built:
                    built[key] = build_chain(prefix, policy.registry)
                say(f"phase {k}/{count}: approximating {name}")
                approx = roundtrip(built[key], dense)
                imposes = frozenset().union(*(s.imposes for s in prefix))
                found = derive_constraints(approx.values(), imposes, prefix_bounds(prefix))
                if k <= len(mine):
                    stage_ids[name] = prefix[-1].id
                current[name] = approx
                if found is not None:
                    constraints[name] = found
            weights[name] = current[name].values().astype(np.float32)  # a fresh copy the retrainer may keep
        info = PhaseInfo(k, count, stage_ids, _imposed(constraints), progress)
        say(f"{info}: retraining")
        result = retrainer(weights, constraints, info)
        if not isinstance(result, Mapping):
            raise DcfError(f"the retrainer returned {type(result).__name__}, not a dict of arrays")
        for name, value in result.items():
            if name not in weights:
                raise DcfError(f"the retrainer returned tensor '{name}', which it was not given")
            current[name] = _accept(name, value, current[name], constraints.get(name))
    refits = True  # whether a fresh fit of the final weights gives these chains (parallel encoding refits)
    if count:
        fresh = _fit(policy, current, say)
        final = {p: _keep_shared(chain, fitted.get(p), count) for p, chain in fresh.items()}
        refits = all(str(final[p]) == str(fresh[p]) for p in final)
        chains = _per_tensor(policy, final, current)
    return Retrained(current, chains, constraints, count, policy if refits else None)


def _fit(policy: Policy, tensors: Mapping[str, Dense], say: Progress, before: Mapping[str, Chain] | None = None,
         applied: int = 0) -> dict[str, Chain]:
    """Each pipeline's chain with its global stages (Stage.fit) fitted over `tensors`; stages imposing "shared" in
    the first `applied` lossy prefixes stay as fitted in `before` (their bins and steps hold the constraints)."""
    say("fitting global stages")
    fitted = fit_chains(policy, lambda: iter(tensors.items()))
    if before:
        fitted = {p: _keep_shared(chain, before.get(p), applied) for p, chain in fitted.items()}
    return fitted


def _keep_shared(chain: Chain, before: Chain | None, applied: int) -> Chain:
    """`chain` with the "shared" stages of its first `applied` lossy stages taken from `before` (the earlier fit)."""
    if before is None or len(before.steps) != len(chain.steps):
        return chain
    lossy = [i for i, step in enumerate(chain.steps) if step.stage.lossy][:applied]
    steps = list(chain.steps)
    for i in lossy:
        if SHARED in steps[i].stage.imposes:
            steps[i] = before.steps[i]
    return Chain(tuple(steps), chain.final)


def _per_tensor(policy: Policy, fitted: Mapping[str, Chain], tensors: Mapping[str, Dense]) -> dict[str, Chain]:
    """Each tensor's chain out of the per-pipeline ones."""
    return {name: fitted[policy.pipeline_for(name, d.array.shape, d.dtype)] for name, d in tensors.items()}


def _imposed(constraints: Mapping[str, Constraints]) -> frozenset[str]:
    kinds = set()
    for c in constraints.values():
        if c.mask is not None:
            kinds.add(ZEROS)
        if c.shared:
            kinds.add(SHARED)
    return frozenset(kinds)


def _accept(name: str, value: Any, before: Dense, constraint: Constraints | None) -> Dense:
    """Check one retrained tensor (shape, finiteness, constraints) and bring it back to the tensor's dtype."""
    array = np.asarray(value)
    if array.shape != before.array.shape:
        raise DcfError(f"the retrainer returned tensor '{name}' with shape {list(array.shape)}, "
                       f"expected {list(before.array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DcfError(f"the retrainer returned tensor '{name}' as {array.dtype}, expected floats")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DcfError(f"the retrainer returned non-finite values in tensor '{name}'")
    if constraint is not None:
        problem = constraint.violation(array)
        if problem:
            raise DcfError(f"the retrainer broke the constraints of tensor '{name}': {problem}")
        if constraint.mask is not None:
            array = np.where(constraint.mask, array, np.float32(0))  # -0.0 -> +0.0, so the encoding is exact
    return before.with_values(array)


def write_retrained(retrained: Retrained, path: str | os.PathLike, registry: Any = None,
                    metadata: dict[str, str] | None = None, stats: bool = True, chunk_size: int = DEFAULT_CHUNK,
                    progress: Progress | None = None, jobs: int = 1) -> int:
    """Encode the retrained weights with their full chains, check each decodes exactly, write the container.

    `jobs` > 1 encodes in that many processes (dcframe.compress's workers; the same bytes as serial)."""
    say = progress or (lambda message: None)
    with ContainerWriter(path, metadata, chunk_size, registry) as writer:
        for encoded in _encodings(retrained, stats, jobs):
            name, dense, chain = encoded.name, retrained.weights[encoded.name], retrained.chains[encoded.name]
            say(f"encoded {name}")
            decoded = decode_tensor(chain.stages, encoded.steps, encoded.streams, dense.dtype, dense.array.shape,
                                    where=f"tensor '{name}'")
            if decoded.array.tobytes() != dense.array.tobytes():
                raise DcfError(_culprit(name, dense, chain, registry))
            writer.add(encoded)
    return os.path.getsize(path)


def _encodings(retrained: Retrained, stats: bool, jobs: int) -> Iterator[EncodedTensor]:
    """Each retrained tensor through its full chain: serially with the fitted chains, or in `jobs` processes, whose
    global fits over the same final weights give the same chains."""
    if jobs > 1 and retrained.policy is not None:
        yield from compress_tensors(retrained.weights, retrained.policy, stats=stats, jobs=jobs)
        return
    for name, dense in retrained.weights.items():
        yield encode_tensor(name, dense, retrained.chains[name], stats=stats)


def _culprit(name: str, dense: Dense, chain: Chain, registry: Any) -> str:
    """Name the first lossy stage that changes weights which already keep its constraints."""
    for prefix in lossy_prefixes(chain):
        approx = roundtrip(build_chain(prefix, registry), dense)
        changed = np.count_nonzero(approx.array != dense.array)
        if changed:
            return (f"tensor '{name}': stage '{prefix[-1].id}' changed {changed} retrained weights that already keep "
                    f"its constraints; a lossy stage must encode such weights exactly for retraining to work")
    return f"tensor '{name}': the full chain does not reproduce the retrained weights exactly"


def compress_with_retraining(
    tensors: Mapping[str, np.ndarray | Dense],
    path: str | os.PathLike,
    retrainer: Retrainer,
    pipeline: str | None = None,
    preset: str | None = None,
    rules: Sequence[Rule | str] = (),
    metadata: dict[str, str] | None = None,
    stats: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Compress with retraining after each lossy stage (see the module docstring) and return the file's report.

    Chains are chosen as in dcframe.compress; `retrainer` fine-tunes the weights between phases under the
    constraints the lossy stages leave (it may report through phase.say, which goes to `progress`). `jobs` > 1
    encodes the final weights in that many processes (the same bytes). The report is dcframe.inspect(path).
    """
    from dcframe.api import inspect

    policy = Policy(pipeline=pipeline, preset=preset, rules=rules)
    retrained = retrain_phases(tensors, policy, retrainer, progress)
    write_retrained(retrained, path, policy.registry, metadata, stats, chunk_size, progress, jobs)
    return inspect(path)


__all__ = ["Constraints", "PhaseInfo", "Retrained", "Retrainer", "compress_with_retraining", "derive_constraints",
           "lossy_prefixes", "retrain_phases", "write_retrained"]
