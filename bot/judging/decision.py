"""From one round of checks to one decision. Pure: the controller carries it out.

Order of precedence: roll back > pause > advance / approval / succeed > hold.
Dry-run metrics are judged and reported but never counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bot.judging.analysis import ScoreResult
from bot.judging.statistical import ScoreClass
from bot.release.checks import CheckResult, Outcome
from bot.release.durations import format_duration
from bot.release.policy import Metric, NoDataPolicy
from bot.release.rollout import MetricCounters, Release, State, hold_elapsed


class Verdict(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    REQUEST_APPROVAL = "request_approval"
    SUCCEED = "succeed"
    PAUSE = "pause"
    RESUME = "resume"  # only a release the controller paused because metrics were unreadable
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    counters: dict[str, MetricCounters] = field(default_factory=dict)
    clean: bool = False  # every counted check passed this round
    outage: bool = False  # PAUSE: only because metrics could not be read
    readable_rounds: int = 0  # a release paused for an outage: rounds in a row that read again


SCORE_COUNTER = "canary score"


# One ladder, in order of precedence (roll back > pause > advance or approval > hold): the order
# is the rule, so it stays in one place.
def decide(  # noqa: C901, PLR0912, PLR0915
    release: Release,
    metrics: Sequence[Metric],
    checks: Sequence[CheckResult],
    now: float,
    score: ScoreResult | None = None,
    score_failure_limit: int = 2,
    resume_after_rounds: int = 0,
) -> Decision:
    by_name = {m.name: m for m in metrics}
    counters = {name: c.model_copy() for name, c in release.counters.items()}
    holding: list[str] = []
    rollback: list[str] = []
    pause: list[str] = []
    unreadable = 0  # of the pause reasons, those that are only errors reading a metric
    errored = False
    clean = True
    for check in checks:
        metric = by_name.get(check.metric)
        if metric is None or check.dry_run:
            continue
        c = counters.setdefault(check.metric, MetricCounters())
        outcome = check.outcome
        if outcome is Outcome.NO_DATA and metric.no_data is NoDataPolicy.FAIL:
            outcome = Outcome.FAIL
        if outcome is not Outcome.PASS:
            clean = False
        if outcome is Outcome.PASS:
            c.consecutive_failures = 0
            c.consecutive_errors = 0
            c.failing_since = None
        elif outcome is Outcome.FAIL:
            c.consecutive_failures += 1
            c.total_failures += 1
            c.consecutive_errors = 0
            if c.failing_since is None:
                c.failing_since = now
            why = _limit_reached(check, metric, c)
            lasted = now - c.failing_since
            if why and metric.for_ is not None and lasted < metric.for_:
                # `for:` and the limits must both hold: a breach younger than `for` holds.
                holding.append(breach_too_young(check, lasted, metric.for_))
            elif why:
                rollback.append(why)
        elif outcome is Outcome.ERROR:
            errored = True
            c.consecutive_errors += 1
            if c.consecutive_errors >= metric.error_limit:
                unreadable += 1
                pause.append(
                    f"{check.reason} ({c.consecutive_errors} times in a row, limit "
                    f"{metric.error_limit}); query: {check.query}"
                )
        elif outcome is Outcome.NO_DATA and metric.no_data is NoDataPolicy.PAUSE:
            pause.append(check.reason)

    if score is not None:
        # The score is judged like a metric of its own: a failing score counts towards its
        # consecutive limit (a blip does not roll back), a marginal one only holds.
        c = counters.setdefault(SCORE_COUNTER, MetricCounters())
        if score.verdict is ScoreClass.FAIL:
            clean = False
            c.consecutive_failures += 1
            c.total_failures += 1
            if c.consecutive_failures >= score_failure_limit and not rollback:
                rollback.append(
                    f"{score.text}, {c.consecutive_failures} consecutive failing score(s) "
                    f"(limit {score_failure_limit})"
                )
            else:
                holding.append(score.text)
        elif score.verdict is ScoreClass.MARGINAL:
            clean = False
            holding.append(score.text)
        else:
            c.consecutive_failures = 0

    if rollback:
        return Decision(Verdict.ROLLBACK, "; ".join(rollback), counters, clean)
    if pause and release.state is not State.PAUSED:
        outage = unreadable == len(pause)
        return Decision(Verdict.PAUSE, "; ".join(pause), counters, clean, outage=outage)
    if release.state is State.PAUSED and release.paused_for_outage and resume_after_rounds > 0:
        return _after_outage(release, counters, clean, errored, resume_after_rounds)
    if not clean:
        return Decision(Verdict.HOLD, _hold_reason(checks, holding), counters, clean)
    if release.state is State.PROGRESSING and hold_elapsed(release, now):
        if release.is_last_step:
            return Decision(Verdict.HOLD, "at the last step", counters, clean)
        if release.needs_approval(release.step + 1):
            return Decision(
                Verdict.REQUEST_APPROVAL,
                "hold passed; the next step needs approval",
                counters,
                clean,
            )
        return Decision(Verdict.ADVANCE, "hold passed with every check green", counters, clean)
    if release.state is State.BAKING and now - release.step_started_at >= release.bake:
        return Decision(
            Verdict.SUCCEED, "bake window passed with every check green", counters, clean
        )
    return Decision(Verdict.HOLD, "checks green, holding", counters, clean)


def _limit_reached(check: CheckResult, metric: Metric, c: MetricCounters) -> str:
    """Why a failing metric's limits call for a rollback ("" while they do not)."""
    if check.critical:
        return f"critical metric failed: {check.reason}"
    if c.consecutive_failures >= metric.failure_limit:
        return (
            f"{check.reason}, {c.consecutive_failures} consecutive "
            f"failed check(s) (limit {metric.failure_limit})"
        )
    if c.total_failures >= metric.total_failure_limit:
        return (
            f"{check.reason}, {c.total_failures} failed checks in this "
            f"release (limit {metric.total_failure_limit})"
        )
    return ""


def breach_too_young(check: CheckResult, lasted: float, needed: float) -> str:
    # The check's own reason is said with the other failing checks: only the wait is added.
    return (
        f"{check.metric} failing for {format_duration(lasted)} of the "
        f"{format_duration(needed)} it must last before it rolls back"
    )


def _after_outage(
    release: Release,
    counters: dict[str, MetricCounters],
    clean: bool,
    errored: bool,
    resume_after_rounds: int,
) -> Decision:
    """A release paused because its metrics could not be read: it resumes by itself once they
    have been read again ``resume_after_rounds`` rounds in a row (the checks may still hold it
    once resumed; a failing one rolled it back before this point)."""
    if errored:
        return Decision(Verdict.HOLD, "paused: metrics still unreadable", counters, clean)
    readable = release.readable_rounds + 1
    if readable < resume_after_rounds:
        return Decision(
            Verdict.HOLD,
            f"paused: metrics readable again ({readable} of {resume_after_rounds} rounds)",
            counters,
            clean,
            readable_rounds=readable,
        )
    return Decision(
        Verdict.RESUME,
        f"metrics readable again for {readable} rounds in a row",
        counters,
        clean,
        readable_rounds=readable,
    )


def _hold_reason(checks: Sequence[CheckResult], extra: Sequence[str] = ()) -> str:
    pending = [c.reason for c in checks if c.outcome is not Outcome.PASS and not c.dry_run]
    pending += extra
    return "holding: " + "; ".join(pending) if pending else "holding"
