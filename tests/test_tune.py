"""`dcframe tune`: sensitivity sweep, frontier allocation (budget and target ratio) with end-to-end back-off,
grids, retraining after the allocation, plots, rules files and their replay."""

import itertools
import json

import numpy as np
import pytest

import dcframe
from dcframe import decompress, write_model
from dcframe.analysis.demo import MODEL, load_model
from dcframe.analysis.mlp import accuracy
from dcframe.analysis.tune import (
    Point,
    TuneResult,
    escape_glob,
    greedy,
    lenet_evaluators,
    lenet_retrainer,
    read_rules_file,
    sweep_size,
    tune,
)
from dcframe.analysis.tunealloc import frontier, within_budget, within_cap
from dcframe.analysis.tunegrid import GRIDS, Grid, read_grid_file
from dcframe.cli import main
from dcframe.core.errors import ConfigError
from dcframe.core.pipeline import Rule

BUDGET = 0.02
SMALL_GRID = Grid(steps=(0.1, 0.3), sparsity=(0.5, 0.8), bits=(3, 5))  # 7 candidates per tensor: fast
SMALL_GRID_FILE = "small_grid.json"  # written by the model_file fixture into the test's directory


def synthetic_mlp() -> dict[str, np.ndarray]:
    """A 16-48-4 MLP with random weights (a known model: its own predictions are the labels)."""
    rng = np.random.default_rng(7)
    return {"fc1.weight": rng.normal(0, 0.3, (48, 16)).astype(np.float32),
            "fc1.bias": rng.normal(0, 0.1, 48).astype(np.float32),
            "fc2.weight": rng.normal(0, 0.3, (4, 48)).astype(np.float32),
            "fc2.bias": rng.normal(0, 0.1, 4).astype(np.float32)}


def split(model, n=600, seed=1):
    """Validation inputs labelled by the dense model itself (dense accuracy 1.0)."""
    from dcframe.analysis.mlp import predict

    x = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    return x, predict(model, x)


X_VAL, Y_VAL = split(synthetic_mlp())


def val_accuracy(params):
    """The --eval target of these tests: accuracy on the validation inputs."""
    return accuracy({k: np.asarray(v, np.float32) for k, v in params.items()}, X_VAL, Y_VAL)


NOT_CALLABLE = 3


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    path = tmp_path / "mlp.safetensors"
    write_model(path, synthetic_mlp())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tune_eval_mod.py").write_text("from test_tune import val_accuracy, NOT_CALLABLE\n")
    (tmp_path / SMALL_GRID_FILE).write_text(json.dumps(SMALL_GRID.as_dict()))
    return path


