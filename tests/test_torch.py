"""The PyTorch extra: module <-> .dcf, strict loading, layer rules, constraints through real optimizers, LeNet-5."""

import importlib.util
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import dcframe  # noqa: E402
from dcframe.analysis.retrain import Constraints, PhaseInfo, derive_constraints  # noqa: E402
from dcframe.bindings.torchio import (  # noqa: E402
    StateDictMismatch,
    compress_module,
    layer_rules,
    load_module,
    load_state_dict,
    state_tensors,
)
from dcframe.bindings.torchretrain import Masked, SharedWeights, TorchRetrainer, constrained  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HAN_FC = dcframe.Policy().preset("han-fc")["rules"][0]["pipeline"]
HAN_CONV = dcframe.Policy().preset("han-conv")["rules"][0]["pipeline"]


def bits(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


# --- the core without torch ------------------------------------------------------------------------------------------

def test_core_does_not_import_torch() -> None:
    code = ("import sys, numpy as np, dcframe, dcframe.cli, dcframe.analysis.demo, dcframe.analysis.retrain, "
            "dcframe.analysis.mlp\n"
            "assert 'torch' not in sys.modules, 'the core imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_works_with_torch_absent(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "m.pt")
    code = (
        "import sys; sys.modules['torch'] = None  # import torch now raises ImportError\n"
        "import numpy as np, dcframe\n"
        "w = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100)\n"
        f"dcframe.compress({{'w': w}}, {str(tmp_path / 'a.dcf')!r}, preset='han')\n"
        f"assert dcframe.decompress({str(tmp_path / 'a.dcf')!r})['w'].array.shape == (10, 100)\n"
        "try:\n"
        f"    dcframe.read_model({str(tmp_path / 'm.pt')!r})\n"
        "except dcframe.ModelIOError as exc:\n"
        "    assert 'dcframe[torch]' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('read a .pt without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- module <-> container --------------------------------------------------------------------------------------------

class Mixed(nn.Module):
    """Every dtype a state dict commonly holds, and a BatchNorm's integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.half = nn.Linear(5, 6).to(torch.float16)
        self.brain = nn.Linear(6, 7).to(torch.bfloat16)
        self.wide = nn.Linear(2, 3).to(torch.float64)
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("ids", torch.arange(-3, 5, dtype=torch.int32))


def test_lossless_roundtrip_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = -0.0
        model.conv.weight[0, 0, 0, 1] = float("nan")
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.num_batches_tracked.fill_(123456789012)
    report = compress_module(model, tmp_path / "m.dcf", preset="lossless")
    assert [t["name"] for t in report["tensors"]] == list(model.state_dict())
    fresh = Mixed()
    result = load_module(tmp_path / "m.dcf", fresh)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for name, value in model.state_dict().items():
        got = fresh.state_dict()[name]
        assert got.dtype == value.dtype, name
        assert bits(got) == bits(value), name


def test_sources_state_dict_and_pt_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    for source in (model, model.state_dict(), tmp_path / "m.pt", str(tmp_path / "m.pt")):
        compress_module(source, tmp_path / "m.dcf", preset="lossless")
        state = load_state_dict(tmp_path / "m.dcf")
        assert list(state) == list(model.state_dict())
        assert all(bits(state[k]) == bits(v) for k, v in model.state_dict().items())


def test_state_tensors_copies() -> None:
    lin = nn.Linear(2, 2)
    dense = state_tensors(lin)["weight"]
    before = dense.array.tobytes()
    with torch.no_grad():
        lin.weight.add_(1)
    assert dense.array.tobytes() == before


def test_strict_load_lists_missing_and_unexpected(tmp_path: Path) -> None:
    compress_module(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path / "m.dcf", preset="lossless")
    other = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # the second layer is "2", not "1"
    with pytest.raises(StateDictMismatch) as info:
        load_module(tmp_path / "m.dcf", other)
    assert info.value.missing == ["2.weight", "2.bias"]
    assert info.value.unexpected == ["1.weight", "1.bias"]
    assert "missing keys (2): 2.weight, 2.bias" in str(info.value)
    assert "unexpected keys (2): 1.weight, 1.bias" in str(info.value)
    assert isinstance(info.value, dcframe.DcfError)
    before = bits(other[2].weight)
    result = load_module(tmp_path / "m.dcf", other, strict=False)
    assert list(result.missing_keys) == ["2.weight", "2.bias"]
    assert list(result.unexpected_keys) == ["1.weight", "1.bias"]
    assert bits(other[2].weight) == before  # untouched
    assert bits(other[0].weight) == bits(load_state_dict(tmp_path / "m.dcf")["0.weight"])


def test_shape_mismatch_is_an_error_even_non_strict(tmp_path: Path) -> None:
    compress_module(nn.Linear(4, 3), tmp_path / "m.dcf", preset="lossless")
    with pytest.raises(StateDictMismatch, match=r"weight \[3, 4\] in the file, \[2, 4\] in the model"):
        load_module(tmp_path / "m.dcf", nn.Linear(4, 2), strict=False)


# --- layer-aware rules -----------------------------------------------------------------------------------------------

class Named(nn.Module):
    """Names that lie about the layer type: rules must follow the module type."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Conv2d(1, 2, 3)
        self.conv = nn.Linear(4, 5)
        self.emb = nn.Embedding(10, 4)
        self.c1 = nn.Conv1d(2, 2, 3)
        self.norm = nn.LayerNorm(4)
        self.blocks = nn.ModuleList([nn.Linear(3, 3)])


def test_layer_rules_follow_module_types() -> None:
    rules = {r.pattern: r.pipeline for r in layer_rules(Named())}
    assert rules == {"fc.weight": HAN_CONV, "conv.weight": HAN_FC, "emb.weight": HAN_FC, "c1.weight": HAN_CONV,
                     "blocks.0.weight": HAN_FC}
    policy = dcframe.Policy(rules=layer_rules(Named()))
    assert policy.pipeline_for("fc.weight", (2, 1, 3, 3), "F32") == HAN_CONV
    assert policy.pipeline_for("fc.bias", (2,), "F32") == policy.lossless_pipeline()
    assert policy.pipeline_for("norm.weight", (4,), "F32") == policy.lossless_pipeline()


def test_layer_rules_options() -> None:
    rules = layer_rules(Named(), conv=None, embedding="quantize8", sparsity={"conv.weight": 0.5},
                        types={nn.LayerNorm: "kmeans(bits=4)"})
    got = {r.pattern: r.pipeline for r in rules}
    assert "fc.weight" not in got and "c1.weight" not in got
    assert got["emb.weight"] == dcframe.Policy().preset("quantize8")["rules"][0]["pipeline"]
    assert got["norm.weight"] == "kmeans(bits=4)"
    stages = dcframe.parse_pipeline(got["conv.weight"])
    assert stages[0].id == "prune" and stages[0].sparsity == 0.5
    with pytest.raises(dcframe.PipelineError, match="names no conv"):
        layer_rules(Named(), sparsity={"norm.weight": 0.5})
    with pytest.raises(dcframe.PipelineError, match="no 'prune' stage"):
        layer_rules(Named(), embedding="quantize8", sparsity={"emb.weight": 0.5})
    with pytest.raises(dcframe.PipelineError, match="by tensor rank"):
        layer_rules(Named(), linear="han")


def test_layer_rules_escape_glob_characters() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module("a[1]", nn.Linear(2, 2))
            self.add_module("a1", nn.Linear(2, 2))

    rules = layer_rules(Odd(), linear="quantize8")
    assert [r.matches("a[1].weight", (2, 2)) for r in rules] == [True, False]
    assert [r.matches("a1.weight", (2, 2)) for r in rules] == [False, True]


# --- constraints through real optimizers -----------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
}
LAYERS = {
    "linear": (lambda: nn.Linear(12, 8), lambda n: torch.randn(n, 12)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda n: torch.randn(n, 3, 10)),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3), lambda n: torch.randn(n, 2, 6, 6)),
    "embedding": (lambda: nn.Embedding(20, 6), lambda n: torch.randint(0, 20, (n, 5))),
}


