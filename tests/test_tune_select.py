"""How `dcframe tune` chooses when the validation split saturates (issue #13): the bundled LeNet's log-likelihood
metric, several retrained candidates at a target ratio, and the test digits kept out of every choice."""

import json

import numpy as np
import pytest
from test_tune import SMALL_GRID, wide_accuracy, wide_mlp

import dcframe.analysis.demo as demo
import dcframe.analysis.mlp as mlp
from dcframe import decompress
from dcframe.analysis.demo import MODEL, load_model
from dcframe.analysis.tune import RATIO_CANDIDATES, RETRAIN_CANDIDATES, Search, lenet_evaluators, lenet_retrainer, tune
from dcframe.analysis.tunegrid import Grid
from dcframe.cli import main
from dcframe.core.errors import ConfigError


def keep(weights, constraints, phase):
    """A retrainer that changes nothing (the approximation keeps its own constraints): fast and deterministic."""
    return weights


def test_loglik_ranks_the_candidates_accuracy_ties():
    """On the validation split the dense LeNet classifies every digit, so accuracy gives several swept settings
    of one tensor exactly the dense metric (loss 0: a tie), while the log-likelihood orders them all."""
    model = load_model()
    grid = Grid(steps=(0.2, 0.35, 0.5, 1.0))
    sweeps = {}
    for metric in ("accuracy", "loglik"):
        search = Search.start(model, lenet_evaluators(metric)[0], grid, None, None)
        sweeps[metric] = (search.base, [p.metric for p in search.points["fc2.weight"][1:]])  # past the lossless
        search.close()
    base, accs = sweeps["accuracy"]
    assert base == 1.0 and all(a == base for a in accs)  # every setting ties with the dense model
    base, lls = sweeps["loglik"]
    assert base not in lls and len(set(lls)) == len(lls)  # every setting has a value of its own
    assert lls[-1] < lls[0] < 0  # the coarsest step scores below the finest


def test_unknown_lenet_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="LeNet metric 'f1'"):
        lenet_evaluators("f1")


def test_target_ratio_with_retraining_retrains_candidates_and_keeps_the_best(monkeypatch):
    """With a retrainer, a target ratio retrains the pick and its smaller frontier neighbours, not one allocation
    alone, keeps the best retrained metric, and spends no retraining on a file that misses the ratio."""
    files = []
    retrained = Search.retrained

    def recording(self, choice):
        trial = retrained(self, choice)
        files.append(trial.file_bytes)
        return trial

    monkeypatch.setattr(Search, "retrained", recording)
    result = tune(wide_mlp(), wide_accuracy, target_ratio=6.0, grid=SMALL_GRID, retrainer=keep)
    assert result.retrained and len(result.frontier) == len(files) == RETRAIN_CANDIDATES
    assert result.metric == max(m for _, m in result.frontier)
    assert all(result.original_bytes / b >= 6.0 for b in files)


def test_target_ratio_retrains_further_candidates_when_retraining_grew_the_files(monkeypatch):
    """Retraining can grow a file past the goal (weights retrained after pruning fill more of uniform's absolute
    bins; simulated here: the first candidates' files come out 50 bytes over the goal): the next candidates, whose
    files fit the goal less that growth, are retrained and one of them is kept, within the rounds."""
    retrained = Search.retrained
    goal = sum(w.nbytes for w in wide_mlp().values()) / 6.0
    grown = []

    def growing(self, choice):
        trial = retrained(self, choice)
        if len(grown) < RETRAIN_CANDIDATES:
            trial.file_bytes = int(goal) + 50
            grown.append(trial)
        return trial

    monkeypatch.setattr(Search, "retrained", growing)
    result = tune(wide_mlp(), wide_accuracy, target_ratio=6.0, grid=SMALL_GRID, retrainer=keep)
    assert RETRAIN_CANDIDATES < len(result.frontier) <= 6  # RETRAIN_ROUNDS
    assert result.original_bytes / result.file_bytes >= 6.0 and result.file_bytes not in [t.file_bytes for t in grown]


def test_after_growth_the_retried_candidates_spread_over_the_lowered_goals():
    """The retry after retraining grew the files takes one candidate per lowered goal (the goal less 1, 1.5, 2 x the
    growth), each the least lossy untried point whose file fits its goal, rather than neighbours under one goal."""
    search = Search.start(wide_mlp(), wide_accuracy, SMALL_GRID, None, None)
    try:
        goals = [5890.0, 5400.0, 4700.0]
        picks = search._candidates([(g, 1) for g in goals], 6.0, 0, {})
        assert len(set(picks)) == 3 and picks == sorted(picks, reverse=True)
        assert all(search.file_bytes_at(i) <= g for i, g in zip(picks, goals, strict=True))
        skipped = search._candidates([(5890.0, 2)], 6.0, 0, {picks[0]: None})
        assert picks[0] not in skipped and len(skipped) == 2  # tried points are not retried
    finally:
        search.close()


