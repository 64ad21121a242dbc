"""Regenerate the golden .dcf vectors of spec/vectors (valid files + expected tensors, invalid files + error class).

Run from the repository root: `python spec/vectors/generate.py` (deterministic: fixed seeds, and the container has no
timestamp). `--check` regenerates into a temporary directory and fails if anything differs from the committed files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

import dcframe
from dcframe import Dense
from dcframe.core.container import Layout

HERE = Path(__file__).resolve().parent
MAGIC = b"\x89DCF\r\n\x1a\n"
END_MAGIC = b"DCFINDEX"

# ---------------------------------------------------------------------------------------------------------------------
# Tensors


def rng(seed: int) -> np.random.Generator:
    """A generator with a fixed seed, so every run makes the same tensors."""
    return np.random.default_rng(seed)


def laplace(seed: int, shape: tuple[int, ...], scale: float = 0.05, dtype: str = "float32") -> np.ndarray:
    """Weights shaped like a trained layer's (Laplace around zero)."""
    return rng(seed).laplace(0.0, scale, size=shape).astype(dtype)


def bf16(a: np.ndarray) -> Dense:
    """A BF16 tensor: the top 16 bits of float32 (truncated), carried as uint16."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16
    return Dense(bits.astype(np.uint16), "BF16")


def special_floats(dtype: str) -> np.ndarray:
    """Values a reader must keep bit-exact: signed zeros, infinities, NaNs with payloads, subnormals, extremes."""
    info = np.finfo(dtype)
    vals = np.array([0.0, -0.0, np.inf, -np.inf, info.max, -info.max, info.tiny, info.smallest_subnormal, 1.0, -2.5],
                    dtype=dtype)
    nan_bits = {"float64": [0x7FF8000000000001, 0xFFF0000000000ABC], "float32": [0x7FC00001, 0xFF800123],
                "float16": [0x7E01, 0xFC03]}[dtype]
    uint = {"float64": np.uint64, "float32": np.uint32, "float16": np.uint16}[dtype]
    return np.concatenate([vals, np.array(nan_bits, dtype=uint).view(dtype)])


def every_dtype() -> dict[str, np.ndarray | Dense]:
    """One small tensor of each of the 13 dtypes, with extremes."""
    r = rng(1)
    return {
        "f64": special_floats("float64"),
        "f32": special_floats("float32").reshape(3, 4),
        "f16": special_floats("float16").reshape(2, 2, 3),
        "bf16": Dense(np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0x3F80, 0xC020, 0x0001], np.uint16), "BF16"),
        "i64": np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], np.int64),
        "i32": np.array([np.iinfo(np.int32).min, -7, 0, 7, np.iinfo(np.int32).max], np.int32),
        "i16": np.array([np.iinfo(np.int16).min, -300, 0, 300, np.iinfo(np.int16).max], np.int16),
        "i8": np.array([-128, -1, 0, 1, 127], np.int8),
        "u64": np.array([0, 1, 2**53 + 1, 2**64 - 1], np.uint64),
        "u32": np.array([0, 1, 2**32 - 1], np.uint32),
        "u16": r.integers(0, 2**16, size=(3, 3)).astype(np.uint16),
        "u8": r.integers(0, 256, size=(17,)).astype(np.uint8),
        "bool": np.array([[True, False, True], [False, False, True]]),
    }


def scalars_and_empty() -> dict[str, np.ndarray | Dense]:
    """0-d tensors and tensors with a zero dimension."""
    return {
        "scalar_f32": np.array(3.25, np.float32),
        "scalar_i64": np.array(-(2**40), np.int64),
        "scalar_bool": np.array(True),
        "scalar_bf16": Dense(np.array(0x4049, np.uint16), "BF16"),
        "empty_f32": np.zeros((0,), np.float32),
        "empty_f64_2x0x3": np.zeros((2, 0, 3), np.float64),
        "empty_u8": np.zeros((0, 5), np.uint8),
    }


def mixed_model() -> dict[str, np.ndarray | Dense]:
    """A small model: conv kernel, fully connected weight, biases, an integer buffer."""
    return {
        "conv1.weight": laplace(10, (8, 4, 3, 3), 0.1),
        "conv1.bias": laplace(11, (8,), 0.01),
        "fc1.weight": laplace(12, (64, 48)),
        "fc1.bias": laplace(13, (64,), 0.01),
        "bn.num_batches": np.array(1234, np.int64),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Container surgery, for the invalid vectors (written from spec/FORMAT.md)


def pack(obj: Any) -> bytes:
    """msgpack with bin for bytes and str for text, shortest encodings (what FORMAT.md section 2 asks)."""
    return msgpack.packb(obj, use_bin_type=True)


def bin_header(n: int) -> bytes:
    """The shortest msgpack bin header for n bytes (FORMAT.md 4.2)."""
    if n < 256:
        return bytes([0xC4, n])
    if n < 65536:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def parse(data: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], list[list[bytes]]]]]:
    """Split a valid .dcf file into its index and, per tensor, (record, chunks of each stream)."""
    io, il, _ = struct.unpack("<QII", data[-24:-8])
    index = msgpack.unpackb(data[io:io + il], raw=False)
    tensors = []
    for _name, off, rl, _tl, _crc in index["tensors"]:
        rec = msgpack.unpackb(data[off:off + rl], raw=False)
        pos = off + rl
        chunks = []
        for _sname, _size, _scrc, lens in rec["streams"]:
            cs = []
            for n in lens:
                h = len(bin_header(n))
                cs.append(data[pos + h:pos + h + n])
                pos += h + n
            chunks.append(cs)
        tensors.append((rec, chunks))
    return index, tensors


def build(index: dict[str, Any], tensors: list[tuple[dict[str, Any], list[list[bytes]]]], *, fix_crcs: bool = True,
          header: Callable[[int], bytes] = bin_header) -> bytes:
    """Lay out a file from parsed parts, recomputing offsets, lengths and (unless told not to) checksums."""
    out = bytearray(MAGIC)
    entries = []
    for rec, chunks in tensors:
        for s, cs in zip(rec["streams"], chunks, strict=True):
            joined = b"".join(cs)
            if fix_crcs:
                s[1], s[2], s[3] = len(joined), zlib.crc32(joined), [len(c) for c in cs]
        rb = pack(rec)
        body = b"".join(header(len(c)) + c for cs in chunks for c in cs)
        entries.append([rec["name"], len(out), len(rb), len(rb) + len(body), zlib.crc32(rb)])
        out += rb + body
    index = dict(index, tensors=entries)
    ib = pack(index)
    return bytes(out) + ib + struct.pack("<QII", len(out), len(ib), zlib.crc32(ib)) + END_MAGIC


def rewrite(data: bytes, edit: Callable[[dict[str, Any], list[tuple[dict[str, Any], list[list[bytes]]]]], None],
            **kw: Any) -> bytes:
    """Parse, let `edit` change the parts in place, rebuild with consistent offsets and checksums."""
    index, tensors = parse(data)
    edit(index, tensors)
    return build(index, tensors, **kw)


def set_trailer(data: bytes, *, offset: int | None = None, length: int | None = None, crc: int | None = None) -> bytes:
    """Overwrite fields of the 24-byte trailer."""
    io, il, ic = struct.unpack("<QII", data[-24:-8])
    io = offset if offset is not None else io
    il = length if length is not None else il
    ic = crc if crc is not None else ic
    return data[:-24] + struct.pack("<QII", io, il, ic) + END_MAGIC


def flip(data: bytes, pos: int) -> bytes:
    """Flip the low bit of byte `pos`."""
    return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:]


def repack_index(data: bytes, edit: Callable[[dict[str, Any]], bytes | None]) -> bytes:
    """Replace the index of a valid file by edit(index) (raw msgpack bytes), or by the edited map re-packed when
    edit returns None; the trailer's length and CRC are fixed up."""
    io, il, _ = struct.unpack("<QII", data[-24:-8])
    index = msgpack.unpackb(data[io:io + il], raw=False)
    ib = edit(index) or pack(index)
    return data[:io] + ib + struct.pack("<QII", io, len(ib), zlib.crc32(ib)) + END_MAGIC


def add_key(packed_map: bytes, key: str, value: bytes) -> bytes:
    """A packed fixmap with one more key whose value is the raw msgpack `value`."""
    assert 0x80 <= packed_map[0] < 0x8F
    return bytes([packed_map[0] + 1]) + packed_map[1:] + pack(key) + value


