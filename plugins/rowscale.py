"""The `rowscale` stage: a power-of-two scale per row, so the quantizer after it is coarser on rows that matter less.

Layout (spec/stages/rowscale.md): the tensor's rows (its first axis) as `values`, row r divided by 2^e_r, and the
exponents e_r (0..15) as the `exponents` symbols; decode multiplies row r by 2^e_r, exactly. The encoder picks e_r
from the calibration: a row whose `activation` side input is zero everywhere (for a token embedding: a token the
calibration text never used) gets `shift`, every other row 0. A row whose division would not be exact (a subnormal
that would lose bits) keeps 0, so the stage itself is lossless (NaN elements keep their bits both ways); the next
stage (uniform, kmeans) then quantizes the rarely used rows 2^shift times more coarsely. Without an activation side
input every exponent is 0.
"""

from __future__ import annotations

import numpy as np

from dcframe import ConfigError, Dense, FormatError, Stage, Symbols, check_output, hookimpl, numpy_dtype
from dcframe.core.dtypes import FLOAT_DTYPES, from_float, to_float
from dcframe.core.streams import ACTIVATION, OUTPUT

MAX_SHIFT = 15  # exponents are 0..15: one symbol of an alphabet of at most 16
BY = ("unseen", "output")
PHASES = 16  # offsets tried for rounding log4 of the sensitivity ratio to whole exponents


def output_exponents(sensitivity: np.ndarray, most: int = MAX_SHIFT) -> np.ndarray:
    """Per-row exponents from the rows' output sensitivities G_r >= 0: e_r = floor(log4(G_max / G_r) + phase),
    clipped to 0..most, with the phase (one of PHASES in [0, 1)) that saves most bits at high rate for the
    same sensitivity-weighted error: mean(e) + log4(sum G / sum G 4^e) bits per weight."""
    g = np.asarray(sensitivity, dtype=np.float64)
    top = float(g.max(initial=0.0))
    exponents = np.zeros(g.shape, dtype=np.uint8)
    if not (top > 0 and np.isfinite(top)):
        return exponents
    ratio = 0.5 * np.log2(top / np.maximum(g, top * 4.0 ** -(MAX_SHIFT + 1)))
    best = 0.0
    for phase in np.arange(PHASES) / PHASES:
        e = np.clip(np.floor(ratio + phase), 0, most)
        saved = float(e.mean() + 0.5 * np.log2(g.sum() / np.sum(g * 4.0 ** e)))
        if saved > best + 1e-12:
            best, exponents = saved, e.astype(np.uint8)
    return exponents


def _scaled(array: np.ndarray, dtype: str, exponents: np.ndarray) -> np.ndarray:
    """The rows of `array` (carrier dtype) times 2^exponents[r], rounded to the dtype (exact unless it overflows to
    infinity); NaN elements keep their bits. Computed in to_float's type (float32 for F16 and BF16, which spans both
    exponent ranges), so the product is exact before the one rounding back to the dtype."""
    wide = to_float(array, dtype)
    factor = np.ldexp(np.ones((), dtype=wide.dtype), exponents.astype(np.int32))
    with np.errstate(over="ignore", invalid="ignore"):
        out = from_float(wide * factor.reshape((-1,) + (1,) * (array.ndim - 1)), dtype)
    nan = np.isnan(wide)
    if nan.any():
        out[nan] = array[nan]
    return out


