"""The tcq stage (spec/stages/tcq.md): the worked example, the stage laws, the trellis search against brute force,
the size gain over uniform at equal error, and one-line errors for bad configs, inputs and metadata."""

import itertools

import msgpack
import numpy as np
import pytest
from dcframe_plugins import _kernels
from dcframe_plugins.rans import Rans
from dcframe_plugins.tcq import INCOMING, TRANS, Tcq, choose_run, search, step_major
from dcframe_plugins.uniform import Uniform
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_paths import coder_path

from dcframe import ConfigError, Dense, FormatError, LimitError, Symbols
from dcframe.core.dtypes import f32_to_bf16
from dcframe.core.orchestrator import _OUTPUT_LIMIT
from dcframe.testing import check_config, check_hostile, check_stage, encode_decode

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def dense(values: np.ndarray, dtype: str, **side) -> Dense:
    if dtype == "BF16":
        return Dense(f32_to_bf16(values.astype(np.float32)), "BF16", side)
    return Dense(values.astype(DTYPES[dtype]), dtype, side)


def test_worked_example_of_the_spec():
    outputs, meta, decoded = encode_decode(Tcq(step=1.0, rate_weight=0), Dense.of(np.array([1.0, 0.9, -0.2, 0.6],
                                                                                           np.float32)))
    assert meta["run"] == 4
    assert np.frombuffer(meta["levels0"], "<i4").tolist() == [1]
    assert np.frombuffer(meta["levels1"], "<i4").tolist() == [0, 1]
    assert np.frombuffer(meta["codebook0"], "<f4").tolist() == [1.0]
    assert np.frombuffer(meta["codebook1"], "<f4").tolist() == pytest.approx([-0.2, 0.75])
    assert outputs["q0"].array.tolist() == [0] and outputs["q1"].array.tolist() == [1, 0, 1]
    assert decoded.array.tolist() == pytest.approx([1.0, 0.75, -0.2, 0.75])


def test_trellis_tables_agree():
    """INCOMING lists, for every state, exactly the (state, parity) pairs that NEXT sends there."""
    for target in range(4):
        assert sorted(map(tuple, INCOMING[target].tolist())) == \
            sorted((s, p) for s in range(4) for p in range(2) if TRANS[s][p] == target)


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
@pytest.mark.parametrize("config", [{"step": 0.1}, {"step": 0.37, "rate_weight": 0.0}, {"step": 2.0,
                                                                                         "rate_weight": 0.5}])
def test_laws(dtype, config):
    w = np.random.default_rng(1).laplace(scale=0.5, size=(40, 30))
    check_stage(Tcq(**config), dense(w, dtype))
    check_stage(Tcq(**config), dense(np.zeros((0, 3)), dtype))  # empty tensor
    check_stage(Tcq(**config), dense(np.array(0.3), dtype))  # scalar
    check_stage(Tcq(**config), dense(np.linspace(-1, 1, 2500), dtype))  # a vector: runs of 1024, the last shorter


def test_weighted_laws_and_auto_reads_the_activation():
    rng = np.random.default_rng(2)
    w = rng.laplace(scale=0.5, size=(20, 16))
    act = rng.exponential(size=(20, 16))
    stream = dense(w, "F32", activation=act)
    check_config(Tcq(step=0.5, weighting="auto"))
    check_hostile(Tcq(step=0.5, weighting="activation"), stream)
    _, meta_auto, _ = encode_decode(Tcq(step=0.5, weighting="auto"), stream)
    _, meta_act, _ = encode_decode(Tcq(step=0.5, weighting="activation"), stream)
    _, meta_plain, _ = encode_decode(Tcq(step=0.5), stream)
    assert meta_auto == meta_act and meta_auto["codebook0"] != meta_plain["codebook0"]
    _, meta_none, _ = encode_decode(Tcq(step=0.5, weighting="auto"), dense(w, "F32"))
    assert meta_none == meta_plain


