"""The retraining protocol (retrain): constraints derived from approximations, checked, encoded exactly."""

from __future__ import annotations

import numpy as np
import pytest
from dcframe_plugins.uniform import Uniform, quantize_levels
from hypothesis import given
from hypothesis import strategies as st

import dcframe
from dcframe import DcfError, Dense, Stage
from dcframe.analysis.mlp import ConstrainedOptimizer, init_params, loss_and_grads, mlp_retrainer
from dcframe.analysis.retrain import (
    Constraints,
    PhaseInfo,
    Retrained,
    compress_with_retraining,
    derive_constraints,
    prefix_bounds,
    retrain_phases,
    write_retrained,
)
from dcframe.core.pipeline import Policy, build_chain


@st.composite
def constrained(draw):
    """A random tensor, mask and cluster assignment (the constraints a prune + kmeans phase leaves)."""
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < draw(st.floats(0.0, 1.0))
    k = draw(st.integers(1, 8))
    kept = int(mask.sum())
    assignment = rng.integers(0, k, kept)
    codebook = np.sort(rng.standard_normal(k)).astype(np.float32)
    weights = rng.standard_normal((rows, cols)).astype(np.float32)
    return weights, Constraints(mask=mask, assignment=assignment, codebook=codebook)


@given(constrained())
def test_project_keeps_constraints_and_derive_recovers_them(case):
    weights, c = case
    projected = c.project(weights)
    assert c.violation(projected) is None
    assert not np.signbit(projected[~c.mask]).any()  # pruned weights are +0.0
    derived = derive_constraints(projected, frozenset({"zeros", "shared"}))
    # zero-valued codebook entries read as pruned: compare on what the projection shows
    assert np.array_equal(derived.mask, projected != 0)
    assert derived.violation(projected) is None
    assert np.array_equal(derived.codebook[derived.assignment], projected[derived.mask])


@given(constrained(), st.integers(0, 2**32 - 1))
def test_violation_detects_a_moved_pruned_weight_or_a_split_cluster(case, seed):
    weights, c = case
    projected = c.project(weights)
    rng = np.random.default_rng(seed)
    if (~c.mask).any():
        broken = projected.copy()
        broken[tuple(np.argwhere(~c.mask)[rng.integers((~c.mask).sum())])] = 1e-30
        assert "pruned" in c.violation(broken)
    sizes = np.bincount(c.assignment, minlength=len(c.codebook))
    if (sizes >= 2).any():
        cluster = int(np.flatnonzero(sizes >= 2)[0])
        member = np.flatnonzero(c.mask.reshape(-1))[np.flatnonzero(c.assignment == cluster)[-1]]
        broken = projected.copy().reshape(-1)
        broken[member] = np.nextafter(broken[member], np.float32(np.inf))
        assert "cluster" in c.violation(broken.reshape(projected.shape))


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.laplace(size=(40, 30)).astype(np.float32),
            "a.bias": rng.standard_normal(40).astype(np.float32),
            "b.weight": rng.laplace(size=(10, 40)).astype(np.float32),
            "steps": np.arange(5, dtype=np.int64)}


RULES = ["a.weight=prune(sparsity=0.9) | sparse(index_bits=5) | kmeans(bits=3) | huffman",
         "b.weight=prune(sparsity=0.5) | sparse | huffman"]


def test_phases_constraints_and_exact_file(tmp_path):
    calls = []

    def nudge(weights, constraints, phase: PhaseInfo):
        calls.append((phase, {k: v.copy() for k, v in weights.items()}, constraints))
        out = {}
        for name, w in weights.items():  # a "training step" that keeps the constraints
            c = constraints.get(name)
            out[name] = c.project(w * 1.01 + 0.001) if c is not None else w + 0.5
            if c is not None and c.shared:  # move the centroids, not single weights
                out[name] = Constraints(c.mask, c.assignment, (c.codebook * 1.01).astype(np.float32)).project(w)
        return out

    path = tmp_path / "m.dcf"
    report = compress_with_retraining(_model(), path, nudge, rules=RULES)
    assert [c[0].index for c in calls] == [1, 2] and calls[0][0].count == 2
    first, second = calls[0], calls[1]
    assert first[0].stages == {"a.weight": "prune", "b.weight": "prune"}
    assert second[0].stages == {"a.weight": "kmeans"}  # b.weight has one lossy stage: its phase-1 constraints stay
    assert first[0].imposes == {"zeros"} and second[0].imposes == {"zeros", "shared"}
    assert set(first[2]) == {"a.weight", "b.weight"} and "steps" not in first[1]  # bias free, ints not passed
    assert np.count_nonzero(first[2]["a.weight"].mask) == 120
    assert second[2]["a.weight"].shared and len(second[2]["a.weight"].codebook) <= 8
    assert not second[2]["b.weight"].shared
    # the file holds exactly what the last retrainer call returned
    expected = nudge(second[1], second[2], second[0])
    decoded = dcframe.decompress(path)
    for name in ("a.weight", "b.weight", "a.bias"):
        assert decoded[name].array.tobytes() == expected[name].astype(np.float32).tobytes(), name
    assert decoded["steps"].array.tobytes() == np.arange(5, dtype=np.int64).tobytes()
    assert report == dcframe.inspect(path)


