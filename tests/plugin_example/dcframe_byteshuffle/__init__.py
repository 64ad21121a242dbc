"""An example stage from a separate distribution: byte planes of fixed-size items (helps zstd on floats)."""

import numpy as np

from dcframe import Bytes, FormatError, Stage, hookimpl


class ByteShuffle(Stage):
    """Regroup bytes so that byte k of every `itemsize`-byte item is stored together; lossless."""

    id = "byteshuffle"
    takes = ("bytes",)
    gives = {"data": "bytes"}

    def __init__(self, itemsize: int = 4):
        if not isinstance(itemsize, int) or not 1 <= itemsize <= 16:
            raise ValueError("itemsize must be 1 to 16")
        self.itemsize = itemsize

    def encode(self, stream):
        data = np.frombuffer(stream.data, np.uint8)
        body = len(data) - len(data) % self.itemsize
        planes = data[:body].reshape(-1, self.itemsize).T.tobytes()
        return {"data": Bytes(planes + data[body:].tobytes())}, {}

    def decode(self, streams, meta):
        data = np.frombuffer(streams["data"].data, np.uint8)
        body = len(data) - len(data) % self.itemsize
        if body % self.itemsize:
            raise FormatError("byteshuffle: bad length")
        items = data[:body].reshape(self.itemsize, -1).T.tobytes()
        return Bytes(items + data[body:].tobytes())


@hookimpl
def dcframe_stages():
    return [ByteShuffle]
