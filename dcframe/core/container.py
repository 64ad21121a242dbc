"""Reading and writing the .dcf container (spec/FORMAT.md): records with chunked streams, an index, a trailer.

Layout: MAGIC | record, chunk bins... (per tensor) | index map | trailer (index offset, length, CRC32, END_MAGIC).
Every number read from a file is checked against the file's size and the Limits before anything is allocated.
"""

from __future__ import annotations

import errno
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import zstandard

from dcframe import __version__
from dcframe.core.dtypes import numpy_dtype
from dcframe.core.errors import (
    ConfigError,
    DcfError,
    FormatError,
    IntegrityError,
    LimitError,
    MissingStageError,
    ModelIOError,
)
from dcframe.core.files import _short, _sync_dir, make_temporary
from dcframe.core.orchestrator import EncodedTensor, Spilled, decode_tensor, ordered_map, threadable
from dcframe.core.pipeline import Chain
from dcframe.core.registry import Registry, get_registry
from dcframe.core.stage import Stage, format_stage
from dcframe.core.streams import Dense
from dcframe.core.zstdframe import zstd_frame

MAGIC = b"\x89DCF\r\n\x1a\n"
END_MAGIC = b"DCFINDEX"
TRAILER = struct.Struct("<QII8s")  # index offset, index length, index CRC32, END_MAGIC
FORMAT = "dcf"
VERSION = (1, 0)
LAYOUT_VERSION = (1, 1)  # a file with a `layout` key (FORMAT.md 3.3) says so; older 1.x readers ignore the key
PACKED_LAYOUT_VERSION = (1, 2)  # ... and with a file of its layout zstd-packed
PACK_LEVEL = 19  # zstd level of a layout's packed files: a tokenizer.json of 466 KB packs to 35% in 0.2 s
PACK_ENTRY_BYTES = 16  # what a packed entry's map {"zstd", "size"} costs beyond its frame
DEFAULT_CHUNK = 1 << 24
COPY_BLOCK = 1 << 22  # bytes per read when a spilled stream is copied through user space


@dataclass(frozen=True)
class Limits:
    """Bounds a reader enforces on untrusted files before allocating (see spec/FORMAT.md, "Limits")."""

    max_index_bytes: int = 1 << 26
    max_record_bytes: int = 1 << 26
    max_tensors: int = 1 << 20
    max_ndim: int = 32
    max_chunk_bytes: int = 1 << 30
    max_tensor_bytes: int = 1 << 40
    max_expansion: int = 1 << 20  # a tensor may declare at most this many times the file's size (or 1 GiB)