def brute_force(y: np.ndarray, rate_weight: float = 0.0) -> float:
    """The least squared error over every path of the spec's candidates (Encoding step 3), one run from state 0."""
    best = np.inf
    options = []
    for v in y:
        a = np.floor(v)
        b = max(1.0, np.floor(v + 0.5)) if v >= 0 else min(-1.0, np.ceil(v - 0.5))
        b2 = b + (1 if v >= 0 else -1)
        options.append(([a, a + 1, 0.0], [b, b2, 0.0]))
    for picks in itertools.product(range(3), repeat=len(y)):
        state, cost = 0, 0.0
        for v, (q0, q1), i in zip(y, options, picks, strict=True):
            z = state >> 1
            k = (q0, q1)[z][i]
            rec = k - 0.5 * np.sign(k) if z else k
            cost += (v - rec) ** 2
            state = TRANS[state][int(k) & 1]
        best = min(best, cost)
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=7))
def test_the_search_finds_the_least_error_path(values):
    y = np.array(values)
    levels, quantizer = search(y, 1.0, y.size, 0.0)
    rec = np.where(quantizer == 1, levels - 0.5 * np.sign(levels), levels)
    state = 0
    for k, z in zip(levels, quantizer, strict=True):  # the levels form a path of the trellis
        assert z == state >> 1
        state = TRANS[state][int(k) & 1]
    assert float(np.sum((y - rec) ** 2)) == pytest.approx(brute_force(y), abs=1e-9)


def test_decoding_order_is_step_major():
    assert step_major(7, 3).tolist() == [0, 3, 6, 1, 4, 2, 5]
    assert choose_run([30, 384]) == 384 and choose_run([2, 5000]) == 4096 and choose_run([5000]) == 1024
    assert choose_run([]) == 1 and choose_run([0, 3]) == 1 and choose_run([3, 0]) == 1 and choose_run([7]) == 7


def coded_size(stage, w: np.ndarray) -> tuple[int, float]:
    """Bytes of the rANS-coded symbol streams plus the codebooks and levels, and the mean squared error."""
    outputs, meta, decoded = encode_decode(stage, Dense.of(w))
    size = sum(len(Rans().encode(s)[0]["data"].data) for s in outputs.values())
    size += sum(len(v) for v in meta.values() if isinstance(v, bytes))
    return size, float(np.mean((decoded.array.astype(np.float64) - w) ** 2))


@pytest.mark.parametrize("dist", ["laplace", "normal"])
def test_fewer_bytes_than_uniform_at_no_more_error(dist):
    """At the mean squared error tcq reaches, uniform with the dead zone the presets use needs > 2% more bytes (3.5-5%
    measured here)."""
    w = getattr(np.random.default_rng(5), dist)(size=(500, 256)).astype(np.float32)
    size, mse = coded_size(Tcq(step=0.6), w)
    lo, hi = 0.1, 2.0  # uniform steps bracketing tcq's error
    for _ in range(30):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if coded_size(Uniform(step=mid, dead_zone=0.2), w)[1] <= mse else (lo, mid)
    uniform_size, uniform_mse = coded_size(Uniform(step=lo, dead_zone=0.2), w)
    assert uniform_mse <= mse
    assert size < 0.98 * uniform_size, (size, uniform_size, size / uniform_size)


def test_the_rate_term_trades_error_for_bytes():
    w = np.random.default_rng(6).laplace(size=(100, 128)).astype(np.float32)
    plain, rated = coded_size(Tcq(step=0.5, rate_weight=0), w), coded_size(Tcq(step=0.5, rate_weight=0.3), w)
    assert rated[0] < plain[0] and rated[1] > plain[1]


def one_line(exc, *needles):
    text = str(exc.value)
    assert "\n" not in text and all(n in text for n in needles), text


def test_encode_errors_are_one_line():
    w = Dense.of(np.random.default_rng(9).normal(size=(4, 5)).astype(np.float32))
    cases = [
        (Tcq(rel_step=0.1), w, ("fitted",)),
        (Tcq(step=1e-12), Dense.of(np.array([1e6], np.float32)), ("larger step",)),
        (Tcq(step=1e-6), Dense.of(np.linspace(-1, 1, 300_000)), ("levels", "larger step")),
        (Tcq(step=1.0), Dense.of(np.array([1.0, np.nan], np.float32)), ("NaN",)),
        (Tcq(step=1.0), Dense.of(np.arange(4, dtype=np.int32)), ("float",)),
        (Tcq(step=1.0, weighting="activation"), w, ("'activation' side input", "--calibration")),
        (Tcq(step=1.0, weighting="fisher"), Dense(w.array, "F32", {"fisher": -np.ones((4, 5))}), (">= 0",)),
        (Tcq(step=1.0, weighting="fisher"), Dense(w.array, "F32", {"fisher": np.ones((5, 4))}), ("[5, 4]",)),
    ]
    for stage, stream, needles in cases:
        with pytest.raises(ConfigError) as exc:
            stage.encode(stream)
        one_line(exc, "tcq", *needles)


