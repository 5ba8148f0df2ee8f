"""What a finished release went through, as data: the completion summary kept on its record.

Built once, when the release succeeds (bot.judging.summary), from the record, its analysis
rounds and its audit; every surface (the thread, the status message, the announcement, a
release page) renders the same numbers from it. Pure: no I/O, no sentences.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# A check that used this much of a limit (or more, without crossing it) was a near miss.
NEAR_MISS_SHARE = 0.8


class Rule(StrEnum):
    """A limit of the service policy that the summary measures the canary against."""

    MAX = "max"
    MIN = "min"
    MAX_RATIO = "max_ratio"
    MAX_DIFF = "max_diff"
    WARN_MAX = "warn_max"
    WARN_MIN = "warn_min"
    WARN_RATIO = "warn_ratio"
    WARN_DIFF = "warn_diff"

    @property
    def is_warning(self) -> bool:
        return self.value.startswith("warn_")


class Limit(BaseModel):
    """One limit as the policy set it when the release ran (the policy may change later)."""

    model_config = ConfigDict(frozen=True)

    rule: Rule
    value: float


class MetricFinal(BaseModel):
    """One metric at the release's last round, and the closest it came to a limit on the way."""

    model_config = ConfigDict(frozen=True)

    name: str
    unit: str = ""
    outcome: str  # the last check's outcome: pass | fail | no_data | error
    canary: float | None = None
    control: float | None = None  # the control, or the frozen baseline while baking
    limits: list[Limit] = Field(default_factory=list)
    statistical: bool = False  # also judged by the Mann-Whitney comparison
    dry_run: bool = False  # judged and shown, never acted on
    warning: bool = False  # the last check crossed a warn_* level
    # The largest share of a failing limit any round used without failing (1.0 = at it), and
    # which limit that was; None when no round could be measured against one.
    closest_share: float | None = None
    closest_rule: Rule | None = None


class MomentKind(StrEnum):
    WARNING = "warning"  # a warn_* level crossed (reported, never fails a check)
    NEAR_MISS = "near_miss"  # a check within NEAR_MISS_SHARE of a limit that did not fail
    FAILED = "failed"  # failed checks that did not reach the failure limit
    NO_DATA = "no_data"  # rounds with no verdict for a metric (no data or a query error)
    PAUSE = "pause"
    APPROVAL_WAIT = "approval_wait"
    TRAFFIC_REPAIR = "traffic_repair"  # the engine applied another weight; set again


METRIC_MOMENTS = frozenset(
    {MomentKind.WARNING, MomentKind.NEAR_MISS, MomentKind.FAILED, MomentKind.NO_DATA}
)


class Moment(BaseModel):
    """Something worth telling that happened on the way, at one step (rounds of the same kind,
    metric and limit at one step are one moment, with their count and the worst value)."""

    model_config = ConfigDict(frozen=True)

    kind: MomentKind
    weight: int  # the step it happened at
    metric: str = ""
    rule: Rule | None = None
    limit: float | None = None
    value: float | None = None  # what was compared with the limit: a value, ratio or difference
    share: float | None = None  # value's share of the limit (ratios: of the allowed increase)
    rounds: int = 0  # rounds it was seen in
    failure_limit: int = 0  # FAILED: the consecutive failures that would have rolled back
    seconds: float | None = None  # PAUSE / APPROVAL_WAIT: how long
    by: str = ""  # PAUSE / APPROVAL_WAIT: who paused or approved
    reason: str = ""  # PAUSE: the reason given (untrusted text: escaped where shown)


class StepTime(BaseModel):
    model_config = ConfigDict(frozen=True)

    weight: int
    seconds: float


class CompletionSummary(BaseModel):
    """The release from start to success: how long, where the time went, the final numbers
    against their limits, and what happened on the way."""

    model_config = ConfigDict(frozen=True)

    duration: float
    steps: list[StepTime] = Field(default_factory=list)
    rounds: int = 0  # analysis rounds summarized
    compared_with: str = "control"  # what the final numbers' other side is: control | baseline
    metrics: list[MetricFinal] = Field(default_factory=list)
    moments: list[Moment] = Field(default_factory=list)
    # Part of the story could not be read (rounds no longer kept, the audit unreadable): the
    # summary says so rather than calling an unread stretch nominal.
    partial: bool = False

    @property
    def judged(self) -> list[MetricFinal]:
        """The metrics that decide (dry-run ones are shown, never counted)."""
        return [m for m in self.metrics if not m.dry_run]

    def of_kind(self, *kinds: MomentKind) -> list[Moment]:
        return [m for m in self.moments if m.kind in kinds]

    @property
    def nominal(self) -> bool:
        """Every judged metric passed its last check without a warning, and no round on the
        way warned, failed, came near a limit or went without data: only then "all metrics
        nominal". Dry-run metrics do not count; a partial record never is nominal."""
        judged = {m.name for m in self.judged}
        if not judged or self.partial:
            return False
        if any(m.outcome != "pass" or m.warning for m in self.judged):
            return False
        return not any(m.metric in judged for m in self.of_kind(*METRIC_MOMENTS))
