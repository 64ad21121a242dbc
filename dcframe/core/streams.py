"""The three kinds of stream a tensor travels as between stages: dense, symbols and bytes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from dcframe.core import dtypes
from dcframe.core.errors import FormatError

DENSE = "dense"
SYMBOLS = "symbols"
BYTES = "bytes"
KINDS = (DENSE, SYMBOLS, BYTES)


# Side inputs a calibration provides (stage.py, "Side inputs"): element-aligned ones have the stream's shape.
ACTIVATION = "activation"  # E[x_j^2]: second moment of the input feature each weight multiplies (Wanda's ||X_j||^2/n)
FISHER = "fisher"  # mean squared gradient of a loss with respect to each weight (diagonal Fisher)
HESSIAN = "hessian"  # X^T X / n of a 2-D weight [out, in]: [in, in]; tensor-level, not element-aligned
OUTPUT = "output"  # E[g_y^2]: mean squared gradient of a loss w.r.t. the output feature each weight feeds
ALIGNED = (ACTIVATION, FISHER, OUTPUT)

MAX_NDIM = 32  # the one dimension limit of every tensor and every stage's shape meta (spec/FORMAT.md section 8)


def check_shape(stage_id: str, shape: object) -> int:
    """The element count of a shape read from untrusted meta; FormatError unless it is a list of at most MAX_NDIM
    integers >= 0 (booleans are not integers). Every stage checks its shapes with this, so all share one limit."""
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"{stage_id}: bad shape {shape!r} in metadata (a list of at most {MAX_NDIM} integers >= 0)")
    return math.prod(shape)


@dataclass(frozen=True, eq=False)
class Dense:
    """A tensor of numbers with its dtype name; BF16 is carried as uint16 bit patterns.

    `side` holds encode-time side inputs (calibration statistics, see stage.py): never stored, never needed to decode.
    """

    array: np.ndarray
    dtype: str
    side: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    kind: ClassVar[str] = DENSE

    @classmethod
    def of(cls, array: np.ndarray, dtype: str | None = None) -> Dense:
        """Wrap a numpy array, naming its dtype from numpy unless given (pass "BF16" for bit patterns)."""
        array = np.asarray(array)
        name = dtype or dtypes.dtype_name(array.dtype)
        return cls(np.asarray(array, dtype=dtypes.numpy_dtype(name), order="C"), name)

    def values(self) -> np.ndarray:
        """The numbers as a float array (float32 for F16/BF16) for stages that compute with them."""
        return dtypes.to_float(self.array, self.dtype)

    def with_values(self, values: np.ndarray) -> Dense:
        """A new Dense of the same dtype and side inputs holding `values` (rounded to the dtype), of the same shape."""
        return Dense(np.asarray(dtypes.from_float(values, self.dtype), order="C"), self.dtype, self.side)

    def select(self, indices: np.ndarray) -> Dense:
        """The 1-D Dense of the elements at flat `indices`, with its element-aligned side inputs selected alike (how a
        stage that keeps a subset of the elements, like sparse, passes them on); tensor-level ones are dropped."""
        side = {k: np.asarray(v).reshape(-1)[indices] for k, v in self.side.items()
                if k in ALIGNED and np.shape(v) == self.array.shape}
        return Dense(np.ascontiguousarray(self.array).reshape(-1)[indices], self.dtype, side)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@dataclass(frozen=True, eq=False)
class Symbols:
    """Non-negative integers below `alphabet`, as a 1-D unsigned array."""

    array: np.ndarray
    alphabet: int
    kind: ClassVar[str] = SYMBOLS

    @property
    def width(self) -> int:
        """Bytes per symbol when stored plainly: 1, 2 or 4 by alphabet size."""
        return symbol_width(self.alphabet)

    @property
    def nbytes(self) -> int:
        return int(self.array.size) * self.width


@dataclass(frozen=True, eq=False)
class Bytes:
    """An opaque byte string."""

    data: bytes
    kind: ClassVar[str] = BYTES

    @property
    def nbytes(self) -> int:
        return len(self.data)


Stream = Dense | Symbols | Bytes


COUNT_BLOCK = 1 << 16  # symbols per np.bincount call in symbol_counts


def symbol_counts(symbols: np.ndarray, minlength: int = 0) -> np.ndarray:
    """np.bincount of non-negative integer symbols, block by block: bincount copies its input to int64 first, and
    that copy of a block stays in the CPU's cache (5-8x faster than one call on 10^7 bytes)."""
    flat = symbols.reshape(-1)
    if flat.dtype == np.uint64:  # bincount casts "safely" to int64, which uint64 is not
        flat = flat.astype(np.int64)
    if flat.size <= COUNT_BLOCK:
        return np.bincount(flat, minlength=minlength)
    top = int(flat.max()) + 1
    counts = np.zeros(max(top, minlength), dtype=np.int64)
    for start in range(0, flat.size, COUNT_BLOCK):
        counts[:top] += np.bincount(flat[start:start + COUNT_BLOCK], minlength=top)
    return counts


