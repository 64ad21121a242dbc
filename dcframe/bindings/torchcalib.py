"""Calibrate a PyTorch model: run sample batches through it and record, per weight, what data-aware stages need.

``calibrate(model, batches)`` hooks every Linear, Conv and Embedding (and Hugging Face's GPT-style Conv1D) and records
the second moment of each layer's input per input feature (Wanda's ||X_j||^2 / n), X^T X / n for inputs up to
`max_hessian` wide (SparseGPT's H), token counts for embeddings and, given a loss, the diagonal Fisher (the mean
squared gradient) and the squared gradient of each layer output feature (the output side of a Kronecker-factored
Fisher: which rows of a weight matter more to the loss). The result is a dcframe.io.calibration.Calibration, keyed
by state-dict weight name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from dcframe.core.errors import ConfigError
from dcframe.core.streams import ACTIVATION, FISHER, HESSIAN, OUTPUT
from dcframe.io.calibration import Calibration

MAX_HESSIAN = 4096  # widest layer input whose X^T X is recorded ([in, in] float64 while recording)
PENDING_ELEMENTS = 1 << 20  # input rows held per layer (4 MiB) before they go into X^T X in one product


class _Recorder:
    """Sums of one layer's input statistics over every batch seen."""

    def __init__(self, module: nn.Module, hessian: bool) -> None:
        self.module, self.rows = module, 0
        self.sumsq: torch.Tensor | None = None
        self.grad_sumsq: torch.Tensor | None = None  # per output feature, of the loss's gradient (with a loss)
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

    def add_output_grad(self, g: torch.Tensor, feature_dim: int) -> None:
        """g: the loss's gradient w.r.t. the layer output; sums g^2 per output feature (axis `feature_dim`)."""
        g = g.detach().to(torch.float64)
        sq = (g * g).sum([d for d in range(g.dim()) if d != feature_dim % g.dim()])
        self.grad_sumsq = sq if self.grad_sumsq is None else self.grad_sumsq + sq

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
        if kind != "embedding" and isinstance(output, torch.Tensor) and output.requires_grad and output.dim() > 0:
            feature = 1 if kind == "conv" and output.dim() > 1 else -1
            output.register_hook(lambda g: recorder.add_output_grad(g, feature))
    return hook


def _output_statistic(recorder: _Recorder, kind: str, batches: int) -> dict[str, np.ndarray]:
    """The output gradients' per-feature sum of squares, averaged over the batches, shaped to broadcast along the
    weight's output axis (spec/calibration.md); empty without a loss."""
    if recorder.grad_sumsq is None:
        return {}
    g2 = (recorder.grad_sumsq.cpu().numpy() / batches).astype(np.float32)
    ndim = recorder.module.weight.dim()
    return {OUTPUT: g2[None, :] if kind == "conv1d_t" else g2.reshape((-1,) + (1,) * (ndim - 1))}


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


def _inputs_require_grad(model: nn.Module, layers: dict[str, tuple[nn.Module, str]]) -> list[Any]:
    """Hooks that make the model's float inputs and every embedding's output require gradients, so that the loss's
    gradients w.r.t. layer outputs exist while no weight requires one."""
    def float_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def grad(x: Any) -> Any:
            return x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        return tuple(grad(a) for a in args), {k: grad(v) for k, v in kwargs.items()}

    def embedding_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.detach().requires_grad_()

    return [model.register_forward_pre_hook(float_inputs, with_kwargs=True),
            *(m.register_forward_hook(embedding_output) for m, kind in layers.values() if kind == "embedding")]


def _run(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def calibrate(model: nn.Module, batches: Iterable[Any], loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
              max_hessian: int = MAX_HESSIAN, progress: Callable[[int], None] | None = None,
              source: str = "", fisher: bool = True) -> Calibration:
    """Run `batches` (tensors, tuples of args or dicts of kwargs) through `model`, recording per weight its
    calibration statistics; with `loss(model, batch) -> scalar`, also the output gradients' second moments and
    (unless `fisher` is False: it is as large as the weights) the diagonal Fisher. The model is not changed.
    `progress(samples)` is called after each batch."""
    layers = {name: (m, kind) for name, m in model.named_modules() if (kind := _kind(m)) is not None}
    recorders = {name: _Recorder(m, kind == "linear" and m.in_features <= max_hessian)
                 for name, (m, kind) in layers.items()}
    handles = [m.register_forward_hook(_hook(recorders[name], kind)) for name, (m, kind) in layers.items()]
    squared: dict[str, torch.Tensor] = {}  # per weight, the sum of its squared gradients over the batches
    was_training, seen = model.training, 0
    output_only = loss is not None and not fisher
    frozen = [p for p in model.parameters() if p.requires_grad] if output_only else []
    if output_only:  # no weight gradients (a third of the backward pass): the graph starts at the inputs instead
        handles += _inputs_require_grad(model, layers)
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(False)
        for batch in batches:
            if loss is None:
                with torch.no_grad():
                    _run(model, batch)
            else:
                model.zero_grad(set_to_none=True)
                value = loss(model, batch)
                value.backward()
                for name, (m, _) in layers.items():
                    if fisher and m.weight.grad is not None:
                        g2 = m.weight.grad.detach().to(torch.float64) ** 2
                        squared[name] = g2 if name not in squared else squared[name] + g2
            seen += 1
            if progress:
                progress(seen)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise ConfigError("calibrate: no calibration batches were given")
    entries = {}
    for name, (_, kind) in layers.items():
        if recorders[name].rows == 0:
            continue  # a layer the batches never reached (an unused head)
        stats = {**_statistics(recorders[name], kind), **_output_statistic(recorders[name], kind, seen)}
        if name in squared:
            stats[FISHER] = (squared[name] / seen).cpu().numpy().astype(np.float32)
        entries[f"{name}.weight" if name else "weight"] = stats
    return Calibration(entries, samples=seen, source=source)
