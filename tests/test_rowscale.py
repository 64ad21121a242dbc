"""Tests of the `rowscale` stage: exact power-of-two row scales from the activation side input, bit-exact round trips
in every float dtype, rows kept as they are when halving them is not exact, hostile streams, and its use before a
quantizer (the rarely used rows get the coarser step)."""

import numpy as np
import pytest
from dcframe_plugins.rowscale import RowScale
from dcframe_plugins.uniform import Uniform
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dcframe import ConfigError, Dense, FormatError, Symbols
from dcframe.core.dtypes import f32_to_bf16, to_float
from dcframe.testing import check_stage, encode_decode


def bits(dense: Dense) -> bytes:
    return np.ascontiguousarray(dense.array).tobytes()


def test_worked_example_of_the_spec_page():
    w = np.array([[1.0, -3.0], [0.5, 8.0]], np.float32)
    outputs, meta = RowScale().encode(Dense(w, "F32", {"activation": np.array([[1.0, 2.0], [0.0, 0.0]])}))
    assert outputs["values"].array.tolist() == [[1.0, -3.0], [0.25, 4.0]]
    assert outputs["exponents"].array.tolist() == [0, 1] and outputs["exponents"].alphabet == 2
    assert meta == {}


CARRIERS = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def dense_of(values: np.ndarray, dtype: str, side: dict | None = None) -> Dense:
    if dtype == "BF16":
        return Dense(f32_to_bf16(values.astype(np.float32)), "BF16", side or {})
    return Dense(values.astype(CARRIERS[dtype]), dtype, side or {})


@given(st.sampled_from(["F64", "F32", "F16", "BF16"]), st.integers(1, 15),
       hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                  elements=st.floats(-1e4, 1e4, allow_subnormal=True) | st.sampled_from([np.nan, np.inf, -0.0])),
       st.data())
