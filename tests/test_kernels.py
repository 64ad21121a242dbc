"""The compiled kernels (the C extension, and numba with the `fast` extra) and the numpy path of huffman and rans agree
exactly: the same bytes from the encoders, the same symbols from the decoders, the same FormatError (class and message)
on damaged streams; every kernel kind is compared with numpy. DCFRAME_KERNELS chooses the path, `auto` takes the C
kernels wherever they are built, and nothing imports numba before a stage codes something."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from dcframe_plugins import _kernels
from dcframe_plugins.huffman import LIMIT, Huffman, bit_reverse, canonical_codes, limited_code_lengths
from dcframe_plugins.rans import EXCHANGE_ROUNDS, Rans, _log_steps, golomb_pack, normalize_all
from hypothesis import given
from hypothesis import strategies as st
from kernel_paths import coder_path, simd_path, simd_paths
from strategies import symbol_arrays

from dcframe import Bytes, ConfigError, DcfError, Symbols

KINDS = ("c", "numba")


def compiler_present() -> bool:
    """Whether setup.py's build could run here: the C compiler Python was built with, and Python's headers."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return bool(cc) and shutil.which(cc[0]) is not None and headers.is_file()


def required(kind: str) -> bool:
    """CI must test every path it can: numba (it installs the `fast` extra) and, with a compiler there, the C build."""
    return bool(os.environ.get("CI")) and (kind == "numba" or compiler_present())


@pytest.fixture(scope="module", params=KINDS)
def kind(request) -> str:
    """Each kernel kind this install has; in CI a missing one fails instead of skipping (see `required`)."""
    if not _kernels.installed(request.param):
        reason = f"the {request.param} kernels do not import ({_kernels._missing.get(request.param)})"
        if required(request.param):
            pytest.fail(f"CI must test every path: {reason}")
        pytest.skip(reason)
    return request.param


def on_path(path: str, fn):
    """fn() with DCFRAME_KERNELS=path; a DcfError comes back as (class name, message) so results compare."""
    with coder_path(path):
        try:
            return fn()
        except DcfError as exc:
            return type(exc).__name__, str(exc)


def both(kind: str, fn) -> object:
    """fn()'s result on the numpy path and on the `kind` kernels, asserted equal (arrays by dtype and bytes)."""
    results = [on_path(path, fn) for path in ("numpy", kind)]
    keys = [(r.dtype.str, r.tobytes()) if isinstance(r, np.ndarray) else r for r in results]
    assert keys[0] == keys[1], f"numpy path: {str(keys[0])[:200]}\n{kind} kernels: {str(keys[1])[:200]}"
    return results[0]


stages = st.one_of(
    st.builds(Huffman, max_bits=st.integers(1, 16), segment_size=st.sampled_from([1, 7, 64, 1000, 4096])),
    st.builds(Rans, scale_bits=st.integers(1, 16), lanes=st.sampled_from([1, 3, 13, 64, 1000])),
)


def damage(data: bytes, draw) -> bytes:
    """A flipped bit, a changed byte, a truncation or an extension of `data` (an encoder's valid stream)."""
    raw = bytearray(data)
    kind = draw(st.sampled_from(["flip", "byte", "cut", "extend"]))
    if kind == "extend" or not raw:
        return bytes(raw) + draw(st.binary(min_size=1, max_size=8))
    i = draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "byte":
        raw[i] = draw(st.integers(0, 255))
    else:
        del raw[i:]
    return bytes(raw)


@given(symbol_arrays(), stages)
def test_paths_write_the_same_bytes_and_decode_the_same_symbols(kind, case, stage):
    array, alphabet = case
    data = both(kind, lambda: stage.encode(Symbols(array, alphabet))[0]["data"].data)
    meta = {"count": int(array.size), "alphabet": alphabet}
    decoded = both(kind, lambda: stage.decode({"data": Bytes(data)}, meta).array)
    assert decoded.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()


