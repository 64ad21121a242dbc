"""Retraining a PyTorch model under Deep Compression's constraints (the retrain protocol, for ``nn.Module``).

The constraints become ``torch.nn.utils.parametrize`` parametrizations of the layer's ``weight``, so they hold by
construction whatever the optimizer does (momentum, Adam, weight decay) and for any layer type with a weight:

- ``Masked``: weight = original with pruned positions set to exactly +0.0; their gradient is zero.
- ``SharedWeights`` (trained quantization, Han et al. 2016, section 3.3): the free parameter is the codebook itself;
  weight[kept] = centroids[assignment] and pruned weights are 0, so each centroid's gradient is the sum of the
  gradients of the weights in its cluster, and the weights of one cluster stay bit-identical. Bounded centroids
  (uniform's bins: Constraints.low/high) are clamped into their bounds in the forward pass, with the gradient passed
  straight through, so a centroid pushed against its bound can come back.

``TorchRetrainer(model, loss=..., data=...)`` is a retrainer for dcframe.analysis.retrain.compress_with_retraining (or
torchio.compress_module(..., retrainer=...)); ``constrained(model, constraints)`` is the context manager
underneath it, for users who run their own loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from dcframe.analysis.retrain import Constraints, PhaseInfo
from dcframe.console import progress_bar
from dcframe.core.errors import DcfError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Masked(nn.Module):
    """Parametrization keeping pruned weights at exactly +0.0: forward(original) = original where kept, else 0."""

    def __init__(self, mask: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pruned", ~torch.as_tensor(np.asarray(mask, dtype=bool)))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original.masked_fill(self.pruned, 0.0)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.masked_fill(self.pruned, 0.0)


class SharedWeights(nn.Module):
    """Parametrization whose free tensor is the codebook: weight[kept] = centroids[assignment], pruned weights 0."""

    def __init__(self, constraints: Constraints, shape: tuple[int, ...]) -> None:
        super().__init__()
        if not constraints.shared:
            raise ValueError("SharedWeights needs constraints with an assignment and a codebook")
        size = int(np.prod(shape))
        kept = constraints.kept_index(size)
        assignment = np.asarray(constraints.assignment, dtype=np.int64).reshape(-1)
        k = len(constraints.codebook)
        if assignment.size != kept.size or (assignment.size and not (0 <= assignment.min() <= assignment.max() < k)):
            raise DcfError(f"shared-weight constraints do not fit a tensor of shape {list(shape)}: "
                           f"{assignment.size} assignments for {kept.size} kept weights, {k} centroids")
        first = np.full(k, -1, np.int64)
        first[assignment[::-1]] = np.arange(assignment.size - 1, -1, -1)  # each cluster's first member
        self.shape = tuple(shape)
        self.dense = kept.size == size
        self.register_buffer("kept", torch.from_numpy(kept.astype(np.int64)))
        self.register_buffer("assignment", torch.from_numpy(assignment))
        self.register_buffer("first", torch.from_numpy(first))
        self.register_buffer("codebook", torch.from_numpy(np.asarray(constraints.codebook, np.float32).copy()))
        self.bounded = constraints.bounded
        if self.bounded:
            self.register_buffer("low", torch.from_numpy(np.asarray(constraints.low, np.float32).copy()))
            self.register_buffer("high", torch.from_numpy(np.asarray(constraints.high, np.float32).copy()))

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        if self.bounded:  # the clamped value, the unclamped gradient (straight through)
            clamped = torch.minimum(torch.maximum(centroids, self.low), self.high).to(centroids.dtype).detach()
            centroids = (centroids - centroids.detach()) + clamped  # exactly the clamped value (c - c is 0)
        values = centroids[self.assignment]
        if self.dense:
            return values.reshape(self.shape)
        flat = centroids.new_zeros(int(np.prod(self.shape)))
        return flat.index_put((self.kept,), values).reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The centroids: each cluster's first member's value (the codebook for a cluster without members)."""
        centroids = self.codebook.to(weight.dtype).clone()
        present = self.first >= 0
        centroids[present] = weight.reshape(-1)[self.kept][self.first[present]]
        return centroids