def _quantized(weight: np.ndarray, sparsity: float, k: int) -> np.ndarray:
    """Prune the smallest magnitudes, then round kept weights to k levels: an approximation a chain could give."""
    w = weight.astype(np.float32)
    w[np.abs(w) <= np.quantile(np.abs(w), sparsity)] = 0
    kept = w != 0
    lo, hi = w[kept].min(), w[kept].max()
    levels = np.linspace(lo, hi, k, dtype=np.float32)
    w[kept] = levels[np.abs(w[kept, None] - levels).argmin(1)]
    return w


def _steps(model: nn.Module, make_input, optimizer, steps: int = 6) -> None:
    opt = optimizer(model.parameters())
    torch.manual_seed(3)
    for _ in range(steps):
        opt.zero_grad()
        out = model(make_input(8))
        (out.float() ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("kind", ["zeros", "zeros+shared", "shared"])
def test_constraints_survive_optimizer_steps(layer: str, opt: str, kind: str) -> None:
    torch.manual_seed(0)
    build, make_input = LAYERS[layer]
    module = build()
    approx = _quantized(module.weight.detach().numpy(), 0.6 if "zeros" in kind else 0.0, 6)
    if kind == "shared":  # no pruning constraint: zero is just one more shared value
        approx[approx == 0] = approx[approx != 0][0]
    imposes = set(kind.split("+"))
    c = derive_constraints(approx, imposes)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(approx))
    with constrained(module, {"weight": c}) as applied:
        assert isinstance(applied["weight"], SharedWeights if c.shared else Masked)
        _steps(module, make_input, OPTIMIZERS[opt])
        inside = module.weight.detach().numpy().copy()
    after = module.weight.detach().numpy()
    assert not nn.utils.parametrize.is_parametrized(module)
    assert after.tobytes() == inside.tobytes()
    assert c.violation(after) is None
    if c.mask is not None:
        assert after[~c.mask].tobytes() == np.zeros(int((~c.mask).sum()), np.float32).tobytes()  # +0.0 exactly
        assert not np.array_equal(after[c.mask], approx[c.mask])  # the kept weights did train
    if c.shared:
        assert len(np.unique(after[c.mask] if c.mask is not None else after)) <= len(c.codebook)


