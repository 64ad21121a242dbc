"""Per-tensor sensitivity, an allocation of settings for a metric budget or a target ratio, rules files (issue #12).

Each tensor of rank >= 2 is swept alone (the rest exact) over a grid of candidate pipelines (tunegrid); its
stored bytes are the real encoded streams' lengths and its metric comes from an evaluator (tensors -> float, higher is
better). The allocation (tunealloc) reads one point per tensor off the exact size-loss frontier, verifies the
combination end to end and backs off until the goal holds. With a retrainer (dcframe.analysis.retrain's protocol), each
verified combination is first retrained (the paper's loop) and judged by its retrained metric. Nothing here prints:
the CLI (dcframe/commands/tune.py) renders the result.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from dcframe.analysis.retrain import Retrainer
from dcframe.analysis.tunealloc import Frontier, Move, Point, bisect, frontier, greedy, within_budget, within_cap
from dcframe.analysis.tunegrid import DEFAULT_REL_STEPS, Grid, check_pipelines, read_json_file, resolve_grid
from dcframe.core.dtypes import is_float
from dcframe.core.errors import ConfigError, DcfError
from dcframe.core.orchestrator import decode_tensor, encode_tensor
from dcframe.core.pipeline import Policy, Rule
from dcframe.core.streams import Dense

RULES_FORMAT = "dcframe.rules/1"
MAX_RULES_FILE = 16 << 20  # bytes: a rules file is text lines, one per tensor
VALIDATION_FRACTION = 0.2  # of the training digits, held out for the built-in LeNet evaluator
SPLIT_SEED = 0
PRE_RETRAIN_SLACK = 0.1  # with retraining, the first try may lose budget + this x |dense metric| before retraining
RETRAIN_ROUNDS = 6  # retrained verifications at most (each runs the whole retraining loop)
RATIO_CANDIDATES = 4  # without retraining, --target-ratio verifies this many frontier points under the cap
RETRAIN_CANDIDATES = 3  # with retraining, it retrains this many (of `rounds`) and keeps the best retrained metric
RATIO_TRIES = 8  # caps tried when the real file misses the target ratio (container overhead, codebooks)
PLOT_POINTS = 2000  # predicted frontier points kept in results (plots and --json)

Evaluator = Callable[[dict[str, np.ndarray]], float]
Progress = Callable[[str, int], None]

__all__ = ["DEFAULT_REL_STEPS", "Evaluator", "Grid", "Move", "Point", "TuneResult", "greedy", "load_evaluator",
           "read_rules_file", "tune", "write_rules_file"]


@dataclass
class Trial:
    """One verified allocation: the point index per tensor, its metric (retrained, if so), stored stream bytes of
    every tensor, the real file's bytes when one was written, and the weights that were evaluated."""

    choice: dict[str, int]
    metric: float
    tensor_bytes: dict[str, int]
    weights: dict[str, np.ndarray]
    retrained: bool = False
    file_bytes: int | None = None
    path: Path | None = None

    @property
    def nbytes(self) -> int:
        return sum(self.tensor_bytes.values())