def _locate(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        raise DcfError(f"tensor '{name}' names no submodule of {type(model).__name__}") from None
    if attr not in module._parameters and attr not in module._buffers:
        raise DcfError(f"tensor '{name}' names no parameter or buffer of {type(model).__name__}")
    return module, attr


def _same(a: Constraints, b: Constraints) -> bool:
    def eq(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        return (x is None) == (y is None) and (x is None or np.array_equal(x, y))

    return eq(a.mask, b.mask) and eq(a.assignment, b.assignment) and eq(a.codebook, b.codebook)


@contextmanager
def constrained(model: nn.Module, constraints: Mapping[str, Constraints]) -> Iterator[dict[str, nn.Module]]:
    """Parametrize the model's parameters named in `constraints` (state_dict names) for the duration of the block.

    Inside, optimizers must be built from model.parameters() (the codebook replaces a shared weight's parameter). On
    exit the parametrizations are removed and each parameter holds its constrained value. Yields name ->
    parametrization.
    """
    done: dict[int, tuple[str, Constraints]] = {}
    applied: dict[str, nn.Module] = {}
    registered: list[tuple[nn.Module, str]] = []
    try:
        for name, c in constraints.items():
            module, attr = _locate(model, name)
            if attr not in module._parameters:
                raise DcfError(f"tensor '{name}' is a buffer; only parameters can be retrained under constraints")
            param = module._parameters[attr]
            if id(param) in done:  # a tied parameter: one parametrization, and the constraints must agree
                other, first = done[id(param)]
                if not _same(first, c):
                    raise DcfError(f"tensors '{other}' and '{name}' are one tied parameter with different "
                                   f"constraints; give them the same chain")
                continue
            if c.shared:
                p: nn.Module = SharedWeights(c, tuple(param.shape))
            elif c.mask is not None:
                if tuple(c.mask.shape) != tuple(param.shape):
                    raise DcfError(f"tensor '{name}': mask shape {list(c.mask.shape)} does not fit the parameter's "
                                   f"{list(param.shape)}")
                p = Masked(c.mask)
            else:
                continue
            p = p.to(param.device)
            parametrize.register_parametrization(module, attr, p)
            registered.append((module, attr))
            done[id(param)] = (name, c)
            applied[name] = p
        yield applied
    finally:
        for module, attr in reversed(registered):
            if parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


def _pick(value: Any, phase: PhaseInfo) -> Any:
    """A per-phase setting: the value itself, or a mapping from the phase's lossy stage id ("prune", "kmeans")."""
    if not isinstance(value, Mapping):
        return value
    ids = list(phase.stages.values())
    known = [i for i in value if i in ids]
    if known:
        return value[max(known, key=ids.count)]
    if "default" in value:
        return value["default"]
    raise DcfError(f"{phase}: no setting for stages {sorted(set(ids))} in {sorted(value)}")


@dataclass(frozen=True)
class TrainingProgress:
    """Where retraining stands after a batch (or an epoch): counts for a progress bar, the loss for a person.

    `step` of `steps` counts the phase's batches over all its epochs (`steps`/`batches` are None when `data` has no
    len()); `loss` is the mean loss of this epoch's batches so far; `seconds` is the time since the epoch began.
    """

    phase: PhaseInfo
    epoch: int
    epochs: int
    batch: int
    batches: int | None
    step: int
    steps: int | None
    loss: float
    seconds: float

    def __str__(self) -> str:
        return (f"{self.phase}: epoch {self.epoch}/{self.epochs}, loss {self.loss:.4g} "
                f"({self.batch} batches, {self.seconds:.1f} s)")


ProgressCallback = Callable[[TrainingProgress], None]


class TorchRetrainer:
    """A dcframe.analysis.retrain retrainer that fine-tunes an nn.Module under the phase's constraints.

    Give either `fit(model, phase)`, your own training loop (build the optimizer from model.parameters() inside it),
    or `loss(model, batch) -> scalar tensor` with `data` (an iterable of batches, re-iterated every epoch; or None to
    call `loss(model)` `epochs` times). `optimizer(params)` builds the optimizer (default Adam, lr 1e-3); it and
    `epochs` may map the phase's lossy stage id ("prune", "kmeans"; or "default") to a value. `on_phase(model, phase,
    when)` is called with when="before" (weights approximated, not yet retrained) and "after". With `loss`, every
    epoch's mean loss goes to the caller's progress (phase.say: compress_module(progress=print) prints it), and
    `on_batch`/`on_epoch` get a TrainingProgress after every batch/epoch; `bar=True` draws a progress bar per phase
    on stderr (counts, ETA, loss; only on a terminal). The model ends up holding the last weights; state entries the
    protocol does not pass (integer buffers) keep their values.
    """

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor] | None = None,
                 data: Iterable[Any] | None = None, fit: Callable[[nn.Module, PhaseInfo], None] | None = None,
                 optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
                 epochs: int | Mapping[str, int] = 1,
                 on_phase: Callable[[nn.Module, PhaseInfo, str], None] | None = None,
                 on_batch: ProgressCallback | None = None, on_epoch: ProgressCallback | None = None,
                 bar: bool = False) -> None:
        if (loss is None) == (fit is None):
            raise ValueError("give exactly one of loss (a (model, batch) -> loss closure, with data) or fit (a loop)")
        if fit is not None and (on_batch or on_epoch or bar):
            raise ValueError("on_batch/on_epoch/bar report the built-in loop (loss=); with fit=, report from your loop")
        self.model, self.loss, self.data, self.fit = model, loss, data, fit
        self.optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.epochs, self.on_phase = epochs, on_phase
        self.on_batch, self.on_epoch, self.bar = on_batch, on_epoch, bar

    def __call__(self, weights: dict[str, np.ndarray], constraints: Mapping[str, Constraints],
                 phase: PhaseInfo) -> dict[str, np.ndarray]:
        model = self.model
        places = {name: _locate(model, name) for name in weights}
        state = model.state_dict()
        with torch.no_grad():
            for name in places:
                target = state[name]
                target.copy_(torch.from_numpy(np.asarray(weights[name], np.float32)).to(target.dtype))
        # tensors the protocol does not hand over (integer buffers such as BatchNorm's num_batches_tracked) cannot come
        # back into the file: restore them after training so that the model keeps matching the container
        untouched = {name: t.clone() for name, t in state.items() if name not in weights}
        was_training = model.training
        frozen = {name for name in constraints if places[name][1] in places[name][0]._buffers}
        with constrained(model, {k: c for k, c in constraints.items() if k not in frozen}):
            if self.on_phase:
                self.on_phase(model, phase, "before")
            model.train()
            try:
                self._train(phase)
            finally:
                model.train(was_training)
            with torch.no_grad():
                out = {name: getattr(module, attr).detach().to("cpu", torch.float32).numpy().copy()
                       for name, (module, attr) in places.items() if name not in frozen}
        with torch.no_grad():
            for name, value in untouched.items():
                state[name].copy_(value)
            for name in frozen:  # buffers under constraints (a lossy chain on running statistics) keep their values
                state[name].copy_(torch.from_numpy(np.asarray(weights[name], np.float32)).to(state[name].dtype))
        if self.on_phase:
            self.on_phase(model, phase, "after")
        return out

    def _train(self, phase: PhaseInfo) -> None:
        if self.fit is not None:
            self.fit(self.model, phase)
            return
        bars = TrainingBars(enabled=True) if self.bar else None
        try:
            self._epochs(phase, bars)
        finally:
            if bars is not None:
                bars.close()

    def _epochs(self, phase: PhaseInfo, bars: TrainingBars | None) -> None:
        """The built-in loop: `epochs` passes over `data`, reporting every batch and every epoch."""
        optimizer = _pick(self.optimizer, phase)([p for p in self.model.parameters() if p.requires_grad])
        epochs = int(_pick(self.epochs, phase))
        batches: Iterable[Any] = self.data if self.data is not None else [None]
        per_epoch = len(batches) if isinstance(batches, Sized) else None
        steps = None if per_epoch is None else per_epoch * epochs
        listeners = [f for f in (bars, self.on_batch) if f is not None]
        step = 0
        for epoch in range(1, epochs + 1):
            start, total, count = time.perf_counter(), 0.0, 0
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                value = self.loss(self.model) if self.data is None else self.loss(self.model, batch)
                value.backward()
                optimizer.step()
                total, count, step = total + float(value.detach()), count + 1, step + 1
                if listeners:
                    now = TrainingProgress(phase, epoch, epochs, count, per_epoch, step, steps, total / count,
                                           time.perf_counter() - start)
                    for listener in listeners:
                        listener(now)
            done = TrainingProgress(phase, epoch, epochs, count, per_epoch, step, steps,
                                    total / count if count else float("nan"), time.perf_counter() - start)
            phase.say(str(done))
            if self.on_epoch:
                self.on_epoch(done)


class TrainingBars:
    """An on_batch callback drawing one rich progress bar per retraining phase on stderr: batches done of the
    phase's total, an ETA, the running loss (dcframe.console.progress_bar; nothing when stderr is not a terminal).
    TorchRetrainer(bar=True) uses one and closes it after each phase; call close() when you pass your own."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = ExitStack()
        self._phase: PhaseInfo | None = None
        self._advance: Callable[[str, int], None] = lambda name, amount: None

    def __call__(self, progress: TrainingProgress) -> None:
        if progress.phase is not self._phase:
            self.close()
            self._phase = progress.phase
            self._advance = self._bar.enter_context(
                progress_bar(progress.steps, f"retraining {progress.phase}", self.enabled, unit="items"))
        self._advance(f"epoch {progress.epoch}/{progress.epochs} loss {progress.loss:.4g}", 1)
        if progress.steps is not None and progress.step >= progress.steps:
            self.close()

    def close(self) -> None:
        """End the current bar (the next phase's first batch starts a new one)."""
        self._bar.close()
        self._phase = None
        self._advance = lambda name, amount: None


__all__ = ["Masked", "SharedWeights", "TorchRetrainer", "TrainingBars", "TrainingProgress", "constrained"]
