"""Tuning a pretrained Hugging Face model without retraining: an output metric and a screened sweep (issue #12).

The metric is the mean cosine between the model's mean-pooled outputs and the dense model's on the given lines of
text. One forward pass on a few hundred sentences costs seconds on a small CPU, so the sweep does not run one per
grid point: each tensor's metric loss is modelled as c x D, where D is the calibration-weighted distortion of that
point (the layer-output error tr(dW H dW^T) where the calibration has X^T X, the activation- or Fisher-weighted squared
error where it has those, the plain squared error otherwise: to first order the cosine loss is linear in it) and c
is measured with one real evaluation per tensor. The allocation (tune.greedy on the modelled losses) is then
verified end to end on the real metric and rescaled until the budget holds; for a target ratio, the least modelled
loss under the byte cap off the exact frontier (tunealloc), the cap lowered while the real file misses it. A tensor with
rows the calibration never saw (a token embedding's unused tokens) is also offered `rowscale | tcq`, those rows
coarser; their distortion is weighted by the Good-Turing estimate of how often unseen tokens occur in other text, so
the sweep does not take them as free (its metric runs on the calibration's own lines). Needs the `hf` extra.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcframe.analysis.tune import (
    RATIO_TRIES,
    Evaluator,
    Point,
    Progress,
    TuneResult,
    check_goal,
    greedy,
    measure,
    rules_for,
    tunable,
)
from dcframe.analysis.tunealloc import frontier, within_cap
from dcframe.core.errors import ConfigError, ModelIOError
from dcframe.core.pipeline import Policy
from dcframe.core.registry import get_registry
from dcframe.core.streams import ACTIVATION, FISHER, HESSIAN, OUTPUT, Dense
from dcframe.io.calibration import Calibration

# Uniform steps relative to each tensor's RMS, about 1.25x apart where the transformer's choices fall (0.085-0.3);
# the 1.45x grid before gave ~1% larger files at the same budget.
HF_REL_STEPS = (0.05, 0.065, 0.085, 0.11, 0.14, 0.17, 0.2, 0.25, 0.3, 0.45, 0.65, 0.9)
SCALE_AT = 0.3  # the relative step whose real evaluation scales a tensor's distortion into a metric loss
# GPTQ (a tensor with X^T X) runs on uniform's grid without a dead zone: measured, a dead zone costs it more error than
# the bits it saves (encoder.layer.2 of all-MiniLM-L6-v2: 3-10% more bits at equal layer-output error). The other
# tensors (embeddings, and every tensor without a calibration) take tcq, 4-10% fewer bits than uniform at equal error.
ROW_SHIFTS = (1, 2, 3)  # rowscale exponents tried on rows the calibration never saw (4 was never chosen)
# Position tables: their unseen rows are the positions past the longest calibration line, which longer served text
# reaches; the tokens' missing-mass estimate says nothing about them, so they are never offered rowscale.
POSITIONAL = ("*position_embeddings.weight", "*embed_positions.weight", "*wpe.weight")
# A tensor whose probe left the metric bit for bit unchanged, and whose coarsest step here (nearly all its weights 0)
# leaves it unchanged too, does not reach it (BERT's pooler under mean pooling): it is also offered these steps. A
# metric that saturates (accuracy on a few samples) can leave a probe unchanged; the second evaluation keeps such a
# tensor at the grid, whose modelled loss the verification can then back off from.
UNREACHED_REL_STEPS = (2.0, 8.0, 32.0)
MAX_EVALUATIONS = 8  # end-to-end verifications of the allocation, once one fits
MAX_PLANS = 60  # planning budgets tried (a plan landing on a measured allocation costs nothing)
BATCH = 32


class ModelSlot:
    """A torch model whose weights are replaced in place, copying only the tensors that changed since the last load
    (shared by the metrics that run the same model)."""

    def __init__(self, model: Any) -> None:
        import torch

        self.model, self.torch = model, torch
        self.own = dict(model.state_dict())
        self.loaded: dict[str, int] = {}

    def check_names(self, names: Sequence[str], where: str) -> None:
        """Every tensor the tuning varies must be a weight of the model (a ModelIOError names the first one not)."""
        for name in names:
            if name not in self.own:
                raise ModelIOError(f"{where}: tensor '{name}' is not a weight of the model transformers loads "
                                   f"(its names look like {next(iter(self.own))!r})")

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy the changed tensors into the model; names it lacks (non-persistent buffers) are left out."""
        with self.torch.no_grad():
            for name, values in params.items():
                if name in self.own and self.loaded.get(name) != id(values):
                    target = self.own[name]
                    array = np.ascontiguousarray(values)
                    array = array if array.flags.writeable else array.copy()  # torch refuses read-only memory
                    target.copy_(self.torch.from_numpy(array).reshape(target.shape))
                    self.loaded[name] = id(values)


