"""The three kinds of stream a tensor travels as between stages: dense, symbols and bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import dtypes

DENSE = "dense"
SYMBOLS = "symbols"
BYTES = "bytes"
KINDS = (DENSE, SYMBOLS, BYTES)


@dataclass(frozen=True, eq=False)
class Dense:
    """A tensor of numbers with its dtype name; BF16 is carried as uint16 bit patterns."""

    array: np.ndarray
    dtype: str
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
        """A new Dense of the same dtype holding `values` (rounded to the dtype)."""
        return Dense(np.asarray(dtypes.from_float(values, self.dtype), order="C"), self.dtype)

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


def symbol_width(alphabet: int) -> int:
    """The smallest of 1, 2, 4 or 8 bytes that holds every symbol below `alphabet`."""
    for width in (1, 2, 4, 8):
        if alphabet <= 1 << (8 * width):
            return width
    raise ValueError(f"alphabet {alphabet} exceeds 2^64")
