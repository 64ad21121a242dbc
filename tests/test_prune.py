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
from dcframe.core.orchestrator import roundtrip
from dcframe.core.pipeline import build_chain, parse_pipeline
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


# ---- data-aware criteria: wanda (activation side input) and sparsegpt (hessian side input) ----


def with_side(dense: Dense, **side) -> Dense:
    return Dense(dense.array, dense.dtype, side)


@st.composite
def activations(draw, shape):
    """E[x^2] per weight's input feature: random, with dead inputs (0) and ties if drawn."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    act = rng.exponential(size=shape)
    if draw(st.booleans()):
        act = np.round(act * 2) / 2  # ties, and some zeros
    if draw(st.booleans()):
        act[rng.random(shape) < 0.2] = 0.0
    return act


def brute_force_wanda(values: np.ndarray, act: np.ndarray, sparsity: float) -> np.ndarray:
    """The spec's rule, element by element: per row (slice along axis 0) the k lowest (score, |w|, column), no NaN."""
    rows = values.reshape(1, -1) if values.ndim <= 1 else values.reshape(values.shape[0], math.prod(values.shape[1:]))
    acts = act.reshape(rows.shape)
    pruned = np.zeros(rows.shape, bool)
    for r in range(rows.shape[0]):
        k = math.floor(sparsity * rows.shape[1] + 0.5)
        ranked = sorted((abs(float(w)) * math.sqrt(float(a)), abs(float(w)), j)
                        for j, (w, a) in enumerate(zip(rows[r], acts[r], strict=True)) if not math.isnan(w))
        for _, _, j in ranked[:k]:
            pruned[r, j] = True
        pruned[r] |= rows[r] == 0
    return pruned.reshape(values.shape)


@given(st.data(), weights(), st.floats(0, 1))
def test_wanda_keeps_exactly_the_per_row_top_scores(data, dense, sparsity):
    act = data.draw(activations(dense.array.shape))
    out = prune(with_side(dense, activation=act), sparsity=sparsity, criterion="wanda")
    expected = brute_force_wanda(dense.values(), act, sparsity)
    assert (out.values() == 0).tolist() == (expected | (dense.values() == 0)).tolist()
    assert (out.array[expected].view(f"u{out.array.itemsize}") == 0).all()  # +0.0, BF16 bit patterns too
    kept = ~expected
    assert out.array[kept].tobytes() == dense.array[kept].tobytes()  # survivors keep their exact bits
    assert out.side["activation"] is act  # passed on for the next stage
    check_stage(Prune(sparsity=sparsity, criterion="wanda"), with_side(dense, activation=act))  # idempotent


def test_wanda_prunes_exactly_the_sparsity_in_every_row_and_channel():
    rng = np.random.default_rng(11)
    w = rng.normal(size=(16, 40)).astype(np.float32)
    act = rng.exponential(size=40)[None, :].repeat(16, 0)  # E[x_j^2]: the same for every row
    out = prune(with_side(Dense.of(w), activation=act), sparsity=0.3, criterion="wanda")
    assert ((out.array == 0).sum(axis=1) == 12).all()  # floor(0.3 * 40 + 0.5) per row
    conv = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    out = prune(with_side(Dense.of(conv), activation=rng.exponential(size=conv.shape)), sparsity=0.5,
                criterion="wanda")
    assert ((out.array == 0).reshape(6, -1).sum(axis=1) == 18).all()  # per output channel


def test_wanda_differs_from_magnitude_where_the_inputs_differ():
    """A large weight on a quiet input goes before a small weight on a loud one; magnitude does the opposite."""
    w = np.array([[4.0, 1.0, 2.0, 3.0]], np.float32)
    act = np.array([[0.01, 100.0, 1.0, 1.0]])
    wanda = prune(with_side(Dense.of(w), activation=act), sparsity=0.5, criterion="wanda")
    assert wanda.array.tolist() == [[0, 1, 0, 3]]  # scores 0.4, 10, 2, 3
    assert prune(Dense.of(w), sparsity=0.5).array.tolist() == [[4, 0, 0, 3]]


