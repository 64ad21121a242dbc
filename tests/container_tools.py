"""Take a valid .dcf apart into plain data and put it back together with every length, offset and CRC fixed up.

Tests and the fuzzer use it to build hostile files that get past the checksums, so the decoders themselves are hit.
This is an independent, minimal writer of spec/FORMAT.md (it does not use dcframe's writer).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAGIC = b"\x89DCF\r\n\x1a\n"
END_MAGIC = b"DCFINDEX"


@dataclass
class Parts:
    """A container as data: the index map (without tensor entries) and per tensor its record and stream bytes."""

    index: dict[str, Any]
    tensors: list[tuple[dict[str, Any], dict[str, bytes]]] = field(default_factory=list)


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack("<B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def split(data: bytes) -> Parts:
    """Parse a valid container (trusting it) into Parts."""
    offset, length, _crc32, _end = struct.unpack("<QII8s", data[-24:])
    index = msgpack.unpackb(data[offset:offset + length], raw=False)
    parts = Parts({k: v for k, v in index.items() if k != "tensors"})
    for _name, start, rec_len, _total, _rcrc in index["tensors"]:
        record = msgpack.unpackb(data[start:start + rec_len], raw=False)
        pos = start + rec_len
        streams = {}
        for sname, _size, _scrc, chunks in record["streams"]:
            out = b""
            for c in chunks:
                pos += len(_bin_header(c))
                out += data[pos:pos + c]
                pos += c
            streams[sname] = out
        parts.tensors.append((record, streams))
    return parts


def join(parts: Parts, chunk_size: int = 1 << 24, fix_streams: bool = True,
         pack: Callable[[Any], bytes] | None = None) -> bytes:
    """Write Parts as a container whose checksums, sizes and offsets all match (whatever the records say).

    With fix_streams, each record's stream list is rebuilt from the stream bytes; without, it is kept as is (so
    the caller's descriptors are used, and the chunks are laid out from them as far as the data allows). `pack`
    replaces the msgpack encoder of records and index (e.g. to write float 32).
    """
    pack = pack or (lambda obj: msgpack.packb(obj, use_bin_type=True))
    out = bytearray(MAGIC)
    entries = []
    for record, streams in parts.tensors:
        record = dict(record)
        if fix_streams:
            descs = []
            for sname, blob in streams.items():
                chunks = [len(blob[i:i + chunk_size]) for i in range(0, len(blob), chunk_size)]
                descs.append([sname, len(blob), _crc(blob), chunks])
            record["streams"] = descs
        packed = pack(record)
        start = len(out)
        out += packed
        for blob in streams.values():
            for i in range(0, len(blob), chunk_size):
                chunk = blob[i:i + chunk_size]
                out += _bin_header(len(chunk)) + chunk
        name = record.get("name") if isinstance(record.get("name"), str) else "?"
        entries.append([name, start, len(packed), len(out) - start, _crc(packed)])
    index = dict(parts.index)
    index["tensors"] = entries
    packed = pack(index)
    offset = len(out)
    out += packed
    out += struct.pack("<QII8s", offset, len(packed), _crc(packed), END_MAGIC)
    return bytes(out)
