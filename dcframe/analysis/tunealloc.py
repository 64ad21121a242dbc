"""Allocation for `dcframe tune`: the size-loss frontier of per-tensor choices, and picks from it.

Each tensor has measured points (stored bytes, metric with only it approximated). A combination's predicted loss is
the sum of its points' losses (each tensor's metric drop alone, 0 if it gained); ties in it (a metric such as accuracy
on a few hundred samples leaves many points at loss 0) are broken by the summed relative weight distortion, scaled so
it never outweighs a real loss difference. The frontier holds every combination that no other beats on both bytes and
that tie-broken loss, built tensor by tensor (merge the frontier so far with the next
tensor's points, keep the non-dominated sums): exact, and both problems read off it - the fewest bytes within a loss
budget, and the least loss within a byte cap (the dual: maximize the metric at a target ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRONTIER_LIMIT = 1 << 14  # points kept after each merge; beyond it the frontier is thinned evenly (then approximate)
EPS = 1e-12
TIE = 1e-9  # weight of the summed relative distortion (each clipped to MAX_DISTORTION), divided by the tensor count
MAX_DISTORTION = 1e3


@dataclass(frozen=True)
class Point:
    """One measured setting of one tensor: its pipeline, stored bytes and the metric with only it approximated."""

    pipeline: str
    nbytes: int
    metric: float
    distortion: float = 0.0  # ||w - w'||^2 / ||w||^2 of the decoded tensor: only breaks ties between equal losses
    meta: int = 0  # bytes of its stages' metadata (msgpack: codebooks, code lengths), stored beside the streams
    hidden: float = 0.0  # the part of its modelled loss the metric's own data cannot show (tunehf: rows that data
    # never uses, and what a calibration fitted to that data hides), taken off every measured metric

    @property
    def stored(self) -> int:
        """What the allocation minimizes or caps: streams plus metadata."""
        return self.nbytes + self.meta


@dataclass(frozen=True)
class Frontier:
    """Non-dominated combinations, bytes ascending and tie-broken loss (`key`) strictly descending; `loss` is the
    plain summed loss (non-increasing); `choices[i]` holds the point index per tensor (in `names` order)."""

    names: tuple[str, ...]
    nbytes: np.ndarray
    loss: np.ndarray
    key: np.ndarray
    choices: np.ndarray

    def choice(self, i: int) -> dict[str, int]:
        return {n: int(c) for n, c in zip(self.names, self.choices[i], strict=True)}

    def __len__(self) -> int:
        return len(self.nbytes)


def losses(points: list[Point], base: float) -> np.ndarray:
    """Each point's predicted loss: its metric drop against the dense `base`, never negative."""
    return np.maximum(base - np.array([p.metric for p in points], np.float64), 0.0)


def tie_keys(points: list[Point], base: float, count: int) -> np.ndarray:
    """Each point's loss plus its distortion tie-breaker (`count`: how many tensors share the budget)."""
    distortion = np.clip(np.array([p.distortion for p in points], np.float64), 0.0, MAX_DISTORTION)
    return losses(points, base) + TIE * distortion / max(count, 1)


def pareto(nbytes: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated (bytes, loss) pairs, bytes ascending: a pair is kept when its loss is below that
    of every pair with fewer (or equally many, listed first) bytes."""
    order = np.lexsort((loss, nbytes))
    ordered = loss[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], ordered[:-1])))
    return order[ordered < best_before - EPS]


def thin(keep: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of the kept indices, evenly spaced, both ends included."""
    if len(keep) <= limit:
        return keep
    return keep[np.unique(np.linspace(0, len(keep) - 1, limit).round().astype(np.int64))]


def frontier(points: dict[str, list[Point]], base: float, limit: int = FRONTIER_LIMIT) -> Frontier:
    """The frontier of all combinations of one point per tensor (see the module docstring)."""
    names = tuple(points)
    nbytes, loss, key = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
    choices = np.zeros((1, 0), np.int32)
    for name in names:
        pb = np.array([p.stored for p in points[name]], np.int64)
        sums_b = (nbytes[:, None] + pb[None, :]).ravel()
        sums_l = (loss[:, None] + losses(points[name], base)[None, :]).ravel()
        sums_k = (key[:, None] + tie_keys(points[name], base, len(names))[None, :]).ravel()
        keep = thin(pareto(sums_b, sums_k), limit)
        before, mine = np.divmod(keep, len(pb))
        choices = np.column_stack([choices[before], mine.astype(np.int32)])
        nbytes, loss, key = sums_b[keep], sums_l[keep], sums_k[keep]
    return Frontier(names, nbytes, loss, key, choices)


def within_budget(front: Frontier, budget: float) -> int:
    """The index of the smallest combination whose predicted loss is within `budget` (the last has the least; with
    the lossless points, that is all-lossless, loss 0, which fits any budget >= 0)."""
    fits = np.flatnonzero(front.loss <= budget + EPS)
    return int(fits[0]) if len(fits) else len(front) - 1


def within_cap(front: Frontier, cap: int) -> int | None:
    """The index of the combination with the least (tie-broken) predicted loss in at most `cap` bytes; None if none
    fits."""
    fits = np.flatnonzero(front.nbytes <= cap)
    return int(fits[-1]) if len(fits) else None


def bisect(ok, bad: int, good: int, rounds: int | None = None) -> int:
    """Between a frontier index known to fail (`bad`, fewer bytes) and one known to pass (`good`), the smallest index
    found to pass by bisection (`ok(i)` -> bool measures index i), in at most `rounds` measurements."""
    done = 0
    while good - bad > 1 and (rounds is None or done < rounds):
        mid = (bad + good) // 2
        done += 1
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


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