def test_wanda_ties_go_to_the_smaller_magnitude_then_the_earlier_column():
    w = np.array([[2.0, -1.0, 1.0, 0.5, 3.0, -0.0]], np.float32)
    act = np.array([[0.25, 1.0, 1.0, 4.0, 0.0, 1.0]])  # scores 1, 1, 1, 1, 0 (dead input), 0
    out = prune(with_side(Dense.of(w), activation=act), sparsity=4 / 6, criterion="wanda")  # k = 4
    # (0, |0|), (0, |3|), then among the scores 1: |0.5|, and of the two |1| the earlier column; -0.0 became +0.0
    assert out.array.tobytes() == np.array([[2, 0, 1, 0, 0, 0]], np.float32).tobytes()


def test_default_criterion_is_magnitude_and_stores_no_new_key():
    stage = Prune(sparsity=0.5)
    assert stage.criterion == "magnitude" and "criterion" not in stage.get_config()  # files written as before
    assert Prune(sparsity=0.5, criterion="magnitude").get_config() == stage.get_config()
    w = np.random.default_rng(5).normal(size=(9, 7)).astype(np.float32)
    act = np.ones(w.shape)
    assert prune(Dense.of(w), sparsity=0.5).array.tobytes() == prune(
        with_side(Dense.of(w), activation=act), sparsity=0.5, criterion="magnitude").array.tobytes()
    for criterion in ("wanda", "sparsegpt"):
        s = Prune(sparsity=0.5, criterion=criterion)
        assert s.get_config() == {"sparsity": 0.5, "threshold": None, "scope": "tensor", "criterion": criterion}
        assert Prune.from_config(s.get_config()).get_config() == s.get_config()
        assert repr(parse_pipeline(f"prune(sparsity=0.5, criterion='{criterion}')")[0]) == repr(s)
        assert s.imposes == frozenset({"zeros"})  # retraining keeps the pruned positions at zero


def test_data_aware_criteria_refuse_a_threshold_global_scope_or_unknown_name():
    for bad in ({"threshold": 0.1, "criterion": "wanda"}, {"sparsity": 0.5, "scope": "global", "criterion": "wanda"},
                {"threshold": 0.1, "criterion": "sparsegpt"}, {"sparsity": 0.5, "criterion": "obs"},
                {"sparsity": 0.5, "criterion": None}):
        with pytest.raises(ConfigError, match="criterion"):
            Prune.from_config(bad)
    with pytest.raises(ConfigError, match="scope 'global'"):
        parse_pipeline("prune(sparsity=0.5, scope='global', criterion='wanda')")


def test_missing_or_bad_side_inputs_are_one_line_errors():
    w = Dense.of(np.ones((3, 4), np.float32))
    wanda, obs = Prune(sparsity=0.5, criterion="wanda"), Prune(sparsity=0.5, criterion="sparsegpt")
    cases = [
        (wanda, w, r"prune: criterion 'wanda' on a tensor of shape \[3, 4\] needs the 'activation' side input.*"
                   r"--calibration"),
        (obs, w, r"criterion 'sparsegpt' .*\[3, 4\] needs the 'hessian' side input.*--calibration"),
        (wanda, with_side(w, activation=np.ones((4, 3))), r"'activation' has shape \[4, 3\], expected \[3, 4\]"),
        (wanda, with_side(w, activation=np.full((3, 4), np.nan)), "'activation' holds NaN"),
        (wanda, with_side(w, activation=-np.ones((3, 4))), "negative"),
        (obs, with_side(w, hessian=np.ones((3, 3))), r"'hessian' has shape \[3, 3\], expected \[4, 4\]"),
        (obs, with_side(w, hessian=-np.eye(4)), "not positive semi-definite"),
        (obs, with_side(Dense.of(np.ones((2, 3, 4), np.float32)), hessian=np.eye(4)),
         r"works on 2-D weights.*shape \[2, 3, 4\].*rule"),
        (obs, with_side(Dense.of(np.array([[1, np.nan]], np.float32)), hessian=np.eye(2)), "NaN or infinity"),
    ]
    for stage, dense, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            stage.encode(dense)
        assert "\n" not in str(info.value)


