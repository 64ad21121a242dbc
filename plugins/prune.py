"""The `prune` stage: magnitude pruning (Deep Compression, step 1), per tensor or with one threshold for a whole chain.

Rule (spec/stages/prune.md): every weight with |w| <= t is set to +0.0, where t is either the configured `threshold`
or, for a target `sparsity` s over n elements, the k-th smallest non-NaN magnitude with k = floor(s * n + 0.5)
(t = 0 when k = 0). Ties at t are all pruned, so the achieved sparsity is at least the target and exceeds it only by
the weights tied at t; NaN is never pruned. Because zeros have the smallest magnitude, pruning an already pruned (and
retrained: zeros kept, survivors non-zero) tensor with the same sparsity zeroes exactly the same positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from dcframe import ConfigError, Dense, FormatError, Stage, hookimpl
from dcframe.dtypes import is_float

SCOPES = ("tensor", "global")
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
    total = valid = 0
    for stream in streams():
        total += int(stream.array.size)
        valid += int(_keys(stream).size)
    k = min(_target_count(sparsity, total), valid)  # NaN is never pruned
    if k == 0:
        return 0.0
    prefix, shift = 0, 64
    while shift > 0:
        shift -= _BIN_BITS
        hist = np.zeros(1 << _BIN_BITS, dtype=np.int64)
        for keys in _matching(streams, prefix, shift + _BIN_BITS):
            hist += np.bincount((keys >> np.uint64(shift)) & np.uint64((1 << _BIN_BITS) - 1),
                                minlength=1 << _BIN_BITS)
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, k))  # the first bin whose running count reaches k
        k -= int(cum[digit - 1]) if digit else 0
        prefix = (prefix << _BIN_BITS) | digit
        if shift and hist[digit] <= _COLLECT:
            candidates = np.concatenate([np.zeros(0, np.uint64), *_matching(streams, prefix, shift)])
            return float(np.partition(candidates, k - 1)[k - 1:k].view(np.float64)[0])
    return float(np.array([prefix], dtype=np.uint64).view(np.float64)[0])


def _matching(streams: Callable[[], Iterable[Dense]], prefix: int, shift: int) -> Iterator[np.ndarray]:
    """The keys of every stream whose bits above `shift` equal `prefix`."""
    for stream in streams():
        keys = _keys(stream)
        if shift < 64:
            keys = keys[(keys >> np.uint64(shift)) == np.uint64(prefix)]
        yield keys


class Prune(Stage):
    """Magnitude pruning: zero every weight with |w| <= threshold, given directly or found for a target `sparsity`.

    Parameters: `sparsity` (fraction of zeros to reach, 0..1) or `threshold` (absolute magnitude), exactly one;
    `scope` "tensor" (each tensor reaches the sparsity) or "global" (one threshold for every tensor of the chain,
    found by `fit`, which then returns a stage configured with that threshold).
    """

    id = "prune"
    takes = ("dense",)
    gives = {"data": "dense"}
    lossy = True
    imposes = frozenset({"zeros"})

    def __init__(self, sparsity: float | None = None, threshold: float | None = None, scope: str = "tensor"):
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
        self.sparsity = None if sparsity is None else float(sparsity)
        self.threshold = None if threshold is None else float(threshold)
        self.scope = scope

    def fit(self, streams: Callable[[], Iterable[Dense]]) -> Prune:
        """For scope=global with a sparsity: the stage with the one absolute threshold that reaches it over all."""
        if self.scope != "global" or self.sparsity is None:
            return self
        return Prune(threshold=global_threshold(streams, self.sparsity), scope="global")

    def encode(self, stream: Dense) -> tuple[dict[str, Dense], dict]:
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
        pruned = (magnitudes <= limit).reshape(stream.array.shape)
        array = stream.array.copy()
        array[pruned] = 0  # +0.0 for every float carrier, BF16 bit patterns included
        return {"data": Dense(array, stream.dtype, stream.side)}, {}

    def decode(self, streams: dict[str, Dense], meta: dict) -> Dense:
        """The zeros are already in the stream: decoding is the identity."""
        data = streams.get("data")
        if not isinstance(data, Dense):
            raise FormatError("prune: expects one dense stream 'data'")
        return data


@hookimpl
def dcframe_stages():
    return [Prune]