class RowScale(Stage):
    """Per-row power-of-two scales: rows the calibration never saw, or rows whose output matters less, are stored
    2^e times smaller (lossless); put a quantizer after it (`rowscale | uniform(...) | rans`) and they get a 2^e
    times coarser step.

    Parameters: `by` ("unseen", default: rows whose `activation` side input is all zero get `shift`; "output":
    exponents from the `output` side input, see output_exponents); `shift` (1-15, default 1): the exponent of unseen
    rows, or with by="output" the largest exponent (a linearised sensitivity misjudges rows stepped far coarser).
    """

    id = "rowscale"
    takes = ("dense",)
    gives = {"values": "dense", "exponents": "symbols"}

    def __init__(self, shift: int = 1, by: str = "unseen") -> None:
        if isinstance(shift, bool) or not isinstance(shift, int) or not 1 <= shift <= MAX_SHIFT:
            raise ValueError(f"shift must be an integer from 1 to {MAX_SHIFT}, got {shift!r}")
        if by not in BY:
            raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
        self.shift, self.by = shift, by

    def get_config(self) -> dict:
        """`by` is stored only when it is not the default, so files of by="unseen" stay as they were."""
        return {"shift": self.shift} if self.by == "unseen" else {"shift": self.shift, "by": self.by}

    def _exponents(self, stream: Dense, rows: int) -> np.ndarray:
        """The encoder's choice of e_r (see the class docstring); all 0 without the side input it needs."""
        exponents = np.zeros(rows, dtype=np.uint8)
        side = stream.side.get(OUTPUT if self.by == "output" else ACTIVATION)
        if side is None or not rows or not np.size(side):
            return exponents
        per_row = np.asarray(side).reshape(rows, -1)
        if self.by == "output":
            return output_exponents(per_row.mean(axis=1, dtype=np.float64), self.shift)
        exponents[~(per_row > 0).any(axis=1)] = self.shift
        return exponents

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols | Dense], dict]:
        array = np.asarray(stream.array)  # not ascontiguousarray: it would make a scalar 1-D
        if stream.dtype not in FLOAT_DTYPES or array.ndim < 1:
            raise ConfigError(f"stage 'rowscale' scales the rows of float tensors of rank >= 1, got a "
                              f"{stream.dtype} tensor of shape {list(array.shape)}")
        exponents = self._exponents(stream, array.shape[0]) if array.size else np.zeros(array.shape[0], np.uint8)
        if exponents.any():
            scaled = _scaled(array, stream.dtype, -exponents.astype(np.int32))
            back = _scaled(scaled, stream.dtype, exponents)
            same = (back.reshape(array.shape[0], -1).view(f"u{array.itemsize}")
                    == array.reshape(array.shape[0], -1).view(f"u{array.itemsize}")).all(axis=1)
            exponents[~same] = 0  # rows whose division was not exact stay as they are
            scaled[~same] = array[~same]
        else:
            scaled = array
        alphabet = int(exponents.max(initial=0)) + 1
        return ({"values": Dense(scaled, stream.dtype, stream.side), "exponents": Symbols(exponents, alphabet)},
                {})

    def decode(self, streams: dict[str, Symbols | Dense], meta: dict) -> Dense:
        values, exponents = streams.get("values"), streams.get("exponents")
        if not isinstance(values, Dense) or not isinstance(exponents, Symbols):
            raise FormatError("rowscale: needs a dense stream 'values' and a symbols stream 'exponents'")
        if meta not in ({}, None):
            raise FormatError("rowscale: its meta must be empty")
        array = np.asarray(values.array)
        if values.dtype not in FLOAT_DTYPES or array.dtype != numpy_dtype(values.dtype) or array.ndim < 1:
            raise FormatError(f"rowscale: values must be a float tensor of rank >= 1, got {values.dtype} of shape "
                              f"{list(array.shape)}")
        e = np.asarray(exponents.array)
        if exponents.alphabet > MAX_SHIFT + 1 or e.ndim != 1 or e.dtype.kind not in "ui":
            raise FormatError(f"rowscale: exponents must be 1-D symbols of an alphabet of at most {MAX_SHIFT + 1}, "
                              f"got alphabet {exponents.alphabet}")
        if e.size != array.shape[0]:
            raise FormatError(f"rowscale: {e.size} exponents for a tensor of {array.shape[0]} rows")
        if e.size and int(e.max()) >= exponents.alphabet:
            raise FormatError(f"rowscale: exponent {int(e.max())} is outside the alphabet of {exponents.alphabet}")
        check_output(self.id, array.nbytes, f"tensor of shape {list(array.shape)}")
        return Dense(_scaled(array, values.dtype, e) if e.any() else array, values.dtype)


@hookimpl
def dcframe_stages():
    return [RowScale]
