"""The `kmeans` stage: per-tensor 1-D k-means weight sharing (Deep Compression, section 3), dense -> symbols.

Each float tensor becomes indices into a small codebook of shared values. The codebook travels in the metadata in
the tensor's own dtype, so decoding is a table lookup and re-encoding a decoded tensor gives the same bytes.

The clustering runs on the sorted values: Lloyd's step finds cluster boundaries (midpoints between sorted centroids)
with a binary search and each cluster's mean from prefix sums, O(k log n) per iteration after one O(n log n) sort.
The default (`init="compander"`, `method="refine"`) starts from the high-resolution optimum's centroid density and,
after Lloyd, moves all boundaries at once by a dynamic program over a few candidate positions each (see refine_1d):
Lloyd alone stops in poor local optima on 10^6 weights. `method="optimal"` finds the exact optimum by dynamic
programming over the distinct values (see OPTIMAL_MAX_*). With `weighting`, every value counts with an importance
from the tensor's side inputs (stage.py), and all of it minimizes sum_i h_i (x_i - c(x_i))^2 instead.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from dcframe import ConfigError, Dense, FormatError, Stage, Symbols, check_output, check_shape, hookimpl, numpy_dtype
from dcframe.core.dtypes import from_float, to_float

MAX_CLUSTERS = 1 << 16
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INITS = ("compander", "linear", "density", "random", "kmeans++")
METHODS = ("refine", "lloyd", "optimal")
WEIGHTINGS = ("none", "activation", "fisher")  # "activation" and "fisher" name side inputs (dcframe.core.streams)
WEIGHT_FLOOR = 1e-3  # every weight gets this times the mean weight added, so no value is ignored entirely
# method="refine": each round is a dynamic program over REFINE_CANDIDATES positions per boundary; it stops when a round
# gains less than REFINE_GAIN of the SSE, after REFINE_ROUNDS rounds, and is skipped above REFINE_MAX_CLUSTERS clusters
# (a round costs a few numpy calls per cluster).
REFINE_CANDIDATES = 17
REFINE_ROUNDS = 40
REFINE_GAIN = 1e-6
REFINE_MAX_CLUSTERS = 4096
# method="optimal" keeps a k x m table of back-pointers (int32) over the m distinct values: bound m and k * m.
OPTIMAL_MAX_DISTINCT = 1 << 16
OPTIMAL_MAX_CELLS = 1 << 24
MAX_SEED = (1 << 53) - 1
ASSIGN_TABLE_MIN = 1 << 15  # below this, a plain binary search per value is as fast


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


class Kmeans(Stage):
    """Share weights: replace each float by the nearest of 2^`bits` (or `clusters`) centroids found by 1-D k-means.

    Parameters: `bits` (default 8) or `clusters` (give one); `init` ("compander" (default), "linear" (the paper's,
    when retraining follows), "density", "random", "kmeans++"); `max_iter` and `tol` (Lloyd stops when no centroid
    moves more than tol * (max - min)); `seed` for random inits; `method` ("refine" (default: Lloyd, then boundary
    moves by dynamic programming, near-optimal), "lloyd", or "optimal" for the exact optimum on tensors with few
    distinct values); `weighting` ("none", "activation", "fisher": weight each value by that side input).
    """

    id = "kmeans"
    version = 1
    takes = ("dense",)
    gives = {"indices": "symbols"}
    lossy = True
    imposes = frozenset({"shared"})

    def __init__(self, bits: int | None = None, clusters: int | None = None, init: str = "compander",
                 max_iter: int = 300, tol: float = 0.0, seed: int = 0, method: str = "refine",
                 weighting: str = "none") -> None:
        if bits is not None and clusters is not None:
            raise ValueError("give bits or clusters, not both")
        if clusters is None:
            self.bits: int | None = _int("bits", 8 if bits is None else bits, 1, 16)
            self.clusters: int | None = None
        else:
            self.bits = None
            self.clusters = _int("clusters", clusters, 1, MAX_CLUSTERS)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.init = init
        self.max_iter = _int("max_iter", max_iter, 0, 1 << 20)
        self.tol = float(tol)
        self.seed = _int("seed", seed, 0, MAX_SEED)
        self.method = method
        self.weighting = weighting

    def get_config(self) -> dict[str, Any]:
        """Every parameter; `weighting` only when not "none", so files written before it existed read the same."""
        config = super().get_config()
        if self.weighting == "none":
            del config["weighting"]
        return config

    @property
    def k(self) -> int:
        """The number of clusters asked for."""
        return self.clusters if self.clusters is not None else 1 << self.bits

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols], dict[str, Any]]:
        if stream.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"stage 'kmeans' only shares float weights, got a {stream.dtype} tensor")
        weights = None if self.weighting == "none" else side_weights(stream, self.weighting)
        codebook, indices = quantize(stream, self.k, init=self.init, max_iter=self.max_iter, tol=self.tol,
                                     seed=self.seed, method=self.method, weights=weights)
        meta = {"dtype": stream.dtype, "shape": list(stream.array.shape), "codebook": codebook.tobytes()}
        return {"indices": Symbols(indices, int(codebook.size))}, meta

    def decode(self, streams: dict[str, Symbols], meta: dict[str, Any]) -> Dense:
        dtype_name, dtype, shape, count = float_layout(self.id, meta)
        book = meta.get("codebook")
        if not isinstance(book, (bytes, bytearray)):
            raise FormatError(f"kmeans: codebook must be bin, got {type(book).__name__}")
        if len(book) % dtype.itemsize or not 0 < len(book) // dtype.itemsize <= MAX_CLUSTERS:
            raise FormatError(f"kmeans: codebook of {len(book)} bytes is not 1 to {MAX_CLUSTERS} {dtype_name} values")
        codebook = np.frombuffer(book, dtype=dtype)
        stream = streams.get("indices")
        if not isinstance(stream, Symbols) or not isinstance(stream.array, np.ndarray):
            raise FormatError("kmeans: the indices stream is missing or not symbols")
        indices = stream.array
        if indices.ndim != 1 or indices.dtype.kind not in "ui":
            raise FormatError(f"kmeans: indices must be a 1-D integer array, got {indices.dtype}{list(indices.shape)}")
        if count != indices.size:
            raise FormatError(f"kmeans: shape {shape} holds {count} values, the indices stream has {indices.size}")
        if indices.size and (int(indices.max()) >= codebook.size or int(indices.min()) < 0):
            raise FormatError(f"kmeans: index {int(indices.max())} is outside the codebook of {codebook.size}")
        check_output(self.id, count * dtype.itemsize, f"tensor of shape {shape}")  # before the lookup allocates it
        return Dense(codebook[indices].reshape(shape), dtype_name)


def float_layout(stage_id: str, meta: dict[str, Any]) -> tuple[str, np.dtype, list[int], int]:
    """A codebook stage's meta `dtype` (a float dtype) and `shape`, checked (FormatError naming `stage_id`): the
    dtype's name, its numpy dtype, the shape and its element count."""
    dtype_name = meta.get("dtype")
    if dtype_name not in FLOAT_DTYPES:
        raise FormatError(f"{stage_id}: dtype {dtype_name!r} is not one of {', '.join(FLOAT_DTYPES)}")
    shape = meta.get("shape")
    return dtype_name, numpy_dtype(dtype_name), shape, check_shape(stage_id, shape)


