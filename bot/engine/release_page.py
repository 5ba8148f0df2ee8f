"""What the release page shows, read in one place: the record, its lifecycle entries in the audit,
its judged rounds and its diagnosis. Read-only; every renderer of the page starts from a
:class:`PageView`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.release.hook_runs import HookProgress
from bot.release.policy import Metric, Policy
from bot.release.rollout import Release, State
from bot.store.audit import AuditEntry
from bot.store.store import Store

# Audit actions that put a release on a step. A person's carry the step in their detail; the
# controller's decision carries the weight it left, so its step is the next one.
_MOVES = frozenset({"advance", "approve", "decision:advance"})
# The most finished releases the index lists.
RECENT_LIMIT = 20


@dataclass(frozen=True)
class Rung:
    """One step of the ladder."""

    index: int
    weight: int
    reached_at: float | None  # None: not reached (yet, or ever)
    current: bool


@dataclass(frozen=True)
class PageView:
    release: Release
    ladder: list[Rung]
    timeline: list[AuditEntry]  # what changed the release's course, oldest first
    points: list[dict[str, Any]]  # judged rounds: {"t", "weight", "m": {metric: [can, ctl, out]}}
    metrics: Sequence[Metric] = ()  # the service policy's, for units and limits
    diagnosis: str = ""
    hooks: Sequence[HookProgress] = ()  # the step hooks that ran (or run), in ladder order

    @property
    def rev(self) -> int:
        return self.release.rev


@dataclass(frozen=True)
class Index:
    active: list[Release]
    recent: list[Release] = field(default_factory=list)  # finished, newest end first


def ladder_of(release: Release, timeline: Sequence[AuditEntry]) -> list[Rung]:
    """Each step with when it was reached: from the audit's moves, and from the record for the
    first step (entered at the start unless it waited for an approval) and the current one."""
    reached: dict[int, float] = {}
    if not _waited_for_first_step(release, timeline):
        reached[0] = release.created_at
    last = 0
    for entry in timeline:
        if entry.outcome != "ok" or entry.action not in _MOVES:
            continue
        step = entry.detail.get("step")
        step = int(step) if isinstance(step, int | float) else last + 1
        reached.setdefault(step, entry.at)
        last = step
    # The record knows when it entered the step it is on, for an audit that was trimmed; a
    # resume restarts that clock, so the audit's time wins when it has one.
    if not (release.state is State.PENDING_APPROVAL and release.awaiting_step == release.step):
        reached.setdefault(release.step, release.step_started_at)
    current = release.step
    if release.state is State.PENDING_APPROVAL and release.awaiting_step is not None:
        current = release.awaiting_step
    return [
        Rung(
            index=i,
            weight=w,
            reached_at=reached.get(i),
            current=release.is_active and i == current,
        )
        for i, w in enumerate(release.weights)
    ]


def _waited_for_first_step(release: Release, timeline: Sequence[AuditEntry]) -> bool:
    """Whether the release started by waiting for an approval of its first step (it reached
    that step when approved, not when started): the start's audit entry says so; the record's
    approvals and state, when the entry was trimmed."""
    start = next((e for e in timeline if e.action == "deploy"), None)
    if start is not None:
        return start.to_state == State.PENDING_APPROVAL
    pending_first = release.state is State.PENDING_APPROVAL and release.awaiting_step == 0
    return pending_first or any(a.step == 0 for a in release.approvals)


async def read_page(store: Store, policy: Policy, release_id: str) -> PageView | None:
    """The page of one release, or None when no such release is kept."""
    release = await store.get(release_id)
    if release is None:
        return None
    timeline = await store.lifecycle_of(release)
    points = await store.points(release.id)
    diagnosis = await store.writings.diagnosis(release.id)
    hooks = await store.hook_runs.all(release.id)
    sp = policy.services.get(release.service)
    return PageView(
        release=release,
        ladder=ladder_of(release, timeline),
        timeline=timeline,
        points=points,
        metrics=sp.metrics if sp is not None else (),
        diagnosis=diagnosis,
        hooks=hooks,
    )


@dataclass(frozen=True)
class Mark:
    """What a live page compares to know the release changed, and whether it can still."""

    service: str
    rev: int
    active: bool


async def read_mark(store: Store, release_id: str) -> Mark | None:
    """The record's revision and whether it is active (None: no such release is kept)."""
    release = await store.get(release_id)
    return Mark(release.service, release.rev, release.is_active) if release else None


async def read_index(store: Store, services: Sequence[str]) -> Index:
    """The active releases of ``services`` and their latest finished ones."""
    wanted = set(services)
    active = [r for r in await store.active_releases() if r.service in wanted]
    recent: list[Release] = []
    for service in sorted(wanted):
        recent += [r for r in await store.history(service, RECENT_LIMIT) if not r.is_active]
    recent.sort(key=lambda r: r.finished_at or r.updated_at, reverse=True)
    active.sort(key=lambda r: r.created_at, reverse=True)
    return Index(active=active, recent=recent[:RECENT_LIMIT])
