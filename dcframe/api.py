"""The few functions most users need: compress to a file, open, decompress, inspect."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .container import DEFAULT_CHUNK, Container, ContainerWriter
from .orchestrator import compress_tensors
from .pipeline import Policy, Rule
from .report import container_report
from .streams import Dense


def compress(
    tensors: Mapping[str, np.ndarray | Dense],
    path: str | os.PathLike,
    pipeline: str | None = None,
    preset: str | None = None,
    rules: Sequence[Rule | str] = (),
    metadata: dict[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Compress named tensors into a .dcf file at `path` (atomically) and return its report.

    The chain per tensor: the first matching rule, else `pipeline` (or the `preset`'s rules, default "lossless");
    integer and boolean tensors always get the lossless chain.
    """
    policy = Policy(pipeline=pipeline, preset=preset, rules=rules)
    with ContainerWriter(path, metadata, chunk_size, policy.registry) as writer:
        for encoded in compress_tensors(tensors, policy, progress=progress):
            writer.add(encoded)
    return inspect(path)


def open_container(path: str | os.PathLike) -> Container:
    """Open a .dcf file; `container.read(name)` decodes one tensor, reading only its bytes."""
    return Container(path)


def decompress(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Dense]:
    """Decode all tensors of a container, or only `names`, in file order."""
    with Container(path) as container:
        wanted = list(container.names) if names is None else list(names)
        return {name: container.read(name) for name in wanted}


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The report of a container as plain data (what `dcframe inspect --json` prints)."""
    with Container(path) as container:
        return container_report(container)
