"""`dcframe tune --plot`: the sensitivity figure (metric against stored size, one line per tensor, as the paper's
per-layer figure) and the size-metric frontier (predicted, and the allocations verified end to end). Needs matplotlib
(the `plot` extra), imported only here, only when a plot is asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dcframe.analysis.demo import require_matplotlib
from dcframe.analysis.tune import TuneResult


def plot_tune(result: TuneResult, path: str | os.PathLike) -> None:
    """Draw both panels into `path` (.png, .svg, .pdf), atomically: a failure leaves an existing file untouched."""
    plt = require_matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        sensitivity(left, result)
        frontier(right, result)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
        try:
            fig.savefig(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)


def sensitivity(ax, result: TuneResult) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Each tensor's swept points (dots: metric with only it approximated against its stored bytes), a line through
    those no smaller point beats, and its chosen point ringed."""
    for name, points in result.points.items():
        ordered = sorted(points, key=lambda p: (p.nbytes, -p.metric))
        metrics = np.array([p.metric for p in ordered])
        before = np.maximum.accumulate(np.concatenate(([-np.inf], metrics[:-1])))
        best = [ordered[i] for i in np.flatnonzero(metrics > before)]
        line, = ax.plot([p.nbytes for p in best], [p.metric for p in best], linewidth=1, label=name)
        ax.plot([p.nbytes for p in ordered], [p.metric for p in ordered], ".", color=line.get_color(), alpha=0.4)
        chosen = result.chosen[name]
        ax.plot([chosen.nbytes], [chosen.metric], marker="o", markersize=9, fillstyle="none", color=line.get_color())
    ax.axhline(result.dense_metric, color="gray", linestyle="--", linewidth=0.8, label="dense model")
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes of the tensor")
    ax.set_ylabel("metric (validation), this tensor alone approximated")
    ax.set_title("sensitivity per tensor")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def frontier(ax, result: TuneResult) -> None:  # noqa: ANN001 - a matplotlib Axes
    """The predicted size-metric frontier and the allocations verified end to end (the chosen one starred)."""
    if result.predicted:
        ax.step([b for b, _ in result.predicted], [m for _, m in result.predicted], where="post",
                label="predicted (summed losses)")
    ax.plot([b for b, _ in result.frontier], [m for _, m in result.frontier], "o", fillstyle="none",
            label="verified" + (" (retrained)" if result.retrained else ""))
    ax.plot([result.total_bytes], [result.metric], "*", markersize=14, label="chosen")
    ax.axhline(result.dense_metric, color="gray", linestyle="--", linewidth=0.8, label="dense model")
    if result.budget is not None:
        ax.axhline(result.dense_metric - result.budget, color="red", linestyle=":", linewidth=0.8, label="budget")
    if result.target_ratio is not None:
        ax.axvline(result.original_bytes / result.target_ratio, color="red", linestyle=":", linewidth=0.8,
                   label="target ratio (whole file)")
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes of the model")
    ax.set_ylabel("metric (validation)")
    ax.set_title("size-metric frontier")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
