"""The `uniform` stage: entropy-constrained scalar quantization (Choi et al. 2017), dense -> symbols.

Each weight w gets the level q = sign(w) * max(0, floor(|w| / step + 0.5 - dead_zone)) (round half away from zero,
with a zero bin widened to |w| < (0.5 + dead_zone) * step); the used levels, ascending, become symbols 0..U-1 and a
codebook holds one reconstruction value per level in the tensor's dtype. The stream layout and meta are kmeans's
(spec/stages/uniform.md), so decoding is kmeans's table lookup; the next coder (huffman) does the entropy coding.

Reconstruction values are each bin's mean (importance-weighted with `weighting`), or with `method="gptq"` (Frantar et
al. 2022) the bins' centres (the grid q * step without a dead zone) after GPTQ's column-by-column error compensation
from the Hessian side input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from dcframe_plugins.kmeans import FLOAT_DTYPES, MAX_CLUSTERS, Kmeans, _index_dtype
from dcframe_plugins.prune import BLOCK, PERCDAMP, _upper_cholesky_of_inverse

from dcframe import ConfigError, Dense, FormatError, Stage, Symbols, hookimpl, numpy_dtype, require_side
from dcframe.core.dtypes import from_float, to_float
from dcframe.core.streams import ACTIVATION, FISHER, HESSIAN

MAX_LEVELS = MAX_CLUSTERS  # 2^16: the codebook limit the kmeans layout shares
MAX_LEVEL = float(1 << 52)  # |q| above this is no longer an exact integer in float64
WEIGHTINGS = ("none", "activation", "fisher")
METHODS = ("round", "gptq", "auto")
_BINCOUNT_SPAN = 1 << 20  # level ranges up to this (or 2n) are mapped to symbols by counting, wider ones by sorting


def _positive(name: str, value: Any) -> float | None:
    """None, or a finite number > 0 as a float (ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Uniform(Stage):
    """Uniform scalar quantization: each float becomes the index of its level q = round(w / step), decoded to the mean
    of its bin (entropy-code the indices with huffman).

    Parameters: `step` (absolute bin width) or `rel_step` (step = rel_step x the RMS of every weight of the chain,
    found by `fit`), exactly one; `dead_zone` (>= 0: the zero bin is |w| < (0.5 + dead_zone) * step);
    `weighting` ("none", "activation", "fisher": reconstruction values as importance-weighted bin means, from the
    calibration side input of that name); `method` ("round"; "gptq": GPTQ onto the bins' centres, q * step without
    a dead zone, from the `hessian` side input, 2-D weights only; "auto": gptq where the tensor has a hessian, else
    round with activation-weighted means where it has an activation, else round).
    """

    id = "uniform"
    version = 1
    takes = ("dense",)
    gives = {"indices": "symbols"}
    lossy = True
    imposes = frozenset({"shared"})

    def __init__(self, step: float | None = None, rel_step: float | None = None, dead_zone: float = 0.0,
                 weighting: str = "none", method: str = "round") -> None:
        self.step = _positive("step", step)
        self.rel_step = _positive("rel_step", rel_step)
        if (self.step is None) == (self.rel_step is None):
            raise ValueError("give exactly one of step (absolute) or rel_step (relative to the weights' RMS)")
        if isinstance(dead_zone, bool) or not isinstance(dead_zone, (int, float)) or not 0 <= dead_zone < math.inf:
            raise ValueError(f"dead_zone must be a finite number >= 0, got {dead_zone!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method in ("gptq", "auto") and weighting != "none":
            raise ValueError(f"method {method!r} chooses its own reconstruction values: it takes weighting 'none'")
        self.dead_zone = float(dead_zone)
        self.weighting = weighting
        self.method = method

    def fit(self, streams: Callable[[], Iterable[Dense]]) -> Uniform:
        """For rel_step: the stage with the absolute step rel_step x RMS over every weight of the chain."""
        if self.rel_step is None:
            return self
        step = float(f"{self.rel_step * chain_rms(streams):.6g}")  # 6 digits: readable in configs and tables
        if not 0 < step < math.inf:
            raise ConfigError(f"stage 'uniform': rel_step={self.rel_step} gives the step {step}; give a smaller "
                              f"rel_step or an absolute step")
        return Uniform(step=step, dead_zone=self.dead_zone, weighting=self.weighting, method=self.method)

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols], dict[str, Any]]:
        x = quantizer_input(self.id, stream, self.step)
        method, weighting = self.method, self.weighting
        if method == "auto":  # what the calibration allows: gptq with a hessian, else activation-weighted means
            method = "gptq" if HESSIAN in stream.side and stream.array.ndim == 2 else "round"
            weighting = ACTIVATION if method == "round" and ACTIVATION in stream.side else "none"
        if method == "gptq":
            levels, symbols = _symbols(self._gptq(stream, x))
            book = self._grid_book(levels, stream.dtype)
        else:
            weights = None if weighting == "none" else side_weights(stream, weighting)
            levels, symbols = _symbols(quantize_levels(x, self.step, self.dead_zone))
            book = from_float(bin_means(x, symbols, levels.size, weights), stream.dtype)
        meta = {"dtype": stream.dtype, "shape": list(stream.array.shape),
                "codebook": book.astype(numpy_dtype(stream.dtype)).tobytes()}
        return {"indices": Symbols(symbols.astype(_index_dtype(levels.size)), int(levels.size))}, meta

    def _gptq(self, stream: Dense, x: np.ndarray) -> np.ndarray:
        """GPTQ levels of a 2-D weight from its `hessian` side input (ConfigError when it is missing or unusable)."""
        shape = stream.array.shape
        where = f"stage 'uniform': method 'gptq' on a tensor of shape {list(shape)}"
        if len(shape) != 2:
            raise ConfigError(f"{where}: it works on 2-D weights [out, in]; give this tensor another chain with a "
                              f"rule (method='round')")
        hessian = _side(stream, HESSIAN, "method 'gptq'", (shape[1], shape[1]))

        def grid(levels: np.ndarray) -> np.ndarray:
            return to_float(from_float(self._grid(levels), stream.dtype), stream.dtype).astype(np.float64)

        try:
            return gptq(x.reshape(shape), hessian, lambda w: quantize_levels(w, self.step, self.dead_zone), grid)
        except np.linalg.LinAlgError:
            raise ConfigError(f"{where}: side input 'hessian' is not positive semi-definite (not an X^T X / n)") \
                from None

    def _grid(self, levels: np.ndarray) -> np.ndarray:
        """The centres of the levels' bins: sign(q) * (|q| + dead_zone) * step, 0 for q = 0 (q * step without a dead
        zone)."""
        return np.sign(levels) * (np.abs(levels) + self.dead_zone) * self.step

    def _grid_book(self, levels: np.ndarray, dtype: str) -> np.ndarray:
        """The grid points of `levels` in the dtype; ConfigError if rounding moved one into another level's bin."""
        book = from_float(self._grid(levels), dtype)
        back = quantize_levels(to_float(book, dtype).astype(np.float64), self.step, self.dead_zone)
        if not np.array_equal(back, levels):
            bad = float(np.abs(levels[back != levels]).max() * self.step)
            raise ConfigError(f"stage 'uniform': step {self.step} is finer than {dtype} resolves near {bad:g} (a grid "
                              f"point rounds into another bin): use a larger step")
        return book

    def shared_bounds(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each value's bin as the closed float32 interval [low, high] of the values quantized to its level: a tensor
        with one value per bin decodes exactly, so retrained values kept in their bins survive the final encoding."""
        if self.step is None:
            raise ConfigError("stage 'uniform': rel_step must be fitted before retraining (its bins need a step)")
        x = np.asarray(values, np.float32).reshape(-1)
        q = quantize_levels(x.astype(np.float64), self.step, self.dead_zone)
        edge = (np.abs(q) + np.where(q == 0, 0.5, -0.5) + self.dead_zone) * self.step  # |w| where level |q| starts
        top = (np.abs(q) + 0.5 + self.dead_zone) * self.step  # and where the next level starts (excluded)
        low = np.where(q > 0, edge, -top)
        high = np.where(q < 0, -edge, top)
        return _inside(low, q, self, np.inf), _inside(high, q, self, -np.inf)

    def decode(self, streams: dict[str, Symbols], meta: dict[str, Any]) -> Dense:
        """kmeans's table lookup (the same layout and checks), with errors naming this stage."""
        try:
            return Kmeans.decode(self, streams, meta)
        except FormatError as exc:
            text = str(exc)
            raise type(exc)(f"uniform:{text[7:]}" if text.startswith("kmeans:") else f"uniform: {text}") from None


def quantizer_input(stage_id: str, stream: Dense, step: float | None) -> np.ndarray:
    """A step quantizer's input as flat float64, after the checks uniform and tcq share (ConfigError): a float tensor,
    a fitted step, finite values."""
    if stream.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"stage '{stage_id}' only quantizes float weights, got a {stream.dtype} tensor")
    if step is None:
        raise ConfigError(f"stage '{stage_id}': rel_step must be fitted over every tensor of the chain first "
                          "(dcframe.compress does this); or give an absolute step")
    x = stream.values().reshape(-1).astype(np.float64)
    if x.size and not np.isfinite(x).all():
        raise ConfigError(f"stage '{stage_id}' (lossy) only accepts finite values; the tensor holds NaN or infinity")
    return x


