"""How good a router is: the cost/quality curve and the metrics RouteLLM reports.

A router gives each request a score; a threshold ``t`` sends the requests scoring at least ``t`` to
the strong tier and the rest to the weak one. Sweeping ``t`` from above every score to below every
score draws the curve: the share of calls that go to the strong tier (the *cost*, 0..1) against the
average quality reached, from the weak tier's own average ``q_weak`` to the strong tier's
``q_strong``. Requests with equal scores move together; between two such steps the curve is a
straight line, which is what a random tie-break reaches on average.

- PGR (performance gap recovered) at a point: ``(q - q_weak) / (q_strong - q_weak)``.
- APGR: the area under PGR against the strong-call share, 0..1 (trapezoids on a grid of
  ``GRID`` points). A random router scores 0.5 on average; a perfect one reaches PGR 1 as soon
  as every request that gains from the strong tier goes there, so its APGR is ``1 - share/2``
  when a ``share`` of the requests gain alike (the ceiling of a data set: :func:`oracle_scores`).
- CPT(x): the smallest strong-call share at which PGR reaches ``x`` (RouteLLM's CPT(50%),
  CPT(80%)).
- Cost at a quality target: the smallest strong-call share at which the average quality reaches
  ``target * q_strong`` (e.g. 95% of the strong tier's quality), and what that costs against
  sending everything to the strong tier, given the price ratio of the tiers.

Weights. Every function takes the rows with optional ``weights`` (>= 0, one per row; ``None``: all
1): a row of weight ``w`` counts as ``w`` rows in every share and mean (cost, quality, ``q_weak``,
``q_strong``), so integer weights give exactly the figures of the rows duplicated that many times.
That is how a set is measured on another mix of prompts than it was built with (``mix.py``)
without dropping, duplicating or relabelling a row.

Plain logic, numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]
GRID = 1001


@dataclass(frozen=True)
class Curve:
    """The points where the routing changes: ``cost[i]`` of the calls go strong with threshold
    ``thresholds[i]`` (``+inf`` at the first point: nothing goes strong) and reach ``quality[i]``."""

    cost: Vector
    quality: Vector
    thresholds: Vector
    q_weak: float
    q_strong: float

    @property
    def pgr(self) -> Vector:
        gap = self.q_strong - self.q_weak
        if gap <= 0:
            return np.ones_like(self.quality)
        return (self.quality - self.q_weak) / gap


def _weights(weights: Sequence[float] | Vector | None, n: int) -> Vector:
    """``weights`` as a vector of ``n`` (all 1 when ``None``); raises ``ValueError`` when they are
    not ``n`` finite values >= 0 with a positive sum."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{w.size} weights for {n} rows")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, >= 0, and not all 0")
    return w


def curve(scores: Sequence[float] | Vector, weak: Sequence[float] | Vector, strong: Sequence[float] | Vector,
          weights: Sequence[float] | Vector | None = None) -> Curve:
    """The curve of a router's ``scores`` on rows whose tiers reach ``weak`` and ``strong``, each
    row counted ``weights[i]`` times (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    st = np.asarray(strong, dtype=np.float64)
    if not len(s) == len(w) == len(st) or len(s) == 0:
        raise ValueError(f"curve: {len(s)} scores for {len(w)} weak and {len(st)} strong values (need >= 1)")
    rw = _weights(weights, len(s))
    total = float(rw.sum())
    order = np.argsort(-s, kind="stable")
    sorted_s = s[order]
    gained = np.concatenate([[0.0], np.cumsum((rw * (st - w))[order])])
    mass = np.concatenate([[0.0], np.cumsum(rw[order])])
    # A step ends where the next score is lower (ties move together) and at the last row.
    ends = np.flatnonzero(np.concatenate([sorted_s[1:] < sorted_s[:-1], [True]])) + 1
    points = np.concatenate([[0], ends])
    q_weak = float(rw @ w) / total
    return Curve(
        cost=np.minimum(mass[points] / total, 1.0),
        quality=q_weak + gained[points] / total,
        thresholds=np.concatenate([[math.inf], sorted_s[ends - 1]]),
        q_weak=q_weak, q_strong=float(rw @ st) / total,
    )


def pgr_at(c: Curve, share: float | Vector) -> Vector:
    """PGR at strong-call share(s) ``share``, read off the curve's straight segments."""
    return np.asarray(np.interp(share, c.cost, c.pgr), dtype=np.float64)


def apgr(c: Curve, grid: int = GRID) -> float:
    """Area under PGR against the strong-call share (0..1)."""
    x = np.linspace(0.0, 1.0, grid)
    y = pgr_at(c, x)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _first_crossing(x: Vector, y: Vector, target: float) -> float:
    """The smallest x on the polyline (x, y) where y reaches ``target``; ``nan`` when it never does."""
    reached = np.flatnonzero(y >= target - 1e-12)
    if len(reached) == 0:
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


def cpt(c: Curve, pgr_target: float) -> float:
    """CPT: the smallest strong-call share reaching ``pgr_target`` (e.g. 0.5 for CPT(50%))."""
    return _first_crossing(c.cost, c.pgr, pgr_target)


@dataclass(frozen=True)
class CostAtQuality:
    share: float  # of calls to the strong tier, 0..1 (nan: the target is out of reach)
    cost_vs_strong: float  # price of routing / price of sending everything to the strong tier
    quality: float  # the quality aimed at (target * q_strong)


def cost_at_quality(c: Curve, target: float = 0.95, price_ratio: float = 20.0) -> CostAtQuality:
    """The smallest strong-call share whose average quality reaches ``target * q_strong``, and
    its price against all-strong when a strong call costs ``price_ratio`` weak ones."""
    if price_ratio <= 0:
        raise ValueError(f"price_ratio must be > 0, got {price_ratio}")
    goal = target * c.q_strong
    share = _first_crossing(c.cost, c.quality, goal)
    return CostAtQuality(share, (share * price_ratio + (1 - share)) / price_ratio, goal)


@dataclass(frozen=True)
class Threshold:
    """A threshold chosen on a data set and what it gave there."""

    threshold: float
    share: float
    quality: float
    pgr: float


def threshold_for_quality(c: Curve, target: float = 0.95) -> Threshold:
    """The highest threshold (fewest strong calls) whose routing reaches ``target * q_strong`` on
    the curve's data; a threshold that sends everything strong when nothing less reaches it."""
    goal = target * c.q_strong
    reached = np.flatnonzero(c.quality >= goal - 1e-12)
    i = int(reached[0]) if len(reached) else len(c.cost) - 1
    return Threshold(float(c.thresholds[i]), float(c.cost[i]), float(c.quality[i]), float(c.pgr[i]))


def at_threshold(scores: Vector, weak: Vector, strong: Vector, threshold: float,
                 weights: Sequence[float] | Vector | None = None) -> tuple[float, float]:
    """(strong-call share, average quality) of routing ``score >= threshold`` to the strong tier,
    each row counted ``weights[i]`` times."""
    go = np.asarray(scores) >= threshold
    rw = _weights(weights, len(go))
    total = float(rw.sum())
    return float(rw @ go) / total, float(rw @ np.where(go, strong, weak)) / total


def oracle_scores(weak: Vector, strong: Vector) -> Vector:
    """A perfect router's scores: what the strong tier gains on each row."""
    return np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64)
