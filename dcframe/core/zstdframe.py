"""One Zstandard frame decoded within a known size: the checks the `zstd` stage and a layout's packed files share.

A frame read from a file is untrusted: its header's content size and window are checked against the size the caller
expects before the decoder allocates anything, and nothing may follow the frame (spec/stages/generic.md).
"""

from __future__ import annotations

import zstandard

from dcframe.core.errors import FormatError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MIN_WINDOW = 1 << 20


def zstd_frame(data: bytes | memoryview, size: int) -> tuple[bytes, bool, int]:
    """At most size + 1 decoded bytes of one frame, whether it ended, and how many bytes follow it. FormatError
    ("zstd: ...") unless the data starts with a frame whose content size (if stated) is `size`, whose window is at
    most max(size, 1 MiB) (the decoder allocates the window before any output) and which needs no dictionary; a
    second frame, an empty or skippable one, or stray bytes after it are errors (zstandard.ZstdError)."""
    if bytes(data[:4]) != ZSTD_MAGIC:
        raise FormatError("zstd: the stream does not start with a Zstandard frame (magic 28 B5 2F FD)")
    frame = zstandard.get_frame_parameters(data)
    known = frame.content_size != zstandard.CONTENTSIZE_UNKNOWN
    if known and frame.content_size != size:
        raise FormatError(f"zstd: frame content size {frame.content_size} differs from the declared size {size}")
    window = max(size, ZSTD_MIN_WINDOW)
    if frame.window_size > window:
        raise FormatError(f"zstd: frame window of {frame.window_size} bytes for {size} bytes of output")
    if frame.dict_id:
        raise FormatError("zstd: frames needing a dictionary are not supported")
    dctx = zstandard.ZstdDecompressor(max_window_size=window)
    if known and size == 0:  # decompress() returns b"" for a zero content size without reading the frame
        obj = dctx.decompressobj()
        out = obj.decompress(data)
        return out, obj.eof, len(obj.unused_data)
    out = dctx.decompress(data, max_output_size=0 if known else size + 1, allow_extra_data=False)
    return out, True, 0