def test_global_scope_is_fitted_on_the_original_weights_and_stays_exact(tmp_path):
    model = _model()
    seen = []

    def shrink(weights, constraints, phase):  # pulls kept weights below the threshold fitted on the originals
        seen.append({k: int(c.mask.sum()) for k, c in constraints.items()})
        return {k: c.project(weights[k] * 0.01) for k, c in constraints.items()}

    path = tmp_path / "g.dcf"
    rules = ["*.bias=zstd", "*=prune(sparsity=0.8, scope=global) | sparse | kmeans(bits=4) | huffman"]
    compress_with_retraining(model, path, shrink, rules=rules)
    both = model["a.weight"].size + model["b.weight"].size
    assert sum(seen[0].values()) == sum(seen[1].values()) == both - round(0.8 * both)
    decoded = dcframe.decompress(path)
    assert sum(int(np.count_nonzero(decoded[k].array)) for k in ("a.weight", "b.weight")) == sum(seen[0].values())


@pytest.mark.parametrize("mutate, message", [
    (lambda w, c, p: {"a.weight": np.ones_like(w["a.weight"])}, "a.weight"),
    (lambda w, c, p: {"a.weight": w["a.weight"][:3]}, "shape"),
    (lambda w, c, p: {"a.bias": w["a.bias"] * np.nan}, "non-finite"),
    (lambda w, c, p: {"nope": w["a.bias"]}, "nope"),
    (lambda w, c, p: [1, 2], "not a dict"),
])
def test_a_retrainer_breaking_the_protocol_is_named(tmp_path, mutate, message):
    with pytest.raises(DcfError, match=message):
        compress_with_retraining(_model(), tmp_path / "x.dcf", mutate, rules=RULES)
    assert not (tmp_path / "x.dcf").exists()


class Jitter(Stage):
    """A lossy stage that is not exact on its own output (what the protocol forbids)."""

    id = "jitter"
    takes = ("dense",)
    gives = {"data": "dense"}
    lossy = True

    def encode(self, stream):
        return {"data": stream.with_values(stream.values() + 1)}, {}

    def decode(self, streams, meta):
        return streams["data"]


def test_a_stage_that_is_not_exact_on_retrained_weights_is_named(tmp_path):
    chain = build_chain([Jitter()])
    weights = {"w": Dense.of(np.zeros((3, 3), np.float32))}
    with pytest.raises(DcfError, match="stage 'jitter'"):
        write_retrained(Retrained(weights, {"w": chain}, {}, 1), tmp_path / "j.dcf")
    assert not (tmp_path / "j.dcf").exists()


def _mlp_case(seed=0):
    """A small MLP and data it can learn: retraining moves its centroids by more than a bin unless clamped."""
    rng = np.random.default_rng(seed)
    params = init_params((12, 16, 4), seed=seed)
    x = rng.standard_normal((256, 12)).astype(np.float32)
    y = (x[:, :4] @ rng.standard_normal((4, 4))).argmax(1)
    return params, x, y


UNIFORM_RULES = ["fc1.weight=prune(sparsity=0.5) | sparse(index_bits=5) | uniform(rel_step=0.4) | rans",
                 "fc2.weight=uniform(step=0.15) | huffman"]


def test_retrained_uniform_tensors_reencode_exactly(tmp_path):
    """mlp's retrainer on uniform chains (a fitted rel_step after pruning, an absolute step): the shared values move
    but stay in their bins, and the file decodes to the retrained weights bit for bit."""
    params, x, y = _mlp_case()
    seen = []
    inner = mlp_retrainer(x, y, epochs=3, lr=0.05)

    def retrain(weights, constraints, phase):
        out = inner(weights, constraints, phase)
        seen.append((constraints, weights, out))
        return out

    path = tmp_path / "u.dcf"
    compress_with_retraining(params, path, retrain, rules=UNIFORM_RULES)
    constraints, before, after = seen[-1]
    decoded = dcframe.decompress(path)
    for name in ("fc1.weight", "fc2.weight"):
        c = constraints[name]
        assert c.bounded and not np.array_equal(before[name], after[name])  # retraining moved the shared values
        assert decoded[name].array.tobytes() == after[name].tobytes(), name


