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

from dcframe.analysis.retrain import Constraints, PhaseInfo, compress_with_retraining  # noqa: E402
from dcframe.analysis.tune import TuneResult, tune  # noqa: E402
from dcframe.api import compress, decompress, inspect, open_container, verify  # noqa: E402
from dcframe.core.container import Container, Limits  # noqa: E402
from dcframe.core.dtypes import numpy_dtype  # noqa: E402
from dcframe.core.errors import (  # noqa: E402
    ConfigError,
    DcfError,
    FormatError,
    IntegrityError,
    LimitError,
    MissingStageError,
    ModelIOError,
    PipelineError,
)
from dcframe.core.hookspecs import hookimpl  # noqa: E402
from dcframe.core.orchestrator import check_output, output_limit  # noqa: E402
from dcframe.core.pipeline import Policy, Rule, parse_pipeline  # noqa: E402
from dcframe.core.stage import Stage, require_side  # noqa: E402
from dcframe.core.streams import MAX_NDIM, Bytes, Dense, Symbols, check_shape, symbol_width  # noqa: E402
from dcframe.io.modelio import read_model, write_model  # noqa: E402

__all__ = [
    "MAX_NDIM", "Bytes", "ConfigError", "Constraints", "Container", "DcfError", "Dense", "FormatError",
    "IntegrityError", "LimitError", "Limits", "MissingStageError", "ModelIOError", "PhaseInfo", "PipelineError",
    "Policy", "Rule", "Stage", "Symbols", "check_output", "check_shape", "compress", "compress_with_retraining",
    "decompress", "hookimpl", "inspect", "numpy_dtype", "open_container", "output_limit", "parse_pipeline",
    "read_model", "require_side", "symbol_width", "TuneResult", "tune", "verify", "write_model", "__version__",
]
