"""Built-in presets: each expands to a valid chain, `han` picks per rank, and the Deep Compression chain round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from dcframe_plugins.presets import BYTEGROUP, HAN_CONV, HAN_FC, HAN_RANS_CONV, HAN_RANS_FC, LOSSLESS, QUANTIZE8
from hypothesis import given
from strategies import dense_tensors

from dcframe import Dense
from dcframe.core.orchestrator import roundtrip
from dcframe.core.pipeline import Policy, build_chain, parse_pipeline
from dcframe.core.registry import get_registry

PRESETS = ["lossless", "han-fc", "han-conv", "han", "han-rans", "quantize8"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_expands_to_valid_chains(name):
    preset = get_registry().presets[name]
    assert isinstance(preset["description"], str) and preset["description"]
    policy = Policy(preset=name)  # parses and type-checks every rule's pipeline
    for rule in preset["rules"]:
        chain = policy.chain_for_pipeline(rule["pipeline"])
        assert set(chain.final.values()) == {"bytes"}


def test_lossless_keeps_one_first_rule():
    assert get_registry().presets["lossless"]["rules"] == [{"pipeline": BYTEGROUP}]
    assert Policy(preset="han").lossless_pipeline() == BYTEGROUP


@given(dense_tensors())
def test_lossless_preset_is_bit_exact_for_every_dtype(dense):
    policy = Policy(preset="lossless")
    chain = policy.chain_for_pipeline(policy.pipeline_for("t", dense.array.shape, dense.dtype))
    out = roundtrip(chain, dense)
    assert (out.dtype, out.array.shape, out.array.tobytes()) == \
        (dense.dtype, dense.array.shape, np.ascontiguousarray(dense.array).tobytes())


def test_han_rans_is_han_with_rans_in_place_of_huffman():
    policy = Policy(preset="han-rans")
    assert HAN_RANS_FC == HAN_FC.replace("huffman", "rans") and HAN_RANS_CONV == HAN_CONV.replace("huffman", "rans")
    assert policy.pipeline_for("conv1.weight", (20, 1, 5, 5), "F32") == HAN_RANS_CONV
    assert policy.pipeline_for("fc1.weight", (300, 784), "F32") == HAN_RANS_FC
    assert policy.pipeline_for("fc1.bias", (300,), "F32") == LOSSLESS  # as han: less side information than BYTEGROUP


def test_han_picks_per_rank():
    policy = Policy(preset="han")
    assert policy.pipeline_for("conv1.weight", (20, 1, 5, 5), "F32") == HAN_CONV
    assert policy.pipeline_for("conv3d.weight", (8, 4, 3, 3, 3), "BF16") == HAN_CONV
    assert policy.pipeline_for("conv1d.weight", (8, 4, 3), "F16") == HAN_CONV
    assert policy.pipeline_for("fc1.weight", (300, 784), "F32") == HAN_FC
    assert policy.pipeline_for("fc1.bias", (300,), "F32") == LOSSLESS
    assert policy.pipeline_for("scale", (), "F32") == LOSSLESS
    assert policy.pipeline_for("embedding.index", (10, 10), "I64") == BYTEGROUP  # integers: the lossless preset


def test_single_chain_presets_apply_to_every_tensor():
    assert Policy(preset="han-fc").pipeline_for("x", (7,), "F32") == HAN_FC
    assert Policy(preset="han-conv").pipeline_for("x", (3, 3), "F32") == HAN_CONV
    assert Policy(preset="quantize8").pipeline_for("x", (3, 3, 3, 3), "F64") == QUANTIZE8


@pytest.mark.parametrize("pipeline, dtype", [(HAN_FC, "F32"), (HAN_CONV, "F32"), (HAN_FC, "BF16"), (HAN_FC, "F16")])
def test_deep_compression_chain_round_trips_shape_and_zero_pattern(pipeline, dtype):
    rng = np.random.default_rng(11)
    shape = (40, 3, 5, 5) if pipeline == HAN_CONV else (300, 100)
    w = Dense.of(np.zeros(shape, np.float32), dtype).with_values(rng.laplace(scale=0.05, size=shape))
    chain = build_chain(parse_pipeline(pipeline))
    prune_only = roundtrip(build_chain(parse_pipeline(pipeline.split("|")[0])), w)
    out = roundtrip(chain, w)
    assert out.dtype == dtype and out.array.shape == shape
    pruned, approx = prune_only.values(), out.values()
    assert ((approx == 0) == (pruned == 0)).all()  # kmeans never turns a kept weight into zero nor a zero into one
    kept = pruned != 0
    bits = 5 if pipeline == HAN_FC else 8
    centroids = np.unique(approx[kept])
    assert centroids.size <= 2**bits
    # each kept weight went to its nearest centroid (up to the rounding of the codebook to the tensor's dtype)
    w_kept, a_kept = pruned[kept].astype(np.float64), approx[kept].astype(np.float64)
    nearest = np.abs(w_kept[:, None] - centroids[None, :].astype(np.float64)).min(axis=1)
    rounding = 2.0 ** -{"F32": 23, "F16": 10, "BF16": 7}[dtype] * np.abs(w_kept).max()
    assert (np.abs(a_kept - w_kept) <= nearest + rounding).all()
    # so the error is bounded by the codebook's resolution: half the widest gap between neighbouring centroids
    gaps = np.diff(np.concatenate([[w_kept.min()], centroids, [w_kept.max()]]))
    assert np.abs(a_kept - w_kept).max() <= gaps.max() + rounding
