"""dcframe chains as a numcodecs codec, so Zarr arrays (and anything else that takes numcodecs codecs) can use them.

``DcframeCodec(pipeline="kmeans(bits=8) | huffman", dtype="<f4")`` encodes one chunk buffer as a complete one-tensor
.dcf container (spec/FORMAT.md): the stage ids, versions and configs, the codebook and code lengths, the checksums.
Decoding therefore needs only the bytes, and every check the container reader makes on an untrusted file (bounded
sizes, checksums, exact Huffman bit consumption) protects a chunk too. The overhead is a few hundred bytes a chunk.

Config (plain JSON, numcodecs' get_config/from_config): ``{"id": "dcframe", "pipeline": str, "dtype": str,
"shape": list | None}``. `dtype` is a numpy dtype string; chunks arrive as untyped buffers, so it says how to read
them. `shape`, if given, is the shape each chunk is encoded with (for stages that look at rows); else chunks are 1-D.
The codec is registered under numcodecs' entry-point group ``numcodecs.codecs`` as "dcframe" (the extra
``dcframe[zarr]``), so ``numcodecs.get_codec({"id": "dcframe", ...})`` and Zarr format 2 arrays find it; Zarr format 3
arrays use it through dcframe.bindings.zarr3_codec.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy

from dcframe.core.container import Container, ContainerWriter
from dcframe.core.errors import ConfigError, DcfError, FormatError
from dcframe.core.orchestrator import encode_tensor
from dcframe.core.pipeline import build_chain, parse_pipeline
from dcframe.core.registry import get_registry
from dcframe.core.streams import Dense

CHUNK = "chunk"  # the one tensor's name in a chunk's container


def _resolve(pipeline: str) -> str:
    """A single-rule preset's pipeline ("lossless", "han-fc"), or the pipeline string itself."""
    preset = get_registry().presets.get(pipeline.strip())
    if preset is None:
        return pipeline
    if len(preset["rules"]) != 1:
        raise ConfigError(f"codec 'dcframe': preset {pipeline!r} chooses by tensor name or rank; a chunk needs one "
                          f"pipeline (give a single-pipeline preset or a pipeline string)")
    return preset["rules"][0]["pipeline"]


class DcframeCodec(Codec):
    """A dcframe pipeline as a numcodecs codec: each chunk becomes a one-tensor .dcf container.

    Parameters: `pipeline`, a dcframe pipeline string ("kmeans(bits=8) | huffman", "sparse | huffman", "zstd"; lossy
    stages decode to their approximation) or a single-pipeline preset ("lossless", "han-fc"); `dtype`, the numpy
    dtype of the chunk's elements; `shape`, the shape to encode each chunk with (optional; a chunk must then hold
    exactly that many elements).
    """

    codec_id = "dcframe"

    def __init__(self, pipeline: str = "zstd", dtype: str = "<f4", shape: Sequence[int] | None = None) -> None:
        try:
            numpy_type = np.dtype(dtype)
        except TypeError as exc:
            raise ConfigError(f"codec 'dcframe': dtype {dtype!r} is not a numpy dtype ({exc})") from None
        if numpy_type.kind not in "biuf":
            raise ConfigError(f"codec 'dcframe': dtype {numpy_type.str} is not a bool, integer or float type")
        self.pipeline = str(pipeline)
        self.dtype = numpy_type.str
        self.shape = None if shape is None else [int(n) for n in shape]
        if self.shape is not None and any(n < 0 for n in self.shape):
            raise ConfigError(f"codec 'dcframe': shape {self.shape} has a negative dimension")
        self._chain = build_chain(parse_pipeline(_resolve(self.pipeline)))  # a bad one fails here, in dcframe's words

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "pipeline": self.pipeline, "dtype": self.dtype, "shape": self.shape}

    def __repr__(self) -> str:
        return f"DcframeCodec(pipeline={self.pipeline!r}, dtype={self.dtype!r}, shape={self.shape!r})"

    def _little(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")  # one-byte types keep "|"

    def encode(self, buf: Any) -> bytes:
        """The chunk's elements (read as `dtype`) through the pipeline, as the bytes of a one-tensor container."""
        data = ensure_contiguous_ndarray(buf).reshape(-1).view(np.uint8)
        itemsize = np.dtype(self.dtype).itemsize
        if data.size % itemsize:
            raise ConfigError(f"codec 'dcframe': a chunk of {data.size} bytes is not a whole number of "
                              f"{self.dtype} elements")
        array = data.view(self.dtype).astype(self._little(), copy=False)
        if self.shape is not None:
            if array.size != math.prod(self.shape):
                raise ConfigError(f"codec 'dcframe': a chunk of {array.size} elements does not fit shape {self.shape}")
            array = array.reshape(self.shape)
        encoded = encode_tensor(CHUNK, Dense.of(array), self._chain, stats=False)
        with tempfile.TemporaryDirectory(prefix="dcframe-codec-") as folder:
            path = Path(folder) / "chunk.dcf"
            with ContainerWriter(path) as writer:
                writer.add(encoded)
            return path.read_bytes()

    def decode(self, buf: Any, out: Any = None) -> Any:
        """The chunk's elements as a 1-D `dtype` array (or copied into `out`), from encode's bytes."""
        data = ensure_contiguous_ndarray(buf).reshape(-1).view(np.uint8)
        if out is not None:
            out = ensure_contiguous_ndarray(out)  # TypeError for object arrays, before any work
        with tempfile.TemporaryDirectory(prefix="dcframe-codec-") as folder:
            path = Path(folder) / "chunk.dcf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data.tobytes())
            try:
                with Container(path) as container:
                    if container.names != [CHUNK]:
                        raise FormatError(f"a chunk holds tensors {container.names[:3]}, expected one named {CHUNK!r}")
                    dense = container.read(CHUNK)
            except DcfError as exc:  # the message names the temporary file: name the codec instead
                raise type(exc)(f"codec 'dcframe': {str(exc).replace(f'{path}: ', '')}") from None
        if dense.array.dtype != self._little():
            raise FormatError(f"codec 'dcframe': the chunk holds {dense.dtype} elements, the codec's dtype is "
                              f"{self.dtype}")
        result = dense.array.reshape(-1).astype(self.dtype, copy=False)
        return ndarray_copy(result, out)


__all__ = ["DcframeCodec"]
