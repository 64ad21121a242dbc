"""The `prune` stage: target sparsity within ties, magnitude order, NaN, dtypes, global scope and idempotence."""

from __future__ import annotations

import math

import dcframe_plugins.prune as prune_module
import numpy as np
import pytest
from dcframe_plugins.prune import Prune, global_threshold
from hypothesis import given
from hypothesis import strategies as st

import dcframe
from dcframe import ConfigError, Dense
from dcframe.orchestrator import roundtrip
from dcframe.pipeline import build_chain, parse_pipeline
from dcframe.testing import check_stage


def prune(dense: Dense, **config) -> Dense:
    stage = Prune(**config)
    streams, meta = stage.encode(dense)
    assert meta == {}
    assert stage.decode(streams, meta) is streams["data"]  # decode is the identity
    return streams["data"]


@st.composite
def weights(draw, dtypes=("F32", "F64", "F16", "BF16")):
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.laplace(size=shape)
    if draw(st.booleans()):
        values = np.round(values * 2) / 2  # many ties
    if draw(st.booleans()):
        values[rng.random(shape) < 0.3] = 0.0  # already pruned weights
    if draw(st.booleans()):
        values[rng.random(shape) < 0.1] = np.nan
    return Dense.of(np.zeros(shape, np.float32), dtype).with_values(values.astype(np.float32))


def check_pruned(original: Dense, pruned: Dense, sparsity: float) -> None:
    """The invariants of a sparsity prune: ties-only overshoot, magnitude order, NaN kept, dtype kept."""
    assert pruned.dtype == original.dtype and pruned.array.shape == original.array.shape
    before = original.values().astype(np.float64).reshape(-1)
    after = pruned.values().astype(np.float64).reshape(-1)
    zeroed = after == 0
    # only zeros were written, and every survivor is bit-identical
    assert (pruned.array.reshape(-1)[zeroed].view(f"u{pruned.array.itemsize}") == 0).all()
    kept = ~zeroed
    assert pruned.array.reshape(-1)[kept].tobytes() == original.array.reshape(-1)[kept].tobytes()
    nan = np.isnan(before)
    assert not zeroed[nan].any()  # NaN is never pruned
    k = min(math.floor(sparsity * before.size + 0.5), int((~nan).sum()))
    mag = np.abs(before)
    if k == 0:
        assert (zeroed == (mag == 0)).all()  # nothing but the zeros themselves
        return
    largest_pruned = mag[zeroed].max()
    kept_finite = mag[kept & ~nan]
    assert kept_finite.size == 0 or kept_finite.min() > largest_pruned  # every kept weight outranks every pruned one
    # the achieved count reaches the target and overshoots only by weights tied with the largest pruned magnitude
    assert int(zeroed.sum()) >= k
    assert int((mag < largest_pruned).sum()) < k


@given(weights(), st.floats(0, 1))
def test_sparsity_is_reached_within_ties(dense, sparsity):
    check_pruned(dense, prune(dense, sparsity=sparsity), sparsity)
    check_stage(Prune(sparsity=sparsity), dense)  # config round trip and idempotence, as for every stage