def test_a_chain_names_the_tensor_that_lacks_its_calibration():
    from dcframe.core.orchestrator import encode_tensor
    chain = build_chain(parse_pipeline("prune(sparsity=0.5, criterion='wanda') | zstd"))
    with pytest.raises(ConfigError, match=r"tensor 'fc1.weight': prune: criterion 'wanda'.*'activation'"):
        encode_tensor("fc1.weight", np.ones((3, 4), np.float32), chain)


def correlated_inputs(seed: int, n: int, width: int) -> np.ndarray:
    """Calibration inputs with correlated features of unequal scale, as layer inputs of real networks have."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(width, width)) / math.sqrt(width)
    scale = rng.lognormal(sigma=0.5, size=width)
    return (rng.normal(size=(n, width)) @ mix + 0.3 * rng.normal(size=(n, width))) * scale


def sparsegpt_case(seed: int, rows: int, cols: int, dtype: str = "F32"):
    x = correlated_inputs(seed, 4 * cols, cols)
    w = np.random.default_rng(seed + 1).normal(scale=0.1, size=(rows, cols)).astype(np.float32)
    dense = Dense.of(w, "F32") if dtype == "F32" else Dense.of(np.zeros(w.shape, np.float32), dtype).with_values(w)
    side = {"hessian": x.T @ x / len(x), "activation": np.broadcast_to((x * x).mean(axis=0), w.shape)}
    return x, Dense(dense.array, dense.dtype, side)


def output_error(x: np.ndarray, before: Dense, after: Dense) -> float:
    ref = x @ before.values().astype(np.float64).T
    return float(np.linalg.norm(ref - x @ after.values().astype(np.float64).T) / np.linalg.norm(ref))


@pytest.mark.parametrize("seed, rows, cols, sparsity", [(0, 24, 60, 0.5), (1, 16, 300, 0.5), (2, 40, 130, 0.7)])
def test_sparsegpt_lowers_the_output_error_against_magnitude_and_wanda(seed, rows, cols, sparsity):
    x, dense = sparsegpt_case(seed, rows, cols)
    results = {c: prune(dense, sparsity=sparsity, criterion=c) for c in ("magnitude", "wanda", "sparsegpt")}
    k = math.floor(sparsity * rows * cols + 0.5)
    assert all(int((r.array == 0).sum()) == k for r in results.values())  # equal sparsity (continuous weights)
    errors = {c: output_error(x, dense, r) for c, r in results.items()}
    assert errors["sparsegpt"] < 0.95 * errors["wanda"] and errors["sparsegpt"] < 0.8 * errors["magnitude"], errors
    assert errors["wanda"] < errors["magnitude"], errors  # inputs of unequal scale: activations matter


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_sparsegpt_keeps_the_dtype_writes_positive_zeros_and_moves_the_kept_weights(dtype):
    x, dense = sparsegpt_case(3, 10, 140, dtype)  # two blocks of columns
    stage = Prune(sparsity=0.6, criterion="sparsegpt")
    out = prune(dense, sparsity=0.6, criterion="sparsegpt")
    assert out.dtype == dense.dtype and out.array.dtype == dense.array.dtype and out.array.shape == (10, 140)
    zero = out.values() == 0
    assert int(zero.sum()) == 840 and (out.array[zero].view(f"u{out.array.itemsize}") == 0).all()
    assert (out.array[~zero] != dense.array[~zero]).mean() > 0.5  # OBS updates moved the survivors
    check_stage(stage, dense)  # idempotent: its own zeros cost nothing, so encoding again changes no bit


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 9), st.floats(0, 1), st.booleans())
def test_sparsegpt_is_idempotent_with_dead_inputs_and_small_blocks(seed, rows, cols, sparsity, dead):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * cols, cols)) * rng.lognormal(size=cols)
    if dead:
        x[:, rng.random(cols) < 0.4] = 0.0  # inputs the layer never sees: H_cc = 0
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    dense = Dense(w, "F32", {"hessian": x.T @ x / len(x)})
    old = prune_module.BLOCK
    prune_module.BLOCK = 4  # several blocks even on small weights
    try:
        once = prune(dense, sparsity=sparsity, criterion="sparsegpt")
        assert prune(once, sparsity=sparsity, criterion="sparsegpt").array.tobytes() == once.array.tobytes()
    finally:
        prune_module.BLOCK = old
    dead_cols = np.all(x == 0, axis=0)
    assert (once.array[:, dead_cols] == 0).all()  # weights of dead inputs are zeroed, as the reference does
    assert int((once.array == 0).sum()) >= math.floor(sparsity * w.size + 0.5)


def test_sparsegpt_with_uncorrelated_inputs_is_magnitude_pruning():
    """H diagonal and equal: no weight's error reaches another and every cost is w^2, so the mask is magnitude's."""
    w = np.random.default_rng(4).normal(size=(12, 50)).astype(np.float32)
    out = prune(with_side(Dense.of(w), hessian=np.eye(50) * 3.0), sparsity=0.5, criterion="sparsegpt")
    assert out.array.tobytes() == prune(Dense.of(w), sparsity=0.5).array.tobytes()


def test_wanda_file_decodes_to_the_pruned_tensor(tmp_path):
    from dcframe.core.container import ContainerWriter
    from dcframe.core.orchestrator import compress_tensors
    from dcframe.core.pipeline import Policy
    rng = np.random.default_rng(8)
    w = rng.normal(size=(20, 30)).astype(np.float32)
    act = rng.exponential(size=w.shape)
    policy = Policy(pipeline="prune(sparsity=0.5, criterion='wanda') | sparse | kmeans(bits=8) | huffman")
    path = tmp_path / "w.dcf"
    with ContainerWriter(path, None, registry=policy.registry) as writer:
        for encoded in compress_tensors({"w": w}, policy, side_inputs=lambda name, d: {"activation": act}):
            writer.add(encoded)
    out = dcframe.decompress(path)["w"].array
    expected = prune(with_side(Dense.of(w), activation=act), sparsity=0.5, criterion="wanda").array
    assert ((out == 0) == (expected == 0)).all()  # the positions wanda chose, through sparse|kmeans|huffman
    with dcframe.open_container(path) as container:
        assert container.chains[0][0]["config"]["criterion"] == "wanda"


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_data_aware_prune_is_exact_on_retrained_weights(criterion):
    """Retraining keeps the zeros and moves the survivors; encoding the result again changes no bit (retrain.py)."""
    x, dense = sparsegpt_case(9, 8, 150)
    once = prune(dense, sparsity=0.5, criterion=criterion)
    factor = np.random.default_rng(10).uniform(0.5, 2.0, size=once.array.shape).astype(np.float32)
    retrained = Dense(once.array * factor, "F32", dense.side)  # zeros stay +0.0, survivors move
    again = prune(retrained, sparsity=0.5, criterion=criterion)
    assert again.array.tobytes() == retrained.array.tobytes()


def test_cli_without_a_calibration_is_one_line_naming_tensor_criterion_and_input(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "m.safetensors"
    dcframe.write_model(path, {"fc.weight": np.ones((4, 6), np.float32)})
    out = tmp_path / "m.dcf"
    result = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(path), "-o", str(out), "-p",
                             "prune(sparsity=0.5, criterion='wanda') | zstd"], capture_output=True, text=True)
    line = result.stderr.strip()
    assert result.returncode == 1 and "Traceback" not in line and "\n" not in line, result.stderr
    for needle in ("fc.weight", "criterion 'wanda'", "'activation'", "--calibration"):
        assert needle in line, line
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))  # nothing half-written