@given(symbol_arrays(), stages, st.data())
def test_paths_reject_damaged_streams_alike(kind, case, stage, data):
    """Flipped bits, changed bytes, cut or extended streams: the same symbols or the same FormatError, both paths."""
    array, alphabet = case
    stream = stage.encode(Symbols(array, alphabet))[0]["data"].data
    bad = damage(stream, data.draw)
    meta = {"count": int(array.size), "alphabet": alphabet}
    result = both(kind, lambda: stage.decode({"data": Bytes(bad)}, meta).array)
    assert isinstance(result, np.ndarray) or result[0] == "FormatError"


@given(st.binary(min_size=1, max_size=300), st.integers(1, 5000), st.sampled_from([1, 2, 32, 256, 300, 65536]),
       st.sampled_from([Huffman, Rans]))
def test_paths_reject_random_bytes_alike(kind, data, count, alphabet, stage):
    result = both(kind, lambda: stage().decode({"data": Bytes(data)}, {"count": count, "alphabet": alphabet}).array)
    assert isinstance(result, np.ndarray) or result[0] == "FormatError"


def test_long_streams_take_the_same_paths(kind):
    """Streams long enough for the numpy path's pair decoder and many lane blocks, 5-bit and 16-bit symbols."""
    rng = np.random.default_rng(13)
    for array, alphabet in [(np.minimum(rng.geometric(0.25, 300_000) - 1, 31).astype(np.uint8), 32),
                            (rng.integers(0, 3000, 200_000).astype(np.uint16), 3000)]:
        for stage in (Huffman(), Rans()):
            data = both(kind, lambda: stage.encode(Symbols(array, alphabet))[0]["data"].data)  # noqa: B023
            meta = {"count": array.size, "alphabet": alphabet}
            assert both(kind, lambda: stage.decode({"data": Bytes(data)}, meta).array).tobytes() == array.tobytes()  # noqa: B023


