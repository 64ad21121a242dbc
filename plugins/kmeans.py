"""The `kmeans` stage: per-tensor 1-D k-means weight sharing (Deep Compression, section 3), dense -> symbols.

Each float tensor becomes indices into a small codebook of shared values. The codebook travels in the metadata in
the tensor's own dtype, so decoding is a table lookup and re-encoding a decoded tensor gives the same bytes.

The clustering runs on the sorted values: Lloyd's step finds cluster boundaries (midpoints between sorted centroids)
with a binary search and each cluster's mean from prefix sums, O(k log n) per iteration after one O(n log n) sort.
`method="optimal"` finds the exact optimum by dynamic programming over the distinct values (see OPTIMAL_MAX_*).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from dcframe import ConfigError, Dense, FormatError, Stage, Symbols, check_output, check_shape, hookimpl, numpy_dtype
from dcframe.dtypes import from_float, to_float

MAX_CLUSTERS = 1 << 16
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INITS = ("linear", "density", "random", "kmeans++")
METHODS = ("lloyd", "optimal")
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

    Parameters: `bits` (default 8) or `clusters` (give one); `init` ("linear", "density", "random", "kmeans++");
    `max_iter` and `tol` (stop when no centroid moves more than tol * (max - min)); `seed` for random inits;
    `method` ("lloyd", or "optimal" for the exact optimum on tensors with few distinct values).
    """

    id = "kmeans"
    version = 1
    takes = ("dense",)
    gives = {"indices": "symbols"}
    lossy = True
    imposes = frozenset({"shared"})

    def __init__(self, bits: int | None = None, clusters: int | None = None, init: str = "linear",
                 max_iter: int = 300, tol: float = 0.0, seed: int = 0, method: str = "lloyd") -> None:
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
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.init = init
        self.max_iter = _int("max_iter", max_iter, 0, 1 << 20)
        self.tol = float(tol)
        self.seed = _int("seed", seed, 0, MAX_SEED)
        self.method = method

    @property
    def k(self) -> int:
        """The number of clusters asked for."""
        return self.clusters if self.clusters is not None else 1 << self.bits

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols], dict[str, Any]]:
        if stream.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"stage 'kmeans' only shares float weights, got a {stream.dtype} tensor")
        codebook, indices = quantize(stream, self.k, init=self.init, max_iter=self.max_iter, tol=self.tol,
                                     seed=self.seed, method=self.method)
        meta = {"dtype": stream.dtype, "shape": list(stream.array.shape), "codebook": codebook.tobytes()}
        return {"indices": Symbols(indices, int(codebook.size))}, meta

    def decode(self, streams: dict[str, Symbols], meta: dict[str, Any]) -> Dense:
        dtype_name = meta.get("dtype")
        if dtype_name not in FLOAT_DTYPES:
            raise FormatError(f"kmeans: dtype {dtype_name!r} is not one of {', '.join(FLOAT_DTYPES)}")
        dtype = numpy_dtype(dtype_name)
        shape = meta.get("shape")
        count = check_shape(self.id, shape)
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


def quantize(stream: Dense, k: int, init: str = "linear", max_iter: int = 300, tol: float = 0.0, seed: int = 0,
             method: str = "lloyd") -> tuple[np.ndarray, np.ndarray]:
    """Cluster a float tensor into at most k shared values: (codebook in the tensor's carrier dtype, flat indices).

    The codebook is sorted ascending, without duplicates and without unused entries; a tensor with at most k
    distinct values (bit patterns) gets exactly those, so quantize is idempotent on its own output.
    """
    values = stream.values().reshape(-1)
    carrier = numpy_dtype(stream.dtype)
    if values.size == 0:
        return np.zeros(1, dtype=carrier), np.zeros(0, dtype=np.uint8)
    xs = values.astype(np.float64)
    xs.sort()
    if not (np.isfinite(xs[0]) and np.isfinite(xs[-1])):
        raise ConfigError("stage 'kmeans' (lossy) only accepts finite values; the tensor holds NaN or infinity")
    distinct = 1 + int(np.count_nonzero(xs[1:] != xs[:-1]))
    zero = np.searchsorted(xs, 0.0, side="left"), np.searchsorted(xs, 0.0, side="right")
    negative = int(np.count_nonzero(np.signbit(xs[zero[0]:zero[1]])))
    signed_zeros = 0 < negative < zero[1] - zero[0]
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
        centroids = optimal_1d(xs[starts], np.diff(np.append(starts, xs.size)), k)
    else:
        centroids = lloyd_1d(xs, init_centroids(xs, k, init, seed), max_iter, tol)
    del xs
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


def init_centroids(xs: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Initial centroids for sorted values `xs` (more than k distinct): linear, density, random or kmeans++."""
    n = xs.size
    if init == "linear":
        return np.linspace(xs[0], xs[-1], k)
    if init == "density":
        return xs[np.minimum(((np.arange(k) + 0.5) * (n / k)).astype(np.int64), n - 1)]
    rng = np.random.default_rng(seed)
    if init == "random":
        return np.sort(xs[rng.choice(n, size=k, replace=False)])
    return _kmeans_pp(xs, k, rng)


def _kmeans_pp(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling) on sorted values, with block sums so each pick costs O(sqrt(n)) plus the
    values whose nearest centroid changes."""
    n = xs.size
    block = max(256, math.isqrt(n))
    first = int(rng.integers(n))
    d2 = np.square(xs - xs[first])
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
        np.minimum(d2[a:z], np.square(xs[a:z] - c), out=d2[a:z])
        first_block, last_block = a // block, (max(z, a + 1) - 1) // block
        starts = np.arange(first_block, last_block + 1) * block
        sums[first_block:last_block + 1] = np.add.reduceat(d2[starts[0]:min(n, (last_block + 1) * block)],
                                                           starts - starts[0])
    out = np.array(chosen)
    if out.size < k:  # only when every value is already a centroid (float underflow); Lloyd relocates the rest
        out = np.concatenate((out, np.full(k - out.size, out[-1])))
    return np.sort(out)


def lloyd_1d(xs: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float = 0.0) -> np.ndarray:
    """Lloyd's algorithm on sorted values: boundaries by binary search, means by prefix sums, O(k log n) a step.

    Empty clusters take the values farthest from their centroids (see _relocate), as scikit-learn does. Stops after
    max_iter steps, when the partition no longer changes, or when no centroid moves more than tol * (max - min).
    """
    n, k = xs.size, centroids.size
    prefix = np.concatenate(([0.0], np.cumsum(xs)))
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
        counts = np.diff(bounds).astype(np.float64)
        sums = np.diff(prefix[bounds])
        if not counts.all():
            new = _relocate(xs, bounds, c, sums, counts)
        else:
            new = sums / counts
        moved = float(np.abs(new - c).max())
        c = new
        if moved <= limit:
            break
    return c


def _relocate(xs: np.ndarray, bounds: np.ndarray, c: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """New sorted centroids when some clusters are empty: as scikit-learn, the m empty ones take the m values farthest
    from their current centroid (ties: the lower value first), which leave their clusters; other clusters take means.

    The m farthest values are found by bisecting on the distance: count(d) = values at distance >= d is a sum of
    binary searches at both ends of every cluster, so a step stays O(k log n).
    """
    empty = np.flatnonzero(counts == 0)
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
    np.subtract.at(sums, full[owner], xs[taken])
    np.subtract.at(counts, full[owner], 1.0)
    keep = counts > 0
    new[keep] = sums[keep] / counts[keep]
    new[empty[:taken.size]] = xs[taken]
    return np.sort(new)


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
