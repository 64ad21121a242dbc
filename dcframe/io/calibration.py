"""Calibration: statistics of a model's data per weight, the side inputs of data-aware stages (spec/calibration.md).

A Calibration maps a weight's name to a few arrays recorded while the model ran on sample data (dcframe.torch's
``calibrate`` records them): ``activation`` (E[x^2] of the input each weight multiplies, broadcastable to the
weight's shape), ``hessian`` (X^T X / n of a 2-D weight's input), ``fisher`` (mean squared gradient, the weight's
shape) and, for embeddings, ``token_count``. It is saved as a .safetensors file of tensors named ``WEIGHT::STAT``.
Stages receive it at encode time only (dcframe/core/stage.py, "Side inputs"); files never depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dcframe.core.errors import ConfigError, DcfError
from dcframe.core.streams import ACTIVATION, FISHER, HESSIAN, OUTPUT, Dense
from dcframe.io.modelio import read_model, write_model

FORMAT = "dcframe.calibration"
VERSION = "1"
SEP = "::"
STATS = (ACTIVATION, HESSIAN, FISHER, OUTPUT, "token_count")


@dataclass
class Calibration:
    """Per weight name, its recorded statistics (name -> array); `samples` is how many samples were seen."""

    entries: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    samples: int = 0
    source: str = ""

    def save(self, path: str | os.PathLike) -> None:
        """Write the calibration as a .safetensors file (atomically)."""
        tensors = {f"{name}{SEP}{stat}": np.ascontiguousarray(array)
                   for name, stats in self.entries.items() for stat, array in stats.items()}
        write_model(path, tensors, metadata={"format": FORMAT, "version": VERSION, "samples": str(self.samples),
                                             "source": self.source})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read and check a calibration file written by save() (or by another tool following the spec)."""
        model = read_model(path)
        meta = model.metadata
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a dcframe calibration file (its __metadata__ has no "
                              f"format={FORMAT!r}; make one with `dcframe calibrate`)")
        if meta.get("version") != VERSION:
            raise ConfigError(f"{path}: calibration version {meta.get('version')!r}, this dcframe reads {VERSION!r}")
        entries: dict[str, dict[str, np.ndarray]] = {}
        for key in model:
            name, sep, stat = key.rpartition(SEP)
            if not sep or not name or stat not in STATS:
                raise ConfigError(f"{path}: tensor '{key}' is not WEIGHT{SEP}STAT with STAT one of {', '.join(STATS)}")
            array = np.asarray(model[key].values() if stat != "token_count" else model[key].array)
            if stat != "token_count" and not np.all(np.isfinite(array)):
                raise ConfigError(f"{path}: '{key}' holds NaN or infinity")
            if np.any(array < 0) and stat != HESSIAN:
                raise ConfigError(f"{path}: '{key}' holds negative values (second moments are >= 0)")
            entries.setdefault(name, {})[stat] = array
        samples = meta.get("samples", "0")
        return cls(entries, int(samples) if samples.isdigit() else 0, meta.get("source", ""))

    def lookup(self, name: str) -> dict[str, np.ndarray] | None:
        """The statistics of weight `name`: exact name, else the one entry whose name ends the other at a '.'
        (a checkpoint saved with or without a prefix such as 'bert.')."""
        if name in self.entries:
            return self.entries[name]
        found = [k for k in self.entries if name.endswith("." + k) or k.endswith("." + name)]
        return self.entries[found[0]] if len(found) == 1 else None

    def check_fits(self, tensors: Mapping[str, Dense | np.ndarray], where: str = "calibration") -> None:
        """Every entry names a tensor of the model, and every statistic fits that tensor's shape (else ConfigError)."""
        shapes = {name: _shape(tensors[name]) for name in tensors}
        matched = set()
        for name, shape in shapes.items():
            stats = self.lookup(name)
            if stats is None:
                continue
            matched.add(id(stats))
            side_inputs_for(name, shape, stats, where)
        for name, stats in self.entries.items():
            if id(stats) not in matched:
                raise ConfigError(f"{where}: weight '{name}' is not a tensor of the model (a calibration of another "
                                  f"model?)")

    def side_inputs(self, name: str, tensor: Dense | np.ndarray) -> dict[str, np.ndarray]:
        """The side inputs (dcframe.core.streams names) of one tensor; empty if the calibration does not cover it."""
        stats = self.lookup(name)
        return {} if stats is None else side_inputs_for(name, _shape(tensor), stats)


def _shape(tensor: Dense | np.ndarray) -> tuple[int, ...]:
    return tuple(np.shape(tensor.array if isinstance(tensor, Dense) else tensor))


def side_inputs_for(name: str, shape: tuple[int, ...], stats: Mapping[str, np.ndarray],
                    where: str = "calibration") -> dict[str, np.ndarray]:
    """Turn one weight's statistics into side inputs: element-aligned views of its shape, the [in, in] hessian."""
    side: dict[str, np.ndarray] = {}
    for stat in (ACTIVATION, OUTPUT):
        if stat in stats:
            try:
                side[stat] = np.broadcast_to(stats[stat].astype(np.float32, copy=False), shape)
            except ValueError:
                raise ConfigError(f"{where}: tensor '{name}' has shape {list(shape)}, but its {stat} statistic "
                                  f"{list(stats[stat].shape)} does not broadcast to it") from None
    if FISHER in stats:
        if tuple(stats[FISHER].shape) != shape:
            raise ConfigError(f"{where}: tensor '{name}' has shape {list(shape)}, its fisher statistic "
                              f"{list(stats[FISHER].shape)}")
        side[FISHER] = stats[FISHER]
    if HESSIAN in stats:
        h = stats[HESSIAN]
        if len(shape) != 2 or tuple(h.shape) != (shape[1], shape[1]):
            raise ConfigError(f"{where}: tensor '{name}' has shape {list(shape)}, its hessian {list(h.shape)} "
                              f"(expected [{shape[-1]}, {shape[-1]}] for a 2-D weight [out, in])")
        side[HESSIAN] = h
    return side


def as_calibration(calibration: Calibration | str | os.PathLike | None) -> Calibration | None:
    """Accept a Calibration, a path to a calibration file, or None."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    try:
        return Calibration.load(calibration)
    except DcfError as exc:
        msg = str(exc)
        raise type(exc)(msg if str(calibration) in msg else f"{calibration}: {msg}") from None

