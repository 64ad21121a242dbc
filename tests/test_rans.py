"""Tests of the `rans` stage: exact round trips, size at the order-0 bound, the byte layout, and hostile streams."""

import msgpack
import numpy as np
import pytest
from dcframe_plugins.kmeans import Kmeans
from dcframe_plugins.rans import MAX_STEPS, Rans, choose_lanes, golomb_pack, golomb_unpack, normalize
from hypothesis import given
from hypothesis import strategies as st
from kernel_paths import available, coder_path
from strategies import symbol_arrays

from dcframe import Bytes, ConfigError, Dense, FormatError, LimitError, Symbols
from dcframe.core.orchestrator import _OUTPUT_LIMIT
from dcframe.testing import check_stage


def roundtrip(stage: Rans, array: np.ndarray, alphabet: int) -> tuple[bytes, dict, Symbols]:
    outputs, meta = stage.encode(Symbols(array, alphabet))
    assert list(outputs) == ["data"] and isinstance(outputs["data"], Bytes)
    meta = msgpack.unpackb(msgpack.packb(meta), raw=False)  # as the container stores it
    return outputs["data"].data, meta, stage.decode(dict(outputs), meta)


def entropy_bytes(array: np.ndarray) -> float:
    """The order-0 bound: count x empirical entropy, in bytes."""
    counts = np.bincount(array.reshape(-1).astype(np.int64))
    p = counts[counts > 0] / array.size
    return float(-(p * np.log2(p)).sum() * array.size / 8)


@given(symbol_arrays(), st.integers(1, 16), st.sampled_from([1, 3, 64, 1000]))
def test_roundtrip_exact(case, scale_bits, lanes):
    array, alphabet = case
    data, meta, decoded = roundtrip(Rans(scale_bits=scale_bits, lanes=lanes), array, alphabet)
    assert meta == {"count": array.size, "alphabet": alphabet}
    assert decoded.alphabet == alphabet
    assert decoded.array.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    assert decoded.array.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()
    assert (data == b"") == (array.size == 0)


@pytest.mark.parametrize("array, alphabet", [
    (np.zeros(0, np.uint8), 1),
    (np.array([0], np.uint8), 1),
    (np.full(10_000, 7, np.uint8), 9),
    (np.arange(1 << 16, dtype=np.uint16)[::-1], 1 << 16),  # the full alphabet, every symbol once
    (np.random.default_rng(1).integers(0, 1 << 16, 200_000).astype(np.uint16), 1 << 16),
], ids=["empty", "one", "one-distinct", "full-alphabet", "wide-random"])
def test_degenerate_streams(array, alphabet):
    data, _, decoded = roundtrip(Rans(), array, alphabet)
    assert decoded.array.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()
    if alphabet == 9:  # one distinct symbol costs no words: header, table and final states only
        assert len(data) == 3 + 2 + 1 + 4 * choose_lanes(10_000, 64)  # n D k, 9 table bits (gap 7: 7 bits), K


def test_check_stage_laws():
    rng = np.random.default_rng(2)
    check_stage(Rans(), Symbols(rng.integers(0, 40, 5000).astype(np.uint8), 40))
    check_stage(Rans(scale_bits=8, lanes=3), Symbols(rng.geometric(0.3, 777).astype(np.uint16) % 300, 300))


def test_worked_example():
    """The example of spec/stages/rans.md, Encoding: symbols 0 0 1 2, A = 3, scale_bits = 2, one lane."""
    data, meta, decoded = roundtrip(Rans(scale_bits=2, lanes=1), np.array([0, 0, 1, 2], np.uint8), 3)
    assert data.hex() == "02" "03" "00" "f5" "01" "38004000"
    assert meta == {"count": 4, "alphabet": 3}
    assert decoded.array.tolist() == [0, 0, 1, 2]


