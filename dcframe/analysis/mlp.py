"""A small numpy multilayer perceptron and a retrainer for it that keeps Deep Compression's constraints.

Parameters are a dict of float32 arrays named like PyTorch's: ``fc1.weight`` (out x in), ``fc1.bias``, ... ; layers
are ReLU except the last, and the loss is softmax cross-entropy. Training under constraints (dcframe.analysis.retrain):

- pruned weights: their gradient is masked and they are reset to exactly 0 after every step; optimizer state is kept
  only for kept weights, so Adam's momentum cannot bring them back;
- shared weights (trained quantization, Han et al. 2016, section 3.3): the free variables are the centroids; each
  centroid's gradient is the sum of the gradients of the weights in its cluster, and the weights are rebuilt from the
  centroids after every step, so weights of one cluster stay exactly equal; bounded centroids (uniform's bins) are
  clamped into their bounds after every step, so the final encoding reproduces them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dcframe.analysis.retrain import Constraints, PhaseInfo

Params = dict[str, np.ndarray]


def layer_names(params: Mapping[str, np.ndarray]) -> list[str]:
    """The layer prefixes ("fc1", "fc2", ...) in the order they apply: by the number in the name, else by insertion."""
    names = [k[: -len(".weight")] for k in params if k.endswith(".weight")]

    def key(name: str) -> tuple[int, int]:
        digits = re.findall(r"\d+", name)
        return (int(digits[-1]) if digits else 0, names.index(name))

    return sorted(names, key=key)


def init_params(sizes: tuple[int, ...] = (784, 300, 100, 10), seed: int = 0) -> Params:
    """He-initialised weights and zero biases for a ReLU MLP with the given layer sizes."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        params[f"fc{i}.weight"] = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        params[f"fc{i}.bias"] = np.zeros(n_out, np.float32)
    return params