def test_tune_meets_budget_end_to_end_and_beats_lossless(model_file, tmp_path, capsys):
    rules = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "--grid", str(SMALL_GRID_FILE), "-o", str(rules), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dense_metric"] - report["metric"] <= BUDGET + 1e-12  # tune's float tolerance
    assert main(["compress", str(model_file), "-o", str(tmp_path / "tuned.dcf"), "--rules-file", str(rules),
                 "--json", "-q"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert main(["compress", str(model_file), "-o", str(tmp_path / "exact.dcf"), "--json", "-q"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert tuned["compressed_bytes"] < exact["compressed_bytes"]
    decoded = {n: d.values() for n, d in decompress(tmp_path / "tuned.dcf").items()}
    assert 1.0 - val_accuracy(decoded) <= BUDGET + 1e-12  # the file itself, decoded, keeps the budget
    measured = {t["name"]: t["bytes"] for t in report["tensors"]}
    stored = {t["name"]: sum(t["streams"].values()) for t in tuned["tensors"] if t["name"] in measured}
    assert stored == measured  # the replay stores exactly the bytes the sweep measured
    assert any("uniform" in t["pipeline"] or "prune" in t["pipeline"] for t in report["tensors"])
    assert {"tensor", "weights", "kept_pct", "bits", "ratio", "pipeline", "metric_cost"} <= set(report["tensors"][0])


def test_rules_file_replays_to_identical_bytes(model_file, tmp_path):
    rules = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "--grid", str(SMALL_GRID_FILE), "-o", str(rules), "-q", "--json"]) == 0
    texts = read_rules_file(rules)
    assert main(["compress", str(model_file), "-o", str(tmp_path / "a.dcf"), "--rules-file", str(rules), "-q"]) == 0
    assert main(["compress", str(model_file), "-o", str(tmp_path / "b.dcf"), "-q",
                 *[f"--rule={r}" for r in texts]]) == 0
    assert (tmp_path / "a.dcf").read_bytes() == (tmp_path / "b.dcf").read_bytes()


def test_rules_file_goes_before_rule_flags(model_file, tmp_path, capsys):
    rules = tmp_path / "r.json"
    rules.write_text(json.dumps({"format": "dcframe.rules/1", "rules": ["fc1.weight=uniform(step=0.1) | huffman"]}))
    assert main(["compress", str(model_file), "-o", str(tmp_path / "c.dcf"), "--rules-file", str(rules),
                 "--rule", "*=uniform(step=0.3) | huffman", "--json", "-q"]) == 0
    pipes = {t["name"]: t["pipeline"] for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert pipes["fc1.weight"].startswith("uniform(step=0.1,")
    assert pipes["fc2.weight"].startswith("uniform(step=0.3,")


def test_backoff_restores_the_budget_when_tensors_interact():
    """Each tensor alone costs 0.01 but together they cost 0.1: the verified combination must back off."""
    rng = np.random.default_rng(3)
    model = {n: rng.normal(size=(8, 8)).astype(np.float32) for n in "ab"}

    def evaluate(p):
        changed = [not np.array_equal(p[n], model[n]) for n in "ab"]
        return 1.0 - (0.1 if all(changed) else 0.01 * sum(changed))

    result = tune(model, evaluate, 0.05, grid=Grid(steps=(0.5,)))
    assert result.frontier[0][1] == pytest.approx(0.9)  # the predicted choice (0.02) measured 0.1 ...
    assert 1.0 - result.metric == pytest.approx(0.01)  # ... and backing off kept one tensor approximated
    assert sorted(p.pipeline.startswith("uniform") for p in result.chosen.values()) == [False, True]
    assert result.evaluations == 1 + 2 + len(result.frontier)


def test_greedy_prefers_bytes_per_metric_lost():
    """The greedy path (dcframe.analysis.tunehf allocates with it) takes the most bytes saved per metric lost first."""
    base = 1.0
    points = {"cheap": [Point("l", 1000, base), Point("q", 100, base - 0.001)],
              "costly": [Point("l", 1000, base), Point("q", 100, base - 0.009)]}
    moves = greedy(points, base, 0.005)
    assert [(m.name, m.dst) for m in moves] == [("cheap", 1)]


def test_a_result_built_without_the_model_still_renders(capsys):
    """A TuneResult from another search (positional fields only, no weights) prints and serializes; the columns it
    cannot know are left out, not made up."""
    from dcframe.commands.tune import show

    pts = {"w": [Point("l", 400, 1.0), Point("q", 100, 0.99)]}
    result = TuneResult(1.0, 0.99, 0.02, pts, {"w": pts["w"][1]}, {"w": pts["w"][0]}, 10, 2)
    row = result.layers()[0]
    assert row["kept_pct"] is None and row["bytes"] == 100 and row["metric_cost"] == pytest.approx(0.01)
    show(result)
    assert "w" in capsys.readouterr().out and json.dumps(result.as_dict())


def test_escaped_names_match_only_themselves():
    names = ["w[0]", "w0", "a*b", "axb", "q?", "qq", "k=v"]
    for name in names:
        rule = Rule.parse(f"{escape_glob(name)}=raw")
        hits = [n for n in names if rule.matches(n, (2, 2))]
        assert name in hits and (hits == [name] or name == "k=v")


@pytest.mark.parametrize("spec,message", [
    ("nocolon", "expected MODULE:FUNCTION"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("tune_eval_mod:missing", "has no attribute 'missing'"),
    ("tune_eval_mod:NOT_CALLABLE", "not a function"),
])
def test_bad_eval_is_one_line_error(model_file, tmp_path, capsys, spec, message):
    out = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", "0.01", "--eval", spec, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("budget", ["-0.1", "nan", "inf"])
def test_bad_budget_is_one_line_error(model_file, tmp_path, capsys, budget):
    assert main(["tune", str(model_file), f"--budget={budget}", "--eval", "tune_eval_mod:val_accuracy",
                 "-o", str(tmp_path / "r.json"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "--budget" in err and err.count("\n") == 1


def test_model_without_builtin_evaluator_needs_eval(model_file, tmp_path, capsys):
    assert main(["tune", str(model_file), "--budget", "0.01", "-o", str(tmp_path / "r.json"), "-q"]) == 1
    assert "give --eval" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    ('{"format": "other/1", "rules": []}', "not a dcframe.rules/1 file"),
    ('{"format": "dcframe.rules/1", "rules": [3]}', "must be a list"),
    ('{"format": "dcframe.rules/1", "rules": ["fc1.weight"]}', "rule 1"),
    ('{"format": "dcframe.rules/1", "rules": ["*=nosuchstage(x=1)"]}', "rule 1"),
])
def test_bad_rules_file_is_one_line_error(model_file, tmp_path, capsys, content, message):
    rules = tmp_path / "bad.json"
    rules.write_text(content)
    out = tmp_path / "out.dcf"
    assert main(["compress", str(model_file), "-o", str(out), "--rules-file", str(rules), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and str(rules) in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_rules_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        read_rules_file(tmp_path / "absent.json")


def test_tune_api_reports_test_metric_without_choosing_on_it():
    model = synthetic_mlp()
    seen = []

    def test_eval(p):
        seen.append(1)
        return 0.5

    result = tune(model, val_accuracy, BUDGET, test=test_eval)
    assert len(seen) == 2 and result.test_metric == 0.5  # dense and chosen model only
    assert result.total_bytes < result.lossless_bytes


def test_progress_counts_every_measured_point():
    model = synthetic_mlp()
    calls = []
    tune(model, val_accuracy, BUDGET, progress=lambda name, n: calls.append((name, n)), grid=SMALL_GRID)
    assert len(calls) == sweep_size(model, grid=SMALL_GRID) == 2 * 7  # two matrices; 2 steps, 2 x 2 shared, lossless
    assert sweep_size(model) == 2 * (1 + 9 + 10 * 5)  # the default grid, wide: 9 steps, 10 sparsities x 5 bits


def test_existing_rules_file_is_kept_without_force(model_file, tmp_path, capsys):
    out = tmp_path / "rules.json"
    out.write_text("mine")
    assert main(["tune", str(model_file), "--budget", "0.01", "--eval", "tune_eval_mod:val_accuracy",
                 "-o", str(out), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine"


def broken_eval(params):
    """An --eval target that fails inside user code."""
    raise KeyError("fc9.weight")


def nan_eval(params):
    return float("nan")


@pytest.mark.parametrize("target,message", [("broken_eval", "the evaluator failed: KeyError"),
                                            ("nan_eval", "not a finite number")])
def test_failing_evaluator_is_one_line_error(model_file, tmp_path, capsys, target, message):
    (tmp_path / f"tune_eval_{target}.py").write_text(f"from test_tune import {target}\n")  # one module each
    out = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", "0.01", "--eval", f"tune_eval_{target}:{target}",
                 "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def random_points(rng, tensors, per_tensor=4, base=1.0):
    """Synthetic sensitivity tables: a lossless point and random (bytes, metric) points per tensor."""
    def point(j):
        return Point(f"q{j}", int(rng.integers(1, 1000)), base - float(rng.uniform(-0.01, 0.08)))

    return {f"t{k}": [Point("l", 1000, base)] + [point(j) for j in range(per_tensor)] for k in range(tensors)}


def combos(points, base=1.0):
    """Every combination as (choice, bytes, summed loss): the brute force the frontier must match."""
    names = list(points)
    for c in itertools.product(*[range(len(points[n])) for n in names]):
        yield (c, sum(points[n][i].nbytes for n, i in zip(names, c, strict=True)),
               sum(max(base - points[n][i].metric, 0.0) for n, i in zip(names, c, strict=True)))


@pytest.mark.parametrize("seed", range(20))
def test_frontier_budget_choice_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = random_points(rng, int(rng.integers(1, 5)))
    budget = float(rng.uniform(0, 0.1))
    smallest = min(b for _, b, loss in combos(points) if loss <= budget)
    front = frontier(points, 1.0)
    i = within_budget(front, budget)
    assert front.loss[i] <= budget and front.nbytes[i] == smallest
    chosen = front.choice(i)
    assert sum(points[n][j].nbytes for n, j in chosen.items()) == smallest  # the choices add up to it


@pytest.mark.parametrize("seed", range(20))
def test_frontier_cap_choice_matches_brute_force(seed):
    """The dual (--target-ratio): the least summed loss within a byte cap."""
    rng = np.random.default_rng(100 + seed)
    points = random_points(rng, int(rng.integers(1, 5)))
    all_bytes = [b for _, b, _ in combos(points)]
    cap = int(rng.integers(min(all_bytes), max(all_bytes) + 1))
    least = min(loss for _, b, loss in combos(points) if b <= cap)
    front = frontier(points, 1.0)
    i = within_cap(front, cap)
    assert front.nbytes[i] <= cap and front.loss[i] == pytest.approx(least, abs=1e-9)
    assert within_cap(front, min(all_bytes) - 1) is None


def test_frontier_breaks_equal_losses_by_distortion():
    """Points at the same metric (saturated accuracy) are ordered by their weight distortion, so the frontier keeps a
    path from the smallest to all-lossless that back-off can walk."""
    base = 1.0
    points = {"a": [Point("l", 100, base), Point("q1", 50, base, 0.01), Point("q2", 10, base, 0.2)]}
    front = frontier(points, base)
    assert list(front.nbytes) == [10, 50, 100] and list(front.loss) == [0, 0, 0]
    assert within_budget(front, 0.0) == 0


def test_frontier_is_bounded_by_thinning():
    rng = np.random.default_rng(0)
    points = random_points(rng, 6, per_tensor=12)
    front = frontier(points, 1.0, limit=64)
    assert len(front) <= 64 and np.all(np.diff(front.nbytes) > 0) and np.all(np.diff(front.key) < 0)


def test_tune_is_exported_and_returns_the_frontier_and_rules():
    result = dcframe.tune(synthetic_mlp(), val_accuracy, BUDGET, grid=SMALL_GRID)
    assert dcframe.tune is tune and isinstance(result, TuneResult) and result.rules
    assert result.frontier and all(isinstance(b, int) and 0 <= m <= 1 for b, m in result.frontier)
    assert (result.total_bytes, result.metric) in result.frontier  # the chosen allocation was verified
    assert result.predicted[0][0] < result.predicted[-1][0]


def wide_mlp() -> dict[str, np.ndarray]:
    """A 64-128-4 MLP (34 KB): large enough that a file can be several times smaller than it, container included."""
    rng = np.random.default_rng(8)
    return {"fc1.weight": rng.normal(0, 0.2, (128, 64)).astype(np.float32),
            "fc1.bias": rng.normal(0, 0.1, 128).astype(np.float32),
            "fc2.weight": rng.normal(0, 0.2, (4, 128)).astype(np.float32),
            "fc2.bias": rng.normal(0, 0.1, 4).astype(np.float32)}


X_WIDE = np.random.default_rng(2).normal(size=(400, 64)).astype(np.float32)


def wide_accuracy(params):
    """The --eval target for wide_mlp: agreement with the dense model's predictions."""
    from dcframe.analysis.mlp import predict

    return float(np.mean(predict({k: np.asarray(v, np.float32) for k, v in params.items()}, X_WIDE)
                         == predict(wide_mlp(), X_WIDE)))


@pytest.mark.parametrize("ratio", [4.0, 8.0])
def test_target_ratio_file_is_at_least_that_much_smaller(model_file, tmp_path, capsys, ratio):
    wide = tmp_path / "wide.safetensors"
    write_model(wide, wide_mlp())
    (tmp_path / "tune_eval_wide.py").write_text("from test_tune import wide_accuracy\n")
    rules = tmp_path / "rules.json"
    saved = tmp_path / "saved.dcf"
    assert main(["tune", str(wide), "--target-ratio", str(ratio), "--eval", "tune_eval_wide:wide_accuracy",
                 "--grid", SMALL_GRID_FILE, "-o", str(rules), "--save", str(saved), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original_bytes"] / report["file_bytes"] >= ratio
    assert main(["compress", str(wide), "-o", str(tmp_path / "t.dcf"), "--rules-file", str(rules),
                 "--json", "-q"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["compressed_bytes"] == report["file_bytes"] and replay["ratio"] >= ratio
    assert saved.read_bytes() == (tmp_path / "t.dcf").read_bytes()  # --save writes the file the rules replay


def test_target_ratio_maximizes_the_metric_among_the_candidates():
    """Of the verified allocations that fit the ratio, the chosen one has the best measured metric."""
    result = tune(wide_mlp(), wide_accuracy, target_ratio=6.0, grid=SMALL_GRID)
    assert result.metric == max(m for _, m in result.frontier) and len(result.frontier) > 1
    assert result.original_bytes / result.file_bytes >= 6.0


@pytest.mark.parametrize("args,message", [
    (["--budget", "0.01", "--target-ratio", "5"], "exactly one of --budget"),
    ([], "exactly one of --budget"),
    (["--target-ratio", "0.5"], "--target-ratio 0.5"),
    (["--target-ratio", "nan"], "--target-ratio nan"),
    (["--target-ratio", "inf"], "--target-ratio inf"),
    (["--target-ratio", "100000"], "out of this grid's reach"),
    (["--budget", "0.01", "--grid", "nosuchgrid"], "cannot read it"),
    (["--budget", "0.01", "--pre-budget", "0.1"], "--pre-budget applies with --retrain"),
    (["--budget", "0.01", "--retrain", "--pre-budget", "nan"], "--pre-budget nan: give a finite"),
    (["--budget", "0.01", "--retrain"], "only the bundled LeNet-300-100 has a built-in retrainer"),
    (["--budget", "0.01", "--steps", "0.1,x"], "--steps"),
])
def test_bad_goal_or_grid_is_one_line_error(model_file, tmp_path, capsys, args, message):
    out = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--eval", "tune_eval_mod:val_accuracy", "--grid", SMALL_GRID_FILE, *args,
                 "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    ('{"format": "other/1"}', "not a dcframe.grid/1 file"),
    ('{"format": "dcframe.grid/1", "sparsity": [1.5], "bits": [4]}', "sparsity"),
    ('{"format": "dcframe.grid/1", "sparsity": [0.5]}', "need bits"),
    ('{"format": "dcframe.grid/1", "bits": [4.5]}', "integers"),
    ('{"format": "dcframe.grid/1", "bits": [4], "criteria": ["random"]}', "criteria"),
    ('{"format": "dcframe.grid/1", "steps": [0.1], "colour": 1}', "unknown key 'colour'"),
    ('{"format": "dcframe.grid/1", "bits": [4], "kmeans": "init=nope"}', "candidate"),
    ('{"format": "dcframe.grid/1"}', "no candidates"),
])
def test_bad_grid_file_is_one_line_error(model_file, tmp_path, capsys, content, message):
    grid = tmp_path / "grid.json"
    grid.write_text(content)
    out = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", "0.01", "--eval", "tune_eval_mod:val_accuracy",
                 "--grid", str(grid), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and str(grid) in err and err.count("\n") == 1 and not out.exists()


def test_grid_file_round_trips_and_names_resolve(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRIDS["wide"].as_dict()))
    assert read_grid_file(path) == GRIDS["wide"]
    paper = GRIDS["paper"].paper_pipelines()
    assert "prune(sparsity=0.9) | sparse(index_bits=5) | kmeans(bits=4) | huffman" in paper
    assert "kmeans(bits=8) | huffman" in paper  # sparsity 0: shared, not pruned


def test_criteria_in_the_grid_name_the_pruning_rule():
    grid = Grid(sparsity=(0.5,), bits=(4,), criteria=("magnitude", "wanda"))
    assert grid.paper_pipelines() == ["prune(sparsity=0.5) | sparse(index_bits=5) | kmeans(bits=4) | huffman",
                                      "prune(sparsity=0.5, criterion=wanda) | sparse(index_bits=5) | kmeans(bits=4) "
                                      "| huffman"]


def test_plot_writes_a_png(model_file, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "tune.png"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "--grid", SMALL_GRID_FILE, "-o", str(tmp_path / "r.json"), "--plot", str(plot), "-q"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_plot_without_matplotlib_is_one_line_error_before_the_work(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "r.json"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "--grid", SMALL_GRID_FILE, "-o", str(out), "--plot", str(tmp_path / "p.png"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'dcframe[plot]'" in err and err.count("\n") == 1 and not out.exists()


def test_budget_holds_end_to_end_on_the_demo_model(tmp_path, capsys):
    """The bundled LeNet with its built-in evaluator and a small paper-style grid: the saved file, decoded, keeps the
    budget on the validation split; the test digits are reported, not used."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid(sparsity=(0.9, 0.97), bits=(3, 5)).as_dict()))
    out, dcf = tmp_path / "rules.json", tmp_path / "lenet.dcf"
    assert main(["tune", str(MODEL), "--budget", "0.005", "--grid", str(grid), "-o", str(out), "--save", str(dcf),
                 "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    val, test = lenet_evaluators()
    decoded = {n: d.values() for n, d in decompress(dcf).items()}
    assert report["dense_metric"] - val(decoded) <= 0.005 and val(decoded) == report["metric"]
    assert report["test_metric"] == test(decoded) and report["original_bytes"] / dcf.stat().st_size > 15
    assert read_rules_file(out) == report["rules"] and len(report["rules"]) == 3


def test_the_printed_report_names_the_built_in_metric(tmp_path, capsys):
    """The bundled LeNet's table says which validation metric chose (accuracy for a budget, log-likelihood for a
    target ratio) and that the test figure is accuracy, not a bare "metric"."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid(sparsity=(0.9,), bits=(5,)).as_dict()))
    for goal, name in [(["--budget", "0.01"], "validation accuracy: "),
                       (["--target-ratio", "10"], "validation log-likelihood (nats): ")]:
        assert main(["tune", str(MODEL), *goal, "--grid", str(grid), "-o", str(tmp_path / "r.json"), "-f"]) == 0
        out = capsys.readouterr().out
        assert name in out and "test accuracy (never used to choose): " in out, out


def test_retraining_after_allocation_is_verified_retrained(tmp_path):
    """The fast variant of the paper's path: a small grid, one epoch per phase, two retraining rounds; the allocation
    first tried at the looser pre-retraining budget, the result judged by its retrained validation metric."""
    model = load_model()
    val, test = lenet_evaluators()
    seen = []
    grid = Grid(sparsity=(0.97,), bits=(3,))
    result = tune(model, val, 0.01, test=lambda p: seen.append(1) or test(p), grid=grid,
                  retrainer=lenet_retrainer(epochs=(1, 1)), rounds=2, save=tmp_path / "r.dcf")
    assert result.retrained and len(seen) == 2
    assert result.dense_metric - result.metric <= 0.01
    decoded = {n: d.values() for n, d in decompress(tmp_path / "r.dcf").items()}
    assert val(decoded) == result.metric  # the saved file is the retrained model that was measured
    assert not np.array_equal(decoded["fc1.bias"], model["fc1.bias"])  # retrained, not merely approximated
    replay = tmp_path / "replay.dcf"  # the rules replay through the same retraining loop to the same bytes
    dcframe.compress_with_retraining(model, replay, lenet_retrainer(epochs=(1, 1)), rules=result.rules)
    assert replay.read_bytes() == (tmp_path / "r.dcf").read_bytes()


def test_cli_retrain_saves_the_retrained_model(tmp_path, capsys, monkeypatch):
    """`--retrain --save` on the bundled LeNet (one epoch per phase here, to stay fast): the saved file is the
    retrained model the JSON reports, and the budget holds on it."""
    monkeypatch.setattr("dcframe.commands.tune.lenet_retrainer", lambda: lenet_retrainer(epochs=(1, 1)))
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid(sparsity=(0.97,), bits=(3,)).as_dict()))
    dcf = tmp_path / "lenet.dcf"
    assert main(["tune", str(MODEL), "--budget", "0.01", "--retrain", "--grid", str(grid), "-o",
                 str(tmp_path / "r.json"), "--save", str(dcf), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    decoded = {n: d.values() for n, d in decompress(dcf).items()}
    val, _ = lenet_evaluators()
    assert report["retrained"] and report["file_bytes"] == dcf.stat().st_size
    assert val(decoded) == report["metric"] and report["dense_metric"] - report["metric"] <= 0.01


def test_retraining_with_a_uniform_rans_grid_keeps_its_budget_end_to_end(tmp_path):
    """Uniform candidates (dense and pruned, rans-coded) stay in the sweep when retraining; the retrained file holds
    the budget on the validation split and replays to the same bytes through the retraining loop."""
    model = load_model()
    val, _ = lenet_evaluators()
    grid = Grid(steps=(0.5, 1.5), coder="rans", uniform_sparsity=(0.9,))
    assert sweep_size(model, grid=grid) == 3 * 5  # the lossless chain and 4 uniform candidates per weight
    result = tune(model, val, 0.01, grid=grid, retrainer=lenet_retrainer(epochs=(1, 1)), rounds=2,
                  save=tmp_path / "u.dcf")
    assert result.retrained and result.dense_metric - result.metric <= 0.01
    uniform = [p.pipeline for p in result.chosen.values() if "uniform(step=" in p.pipeline]
    assert uniform and all(p.endswith("| rans") for p in uniform)
    decoded = {n: d.values() for n, d in decompress(tmp_path / "u.dcf").items()}
    assert val(decoded) == result.metric and result.dense_metric - val(decoded) <= 0.01
    replay = tmp_path / "replay.dcf"
    dcframe.compress_with_retraining(model, replay, lenet_retrainer(epochs=(1, 1)), rules=result.rules)
    assert replay.read_bytes() == (tmp_path / "u.dcf").read_bytes()


def test_grid_coder_and_uniform_sparsity_are_checked_and_round_trip(tmp_path):
    grid = Grid(steps=(0.5,), coder="rans", uniform_sparsity=(0.8,))
    assert grid.uniform_pipelines(2.0) == ["uniform(step=1.0) | rans",
                                           "prune(sparsity=0.8) | sparse(index_bits=5) | uniform(step=1.0) | rans"]
    path = tmp_path / "g.json"
    path.write_text(json.dumps(grid.as_dict()))
    assert read_grid_file(path) == grid
    with pytest.raises(ConfigError, match="coder 'zstd'"):
        Grid(steps=(0.5,), coder="zstd")
    with pytest.raises(ConfigError, match="uniform_sparsity"):
        Grid(steps=(0.5,), uniform_sparsity=(0.0,))