@dataclass
class TuneResult:
    """The sweep, the chosen point per tensor and the end-to-end metrics (validation; test if given).

    `frontier`: (stored bytes, metric) of every allocation verified end to end, in the order tried; `predicted`: the
    frontier the sweep predicts, (stored bytes, dense metric - summed losses)."""

    dense_metric: float
    metric: float
    budget: float | None
    points: dict[str, list[Point]]
    chosen: dict[str, Point]
    lossless: dict[str, Point]
    fixed_bytes: int  # tensors not tuned (rank < 2, non-float): stored losslessly
    evaluations: int
    test_dense: float | None = None
    test_metric: float | None = None
    rules: list[str] = field(default_factory=list)
    target_ratio: float | None = None
    original_bytes: int = 0
    frontier: list[tuple[int, float]] = field(default_factory=list)
    predicted: list[tuple[int, float]] = field(default_factory=list)
    tensor_bytes: dict[str, int] = field(default_factory=dict)  # the chosen allocation's stored streams per tensor
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # the chosen model (decoded; retrained if so)
    retrained: bool = False
    file_bytes: int | None = None  # the chosen model's real file, when one was written
    unreached: list[str] = field(default_factory=list)  # tensors that left the metric unchanged, nearly all 0
    fitting: dict[str, float] = field(default_factory=dict)  # GPTQ tensors' loss factor off the lines (tunehf)

    @property
    def total_bytes(self) -> int:
        return sum(self.tensor_bytes.values()) if self.tensor_bytes else \
            self.fixed_bytes + sum(p.stored for p in self.chosen.values())

    @property
    def lossless_bytes(self) -> int:
        return self.fixed_bytes + sum(p.stored for p in self.lossless.values())

    def layers(self) -> list[dict[str, Any]]:
        """The paper's per-layer columns for every tuned tensor: weights, % kept, bits per kept weight (its streams),
        ratio against float32 (streams) - plus the chosen setting and its metric cost alone. `stored` adds the
        stages' metadata (codebooks, code lengths): what the allocation counts."""
        rows = []
        for name, p in self.chosen.items():
            stored = self.tensor_bytes.get(name, p.stored)
            nbytes = stored - p.meta  # the streams
            row = {"tensor": name, "weights": None, "kept_pct": None, "bits": None, "ratio": None, "bytes": nbytes,
                   "stored": stored, "pipeline": p.pipeline, "metric_cost": self.dense_metric - p.metric}
            if name in self.weights:  # a result built elsewhere (without the model) leaves these out
                values = np.asarray(self.weights[name])
                kept = int(np.count_nonzero(values))
                row.update(weights=int(values.size), kept_pct=100 * kept / max(values.size, 1),
                           bits=8 * nbytes / kept if kept else 0.0, ratio=values.nbytes / max(nbytes, 1))
            rows.append(row)
        return rows

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"format": "dcframe.tune/2", "budget": self.budget, "target_ratio": self.target_ratio,
                "dense_metric": self.dense_metric, "metric": self.metric, "test_dense_metric": self.test_dense,
                "test_metric": self.test_metric, "retrained": self.retrained, "original_bytes": self.original_bytes,
                "total_bytes": self.total_bytes, "lossless_bytes": self.lossless_bytes, "file_bytes": self.file_bytes,
                "evaluations": self.evaluations, "unreached": self.unreached, "fitting": self.fitting,
                "rules": self.rules,
                "frontier": [list(f) for f in self.frontier], "predicted": [list(f) for f in self.predicted],
                "tensors": [{**row, "name": row["tensor"], "lossless_bytes": self.lossless[row["tensor"]].stored,
                             "points": [vars(q) for q in self.points[row["tensor"]]]} for row in self.layers()]}


def measure(name: str, dense: Dense, policy: Policy, pipeline: str,
            side: Mapping[str, np.ndarray] | None = None) -> tuple[int, np.ndarray, int]:
    """Encode one tensor with `pipeline` (and its calibration side inputs, if any): the total length of its final
    streams, its decoded values and the bytes of its stages' metadata (as msgpack, the way the container stores it)."""
    chain = policy.chain_for_pipeline(pipeline)
    encoded = encode_tensor(name, dense, chain, stats=False, side=side)
    nbytes = sum(len(s) for s in encoded.streams.values())
    decoded = decode_tensor(chain.stages, encoded.steps, encoded.streams, dense.dtype, dense.array.shape)
    return nbytes, decoded.values(), len(msgpack.packb(encoded.steps, use_bin_type=True))


def _score(evaluate: Evaluator, params: dict[str, np.ndarray]) -> float:
    """The evaluator's value as a float; a failure, a non-number or NaN is a ConfigError, not a silent wrong choice."""
    try:
        value = evaluate(params)
    except DcfError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code fails in any way; the CLI shows it on one line
        raise ConfigError(f"the evaluator failed: {type(exc).__name__}: {exc}") from exc
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"the evaluator returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"the evaluator returned {value}, not a finite number")
    return value