def forward(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of a batch `x` (n x inputs)."""
    h = np.asarray(x, np.float32)
    layers = layer_names(params)
    for i, layer in enumerate(layers):
        h = h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def predict(params: Mapping[str, np.ndarray], x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The predicted class of every row of `x`."""
    return np.concatenate([forward(params, x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def accuracy(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of rows of `x` classified as `y`."""
    return float(np.mean(predict(params, x) == y))


def log_likelihood(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 4096) -> float:
    """The mean log-probability (nats, <= 0) the softmax gives the true class `y` of each row of `x`: minus the
    cross-entropy, a score that keeps separating models where accuracy sits at 100%."""
    total = 0.0
    for i in range(0, len(x), batch):
        logits = forward(params, x[i:i + batch]).astype(np.float64)
        shifted = logits - logits.max(1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        total += float(log_probs[np.arange(len(log_probs)), y[i:i + batch]].sum())
    return total / max(len(x), 1)


def loss_and_grads(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                   weight_decay: float = 0.0) -> tuple[float, Params]:
    """Mean cross-entropy (+ weight_decay/2 * sum of squared weights) and its gradient for every parameter."""
    layers = layer_names(params)
    acts = [np.asarray(x, np.float32)]
    for i, layer in enumerate(layers):
        z = acts[-1] @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        acts.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
    logits = acts[-1]
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    n = len(y)
    loss = float(-log_probs[np.arange(n), y].mean())
    grad = np.exp(log_probs)
    grad[np.arange(n), y] -= 1
    grad /= n
    grads: Params = {}
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        w = params[f"{layer}.weight"]
        grads[f"{layer}.weight"] = grad.T @ acts[i]
        grads[f"{layer}.bias"] = grad.sum(0)
        if weight_decay:
            grads[f"{layer}.weight"] += weight_decay * w
            loss += 0.5 * weight_decay * float(np.sum(w.astype(np.float64) ** 2))
        if i:
            grad = (grad @ w) * (acts[i] > 0)
    return loss, grads


class ConstrainedOptimizer:
    """SGD (with momentum) or Adam over parameters some of which are pruned or shared (see the module docstring)."""

    def __init__(self, params: Params, constraints: Mapping[str, Constraints] | None = None, method: str = "adam",
                 lr: float = 1e-3, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if method not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {method!r}; use 'sgd' or 'adam'")
        self.params, self.method, self.lr = params, method, lr
        self.momentum, self.betas, self.eps = momentum, betas, eps
        self.constraints = dict(constraints or {})
        self.kept = {n: c.kept_index(params[n].size) for n, c in self.constraints.items() if c.shared}
        # the free variables: centroids for shared tensors, the tensor itself otherwise
        self.variables = {n: (c.codebook.astype(np.float32).copy() if c.shared else None)
                          for n, c in self.constraints.items()}
        self.state: dict[str, list[np.ndarray]] = {}
        self.t = 0
        for name in params:
            self._materialize(name)

    def _variable(self, name: str) -> np.ndarray:
        v = self.variables.get(name)
        return self.params[name] if v is None else v

    def _gradient(self, name: str, grad: np.ndarray) -> np.ndarray:
        c = self.constraints.get(name)
        if c is None:
            return grad
        if c.shared:  # each centroid moves by the sum of its weights' gradients
            g = np.bincount(c.assignment, weights=grad.reshape(-1)[self.kept[name]], minlength=len(c.codebook))
            return g.astype(np.float32)
        return np.where(c.mask, grad, np.float32(0)) if c.mask is not None else grad

    def _materialize(self, name: str) -> None:
        c = self.constraints.get(name)
        if c is None:
            return
        if c.shared:
            flat = np.zeros(self.params[name].size, np.float32)
            flat[self.kept[name]] = self.variables[name][c.assignment]
            self.params[name] = flat.reshape(self.params[name].shape)
        elif c.mask is not None:
            self.params[name] = np.where(c.mask, self.params[name], np.float32(0))

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Apply one update from the gradients of the (materialized) parameters."""
        self.t += 1
        for name, grad in grads.items():
            g = self._gradient(name, np.asarray(grad, np.float32))
            v = self._variable(name)
            if self.method == "sgd":
                buf = self.state.setdefault(name, [np.zeros_like(v)])
                buf[0] = self.momentum * buf[0] + g
                update = self.lr * buf[0]
            else:
                m, s = self.state.setdefault(name, [np.zeros_like(v), np.zeros_like(v)])
                b1, b2 = self.betas
                m *= b1
                m += (1 - b1) * g
                s *= b2
                s += (1 - b2) * g * g
                m_hat = m / (1 - b1 ** self.t)
                s_hat = s / (1 - b2 ** self.t)
                update = self.lr * m_hat / (np.sqrt(s_hat) + self.eps)
            new = (v - update).astype(np.float32)
            if name in self.variables and self.variables[name] is not None:
                self.variables[name] = self.constraints[name].clamp(new)
            else:
                self.params[name] = new
            self._materialize(name)


def train(params: Params, x: np.ndarray, y: np.ndarray, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
          method: str = "adam", weight_decay: float = 0.0, seed: int = 0,
          constraints: Mapping[str, Constraints] | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> Params:
    """Minibatch training (shuffled by `seed`) of a copy of `params` under `constraints`; returns the new params."""
    params = {k: np.array(v, np.float32) for k, v in params.items()}
    opt = ConstrainedOptimizer(params, constraints, method=method, lr=lr)
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss, grads = loss_and_grads(opt.params, x[idx], y[idx], weight_decay)
            opt.step(grads)
            total += loss * len(idx)
        if on_epoch:
            on_epoch(epoch + 1, total / len(x))
    return opt.params


def mlp_retrainer(x: np.ndarray, y: np.ndarray, epochs: int | Mapping[str, int] = 5,
                  lr: float | Mapping[str, float] = 1e-3, seed: int = 0, **options: Any) -> Callable[..., Params]:
    """A dcframe.analysis.retrain retrainer for an MLP: trains under the phase's constraints on (x, y).

    `epochs` and `lr` may map the id of the phase's lossy stage ("prune", "kmeans") to a value; `options` go to train().
    """

    def pick(value: Any, phase: PhaseInfo) -> Any:
        if not isinstance(value, Mapping):
            return value
        ids = list(phase.stages.values())
        known = [i for i in value if i in ids]
        return value[max(known, key=ids.count)] if known else next(iter(value.values()))

    def retrain(weights: Params, constraints: Mapping[str, Constraints], phase: PhaseInfo) -> Params:
        return train(weights, x, y, epochs=pick(epochs, phase), lr=pick(lr, phase), constraints=constraints,
                     seed=seed + phase.index, **options)

    return retrain


__all__ = ["ConstrainedOptimizer", "accuracy", "forward", "init_params", "layer_names", "log_likelihood",
           "loss_and_grads", "mlp_retrainer", "predict", "train"]