@pytest.mark.parametrize("ratio", [6.0, 8.0])
def test_ratio_pick_is_the_least_lossy_point_whose_file_fits(ratio):
    """Real files are not monotone in the predicted bytes (each chain's streams carry their own overhead): the pick
    fits the goal and the next frontier point does not, even where lowering the cap by a miss overshoots."""
    search = Search.start(wide_mlp(), wide_accuracy, SMALL_GRID, None, None)
    try:
        goal = search.original_bytes / ratio
        index = search.ratio_pick(goal, ratio, overhead=0)  # the cap starts high: at the goal
        assert search.file_bytes_at(index) <= goal < search.file_bytes_at(index + 1)
    finally:
        search.close()


def test_target_ratio_retrains_at_most_rounds_times():
    calls = []

    def counting(weights, constraints, phase):
        calls.append(phase.index)
        return weights

    result = tune(wide_mlp(), wide_accuracy, target_ratio=6.0, grid=SMALL_GRID, retrainer=counting, rounds=2)
    assert len(result.frontier) == 2 and calls.count(1) == 2  # two allocations, each through its phases once


def test_a_verified_candidate_that_holds_the_ratio_is_kept_when_the_best_misses(monkeypatch):
    """When the best-scoring candidate's real file misses the ratio, another verified one that holds it is chosen
    at once (no second round of verifications with a lower cap)."""
    real = Search.real_file
    state = {"calls": 0, "first": None}

    def real_file(self, trial):
        state["calls"] += 1
        nbytes = real(self, trial)
        if state["calls"] > 1 and state["first"] is None:  # call 1: the lossless overhead probe
            state["first"] = trial
        return nbytes + 10 ** 9 if trial is state["first"] else nbytes

    monkeypatch.setattr(Search, "real_file", real_file)
    result = tune(wide_mlp(), wide_accuracy, target_ratio=6.0, grid=SMALL_GRID)
    assert len(result.frontier) == RATIO_CANDIDATES
    assert result.file_bytes < 10 ** 9 and result.original_bytes / result.file_bytes >= 6.0


def test_selection_never_touches_the_test_digits(monkeypatch):
    """Choosing reads the validation split only and retraining the rest of the training digits only: the test
    digits (marked 2.0) reach the network only when tune() reports them, and the validation digits (marked 3.0)
    never reach the training loop."""
    x_train, y_train, x_test, y_test = demo.load_digits()
    val, _ = __import__("dcframe.analysis.tune", fromlist=["lenet_split"]).lenet_split()
    x_train = x_train.copy()
    x_train[val, 0] = 3.0
    x_test = x_test.copy()
    x_test[:, 0] = 2.0
    monkeypatch.setattr(demo, "load_digits", lambda: (x_train, y_train, x_test, y_test))
    seen = {"reporting": False, "test_early": 0, "test_late": 0, "val_trained": 0, "trained": 0}
    forward, loss_and_grads = mlp.forward, mlp.loss_and_grads

    def watched_forward(params, x):
        if np.any(np.asarray(x)[:, 0] == 2.0):
            seen["test_late" if seen["reporting"] else "test_early"] += 1
        return forward(params, x)

    def watched_loss(params, x, y, weight_decay=0.0):
        seen["trained"] += 1
        seen["val_trained"] += int(np.any(np.asarray(x)[:, 0] == 3.0))
        return loss_and_grads(params, x, y, weight_decay)

    monkeypatch.setattr(mlp, "forward", watched_forward)
    monkeypatch.setattr(mlp, "loss_and_grads", watched_loss)
    choose, test = lenet_evaluators("loglik")

    def report(params):
        seen["reporting"] = True
        return test(params)

    grid = Grid(steps=(0.5,), sparsity=(0.97,), bits=(3,))
    result = tune(load_model(), choose, target_ratio=20.0, grid=grid, test=report,
                  retrainer=lenet_retrainer(epochs=(1, 1)), rounds=2)
    assert result.retrained and seen["trained"] > 0 and result.test_metric is not None
    assert seen["test_early"] == 0 and seen["test_late"] > 0
    assert seen["val_trained"] == 0


def test_cli_target_ratio_chooses_the_bundled_lenet_on_the_log_likelihood(tmp_path, capsys):
    """`tune --target-ratio` on the bundled LeNet reports the validation log-likelihood (negative, nats), and
    `--budget` keeps accuracy, the unit its budget is stated in."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid(sparsity=(0.9, 0.97), bits=(3, 5)).as_dict()))
    dcf = tmp_path / "lenet.dcf"
    assert main(["tune", str(MODEL), "--target-ratio", "20", "--grid", str(grid), "-o", str(tmp_path / "r.json"),
                 "--save", str(dcf), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    loglik, test = lenet_evaluators("loglik")
    decoded = {n: d.values() for n, d in decompress(dcf).items()}
    assert report["dense_metric"] == loglik(load_model()) < 0 and report["metric"] == loglik(decoded)
    assert report["test_metric"] == test(decoded)  # reported as accuracy
    assert main(["tune", str(MODEL), "--budget", "0.005", "--grid", str(grid), "-o", str(tmp_path / "b.json"),
                 "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["dense_metric"] == 1.0
