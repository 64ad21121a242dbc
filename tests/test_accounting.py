"""Size accounting: reported bytes per tensor, per stream and overhead add up exactly to the file; per-stage sizes
are what each stage really produced."""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import dense_tensors, lossless_chains

import dcframe
from dcframe.core.container import Container
from dcframe.core.orchestrator import run_steps
from dcframe.core.pipeline import ROOT, build_chain, parse_pipeline
from dcframe.core.streams import COUNT_BLOCK, symbol_counts


@given(tensors=st.lists(dense_tensors(), min_size=1, max_size=4), pipeline=lossless_chains,
       chunk=st.sampled_from([3, 1 << 24]))
def test_reported_sizes_add_up_to_the_file(tmp_path_factory, tensors, pipeline, chunk):
    path = tmp_path_factory.mktemp("acc") / "m.dcf"
    named = {f"t{i}": t for i, t in enumerate(tensors)}
    report = dcframe.compress(named, path, pipeline=pipeline, chunk_size=chunk)
    size = os.path.getsize(path)
    assert report["compressed_bytes"] == size
    assert sum(t["compressed_bytes"] for t in report["tensors"]) + report["overhead_bytes"] == size
    with Container(path) as c:
        for t in report["tensors"]:
            real = {name: len(data) for name, data in c.streams(t["name"]).items()}
            assert t["streams"] == real
            assert t["record_overhead_bytes"] == t["compressed_bytes"] - sum(real.values())
    assert report["original_bytes"] == sum(t.array.nbytes for t in tensors)


@given(tensor=dense_tensors(dtypes=("F32", "F16", "BF16", "I32")), pipeline=lossless_chains)
def test_stage_sizes_are_what_each_stage_produced(tmp_path_factory, tensor, pipeline):
    path = tmp_path_factory.mktemp("acc") / "m.dcf"
    report = dcframe.compress({"t": tensor}, path, pipeline=pipeline)
    chain = build_chain(parse_pipeline(pipeline))
    streams = {ROOT: tensor}
    expected = []
    for step in chain.steps:
        run_steps([step], streams)
        expected.append({name: s.nbytes for name, s in streams.items()})
    assert report["tensors"][0]["stage_bytes"] == expected
    assert expected[-1] == report["tensors"][0]["streams"]


def test_entropy_of_one_symbol_is_plus_zero_and_infinities_do_not_warn(tmp_path, recwarn):
    import math

    import numpy as np

    from dcframe.core.orchestrator import order0_entropy_bits

    bits = order0_entropy_bits(np.zeros(10, np.uint8), 4)
    assert bits == 0.0 and math.copysign(1, bits) == 1.0
    assert order0_entropy_bits(np.array([0, 1, 1, 1], np.uint8), 2) == 4 * (-(0.25 * math.log2(0.25))
                                                                            - 0.75 * math.log2(0.75))
    tensor = np.array([np.inf, -np.inf, 1.0, -2.0, 0.5, 3.0], np.float32)
    dcframe.compress({"t": tensor}, tmp_path / "m.dcf", pipeline="prune(sparsity=0.3) | zstd")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int64])
@pytest.mark.parametrize("count", [0, 5, COUNT_BLOCK, COUNT_BLOCK + 1, 3 * COUNT_BLOCK + 7])
def test_symbol_counts_match_one_bincount_across_blocks(dtype, count):
    """symbol_counts (the entropy statistics' histogram) counts block by block: the same as one np.bincount, with
    the symbols of the last block alone above the others' (the result grows to the largest symbol)."""
    rng = np.random.default_rng(count)
    symbols = rng.integers(0, 40, count).astype(dtype)
    if count > COUNT_BLOCK:
        symbols[-1] = 300 if dtype != np.uint8 else 255
    expected = np.bincount(symbols.astype(np.int64), minlength=7)
    assert symbol_counts(symbols, minlength=7).tolist() == expected.tolist()