def _is_int(value: Any) -> bool:
    """An integer from msgpack (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack("<B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


MAX_DEPTH = 32  # arrays and maps nested in one msgpack object, the outermost counting as 1 (FORMAT.md section 2)
MAX_INT = (1 << 53) - 1  # integers a reader accepts: what JavaScript reads exactly (FORMAT.md section 2)


def _check_writable(obj: Any, where: str, depth: int = 1) -> None:
    """Refuse (FormatError) what FORMAT.md section 2 forbids a writer: integers beyond 2^53 - 1, keys that are not
    strings, other types than nil, bool, int, float, str, bin, array and map, nesting deeper than readers go (`depth`:
    the level `obj` sits at inside its msgpack object)."""
    stack = [(obj, depth)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{where}: metadata nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, bool) or value is None or isinstance(value, (float, str, bytes, bytearray)):
            continue
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise LimitError(f"{where}: the integer {value} is beyond 2^53 - 1, which readers cannot read exactly")
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise FormatError(f"{where}: a map key is not a string")
            stack.extend((v, depth + 1) for v in value.values())
        else:
            raise FormatError(f"{where}: {type(value).__name__} is not a plain msgpack value")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} is not allowed in a .dcf file")


BYTES_PER_CONTAINER = 8  # an object of n bytes may hold at most 64 + n / 8 arrays and maps (FORMAT.md section 8.1)
OBJECT_FACTOR = 32  # Python objects built from n bytes of msgpack stay under 32 n bytes (tests/bench: worst 29)


class _Rejected(ValueError):
    """A msgpack object breaks a rule of FORMAT.md section 2 (raised inside msgpack's hooks)."""


def _hooks(n: int, left: list[int]) -> dict[str, Any]:
    """msgpack hooks that count arrays and maps against the budget of an n-byte object (`left[0]`, spent as they
    are built) and check map keys."""

    def spend() -> None:
        left[0] -= 1
        if left[0] < 0:
            raise _Rejected(f"more than {64 + n // BYTES_PER_CONTAINER} arrays and maps in {n} bytes")

    def pairs(items: list[tuple[Any, Any]]) -> dict[str, Any]:
        spend()
        out = dict(items)
        if len(out) != len(items):
            raise _Rejected("a map repeats a key")
        if not all(type(k) is str for k in out):
            raise _Rejected("a map key is not a string")
        return out

    def array(items: list[Any]) -> list[Any]:
        spend()
        return items

    return {"object_pairs_hook": pairs, "list_hook": array}


def _unpack(data: bytes, what: str, offset: int) -> tuple[Any, bool]:
    """msgpack-decode untrusted bytes: every length bounded by the input, at most 64 + n/8 arrays and maps, string
    keys only and no key twice, no ext types or timestamps, nothing left over. Any failure is one FormatError
    naming what and where (the budget bounds the Python objects built from n bytes, FORMAT.md 8.1).

    Also returns whether depth and integer range need _check_plain: not when the object has at most MAX_DEPTH
    arrays and maps (so it cannot nest deeper) and no int64/uint64 type byte anywhere in it (integers beyond
    +-2^53 need one), which spares valid records a walk."""
    n = len(data)
    budget = 64 + n // BYTES_PER_CONTAINER
    left = [budget]
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=n, max_str_len=n,
                              max_array_len=n, max_map_len=n // 2, max_ext_len=0, ext_hook=_no_ext,
                              use_list=True, **_hooks(n, left))
        return obj, budget - left[0] > MAX_DEPTH or b"\xcf" in data or b"\xd3" in data
    except _Rejected as exc:
        raise FormatError(f"{what} at byte {offset}: {exc}") from None
    except msgpack.StackError:
        raise FormatError(f"{what} at byte {offset} nests deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FormatError(f"{what} at byte {offset} is not valid msgpack ({type(exc).__name__}: {exc})") from None


def _check_plain(value: Any, what: str) -> None:
    """Free-form msgpack data (configs, metas, stats, unknown keys): at most MAX_DEPTH levels of arrays and maps,
    integers within +-(2^53 - 1). Walks with an explicit stack, so a deep value cannot overflow Python's."""
    stack = [([value], 0)]
    while stack:
        items, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{what}: arrays and maps nest deeper than {MAX_DEPTH} levels")
        ints = [x for x in items if type(x) is int]  # min and max in C; no per-item objects are kept
        if ints and not -MAX_INT <= min(ints) <= max(ints) <= MAX_INT:
            bad = next(x for x in ints if not -MAX_INT <= x <= MAX_INT)
            raise FormatError(f"{what}: integer {bad} is outside +-(2^53 - 1)")
        del ints
        stack.extend((x.values() if type(x) is dict else x, depth + 1) for x in items if type(x) in _NESTED)


_NESTED = (list, dict)


def _plain_fields(obj: dict[str, Any], skip: tuple[str, ...], what: str, walk: bool) -> None:
    """_check_plain over every field of a map except those `skip` names (checked field by field elsewhere), if
    `walk` (from _unpack) says it is needed."""
    if walk:
        _check_plain({k: v for k, v in obj.items() if k not in skip}, what)


THREADS_FROM = 8 << 20  # stored bytes of tensors below which read_many decodes in this thread (threads cost more)
THREADS_BUDGET = 256 << 20  # declared bytes read_many decodes in threads beyond the oldest tensor in flight


def chain_descriptor(chain: Chain, registry: Registry) -> list[dict[str, Any]]:
    """How a chain is stored: per stage its id, version, config and the package that provides it."""
    out = []
    for stage in chain.stages:
        info = registry.stages.get(stage.id)
        out.append({"id": stage.id, "version": stage.version, "config": stage.get_config(),
                    "package": info.package if info else "?"})
    return out


def pipeline_text(descriptor: list[dict[str, Any]]) -> str:
    """The pipeline string of a stored chain, e.g. "sparse(index_bits=5) | huffman"."""
    return " | ".join(format_stage(str(s.get("id")), s.get("config", {})) for s in descriptor)


# --- where the tensors came from: a model file or a Hugging Face folder (FORMAT.md 3.3) ------------------------------
MAX_SHARDS = 1 << 16
MAX_FILES = 256  # non-weight files of a folder (config, tokenizer...)
MAX_FILES_BYTES = 32 << 20  # their total size
MAX_FILE_NAME = 255  # bytes of UTF-8, as most file systems allow
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"


def file_name_problem(name: object) -> str | None:
    """Why `name` cannot be a file name inside a model folder (None if it can): one plain name, never a path."""
    if not isinstance(name, str) or not name:
        return "a file name is a non-empty string"
    if "/" in name or "\\" in name or ":" in name:
        return "a file name holds no path separator ('/', '\\' or ':')"
    if ".." in name or name == ".":
        return "a file name holds no '..' (and is not '.')"
    if any(ord(c) < 32 for c in name):
        return "a file name holds no control character"
    try:
        if len(name.encode("utf-8")) > MAX_FILE_NAME:
            return f"a file name takes at most {MAX_FILE_NAME} bytes"
    except UnicodeEncodeError:
        return "a file name is valid Unicode text"
    return None


@dataclass
class Layout:
    """The files a model came in: its safetensors shards (each with its `__metadata__`), which shard holds each
    tensor, the index file of a sharded folder and its metadata, and the folder's small non-weight files."""

    shards: list[tuple[str, dict[str, str]]]  # file name, __metadata__
    shard_of: dict[str, int]  # tensor name -> index into shards
    index_file: str | None = None  # e.g. model.safetensors.index.json; None for a single file
    index_metadata: dict[str, Any] | None = None  # that file's "metadata" map, without total_size
    files: dict[str, bytes] | None = None  # non-weight file name -> its bytes

    def to_index(self, names: list[str], where: str) -> dict[str, Any]:
        """The `layout` map of the index, for tensors `names` in file order (FORMAT.md 3.3)."""
        missing = next((n for n in names if n not in self.shard_of), None)
        if missing is not None:
            raise FormatError(f"{where}: tensor '{_short(missing)}' belongs to no shard of the layout")
        out: dict[str, Any] = {"shards": [{"file": f, "metadata": dict(m)} for f, m in self.shards],
                               "tensor_shards": [self.shard_of[n] for n in names]}
        if self.index_file is not None:
            out["index"] = self.index_file
        if self.index_metadata:
            out["index_metadata"] = dict(self.index_metadata)
        if self.files:
            out["files"] = {name: _packed(data) for name, data in self.files.items()}
        check_layout(out, len(names), where)
        return out

    @classmethod
    def from_index(cls, raw: Any, names: list[str], where: str) -> Layout:
        """A checked `layout` map of a file's index (FormatError, LimitError: one line naming what is wrong)."""
        check_layout(raw, len(names), where)
        shards = [(s["file"], dict(s.get("metadata", {}))) for s in raw["shards"]]
        files = {name: _unpacked(value, f"{where}: layout: file {_short(repr(name))}")
                 for name, value in raw.get("files", {}).items()}
        return cls(shards, dict(zip(names, raw["tensor_shards"], strict=True)), raw.get("index"),
                   raw.get("index_metadata"), files)

    def common_metadata(self) -> dict[str, str]:
        """The `__metadata__` entries every shard shares (a merged single file gets these)."""
        if not self.shards:
            return {}
        first, rest = self.shards[0][1], [m for _, m in self.shards[1:]]
        return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def check_layout(raw: Any, count: int, where: str) -> None:
    """Everything FORMAT.md 3.3 requires of a `layout` map, for a file of `count` tensors."""
    where = f"{where}: layout"
    if not isinstance(raw, dict):
        raise FormatError(f"{where} is not a map")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not shards:
        raise FormatError(f"{where}: shards is not a non-empty list")
    if len(shards) > MAX_SHARDS:
        raise LimitError(f"{where}: {len(shards)} shards, over the limit of {MAX_SHARDS}")
    taken: set[str] = set()

    def claim(name: Any, what: str, suffix: str | None) -> None:
        why = file_name_problem(name)
        if why is None and suffix and not name.endswith(suffix):
            why = f"it must end with {suffix}"
        if why is None and name.casefold() in taken:
            why = "another file of the layout has this name"
        if why:
            raise FormatError(f"{where}: {what} {_short(repr(name))}: {why}")
        taken.add(name.casefold())

    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise FormatError(f"{where}: shard {i} is not a map")
        claim(s.get("file"), f"shard {i}", SHARD_SUFFIX)
        metadata = s.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise FormatError(f"{where}: shard {i} metadata is not a map of strings to strings")
    of = raw.get("tensor_shards")
    if not (isinstance(of, list) and len(of) == count and all(_is_int(i) and 0 <= i < len(shards) for i in of)):
        raise FormatError(f"{where}: tensor_shards must give one shard number (0 to {len(shards) - 1}) per tensor, "
                          f"{count} in all")
    index = raw.get("index")
    if index is None and len(shards) != 1:
        raise FormatError(f"{where}: {len(shards)} shards and no index file")
    if index is not None:
        claim(index, "index file", INDEX_SUFFIX)
    if not isinstance(raw.get("index_metadata", {}), dict):
        raise FormatError(f"{where}: index_metadata is not a map")
    files = raw.get("files", {})
    if not isinstance(files, dict) or not all(map(_is_file_entry, files.values())):
        raise FormatError(f"{where}: files is not a map of file names to bin or to {{\"zstd\": bin, \"size\": int}}")
    total = sum(v["size"] if isinstance(v, dict) else len(v) for v in files.values())
    if len(files) > MAX_FILES or total > MAX_FILES_BYTES:
        raise LimitError(f"{where}: {len(files)} files of {total} bytes, over the limit of {MAX_FILES} files and "
                         f"{MAX_FILES_BYTES} bytes")
    for name in files:
        claim(name, "file", None)


def packs_files(layout: dict[str, Any]) -> bool:
    """Whether a `layout` map holds a zstd-packed file (a version 1.2 file)."""
    return any(isinstance(v, dict) for v in layout.get("files", {}).values())


def _is_file_entry(value: Any) -> bool:
    """bin, or (1.2) a packed file: exactly {"zstd": bin, "size": int in 0..MAX_FILES_BYTES}."""
    if isinstance(value, (bytes, bytearray)):
        return True
    return (isinstance(value, dict) and set(value) == {"zstd", "size"} and isinstance(value["zstd"], (bytes, bytearray))
            and _is_int(value["size"]) and 0 <= value["size"] <= MAX_FILES_BYTES)


def _packed(data: bytes) -> bytes | dict[str, Any]:
    """A layout file's entry: its bytes, or one zstd frame of them with their size where that takes less."""
    frame = zstandard.ZstdCompressor(level=PACK_LEVEL).compress(data)
    return {"zstd": frame, "size": len(data)} if len(frame) + PACK_ENTRY_BYTES < len(data) else bytes(data)


def _unpacked(value: bytes | dict[str, Any], where: str) -> bytes:
    """The bytes of a checked layout file entry; a packed one must be one frame of exactly its size (FormatError)."""
    if not isinstance(value, dict):
        return bytes(value)
    size = value["size"]
    try:
        out, ended, trailing = zstd_frame(value["zstd"], size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{where}: corrupt zstd frame ({exc})") from None
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    if not ended or trailing or len(out) != size:
        raise FormatError(f"{where}: its zstd frame does not decode to exactly its {size} bytes")
    return out


class ContainerWriter:
    """Writes a container to a temporary file beside `path` and renames it into place on close()."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK, registry: Registry | None = None,
                 layout: Layout | None = None) -> None:
        if not 0 < chunk_size <= Limits().max_chunk_bytes:
            raise DcfError(f"chunk size must be 1 to {Limits().max_chunk_bytes} bytes")
        self.path = Path(path)
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.chunk_size = chunk_size
        self.registry = registry or get_registry()
        self.layout = layout  # the model's files (FORMAT.md 3.3), stored in the index if given
        self.limits = Limits()  # what every reader enforces by default: a file beyond them would be unreadable
        self._chains: list[list[dict[str, Any]]] = []
        self._entries: list[list[Any]] = []
        self._names: set[str] = set()
        self._descriptors: dict[int, tuple[Chain, int]] = {}  # id(chain) -> (chain, its index in _chains)
        self._largest = 0  # the largest declared tensor size, checked against the final file size in close()
        fd, self._tmp, self._mode = make_temporary(self.path)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._copy_mode = ("range" if hasattr(os, "copy_file_range") else
                           "sendfile" if hasattr(os, "sendfile") else "user")  # how _copy appends spilled streams
        self._write(MAGIC)

    @contextmanager
    def _aborting(self) -> Iterator[None]:
        """On any failure drop the temporary file; an OS error becomes one ModelIOError naming the output."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise ModelIOError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        with self._aborting():
            self._file.write(data)

    def _copy(self, fd: int, offset: int, length: int) -> None:
        """Append `length` bytes at `offset` of the open file `fd` (a spill file) in the kernel where it can:
        copy_file_range (same file system), else sendfile (e.g. from a memfd), else pread and write."""
        with self._aborting():
            self._file.flush()
            position = self._file.tell()  # also the descriptor's offset, which sendfile advances
            end = position + length
            out = self._file.fileno()
            while position < end and self._copy_mode != "user":
                try:
                    if self._copy_mode == "range":
                        n = os.copy_file_range(fd, out, end - position, offset, position)
                    else:
                        n = os.sendfile(out, fd, offset, end - position)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                        raise
                    # this pair of files cannot: try the next way, for the rest of this file
                    self._copy_mode = "sendfile" if self._copy_mode == "range" and hasattr(os, "sendfile") else "user"
                    os.lseek(out, position, os.SEEK_SET)
                    continue
                if n == 0:
                    break
                position += n
                offset += n
            while position < end:
                data = os.pread(fd, min(end - position, COPY_BLOCK), offset)
                if not data:
                    raise DcfError(f"cannot write {self.path}: a spill file is shorter than its stream")
                os.pwrite(out, data, position)
                position += len(data)
                offset += len(data)
            self._file.seek(end)

    def add(self, tensor: EncodedTensor) -> dict[str, Any]:
        """Append one encoded tensor; returns its index entry as a report row.

        Everything a reader checks is checked here first (FORMAT.md section 8), so the writer never produces a file
        a reader refuses: a LimitError (or FormatError) names the tensor, and the output is left as it was.
        """
        self._check_tensor(tensor)
        self._names.add(tensor.name)
        streams = []
        for name, data in tensor.streams.items():
            n = len(data)
            chunks = [min(self.chunk_size, n - i) for i in range(0, n, self.chunk_size)]
            streams.append([name, n, data.crc if isinstance(data, Spilled) else _crc(data), chunks])
        record = {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape),
                  "chain": self._chain_index(tensor.chain), "steps": tensor.steps, "streams": streams}
        if tensor.stats:
            record["stats"] = tensor.stats
        where = f"{self.path}: tensor '{_short(tensor.name)}'"
        try:
            _check_writable(tensor.steps, where, depth=2)  # stage meta, inside the record map; the rest is built here
        except FormatError as exc:
            self._refuse(exc)
        packed = _pack(record)
        if len(packed) > self.limits.max_record_bytes:
            self._refuse(LimitError(f"{where}: its record takes {len(packed)} bytes, over the limit of "
                                    f"{self.limits.max_record_bytes} (a very long name, or very large metadata)"))
        offset = self._file.tell()
        self._write(packed)
        for data in tensor.streams.values():
            view = data if isinstance(data, Spilled) else memoryview(data)
            for i in range(0, len(data), self.chunk_size):
                n = min(self.chunk_size, len(data) - i)
                self._write(_bin_header(n))
                if isinstance(view, Spilled):
                    self._copy(view.fd, view.offset + i, n)
                else:
                    self._write(view[i:i + n])
        total = self._file.tell() - offset
        self._entries.append([tensor.name, offset, len(packed), total, _crc(packed)])
        return {"name": tensor.name, "compressed_bytes": total}

    def _refuse(self, error: DcfError) -> None:
        """Drop the temporary file and raise `error`: the output keeps what it had."""
        self.abort()
        raise error

    def _check_tensor(self, tensor: EncodedTensor) -> None:
        """The reader's checks on a tensor's name, count, shape, dtype and declared size."""
        name = tensor.name
        if not isinstance(name, str):
            self._refuse(DcfError(f"{self.path}: tensor names are strings, not {type(name).__name__}"))
        where = f"{self.path}: tensor '{_short(name)}'"
        if name in self._names:
            self._refuse(DcfError(f"{where} appears twice"))
        if len(self._names) >= self.limits.max_tensors:
            self._refuse(LimitError(f"{where}: a file holds at most {self.limits.max_tensors} tensors"))
        shape = tensor.shape
        if len(shape) > self.limits.max_ndim:
            self._refuse(LimitError(f"{where}: {len(shape)} dimensions exceed the limit of {self.limits.max_ndim}"))
        if not all(_is_int(d) and 0 <= d <= MAX_INT for d in shape):
            self._refuse(LimitError(f"{where}: shape {_short(repr(list(shape)))} has a dimension that is not an "
                                    f"integer from 0 to 2^53 - 1"))
        try:
            nbytes = math.prod(shape) * numpy_dtype(tensor.dtype).itemsize
        except FormatError as exc:
            self._refuse(FormatError(f"{where}: {exc}"))
        if nbytes > self.limits.max_tensor_bytes:
            self._refuse(LimitError(f"{where}: declares {nbytes} bytes, over the limit of "
                                    f"{self.limits.max_tensor_bytes}"))
        self._largest = max(self._largest, nbytes)

    def _chain_index(self, chain: Chain) -> int:
        """The index of a chain's descriptor in the file, described once per chain object (O(1) per tensor)."""
        known = self._descriptors.get(id(chain))
        if known is None or known[0] is not chain:
            descriptor = chain_descriptor(chain, self.registry)
            index = next((i for i, d in enumerate(self._chains) if d == descriptor), None)
            if index is None:
                index = len(self._chains)
                self._chains.append(descriptor)
            known = self._descriptors[id(chain)] = (chain, index)
        return known[1]

    def close(self) -> int:
        """Write the index and trailer, flush to disk and rename into place; returns the file's size."""
        index = {"format": FORMAT, "version": list(VERSION), "producer": f"dcframe {__version__}",
                 "metadata": self.metadata, "chains": self._chains, "tensors": self._entries}
        try:
            if self.layout is not None:
                index["layout"] = self.layout.to_index([e[0] for e in self._entries], str(self.path))
                index["version"] = list(PACKED_LAYOUT_VERSION if packs_files(index["layout"]) else LAYOUT_VERSION)
            _check_writable([self.metadata, self._chains, index.get("layout")], f"{self.path}: index")
        except FormatError as exc:
            self._refuse(exc)
        packed = _pack(index)
        if len(packed) > self.limits.max_index_bytes:
            self._refuse(LimitError(f"{self.path}: the index would take {len(packed)} bytes, over the limit of "
                                    f"{self.limits.max_index_bytes} (too many or too long tensor names)"))
        offset = self._file.tell()
        size = offset + len(packed) + TRAILER.size
        bound = min(self.limits.max_tensor_bytes, max(1 << 30, size * self.limits.max_expansion))
        if self._largest > bound:
            self._refuse(LimitError(f"{self.path}: a tensor declares {self._largest} bytes, over the limit of "
                                    f"{bound} for a {size}-byte file"))
        self._write(packed)
        self._write(TRAILER.pack(offset, len(packed), _crc(packed), END_MAGIC))
        with self._aborting():
            self._file.flush()
            os.fchmod(self._file.fileno(), self._mode)  # an existing output's mode, else 0666 less the umask
            os.fsync(self._file.fileno())
            size = self._file.tell()
            self._file.close()
            os.replace(self._tmp, self.path)
        _sync_dir(self.path.parent if str(self.path.parent) else Path("."))
        return size

    def abort(self) -> None:
        """Drop the temporary file; the target path is left as it was."""
        try:
            self._file.close()
        except OSError:  # the buffered tail cannot be written (disk full): the file is being dropped anyway
            pass
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ContainerWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_container(path: str | os.PathLike, tensors: Iterable[EncodedTensor],
                    metadata: dict[str, str] | None = None, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Write encoded tensors to `path` atomically; returns the file's size."""
    writer = ContainerWriter(path, metadata, chunk_size)
    try:
        for tensor in tensors:
            writer.add(tensor)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one tensor's record lies in the file."""

    name: str
    offset: int
    record_length: int
    total_length: int
    crc: int


class Container:
    """A .dcf file opened for reading: the index is read and checked at once, tensors on demand."""

    def __init__(self, path: str | os.PathLike, limits: Limits | None = None,
                 registry: Registry | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        self._registry = registry
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except OSError as exc:
            raise ModelIOError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._read_index()
        except BaseException:
            self._file.close()
            raise
        self._stages: dict[int, list[Stage]] = {}

    # --- low-level, bounded reads -------------------------------------------------------------------------------
    def _read_at(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise LimitError(f"{self.path}: {what} at byte {offset} ({length} bytes) runs past the end of the "
                             f"{self.size}-byte file")
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise FormatError(f"{self.path}: {what} at byte {offset} is truncated")
        return data

    def _read_into(self, offset: int, out: memoryview, what: str) -> None:
        if offset < 0 or offset + len(out) > self.size:
            raise LimitError(f"{self.path}: {what} at byte {offset} ({len(out)} bytes) runs past the end of the "
                             f"{self.size}-byte file")
        self._file.seek(offset)
        if self._file.readinto(out) != len(out):
            raise FormatError(f"{self.path}: {what} at byte {offset} is truncated")

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def _read_index(self) -> None:
        """Trailer, then the index: everything here is checked when the file is opened (FORMAT.md 8.2)."""
        if self.size < len(MAGIC) + TRAILER.size:
            raise FormatError(f"{self.path}: not a .dcf container (only {self.size} bytes)")
        if self._read_at(0, len(MAGIC), "magic") != MAGIC:
            raise FormatError(f"{self.path}: not a .dcf container (wrong magic bytes)")
        offset, length, crc, end = TRAILER.unpack(self._read_at(self.size - TRAILER.size, TRAILER.size, "trailer"))
        if end != END_MAGIC:
            raise FormatError(f"{self.path}: the trailer is missing: the file is truncated or not a .dcf container")
        if length > self.limits.max_index_bytes:
            raise LimitError(f"{self.path}: index of {length} bytes exceeds the limit of {self.limits.max_index_bytes}")
        if offset + length > self.size - TRAILER.size:
            raise LimitError(f"{self.path}: index at byte {offset} ({length} bytes) runs past the trailer of the "
                             f"{self.size}-byte file")
        if offset < len(MAGIC) or offset + length != self.size - TRAILER.size:
            raise self._fail(f"index at byte {offset} ({length} bytes) does not end at the trailer")
        data = self._read_at(offset, length, "index")
        if _crc(data) != crc:
            raise IntegrityError(f"{self.path}: index checksum mismatch at byte {offset}: the file is damaged")
        index, walk = _unpack(data, f"{self.path}: index", offset)
        del data
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise self._fail("index is not a dcf index map")
        _plain_fields(index, ("tensors",), f"{self.path}: index", walk)
        version = index.get("version")
        if not (isinstance(version, list) and len(version) == 2 and all(_is_int(v) for v in version)):
            raise self._fail(f"bad format version {version!r}")
        if version[0] != VERSION[0]:
            raise FormatError(f"{self.path}: format version {version[0]}.{version[1]} is not supported by this "
                              f"reader (major {VERSION[0]}); upgrade dcframe")
        self.version = tuple(version)
        producer = index.get("producer", "")
        if not isinstance(producer, str):
            raise self._fail("index producer is not a string")
        self.producer = producer
        self.metadata = self._metadata(index.get("metadata", {}))
        self._layout = index.get("layout")  # checked when asked for (layout()): it never spoils reading tensors
        self.chains = self._chains(index.get("chains"))
        tensors = index.get("tensors")
        if not isinstance(tensors, list):
            raise self._fail("index lacks its tensors")
        self.entries = self._entries(tensors, offset)
        self.index_offset = offset
        self.index_bytes = length

    def _metadata(self, metadata: Any) -> dict[str, str]:
        """User metadata: a map of str to str (FORMAT.md 3); anything else is a malformed index."""
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail("index metadata is not a map of strings to strings")
        return metadata

    def _chains(self, chains: Any) -> list[list[dict[str, Any]]]:
        """The stored chains, each a list of stage descriptors (FORMAT.md 3.1)."""
        if not isinstance(chains, list):
            raise self._fail("index lacks its chains")
        for i, chain in enumerate(chains):
            if not isinstance(chain, list) or not chain:
                raise self._fail(f"chain {i} is not a non-empty list of stages")
            for s in chain:
                if not (isinstance(s, dict) and isinstance(s.get("id"), str) and _is_int(s.get("version"))
                        and s["version"] >= 1 and isinstance(s.get("config", {}), dict)
                        and isinstance(s.get("package", ""), str)):
                    raise self._fail(f"malformed stage descriptor in chain {i} (id str, version int >= 1, "
                                     f"config map, package str)")
        return chains

    def _entries(self, tensors: list[Any], index_offset: int) -> dict[str, Entry]:
        """The tensor entries: well-formed, unique names, records tiling the file up to the index (FORMAT.md 3.2)."""
        if len(tensors) > self.limits.max_tensors:
            raise LimitError(f"{self.path}: {len(tensors)} tensors exceed the limit of {self.limits.max_tensors}")
        entries: dict[str, Entry] = {}
        end_of_last = len(MAGIC)
        for i, item in enumerate(tensors):
            if not (type(item) is list and len(item) == 5 and type(item[0]) is str
                    and all(type(v) is int and 0 <= v <= MAX_INT for v in item[1:])):
                raise self._fail(f"malformed tensor entry {i} in the index")
            entry = Entry(*item)
            where = f"{self.path}: tensor '{entry.name}'"
            if entry.name in entries:
                raise FormatError(f"{where} is listed twice in the index")
            if entry.offset != end_of_last:
                raise FormatError(f"{where}: record at byte {entry.offset}, the records tile the file from byte 8 "
                                  f"and the one before ends at {end_of_last}")
            if entry.record_length > self.limits.max_record_bytes:
                raise LimitError(f"{where}: record of {entry.record_length} bytes exceeds the limit of "
                                 f"{self.limits.max_record_bytes}")
            if not 1 <= entry.record_length <= entry.total_length:
                raise FormatError(f"{where}: record length {entry.record_length} does not fit its total length "
                                  f"{entry.total_length}")
            end_of_last = entry.offset + entry.total_length
            if end_of_last > self.size:
                raise LimitError(f"{where}: {entry.total_length} bytes at byte {entry.offset} run past the end of "
                                 f"the {self.size}-byte file")
            if end_of_last > index_offset or entry.crc > 0xFFFFFFFF:
                raise FormatError(f"{where}: {entry.total_length} bytes at byte {entry.offset} overlap the index "
                                  f"at byte {index_offset}" if end_of_last > index_offset else
                                  f"{where}: record checksum {entry.crc} is not a CRC-32")
            entries[entry.name] = entry
        if end_of_last != index_offset:
            raise self._fail(f"{index_offset - end_of_last} unaccounted bytes before the index")
        return entries

    def layout(self) -> Layout | None:
        """The files the model came in (FORMAT.md 3.3), checked; None if the file does not say."""
        if self._layout is None:
            return None
        return Layout.from_index(self._layout, self.names, str(self.path))

    # --- records ------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def record(self, name: str) -> dict[str, Any]:
        """The checked record of one tensor (without its stream data)."""
        entry = self._entry(name)
        data = self._read_at(entry.offset, entry.record_length, f"record of tensor '{name}'")
        if _crc(data) != entry.crc:
            raise IntegrityError(f"{self.path}: tensor '{name}': record checksum mismatch at byte {entry.offset}")
        record, walk = _unpack(data, f"{self.path}: record of tensor '{name}'", entry.offset)
        self._check_record(name, record, entry, walk)
        return record

    def header(self, name: str) -> tuple[str, tuple[int, ...]]:
        """The checked dtype and shape of one tensor; the rest of its record is dropped at once, so a caller
        collecting every tensor's header holds O(tensors) small tuples, not every record."""
        record = self.record(name)
        return record["dtype"], tuple(record["shape"])

    def _entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise DcfError(f"{self.path}: no tensor named '{name}'") from None

    def _check_record(self, name: str, record: Any, entry: Entry, walk: bool) -> None:
        """Everything a record states, checked when its tensor is read (a bad record spoils only its own tensor)."""
        where = f"{self.path}: tensor '{name}'"
        if not isinstance(record, dict) or record.get("name") != name:
            raise FormatError(f"{where}: record does not match the index")
        _plain_fields(record, ("streams",), f"{where}: record", walk)
        shape, dtype = record.get("shape"), record.get("dtype")
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise FormatError(f"{where}: bad shape {shape!r}")
        if len(shape) > self.limits.max_ndim:
            raise LimitError(f"{where}: {len(shape)} dimensions exceed the limit of {self.limits.max_ndim}")
        if not isinstance(dtype, str):
            raise FormatError(f"{where}: bad dtype {dtype!r}")
        try:
            itemsize = numpy_dtype(dtype).itemsize
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        nbytes = math.prod(shape) * itemsize  # Python ints: no overflow
        bound = min(self.limits.max_tensor_bytes, max(1 << 30, self.size * self.limits.max_expansion))
        if nbytes > bound:
            raise LimitError(f"{where}: declares {nbytes} bytes of data, over the limit of {bound} for this file")
        chain = record.get("chain")
        if not _is_int(chain) or not 0 <= chain < len(self.chains):
            raise FormatError(f"{where}: refers to chain {chain!r}, the file has {len(self.chains)}")
        steps = record.get("steps")
        if not isinstance(steps, list) or len(steps) != len(self.chains[chain]) or \
                not all(isinstance(s, list) and s for s in steps):
            raise FormatError(f"{where}: step records do not match its chain (one non-empty list of applications "
                              f"per stage)")
        self._check_streams(where, record.get("streams"), entry)

    def _check_streams(self, where: str, streams: Any, entry: Entry) -> None:
        """Stream descriptors: well-formed, unique names, chunks adding up, the record's bytes exactly used."""
        if not isinstance(streams, list):
            raise FormatError(f"{where}: bad stream list")
        available = entry.total_length - entry.record_length
        names: set[str] = set()
        for s in streams:
            if not (type(s) is list and len(s) == 4 and type(s[0]) is str and type(s[1]) is int
                    and type(s[2]) is int and 0 <= s[2] <= 0xFFFFFFFF and type(s[3]) is list
                    and all(type(c) is int and c > 0 for c in s[3])):
                raise FormatError(f"{where}: malformed stream descriptor")
            if s[0] in names:
                raise FormatError(f"{where}: stream '{s[0]}' is stored twice")
            names.add(s[0])
            if any(c > self.limits.max_chunk_bytes for c in s[3]):
                raise LimitError(f"{where}: stream {s[0]!r} has a chunk over {self.limits.max_chunk_bytes} bytes")
            if sum(s[3]) != s[1]:
                raise FormatError(f"{where}: stream '{s[0]}' chunks add up to {sum(s[3])}, not {s[1]}")
            available -= s[1] + sum(len(_bin_header(c)) for c in s[3])
        if available != 0:
            raise FormatError(f"{where}: stream sizes do not add up to the record's {entry.total_length} bytes")

    def streams(self, name: str, record: dict[str, Any] | None = None) -> dict[str, bytearray]:
        """The checked, concatenated bytes of each stream of one tensor."""
        record = record if record is not None else self.record(name)
        entry = self._entry(name)
        pos = entry.offset + entry.record_length
        out = {}
        for sname, size, crc, chunks in record["streams"]:
            data = bytearray(size)  # sizes were checked against the record's place in the file
            view = memoryview(data)
            filled = 0
            for length in chunks:
                header = _bin_header(length)
                got = self._read_at(pos, len(header), f"chunk of stream '{sname}' of tensor '{name}'")
                if got != header:
                    raise FormatError(f"{self.path}: tensor '{name}': chunk header of stream '{sname}' at byte "
                                      f"{pos} does not match its declared length {length}")
                pos += len(header)
                self._read_into(pos, view[filled:filled + length], f"stream '{sname}' of tensor '{name}'")
                filled += length
                pos += length
            view.release()
            if _crc(data) != crc:
                raise IntegrityError(f"{self.path}: tensor '{name}': stream '{sname}' checksum mismatch: "
                                     f"the file is damaged")
            out[sname] = data
        return out

    def chain_stages(self, index: int) -> list[Stage]:
        """The stages of stored chain `index`, built from the installed plugins."""
        if index not in self._stages:
            registry = self._registry or get_registry()
            stages = []
            for s in self.chains[index]:
                info = registry.info(s["id"], s.get("package"))
                if s["version"] > info.cls.version:
                    raise MissingStageError(
                        f"{self.path}: stage '{s['id']}' version {s['version']} is needed, the installed "
                        f"{info.package} has version {info.cls.version}; upgrade {info.package}")
                try:
                    stages.append(info.cls.from_config(s.get("config", {})))
                except ConfigError as exc:  # a stored config its stage rejects: a malformed file (FORMAT.md 9)
                    raise FormatError(f"{self.path}: chain {index}: stage '{s['id']}': bad stored config: "
                                      f"{exc}") from None
            self._stages[index] = stages
        return self._stages[index]

    def read(self, name: str) -> Dense:
        """Decode one tensor (reading only its own bytes)."""
        record = self.record(name)
        stages = self.chain_stages(record["chain"])
        streams = self.streams(name, record)
        return decode_tensor(stages, record["steps"], streams, record["dtype"], tuple(record["shape"]),
                             where=f"{self.path}: tensor '{name}'")

    def read_many(self, names: Iterable[str], jobs: int = 1) -> Iterator[tuple[str, Dense]]:
        """(name, tensor) of each of `names`, in order. With `jobs` > 1, at least THREADS_FROM stored bytes and every
        chain they take threadable (the lossless preset's with compiled kernels: the GIL released while decoding),
        `jobs` threads decode while this one reads the next tensors' bytes (the file is read here only, serially):
        at most 2 x jobs tensors in flight, and at most THREADS_BUDGET declared bytes of them beyond the oldest (a
        small or a hostile file decodes one tensor at a time, as `read` does)."""
        names = list(names)
        stored = sum(self.entries[n].total_length for n in names)
        # each record is read here and again in tasks(), never all held at once (a record may be large)
        if jobs < 2 or len(names) < 2 or stored < THREADS_FROM or \
                not all(threadable(self.chain_stages(c)) for c in {self.record(n)["chain"] for n in names}):
            for name in names:
                yield name, self.read(name)
            return

        def tasks() -> Iterator[tuple[tuple, int]]:
            for name in names:
                record = self.record(name)
                shape = tuple(record["shape"])
                declared = math.prod(shape) * numpy_dtype(record["dtype"]).itemsize  # scheduling only
                args = (self.chain_stages(record["chain"]), record["steps"], self.streams(name, record),
                        record["dtype"], shape, f"{self.path}: tensor '{name}'")
                yield args, declared

        for name, dense in zip(names, ordered_map(decode_tensor, tasks(), jobs, THREADS_BUDGET), strict=True):
            yield name, dense

    def __iter__(self) -> Iterator[tuple[str, Dense]]:
        for name in self.entries:
            yield name, self.read(name)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
