"""The `sparse` stage: Deep Compression's relative-index storage of a pruned tensor (lossless, bit-exact).

Positions (spec/stages/sparse.md): the C-order flattened tensor's stored elements (bit pattern not all zero) are
written as the gaps between them, one symbol each; a gap larger than M = 2^index_bits - 1 is preceded by filler
symbols 0, each advancing M positions without a value. Values hold exactly the stored elements, no filler values.
"""

from __future__ import annotations

import numpy as np

from dcframe import Dense, FormatError, Stage, Symbols, check_output, check_shape, hookimpl, numpy_dtype

MAX_ELEMENTS = 1 << 40  # refuse shapes no real tensor has before allocating (the container bounds it further)
CHUNK = 1 << 20  # position symbols walked at a time: their int64 temporaries stay a few MiB


def _bit_view(array: np.ndarray) -> np.ndarray:
    """The flat C-order elements as unsigned integers of the same width: zero exactly for +0.0 / integer 0."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(f"<u{flat.dtype.itemsize}") if flat.dtype.itemsize > 1 else flat.view(np.uint8)


class Sparse(Stage):
    """Relative-index sparse storage: `positions` (gaps < 2^index_bits, 0 = filler) and `values` (stored elements).

    Parameters: `index_bits` (1-16, default 5; the paper uses 8 for conv layers, 5 for fully connected ones).
    """

    id = "sparse"
    takes = ("dense",)
    gives = {"positions": "symbols", "values": "dense"}

    def __init__(self, index_bits: int = 5):
        if isinstance(index_bits, bool) or not isinstance(index_bits, int) or not 1 <= index_bits <= 16:
            raise ValueError(f"index_bits must be an integer from 1 to 16, got {index_bits!r}")
        self.index_bits = index_bits

    @property
    def alphabet(self) -> int:
        return 1 << self.index_bits

    def encode(self, stream: Dense) -> tuple[dict[str, Symbols | Dense], dict]:
        span = self.alphabet - 1  # M: the largest gap one symbol can express, and a filler's advance
        flat = np.ascontiguousarray(stream.array).reshape(-1)
        stored = np.flatnonzero(_bit_view(flat))
        gaps = np.diff(stored, prepend=-1)  # >= 1; the position before the first element is -1
        fillers = (gaps - 1) // span
        ends = np.cumsum(fillers + 1) - 1  # where each gap's own symbol lands, after its fillers
        positions = np.zeros(int(ends[-1]) + 1 if ends.size else 0, dtype=np.uint8 if span < 256 else np.uint16)
        positions[ends] = gaps - fillers * span  # in 1..M; every other slot stays 0 (filler)
        values = stream.select(stored)  # carries element-aligned side inputs on to a data-aware kmeans
        return {"positions": Symbols(positions, self.alphabet), "values": values}, {"shape": list(stream.array.shape)}

    def decode(self, streams: dict[str, Symbols | Dense], meta: dict) -> Dense:
        """Check everything against the shape and the decode bound first, then place the values CHUNK symbols at a
        time: memory is the output plus O(CHUNK), whatever the length of the positions stream."""
        size = check_shape(self.id, meta.get("shape") if isinstance(meta, dict) else None)
        shape = meta["shape"]
        if size > MAX_ELEMENTS:
            raise FormatError(f"sparse: shape {shape} has {size} elements, more than the limit of {MAX_ELEMENTS}")
        symbols, vals = self._streams(streams)
        check_output(self.id, size * vals.dtype.itemsize, f"tensor of shape {shape}")  # before allocating it
        last = self._last_position(symbols, vals.size)
        if last >= size:
            raise FormatError(f"sparse: positions reach element {last}, the tensor of shape {shape} has {size}")
        out = np.zeros(size, dtype=vals.dtype)
        span, base, done = self.alphabet - 1, -1, 0  # base: the position before this chunk's first symbol
        for lo in range(0, symbols.size, CHUNK):
            advances = symbols[lo:lo + CHUNK].astype(np.int64)
            is_value = advances != 0
            advances[~is_value] = span
            where = np.cumsum(advances)
            where += base
            stored = where[is_value]
            out[stored] = vals[done:done + stored.size]
            done += stored.size
            base = int(where[-1])
        return Dense(out.reshape(shape), streams["values"].dtype)

    def _streams(self, streams: dict[str, Symbols | Dense]) -> tuple[np.ndarray, np.ndarray]:
        """The positions symbols and the values array, their kinds, alphabet, ranks and dtype checked."""
        positions, values = streams.get("positions"), streams.get("values")
        if not isinstance(positions, Symbols) or not isinstance(values, Dense):
            raise FormatError("sparse: needs a symbols stream 'positions' and a dense stream 'values'")
        if positions.alphabet != self.alphabet:
            raise FormatError(f"sparse: positions alphabet is {positions.alphabet}, "
                              f"index_bits={self.index_bits} needs {self.alphabet}")
        symbols = np.asarray(positions.array)
        if symbols.ndim != 1 or symbols.dtype.kind not in "ui":
            raise FormatError("sparse: positions must be a 1-D integer array")
        vals = np.asarray(values.array)
        if vals.ndim != 1:
            raise FormatError(f"sparse: values must be 1-D, got shape {list(vals.shape)}")
        if vals.dtype != numpy_dtype(values.dtype):
            raise FormatError(f"sparse: values array does not carry its dtype {values.dtype}")
        return symbols, vals

    def _last_position(self, symbols: np.ndarray, n_values: int) -> int:
        """Check the symbols (alphabet, no trailing filler, one per value) and return the last position they place,
        by reductions that allocate nothing in proportion to the stream."""
        if not symbols.size:
            if n_values:
                raise FormatError(f"sparse: positions name 0 stored elements, values hold {n_values}")
            return -1
        low, high = int(symbols.min()), int(symbols.max())
        if low < 0 or high >= self.alphabet:
            raise FormatError(f"sparse: position symbol {high if high >= self.alphabet else low} is outside "
                              f"the alphabet of {self.alphabet}")
        if symbols[-1] == 0:
            raise FormatError("sparse: positions end with a filler (an encoder never writes one)")
        count = int(np.count_nonzero(symbols))
        if count != n_values:
            raise FormatError(f"sparse: positions name {count} stored elements, values hold {n_values}")
        fillers = symbols.size - count
        return int(symbols.sum(dtype=np.int64)) + fillers * (self.alphabet - 1) - 1


@hookimpl
def dcframe_stages():
    return [Sparse]
