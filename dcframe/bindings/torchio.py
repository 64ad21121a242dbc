"""PyTorch models in and out of .dcf containers (the optional extra ``dcframe[torch]``; the core never imports this).

- ``compress_module(model_or_state_dict_or_path, "model.dcf", rules=layer_rules(model))`` writes a container;
  with ``retrainer=`` it runs the Deep Compression loop (dcframe.analysis.retrain; see dcframe.bindings.torchretrain).
- ``load_module("model.dcf", model)`` loads it back with ``load_state_dict`` semantics: strict by default, and a
  mismatch raises StateDictMismatch listing the missing, unexpected and wrongly shaped keys.
- ``layer_rules(model)`` chooses chains by module type, not by name: conv weights get the ``han-conv`` pipeline,
  linear and embedding weights ``han-fc``, everything else (biases, norms, buffers) the lossless one.

``.pt``/``.pth`` files are read by dcframe.read_model (``torch.load(weights_only=True)``, never a plain unpickle).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcframe.api import compress, decompress
from dcframe.core.errors import ConfigError, ModelIOError, PipelineError
from dcframe.core.pipeline import Rule, format_pipeline, parse_pipeline
from dcframe.core.registry import get_registry
from dcframe.core.streams import Dense
from dcframe.io.modelio import MODEL_SUFFIXES, read_model

Source = nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike
LIST_LIMIT = 20  # names shown per category in a mismatch message


class StateDictMismatch(ModelIOError):
    """A container's tensors do not fit a module: `missing`, `unexpected` and `mismatched` (name, file, model shape)."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


# --- torch <-> Dense -----------------------------------------------------------------------------------------------

def tensor_to_dense(tensor: torch.Tensor) -> Dense:
    """A copy of a tensor as a Dense (bfloat16 as its bit patterns), bit for bit."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return Dense(t.view(torch.int16).numpy().view("<u2").copy(), "BF16")
    try:
        return Dense.of(t.numpy().copy())
    except (TypeError, ValueError) as exc:
        raise ModelIOError(f"torch dtype {t.dtype} cannot be stored: {exc}") from None


def dense_to_tensor(dense: Dense) -> torch.Tensor:
    """A Dense as a CPU tensor of the same dtype, bit for bit (BF16 bit patterns become torch.bfloat16)."""
    array = np.array(dense.array, order="C", copy=True)  # not ascontiguousarray: it turns a scalar into shape [1]
    if dense.dtype == "BF16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def state_tensors(source: Source) -> dict[str, Dense]:
    """The named tensors of a module (its state_dict), a state dict, or a model file (.pt/.pth/.safetensors/...)."""
    if isinstance(source, nn.Module):
        source = source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        model = read_model(source)
        return {name: model[name] for name in model}
    if not isinstance(source, Mapping):
        raise ModelIOError(f"expected an nn.Module, a state dict or a model file ({', '.join(MODEL_SUFFIXES)}), "
                           f"got {type(source).__name__}")
    out = {}
    for name, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise ModelIOError(f"state dict entry '{name}' is a {type(value).__name__}, not a tensor")
        out[name] = tensor_to_dense(value)
    return out


# --- layer-aware rules ----------------------------------------------------------------------------------------------

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                           nn.ConvTranspose3d)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _escape(name: str) -> str:
    """A glob matching exactly `name` (Rule patterns are fnmatch globs)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _resolve_pipeline(spec: str) -> str:
    """A preset name with a single pipeline (han-fc, han-conv, lossless; quantize8's for rank >= 2) or a pipeline
    string."""
    presets = get_registry().presets
    if spec in presets:
        rules = presets[spec]["rules"]
        if len(rules) == 2 and rules[0].get("match") == {"min_ndim": 2} and not rules[1].get("match"):
            rules = rules[:1]  # a weight pipeline with the lossless fallback for rank 0-1: layer_rules picks weights
        if len(rules) != 1:
            raise PipelineError(f"preset {spec!r} chooses by tensor rank; give a single-pipeline preset or a pipeline")
        return rules[0]["pipeline"]
    return spec


def with_sparsity(pipeline: str, sparsity: float) -> str:
    """The same pipeline with its `prune` stage set to `sparsity` (PipelineError if it has no prune stage)."""
    registry = get_registry()
    stages = parse_pipeline(pipeline, registry)
    if not any(s.id == "prune" for s in stages):
        raise PipelineError(f"pipeline {pipeline!r} has no 'prune' stage to set a sparsity on")
    out = []
    for stage in stages:
        if stage.id == "prune":
            config = {k: v for k, v in stage.get_config().items() if k not in ("threshold",)}
            config["sparsity"] = float(sparsity)
            stage = registry.build("prune", config)
        out.append(stage)
    return format_pipeline(out)