def test_size_within_a_thousandth_of_the_entropy():
    """10^6 kmeans indices of Laplace weights: every byte (table, lane states, words) within +0.1% of the bound."""
    weights = np.random.default_rng(3).laplace(0, 0.05, 1_000_000).astype(np.float32)
    indices = Kmeans(bits=5).encode(Dense(weights, "F32"))[0]["indices"]
    data, _, decoded = roundtrip(Rans(), indices.array, indices.alphabet)
    assert np.array_equal(decoded.array, indices.array)
    bound = entropy_bytes(indices.array)
    assert bound < len(data) <= 1.001 * bound, (len(data), bound)


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=300), st.integers(1, 16))
def test_normalize_sums_to_a_power_of_two(counts, bits):
    counts = np.array(counts)
    bits = max(bits, int(counts.size - 1).bit_length())
    freq = normalize(counts, bits)
    assert int(freq.sum()) == 1 << bits and int(freq.min()) >= 1
    # optimal: no single unit moved from one symbol to another lowers sum(count x -log2(freq))
    gain = counts * np.log2((freq + 1) / freq)
    loss = np.where(freq > 1, counts * np.log2(freq / np.maximum(freq - 1, 1)), np.inf)
    assert gain.max() <= loss.min() * (1 + 1e-9)


def test_lanes_bound_the_steps():
    assert choose_lanes(1, 64) == 1 and choose_lanes(10_000, 64) == 10 and choose_lanes(10**6, 64) == 64
    assert choose_lanes(10**7, 64) == -(-10**7 // MAX_STEPS)


def test_encoder_refuses_bad_input():
    with pytest.raises(ConfigError, match="alphabet"):
        Rans().encode(Symbols(np.zeros(3, np.uint32), (1 << 16) + 1))
    with pytest.raises(ConfigError, match="0..3"):
        Rans().encode(Symbols(np.array([4], np.uint8), 4))
    with pytest.raises(ValueError, match="scale_bits"):
        Rans(scale_bits=17)
    with pytest.raises(ValueError, match="lanes"):
        Rans(lanes=0)


# --- hostile streams: the header layout of the worked example, on a longer stream -------------------------------

def sample() -> tuple[bytes, dict]:
    array = np.random.default_rng(4).geometric(0.2, 9000).astype(np.uint8) % 50
    outputs, meta = Rans(scale_bits=10, lanes=8).encode(Symbols(array, 50))
    return outputs["data"].data, meta


def header(data: bytes) -> tuple[int, int]:
    """(offset of the lane count, offset of the first state) of a stream whose D and K are one-byte varints."""
    assert data[1] < 128
    end = golomb_unpack(np.frombuffer(data, np.uint8), 3, data[1], (0, data[2]), "table")[2]
    return end, end + 1


def decode(data: bytes, meta: dict) -> np.ndarray:
    return Rans().decode({"data": Bytes(data)}, meta).array


def test_sample_decodes():
    data, meta = sample()
    lanes_at, states_at = header(data)
    assert data[lanes_at] == 8 and len(decode(data, meta)) == 9000


@pytest.mark.parametrize("edit, match", [
    (lambda d, lp, sp: d[:1] + b"\x00" + d[2:], "distinct"),  # zero distinct symbols
    (lambda d, lp, sp: b"\x11" + d[1:], "scale bits"),  # 17 scale bits
    (lambda d, lp, sp: bytes([d[0] + 1]) + d[1:], "sum to"),  # the table read with one more scale bit
    (lambda d, lp, sp: d[:2] + bytes([d[2] + 1]) + d[3:], "sum to|padding|ends inside|alphabet"),  # another order
    (lambda d, lp, sp: d[:2] + b"\x10" + d[3:], "order"),  # Exp-Golomb order 16
    (lambda d, lp, sp: d[:lp - 1] + bytes([d[lp - 1] | 0x80]) + d[lp:], "padding|sum to"),  # a stray padding bit
    (lambda d, lp, sp: d[:sp] + b"\xff\xff\x00\x00" + d[sp + 4:], "below 2\\^16"),  # a state out of range
    (lambda d, lp, sp: d[:-2], "more than|unread|end in"),  # a truncated lane
    (lambda d, lp, sp: d[:-1], "16-bit words"),  # an odd byte
    (lambda d, lp, sp: d + b"\x00\x00", "unread|end in"),  # a word too many
    (lambda d, lp, sp: d[:lp] + b"\x00" + d[lp + 1:], "lanes"),  # zero lanes
    (lambda d, lp, sp: d[:lp] + b"\x01" + d[lp + 1:], "lanes|words|state"),  # one lane: states do not line up
    (lambda d, lp, sp: d[:lp] + b"\x88\x00" + d[lp + 1:], "shortest"),  # a non-shortest varint
    (lambda d, lp, sp: d[:lp] + b"\x88\x80\x80\x00" + d[lp + 1:], "lane count: .*longer than 3 bytes"),  # 4 bytes
    (lambda d, lp, sp: d[:5], "ends inside|sum to"),  # cut in the table
])
def test_hostile_streams_raise_format_errors(edit, match):
    data, meta = sample()
    lanes_at, states_at = header(data)
    with pytest.raises(FormatError, match=match):
        decode(edit(data, lanes_at, states_at), meta)


def test_table_symbol_beyond_the_alphabet():
    data, meta = sample()
    top = int(np.random.default_rng(4).geometric(0.2, 9000).astype(np.uint8).__mod__(50).max())
    assert data[1] <= top  # D fits the smaller alphabet, so the check that fires is the symbol's
    with pytest.raises(FormatError, match="names symbol"):
        decode(data, {"count": 9000, "alphabet": top})


@given(st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)), min_size=1, max_size=60),
       st.integers(0, 15), st.binary(max_size=4))
