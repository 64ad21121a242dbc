"""The compiled kernels (numba, the `fast` extra) and the numpy path of huffman and rans agree exactly: the same bytes
from the encoders, the same symbols from the decoders, the same FormatError (class and message) on damaged streams;
DCFRAME_KERNELS chooses the path, and nothing imports numba before a stage codes something."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from dcframe_plugins import _kernels
from dcframe_plugins.huffman import LIMIT, Huffman, bit_reverse, canonical_codes, limited_code_lengths
from dcframe_plugins.rans import Rans, golomb_pack
from hypothesis import given
from hypothesis import strategies as st
from kernel_paths import coder_path
from strategies import symbol_arrays

from dcframe import Bytes, ConfigError, DcfError, Symbols

PATHS = ("numpy", "numba")


@pytest.fixture(scope="module")
def kernels():
    """The kernels module; CI installs the `fast` extra, so there a missing numba fails instead of skipping."""
    if not _kernels.installed():
        if os.environ.get("CI"):
            pytest.fail("CI must test both paths: numba is missing (install the `fast` extra)")
        pytest.skip("numba is not installed (the `fast` extra): only the numpy path can run")
    return _kernels._load()


def on_path(path: str, fn):
    """fn() with DCFRAME_KERNELS=path; a DcfError comes back as (class name, message) so results compare."""
    with coder_path(path):
        try:
            return fn()
        except DcfError as exc:
            return type(exc).__name__, str(exc)


def both(fn) -> object:
    """fn()'s result on both paths, asserted equal (arrays compared by dtype and bytes)."""
    results = [on_path(path, fn) for path in PATHS]
    keys = [(r.dtype.str, r.tobytes()) if isinstance(r, np.ndarray) else r for r in results]
    assert keys[0] == keys[1], f"numpy path: {str(keys[0])[:200]}\nkernels: {str(keys[1])[:200]}"
    return results[0]