def add_invalid_container_vectors(g: Generator) -> None:
    """The msgpack and field rules of FORMAT.md 2, 3, 4 and 8.2 (issue 15's spec gaps), each with valid checksums."""
    base = g.sources["dtypes-raw"]
    first = parse(base)[1][0][0]["name"]

    def index_field(fn: Callable[[dict[str, Any]], None]) -> bytes:
        def edit(index: dict[str, Any]) -> None:
            fn(index)
        return repack_index(base, edit)

    def record_field(key: str, value: bytes) -> bytes:
        """The first record with one more key whose value is the raw msgpack `value`."""
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            tensors[0][0][key] = "@@value@@"
        data = rewrite(base, edit)
        old = pack("@@value@@")
        io, il, _ = struct.unpack("<QII", data[-24:-8])
        index = msgpack.unpackb(data[io:io + il], raw=False)
        _name, off, rl, tl, _crc = index["tensors"][0]
        rec = data[off:off + rl].replace(old, value)
        delta = len(rec) - rl
        index["tensors"][0][2:5] = [rl + delta, tl + delta, zlib.crc32(rec)]
        for entry in index["tensors"][1:]:
            entry[1] += delta
        body = data[:off] + rec + data[off + rl:io]
        ib = pack(index)
        return body + ib + struct.pack("<QII", len(body), len(ib), zlib.crc32(ib)) + END_MAGIC

    io, il, _ = struct.unpack("<QII", base[-24:-8])
    g.add_invalid("index-short-of-trailer", set_trailer(base, offset=io - 1), "FormatError",
                  "index_offset one byte early: the index stays inside the file but does not end at the trailer "
                  "(malformed, not over a limit).", ["index", "trailer"])
    g.add_invalid("records-not-tiling", index_field(lambda i: (i["tensors"][1].__setitem__(1, i["tensors"][1][1] + 1),
                                                               i["tensors"][0].__setitem__(3, i["tensors"][0][3] + 1))),
                  "FormatError", "The second record's offset one byte past the end of the first (whose total_length "
                  "grew by one): the records no longer tile the file. Checked at open.", ["index", "tiling"])
    g.add_invalid("record-length-over-limit",
                  index_field(lambda i: i["tensors"][0].__setitem__(2, 64 * 2**20 + 1)), "LimitError",
                  "An entry's record_length above 64 MiB (checked at open, before the record is read).",
                  ["limit:record"])
    g.add_invalid("entry-total-past-file", index_field(lambda i: i["tensors"][-1].__setitem__(3, 2**40)),
                  "LimitError", "The last entry's total_length points past the end of the file.", ["limit:entry"])
    g.add_invalid("entry-field-not-int", index_field(lambda i: i["tensors"][0].__setitem__(1, "8")), "FormatError",
                  "An entry's offset is the string \"8\".", ["index", "entry"])
    g.add_invalid("duplicate-tensor-name", index_field(lambda i: i["tensors"][1].__setitem__(0, first)),
                  "FormatError", "Two index entries name the same tensor.", ["index", "names"])
    g.add_invalid("version-bools", index_field(lambda i: i.__setitem__("version", [True, False])), "FormatError",
                  "version [true, false]: booleans are not integers.", ["version", "msgpack:bool"])
    g.add_invalid("metadata-not-string", index_field(lambda i: i.__setitem__("metadata", {"n": 5})), "FormatError",
                  "A metadata value that is an int, not a str.", ["metadata"])
    g.add_invalid("stage-version-zero", index_field(lambda i: i["chains"][0][0].__setitem__("version", 0)),
                  "FormatError", "A stage descriptor with version 0 (versions start at 1).", ["stage:version"])
    g.add_invalid("chain-empty", index_field(lambda i: i["chains"].append([])), "FormatError",
                  "An extra chain with no stages.", ["chain"])
    g.add_invalid("map-key-binary", repack_index(base, lambda i: add_key(pack(i), "x", b"\x81\xc4\x01k\xa1v")),
                  "FormatError", "An unknown index key whose value is a map with a bin key.", ["msgpack:keys"])
    g.add_invalid("map-key-repeated", repack_index(base, lambda i: add_key(pack(i), "producer", pack("again"))),
                  "FormatError", "The index map has the key \"producer\" twice.", ["msgpack:keys"])
    g.add_invalid("nesting-too-deep", repack_index(base, lambda i: add_key(pack(i), "x", b"\x91" * 31 + b"\x90")),
                  "FormatError", "An unknown index key holding 32 nested arrays: 33 levels with the index map.",
                  ["msgpack:depth"])
    g.add_invalid("too-many-containers", repack_index(base, lambda i: add_key(pack(i), "x", b"\xdc\x07\xd0" +
                                                                                   b"\x90" * 2000)),
                  "FormatError", "An unknown index key holding 2000 empty arrays: more than 64 + n/8 arrays and maps "
                  "in the n-byte index.", ["msgpack:budget"])
    g.add_invalid("int-beyond-2^53", record_field("x", pack(2**53)), "FormatError",
                  "A record key holding the integer 2^53.", ["msgpack:int"], tensor=first)
    g.add_invalid("record-trailing-bytes", _record_trailing(base), "FormatError",
                  "record_length covers one byte after the record map (the first chunk's header byte).",
                  ["record", "msgpack:trailing"], tensor=first)

    def no_apps(index: dict[str, Any], tensors: list[Any]) -> None:
        tensors[0][0]["steps"][0] = []
    g.add_invalid("empty-application-list", rewrite(base, no_apps), "FormatError",
                  "A step with no applications.", ["steps"], tensor=first)


def _record_trailing(data: bytes) -> bytes:
    """The first record's length (and CRC) grown by one byte, into its first chunk's header."""
    io, il, _ = struct.unpack("<QII", data[-24:-8])
    index = msgpack.unpackb(data[io:io + il], raw=False)
    _name, off, rl, _tl, _crc = index["tensors"][0]
    index["tensors"][0][2:5:2] = [rl + 1, zlib.crc32(data[off:off + rl + 1])]
    ib = pack(index)
    return data[:io] + ib + struct.pack("<QII", io, len(ib), zlib.crc32(ib)) + END_MAGIC


# ---------------------------------------------------------------------------------------------------------------------
# Generation


