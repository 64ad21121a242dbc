"""The few functions most users need: compress to a file, open, decompress, inspect."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dcframe.core.container import DEFAULT_CHUNK, Container, ContainerWriter, Layout
from dcframe.core.errors import DcfError, MissingStageError
from dcframe.core.orchestrator import Executor, compress_tensors
from dcframe.core.pipeline import Policy, Rule
from dcframe.core.report import container_report
from dcframe.core.streams import Dense
from dcframe.io.calibration import Calibration, as_calibration
from dcframe.io.hffolder import SINGLE, ModelFolder
from dcframe.io.modelio import LazyTensors


def compress(
    tensors: Mapping[str, np.ndarray | Dense],
    path: str | os.PathLike,
    pipeline: str | None = None,
    preset: str | None = None,
    rules: Sequence[Rule | str] = (),
    metadata: dict[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[str, int], None] | None = None,
    jobs: int = 1,
    stats: bool = True,
    calibration: Calibration | str | os.PathLike | None = None,
    layout: Layout | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Compress named tensors into a .dcf file at `path` (atomically) and return its report.

    The chain per tensor: the first matching rule, else `pipeline` (or the `preset`'s rules, default "lossless");
    integer and boolean tensors always get the lossless chain. `jobs` > 1 encodes tensors in that many processes,
    or threads where every chain releases the GIL (orchestrator.threadable), with the same bytes as a serial run.
    On any failure, Ctrl-C included, an existing file at `path` is left untouched.
    `stats=False` leaves out the informative per-tensor statistics (entropy, error; ~200 bytes per lossy tensor).
    `calibration` (a Calibration or its file) feeds data-aware stages (prune criterion="wanda", kmeans weighting=...)
    at encode time; the file does not store it. `layout` records the files the tensors came in (FORMAT.md 3.3):
    by default a Hugging Face folder's (`dcframe.io.hffolder.read_folder`) or a .safetensors file's `__metadata__`.
    `executor` encodes the tensors elsewhere instead of `jobs` processes, e.g. `daskexec.DaskExecutor()` on
    a Dask cluster; the bytes are the same.
    """
    policy = Policy(pipeline=pipeline, preset=preset, rules=rules)
    calib = as_calibration(calibration)
    if calib is not None:
        calib.check_fits(tensors, str(calibration) if not isinstance(calibration, Calibration) else "calibration")
    layout = layout or source_layout(tensors)
    with ContainerWriter(path, metadata, chunk_size, policy.registry, layout) as writer:
        for encoded in compress_tensors(tensors, policy, stats=stats, progress=progress, jobs=jobs,
                                        spill_dir=writer.path.parent,
                                        side_inputs=calib.side_inputs if calib is not None else None,
                                        executor=executor):
            writer.add(encoded)
    return inspect(path)


def source_layout(tensors: Mapping[str, Any]) -> Layout | None:
    """The layout a container keeps for tensors read from a folder, or from a .safetensors file with metadata."""
    if isinstance(tensors, ModelFolder):
        return tensors.layout
    if isinstance(tensors, LazyTensors) and tensors.metadata and tensors.path.suffix.lower() == ".safetensors":
        return Layout([(SINGLE, dict(tensors.metadata))], dict.fromkeys(tensors, 0))
    return None


def open_container(path: str | os.PathLike) -> Container:
    """Open a .dcf file; `container.read(name)` decodes one tensor, reading only its bytes."""
    return Container(path)


def decompress(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Dense]:
    """Decode all tensors of a container, or only `names`, in file order."""
    with Container(path) as container:
        wanted = list(container.names) if names is None else list(names)
        return {name: container.read(name) for name in wanted}


def verify(path: str | os.PathLike, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Check a whole container without writing anything: every checksum, and that every tensor decodes.

    Returns {"file", "ok", "tensors": [{"name", "ok", "error", "kind"}], "damaged": [names], "unreadable": [names]}:
    damaged tensors failed a check; unreadable ones need a stage that is not installed (the file may be fine). A file
    whose index cannot be read raises its FormatError (no tensor can be named then).
    """
    rows = []
    with Container(path) as container:
        for name, entry in container.entries.items():
            try:
                container.read(name)
                rows.append({"name": name, "ok": True, "error": None, "kind": None})
            except DcfError as exc:
                rows.append({"name": name, "ok": False, "error": str(exc), "kind": type(exc).__name__})
            if progress:
                progress(name, entry.total_length)
    missing = MissingStageError.__name__
    damaged = [r["name"] for r in rows if not r["ok"] and r["kind"] != missing]
    unreadable = [r["name"] for r in rows if r["kind"] == missing]
    return {"file": str(path), "ok": not damaged and not unreadable, "tensors": rows, "damaged": damaged,
            "unreadable": unreadable}


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The report of a container as plain data (what `dcframe inspect --json` prints)."""
    with Container(path) as container:
        return container_report(container)