def quantize_levels(x: np.ndarray, step: float, dead_zone: float = 0.0) -> np.ndarray:
    """Integer levels sign(x) * max(0, floor(|x| / step + 0.5 - dead_zone)) of float64 `x` (monotone in x)."""
    magnitude = np.floor(np.abs(x) / step + (0.5 - dead_zone))
    np.maximum(magnitude, 0.0, out=magnitude)
    if magnitude.size and not magnitude.max() <= MAX_LEVEL:
        raise ConfigError(f"stage 'uniform': |w| / step reaches {magnitude.max():.3g} (step {step}): use a larger step")
    q = magnitude.astype(np.int64)
    np.negative(q, out=q, where=x < 0)
    return q


def _inside(edge: np.ndarray, q: np.ndarray, stage: Uniform, inward: float) -> np.ndarray:
    """`edge` as float32, stepped one float at a time towards `inward` until it quantizes to level `q` (a few steps:
    the float64 edge is within rounding of the bin's)."""
    out = edge.astype(np.float32)
    for _ in range(8):
        off = quantize_levels(out.astype(np.float64), stage.step, stage.dead_zone) != q
        if not off.any():
            return out
        out[off] = np.nextafter(out[off], np.float32(inward))
    raise ConfigError(f"stage 'uniform': step {stage.step} is finer than float32 resolves: use a larger step")


