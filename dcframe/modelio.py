"""Model files in and out: .safetensors, .npz, .npy and (with torch installed) .pt/.pth state dicts.

safetensors is parsed here, with numpy memory maps, because the safetensors numpy backend cannot carry bfloat16;
every offset in its header is checked against the file. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from .dtypes import DTYPE_NAMES, dtype_name, numpy_dtype
from .errors import DcfError, FormatError, ModelIOError
from .streams import Dense

MAX_SAFETENSORS_HEADER = 100 << 20
NPZ_DTYPES_KEY = "__dcframe_dtypes__"  # names the true dtype of tensors an .npz can only hold as bit patterns
MODEL_SUFFIXES = (".safetensors", ".npz", ".npy", ".pt", ".pth")


class LazyTensors(Mapping[str, Dense]):
    """A read-only mapping name -> Dense that loads (or memory-maps) each tensor when asked for it."""

    def __init__(self, names: list[str], load, path: Path, reopenable: bool = True,
                 metadata: dict[str, str] | None = None) -> None:
        self._names, self._load, self.path = names, load, path
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

    def __len__(self) -> int:
        return len(self._names)


def read_model(path: str | os.PathLike) -> LazyTensors:
    """Open a model file by its extension; tensors load lazily."""
    path = Path(path)
    if not path.exists():
        raise ModelIOError(f"{path}: no such file")
    if path.is_dir():
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
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelIOError(f"{path}: safetensors header is not valid JSON ({exc})") from None
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
            raise ModelIOError(f"{path}: tensor '{name}' has a malformed header entry") from None
        if dtype not in DTYPE_NAMES:
            raise ModelIOError(f"{path}: tensor '{name}' has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelIOError(f"{path}: tensor '{name}' has a bad shape {shape!r}")
        expected = math.prod(shape) * numpy_dtype(dtype).itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size
                and end - begin == expected):
            raise ModelIOError(f"{path}: tensor '{name}' offsets [{begin}, {end}) do not fit its shape or the file")
        specs[name] = (dtype, tuple(shape), base + begin)

    def load(name: str) -> Dense:
        dtype, shape, offset = specs[name]
        if math.prod(shape) == 0:
            return Dense(np.zeros(shape, numpy_dtype(dtype)), dtype)
        array = np.memmap(path, dtype=numpy_dtype(dtype), mode="r", offset=offset, shape=shape)
        return Dense(array, dtype)

    return LazyTensors(sorted(specs, key=lambda k: specs[k][2]), load, path, metadata=metadata)


def _read_npz(path: Path) -> LazyTensors:
    archive = np.load(path, allow_pickle=False)
    names = [n for n in archive.files if n != NPZ_DTYPES_KEY]
    true_dtypes = {}
    if NPZ_DTYPES_KEY in archive.files:
        for item in archive[NPZ_DTYPES_KEY].tolist():
            key, _, value = str(item).rpartition("=")
            true_dtypes[key] = value

    def load(name: str) -> Dense:
        try:
            array = archive[name]
        except ValueError as exc:
            raise ModelIOError(f"{path}: tensor '{name}' cannot be read ({exc})") from None
        return _dense(path, name, array, true_dtypes.get(name))

    return LazyTensors(names, load, path)


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
        raise ModelIOError(f"{path}: cannot load as a PyTorch state dict ({exc})".splitlines()[0]) from None
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


def _dense(path: Path, name: str, array: np.ndarray, dtype: str | None = None) -> Dense:
    try:
        name_of_dtype = dtype or dtype_name(array.dtype)
        return Dense(np.asarray(array, dtype=numpy_dtype(name_of_dtype), order="C"), name_of_dtype)
    except FormatError as exc:
        raise ModelIOError(f"{path}: tensor '{name}': {exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path`; flush, fsync and rename it into place only if the block succeeds.

    On any failure (an exception, Ctrl-C, a full disk) the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_dir(directory)


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
    memory at a time. Each yielded tensor must match its spec.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".npz"):
        raise ModelIOError(f"{path}: can write .safetensors or .npz, not {suffix or 'a file without extension'}")
    if suffix == ".npz" and NPZ_DTYPES_KEY in specs:
        raise ModelIOError(f"{path}: a tensor may not be called {NPZ_DTYPES_KEY}")
    if metadata and suffix != ".safetensors":
        raise ModelIOError(f"{path}: only .safetensors files carry metadata")
    for dtype, _shape in specs.values():
        numpy_dtype(dtype)  # refuse an unknown dtype before writing anything
    checked = _checked(path, specs, tensors)
    with atomic_output(path) as f:
        if suffix == ".safetensors":
            _write_safetensors(f, specs, checked, metadata)
        else:
            _write_npz(f, specs, checked)


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


def _write_safetensors(f: IO[bytes], specs: Mapping[str, TensorSpec], tensors: Iterator[Dense],
                       metadata: Mapping[str, str] | None = None) -> None:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * numpy_dtype(dtype).itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the safetensors writer does
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    written = 0
    for t in tensors:
        array = np.asarray(t.array, order="C")
        if array.size:
            f.write(memoryview(array.reshape(-1)).cast("B"))
        written += 1
    if written != len(specs):
        raise ModelIOError(f"only {written} of {len(specs)} tensors were written")


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
