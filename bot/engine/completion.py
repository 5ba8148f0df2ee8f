"""Reads what a succeeding release went through (its analysis rounds and its lifecycle audit)
and has bot.judging.summary make its completion summary, kept on the record by the commit
that ends it.

A store that cannot be read costs the summary its detail, never the success: what could not
be read makes the summary partial, and it says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.errors import StoreError
from bot.judging.summary import Move, Round, rounds_from_points, summarize
from bot.release.policy import Metric
from bot.release.rollout import Release
from bot.release.summary import CompletionSummary
from bot.store.audit import AuditEntry
from bot.store.store import Store

log = logging.getLogger(__name__)

def move_of(entry: AuditEntry) -> Move:
    weight = entry.detail.get("weight")
    return Move(
        action=entry.action,
        to_state=entry.to_state,
        at=entry.at,
        weight=weight if isinstance(weight, int) and not isinstance(weight, bool) else None,
        by=entry.actor,
        reason=entry.reason,
    )


async def completion_summary(
    store: Store, release: Release, metrics: Sequence[Metric]
) -> CompletionSummary | None:
    """The summary of ``release`` as it succeeds (the record about to be committed); None
    only when making it failed."""
    partial = False
    rounds: list[Round] = []
    moves: list[Move] = []
    try:
        rounds = rounds_from_points(await store.points(release.id))
    except StoreError as exc:
        log.warning("%s: its rounds cannot be read for the summary: %s", release.label, exc)
        partial = True
    try:
        entries = await store.lifecycle_of(release)
        moves = [move_of(e) for e in entries if e.outcome == "ok"]
    except StoreError as exc:
        log.warning("%s: its audit cannot be read for the summary: %s", release.label, exc)
        partial = True
    try:
        return summarize(release, metrics, rounds, moves, partial=partial)
    except Exception:
        # A summary that cannot be made must not hold the release back from succeeding.
        log.exception("%s: the completion summary failed; it ends without one", release.label)
        return None
