"""Hypothesis strategies shared by the tests: tensors of every dtype, with special values, any shape."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dcframe import Dense
from dcframe.core.dtypes import DTYPE_NAMES, numpy_dtype

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def dense_tensors(draw, dtypes=DTYPE_NAMES, shape=shapes) -> Dense:
    """Any tensor: raw random bit patterns (so NaN payloads, inf, -0.0, subnormals all occur), maybe non-contiguous."""
    dtype = draw(st.sampled_from(dtypes))
    carrier = numpy_dtype(dtype)
    shp = draw(shape)
    nbytes = int(np.prod(shp, dtype=np.int64)) * carrier.itemsize
    raw = draw(st.binary(min_size=nbytes, max_size=nbytes))
    array = np.frombuffer(raw, dtype=carrier.newbyteorder("<") if carrier.itemsize > 1 else carrier).reshape(shp)
    if dtype == "BOOL":
        array = array.view(np.uint8) & 1
        array = array.astype(bool)
    if array.ndim >= 1 and array.shape[-1] > 1 and draw(st.booleans()):
        array = array[..., ::2]  # a non-contiguous view
    if dtype in ("F32", "F64", "F16") and array.size and draw(st.booleans()):
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, np.finfo(carrier).tiny / 2], dtype=carrier)
        array = np.array(array)
        flat = array.reshape(-1)
        flat[: len(specials)] = specials[: flat.size]
    return Dense(array, dtype)


generic_chains = st.lists(st.sampled_from(["zlib(level=1)", "zstd(level=3)", "lzma(preset=0)", "bz2(level=1)"]),
                          max_size=2).map(lambda parts: " | ".join(["raw", *parts]))
# lossless chains through the Deep Compression storage stages too: sparse positions, Huffman-coded, then a codec
storage_chains = st.tuples(st.sampled_from([1, 3, 5, 8]), st.sampled_from(["", " | zstd(level=3)", " | zlib(level=1)"]),
                           st.sampled_from([4, 12, 16])).map(
    lambda p: f"sparse(index_bits={p[0]}) | huffman(max_bits={p[2]}, segment_size=7){p[1]}")
lossless_chains = st.one_of(generic_chains, storage_chains)


@st.composite
def symbol_arrays(draw):
    """Symbol streams for entropy coders: (array, alphabet), uniform, skewed or of few distinct values."""
    alphabet = draw(st.one_of(st.integers(1, 8), st.integers(1, 300), st.sampled_from([255, 256, 257, 4096, 65536])))
    n = draw(st.integers(0, 3000))
    kind = draw(st.sampled_from(["uniform", "skewed", "few"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        array = rng.integers(0, alphabet, n)
    elif kind == "skewed":
        array = np.minimum(rng.geometric(draw(st.floats(0.01, 0.99)), n) - 1, alphabet - 1)
    else:
        array = rng.choice(rng.integers(0, alphabet, draw(st.integers(1, 3))), n)
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.uint32, np.int64])) if alphabet <= 256 else np.uint16
    return array.astype(dtype), alphabet
