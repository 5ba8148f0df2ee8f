"""The statistical judge: the Mann-Whitney interval against R, metric classification, the score."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bot.judging.statistical import (
    ARRAY_FROM,
    Classification,
    JudgeConfig,
    MetricVerdict,
    ScoreClass,
    _ArrayShiftStatistic,
    _cles,
    _ShiftStatistic,
    classify,
    classify_score,
    mann_whitney_ci,
    score,
)

NAN = float("nan")
INF = float("inf")

# --------------------------------------------------------------------------------------
# Deterministic latency-like data, generated identically in R
# --------------------------------------------------------------------------------------
#
# Park-Miller's generator keeps every product below 2^53, so R's doubles and Python's ints
# agree exactly; every later step is a single correctly rounded IEEE operation. The R twin:
#
#   lcg <- function(seed, n) { s <- seed; out <- numeric(n)
#     for (i in seq_len(n)) { s <- (16807 * s) %% 2147483647; out[i] <- s }; out }
#   latency <- function(seed, n, base, shift = 0, quantum = NULL) {
#     u <- (lcg(seed, n) %% 100000) / 100000; v <- base + shift + 30 * u * u * u + 5 * u
#     if (!is.null(quantum)) v <- floor(v / quantum) * quantum; v }

_MODULUS = 2147483647


def latency(
    seed: int, n: int, base: float, shift: float = 0.0, quantum: float | None = None
) -> list[float]:
    out: list[float] = []
    state = seed
    for _ in range(n):
        state = (16807 * state) % _MODULUS
        u = (state % 100000) / 100000
        value = base + shift + 30 * u * u * u + 5 * u
        if quantum is not None:
            value = math.floor(value / quantum) * quantum
        out.append(value)
    return out


def test_latency_generator_matches_r() -> None:
    # First values of R's latency(101, 3, 40, 1.5), printed with sprintf("%.17g").
    assert latency(101, 3, 40.0, 1.5) == [
        74.187120617485277,
        42.198904753938159,
        41.510050243618032,
    ]


# --------------------------------------------------------------------------------------
# mann_whitney_ci against R
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RCase:
    id: str
    experiment: Sequence[float]
    control: Sequence[float]
    confidence: float
    r: tuple[float, float, float]  # (conf.int[1], conf.int[2], estimate) from R
    tol: float | None = None  # R's tol.root, when not the default 1e-4


SMALL_X = [12.1, 14.3, 11.8, 15.0, 13.2, 12.7, 16.4]
SMALL_Y = [10.9, 11.5, 12.0, 10.2, 11.1, 13.0, 9.8, 11.7]
UNEQUAL_Y = [4.1, 4.4, 5.0, 5.2, 4.8, 4.9, 5.6, 4.3, 4.7, 5.1]
UNEQUAL_Y += [4.6, 5.3, 4.2, 5.8, 4.5, 4.95, 5.05, 4.85, 5.15, 4.0]
ERRORS_X = [0.0012, 0.0015, 0.0011, 0.0019, 0.0013, 0.0016, 0.0014]
ERRORS_Y = [0.0010, 0.0009, 0.0012, 0.0011, 0.0008, 0.0010]

# Reference values from R 4.2.2's
#   r <- wilcox.test(x, y, conf.int=TRUE, exact=FALSE, correct=TRUE, conf.level=<confidence>)
#   sprintf("%.17g", c(r$conf.int, r$estimate))
# with x = experiment, y = control (NaN written as NA; tol.root passed where given).
R_CASES = [
    RCase(
        "small",
        SMALL_X,
        SMALL_Y,
        0.98,
        (0.2999869022082837, 4.700028631997938, 2.24210403028761),
    ),
    RCase(
        "small_conf_95",
        SMALL_X,
        SMALL_Y,
        0.95,
        (0.6999543294717693, 4.100050817748704, 2.24210403028761),
    ),
    RCase(
        "integer_ties",
        [3, 4, 4, 5, 5, 5, 6, 7, 7, 9],
        [2, 3, 3, 4, 4, 5, 5, 5, 6],
        0.98,
        (-0.999981827809867, 3.00005036209286, 1.0000020657870008),
    ),
    RCase(
        "mostly_zeros",
        [0, 0, 0, 0, 0.01, 0.02, 0, 0, 0.05, 0],
        [0, 0, 0, 0, 0, 0, 0.01, 0, 0, 0],
        0.98,
        (-2.610324712651717e-05, 0.01004391818965241, 4.033597436486911e-05),
    ),
    RCase(
        "negative",
        [-3.2, -1.5, -2.8, -0.4, -1.9, -2.2],
        [-1.0, 0.3, -0.7, 0.9, -0.2, 0.5, -1.3],
        0.98,
        (-3.300026590733089, -0.20001513659283393, -1.8492059078889251),
    ),
    RCase(
        "unequal_3_vs_20",
        [5.5, 6.1, 5.9],
        UNEQUAL_Y,
        0.98,
        (0.2999994955039419, 1.8000150540576754, 1.000058359670127),
    ),
    RCase(
        "no_overlap",
        [100, 101, 102, 103, 104],
        [1, 2, 3, 4, 5],
        0.98,
        (95.00005024961294, 102.99994975038706, 99.0),
    ),
    # One point against many: both bounds are end points of [mumin, mumax].
    RCase("one_vs_many", [1], list(range(2, 61)), 0.98, (-59.0, -1.0, -30.0)),
    RCase("many_vs_one", list(range(2, 31)), [1], 0.98, (1.0, 29.0, 15.0)),
    RCase(
        "with_nan",
        [2.5, NAN, 3.1, 2.9, 3.7, NAN, 3.3],
        [2.2, 2.4, NAN, 2.8, 2.1, 3.0],
        0.98,
        (-0.4999472379064128, 1.599947237906413, 0.6999527109179997),
    ),
    # x - d rounds every x onto the same double: R sees those as ties, and so must we.
    RCase(
        "tiny_vs_large",
        [1e-17, 2e-17, 3e-17, 4e-17],
        [1.0, 1.0, 2.0],
        0.98,
        (-2.0, -1.0, -1.0000569009612343),
    ),
    RCase(
        "large_magnitude",
        [1e6 + 3, 1e6 + 7.5, 1e6 + 1, 1e6 + 9, 1e6 + 4],
        [1e6, 1e6 + 2, 1e6 - 1.5, 1e6 + 0.5, 1e6 + 3],
        0.98,
        (-1.9999214849797808, 10.499921484979781, 4.000020580283834),
    ),
    # The default absolute tolerance is coarse for data this small...
    RCase(
        "error_ratio_default_tol",
        ERRORS_X,
        ERRORS_Y,
        0.98,
        (6.8432463345796e-05, 0.0008467814968744916, 0.0004241370281100281),
    ),
    # ... and tol.root = 1e-9 finds the true bounds (0.0001, 0.0008, 0.0004).
    RCase(
        "error_ratio_tol_1e-9",
        ERRORS_X,
        ERRORS_Y,
        0.98,
        (9.999991951254366e-05, 0.0008000002670783114, 0.00040000001141469077),
        tol=1e-9,
    ),
    RCase(
        "latency_40_same_distribution",
        latency(11, 40, 40.0),
        latency(23, 40, 40.0),
        0.98,
        (-2.1183480236333185, 7.533514205243002, 1.7925231598970353),
    ),
    RCase(
        "latency_300_shifted",
        latency(101, 300, 40.0, 1.5),
        latency(202, 300, 40.0),
        0.98,
        (0.3580280627061125, 2.7425880200987858, 1.5613406106139875),
    ),
    RCase(
        "latency_500_vs_200_quantized",
        latency(7, 500, 40.0, 0.8, 1.0),
        latency(8, 200, 40.0, 0.0, 1.0),
        0.98,
        (-7.292106440908762e-05, 1.9999767860678492, 0.9999645445644935),
    ),
    RCase(
        "latency_300_conf_90",
        latency(31, 300, 40.0, 0.3),
        latency(32, 300, 40.0),
        0.90,
        (-1.205726993453315, 0.2777868605071809, -0.38756388483975457),
    ),
    RCase(
        "latency_60_conf_99",
        latency(41, 60, 40.0, -2.0),
        latency(42, 60, 40.0),
        0.99,
        (-2.4205723947928153, 3.972015907916889, -0.5254019034214666),
    ),
]


@pytest.mark.parametrize("case", R_CASES, ids=lambda c: c.id)
def test_mann_whitney_ci_matches_r(case: RCase) -> None:
    kwargs: dict[str, Any] = {} if case.tol is None else {"tol": case.tol}
    got = mann_whitney_ci(case.experiment, case.control, case.confidence, **kwargs)
    # The port follows R's arithmetic step for step; on this platform the results are
    # bit-identical. The margin only allows for another libm rounding log() differently.
    assert got == pytest.approx(case.r, rel=1e-9, abs=1e-12)
    low, high, estimate = got
    assert low <= estimate <= high


def test_interval_is_ordered_by_confidence() -> None:
    x, y = latency(101, 300, 40.0, 1.5), latency(202, 300, 40.0)
    narrow = mann_whitney_ci(x, y, 0.80)
    wide = mann_whitney_ci(x, y, 0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert narrow[2] == wide[2]  # the estimate does not depend on the confidence


def _naive_statistic(x: Sequence[float], y: Sequence[float], d: float) -> tuple[float, float]:
    """R's W(d) spelled out: midranks of c(x - d, y) and the tie groups of the lot."""
    combined = [v - d for v in x] + list(y)
    ordered = sorted(combined)
    rank: dict[float, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j] == ordered[i]:
            j += 1
        rank[ordered[i]] = (i + 1 + j) / 2
        i = j
    nx, ny = float(len(x)), float(len(y))
    dz = sum(rank[v] for v in combined[: len(x)]) - nx * (nx + 1) / 2 - nx * ny / 2
    ties = sum(t**3 - t for t in (combined.count(v) for v in set(combined)))
    n = nx + ny
    return dz, math.sqrt((nx * ny / 12) * ((n + 1) - ties / (n * (n - 1))))


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([3, 4, 4, 5, 5, 5, 6, 7, 7, 9], [2, 3, 3, 4, 4, 5, 5, 5, 6]),
        ([1e-17, 2e-17, 3e-17, 4e-17], [1.0, 1.0, 2.0]),
        ([0.5, 0.5, 1.5, 2.0, 2.0, 2.0], [0.0, 0.5, 1.0, 1.0, 3.0]),
        (list(range(2, 40)), [1.0, 1.0, 4.0]),  # longer x: bisects from the y side
    ],
    ids=["integer_ties", "rounding_collapse", "half_steps", "longer_experiment"],
)
def test_fast_statistic_equals_explicit_ranking(x: list[float], y: list[float]) -> None:
    stat = _ShiftStatistic(x, y)
    # Every pairwise difference is a shift where some x - d lands on a y (a new tie), plus
    # points in between where nothing ties.
    shifts = sorted({xi - yj for xi in x for yj in y})
    shifts += [(a + b) / 2 for a, b in itertools.pairwise(shifts)]
    for d in shifts:
        assert stat(d) == _naive_statistic(x, y, d), d


