"""The `prune` stage: magnitude pruning (Deep Compression, step 1), and data-aware pruning of pretrained weights.

Magnitude (spec/stages/prune.md): every weight with |w| <= t is set to +0.0, where t is either the configured
`threshold` or, for a target `sparsity` s over n elements, the k-th smallest non-NaN magnitude with
k = floor(s * n + 0.5) (t = 0 when k = 0). Ties at t are all pruned, so the achieved sparsity is at least the target and
exceeds it only by the weights tied at t; NaN is never pruned. Because zeros have the smallest magnitude, pruning an
already pruned (and retrained: zeros kept, survivors non-zero) tensor with the same sparsity zeroes exactly the same
positions.

Data-aware criteria read calibration side inputs (dcframe/core/stage.py, "Side inputs"), at encode time only:
- wanda (Sun et al. 2023): score |w_ij| * sqrt(E[x_j^2]), each output row (slice along axis 0) loses its k lowest;
- sparsegpt (Frantar & Alistarh 2023): OBS pruning column by column from H = X^T X / n, updating the kept weights.
Decoding is the identity for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from dcframe import ConfigError, Dense, FormatError, Stage, hookimpl, require_side
from dcframe.core.dtypes import is_float
from dcframe.core.stage import FitPlan, run_fit_plan
from dcframe.core.streams import ACTIVATION, HESSIAN

SCOPES = ("tensor", "global")
CRITERIA = ("magnitude", "wanda", "sparsegpt")
BLOCK = 128  # sparsegpt: columns per block (the lazy batch update and the adaptive mask work block by block)
PERCDAMP = 0.01  # sparsegpt: dampening added to the Hessian's diagonal, as a fraction of its mean diagonal
_BIN_BITS = 16  # radix-select digit width: 65536 histogram bins per pass
_COLLECT = 1 << 22  # once a bin holds at most this many candidates, gather them and partition directly


def _target_count(sparsity: float, n: int) -> int:
    """How many of n weights a sparsity asks to prune: floor(s * n + 0.5) in float64, clipped to 0..n."""
    return min(n, max(0, math.floor(sparsity * n + 0.5)))


def _kth_smallest(magnitudes: np.ndarray, k: int) -> float:
    """The k-th smallest (1-based) value of a NaN-free array, in O(n) with np.partition."""
    return float(np.partition(magnitudes, k - 1)[k - 1])


def _float32_at_most(t: float) -> np.float32:
    """The largest float32 <= t, so |w| <= t compares exactly in float32 for float32 (and F16/BF16) weights."""
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return t32


def _magnitudes(stream: Dense) -> np.ndarray:
    """|w| as a flat float array (float32 for F32/F16/BF16, float64 for F64); NaN stays NaN."""
    if not is_float(stream.dtype):
        raise ConfigError(f"prune: approximates float tensors only, got {stream.dtype}")
    return np.abs(stream.values().reshape(-1))


def _keys(stream: Dense) -> np.ndarray:
    """Non-NaN magnitudes widened exactly to float64, as uint64 bit patterns (monotonic in the value for x >= +0)."""
    mag = _magnitudes(stream).astype(np.float64)
    return mag[~np.isnan(mag)].view(np.uint64)


def global_threshold(streams: Callable[[], Iterable[Dense]], sparsity: float) -> float:
    """The threshold that prunes `sparsity` of all weights of all streams together, by exact radix selection.

    Memory: one tensor's magnitudes at a time plus 65536 counters (and at most 2^22 gathered candidates), never the
    whole model; it reads the streams two to five times (usually twice).
    """
    return run_fit_plan(threshold_plan(sparsity), streams)


def threshold_plan(sparsity: float) -> FitPlan:
    """global_threshold as passes over the streams (dcframe.core.stage.FitPlan): counts, then 16-bit digit histograms
    of the magnitudes' float64 bit patterns, then the few candidates left; each pass merges per-stream results by
    sums and concatenation, so the streams may be visited in any order, wherever they are."""
    counts = [0, 0]
    for size, valid in (yield _counts):
        counts[0] += size
        counts[1] += valid
    k = min(_target_count(sparsity, counts[0]), counts[1])  # NaN is never pruned
    if k == 0:
        return 0.0
    prefix, shift = 0, 64
    while shift > 0:
        shift -= _BIN_BITS
        hist = np.zeros(1 << _BIN_BITS, dtype=np.int64)
        for part in (yield partial(_histogram, prefix=prefix, above=shift + _BIN_BITS, shift=shift)):
            hist += part
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, k))  # the first bin whose running count reaches k
        k -= int(cum[digit - 1]) if digit else 0
        prefix = (prefix << _BIN_BITS) | digit
        if shift and hist[digit] <= _COLLECT:
            parts = (yield partial(_matching, prefix=prefix, shift=shift))
            candidates = np.concatenate([np.zeros(0, np.uint64), *parts])
            return float(np.partition(candidates, k - 1)[k - 1:k].view(np.float64)[0])
    return float(np.array([prefix], dtype=np.uint64).view(np.float64)[0])


def _counts(stream: Dense) -> tuple[int, int]:
    """Elements, and non-NaN elements, of one stream."""
    return int(stream.array.size), int(_keys(stream).size)


def _histogram(stream: Dense, prefix: int, above: int, shift: int) -> np.ndarray:
    """Counts of the 16-bit digit at `shift` of the keys whose bits from `above` up equal `prefix`."""
    keys = _matching(stream, prefix, above)
    return np.bincount((keys >> np.uint64(shift)) & np.uint64((1 << _BIN_BITS) - 1), minlength=1 << _BIN_BITS)


def _matching(stream: Dense, prefix: int, shift: int) -> np.ndarray:
    """The keys of a stream whose bits above `shift` equal `prefix`."""
    keys = _keys(stream)
    if shift < 64:
        keys = keys[(keys >> np.uint64(shift)) == np.uint64(prefix)]
    return keys


def _rows(array: np.ndarray) -> np.ndarray:
    """A weight as [rows, columns]: one row per slice along axis 0 (output feature or channel); rank <= 1: one row."""
    if array.ndim <= 1:
        return array.reshape(1, array.size)
    return array.reshape(array.shape[0], math.prod(array.shape[1:]))


def _lowest(score: np.ndarray, magnitude: np.ndarray, count: int) -> np.ndarray:
    """Per row, mark the `count` lowest scores; ties at the count-th go to the smaller magnitude, then the earlier one.

    The magnitude tie-break puts a zero before a weight whose score is zero only by its input (a dead input feature),
    so pruning again picks the zeros already there: this is what makes the data-aware criteria idempotent. O(n) by
    partition; only the elements tied with a row's count-th score are sorted.
    """
    count = min(max(count, 0), score.shape[-1])
    if count == 0:
        return np.zeros(score.shape, dtype=bool)
    kth = np.partition(score, count - 1, axis=-1)[:, count - 1:count]
    marked = score < kth
    tied = score == kth
    need = count - marked.sum(axis=-1)
    if (tied.sum(axis=-1) == need).all():
        return marked | tied
    rows, cols = np.nonzero(tied)  # row-major: by row, then column
    order = np.lexsort((cols, magnitude[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)  # position among its row's tied elements
    take = rank < need[rows]
    marked[rows[take], cols[take]] = True
    return marked


def wanda_mask(weights: np.ndarray, activation: np.ndarray, sparsity: float) -> np.ndarray:
    """Wanda: per row of 2-D `weights`, the floor(s * columns + 0.5) lowest |w| * sqrt(E[x^2]); NaN never pruned."""
    magnitude = np.abs(weights.astype(np.float64))
    score = magnitude * np.sqrt(activation.astype(np.float64))
    nan = np.isnan(score)
    score[nan] = np.inf
    magnitude[nan] = np.inf
    return _lowest(score, magnitude, _target_count(sparsity, weights.shape[1])) & ~nan


def _upper_cholesky_of_inverse(hessian: np.ndarray) -> np.ndarray:
    """U with U^T U = H^-1 (upper triangular): row c of U, from c on, is the OBS update of eliminating column c.

    With J the order reversal and J H J = L L^T: H^-1 = (J L^-1 J)^T (J L^-1 J), and J L^-1 J is upper triangular
    with a positive diagonal, so it is U (one Cholesky and one triangular inverse instead of two of each).
    """
    lower = np.linalg.cholesky(np.ascontiguousarray(hessian[::-1, ::-1]))
    return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix, by halves ([[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]),
    so nearly all the work is matrix products: a third of a general inverse's."""
    n = lower.shape[0]
    if n <= 256:
        return np.tril(np.linalg.inv(lower))
    half = n // 2
    a_inv, d_inv = _lower_inverse(lower[:half, :half]), _lower_inverse(lower[half:, half:])
    out = np.zeros_like(lower)
    out[:half, :half] = a_inv
    out[half:, half:] = d_inv
    out[half:, :half] = -d_inv @ (lower[half:, :half] @ a_inv)
    return out


