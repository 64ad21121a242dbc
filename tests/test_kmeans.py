"""Tests of the `kmeans` stage: codebook invariants, exactness on few values, idempotence, SSE, hostile decoding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from dcframe_plugins.kmeans import (
    INITS,
    WEIGHT_FLOOR,
    Kmeans,
    _assign_by_table,
    _relocate,
    assign,
    lloyd_1d,
    optimal_1d,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dcframe import ConfigError, Dense, FormatError, Symbols, numpy_dtype
from dcframe.core.dtypes import from_float
from dcframe.core.orchestrator import roundtrip
from dcframe.core.pipeline import build_chain, parse_pipeline
from dcframe.testing import check_stage

FLOATS = ("F64", "F32", "F16", "BF16")


@st.composite
def tensors(draw, dtypes=FLOATS, max_size=200, max_distinct=None):
    """Finite float tensors of every float dtype; optionally built from a few distinct values."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12).filter(
        lambda s: math.prod(s) <= max_size))
    width = 16 if dtype in ("F16", "BF16") else 32 if dtype == "F32" else 64
    floats = st.floats(allow_nan=False, allow_infinity=False, width=width, min_value=-1e4, max_value=1e4)
    if max_distinct is None:
        values = draw(hnp.arrays(np.float64, shape, elements=floats))
    else:
        pool = draw(st.lists(floats, min_size=1, max_size=max_distinct))
        values = np.array(pool, dtype=np.float64)[draw(hnp.arrays(np.int64, shape,
                                                                   elements=st.integers(0, len(pool) - 1)))]
    return Dense(from_float(values, dtype).reshape(shape), dtype)


def bits_of(dense: Dense) -> np.ndarray:
    return dense.array.view(f"<u{dense.array.dtype.itemsize}")


def run(stage: Kmeans, dense: Dense) -> tuple[Symbols, dict, Dense]:
    streams, meta = stage.encode(dense)
    return streams["indices"], meta, stage.decode(streams, meta)


def sse(a: Dense, b: Dense) -> float:
    return float(np.sum(np.square(a.values().astype(np.float64) - b.values().astype(np.float64))))


stages = st.builds(Kmeans, bits=st.integers(1, 4), init=st.sampled_from(INITS), seed=st.integers(0, 3),
                   max_iter=st.integers(0, 50))


@given(tensors(), stages)
def test_decoded_values_come_from_the_codebook(dense, stage):
    indices, meta, out = run(stage, dense)
    codebook = np.frombuffer(meta["codebook"], dtype=numpy_dtype(dense.dtype))
    assert out.dtype == dense.dtype and out.array.shape == dense.array.shape
    assert indices.array.size == dense.array.size and indices.alphabet == codebook.size <= stage.k
    assert np.isin(bits_of(out).ravel(), codebook.view(bits_of(out).dtype)).all()
    assert np.unique(bits_of(out)).size <= 2 ** stage.bits
    if dense.array.size:  # no unused codebook entries; sorted and distinct
        assert np.unique(indices.array).size == codebook.size
        values = Dense(codebook, dense.dtype).values()
        assert (np.diff(values) > 0).all() or codebook.size == 1 or (values == 0).sum() == 2


@given(tensors(max_distinct=8), st.integers(3, 4), st.sampled_from(INITS))
def test_few_distinct_values_come_back_bit_for_bit(dense, bits, init):
    _, _, out = run(Kmeans(bits=bits, init=init), dense)
    assert out.array.tobytes() == dense.array.tobytes()


def test_signed_zeros_and_bf16_are_kept_exactly():
    for dtype in FLOATS:
        dense = Dense(from_float(np.array([0.0, -0.0, 1.5, -0.0, 0.0, -2.0]), dtype), dtype)
        _, meta, out = run(Kmeans(bits=2), dense)
        assert out.array.tobytes() == dense.array.tobytes()
        assert len(meta["codebook"]) == 4 * dense.array.itemsize


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("where", [0, 5, 99])
def test_one_negative_zero_among_many_zeros_is_kept(dtype, where):
    """numpy's vectorized sort may turn -0.0 into +0.0; the exact case must still see it (regression)."""
    values = np.zeros(100)
    values[where] = -0.0
    values[50:53] = (1.0, 2.0, -3.0)
    dense = Dense(from_float(values, dtype), dtype)
    for stage in (Kmeans(bits=3), Kmeans(bits=3, weighting="fisher")):
        _, _, out = run(stage, with_side(dense, "fisher", np.ones(100)))
        assert out.array.tobytes() == dense.array.tobytes()


