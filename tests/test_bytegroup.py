"""Tests of the `bytegroup` stage: bit-exact round trips for every dtype, the plane layout, chains, hostile streams."""

import msgpack
import numpy as np
import pytest
from dcframe_plugins.bytegroup import BLOCK, ByteGroup, join_planes, split_planes
from dcframe_plugins.rans import Rans
from hypothesis import given
from hypothesis import strategies as st
from strategies import dense_tensors

from dcframe import Bytes, DcfError, Dense, FormatError, LimitError, Symbols
from dcframe.core.dtypes import DTYPE_NAMES, FLOAT_DTYPES, numpy_dtype
from dcframe.core.orchestrator import _OUTPUT_LIMIT, roundtrip
from dcframe.core.pipeline import build_chain, parse_pipeline
from dcframe.testing import check_stage, encode_decode


def exact(a: Dense, b: Dense) -> bool:
    return (a.dtype, a.array.shape, np.ascontiguousarray(a.array).tobytes()) == \
        (b.dtype, b.array.shape, np.ascontiguousarray(b.array).tobytes())


@given(dense_tensors())
def test_roundtrip_bit_exact_every_dtype(dense):
    outputs, meta, decoded = encode_decode(ByteGroup(), dense)
    assert exact(decoded, dense)
    n, width = dense.array.size, dense.array.dtype.itemsize
    assert outputs["exponent"].alphabet == 256 and outputs["exponent"].array.size == n
    assert len(outputs["mantissa"].data) == n * (width - 1)
    assert meta == {"dtype": dense.dtype, "shape": list(dense.array.shape)}


@pytest.mark.parametrize("dtype", sorted(FLOAT_DTYPES))
def test_special_floats_come_back_bit_exact(dtype):
    """NaN payloads (quiet and signalling, both signs), infinities, -0.0 and subnormals, as raw bit patterns."""
    width = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16}[dtype]
    mant = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7}[dtype]
    top = (1 << (width - 1)) - (1 << mant)  # +inf
    sign = 1 << (width - 1)
    bits = [0, sign, 1, sign | 1, (1 << mant) - 1, top, sign | top, top | 1, top | (1 << (mant - 1)) | 5,
            sign | top | 3, (1 << width) - 1]
    array = np.array(bits, dtype=f"<u{width // 8}")
    dense = Dense(array, dtype) if dtype == "BF16" else Dense(array.view(f"<f{width // 8}"), dtype)
    _, _, decoded = encode_decode(ByteGroup(), dense)
    assert decoded.array.tobytes() == dense.array.tobytes()