def _symbols(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the used levels ascending, each element's symbol = its level's rank); ConfigError over 2^16 levels."""
    if q.size == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    low = int(q.min())
    span = int(q.max()) - low + 1
    if span <= max(_BINCOUNT_SPAN, 2 * q.size):
        used = np.bincount(q - low, minlength=span) > 0
        count = int(np.count_nonzero(used))
        _check_alphabet(count)
        return np.flatnonzero(used) + low, (np.cumsum(used) - 1)[q - low]
    levels, symbols = np.unique(q, return_inverse=True)
    _check_alphabet(levels.size)
    return levels, symbols.reshape(-1)


def _check_alphabet(count: int) -> None:
    if count > MAX_LEVELS:
        raise ConfigError(f"stage 'uniform': the step gives {count} levels, more than {MAX_LEVELS}: use a larger step")


def bin_means(x: np.ndarray, symbols: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Each bin's (weighted) mean in float64, kept within its smallest and largest member.

    Computed as min + mean(x - min), so a bin of equal values gives exactly that value (the stage's idempotence);
    a bin whose weights are all zero takes the plain mean.
    """
    if x.size == 0:
        return np.zeros(count)
    low = np.full(count, np.inf)
    high = np.full(count, -np.inf)
    np.minimum.at(low, symbols, x)
    np.maximum.at(high, symbols, x)
    offset = x - low[symbols]
    means = np.bincount(symbols, offset, count) / np.maximum(np.bincount(symbols, minlength=count), 1)
    if weights is not None:
        total = np.bincount(symbols, weights, count)
        weighted = np.bincount(symbols, weights * offset, count) / np.where(total > 0, total, 1.0)
        means = np.where(total > 0, weighted, means)
    return np.clip(low + means, low, high)


