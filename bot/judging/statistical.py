"""Statistical canary judge: Mann-Whitney classification of metrics and the canary score.

Pure (the standard library, and numpy for long series). The semantics follow Kayenta's
NetflixACAJudge:

* :func:`mann_whitney_ci` is the Hodges-Lehmann estimate of the shift *experiment - control*
  and its two-sided confidence interval, computed the way R computes
  ``wilcox.test(x, y, conf.int=TRUE, exact=FALSE, correct=TRUE, conf.level=...)``: the
  normal approximation with tie correction, inverted with Brent's root finder (R's
  ``zeroin``), including its tolerance and its end-point shortcuts. The same inputs give
  the same numbers as R to the last printed digit.
* :func:`classify` turns one metric's control and experiment (canary) samples into a
  :class:`MetricVerdict`: ``high`` / ``low`` when the interval clears a tolerance band around
  zero in a direction the metric cares about *and* the effect size (mean ratio or common-
  language effect size) clears its gate; ``nodata`` / ``nodata_fail`` when a side is empty;
  ``pass`` otherwise. A critical metric that fails its critical gate, or misses its data,
  is flagged ``critical``.
* :func:`score` is the canary score: per group the percentage of countable metrics that
  passed, weighted across groups, and 0 on a critical failure or when half or more of the
  metrics had no data. :func:`classify_score` maps it to pass / marginal / fail.

Non-finite samples (NaN, and also +-Inf, which a histogram quantile can return) are treated
as missing: removed, or replaced by 0 with ``nan_strategy="replace"``.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Classification",
    "JudgeConfig",
    "MetricVerdict",
    "ScoreClass",
    "classify",
    "classify_score",
    "mann_whitney_ci",
    "score",
]

EffectSizeMeasure = Literal["mean_ratio", "cles"]
NanStrategy = Literal["remove", "replace"]

DIRECTIONS = frozenset({"increase", "decrease", "either"})
EFFECT_SIZE_MEASURES = frozenset({"mean_ratio", "cles"})
NAN_STRATEGIES = frozenset({"remove", "replace"})

# R's uniroot defaults as wilcox.test calls it (tol.root = 1e-4, maxiter = 1000).
ROOT_TOL = 1e-4
ROOT_MAXITER = 1000
_EPSILON = 2.220446049250313e-16  # DBL_EPSILON, as in R's zeroin

# Below this many samples on a side the interval is wide and the verdict weak; say so.
FEW_SAMPLES = 50
# From this many samples on the larger side the statistic is counted with numpy: below it,
# array overhead costs more than the interpreted bisections it replaces (bench/judge_bench.py).
ARRAY_FROM = 200

# Seed for the jitter added to two constant sides: fixed, so that judging the same data
# twice always gives the same verdict.
_NOISE_SEED = 20240229
_NOISE_SCALE = 1e-6


# --------------------------------------------------------------------------------------
# Mann-Whitney confidence interval
# --------------------------------------------------------------------------------------


class _ShiftStatistic:
    """The rank-sum statistic of ``x - d`` against ``y`` as a function of the shift ``d``.

    R ranks ``c(x - d, y)`` afresh for every ``d``. Only two things of that ranking matter:
    the rank sum of ``x``, and the tie sizes of the combined sample. With both sides sorted,
    rank sum of x = nx(nx+1)/2 + sum_i (#{y < x_i - d} + #{y == x_i - d} / 2), so the
    statistic is one C-level pass of bisections instead of a sort. The tie term starts from
    the precomputed tie sums of x and y and is adjusted only where an ``x_i - d`` lands
    exactly on a y value (or where the subtraction rounds distinct x values together), using
    the very same float subtraction as R so that ties appear and vanish at the same ``d``.
    """

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        self.x = sorted(x)
        self.y = sorted(y)
        # Doubles, like R's n.x and n.y, so every product below rounds the way R's does.
        self.nx = float(len(self.x))
        self.ny = float(len(self.y))
        x_counts = Counter(self.x)
        self.y_counts = Counter(self.y)
        self.y_set = frozenset(self.y_counts)
        self.x_distinct = len(x_counts)
        distinct_x = sorted(x_counts)
        self.x_gap = min((b - a for a, b in itertools.pairwise(distinct_x)), default=math.inf)
        self.x_ties = sum(t**3 - t for t in x_counts.values())
        self.y_ties = sum(t**3 - t for t in self.y_counts.values())
        self._cache: dict[float, tuple[float, float]] = {}

    def __call__(self, d: float) -> tuple[float, float]:
        """``(dz, sigma)``: the centred rank sum and its tie-corrected standard deviation."""
        cached = self._cache.get(d)
        if cached is not None:
            return cached
        x, y = self.x, self.y
        # x is sorted and rounding is monotone, so xd is sorted too.
        xd = [v - d for v in x]
        # Pairs with y_j < x_i - d, bisecting from the shorter side.
        if len(x) <= len(y):
            below = sum(map(bisect_left, itertools.repeat(y, len(xd)), xd))
        else:
            below = len(xd) * len(y) - sum(map(bisect_right, itertools.repeat(xd, len(y)), y))

        # Subtracting d merges distinct x values only if their gap is within one ulp of the
        # result; that check is far cheaper than counting distinct values every time.
        if self.x_gap > 4 * math.ulp(max(abs(xd[0]), abs(xd[-1]))):
            ties = self.x_ties
        else:
            xd_counts = Counter(xd)
            if len(xd_counts) == self.x_distinct:
                ties = self.x_ties
            else:  # the subtraction rounded distinct x values onto one another
                ties = sum(t**3 - t for t in xd_counts.values())
        ties += self.y_ties
        equal = 0  # pairs with y_j == x_i - d
        for value in self.y_set.intersection(xd):
            # a values of x - d and b of y form one tie group of a + b, and
            # (a+b)^3 - (a+b) - (a^3 - a) - (b^3 - b) = 3ab(a+b).
            a = bisect_right(xd, value) - bisect_left(xd, value)
            b = self.y_counts[value]
            ties += 3 * a * b * (a + b)
            equal += a * b
        result = _centred(self.nx, self.ny, below, equal, ties)
        self._cache[d] = result
        return result


class _ArrayShiftStatistic:
    """:class:`_ShiftStatistic` on numpy arrays, for long series: the same quantities from the
    same float subtractions (``x - d`` rounds identically element by element), counted with
    vectorised searches instead of one bisection per value, so the results are identical and
    the cost per root-finder step drops from O(n log m) interpreted calls to a few C passes."""

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        self.x = np.sort(np.asarray(x, dtype=np.float64))
        self.y = np.sort(np.asarray(y, dtype=np.float64))
        self.nx = float(len(self.x))
        self.ny = float(len(self.y))
        x_values, x_counts = np.unique(self.x, return_counts=True)
        self.y_values, self.y_counts = np.unique(self.y, return_counts=True)
        self.x_distinct = len(x_values)
        self.x_gap = float(np.min(np.diff(x_values))) if len(x_values) > 1 else math.inf
        self.x_ties = _tie_sum(x_counts)
        self.y_ties = _tie_sum(self.y_counts)
        # y values below each distinct y value (and all of them past the last): one search of
        # the distinct values then gives both the pairs below and the exact hits.
        self.y_below = np.concatenate(([0], np.cumsum(self.y_counts)))
        self._cache: dict[float, tuple[float, float]] = {}

    def __call__(self, d: float) -> tuple[float, float]:
        cached = self._cache.get(d)
        if cached is not None:
            return cached
        xd = self.x - d
        at = np.searchsorted(self.y_values, xd, side="left")
        below = int(self.y_below[at].sum())
        if self.x_gap > 4 * math.ulp(max(abs(float(xd[0])), abs(float(xd[-1])))):
            ties = self.x_ties
        else:
            _, xd_counts = np.unique(xd, return_counts=True)
            ties = self.x_ties if len(xd_counts) == self.x_distinct else _tie_sum(xd_counts)
        ties += self.y_ties
        # x - d values that land exactly on a y value form tie groups with them.
        inside = at < len(self.y_values)
        hits = np.zeros(len(xd), dtype=bool)
        hits[inside] = self.y_values[at[inside]] == xd[inside]
        equal = 0
        if hits.any():
            values, a = np.unique(xd[hits], return_counts=True)
            b = self.y_counts[np.searchsorted(self.y_values, values)]
            ties += int(np.sum(3 * a * b * (a + b)))
            equal = int(np.sum(a * b))
        result = _centred(self.nx, self.ny, below, equal, ties)
        self._cache[d] = result
        return result


def _centred(nx: float, ny: float, below: int, equal: int, ties: int) -> tuple[float, float]:
    """``(dz, sigma)`` from the pair counts of one shift: ``below`` pairs with y < x - d,
    ``equal`` with y == x - d, and the combined sample's tie sum."""
    # 2 * below + equal = 2 * (rank sum of x - nx(nx+1)/2): an integer, so dz is exact, as R's
    # sum of half-integer midranks is.
    dz = (2 * below + equal) / 2 - nx * ny / 2
    n = nx + ny
    # Same operation order as R, so SIGMA is bit-identical.
    sigma = math.sqrt((nx * ny / 12) * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        raise ValueError("cannot compute a confidence interval: all observations are tied")
    return dz, sigma


def _tie_sum(counts: npt.NDArray[np.int64]) -> int:
    """sum(t^3 - t) over tie group sizes, as an exact Python int."""
    return sum(int(t) ** 3 - int(t) for t in counts[counts > 1])


def _statistic(x: Sequence[float], y: Sequence[float]) -> Callable[[float], tuple[float, float]]:
    """The rank-sum statistic as a function of the shift: pure Python for short series (no
    array overhead to amortise), numpy from ARRAY_FROM samples on the larger side."""
    if max(len(x), len(y)) >= ARRAY_FROM:
        return _ArrayShiftStatistic(x, y)
    return _ShiftStatistic(x, y)


def _sign(value: float) -> float:
    return (value > 0) - (value < 0)


# Brent's root finder as R's zeroin.c has it, step for step, so the two can be compared line by
# line.
def _zeroin(  # noqa: C901, PLR0912
    f: Callable[[float], float],
    ax: float,
    bx: float,
    fa: float,
    fb: float,
    tol: float,
    maxit: int = ROOT_MAXITER,
) -> float:
    """Brent's root finder exactly as R's ``R_zeroin2`` (what ``uniroot`` calls).

    ``fa`` and ``fb`` are f(ax) and f(bx), of opposite signs. Each step tries inverse
    quadratic (or linear) interpolation and falls back to bisection when that would not
    shrink the bracket fast enough. Every branch and floating-point expression mirrors the
    C code, because a different rounding anywhere sends the iteration down another path and
    the root, only known to ``tol``, then differs from R's in its last digits.
    """
    a, b = ax, bx
    c, fc = a, fa
    if fa == 0.0:
        return a
    if fb == 0.0:
        return b
    for _ in range(maxit + 1):
        prev_step = b - a
        if abs(fc) < abs(fb):
            # Keep b the best approximation so far.
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * _EPSILON * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0.0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            # The last step was large enough and went the right way: interpolate.
            cb = c - b
            if a == c:
                # Two distinct points only: the secant.
                t1 = fb / fa
                p = cb * t1
                q = 1.0 - t1
            else:
                # Inverse quadratic interpolation through a, b and c.
                q = fa / fc
                t1 = fb / fc
                t2 = fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            # Accept the interpolation only if it stays inside [b, c] and shrinks the step.
            if p < (0.75 * cb * q - abs(tol_act * q) / 2) and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            # Keep the root bracketed between b and c.
            c, fc = a, fa
    return b  # not converged: R warns and returns the last approximation


def _finite(values: Sequence[float]) -> list[float]:
    if len(values) >= ARRAY_FROM:
        array = np.asarray(values, dtype=np.float64)
        finite: list[float] = array[np.isfinite(array)].tolist()
        return finite
    return [float(v) for v in values if math.isfinite(v)]


# R's wilcox.test confidence interval, case for case (ties, exact and normal approximations, end
# points).
def mann_whitney_ci(  # noqa: C901
    experiment: Sequence[float],
    control: Sequence[float],
    confidence: float = 0.98,
    *,
    tol: float = ROOT_TOL,
) -> tuple[float, float, float]:
    """``(low, high, estimate)`` of the location shift *experiment - control*.

    ``estimate`` is the Hodges-Lehmann estimate (the shift that centres the rank-sum
    statistic) and ``[low, high]`` its two-sided ``confidence`` interval, exactly as R's
    ``wilcox.test(experiment, control, conf.int=TRUE, exact=FALSE, correct=TRUE,
    conf.level=confidence, tol.root=tol)`` reports them: normal approximation with tie
    correction, continuity correction on the interval but not on the estimate, and roots
    located by Brent's method to ``tol`` (absolute, so R's default is coarse for data much
    smaller than 1; :func:`classify` scales it). Non-finite values are dropped first (R
    drops only NA and NaN; an infinite value would make its interval unbounded).

    Raises ValueError when a side has no finite value, when every observation is tied (the
    statistic has no spread), when ``confidence`` is not strictly between 0 and 1, or when
    ``tol`` is negative.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    x = _finite(experiment)
    y = _finite(control)
    if not x:
        raise ValueError("no finite experiment observations")
    if not y:
        raise ValueError("no finite control observations")
    if len(set(x)) == 1 and len(set(y)) == 1:
        raise ValueError("cannot compute a confidence interval: all observations are tied")

    stat = _statistic(x, y)
    mumin = min(x) - max(y)
    mumax = max(x) - min(y)

    def corrected(d: float) -> float:
        dz, sigma = stat(d)
        return (dz - _sign(dz) * 0.5) / sigma

    # R's qnorm(alpha/2, lower.tail=FALSE) is exactly -qnorm(alpha/2) (same rational
    # approximation, mirrored); 1 - alpha/2 would round before the lookup and could differ
    # in the last bit.
    alpha = 1 - confidence
    z_lower_tail = statistics.NormalDist().inv_cdf(alpha / 2)
    w_mumin = corrected(mumin)
    w_mumax = corrected(mumax)

    def root(zq: float) -> float:
        # In extreme cases (e.g. one point against many) the bound is an end point.
        f_lower = w_mumin - zq
        if f_lower <= 0:
            return mumin
        f_upper = w_mumax - zq
        if f_upper >= 0:
            return mumax
        return _zeroin(lambda d: corrected(d) - zq, mumin, mumax, f_lower, f_upper, tol)

    low = root(-z_lower_tail)
    high = root(z_lower_tail)

    def uncorrected(d: float) -> float:
        dz, sigma = stat(d)
        return dz / sigma

    if not mumin < mumax:
        # Only when rounding collapses the range; R's uniroot refuses it as well.
        raise ValueError("cannot locate the shift: the samples' spread is below rounding")
    estimate = _zeroin(uncorrected, mumin, mumax, uncorrected(mumin), uncorrected(mumax), tol)
    return low, high, estimate


# --------------------------------------------------------------------------------------
# Classification of one metric
# --------------------------------------------------------------------------------------


class Classification(StrEnum):
    PASS = "pass"
    HIGH = "high"
    LOW = "low"
    NODATA = "nodata"
    NODATA_FAIL = "nodata_fail"


@dataclass(frozen=True)
class JudgeConfig:
    """How one metric is judged. The gates left at None take the neutral value of the
    effect-size measure: 1.0 for ``mean_ratio`` (canary mean / control mean) and 0.5 for
    ``cles`` (probability that a canary sample beats a control sample)."""

    direction: str = "either"  # "increase" | "decrease" | "either": which way is bad
    tolerance: float = 0.25
    confidence: float = 0.98
    effect_size_measure: EffectSizeMeasure = "mean_ratio"
    allowed_increase: float | None = None
    allowed_decrease: float | None = None
    critical_increase: float | None = None
    critical_decrease: float | None = None
    nan_strategy: NanStrategy = "remove"
    critical: bool = False
    must_have_data: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}: {self.direction!r}")
        if self.effect_size_measure not in EFFECT_SIZE_MEASURES:
            raise ValueError(
                f"effect_size_measure must be one of {sorted(EFFECT_SIZE_MEASURES)}: "
                f"{self.effect_size_measure!r}"
            )
        if self.nan_strategy not in NAN_STRATEGIES:
            raise ValueError(
                f"nan_strategy must be one of {sorted(NAN_STRATEGIES)}: {self.nan_strategy!r}"
            )
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence}")

    @property
    def neutral_effect(self) -> float:
        return 1.0 if self.effect_size_measure == "mean_ratio" else 0.5

    def _gate(self, value: float | None) -> float:
        return self.neutral_effect if value is None else value

    @property
    def increase_gate(self) -> float:
        return self._gate(self.allowed_increase)

    @property
    def decrease_gate(self) -> float:
        return self._gate(self.allowed_decrease)

    @property
    def critical_increase_gate(self) -> float:
        return self._gate(self.critical_increase)

    @property
    def critical_decrease_gate(self) -> float:
        return self._gate(self.critical_decrease)


@dataclass(frozen=True)
class MetricVerdict:
    """One metric's verdict. ``samples`` is (experiment count, control count) after NaN
    handling; interval and estimate are None when the test did not run."""

    classification: Classification
    critical: bool
    ci_low: float | None
    ci_high: float | None
    estimate: float | None
    effect_size: float | None
    mean_ratio: float | None
    experiment_mean: float | None
    control_mean: float | None
    samples: tuple[int, int]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for audit entries and the check's report)."""
        return {
            "classification": self.classification.value,
            "critical": self.critical,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "estimate": self.estimate,
            "effect_size": self.effect_size,
            "mean_ratio": self.mean_ratio,
            "experiment_mean": self.experiment_mean,
            "control_mean": self.control_mean,
            "samples": {"experiment": self.samples[0], "control": self.samples[1]},
            "reason": self.reason,
        }


def _clean(values: Sequence[float], strategy: NanStrategy) -> list[float]:
    if strategy == "replace":
        return [float(v) if math.isfinite(v) else 0.0 for v in values]
    return _finite(values)


def _same_samples(x: list[float], y: list[float]) -> bool:
    """The two sides hold the same values (in any order)."""
    if len(x) >= ARRAY_FROM:
        return bool(np.array_equal(np.sort(np.asarray(x)), np.sort(np.asarray(y))))
    return sorted(x) == sorted(y)


def _cles(experiment: Sequence[float], control: Sequence[float]) -> float:
    """P(X > Y) + P(X == Y) / 2 for X from experiment and Y from control."""
    if max(len(experiment), len(control)) >= ARRAY_FROM:
        ys = np.sort(np.asarray(control, dtype=np.float64))
        xs = np.asarray(experiment, dtype=np.float64)
        below_a = int(np.searchsorted(ys, xs, side="left").sum())
        below_or_equal_a = int(np.searchsorted(ys, xs, side="right").sum())
        return (below_a + below_or_equal_a) / (2 * len(xs) * len(ys))
    y = sorted(control)
    below = sum(map(bisect_left, itertools.repeat(y, len(experiment)), experiment))
    below_or_equal = sum(map(bisect_right, itertools.repeat(y, len(experiment)), experiment))
    return (below + below_or_equal) / (2 * len(experiment) * len(y))


def _number(value: float) -> str:
    return f"{value:.3g}"


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    # A tiny negative bound rounds to "-0.00"; the sign would only confuse the reader.
    return text.lstrip("-") if float(text) == 0 else text


def _interval_text(low: float, high: float, estimate: float, confidence: float) -> str:
    # Two significant digits on the largest of the three, the same decimals for all, so the
    # interval reads as aligned numbers ("0.041 [0.030, 0.052]").
    scale = max(abs(low), abs(high), abs(estimate))
    decimals = 3 if scale == 0 else max(0, 1 - math.floor(math.log10(scale)))
    decimals = min(decimals, 12)
    est, lo, hi = (_fixed(v, decimals) for v in (estimate, low, high))
    return f"canary − control shift {est} [{lo}, {hi}] at {confidence * 100:g}% confidence"


def _effect_text(
    config: JudgeConfig, effect: float | None, ratio: float | None, allowed: float | None
) -> str:
    if ratio is None:
        ratio_text = "mean ratio undefined (control mean 0)"
    else:
        ratio_text = f"mean ratio {_number(ratio)}"
    if config.effect_size_measure == "cles":
        cles = "CLES undefined" if effect is None else f"CLES {effect:.2f}"
        if allowed is not None:
            cles += f" (allowed {allowed})"
        return f"{cles}, {ratio_text}"
    if allowed is not None and ratio is not None:
        ratio_text += f" (allowed {allowed})"
    return ratio_text


def _few_samples_text(n_experiment: int, n_control: int) -> str:
    few = [
        f"{n} {side}"
        for n, side in ((n_experiment, "canary"), (n_control, "control"))
        if 0 < n < FEW_SAMPLES
    ]
    if not few:
        return ""
    return (
        f" (warning: only {' and '.join(few)} samples; "
        f"under {FEW_SAMPLES} per side the test is weak)"
    )


# Kayenta's classification in its order: data checks, the interval, the effect size, the critical
# bound.
def classify(  # noqa: C901, PLR0912, PLR0915
    control: Sequence[float],
    experiment: Sequence[float],
    config: JudgeConfig,
    *,
    name: str = "metric",
) -> MetricVerdict:
    """Classify the experiment (canary) samples against the control samples.

    ``high`` when an increase is a failure for this metric, the interval's lower bound is
    above ``tolerance * |estimate|`` and the effect size is at least ``allowed_increase``
    (or undefined); ``low`` symmetrically for decreases; ``pass`` otherwise. An empty side
    is ``nodata`` (``nodata_fail`` when the metric must have data and is not critical; a
    critical metric missing data is flagged critical instead); with NaN replacement an
    empty side passes. Identical samples (the same values in any order), or a single value
    across both sides, pass without a test.

    The interval is :func:`mann_whitney_ci`'s, with the root tolerance scaled down for data
    spanning less than 1 (for wider data it is R's result exactly). Two different constant
    sides get deterministic noise of 1e-6 of their gap so that the test can run.
    """
    x = _clean(experiment, config.nan_strategy)
    y = _clean(control, config.nan_strategy)
    counts = (len(x), len(y))
    x_mean = statistics.fmean(x) if x else None
    y_mean = statistics.fmean(y) if y else None
    ratio = None if x_mean is None or not y_mean else x_mean / y_mean
    few = _few_samples_text(*counts)

    def verdict(
        classification: Classification,
        reason: str,
        *,
        critical: bool = False,
        interval: tuple[float, float, float] | None = None,
        effect: float | None = None,
    ) -> MetricVerdict:
        low, high, estimate = interval if interval is not None else (None, None, None)
        return MetricVerdict(
            classification=classification,
            critical=critical,
            ci_low=low,
            ci_high=high,
            estimate=estimate,
            effect_size=effect,
            mean_ratio=ratio,
            experiment_mean=x_mean,
            control_mean=y_mean,
            samples=counts,
            reason=reason + few,
        )

    if not x or not y:
        missing = " or ".join(side for side, v in (("canary", x), ("control", y)) if not v)
        if config.nan_strategy == "replace":
            return verdict(Classification.PASS, f"{name} passes: no {missing} samples to compare")
        if config.critical:
            return verdict(
                Classification.NODATA,
                f"{name} has no data: no {missing} samples (critical metric)",
                critical=True,
            )
        if config.must_have_data:
            return verdict(
                Classification.NODATA_FAIL,
                f"{name} has no data: no {missing} samples, and data is required",
            )
        return verdict(Classification.NODATA, f"{name} has no data: no {missing} samples")

    if config.effect_size_measure == "cles":
        effect: float | None = _cles(x, y)
    else:
        effect = ratio

    if len(x) == len(y) and _same_samples(x, y):
        return verdict(
            Classification.PASS,
            f"{name} passes: canary and control samples are identical",
            effect=effect,
        )
    distinct_x = set(x)
    distinct_y = set(y)
    if len(distinct_x | distinct_y) == 1:
        return verdict(
            Classification.PASS,
            f"{name} passes: every canary and control sample is {_number(x[0])}",
            effect=effect,
        )

    x_test, y_test = x, y
    if len(distinct_x) == 1 and len(distinct_y) == 1:
        # Two different constants: every observation is tied at the interval's end points,
        # so the statistic has no spread. Tiny noise (relative to the gap, so it cannot
        # blur it) restores one; the interval then hugs the difference of the constants.
        rng = random.Random(_NOISE_SEED)
        scale = _NOISE_SCALE * abs(x[0] - y[0])
        x_test = [v + rng.gauss(0.0, scale) for v in x]
        y_test = [v + rng.gauss(0.0, scale) for v in y]

    # R's absolute root tolerance (1e-4) is fine for data spanning 1 or more, but would
    # swamp metrics that live far below 1 (error ratios, latencies in seconds). Scale it
    # down with the data's spread; for spreads of 1 or more the numbers are R's exactly.
    spread = (max(x_test) - min(y_test)) - (min(x_test) - max(y_test))
    tol = ROOT_TOL * min(1.0, spread)
    try:
        interval = mann_whitney_ci(x_test, y_test, config.confidence, tol=tol)
    except ValueError:
        # Still degenerate: one sample per side (noise cannot untie a single pair), or a gap
        # below rounding. The shift is then known exactly.
        shift = statistics.fmean(x) - statistics.fmean(y)
        interval = (shift, shift, shift)
    low, high, estimate = interval
    band = config.tolerance * abs(estimate)
    undefined = effect is None
    increase_ok = config.direction in ("increase", "either")
    decrease_ok = config.direction in ("decrease", "either")
    above = low > band
    below = high < -band
    interval_text = _interval_text(low, high, estimate, config.confidence)

    if above:
        gated = undefined or (effect is not None and effect >= config.increase_gate)
        if increase_ok and gated:
            critical = config.critical and (
                undefined or (effect is not None and effect >= config.critical_increase_gate)
            )
            return verdict(
                Classification.HIGH,
                f"{name} is high: {interval_text}, "
                f"{_effect_text(config, effect, ratio, config.increase_gate)}"
                + (" — critical" if critical else ""),
                critical=critical,
                interval=interval,
                effect=effect,
            )
        why = (
            "an increase is not a failure for this metric"
            if not increase_ok
            else f"the effect size is below the allowed {config.increase_gate}"
        )
    elif below:
        gated = undefined or (effect is not None and effect <= config.decrease_gate)
        if decrease_ok and gated:
            critical = config.critical and (
                undefined or (effect is not None and effect <= config.critical_decrease_gate)
            )
            return verdict(
                Classification.LOW,
                f"{name} is low: {interval_text}, "
                f"{_effect_text(config, effect, ratio, config.decrease_gate)}"
                + (" — critical" if critical else ""),
                critical=critical,
                interval=interval,
                effect=effect,
            )
        why = (
            "a decrease is not a failure for this metric"
            if not decrease_ok
            else f"the effect size is above the allowed {config.decrease_gate}"
        )
    else:
        why = f"within the ±{config.tolerance:g}×|shift| tolerance band"
    return verdict(
        Classification.PASS,
        f"{name} passes: {interval_text}, {_effect_text(config, effect, ratio, None)}; {why}",
        interval=interval,
        effect=effect,
    )


# --------------------------------------------------------------------------------------
# Canary score
# --------------------------------------------------------------------------------------


class ScoreClass(StrEnum):
    PASS = "pass"
    MARGINAL = "marginal"
    FAIL = "fail"


_NO_DATA = (Classification.NODATA, Classification.NODATA_FAIL)


def score(
    verdicts: Sequence[tuple[str, MetricVerdict]],
    group_weights: Mapping[str, float] | None = None,
) -> float:
    """The canary score, 0-100, from ``(group, verdict)`` pairs.

    Per group: 100 x pass / (pass + high + low + nodata_fail); ``nodata`` is not counted,
    and a group with nothing countable scores 100. Groups are combined by weight (percent):
    configured weights are used as given, and the groups without one share equally what the
    configured weights leave of 100. Weights for groups absent from ``verdicts`` are
    ignored. The score is 0 when any verdict is critical, when half or more of the metrics
    have no data (``nodata`` or ``nodata_fail``), and when there are no verdicts at all
    (nothing was shown to be healthy).
    """
    if not verdicts:
        return 0.0
    if any(v.critical for _, v in verdicts):
        return 0.0
    no_data = sum(v.classification in _NO_DATA for _, v in verdicts)
    if 2 * no_data >= len(verdicts):
        return 0.0

    passed: dict[str, int] = {}
    counted: dict[str, int] = {}
    for group, v in verdicts:
        passed.setdefault(group, 0)
        counted.setdefault(group, 0)
        if v.classification is Classification.NODATA:
            continue
        counted[group] += 1
        passed[group] += v.classification is Classification.PASS

    weights = dict(group_weights or {})
    configured = {g: weights[g] for g in passed if g in weights}
    unweighted = [g for g in passed if g not in weights]
    share = max(0.0, 100.0 - sum(configured.values())) / len(unweighted) if unweighted else 0.0

    total = 0.0
    for group, n_passed in passed.items():
        group_score = 100.0 * n_passed / counted[group] if counted[group] else 100.0
        total += group_score * configured.get(group, share) / 100.0
    return total


def classify_score(
    value: float, pass_threshold: float = 95, marginal_threshold: float = 75
) -> ScoreClass:
    """``pass`` at or above ``pass_threshold``, ``fail`` below ``marginal_threshold``."""
    if value >= pass_threshold:
        return ScoreClass.PASS
    if value >= marginal_threshold:
        return ScoreClass.MARGINAL
    return ScoreClass.FAIL
