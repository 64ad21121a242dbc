"""Limits every stage decoder shares (issue 15): one dimension limit, dcframe.MAX_NDIM, from the container's record
to every stage's shape meta, and every declared output checked against the decode bound before it is allocated."""

from __future__ import annotations

import numpy as np
import pytest
from dcframe_plugins.kmeans import Kmeans
from dcframe_plugins.raw import Raw
from dcframe_plugins.sparse import Sparse

import dcframe
from dcframe import MAX_NDIM, Bytes, Dense, FormatError, LimitError, Limits, Symbols
from dcframe.core.orchestrator import _OUTPUT_LIMIT


def _kmeans_case(shape: list[int]) -> tuple[dict, dict]:
    count = int(np.prod(shape))
    meta = {"dtype": "F64", "shape": shape, "codebook": np.array([0.5, -1.0], "<f8").tobytes()}
    return {"indices": Symbols(np.zeros(count, np.uint8), 2)}, meta


def _sparse_case(shape: list[int]) -> tuple[dict, dict]:
    return {"positions": Symbols(np.array([1], np.uint8), 32), "values": Dense(np.ones(1, np.float32), "F32")}, \
        {"shape": shape}


def _raw_case(shape: list[int]) -> tuple[dict, dict]:
    return {"data": Bytes(np.zeros(int(np.prod(shape)), "<f4").tobytes())}, {"dtype": "F32", "shape": shape}


CASES = {"kmeans": (Kmeans(), _kmeans_case), "sparse": (Sparse(), _sparse_case), "raw": (Raw(), _raw_case)}


def test_the_container_uses_the_same_dimension_limit():
    assert MAX_NDIM == 32
    assert Limits().max_ndim == MAX_NDIM


@pytest.mark.parametrize("stage", CASES)
def test_every_stage_takes_32_dimensions_and_refuses_33(stage):
    """Issue 15: the limit was 32 for records and sparse, 64 for kmeans, none for raw."""
    decoder, case = CASES[stage]
    streams, meta = case([1] * MAX_NDIM)
    assert decoder.decode(streams, meta).array.shape == (1,) * MAX_NDIM
    streams, meta = case([1] * (MAX_NDIM + 1))
    with pytest.raises(FormatError, match=f"{stage}: bad shape"):
        decoder.decode(streams, meta)


@pytest.mark.parametrize("stage", CASES)
def test_booleans_in_a_shape_are_not_integers(stage):
    decoder, case = CASES[stage]
    streams, meta = case([1])
    with pytest.raises(FormatError, match="bad shape"):
        decoder.decode(streams, {**meta, "shape": [True]})


def test_kmeans_output_is_checked_against_the_decode_bound_before_the_lookup():
    """1-byte indices become 8-byte F64 values: the output can be 8x the stream, so it is checked before allocating."""
    import tracemalloc

    streams, meta = _kmeans_case([1 << 21])
    token = _OUTPUT_LIMIT.set(4 << 20)  # 2 MiB of indices is within it, 16 MiB of F64 output is not
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="kmeans"):
            Kmeans().decode(streams, meta)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
        _OUTPUT_LIMIT.reset(token)
    assert Kmeans().decode(streams, meta).array.nbytes == 16 << 20  # the default bound allows it


def test_a_stored_config_the_stage_rejects_makes_the_tensor_unreadable(tmp_path):
    """zstd(level=99) in a file: rejected (FormatError), although the decoder would not use the level."""
    from container_tools import join, split

    path = tmp_path / "z.dcf"
    dcframe.compress({"w": np.arange(10, dtype=np.float32)}, path, pipeline="zstd(level=3)")
    parts = split(path.read_bytes())
    parts.index["chains"][0][1]["config"]["level"] = 99
    path.write_bytes(join(parts))
    with dcframe.Container(path) as c, pytest.raises(FormatError, match="level"):
        c.read("w")


def test_hostile_stage_cases_get_past_the_container(tmp_path):
    """Every generator of tests/hostile/stage_cases.py builds a container that opens (valid checksums, tiling, limits),
    so what test_hostile runs under the memory bound reaches the stage decoders (decoding them is that test's job)."""
    from hostile.stage_cases import CASES

    assert len(CASES) >= 20
    for name, build in CASES.items():
        path = tmp_path / f"{name}.dcf"
        path.write_bytes(build())
        with dcframe.Container(path) as c:
            assert len(c.names) == 1, name
