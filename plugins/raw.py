"""The `raw` serializer: dense or symbol streams to plain little-endian bytes."""

from __future__ import annotations

import math

import numpy as np

from dcframe import Bytes, Dense, FormatError, Stage, Symbols, hookimpl, numpy_dtype, symbol_width

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
            dtype = numpy_dtype(meta["dtype"])
            shape = meta.get("shape")
            if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise FormatError(f"raw: bad shape {shape!r}")
            if math.prod(shape) * dtype.itemsize != len(data):
                raise FormatError(f"raw: shape {shape} of {meta['dtype']} needs "
                                  f"{math.prod(shape) * dtype.itemsize} bytes, the stream has {len(data)}")
            return Dense(np.frombuffer(data, dtype=dtype).reshape(shape), meta["dtype"])
        alphabet = meta.get("alphabet")
        if not isinstance(alphabet, int) or not 0 < alphabet <= MAX_ALPHABET:
            raise FormatError(f"raw: bad alphabet {alphabet!r}")
        width = symbol_width(alphabet)
        if len(data) % width:
            raise FormatError(f"raw: {len(data)} bytes is not a whole number of {width}-byte symbols")
        symbols = np.frombuffer(data, dtype=f"<u{width}")
        if symbols.size and int(symbols.max()) >= alphabet:
            raise FormatError(f"raw: symbol {int(symbols.max())} is outside the alphabet of {alphabet}")
        return Symbols(symbols, alphabet)


@hookimpl
def dcframe_stages():
    return [Raw]
