"""The rule kinds a metric may carry beyond its limits: against its own value at the end of the
previous step, and against the slope of its values over the current step.

Policy models only (pure); the judging lives in bot.judging.step_rules.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VsPreviousStep(BaseModel):
    """The canary compared with its own value when the release left the previous step: a
    regression that appears only as the canary takes more traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_ratio: float | None = Field(default=None, gt=0)  # e.g. 1.05: at most 5% above
    max_increase: float | None = Field(default=None, ge=0)  # e.g. 0.01: at most 0.01 above

    @model_validator(mode="after")
    def _has_a_limit(self) -> VsPreviousStep:
        if self.max_ratio is None and self.max_increase is None:
            raise ValueError("give max_ratio (e.g. 1.05) or max_increase (e.g. 0.01)")
        return self


class Trend(BaseModel):
    """The canary's slope over the current step's rounds: fails only when the whole confidence
    interval of the slope is past the limit, so noise never reads as a trend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_slope_per_hour: float  # in the metric's unit per hour, in the metric's worse direction
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_points: int = Field(default=5, ge=3)  # rounds in the step before a slope is judged
