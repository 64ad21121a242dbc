"""The `raw` serializer: dense or symbol streams to plain little-endian bytes."""

from __future__ import annotations

import numpy as np

from dcframe import Bytes, Dense, FormatError, Stage, Symbols, check_shape, hookimpl, numpy_dtype, symbol_width

MAX_ALPHABET = 1 << 32


class Raw(Stage):
    """Store a dense tensor as its C-order little-endian bytes, or symbols as 1/2/4-byte unsigned integers."""

    id = "raw"
    takes = ("dense", "symbols")
    gives = {"data": "bytes"}

    def encode(self, stream):
        if isinstance(stream, Dense):
            meta = {"dtype": stream.dtype, "shape": list(stream.array.shape)}
            return {"data": Bytes(stream.array.tobytes())}, meta
        if stream.alphabet > MAX_ALPHABET:
            raise FormatError(f"raw: alphabet {stream.alphabet} exceeds 2^32")
        width = symbol_width(stream.alphabet)
        data = stream.array.astype(f"<u{width}").tobytes()
        return {"data": Bytes(data)}, {"alphabet": int(stream.alphabet)}

    def decode(self, streams, meta):
        data = streams["data"].data
        if "dtype" in meta:
            return _dense(data, meta)
        alphabet = meta.get("alphabet")
        if isinstance(alphabet, bool) or not isinstance(alphabet, int) or not 0 < alphabet <= MAX_ALPHABET:
            raise FormatError(f"raw: bad alphabet {alphabet!r}")
        width = symbol_width(alphabet)
        if len(data) % width:
            raise FormatError(f"raw: {len(data)} bytes is not a whole number of {width}-byte symbols")
        symbols = np.frombuffer(data, dtype=f"<u{width}")
        if symbols.size and int(symbols.max()) >= alphabet:
            raise FormatError(f"raw: symbol {int(symbols.max())} is outside the alphabet of {alphabet}")
        return Symbols(symbols, alphabet)


def _dense(data: bytes, meta: dict) -> Dense:
    """A dense stream from its bytes: the length must match the shape, and BOOL bytes must be 0 or 1."""
    dtype = numpy_dtype(meta["dtype"])
    shape = meta.get("shape")
    count = check_shape("raw", shape)
    if count * dtype.itemsize != len(data):
        raise FormatError(f"raw: shape {shape} of {meta['dtype']} needs {count * dtype.itemsize} bytes, "
                          f"the stream has {len(data)}")
    if meta["dtype"] == "BOOL" and count and int(np.frombuffer(data, np.uint8).max()) > 1:
        raise FormatError(f"raw: BOOL byte {int(np.frombuffer(data, np.uint8).max())} (only 0 and 1 are booleans)")
    return Dense(np.frombuffer(data, dtype=dtype).reshape(shape), meta["dtype"])


@hookimpl
def dcframe_stages():
    return [Raw]