@pytest.mark.parametrize("segment_size", [64, 1000, 4096])
def test_huffman_multi_symbol_lookups_decode_alike_also_when_damaged(kind, segment_size):
    """Skewed byte symbols (short codes: the C kernel's multi-symbol lookups, several codes per table entry, where a
    group of segments reads only whole words) decode the numpy path's symbols; damaged payloads (bits flipped, so
    code boundaries move; cut; extended) give the same symbols or the same FormatError."""
    rng = np.random.default_rng(23)
    array = np.minimum(rng.geometric(0.45, 120_000) - 1, 31).astype(np.uint8)
    stage = Huffman(segment_size=segment_size)
    data = stage.encode(Symbols(array, 32))[0]["data"].data
    meta = {"count": array.size, "alphabet": 32}
    assert both(kind, lambda: stage.decode({"data": Bytes(data)}, meta).array).tobytes() == array.tobytes()
    for seed in range(12):
        r = random.Random(seed)
        bad = bytearray(data)
        if seed % 3 == 0:
            bad = bad[:r.randrange(len(bad) // 2, len(bad))]
        elif seed % 3 == 1:
            bad += bytes(r.randrange(256) for _ in range(r.randint(1, 9)))
        else:
            for _ in range(1 + seed % 4):
                bad[r.randrange(len(bad) // 2, len(bad))] ^= 1 << r.randrange(8)
        result = both(kind, lambda: stage.decode({"data": Bytes(bytes(bad))}, meta).array)  # noqa: B023
        assert isinstance(result, np.ndarray) or result[0] == "FormatError"
    tsize, nseg = int.from_bytes(data[:4], "little"), -(-array.size // segment_size)
    ends = np.frombuffer(data, "<u4", count=nseg, offset=8 + tsize).copy()
    for moved in (ends[-1] - 1 - np.arange(nseg) % 3, (ends + ends[-1]) // 2):  # segments that start near the end
        moved = np.sort(moved).astype("<u4")  # of the payload, whose reads run past it (clamped on every path)
        moved[-1] = ends[-1]
        bad = data[:8 + tsize] + moved.tobytes() + data[8 + tsize + 4 * nseg:]
        result = both(kind, lambda: stage.decode({"data": Bytes(bad)}, meta).array)  # noqa: B023
        assert result[0] == "FormatError"


def test_huffman_segments_running_past_the_payload_fail_alike(kind):
    """Every segment offset moved to the payload's end but the last: the decoders read far past their segments
    (the kernel's reads are clamped to the buffer) and both fail the end check with the same message."""
    array = np.random.default_rng(1).integers(0, 32, 20_000).astype(np.uint8)
    data = Huffman(segment_size=1000).encode(Symbols(array, 32))[0]["data"].data
    tsize = int.from_bytes(data[:4], "little")
    nseg = 20
    ends = np.frombuffer(data, "<u4", count=nseg, offset=8 + tsize).copy()
    ends[:-1] = ends[:-1] // 2  # earlier starts: the first segments overrun into their neighbours
    bad = data[:8 + tsize] + ends.tobytes() + data[8 + tsize + 4 * nseg:]
    result = both(kind, lambda: Huffman().decode({"data": Bytes(bad)}, {"count": array.size, "alphabet": 32}).array)
    assert result[0] == "FormatError"


def test_rans_truncated_words_fail_alike(kind):
    array = np.random.default_rng(2).integers(0, 200, 50_000).astype(np.uint8)
    data = Rans().encode(Symbols(array, 200))[0]["data"].data
    for cut in (2, 64, 1000):
        result = both(kind, lambda: Rans().decode({"data": Bytes(data[:-cut])}, {"count": array.size, "alphabet": 200}))  # noqa: B023
        assert result[0] == "FormatError"


def test_environment_variable_chooses_the_path(monkeypatch):
    monkeypatch.setenv(_kernels.ENV, "numpy")
    assert _kernels.compiled(1 << 30) is None
    monkeypatch.setenv(_kernels.ENV, "fortran")
    with pytest.raises(ConfigError, match="DCFRAME_KERNELS='fortran' is not one of auto, c, numba, numpy"):
        _kernels.compiled(10)
    monkeypatch.setattr(_kernels, "_modules", {})
    monkeypatch.setattr(_kernels, "_missing", {"numba": "No module named 'numba'",
                                               "c": "No module named 'dcframe_plugins._ckernels'"})
    monkeypatch.setenv(_kernels.ENV, "numba")
    with pytest.raises(ConfigError, match=r"numba, but the kernels do not import .*dcframe\[fast\]"):
        _kernels.compiled(10)
    monkeypatch.setenv(_kernels.ENV, "c")
    with pytest.raises(ConfigError, match=r"DCFRAME_KERNELS=c, but the kernels do not import \(No module named "
                                          r"'dcframe_plugins._ckernels'\); reinstall with a C compiler"):
        _kernels.compiled(10)
    monkeypatch.setenv(_kernels.ENV, "auto")
    assert _kernels.compiled(1 << 30) is None  # auto falls back to numpy
    array = np.arange(100, dtype=np.uint8) % 7
    outputs, meta = Huffman().encode(Symbols(array, 7))
    assert Huffman().decode(outputs, meta).array.tobytes() == array.tobytes()


def test_c_kernels_are_built_where_ci_has_a_compiler():
    """A broken C build must not fall back to numba or numpy unnoticed: in CI, with a compiler present, the extension
    imports."""
    if not required("c"):
        pytest.skip("not CI, or no C compiler: the C kernels are optional")
    assert _kernels.installed("c"), _kernels._missing.get("c")


def test_auto_prefers_the_c_kernels(monkeypatch):
    """Under `auto` every stream, however short, takes the C kernels when they are built: no import threshold."""
    if not _kernels.installed("c"):
        pytest.skip(f"the C kernels are not built ({_kernels._missing.get('c')})")
    monkeypatch.delenv(_kernels.ENV, raising=False)
    assert _kernels.compiled(1) is _kernels._load("c")
    assert _kernels.available()[0] == "c"


KERNELS_LOADED = """
import sys, numpy as np, dcframe
from dcframe.core.registry import get_registry
assert 'huffman' in get_registry().stages
import dcframe_plugins.huffman as h, dcframe_plugins.rans as r
loaded = lambda: ['numba' in sys.modules or 'dcframe_plugins._numba_kernels' in sys.modules,
                  'dcframe_plugins._ckernels' in sys.modules]
print(*loaded())
small = dcframe.Symbols(np.arange(1000, dtype=np.uint8) % 5, 5)
h.Huffman().decode(*h.Huffman().encode(small)), r.Rans().decode(*r.Rans().encode(small))
print(*loaded())
big = dcframe.Symbols(np.arange(1 << 17, dtype=np.uint8) % 5, 5)
h.Huffman().encode(big)
print(*loaded())
"""


def test_kernels_are_imported_only_when_a_stream_is_coded():
    """Importing dcframe and its stages and listing them loads no kernels; under `auto` the first stream loads the C
    kernels where they are built, and numba (about 0.3-1 s of CPU) is then never imported. Without them, only the
    first stream of IMPORT_MIN symbols loads numba's, if installed."""
    env = {k: v for k, v in os.environ.items() if k != _kernels.ENV}
    done = subprocess.run([sys.executable, "-c", KERNELS_LOADED], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    c, numba = _kernels.installed("c"), _kernels.installed("numba")
    expected = [[False, False], [False, c], [numba and not c, c]]
    assert [line.split() for line in done.stdout.splitlines()] == [[str(v) for v in row] for row in expected]
    assert _kernels.IMPORT_MIN == 1 << 17  # the script's long stream


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=300), st.integers(1, 16), st.integers(0, 65535 - 300))
def test_kernel_decode_table_is_the_canonical_code(kind, weights, limit, offset):
    """The kernel builds its table from the code lengths alone (a counting pass, issue 13): every entry is the
    (symbol, length) of the canonical code `canonical_codes` assigns, also for symbols far into a 2^16 alphabet."""
    weights = np.array(weights, dtype=np.int64)
    limit = max(limit, int(weights.size - 1).bit_length())
    lengths = np.zeros(offset + weights.size, dtype=np.int64)
    lengths[offset:] = limited_code_lengths(weights, limit)
    width = int(lengths.max())
    lut = _kernels._load(kind).huffman_table(lengths, width, LIMIT)
    codes, ordered = canonical_codes(lengths)
    rev = bit_reverse(codes[ordered], lengths[ordered])
    for s, n, r in zip(ordered.tolist(), lengths[ordered].tolist(), rev.tolist(), strict=True):
        hits = lut[r::1 << n]  # every window whose first n bits are the code
        assert np.all(hits == (n << 16) | s), (s, n)
    covered = int(np.sum(np.left_shift(1, width - lengths[ordered])))
    assert np.count_nonzero(lut) == covered  # a single symbol's table leaves the other half invalid (0)


def rans_stream(bits: int, freq: list[int], states: list[int], words: list[int]) -> bytes:
    """A hand-built rans stream over symbols 0..len(freq)-1 (one-byte varints: fewer than 128 symbols and lanes)."""
    gaps = np.zeros(len(freq), dtype=np.int64)
    table = golomb_pack(np.column_stack([gaps, np.array(freq) - 1]).reshape(-1), np.tile([0, 15], len(freq)))
    return (bytes([bits, len(freq), 15]) + table.tobytes() + bytes([len(states)])
            + np.array(states, "<u4").tobytes() + np.array(words, "<u2").tobytes())


@pytest.mark.parametrize("count", [1, 1000, 70_000])
@pytest.mark.parametrize("most_lanes", [3, 9])
def test_rans_full_scale_single_symbol_decodes_alike(kind, count, most_lanes):
    """n = 16 with one symbol of frequency 2^16 (17 bits: the kernel's packed table keeps it whole, and the AVX2
    path's 32-bit one as freq - 1): every state stays 2^16 and no word is read; both paths decode the zeros, and a
    stray word is left unread on both."""
    lanes = min(count, most_lanes)
    data = rans_stream(16, [1 << 16], [1 << 16] * lanes, [])
    meta = {"count": count, "alphabet": 1}
    assert both(kind, lambda: Rans().decode({"data": Bytes(data)}, meta).array).tobytes() == bytes(count)
    result = both(kind, lambda: Rans().decode({"data": Bytes(data + b"\x07\x00")}, meta).array)
    assert result == ("FormatError", "rans: 1 of 1 words left unread")


@pytest.mark.parametrize("share", [0.5, 0.01])
@pytest.mark.parametrize("lanes", [5, 8, 21])
def test_rans_truncated_last_steps_fail_alike(kind, share, lanes):
    """The kernel reads each lane's next word before it knows whether the lane needs it (words past the stream are
    zero padding): cut streams must still fail at the same step, with the same message, as the numpy path's, also
    with a short last step (5003 symbols in 5, 8 or 21 lanes: the C kernel's AVX2 groups of 8 and the lanes left
    over) and rare symbols that take a word almost every time."""
    array = (np.random.default_rng(7).random(5003) < share).astype(np.uint8)
    data = Rans(scale_bits=16, lanes=lanes).encode(Symbols(array, 2))[0]["data"].data
    meta = {"count": array.size, "alphabet": 2}
    assert both(kind, lambda: Rans().decode({"data": Bytes(data)}, meta).array).tobytes() == array.tobytes()
    for cut in (2, 4, 10, 30, 200):
        assert both(kind, lambda: Rans().decode({"data": Bytes(data[:-cut])}, meta).array)[0] == "FormatError"  # noqa: B023


def c_kernels():
    """The C kernels' module, or a skip (a failure in CI with a compiler: test_c_kernels_are_built_where...)."""
    if not _kernels.installed("c"):
        pytest.skip(f"the C kernels are not built ({_kernels._missing.get('c')})")
    return _kernels._load("c")


@given(st.integers(0, 3000), st.sampled_from([1, 2, 200, 256, 257, 3000, 65536]), st.integers(0, 2**32 - 1))
def test_c_histogram_is_bincount(count, alphabet, seed):
    """The C encoders' symbol counts equal np.bincount's, for 1- and 2-byte symbols; a symbol outside the alphabet
    is refused (ValueError), never counted past the output."""
    kernels = c_kernels()
    dtype = np.uint8 if alphabet <= 256 else np.uint16
    array = np.random.default_rng(seed).integers(0, alphabet, count).astype(dtype)
    counts = kernels.histogram(array, alphabet)
    assert counts.dtype == np.int64 and counts.tobytes() == np.bincount(array, minlength=alphabet).tobytes()
    if count and alphabet > 1:
        with pytest.raises(ValueError, match="outside the alphabet"):
            kernels.histogram(array, int(array.max()))


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=400), st.integers(0, 15), st.data())
def test_c_normalize_gives_the_numpy_frequencies(counts, low, data):
    """The C normalizer gives normalize_all's frequencies for every total, ties and skewed counts included."""
    kernels = c_kernels()
    counts = np.array(counts, dtype=np.int64)
    if data.draw(st.booleans()):  # many equal counts: ties in every argsort
        counts = counts[:1].repeat(counts.size) + np.arange(counts.size) % 3
    first = max(low, int(counts.size - 1).bit_length(), 1)
    bits = list(range(first, max(first, 16) + 1))
    with coder_path("numpy"):
        want = normalize_all(counts, bits)
    got = kernels.normalize(counts, np.left_shift(1, np.array(bits, dtype=np.int64)), *_log_steps(), EXCHANGE_ROUNDS)
    assert [row.tobytes() for row in got] == [row.tobytes() for row in want]
    assert all(int(row.sum()) == 1 << b for row, b in zip(got, bits, strict=True))


def test_c_kernels_refuse_inconsistent_calls():
    """Sizes are checked against the buffers before any loop: a wrong call raises ValueError, never reads or writes
    outside the arrays handed over."""
    c = c_kernels()._c
    lut = np.zeros(1 << 4, np.int32)
    with pytest.raises(ValueError, match="exceeds the table width"):
        c.huffman_table(np.array([5, 1], np.int64), 4, 16, lut)
    words, out = np.zeros(4, np.uint64), np.zeros(10, np.uint8)
    with pytest.raises(ValueError, match="outside the buffers"):  # a segment's symbols past `out`
        c.huffman_decode(words, np.zeros(2, np.int64), np.array([6, 6]), 6, lut, 4, out, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="inconsistent buffer sizes"):  # fewer than nwords + lanes words
        c.rans_decode(np.full(4, 1 << 16), np.zeros(5, np.uint16), 2, 8, 2, np.zeros(4, np.uint64), out[:8],
                      1 << 16)
    with pytest.raises(ValueError, match="do not sum"):
        c.rans_table(np.array([0, 1]), np.array([1, 2]), 2, np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="outside the frequency table"):  # symbol 3 of a 2-symbol table
        c.rans_encode(np.array([0, 3], np.uint8), np.array([2, 2]), np.array([0, 2]), 2, 1, 1 << 16,
                      np.zeros(1, np.int64), np.zeros(2, np.uint16))
    with pytest.raises(ValueError, match="items of 8 bytes"):  # int64 symbols: not a symbol array
        c.histogram(np.zeros(3, np.int64), np.zeros(4, np.int64))


def rans_lanes_stream(rng, count: int, lanes: int, alphabet: int, used: int, bits: int):
    """A valid stream of `count` symbols (up to `used` of `alphabet` values, skewed) in `lanes` lanes at 2^bits
    slots, by the C encoder: (words padded with `lanes` zeros, the word count, the initial states, the slot table,
    the symbols)."""
    c = c_kernels()
    values = np.sort(rng.choice(alphabet, used, replace=False))
    p = rng.random(used) ** 3 + 1e-3
    symbols = values[rng.choice(used, count, p=p / p.sum())].astype(np.uint8 if alphabet <= 256 else np.uint16)
    counts = np.bincount(symbols, minlength=alphabet)
    values = np.flatnonzero(counts)  # those drawn
    with coder_path("numpy"):
        freq_used = normalize_all(counts[values], [bits])[0]
    freq = np.zeros(alphabet, dtype=np.int64)
    freq[values] = freq_used
    x, words = c.rans_encode(symbols, freq, np.cumsum(freq) - freq, bits, lanes, 1 << 16)
    padded = np.zeros(words.size + lanes, dtype=np.uint16)
    padded[:words.size] = words
    return padded, words.size, x, c.rans_table(values, freq_used, bits), symbols


def decode_on(path: str, form: str, x, words, nwords: int, count: int, bits: int, table, dtype):
    """The C kernel's rans decode on one SIMD path: (words read or -1, the symbols, the final states)."""
    out, states = np.zeros(count, dtype=dtype), np.array(x, dtype=np.int64)
    with simd_path(path, form):
        read = c_kernels()._c.rans_decode(states, words, nwords, count, bits, table, out, 1 << 16)
    return read, out.tobytes(), states.tobytes()


RANS_SIMD_LANES = [1, 7, 8, 15, 16, 17, 33, 64, 256]
RANS_SIMD_TABLES = [  # (alphabet, used, bits): each AVX-512 table form where it fits, both symbol widths
    (32, 32, 14),    # byte symbols, 32 used at 2^14 slots: perm (the default for 5-bit symbols)
    (256, 200, 14),  # byte symbols, 200 used: perm256 (the default for 8-bit symbols)
    (256, 150, 12),  # 2 x 12 + 8 bits: packed
    (3000, 32, 16),  # 16-bit symbols, 32 used, 2^16 slots: perm
    (3000, 700, 14),  # 16-bit symbols, 700 used: two
    (1000, 100, 8),  # 16-bit symbols at 2^8 slots: packed
    (2, 1, 4),       # one symbol: every slot its own, no word ever read
]


@pytest.mark.parametrize("lanes", RANS_SIMD_LANES)
def test_rans_simd_paths_decode_alike(lanes):
    """Every rans decode path of the C kernel (scalar, AVX2, AVX-512 with each table form, where the CPU has them)
    gives the scalar loop's symbols, final states and word count: for lane counts below, at and around the 8- and
    16-lane groups, both symbol widths, a last step of 1 .. lanes - 1 symbols (and a whole one), streams cut short
    (-1 on every path) and random words and states (hostile streams: the same symbols wherever they lead)."""
    paths = simd_paths()
    if not paths:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(lanes)
    for alphabet, used, bits in RANS_SIMD_TABLES:
        dtype = np.uint8 if alphabet <= 256 else np.uint16
        for count in (lanes * 23, lanes * 23 + 1 + lanes // 2, lanes):
            words, nwords, x, table, symbols = rans_lanes_stream(rng, count, lanes, alphabet, used, bits)
            want = decode_on("scalar", "auto", x, words, nwords, count, bits, table, dtype)
            assert want == (nwords, symbols.tobytes(), np.full(lanes, 1 << 16, np.int64).tobytes())
            cuts = [cut for cut in (1, 2, lanes, 3 * lanes) if cut <= nwords]
            hostile = (rng.integers(0, 1 << 32, lanes), rng.integers(0, 1 << 16, nwords + lanes).astype(np.uint16))
            for path, form in paths:
                case = (alphabet, used, bits, count, path, form)
                assert decode_on(path, form, x, words, nwords, count, bits, table, dtype) == want, case
                for cut in cuts:  # the same padded buffer, fewer words: the step that overruns them fails
                    short = np.zeros(nwords - cut + lanes, dtype=np.uint16)
                    short[:nwords - cut] = words[:nwords - cut]
                    got = decode_on(path, form, x, short, nwords - cut, count, bits, table, dtype)
                    assert got == decode_on("scalar", "auto", x, short, nwords - cut, count, bits, table, dtype), case
                    assert got[0] == -1, case
                for nw in (nwords, nwords // 2):
                    args = (hostile[0], hostile[1][:nw + lanes], nw, count, bits, table, dtype)
                    assert decode_on(path, form, *args) == decode_on("scalar", "auto", *args), (case, nw)


def test_rans_simd_paths_take_other_tables_alike():
    """A slot table rans_table never writes (a symbol in two runs, biases not from 0) is decoded by the scalar
    loop on every path: the vector paths' tables assume runs, so they give way rather than differ."""
    paths = simd_paths()
    if not paths:
        pytest.skip("the C kernels are not built")
    rng = np.random.default_rng(5)
    words, nwords, x, table, _ = rans_lanes_stream(rng, 64 * 40, 64, 32, 32, 12)
    odd = table.copy()
    odd[100:110] = odd[3000:3010]  # another symbol's run, biases and all, moved inside a run
    odd[2000] ^= 1 << 16            # a bias out of sequence
    want = decode_on("scalar", "auto", x, words, nwords, 64 * 40, 12, odd, np.uint8)
    for path, form in paths:
        assert decode_on(path, form, x, words, nwords, 64 * 40, 12, odd, np.uint8) == want, (path, form)


def test_rans_set_simd_refuses_what_the_cpu_lacks():
    c = c_kernels()._c
    paths = c.set_simd("auto")
    assert paths[0] == "scalar" and set(paths) <= {"scalar", "avx2", "avx512"}
    with pytest.raises(ValueError, match="set_simd"):
        c.set_simd("avx1024")
    with pytest.raises(ValueError, match="set_simd"):
        c.set_simd("scalar", "fast")
    if "avx512" not in paths:
        with pytest.raises(ValueError, match="set_simd"):
            c.set_simd("avx512")
    assert c.set_simd("auto") == paths