def test_centroid_gradient_is_the_sum_over_its_cluster() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    approx = _quantized(lin.weight.detach().numpy(), 0.5, 4)
    c = derive_constraints(approx, {"zeros", "shared"})
    x = torch.randn(16, 10)
    plain = nn.Linear(10, 6)
    with torch.no_grad():
        plain.weight.copy_(torch.from_numpy(approx))
        plain.bias.copy_(lin.bias)
        lin.weight.copy_(torch.from_numpy(approx))
    plain(x).pow(2).sum().backward()
    expected = np.bincount(c.assignment, weights=plain.weight.grad.numpy()[c.mask].astype(np.float64),
                           minlength=len(c.codebook))
    with constrained(lin, {"weight": c}):
        lin(x).pow(2).sum().backward()
        centroids = lin.parametrizations.weight.original
        np.testing.assert_allclose(centroids.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert centroids.shape == (len(c.codebook),)
        assert centroids.detach().numpy().tobytes() == c.codebook.tobytes()


@given(st.data())
def test_random_constraints_survive_adam(data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(1, 6))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < data.draw(st.floats(0.0, 1.0))
    k = data.draw(st.integers(1, 5))
    shared = data.draw(st.booleans())
    assignment = rng.integers(0, k, int(mask.sum())) if shared else None
    codebook = np.sort(rng.standard_normal(k)).astype(np.float32) if shared else None
    c = Constraints(mask=mask, assignment=assignment, codebook=codebook)
    lin = nn.Linear(cols, rows)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(c.project(rng.standard_normal((rows, cols)))))
    with constrained(lin, {"weight": c}):
        _steps(lin, lambda n: torch.from_numpy(rng.standard_normal((n, cols)).astype(np.float32)),
               OPTIMIZERS["adam-wd"], steps=3)
    assert c.violation(lin.weight.detach().numpy()) is None
    assert np.all(lin.weight.detach().numpy()[~mask].view(np.uint32) == 0)


