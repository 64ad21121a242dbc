"""Tests of the `huffman` stage: exact round trips, optimal length-limited codes, and hostile streams."""

import heapq
import itertools

import msgpack
import numpy as np
import pytest
from dcframe_plugins.huffman import LIMIT, Huffman, canonical_codes, choose_segment_size, limited_code_lengths
from hypothesis import given
from hypothesis import strategies as st
from kernel_paths import available, coder_path
from strategies import symbol_arrays

from dcframe import Bytes, ConfigError, DcfError, FormatError, Symbols


def roundtrip(stage: Huffman, array: np.ndarray, alphabet: int) -> tuple[bytes, dict, Symbols]:
    outputs, meta = stage.encode(Symbols(array, alphabet))
    assert list(outputs) == ["data"] and isinstance(outputs["data"], Bytes)
    meta = msgpack.unpackb(msgpack.packb(meta), raw=False)  # as the container stores it
    return outputs["data"].data, meta, stage.decode(dict(outputs), meta)


def table_of(data: bytes) -> np.ndarray:
    """The code-length table at the start of a stream (layout in spec/stages/huffman.md)."""
    size = int.from_bytes(data[:4], "little")
    return np.frombuffer(data, np.uint8, count=size, offset=4)


@given(symbol_arrays(), st.integers(1, 16), st.sampled_from([1, 7, 64, 1000, 4096]))
def test_roundtrip_exact(case, max_bits, segment_size):
    array, alphabet = case
    stage = Huffman(max_bits=max_bits, segment_size=segment_size)
    data, meta, decoded = roundtrip(stage, array, alphabet)
    assert meta == {"count": array.size, "alphabet": alphabet}
    assert decoded.alphabet == alphabet
    assert decoded.array.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    assert decoded.array.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()
    if array.size == 0:
        assert data == b""
        return
    lengths = table_of(data).astype(np.int64)
    distinct = np.unique(array)
    assert np.array_equal(np.flatnonzero(lengths), distinct)
    limit = max(max_bits, int(distinct.size - 1).bit_length())  # documented automatic raise
    assert lengths.max() <= min(limit, LIMIT)
    kraft = sum(2.0 ** -int(x) for x in lengths[lengths > 0])
    assert kraft == (0.5 if distinct.size == 1 else 1.0)


@given(symbol_arrays(), st.integers(1, 40), st.integers(1, 9), st.integers(1, 50))
def test_roundtrip_in_small_blocks(case, segment_size, lanes, block):
    """Many lane blocks (decode) and symbol blocks (encode), with a short last segment in the last block."""
    import dcframe_plugins.huffman as module

    array, alphabet = case
    saved = module.LANES, module.ENCODE_BLOCK
    module.LANES, module.ENCODE_BLOCK = lanes, block
    try:
        with coder_path("numpy"):  # the blocks are the numpy path's
            data, _, decoded = roundtrip(Huffman(segment_size=segment_size), array, alphabet)
    finally:
        module.LANES, module.ENCODE_BLOCK = saved
    assert decoded.array.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()
    assert Huffman(segment_size=segment_size).encode(Symbols(array, alphabet))[0]["data"].data == data


def test_degenerate_cases():
    stage = Huffman()
    for array, alphabet in [(np.zeros(0, np.uint8), 1), (np.zeros(10, np.uint8), 1), (np.full(9, 7, np.uint8), 9),
                            (np.arange(256, dtype=np.uint8), 256), (np.arange(65536, dtype=np.uint16), 65536),
                            (np.array([65535], np.uint16), 65536)]:
        data, _, decoded = roundtrip(stage, array, alphabet)
        assert decoded.array.tobytes() == array.astype(decoded.array.dtype).tobytes()
    # one distinct symbol: code length 1, one zero bit per symbol
    data, _, _ = roundtrip(Huffman(segment_size=4096), np.full(20, 3, np.uint8), 4)
    assert list(table_of(data)) == [0, 0, 0, 1] and data[-3:] == b"\0\0\0"
    # the full alphabet of 2^16 forces 16-bit codes whatever max_bits says
    data, _, _ = roundtrip(Huffman(max_bits=4), np.arange(65536, dtype=np.uint16), 65536)
    assert set(table_of(data)) == {16}