@given(weights(), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_idempotent_on_its_own_output_after_retraining(dense, sparsity, seed):
    once = prune(dense, sparsity=sparsity)
    assert prune(once, sparsity=sparsity).array.tobytes() == once.array.tobytes()
    # retraining keeps zeros and moves the survivors (their order by magnitude changes), never to zero
    values = once.values().astype(np.float64)
    factor = np.random.default_rng(seed).uniform(0.1, 10, size=values.shape) * np.sign(
        np.random.default_rng(seed + 1).uniform(-1, 1, size=values.shape) + 1e-9)
    moved = once.with_values((values * factor).astype(np.float32))
    assume_nonzero = (moved.values() != 0) | (values == 0) | np.isnan(values)
    if not assume_nonzero.all():  # a survivor rounded to zero in a narrow dtype: not a retrained weight
        return
    again = prune(moved, sparsity=sparsity)
    assert (again.values() == 0).tobytes() == (once.values() == 0).tobytes()


@given(weights(), st.floats(0, 3))
def test_threshold_prunes_exactly_the_magnitudes_at_or_below_it(dense, threshold):
    pruned = prune(dense, threshold=threshold)
    before = np.abs(dense.values().astype(np.float64))
    expected = before <= threshold  # compared as exact reals: every value widens exactly to float64
    assert ((pruned.values() == 0) == (expected | (dense.values() == 0))).all()


def test_threshold_compares_exactly_in_narrow_dtypes():
    w = np.array([0.1, -0.1, 0.2], np.float32)
    t = float(np.float32(0.1))  # exactly |w[0]|
    assert prune(Dense.of(w), threshold=t).array.tolist() == [0, 0, w[2]]
    below = float(np.nextafter(np.float64(t), 0))  # a float64 just below it, which rounds up to t in float32
    assert prune(Dense.of(w), threshold=below).array.tobytes() == w.tobytes()


def test_keeps_dtype_and_writes_positive_zero():
    bits = np.array([0x3F80, 0x8000, 0xBF00, 0x3E00, 0x7FC0], np.uint16)  # 1, -0, -0.5, 0.125, NaN in BF16
    out = prune(Dense(bits, "BF16"), sparsity=0.4)  # k = 2: -0 and 0.125
    assert out.dtype == "BF16" and out.array.dtype == np.uint16
    assert out.array.tolist() == [0x3F80, 0, 0xBF00, 0, 0x7FC0]
    f16 = prune(Dense.of(np.array([[1, -2], [3, -0.5]], np.float16)), sparsity=0.5)
    assert f16.array.dtype == np.float16 and f16.array.tolist() == [[0, -2], [3, 0]]


def test_all_nan_and_empty_tensors():
    nan = np.full(5, np.nan, np.float32)
    assert prune(Dense.of(nan), sparsity=1.0).array.tobytes() == nan.tobytes()
    empty = np.zeros((0, 3), np.float32)
    assert prune(Dense.of(empty), sparsity=0.5).array.shape == (0, 3)


def test_config_validation_and_round_trip():
    for bad in ({}, {"sparsity": 0.5, "threshold": 1.0}, {"sparsity": 1.5}, {"sparsity": -0.1}, {"threshold": -1.0},
                {"threshold": float("nan")}, {"sparsity": True}, {"sparsity": "0.5"}, {"sparsity": 0.5, "scope": "x"}):
        with pytest.raises(ConfigError):
            Prune.from_config(bad)
    stage = Prune(sparsity=0.9, scope="global")
    assert Prune.from_config(stage.get_config()).get_config() == {"sparsity": 0.9, "threshold": None, "scope": "global"}
    assert repr(parse_pipeline("prune(sparsity=0.9, scope='global')")[0]) == repr(stage)


def test_refuses_integers_and_unfitted_global():
    with pytest.raises(ConfigError, match="float"):
        Prune(sparsity=0.5).encode(Dense.of(np.arange(4, dtype=np.int32)))
    with pytest.raises(ConfigError, match="fitted"):
        Prune(sparsity=0.5, scope="global").encode(Dense.of(np.ones(4, np.float32)))


def test_chain_round_trip_is_the_pruned_tensor():
    w = np.random.default_rng(3).normal(size=(30, 20)).astype(np.float32)
    out = roundtrip(build_chain(parse_pipeline("prune(sparsity=0.75)")), w)
    assert int((out.array == 0).sum()) == 450
    assert out.array.tobytes() == prune(Dense.of(w), sparsity=0.75).array.tobytes()


@given(st.lists(weights(), min_size=1, max_size=4), st.floats(0, 1), st.sampled_from([1 << 22, 3, 0]))
def test_global_threshold_is_the_kth_magnitude_of_everything(tensors, sparsity, collect):
    old = prune_module._COLLECT
    prune_module._COLLECT = collect  # 0: never gather early, run all four radix passes
    try:
        threshold = global_threshold(lambda: iter(tensors), sparsity)
    finally:
        prune_module._COLLECT = old
    mags = np.concatenate([np.abs(t.values().astype(np.float64).reshape(-1)) for t in tensors])
    k = min(math.floor(sparsity * mags.size + 0.5), int((~np.isnan(mags)).sum()))
    expected = np.sort(mags[~np.isnan(mags)])[k - 1] if k else 0.0
    assert threshold == expected


def test_global_scope_uses_one_threshold_across_tensors(tmp_path):
    rng = np.random.default_rng(7)
    small = rng.laplace(scale=0.01, size=(100, 50)).astype(np.float32)
    large = rng.laplace(scale=1.0, size=(50, 40)).astype(np.float32)
    path = tmp_path / "g.dcf"
    dcframe.compress({"small": small, "large": large}, path, pipeline="prune(sparsity=0.5, scope='global')")
    out = {name: d.array for name, d in dcframe.decompress(path).items()}
    total = small.size + large.size
    zeros = sum(int((a == 0).sum()) for a in out.values())
    assert zeros == total // 2  # continuous weights: no ties
    pruned = np.concatenate([np.abs(orig[out[n] == 0]) for n, orig in (("small", small), ("large", large))])
    kept = np.concatenate([np.abs(orig[out[n] != 0]) for n, orig in (("small", small), ("large", large))])
    assert pruned.max() < kept.min()  # one threshold for both
    assert (out["small"] == 0).mean() > 0.65 and (out["large"] == 0).mean() < 0.05  # per tensor: 0.5 each
    with dcframe.open_container(path) as container:
        config = container.chains[0][0]["config"]
    assert config["scope"] == "global" and config["sparsity"] is None
    assert config["threshold"] == float(pruned.max())  # the container records the threshold actually applied