def sparsegpt(weights: np.ndarray, hessian: np.ndarray, sparsity: float, block: int = BLOCK,
              percdamp: float = PERCDAMP) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on a 2-D weight [out, in] with H = X^T X / n ([in, in]): (the updated weights, the pruned mask).

    Columns are eliminated left to right; the error of zeroing a column's pruned weights is spread over the columns
    still to come (OBS), within a block at once and to later blocks in one matrix product. Each block of `block`
    columns chooses its own mask (the paper's adaptive mask): the lowest w^2 / U_cc^2 over the whole block, on the
    weights as updated so far, with per-block counts that add up to floor(s * n + 0.5). Dead inputs (H_cc = 0) get
    H_cc = 1 and their weights zeroed, as the reference does: the layer never sees them. Raises
    numpy.linalg.LinAlgError when H + damping is not positive definite.
    """
    w = weights.astype(np.float64, copy=True)
    h = hessian.astype(np.float64, copy=True)
    h = (h + h.T) / 2
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if cols:
        h[np.diag_indices(cols)] += percdamp * float(np.mean(np.diag(h)))
    u = _upper_cholesky_of_inverse(h)
    mask = np.zeros(w.shape, dtype=bool)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        count = _target_count(sparsity, rows * stop) - _target_count(sparsity, rows * start)
        mask[:, start:stop] = _block_mask(w[:, start:stop], np.diag(u)[start:stop], count)
        err = _eliminate(w[:, start:stop], u[start:stop, start:stop], mask[:, start:stop])
        w[:, stop:] -= err @ u[start:stop, stop:]
    return w, mask


def _block_mask(w: np.ndarray, diag: np.ndarray, count: int) -> np.ndarray:
    """The `count` weights of a block with the lowest OBS cost w^2 / U_cc^2 (ranked as |w| / U_cc), over all rows."""
    magnitude = np.abs(w).reshape(1, -1)
    return _lowest(magnitude / np.tile(diag, w.shape[0])[None, :], magnitude, count).reshape(w.shape)


def _eliminate(w: np.ndarray, u: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero the masked weights of a block column by column (in place), updating the columns to its right; the scaled
    errors (w - q) / U_cc per column, for the update of later blocks."""
    err = np.zeros_like(w)
    for c in range(w.shape[1]):
        q = np.where(mask[:, c], 0.0, w[:, c])
        err[:, c] = (w[:, c] - q) / u[c, c]
        w[:, c + 1:] -= np.outer(err[:, c], u[c, c + 1:])
        w[:, c] = q
    return err


def _side(stream: Dense, name: str, criterion: str, shape: tuple[int, ...]) -> np.ndarray:
    """The side input `name`, checked (dcframe.require_side), with this stage's place in the message."""
    where = f"prune: criterion '{criterion}' on a tensor of shape {list(stream.array.shape)}"
    return require_side(stream, name, where, shape)


class Prune(Stage):
    """Pruning: zero the weights that matter least, by magnitude (default) or from calibration data (wanda, sparsegpt).

    Parameters: `sparsity` (fraction of zeros to reach, 0..1) or `threshold` (absolute magnitude), exactly one;
    `scope` "tensor" (each tensor reaches the sparsity) or "global" (one threshold for every tensor of the chain,
    found by `fit`, which then returns a stage configured with that threshold); `criterion` "magnitude" (|w|),
    "wanda" (|w| * sqrt(E[x^2]) per output row; reads the `activation` side input) or "sparsegpt" (OBS pruning that
    also updates the kept weights; reads `hessian`; 2-D weights only). The data-aware criteria take a `sparsity`
    with scope "tensor" only.
    """

    id = "prune"
    takes = ("dense",)
    gives = {"data": "dense"}
    lossy = True
    imposes = frozenset({"zeros"})

    def __init__(self, sparsity: float | None = None, threshold: float | None = None, scope: str = "tensor",
                 criterion: str = "magnitude"):
        if (sparsity is None) == (threshold is None):
            raise ValueError("give exactly one of sparsity (fraction of zeros) or threshold (absolute magnitude)")
        for name, value in (("sparsity", sparsity), ("threshold", threshold)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if sparsity is not None and not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be between 0 and 1, got {sparsity!r}")
        if threshold is not None and not threshold >= 0.0:  # also rejects NaN
            raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if criterion != "magnitude" and (threshold is not None or scope != "tensor"):
            raise ValueError(f"criterion {criterion!r} ranks weights within each tensor by calibration data: it takes "
                             f"a sparsity with scope 'tensor', not a threshold or scope 'global'")
        self.sparsity = None if sparsity is None else float(sparsity)
        self.threshold = None if threshold is None else float(threshold)
        self.scope = scope
        self.criterion = criterion

    def get_config(self) -> dict:
        """The config; `criterion` only when it is not "magnitude", so magnitude files stay as they always were."""
        config = super().get_config()
        if self.criterion == "magnitude":
            del config["criterion"]
        return config

    def fit(self, streams: Callable[[], Iterable[Dense]]) -> Prune:
        """For scope=global with a sparsity: the stage with the one absolute threshold that reaches it over all."""
        plan = self.fit_plan()
        return self if plan is None else run_fit_plan(plan, streams)

    def fit_plan(self) -> FitPlan | None:
        """`fit` as passes an executor can run where the tensors are (threshold_plan); None unless it fits."""
        if self.scope != "global" or self.sparsity is None:
            return None
        return self._fitted(threshold_plan(self.sparsity))

    @staticmethod
    def _fitted(plan: FitPlan) -> FitPlan:
        threshold = yield from plan
        return Prune(threshold=threshold, scope="global")

    def encode(self, stream: Dense) -> tuple[dict[str, Dense], dict]:
        if not is_float(stream.dtype):
            raise ConfigError(f"prune: approximates float tensors only, got {stream.dtype}")
        if self.criterion == "wanda":
            out = self._wanda(stream)
        elif self.criterion == "sparsegpt":
            out = self._sparsegpt(stream)
        else:
            out = self._magnitude(stream)
        return {"data": out}, {}

    def _magnitude(self, stream: Dense) -> Dense:
        """Zero every |w| <= t, t the threshold or the k-th smallest magnitude; survivors keep their bits."""
        magnitudes = _magnitudes(stream)
        if self.threshold is not None:
            threshold = self.threshold
        elif self.scope == "global":
            raise ConfigError("prune: scope=global with a sparsity must be fitted over every tensor first "
                              "(dcframe.compress does this); or give an absolute threshold")
        else:
            valid = magnitudes[~np.isnan(magnitudes)]
            k = min(_target_count(self.sparsity, magnitudes.size), valid.size)
            threshold = _kth_smallest(valid, k) if k else 0.0
        limit = magnitudes.dtype.type(threshold) if magnitudes.dtype == np.float64 else _float32_at_most(threshold)
        return _zeroed(stream, stream.array, (magnitudes <= limit).reshape(stream.array.shape))

    def _wanda(self, stream: Dense) -> Dense:
        """Zero each row's lowest |w| * sqrt(activation) (and every zero); survivors keep their bits."""
        activation = _side(stream, ACTIVATION, self.criterion, stream.array.shape)
        if (activation < 0).any():
            raise ConfigError(f"prune: criterion 'wanda' on a tensor of shape {list(stream.array.shape)}: side input "
                              f"'activation' (a second moment E[x^2]) has negative entries")
        values = stream.values()
        mask = wanda_mask(_rows(values), _rows(activation), self.sparsity) | (_rows(values) == 0)
        return _zeroed(stream, stream.array, mask.reshape(stream.array.shape))

    def _sparsegpt(self, stream: Dense) -> Dense:
        """OBS-prune a 2-D weight from its Hessian; the kept weights move and are rounded back to the dtype."""
        shape = stream.array.shape
        if len(shape) != 2:
            raise ConfigError(f"prune: criterion 'sparsegpt' works on 2-D weights [out, in]; this tensor has shape "
                              f"{list(shape)}: give it another chain with a rule (criterion='wanda' or 'magnitude')")
        values = stream.values()
        if not np.isfinite(values).all():
            raise ConfigError(f"prune: criterion 'sparsegpt' on a tensor of shape {list(shape)}: the weights hold NaN "
                              f"or infinity, which the updates of the kept weights would spread to every weight")
        hessian = _side(stream, HESSIAN, self.criterion, (shape[1], shape[1]))
        try:
            updated, mask = sparsegpt(values, hessian, self.sparsity)
        except np.linalg.LinAlgError:
            raise ConfigError(f"prune: criterion 'sparsegpt' on a tensor of shape {list(shape)}: side input "
                              f"'hessian' is not positive semi-definite (not an X^T X / n)") from None
        moved = stream.with_values(updated)
        return _zeroed(stream, moved.array, mask | (moved.values() == 0))

    def decode(self, streams: dict[str, Dense], meta: dict) -> Dense:
        """The zeros are already in the stream: decoding is the identity."""
        data = streams.get("data")
        if not isinstance(data, Dense):
            raise FormatError("prune: expects one dense stream 'data'")
        return data


def _zeroed(stream: Dense, array: np.ndarray, pruned: np.ndarray) -> Dense:
    """A copy of `array` (the stream's carrier) with +0.0 at `pruned` (all bits zero, BF16 too), side inputs kept."""
    array = array.copy()
    array[pruned] = 0
    return Dense(array, stream.dtype, stream.side)


@hookimpl
def dcframe_stages():
    return [Prune]