def test_golden_bytes():
    """Symbols 0 0 1 2: lengths 1 2 2, codes 0 10 11 (MSB-first values) written LSB-first: bits 0,0,1,0,1,1."""
    data, _, _ = roundtrip(Huffman(segment_size=4096), np.array([0, 0, 1, 2], np.uint8), 3)
    assert data == bytes([3, 0, 0, 0, 1, 2, 2, 0, 16, 0, 0, 1, 0, 0, 0, 0x34])


def test_segments_are_byte_aligned():
    """Segment ends are stored; every segment starts on a byte boundary."""
    array = np.array([0, 1] * 5, np.uint8)  # 1 bit each, segments of 3 symbols: 3+3+3+1 bits -> 4 bytes
    data, _, _ = roundtrip(Huffman(segment_size=3), array, 2)
    ends = np.frombuffer(data, "<u4", count=4, offset=4 + 2 + 4)
    assert list(ends) == [1, 2, 3, 4]
    # codes 0 -> '0', 1 -> '1': segments 0,1,0 / 1,0,1 / 0,1,0 / 1, LSB-first
    assert data[-4:] == bytes([0b010, 0b101, 0b010, 0b1])


def best_total_bits(freqs: list[int], limit: int) -> int:
    """Brute force: the fewest bits of any prefix code with lengths <= limit (Kraft sum <= 1)."""
    if len(freqs) == 1:
        return freqs[0]
    best = None
    for lengths in itertools.product(range(1, limit + 1), repeat=len(freqs)):
        if sum(2 ** (limit - x) for x in lengths) <= 2 ** limit:
            cost = sum(f * x for f, x in zip(freqs, lengths, strict=True))
            best = cost if best is None else min(best, cost)
    return best


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=6), st.integers(1, 5))
def test_package_merge_is_optimal_small(freqs, limit):
    if len(freqs) > 2 ** limit:
        limit = (len(freqs) - 1).bit_length()
    lengths = limited_code_lengths(np.array(freqs), limit)
    assert lengths.max() <= limit
    assert int(np.dot(lengths.astype(np.int64), freqs)) == best_total_bits(freqs, limit)


def huffman_cost_and_depth(freqs: list[int]) -> tuple[int, int]:
    """Classic unlimited Huffman: its cost (the sum of all merged weights) and the depth of its deepest leaf."""
    heap = [(f, i, 0) for i, f in enumerate(freqs)]
    heapq.heapify(heap)
    total, tie = 0, len(freqs)
    while len(heap) > 1:
        (w1, _, d1), (w2, _, d2) = heapq.heappop(heap), heapq.heappop(heap)
        total += w1 + w2
        heapq.heappush(heap, (w1 + w2, tie, max(d1, d2) + 1))
        tie += 1
    return total, heap[0][2]


@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=200), st.integers(8, 16))
def test_package_merge_against_unlimited_huffman(freqs, limit):
    lengths = limited_code_lengths(np.array(freqs), limit)
    assert lengths.max() <= limit
    cost = int(np.dot(lengths.astype(np.int64), freqs))
    bound, depth = huffman_cost_and_depth(freqs)
    assert cost >= bound  # never better than the unlimited optimum
    if depth <= limit:  # the limit does not bind: the unlimited optimum is reachable
        assert cost == bound


def test_canonical_order_by_length_then_symbol():
    lengths = np.array([3, 0, 1, 3, 2], np.uint8)
    codes, ordered = canonical_codes(lengths)
    assert list(ordered) == [2, 4, 0, 3]
    assert [int(codes[s]) for s in ordered] == [0b0, 0b10, 0b110, 0b111]