def check_goal(budget: float | None, target_ratio: float | None, pre_budget: float | None = None) -> None:
    """Exactly one of a metric budget (finite, >= 0) and a target ratio (finite, > 1); a pre-retraining budget, if
    given, finite and >= 0."""
    if (budget is None) == (target_ratio is None):
        raise ConfigError("give exactly one of --budget (metric loss) and --target-ratio (file size)")
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"--budget {budget!r}: give a finite metric loss >= 0")
    if target_ratio is not None and not (isinstance(target_ratio, (int, float)) and math.isfinite(target_ratio)
                                         and target_ratio > 1):
        raise ConfigError(f"--target-ratio {target_ratio!r}: give a finite ratio > 1 (original size / file size)")
    if pre_budget is not None and not (isinstance(pre_budget, (int, float)) and math.isfinite(pre_budget)
                                       and pre_budget >= 0):
        raise ConfigError(f"--pre-budget {pre_budget!r}: give a finite metric loss >= 0")


def tune(tensors: Mapping[str, np.ndarray | Dense], evaluate: Evaluator, budget: float | None = None,
         rel_steps: Sequence[float] | None = None, test: Evaluator | None = None,
         progress: Progress | None = None, *, grid: Grid | str | None = None, target_ratio: float | None = None,
         retrainer: Retrainer | None = None, pre_budget: float | None = None, save: str | os.PathLike | None = None,
         rounds: int = RETRAIN_ROUNDS) -> TuneResult:
    """Sweep every float tensor of rank >= 2 over `grid` (a Grid, a grid's name or a grid file; `rel_steps` alone: the
    uniform grid with those steps), then choose one setting per tensor: the fewest bytes within `budget` (metric loss
    on `evaluate`'s data), or the best metric at a file >= `target_ratio` x smaller than the original - exactly one.

    `retrainer` (retrain's protocol): each verified allocation is retrained and judged retrained; the first
    try allows `pre_budget` of loss before retraining (default: budget + 0.1 x |dense metric|), backing off by
    bisection along the frontier in at most `rounds` retrainings; for `target_ratio`, the pick and its two smaller
    frontier neighbours are retrained and the best retrained metric kept (on a validation split the dense model
    classifies perfectly, use a metric that does not saturate, e.g. lenet_evaluators("loglik")). `test`, if given,
    is evaluated once, on the dense and the chosen model, never used to choose. `save`: write the chosen
    (retrained) model's .dcf there."""
    check_goal(budget, target_ratio, pre_budget)
    search = Search.start(tensors, evaluate, resolve_grid(grid, rel_steps), retrainer, progress)
    try:
        if budget is not None:
            trial = search.for_budget(float(budget), pre_budget, rounds)
        else:
            trial = search.for_ratio(float(target_ratio), rounds)
        result = search.result(trial, budget, target_ratio)
        if test is not None:
            result.test_dense = _score(test, search.exact)
            result.test_metric = _score(test, trial.weights)
        if save is not None:
            search.save(trial, save)
        return result
    finally:
        search.close()


def sweep(tuned: list[str], dense: dict[str, Dense], exact: dict[str, np.ndarray], policy: Policy, lossless: str,
          grid: Grid, evaluate: Evaluator, base: float,
          progress: Progress | None) -> tuple[dict[str, list[Point]], dict[str, dict[str, np.ndarray]]]:
    """Each tensor alone through each candidate, each encoded once: points (the lossless one first, at the dense
    metric) and the decoded values, which the verifications reuse."""
    points: dict[str, list[Point]] = {}
    decoded: dict[str, dict[str, np.ndarray]] = {}
    for name in tuned:
        points[name], decoded[name] = [], {}
        for pipeline in grid.pipelines(exact[name], lossless):
            nbytes, values, meta = measure(name, dense[name], policy, pipeline)
            metric = base if pipeline == lossless else _score(evaluate, {**exact, name: values})
            points[name].append(Point(pipeline, nbytes, metric, distortion(exact[name], values), meta))
            decoded[name][pipeline] = values
            if progress:
                progress(name, 1)
    return points, decoded


