"""Generic byte compressors as stages: zlib, zstd, lzma and bz2 (bytes -> bytes, lossless)."""

from __future__ import annotations

import bz2
import lzma
import zlib

import zstandard

from dcframe import Bytes, FormatError, Stage, check_output, hookimpl


class _ByteCodec(Stage):
    """Shared frame of the byte compressors: remember the input size, refuse to decode past it."""

    takes = ("bytes",)
    gives = {"data": "bytes"}

    def encode(self, stream):
        return {"data": Bytes(self._compress(stream.data))}, {"size": len(stream.data)}

    def decode(self, streams, meta):
        size = meta.get("size")
        if not isinstance(size, int) or size < 0:
            raise FormatError(f"{self.id}: bad size {size!r} in metadata")
        check_output(self.id, size, "declared size")
        try:
            out = self._decompress(streams["data"].data, size)
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, zstandard.ZstdError) as exc:
            raise FormatError(f"{self.id}: corrupt stream ({exc})") from None
        if len(out) != size:
            raise FormatError(f"{self.id}: stream decodes to {len(out)}+ bytes, metadata says {size}")
        return Bytes(out)

    def _compress(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _decompress(self, data: bytes, size: int) -> bytes:
        raise NotImplementedError


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
        d = zlib.decompressobj()
        out = d.decompress(data, size + 1)
        if not d.eof or d.unused_data:
            raise FormatError("zlib: stream does not end where it should")
        return out


class Zstd(_ByteCodec):
    """Zstandard at `level` -7 to 22 (19 is a good size/speed point; 3 is fast)."""

    id = "zstd"

    def __init__(self, level: int = 19):
        self.level = _check_level("zstd", level, -7, 22)

    def _compress(self, data):
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def _decompress(self, data, size):
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            out = reader.read(size + 1)
            while len(out) <= size:
                more = reader.read(size + 1 - len(out))
                if not more:
                    break
                out += more
        return out


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
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
        out = d.decompress(data, size + 1)
        if not d.eof:
            raise FormatError("lzma: stream is truncated")
        return out


class Bz2(_ByteCodec):
    """bzip2 at `level` 1-9."""

    id = "bz2"

    def __init__(self, level: int = 9):
        self.level = _check_level("bz2", level, 1, 9)

    def _compress(self, data):
        return bz2.compress(data, self.level)

    def _decompress(self, data, size):
        d = bz2.BZ2Decompressor()
        out = d.decompress(data, size + 1)
        if not d.eof:
            raise FormatError("bz2: stream is truncated")
        return out


@hookimpl
def dcframe_stages():
    return [Zlib, Zstd, Lzma, Bz2]
