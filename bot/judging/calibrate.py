"""The calibration search: the most sensitive setting of a small grid that keeps the A/A
false-rollback rate under a target while every injected fault is still caught. Pure.

The grid has two axes, applied to every metric of the service at once:

* ``failure_limit`` (consecutive failed checks that roll back) in FAILURE_LIMITS, also the
  canary score's; ``total_failure_limit`` is raised to it when below. Critical metrics are
  left critical: one failure rolls them back whatever the limit.
* a margin scale in MARGIN_SCALES on every threshold that is a margin over the control:
  ``max_diff`` × s, ``max_ratio`` 1 + (r - 1) × s, and the statistical gates
  ``allowed_increase`` / ``allowed_decrease`` scaled the same way around their neutral value
  (1 for the mean ratio, 0.5 for CLES). Absolute limits (``max``, ``min``) are service-level
  objectives, not a sensitivity, and stay as written.

"Most sensitive" is the smallest failure limit, then the smallest margin scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.judging.backtest import AASummary, Caches, FaultSummary, ServiceInputs, aa_and_faults
from bot.release.policy import Metric, ServicePolicy

FAILURE_LIMITS = (1, 2, 3, 4)
MARGIN_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)
GRID_TEXT = (
    "grid: failure_limit in {1, 2, 3, 4} (every metric and the canary score) × a margin scale "
    "in {0.5, 0.75, 1, 1.5, 2} on every margin over the control (max_diff × s, max_ratio "
    "1 + (r - 1) × s, allowed_increase/decrease likewise around their neutral value); "
    "absolute max/min and critical flags stay as written; the most sensitive setting that "
    "keeps the A/A false-rollback rate at or under the target and catches every injected "
    "fault wins"
)


def _scaled_gate(value: float | None, neutral: float, scale: float) -> float | None:
    if value is None:
        return None
    scaled = neutral + (value - neutral) * scale
    return scaled if scaled > 0 else value


def scaled_metric(m: Metric, failure_limit: int, scale: float) -> Metric:
    neutral = 1.0 if m.effect_size_measure == "mean_ratio" else 0.5
    update: dict[str, Any] = {
        "failure_limit": failure_limit,
        "total_failure_limit": max(m.total_failure_limit, failure_limit),
    }
    if m.max_diff is not None:
        update["max_diff"] = m.max_diff * scale
    if m.max_ratio is not None:
        update["max_ratio"] = _scaled_gate(m.max_ratio, 1.0, scale)
    update["allowed_increase"] = _scaled_gate(m.allowed_increase, neutral, scale)
    update["allowed_decrease"] = _scaled_gate(m.allowed_decrease, neutral, scale)
    return m.model_copy(update=update)


def variant(sp: ServicePolicy, failure_limit: int, scale: float) -> ServicePolicy:
    """The service's policy at one point of the grid."""
    return sp.model_copy(
        update={
            "metrics": [scaled_metric(m, failure_limit, scale) for m in sp.metrics],
            "score": sp.score.model_copy(update={"failure_limit": failure_limit}),
        }
    )


def margins(sp: ServicePolicy) -> dict[str, dict[str, float]]:
    """The settings the grid moves, per metric, as they stand in ``sp``."""
    out: dict[str, dict[str, float]] = {}
    for m in sp.metrics:
        fields = {"failure_limit": float(m.failure_limit)}
        for name in ("max_diff", "max_ratio", "allowed_increase", "allowed_decrease"):
            value = getattr(m, name)
            if value is not None:
                fields[name] = round(float(value), 6)
        out[m.name] = fields
    return out


@dataclass(frozen=True)
class Candidate:
    failure_limit: int
    scale: float
    aa: AASummary
    faults: tuple[FaultSummary, ...]
    target: float

    @property
    def detects_all(self) -> bool:
        return all(f.rate == 1.0 for f in self.faults)

    @property
    def quiet(self) -> bool:
        rate = self.aa.rate
        return rate is not None and rate <= self.target

    @property
    def meets(self) -> bool:
        return self.quiet and self.detects_all


@dataclass(frozen=True)
class Suggestion:
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None
    settings: dict[str, dict[str, float]]  # the chosen variant's settings (empty: none)
    current: dict[str, dict[str, float]]


def search(
    inputs: ServiceInputs,
    target: float,
    failure_limits: Sequence[int] = FAILURE_LIMITS,
    scales: Sequence[float] = MARGIN_SCALES,
) -> Suggestion:
    """Every point of the grid judged on the same A/A windows and faults."""
    candidates: list[Candidate] = []
    for scale in scales:
        caches = Caches()  # the analyses of this scale, reused across failure limits
        for limit in failure_limits:
            sp = variant(inputs.sp, limit, scale)
            aa, faults = aa_and_faults(inputs, sp, caches)
            candidates.append(Candidate(limit, scale, aa, tuple(faults), target))
    meeting = [c for c in candidates if c.meets]
    chosen = min(meeting, key=lambda c: (c.failure_limit, c.scale), default=None)
    settings = margins(variant(inputs.sp, chosen.failure_limit, chosen.scale)) if chosen else {}
    return Suggestion(tuple(candidates), chosen, settings, margins(inputs.sp))