@given(tensors(), stages)
def test_idempotent_on_its_own_output(dense, stage):
    indices, meta, out = run(stage, dense)
    again, meta2, out2 = run(stage, out)
    assert again.array.tobytes() == indices.array.tobytes() and again.alphabet == indices.alphabet
    assert meta2 == meta and out2.array.tobytes() == out.array.tobytes()


@given(tensors(dtypes=("F64",)), st.integers(1, 4), st.sampled_from(["lloyd", "refine"]))
def test_sse_never_worse_than_the_linear_initialisation(dense, bits, method):
    _, _, out = run(Kmeans(bits=bits, init="linear", method=method), dense)
    x = dense.values().ravel()
    if not x.size:
        return
    book = np.unique(np.linspace(x.min(), x.max(), 2 ** bits))
    linear = float(np.sum(np.square(book[assign(x, book)] - x)))
    assert sse(dense, out) <= linear * (1 + 1e-9) + 1e-12


@given(tensors(), st.sampled_from(INITS), st.integers(0, 2 ** 53 - 1))
def test_same_seed_same_bytes(dense, init, seed):
    a, meta_a, _ = run(Kmeans(bits=3, init=init, seed=seed), dense)
    b, meta_b, _ = run(Kmeans(bits=3, init=init, seed=seed), Dense(dense.array.copy(), dense.dtype))
    assert a.array.tobytes() == b.array.tobytes() and meta_a == meta_b


def brute_force_sse(x: np.ndarray, k: int) -> float:
    """Minimum SSE over every split of the sorted values into k contiguous non-empty groups."""
    x = np.sort(x)
    best = math.inf
    for cuts in itertools.combinations(range(1, x.size), k - 1):
        groups = np.split(x, cuts)
        best = min(best, sum(float(np.sum(np.square(g - g.mean()))) for g in groups))
    return best


@given(hnp.arrays(np.float64, st.integers(2, 9), elements=st.floats(-100, 100)), st.integers(1, 4))
def test_optimal_matches_brute_force_on_tiny_inputs(x, k):
    dense = Dense.of(x)
    _, _, out = run(Kmeans(clusters=k, method="optimal"), dense)
    k_eff = min(k, np.unique(x).size)
    assert sse(dense, out) == pytest.approx(brute_force_sse(x, k_eff), rel=1e-9, abs=1e-9)


@given(tensors(dtypes=("F64",), max_size=300), st.integers(1, 5), st.sampled_from(INITS))
def test_optimal_never_worse_than_lloyd(dense, bits, init):
    _, _, lloyd = run(Kmeans(bits=bits, init=init), dense)
    _, _, best = run(Kmeans(bits=bits, method="optimal"), dense)
    assert sse(dense, best) <= sse(dense, lloyd) * (1 + 1e-9) + 1e-9


def test_lloyd_improves_a_bad_start_and_relocates_empty_clusters():
    rng = np.random.default_rng(1)
    x = np.sort(np.concatenate((np.zeros(900), rng.laplace(size=100))))
    start = np.zeros(8)  # every centroid at 0: seven empty clusters
    c = lloyd_1d(x, start, max_iter=100)
    assert np.unique(c).size == 8
    assert np.sum(np.square(c[assign(x, c)] - x)) < 0.2 * np.sum(np.square(x))
    _, meta, _ = run(Kmeans(bits=3, init="density"), Dense.of(x))
    assert len(meta["codebook"]) == 8 * 8  # density init starts with duplicate centroids; all 8 end up used


