"""Hostile containers that hit each built-in stage decoder at and just beyond its limits (issue 15 items 1, 2, 4, 11).

Every case builds a complete container with valid checksums (tests/container_tools.py, an independent writer), so
the container accepts it and the stage's own checks are what must hold: a count, shape, alphabet, segment size or
declared size at the limit decodes (or fails a later consistency check) and one beyond it is refused, all within the
documented memory bound (2 x decode_bound + 64 MiB beyond the interpreter) and in time linear in the symbols.

Streams that must be large once decoded are built small: zstd frames of RLE blocks (4 bytes per 128 KiB), so the 17 KB
file of item 1 is built here as the issue describes it, without the generator ever holding the decoded bytes.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for container_tools
from container_tools import Parts, join  # noqa: E402

MiB = 1 << 20
BLOCK = 128 << 10  # zstd's largest block (and the window these frames declare)
SEGMENT_LIMIT = 1 << 16  # huffman.md: segments of 1..2^16 symbols


def bound(declared: int, stored: int = 0) -> int:
    """FORMAT.md section 8: the decode bound of a tensor, 8 x max(declared, stored) + 1 MiB."""
    return 8 * max(declared, stored) + MiB


def zstd_frame(pieces: list[bytes | tuple[int, int]], content_size: int | None = None) -> bytes:
    """A Zstandard frame (RFC 8878) from raw byte pieces and (byte, count) runs, as raw and RLE blocks of <= 128 KiB;
    the header states the content size (8 bytes) and a 128 KiB window."""
    blocks = []
    for piece in pieces:
        if isinstance(piece, tuple):
            value, count = piece
            while count:
                n = min(count, BLOCK)
                blocks.append((1, n, bytes([value])))
                count -= n
        else:
            for i in range(0, len(piece), BLOCK):
                chunk = piece[i:i + BLOCK]
                blocks.append((0, len(chunk), chunk))
    if not blocks:
        blocks.append((0, 0, b""))
    total = sum(n for _, n, _ in blocks)
    size = total if content_size is None else content_size
    out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([3 << 6, 7 << 3]) + struct.pack("<Q", size))
    for i, (kind, n, body) in enumerate(blocks):
        last = i == len(blocks) - 1
        header = int(last) | kind << 1 | n << 3
        out += header.to_bytes(3, "little") + body
    return bytes(out)


def container(name: str, dtype: str, shape: list[int], chain: list[tuple[str, dict[str, Any]]],
              steps: list[list[list[Any]]], streams: dict[str, bytes]) -> bytes:
    """One tensor's container: its chain of (stage id, config), the steps (in encode order) and the stored streams."""
    descriptors = [{"id": sid, "version": 1, "config": config, "package": "dcframe"} for sid, config in chain]
    index = {"format": "dcf", "version": [1, 0], "producer": "hostile stage_cases", "metadata": {},
             "chains": [descriptors]}
    record = {"name": name, "dtype": dtype, "shape": shape, "chain": 0, "steps": steps, "streams": []}
    return join(Parts(index, [(record, streams)]))


# -- sparse (item 1) --------------------------------------------------------------------------------------------------


def _sparse_fillers(fillers: int, shape: list[int], meta_shape: list[int] | None = None) -> bytes:
    """F32 `shape` through sparse(index_bits=1) | raw | zstd: `fillers` filler symbols then one value at the end."""
    positions = zstd_frame([(0, fillers), b"\x01"])
    values = np.float32(1.5).tobytes()
    steps = [[["data", ["positions", "values"], {"shape": meta_shape if meta_shape is not None else shape}]],
             [["positions", ["positions"], {"alphabet": 2}], ["values", ["values"], {"dtype": "F32", "shape": [1]}]],
             [["positions", ["positions"], {"size": fillers + 1}]]]
    return container("w", "F32", shape, [("sparse", {"index_bits": 1}), ("raw", {}), ("zstd", {"level": 19})], steps,
                     {"positions": positions, "values": values})


def sparse_fillers_beyond_shape() -> bytes:
    """Issue 15 item 1 as filed: F32[2^24], 512 Mi - 1 fillers (a legal 512 MiB positions stream within the bound):
    the last position is far beyond the tensor. Used to peak at 9.5 GB."""
    return _sparse_fillers((512 << 20) - 1, [1 << 24])


def sparse_fillers_at_shape() -> bytes:
    """The same chain with 2^24 - 1 fillers: the value lands on the last element; a valid 64 MiB tensor."""
    return _sparse_fillers((1 << 24) - 1, [1 << 24])


