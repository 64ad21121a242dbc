"""Calibrate a PyTorch model: run sample batches through it and record, per weight, what data-aware stages need.

``calibrate(model, batches)`` hooks every Linear, Conv and Embedding (and Hugging Face's GPT-style Conv1D) and records
the second moment of each layer's input per input feature (Wanda's ||X_j||^2 / n), X^T X / n for inputs up to
`max_hessian` wide (SparseGPT's H), token counts for embeddings and, given a loss, the diagonal Fisher (the mean
squared gradient). The result is a dcframe.io.calibration.Calibration, keyed by state-dict weight name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from dcframe.core.errors import ConfigError
from dcframe.core.streams import ACTIVATION, FISHER, HESSIAN
from dcframe.io.calibration import Calibration

MAX_HESSIAN = 4096  # widest layer input whose X^T X is recorded ([in, in] float64 while recording)
PENDING_ELEMENTS = 1 << 20  # input rows held per layer (4 MiB) before they go into X^T X in one product


class _Recorder:
    """Sums of one layer's input statistics over every batch seen."""

    def __init__(self, module: nn.Module, hessian: bool) -> None:
        self.module, self.rows = module, 0
        self.sumsq: torch.Tensor | None = None
        self.xtx: torch.Tensor | None = None
        self.hessian = hessian
        self.pending: list[torch.Tensor] = []  # rows not yet in xtx: one sample's rows alone make a thin product
        self.pending_elements = 0

    def add_rows(self, x: torch.Tensor) -> None:
        """x: [rows, features] inputs of a dense layer."""
        x = x.detach()
        wide = x.to(torch.float64)
        sq = (wide * wide).sum(0)
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        if self.hessian:
            self.pending.append(x.clone())  # a copy in the input's dtype: the model may reuse its activations
            self.pending_elements += x.numel()
            if self.pending_elements >= PENDING_ELEMENTS:
                self.flush()
        self.rows += x.shape[0]

    def flush(self) -> None:
        """Add the pending rows to X^T X in one product, in place (a sample of 20 tokens at a time re-read and
        re-allocated the whole [in, in] matrix per sample: most of a calibration's time on 3072-wide inputs)."""
        if not self.pending:
            return
        x = torch.cat(self.pending).to(torch.float64)
        self.pending, self.pending_elements = [], 0
        if self.xtx is None:
            self.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        self.xtx.addmm_(x.T, x)

    def add_counts(self, ids: torch.Tensor, vocab: int) -> None:
        counts = torch.bincount(ids.detach().reshape(-1).to(torch.int64), minlength=vocab)[:vocab]
        self.sumsq = counts if self.sumsq is None else self.sumsq + counts
        self.rows += int(ids.numel())

    def add_channels(self, x: torch.Tensor) -> None:
        """x: [batch, channels, *spatial] inputs of a convolution: per-channel sum of squares over the rest."""
        x = x.detach().to(torch.float64)
        dims = [0, *range(2, x.dim())]
        sq = (x * x).sum(dims)
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.rows += x.numel() // x.shape[1]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return "conv1d_t"  # transformers' Conv1D (GPT-2): a linear layer whose weight is stored [in, out]
    return None


def _hook(recorder: _Recorder, kind: str) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        x = inputs[0]
        if kind == "embedding":
            recorder.add_counts(x, module.num_embeddings)
        elif kind == "conv":
            recorder.add_channels(x if x.dim() > 1 else x[None])
        else:
            recorder.add_rows(x.reshape(-1, x.shape[-1]))
    return hook


def _statistics(recorder: _Recorder, kind: str) -> dict[str, np.ndarray]:
    """The recorded sums as the calibration's arrays (spec/calibration.md), averaged over what was seen."""
    module, n = recorder.module, max(recorder.rows, 1)
    total = recorder.sumsq.cpu().numpy().astype(np.float64)
    if kind == "embedding":
        return {"token_count": total.astype(np.int64),
                ACTIVATION: (total / n).astype(np.float32)[:, None]}  # one-hot inputs: E[x_j^2] = frequency
    mean = (total / n).astype(np.float32)
    if kind == "linear":
        stats = {ACTIVATION: mean[None, :]}
        recorder.flush()
        if recorder.xtx is not None:
            stats[HESSIAN] = (recorder.xtx.cpu().numpy() / n).astype(np.float32)
        return stats
    if kind == "conv1d_t":
        return {ACTIVATION: mean[:, None]}
    weight = module.weight  # conv: [out, in / groups, *kernel]; input channel of weight[o, c] is g(o) * in/g + c
    out, per_group, groups = weight.shape[0], weight.shape[1], module.groups
    channel = (np.arange(out) // (out // groups))[:, None] * per_group + np.arange(per_group)[None, :]
    act = mean[channel] if groups > 1 else mean[None, :]
    return {ACTIVATION: act.reshape(act.shape + (1,) * (weight.dim() - 2))}


def _run(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def calibrate(model: nn.Module, batches: Iterable[Any], loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
              max_hessian: int = MAX_HESSIAN, progress: Callable[[int], None] | None = None,
              source: str = "") -> Calibration:
    """Run `batches` (tensors, tuples of args or dicts of kwargs) through `model`, recording per weight its
    calibration statistics; with `loss(model, batch) -> scalar`, also the diagonal Fisher. The model is not changed.
    `progress(samples)` is called after each batch."""
    layers = {name: (m, kind) for name, m in model.named_modules() if (kind := _kind(m)) is not None}
    recorders = {name: _Recorder(m, kind == "linear" and m.in_features <= max_hessian)
                 for name, (m, kind) in layers.items()}
    handles = [m.register_forward_hook(_hook(recorders[name], kind)) for name, (m, kind) in layers.items()]
    fisher: dict[str, torch.Tensor] = {}
    was_training, seen = model.training, 0
    model.eval()
    try:
        for batch in batches:
            if loss is None:
                with torch.no_grad():
                    _run(model, batch)
            else:
                model.zero_grad(set_to_none=True)
                value = loss(model, batch)
                value.backward()
                for name, (m, _) in layers.items():
                    if m.weight.grad is not None:
                        g2 = m.weight.grad.detach().to(torch.float64) ** 2
                        fisher[name] = g2 if name not in fisher else fisher[name] + g2
            seen += 1
            if progress:
                progress(seen)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise ConfigError("calibrate: no calibration batches were given")
    entries = {}
    for name, (_, kind) in layers.items():
        if recorders[name].rows == 0:
            continue  # a layer the batches never reached (an unused head)
        stats = _statistics(recorders[name], kind)
        if name in fisher:
            stats[FISHER] = (fisher[name] / seen).cpu().numpy().astype(np.float32)
        entries[f"{name}.weight" if name else "weight"] = stats
    return Calibration(entries, samples=seen, source=source)
