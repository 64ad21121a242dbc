"""Model files in and out: .safetensors, .npz, .npy and (with torch installed) .pt/.pth state dicts.

safetensors is parsed here, with numpy memory maps, because the safetensors numpy backend cannot carry bfloat16;
every offset in its header is checked against the file. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from dcframe.core.dtypes import DTYPE_NAMES, dtype_name, numpy_dtype
from dcframe.core.errors import DcfError, FormatError, ModelIOError
from dcframe.core.files import _short, atomic_output
from dcframe.core.streams import Dense

MAX_SAFETENSORS_HEADER = 100 << 20
MAX_DIM = (1 << 53) - 1  # larger dimensions cannot be real, and JavaScript cannot read them exactly
MAX_DTYPES_MEMBER = 1 << 26  # bytes of an .npz's __dcframe_dtypes__ member
MAX_ZIP_NAME = 0xFFFF  # a zip member name is at most this many bytes (a 16-bit field)
NPZ_DTYPES_KEY = "__dcframe_dtypes__"  # names the true dtype of tensors an .npz can only hold as bit patterns
MODEL_SUFFIXES = (".safetensors", ".npz", ".npy", ".pt", ".pth")


class LazyTensors(Mapping[str, Dense]):
    """A read-only mapping name -> Dense that loads (or memory-maps) each tensor when asked for it."""

    def __init__(self, names: list[str], load, path: Path, reopenable: bool = True, sizes=None,
                 metadata: dict[str, str] | None = None) -> None:
        self._names = dict.fromkeys(names)  # ordered, and `in` is O(1): 10^6 tensors stay linear
        self._load, self._sizes, self.path = load, sizes, path
        self.metadata = metadata or {}  # a .safetensors file's __metadata__ (str -> str), else empty
        self.reopenable = reopenable  # another process may read the same tensors by opening `path` again
        st = os.stat(path)
        self.stamp = (st.st_mtime_ns, st.st_size)  # to notice a file that changes while it is being read

    def __getitem__(self, name: str) -> Dense:
        if name not in self._names:
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def nbytes(self, name: str) -> int:
        """The bytes of one tensor's data, from the file's header where it has one (without reading the data)."""
        if name not in self._names:
            raise KeyError(name)
        return self._sizes(name) if self._sizes else self._load(name).nbytes

    def __len__(self) -> int:
        return len(self._names)

    def source(self, name: str) -> tuple[str, int, int] | None:
        """Where another process re-opens this tensor (the file's path and stamp), or None if it cannot."""
        return (str(self.path), *self.stamp) if self.reopenable else None


def read_model(path: str | os.PathLike) -> LazyTensors:
    """Open a model file by its extension; tensors load lazily."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:  # a missing file, a symlink loop, a path through a non-directory...
        why = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).lower()
        raise ModelIOError(f"{path}: {why}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelIOError(f"{path}: is a directory, expected a model file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return _read_safetensors(path)
        if suffix == ".npz":
            return _read_npz(path)
        if suffix == ".npy":
            return _read_npy(path)
        if suffix in (".pt", ".pth"):
            return _read_torch(path)
    except DcfError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        why = str(exc)
        if "pickled" in why:  # numpy's guess for any unknown bytes; its advice (unpickle) must not reach the user
            why = f"no {suffix[1:]} signature; dcframe never unpickles"
        raise ModelIOError(f"{path}: cannot read as {suffix[1:]} ({why})") from None
    raise ModelIOError(f"{path}: unknown model format {suffix!r}; expected one of {', '.join(MODEL_SUFFIXES)}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object hook: a key given twice is an error, not "the last one wins"."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r} appears twice")
    return out


def _check_shape(path: Path, name: str, shape: object) -> tuple[int, ...]:
    """A shape read from a model file: a list of plain ints (no booleans), each at most MAX_DIM."""
    if not (isinstance(shape, (list, tuple))
            and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):  # type(): True is not a dimension
        raise ModelIOError(f"{path}: tensor '{name}' has a bad shape {_short(repr(shape))} (dimensions are "
                           f"integers from 0 to 2^53 - 1)")
    return tuple(shape)


def _read_safetensors(path: Path) -> LazyTensors:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelIOError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ModelIOError(f"{path}: safetensors header length {n} does not fit the {size}-byte file")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ModelIOError(f"{path}: safetensors header is not valid JSON ({_short(str(exc))})") from None
        except RecursionError:
            raise ModelIOError(f"{path}: safetensors header nests too deeply to be a tensor table") from None
    if not isinstance(header, dict):
        raise ModelIOError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ModelIOError(f"{path}: safetensors __metadata__ must map strings to strings")
    base, data_size = 8 + n, size - 8 - n
    specs = {}
    for name, spec in header.items():
        try:
            dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ModelIOError(f"{path}: tensor '{_short(name)}' has a malformed header entry") from None
        if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
            raise ModelIOError(f"{path}: tensor '{_short(name)}' has unsupported dtype {_short(repr(dtype))}")
        shape = _check_shape(path, name, shape)
        expected = math.prod(shape) * numpy_dtype(dtype).itemsize
        if not (type(begin) is int and type(end) is int and 0 <= begin <= end <= data_size
                and end - begin == expected):
            raise ModelIOError(f"{path}: tensor '{_short(name)}' offsets do not fit its shape or the file")
        specs[name] = (dtype, shape, base + begin)
    whole: list[np.memmap] = []  # one map of the file for every tensor (a map per tensor costs an open() each)

    def load(name: str) -> Dense:
        dtype, shape, offset = specs[name]
        if math.prod(shape) == 0:
            return Dense(np.zeros(shape, numpy_dtype(dtype)), dtype)
        if not whole:
            whole.append(np.memmap(path, dtype=np.uint8, mode="r"))
        return Dense(np.ndarray(shape, numpy_dtype(dtype), buffer=whole[0], offset=offset), dtype)

    def size(name: str) -> int:
        dtype, shape, _ = specs[name]
        return math.prod(shape) * numpy_dtype(dtype).itemsize

    return LazyTensors(sorted(specs, key=lambda k: specs[k][2]), load, path, sizes=size, metadata=metadata)


def _read_npz(path: Path) -> LazyTensors:
    """An .npz read member by member with zipfile (never numpy's NpzFile: its name lookups scan a list, and it
    hands back whatever a member holds); every member must be an .npy array of a supported dtype."""
    archive = zipfile.ZipFile(path)
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ModelIOError(f"{path}: member '{_short(info.filename)}' is not an .npy array")
        name = info.filename[:-4]
        if name in members:
            raise ModelIOError(f"{path}: tensor '{_short(name)}' is stored twice")
        members[name] = info
    dtypes_member = members.pop(NPZ_DTYPES_KEY, None)
    true_dtypes = _npz_true_dtypes(path, archive, dtypes_member, members) if dtypes_member else {}

    def load(name: str) -> Dense:
        array = _npz_member(path, archive, members[name], name)
        return _dense(path, name, array, true_dtypes.get(name))

    def size(name: str) -> int:  # the header only: the data is read once, when the tensor is compressed
        with archive.open(members[name]) as f:
            shape, _, dtype = _npz_header(path, f, name)
        return math.prod(shape) * dtype.itemsize  # a dtype mark keeps the item size (checked when reading the mark)

    return LazyTensors(list(members), load, path, sizes=size)


def _npz_header(path: Path, f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of an .npy member (versions 1.0 and 2.0; numpy bounds the header's size)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise ModelIOError(f"{path}: tensor '{_short(name)}' is not an .npy array ({_short(str(exc))})") from None
    if dtype.hasobject:
        raise ModelIOError(f"{path}: tensor '{_short(name)}' holds Python objects; dcframe never unpickles")
    return _check_shape(path, name, shape), bool(fortran), dtype


def _npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                limit: int | None = None) -> np.ndarray:
    """One .npy member: its header checked (dtype, shape against the member's size) before the data is read."""
    with archive.open(info) as f:
        shape, fortran, dtype = _npz_header(path, f, name)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size - f.tell() or (limit is not None and nbytes > limit):
            raise ModelIOError(f"{path}: tensor '{_short(name)}' declares {nbytes} bytes, more than its member "
                               f"holds")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ModelIOError(f"{path}: tensor '{_short(name)}' is truncated")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _npz_true_dtypes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                     members: Mapping[str, zipfile.ZipInfo]) -> dict[str, str]:
    """The `__dcframe_dtypes__` member: "name=DTYPE" strings for tensors stored as bit patterns (BF16 as uint16).

    A dtype is accepted only where the stored array carries it bit for bit: anything else would be a silent cast.
    """
    array = _npz_member(path, archive, info, NPZ_DTYPES_KEY, MAX_DTYPES_MEMBER)
    if array.ndim != 1 or array.dtype.kind != "U":
        raise ModelIOError(f"{path}: {NPZ_DTYPES_KEY} must be a list of 'name=DTYPE' strings")
    out = {}
    for item in array.tolist():
        name, _, dtype = item.rpartition("=")
        if name not in members or dtype not in DTYPE_NAMES:
            raise ModelIOError(f"{path}: {NPZ_DTYPES_KEY} entry '{_short(item)}' names no tensor or no dtype")
        carrier = numpy_dtype(dtype)
        with archive.open(members[name]) as f:
            stored = _npz_header(path, f, name)[2]
        if (stored.kind, stored.itemsize) != (carrier.kind, carrier.itemsize):
            raise ModelIOError(f"{path}: tensor '{_short(name)}' is stored as {stored} but {NPZ_DTYPES_KEY} marks "
                               f"it {dtype}; only a dtype the array carries bit for bit can be marked")
        out[name] = dtype
    return out


def _read_npy(path: Path) -> LazyTensors:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    name = path.stem
    return LazyTensors([name], lambda _: _dense(path, name, array), path)


def _read_torch(path: Path) -> LazyTensors:
    try:
        import torch
    except ImportError:
        raise ModelIOError(f"{path}: reading .pt/.pth needs PyTorch: pip install 'dcframe[torch]'") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; weights_only refuses anything but tensors and containers
        raise ModelIOError(f"{path}: {_torch_load_problem(str(exc))}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelIOError(f"{path}: expected a state dict mapping names to tensors")

    def load(name: str) -> Dense:
        t = state[name].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return Dense(t.view(torch.int16).numpy().view("<u2"), "BF16")
        return _dense(path, name, t.numpy())

    return LazyTensors(list(state), load, path, reopenable=False)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal escape sequences (torch bolds part of its message)


def _torch_load_problem(message: str) -> str:
    """torch.load's refusal as one clause for an error line: without terminal escapes, whole sentences only, and
    for a pickled module (the common case) what to do instead."""
    text = _ANSI.sub("", message)
    _, found, rest = text.partition("WeightsUnpickler error:")
    reason = next((" ".join(part.split()) for part in rest.split("\n\n") if part.strip()), "") if found else ""
    if reason:
        reason = _sentences(reason.split(". ")[0].rstrip(".") + ".")
    if "Unsupported global" in reason:
        return (f"holds pickled Python objects, not only tensors (torch: {reason}); dcframe never unpickles: "
                f"save the weights with torch.save(model.state_dict(), PATH) and compress that file")
    return f"cannot load as a PyTorch state dict (torch: {reason or _sentences(' '.join(text.split()))})"


def _sentences(text: str, limit: int = 200) -> str:
    """The whole sentences of `text` that fit in `limit` characters (the first one cut only if it alone is longer)."""
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[:end + 1] if end > 0 else _short(text, limit)


def _dense(path: Path, name: str, array: np.ndarray, dtype: str | None = None) -> Dense:
    try:
        name_of_dtype = dtype or dtype_name(array.dtype)
        return Dense(np.asarray(array, dtype=numpy_dtype(name_of_dtype), order="C"), name_of_dtype)
    except FormatError as exc:
        raise ModelIOError(f"{path}: tensor '{name}': {exc}") from None


TensorSpec = tuple[str, tuple[int, ...]]  # dtype name, shape


def write_model(path: str | os.PathLike, tensors: Mapping[str, Dense | np.ndarray],
                metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to .safetensors or .npz (by extension), atomically, keeping names, dtypes and shapes.

    `metadata` (str -> str) becomes a .safetensors file's __metadata__; an .npz cannot carry it.
    """
    dense = {name: t if isinstance(t, Dense) else Dense.of(t) for name, t in tensors.items()}
    specs = {name: (t.dtype, tuple(t.array.shape)) for name, t in dense.items()}
    write_model_stream(path, specs, iter(dense.items()), metadata)


def write_model_stream(path: str | os.PathLike, specs: Mapping[str, TensorSpec],
                       tensors: Iterator[tuple[str, Dense]], metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors one at a time as `tensors` yields them (in the order of `specs`), atomically.

    Only the dtypes and shapes are needed up front (for the safetensors header), so at most one tensor is in
    memory at a time. Each yielded tensor must match its spec. Names a format cannot carry are refused first.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".npz"):
        raise ModelIOError(f"{path}: can write .safetensors or .npz, not {suffix or 'a file without extension'}")
    for name in specs:
        why = _name_problem(name, suffix)
        if why:
            raise ModelIOError(f"{path}: cannot write tensor '{_short(str(name))}': {why}")
    if metadata and suffix != ".safetensors":
        raise ModelIOError(f"{path}: only .safetensors files carry metadata")
    for dtype, _shape in specs.values():
        numpy_dtype(dtype)  # refuse an unknown dtype before writing anything
    header = _safetensors_header(path, specs, metadata) if suffix == ".safetensors" else b""
    checked = _checked(path, specs, tensors)
    with atomic_output(path) as f:
        if suffix == ".safetensors":
            _write_safetensors(f, header, len(specs), checked)
        else:
            _write_npz(f, specs, checked)


_DRIVE = re.compile(r"^[A-Za-z]:")


def _name_problem(name: object, suffix: str) -> str | None:
    """Why a tensor name cannot go into an output of this format (None if it can); see README, "Tensor names".

    Names are written as they are, never mapped, so two different names never collide in the output.
    """
    if not isinstance(name, str):
        return "tensor names are strings"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid Unicode text"
    if suffix == ".safetensors":
        return "'__metadata__' is the safetensors header's metadata entry" if name == "__metadata__" else None
    if name == NPZ_DTYPES_KEY:
        return f"{NPZ_DTYPES_KEY} is the member where dcframe records BF16 tensors"
    if "\0" in name:
        return "an .npz member name cannot hold a NUL character (zip readers cut the name there)"
    if "\\" in name:
        return "an .npz member name cannot hold a backslash (zip readers on Windows take it for a folder separator)"
    if name.startswith("/") or _DRIVE.match(name) or ".." in name.split("/"):
        return "the name would extract outside the archive's folder ('/' first, a drive, or a '..' part)"
    if len(encoded) + len(".npy") > MAX_ZIP_NAME:
        return f"an .npz member name holds at most {MAX_ZIP_NAME - 4} bytes; this one has {len(encoded)}"
    return None


def _checked(path: Path, specs: Mapping[str, TensorSpec], tensors: Iterator[tuple[str, Dense]]) -> Iterator[Dense]:
    names = list(specs)
    for i, (name, t) in enumerate(tensors):
        if i >= len(names) or name != names[i]:
            raise ModelIOError(f"{path}: tensor '{name}' arrives out of order")
        dtype, shape = specs[name]
        if t.dtype != dtype or tuple(t.array.shape) != tuple(shape):
            raise ModelIOError(f"{path}: tensor '{name}' is {t.dtype}{list(t.array.shape)}, "
                               f"expected {dtype}{list(shape)}")
        yield t


def _safetensors_header(path: Path, specs: Mapping[str, TensorSpec],
                        metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and the JSON header, padded to 8 bytes; refused if a reader would refuse it."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * numpy_dtype(dtype).itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the safetensors writer does
    if len(blob) > MAX_SAFETENSORS_HEADER:
        raise ModelIOError(f"{path}: the safetensors header would take {len(blob)} bytes, over the "
                           f"{MAX_SAFETENSORS_HEADER}-byte limit of readers (too many or too long tensor names)")
    return struct.pack("<Q", len(blob)) + blob


def _write_safetensors(f: IO[bytes], header: bytes, count: int, tensors: Iterator[Dense]) -> None:
    f.write(header)
    written = 0
    for t in tensors:
        array = np.asarray(t.array, order="C")
        if array.size:
            f.write(memoryview(array.reshape(-1)).cast("B"))
        written += 1
    if written != count:
        raise ModelIOError(f"only {written} of {count} tensors were written")


def _write_npz(f: IO[bytes], specs: Mapping[str, TensorSpec], tensors: Iterator[Dense]) -> None:
    """An .npz as numpy.savez writes it (a stored zip of .npy members), one member at a time."""
    names = list(specs)
    written = 0
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, t in zip(names, tensors, strict=False):
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(t.array, order="C"), allow_pickle=False)
            written += 1
        if written != len(specs):
            raise ModelIOError(f"only {written} of {len(specs)} tensors were written")
        bit_patterns = [f"{name}={dtype}" for name, (dtype, _) in specs.items() if dtype == "BF16"]
        if bit_patterns:
            with archive.open(NPZ_DTYPES_KEY + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.array(bit_patterns), allow_pickle=False)
