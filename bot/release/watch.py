"""The post-release watch as data: what it has seen of a shipped release, round after round.

A watch follows a release that succeeded, for the policy's window, at a slow cadence, against the
baseline the record froze at 100%. It is kept apart from the release record: the release is
finished (its lock and active slot are free for the next deploy) while its watch goes on.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

WATCH_SCHEMA_VERSION = 1


class WatchEnd(StrEnum):
    WATCHING = ""  # still running
    CLOSED = "closed"  # the window elapsed: the report was posted
    SUPERSEDED = "superseded"  # a newer release of the service started


class MetricTally(BaseModel):
    """One metric over the watch: the sum and count of the values read, and the worst."""

    total: float = 0.0
    failing: dict[str, int] = Field(default_factory=dict)  # failed rounds in a row, by metric
    rounds: int = 0
    worst: float | None = None  # the highest value read (every judged metric is "lower is better"
    # or symmetric in the reports people read: the peak is what they ask about)

    @property
    def mean(self) -> float | None:
        return self.total / self.rounds if self.rounds else None

    def add(self, value: float) -> MetricTally:
        worst = value if self.worst is None else max(self.worst, value)
        return MetricTally(total=self.total + value, rounds=self.rounds + 1, worst=worst)


class Finding(BaseModel):
    """The first failed round of the watch: what the thread and the page say."""

    metric: str
    value: float | None
    baseline: float | None
    limit: str
    reason: str
    at: float


class WatchRecord(BaseModel):
    """The JSON kept in Redis for one release's watch."""

    schema_version: int = WATCH_SCHEMA_VERSION
    release_id: str
    service: str
    version: str
    previous_version: str  # what "Roll back" goes back to: the release's stable version
    started_at: float
    window: float  # seconds
    interval: float  # seconds between rounds
    baseline: dict[str, float] = Field(default_factory=dict)
    tallies: dict[str, MetricTally] = Field(default_factory=dict)
    failing: dict[str, int] = Field(default_factory=dict)  # failed rounds in a row, by metric
    rounds: int = 0
    last_round_at: float | None = None
    finding: Finding | None = None  # set once: one message per watch, never one per round
    ended: WatchEnd = WatchEnd.WATCHING
    ended_by: str = ""  # SUPERSEDED: the id of the newer release

    @property
    def ends_at(self) -> float:
        return self.started_at + self.window

    def due(self, now: float) -> bool:
        return self.last_round_at is None or now - self.last_round_at >= self.interval

    def means(self) -> dict[str, float]:
        return {k: m for k, t in self.tallies.items() if (m := t.mean) is not None}