def test_constrained_rejects_bad_targets() -> None:
    bn = nn.BatchNorm1d(3)
    with pytest.raises(dcframe.DcfError, match="buffer"), constrained(bn, {"running_mean": Constraints(
            mask=np.ones(3, bool))}):
        pass
    with pytest.raises(dcframe.DcfError, match="no parameter"), constrained(bn, {"nope": Constraints()}):
        pass
    with pytest.raises(dcframe.DcfError, match="do not fit"):
        SharedWeights(Constraints(mask=np.ones((2, 2), bool), assignment=np.zeros(3, np.int64),
                                  codebook=np.zeros(1, np.float32)), (2, 2))


def test_tied_weights_share_one_parametrization() -> None:
    emb = nn.Embedding(8, 4)
    head = nn.Linear(4, 8, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    approx = _quantized(emb.weight.detach().numpy(), 0.5, 4)
    c = derive_constraints(approx, {"zeros", "shared"})
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(approx))
    with constrained(model, {"emb.weight": c, "head.weight": c}) as applied:
        assert list(applied) == ["emb.weight"]
    other = derive_constraints(_quantized(approx, 0.7, 2), {"zeros"})
    with pytest.raises(dcframe.DcfError, match="tied"), constrained(model, {"emb.weight": c, "head.weight": other}):
        pass
    assert not nn.utils.parametrize.is_parametrized(emb)


# --- the retrainer through the protocol ------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).transpose(1, 2)
        return self.fc(torch.relu(self.bn(self.conv(h))).mean(2))