def sparse_shape_over_bound() -> bytes:
    """sparse meta declares 2^30 elements for a 16-element record: refused by the decode bound (LimitError)."""
    return _sparse_fillers(0, [16], meta_shape=[1 << 30])


def sparse_33_dimensions() -> bytes:
    return _sparse_fillers(0, [1], meta_shape=[1] * 33)


# -- huffman (items 2 and 4) ------------------------------------------------------------------------------------------


def _huffman_zeros(count: int, seg: int, payload: int, elements: int, table: bytes = b"\x01") -> bytes:
    """F32[elements] through kmeans | huffman | zstd, the huffman stream a one-symbol code (symbol 0, 1 bit) of
    `count` symbols in segments of `seg`, its payload `payload` zero bytes split evenly (the last segment takes the
    rest). kmeans then needs `elements` == count to be valid."""
    nseg = -(-count // seg)
    ends = np.minimum(np.arange(1, nseg + 1, dtype=np.int64) * max(1, payload // nseg), payload)
    ends[-1] = payload
    head = struct.pack("<I", len(table)) + table + struct.pack("<I", seg) + ends.astype("<u4").tobytes()
    stream = zstd_frame([head, (0, payload)])
    size = len(head) + payload
    book = np.float32(0.25).tobytes()
    steps = [[["data", ["data"], {"dtype": "F32", "shape": [elements], "codebook": book}]],
             [["data", ["data"], {"count": count, "alphabet": max(1, len(table))}]],
             [["data", ["data"], {"size": size}]]]
    return container("w", "F32", [elements], [("kmeans", {"bits": 1}), ("huffman", {}), ("zstd", {"level": 19})],
                     steps, {"data": stream})


def huffman_count_over_bound() -> bytes:
    """Issue 15 item 2: an 8 MiB F32 tensor, a 64 MiB payload (inside the 65 MiB bound) holding 512 Mi one-bit
    symbols: the declared 512 MiB output is refused before anything is allocated (used to reach 2.4 GB)."""
    elements = 1 << 21
    payload = 64 * MiB
    return _huffman_zeros(8 * payload, SEGMENT_LIMIT, payload, elements)


def huffman_count_at_bound() -> bytes:
    """A declared output just inside the bound (1 byte a symbol): decoded, then kmeans finds the count wrong."""
    elements = 1 << 18
    count = bound(4 * elements) - MiB
    return _huffman_zeros(count, SEGMENT_LIMIT, -(-count // 8), elements)


def huffman_one_huge_segment() -> bytes:
    """Issue 15 item 4: one segment of 2^24 symbols (took 41 s and 1.2 GB): a segment size over 2^16 is refused."""
    return _huffman_zeros(1 << 24, 1 << 24, 1 << 21, 1 << 24)


def huffman_segments_at_limit() -> bytes:
    """12 segments of 2^16 symbols (the fewest the lockstep decoder takes): a valid tensor of 786432 values."""
    count = 12 * SEGMENT_LIMIT
    return _huffman_zeros(count, SEGMENT_LIMIT, count // 8, count)


def huffman_widest_table() -> bytes:
    """A complete table of 2^16 16-bit codes: the largest decode table; the all-zero payload decodes to symbol 0
    every time, so the tensor is valid."""
    return _huffman_zeros(4096, 4096, 8192, 4096, table=bytes([16]) * (1 << 16))


# -- generic codecs, raw, kmeans (item 11 and the declared sizes) -----------------------------------------------------


def _bytes_chain(stage: str, stream: bytes, size: Any, elements: int = 4, config: dict | None = None) -> bytes:
    """U8[elements] through raw | <stage>, the stored stream given, its meta size given."""
    steps = [[["data", ["data"], {"dtype": "U8", "shape": [elements]}]], [["data", ["data"], {"size": size}]]]
    return container("b", "U8", [elements], [("raw", {}), (stage, config or {})], steps, {"data": stream})


def zstd_size_at_bound() -> bytes:
    """A zstd stream decoding to exactly the decode bound of a 1 MiB tensor: allowed, then raw finds the length
    wrong."""
    size = bound(MiB, 0)
    return _bytes_chain("zstd", zstd_frame([(7, size)]), size, elements=MiB)


def zstd_size_over_bound() -> bytes:
    size = bound(MiB, 0) + 1
    return _bytes_chain("zstd", zstd_frame([(7, size)]), size, elements=MiB)


def zstd_window_2_gib() -> bytes:
    """A frame asking for a 2 GiB window (no content size) for 4 bytes of output."""
    frame = b"\x28\xb5\x2f\xfd" + bytes([0, 21 << 3]) + (1 | 1 << 1 | 4 << 3).to_bytes(3, "little") + b"\x00"
    return _bytes_chain("zstd", frame, 4)


def zstd_second_frame() -> bytes:
    return _bytes_chain("zstd", zstd_frame([b"abcd"]) + zstd_frame([b""]), 4)


def zstd_skippable_after() -> bytes:
    return _bytes_chain("zstd", zstd_frame([b"abcd"]) + struct.pack("<II", 0x184D2A5F, 4) + b"skip", 4)


def zstd_empty_truncated() -> bytes:
    return _bytes_chain("zstd", zstd_frame([b""])[:8], 0, elements=0)


def zstd_size_true() -> bytes:
    return _bytes_chain("zstd", zstd_frame([b"a"]), True, elements=1)


def zstd_level_99() -> bytes:
    return _bytes_chain("zstd", zstd_frame([b"abcd"]), 4, config={"level": 99})


def lzma_trailing_bytes() -> bytes:
    return _bytes_chain("lzma", lzma.compress(b"abcd") + b"\x00\x00\x00\x00", 4)


def bz2_trailing_bytes() -> bytes:
    return _bytes_chain("bz2", bz2.compress(b"abcd") + b"BZh9", 4)


def lzma_bomb_over_bound() -> bytes:
    """A 4-element tensor whose lzma stream declares (and holds) 2 MiB: over its 1 MiB + 32-byte bound."""
    data = bytes(2 * MiB)
    return _bytes_chain("lzma", lzma.compress(data, preset=1), len(data))


def raw_bool_byte_255() -> bytes:
    steps = [[["data", ["data"], {"dtype": "BOOL", "shape": [4]}]]]
    return container("flags", "BOOL", [4], [("raw", {})], steps, {"data": b"\x00\x01\xff\x00"})


def _raw_symbols(alphabet: Any, data: bytes, elements: int) -> bytes:
    """F32[elements] through kmeans | raw: raw holds the index symbols with the given alphabet."""
    book = np.float32(1.0).tobytes()
    steps = [[["data", ["data"], {"dtype": "F32", "shape": [elements], "codebook": book}]],
             [["data", ["data"], {"alphabet": alphabet}]]]
    return container("w", "F32", [elements], [("kmeans", {"bits": 1}), ("raw", {})], steps, {"data": data})


def raw_alphabet_2_to_32() -> bytes:
    """The widest alphabet raw takes (4-byte symbols), then kmeans finds an index beyond its codebook."""
    return _raw_symbols(1 << 32, struct.pack("<4I", 0, 0, 0, 0xFFFFFFFF), 4)


def raw_alphabet_over() -> bytes:
    return _raw_symbols((1 << 32) + 1, bytes(16), 4)


def kmeans_shape_33_dimensions() -> bytes:
    book = np.float32(1.0).tobytes()
    steps = [[["data", ["data"], {"dtype": "F32", "shape": [1] * 33, "codebook": book}]],
             [["data", ["data"], {"alphabet": 1}]]]
    return container("w", "F32", [1], [("kmeans", {"bits": 1}), ("raw", {})], steps, {"data": b"\x00"})


def kmeans_f64_output_over_bound() -> bytes:
    """8 Mi one-byte indices (inside the 9 MiB bound of a 1 MiB tensor) would become 64 MiB of F64: the lookup's
    output is checked before it is allocated."""
    count = 8 * MiB
    book = np.float64(1.0).tobytes()
    stream = zstd_frame([(0, count)])
    steps = [[["data", ["data"], {"dtype": "F64", "shape": [count], "codebook": book}]],
             [["data", ["data"], {"alphabet": 1}]], [["data", ["data"], {"size": count}]]]
    return container("w", "F64", [1 << 17], [("kmeans", {"bits": 1}), ("raw", {}), ("zstd", {"level": 19})],
                     steps, {"data": stream})


CASES: dict[str, Callable[[], bytes]] = {fn.__name__.replace("_", "-"): fn for fn in (
    sparse_fillers_beyond_shape, sparse_fillers_at_shape, sparse_shape_over_bound, sparse_33_dimensions,
    huffman_count_over_bound, huffman_count_at_bound, huffman_one_huge_segment, huffman_segments_at_limit,
    huffman_widest_table,
    zstd_size_at_bound, zstd_size_over_bound, zstd_window_2_gib, zstd_second_frame, zstd_skippable_after,
    zstd_empty_truncated, zstd_size_true, zstd_level_99,
    lzma_trailing_bytes, bz2_trailing_bytes, lzma_bomb_over_bound,
    raw_bool_byte_255, raw_alphabet_2_to_32, raw_alphabet_over,
    kmeans_shape_33_dimensions, kmeans_f64_output_over_bound,
)}
