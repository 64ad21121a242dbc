"""The candidate settings `dcframe tune` sweeps per tensor: named grids and grid files (format dcframe.grid/1).

A grid crosses the paper's structure, `prune(sparsity=f[, criterion=c]) | sparse(index_bits=i) | kmeans(bits=b) |
huffman` (f = 0: `kmeans(bits=b) | huffman`, no pruning), with uniform quantization, `uniform(step=s) | coder` for s =
each relative step x the tensor's RMS (coder: huffman or rans), also after each pruning rate of `uniform_sparsity`
(`prune(sparsity=f) | sparse(index_bits=i) | uniform(step=s) | coder`), plus the lossless chain, which every grid
holds. Uniform candidates retrain too: their steps are absolute and retrainers keep each shared value in its bin.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dcframe.core.errors import ConfigError, DcfError
from dcframe.core.pipeline import Policy

GRID_FORMAT = "dcframe.grid/1"
MAX_GRID_FILE = 1 << 20  # bytes
MAX_CANDIDATES = 4096  # per tensor: every one is encoded and evaluated
DEFAULT_REL_STEPS = (0.05, 0.1, 0.2, 0.35, 0.5)  # uniform steps relative to the tensor's RMS
WIDE_REL_STEPS = (*DEFAULT_REL_STEPS, 0.75, 1.0, 1.5, 2.0)
PAPER_SPARSITY = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98)
PAPER_BITS = (3, 4, 5, 6, 8)
CRITERIA = ("magnitude", "wanda", "sparsegpt")
CODERS = ("huffman", "rans")  # the entropy coders a grid's uniform candidates may end with


@dataclass(frozen=True)
class Grid:
    """Candidate settings: uniform `steps` (relative to RMS, dense and after each of `uniform_sparsity`, ending in
    `coder`) and the paper's `sparsity` x `bits` x `criteria`."""

    steps: tuple[float, ...] = ()
    sparsity: tuple[float, ...] = ()
    bits: tuple[int, ...] = ()
    criteria: tuple[str, ...] = ("magnitude",)
    index_bits: int = 5
    kmeans: str = ""  # extra kmeans options, e.g. "init=linear, method=lloyd"
    coder: str = "huffman"  # the entropy coder of the uniform candidates
    uniform_sparsity: tuple[float, ...] = ()  # pruning rates (> 0) crossed with the uniform steps

    def __post_init__(self) -> None:
        check_grid(self)

    def with_steps(self, steps: Sequence[float]) -> Grid:
        """The same grid with other uniform steps."""
        return replace(self, steps=tuple(steps))

    def uniform_pipelines(self, rms: float) -> list[str]:
        """The uniform candidates for a tensor of RMS `rms`: each step dense, then after each pruning rate."""
        out = []
        for f in (0.0, *self.uniform_sparsity):
            prefix = f"prune(sparsity={f!r}) | sparse(index_bits={self.index_bits}) | " if f > 0 else ""
            out += [f"{prefix}uniform(step={float(f'{r * rms:.6g}')!r}) | {self.coder}" for r in self.steps]
        return out

    def paper_pipelines(self) -> list[str]:
        """The pruned/shared candidates (the same for every tensor)."""
        extra = f", {self.kmeans}" if self.kmeans else ""
        out = []
        for f in self.sparsity:
            for c in self.criteria if f > 0 else ("magnitude",):
                crit = "" if c == "magnitude" else f", criterion={c}"
                prefix = f"prune(sparsity={f!r}{crit}) | sparse(index_bits={self.index_bits}) | " if f > 0 else ""
                out += [f"{prefix}kmeans(bits={b}{extra}) | huffman" for b in self.bits]
        return out

    def pipelines(self, values: np.ndarray, lossless: str) -> list[str]:
        """Every candidate for one tensor, the lossless chain first. Uniform steps are absolute (6 significant
        digits), so each rule replays to the same bytes whatever else is compressed."""
        rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0
        grid = [lossless]
        if rms > 0 and math.isfinite(rms):
            grid += self.uniform_pipelines(rms)
        if values.size:
            grid += self.paper_pipelines()
        return list(dict.fromkeys(grid))

    def as_dict(self) -> dict:
        """The grid as a grid file's content."""
        return {"format": GRID_FORMAT, "steps": list(self.steps), "sparsity": list(self.sparsity),
                "bits": list(self.bits), "criteria": list(self.criteria), "index_bits": self.index_bits,
                "kmeans": self.kmeans, "coder": self.coder, "uniform_sparsity": list(self.uniform_sparsity)}