def symbol_dtype(alphabet: int) -> np.dtype:
    """The unsigned dtype entropy coders hold symbols of an alphabet of at most 2^16 in: uint8 or uint16."""
    return np.dtype(np.uint8) if alphabet <= 256 else np.dtype(np.uint16)


def coder_symbols(stage_id: str, stream: Symbols, max_alphabet: int) -> np.ndarray:
    """The flat symbols an entropy coder codes, checked (ConfigError naming the stage): an alphabet in
    1..max_alphabet and, unless there are none, integer symbols inside it; as symbol_dtype(alphabet)."""
    from dcframe.core.errors import ConfigError

    alphabet = int(stream.alphabet)
    if not 1 <= alphabet <= max_alphabet:
        raise ConfigError(f"{stage_id}: alphabet {alphabet} is outside 1..{max_alphabet}")
    symbols = np.asarray(stream.array).reshape(-1)
    if symbols.size == 0:
        return symbols.astype(symbol_dtype(alphabet))
    if symbols.dtype.kind not in "ui":
        raise ConfigError(f"{stage_id}: symbols must be integers, got {symbols.dtype}")
    if (symbols.dtype.kind == "i" and int(symbols.min()) < 0) or int(symbols.max()) >= alphabet:
        raise ConfigError(f"{stage_id}: symbols must lie in 0..{alphabet - 1}")
    return symbols.astype(symbol_dtype(alphabet), copy=False)


def declared_symbols(stage_id: str, meta: object, data: bytes, max_alphabet: int) -> tuple[int, int, np.dtype]:
    """An entropy decoder's `count` and `alphabet` from its meta, checked (FormatError naming the stage), the count
    checked against the decode bound before anything is allocated (FORMAT.md 8), and an empty stream for 0 symbols;
    returns (count, alphabet, symbol_dtype(alphabet))."""
    from dcframe.core.errors import FormatError
    from dcframe.core.orchestrator import check_output

    count, alphabet = (meta.get("count"), meta.get("alphabet")) if isinstance(meta, dict) else (None, None)
    if isinstance(alphabet, bool) or not isinstance(alphabet, int) or not 1 <= alphabet <= max_alphabet:
        raise FormatError(f"{stage_id}: bad alphabet {alphabet!r} in metadata (must be 1..{max_alphabet})")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise FormatError(f"{stage_id}: bad count {count!r} in metadata")
    dtype = symbol_dtype(alphabet)
    check_output(stage_id, count * dtype.itemsize, "declared count")  # where the size is declared
    if count == 0 and len(data):
        raise FormatError(f"{stage_id}: {len(data)} bytes for 0 symbols (the stream must be empty)")
    return count, alphabet, dtype


def symbol_width(alphabet: int) -> int:
    """The smallest of 1, 2, 4 or 8 bytes that holds every symbol below `alphabet`."""
    for width in (1, 2, 4, 8):
        if alphabet <= 1 << (8 * width):
            return width
    raise ValueError(f"alphabet {alphabet} exceeds 2^64")