@pytest.mark.parametrize(
    ("experiment", "control", "confidence", "message"),
    [
        ([], [1.0, 2.0], 0.98, "experiment"),
        ([1.0, 2.0], [NAN, INF], 0.98, "control"),
        ([2.0, 2.0, 2.0], [2.0, 2.0], 0.98, "tied"),
        ([2.0, 2.0], [5.0, 5.0, 5.0], 0.98, "tied"),
        ([1.0], [2.0], 0.98, "tied"),
        ([1.0, 2.0], [1.5, 3.0], 1.0, "confidence"),
        ([1.0, 2.0], [1.5, 3.0], 0.0, "confidence"),
    ],
)
def test_mann_whitney_ci_refuses(
    experiment: list[float], control: list[float], confidence: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mann_whitney_ci(experiment, control, confidence)


# --------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------

CONTROL = latency(12345, 100, 40.0)
SAME = latency(67890, 100, 40.0)
UP = latency(67890, 100, 40.0, 5.0)  # mean ratio ~1.13, CLES ~0.70
DOWN = latency(67890, 100, 40.0, -5.0)  # mean ratio ~0.93, CLES ~0.37
# Interval [0.38, 5.04] around 2.32: excludes 0, but not the band of 0.25 x 2.32.
SMALL_UP = latency(67890, 100, 40.0, 1.5)


@dataclass(frozen=True)
class ClassifyCase:
    id: str
    control: Sequence[float]
    experiment: Sequence[float]
    expected: Classification
    config: JudgeConfig = field(default_factory=JudgeConfig)
    critical: bool = False
    reason: str = ""  # a fragment the reason must contain
    tested: bool = True  # whether the interval was computed


CLASSIFY_CASES = [
    # Directions.
    ClassifyCase("up_either", CONTROL, UP, Classification.HIGH, reason="is high"),
    ClassifyCase("up_increase", CONTROL, UP, Classification.HIGH, JudgeConfig("increase")),
    ClassifyCase(
        "up_but_only_decrease_is_bad",
        CONTROL,
        UP,
        Classification.PASS,
        JudgeConfig("decrease"),
        reason="an increase is not a failure",
    ),
    ClassifyCase("down_either", CONTROL, DOWN, Classification.LOW, reason="is low"),
    ClassifyCase("down_decrease", CONTROL, DOWN, Classification.LOW, JudgeConfig("decrease")),
    ClassifyCase(
        "down_but_only_increase_is_bad",
        CONTROL,
        DOWN,
        Classification.PASS,
        JudgeConfig("increase"),
        reason="a decrease is not a failure",
    ),
    ClassifyCase("no_shift", CONTROL, SAME, Classification.PASS, reason="tolerance band"),
    # Tolerance band: the interval excludes 0 but not the band of 0.25 x |estimate|.
    ClassifyCase(
        "small_shift_inside_band", CONTROL, SMALL_UP, Classification.PASS, reason="tolerance"
    ),
    ClassifyCase(
        "small_shift_no_tolerance",
        CONTROL,
        SMALL_UP,
        Classification.HIGH,
        JudgeConfig(tolerance=0.0),
    ),
    ClassifyCase(
        "large_tolerance_swallows_shift",
        CONTROL,
        UP,
        Classification.PASS,
        JudgeConfig(tolerance=0.9),
    ),
    # Effect-size gates: mean ratio.
    ClassifyCase(
        "mean_ratio_below_allowed_increase",
        CONTROL,
        UP,
        Classification.PASS,
        JudgeConfig(allowed_increase=1.2),
        reason="effect size is below the allowed 1.2",
    ),
    ClassifyCase(
        "mean_ratio_above_allowed_increase",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(allowed_increase=1.05),
        reason="(allowed 1.05)",
    ),
    ClassifyCase(
        "mean_ratio_above_allowed_decrease",
        CONTROL,
        DOWN,
        Classification.PASS,
        JudgeConfig(allowed_decrease=0.8),
        reason="effect size is above the allowed 0.8",
    ),
    ClassifyCase(
        "mean_ratio_below_allowed_decrease",
        CONTROL,
        DOWN,
        Classification.LOW,
        JudgeConfig(allowed_decrease=0.95),
    ),
    # A zero control mean leaves the ratio undefined, and an undefined effect never blocks.
    ClassifyCase(
        "mean_ratio_undefined",
        [0.0] * 60,
        [0.001 * (i % 10) for i in range(60)],
        Classification.HIGH,
        JudgeConfig(allowed_increase=5.0),
        reason="mean ratio undefined",
    ),
    # Effect-size gates: CLES.
    ClassifyCase(
        "cles_below_allowed_increase",
        CONTROL,
        UP,
        Classification.PASS,
        JudgeConfig(effect_size_measure="cles", allowed_increase=0.9),
    ),
    ClassifyCase(
        "cles_above_allowed_increase",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(effect_size_measure="cles", allowed_increase=0.65),
        reason="CLES 0.",
    ),
    ClassifyCase(
        "cles_above_allowed_decrease",
        CONTROL,
        DOWN,
        Classification.PASS,
        JudgeConfig(effect_size_measure="cles", allowed_decrease=0.1),
    ),
    ClassifyCase(
        "cles_below_allowed_decrease",
        CONTROL,
        DOWN,
        Classification.LOW,
        JudgeConfig(effect_size_measure="cles", allowed_decrease=0.4),
    ),
    # Critical gates.
    ClassifyCase(
        "critical_high_default_gate",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(critical=True),
        critical=True,
        reason="critical",
    ),
    ClassifyCase(
        "critical_high_below_critical_gate",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(critical=True, critical_increase=1.2),
        critical=False,
    ),
    ClassifyCase(
        "critical_high_above_critical_gate",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(critical=True, critical_increase=1.05),
        critical=True,
    ),
    ClassifyCase(
        "critical_low_cles_gate_met",
        CONTROL,
        DOWN,
        Classification.LOW,
        JudgeConfig(critical=True, effect_size_measure="cles", critical_decrease=0.4),
        critical=True,
    ),
    ClassifyCase(
        "critical_low_cles_gate_missed",
        CONTROL,
        DOWN,
        Classification.LOW,
        JudgeConfig(critical=True, effect_size_measure="cles", critical_decrease=0.3),
        critical=False,
    ),
    ClassifyCase(
        "critical_metric_passing", CONTROL, SAME, Classification.PASS, JudgeConfig(critical=True)
    ),
    ClassifyCase(
        "critical_gate_on_non_critical_metric",
        CONTROL,
        UP,
        Classification.HIGH,
        JudgeConfig(critical_increase=1.01),
        critical=False,
    ),
    # Empty sides, per strategy.
    ClassifyCase(
        "no_canary", CONTROL, [], Classification.NODATA, reason="no canary samples", tested=False
    ),
    ClassifyCase(
        "no_control", [], UP, Classification.NODATA, reason="no control samples", tested=False
    ),
    ClassifyCase(
        "nothing", [], [], Classification.NODATA, reason="no canary or control", tested=False
    ),
    ClassifyCase(
        "no_canary_must_have_data",
        CONTROL,
        [],
        Classification.NODATA_FAIL,
        JudgeConfig(must_have_data=True),
        reason="data is required",
        tested=False,
    ),
    ClassifyCase(
        "no_canary_critical",
        CONTROL,
        [],
        Classification.NODATA,
        JudgeConfig(critical=True),
        critical=True,
        tested=False,
    ),
    ClassifyCase(
        "no_canary_critical_must_have_data",
        CONTROL,
        [],
        Classification.NODATA,
        JudgeConfig(critical=True, must_have_data=True),
        critical=True,
        tested=False,
    ),
    ClassifyCase(
        "no_canary_replace",
        CONTROL,
        [],
        Classification.PASS,
        JudgeConfig(nan_strategy="replace", critical=True, must_have_data=True),
        tested=False,
    ),
    # NaN (and infinities) are missing values.
    ClassifyCase("all_nan_removed", CONTROL, [NAN] * 100, Classification.NODATA, tested=False),
    ClassifyCase(
        "all_nan_replaced_by_zero",
        CONTROL,
        [NAN] * 100,
        Classification.LOW,
        JudgeConfig(nan_strategy="replace"),
    ),
    ClassifyCase("nan_and_inf_removed", CONTROL, [*UP, NAN, INF, -INF], Classification.HIGH),
    # Nothing to test.
    ClassifyCase(
        "identical_in_another_order",
        CONTROL,
        CONTROL[::-1],
        Classification.PASS,
        reason="identical",
        tested=False,
    ),
    ClassifyCase(
        "one_value_everywhere",
        [3.0] * 60,
        [3.0] * 70,
        Classification.PASS,
        reason="every canary and control sample is 3",
        tested=False,
    ),
    # Two different constants: noise makes the test possible; the interval hugs the gap.
    ClassifyCase("constant_sides_up", [1.0] * 60, [2.0] * 60, Classification.HIGH),
    ClassifyCase("constant_sides_down", [5.0] * 60, [0.0] * 60, Classification.LOW),
    ClassifyCase(
        "single_sample_each", [1.0], [1.5], Classification.HIGH, reason="warning: only 1 canary"
    ),
]


@pytest.mark.parametrize("case", CLASSIFY_CASES, ids=lambda c: c.id)
def test_classify(case: ClassifyCase) -> None:
    verdict = classify(case.control, case.experiment, case.config, name="latency_p99")
    assert verdict.classification is case.expected, verdict.reason
    assert verdict.critical is case.critical, verdict.reason
    assert verdict.reason.startswith("latency_p99 ")
    assert case.reason in verdict.reason
    if case.tested:
        assert verdict.ci_low is not None and verdict.ci_high is not None
        assert verdict.estimate is not None
        assert verdict.ci_low <= verdict.estimate <= verdict.ci_high
        assert "% confidence" in verdict.reason
    else:
        assert (verdict.ci_low, verdict.ci_high, verdict.estimate) == (None, None, None)


def test_classify_reports_interval_means_and_effect_size() -> None:
    verdict = classify(CONTROL, UP, JudgeConfig(effect_size_measure="cles"), name="latency_p99")
    x_mean, y_mean = sum(UP) / len(UP), sum(CONTROL) / len(CONTROL)
    assert verdict.samples == (100, 100)
    assert verdict.experiment_mean == pytest.approx(x_mean)
    assert verdict.control_mean == pytest.approx(y_mean)
    assert verdict.mean_ratio == pytest.approx(x_mean / y_mean)  # reported under CLES too
    wins = sum((a > b) + 0.5 * (a == b) for a in UP for b in CONTROL)
    assert verdict.effect_size == pytest.approx(wins / (len(UP) * len(CONTROL)))
    # The interval is R's for the same data (spread above 1, so the same root tolerance).
    assert (verdict.ci_low, verdict.ci_high, verdict.estimate) == mann_whitney_ci(UP, CONTROL)
    assert "latency_p99 is high: canary − control shift" in verdict.reason
    assert "warning" not in verdict.reason  # 100 samples a side


def test_classify_counts_samples_after_nan_handling() -> None:
    data = [1.0, NAN, 2.0, INF, 3.0]
    removed = classify([1.0, 2.0, 3.0], data, JudgeConfig())
    replaced = classify([1.0, 2.0, 3.0], data, JudgeConfig(nan_strategy="replace"))
    assert removed.samples == (3, 3)
    assert "identical" in removed.reason  # NaN and Inf dropped: the same three values
    assert replaced.samples == (5, 3)
    assert replaced.experiment_mean == pytest.approx(6.0 / 5)


@pytest.mark.parametrize(
    ("n_canary", "n_control", "warning"),
    [
        (49, 100, "only 49 canary samples"),
        (100, 10, "only 10 control samples"),
        (20, 30, "only 20 canary and 30 control samples"),
        (50, 50, None),
    ],
)
def test_few_samples_warning(n_canary: int, n_control: int, warning: str | None) -> None:
    verdict = classify(latency(5, n_control, 40.0), latency(6, n_canary, 41.0), JudgeConfig())
    if warning is None:
        assert "warning" not in verdict.reason
    else:
        assert warning in verdict.reason


def test_constant_sides_interval_hugs_the_gap_and_is_deterministic() -> None:
    first = classify([1.0] * 60, [2.0] * 60, JudgeConfig())
    again = classify([1.0] * 60, [2.0] * 60, JudgeConfig())
    assert first == again
    assert first.ci_low is not None and first.ci_high is not None
    assert first.ci_low == pytest.approx(1.0, rel=1e-4)
    assert first.ci_high == pytest.approx(1.0, rel=1e-4)
    assert first.mean_ratio == 2.0  # effect sizes come from the data, not the noise


def test_small_values_use_a_scaled_root_tolerance() -> None:
    # With R's absolute 1e-4 the bounds of these error ratios would be off by up to 5e-5
    # (see the R table); classify narrows the tolerance to the data's spread.
    verdict = classify(ERRORS_Y, ERRORS_X, JudgeConfig(tolerance=0.2))
    assert verdict.ci_low == pytest.approx(0.0001, rel=1e-3)
    assert verdict.ci_high == pytest.approx(0.0008, rel=1e-3)
    assert verdict.estimate == pytest.approx(0.0004, rel=1e-3)
    assert verdict.classification is Classification.HIGH


def test_to_dict_is_json_ready() -> None:
    verdict = classify(CONTROL, UP, JudgeConfig())
    out = verdict.to_dict()
    assert out["classification"] == "high"
    assert out["samples"] == {"experiment": 100, "control": 100}
    assert out["ci_low"] == verdict.ci_low
    assert set(out) >= {"critical", "ci_high", "estimate", "effect_size", "mean_ratio", "reason"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"direction": "up"},
        {"effect_size_measure": "median"},
        {"nan_strategy": "drop"},
        {"tolerance": -0.1},
        {"confidence": 1.0},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JudgeConfig(**kwargs)


@pytest.mark.parametrize(
    ("measure", "increase", "decrease"), [("mean_ratio", 1.0, 1.0), ("cles", 0.5, 0.5)]
)
def test_config_gate_defaults(measure: Any, increase: float, decrease: float) -> None:
    config = JudgeConfig(effect_size_measure=measure)
    assert (config.increase_gate, config.decrease_gate) == (increase, decrease)
    assert (config.critical_increase_gate, config.critical_decrease_gate) == (
        increase,
        decrease,
    )
    assert replace(config, allowed_increase=1.3).increase_gate == 1.3


# --------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------


def v(classification: str, critical: bool = False) -> MetricVerdict:
    return MetricVerdict(
        classification=Classification(classification),
        critical=critical,
        ci_low=None,
        ci_high=None,
        estimate=None,
        effect_size=None,
        mean_ratio=None,
        experiment_mean=None,
        control_mean=None,
        samples=(0, 0),
        reason="",
    )


@dataclass(frozen=True)
class ScoreCase:
    id: str
    verdicts: list[tuple[str, MetricVerdict]]
    expected: float
    weights: dict[str, float] | None = None


SCORE_CASES = [
    ScoreCase("all_pass", [("a", v("pass")), ("a", v("pass"))], 100.0),
    ScoreCase("one_of_four_high", [("a", v("pass"))] * 3 + [("a", v("high"))], 75.0),
    ScoreCase("low_counts_like_high", [("a", v("pass")), ("a", v("low"))], 50.0),
    # Unweighted groups share 100 equally: (100 + 50) / 2.
    ScoreCase(
        "two_groups_unweighted", [("a", v("pass")), ("b", v("pass")), ("b", v("high"))], 75.0
    ),
    ScoreCase(
        "two_groups_weighted",
        [("a", v("pass")), ("b", v("pass")), ("b", v("high"))],
        100 * 0.7 + 50 * 0.3,
        {"a": 70, "b": 30},
    ),
    # b and c share the 40 that a's 60 leaves: 100 * 0.6 + 50 * 0.2 + 0 * 0.2.
    ScoreCase(
        "partly_weighted",
        [("a", v("pass")), ("b", v("pass")), ("b", v("low")), ("c", v("high"))],
        70.0,
        {"a": 60},
    ),
    # Configured weights are used as given, even when they do not add up to 100...
    ScoreCase("weights_as_given", [("a", v("pass")), ("b", v("pass"))], 80.0, {"a": 50, "b": 30}),
    # ... and a weight for a group that reported nothing is ignored.
    ScoreCase(
        "weight_for_absent_group",
        [("a", v("pass")), ("a", v("high"))],
        25.0,
        {"a": 50, "zzz": 50},
    ),
    ScoreCase(
        "nodata_not_counted",
        [("a", v("pass")), ("a", v("pass")), ("a", v("nodata"))],
        100.0,
    ),
    ScoreCase(
        "nodata_fail_counted",
        [("a", v("pass"))] * 3 + [("a", v("nodata_fail"))],
        75.0,
    ),
    # A group with only nodata has nothing countable and counts as 100.
    ScoreCase(
        "group_of_nodata_counts_100",
        [("a", v("nodata")), ("b", v("pass")), ("b", v("pass")), ("b", v("high"))],
        (100 + 100 * 2 / 3) / 2,
    ),
    ScoreCase("critical_zeroes", [("a", v("pass"))] * 5 + [("b", v("high", critical=True))], 0.0),
    ScoreCase(
        "critical_nodata_zeroes",
        [("a", v("pass"))] * 5 + [("b", v("nodata", critical=True))],
        0.0,
    ),
    ScoreCase("half_nodata_zeroes", [("a", v("pass")), ("a", v("nodata"))], 0.0),
    ScoreCase(
        "half_nodata_fail_zeroes",
        [("a", v("pass")), ("a", v("nodata")), ("b", v("nodata_fail")), ("b", v("pass"))],
        0.0,
    ),
    ScoreCase(
        "under_half_nodata",
        [("a", v("pass")), ("a", v("pass")), ("a", v("nodata"))],
        100.0,
    ),
    ScoreCase("no_verdicts", [], 0.0),
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=lambda c: c.id)
def test_score(case: ScoreCase) -> None:
    assert score(case.verdicts, case.weights) == pytest.approx(case.expected)


def test_score_with_real_verdicts() -> None:
    verdicts = [
        ("latency", classify(CONTROL, UP, JudgeConfig())),
        ("latency", classify(CONTROL, SAME, JudgeConfig())),
        ("errors", classify(CONTROL, SAME, JudgeConfig())),
    ]
    assert score(verdicts) == pytest.approx((50 + 100) / 2)
    assert score(verdicts, {"errors": 80}) == pytest.approx(50 * 0.2 + 100 * 0.8)


@pytest.mark.parametrize(
    ("value", "thresholds", "expected"),
    [
        (100.0, (), ScoreClass.PASS),
        (95.0, (), ScoreClass.PASS),
        (94.9, (), ScoreClass.MARGINAL),
        (75.0, (), ScoreClass.MARGINAL),
        (74.9, (), ScoreClass.FAIL),
        (0.0, (), ScoreClass.FAIL),
        (85.0, (80, 60), ScoreClass.PASS),
        (70.0, (80, 60), ScoreClass.MARGINAL),
        (59.0, (80, 60), ScoreClass.FAIL),
    ],
)
def test_classify_score(value: float, thresholds: tuple[float, ...], expected: ScoreClass) -> None:
    assert classify_score(value, *thresholds) is expected


def test_random_data_never_crashes() -> None:
    # Ties, constants, zeros, negatives and single points in every mix: always a verdict.
    rng = random.Random(7)
    pools: list[list[float]] = [[0.0], [1.0, 2.0], [-1.0, 0.0, 1.0], [0.5], [1e-9, 2e-9]]
    for _ in range(300):
        control = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 6))]
        experiment = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 6))]
        verdict = classify(control, experiment, JudgeConfig())
        assert verdict.classification in set(Classification)
        if verdict.estimate is not None:
            assert verdict.ci_low is not None and verdict.ci_high is not None
            assert verdict.ci_low <= verdict.estimate <= verdict.ci_high


