"""Laws every stage keeps, written once so any stage (a third-party one too) can be run through them in its tests.

    from dcframe.testing import check_stage
    check_stage(MyStage(level=3), Bytes(b"..."))
"""

from __future__ import annotations

import random

import msgpack
import numpy as np

from dcframe.core.errors import DcfError
from dcframe.core.stage import Stage
from dcframe.core.streams import Bytes, Dense, Stream, Symbols


def stream_bytes(stream: Stream) -> tuple:
    """A comparable, bit-exact identity of a stream (kind, dtype/alphabet, shape, raw bytes)."""
    if isinstance(stream, Dense):
        return ("dense", stream.dtype, stream.array.shape, np.ascontiguousarray(stream.array).tobytes())
    if isinstance(stream, Symbols):
        return ("symbols", stream.alphabet, stream.array.shape, stream.array.astype(np.uint64).tobytes())
    return ("bytes", bytes(stream.data))


def check_config(stage: Stage) -> None:
    """get_config() is plain msgpack data and from_config() rebuilds an equal stage."""
    config = msgpack.unpackb(msgpack.packb(stage.get_config(), use_bin_type=True), raw=False)
    rebuilt = type(stage).from_config(config)
    assert rebuilt.get_config() == stage.get_config(), (rebuilt.get_config(), stage.get_config())


def encode_decode(stage: Stage, stream: Stream) -> tuple[dict[str, Stream], dict, Stream]:
    """Encode, pass the meta through msgpack as a container would, decode; check declared output kinds."""
    outputs, meta = stage.encode(stream)
    assert list(outputs) == list(stage.gives), (list(outputs), stage.gives)
    for name, out in outputs.items():
        assert out.kind == stage.gives[name], (name, out.kind)
    meta = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False)
    return outputs, meta, stage.decode(dict(outputs), meta)


def check_roundtrip(stage: Stage, stream: Stream) -> Stream:
    """Lossless stages give back the exact input. Lossy ones that impose a constraint for retraining (shared,
    zeros) are idempotent on their own output, which the retraining loop relies on; the others (a trellis search)
    must encode their own output again, to a stream of the same kind."""
    assert stream.kind in stage.takes
    _, _, decoded = encode_decode(stage, stream)
    assert decoded.kind == stream.kind
    if not stage.lossy:
        assert stream_bytes(decoded) == stream_bytes(stream)
    else:
        _, _, again = encode_decode(stage, with_side(decoded, stream))
        assert again.kind == decoded.kind
        if stage.imposes:
            assert stream_bytes(again) == stream_bytes(decoded), "lossy stage is not idempotent on its output"
    return decoded


def with_side(decoded: Stream, original: Stream) -> Stream:
    """The decoded stream with the original's side inputs, as the encoder sees it when a chain is re-encoded (after
    retraining): a data-aware stage gets the same calibration for the same tensor."""
    if isinstance(decoded, Dense) and isinstance(original, Dense) and original.side \
            and decoded.array.shape == original.array.shape:
        return Dense(decoded.array, decoded.dtype, original.side)
    return decoded


def check_hostile(stage: Stage, stream: Stream, cases: int = 50, seed: int = 0) -> None:
    """Mutated streams decode to something or raise DcfError, never another exception."""
    outputs, meta, _ = encode_decode(stage, stream)
    rng = random.Random(seed)
    for _ in range(cases):
        mutated = dict(outputs)
        name = rng.choice(list(mutated))
        target = mutated[name]
        if isinstance(target, Bytes) and target.data:
            data = bytearray(target.data)
            op = rng.randrange(3)
            if op == 0:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[rng.randrange(len(data)):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
            mutated[name] = Bytes(bytes(data))
        try:
            stage.decode(mutated, meta)
        except DcfError:
            pass


def check_stage(stage: Stage, stream: Stream) -> None:
    """Run every law: config round trip, encode/decode round trip (or idempotence), hostile input."""
    check_config(stage)
    check_roundtrip(stage, stream)
    check_hostile(stage, stream)