def test_config_roundtrip_and_validation():
    stage = Huffman(max_bits=11, segment_size=1000)
    config = msgpack.unpackb(msgpack.packb(stage.get_config()), raw=False)
    assert config == {"max_bits": 11, "segment_size": 1000}
    assert Huffman.from_config(config).get_config() == config
    for bad in [{"max_bits": 17}, {"max_bits": 0}, {"max_bits": True}, {"segment_size": 0}, {"colour": 1}]:
        with pytest.raises(ConfigError):
            Huffman.from_config(bad)
    with pytest.raises(ConfigError):
        Huffman().encode(Symbols(np.array([1, 2], np.uint32), 1 << 17))
    with pytest.raises(ConfigError):
        Huffman().encode(Symbols(np.array([5], np.uint8), 5))


def decode_or_format_error(data: bytes, meta: dict) -> None:
    try:
        out = Huffman().decode({"data": Bytes(data)}, meta)
    except FormatError:
        return
    count, alphabet = meta["count"], meta["alphabet"]
    assert out.array.size == count
    assert out.array.size == 0 or int(out.array.max()) < alphabet


@given(st.binary(max_size=300), st.integers(0, 5000), st.integers(1, 70000))
def test_random_bytes_raise_format_error_only(data, count, alphabet):
    decode_or_format_error(data, {"count": count, "alphabet": alphabet})