stages = st.one_of(
    st.builds(Huffman, max_bits=st.integers(1, 16), segment_size=st.sampled_from([1, 7, 64, 1000, 4096])),
    st.builds(Rans, scale_bits=st.integers(1, 16), lanes=st.sampled_from([1, 3, 64, 1000])),
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
def test_paths_write_the_same_bytes_and_decode_the_same_symbols(kernels, case, stage):
    array, alphabet = case
    data = both(lambda: stage.encode(Symbols(array, alphabet))[0]["data"].data)
    meta = {"count": int(array.size), "alphabet": alphabet}
    decoded = both(lambda: stage.decode({"data": Bytes(data)}, meta).array)
    assert decoded.astype(np.uint64).tobytes() == array.astype(np.uint64).tobytes()


@given(symbol_arrays(), stages, st.data())
def test_paths_reject_damaged_streams_alike(kernels, case, stage, data):
    """Flipped bits, changed bytes, cut or extended streams: the same symbols or the same FormatError, both paths."""
    array, alphabet = case
    stream = stage.encode(Symbols(array, alphabet))[0]["data"].data
    bad = damage(stream, data.draw)
    meta = {"count": int(array.size), "alphabet": alphabet}
    result = both(lambda: stage.decode({"data": Bytes(bad)}, meta).array)
    assert isinstance(result, np.ndarray) or result[0] == "FormatError"


@given(st.binary(min_size=1, max_size=300), st.integers(1, 5000), st.sampled_from([1, 2, 32, 256, 300, 65536]),
       st.sampled_from([Huffman, Rans]))
def test_paths_reject_random_bytes_alike(kernels, data, count, alphabet, stage):
    result = both(lambda: stage().decode({"data": Bytes(data)}, {"count": count, "alphabet": alphabet}).array)
    assert isinstance(result, np.ndarray) or result[0] == "FormatError"


def test_long_streams_take_the_same_paths(kernels):
    """Streams long enough for the numpy path's pair decoder and many lane blocks, 5-bit and 16-bit symbols."""
    rng = np.random.default_rng(13)
    for array, alphabet in [(np.minimum(rng.geometric(0.25, 300_000) - 1, 31).astype(np.uint8), 32),
                            (rng.integers(0, 3000, 200_000).astype(np.uint16), 3000)]:
        for stage in (Huffman(), Rans()):
            data = both(lambda: stage.encode(Symbols(array, alphabet))[0]["data"].data)  # noqa: B023
            meta = {"count": array.size, "alphabet": alphabet}
            assert both(lambda: stage.decode({"data": Bytes(data)}, meta).array).tobytes() == array.tobytes()  # noqa: B023


def test_huffman_segments_running_past_the_payload_fail_alike(kernels):
    """Every segment offset moved to the payload's end but the last: the decoders read far past their segments
    (the kernel's reads are clamped to the buffer) and both fail the end check with the same message."""
    array = np.random.default_rng(1).integers(0, 32, 20_000).astype(np.uint8)
    data = Huffman(segment_size=1000).encode(Symbols(array, 32))[0]["data"].data
    tsize = int.from_bytes(data[:4], "little")
    nseg = 20
    ends = np.frombuffer(data, "<u4", count=nseg, offset=8 + tsize).copy()
    ends[:-1] = ends[:-1] // 2  # earlier starts: the first segments overrun into their neighbours
    bad = data[:8 + tsize] + ends.tobytes() + data[8 + tsize + 4 * nseg:]
    result = both(lambda: Huffman().decode({"data": Bytes(bad)}, {"count": array.size, "alphabet": 32}).array)
    assert result[0] == "FormatError"


def test_rans_truncated_words_fail_alike(kernels):
    array = np.random.default_rng(2).integers(0, 200, 50_000).astype(np.uint8)
    data = Rans().encode(Symbols(array, 200))[0]["data"].data
    for cut in (2, 64, 1000):
        result = both(lambda: Rans().decode({"data": Bytes(data[:-cut])}, {"count": array.size, "alphabet": 200}))  # noqa: B023
        assert result[0] == "FormatError"


def test_environment_variable_chooses_the_path(monkeypatch):
    monkeypatch.setenv(_kernels.ENV, "numpy")
    assert _kernels.compiled(1 << 30) is None
    monkeypatch.setenv(_kernels.ENV, "fortran")
    with pytest.raises(ConfigError, match="DCFRAME_KERNELS='fortran' is not one of auto, numba, numpy"):
        _kernels.compiled(10)
    monkeypatch.setattr(_kernels, "_module", None)
    monkeypatch.setattr(_kernels, "_missing", "No module named 'numba'")
    monkeypatch.setenv(_kernels.ENV, "numba")
    with pytest.raises(ConfigError, match=r"numba, but the kernels do not import .*dcframe\[fast\]"):
        _kernels.compiled(10)
    monkeypatch.setenv(_kernels.ENV, "auto")
    assert _kernels.compiled(1 << 30) is None  # auto falls back to numpy
    array = np.arange(100, dtype=np.uint8) % 7
    outputs, meta = Huffman().encode(Symbols(array, 7))
    assert Huffman().decode(outputs, meta).array.tobytes() == array.tobytes()


NUMBA_LOADED = """
import sys, numpy as np, dcframe
from dcframe.core.registry import get_registry
assert 'huffman' in get_registry().stages
import dcframe_plugins.huffman as h, dcframe_plugins.rans as r
loaded = lambda: 'numba' in sys.modules or 'dcframe_plugins._numba_kernels' in sys.modules
small = dcframe.Symbols(np.arange(1000, dtype=np.uint8) % 5, 5)
h.Huffman().decode(*h.Huffman().encode(small)), r.Rans().decode(*r.Rans().encode(small))
print(loaded())
big = dcframe.Symbols(np.arange(1 << 17, dtype=np.uint8) % 5, 5)
h.Huffman().encode(big)
print(loaded())
"""


def test_numba_is_imported_only_for_a_long_stream():
    """Importing dcframe and its stages, listing them and coding small streams never pays numba's import (about
    0.3-0.5 s of CPU); under `auto` the first stream of IMPORT_MIN symbols loads the kernels, if installed."""
    env = {k: v for k, v in os.environ.items() if k != _kernels.ENV}
    done = subprocess.run([sys.executable, "-c", NUMBA_LOADED], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", str(_kernels.installed())]
    assert _kernels.IMPORT_MIN == 1 << 17  # the script's long stream


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=300), st.integers(1, 16), st.integers(0, 65535 - 300))
def test_kernel_decode_table_is_the_canonical_code(kernels, weights, limit, offset):
    """The kernel builds its table from the code lengths alone (a counting pass, issue 13): every entry is the
    (symbol, length) of the canonical code `canonical_codes` assigns, also for symbols far into a 2^16 alphabet."""
    weights = np.array(weights, dtype=np.int64)
    limit = max(limit, int(weights.size - 1).bit_length())
    lengths = np.zeros(offset + weights.size, dtype=np.int64)
    lengths[offset:] = limited_code_lengths(weights, limit)
    width = int(lengths.max())
    lut = kernels.huffman_table(lengths, width, LIMIT)
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
def test_rans_full_scale_single_symbol_decodes_alike(kernels, count):
    """n = 16 with one symbol of frequency 2^16 (17 bits: the kernel's packed table keeps it whole): every state stays
    2^16 and no word is read; both paths decode the zeros, and a stray word is left unread on both."""
    lanes = min(count, 3)
    data = rans_stream(16, [1 << 16], [1 << 16] * lanes, [])
    meta = {"count": count, "alphabet": 1}
    assert both(lambda: Rans().decode({"data": Bytes(data)}, meta).array).tobytes() == bytes(count)
    result = both(lambda: Rans().decode({"data": Bytes(data + b"\x07\x00")}, meta).array)
    assert result == ("FormatError", "rans: 1 of 1 words left unread")


@pytest.mark.parametrize("share", [0.5, 0.01])
def test_rans_truncated_last_steps_fail_alike(kernels, share):
    """The kernel reads each lane's next word before it knows whether the lane needs it (words past the stream are
    zero padding): cut streams must still fail at the same step, with the same message, as the numpy path's, also
    with a short last step (5003 symbols in 5 lanes) and rare symbols that take a word almost every time."""
    array = (np.random.default_rng(7).random(5003) < share).astype(np.uint8)
    data = Rans(scale_bits=16, lanes=5).encode(Symbols(array, 2))[0]["data"].data
    meta = {"count": array.size, "alphabet": 2}
    assert both(lambda: Rans().decode({"data": Bytes(data)}, meta).array).tobytes() == array.tobytes()
    for cut in (2, 4, 10, 30, 200):
        assert both(lambda: Rans().decode({"data": Bytes(data[:-cut])}, meta).array)[0] == "FormatError"  # noqa: B023
