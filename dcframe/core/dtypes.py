"""Tensor dtype names (safetensors' spelling) and their numpy equivalents, bfloat16 included."""

from __future__ import annotations

import numpy as np

from dcframe.core.errors import FormatError

# safetensors name -> numpy dtype that carries the bytes (BF16 travels as its uint16 bit pattern).
_NUMPY = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
DTYPE_NAMES = tuple(_NUMPY)


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype that holds a tensor of dtype `name`."""
    try:
        return _NUMPY[name]
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}") from None


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype (uint16 maps to U16, never to BF16)."""
    dtype = np.dtype(dtype)
    for name, candidate in _NUMPY.items():
        if name != "BF16" and candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return name
    raise FormatError(f"numpy dtype {dtype} is not supported; supported: {', '.join(DTYPE_NAMES)}")


def is_float(name: str) -> bool:
    """True for the floating-point dtypes that lossy stages may approximate."""
    return name in FLOAT_DTYPES


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 bit patterns, to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype("<u2")
    return rounded


def to_float(array: np.ndarray, name: str) -> np.ndarray:
    """The numeric values of a float tensor as a float array (float32 for BF16 and F16, else as is)."""
    if name == "BF16":
        return bf16_to_f32(array)
    if name == "F16":
        return array.astype("<f4")
    return array


def from_float(values: np.ndarray, name: str) -> np.ndarray:
    """Cast computed float values back to the carrier array of dtype `name`."""
    if name == "BF16":
        return f32_to_bf16(np.asarray(values, dtype="<f4"))
    return np.asarray(values).astype(numpy_dtype(name))