def side_weights(stream: Dense, name: str) -> np.ndarray:
    """The importance of each element from the side input `name`: flat float64, finite and >= 0, else ConfigError."""
    side = stream.side.get(name)
    if side is None:
        raise ConfigError(f"stage 'kmeans': weighting={name!r} needs the {name!r} side input, and this tensor has "
                          f"none: pass a calibration covering it (--calibration FILE, or compress(..., calibration=))")
    side = np.asarray(side)
    if side.shape != stream.array.shape or side.dtype.kind not in "fiub":
        raise ConfigError(f"stage 'kmeans': the {name!r} side input must be numbers of the tensor's shape "
                          f"{list(stream.array.shape)}, got {side.dtype}{list(side.shape)}")
    weights = side.astype(np.float64).reshape(-1)
    if weights.size and not (np.isfinite(weights).all() and weights.min() >= 0):
        raise ConfigError(f"stage 'kmeans': the {name!r} side input must be finite and >= 0; it holds "
                          f"{'NaN or infinity' if not np.isfinite(weights).all() else 'negative values'}")
    return weights


def normalize_weights(weights: np.ndarray) -> np.ndarray | None:
    """Importances scaled to a maximum of 1, plus WEIGHT_FLOOR times their mean (no value is ignored entirely);
    None (unweighted) when they are all zero or all equal."""
    top = float(weights.max()) if weights.size else 0.0
    if not top > 0 or float(weights.min()) == top:
        return None
    h = weights / top
    return h + WEIGHT_FLOOR * float(h.mean())