class Generator:
    """Writes vectors into `root` and collects the index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "valid").mkdir(parents=True, exist_ok=True)
        (root / "invalid").mkdir(parents=True, exist_ok=True)
        self.valid: list[dict[str, Any]] = []
        self.invalid: list[dict[str, Any]] = []
        self.sources: dict[str, bytes] = {}

    def add_valid(self, name: str, tensors: dict[str, np.ndarray | Dense], description: str, exercises: list[str], *,
                  pipeline: str | None = None, preset: str | None = None, rules: tuple[str, ...] = (),
                  chunk_size: int = 16 * 2**20, metadata: dict[str, str] | None = None, lossless: bool,
                  layout: Layout | None = None) -> None:
        """Compress `tensors` with dcframe, decode them again, store the file and the expected decoded bytes."""
        path = self.root / "valid" / f"{name}.dcf"
        dcframe.compress(tensors, path, pipeline=pipeline, preset=preset, rules=rules, metadata=metadata,
                         chunk_size=chunk_size, layout=layout)
        data = path.read_bytes()
        decoded = dcframe.decompress(path)
        expected = bytearray()
        manifest = []
        for tname, t in decoded.items():
            arr = t.array
            raw = arr.tobytes()
            if lossless:
                src = tensors[tname]
                src_bytes = np.asarray(src.array if isinstance(src, Dense) else src).tobytes()
                assert raw == src_bytes, f"{name}/{tname}: lossless chain did not round-trip"
            manifest.append({"name": tname, "dtype": t.dtype, "shape": list(arr.shape), "offset": len(expected),
                             "length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
            expected += raw
        (self.root / "valid" / f"{name}.bin").write_bytes(bytes(expected))
        index, _ = parse(data)
        stages = sorted({d["id"] for chain in index["chains"] for d in chain})
        chains = sorted({" | ".join(d["id"] for d in chain) for chain in index["chains"]})
        self.valid.append({"file": f"valid/{name}.dcf", "expected": f"valid/{name}.bin", "description": description,
                           "exercises": exercises, "stages": stages, "chains": chains, "lossless": lossless,
                           "bytes": len(data), "tensors": manifest})
        self.sources[name] = data

    def add_invalid(self, name: str, data: bytes, error: str, description: str, exercises: list[str],
                    tensor: str | None = None) -> None:
        """Store a damaged file; `error` is the class a reader MUST raise, `tensor` the tensor it fails on (None: the
        file fails to open), and check that dcframe itself raises exactly that."""
        path = self.root / "invalid" / f"{name}.dcf"
        path.write_bytes(data)
        where, got = python_error(path, tensor)
        assert got == error, f"{name}: dcframe raised {got} at {where}, the vector says {error}"
        self.invalid.append({"file": f"invalid/{name}.dcf", "error": error, "tensor": tensor,
                             "fails_at": "open" if tensor is None else "read", "description": description,
                             "exercises": exercises})

    def write_index(self) -> None:
        """index.json: what each vector exercises and what a reader must produce or raise."""
        doc = {
            "description": "Golden .dcf vectors. Valid: decoding each tensor MUST give exactly the bytes at "
                           "[offset, offset+length) of `expected` (C-order little-endian, BF16/F16 as 16-bit patterns, "
                           "BOOL as 0/1 bytes) with the given dtype and shape. Invalid: opening the file (tensor null) "
                           "or reading `tensor` MUST raise `error` (FORMAT.md section 9; IntegrityError and LimitError "
                           "are kinds of FormatError, and the exact class is expected).",
            "format_version": [1, 0],
            "generator": "spec/vectors/generate.py",
            "valid": self.valid,
            "invalid": self.invalid,
        }
        (self.root / "index.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def python_error(path: Path, tensor: str | None) -> tuple[str, str | None]:
    """Where dcframe fails on `path` (open or read of `tensor`) and with which error class name (None: no error)."""
    try:
        c = dcframe.Container(path)
    except dcframe.DcfError as e:
        return "open", type(e).__name__
    try:
        for n in [tensor] if tensor is not None else []:
            c.read(n)
    except dcframe.DcfError as e:
        return "read", type(e).__name__
    finally:
        c.close()
    return "nowhere", None


def generate(root: Path) -> None:
    """Write every vector under `root`."""
    g = Generator(root)
    # -- valid: lossless chains, dtypes, shapes
    g.add_valid("dtypes-raw", every_dtype(), "Every dtype through the raw serializer, with float specials (signed "
                "zeros, infinities, NaN payloads, subnormals) and integer extremes (incl. U64 above 2^53).",
                ["raw", "dtype:all", "bf16", "nan-payload"], pipeline="raw", lossless=True)
    g.add_valid("scalar-empty-raw", scalars_and_empty(), "0-d tensors and tensors with a zero dimension (empty "
                "streams have no chunks).", ["raw", "shape:scalar", "shape:empty", "empty-stream"],
                pipeline="raw", lossless=True)
    lossless_mix = {**every_dtype(), **scalars_and_empty(), "smooth": np.tile(np.arange(64, dtype=np.float32), 8)}
    for comp in ("zstd", "zlib", "lzma", "bz2"):
        g.add_valid(f"lossless-{comp}", lossless_mix, f"Every dtype, scalars and empty tensors through raw | {comp}.",
                    ["raw", comp, "dtype:all", "shape:scalar", "shape:empty"], pipeline=comp, lossless=True)
    g.add_valid("preset-lossless", mixed_model(), "The lossless preset (bytegroup | zstd(level=5) | rans(lanes=256)) "
                "with user metadata and non-ASCII tensor names.", ["preset:lossless", "bytegroup", "zstd", "rans",
                "metadata", "utf8-names"],
                preset="lossless", metadata={"model": "tiny", "note": "über ✓"}, lossless=True)
    big = {"ramp": np.arange(3000, dtype=np.float32).reshape(30, 100), "noise": laplace(20, (40, 50)),
           "empty": np.zeros((0,), np.float32)}
    g.add_valid("multichunk-raw", big, "Streams split into 100-byte chunks (ContainerWriter chunk_size=100).",
                ["raw", "multi-chunk"], pipeline="raw", chunk_size=100, lossless=True)
    g.add_valid("multichunk-zstd", big, "raw | zstd with 64-byte chunks.", ["zstd", "multi-chunk"], pipeline="zstd",
                chunk_size=64, lossless=True)
    g.add_valid("multichunk-han-fc", {"w": laplace(21, (60, 50))}, "han-fc with 300-byte chunks: several streams, "
                "each chunked.", ["preset:han-fc", "multi-chunk", "prune", "sparse", "kmeans", "huffman"],
                preset="han-fc", chunk_size=300, lossless=False)
    # -- valid: Deep Compression presets
    g.add_valid("han-fc", {"fc.weight": laplace(30, (100, 80)), "fc.bias": laplace(31, (100,), 0.01),
                           "counts": np.arange(10, dtype=np.int32)},
                "The han-fc preset (prune 92% | sparse 5-bit | kmeans 5-bit | huffman); the integer tensor falls back "
                "to the lossless chain.", ["preset:han-fc", "prune", "sparse", "kmeans", "huffman", "zstd"],
                preset="han-fc", lossless=False)
    g.add_valid("han-conv", {"conv.weight": laplace(32, (16, 8, 3, 3), 0.1)}, "The han-conv preset (prune 65% | "
                "sparse 8-bit | kmeans 8-bit | huffman).", ["preset:han-conv", "prune", "sparse", "kmeans", "huffman"],
                preset="han-conv", lossless=False)
    g.add_valid("han", mixed_model(), "The han preset: conv, fc and lossless chains chosen by rank in one file.",
                ["preset:han", "prune", "sparse", "kmeans", "huffman", "zstd"], preset="han", lossless=False)
    r = rng(40)
    g.add_valid("quantize8", {"f32": laplace(41, (50, 20)), "f64": laplace(42, (300,), dtype="float64"),
                              "f16": laplace(43, (7, 9), dtype="float16"), "bf16": bf16(laplace(44, (33,))),
                              "few": np.array([1.5, -1.5, 1.5, 0.25] * 5, np.float32),
                              "scalar": np.array(0.75, np.float32), "empty": np.zeros((0, 4), np.float32)},
                "The quantize8 preset (kmeans 8-bit | huffman) on every float dtype, a tensor with fewer distinct "
                "values than clusters, a scalar and an empty tensor.",
                ["preset:quantize8", "kmeans", "huffman", "dtype:F64", "dtype:F16", "bf16", "shape:scalar",
                 "shape:empty"], preset="quantize8", lossless=False)
    # -- valid: single stages and unusual chains
    zeros_runs = np.zeros(2000, np.float32)
    zeros_runs[[0, 7, 8, 15, 31, 50, 700, 1999]] = r.normal(size=8).astype(np.float32)
    g.add_valid("sparse-fillers", {"runs": zeros_runs, "all_zero": np.zeros((4, 4), np.float32),
                                   "negzero_nan": np.array([0.0, -0.0, np.nan, 0.0], np.float32),
                                   "ints": np.array([0, 0, 5, 0, -3] * 4, np.int16), "scalar": np.array(2.0),
                                   "bf16": bf16(np.array([0, 0, 1.5, 0, 0, 0, -2.0], np.float32))},
                "sparse(index_bits=3) | raw: gaps needing fillers, an all-zero tensor (two empty streams), -0.0 and "
                "NaN stored bit-exactly, integer and BF16 values.", ["sparse", "raw", "fillers", "empty-stream"],
                pipeline="sparse(index_bits=3)", lossless=True)
    g.add_valid("sparse-huffman", {"w": np.where(r.random((90, 70)) < 0.1, r.normal(size=(90, 70)), 0.0)},
                "sparse(index_bits=4) | huffman: positions Huffman-coded, F64 values serialized raw.",
                ["sparse", "huffman", "raw", "dtype:F64"], pipeline="sparse(index_bits=4) | huffman", lossless=True)
    g.add_valid("prune-zstd", {"w": laplace(50, (40, 40))}, "prune(sparsity=0.5) | zstd: the dense stream stays dense.",
                ["prune", "zstd"], pipeline="prune(sparsity=0.5) | zstd", lossless=False)
    wanda = laplace(55, (12, 20))
    activation = np.random.default_rng(56).exponential(size=(1, 20)).repeat(12, axis=0)
    g.add_valid("prune-wanda-zstd", {"w": Dense(wanda, "F32", {"activation": activation})},
                "prune(sparsity=0.5, criterion='wanda') | zstd: the stored config names the criterion; decoding is "
                "the identity as for magnitude (the activation side input is not stored).",
                ["prune", "prune:criterion", "zstd"], pipeline="prune(sparsity=0.5, criterion='wanda') | zstd",
                lossless=False)
    g.add_valid("kmeans-raw", {"w": laplace(51, (30, 30)), "w64": laplace(52, (5, 5), dtype="float64")},
                "kmeans(bits=3) | raw: codebook lookup with 1-byte indices.", ["kmeans", "raw"],
                pipeline="kmeans(bits=3, init=linear, method=lloyd)", lossless=False)
    g.add_valid("kmeans-wide-raw", {"w": laplace(53, (1000,))}, "kmeans(clusters=300) | raw: 2-byte indices.",
                ["kmeans", "raw", "symbols:2-byte"], pipeline="kmeans(clusters=300, init=linear, method=lloyd)",
                lossless=False)
    g.add_valid("huffman-segments", {"w": laplace(54, (64, 64))}, "kmeans(bits=6) | huffman(max_bits=4, "
                "segment_size=100): length-limited codes and many segments.", ["kmeans", "huffman", "huffman:limited",
                "huffman:segments"],
                pipeline="kmeans(bits=6, init=linear, method=lloyd) | huffman(max_bits=4, segment_size=100)",
                lossless=False)
    g.add_valid("huffman-one-symbol", {"c": np.full((10, 10), 0.5, np.float32), "s": np.array(0.5, np.float32)},
                "kmeans | huffman on constant tensors: a single-symbol alphabet.", ["kmeans", "huffman",
                "huffman:one-symbol"], pipeline="kmeans(bits=2, init=linear, method=lloyd) | huffman", lossless=False)
    g.add_valid("uniform-huffman", {"f32": laplace(60, (40, 30)), "f64": laplace(61, (50,), dtype="float64"),
                                    "f16": laplace(62, (6, 7), dtype="float16"), "bf16": bf16(laplace(63, (33,))),
                                    "scalar": np.array(0.75, np.float32), "empty": np.zeros((0, 4), np.float32)},
                "uniform(rel_step=0.3) | huffman: the fitted absolute step is stored, codebooks of bin means in "
                "every float dtype (decoded as kmeans's lookup).", ["uniform", "huffman", "dtype:F64", "dtype:F16",
                "bf16", "shape:scalar", "shape:empty"], pipeline="uniform(rel_step=0.3) | huffman", lossless=False)
    gptq_x = rng(64).normal(size=(200, 12)).cumsum(axis=1)
    g.add_valid("uniform-gptq-raw", {"w": Dense(laplace(65, (8, 12)), "F32", {"hessian": gptq_x.T @ gptq_x / 200})},
                "uniform(step=0.02, dead_zone=0.5, method='gptq') | raw: grid points as the codebook, a widened zero "
                "bin (the hessian side input is not stored).", ["uniform", "uniform:gptq", "raw"],
                pipeline="uniform(step=0.02, dead_zone=0.5, method='gptq')", lossless=False)
    g.add_valid("zlib-zstd", {"w": laplace(55, (20, 20))}, "raw | zlib | zstd: two byte compressors in a row.",
                ["zlib", "zstd"], pipeline="zlib(level=1) | zstd(level=3)", lossless=True)
    folder = {"embed.weight": laplace(70, (6, 4)), "layer.weight": laplace(71, (4, 4)), "layer.bias": laplace(72, (4,))}
    g.add_valid("layout-folder", folder, "Version 1.1: a Hugging Face folder's layout in the index (FORMAT.md 3.3): "
                "two shards with their __metadata__, the index file and two small files; readers that do not "
                "recreate folders ignore it.", ["layout", "version:1.1", "zstd"], pipeline="zstd", lossless=True,
                layout=Layout([("model-00001-of-00002.safetensors", {"format": "pt"}),
                               ("model-00002-of-00002.safetensors", {"format": "pt"})],
                              {"embed.weight": 0, "layer.weight": 1, "layer.bias": 1}, "model.safetensors.index.json",
                              {"total_parameters": "44"}, {"config.json": b'{"model_type": "bert"}\n',
                                                           "vocab.txt": "[PAD]\n[UNK]\nü\n".encode()}))
    vocab = "".join(f"[unused{i}]\n" for i in range(300)).encode()
    g.add_valid("layout-packed", folder, "Version 1.2: a layout whose vocab.txt is packed as one zstd frame with its "
                "size (FORMAT.md 3.3), beside a file too small to pack; readers that do not recreate folders ignore "
                "it.", ["layout", "version:1.2", "zstd"], pipeline="zstd", lossless=True,
                layout=Layout([("model.safetensors", {"format": "pt"})],
                              {"embed.weight": 0, "layer.weight": 0, "layer.bias": 0}, None, None,
                              {"config.json": b'{"model_type": "bert"}\n', "vocab.txt": vocab}))
    add_valid_rans_vectors(g)
    add_valid_bytegroup_vectors(g, lossless_mix)
    add_valid_rowscale_vectors(g)
    add_valid_tcq_vectors(g)
    add_invalid_vectors(g)
    add_invalid_container_vectors(g)
    g.write_index()


def add_invalid_vectors(g: Generator) -> None:
    """Damaged files, each with the error class a reader must report."""
    base = g.sources["dtypes-raw"]
    for src in g.sources.values():
        assert build(*parse(src)) == src, "container surgery does not reproduce dcframe's layout"
    _, t = parse(base)
    first = t[0][0]["name"]

    g.add_invalid("empty-file", b"", "FormatError", "A file of 0 bytes.", ["magic"])
    g.add_invalid("bad-magic", b"\x89DCF\r\n\x1a\x0b" + base[8:], "FormatError", "Last magic byte changed.", ["magic"])
    g.add_invalid("truncated-half", base[:len(base) // 2], "FormatError", "The first half of a file: no trailer.",
                  ["truncated"])
    g.add_invalid("truncated-trailer", base[:-1], "FormatError", "The last byte missing (trailer magic wrong).",
                  ["truncated"])
    g.add_invalid("bad-end-magic", base[:-8] + b"DCFINDEY", "FormatError", "END_MAGIC changed.", ["trailer"])
    io, il, _ = struct.unpack("<QII", base[-24:-8])
    g.add_invalid("index-crc", flip(base, io + il // 2), "IntegrityError", "A byte of the index changed.",
                  ["checksum:index"])
    g.add_invalid("index-offset-beyond", set_trailer(base, offset=len(base) * 2), "LimitError",
                  "index_offset points beyond the file.", ["limit:index"])
    g.add_invalid("index-length-over-limit", set_trailer(base, length=64 * 2**20 + 1), "LimitError",
                  "index_length above 64 MiB.", ["limit:index"])
    g.add_invalid("record-crc", flip(base, 8 + 3), "IntegrityError", "A byte of the first record changed.",
                  ["checksum:record"], tensor=first)
    g.add_invalid("stream-crc", flip(base, _first_chunk_pos(base)), "IntegrityError",
                  "A byte of the first tensor's stream data changed.", ["checksum:stream"], tensor=first)

    def chain_stage(chain_i: int, stage_i: int, **changes: Any) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            index["chains"][chain_i][stage_i].update(changes)
        return edit

    g.add_invalid("unknown-stage", rewrite(base, chain_stage(0, 0, id="nosuch", package="dcframe-nosuch")),
                  "MissingStageError", "A chain names stage 'nosuch' (package dcframe-nosuch).", ["stage:unknown"],
                  tensor=first)
    g.add_invalid("stage-version-newer", rewrite(base, chain_stage(0, 0, version=99)), "MissingStageError",
                  "The raw stage at version 99.", ["stage:version"], tensor=first)

    def index_edit(**changes: Any) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            index.update(changes)
        return edit

    g.add_invalid("major-version-2", rewrite(base, index_edit(version=[2, 0])), "FormatError",
                  "Format version [2, 0].", ["version"])
    g.add_invalid("not-dcf-format", rewrite(base, index_edit(format="dcx")), "FormatError",
                  "index format is not \"dcf\".", ["index"])

    def record_edit(i: int, fn: Callable[[dict[str, Any], list[list[bytes]]], None]) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            fn(*tensors[i])
        return edit

    def set_key(key: str, value: Any) -> Callable[[dict[str, Any], list[list[bytes]]], None]:
        def fn(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
            rec[key] = value
        return fn

    g.add_invalid("declared-size-over-limit", rewrite(base, record_edit(0, set_key("shape", [2**20, 2**20, 2**10]))),
                  "LimitError", "A record declaring a 2^50-element F64 tensor.", ["limit:tensor-size"], tensor=first)
    g.add_invalid("too-many-dims", rewrite(base, record_edit(0, set_key("shape", [1] * 33))), "LimitError",
                  "A record with 33 dimensions.", ["limit:ndim"], tensor=first)
    g.add_invalid("unknown-dtype", rewrite(base, record_edit(0, set_key("dtype", "F128"))), "FormatError",
                  "dtype F128.", ["dtype"], tensor=first)
    g.add_invalid("shape-mismatch", rewrite(base, record_edit(0, set_key("shape", [13]))), "FormatError",
                  "The record's shape differs from what the chain decodes (raw meta says [12]).", ["shape"],
                  tensor=first)
    g.add_invalid("chain-index-out-of-range", rewrite(base, record_edit(0, set_key("chain", 5))), "FormatError",
                  "A record naming chain 5 of 1.", ["record"], tensor=first)

    def bad_raw_len(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
        chunks[0][-1] = chunks[0][-1][:-1]
    g.add_invalid("raw-length", rewrite(base, record_edit(0, bad_raw_len)), "FormatError",
                  "raw: one byte missing from the stream (stream size and crc consistent).", ["raw"], tensor=first)

    def zero_chunk(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
        chunks[0].append(b"")
    g.add_invalid("chunk-length-zero", rewrite(base, record_edit(0, zero_chunk)), "FormatError",
                  "A chunk of length 0 (chunks are 1 to 2^30 bytes; 0 is malformed, not over a limit).", ["chunk"],
                  tensor=first)

    def huge_chunk(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
        rec["streams"][0][1] += 2**30
        rec["streams"][0][3].append(2**30 + 1)
    g.add_invalid("chunk-length-over-limit", rewrite(base, record_edit(0, huge_chunk), fix_crcs=False), "LimitError",
                  "A stream declaring a chunk of 2^30 + 1 bytes.", ["limit:chunk"], tensor=first)
    long_header = rewrite(base, lambda i, t: None, header=lambda n: b"\xc5" + n.to_bytes(2, "big"))
    g.add_invalid("chunk-header-not-shortest", long_header, "FormatError",
                  "Chunk headers written as bin16 for short chunks.", ["chunk-header"], tensor=first)

    def with_index(data: bytes, edit) -> bytes:
        """Rebuild a file with its index map changed by `edit`, trailer and index CRC fixed up."""
        out = build(*parse(data))
        io, il, _ = struct.unpack("<QII", out[-24:-8])
        idx = msgpack.unpackb(out[io:io + il], raw=False)
        edit(idx)
        ib = pack(idx)
        return out[:io] + ib + struct.pack("<QII", io, len(ib), zlib.crc32(ib)) + END_MAGIC

    def total_length_off(idx: dict) -> None:
        # Claim one byte less for the first record's total and one more for the second: the tiling still holds.
        idx["tensors"][0][3] -= 1
        idx["tensors"][1][1] -= 1
        idx["tensors"][1][3] += 1
    g.add_invalid("total-length-mismatch", with_index(base, total_length_off), "FormatError",
                  "total_length one byte short of the record plus its chunks.", ["record"], tensor=first)

    def ext_in_index(idx: dict) -> None:
        idx["metadata"] = {"when": msgpack.ExtType(5, b"\x00\x01")}
    g.add_invalid("ext-type", with_index(base, ext_in_index), "FormatError", "An msgpack ext type in the index.",
                  ["msgpack"])

    # Stage-level damage (stream checksums consistent, so only the stage's own checks catch it).
    zl = g.sources["lossless-zlib"]
    zs = g.sources["lossless-zstd"]
    _, zlt = parse(zl)

    def meta_edit(i: int, step: int, key: str, value: Any) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            tensors[i][0]["steps"][step][0][2][key] = value
        return edit

    g.add_invalid("zlib-size-mismatch", rewrite(zl, meta_edit(0, 1, "size", 1)), "FormatError",
                  "zlib meta size smaller than the real output (decompression-bomb bound).", ["zlib"],
                  tensor=zlt[0][0]["name"])
    g.add_invalid("zstd-size-mismatch", rewrite(zs, meta_edit(0, 1, "size", 3)), "FormatError",
                  "zstd meta size smaller than the real output.", ["zstd"], tensor=zlt[0][0]["name"])

    def truncate_stream(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
        chunks[0][-1] = chunks[0][-1][:-4]
    g.add_invalid("zstd-truncated", rewrite(zs, record_edit(0, truncate_stream)), "FormatError",
                  "zstd frame missing its last 4 bytes.", ["zstd"], tensor=zlt[0][0]["name"])
    g.add_invalid("zlib-truncated", rewrite(zl, record_edit(0, truncate_stream)), "FormatError",
                  "zlib stream missing its Adler-32.", ["zlib"], tensor=zlt[0][0]["name"])

    def trailing_bytes(rec: dict[str, Any], chunks: list[list[bytes]]) -> None:
        chunks[0][-1] = chunks[0][-1] + b"\x00\x01"
    g.add_invalid("zlib-trailing-data", rewrite(zl, record_edit(0, trailing_bytes)), "FormatError",
                  "zlib stream followed by 2 stray bytes.", ["zlib"], tensor=zlt[0][0]["name"])
    g.add_invalid("zstd-trailing-data", rewrite(zs, record_edit(0, trailing_bytes)), "FormatError",
                  "zstd frame followed by 2 stray bytes.", ["zstd"], tensor=zlt[0][0]["name"])

    add_invalid_stage_vectors(g)


def stream_edit(tensor: int, stream: str, fn: Callable[[bytes], bytes]) -> Callable[..., None]:
    """An edit replacing one stream's bytes by fn(bytes), as one chunk (checksums are recomputed by build)."""
    def edit(index: dict[str, Any], tensors: list[Any]) -> None:
        rec, chunks = tensors[tensor]
        i = [s[0] for s in rec["streams"]].index(stream)
        chunks[i] = [fn(b"".join(chunks[i]))]
    return edit


