"""Hand-built containers for the hostile-file harness (tests/test_hostile.py): every count, shape, chunk count,
offset and nesting depth of the index and records at and just beyond its limit (spec/FORMAT.md sections 2, 3, 4, 8),
plus a seeded structure-aware generator of well-typed containers with extreme values.

Built with tests/container_tools.py and msgpack only (not dcframe's writer), so the CRCs are valid and the reader's
own checks are what a case meets. CASES maps a name to a function returning the file's bytes.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import zstandard
from container_tools import END_MAGIC, Parts, join

RAW = {"id": "raw", "version": 1, "config": {}, "package": "dcframe"}
ZSTD = {"id": "zstd", "version": 1, "config": {"level": 1}, "package": "dcframe"}
GENERATED = int(os.environ.get("DCF_HOSTILE_EXAMPLES", "24"))  # seeded generator cases (more for local fuzzing)
LIMITS = {"tensors": 1 << 20, "ndim": 32, "depth": 32, "chunk": 1 << 30, "index": 1 << 26, "record": 1 << 26}


def _index(chains: list | None = None, **extra: Any) -> dict[str, Any]:
    return {"format": "dcf", "version": [1, 0], "producer": "hostile", "metadata": {},
            "chains": chains if chains is not None else [[RAW]], **extra}


def _raw_record(name: str, shape: list[int], dtype: str = "F32", **extra: Any) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "chain": 0,
            "steps": [[["data", ["data"], {"dtype": dtype, "shape": shape}]]], **extra}


def _raw(name: str = "w", n: int = 4, **extra: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    return _raw_record(name, [n], **extra), {"data": bytes(4 * n)}


def _file(*tensors: tuple[dict[str, Any], dict[str, bytes]], index: dict[str, Any] | None = None,
          **kw: Any) -> bytes:
    return join(Parts(index or _index(), list(tensors)), **kw)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = "@@deep@@"  # a placeholder value that _deep_pack replaces by raw, deeply nested msgpack


def _spliced(value: bytes, where: str) -> bytes:
    """A container with the raw msgpack `value` under an unknown key of the index or of the record (spliced in as
    bytes: msgpack's packer stops at 511 levels, and building millions of Python objects first is slow)."""
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True).replace(msgpack.packb(DEEP), value)  # noqa: E731
    if where == "index":
        return _file(_raw(), index=_index(junk=DEEP), pack=pack)
    return _file(_raw(junk=DEEP), pack=pack)


def _deep(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"


def _retrail(data: bytes, offset: int | None = None, length: int | None = None) -> bytes:
    """Rewrite the trailer's index offset or length (the index CRC kept)."""
    io, il, crc, end = struct.unpack("<QII8s", data[-24:])
    return data[:-24] + struct.pack("<QII8s", io if offset is None else offset, il if length is None else length,
                                    crc, end)


def _reindex(data: bytes, edit: Callable[[dict[str, Any]], bytes | None]) -> bytes:
    """Replace the index by edit(index) (or the edited index re-packed), offsets and CRC fixed up."""
    io, il, _, _ = struct.unpack("<QII8s", data[-24:])
    index = msgpack.unpackb(data[io:io + il], raw=False)
    packed = edit(index) or msgpack.packb(index, use_bin_type=True)
    return data[:io] + packed + struct.pack("<QII8s", io, len(packed), zlib.crc32(packed), END_MAGIC)


def _extra_key(packed_map: bytes, key: str, value: bytes) -> bytes:
    """Append one key (raw msgpack value bytes) to a packed fixmap."""
    assert 0x80 <= packed_map[0] < 0x8F
    return bytes([packed_map[0] + 1]) + packed_map[1:] + msgpack.packb(key) + value


def _array_of(item: bytes, n: int) -> bytes:
    """A msgpack array32 of n copies of the packed `item`."""
    return b"\xdd" + struct.pack(">I", n) + item * n


def _empty_arrays(n: int) -> bytes:
    return _array_of(b"\x90", n)


def _zstd_bomb(declared: int, real: int) -> bytes:
    """One raw|zstd F32 tensor declaring `declared` bytes whose frame really inflates to `real` zero bytes."""
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(real))
    n = declared // 4
    record = {"name": "bomb", "dtype": "F32", "shape": [n], "chain": 0,
              "steps": [[["data", ["data"], {"dtype": "F32", "shape": [n]}]], [["data", ["data"], {"size": declared}]]]}
    return _file((record, {"data": frame}), index=_index([[RAW, ZSTD]]))


