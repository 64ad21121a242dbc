"""Per-tensor sensitivity and a greedy allocation of settings under a metric budget (issue #12, first slice).

Each tensor of rank >= 2 is swept alone (the rest exact) over a grid of candidate pipelines; its stored bytes are the
real encoded streams' lengths and its metric comes from an evaluator (decoded tensors -> float, higher is better).
The allocation then picks one point per tensor, verifies the combination end to end and backs off until the budget
holds. Nothing here prints: the CLI (dcframe/commands/tune.py) renders the result.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import is_float
from .errors import ConfigError, DcfError
from .orchestrator import decode_tensor, encode_tensor
from .pipeline import Policy, Rule
from .streams import Dense

RULES_FORMAT = "dcframe.rules/1"
MAX_RULES_FILE = 16 << 20  # bytes: a rules file is text lines, one per tensor
DEFAULT_REL_STEPS = (0.05, 0.1, 0.2, 0.35, 0.5)  # uniform steps relative to the tensor's RMS
VALIDATION_FRACTION = 0.2  # of the training digits, held out for the built-in LeNet evaluator
SPLIT_SEED = 0
EXACT_LIMIT = 1 << 16  # combinations of points up to which the allocation tries all of them

Evaluator = Callable[[dict[str, np.ndarray]], float]
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Point:
    """One measured setting of one tensor: its pipeline, stored bytes and the metric with only it approximated."""

    pipeline: str
    nbytes: int
    metric: float


@dataclass
class TuneResult:
    """The sweep, the chosen point per tensor and the end-to-end metrics (validation; test if given)."""

    dense_metric: float
    metric: float
    budget: float
    points: dict[str, list[Point]]
    chosen: dict[str, Point]
    lossless: dict[str, Point]
    fixed_bytes: int  # tensors not tuned (rank < 2, non-float): stored losslessly
    evaluations: int
    test_dense: float | None = None
    test_metric: float | None = None
    rules: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + sum(p.nbytes for p in self.chosen.values())

    @property
    def lossless_bytes(self) -> int:
        return self.fixed_bytes + sum(p.nbytes for p in self.lossless.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"format": "dcframe.tune/1", "budget": self.budget, "dense_metric": self.dense_metric,
                "metric": self.metric, "test_dense_metric": self.test_dense, "test_metric": self.test_metric,
                "total_bytes": self.total_bytes, "lossless_bytes": self.lossless_bytes,
                "evaluations": self.evaluations, "rules": self.rules,
                "tensors": [{"name": n, "pipeline": p.pipeline, "bytes": p.nbytes,
                             "lossless_bytes": self.lossless[n].nbytes, "metric_cost": self.dense_metric - p.metric,
                             "points": [vars(q) for q in self.points[n]]} for n, p in self.chosen.items()]}


def candidate_pipelines(values: np.ndarray, rel_steps: Sequence[float], lossless: str) -> list[str]:
    """The grid for one tensor: `uniform(step=s) | huffman` for s = rel x the tensor's RMS, plus the lossless chain.

    Absolute steps (6 significant digits) make each rule replay to the same bytes whatever else is compressed."""
    rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0
    grid = [lossless]
    if rms > 0 and math.isfinite(rms):
        grid += [f"uniform(step={float(f'{r * rms:.6g}')!r}) | huffman" for r in rel_steps]
    return list(dict.fromkeys(grid))


def measure(name: str, dense: Dense, policy: Policy, pipeline: str) -> tuple[int, np.ndarray]:
    """Encode one tensor with `pipeline`: the total length of its final streams and its decoded values."""
    chain = policy.chain_for_pipeline(pipeline)
    encoded = encode_tensor(name, dense, chain, stats=False)
    nbytes = sum(len(s) for s in encoded.streams.values())
    decoded = decode_tensor(chain.stages, encoded.steps, encoded.streams, dense.dtype, dense.array.shape)
    return nbytes, decoded.values()


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


def tune(tensors: Mapping[str, np.ndarray | Dense], evaluate: Evaluator, budget: float,
         rel_steps: Sequence[float] = DEFAULT_REL_STEPS, test: Evaluator | None = None,
         progress: Progress | None = None) -> TuneResult:
    """Sweep every float tensor of rank >= 2, allocate under `budget` (metric loss on `evaluate`'s data) and verify.

    `test`, if given, is evaluated on the dense and the chosen model only, never used to choose."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"--budget {budget!r}: give a finite metric loss >= 0")
    if not rel_steps or any(not (0 < r < math.inf) for r in rel_steps):
        raise ConfigError(f"relative steps {list(rel_steps)!r}: give numbers > 0")
    policy = Policy()
    lossless = policy.lossless_pipeline()
    dense = {n: (t if isinstance(t, Dense) else Dense.of(np.asarray(t))) for n, t in tensors.items()}
    exact = {n: d.values() for n, d in dense.items()}
    tuned = [n for n, d in dense.items() if tunable(d)]
    fixed = sum(measure(n, dense[n], policy, lossless)[0] for n in dense if n not in tuned)
    base = _score(evaluate, exact)
    points, decoded = sweep(tuned, dense, exact, policy, lossless, rel_steps, evaluate, base, progress)
    chosen, metric, evaluations = allocate(points, decoded, exact, evaluate, base, budget)
    lossless_pts = {n: points[n][0] for n in tuned}
    result = TuneResult(base, metric, float(budget), points, chosen, lossless_pts, fixed,
                        evaluations + sum(len(p) - 1 for p in points.values()) + 1)
    result.rules = rules_for(chosen)
    if test is not None:
        result.test_dense = _score(test, exact)
        result.test_metric = _score(test, {**exact, **{n: decoded[n][p.pipeline] for n, p in chosen.items()}})
    return result


def sweep(tuned: list[str], dense: dict[str, Dense], exact: dict[str, np.ndarray], policy: Policy, lossless: str,
          rel_steps: Sequence[float], evaluate: Evaluator, base: float,
          progress: Progress | None) -> tuple[dict[str, list[Point]], dict[str, dict[str, np.ndarray]]]:
    """Each tensor alone through each candidate: points (the lossless one first, at the dense metric) and decodes."""
    points: dict[str, list[Point]] = {}
    decoded: dict[str, dict[str, np.ndarray]] = {}
    for name in tuned:
        points[name], decoded[name] = [], {}
        for pipeline in candidate_pipelines(exact[name], rel_steps, lossless):
            nbytes, values = measure(name, dense[name], policy, pipeline)
            metric = base if pipeline == lossless else _score(evaluate, {**exact, name: values})
            points[name].append(Point(pipeline, nbytes, metric))
            decoded[name][pipeline] = values
            if progress:
                progress(name, 1)
    return points, decoded


def tunable(dense: Dense) -> bool:
    """Tensors the sweep varies: floats of rank >= 2 (weight matrices, kernels); the rest stay exact."""
    return dense.array.ndim >= 2 and is_float(dense.dtype)


def sweep_size(tensors: Mapping[str, np.ndarray | Dense], rel_steps: Sequence[float] = DEFAULT_REL_STEPS) -> int:
    """How many points tune() measures (the progress bar's total): one per candidate of each tuned tensor."""
    lossless = Policy().lossless_pipeline()
    dense = (t if isinstance(t, Dense) else Dense.of(np.asarray(t)) for t in tensors.values())
    return sum(len(candidate_pipelines(d.values(), rel_steps, lossless)) for d in dense if tunable(d))


@dataclass(frozen=True)
class Move:
    """One greedy step: tensor `name` from point index `src` to `dst`, saving `saved` bytes for `lost` metric."""

    name: str
    src: int
    dst: int
    saved: int
    lost: float

    @property
    def efficiency(self) -> float:
        return self.saved / self.lost if self.lost > 0 else math.inf


def greedy(points: dict[str, list[Point]], base: float, budget: float) -> list[Move]:
    """Repeatedly take the move with the most bytes saved per metric lost, while the summed (predicted) loss of the
    tensors' current points stays within `budget`. Each point's loss is its metric drop alone (0 if it gained)."""
    current = {n: 0 for n in points}
    loss = {n: 0.0 for n in points}
    moves: list[Move] = []
    while True:
        spent = sum(loss.values())
        best: Move | None = None
        for name, pts in points.items():
            here = pts[current[name]]
            for j, p in enumerate(pts):
                lost = max(base - p.metric, 0.0) - loss[name]
                if p.nbytes >= here.nbytes or spent + lost > budget + 1e-12:
                    continue
                move = Move(name, current[name], j, here.nbytes - p.nbytes, max(lost, 0.0))
                if best is None or (move.efficiency, move.saved) > (best.efficiency, best.saved):
                    best = move
        if best is None:
            return moves
        moves.append(best)
        current[best.name] = best.dst
        loss[best.name] = max(base - points[best.name][best.dst].metric, 0.0)


def exact_choice(points: dict[str, list[Point]], base: float, budget: float,
                 limit: int = EXACT_LIMIT) -> dict[str, int] | None:
    """The point index per tensor with the fewest total bytes whose summed losses fit `budget`, by trying every
    combination (vectorized); None when there are more than `limit` combinations. Ties go to the smaller loss."""
    names = list(points)
    if not names:
        return {}
    if math.prod(len(points[n]) for n in names) > limit:
        return None
    grids = np.meshgrid(*[np.arange(len(points[n])) for n in names], indexing="ij")
    index = [g.ravel() for g in grids]
    nbytes = sum(np.array([p.nbytes for p in points[n]], np.int64)[i] for n, i in zip(names, index, strict=True))
    loss = sum(np.array([max(base - p.metric, 0.0) for p in points[n]])[i] for n, i in zip(names, index, strict=True))
    fits = np.flatnonzero(np.asarray(loss) <= budget + 1e-12)  # all-lossless (loss 0) always fits
    best = fits[np.lexsort((np.asarray(loss)[fits], np.asarray(nbytes)[fits]))[0]]
    return {n: int(i[best]) for n, i in zip(names, index, strict=True)}


def _verified(points: dict[str, list[Point]], decoded: dict[str, dict[str, np.ndarray]], exact: dict[str, np.ndarray],
              evaluate: Evaluator, current: dict[str, int]) -> float:
    """The metric of the model with every tensor at its chosen point (tensors interact: measured, not summed)."""
    return _score(evaluate, {**exact, **{n: decoded[n][points[n][i].pipeline] for n, i in current.items()}})


def allocate(points: dict[str, list[Point]], decoded: dict[str, dict[str, np.ndarray]],
             exact: dict[str, np.ndarray], evaluate: Evaluator, base: float,
             budget: float) -> tuple[dict[str, Point], float, int]:
    """The best combination by summed losses (exact when small, else greedy), verified end to end; if it misses the
    budget, the greedy path backs off, undoing the least efficient last move of any tensor, until the measured loss
    is within budget. Returns the chosen points, their metric and the evaluations spent."""
    evaluations = 0
    best = exact_choice(points, base, budget)
    if best is not None and any(best.values()):
        metric = _verified(points, decoded, exact, evaluate, best)
        evaluations += 1
        if base - metric <= budget + 1e-12:
            return {n: points[n][i] for n, i in best.items()}, metric, evaluations
    moves = greedy(points, base, budget)
    while True:
        current = {n: 0 for n in points}
        for m in moves:
            current[m.name] = m.dst
        chosen = {n: points[n][i] for n, i in current.items()}
        if not moves:
            return chosen, base, evaluations
        metric = _verified(points, decoded, exact, evaluate, current)
        evaluations += 1
        if base - metric <= budget + 1e-12:
            return chosen, metric, evaluations
        last = {m.name: i for i, m in enumerate(moves)}  # each tensor's latest move: undoable
        worst = min(last.values(), key=lambda i: (moves[i].efficiency, moves[i].saved))
        del moves[worst]


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
    try:
        size = os.stat(path).st_size
        if size > MAX_RULES_FILE:
            raise ConfigError(f"rules file {str(path)!r}: {size} bytes, more than the {MAX_RULES_FILE}-byte limit")
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_RULES_FILE + 1))
    except OSError as exc:
        raise ConfigError(f"rules file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"rules file {str(path)!r}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RULES_FORMAT:
        raise ConfigError(f"rules file {str(path)!r}: not a {RULES_FORMAT} file (expected a JSON object with "
                          f'"format": "{RULES_FORMAT}")')
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


def lenet_evaluators() -> tuple[Evaluator, Evaluator]:
    """Accuracy on a fixed-seed validation split of the training digits (for choosing) and on the test digits
    (reported only)."""
    from .demo import load_digits
    from .mlp import accuracy

    x_train, y_train, x_test, y_test = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))
    val = order[:int(len(x_train) * VALIDATION_FRACTION)]

    def as32(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32) for k, v in params.items()}

    return (lambda p: accuracy(as32(p), x_train[val], y_train[val]),
            lambda p: accuracy(as32(p), x_test, y_test))
