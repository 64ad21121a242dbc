"""dcframe: Deep Compression (pruning, weight sharing, Huffman coding) as a chain of pluggable stages.

Public API:
    compress(tensors, path, pipeline=..., preset=..., rules=...) -> report dict   write a .dcf container
    open_container(path) -> Container                                             read tensors lazily: .read(name)
    decompress(path, names=None) -> dict[str, Dense]                              decode every (or some) tensor
    inspect(path) -> report dict                                                  sizes, ratios, stats per tensor
    verify(path) -> {"ok", "tensors", "damaged"}                                  every checksum, every tensor decodes
    compress_with_retraining(tensors, path, retrainer, ...) -> report dict        the paper's loop, any framework
    tune(tensors, evaluate, budget=B | target_ratio=R, ...) -> TuneResult         settings per tensor: .frontier, .rules
    Constraints, PhaseInfo                                                        what a retrainer is given
    read_model(path) / write_model(path, tensors)                                 .safetensors .npz .npy .pt
    Stage, Dense, Symbols, Bytes, hookimpl, require_side                          to write a stage plugin
    Policy, Rule, parse_pipeline                                                  to choose chains per tensor
    DcfError and its subclasses                                                   every error dcframe raises
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from dcframe.core.errors import (
    ConfigError,
    DcfError,
    FormatError,
    IntegrityError,
    LimitError,
    MissingStageError,
    ModelIOError,
    PipelineError,
)

# Where each public name lives. They are imported on first use (PEP 562), so `import dcframe` - and every CLI run -
# pays only for what it touches: the retraining and tuning analyses alone cost a CLI start-up ~0.1 s.
_EXPORTS = {
    "Constraints": "dcframe.analysis.retrain", "PhaseInfo": "dcframe.analysis.retrain",
    "compress_with_retraining": "dcframe.analysis.retrain",
    "TuneResult": "dcframe.analysis.tune", "tune": "dcframe.analysis.tune",
    "compress": "dcframe.api", "decompress": "dcframe.api", "inspect": "dcframe.api",
    "open_container": "dcframe.api", "verify": "dcframe.api",
    "Container": "dcframe.core.container", "Limits": "dcframe.core.container",
    "numpy_dtype": "dcframe.core.dtypes",
    "hookimpl": "dcframe.core.hookspecs",
    "check_output": "dcframe.core.orchestrator", "output_limit": "dcframe.core.orchestrator",
    "Policy": "dcframe.core.pipeline", "Rule": "dcframe.core.pipeline", "parse_pipeline": "dcframe.core.pipeline",
    "Stage": "dcframe.core.stage", "require_side": "dcframe.core.stage",
    "MAX_NDIM": "dcframe.core.streams", "Bytes": "dcframe.core.streams", "Dense": "dcframe.core.streams",
    "Symbols": "dcframe.core.streams", "check_shape": "dcframe.core.streams", "symbol_width": "dcframe.core.streams",
    "read_model": "dcframe.io.modelio", "write_model": "dcframe.io.modelio",
}

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ below imports these on first use
    from dcframe.analysis.retrain import Constraints, PhaseInfo, compress_with_retraining
    from dcframe.analysis.tune import TuneResult, tune
    from dcframe.api import compress, decompress, inspect, open_container, verify
    from dcframe.core.container import Container, Limits
    from dcframe.core.dtypes import numpy_dtype
    from dcframe.core.hookspecs import hookimpl
    from dcframe.core.orchestrator import check_output, output_limit
    from dcframe.core.pipeline import Policy, Rule, parse_pipeline
    from dcframe.core.stage import Stage, require_side
    from dcframe.core.streams import MAX_NDIM, Bytes, Dense, Symbols, check_shape, symbol_width
    from dcframe.io.modelio import read_model, write_model


def __getattr__(name: str) -> object:
    """Import a public name's module the first time the name is used (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dcframe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "MAX_NDIM", "Bytes", "ConfigError", "Constraints", "Container", "DcfError", "Dense", "FormatError",
    "IntegrityError", "LimitError", "Limits", "MissingStageError", "ModelIOError", "PhaseInfo", "PipelineError",
    "Policy", "Rule", "Stage", "Symbols", "check_output", "check_shape", "compress", "compress_with_retraining",
    "decompress", "hookimpl", "inspect", "numpy_dtype", "open_container", "output_limit", "parse_pipeline",
    "read_model", "require_side", "symbol_width", "TuneResult", "tune", "verify", "write_model", "__version__",
]