def check_grid(grid: Grid) -> None:
    """Every value in range and every pipeline buildable; a ConfigError names the first bad one."""
    if any(not (isinstance(s, (int, float)) and 0 < s < math.inf) for s in grid.steps):
        raise ConfigError(f"grid: uniform steps {list(grid.steps)!r}: give numbers > 0")
    if any(not (isinstance(f, (int, float)) and 0 <= f < 1) for f in grid.sparsity):
        raise ConfigError(f"grid: sparsity {list(grid.sparsity)!r}: give fractions in [0, 1)")
    if grid.sparsity and not grid.bits:
        raise ConfigError("grid: sparsity values need bits values (each pruned candidate is also k-means shared)")
    if any(not (isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16) for b in grid.bits):
        raise ConfigError(f"grid: bits {list(grid.bits)!r}: give integers from 1 to 16")
    if not grid.criteria or any(c not in CRITERIA for c in grid.criteria):
        raise ConfigError(f"grid: criteria {list(grid.criteria)!r}: choose from {', '.join(CRITERIA)}")
    if grid.coder not in CODERS:
        raise ConfigError(f"grid: coder {grid.coder!r}: choose from {', '.join(CODERS)}")
    if any(not (isinstance(f, (int, float)) and 0 < f < 1) for f in grid.uniform_sparsity):
        raise ConfigError(f"grid: uniform_sparsity {list(grid.uniform_sparsity)!r}: give fractions in (0, 1)")
    count = len(grid.steps) * (1 + len(grid.uniform_sparsity)) + len(grid.paper_pipelines()) + 1
    if count > MAX_CANDIDATES:
        raise ConfigError(f"grid: {count} candidates per tensor, more than {MAX_CANDIDATES}")
    if count == 1:
        raise ConfigError("grid: no candidates besides the lossless chain (give steps, or sparsity and bits)")


def check_pipelines(grid: Grid, policy: Policy) -> None:
    """The grid's first and last pruned/shared and uniform candidates build (index_bits, kmeans options, coder): a
    ConfigError if not."""
    uniform = grid.uniform_pipelines(1.0)
    for pipeline in grid.paper_pipelines()[:1] + grid.paper_pipelines()[-1:] + uniform[:1] + uniform[-1:]:
        try:
            policy.chain_for_pipeline(pipeline)
        except DcfError as exc:
            raise ConfigError(f"grid: candidate {pipeline!r}: {exc}") from None


GRIDS = {
    "paper": Grid(sparsity=PAPER_SPARSITY, bits=PAPER_BITS),
    "uniform": Grid(steps=DEFAULT_REL_STEPS),
    "wide": Grid(steps=WIDE_REL_STEPS, sparsity=PAPER_SPARSITY, bits=PAPER_BITS),
    "uniform-rans": Grid(steps=WIDE_REL_STEPS, coder="rans", uniform_sparsity=PAPER_SPARSITY[1:]),
}
DEFAULT_GRID = "wide"


def _numbers(data: dict, key: str, kind: type, where: str) -> tuple:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: {key!r} must be a list of numbers")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise ConfigError(f"{where}: {key!r} must be a list of integers")
    return tuple(kind(v) for v in value)


def read_json_file(path: str | os.PathLike, where: str, fmt: str, limit: int, hint: str = "") -> dict:
    """A JSON object of at most `limit` bytes whose "format" is `fmt` (the grid and rules files); every problem is one
    ConfigError starting with `where` (`hint` follows an unreadable file's reason)."""
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise ConfigError(f"{where}: {size} bytes, more than the {limit}-byte limit")
        with open(path, "rb") as f:
            data = json.loads(f.read(limit + 1))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc}){hint}") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ConfigError(f'{where}: not a {fmt} file (expected a JSON object with "format": "{fmt}")')
    return data


def read_grid_file(path: str | os.PathLike) -> Grid:
    """A grid file: JSON {"format": "dcframe.grid/1", "steps": [...], "sparsity": [...], "bits": [...],
    "criteria": [...], "index_bits": 5, "kmeans": "", "coder": "huffman", "uniform_sparsity": [...]}, every key but
    "format" optional; errors are one line."""
    where = f"grid file {str(path)!r}"
    data = read_json_file(path, where, GRID_FORMAT, MAX_GRID_FILE, hint=f"; or name a grid: {', '.join(GRIDS)}")
    unknown = sorted(set(data) - {"format", "steps", "sparsity", "bits", "criteria", "index_bits", "kmeans", "coder",
                                  "uniform_sparsity"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    criteria = data.get("criteria", ["magnitude"])
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise ConfigError(f"{where}: 'criteria' must be a list of names")
    index_bits, kmeans, coder = data.get("index_bits", 5), data.get("kmeans", ""), data.get("coder", "huffman")
    if not (isinstance(index_bits, int) and not isinstance(index_bits, bool)) or not isinstance(kmeans, str) \
            or not isinstance(coder, str):
        raise ConfigError(f"{where}: 'index_bits' must be an integer, 'kmeans' a string of options and 'coder' a name")
    try:
        grid = Grid(_numbers(data, "steps", float, where), _numbers(data, "sparsity", float, where),
                    _numbers(data, "bits", int, where), tuple(criteria), index_bits, kmeans, coder,
                    _numbers(data, "uniform_sparsity", float, where))
        check_pipelines(grid, Policy())
        return grid
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('grid: ')}") from None


def resolve_grid(grid: Grid | str | None, rel_steps: Sequence[float] | None = None) -> Grid:
    """A Grid from a Grid, a grid's name or a grid file's path; None: `rel_steps` given -> the uniform grid with
    them (the first slice's API), else the default grid."""
    if isinstance(grid, Grid):
        return grid
    if grid is None:
        return GRIDS["uniform"].with_steps(rel_steps) if rel_steps is not None else GRIDS[DEFAULT_GRID]
    return GRIDS[grid] if grid in GRIDS else read_grid_file(grid)