def _tiny_task() -> tuple[Tiny, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    tokens = torch.randint(0, 16, (64, 6))
    labels = tokens[:, 0] % 4
    return Tiny(), [(tokens[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]


def _tiny_loss(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_retrainer_end_to_end_file_holds_the_model(tmp_path: Path) -> None:
    model, data = _tiny_task()
    seen: list[tuple[int, str, float]] = []

    def on_phase(m: nn.Module, phase: PhaseInfo, when: str) -> None:
        m.eval()  # in training mode a forward pass would move the BatchNorm statistics after they were returned
        with torch.no_grad():
            seen.append((phase.index, when, float(sum(_tiny_loss(m, b) for b in data))))
        m.train()

    retrainer = TorchRetrainer(model, loss=_tiny_loss, data=data, epochs={"prune": 4, "kmeans": 2},
                               optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
                               on_phase=on_phase)
    rules = layer_rules(model, sparsity={"emb.weight": 0.5, "fc.weight": 0.5})
    compress_module(model, tmp_path / "t.dcf", rules=rules, retrainer=retrainer)
    assert [(i, w) for i, w, _ in seen] == [(1, "before"), (1, "after"), (2, "before"), (2, "after")]
    assert seen[1][2] < seen[0][2]  # retraining after pruning lowered the training loss
    fresh = Tiny()
    load_module(tmp_path / "t.dcf", fresh)
    for name, value in model.state_dict().items():  # the model holds exactly what the file decodes to
        assert bits(fresh.state_dict()[name]) == bits(value), name
    w = fresh.fc.weight.detach().numpy()
    assert np.count_nonzero(w) == w.size // 2
    assert len(np.unique(fresh.conv.weight.detach().numpy())) <= 256 + 1


def test_retrainer_with_user_loop_and_frozen_buffers() -> None:
    model, data = _tiny_task()
    calls = []

    def fit(m: nn.Module, phase: PhaseInfo) -> None:
        calls.append(phase.index)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for batch in data:
            opt.zero_grad()
            _tiny_loss(m, batch).backward()
            opt.step()

    retrainer = TorchRetrainer(model, fit=fit)
    weights = {k: v.detach().numpy().astype(np.float32).copy() for k, v in model.state_dict().items()
               if v.is_floating_point()}
    approx = _quantized(weights["fc.weight"], 0.5, 4)
    weights["fc.weight"] = approx
    rm = np.round(weights["bn.running_mean"] + 0.25, 1).astype(np.float32)
    weights["bn.running_mean"] = rm
    constraints = {"fc.weight": derive_constraints(approx, {"zeros", "shared"}),
                   "bn.running_mean": derive_constraints(rm, {"shared"})}
    out = retrainer(weights, constraints, PhaseInfo(1, 1, {"fc.weight": "kmeans"}))
    assert calls == [1]
    assert constraints["fc.weight"].violation(out["fc.weight"]) is None
    assert "bn.running_mean" not in out  # a constrained buffer is not trained: it keeps its given values
    assert model.bn.running_mean.numpy().tobytes() == rm.tobytes()
    assert not np.array_equal(out["bn.running_var"], weights["bn.running_var"])  # free buffers do update
    with pytest.raises(ValueError, match="exactly one"):
        TorchRetrainer(model)


# --- the worked example: LeNet-5 at the paper's shape ----------------------------------------------------------------

def _example():
    spec = importlib.util.spec_from_file_location("lenet5_torch", ROOT / "examples" / "lenet5_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lenet5_example_keeps_accuracy_at_30x(tmp_path: Path) -> None:
    example = _example()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network: one thread is fastest, and steadier on a shared machine
    try:
        result = example.run(str(tmp_path / "lenet5.dcf"))
    finally:
        torch.set_num_threads(threads)
    acc = result["accuracy"]
    assert result["parameters"] == 431_080
    assert acc["dense"] >= 0.95
    assert result["ratio"] >= 30
    assert acc["dense"] - acc["final"] <= 0.01
    assert acc["final"] == acc["quantized_retrained"]  # the file holds exactly the retrained model
    layers = {r["layer"]: r for r in result["layers"]}
    assert layers["fc1.weight"]["kept_pct"] == pytest.approx(8.0, abs=0.01)
    assert layers["total"]["rate_pqh"] == pytest.approx(result["ratio"])
    text = example.format_result(result)
    assert "| fc1.weight | 400,000 | 8.0% |" in text


# --- progress: per-epoch loss, per-batch counts, bars; jobs -----------------------------------------------------------

def test_retrainer_reports_each_epochs_mean_loss_through_compress_modules_progress(tmp_path: Path) -> None:
    model, data = _tiny_task()
    expected: dict[int, float] = {}

    def on_phase(m: nn.Module, phase: PhaseInfo, when: str) -> None:
        if when == "before":  # lr=0: every epoch sees these weights, so its mean loss is this
            with torch.no_grad():
                expected[phase.index] = float(np.mean([float(_tiny_loss(m, b)) for b in data]))

    batches, epochs = [], []
    retrainer = TorchRetrainer(model, loss=_tiny_loss, data=data, epochs={"prune": 3, "kmeans": 2},
                               optimizer=lambda p: torch.optim.SGD(p, lr=0.0), on_phase=on_phase,
                               on_batch=batches.append, on_epoch=epochs.append)
    lines: list[str] = []
    compress_module(model, tmp_path / "t.dcf", rules=layer_rules(model), retrainer=retrainer, progress=lines.append)
    epoch_lines = [line for line in lines if ": epoch " in line]
    assert [line.split(",")[0] for line in epoch_lines] == (
        [f"phase 1/2 (after prune): epoch {e}/3" for e in (1, 2, 3)]
        + [f"phase 2/2 (after kmeans): epoch {e}/2" for e in (1, 2)])
    assert all(re.fullmatch(r".*, loss [0-9.e+-]+ \(4 batches, \d+\.\d s\)", line) for line in epoch_lines)
    for report in epochs:
        assert report.loss == pytest.approx(expected[report.phase.index], rel=1e-5)
        assert f"loss {report.loss:.4g}" in epoch_lines[epochs.index(report)]
    assert [(b.phase.index, b.step, b.steps) for b in batches] == (
        [(1, s, 12) for s in range(1, 13)] + [(2, s, 8) for s in range(1, 9)])
    assert [b.batch for b in batches[:5]] == [1, 2, 3, 4, 1] and {b.batches for b in batches} == {4}


class _FakeBars:
    """Stands in for dcframe.console.progress_bar: records each bar's total, label, advances and whether it ended."""

    def __init__(self) -> None:
        self.bars: list[dict] = []

    @contextmanager
    def __call__(self, total, label, enabled=True, unit="bytes"):  # noqa: ANN001, ANN204
        bar = {"total": total, "label": label, "unit": unit, "advanced": 0, "names": [], "closed": False}
        self.bars.append(bar)

        def advance(name: str, amount: int) -> None:
            bar["advanced"] += amount
            bar["names"].append(name)
        try:
            yield advance
        finally:
            bar["closed"] = True


@pytest.mark.parametrize("sized", [True, False])
def test_bar_true_draws_one_counted_bar_per_phase_and_ends_it(tmp_path: Path, monkeypatch, sized: bool) -> None:
    import dcframe.bindings.torchretrain as torchretrain

    fake = _FakeBars()
    monkeypatch.setattr(torchretrain, "progress_bar", fake)
    model, data = _tiny_task()
    source = data if sized else _Unsized(data)  # without len(): counts without a total, and still one bar a phase
    retrainer = TorchRetrainer(model, loss=_tiny_loss, data=source, epochs={"prune": 3, "kmeans": 2}, bar=True)
    compress_module(model, tmp_path / "t.dcf", rules=layer_rules(model), retrainer=retrainer)
    assert [(b["label"], b["total"], b["advanced"], b["unit"], b["closed"]) for b in fake.bars] == [
        ("retraining phase 1/2 (after prune)", 12 if sized else None, 12, "items", True),
        ("retraining phase 2/2 (after kmeans)", 8 if sized else None, 8, "items", True)]
    assert fake.bars[0]["names"][0].startswith("epoch 1/3 loss ") and fake.bars[0]["names"][-1].startswith("epoch 3/3")


class _Unsized:
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)


def test_progress_callbacks_belong_to_the_built_in_loop() -> None:
    with pytest.raises(ValueError, match="with fit=, report from your loop"):
        TorchRetrainer(nn.Linear(2, 2), fit=lambda m, p: None, bar=True)


def _retrained_file(path: Path, jobs: int) -> bytes:
    model, data = _tiny_task()  # seeded: the same model and batches every call
    retrainer = TorchRetrainer(model, loss=_tiny_loss, data=data, epochs={"prune": 2, "kmeans": 1})
    rules = layer_rules(model, sparsity={"emb.weight": 0.5, "fc.weight": 0.5})
    compress_module(model, path, rules=rules, retrainer=retrainer, jobs=jobs)
    return path.read_bytes()


def test_compress_module_jobs_writes_the_same_bytes_as_serial(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    for jobs in (1, 2):
        compress_module(model, tmp_path / f"plain{jobs}.dcf", rules=layer_rules(model), jobs=jobs)
    assert (tmp_path / "plain1.dcf").read_bytes() == (tmp_path / "plain2.dcf").read_bytes()
    assert _retrained_file(tmp_path / "r1.dcf", 1) == _retrained_file(tmp_path / "r2.dcf", 2)
    with pytest.raises(dcframe.ConfigError, match="jobs must be a positive integer, got 0"):
        compress_module(model, tmp_path / "bad.dcf", jobs=0)
    assert not (tmp_path / "bad.dcf").exists()


def test_bounded_centroids_stay_in_their_bins_and_the_gradient_passes_through() -> None:
    """uniform's bins as bounds: a large SGD rate drives the centroids against them; the weights stay inside (clamped
    in the forward pass, bit for bit on the bound) and a centroid pushed out still gets its cluster's gradient."""
    from dcframe_plugins.uniform import Uniform, quantize_levels

    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    stage = Uniform(step=0.1)
    approx = stage.decode(*stage.encode(dcframe.Dense.of(lin.weight.detach().numpy()))).array
    c = derive_constraints(approx, stage.imposes, stage.shared_bounds)
    levels = quantize_levels(c.codebook.astype(np.float64), 0.1)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(approx))
    with constrained(lin, {"weight": c}):
        _steps(lin, lambda n: torch.randn(n, 10), lambda p: torch.optim.SGD(p, lr=5.0), steps=10)
        centroids = lin.parametrizations.weight.original
        lin.zero_grad()
        lin(torch.randn(4, 10)).pow(2).sum().backward()
        assert centroids.grad.abs().sum() > 0
        pushed = (centroids.detach().numpy() < c.low) | (centroids.detach().numpy() > c.high)
    after = lin.weight.detach().numpy()
    assert pushed.any() and c.violation(after) is None
    assert np.array_equal(quantize_levels(after.reshape(-1).astype(np.float64), 0.1), levels[c.assignment])
    assert np.isin(after, np.concatenate([c.low, c.high])).any()  # some sit exactly on a bound
