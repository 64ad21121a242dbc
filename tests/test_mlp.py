"""The numpy MLP retrainer: exact gradients, constraints kept through real optimizer steps, loss going down."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcframe.analysis.mlp import ConstrainedOptimizer, init_params, layer_names, loss_and_grads, mlp_retrainer, train
from dcframe.analysis.retrain import Constraints, PhaseInfo


def _data(n=64, inputs=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, inputs)).astype(np.float32)
    y = (x[:, :classes].argmax(1)).astype(np.int64)
    return x, y


def test_layer_order_follows_the_numbers():
    params = {"fc10.weight": 0, "fc2.weight": 0, "fc1.weight": 0, "fc1.bias": 0}
    assert layer_names(params) == ["fc1", "fc2", "fc10"]


def test_gradients_match_finite_differences():
    x, y = _data(n=8, inputs=5)
    params = {k: v.astype(np.float64) for k, v in init_params((5, 7, 4), seed=1).items()}
    params["fc1.bias"] += 0.1
    _, grads = loss_and_grads(params, x.astype(np.float64), y, weight_decay=0.01)
    rng = np.random.default_rng(2)
    for name, value in params.items():
        for _ in range(4):
            idx = tuple(rng.integers(s) for s in value.shape)
            eps = 1e-6
            old = value[idx]
            value[idx] = old + eps
            up = loss_and_grads(params, x.astype(np.float64), y, weight_decay=0.01)[0]
            value[idx] = old - eps
            down = loss_and_grads(params, x.astype(np.float64), y, weight_decay=0.01)[0]
            value[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7), (name, idx)


@st.composite
def constraints_for(draw, params):
    """Random masks and cluster assignments for the weight matrices of `params`."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in params.items():
        if not name.endswith(".weight"):
            continue
        mask = rng.random(w.shape) < draw(st.floats(0.05, 1.0))
        if draw(st.booleans()):
            k = draw(st.integers(1, 6))
            codebook = np.sort(rng.standard_normal(k)).astype(np.float32) * 0.3
            c = Constraints(mask=mask, assignment=rng.integers(0, k, int(mask.sum())), codebook=codebook)
        else:
            c = Constraints(mask=mask)
        out[name] = c
    return out


PARAMS = init_params((12, 9, 4), seed=3)


@given(constraints_for(PARAMS), st.sampled_from(["sgd", "adam"]), st.integers(1, 6))
def test_optimizer_steps_keep_every_constraint(constraints, method, steps):
    x, y = _data()
    params = {k: (constraints[k].project(v) if k in constraints else v.copy()) for k, v in PARAMS.items()}
    opt = ConstrainedOptimizer(params, constraints, method=method, lr=0.05)
    before = {k: v.copy() for k, v in opt.params.items()}
    for _ in range(steps):
        opt.step(loss_and_grads(opt.params, x, y)[1])
    for name, c in constraints.items():
        w = opt.params[name]
        assert c.violation(w) is None, name
        assert not w[~c.mask].view(np.uint32).any(), name  # exactly +0.0, Adam state did not resurrect them
    assert any(not np.array_equal(before[k], opt.params[k]) for k in opt.params)  # something did move


def test_centroid_moves_by_the_sum_of_its_weights_gradients():
    x, y = _data()
    rng = np.random.default_rng(5)
    mask = rng.random(PARAMS["fc1.weight"].shape) < 0.5
    c = Constraints(mask=mask, assignment=rng.integers(0, 3, int(mask.sum())),
                    codebook=np.array([-0.2, 0.05, 0.3], np.float32))
    params = {k: v.copy() for k, v in PARAMS.items()}
    params["fc1.weight"] = c.project(params["fc1.weight"])
    opt = ConstrainedOptimizer(params, {"fc1.weight": c}, method="sgd", lr=0.1, momentum=0.0)
    grad = loss_and_grads(opt.params, x, y)[1]
    opt.step(grad)
    g = grad["fc1.weight"][mask]
    expected = c.codebook - 0.1 * np.array([g[c.assignment == i].sum() for i in range(3)], np.float32)
    np.testing.assert_allclose(opt.variables["fc1.weight"], expected, rtol=1e-5)
    np.testing.assert_array_equal(opt.params["fc1.weight"][mask], opt.variables["fc1.weight"][c.assignment])


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_a_retraining_step_lowers_the_training_loss(method):
    x, y = _data(n=128)
    rng = np.random.default_rng(7)
    mask = rng.random(PARAMS["fc1.weight"].shape) < 0.3
    constraints = {"fc1.weight": Constraints(mask=mask)}
    params = {k: (constraints[k].project(v) if k in constraints else v) for k, v in PARAMS.items()}
    before = loss_and_grads(params, x, y)[0]
    after_params = train(params, x, y, epochs=1, lr=0.01, batch_size=128, method=method, constraints=constraints)
    assert loss_and_grads(after_params, x, y)[0] < before
    assert constraints["fc1.weight"].violation(after_params["fc1.weight"]) is None


def test_mlp_retrainer_picks_settings_per_phase():
    x, y = _data()
    retrain = mlp_retrainer(x, y, epochs={"prune": 2, "kmeans": 0}, lr=0.01)
    params = {k: v.copy() for k, v in PARAMS.items()}
    same = retrain(params, {}, PhaseInfo(2, 2, {"fc1.weight": "kmeans"}))
    assert all(np.array_equal(same[k], params[k]) for k in params)  # zero epochs: unchanged
    moved = retrain(params, {}, PhaseInfo(1, 2, {"fc1.weight": "prune"}))
    assert not np.array_equal(moved["fc1.weight"], params["fc1.weight"])
