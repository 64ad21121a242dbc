"""The generic byte codecs (zlib, zstd, lzma, bz2) and raw on streams their encoders never write: exactly one
compressed stream ending where the data ends, sizes that are integers (not booleans), BOOL bytes 0 or 1 only."""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

import numpy as np
import pytest
import zstandard
from dcframe_plugins.generic import Bz2, Lzma, Zlib, Zstd
from dcframe_plugins.raw import Raw

from dcframe import Bytes, Dense, FormatError

DATA = bytes(range(256)) * 40
CODECS = {"zlib": (Zlib(), lambda b: zlib.compress(b, 6)), "zstd": (Zstd(), zstandard.ZstdCompressor(level=3).compress),
          "lzma": (Lzma(), lambda b: lzma.compress(b, preset=1)), "bz2": (Bz2(), lambda b: bz2.compress(b, 1))}
SKIPPABLE = struct.pack("<II", 0x184D2A50, 3) + b"abc"


def _decode(stage, data: bytes, size) -> bytes:
    return stage.decode({"data": Bytes(data)}, {"size": size}).data


@pytest.mark.parametrize("name", CODECS)
def test_one_stream_decodes(name):
    stage, compress = CODECS[name]
    assert _decode(stage, compress(DATA), len(DATA)) == DATA
    assert _decode(stage, compress(b""), 0) == b""


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00\x00", b"junk"])
def test_trailing_bytes_are_rejected_by_every_codec(name, tail):
    """Issue 15 item 11: lzma and bz2 accepted trailing bytes (generic.md: all four MUST reject them)."""
    stage, compress = CODECS[name]
    with pytest.raises(FormatError, match="follow the end|corrupt"):
        _decode(stage, compress(DATA) + tail, len(DATA))


@pytest.mark.parametrize("name", CODECS)
def test_a_second_stream_is_rejected_by_every_codec(name):
    stage, compress = CODECS[name]
    half = len(DATA) // 2
    with pytest.raises(FormatError):
        _decode(stage, compress(DATA[:half]) + compress(DATA[half:]), len(DATA))


@pytest.mark.parametrize("tail", [zstandard.ZstdCompressor().compress(b""), SKIPPABLE,
                                  zstandard.ZstdCompressor().compress(b"x")], ids=["empty", "skippable", "second"])
def test_zstd_rejects_any_frame_after_the_first(tail):
    """Issue 15 item 11: zstd accepted two frames, a trailing empty frame and a trailing skippable frame."""
    stage, compress = CODECS["zstd"]
    with pytest.raises(FormatError):
        _decode(stage, compress(DATA) + tail, len(DATA))


def test_zstd_rejects_a_leading_skippable_frame():
    stage, compress = CODECS["zstd"]
    with pytest.raises(FormatError, match="does not start"):
        _decode(stage, SKIPPABLE + compress(DATA), len(DATA))


@pytest.mark.parametrize("cut", range(9))
def test_zstd_empty_frame_truncated_is_not_valid(cut):
    """Issue 15 item 11: meta size 0 and the empty frame cut to 0-8 bytes decoded as valid."""
    frame = zstandard.ZstdCompressor(level=19).compress(b"")
    assert len(frame) > cut
    with pytest.raises(FormatError):
        _decode(Zstd(), frame[:cut], 0)


def test_zstd_frame_without_content_size_decodes_and_is_bounded():
    """A frame whose header does not state its size (streaming writers) is valid; its output is still capped."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(DATA)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert _decode(Zstd(), frame, len(DATA)) == DATA
    for size in (len(DATA) - 1, len(DATA) + 1):
        with pytest.raises(FormatError):
            _decode(Zstd(), frame, size)


def test_zstd_window_larger_than_the_output_needs_is_refused():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(DATA)
    assert frame[4] == 0  # frame header descriptor: no content size, not single-segment: byte 5 is the window
    frame = frame[:5] + bytes([14 << 3]) + frame[6:]  # window 2^(10 + 14): what a hostile header may ask for
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 24
    with pytest.raises(FormatError, match="window"):
        _decode(Zstd(), frame, len(DATA))


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("size", [True, False, 1.0, "4", None, -1])
def test_size_must_be_an_integer_not_a_boolean(name, size):
    """Issue 15 item 11: `size: true` read as 1."""
    stage, compress = CODECS[name]
    with pytest.raises(FormatError, match="bad size"):
        _decode(stage, compress(b"x" if size is True else b""), size)


def test_raw_rejects_bool_bytes_other_than_0_and_1():
    """Issue 15 item 11: BOOL bytes other than 0/1 were decoded and written (raw.md: a BOOL byte is 0 or 1)."""
    meta = {"dtype": "BOOL", "shape": [4]}
    assert Raw().decode({"data": Bytes(b"\x00\x01\x01\x00")}, meta).array.tolist() == [False, True, True, False]
    for bad in (b"\x00\x02\x01\x00", b"\xff\x00\x00\x00"):
        with pytest.raises(FormatError, match="BOOL byte"):
            Raw().decode({"data": Bytes(bad)}, meta)


@pytest.mark.parametrize("meta", [{"alphabet": True}, {"dtype": "F32", "shape": [True]},
                                  {"dtype": "F32", "shape": [1] * 33}])
def test_raw_meta_booleans_and_dimensions(meta):
    """Booleans are not integers in raw's meta either, and raw shares the one dimension limit of 32."""
    with pytest.raises(FormatError):
        Raw().decode({"data": Bytes(b"\x00\x00\x00\x00")}, meta)


def test_raw_accepts_32_dimensions():
    out = Raw().decode({"data": Bytes(np.float32(2).tobytes())}, {"dtype": "F32", "shape": [1] * 32})
    assert isinstance(out, Dense) and out.array.shape == (1,) * 32