def distortion(exact: np.ndarray, approx: np.ndarray) -> float:
    """||w - w'||^2 / ||w||^2 (0 for an all-zero tensor kept exact): the tie-breaker between equal metric losses."""
    a, b = exact.astype(np.float64, copy=False), approx.astype(np.float64, copy=False)
    err = float(np.sum(np.square(a - b)))
    norm = float(np.sum(np.square(a)))
    return err / norm if norm > 0 else (0.0 if err == 0 else math.inf)


def tunable(dense: Dense) -> bool:
    """Tensors the sweep varies: floats of rank >= 2 (weight matrices, kernels); the rest stay exact."""
    return dense.array.ndim >= 2 and is_float(dense.dtype)


def sweep_size(tensors: Mapping[str, np.ndarray | Dense], rel_steps: Sequence[float] | None = None,
               grid: Grid | str | None = None) -> int:
    """How many points tune() measures (the progress bar's total): one per candidate of each tuned tensor."""
    lossless = Policy().lossless_pipeline()
    chosen = resolve_grid(grid, rel_steps)
    dense = (t if isinstance(t, Dense) else Dense.of(np.asarray(t)) for t in tensors.values())
    return sum(len(chosen.pipelines(d.values(), lossless)) for d in dense if tunable(d))


@dataclass
class Search:
    """The sweep's measurements and the verifications built on them (one tune() call)."""

    dense: dict[str, Dense]
    exact: dict[str, np.ndarray]
    evaluate: Evaluator
    base: float
    points: dict[str, list[Point]]
    decoded: dict[str, dict[str, np.ndarray]]
    fixed: dict[str, int]
    front: Frontier
    policy: Policy
    retrainer: Retrainer | None
    progress: Progress | None
    tmp: Path
    evaluations: int = 0
    trials: list[Trial] = field(default_factory=list)
    probes: dict[int, int] = field(default_factory=dict)  # frontier index -> its file's bytes without retraining

    @classmethod
    def start(cls, tensors: Mapping[str, np.ndarray | Dense], evaluate: Evaluator, grid: Grid,
              retrainer: Retrainer | None, progress: Progress | None) -> Search:
        """Check the grid, measure the dense metric and sweep."""
        policy = Policy()
        check_pipelines(grid, policy)
        lossless = policy.lossless_pipeline()
        dense = {n: (t if isinstance(t, Dense) else Dense.of(np.asarray(t))) for n, t in tensors.items()}
        exact = {n: d.values() for n, d in dense.items()}
        tuned = [n for n, d in dense.items() if tunable(d)]
        fixed = {n: sum(measure(n, dense[n], policy, lossless)[::2]) for n in dense if n not in tuned}
        base = _score(evaluate, exact)
        points, decoded = sweep(tuned, dense, exact, policy, lossless, grid, evaluate, base, progress)
        evaluations = 1 + sum(len(p) - 1 for p in points.values())
        return cls(dense, exact, evaluate, base, points, decoded, fixed, frontier(points, base), policy, retrainer,
                   progress, Path(tempfile.mkdtemp(prefix="dcframe-tune-")), evaluations)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def original_bytes(self) -> int:
        return sum(d.array.nbytes for d in self.dense.values())

    def rules(self, choice: Mapping[str, int]) -> list[str]:
        return rules_for({n: self.points[n][i] for n, i in choice.items()})

    def score(self, params: dict[str, np.ndarray]) -> float:
        self.evaluations += 1
        return _score(self.evaluate, params)

    def plain(self, choice: dict[str, int]) -> Trial:
        """Verify a combination as swept (no retraining): the decoded tensors together, measured, not summed."""
        weights = {**self.exact, **{n: self.decoded[n][self.points[n][i].pipeline] for n, i in choice.items()}}
        sizes = {**self.fixed, **{n: self.points[n][i].stored for n, i in choice.items()}}
        trial = Trial(choice, self.score(weights), sizes, weights)
        self.trials.append(trial)
        return trial

    def retrained(self, choice: dict[str, int]) -> Trial:
        """Verify a combination through the retraining loop: compress with retraining, decode the file, evaluate."""
        from dcframe.analysis.retrain import compress_with_retraining
        from dcframe.api import decompress

        path = self.tmp / f"trial{len(self.trials)}.dcf"
        if self.progress:
            self.progress(f"retraining {len(self.trials) + 1}", 0)
        report = compress_with_retraining(self.dense, path, self.retrainer, rules=self.rules(choice))
        weights = {n: d.values() for n, d in decompress(path).items()}
        meta = {**{n: 0 for n in self.fixed}, **{n: self.points[n][i].meta for n, i in choice.items()}}
        sizes = {t["name"]: sum(t["streams"].values()) + meta[t["name"]] for t in report["tensors"]}
        trial = Trial(choice, self.score(weights), sizes, weights, True, report["compressed_bytes"], path)
        self.trials.append(trial)
        return trial

    def verify(self, index: int) -> Trial:
        """Frontier point `index`, verified (retrained when there is a retrainer)."""
        choice = self.front.choice(index)
        return self.retrained(choice) if self.retrainer is not None else self.plain(choice)

    def lossless_trial(self) -> Trial:
        """Every tensor lossless: the dense metric exactly, no evaluation needed."""
        sizes = {**self.fixed, **{n: p[0].stored for n, p in self.points.items()}}
        trial = Trial({n: 0 for n in self.points}, self.base, sizes, dict(self.exact))
        self.trials.append(trial)
        return trial

    def plain_budget(self, budget: float) -> Trial:
        """Without retraining: the smallest predicted combination within `budget`, verified; if it misses, bisection
        along the frontier towards less loss finds the smallest that holds (all-lossless at worst)."""
        start, last = within_budget(self.front, budget), len(self.front) - 1
        found: dict[int, Trial] = {}

        def ok(i: int) -> bool:
            found[i] = found.get(i) or self.plain(self.front.choice(i))
            return self.base - found[i].metric <= budget + 1e-12

        if ok(start):
            return found[start]
        if not ok(last):
            return self.lossless_trial()
        return found[bisect(ok, start, last)]

    def for_budget(self, budget: float, pre_budget: float | None, rounds: int) -> Trial:
        """The fewest bytes within `budget`; with a retrainer, tried first at the looser pre-retraining budget."""
        safe = self.plain_budget(budget)
        if self.retrainer is None:
            return safe
        pre = budget + PRE_RETRAIN_SLACK * abs(self.base) if pre_budget is None else max(pre_budget, budget)
        start = within_budget(self.front, pre)
        good = self._index_of(safe)
        top = len(self.front) - 1 if good is None else good
        passed: dict[int, Trial] = {}
        measured = 0

        def ok(i: int) -> bool:
            nonlocal measured
            measured += 1
            trial = self.verify(i)
            if self.base - trial.metric <= budget + 1e-12:
                passed[i] = trial
            return i in passed

        if rounds < 1:
            return safe
        if ok(start) or start >= top:
            return passed.get(start, safe)
        index = bisect(ok, start, top, max(rounds - 2, 0))  # leaves one round for `top` itself
        if index in passed or (index == top and measured < rounds and ok(top)):
            return passed[index]
        return safe  # no retrained allocation held the budget: the verified plain one

    def _index_of(self, trial: Trial) -> int | None:
        """The frontier index of a trial's combination (None for all-lossless when it is not on the frontier)."""
        row = np.array([trial.choice[n] for n in self.front.names], np.int32)
        hits = np.flatnonzero((self.front.choices == row).all(axis=1))
        return int(hits[0]) if len(hits) else None

    def real_file(self, trial: Trial) -> int:
        """The bytes of the file the trial's rules write, as `compress --rules-file` writes it (stats included); a
        trial without retraining whose frontier point was probed (file_bytes_at) has that very file's size."""
        if trial.file_bytes is None:
            index = None if trial.retrained else self._index_of(trial)
            if index in self.probes:
                trial.file_bytes = self.probes[index]
            else:
                self._write(trial)
        return trial.file_bytes

    def _write(self, trial: Trial) -> None:
        """Write the file the trial's rules give (its path and size kept on the trial)."""
        from dcframe.api import compress

        trial.path = self.tmp / f"trial{self.trials.index(trial)}.dcf"
        trial.file_bytes = compress(self.dense, trial.path, rules=self.rules(trial.choice))["compressed_bytes"]

    def file_bytes_at(self, index: int) -> int:
        """The bytes of the file frontier point `index`'s rules write without retraining (cached): a size probe,
        no evaluation; retraining moves shared values, not symbols, so a retrained file is the same size or close."""
        if index not in self.probes:
            from dcframe.api import compress

            rules = self.rules(self.front.choice(index))
            self.probes[index] = compress(self.dense, self.tmp / "probe.dcf", rules=rules)["compressed_bytes"]
        return self.probes[index]

    def ratio_pick(self, goal: float, ratio: float, overhead: int) -> int:
        """The frontier index with the least predicted loss whose real file fits `goal` bytes: the cap starts at the
        goal less the lossless file's `overhead` and goes below the pick by its miss (more streams carry more), down
        to the smallest point at worst; from a fit it steps back up while the next point fits too."""
        index = within_cap(self.front, math.floor(goal) - overhead - sum(self.fixed.values()))
        missed = len(self.front)  # the least index whose file is known to miss
        for _ in range(RATIO_TRIES):
            if index is None or (index == 0 and self.file_bytes_at(0) > goal):
                smallest = self.file_bytes_at(0)
                raise ConfigError(f"--target-ratio {ratio:g}: out of this grid's reach (its smallest setting "
                                  f"writes {smallest:,} bytes, {self.original_bytes / smallest:.1f}x); "
                                  f"give a lower ratio or a grid with more pruning or fewer bits")
            miss = self.file_bytes_at(index) - goal
            if miss <= 0:
                while index + 1 < missed and self.file_bytes_at(index + 1) <= goal:  # the cap went too far
                    index += 1
                return index
            missed = index
            index = within_cap(self.front, int(self.front.nbytes[index]) - math.ceil(miss)) or 0
        raise ConfigError(f"--target-ratio {ratio:g}: the files written stayed larger than "
                          f"{math.floor(goal):,} bytes after {RATIO_TRIES} tries")

    def for_ratio(self, ratio: float, rounds: int) -> Trial:
        """The best metric with the file >= `ratio` x smaller than the original: the pick (ratio_pick) and its
        smaller neighbours on the frontier whose files fit, verified (retrained when retraining, at most `rounds`),
        the best whose verified file holds the ratio kept. Retraining can grow a file (uniform's steps are absolute,
        and weights retrained after pruning fill more bins): then one candidate is retrained at each of several
        lower goals for the file written without retraining (the goal less 1, 1.5, 2 x the largest growth seen)."""
        goal = self.original_bytes / ratio
        overhead = self.real_file(self.lossless_trial()) - self.trials[-1].nbytes
        self.trials.pop()  # the overhead probe is no allocation tried
        per_try = RATIO_CANDIDATES if self.retrainer is None else RETRAIN_CANDIDATES
        left = max(rounds, 1) if self.retrainer is not None else per_try  # verifications in all
        targets = [(goal, per_try)]  # (what a file written without retraining must fit, candidates there)
        tried: dict[int, Trial] = {}
        while True:
            fresh = self._candidates(targets, ratio, overhead, tried)[:left]
            for i in fresh:
                tried[i] = self.verify(i)
            left -= len(fresh)
            fits = [t for t in tried.values() if self.real_file(t) <= goal]
            if fits:
                return max(fits, key=lambda t: (t.metric, -t.nbytes))
            if left <= 0 or not fresh:
                raise ConfigError(f"--target-ratio {ratio:g}: the retrained files stayed larger than "
                                  f"{math.floor(goal):,} bytes after {len(tried)} retrainings")
            grown = max(self.real_file(t) - self.file_bytes_at(i) for i, t in tried.items())
            targets = [(goal - grown * (1 + k / 2), 1) for k in range(per_try)]

    def _candidates(self, targets: list[tuple[float, int]], ratio: float, overhead: int,
                    tried: Mapping[int, Trial]) -> list[int]:
        """Frontier indices not tried yet: for each (goal, count), the pick for that goal and its next smaller
        points whose files fit it, `count` of them (a bounded walk down the frontier); goals out of reach skipped,
        unless all are."""
        out: list[int] = []
        for target, count in targets:
            try:
                index = self.ratio_pick(target, ratio, overhead)
            except ConfigError:
                if out or target != targets[0][0]:
                    break
                raise
            below = range(index, max(index - RATIO_TRIES * count, -1), -1)
            out += itertools.islice((i for i in below if i not in tried and i not in out
                                     and self.file_bytes_at(i) <= target), count)
        return out

    def result(self, trial: Trial, budget: float | None, target_ratio: float | None) -> TuneResult:
        """The TuneResult of the chosen trial."""
        chosen = {n: self.points[n][i] for n, i in trial.choice.items()}
        lossless = {n: p[0] for n, p in self.points.items()}
        fixed = sum(self.fixed.values())
        keep = np.unique(np.linspace(0, len(self.front) - 1, min(len(self.front), PLOT_POINTS)).astype(np.int64))
        predicted = [(int(self.front.nbytes[i]) + fixed, self.base - float(self.front.loss[i])) for i in keep]
        return TuneResult(self.base, trial.metric, None if budget is None else float(budget), self.points, chosen,
                          lossless, fixed, self.evaluations, rules=self.rules(trial.choice),
                          target_ratio=target_ratio, original_bytes=self.original_bytes,
                          frontier=[(t.nbytes, t.metric) for t in self.trials], predicted=predicted,
                          tensor_bytes=dict(trial.tensor_bytes), weights=trial.weights, retrained=trial.retrained,
                          file_bytes=trial.file_bytes)

    def save(self, trial: Trial, path: str | os.PathLike) -> None:
        """Write the chosen model's file to `path` (the retrained file as it was verified, else a fresh compress),
        atomically: a failure leaves an existing file untouched."""
        if trial.path is None:
            self._write(trial)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            shutil.copyfile(trial.path, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def escape_glob(name: str) -> str:
    """A tensor name as an fnmatch pattern matching only itself ('*', '?', '[' bracketed; '=' as '?', since a rule
    splits at its first '=')."""
    out = []
    for ch in name:
        out.append(f"[{ch}]" if ch in "*?[" else "?" if ch == "=" else ch)
    return "".join(out)


def rules_for(chosen: Mapping[str, Point]) -> list[str]:
    """One GLOB=PIPELINE rule per tuned tensor, in file order."""
    return [f"{escape_glob(name)}={p.pipeline}" for name, p in chosen.items()]


def write_rules_file(path: str | os.PathLike, rules: Sequence[str]) -> None:
    """Write a rules file (JSON, format dcframe.rules/1) atomically: a failure leaves an existing file untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"format": RULES_FORMAT, "rules": list(rules)}, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_rules_file(path: str | os.PathLike) -> list[str]:
    """The rules of a rules file, each parsed and its pipeline checked; anything else is a one-line ConfigError."""
    data = read_json_file(path, f"rules file {str(path)!r}", RULES_FORMAT, MAX_RULES_FILE)
    rules = data.get("rules")
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise ConfigError(f"rules file {str(path)!r}: \"rules\" must be a list of \"GLOB=PIPELINE\" strings")
    policy = Policy()
    for i, text in enumerate(rules):
        try:
            policy.chain_for_pipeline(Rule.parse(text).pipeline)
        except DcfError as exc:
            raise ConfigError(f"rules file {str(path)!r}, rule {i + 1}: {exc}") from None
    return rules


def load_evaluator(spec: str) -> Evaluator:
    """Import `module:function` (the way uvicorn names an app), the current directory first on the path."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--eval {spec!r}: expected MODULE:FUNCTION, e.g. myeval:accuracy")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - user code can fail to import in any way; report it on one line
        raise ConfigError(f"--eval {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") \
            from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--eval {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--eval {spec!r}: {attr!r} is a {type(target).__name__}, not a function")
    return target


LENET_SHAPES = {"fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300), "fc2.bias": (100,),
                "fc3.weight": (10, 100), "fc3.bias": (10,)}


def is_lenet(tensors: Mapping[str, Any]) -> bool:
    """Whether a model is the bundled LeNet-300-100's architecture (its built-in evaluator applies)."""
    return set(tensors) == set(LENET_SHAPES) and all(
        tuple((t.array if isinstance(t, Dense) else np.asarray(t)).shape) == LENET_SHAPES[n]
        for n, t in tensors.items())


def lenet_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training digits: (validation, the rest), a fixed-seed split; retraining sees only the rest."""
    from dcframe.analysis.demo import load_digits

    n = len(load_digits()[0])
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(n * VALIDATION_FRACTION)
    return order[:cut], order[cut:]


LENET_METRICS = ("accuracy", "loglik")


def lenet_evaluators(metric: str = "accuracy") -> tuple[Evaluator, Evaluator]:
    """The validation metric on a fixed-seed split of the training digits (for choosing) and accuracy on the test
    digits (reported only). `metric`: "accuracy", or "loglik", the mean log-likelihood of the true digit (minus the
    cross-entropy, nats): the dense network saw the validation digits in training and classifies all of them, so
    accuracy ties nearly every candidate at 100% while the log-likelihood still ranks them."""
    from dcframe.analysis.demo import load_digits
    from dcframe.analysis.mlp import accuracy, log_likelihood

    if metric not in LENET_METRICS:
        raise ConfigError(f"LeNet metric {metric!r}: choose from {', '.join(LENET_METRICS)}")
    x_train, y_train, x_test, y_test = load_digits()
    val, _ = lenet_split()
    x_val, y_val = x_train[val], y_train[val]
    score = accuracy if metric == "accuracy" else log_likelihood

    def as32(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32) for k, v in params.items()}

    return (lambda p: score(as32(p), x_val, y_val),
            lambda p: accuracy(as32(p), x_test, y_test))


LENET_EPOCHS = (16, 8)  # retraining epochs after pruning, after sharing (the demo: 8, 4, on all training digits)


def lenet_retrainer(epochs: tuple[int, int] = LENET_EPOCHS) -> Retrainer:
    """The demo's retraining loop (masks fixed, shared centroids trained; its rates and batch size) on the training
    digits outside the validation split, so choosing on the validation split stays fair."""
    from dcframe.analysis.demo import DemoSettings, load_digits
    from dcframe.analysis.mlp import train

    x_train, y_train, _, _ = load_digits()
    _, fit = lenet_split()
    s = DemoSettings()

    def retrain(weights, constraints, phase):  # noqa: ANN001 - the dcframe.analysis.retrain protocol
        pruning = phase.index == 1 and "prune" in phase.stages.values()
        return train(weights, x_train[fit], y_train[fit], epochs=epochs[0] if pruning else epochs[1],
                     lr=s.prune_lr if pruning else s.quant_lr, batch_size=s.batch_size, weight_decay=s.weight_decay,
                     seed=s.seed + phase.index, constraints=constraints)

    return retrain