def step_meta_edit(tensor: int, step: int, app: int, fn: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """An edit changing the meta map of one application of one step."""
    def edit(index: dict[str, Any], tensors: list[Any]) -> None:
        fn(tensors[tensor][0]["steps"][step][app][2])
    return edit


def add_invalid_stage_vectors(g: Generator) -> None:
    """Streams and metadata that each stage's own Validation section must reject (checksums consistent)."""
    hs, sh, sf, kr, pz = (g.sources[n] for n in ("huffman-segments", "sparse-huffman", "sparse-fillers", "kmeans-raw",
                                                  "prune-zstd"))

    def first_used_length(b: bytes, new: Callable[[int], int]) -> bytes:
        t = int.from_bytes(b[:4], "little")
        i = next(i for i in range(4, 4 + t) if b[i])
        return b[:i] + bytes([new(b[i])]) + b[i + 1:]

    g.add_invalid("huffman-kraft", rewrite(hs, stream_edit(0, "data", lambda b: first_used_length(b, lambda v: v + 1))),
                  "FormatError", "huffman: a code length increased, the Kraft sum is no longer 1.",
                  ["huffman", "huffman:code-lengths"], tensor="w")
    length_17 = stream_edit(0, "data", lambda b: first_used_length(b, lambda v: 17))
    g.add_invalid("huffman-length-17", rewrite(hs, length_17), "FormatError", "huffman: a code length of 17.",
                  ["huffman", "huffman:code-lengths"], tensor="w")

    def extra_payload_byte(b: bytes) -> bytes:
        t = int.from_bytes(b[:4], "little")
        k = -(-4096 // int.from_bytes(b[4 + t:8 + t], "little"))
        last = 8 + t + 4 * (k - 1)
        end = int.from_bytes(b[last:last + 4], "little") + 1
        return b[:last] + end.to_bytes(4, "little") + b[last + 4:] + b"\x00"
    g.add_invalid("huffman-extra-byte", rewrite(hs, stream_edit(0, "data", extra_payload_byte)), "FormatError",
                  "huffman: one zero byte appended to the last segment (its codes no longer end in its last byte).",
                  ["huffman", "huffman:exact-bits"], tensor="w")

    def set_count(count: int) -> Callable[[dict[str, Any]], None]:
        def fn(meta: dict[str, Any]) -> None:
            meta["count"] = count
        return fn
    g.add_invalid("huffman-count-over-payload", rewrite(sh, step_meta_edit(0, 1, 0, set_count(10**6))), "FormatError",
                  "huffman: meta count 10^6, within the decode bound but more symbols than the payload can hold.",
                  ["huffman", "allocation"], tensor="w")
    g.add_invalid("huffman-count-over-bound", rewrite(sh, step_meta_edit(0, 1, 0, set_count(2**40))), "LimitError",
                  "huffman: meta count 2^40, over the tensor's decode bound: the bound is checked first, where the "
                  "count is declared (FORMAT.md section 8), before the stream is read.",
                  ["huffman", "allocation", "limit:decode-bound"], tensor="w")

    def drop_last_entry(meta: dict[str, Any]) -> None:
        meta["codebook"] = meta["codebook"][:-4]
    g.add_invalid("kmeans-index-out-of-range", rewrite(kr, step_meta_edit(0, 0, 0, drop_last_entry)), "FormatError",
                  "kmeans: the last codebook entry removed, an index is now >= K.", ["kmeans"], tensor="w")

    def ragged_codebook(meta: dict[str, Any]) -> None:
        meta["codebook"] = meta["codebook"][:-1]
    g.add_invalid("kmeans-codebook-length", rewrite(kr, step_meta_edit(0, 0, 0, ragged_codebook)), "FormatError",
                  "kmeans: codebook length not a multiple of the itemsize.", ["kmeans"], tensor="w")

    def kmeans_int_dtype(meta: dict[str, Any]) -> None:
        meta["dtype"] = "I32"
    g.add_invalid("kmeans-integer-dtype", rewrite(kr, step_meta_edit(0, 0, 0, kmeans_int_dtype)), "FormatError",
                  "kmeans: meta dtype I32.", ["kmeans"], tensor="w")

    def shorter_shape(meta: dict[str, Any]) -> None:
        meta["shape"] = [1999]
    g.add_invalid("sparse-position-beyond-shape", rewrite(sf, step_meta_edit(0, 0, 0, shorter_shape)), "FormatError",
                  "sparse: meta shape [1999] while the last stored position is 1999.", ["sparse"], tensor="runs")
    g.add_invalid("sparse-trailing-filler", rewrite(sf, stream_edit(0, "positions", lambda b: b + b"\x00")),
                  "FormatError", "sparse: the positions stream ends with a filler (symbol 0).", ["sparse", "fillers"],
                  tensor="runs")

    def drop_value(index: dict[str, Any], tensors: list[Any]) -> None:
        stream_edit(0, "values", lambda b: b[:-4])(index, tensors)
        tensors[0][0]["steps"][1][1][2]["shape"] = [7]
    g.add_invalid("sparse-values-count", rewrite(sf, drop_value), "FormatError",
                  "sparse: 7 values for 8 non-zero position symbols.", ["sparse"], tensor="runs")
    g.add_invalid("raw-symbol-over-alphabet", rewrite(sf, stream_edit(0, "positions", lambda b: b"\x08" + b[1:])),
                  "FormatError", "raw: a position symbol 8 with alphabet 8.", ["raw", "symbols"], tensor="runs")

    add_invalid_stage_vectors_round2(g)
    add_invalid_uniform_vectors(g)
    add_invalid_rans_vectors(g)
    add_invalid_bytegroup_vectors(g)
    add_invalid_rowscale_vectors(g)
    add_invalid_tcq_vectors(g)

    def bad_prune_config(index: dict[str, Any], tensors: list[Any]) -> None:
        index["chains"][0][0]["config"]["sparsity"] = 1.5
    g.add_invalid("prune-bad-config", rewrite(pz, bad_prune_config), "FormatError",
                  "prune: sparsity 1.5 in the stored config.", ["prune", "config"], tensor="w")

    def prune_config(**changes: Any) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            index["chains"][0][0]["config"].update(changes)
        return edit
    g.add_invalid("prune-bad-criterion", rewrite(pz, prune_config(criterion="obs")), "FormatError",
                  "prune: criterion 'obs' in the stored config.", ["prune", "prune:criterion", "config"], tensor="w")
    g.add_invalid("prune-wanda-global", rewrite(pz, prune_config(criterion="wanda", scope="global")), "FormatError",
                  "prune: criterion 'wanda' with scope 'global' (it takes a sparsity per tensor only).",
                  ["prune", "prune:criterion", "config"], tensor="w")


def add_invalid_stage_vectors_round2(g: Generator) -> None:
    """Issue 15: one stream per codec and nothing after it, integers that are not booleans, BOOL bytes, stored
    configs, segment sizes."""
    zs, lz, bz, hs, base = (g.sources[n] for n in ("lossless-zstd", "lossless-lzma", "lossless-bz2",
                                                   "huffman-segments", "dtypes-raw"))
    _, zt = parse(zs)
    first = zt[0][0]["name"]
    names = [rec["name"] for rec, _ in zt]
    empty = names.index("empty_f32")
    zstd = zstandard.ZstdCompressor(level=3)
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"skip"
    for name, tail, what in (("two-frames", zstd.compress(b"\x00" * 8), "a second frame"),
                             ("trailing-empty-frame", zstd.compress(b""), "an empty frame"),
                             ("trailing-skippable-frame", skippable, "a skippable frame")):
        g.add_invalid(f"zstd-{name}", rewrite(zs, stream_edit(0, "data", lambda b, t=tail: b + t)), "FormatError",
                      f"zstd: the tensor's frame followed by {what} (one frame, nothing after it).", ["zstd"],
                      tensor=first)

    def wide_window(b: bytes) -> bytes:
        frame = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(
            zstandard.ZstdDecompressor().decompress(b))
        return frame[:5] + bytes([14 << 3]) + frame[6:]  # window descriptor: 16 MiB for 96 bytes of output
    g.add_invalid("zstd-window-too-large", rewrite(zs, stream_edit(0, "data", wide_window)), "FormatError",
                  "zstd: a frame asking for a 16 MiB window to produce 96 bytes (over max(size, 1 MiB)).", ["zstd"],
                  tensor=first)
    g.add_invalid("zstd-empty-truncated", rewrite(zs, stream_edit(empty, "data", lambda b: b[:6])), "FormatError",
                  "zstd: meta size 0 and the empty frame cut to its 6-byte header (no last block).", ["zstd"],
                  tensor="empty_f32")

    def size_true(meta: dict[str, Any]) -> None:
        meta["size"] = True
    ones = [i for i, n in enumerate(names) if n == "scalar_bool"][0]
    g.add_invalid("zstd-size-true", rewrite(zs, step_meta_edit(ones, 1, 0, size_true)), "FormatError",
                  "zstd: meta size true for a 1-byte stream (a msgpack bool is not an int).", ["zstd", "msgpack"],
                  tensor="scalar_bool")

    def level_99(index: dict[str, Any], tensors: list[Any]) -> None:
        index["chains"][0][1]["config"]["level"] = 99
    g.add_invalid("zstd-level-99", rewrite(zs, level_99), "FormatError",
                  "zstd: stored config level 99 (outside -7..22): a reader validates every stored config, even keys "
                  "its decoder does not use.", ["zstd", "config"], tensor=first)
    for comp, src in (("lzma", lz), ("bz2", bz)):
        g.add_invalid(f"{comp}-trailing-data", rewrite(src, stream_edit(0, "data", lambda b: b + b"\x00\x01")),
                      "FormatError", f"{comp} stream followed by 2 stray bytes (readers that declare {comp} "
                      "unsupported raise MissingStageError instead).", [comp], tensor=first)

    _, bt = parse(base)
    b_i = [rec["name"] for rec, _ in bt].index("bool")
    g.add_invalid("raw-bool-byte-2", rewrite(base, stream_edit(b_i, "data", lambda b: b[:1] + b"\x02" + b[2:])),
                  "FormatError", "raw: a BOOL tensor holding the byte 2 (a BOOL byte is 0 or 1).",
                  ["raw", "dtype:BOOL"], tensor="bool")

    def segment_65537(b: bytes) -> bytes:
        t = int.from_bytes(b[:4], "little")
        return b[:4 + t] + (2**16 + 1).to_bytes(4, "little") + b[8 + t:]
    g.add_invalid("huffman-segment-over-limit", rewrite(hs, stream_edit(0, "data", segment_65537)), "FormatError",
                  "huffman: a stored segment size of 2^16 + 1 symbols (the limit is 2^16).",
                  ["huffman", "huffman:segments"], tensor="w")


def add_invalid_uniform_vectors(g: Generator) -> None:
    """Issue 13: the uniform stage decodes as kmeans does and validates its stored config."""
    ug = g.sources["uniform-gptq-raw"]

    def drop_last_entry(meta: dict[str, Any]) -> None:
        meta["codebook"] = meta["codebook"][:-4]
    g.add_invalid("uniform-index-out-of-range", rewrite(ug, step_meta_edit(0, 0, 0, drop_last_entry)), "FormatError",
                  "uniform: the last codebook entry removed, an index is now >= U.", ["uniform"], tensor="w")

    def uniform_config(**changes: Any) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            index["chains"][0][0]["config"].update(changes)
        return edit
    for name, changes, what in (("both-steps", {"rel_step": 0.5}, "both step and rel_step"),
                                ("no-step", {"step": None}, "neither step nor rel_step"),
                                ("negative-dead-zone", {"dead_zone": -0.5}, "dead_zone -0.5"),
                                ("gptq-weighted", {"weighting": "fisher"}, "method 'gptq' with weighting 'fisher'")):
        g.add_invalid(f"uniform-{name}", rewrite(ug, uniform_config(**changes)), "FormatError",
                      f"uniform: {what} in the stored config.", ["uniform", "config"], tensor="w")


def add_valid_rans_vectors(g: Generator) -> None:
    """Issue 13: the rans stage on 1- and 2-byte symbols, several lanes, positions, and a single symbol."""
    g.add_valid("kmeans-rans", {"w": laplace(70, (64, 64))}, "kmeans(bits=6) | rans(lanes=8): 8 interleaved lanes, "
                "words and a partial last step.", ["kmeans", "rans", "rans:lanes"],
                pipeline="kmeans(bits=6, init=linear, method=lloyd) | rans(lanes=8)", lossless=False)
    g.add_valid("rans-wide", {"w": laplace(71, (11, 91))}, "kmeans(clusters=300) | rans(scale_bits=12): 2-byte "
                "symbols.", ["kmeans", "rans", "symbols:2-byte"],
                pipeline="kmeans(clusters=300, init=linear, method=lloyd) | rans(scale_bits=12)", lossless=False)
    g.add_valid("sparse-rans", {"w": np.where(rng(72).random((90, 70)) < 0.1, rng(73).normal(size=(90, 70)), 0.0)},
                "sparse(index_bits=4) | rans: positions rANS-coded, F64 values serialized raw.",
                ["sparse", "rans", "raw", "dtype:F64"], pipeline="sparse(index_bits=4) | rans", lossless=True)
    g.add_valid("rans-one-symbol", {"c": np.full((10, 10), 0.5, np.float32), "s": np.array(0.5, np.float32)},
                "kmeans | rans on constant tensors: one distinct symbol, no words.", ["kmeans", "rans",
                "rans:one-symbol"], pipeline="kmeans(bits=2, init=linear, method=lloyd) | rans", lossless=False)


def rowscale_model() -> dict[str, Dense]:
    """Tensors whose activation side input is zero on some rows, in every float dtype, with rows rowscale must keep
    as they are (a subnormal) and rows it scales exactly (NaN, infinity, zeros of both signs)."""
    f32 = laplace(80, (8, 5))
    f32[2, 0] = np.float32(1e-45)  # a subnormal: its row cannot be halved exactly and keeps exponent 0
    f32[3, :3] = [np.nan, np.inf, -0.0]
    act = np.ones((8, 1))
    act[[1, 2, 3, 6]] = 0.0
    half = laplace(81, (6, 3), dtype="float16")
    half_act = np.ones((6, 3))
    half_act[[0, 5]] = 0.0
    b = bf16(laplace(82, (4, 4)))
    b_act = np.zeros((4, 4))
    b_act[1] = 2.0
    f64 = laplace(83, (3, 2), dtype="float64")
    return {"f32": Dense(f32, "F32", {"activation": act.repeat(5, axis=1)}),
            "f16": Dense(half, "F16", {"activation": half_act}),
            "bf16": Dense(b.array, "BF16", {"activation": b_act}),
            "f64": Dense(f64, "F64", {"activation": np.zeros((3, 2))}),
            "plain": Dense(laplace(84, (3, 3)), "F32")}


def add_valid_rowscale_vectors(g: Generator) -> None:
    """Power-of-two row scales (spec/stages/rowscale.md) in every float dtype, alone and before a quantizer."""
    g.add_valid("rowscale-raw", rowscale_model(), "rowscale(shift=2) alone: rows of zero activation stored 4 times "
                "smaller (NaN, infinity and -0 included), a row with a subnormal kept at exponent 0, a tensor without "
                "side input all 0; the exponents serialized raw.", ["rowscale", "raw", "dtype:F64", "dtype:F16",
                "bf16", "nan-payload"], pipeline="rowscale(shift=2)", lossless=True)
    finite = {k: v for k, v in rowscale_model().items() if k != "f32"}
    g.add_valid("rowscale-uniform-rans", finite, "rowscale | uniform(rel_step=0.3) | rans: the quantizer's step "
                "doubled on rows of zero activation; both the levels and the exponents rANS-coded.",
                ["rowscale", "uniform", "rans"], pipeline="rowscale | uniform(rel_step=0.3) | rans", lossless=False)
    out = laplace(85, (6, 4))
    sensitivity = np.array([[1.0], [0.3], [0.06], [0.01], [0.0], [0.7]])
    g.add_valid("rowscale-by-output", {"w": Dense(out, "F32", {"output": np.broadcast_to(sensitivity, (6, 4))})},
                "rowscale(by=output, shift=3) alone: exponents up to 3 from the output side input (the stored config "
                "gives by), serialized raw.", ["rowscale", "raw", "rowscale:by"], pipeline="rowscale(by=output, shift=3)",
                lossless=True)


def tcq_model() -> dict[str, np.ndarray | Dense]:
    """Float tensors of every dtype for tcq: matrices (a run per row), a matrix whose rows are longer than a run
    (2 x 4099 = 8198 values: runs of 4096 across the rows, the last of 6), a vector and a scalar (given tcq by a
    rule: a pipeline leaves rank 0-1 lossless), and an empty tensor."""
    return {"f32": laplace(90, (12, 16)), "f64": laplace(91, (4, 10), dtype="float64"),
            "f16": laplace(92, (5, 7), dtype="float16"), "bf16": bf16(laplace(93, (3, 11))),
            "long": laplace(94, (2, 4099), dtype="float16"), "vec": laplace(95, (40,), dtype="float64"),
            "scalar": np.array(0.7, np.float32), "empty": np.zeros((0, 3), np.float32)}


def add_valid_tcq_vectors(g: Generator) -> None:
    """Trellis-coded quantization (spec/stages/tcq.md): both streams raw, and both rANS-coded."""
    g.add_valid("tcq-raw", {k: v for k, v in tcq_model().items() if k != "long"}, "tcq(rel_step=0.4) alone: the "
                "trellis over runs of each matrix's rows, a vector (one run) and a scalar by rules, codebooks in every "
                "float dtype; q0 and q1 serialized raw.",
                ["tcq", "raw", "dtype:F64", "dtype:F16", "bf16", "shape:scalar", "shape:empty"],
                pipeline="tcq(rel_step=0.4)", rules=("vec=tcq(step=0.02)", "scalar=tcq(step=0.3)"), lossless=False)
    g.add_valid("tcq-rans", {k: v for k, v in tcq_model().items() if k in ("f32", "long", "empty")},
                "tcq(rel_step=0.3, rate_weight=0.2) | rans: each quantizer's symbols rANS-coded with a table of "
                "their own; runs of 4096 across the rows of the long matrix (its last run holds 6 values).",
                ["tcq", "rans"], pipeline="tcq(rel_step=0.3, rate_weight=0.2) | rans", lossless=False)

def add_valid_bytegroup_vectors(g: Generator, lossless_mix: dict[str, np.ndarray | Dense]) -> None:
    """Issue 13: byte planes of every dtype (float specials, NaN payloads, integer extremes), scalars and empty
    tensors; the exponent plane through rans or raw, the mantissa planes through zstd or stored."""
    g.add_valid("bytegroup-zstd-rans", lossless_mix, "bytegroup | zstd(level=1) | rans on every dtype, scalars and "
                "empty tensors: the exponent plane rANS-coded, the mantissa planes through zstd (1-byte dtypes: an "
                "empty mantissa stream).", ["bytegroup", "zstd", "rans", "dtype:all", "nan-payload", "shape:scalar",
                "shape:empty"], pipeline="bytegroup | zstd(level=1) | rans", lossless=True)
    g.add_valid("bytegroup-raw", lossless_mix, "bytegroup alone: the exponent plane serialized raw, the mantissa "
                "planes stored as they are.", ["bytegroup", "raw", "dtype:all", "nan-payload"], pipeline="bytegroup",
                lossless=True)


def rans_layout(b: bytes) -> tuple[int, int]:
    """(offset of the lane-count varint, offset of the first state) of a rans stream (spec/stages/rans.md): n, the
    one-byte varint D, k, then 2D Exp-Golomb codes, LSB-first, zero-padded to a byte."""
    d, k, p = b[1], b[2], 8 * 3
    assert d < 128

    def golomb(order: int) -> None:
        nonlocal p
        z = 0
        while not b[p >> 3] >> (p & 7) & 1:
            z, p = z + 1, p + 1
        p += 1 + z + order
    for _ in range(d):
        golomb(0)
        golomb(k)
    at = -(-p // 8)
    return at, at + 1


def add_invalid_rans_vectors(g: Generator) -> None:
    """Issue 13: rans streams whose table, states or words a decoder must reject."""
    kr = g.sources["kmeans-rans"]

    def state_low(b: bytes) -> bytes:
        _, sp = rans_layout(b)
        return b[:sp] + (0xFFFF).to_bytes(4, "little") + b[sp + 4:]

    def flip_word(b: bytes) -> bytes:
        _, sp = rans_layout(b)
        i = sp + 8 * 4 + 2 * ((len(b) - sp - 32) // 4)  # a word halfway through
        return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]
    for name, fn, what, tag in (
            ("rans-freq-sum", lambda b: bytes([b[0] + 1]) + b[1:], "scale bits raised by one: the frequencies no "
             "longer sum to 2^n", "rans:table"),
            ("rans-state-low", state_low, "lane 0's stored state set to 2^16 - 1 (below the state range)",
             "rans:states"),
            ("rans-truncated-lane", lambda b: b[:-2], "the last 16-bit word removed: a lane runs out of words",
             "rans:exact-words"),
            ("rans-damaged-word", flip_word, "one bit of a word flipped: the lanes' reads no longer match the "
             "words (a lane runs out of words, or ends in a state other than 2^16)", "rans:exact-words")):
        g.add_invalid(name, rewrite(kr, stream_edit(0, "data", fn)), "FormatError", f"rans: {what}.", ["rans", tag],
                      tensor="w")

    def set_count(meta: dict[str, Any]) -> None:
        meta["count"] = 2**40
    g.add_invalid("rans-count-over-bound", rewrite(kr, step_meta_edit(0, 1, 0, set_count)), "LimitError",
                  "rans: meta count 2^40, over the tensor's decode bound (checked before the stream is read).",
                  ["rans", "allocation", "limit:decode-bound"], tensor="w")


def add_invalid_bytegroup_vectors(g: Generator) -> None:
    """Issue 13: bytegroup planes whose sizes or bytes do not fit the tensor."""
    br = g.sources["bytegroup-raw"]
    names = list(index_tensor_names(br))
    f32, boolean = names.index("f32"), names.index("bool")
    g.add_invalid("bytegroup-mantissa-short", rewrite(br, stream_edit(f32, "mantissa", lambda b: b[:-1])),
                  "FormatError", "bytegroup: the F32 tensor's mantissa planes one byte short of 3 x 12.",
                  ["bytegroup"], tensor="f32")
    g.add_invalid("bytegroup-exponent-long", rewrite(br, stream_edit(f32, "exponent", lambda b: b + b"\x00")),
                  "FormatError", "bytegroup: the F32 tensor's exponent plane holds 13 bytes for 12 elements.",
                  ["bytegroup"], tensor="f32")
    g.add_invalid("bytegroup-bool-byte", rewrite(br, stream_edit(boolean, "exponent", lambda b: b"\x02" + b[1:])),
                  "FormatError", "bytegroup: a BOOL tensor's plane holds the byte 2 (only 0 and 1 are booleans).",
                  ["bytegroup", "bool"], tensor="bool")



def add_invalid_rowscale_vectors(g: Generator) -> None:
    """rowscale (spec/stages/rowscale.md, Validation): a meta that is not empty, and exponents the raw stage accepts
    but rowscale must not (an alphabet over 16, one exponent fewer than the rows)."""
    rr = g.sources["rowscale-raw"]
    f32 = list(index_tensor_names(rr)).index("f32")

    def exponents_alphabet(alphabet: int) -> Callable[..., None]:
        def edit(index: dict[str, Any], tensors: list[Any]) -> None:
            raw = tensors[f32][0]["steps"][1]  # the chain rowscale | raw: raw's applications
            next(app for app in raw if app[0] == "exponents")[2]["alphabet"] = alphabet
        return edit

    g.add_invalid("rowscale-meta-not-empty", rewrite(rr, step_meta_edit(f32, 0, 0, lambda m: m.update(dtype="F32"))),
                  "FormatError", "rowscale: the F32 tensor's meta holds a key (it MUST be an empty map).",
                  ["rowscale"], tensor="f32")
    g.add_invalid("rowscale-alphabet-17", rewrite(rr, exponents_alphabet(17)), "FormatError",
                  "rowscale: the F32 tensor's exponents are raw symbols of alphabet 17 (at most 16).", ["rowscale"],
                  tensor="f32")
    g.add_invalid("rowscale-bad-by", rewrite(rr, lambda index, tensors: index["chains"][0][0]["config"].update(
        by="rows")), "FormatError", "rowscale: by 'rows' in the stored config (unseen or output).",
        ["rowscale", "config"], tensor="f32")
    g.add_invalid("rowscale-exponent-missing", rewrite(rr, stream_edit(f32, "exponents", lambda b: b[:-1])),
                  "FormatError", "rowscale: 7 exponents for the F32 tensor's 8 rows.", ["rowscale"], tensor="f32")
def add_invalid_tcq_vectors(g: Generator) -> None:
    """tcq (spec/stages/tcq.md, Validation): metadata and streams that do not fit each other."""
    src = g.sources["tcq-raw"]
    f32 = list(index_tensor_names(src)).index("f32")

    def meta(fn: Callable[[dict[str, Any]], None]) -> bytes:
        return rewrite(src, step_meta_edit(f32, 0, 0, fn))

    def without_last(key: str, size: int) -> Callable[[dict[str, Any]], None]:
        return lambda m: m.update({key: m[key][:-size]})

    def reversed_levels(m: dict[str, Any]) -> None:
        m["levels1"] = np.frombuffer(m["levels1"], "<i4")[::-1].tobytes()

    def flipped_parity(m: dict[str, Any]) -> None:
        m["levels0"] = (np.frombuffer(m["levels0"], "<i4") + 1).astype("<i4").tobytes()

    cases = [
        ("tcq-run-0", lambda m: m.update(run=0), "a run of 0 elements (1..4096)."),
        ("tcq-run-4097", lambda m: m.update(run=4097), "a run of 4097 elements (1..4096)."),
        ("tcq-levels-descending", reversed_levels, "levels1 in decreasing order (they MUST increase strictly)."),
        ("tcq-codebook-short", without_last("codebook0", 4), "codebook0 one value shorter than levels0."),
        ("tcq-symbol-over-levels", lambda m: (without_last("levels1", 4)(m), without_last("codebook1", 4)(m)),
         "the last level of Q1 removed with its codebook entry: a q1 symbol now names no level."),
        ("tcq-shape-count", lambda m: m.update(shape=[12, 15]), "shape [12, 15] (180 values) for 192 symbols."),
        ("tcq-parity-path", flipped_parity, "every Q0 level one higher: the parities, so the trellis path, change "
         "and it runs out of one stream's symbols."),
    ]
    for name, fn, what in cases:
        g.add_invalid(name, meta(fn), "FormatError", f"tcq: the F32 tensor's meta: {what}", ["tcq"], tensor="f32")

    def config(**changes: Any) -> bytes:
        return rewrite(src, lambda index, tensors: index["chains"][0][0]["config"].update(changes))

    for name, changes, what in [("negative-rate", {"rate_weight": -0.5}, "rate_weight -0.5 (>= 0)"),
                                ("bad-weighting", {"weighting": "rows"}, "weighting 'rows'"),
                                ("both-steps", {"rel_step": 0.4}, "both step and rel_step")]:
        g.add_invalid(f"tcq-{name}", config(**changes), "FormatError", f"tcq: {what} in the stored config.",
                      ["tcq", "config"], tensor="f32")



def index_tensor_names(data: bytes) -> list[str]:
    """The tensor names of a container, in index order (the order stream_edit counts in)."""
    io, il, _ = struct.unpack("<QII", data[-24:-8])
    return [t[0] for t in msgpack.unpackb(data[io:io + il], raw=False)["tensors"]]


def _first_chunk_pos(data: bytes) -> int:
    """Byte offset of the first data byte of the first chunk of the first tensor."""
    io, il, _ = struct.unpack("<QII", data[-24:-8])
    index = msgpack.unpackb(data[io:io + il], raw=False)
    _name, off, rl, _tl, _crc = index["tensors"][0]
    return off + rl + 2


def main() -> int:
    """Regenerate the vectors, or with --check compare a fresh generation with the committed files."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and diff against spec/vectors")
    ap.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: spec/vectors)")
    args = ap.parse_args()
    if not args.check:
        for sub in ("valid", "invalid"):
            shutil.rmtree(args.out / sub, ignore_errors=True)
        generate(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        bad = [p.relative_to(tmp) for p in sorted(Path(tmp).rglob("*")) if p.is_file()
               and (HERE / p.relative_to(tmp)).read_bytes() != p.read_bytes()]
    for p in bad:
        print(f"differs: {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