@pytest.mark.parametrize("config, needle", [
    ({}, "exactly one"), ({"step": 1.0, "rel_step": 1.0}, "exactly one"), ({"step": 0}, "step"),
    ({"step": True}, "step"), ({"step": 1, "rate_weight": -1}, "rate_weight"),
    ({"step": 1, "rate_weight": float("nan")}, "rate_weight"), ({"step": 1, "weighting": "hessian"}, "weighting"),
    ({"step": 1, "bits": 3}, "bits")])
def test_bad_configs_are_config_errors(config, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        Tcq.from_config(config)
    one_line(exc)


def test_bad_metadata_and_streams_are_format_errors_naming_the_stage():
    w = Dense.of(np.random.default_rng(3).laplace(size=(6, 10)).astype(np.float32))
    outputs, meta, _ = encode_decode(Tcq(step=0.5), w)
    levels1 = np.frombuffer(meta["levels1"], "<i4")
    bad_meta = [{"dtype": "I32"}, {"shape": [61]}, {"shape": [1] * 33}, {"run": 0}, {"run": 4097}, {"run": True},
                {"levels0": b"\x00\x00"}, {"codebook0": meta["codebook0"][:-4]}, {"levels1": levels1[::-1].tobytes()},
                {"levels1": meta["levels1"][:-4], "codebook1": meta["codebook1"][:-4]}, {"codebook1": "x"},
                {"levels0": (np.frombuffer(meta["levels0"], "<i4") + 1).astype("<i4").tobytes()}]
    for change in bad_meta:
        with pytest.raises(FormatError, match="^tcq: "):
            Tcq(step=0.5).decode(outputs, msgpack.unpackb(msgpack.packb({**meta, **change})))
    q0 = outputs["q0"]
    for streams in ({"q0": q0}, {**outputs, "q0": Symbols(q0.array[:-1], q0.alphabet)},
                    {**outputs, "q0": Symbols(q0.array.astype(np.float32), q0.alphabet)},
                    {**outputs, "q0": Symbols(np.full(q0.array.size, 99, np.uint16), 100)}):
        with pytest.raises(FormatError, match="^tcq: "):
            Tcq(step=0.5).decode(streams, meta)


def test_decode_bound_is_a_limit_error_naming_the_stage():
    outputs, meta, _ = encode_decode(Tcq(step=0.5), Dense.of(np.zeros((16, 4096), np.float32)))
    token = _OUTPUT_LIMIT.set(2**16)
    try:
        with pytest.raises(LimitError, match="^tcq: "):
            Tcq(step=0.5).decode(outputs, meta)
    finally:
        _OUTPUT_LIMIT.reset(token)


C_KERNELS = _kernels._load("c") is not None


@pytest.mark.skipif(not C_KERNELS, reason="the C kernels are not built here (numpy runs the search alone)")
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(1,), (7,), (2500,), (9, 33), (3, 4100), (0, 4)]),
       st.sampled_from([0.0, 0.1, 0.4]), st.sampled_from([0.05, 0.4, 3.0]))
def test_c_and_numpy_searches_give_the_same_levels(seed, shape, rate_weight, step):
    """The C search and numpy's take the same candidates, costs, ties and traceback: the same bytes either way."""
    w = np.random.default_rng(seed).laplace(size=shape)
    w[..., ::5] = np.round(w[..., ::5] / step) * step  # values on the grid: ties between candidates
    results = []
    for path in ("numpy", "c"):
        with coder_path(path):
            outputs, meta = Tcq(step=step, rate_weight=rate_weight).encode(Dense.of(w.astype(np.float32)))
        results.append(({k: v.array.tobytes() for k, v in outputs.items()}, meta))
    assert results[0] == results[1]
