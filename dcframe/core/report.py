"""The size report of a container, as plain data: what `inspect --json` and `compress --json` print."""

from __future__ import annotations

import math
from typing import Any

from dcframe.core.container import MAGIC, TRAILER, Container, pipeline_text
from dcframe.core.dtypes import numpy_dtype


def container_report(container: Container) -> dict[str, Any]:
    """Per tensor and in total: original and compressed bytes, ratio, bits per weight, bytes per stream, stats.

    Every byte of the file is accounted for: the tensors' compressed_bytes plus overhead_bytes (magic, index,
    trailer) equal the file's size.
    """
    tensors = []
    for name, entry in container.entries.items():
        record = container.record(name)
        shape = record["shape"]
        count = math.prod(shape)
        original = count * numpy_dtype(record["dtype"]).itemsize
        streams = {s[0]: s[1] for s in record["streams"]}
        row: dict[str, Any] = {
            "name": name,
            "dtype": record["dtype"],
            "shape": shape,
            "pipeline": pipeline_text(container.chains[record["chain"]]),
            "original_bytes": original,
            "compressed_bytes": entry.total_length,
            "ratio": _ratio(original, entry.total_length),
            "bits_per_weight": 8 * entry.total_length / count if count else 0.0,
            "streams": streams,
            "record_overhead_bytes": entry.total_length - sum(streams.values()),
        }
        stats = record.get("stats")
        if isinstance(stats, dict):
            row.update(_stats_fields(stats, streams, count))
        tensors.append(row)
    original = sum(t["original_bytes"] for t in tensors)
    return {
        "file": str(container.path),
        "format_version": list(container.version),
        "producer": container.producer,
        "metadata": container.metadata,
        "original_bytes": original,
        "compressed_bytes": container.size,
        "ratio": _ratio(original, container.size),
        "overhead_bytes": len(MAGIC) + container.index_bytes + TRAILER.size,
        "tensors": tensors,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _checked_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Only well-formed stats (they come from the file, which may be hostile); anything else is dropped."""
    out = {k: stats[k] for k in ("distinct", "rms", "rel_rms", "max_abs") if _number(stats.get(k))}
    if _number(stats.get("sparsity")) and stats["sparsity"] <= 1:
        out["sparsity"] = stats["sparsity"]
    entropy = stats.get("entropy_bits")
    if isinstance(entropy, dict):
        out["entropy_bits"] = {k: v for k, v in entropy.items() if isinstance(k, str) and _number(v)}
    stages = stats.get("stages")
    if isinstance(stages, list) and all(isinstance(d, dict) and all(isinstance(k, str) and _number(v)
                                                                     for k, v in d.items()) for d in stages):
        out["stages"] = stages
    return out


def _stats_fields(stats: dict[str, Any], streams: dict[str, int], count: int) -> dict[str, Any]:
    stats = _checked_stats(stats)
    out: dict[str, Any] = {}
    for key in ("sparsity", "distinct", "rms", "rel_rms", "max_abs"):
        if key in stats:
            out[key] = stats[key]
    kept = round(count * (1 - stats["sparsity"])) if isinstance(stats.get("sparsity"), float) else count
    if kept:  # the paper's "weight bits" and "index bits": stored bits per kept (non-zero) weight, per stream
        out["stream_bits_per_kept_weight"] = {name: 8 * size / kept for name, size in streams.items()}
    entropy = stats.get("entropy_bits")
    if isinstance(entropy, dict) and entropy:
        out["entropy"] = {
            name: {"entropy_bytes": bits / 8, "stored_bytes": streams.get(name),
                   "over_entropy": _over(streams.get(name), bits / 8)}
            for name, bits in entropy.items()
        }
    stages = stats.get("stages")
    if isinstance(stages, list):
        out["stage_bytes"] = stages
    return out


def _over(stored: int | None, bound: float) -> float | None:
    """How far a stream's size is above its entropy bound; None where that is not a finite number (a hostile
    or degenerate stat, e.g. a subnormal entropy whose byte count underflows to 0)."""
    if stored is None or not bound > 0:
        return None
    over = stored / bound - 1
    return over if math.isfinite(over) else None


def _ratio(original: int, compressed: int) -> float:
    return original / compressed if compressed else 0.0