def test_golomb_codes_round_trip(pairs, order, tail):
    values = np.array(pairs).reshape(-1)
    packed = golomb_pack(values, np.tile([0, order], len(pairs)))
    for path in available():
        with coder_path(path):
            first, second, end = golomb_unpack(np.frombuffer(packed.tobytes() + tail, np.uint8), 0, len(pairs),
                                               (0, order), "t")
        assert end == packed.size and np.array_equal(np.column_stack([first, second]).reshape(-1), values), path


def test_table_codes_and_size_are_bounded():
    """A code of more than 16 bits after its 1 is refused, and so is a table of more symbols than the count."""
    long_code = golomb_pack(np.array([0, 1 << 17]), np.array([0, 0]))  # 2^17 + 1 has 17 bits after its top 1
    for path in available():
        with coder_path(path), pytest.raises(FormatError, match="longer than allowed"):
            golomb_unpack(long_code, 0, 1, (0, 0), "table")
    data, _ = sample()
    with pytest.raises(FormatError, match="distinct symbols for"):
        decode(data, {"count": data[1] - 1, "alphabet": 50})


def test_damaged_word_is_caught_at_the_final_states():
    data, meta = sample()
    bad = bytearray(data)
    bad[len(bad) // 2 + 200] ^= 0x10
    with pytest.raises(FormatError):
        decode(bytes(bad), meta)


@pytest.mark.parametrize("meta", [{"count": -1, "alphabet": 50}, {"count": 9000, "alphabet": 0},
                                  {"count": True, "alphabet": 50}, {"alphabet": 50}, {"count": 9000, "alphabet": 2**17},
                                  {"count": 8999, "alphabet": 50}, {"count": 10**6, "alphabet": 50}])
def test_bad_meta(meta):
    data, _ = sample()
    with pytest.raises(FormatError):
        decode(data, meta)


def test_declared_count_over_the_bound_is_a_limit_error():
    data, meta = sample()
    token = _OUTPUT_LIMIT.set(1 << 20)
    try:
        with pytest.raises(LimitError, match="declared count"):
            decode(data, {"count": 2**40, "alphabet": 50})
        assert len(decode(data, meta)) == 9000
    finally:
        _OUTPUT_LIMIT.reset(token)


def test_empty_count_needs_an_empty_stream():
    with pytest.raises(FormatError, match="0 symbols"):
        decode(b"\x00", {"count": 0, "alphabet": 4})


@given(st.data())
def test_mutated_streams_raise_only_format_errors(data):
    stream, meta = sample()
    raw = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 2))
        if op == 0 and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif op == 1:
            del raw[data.draw(st.integers(0, len(raw))):]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        out = decode(bytes(raw), meta)
    except FormatError:
        return
    assert out.size == 9000  # a mutation the checks cannot see still gives exactly `count` symbols

