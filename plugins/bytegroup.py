"""The `bytegroup` stage: a dense tensor as byte planes, the exponent on a plane of its own (lossless, bit-exact).

Layout (spec/stages/bytegroup.md): every element is read as a w-byte little-endian unsigned integer; a float's is
rotated left by one bit (sign to the bottom), so its top byte holds exponent bits only. The top byte of every element
is the `exponent` stream (symbols, alphabet 256: an entropy coder such as rans or huffman codes it); the other planes,
most significant first, one after another, are the `mantissa` stream (bytes: zstd if they compress, else stored as
they are). Integers are not rotated: their `exponent` plane is the most significant byte.
"""

from __future__ import annotations

import numpy as np

from dcframe import Bytes, Dense, FormatError, Stage, Symbols, check_output, check_shape, hookimpl, numpy_dtype
from dcframe.core.dtypes import is_float

ALPHABET = 256  # the exponent plane's symbols are bytes


def _rotate(words: np.ndarray, left: bool) -> np.ndarray:
    """Unsigned words rotated by one bit: left moves the sign bit to the bottom, right moves it back."""
    bits = 8 * words.dtype.itemsize
    one, rest = np.array(1, words.dtype), np.array(bits - 1, words.dtype)
    return (words << one) | (words >> rest) if left else (words >> one) | (words << rest)


def split_planes(array: np.ndarray, dtype: str) -> np.ndarray:
    """The (w, n) byte planes of a tensor's C-order elements, most significant first, floats rotated left by one."""
    flat = np.ascontiguousarray(array).reshape(-1)
    width = flat.dtype.itemsize
    words = flat.view(f"<u{width}") if width > 1 else flat.view(np.uint8)
    if width > 1 and is_float(dtype):
        words = _rotate(words, left=True)
    return np.ascontiguousarray(words.view(np.uint8).reshape(-1, width)[:, ::-1].T)


def join_planes(planes: np.ndarray, dtype: str) -> np.ndarray:
    """Invert split_planes: the flat elements (as numpy_dtype(dtype)) from their (w, n) byte planes."""
    width, count = planes.shape
    rows = np.empty((count, width), dtype=np.uint8)
    rows[:] = planes[::-1].T
    words = rows.reshape(-1).view(f"<u{width}") if width > 1 else rows.reshape(-1)
    if width > 1 and is_float(dtype):
        words = _rotate(words, left=False)
    return words.view(numpy_dtype(dtype))


class ByteGroup(Stage):
    """Byte planes: `exponent` (the top byte of each element, floats rotated so it is all exponent) and `mantissa`.

    No parameters. Chains: `bytegroup | rans` (exponent entropy coded, mantissa stored), `bytegroup | zstd | rans`
    (mantissa planes through zstd too: a stage applies to the streams of the kind it takes).
    """

    id = "bytegroup"
    takes = ("dense",)
    gives = {"exponent": "symbols", "mantissa": "bytes"}

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols | Bytes], dict]:
        planes = split_planes(stream.array, stream.dtype)
        exponent = Symbols(planes[0], ALPHABET)
        return {"exponent": exponent, "mantissa": Bytes(planes[1:].tobytes())}, \
            {"dtype": stream.dtype, "shape": list(stream.array.shape)}

    def decode(self, streams: dict[str, Symbols | Bytes], meta: dict) -> Dense:
        """Check dtype, shape and both streams' sizes before allocating the tensor, then interleave the planes."""
        if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str):
            raise FormatError(f"bytegroup: metadata needs a dtype name, got {meta!r}")
        dtype, shape = meta["dtype"], meta.get("shape")
        width = numpy_dtype(dtype).itemsize
        count = check_shape(self.id, shape)
        exponent, mantissa = _streams(streams)
        if exponent.size != count:
            raise FormatError(f"bytegroup: exponent plane has {exponent.size} bytes, shape {shape} needs {count}")
        if len(mantissa) != count * (width - 1):
            raise FormatError(f"bytegroup: mantissa planes have {len(mantissa)} bytes, shape {shape} of {dtype} "
                              f"needs {count * (width - 1)}")
        check_output(self.id, count * width, f"tensor of shape {shape}")
        if count and int(exponent.max()) > (1 if dtype == "BOOL" else ALPHABET - 1):
            raise FormatError(f"bytegroup: exponent symbol {int(exponent.max())} is not a byte of a {dtype} tensor")
        planes = np.empty((width, count), dtype=np.uint8)
        planes[0] = exponent
        planes[1:] = np.frombuffer(mantissa, dtype=np.uint8).reshape(width - 1, count)
        return Dense(join_planes(planes, dtype).reshape(shape), dtype)


def _streams(streams: dict[str, Symbols | Bytes]) -> tuple[np.ndarray, bytes]:
    """The exponent symbols (1-D integers of alphabet 256, none negative) and the mantissa bytes, kinds checked."""
    exponent, mantissa = streams.get("exponent"), streams.get("mantissa")
    if not isinstance(exponent, Symbols) or not isinstance(mantissa, Bytes):
        raise FormatError("bytegroup: needs a symbols stream 'exponent' and a bytes stream 'mantissa'")
    if exponent.alphabet != ALPHABET:
        raise FormatError(f"bytegroup: exponent alphabet is {exponent.alphabet}, must be {ALPHABET}")
    symbols = np.asarray(exponent.array)
    if symbols.ndim != 1 or symbols.dtype.kind not in "ui":
        raise FormatError("bytegroup: exponent must be a 1-D integer array")
    if symbols.size and symbols.dtype.kind == "i" and int(symbols.min()) < 0:
        raise FormatError(f"bytegroup: exponent symbol {int(symbols.min())} is negative")
    return symbols, mantissa.data


@hookimpl
def dcframe_stages():
    return [ByteGroup]