class EmbeddingMetric:
    """Mean cosine of mean-pooled last hidden states against the dense model's, on fixed lines of text.

    Called with a dict name -> array (the model's state-dict names). Lines are batched by length, so little padding
    is computed. The reference is the model as it is when the metric is made: make it before changing weights."""

    def __init__(self, slot: ModelSlot, tokenizer: Any, lines: Sequence[str], max_length: int = 128) -> None:
        self.slot = slot
        order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
        self.batches = [tokenizer([lines[i] for i in order[k:k + BATCH]], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt") for k in range(0, len(order), BATCH)]
        self.reference = self._embed()

    def _embed(self) -> np.ndarray:
        out = []
        with self.slot.torch.no_grad():
            for enc in self.batches:
                hidden = self.slot.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1)).double().numpy())
        emb = np.concatenate(out)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)

    def __call__(self, params: Mapping[str, np.ndarray]) -> float:
        self.slot.load(params)
        return float(np.mean(np.sum(self._embed() * self.reference, axis=1)))


def row_activity(side: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each row's (first axis) largest activation: 0 on a row the calibration text never used (activations are
    second moments or frequencies, never negative)."""
    act = np.asarray(side[ACTIVATION])
    return act.reshape(act.shape[0], -1).max(axis=1)


def unseen_rows(side: Mapping[str, np.ndarray], activity: np.ndarray | None = None) -> np.ndarray | None:
    """Rows (first axis) whose activation is zero everywhere, e.g. a token embedding's tokens the calibration text
    never used, as a boolean mask; None if there is no activation or no such row. `activity`: row_activity(side),
    if already computed."""
    if ACTIVATION not in side or side[ACTIVATION].ndim < 2:
        return None
    zero = (row_activity(side) if activity is None else activity) == 0
    return zero if zero.any() and not zero.all() else None


def offers_rowscale(name: str, side: Mapping[str, np.ndarray]) -> bool:
    """Whether the sweep tries rowscale on this tensor: it has unseen rows and is not a position table."""
    return unseen_rows(side) is not None and not any(fnmatch.fnmatchcase(name, g) for g in POSITIONAL)


def rare_rows(side: Mapping[str, np.ndarray], activity: np.ndarray | None = None) -> np.ndarray:
    """Rows used exactly once by the calibration text (activation = count / n: its smallest positive value)."""
    rows = row_activity(side) if activity is None else activity
    seen = rows[rows > 0]
    return np.isclose(rows, seen.min(), rtol=1e-6, atol=0) if seen.size else np.zeros(rows.shape, dtype=bool)


def row_weights(side: Mapping[str, np.ndarray]) -> np.ndarray:
    """The activation weights, unseen rows given the Good-Turing missing mass spread evenly over them: the share of
    held-out use that falls on tokens the calibration never saw is about the share of tokens it saw exactly once
    (all-MiniLM-L6-v2 on 256 sentences: 8.3% estimated, 7.3% on 400 others). Without this, coarser unseen rows
    would look free to the sweep, whose metric runs on the calibration's own text."""
    if ACTIVATION not in side or side[ACTIVATION].ndim < 2:
        return side[ACTIVATION]
    activity = row_activity(side)
    zero = unseen_rows(side, activity)
    if zero is None:
        return side[ACTIVATION]  # as given (often a broadcast view: no copy)
    act = np.array(side[ACTIVATION], dtype=np.float64)
    rows = act.reshape(act.shape[0], -1)
    rows[zero] = activity[rare_rows(side, activity)].sum() / np.count_nonzero(zero)
    return rows.reshape(act.shape)