def test_worked_example_of_the_spec_page():
    outputs, meta = ByteGroup().encode(Dense.of(np.array([1.0, -2.0], np.float32)))
    assert outputs["exponent"].array.tolist() == [127, 128]
    assert outputs["mantissa"].data.hex() == "000000000001"
    assert meta == {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_exponent_plane_is_the_top_byte_after_rotation(dtype):
    """Floats: the exponent plane holds exponent bits only (the sign went to the bottom); integers: the top byte."""
    rng = np.random.default_rng(3)
    carrier = numpy_dtype(dtype)
    words = rng.integers(0, 256, carrier.itemsize * 100, dtype=np.uint8)
    if dtype == "BOOL":
        words &= 1
    array = words.view(carrier)
    planes = split_planes(array, dtype)
    unsigned = words.view(f"<u{carrier.itemsize}").astype(np.uint64)
    bits = 8 * carrier.itemsize
    if dtype in FLOAT_DTYPES:
        unsigned = ((unsigned << np.uint64(1)) | (unsigned >> np.uint64(bits - 1))) & np.uint64((1 << bits) - 1)
    for p in range(carrier.itemsize):
        expected = (unsigned >> np.uint64(8 * (carrier.itemsize - 1 - p))) & np.uint64(0xFF)
        assert planes[p].tolist() == expected.tolist()
    assert join_planes(planes[0], planes[1:], dtype).tobytes() == array.tobytes()


def reference_planes(array: np.ndarray, dtype: str) -> np.ndarray:
    """The planes computed the plain way (a whole-array rotation, then a byte transpose), to check the blocked code."""
    words = array.reshape(-1).view(f"<u{array.itemsize}").astype(np.uint64)
    bits = 8 * array.itemsize
    if dtype in FLOAT_DTYPES:
        words = ((words << np.uint64(1)) | (words >> np.uint64(bits - 1))) & np.uint64((1 << bits) - 1)
    return np.stack([(words >> np.uint64(8 * (array.itemsize - 1 - p))).astype(np.uint8)
                     for p in range(array.itemsize)])


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F64", "I16", "U8"])
@pytest.mark.parametrize("count", [BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5])
def test_planes_across_block_boundaries(dtype, count):
    """split_planes and join_planes work block by block: every element on both sides of a block edge is exact."""
    carrier = numpy_dtype(dtype)
    words = np.random.default_rng(count).integers(0, 256, carrier.itemsize * count, dtype=np.uint8)
    array = words.view(carrier)
    planes = split_planes(array, dtype)
    assert planes.tobytes() == reference_planes(array, dtype).tobytes()
    assert join_planes(planes[0], planes[1:], dtype).tobytes() == array.tobytes()


def test_check_stage_laws():
    rng = np.random.default_rng(4)
    check_stage(ByteGroup(), Dense.of(rng.normal(0, 0.02, (64, 48)).astype(np.float32)))
    check_stage(ByteGroup(), Dense.of(rng.integers(-1000, 1000, 500).astype(np.int32)))
    check_stage(ByteGroup(), Dense.of(np.zeros((0, 3), np.float16)))


@pytest.mark.parametrize("pipeline", ["bytegroup | rans", "bytegroup | huffman", "bytegroup | zstd(level=1) | rans",
                                      "bytegroup | raw | zstd(level=3)", "bytegroup"])
@given(dense=dense_tensors())
def test_chains_round_trip(pipeline, dense):
    chain = build_chain(parse_pipeline(pipeline))
    assert exact(roundtrip(chain, dense), dense)


def test_each_coder_sees_its_own_plane():
    """In `bytegroup | zstd | rans` zstd codes the mantissa planes only and rans the exponent plane only."""
    chain = build_chain(parse_pipeline("bytegroup | zstd(level=1) | rans"))
    assert [(s.stage.id, s.inputs) for s in chain.steps] == [
        ("bytegroup", ("data",)), ("zstd", ("mantissa",)), ("rans", ("exponent",))]


def test_weights_shrink_and_random_mantissas_cost_nothing():
    """On Gaussian weights the exponent plane carries few bits; the stored mantissa costs exactly its bytes."""
    rng = np.random.default_rng(5)
    weights = Dense.of(rng.normal(0, 0.05, 200_000).astype(np.float32))
    outputs, _ = ByteGroup().encode(weights)
    coded, _ = Rans().encode(outputs["exponent"])
    assert len(coded["data"].data) < 0.45 * weights.array.size  # < 3.6 bits per exponent
    assert len(outputs["mantissa"].data) == 3 * weights.array.size


def decode(streams: dict, meta: dict) -> Dense:
    return ByteGroup().decode(streams, msgpack.unpackb(msgpack.packb(meta), raw=False))


GOOD = {"exponent": Symbols(np.array([127, 128], np.uint8), 256), "mantissa": Bytes(bytes(6))}


@pytest.mark.parametrize("streams, meta, message", [
    (GOOD, {"dtype": "F99", "shape": [2]}, "unknown dtype"),
    (GOOD, {"shape": [2]}, "dtype name"),
    (GOOD, {"dtype": "F32", "shape": [True, 2]}, "bad shape"),
    (GOOD, {"dtype": "F32", "shape": [3]}, "exponent plane has 2"),
    (GOOD, {"dtype": "F16", "shape": [2]}, "mantissa planes have 6"),
    ({**GOOD, "exponent": Symbols(np.array([1, 2], np.uint8), 255)}, {"dtype": "F32", "shape": [2]}, "alphabet"),
    ({**GOOD, "exponent": Symbols(np.array([1, 300], np.uint16), 256)}, {"dtype": "F32", "shape": [2]},
     "symbol 300"),
    ({**GOOD, "exponent": Symbols(np.array([1, -1], np.int16), 256)}, {"dtype": "F32", "shape": [2]}, "negative"),
    ({**GOOD, "exponent": Symbols(np.zeros((1, 2), np.uint8), 256)}, {"dtype": "F32", "shape": [2]}, "1-D"),
    ({"exponent": Bytes(b"ab"), "mantissa": Bytes(bytes(6))}, {"dtype": "F32", "shape": [2]}, "symbols stream"),
    ({"exponent": GOOD["exponent"], "mantissa": Bytes(b"")}, {"dtype": "BOOL", "shape": [2]}, "symbol 128"),
    ({"exponent": GOOD["exponent"]}, {"dtype": "F32", "shape": [2]}, "bytes stream 'mantissa'"),
], ids=["dtype", "no-dtype", "shape", "exponent-count", "mantissa-length", "alphabet", "symbol-range", "negative",
        "rank", "kinds", "bool-byte", "missing"])
def test_hostile_streams_raise_format_error(streams, meta, message):
    with pytest.raises(FormatError, match=message):
        decode(streams, meta)


def test_meta_not_a_map():
    with pytest.raises(FormatError, match="dtype name"):
        ByteGroup().decode(GOOD, [1, 2])


def test_declared_size_over_the_decode_bound_raises_limit_error():
    n = 1 << 20
    streams = {"exponent": Symbols(np.zeros(n, np.uint8), 256), "mantissa": Bytes(bytes(7 * n))}
    token = _OUTPUT_LIMIT.set(4 * n)
    try:
        with pytest.raises(LimitError, match="bytegroup"):
            ByteGroup().decode(streams, {"dtype": "F64", "shape": [n]})
    finally:
        _OUTPUT_LIMIT.reset(token)


@given(st.binary(max_size=64), st.binary(max_size=64), st.sampled_from(DTYPE_NAMES), st.integers(0, 20))
def test_random_streams_decode_or_raise_dcf_errors_only(exp, mant, dtype, n):
    streams = {"exponent": Symbols(np.frombuffer(exp, np.uint8), 256), "mantissa": Bytes(mant)}
    try:
        out = ByteGroup().decode(streams, {"dtype": dtype, "shape": [n]})
    except DcfError as exc:
        assert isinstance(exc, (FormatError, LimitError))
    else:
        assert out.array.shape == (n,) and out.dtype == dtype