def test_roundtrip_is_bit_exact_and_scales_only_unused_rows(dtype, shift, values, data):
    rows = values.shape[0]
    unused = np.array(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    activation = np.broadcast_to(np.where(unused, 0.0, 1.0).reshape((rows,) + (1,) * (values.ndim - 1)),
                                 values.shape)
    dense = dense_of(values, dtype, {"activation": activation})
    outputs, meta, decoded = encode_decode(RowScale(shift=shift), dense)
    assert bits(decoded) == bits(dense) and decoded.dtype == dtype
    e = outputs["exponents"].array
    assert set(np.flatnonzero(e)) <= set(np.flatnonzero(unused))  # only unused rows are scaled, by 2^shift
    assert np.all((e == 0) | (e == shift))
    scaled = to_float(outputs["values"].array, dtype).astype(np.float64).reshape(rows, -1)
    original = to_float(dense.array, dtype).astype(np.float64).reshape(rows, -1)
    finite = np.isfinite(original)
    np.testing.assert_array_equal(np.where(finite, scaled * 2.0 ** e[:, None], 0), np.where(finite, original, 0))


def test_rows_whose_halving_is_not_exact_keep_exponent_zero():
    w = np.array([[1e-45, 1.0], [3.0, 5.0], [np.float32(2.0 ** -126), 1.0]], np.float32)  # subnormal; the least normal
    outputs, _, decoded = encode_decode(RowScale(), Dense(w, "F32", {"activation": np.zeros((3, 2))}))
    assert outputs["exponents"].array.tolist() == [0, 1, 1]  # 2^-126 / 2 is a subnormal, exact, and comes back
    assert bits(decoded) == w.tobytes()


def test_without_activation_every_exponent_is_zero():
    w = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    outputs, _ = RowScale().encode(Dense.of(w))
    assert outputs["exponents"].array.tolist() == [0] * 5 and outputs["exponents"].alphabet == 1
    assert outputs["values"].array.tobytes() == w.tobytes()


def test_nan_payloads_survive_a_scaled_row():
    w = np.array([[0.5, 1.0]], np.float32)
    w.view(np.uint32)[0, 0] = 0x7F800001  # a signalling NaN: multiplying would quiet it
    outputs, _, decoded = encode_decode(RowScale(shift=3), Dense(w, "F32", {"activation": np.zeros((1, 2))}))
    assert outputs["exponents"].array.tolist() == [3] and bits(decoded) == w.tobytes()


@pytest.mark.parametrize("dtype, big", [("F32", 3e38), ("F16", 60000.0), ("BF16", 3e38)])
def test_decode_overflows_to_infinity(dtype, big):
    values = dense_of(np.array([[big, -big, 1.0]]), dtype)
    decoded = RowScale().decode({"values": values, "exponents": Symbols(np.array([1], np.uint8), 2)}, {})
    out = to_float(decoded.array, dtype)
    assert out[0, 0] == np.inf and out[0, 1] == -np.inf and out[0, 2] == 2.0


def test_hostile_streams_raise_format_error():
    values = Dense.of(np.ones((3, 2), np.float32))
    good = Symbols(np.array([0, 1, 0], np.uint8), 2)
    cases = [({"values": values, "exponents": good}, {"x": 1}),
             ({"values": values, "exponents": Symbols(np.array([0, 1], np.uint8), 2)}, {}),
             ({"values": values, "exponents": Symbols(np.array([0, 16, 0], np.uint8), 17)}, {}),
             ({"values": values, "exponents": Symbols(np.array([0, 2, 0], np.uint8), 2)}, {}),
             ({"values": Dense.of(np.ones((3, 2), np.int32)), "exponents": good}, {}),
             ({"values": Dense.of(np.float32(1.0)), "exponents": Symbols(np.zeros(0, np.uint8), 1)}, {}),
             ({"values": values}, {})]
    for streams, meta in cases:
        with pytest.raises(FormatError, match="rowscale"):
            RowScale().decode(streams, meta)


def test_laws_and_bad_configs():
    rng = np.random.default_rng(1)
    act = np.where(rng.random((40, 1)) < 0.5, 0.0, rng.random((40, 1)))
    check_stage(RowScale(shift=2), Dense(rng.normal(0, 0.05, (40, 8)).astype(np.float32), "F32",
                                         {"activation": np.broadcast_to(act, (40, 8))}))
    for bad in (0, 16, 1.5, True):
        with pytest.raises(ValueError):
            RowScale(shift=bad)
    with pytest.raises(ConfigError, match="rank >= 1"):
        RowScale().encode(Dense.of(np.float32(1.0)))
    with pytest.raises(ConfigError, match="float"):
        RowScale().encode(Dense.of(np.ones((2, 2), np.int32)))


def test_before_uniform_the_unused_rows_get_a_coarser_step():
    """rowscale(shift=1) | uniform(step): the error of an unused row is about twice that of a used one, and its
    levels take fewer bits; used rows decode exactly as uniform alone would."""
    rng = np.random.default_rng(2)
    w = rng.laplace(0, 0.05, (400, 64)).astype(np.float32)
    act = np.ones((400, 64))
    act[200:] = 0.0
    dense = Dense(w, "F32", {"activation": act})
    outputs, _ = RowScale().encode(dense)
    assert outputs["exponents"].array.tolist() == [0] * 200 + [1] * 200
    uniform = Uniform(step=0.02)
    symbols, meta = uniform.encode(outputs["values"])
    quantized = uniform.decode(symbols, meta)
    decoded = RowScale().decode({"values": quantized, "exponents": outputs["exponents"]}, {})
    err = (decoded.array - w) ** 2
    ratio = err[200:].mean() / err[:200].mean()
    assert 3.0 < ratio < 5.0  # the MSE of a step twice as wide: about 4x


def test_by_output_gives_every_row_an_exponent_of_about_log4_of_its_sensitivity():
    from dcframe_plugins.rowscale import output_exponents

    g = 4.0 ** -np.arange(6)  # each row 4x less sensitive than the one before
    e = output_exponents(g)
    assert e[0] == 0 and np.all(np.diff(e.astype(int)) == 1)
    w = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    side = {"output": np.broadcast_to(g[:, None], w.shape)}
    outputs, _ = RowScale(shift=15, by="output").encode(Dense(w, "F32", side))
    assert outputs["exponents"].array.tolist() == e.tolist()
    capped, _ = RowScale(shift=2, by="output").encode(Dense(w, "F32", side))  # shift: the largest exponent
    assert capped["exponents"].array.tolist() == np.minimum(e, 2).tolist()
    back = RowScale().decode(outputs, {})
    assert bits(back) == w.tobytes()  # lossless both ways


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1e6)))
def test_by_output_exponents_are_monotone_and_save_bits_at_high_rate(g):
    from dcframe_plugins.rowscale import MAX_SHIFT, output_exponents

    e = output_exponents(g).astype(int)
    assert e.min(initial=0) == 0 and e.max(initial=0) <= MAX_SHIFT
    order = np.argsort(-g, kind="stable")  # more sensitive rows never get a coarser step than less sensitive ones
    assert np.all(np.diff(e[order]) >= 0)
    if g.max() > 0:
        saved = e.mean() + 0.5 * np.log2(g.sum() / np.sum(g * 4.0 ** e))
        assert saved >= 0  # never worse than one step for every row (all exponents 0)


def test_by_output_without_the_side_input_keeps_every_row_and_by_is_stored_only_when_not_the_default():
    w = np.ones((3, 2), np.float32)
    outputs, _ = RowScale(by="output").encode(Dense(w, "F32", {"activation": np.zeros((3, 2))}))
    assert not outputs["exponents"].array.any()
    with pytest.raises(ValueError, match="by must be one of"):
        RowScale(by="rows")
    assert RowScale(shift=2).get_config() == {"shift": 2}
    assert RowScale(by="output").get_config() == {"shift": 1, "by": "output"}
    assert RowScale.from_config({"shift": 1, "by": "output"}).by == "output"
