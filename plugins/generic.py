"""Generic byte compressors as stages: zlib, zstd, lzma and bz2 (bytes -> bytes, lossless)."""

from __future__ import annotations

import bz2
import lzma
import zlib

import zstandard

from dcframe import Bytes, FormatError, Stage, check_output, hookimpl
from dcframe.core.zstdframe import zstd_frame


class _ByteCodec(Stage):
    """Shared frame of the byte compressors: remember the input size; decode at most size + 1 bytes of exactly one
    compressed stream, which must end where the data ends (spec/stages/generic.md)."""

    takes = ("bytes",)
    gives = {"data": "bytes"}

    def encode(self, stream):
        return {"data": Bytes(self._compress(stream.data))}, {"size": len(stream.data)}

    def decode(self, streams, meta):
        size = meta.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{self.id}: bad size {size!r} in metadata")
        check_output(self.id, size, "declared size")
        try:
            out, ended, trailing = self._decompress(streams["data"].data, size)
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, zstandard.ZstdError) as exc:
            raise FormatError(f"{self.id}: corrupt stream ({exc})") from None
        if len(out) > size:
            raise FormatError(f"{self.id}: stream decodes to {len(out)}+ bytes, metadata says {size}")
        if not ended:
            raise FormatError(f"{self.id}: stream is truncated (it ends after {len(out)} of {size} bytes)")
        if trailing:
            raise FormatError(f"{self.id}: {trailing} bytes follow the end of the compressed stream")
        if len(out) != size:
            raise FormatError(f"{self.id}: stream decodes to {len(out)} bytes, metadata says {size}")
        return Bytes(out)

    def _compress(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _decompress(self, data: bytes, size: int) -> tuple[bytes, bool, int]:
        """At most size + 1 decoded bytes, whether the compressed stream ended, and how many bytes follow its end."""
        raise NotImplementedError


def _one_stream(d, data: bytes, size: int) -> tuple[bytes, bool, int]:
    """Run a zlib/lzma/bz2 decompressor object over data, producing at most size + 1 bytes."""
    out = d.decompress(data, size + 1)
    return out, d.eof, len(d.unused_data)


def _check_level(stage: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{stage}: level must be an integer from {low} to {high}, got {value!r}")
    return value


class Zlib(_ByteCodec):
    """zlib (DEFLATE) at `level` 0-9."""

    id = "zlib"

    def __init__(self, level: int = 9):
        self.level = _check_level("zlib", level, 0, 9)

    def _compress(self, data):
        return zlib.compress(data, self.level)

    def _decompress(self, data, size):
        return _one_stream(zlib.decompressobj(), data, size)


class Zstd(_ByteCodec):
    """Zstandard at `level` -7 to 22 (19 is a good size/speed point; 3 is fast)."""

    id = "zstd"

    def __init__(self, level: int = 19):
        self.level = _check_level("zstd", level, -7, 22)

    def _compress(self, data):
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def _decompress(self, data, size):
        return zstd_frame(data, size)


LZMA_MEMLIMIT = 128 << 20  # decoder memory; presets 0-9 need at most about 65 MiB


class Lzma(_ByteCodec):
    """LZMA (xz container) at `preset` 0-9."""

    id = "lzma"

    def __init__(self, preset: int = 9):
        self.preset = _check_level("lzma", preset, 0, 9)

    def _compress(self, data):
        return lzma.compress(data, preset=self.preset)

    def _decompress(self, data, size):
        # the .xz format only, and a cap on decoder memory: a hostile header can ask for a 1.5 GiB dictionary
        return _one_stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT), data, size)


class Bz2(_ByteCodec):
    """bzip2 at `level` 1-9."""

    id = "bz2"

    def __init__(self, level: int = 9):
        self.level = _check_level("bz2", level, 1, 9)

    def _compress(self, data):
        return bz2.compress(data, self.level)

    def _decompress(self, data, size):
        return _one_stream(bz2.BZ2Decompressor(), data, size)


@hookimpl
def dcframe_stages():
    return [Zlib, Zstd, Lzma, Bz2]