def layer_rules(model: nn.Module, conv: str | None = "han-conv", linear: str | None = "han-fc",
                embedding: str | None = "han-fc", sparsity: Mapping[str, float] | None = None,
                types: Mapping[type[nn.Module], str] | None = None) -> list[Rule]:
    """One Rule per layer weight, chosen by module type: Conv*d -> `conv`, Linear -> `linear`, Embedding -> `embedding`.

    Each of them is a single-pipeline preset name or a pipeline string (None: leave that kind lossless). `types` adds
    or overrides module types (checked first, subclasses included). `sparsity` maps a weight's name (or a glob) to the
    pruning sparsity of its prune stage, e.g. the paper's per-layer rates. Tensors no rule names stay lossless.
    """
    choices: list[tuple[tuple[type[nn.Module], ...], str | None]] = [
        ((t,), p) for t, p in (types or {}).items()]
    choices += [(CONV_TYPES, conv), (LINEAR_TYPES, linear), (EMBEDDING_TYPES, embedding)]
    rules, seen = [], set()
    sparsity = dict(sparsity or {})
    used = set()
    for prefix, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None:
            continue
        name = f"{prefix}.weight" if prefix else "weight"
        if name in seen:
            continue
        seen.add(name)
        spec = next((p for kinds, p in choices if isinstance(module, kinds)), None)
        if spec is None:
            continue
        pipeline = _resolve_pipeline(spec)
        for pattern, rate in sparsity.items():
            if fnmatch.fnmatchcase(name, pattern):
                pipeline = with_sparsity(pipeline, rate)
                used.add(pattern)
                break
        rules.append(Rule(pipeline, _escape(name)))
    unused = sorted(set(sparsity) - used)
    if unused:
        raise PipelineError(f"sparsity given for {', '.join(unused)}, which names no conv, linear or embedding weight")
    return rules


# --- compress and load ----------------------------------------------------------------------------------------------

def compress_module(
    source: Source,
    path: str | os.PathLike,
    pipeline: str | None = None,
    preset: str | None = None,
    rules: Sequence[Rule | str] = (),
    retrainer: Callable[..., Mapping[str, np.ndarray]] | None = None,
    metadata: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    calibration: Any = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Write a module's (or state dict's, or model file's) tensors to a .dcf and return its report.

    Chains are chosen as in dcframe.compress (give rules=layer_rules(model) for the paper's per-layer settings). With
    a `retrainer` (e.g. torchretrain.TorchRetrainer) the weights are retrained after every lossy stage; its
    per-epoch loss lines go to `progress` too. `calibration` (dcframe.torch.calibrate's result, or its file) feeds
    data-aware stages. `jobs` > 1 encodes in that many processes (the same bytes as serial).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"compress_module: jobs must be a positive integer, got {jobs!r}")
    tensors = state_tensors(source)
    if retrainer is None:
        tell = (lambda message, done: progress(f"encoded {message}")) if progress else None
        return compress(tensors, path, pipeline=pipeline, preset=preset, rules=rules, metadata=metadata,
                        progress=tell, calibration=calibration, jobs=jobs)
    if calibration is not None:
        raise PipelineError("compress_module: a calibration with a retrainer is not supported (retraining moves "
                            "the weights the statistics describe); give one or the other")
    from dcframe.analysis.retrain import compress_with_retraining

    return compress_with_retraining(tensors, path, retrainer, pipeline=pipeline, preset=preset, rules=rules,
                                    metadata=metadata, progress=progress, jobs=jobs)


def load_state_dict(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Decode a container (or only `names`) into a state dict of CPU tensors with the stored dtypes."""
    return {name: dense_to_tensor(d) for name, d in decompress(path, names).items()}


def _listing(title: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT])
    more = f" and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else ""
    return f"{title} ({len(names)}): {shown}{more}"


def load_module(path: str | os.PathLike | Mapping[str, torch.Tensor], model: nn.Module,
                strict: bool = True) -> Any:
    """Load a container (or a decoded state dict) into `model` with load_state_dict semantics.

    strict: every key must match both ways, else StateDictMismatch lists the missing and unexpected keys. A shape
    mismatch is always an error. Non-strict loads the keys both sides have and returns torch's (missing_keys,
    unexpected_keys) named tuple.
    """
    state = dict(path) if isinstance(path, Mapping) else load_state_dict(path)
    where = f"{Path(path)}" if not isinstance(path, Mapping) else "the state dict"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state
                  if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if missing and strict:
            parts.append(_listing("missing keys", missing))
        if unexpected and strict:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches", [f"{k} {list(a)} in the file, {list(b)} in the model"
                                                       for k, a, b in mismatched]))
        hint = "" if not strict or mismatched else "; pass strict=False to load the keys both have"
        raise StateDictMismatch(f"{where} does not fit {type(model).__name__}: " + "; ".join(parts) + hint,
                                missing, unexpected, mismatched)
    if not strict:
        state = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(state, strict=False)
    return type(result)(missing, unexpected)


__all__ = ["StateDictMismatch", "compress_module", "dense_to_tensor", "layer_rules", "load_module", "load_state_dict",
           "state_tensors", "tensor_to_dense", "with_sparsity"]
