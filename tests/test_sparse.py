"""The `sparse` stage: bit-exact round trips for every dtype and shape, filler placement, and hostile streams."""

from __future__ import annotations

import numpy as np
import pytest
from dcframe_plugins.sparse import Sparse
from hypothesis import given
from hypothesis import strategies as st

import dcframe
from dcframe import ConfigError, Dense, FormatError, Symbols
from dcframe.core.orchestrator import roundtrip
from dcframe.core.pipeline import build_chain, parse_pipeline
from dcframe.testing import check_stage

DTYPES = ["F32", "F64", "F16", "BF16", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"]


def dense_of_bits(bits: np.ndarray, dtype: str) -> Dense:
    """A Dense whose elements have exactly these bit patterns (any float pattern: -0.0, NaN payloads, inf)."""
    carrier = dcframe.numpy_dtype(dtype)
    if dtype == "BOOL":
        return Dense((bits.astype(np.uint8) & 1).view(np.bool_), dtype)
    return Dense(bits.astype(f"<u{carrier.itemsize}").view(carrier), dtype)  # astype copies: C order, 0-d kept


def encode_decode(dense: Dense, index_bits: int) -> tuple[dict, Dense]:
    stage = Sparse(index_bits=index_bits)
    streams, meta = stage.encode(dense)
    return streams, stage.decode(streams, meta)


@st.composite
def sparse_tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
    if draw(st.booleans()):
        shape = (draw(st.integers(0, 400)),)  # long 1-D runs: several fillers in a row
    density = draw(st.sampled_from([0.0, 0.005, 0.05, 0.3, 0.9, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bits = rng.integers(0, 2**63, size=shape, dtype=np.uint64, endpoint=True)
    bits[rng.random(shape) >= density] = 0
    special = [0x8000, 0x80000000, 0x8000000000000000, 0x7FC0, 0x7FC00000, 0x7FF8000000000001, 1]  # -0.0, NaN, tiny
    if bits.size and draw(st.booleans()):
        flat = bits.reshape(-1)
        flat[rng.integers(0, flat.size, size=min(3, flat.size))] = rng.choice(special, size=min(3, flat.size))
    return dense_of_bits(bits, dtype), draw(st.integers(1, 9) | st.just(16))


@given(sparse_tensors())
def test_round_trip_is_bit_exact(case):
    dense, index_bits = case
    streams, back = encode_decode(dense, index_bits)
    assert back.dtype == dense.dtype
    assert back.array.shape == dense.array.shape
    assert back.array.tobytes() == dense.array.tobytes()
    positions, values = streams["positions"], streams["values"]
    assert positions.alphabet == 2**index_bits
    assert values.array.ndim == 1 and values.dtype == dense.dtype
    # the values stream holds exactly the elements whose bit pattern is not zero, no filler values
    nonzero = np.ascontiguousarray(dense.array).reshape(-1).view(f"u{dense.array.itemsize}") != 0
    assert values.array.size == int(nonzero.sum()) == int(np.count_nonzero(positions.array))
    # canonical: no filler at the end, every symbol inside the alphabet
    assert positions.array.size == 0 or (positions.array[-1] != 0 and int(positions.array.max()) < 2**index_bits)
    check_stage(Sparse(index_bits=index_bits), dense)  # the laws shared by every stage (meta through msgpack too)


def test_gap_of_exactly_m_is_one_symbol_and_m_plus_one_needs_a_filler():
    m = 2**5 - 1
    x = np.zeros(200, np.float32)
    x[[0, m, 2 * m + 1, 3 * m + 2 + m]] = [1, 2, 3, 4]  # gaps from -1: 1, M, M+1, 2M+1... spelled out below
    streams, back = encode_decode(Dense.of(x), 5)
    # element 0: gap 1 -> [1]; element M: gap M -> [M]; element 2M+1: gap M+1 -> [0, 1];
    # element 4M+2: gap 2M+1 -> [0, 0, 1]
    assert streams["positions"].array.tolist() == [1, m, 0, 1, 0, 0, 1]
    assert streams["values"].array.tolist() == [1, 2, 3, 4]
    assert back.array.tobytes() == x.tobytes()


def test_gap_of_2m_is_one_filler_and_m():
    x = np.zeros(64, np.float32)
    x[2 * 31 - 1] = 5  # gap 2M from the virtual position -1
    streams, back = encode_decode(Dense.of(x), 5)
    assert streams["positions"].array.tolist() == [0, 31]
    assert back.array.tobytes() == x.tobytes()


@pytest.mark.parametrize("array", [
    np.zeros((0,), np.float32), np.zeros((3, 0, 2), np.float64), np.array(0.0, np.float32), np.array(-0.0, np.float32),
    np.array(np.nan, np.float16), np.zeros((7, 5), np.float32), np.ones((4, 6), np.float64),
    np.array([-0.0, 0.0, np.nan, -np.inf, 0.0], np.float32), np.arange(-3, 4, dtype=np.int8),
])
def test_edge_tensors_round_trip(array):
    dense = Dense.of(array)
    for index_bits in (1, 5, 16):
        _, back = encode_decode(dense, index_bits)
        assert back.array.shape == array.shape
        assert back.array.tobytes() == array.tobytes()


def test_all_zero_tensor_stores_nothing():
    streams, back = encode_decode(Dense.of(np.zeros((300, 100), np.float32)), 5)
    assert streams["positions"].array.size == 0 and streams["values"].array.size == 0
    assert back.array.tobytes() == np.zeros((300, 100), np.float32).tobytes()


def test_bf16_bit_patterns_round_trip():
    bits = np.array([0, 0x8000, 0x3F80, 0, 0, 0x7FC1, 0xFF80], np.uint16)  # 0, -0, 1, 0, 0, NaN, -inf
    _, back = encode_decode(Dense(bits, "BF16"), 2)
    assert back.dtype == "BF16" and back.array.tobytes() == bits.tobytes()


def test_round_trip_through_a_container(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(40, 30)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    w[0, 0] = -0.0
    path = tmp_path / "s.dcf"
    dcframe.compress({"w": w}, path, pipeline="sparse(index_bits=4)")
    back = dcframe.decompress(path)["w"]
    assert back.array.tobytes() == w.tobytes()


def test_config():
    assert Sparse().get_config() == {"index_bits": 5}
    assert Sparse.from_config({"index_bits": 8}).index_bits == 8
    for bad in (0, 17, 5.0, True, "5"):
        with pytest.raises(ConfigError):
            Sparse.from_config({"index_bits": bad})
    chain = build_chain(parse_pipeline("sparse(index_bits=8)"))
    assert set(chain.final) == {"positions", "values"}
    x = np.zeros((9, 9), np.float32)
    x[4, 4] = 1
    assert roundtrip(chain, x).array.tobytes() == x.tobytes()


def valid_case():
    x = np.zeros(50, np.float32)
    x[[3, 10, 44]] = [1, 2, 3]
    stage = Sparse(index_bits=3)
    streams, meta = stage.encode(Dense.of(x))
    return stage, streams, meta


@pytest.mark.parametrize("mutate, message", [
    (lambda s, m: m.update(shape=[40]), "reach element"),
    (lambda s, m: m.update(shape=[2, -1]), "bad shape"),
    (lambda s, m: m.update(shape="50"), "bad shape"),
    (lambda s, m: m.update(shape=[1 << 30, 1 << 30]), "limit"),
    (lambda s, m: m.pop("shape"), "bad shape"),
    (lambda s, m: s.update(values=Dense.of(np.ones(2, np.float32))), "values hold"),
    (lambda s, m: s.update(values=Dense.of(np.ones((3, 1), np.float32))), "1-D"),
    (lambda s, m: s.update(positions=Symbols(s["positions"].array, 16)), "alphabet"),
    (lambda s, m: s.update(positions=Symbols(np.append(s["positions"].array, 0).astype(np.uint8), 8)), "filler"),
    (lambda s, m: s.update(positions=Symbols(np.array([1, 9, 1], np.uint8), 8)), "outside"),
    (lambda s, m: s.update(positions=Dense.of(np.zeros(3, np.float32))), "needs a symbols"),
])
def test_decoder_rejects_inconsistent_streams(mutate, message):
    stage, streams, meta = valid_case()
    mutate(streams, meta)
    with pytest.raises(FormatError, match=message):
        stage.decode(streams, meta)


@given(st.lists(st.integers(0, 7), max_size=40), st.integers(0, 12), st.lists(st.integers(0, 80), max_size=3))
def test_decoder_never_fails_otherwise_on_arbitrary_streams(symbols, n_values, shape):
    stage = Sparse(index_bits=3)
    streams = {"positions": Symbols(np.array(symbols, np.uint8), 8),
               "values": Dense.of(np.arange(1, n_values + 1, dtype=np.float32))}
    try:
        out = stage.decode(streams, {"shape": shape})
    except FormatError:
        return
    assert out.array.shape == tuple(shape)
    assert np.count_nonzero(out.array) == n_values  # every value landed on its own element


def test_worked_example_of_the_spec():
    x = np.zeros(100, np.float32)
    x[[7, 8, 15, 31, 50]] = [1, 2, 3, 4, 5]
    streams, back = encode_decode(Dense.of(x), 3)
    assert streams["positions"].array.tolist() == [0, 1, 1, 7, 0, 0, 2, 0, 0, 5]  # spec/stages/sparse.md, Encoding
    assert back.array.tobytes() == x.tobytes()


def _peak(fn) -> tuple[object, int]:
    """Run fn under tracemalloc; return its result (or the DcfError it raised) and the peak bytes it allocated."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            result = fn()
        except dcframe.DcfError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_filler_stream_is_refused_without_64_bit_temporaries():
    """Issue 15 item 1: 2^25 fillers with index_bits=1 reach far beyond a 2^20-element tensor. The old decoder built
    int64 arrays over every symbol (about 0.5 GB here) before its range check; now the check is a reduction."""
    symbols = np.zeros((1 << 25) + 1, dtype=np.uint8)
    symbols[-1] = 1
    stage = Sparse(index_bits=1)
    streams = {"positions": Symbols(symbols, 2), "values": Dense(np.ones(1, np.float32), "F32")}
    err, peak = _peak(lambda: stage.decode(streams, {"shape": [1 << 20]}))
    assert isinstance(err, FormatError) and "reach element 33554432" in str(err)
    assert peak < 1 << 20, f"refusing cost {peak} bytes"


def test_long_positions_decode_chunk_by_chunk_in_bounded_memory():
    """A legal stream of several CHUNKs of fillers and values decodes exactly, with memory of the output plus a few
    chunks' temporaries (not 16+ bytes per symbol)."""
    from dcframe_plugins import sparse as sparse_module
    n = 3 * sparse_module.CHUNK + 12345
    dense = np.zeros(n, np.float32)
    dense[np.random.default_rng(3).choice(n, 900, replace=False)] = 1.5
    dense[-1] = 2.0
    stage = Sparse(index_bits=1)  # one symbol per element: n symbols, nearly all fillers
    streams, meta = stage.encode(Dense.of(dense))
    assert streams["positions"].array.size > 3 * sparse_module.CHUNK
    back, peak = _peak(lambda: stage.decode(streams, meta))
    assert back.array.tobytes() == dense.tobytes()
    assert peak < dense.nbytes + 6 * 8 * sparse_module.CHUNK, f"decoding cost {peak} bytes"