def _many_chunks(n: int) -> bytes:
    record, streams = _raw(n=n)
    return _file((record, streams), chunk_size=4)


def _chunk_beyond_limit() -> bytes:
    record, _ = _raw()
    record["streams"] = [["data", LIMITS["chunk"] + 1, 0, [LIMITS["chunk"] + 1]]]
    return _file((record, {"data": b""}), fix_streams=False)


def _entries(edit: Callable[[list], None]) -> bytes:
    def change(index: dict[str, Any]) -> None:
        edit(index["tensors"])
    return _reindex(_file(_raw("a"), _raw("b")), change)


def _tensor_count(n: int) -> bytes:
    """An index listing n entries of 6 bytes each (["", 0, 0, 0, 0]); over the limit, the count is refused."""
    def change(index: dict[str, Any]) -> bytes:
        del index["tensors"]
        entries = b"\xdd" + struct.pack(">I", n) + b"\x95\xa0\x00\x00\x00\x00" * n
        return _extra_key(msgpack.packb(index, use_bin_type=True), "tensors", entries)
    return _reindex(_file(), change)


def _many_tensors(n: int) -> bytes:
    return _file(*[_raw(f"t{i}", 1) for i in range(n)])


CASES: dict[str, Callable[[], bytes]] = {
    "valid-minimal": lambda: _file(_raw()),
    "valid-empty-container": lambda: _file(),
    "valid-scalar": lambda: _file((_raw_record("s", []), {"data": bytes(4)})),
    "valid-zero-dim": lambda: _file((_raw_record("z", [0, 1 << 40]), {})),
    "ndim-at-limit": lambda: _file((_raw_record("d", [1] * LIMITS["ndim"]), {"data": bytes(4)})),
    "ndim-beyond-limit": lambda: _file((_raw_record("d", [1] * (LIMITS["ndim"] + 1)), {"data": bytes(4)})),
    "declared-2^30-bytes-tiny-stream": lambda: _file((_raw_record("w", [1 << 28]), {"data": bytes(4)})),
    "declared-beyond-file-bound": lambda: _file((_raw_record("w", [1 << 40]), {"data": bytes(4)})),
    "dim-beyond-2^53": lambda: _file((_raw_record("w", [1 << 53, 0]), {})),
    "zstd-declares-1GiB-inflates-4MiB": lambda: _zstd_bomb(1 << 30, 4 << 20),
    "zstd-declares-4MiB-inflates-64MiB": lambda: _zstd_bomb(4 << 20, 64 << 20),
    "chunks-100k-of-4-bytes": lambda: _many_chunks(100_000),
    "chunk-beyond-limit": _chunk_beyond_limit,
    "tensors-4096": lambda: _many_tensors(4096),
    "tensors-beyond-limit": lambda: _tensor_count(LIMITS["tensors"] + 1),
    "index-length-beyond-limit": lambda: _retrail(_file(_raw()), length=LIMITS["index"] + 1),
    "index-offset-beyond-file": lambda: _retrail(_file(_raw()), offset=1 << 62),
    "index-offset-inside-magic": lambda: _retrail(_file(_raw()), offset=0),
    "index-short-of-trailer": lambda: _retrail(_file(_raw()), length=struct.unpack(
        "<QII8s", _file(_raw())[-24:])[1] - 1),
    "entry-offset-gap": lambda: _entries(lambda t: t[1].__setitem__(1, t[1][1] + 1)),
    "entry-total-beyond-file": lambda: _entries(lambda t: t[1].__setitem__(3, 1 << 50)),
    "entry-record-beyond-limit": lambda: _entries(lambda t: t[0].__setitem__(2, LIMITS["record"] + 1)),
    "entry-record-longer-than-total": lambda: _entries(lambda t: t[0].__setitem__(2, t[0][3] + 1)),
    "entry-fields-beyond-2^53": lambda: _entries(lambda t: t[0].__setitem__(4, 1 << 60)),
    "entry-name-repeated": lambda: _entries(lambda t: t[1].__setitem__(0, t[0][0])),
    "depth-at-limit-in-record": lambda: _file(_raw(junk=_nested(LIMITS["depth"] - 1))),
    "depth-beyond-limit-in-record": lambda: _file(_raw(junk=_nested(LIMITS["depth"]))),
    "depth-1020-in-index": lambda: _spliced(_deep(1020), "index"),
    "depth-5000-in-record": lambda: _spliced(_deep(5000), "record"),
    "empty-arrays-4M-in-index": lambda: _spliced(_empty_arrays(4 << 20), "index"),
    "empty-arrays-4M-in-record": lambda: _spliced(_empty_arrays(4 << 20), "record"),
    "empty-maps-4M-in-record": lambda: _spliced(b"\xdd" + struct.pack(">I", 4 << 20) + b"\x80" * (4 << 20), "record"),
    "non-latin-1-chars-2M-in-index": lambda: _spliced(_array_of(b"\xa2\xc4\x81", 2 << 20), "index"),
    "short-strings-2M-in-record": lambda: _spliced(b"\xdd" + struct.pack(">I", 2 << 20) + b"\xa2ab" * (2 << 20),
                                                   "record"),
    "empty-maps-64k-in-stats": lambda: _file(_raw(stats={"stages": [{} for _ in range(1 << 16)]})),
    "strings-256k-in-metadata": lambda: _file(_raw(), index=_index(metadata={f"k{i}": "vv" for i in range(1 << 18)})),
    "binary-key-in-metadata": lambda: _file(_raw(), index=_index(metadata={b"k": "v"})),
    "subnormal-entropy-stats": lambda: _file(_raw(stats={"entropy_bits": {"data": 5e-324}, "rms": 1e308,
                                                         "sparsity": 5e-324, "stages": [{"data": 2**53 - 1}]})),
    "version-of-bools": lambda: _file(_raw(), index=_index(version=[True, False])),
    "stage-version-zero": lambda: _file(_raw(), index=_index([[dict(RAW, version=0)]])),
    "steps-empty-application-list": lambda: _file((dict(_raw()[0], steps=[[]]), {"data": bytes(16)})),
    "chain-of-4096-raw-stages": lambda: _file(_raw(), index=_index([[RAW] * 4096])),
}


