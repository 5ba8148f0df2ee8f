"""How long Redis keeps what a release leaves behind: the policy's top-level ``retention:``.

Every key shipwatch writes is bounded, by age or by count, so a busy installation's Redis stops
growing: the audit streams are trimmed by age (with a count as a backstop against a flood),
and a finished release's record, chat message ids, thread link, chart points and fencing
counter expire a while after it ended.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.release.durations import Seconds, format_duration

_DAY = 86400.0
# Shorter than an hour would let a record vanish while people still read its thread.
_SHORTEST = 3600.0


class Retention(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # A finished release (its record, message ids, thread link, fence): counted
    # from when it ended. Stats do not need it (they read the lifecycle stream).
    releases: Seconds = Field(default=30 * _DAY)
    # Its chart points (one per judged round, most of a finished release's bytes): the charts
    # and the diagnosis read them while it runs and just after.
    charts: Seconds = Field(default=7 * _DAY)
    # The full audit stream: every round, including the routine "hold" ones (most of it).
    audit: Seconds = Field(default=14 * _DAY)
    # The lifecycle stream (what changed a release's course, and every person's action): what
    # /rollout stats and the release metrics read, so it is kept long enough for a year's view.
    lifecycle: Seconds = Field(default=400 * _DAY)
    # Count backstops: a flood of entries (a loop, a misbehaving client) cannot fill Redis
    # inside the age window. Reached only far beyond the sizing table's volumes.
    audit_max_entries: int = Field(default=2_000_000, ge=1000)
    lifecycle_max_entries: int = Field(default=2_000_000, ge=1000)

    @field_validator("releases", "charts", "audit", "lifecycle")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < _SHORTEST:
            raise ValueError(
                f"{format_duration(value)} is too short: keep at least {format_duration(_SHORTEST)}"
            )
        return value
