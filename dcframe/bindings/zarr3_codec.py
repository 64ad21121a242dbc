"""The numcodecs codec "dcframe" as a Zarr format 3 array -> bytes codec, named "numcodecs.dcframe" in zarr's registry.

Zarr 3 finds numcodecs codecs in format 3 arrays only through zarr-side wrappers; zarr.codecs.numcodecs (zarr >=
3.1.3) provides the base class, and the entry point ``zarr.codecs: numcodecs.dcframe`` (the extra ``dcframe[zarr]``)
registers this one, so ``zarr.open_array`` reads such arrays without importing dcframe first. Give it as the array's
serializer: ``zarr.create_array(..., serializer=DcframeZarr3(pipeline="kmeans(bits=8) | huffman", dtype="<f4"),
compressors=None)``. The configuration is DcframeCodec's (dcframe.bindings.numcodecs_codec) without its id.
"""

from __future__ import annotations

from typing import Any

from zarr.codecs.numcodecs import _NumcodecsArrayBytesCodec


class DcframeZarr3(_NumcodecsArrayBytesCodec, codec_name="dcframe"):
    """A dcframe pipeline serializing each Zarr 3 chunk as a one-tensor .dcf container (see DcframeCodec)."""

    def __init__(self, **codec_config: Any) -> None:
        super().__init__(**codec_config)
        self._codec  # noqa: B018  (builds the DcframeCodec now: a bad pipeline fails here, not at the first write)


__all__ = ["DcframeZarr3"]