@pytest.mark.parametrize("kind", ["continuous", "integers", "rounded"])
def test_long_series_are_counted_with_numpy_to_the_same_bits(kind: str) -> None:
    """The array statistic (long series) gives exactly what the interpreted one gives, ties
    and shifts that land on data points included, so R's numbers hold at every length."""
    rng = random.Random(11)

    def draw(n: int) -> list[float]:
        if kind == "integers":
            return [float(rng.randint(0, 20)) for _ in range(n)]
        if kind == "rounded":
            return [round(rng.gauss(0.1, 0.02), 3) for _ in range(n)]
        return [rng.lognormvariate(-2, 0.3) for _ in range(n)]

    for n, m in ((ARRAY_FROM, 30), (40, ARRAY_FROM + 50), (1_000, 700)):
        x, y = draw(n), draw(m)
        plain, arrays = _ShiftStatistic(x, y), _ArrayShiftStatistic(x, y)
        shifts = [0.0, min(x) - max(y), max(x) - min(y)]
        shifts += [rng.choice(x) - rng.choice(y) for _ in range(25)]  # on data points: ties
        shifts += [rng.uniform(-0.5, 0.5) for _ in range(5)]
        for d in shifts:
            assert arrays(d) == plain(d), (n, m, d)
        experiment, control = draw(n), draw(m)
        assert _cles(experiment, control) == pytest.approx(
            sum((e > c) + (e == c) / 2 for e in experiment for c in control) / (n * m), abs=1e-15
        )
