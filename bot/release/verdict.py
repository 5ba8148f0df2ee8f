"""What a release's judge says right now, for engines that ask instead of being told: Argo
Rollouts' AnalysisTemplate (a web metric polled at each step) and Flagger's webhooks.

``pass`` once the step it is at has a clean check (or the release succeeded), ``fail`` once
shipwatch decided to roll it back, ``hold`` otherwise (not judged yet, failing but under its
limit, paused, waiting for an approval, or no release at all), each with the reason in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.release.checks import Outcome
from bot.release.rollout import Release, State


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    reason: str


def verdict_of(release: Release | None) -> Judged:
    if release is None:
        return Judged(Verdict.HOLD, "no release of the service is running")
    state = release.state
    if state in (State.ROLLING_BACK, State.ROLLED_BACK):
        return Judged(Verdict.FAIL, release.reason or "rolled back")
    if state is State.SUCCEEDED:
        return Judged(Verdict.PASS, "the release succeeded")
    if state is State.PAUSED:
        return Judged(Verdict.HOLD, f"paused: {release.reason}" if release.reason else "paused")
    if state is State.PENDING_APPROVAL:
        return Judged(Verdict.HOLD, "waiting for an approval of the next step")
    judged = [c for c in release.last_checks if not c.dry_run]
    if not judged or release.clean_checks_in_step < 1:
        failing = [c.reason for c in judged if c.outcome is not Outcome.PASS]
        if failing:
            return Judged(Verdict.HOLD, "; ".join(failing))
        return Judged(Verdict.HOLD, f"no clean check yet at {release.weight}%")
    return Judged(Verdict.PASS, f"every check green at {release.weight}%")
