"""The peer bench/judge_bench.py measures the judge against: the same judgement written the
way a numpy + scipy port would be, with the library doing the work.

The shift's confidence interval is R's (normal approximation of the rank-sum statistic, tie
and continuity corrections) found with ``scipy.optimize.brentq``, the statistic re-ranked at
each step with ``scipy.stats.rankdata``; the verdict is the interval against a band around
zero plus the mean-ratio gate, as bot.judging.statistical decides for a metric that must not
increase. Not part of the product: it exists to be timed and to agree.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats


def _statistic(x: np.ndarray, y: np.ndarray, d: float, correct: bool) -> float:
    combined = np.concatenate((x - d, y))
    ranks = stats.rankdata(combined)
    nx, ny = len(x), len(y)
    dz = ranks[:nx].sum() - nx * (nx + 1) / 2 - nx * ny / 2
    _, counts = np.unique(combined, return_counts=True)
    n = nx + ny
    ties = float(np.sum(counts**3 - counts))
    sigma = math.sqrt((nx * ny / 12) * ((n + 1) - ties / (n * (n - 1))))
    correction = 0.5 * np.sign(dz) if correct else 0.0
    return float((dz - correction) / sigma)


def interval(
    experiment: list[float], control: list[float], confidence: float = 0.98, tol: float = 1e-4
) -> tuple[float, float, float]:
    x = np.asarray(experiment, dtype=float)
    y = np.asarray(control, dtype=float)
    low_d, high_d = float(x.min() - y.max()), float(x.max() - y.min())
    z = stats.norm.ppf(1 - (1 - confidence) / 2)

    def bound(target: float) -> float:
        def f(d: float) -> float:
            return _statistic(x, y, d, True) - target

        fa, fb = f(low_d), f(high_d)
        if fa * fb > 0:
            return low_d if abs(fa) < abs(fb) else high_d
        return float(optimize.brentq(f, low_d, high_d, xtol=tol))

    def centre(d: float) -> float:
        return _statistic(x, y, d, False)

    estimate = float(optimize.brentq(centre, low_d, high_d, xtol=tol))
    return bound(z), bound(-z), estimate


def classify(
    control: list[float],
    experiment: list[float],
    *,
    tolerance: float = 0.25,
    allowed_increase: float = 1.0,
    confidence: float = 0.98,
) -> str:
    """ "high" or "pass", for a metric that must not increase."""
    spread = (max(experiment) - min(control)) - (min(experiment) - max(control))
    low, _, estimate = interval(experiment, control, confidence, 1e-4 * min(1.0, spread))
    ratio = float(np.mean(experiment) / np.mean(control))
    if low > tolerance * abs(estimate) and ratio >= allowed_increase:
        return "high"
    return "pass"