@given(tensors(dtypes=("F64",), max_size=300), st.integers(1, 5), st.sampled_from(INITS), st.integers(0, 3))
def test_refine_never_worse_than_lloyd_alone(dense, bits, init, seed):
    _, _, lloyd = run(Kmeans(bits=bits, init=init, seed=seed, method="lloyd"), dense)
    _, _, refined = run(Kmeans(bits=bits, init=init, seed=seed, method="refine"), dense)
    assert sse(dense, refined) <= sse(dense, lloyd) * (1 + 1e-9) + 1e-12


def sixteen_bit(kind: str, n: int, seed: int) -> Dense:
    """float16 weights (so at most 63,488 distinct finite values: the exact optimum is computable)."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(scale=0.02, size=n) if kind == "laplace" else rng.normal(scale=0.02, size=n)
    return Dense.of(x.astype(np.float16))


@pytest.mark.parametrize("kind", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", [3, 5, 8])
def test_default_sse_within_one_percent_of_the_optimum(kind, bits):
    """The default (compander init, Lloyd, refine) against method=optimal on 16-bit weights; linear init alone was
    2.5-5x the optimum at 8 bits."""
    dense = sixteen_bit(kind, 15000, seed=bits)
    _, _, best = run(Kmeans(bits=bits, method="optimal"), dense)
    _, _, default = run(Kmeans(bits=bits), dense)
    assert sse(dense, default) <= 1.01 * sse(dense, best)


def weighted_sse(a: Dense, b: Dense, h: np.ndarray) -> float:
    return float(np.sum(h.ravel() * np.square(a.values().astype(np.float64) - b.values().astype(np.float64)).ravel()))


def with_side(dense: Dense, name: str, h: np.ndarray) -> Dense:
    return Dense(dense.array, dense.dtype, {name: h})


@given(st.integers(0, 2 ** 32 - 1), st.integers(200, 3000), st.integers(2, 5), st.floats(0.05, 0.3),
       st.floats(0, 1), st.sampled_from(["activation", "fisher"]))
def test_weighting_lowers_the_weighted_sse_on_data_with_known_importance(seed, n, bits, share, where, name):
    """The weights in one band of values (a `share` of them, starting at quantile `where`) matter, with importance
    1 to 10, the others not at all: weighted k-means spends its centroids there, unweighted everywhere."""
    rng = np.random.default_rng(seed)
    dense = Dense.of(rng.laplace(size=n).astype(np.float32))
    rank = np.argsort(np.argsort(dense.array)) / n
    start = where * (1 - share)
    h = np.where((rank >= start) & (rank < start + share), rng.uniform(1, 10, n), 0.0)
    if np.unique(dense.array[h > 0]).size <= 2 ** bits:
        return  # the important values alone fit the codebook: covered by the exactness test
    _, _, plain = run(Kmeans(bits=bits), dense)
    _, _, weighted = run(Kmeans(bits=bits, weighting=name), with_side(dense, name, h))
    assert weighted_sse(dense, weighted, h) < 0.9 * weighted_sse(dense, plain, h)


@given(hnp.arrays(np.float64, st.integers(2, 9), elements=st.floats(-100, 100)),
       hnp.arrays(np.float64, 9, elements=st.floats(0, 1e3)), st.integers(1, 4))
def test_weighted_optimal_matches_brute_force(x, weights, k):
    """method=optimal with weights is the exact weighted optimum (of the floored weights, normalize_weights)."""
    h = weights[:x.size]
    _, _, out = run(Kmeans(clusters=k, method="optimal", weighting="fisher"), with_side(Dense.of(x), "fisher", h))
    top = h.max()
    floored = h / top + WEIGHT_FLOOR * (h / top).mean() if 0 < top and h.min() < top else np.ones_like(h)
    k_eff = min(k, np.unique(x).size)
    order = np.argsort(x, kind="stable")
    best = math.inf
    for cuts in itertools.combinations(range(1, x.size), k_eff - 1):
        groups = zip(np.split(x[order], cuts), np.split(floored[order], cuts), strict=True)
        best = min(best, sum(float(np.sum(w * np.square(g - np.average(g, weights=w)))) for g, w in groups))
    assert weighted_sse(Dense.of(x), out, floored) <= best * (1 + 1e-9) + 1e-9


@given(tensors(max_distinct=8), st.integers(3, 4), st.sampled_from(INITS), st.sampled_from(["refine", "optimal"]),
       st.integers(0, 2 ** 32 - 1))
def test_weighting_keeps_few_distinct_values_exact(dense, bits, init, method, seed):
    h = np.random.default_rng(seed).exponential(size=dense.array.shape) * (seed % 3 != 0)  # a third: all zero
    _, _, out = run(Kmeans(bits=bits, init=init, method=method, weighting="activation"),
                    with_side(dense, "activation", h))
    assert out.array.tobytes() == dense.array.tobytes()


@given(tensors(), st.builds(Kmeans, bits=st.integers(1, 4), init=st.sampled_from(INITS), seed=st.integers(0, 3),
                            max_iter=st.integers(0, 50), weighting=st.sampled_from(["activation", "fisher"])),
       st.integers(0, 2 ** 32 - 1))
def test_weighted_stage_keeps_the_lossy_law(dense, stage, seed):
    """check_stage: config round trip, idempotence (re-encoded with the same side input), hostile input."""
    h = np.random.default_rng(seed).exponential(size=dense.array.shape)
    check_stage(stage, with_side(dense, stage.weighting, h))


def test_zero_or_equal_weights_are_unweighted():
    x = np.random.default_rng(5).laplace(size=3000).astype(np.float32)
    plain, meta, _ = run(Kmeans(bits=4), Dense.of(x))
    for h in (np.zeros(x.shape), np.full(x.shape, 7.0)):
        indices, meta_w, _ = run(Kmeans(bits=4, weighting="fisher"), with_side(Dense.of(x), "fisher", h))
        assert indices.array.tobytes() == plain.array.tobytes() and meta_w == meta


@pytest.mark.parametrize("name", ["activation", "fisher"])
def test_missing_side_input_names_the_stage_and_the_calibration(name):
    dense = Dense.of(np.linspace(-1, 1, 100, dtype=np.float32))
    other = "fisher" if name == "activation" else "activation"
    for stream in (dense, with_side(dense, other, np.ones(100))):
        with pytest.raises(ConfigError, match=rf"kmeans.*weighting='{name}'.*'{name}' side input.*--calibration"):
            Kmeans(weighting=name).encode(stream)


@pytest.mark.parametrize(("h", "why"), [
    (np.full(100, np.nan), "finite"), (np.full(100, np.inf), "finite"), (np.linspace(-1, 1, 100), "negative"),
    (np.ones(99), "shape"), (np.ones((10, 10)), "shape"), (np.array(["a"] * 100), "numbers"),
])
def test_bad_side_inputs_are_config_errors(h, why):
    dense = Dense.of(np.linspace(-1, 1, 100, dtype=np.float32))
    with pytest.raises(ConfigError, match=rf"kmeans.*'activation' side input.*{why}"):
        Kmeans(weighting="activation").encode(with_side(dense, "activation", h))


def test_weighting_is_stored_only_when_used():
    assert "weighting" not in Kmeans().get_config()  # files written before it existed keep their bytes
    assert Kmeans(weighting="fisher").get_config()["weighting"] == "fisher"
    assert Kmeans.from_config(Kmeans(weighting="fisher").get_config()).weighting == "fisher"
    assert Kmeans.from_config({"bits": 4}).weighting == "none"


def test_optimal_1d_known_answer():
    c = optimal_1d(np.array([0.0, 1.0, 10.0, 11.0, 30.0]), np.array([1, 1, 1, 1, 2]), 3)
    assert c.tolist() == [0.5, 10.5, 30.0]


def test_optimal_refuses_large_inputs():
    x = np.arange(70000, dtype=np.float64)
    with pytest.raises(ConfigError, match="optimal"):
        Kmeans(bits=2, method="optimal").encode(Dense.of(x))


def test_laplace_weights_keep_most_of_the_signal():
    x = np.random.default_rng(0).laplace(size=20000).astype(np.float32)
    for init in INITS:
        _, _, out = run(Kmeans(bits=5, init=init, seed=7), Dense.of(x))
        assert sse(Dense.of(x), out) < 0.01 * float(np.sum(np.square(x.astype(np.float64))))


@pytest.mark.parametrize("dtype", FLOATS)
def test_empty_and_scalar_tensors(dtype):
    for shape in ((0,), (3, 0), ()):
        dense = Dense(np.zeros(shape, dtype=numpy_dtype(dtype)) + (7 if shape == () else 0), dtype)
        indices, _, out = run(Kmeans(), dense)
        assert out.array.tobytes() == dense.array.tobytes() and out.array.shape == shape
        assert indices.alphabet >= 1


def test_chain_round_trip_through_raw():
    chain = build_chain(parse_pipeline("kmeans(bits=2, init=linear, method=lloyd) | raw"))
    out = roundtrip(chain, np.arange(10, dtype=np.float32))
    assert out.array.tolist() == [0.5, 0.5, 3, 3, 3, 6, 6, 6, 8.5, 8.5]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(ConfigError, match="kmeans.*finite"):
        Kmeans().encode(Dense.of(np.array([1.0, bad, 2.0], dtype=np.float32)))


def test_integer_tensors_are_refused():
    with pytest.raises(ConfigError, match="kmeans"):
        Kmeans().encode(Dense.of(np.arange(4, dtype=np.int32)))


@given(st.builds(dict, bits=st.one_of(st.none(), st.integers(1, 16)), init=st.sampled_from(INITS),
                 max_iter=st.integers(0, 1000), tol=st.floats(0, 1), seed=st.integers(0, 2 ** 53 - 1),
                 method=st.sampled_from(["lloyd", "refine", "optimal"]),
                 weighting=st.sampled_from(["none", "activation", "fisher"])))
def test_config_round_trip(config):
    stage = Kmeans.from_config(config)
    again = Kmeans.from_config(stage.get_config())
    assert again.get_config() == stage.get_config()
    assert parse_pipeline(repr(stage))[0].get_config() == stage.get_config()
    assert Kmeans.from_config({"clusters": 5}).get_config()["clusters"] == 5


@pytest.mark.parametrize("config", [
    {"bits": 3, "clusters": 8}, {"bits": 0}, {"bits": 17}, {"bits": True}, {"clusters": 0}, {"clusters": 65537},
    {"init": "kmeans"}, {"method": "exact"}, {"weighting": "hessian"}, {"weighting": None}, {"tol": -1.0},
    {"tol": math.inf}, {"seed": -1}, {"max_iter": 1.5},
    {"colour": 1},
])
def test_bad_configs_are_refused(config):
    with pytest.raises(ConfigError, match="kmeans"):
        Kmeans.from_config(config)


def valid_encoding():
    dense = Dense.of(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6))
    streams, meta = Kmeans(bits=2).encode(dense)
    return streams, meta


@pytest.mark.parametrize("change", [
    {"dtype": "I32"}, {"dtype": None}, {"shape": [4, 5]}, {"shape": "4x6"}, {"shape": [4, -6]}, {"shape": [True] * 24},
    {"shape": [1] * 65 + [24]}, {"codebook": b"\0\0\0"}, {"codebook": b""}, {"codebook": "abcd"},
    {"codebook": b"\0\0\0\0"}, {"codebook": b"\0" * (4 * 65537)}, {"dtype": "F64"},
])
def test_decoder_rejects_bad_meta(change):
    streams, meta = valid_encoding()
    with pytest.raises(FormatError, match="kmeans"):
        Kmeans().decode(streams, {**meta, **change})


def test_decoder_rejects_bad_indices():
    streams, meta = valid_encoding()
    good = streams["indices"].array
    for array in (good[:-1], good.astype(np.float32), good.reshape(4, 6), good.astype(np.int8) - 1,
                  np.full(24, 4, dtype=np.uint8)):
        with pytest.raises(FormatError, match="kmeans"):
            Kmeans().decode({"indices": Symbols(array, 4)}, meta)
    with pytest.raises(FormatError, match="kmeans"):
        Kmeans().decode({}, meta)


meta_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2 ** 40), st.floats(), st.text(max_size=4),
                        st.binary(max_size=40), st.lists(st.integers(-1, 30), max_size=4))


@given(st.dictionaries(st.sampled_from(["dtype", "shape", "codebook", "other"]),
                       st.one_of(meta_values, st.sampled_from(FLOATS)), max_size=4),
       hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int16, np.uint32, np.int64]), st.integers(0, 40)),
       st.integers(0, 70000))
def test_decoder_raises_only_format_errors_on_hostile_input(meta, array, alphabet):
    try:
        out = Kmeans().decode({"indices": Symbols(array, alphabet)}, meta)
    except FormatError:
        return
    assert out.array.shape == tuple(meta["shape"]) and out.dtype == meta["dtype"]
    codebook = np.frombuffer(meta["codebook"], dtype=numpy_dtype(meta["dtype"]))
    assert out.array.tobytes() == codebook[array].tobytes()


@given(st.sampled_from([np.float32, np.float64]), st.integers(1, 300), st.integers(0, 2 ** 32 - 1),
       st.floats(-1e6, 1e6), st.sampled_from([1e-30, 1e-6, 1.0, 1e6]))
def test_table_assignment_equals_binary_search(ftype, k, seed, centre, spread):
    rng = np.random.default_rng(seed)
    values = (centre + spread * rng.laplace(size=5000)).astype(ftype)
    values[:50] = np.sort(values[50:100])[::-1]  # some values exactly on data points, in both orders
    book = np.unique(np.concatenate((rng.choice(values, k).astype(np.float64), [values.min()])))
    mids = 0.5 * book[:-1] + 0.5 * book[1:]
    values = np.concatenate((values, mids.astype(ftype)))  # values on (or next to) the midpoints
    labels = _assign_by_table(values, mids)
    expected = np.searchsorted(mids, values.astype(np.float64), side="right")
    if labels is not None:
        assert labels.tolist() == expected.tolist()
    assert assign(values, book).tolist() == expected.tolist()


def test_empty_clusters_take_the_farthest_values():
    rng = np.random.default_rng(3)
    x = np.sort(np.concatenate((rng.normal(0, 1, 500), rng.normal(10, 1, 500))))
    c = lloyd_1d(x, np.array([-100.0, -99.0, -98.0, 5.0]), max_iter=50)  # three centroids start with no values
    assert np.bincount(assign(x, c), minlength=4).min() > 0
    two = np.where(x < 5, x - x[x < 5].mean(), x - x[x >= 5].mean())
    assert np.sum(np.square(c[assign(x, c)] - x)) < 0.8 * np.sum(np.square(two))


@given(hnp.arrays(np.float64, st.integers(3, 40), elements=st.integers(-20, 20).map(float)),
       hnp.arrays(np.float64, st.integers(2, 8), elements=st.floats(-40, 40)))
def test_relocation_matches_brute_force(x, centroids):
    x, c = np.sort(x), np.sort(centroids)
    bounds = np.concatenate(([0], np.searchsorted(x, 0.5 * c[:-1] + 0.5 * c[1:]), [x.size]))
    counts = np.diff(bounds).astype(np.float64)
    if counts.all():
        return
    label = np.repeat(np.arange(c.size), np.diff(bounds))
    distance = np.abs(x - c[label])
    taken = np.lexsort((x, -distance))[:int((counts == 0).sum())]
    rest = np.ones(x.size, dtype=bool)
    rest[taken] = False
    expected = [x[rest & (label == j)].mean() if (rest & (label == j)).any() else c[j]
                for j in range(c.size) if counts[j] > 0]
    expected = np.sort(np.concatenate((expected, x[taken], c[counts == 0][taken.size:])))
    sums = np.array([x[label == j].sum() for j in range(c.size)])
    got = _relocate(x, bounds, c, sums, counts)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
