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

    def __init__(self, names: list[str], load, path: Path) -> None:
        self._names, self._load, self.path = names, load, path

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
        raise ModelIOError(f"{path}: cannot read as {suffix[1:]} ({exc})") from None
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
    header.pop("__metadata__", None)
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

    return LazyTensors(sorted(specs, key=lambda k: specs[k][2]), load, path)


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

    return LazyTensors(list(state), load, path)


def _dense(path: Path, name: str, array: np.ndarray, dtype: str | None = None) -> Dense:
    try:
        name_of_dtype = dtype or dtype_name(array.dtype)
        return Dense(np.asarray(array, dtype=numpy_dtype(name_of_dtype), order="C"), name_of_dtype)
    except FormatError as exc:
        raise ModelIOError(f"{path}: tensor '{name}': {exc}") from None


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model(path: str | os.PathLike, tensors: Mapping[str, Dense | np.ndarray]) -> None:
    """Write tensors to .safetensors or .npz (by extension), atomically, keeping names, dtypes and shapes."""
    path = Path(path)
    suffix = path.suffix.lower()
    dense = {name: t if isinstance(t, Dense) else Dense.of(t) for name, t in tensors.items()}
    if suffix == ".safetensors":
        _write_safetensors(path, dense)
    elif suffix == ".npz":
        _write_npz(path, dense)
    else:
        raise ModelIOError(f"{path}: can write .safetensors or .npz, not {suffix or 'a file without extension'}")


def _write_safetensors(path: Path, tensors: Mapping[str, Dense]) -> None:
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.array.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the safetensors writer does
    with atomic_output(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t.array).tobytes())


def _write_npz(path: Path, tensors: Mapping[str, Dense]) -> None:
    arrays = {name: t.array for name, t in tensors.items()}
    bit_patterns = [f"{name}={t.dtype}" for name, t in tensors.items() if t.dtype == "BF16"]
    if NPZ_DTYPES_KEY in arrays:
        raise ModelIOError(f"{path}: a tensor may not be called {NPZ_DTYPES_KEY}")
    if bit_patterns:
        arrays[NPZ_DTYPES_KEY] = np.array(bit_patterns)
    with atomic_output(path) as f:
        np.savez(f, **arrays)