def output_weights(side: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The `output` side input (the loss's squared gradient per output feature) relative to its mean, or None."""
    if OUTPUT not in side:
        return None
    g = np.asarray(side[OUTPUT], dtype=np.float64)
    mean = float(g.mean()) if g.size else 0.0
    return g / mean if mean > 0 and math.isfinite(mean) else None


def distortion_parts(delta: np.ndarray, side: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """The calibration-weighted squared error of a change `delta` of one weight (see the module docstring), split
    into the part the calibration's text exercises and the part on rows it never used (0 without such rows). With
    an `output` side input each output feature's error is weighted by how much the metric's loss reacts to it (the
    output factor of a Kronecker-factored Gauss-Newton matrix)."""
    d = delta.astype(np.float64, copy=False)
    out = output_weights(side)
    if out is not None:
        d = d * np.sqrt(out)
    if HESSIAN in side and d.ndim == 2:
        return float(np.einsum("oi,ij,oj->", d, side[HESSIAN].astype(np.float64), d, optimize=True)), 0.0
    if FISHER in side:
        return float(np.sum(side[FISHER] * np.square(d))), 0.0
    if ACTIVATION in side:
        weighted = row_weights(side) * np.square(d)
        zero = unseen_rows(side)
        unseen = float(np.sum(weighted[zero])) if zero is not None else 0.0
        return float(np.sum(weighted)) - unseen, unseen
    return float(np.sum(np.square(d))), 0.0


def distortion(delta: np.ndarray, side: Mapping[str, np.ndarray]) -> float:
    """Both parts of distortion_parts: the modelled distortion in use on other text."""
    return sum(distortion_parts(delta, side))


# The prefix of every step of a weight with an output side input: rows whose outputs matter less get up to 4x the
# step. Uncapped, rows the linearised sensitivity calls unimportant got steps so coarse that the real loss was 60x the
# model's (encoder.layer.0 query of all-MiniLM-L6-v2: softmax is not linear that far); capped at 2 the model held
# and each matrix was 2-4% smaller at equal real loss (cap 3 gained no more).
OUTPUT_SHIFT = 2
BY_OUTPUT = f"rowscale(by=output, shift={OUTPUT_SHIFT}) | "


def by_output(dense: Dense, side: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The values `rowscale(by=output)` gives a 2-D weight with an `output` side input whose rows it scales
    (None otherwise): each row's error is then about equally costly, and the grid's steps are relative to them."""
    if OUTPUT not in side or dense.array.ndim != 2:
        return None
    stage = get_registry().build("rowscale", {"by": "output", "shift": OUTPUT_SHIFT})
    scaled = stage.encode(Dense(dense.array, dense.dtype, dict(side)))[0]
    return scaled["values"].values() if scaled["exponents"].array.any() else None


def candidates(values: np.ndarray, rel_steps: Sequence[float], lossless: str, gptq: bool,
               unseen: bool = False, prefix: str = "") -> list[str]:
    """The lossless chain, then `prefix + QUANTIZER(step=s) | rans` for s = rel x the RMS of `values` (the tensor as
    the quantizer sees it): GPTQ on uniform's grid where the tensor has X^T X (`gptq`), else trellis-coded
    quantization with activation-weighted levels where the calibration has them (tcq, weighting=auto). With `unseen`
    rows (a token embedding's unused tokens) each step also comes after `rowscale(shift=k)` for k in ROW_SHIFTS: those
    rows 2^k times coarser."""
    rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0
    grid = [lossless]
    if rms > 0 and math.isfinite(rms):
        for r in rel_steps:
            step = float(f"{r * rms:.6g}")
            quantizer = f"uniform(step={step!r}, method=auto)" if gptq else f"tcq(step={step!r}, weighting=auto)"
            chain = f"{quantizer} | rans"
            grid += [prefix + chain, *(f"rowscale(shift={k}) | {chain}" for k in ROW_SHIFTS if unseen)]
    return list(dict.fromkeys(grid))


def rare_scale(name: str, exact: Mapping[str, np.ndarray], side: Mapping[str, np.ndarray], coarse: np.ndarray,
               evaluate: Evaluator, base: float) -> float:
    """The metric loss per unit distortion on the rows the calibration text used once, measured by giving those rows
    alone their `coarse` values: the stand-in for rows it never used (rare tokens carry more of a sentence's meaning
    per unit of error than frequent ones, so the tensor's overall scale would understate them)."""
    once = rare_rows(side)
    trial = np.array(exact[name], copy=True)
    trial[once] = coarse[once]
    weighted = np.asarray(side[ACTIVATION], dtype=np.float64)[once] * np.square(
        np.subtract(coarse[once], exact[name][once], dtype=np.float64))
    d = float(np.sum(weighted))
    return max(base - evaluate({**exact, name: trial}), 0.0) / d if d > 0 else 0.0


@dataclass
class Sweep:
    """Per tensor: its points (metric = base - modelled loss), decoded values per pipeline and the scale c."""

    points: dict[str, list[Point]]
    decoded: dict[str, dict[str, np.ndarray]]
    scale: dict[str, float]
    evaluations: int
    unreached: list[str] = field(default_factory=list)  # the metric unchanged even at UNREACHED_REL_STEPS[-1]
    fitting: dict[str, float] = field(default_factory=dict)  # GPTQ tensors' fitting_factor, given folds


def point_distortions(points: Sequence[tuple[str, int, np.ndarray, int]], exact: np.ndarray,
                      side: Mapping[str, np.ndarray]) -> list[tuple[float, float]]:
    """distortion_parts of each measured (pipeline, bytes, decoded values, metadata bytes) against `exact`."""
    return [distortion_parts(np.subtract(values, exact, dtype=np.float64), side) for _, _, values, _ in points]


def fitting_factor(name: str, dense: Dense, policy: Policy, pipeline: str, exact: np.ndarray,
                   side: Mapping[str, np.ndarray], folds: Sequence[Mapping[str, np.ndarray]]) -> float:
    """How much a GPTQ point's layer-output error grows on text its X^T X was not fitted to: the pipeline is run with
    each half's hessian (`folds`: the side inputs of two calibrations on the two halves of the lines) and its error
    measured under the other half's and its own. That ratio R is of a fit to half the rows; as for least squares,
    where fitted error over unseen error is (1 - a) / (1 + a) with a proportional to inputs / rows, the factor for a
    fit to all rows is (1 + a/2) / (1 - a/2) with a = (R - 1) / (R + 1). Against 400 other lines it was within 4%
    on all-MiniLM-L6-v2 (1.10 for 1.07 on a 384-wide input, 1.40 for 1.35 on a 1536-wide one) and
    all-mpnet-base-v2 (1.24 for 1.20, 2.03 for 2.17 on a 3072-wide one). 1.0 without both hessians."""
    hessians = [f.get(HESSIAN) for f in folds]
    if len(hessians) != 2 or any(h is None for h in hessians):
        return 1.0
    ratios = []
    for fit, other in ((0, 1), (1, 0)):
        delta = np.subtract(measure(name, dense, policy, pipeline, {**side, HESSIAN: hessians[fit]})[1], exact,
                            dtype=np.float64)
        on_fit = distortion_parts(delta, {**side, HESSIAN: hessians[fit]})[0]
        if on_fit > 0:
            ratios.append(distortion_parts(delta, {**side, HESSIAN: hessians[other]})[0] / on_fit)
    if not ratios:
        return 1.0
    half = float(np.mean(ratios))
    a = max((half - 1.0) / (half + 1.0), 0.0) / 2  # below 1/2 for any finite ratio
    return (1.0 + a) / (1.0 - a)


def screened_sweep(dense: Mapping[str, Dense], exact: Mapping[str, np.ndarray], side: Mapping[str, dict],
                   evaluate: Evaluator, base: float, rel_steps: Sequence[float],
                   progress: Progress | None = None,
                   folds: Sequence[Mapping[str, dict]] = ()) -> Sweep:
    """Encode every grid point of every tuned tensor once; evaluate one point per tensor for its scale. With `folds`
    (per tensor, the side inputs of calibrations on each half of the metric's lines), a GPTQ tensor's modelled loss
    is scaled by its fitting_factor, the excess kept as hidden loss: the metric's lines are those GPTQ was fitted to,
    and text it was not fitted to shows more error."""
    policy = Policy()
    lossless = policy.lossless_pipeline()
    scale_index = int(np.argmin(np.abs(np.asarray(rel_steps) - SCALE_AT)))
    sweep = Sweep({}, {}, {}, 0)
    for name, d in dense.items():
        own = side.get(name, {})
        scaled = by_output(d, own)
        values_in, gptq = exact[name] if scaled is None else scaled, HESSIAN in own and d.array.ndim == 2
        prefix = "" if scaled is None else BY_OUTPUT
        grid = candidates(values_in, rel_steps, lossless, gptq, offers_rowscale(name, own), prefix)
        measured = []  # (pipeline, stream bytes, decoded values, metadata bytes)
        for pipeline in grid:
            measured.append((pipeline, *measure(name, d, policy, pipeline, side.get(name))))
            if progress:
                progress(name, 1)
        decoded = {pipeline: values for pipeline, _, values, _ in measured}
        dist = point_distortions(measured, exact[name], own)
        c = c_unseen = 0.0
        plain = [p for p in grid[1:] if not p.startswith("rowscale(shift")]
        if plain:
            probe = plain[min(scale_index, len(plain) - 1)]
            loss = base - evaluate({**exact, name: decoded[probe]})  # on the calibration's text: seen rows only
            sweep.evaluations += 1
            seen = dist[grid.index(probe)][0]
            c = c_unseen = max(loss, 0.0) / seen if seen > 0 else 0.0
            if gptq and folds:
                sweep.fitting[name] = fitting_factor(name, d, policy, probe, exact[name], own,
                                                     [f.get(name, {}) for f in folds])
            if offers_rowscale(name, own):
                c_unseen = rare_scale(name, exact, own, decoded[plain[-1]], evaluate, base)
                sweep.evaluations += 1
            if loss == 0.0:  # perhaps not reached: coarser steps too, if the coarsest leaves the metric as it is
                *finer, coarsest = candidates(values_in, UNREACHED_REL_STEPS, lossless, gptq, False, prefix)[1:]
                last = (coarsest, *measure(name, d, policy, coarsest, side.get(name)))
                sweep.evaluations += 1
                if evaluate({**exact, name: last[2]}) == base:
                    sweep.unreached.append(name)
                    extra = [(pipeline, *measure(name, d, policy, pipeline, side.get(name))) for pipeline in finer]
                    extra.append(last)
                    measured += extra
                    decoded.update((pipeline, values) for pipeline, _, values, _ in extra)
                    dist += point_distortions(extra, exact[name], own)
        sweep.scale[name] = c
        r = sweep.fitting.get(name, 1.0)
        sweep.points[name] = [Point(p, n, base - c * ds * r - c_unseen * du, meta=m,
                                    hidden=c * ds * (r - 1.0) + c_unseen * du)
                              for (p, n, _, m), (ds, du) in zip(measured, dist, strict=True)]
        sweep.decoded[name] = decoded
    return sweep


def allocate_rescaled(sweep: Sweep, exact: Mapping[str, np.ndarray], evaluate: Evaluator, base: float,
                      budget: float) -> tuple[dict[str, Point], float, list[tuple[int, float]]]:
    """Greedy on the modelled losses for a planning budget, verified on the real metric; the plan is rescaled by
    budget / measured loss (bisected once a plan that fits and one that misses bracket it) until the real loss fits
    and the bracket is tight. A plan that lands on an allocation already measured costs no evaluation. Returns the
    smallest verified allocation within the budget (all-lossless if none), its real metric and the (bytes, metric)
    pairs verified; every real metric here has the chosen points' modelled hidden loss (Point.hidden, which
    the metric's own text cannot show) taken off."""
    best: tuple[dict[str, Point], float] | None = None
    measured: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[int, float]] = []
    plan, low, high = budget, 0.0, math.inf  # the planning budget and the bracket of plans known to fit / miss
    for _ in range(MAX_PLANS):
        moves = greedy(sweep.points, base, plan)
        current = {n: 0 for n in sweep.points}
        for m in moves:
            current[m.name] = m.dst
        chosen = {n: sweep.points[n][i] for n, i in current.items()}
        nbytes = sum(p.stored for p in chosen.values())
        key = tuple(current.values())
        if key not in measured:
            if best is not None and len(measured) >= MAX_EVALUATIONS:
                break
            measured[key] = evaluate({**exact, **{n: sweep.decoded[n][p.pipeline] for n, p in chosen.items()}}) \
                - sum(p.hidden for p in chosen.values())
            frontier.append((nbytes, measured[key]))
        lost = base - measured[key]
        if lost <= budget:
            low = max(low, plan)
            if best is None or nbytes < sum(p.stored for p in best[0].values()):
                best = (chosen, measured[key])
        else:
            high = min(high, plan)
        if not moves or (best is not None and math.isfinite(high) and high - low < 0.02 * budget):
            break
        target = plan * budget / max(lost, 1e-12)  # the plan that would land on the budget if loss ~ plan
        plan = target if low < target < high else (low + high) / 2 if math.isfinite(high) else plan * 2
    if best is None:
        best = ({n: pts[0] for n, pts in sweep.points.items()}, base)
    return best[0], best[1], frontier


def allocate_for_ratio(sweep: Sweep, base: float, original: int, fixed: int, ratio: float,
                       file_bytes: Callable[[list[str]], int] | None) -> dict[str, Point]:
    """The least modelled loss with the model >= `ratio` x smaller than `original` bytes: the frontier's best
    combination under the byte cap (the untuned tensors' `fixed` bytes subtracted); with `file_bytes` (rules ->
    the size of the file they write) the cap goes below the pick by its miss until the real file fits."""
    goal = original / ratio
    cap = math.floor(goal) - fixed
    front = frontier(sweep.points, base)
    overhead = 0
    for _ in range(RATIO_TRIES):
        index = within_cap(front, cap)
        if index is None:
            smallest = int(front.nbytes[0]) + fixed + overhead
            what = "stores" if not overhead else "writes a file of"
            raise ConfigError(f"--target-ratio {ratio:g}: out of this grid's reach (its smallest setting {what} "
                              f"about {smallest:,} bytes, {original / smallest:.1f}x); give a lower ratio")
        chosen = {n: sweep.points[n][i] for n, i in front.choice(index).items()}
        if file_bytes is None:
            return chosen
        size = file_bytes(rules_for(chosen))
        if size <= goal:
            return chosen
        overhead = max(overhead, size - sum(p.stored for p in chosen.values()) - fixed)  # container, other files
        cap = int(front.nbytes[index]) - math.ceil(size - goal)  # below the pick by its miss: a smaller pick next
    raise ConfigError(f"--target-ratio {ratio:g}: the files written stayed larger than {math.floor(goal):,} bytes "
                      f"after {RATIO_TRIES} tries")


def tune_pretrained(tensors: Mapping[str, np.ndarray | Dense], evaluate: Evaluator, budget: float | None,
                    calibration: Calibration | None = None, rel_steps: Sequence[float] = HF_REL_STEPS,
                    test: Evaluator | None = None, progress: Progress | None = None, *,
                    target_ratio: float | None = None,
                    file_bytes: Callable[[list[str]], int] | None = None,
                    folds: Sequence[Calibration] = ()) -> TuneResult:
    """Choose a quantizer step per weight tensor of a pretrained model for a metric `budget`, or the best modelled
    metric at `target_ratio` (exactly one), without retraining.

    The grid uses `method=auto`: GPTQ where the calibration has X^T X, activation-weighted levels where it has
    activations, plain rounding without one; D is calibration-weighted. Give the same calibration to
    `compress --calibration` when the rules are replayed. `file_bytes(rules)` writes the file those rules give and
    returns its size, so a target ratio holds for the real file (container overhead included); without it the
    ratio counts stored streams and metadata only. `folds`: calibrations of the two halves of the metric's lines
    (like `calibration`, which covers them all), so that GPTQ tensors are judged as on text they were not fitted to
    (screened_sweep). The chosen allocation is evaluated once, end to end."""
    check_goal(budget, target_ratio)
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"--budget {budget!r}: give a finite metric loss >= 0")
    policy = Policy()
    lossless = policy.lossless_pipeline()
    dense = {n: (t if isinstance(t, Dense) else Dense.of(np.asarray(t))) for n, t in tensors.items()}
    if calibration is not None:
        calibration.check_fits(dense)
    exact = {n: d.values() for n, d in dense.items()}
    tuned = {n: d for n, d in dense.items() if tunable(d)}
    side = {n: calibration.side_inputs(n, d) for n, d in tuned.items()} if calibration is not None else {}
    fixed = sum(sum(measure(n, d, policy, lossless)[::2]) for n, d in dense.items() if n not in tuned)
    base = evaluate(exact)
    fold_side = [{n: f.side_inputs(n, d) for n, d in tuned.items()} for f in folds]
    sweep = screened_sweep(tuned, exact, side, evaluate, base, rel_steps, progress, fold_side)
    original = sum(d.array.nbytes for d in dense.values())
    if target_ratio is not None:
        chosen = allocate_for_ratio(sweep, base, original, fixed, float(target_ratio), file_bytes)
        metric = evaluate({**exact, **{n: sweep.decoded[n][p.pipeline] for n, p in chosen.items()}}) \
            - sum(p.hidden for p in chosen.values())
        verified = [(sum(p.stored for p in chosen.values()), metric)]
    else:
        chosen, metric, verified = allocate_rescaled(sweep, exact, evaluate, base, float(budget))
    result = TuneResult(base, metric, None if budget is None else float(budget), sweep.points, chosen,
                        {n: pts[0] for n, pts in sweep.points.items()}, fixed, sweep.evaluations + len(verified) + 1,
                        target_ratio=target_ratio)
    result.rules = rules_for(chosen)
    result.unreached = sweep.unreached
    result.fitting = sweep.fitting
    result.frontier = verified
    result.original_bytes = original
    result.weights = {n: sweep.decoded[n][p.pipeline] for n, p in chosen.items()}
    if test is not None:
        result.test_dense = 1.0
        result.test_metric = test({**exact, **{n: sweep.decoded[n][p.pipeline] for n, p in chosen.items()}})
    return result


def sweep_size(tensors: Mapping[str, np.ndarray | Dense], rel_steps: Sequence[float] = HF_REL_STEPS,
               calibration: Calibration | None = None) -> int:
    """Points the sweep encodes (the progress bar's total)."""
    total = 0
    for name, t in tensors.items():
        d = t if isinstance(t, Dense) else Dense.of(np.asarray(t))
        if tunable(d):
            own = calibration.side_inputs(name, d) if calibration is not None else {}
            total += 1 + len(rel_steps) * (1 + (len(ROW_SHIFTS) if offers_rowscale(name, own) else 0))
    return total