def quantize(stream: Dense, k: int, init: str = "compander", max_iter: int = 300, tol: float = 0.0, seed: int = 0,
             method: str = "refine", weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster a float tensor into at most k shared values: (codebook in the tensor's carrier dtype, flat indices).

    `weights` (flat, finite, >= 0; see normalize_weights) make the clustering minimize the weighted squared error.
    The codebook is sorted ascending, without duplicates and without unused entries; a tensor with at most k
    distinct values (bit patterns) gets exactly those, so quantize is idempotent on its own output.
    """
    values = stream.values().reshape(-1)
    carrier = numpy_dtype(stream.dtype)
    if values.size == 0:
        return np.zeros(1, dtype=carrier), np.zeros(0, dtype=np.uint8)
    h = None if weights is None else normalize_weights(weights)
    if h is None:
        xs = values.astype(np.float64)
        xs.sort()
    else:
        order = np.argsort(values, kind="stable")
        xs, h = values[order].astype(np.float64), h[order]
        del order
    if not (np.isfinite(xs[0]) and np.isfinite(xs[-1])):
        raise ConfigError("stage 'kmeans' (lossy) only accepts finite values; the tensor holds NaN or infinity")
    distinct = 1 + int(np.count_nonzero(xs[1:] != xs[:-1]))
    # Signs of zeros from the input: numpy's vectorized sort may return +0.0 for -0.0 (min/max sorting networks).
    zeros = int(np.searchsorted(xs, 0.0, side="right") - np.searchsorted(xs, 0.0, side="left"))
    negative = int(np.count_nonzero(np.signbit(values[values == 0]))) if zeros else 0
    signed_zeros = 0 < negative < zeros
    if distinct + signed_zeros <= k or method == "optimal":
        starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1]))) if distinct <= OPTIMAL_MAX_DISTINCT \
            else None
        if distinct + signed_zeros <= k:
            return _exact(values, xs[starts], signed_zeros, stream.dtype)
    # Work in a scaled (power of two: exact) and shifted frame so prefix sums neither overflow nor lose precision.
    low, high = float(xs[0]), float(xs[-1])
    exponent = math.frexp(max(abs(low), abs(high)))[1]
    xs *= 2.0 ** -exponent
    shift = float(xs[xs.size // 2])
    xs -= shift
    if method == "optimal":
        if starts is None:
            optimal_1d(np.zeros(distinct), np.ones(distinct), k)  # raises the ConfigError naming the limits
        counts = np.diff(np.append(starts, xs.size)) if h is None else np.add.reduceat(h, starts)
        centroids = optimal_1d(xs[starts], counts, k)
    else:
        prefix = _Prefix(xs, h)
        centroids = lloyd_1d(xs, init_centroids(xs, k, init, seed, h), max_iter, tol, h, prefix)
        if method == "refine" and k <= REFINE_MAX_CLUSTERS:
            centroids = refine_1d(xs, centroids, h, prefix=prefix)
        del prefix
    del xs, h
    centroids = np.clip((centroids + shift) * 2.0 ** exponent, low, high)
    # Round the centroids to the tensor's dtype, merge equal ones, assign each value to the nearest, drop unused.
    book = np.unique(to_float(from_float(centroids, stream.dtype), stream.dtype).astype(np.float64))
    indices = assign(values, book)
    used = np.bincount(indices, minlength=book.size) > 0
    if not used.all():
        indices = (np.cumsum(used) - 1)[indices]
        book = book[used]
    return from_float(book, stream.dtype).astype(carrier), indices.astype(_index_dtype(book.size))


def _exact(values: np.ndarray, distinct: np.ndarray, signed_zeros: bool, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The lossless case: the codebook is the sorted distinct values (-0.0 before +0.0 when both occur)."""
    indices = _assign_by_table(values, distinct) if values.size >= ASSIGN_TABLE_MIN else None
    indices = np.searchsorted(distinct, values) if indices is None else indices - 1  # every value is in `distinct`
    if signed_zeros:
        z = int(np.searchsorted(distinct, 0.0))
        positive_zero = (values == 0) & ~np.signbit(values)
        indices = indices + (indices > z) + positive_zero
        distinct = np.insert(distinct, z, -0.0)
        distinct[z + 1] = 0.0
    carrier = numpy_dtype(dtype)
    return from_float(distinct, dtype).astype(carrier), indices.astype(_index_dtype(distinct.size))


def _index_dtype(size: int) -> np.dtype:
    return np.dtype(np.uint8 if size <= 256 else np.uint16 if size <= 65536 else np.uint32)


def assign(values: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted `book` for each value; a value on a midpoint goes to the upper one."""
    mids = 0.5 * book[:-1] + 0.5 * book[1:]
    if values.size >= ASSIGN_TABLE_MIN:
        labels = _assign_by_table(values, mids)
        if labels is not None:
            return labels
    return np.searchsorted(mids, values.astype(np.float64, copy=False), side="right")


def _assign_by_table(values: np.ndarray, mids: np.ndarray) -> np.ndarray | None:
    """searchsorted(mids, values, "right") through a table over equal-width bins: one lookup per value, and a binary
    search only for values in bins within one bin of a midpoint. None when the bins are too narrow for the dtype."""
    if mids.size == 0 or not mids[-1] > mids[0]:
        return None
    nb = int(min(1 << 18, max(1 << 12, 8 * mids.size, values.size >> 6)))
    width = float(mids[-1] - mids[0]) / (nb - 4)
    ftype = np.float32 if values.dtype == np.float32 else np.float64
    start = float(ftype(float(mids[0]) - 2 * width))  # the same start for the table and the values' bins
    # A value's bin is off by at most 2 eps(ftype) nb < 1/16 bin; the table's float64 edges must be as accurate.
    if not 0 < width < math.inf or max(abs(start), abs(float(mids[-1]))) * np.finfo(np.float64).eps * 16 > width:
        return None
    mid_bins = np.floor((mids - start) / width).astype(np.int64)
    doubtful = np.zeros(nb, dtype=bool)
    for offset in (-1, 0, 1):
        doubtful[np.clip(mid_bins + offset, 0, nb - 1)] = True
    doubtful[0] = doubtful[-1] = True
    table = np.searchsorted(mids, start + np.arange(nb) * width, side="right") * 2 + doubtful
    table = table.astype(np.uint32 if mids.size < (1 << 30) else np.int64)
    t = (values - ftype(start)) * ftype(1 / width)
    np.clip(t, 0, nb - 1, out=t)
    labels = table[t.astype(np.int32)]
    check = np.flatnonzero(labels & 1)
    labels >>= 1
    labels[check] = np.searchsorted(mids, values[check].astype(np.float64), side="right")
    return labels


def init_centroids(xs: np.ndarray, k: int, init: str, seed: int, h: np.ndarray | None = None) -> np.ndarray:
    """Initial centroids for sorted values `xs` (more than k distinct, weights `h` or None): see INITS."""
    n = xs.size
    if init == "compander":
        return _compander(xs, k, h)
    if init == "linear":
        return np.linspace(xs[0], xs[-1], k)
    if init == "density":
        if h is None:
            return xs[np.minimum(((np.arange(k) + 0.5) * (n / k)).astype(np.int64), n - 1)]
        cum = np.cumsum(h)
        return xs[np.minimum(np.searchsorted(cum, (np.arange(k) + 0.5) * (cum[-1] / k)), n - 1)]
    rng = np.random.default_rng(seed)
    if init == "random":
        return np.sort(xs[rng.choice(n, size=k, replace=False)])
    return _kmeans_pp(xs, k, rng, h)


def _compander(xs: np.ndarray, k: int, h: np.ndarray | None) -> np.ndarray:
    """Centroids at the k quantiles of the density p^(1/3), the centroid density of the high-resolution optimum
    (Panter & Dite 1951); p is estimated on max(16k, 4096) bins of equal (weighted) count."""
    n = xs.size
    bins = int(min(n, max(16 * k, 4096)))
    if h is None:
        edges = xs[np.minimum((np.arange(bins + 1) * (n / bins)).astype(np.int64), n - 1)]
        mass = np.full(bins, n / bins)
    else:
        cum = np.concatenate(([0.0], np.cumsum(h)))
        at = np.minimum(np.searchsorted(cum, np.arange(bins + 1) * (cum[-1] / bins)), n - 1)
        at[-1] = n - 1
        edges = xs[at]
        mass = np.diff(cum[np.append(at[:-1], n)])
    density = np.cbrt(mass * np.square(np.diff(edges)))  # (mass / width)^(1/3) * width
    total = np.concatenate(([0.0], np.cumsum(density)))
    if not total[-1] > 0:
        return np.linspace(xs[0], xs[-1], k)
    return np.interp((np.arange(k) + 0.5) * (total[-1] / k), total, edges)


def _kmeans_pp(xs: np.ndarray, k: int, rng: np.random.Generator, h: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding (D^2 sampling, times the weights `h` if given) on sorted values, with block sums so each
    pick costs O(sqrt(n)) plus the values whose nearest centroid changes."""
    n = xs.size
    block = max(256, math.isqrt(n))
    first = int(rng.integers(n))
    d2 = np.square(xs - xs[first])
    if h is not None:
        d2 *= h
    sums = np.add.reduceat(d2, np.arange(0, n, block))
    chosen = [xs[first]]
    ordered = [float(xs[first])]
    for _ in range(k - 1):
        total = sums.sum()
        if not total > 0:
            break
        r = rng.random() * total
        cum = np.cumsum(sums)
        b = min(int(np.searchsorted(cum, r, side="right")), sums.size - 1)
        r -= cum[b - 1] if b else 0.0
        lo = b * block
        inner = np.cumsum(d2[lo:lo + block])
        i = lo + min(int(np.searchsorted(inner, r, side="right")), inner.size - 1)
        while d2[i] == 0 and i > lo:  # never pick a value that is already a centroid
            i -= 1
        c = float(xs[i])
        chosen.append(c)
        # Only values nearer to c than to their current centroid change; they lie between c's neighbours.
        pos = bisect.bisect_left(ordered, c)
        ordered.insert(pos, c)
        a = int(np.searchsorted(xs, 0.5 * ordered[pos - 1] + 0.5 * c, side="left")) if pos > 0 else 0
        z = int(np.searchsorted(xs, 0.5 * c + 0.5 * ordered[pos + 1], side="right")) if pos + 1 < len(ordered) else n
        np.minimum(d2[a:z], np.square(xs[a:z] - c) * (1.0 if h is None else h[a:z]), out=d2[a:z])
        first_block, last_block = a // block, (max(z, a + 1) - 1) // block
        starts = np.arange(first_block, last_block + 1) * block
        sums[first_block:last_block + 1] = np.add.reduceat(d2[starts[0]:min(n, (last_block + 1) * block)],
                                                           starts - starts[0])
    out = np.array(chosen)
    if out.size < k:  # only when every value is already a centroid (float underflow); Lloyd relocates the rest
        out = np.concatenate((out, np.full(k - out.size, out[-1])))
    return np.sort(out)


class _Prefix:
    """Prefix sums of sorted values (weights h or None): any contiguous group's (weighted) size and sum.

    A partition's squared error is sum(h x^2) - sum over its groups of S^2 / W (group sum S, weight W): the first
    term is the same for every partition, so comparing partitions needs no prefix sums of squares."""

    def __init__(self, xs: np.ndarray, h: np.ndarray | None) -> None:
        self.n = xs.size
        self.mass = None if h is None else np.concatenate(([0.0], np.cumsum(h)))
        self.sum = np.concatenate(([0.0], np.cumsum(xs if h is None else xs * h)))
        squares = np.square(xs)  # np.sum, not np.dot: a threaded BLAS may sum in another order from run to run
        self.squares = float(np.sum(squares if h is None else squares * h))

    def weight(self, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        return (i - j).astype(np.float64) if self.mass is None else self.mass[i] - self.mass[j]

    def sse(self, bounds: np.ndarray) -> float:
        """Squared error of the partition at `bounds` (k + 1 positions, no empty group) around its groups' means."""
        s = np.diff(self.sum[bounds])
        return max(self.squares - float(np.sum(s * s / self.weight(bounds[:-1], bounds[1:]))), 0.0)

    def means(self, bounds: np.ndarray) -> np.ndarray:
        return np.diff(self.sum[bounds]) / self.weight(bounds[:-1], bounds[1:])


def lloyd_1d(xs: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float = 0.0,
             h: np.ndarray | None = None, prefix: _Prefix | None = None) -> np.ndarray:
    """Lloyd's algorithm on sorted values (weights `h` or None): boundaries by binary search, (weighted) means by
    prefix sums (`prefix`, built here if not given), O(k log n) a step.

    Empty clusters take the values farthest from their centroids (see _relocate), as scikit-learn does. Stops after
    max_iter steps, when the partition no longer changes, or when no centroid moves more than tol * (max - min).
    """
    n, k = xs.size, centroids.size
    prefix = prefix or _Prefix(xs, h)
    c = np.sort(centroids)
    limit = tol * (xs[-1] - xs[0])
    bounds = np.empty(k + 1, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    previous = None
    for _ in range(max_iter):
        bounds[1:-1] = np.searchsorted(xs, 0.5 * c[:-1] + 0.5 * c[1:], side="left")
        if previous is not None and np.array_equal(bounds, previous):
            break
        previous = bounds.copy()
        counts = prefix.weight(bounds[:-1], bounds[1:])
        sums = np.diff(prefix.sum[bounds])
        if not (counts > 0).all():
            new = _relocate(xs, bounds, c, sums, counts, h)
        else:
            new = sums / counts
        moved = float(np.abs(new - c).max())
        c = new
        if moved <= limit:
            break
    return c


def _relocate(xs: np.ndarray, bounds: np.ndarray, c: np.ndarray, sums: np.ndarray, counts: np.ndarray,
              h: np.ndarray | None = None) -> np.ndarray:
    """New sorted centroids when some clusters are empty: as scikit-learn, the m empty ones take the m values farthest
    from their current centroid (ties: the lower value first), which leave their clusters; other clusters take means.
    With weights `h`, `sums` and `counts` are weighted and a value leaves with its weight.

    The m farthest values are found by bisecting on the distance: count(d) = values at distance >= d is a sum of
    binary searches at both ends of every cluster, so a step stays O(k log n).
    """
    empty = np.flatnonzero(~(counts > 0))
    full = np.flatnonzero(counts > 0)
    lo, hi, centre = bounds[:-1][full], bounds[1:][full], c[full]
    m = empty.size
    new = c.copy()

    def tails(d: float) -> tuple[np.ndarray, np.ndarray]:
        return (np.clip(np.searchsorted(xs, centre - d, side="right"), lo, hi),
                np.clip(np.searchsorted(xs, centre + d, side="left"), lo, hi))

    near, far = 0.0, float(np.maximum(centre - xs[lo], xs[hi - 1] - centre).max()) * 2 + 1e-300
    for _ in range(80):  # largest d with at least m values at distance >= d
        d = 0.5 * (near + far)
        if not near < d < far:
            break
        below, above = tails(d)
        found = int((below - lo).sum() + (hi - above).sum())
        if found >= m:
            near = d
            if found == m:
                break
        else:
            far = d
    below, above = tails(near)
    size = np.concatenate((below - lo, hi - above))
    first = np.concatenate((lo, above))
    owner = np.repeat(np.tile(np.arange(full.size), 2), size)
    index = np.repeat(first - np.concatenate(([0], np.cumsum(size)[:-1])), size) + np.arange(int(size.sum()))
    distance = np.abs(xs[index] - centre[owner])
    order = np.lexsort((xs[index], -distance))[:m]
    taken, owner = index[order], owner[order]
    taken_mass = 1.0 if h is None else h[taken]
    np.subtract.at(sums, full[owner], xs[taken] * taken_mass)
    np.subtract.at(counts, full[owner], taken_mass)
    keep = counts > 0
    new[keep] = sums[keep] / counts[keep]
    new[empty[:taken.size]] = xs[taken]
    return np.sort(new)




def refine_1d(xs: np.ndarray, centroids: np.ndarray, h: np.ndarray | None = None,
              rounds: int = REFINE_ROUNDS, prefix: _Prefix | None = None) -> np.ndarray:
    """Improve Lloyd's centroids on sorted values: each round, every boundary between clusters gets candidate
    positions spread between its neighbours' (denser near its own), and a dynamic program over the clusters picks
    the best combination of them, exactly; then Lloyd polishes. Lloyd moves one boundary at a time by small steps and
    stops in local optima; this moves them all at once. A round never raises the (weighted) SSE; O(k W^2), W =
    REFINE_CANDIDATES, per round. Stops when a round gains less than REFINE_GAIN of the SSE.
    """
    k = centroids.size
    if k < 2:
        return centroids
    prefix = prefix or _Prefix(xs, h)
    bounds = _bounds(xs, centroids)
    if not (prefix.weight(bounds[:-1], bounds[1:]) > 0).all():
        return centroids  # an empty cluster (Lloyd stopped at max_iter): nothing to refine from
    best = prefix.sse(bounds)
    half = REFINE_CANDIDATES // 2
    steps = np.linspace(0.0, 1.0, half + 1)[1:] ** 2 * 0.999  # fractions of the way to a neighbour's boundary
    for _ in range(rounds):
        own = bounds[1:-1]
        below = own[:, None] - np.round((own - bounds[:-2])[:, None] * steps).astype(np.int64)
        above = own[:, None] + np.round((bounds[2:] - own)[:, None] * steps).astype(np.int64)
        candidates = np.concatenate((own[:, None], below, above), axis=1)  # (k - 1, W); own position first
        trial = _best_bounds(prefix, candidates)
        sse = prefix.sse(trial)
        polished = _bounds(xs, lloyd_1d(xs, prefix.means(trial), 50, 0.0, h, prefix))
        if (prefix.weight(polished[:-1], polished[1:]) > 0).all() and prefix.sse(polished) < sse:
            trial, sse = polished, prefix.sse(polished)
        if not sse < best:
            break
        gain = (best - sse) / best
        bounds, best = trial, sse
        if gain < REFINE_GAIN:
            break
    return prefix.means(bounds)


def _bounds(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster boundaries (k + 1 positions in xs) of the nearest-centroid partition."""
    c = np.sort(centroids)
    return np.concatenate(([0], np.searchsorted(xs, 0.5 * c[:-1] + 0.5 * c[1:], side="left"), [xs.size]))


def _best_bounds(prefix: _Prefix, candidates: np.ndarray) -> np.ndarray:
    """The minimum-SSE boundaries choosing boundary c among candidates[c - 1]: dynamic programming over c, one
    (W x W) min-plus step per cluster. Ties keep the earlier candidate (the current position comes first)."""
    k1, width = candidates.shape
    ends = np.concatenate((np.zeros((1, width), dtype=np.int64), candidates, np.full((1, width), prefix.n)))
    mass, total = prefix.weight(np.zeros(1, dtype=np.int64), ends), prefix.sum[ends]
    # Cluster c (0..k1) runs from candidate a of boundary c (row c of ends) to candidate b of boundary c + 1; its
    # cost is -S^2 / W (see _Prefix), stored as steps[c, b, a]. Empty clusters are not allowed.
    w = mass[1:, :, None] - mass[:-1, None, :]
    s = total[1:, :, None] - total[:-1, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(w > 0, -s * s / w, np.inf)
    best = steps[0, :, 0]  # from position 0 (every candidate of row 0 is 0) to each candidate of boundary 1
    back = np.zeros((k1 + 1, width), dtype=np.intp)
    columns = np.arange(width)
    for c in range(1, k1 + 1):
        table = steps[c] + best
        back[c] = table.argmin(axis=1)
        best = table[columns, back[c]]
    bounds = np.empty(k1 + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, prefix.n
    pick = int(back[k1, 0])  # every candidate of the last row is n
    for c in range(k1 - 1, -1, -1):
        bounds[c + 1] = candidates[c, pick]
        pick = int(back[c, pick])
    return bounds


def optimal_1d(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The exact minimum-SSE k centroids of sorted distinct `values` with counts `weights` (more than k of them).

    Dynamic programming over prefix sums, one layer per cluster; each layer uses the monotone split points
    (divide and conquer, all subproblems of one depth at once): O(k m log m) time, a k x m int32 table.
    """
    m = values.size
    if m > OPTIMAL_MAX_DISTINCT or k * m > OPTIMAL_MAX_CELLS:
        raise ConfigError(f"stage 'kmeans': method='optimal' takes at most {OPTIMAL_MAX_DISTINCT} distinct values and "
                          f"clusters x distinct values <= {OPTIMAL_MAX_CELLS}; this tensor has {m} distinct values "
                          f"for {k} clusters: use method='lloyd'")
    w = weights.astype(np.float64)
    W = np.concatenate(([0.0], np.cumsum(w)))
    S = np.concatenate(([0.0], np.cumsum(w * values)))
    Q = np.concatenate(([0.0], np.cumsum(w * values * values)))

    def cost(j: np.ndarray, i: np.ndarray) -> np.ndarray:
        s = S[i] - S[j]
        return np.maximum(Q[i] - Q[j] - s * s / (W[i] - W[j]), 0.0)

    rows = np.arange(m + 1)
    previous = np.full(m + 1, np.inf)
    previous[1:] = cost(np.zeros(m, dtype=np.int64), rows[1:])
    back = np.zeros((k, m + 1), dtype=np.uint16 if m <= 65536 else np.int32)
    for c in range(2, k + 1):
        current = np.full(m + 1, np.inf)
        lo = np.array([m if c == k else c])
        hi = np.array([m])
        opt_lo = np.array([c - 1])
        opt_hi = np.array([m - 1])
        while lo.size:
            mid = (lo + hi) // 2
            top = np.minimum(opt_hi, mid - 1)
            lens = top - opt_lo + 1
            seg = np.concatenate(([0], np.cumsum(lens)[:-1]))
            total = int(lens.sum())
            flat = np.arange(total)
            j = np.repeat(opt_lo - seg, lens) + flat
            val = previous[j] + cost(j, np.repeat(mid, lens))
            best_val = np.minimum.reduceat(val, seg)
            first = np.minimum.reduceat(np.where(val == np.repeat(best_val, lens), flat, total), seg)
            best = j[first]
            current[mid] = best_val
            back[c - 1, mid] = best
            go_left, go_right = lo <= mid - 1, mid + 1 <= hi
            lo = np.concatenate((lo[go_left], (mid + 1)[go_right]))
            hi = np.concatenate(((mid - 1)[go_left], hi[go_right]))
            opt_lo, opt_hi = (np.concatenate((opt_lo[go_left], best[go_right])),
                              np.concatenate((best[go_left], opt_hi[go_right])))
        previous = current
    ends = [m]
    for c in range(k, 1, -1):
        ends.append(int(back[c - 1, ends[-1]]))
    ends.append(0)
    ends = np.array(ends[::-1])
    return (S[ends[1:]] - S[ends[:-1]]) / (W[ends[1:]] - W[ends[:-1]])


@hookimpl
def dcframe_stages():
    return [Kmeans]