def test_clamping_keeps_shared_values_in_their_bins():
    """A large learning rate pushes centroids hard; after every step each stays within its bin's bounds, quantizes to
    its original level, and a value outside them is refused by the check."""
    params, x, y = _mlp_case(1)
    stage = Uniform(step=0.2, dead_zone=0.25)
    approx = stage.decode(*stage.encode(Dense.of(params["fc1.weight"])))
    c = derive_constraints(approx.array, stage.imposes, stage.shared_bounds)
    levels = quantize_levels(c.codebook.astype(np.float64), 0.2, 0.25)
    opt = ConstrainedOptimizer({**params, "fc1.weight": approx.array}, {"fc1.weight": c}, method="sgd", lr=5.0)
    hit = 0
    for _ in range(20):
        opt.step(loss_and_grads(opt.params, x, y)[1])
        value = opt.variables["fc1.weight"]
        assert ((c.low <= value) & (value <= c.high)).all()
        assert np.array_equal(quantize_levels(value.astype(np.float64), 0.2, 0.25), levels)
        hit += int(np.count_nonzero((value == c.low) | (value == c.high)))
        assert c.violation(opt.params["fc1.weight"]) is None
    assert hit  # the clamp was needed
    outside = Constraints(c.mask, c.assignment, c.codebook + np.float32(1.0), c.low, c.high).project(approx.array)
    assert "left their bounds" in c.violation(outside)


def test_a_rel_step_is_fitted_once_for_retraining(tmp_path):
    """uniform(rel_step) is fitted when its phase comes and kept for the final encoding, though retraining moved the
    shared values to their bins' edges (the largest inwards: a smaller RMS; the smallest outwards, where a smaller
    step's bins end), so a refit would move the bins; parallel encoding, which refits, is then not offered."""
    params, _, _ = _mlp_case()

    def outward(weights, constraints, phase):
        out = {}
        for n, c in constraints.items():
            if c.shared:
                big = np.abs(c.codebook) > np.median(np.abs(c.codebook))
                edge = np.where(big == (c.codebook > 0), c.low, c.high)
                out[n] = Constraints(c.mask, c.assignment, edge, c.low, c.high).project(weights[n])
        return out

    path = tmp_path / "r.dcf"
    compress_with_retraining(params, path, outward, rules=UNIFORM_RULES, jobs=2)
    done = retrain_phases(params, Policy(rules=UNIFORM_RULES), outward)
    assert done.policy is None
    decoded = dcframe.decompress(path)
    for name in ("fc1.weight", "fc2.weight"):
        assert decoded[name].array.tobytes() == done.weights[name].array.tobytes(), name


class BadBounds(Stage):
    """A sharing stage whose shared_bounds leave out the values they bound (what the protocol forbids)."""

    id = "badbounds"
    takes = ("dense",)
    gives = {"data": "dense"}
    lossy = True
    imposes = frozenset({"shared"})

    def encode(self, stream):
        return {"data": stream.with_values(np.round(stream.values()))}, {}

    def decode(self, streams, meta):
        return streams["data"]

    def shared_bounds(self, values):
        return values + 1, values + 2


def test_bounds_that_leave_out_their_values_are_named():
    approx = np.array([[1, 2], [2, 3]], np.float32)
    with pytest.raises(DcfError, match="stage 'badbounds': shared_bounds"):
        derive_constraints(approx, BadBounds.imposes, prefix_bounds([BadBounds()]))



def test_bounds_of_several_stages_intersect():
    approx = np.array([[1, 2], [2, 3]], np.float32)
    coarse, fine = Uniform(step=1.0), Uniform(step=1.0, dead_zone=0.3)  # bins [q - 0.5, q + 0.5), [q - 0.2, q + 0.8)
    c = derive_constraints(approx, Uniform.imposes, prefix_bounds([coarse, fine]))
    (low1, high1), (low2, high2) = coarse.shared_bounds(c.codebook), fine.shared_bounds(c.codebook)
    assert np.array_equal(c.low, np.maximum(low1, low2)) and np.array_equal(c.high, np.minimum(high1, high2))
    assert np.array_equal(c.low, low2) and (low2 > low1).all()  # each stage narrows one side
    assert np.array_equal(c.high, high1) and (high1 < high2).all()
