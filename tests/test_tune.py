"""`dcframe tune`: sensitivity sweep, greedy allocation with end-to-end back-off, rules files and their replay."""

import itertools
import json

import numpy as np
import pytest

from dcframe import decompress, write_model
from dcframe.cli import main
from dcframe.demo import MODEL
from dcframe.errors import ConfigError
from dcframe.mlp import accuracy
from dcframe.pipeline import Rule
from dcframe.tune import Point, allocate, escape_glob, exact_choice, greedy, read_rules_file, sweep_size, tune

BUDGET = 0.02


def synthetic_mlp() -> dict[str, np.ndarray]:
    """A 16-48-4 MLP with random weights (a known model: its own predictions are the labels)."""
    rng = np.random.default_rng(7)
    return {"fc1.weight": rng.normal(0, 0.3, (48, 16)).astype(np.float32),
            "fc1.bias": rng.normal(0, 0.1, 48).astype(np.float32),
            "fc2.weight": rng.normal(0, 0.3, (4, 48)).astype(np.float32),
            "fc2.bias": rng.normal(0, 0.1, 4).astype(np.float32)}


def split(model, n=600, seed=1):
    """Validation inputs labelled by the dense model itself (dense accuracy 1.0)."""
    from dcframe.mlp import predict

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
    return path


def test_tune_meets_budget_end_to_end_and_beats_lossless(model_file, tmp_path, capsys):
    rules = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "-o", str(rules), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dense_metric"] - report["metric"] <= BUDGET
    assert main(["compress", str(model_file), "-o", str(tmp_path / "tuned.dcf"), "--rules-file", str(rules),
                 "--json", "-q"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert main(["compress", str(model_file), "-o", str(tmp_path / "exact.dcf"), "--json", "-q"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert tuned["compressed_bytes"] < exact["compressed_bytes"]
    decoded = {n: d.values() for n, d in decompress(tmp_path / "tuned.dcf").items()}
    assert 1.0 - val_accuracy(decoded) <= BUDGET  # the file itself, decoded, keeps the budget
    measured = {t["name"]: t["bytes"] for t in report["tensors"]}
    stored = {t["name"]: sum(t["streams"].values()) for t in tuned["tensors"] if t["name"] in measured}
    assert stored == measured  # the replay stores exactly the bytes the sweep measured
    assert any("uniform" in t["pipeline"] for t in report["tensors"])


def test_rules_file_replays_to_identical_bytes(model_file, tmp_path):
    rules = tmp_path / "rules.json"
    assert main(["tune", str(model_file), "--budget", str(BUDGET), "--eval", "tune_eval_mod:val_accuracy",
                 "-o", str(rules), "-q", "--json"]) == 0
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
    base = 1.0
    points = {n: [Point("lossless", 100, base), Point(f"q{n}", 10, base - 0.01)] for n in "ab"}
    decoded = {n: {"lossless": np.zeros(1), f"q{n}": np.ones(1)} for n in "ab"}

    def evaluate(p):
        return base - (0.1 if p["a"][0] and p["b"][0] else 0.01 * (p["a"][0] + p["b"][0]))

    assert len(greedy(points, base, 0.05)) == 2  # predicted 0.02: both taken before verification
    chosen, metric, evaluations = allocate(points, decoded, {"a": np.zeros(1), "b": np.zeros(1)}, evaluate, base, 0.05)
    assert base - metric <= 0.05 and evaluations == 3  # the exact choice, then greedy's two and one change
    assert sorted(p.nbytes for p in chosen.values()) == [10, 100]


def test_greedy_prefers_bytes_per_metric_lost():
    base = 1.0
    points = {"cheap": [Point("l", 1000, base), Point("q", 100, base - 0.001)],
              "costly": [Point("l", 1000, base), Point("q", 100, base - 0.009)]}
    moves = greedy(points, base, 0.005)
    assert [(m.name, m.dst) for m in moves] == [("cheap", 1)]


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
    tune(model, val_accuracy, BUDGET, progress=lambda name, n: calls.append((name, n)))
    assert len(calls) == sweep_size(model) == 2 * 6  # two matrices, five steps plus lossless each


def test_existing_rules_file_is_kept_without_force(model_file, tmp_path, capsys):
    out = tmp_path / "rules.json"
    out.write_text("mine")
    assert main(["tune", str(model_file), "--budget", "0.01", "--eval", "tune_eval_mod:val_accuracy",
                 "-o", str(out), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine"


def test_bundled_lenet_uses_builtin_evaluator_and_reports_test(tmp_path, capsys):
    out = tmp_path / "rules.json"
    assert main(["tune", str(MODEL), "--budget", "0.005", "-o", str(out), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dense_metric"] - report["metric"] <= 0.005
    assert report["test_metric"] is not None and report["total_bytes"] < report["lossless_bytes"] / 5
    assert read_rules_file(out) == report["rules"] and len(report["rules"]) == 3


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


@pytest.mark.parametrize("seed", range(20))
def test_exact_choice_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    base, budget = 1.0, float(rng.uniform(0, 0.1))
    points = {f"t{k}": [Point("l", 1000, base)] + [Point(f"q{j}", int(rng.integers(1, 1000)),
                                                         base - float(rng.uniform(-0.01, 0.08))) for j in range(3)]
              for k in range(int(rng.integers(1, 5)))}
    names = list(points)
    fits = [c for c in itertools.product(*[range(len(points[n])) for n in names])
            if sum(max(base - points[n][i].metric, 0.0) for n, i in zip(names, c, strict=True)) <= budget]
    smallest = min(sum(points[n][i].nbytes for n, i in zip(names, c, strict=True)) for c in fits)
    chosen = exact_choice(points, base, budget)
    assert sum(max(base - points[n][i].metric, 0.0) for n, i in chosen.items()) <= budget
    assert sum(points[n][i].nbytes for n, i in chosen.items()) == smallest


def test_exact_choice_gives_way_to_greedy_beyond_its_limit():
    points = {n: [Point("l", 10, 1.0), Point("q", 1, 1.0)] for n in "abc"}
    assert exact_choice(points, 1.0, 0.0, limit=7) is None
    assert exact_choice(points, 1.0, 0.0, limit=8) == {"a": 1, "b": 1, "c": 1}
    assert exact_choice({}, 1.0, 0.0) == {}