def gptq(weights: np.ndarray, hessian: np.ndarray, levels: Callable[[np.ndarray], np.ndarray],
         grid: Callable[[np.ndarray], np.ndarray], block: int = BLOCK, percdamp: float = PERCDAMP) -> np.ndarray:
    """GPTQ on a 2-D weight [out, in] with H = X^T X / n: the integer level of every weight.

    Columns are quantized in decreasing order of H's diagonal (GPTQ's act-order: the inputs carrying the most energy
    first, while the most columns remain to absorb their error) with `levels` (value -> level) and `grid` (level ->
    the value decoded); each
    column's error, scaled by the Cholesky factor U of H^-1 (U^T U = H^-1), is spread over the columns still to come:
    within a block of `block` columns at once, to later blocks in one matrix product (lazy batch updates). Dead
    inputs (H_cc = 0) get H_cc = 1 and zero weights; H's diagonal is damped by percdamp x its mean, as the reference
    does. Weights already on the grid give zero errors, so nothing moves. Raises LinAlgError when H is not PSD.
    """
    w = weights.astype(np.float64, copy=True)
    h = (hessian.astype(np.float64) + hessian.astype(np.float64).T) / 2
    cols = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if cols:
        h[np.diag_indices(cols)] += percdamp * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")  # act-order: the inputs with the most energy first
    w, h = w[:, order], h[np.ix_(order, order)]
    u = _upper_cholesky_of_inverse(h)
    q = np.zeros(w.shape, dtype=np.int64)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        err = np.zeros((w.shape[0], stop - start))
        for c in range(start, stop):
            q[:, c] = levels(w[:, c])
            err[:, c - start] = (w[:, c] - grid(q[:, c])) / u[c, c]
            w[:, c + 1:stop] -= np.outer(err[:, c - start], u[c, c + 1:stop])
        w[:, stop:] -= err @ u[start:stop, stop:]
    restored = np.empty_like(q)
    restored[:, order] = q
    return restored.reshape(-1)


def _side(stream: Dense, name: str, what: str, shape: tuple[int, ...], stage_id: str = "uniform") -> np.ndarray:
    """The side input `name`, checked (dcframe.require_side), with the stage's place in the message."""
    where = f"stage '{stage_id}': {what} on a tensor of shape {list(stream.array.shape)}"
    return require_side(stream, name, where, shape)


def side_weights(stream: Dense, weighting: str, stage_id: str = "uniform") -> np.ndarray:
    """The element-aligned importance weights of `weighting` ("activation" or "fisher"), flat, float64, >= 0."""
    name = {"activation": ACTIVATION, "fisher": FISHER}[weighting]
    value = _side(stream, name, f"weighting '{weighting}'", stream.array.shape, stage_id)
    if (value < 0).any():
        raise ConfigError(f"stage '{stage_id}': weighting '{weighting}' on a tensor of shape "
                          f"{list(stream.array.shape)}: side input '{name}' has negative entries (importance weights "
                          f"are >= 0)")
    return value.reshape(-1).astype(np.float64)


def chain_rms(streams: Callable[[], Iterable[Dense]], stage_id: str = "uniform") -> float:
    """The root mean square of every weight of every stream; 1.0 when there are none or all are zero (any step
    quantizes zeros exactly). ConfigError on non-float or non-finite weights, as encode would raise."""
    total, count = 0.0, 0
    for stream in streams():
        if stream.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"stage '{stage_id}' only quantizes float weights, got a {stream.dtype} tensor")
        x = stream.values().reshape(-1).astype(np.float64)
        if x.size and not np.isfinite(x).all():
            raise ConfigError(f"stage '{stage_id}' (lossy) only accepts finite values; a tensor holds NaN or infinity")
        total += float(np.dot(x, x))
        count += x.size
    return math.sqrt(total / count) if count and total > 0 else 1.0


@hookimpl
def dcframe_stages():
    return [Uniform]