# -- the seeded structure-aware generator ----------------------------------------------------------------------------

EXTREME_INTS = [0, 1, 2, 31, 32, 33, 255, 256, 65535, 65536, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, (1 << 32) - 1,
                1 << 32, (1 << 53) - 1, 1 << 53, (1 << 63) - 1, -1, -(1 << 53)]
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F128", ""]


def _shape(r: random.Random) -> list[int]:
    ndim = r.choice([0, 1, 2, 4, 31, 32, 33, 64])
    return [r.choice([0, 1, 2, 3, 1 << 16, 1 << 20, 1 << 31]) for _ in range(ndim)]


def _meta(r: random.Random, shape: list[int], dtype: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"dtype": dtype, "shape": shape}
    if r.random() < 0.3:
        meta[r.choice(["shape", "dtype", "size", "alphabet", "count"])] = r.choice(EXTREME_INTS)
    return meta


def _generated(seed: int) -> bytes:
    """One container of 1-4 raw or raw|zstd tensors with extreme but well-typed counts, shapes, chunk layouts and
    offsets; a third of them get one index or trailer field replaced by an extreme integer."""
    r = random.Random(seed)
    chains = [[RAW], [RAW, ZSTD]]
    tensors = []
    for t in range(r.randint(1, 4)):
        shape, dtype = _shape(r), r.choice(DTYPES)
        data = bytes(r.choice([0, 1, 4, 16, 4096]))
        chain = r.randrange(2)
        steps = [[["data", ["data"], _meta(r, shape, dtype)]]]
        if chain:
            size = r.choice([len(data), r.choice(EXTREME_INTS)])
            data = zstandard.ZstdCompressor(level=1).compress(data)
            steps.append([["data", ["data"], {"size": size}]])
        record = {"name": f"t{t}", "dtype": dtype, "shape": shape, "chain": chain, "steps": steps}
        if r.random() < 0.3:
            record["stats"] = {"entropy_bits": {"data": r.choice([5e-324, 0.0, 1e308, 3.5])},
                               "sparsity": r.choice([0.0, 1.0, 5e-324]), "rms": r.choice([0.0, 1e308])}
        tensors.append((record, {"data": data}))
    data = join(Parts(_index(chains), tensors), chunk_size=r.choice([1, 3, 1 << 24]))
    if r.random() < 0.33:
        field = r.randrange(5)
        value = r.choice(EXTREME_INTS[:-2])
        if field < 2:
            data = _retrail(data, **{("offset", "length")[field]: value % (1 << (64 if field == 0 else 32))})
        else:
            def change(index: dict[str, Any], i=r.randrange(len(tensors)), f=field + 1, v=value) -> None:
                index["tensors"][i][min(f, 4)] = v
            data = _reindex(data, change)
    return data


CASES.update({f"generated-{seed}": (lambda seed=seed: _generated(seed)) for seed in range(GENERATED)})