@given(symbol_arrays(), st.data())
def test_mutated_streams_raise_format_error_only(case, data):
    array, alphabet = case
    outputs, meta = Huffman(segment_size=data.draw(st.sampled_from([5, 100, 4096]))).encode(Symbols(array, alphabet))
    raw = bytearray(outputs["data"].data)
    action = data.draw(st.sampled_from(["flip", "truncate", "extend", "count", "alphabet", "header"]))
    if action == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "truncate":
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif action == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=8))
    elif action == "count":
        meta["count"] = data.draw(st.integers(0, 2**53 - 1))
    elif action == "alphabet":
        meta["alphabet"] = data.draw(st.integers(-1, 2**20))
    elif action == "header" and len(raw) >= 4:
        raw[0:4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    decode_or_format_error(bytes(raw), meta)


@pytest.mark.parametrize("meta", [{}, {"count": -1, "alphabet": 2}, {"count": 1.5, "alphabet": 2},
                                  {"count": 3, "alphabet": True}, {"count": 3, "alphabet": 0},
                                  {"count": 2**60, "alphabet": 2}, {"count": 0, "alphabet": 2}])
def test_bad_meta_is_format_error(meta):
    with pytest.raises(FormatError):
        Huffman().decode({"data": Bytes(bytes([2, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 5]))}, meta)


def test_specific_violations_are_rejected():
    good = bytes([3, 0, 0, 0, 1, 2, 2, 0, 16, 0, 0, 1, 0, 0, 0, 0x34])
    meta = {"count": 4, "alphabet": 3}
    assert list(Huffman().decode({"data": Bytes(good)}, meta).array) == [0, 0, 1, 2]
    cases = {
        "long code": good[:4] + bytes([1, 2, 17]) + good[7:],
        "kraft < 1": good[:4] + bytes([1, 2, 3]) + good[7:],
        "kraft > 1": good[:4] + bytes([1, 1, 2]) + good[7:],
        "lone symbol of length 2": good[:4] + bytes([0, 2, 0]) + good[7:],
        "table larger than alphabet": bytes([4, 0, 0, 0, 1, 2, 3, 3]) + good[7:],
        "padding bits set": good[:-1] + bytes([0x34 | 0x80]),
        "count 3: bits left over": good,
        "count 7: more bits than the segment has": good,
        "offset past payload": good[:11] + bytes([2, 0, 0, 0]) + good[15:],
        "trailing byte": good + b"\0",
    }
    for name, data in cases.items():
        m = dict(meta, count=int(name[6])) if name.startswith("count") else meta
        with pytest.raises(FormatError):
            Huffman().decode({"data": Bytes(data)}, m)
            print("accepted:", name)


@pytest.mark.parametrize("pipeline", ["kmeans(bits=5)", "prune(sparsity=0.8) | sparse | kmeans(bits=4)"])
def test_in_a_real_chain_huffman_changes_nothing(pipeline):
    """Lossless in a chain: appending `| huffman` leaves the decoded tensor bit-identical."""
    from dcframe.core.orchestrator import roundtrip
    from dcframe.core.pipeline import build_chain, parse_pipeline

    weights = np.random.default_rng(3).laplace(size=(64, 50)).astype(np.float32)
    try:
        plain = build_chain(parse_pipeline(pipeline))
    except DcfError as exc:  # a stage of the chain is not installed here
        pytest.skip(str(exc))
    coded = build_chain(parse_pipeline(pipeline + " | huffman(max_bits=11, segment_size=100)"))
    assert "huffman" in [s.id for s in coded.stages]
    assert roundtrip(coded, weights).array.tobytes() == roundtrip(plain, weights).array.tobytes()


def test_hostile_sizes_do_not_allocate_much():
    """A 22-byte stream claiming 2^16-symbol segments (or 2^53 symbols) stays within a small memory budget."""
    import tracemalloc

    header = bytes([2, 0, 0, 0, 1, 1]) + (1 << 16).to_bytes(4, "little") + (4).to_bytes(4, "little")
    for path in available():
        with coder_path(path):  # the kernels loaded (and compiled) outside the measurement
            Huffman().decode({"data": Bytes(header + b"\xff" * 4)}, {"count": 32, "alphabet": 2})
        tracemalloc.start()
        try:
            with coder_path(path):
                out = Huffman().decode({"data": Bytes(header + b"\xff" * 4)}, {"count": 32, "alphabet": 2})
                assert out.array.tobytes() == b"\1" * 32
                for count in (33, 2**53 - 1):
                    with pytest.raises(FormatError):
                        Huffman().decode({"data": Bytes(header + b"\xff" * 4)}, {"count": count, "alphabet": 2})
            assert tracemalloc.get_traced_memory()[1] < 1 << 20, path
        finally:
            tracemalloc.stop()


def stored_segment_size(data: bytes) -> int:
    size = int.from_bytes(data[:4], "little")
    return int.from_bytes(data[4 + size:8 + size], "little")


@given(st.integers(1, 10**8), st.floats(1.0, 16.0), st.sampled_from([1, 3, 100, 4096, 1 << 16]))
def test_segment_size_rule(count, bits_per_symbol, maximum):
    """The documented rule (spec Encoding step 7): about G payload bits or 2048 segments, at most `maximum`."""
    bits = int(count * bits_per_symbol)
    seg = choose_segment_size(count, bits, maximum)
    if count <= maximum:
        assert seg == maximum
        return
    s8, s4 = -(-8192 * count // bits), -(-4096 * count // bits)
    expect = s8 if count < 65536 or -(-count // s8) >= 256 else max(s4, -(-count // 256))
    assert seg == min(maximum, max(expect, -(-count // 2048)))
    assert 1 <= seg <= maximum
    if seg < maximum:  # full segments average >= 4096 payload bits (8192 for short streams), at most 2048 segments
        assert seg * bits >= (8192 if count < 65536 else 4096) * count and -(-count // seg) <= 2048


@pytest.mark.parametrize("count", [5_000, 100_000, 1_000_000])
def test_adaptive_segments_keep_side_information_small(count):
    """Laplace-like 5-bit indices: the stored S follows the rule and offsets + padding stay under 1% of the payload."""
    rng = np.random.default_rng(count)
    array = np.minimum(np.abs(rng.laplace(scale=3, size=count)).astype(np.int64), 31).astype(np.uint8)
    data, _, decoded = roundtrip(Huffman(), array, 32)
    assert decoded.array.tobytes() == array.tobytes()
    lengths = table_of(data).astype(np.int64)
    bits = int(np.dot(np.bincount(array, minlength=lengths.size)[:lengths.size], lengths))
    seg = stored_segment_size(data)
    assert seg == choose_segment_size(count, bits, 4096)
    if count > 4096:
        assert seg < 4096 and -(-count // seg) > 1
    side = len(data) - bits / 8 - 8 - lengths.size
    assert side < 0.01 * bits / 8


DECODE_PATHS = {  # module constants that force one numpy decoder: scalar, or one symbol per lockstep step
    "scalar": {"SCALAR_LANES": 1 << 30},
    "lockstep": {"SCALAR_LANES": 0},
    "lockstep, small blocks": {"SCALAR_LANES": 0, "LANES": 3, "CHUNK_CELLS": 64, "TILE": 2},
    "lockstep, interleaved": {"SCALAR_LANES": 0, "INTERLEAVE_BYTES": 0},  # what long streams take
    "lockstep, interleaved, small blocks": {"SCALAR_LANES": 0, "INTERLEAVE_BYTES": 0, "LANES": 3, "CHUNK_CELLS": 64,
                                            "TILE": 2},
}
for _kind in available()[1:]:
    DECODE_PATHS[_kind] = {}  # a compiled decoder, c or numba (tests/test_kernels.py compares the paths further)


def decode_with(path: str, data: bytes, meta: dict) -> bytes | str:
    import dcframe_plugins.huffman as module

    saved = {key: getattr(module, key) for key in DECODE_PATHS[path]}
    try:
        for key, value in DECODE_PATHS[path].items():
            setattr(module, key, value)
        with coder_path(path if path in ("c", "numba") else "numpy"):
            return Huffman().decode({"data": Bytes(data)}, meta).array.tobytes()
    except FormatError as exc:
        return f"FormatError: {exc}"
    finally:
        for key, value in saved.items():
            setattr(module, key, value)


@given(symbol_arrays(), st.sampled_from([7, 64, 1000, 4096]), st.integers(1, 16), st.data())
def test_all_decoders_agree(case, segment_size, max_bits, data):
    """Every decode path gives the same symbols, or all reject the same (possibly damaged) stream."""
    array, alphabet = case
    outputs, meta = Huffman(max_bits=max_bits, segment_size=segment_size).encode(Symbols(array, alphabet))
    raw = bytearray(outputs["data"].data)
    if raw and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    results = {path: decode_with(path, bytes(raw), meta) for path in DECODE_PATHS}
    assert len(set(results.values())) == 1, results.keys()
    if bytes(raw) == outputs["data"].data:
        assert results["scalar"] == array.astype(np.uint8 if alphabet <= 256 else np.uint16).tobytes()


@given(st.integers(1, 2000), st.integers(0, 3000), st.integers(1, 9), st.sampled_from([3, 50, 4096]), st.data())
def test_decoders_agree_on_runs_of_long_codes(common, rare, run, segment_size, data):
    """Runs of rare symbols (codes of 9+ bits) among short codes: lanes fall out of step with each other."""
    rng = np.random.default_rng(common * 7919 + rare)
    array = rng.integers(0, 3, common + rare).astype(np.uint8)
    starts = rng.integers(0, common + rare, max(1, rare // max(run, 1)))
    for i in starts:
        array[i:i + run] = rng.integers(3, 200, min(run, array.size - i))
    outputs, meta = Huffman(max_bits=12, segment_size=segment_size).encode(Symbols(array, 200))
    raw = bytearray(outputs["data"].data)
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    results = {path: decode_with(path, bytes(raw), meta) for path in DECODE_PATHS}
    assert len(set(results.values())) == 1, results.keys()
    if bytes(raw) == outputs["data"].data:
        assert results["lockstep"] == array.tobytes()


@pytest.mark.parametrize("tile", [2, 256])
@given(st.integers(1, 40), st.integers(1, 12), st.data())
def test_interleave_lays_lane_words_side_by_side(tile, size, rows, data):
    """Row i of the interleaved words holds word base[k] + i of every lane k, words past the buffer reading as its
    last (a lane whose words run past the buffer is hostile and fails the end check anyway)."""
    import dcframe_plugins.huffman as module

    words = np.random.default_rng(size * 13 + rows).integers(0, 1 << 63, size, dtype=np.int64).view(np.uint64)
    base = np.array(sorted(data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=9))), dtype=np.int64)
    saved, module.TILE = module.TILE, tile
    try:
        lanes = module._interleave(words, base, rows)
    finally:
        module.TILE = saved
    expected = words[np.minimum(base[None, :] + np.arange(rows)[:, None], size - 1)]
    assert lanes.shape == (rows, base.size) and lanes.tobytes() == expected.tobytes()


@pytest.mark.parametrize("path", ["lockstep", "lockstep, interleaved", "lockstep, interleaved, small blocks"])
@pytest.mark.parametrize("run", [3, 8, 40])
def test_lockstep_guess_survives_runs_of_long_codes(path, run):
    """Mostly 1-bit codes make the lockstep guess dozens of codes per 64-bit refill (46 here); runs of 9-bit codes
    break that guess in some lanes (three of them and 43 zeros take 70 bits), whose steps must be redone."""
    rng = np.random.default_rng(run)
    array = np.zeros(60_000, dtype=np.uint8)
    for at in rng.integers(0, array.size - run, 240 // run):
        array[at:at + run] = rng.integers(1, 250, run)
    outputs, meta = Huffman(max_bits=12, segment_size=2000).encode(Symbols(array, 250))
    assert table_of(outputs["data"].data).max() >= 9
    assert decode_with(path, outputs["data"].data, meta) == array.tobytes()


def test_interleaving_skips_lanes_of_very_different_sizes():
    """One segment of 8-10-bit codes among 399 of 1-bit codes: interleaving would copy every lane's words as if it
    were as long as that one (9x the payload), so the decoder reads the payload as it is; memory stays near the
    output, its block buffer and the payload."""
    import tracemalloc

    rng = np.random.default_rng(5)
    array = np.zeros(800_000, dtype=np.uint8)
    array[:2000] = rng.integers(1, 201, 2000)
    outputs, meta = Huffman(max_bits=12, segment_size=2000).encode(Symbols(array, 201))
    data = outputs["data"].data
    assert table_of(data)[1:].min() >= 8 and len(data) < 110_000
    tracemalloc.start()
    try:
        decoded = decode_with("lockstep, interleaved", data, meta)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == array.tobytes()
    assert peak < 2 * array.size + 3 * len(data) + (256 << 10)


@pytest.mark.parametrize("count", [70_001, 300_000])
def test_lockstep_decoder_on_long_streams(count):
    """The default choice on long byte-symbol streams (many lane blocks, a short last segment) decodes exactly."""
    rng = np.random.default_rng(count)
    array = np.minimum(rng.geometric(0.3, count) - 1, 40).astype(np.uint8)  # long rare codes among short ones
    outputs, meta = Huffman(max_bits=14).encode(Symbols(array, 41))
    assert Huffman().decode(outputs, meta).array.tobytes() == array.tobytes()
    assert decode_with("lockstep", outputs["data"].data, meta) == array.tobytes()
    assert decode_with("lockstep, interleaved", outputs["data"].data, meta) == array.tobytes()


def _one_symbol_stream(count: int, seg: int) -> bytes:
    """A valid stream of `count` zeros under a one-symbol code (1 bit each) in segments of `seg` symbols."""
    nseg = -(-count // seg)
    sizes = np.full(nseg, -(-seg // 8), dtype=np.int64)
    sizes[-1] = -(-(count - seg * (nseg - 1)) // 8)
    ends = np.cumsum(sizes).astype("<u4")
    return (b"\x01\x00\x00\x00\x01" + seg.to_bytes(4, "little") + ends.tobytes() + bytes(int(ends[-1])))


def test_declared_count_is_checked_against_the_decode_bound_before_allocating():
    """Issue 15 item 2: `count` was only checked against the payload (8 symbols a byte), so a stream could claim
    8x the decode bound and the decoder allocated it all before the orchestrator's check on the result."""
    import tracemalloc

    from dcframe import LimitError
    from dcframe.core.orchestrator import _OUTPUT_LIMIT

    count = 1 << 22
    data = _one_symbol_stream(count, 1 << 16)  # 512 KiB payload, legal for 2^22 one-bit symbols
    assert Huffman().decode({"data": Bytes(data)}, {"count": count, "alphabet": 1}).array.size == count
    token = _OUTPUT_LIMIT.set(1 << 20)  # a decode whose tensor bound is 1 MiB
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="declared count"):
            Huffman().decode({"data": Bytes(data)}, {"count": count, "alphabet": 1})
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
        _OUTPUT_LIMIT.reset(token)


def test_segment_size_is_bounded_in_config_and_stream():
    """Issue 15 item 4: a segment of up to 2^24 symbols made the vector decoder take 2^24 steps over one lane
    (41 s, 1.2 GB for a 549-byte stream). Segments are now at most 2^16 symbols, in the config and in the stream."""
    assert Huffman(segment_size=1 << 16).segment_size == 1 << 16
    with pytest.raises(ConfigError, match="segment_size"):
        Huffman.from_config({"segment_size": (1 << 16) + 1})
    count = (1 << 16) + 1
    with pytest.raises(FormatError, match="segment size 65537"):
        Huffman().decode({"data": Bytes(_one_symbol_stream(count, count))}, {"count": count, "alphabet": 1})
    ok = _one_symbol_stream(count, 1 << 16)
    assert Huffman().decode({"data": Bytes(ok)}, {"count": count, "alphabet": 1}).array.size == count


@pytest.mark.parametrize("nseg, measure", [(1, True), (12, False)])
def test_long_segments_decode_in_memory_linear_in_the_symbols(nseg, measure):
    """Streams of maximal segments (the scalar loop below 12 lanes, lockstep from 12 on) decode exactly; the scalar
    one with a working set of a few bytes a symbol (tracemalloc slows the lockstep's many small steps too much)."""
    import tracemalloc

    import dcframe_plugins.huffman as module

    rng = np.random.default_rng(nseg)
    array = (rng.geometric(0.4, nseg << 16) % 32).astype(np.uint8)
    saved = module.choose_segment_size
    module.choose_segment_size = lambda count, bits, maximum: maximum
    try:
        outputs, meta = Huffman(segment_size=1 << 16).encode(Symbols(array, 32))
    finally:
        module.choose_segment_size = saved
    assert stored_segment_size(outputs["data"].data) == 1 << 16
    if measure:
        tracemalloc.start()
    try:
        with coder_path("numpy"):  # the numpy path's scalar loop and lockstep
            decoded = Huffman().decode(outputs, meta)
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
    finally:
        tracemalloc.stop()
    assert decoded.array.tobytes() == array.tobytes()
    assert peak < 16 * array.size + (8 << 20), f"decoding {array.size} symbols cost {peak} bytes"


@given(st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(1, 16)), min_size=1, max_size=50))
def test_bit_reverse_reverses_the_low_bits(cases):
    """bit_reverse (two byte lookups since issue 13) against its definition: the low `width` bits, read backwards."""
    from dcframe_plugins.huffman import bit_reverse

    values, widths = (np.array(c) for c in zip(*cases, strict=True))
    expected = [int(f"{v & ((1 << w) - 1):0{w}b}"[::-1], 2) for v, w in cases]
    assert bit_reverse(values, widths).tolist() == expected
    assert bit_reverse(np.arange(1 << 12), 12)[[1, 2, 3, 2048]].tolist() == [2048, 1024, 3072, 1]
