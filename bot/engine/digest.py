"""The daily digest: once per channel per local day, a standup post of the long releases.

The scheduler gathers what the post says (records, the lifecycle audit of the last 24 h, the
rounds' points) and hands it to a ``DigestPoster``: the Slack notifier queues it in the outbox,
the console prints it. Any number of replicas may run it: a Redis marker per channel and day
lets exactly one of them post.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from bot.errors import DependencyError
from bot.release.digest import DigestSettings, digest_due
from bot.release.policy import Policy
from bot.release.rollout import Release, State
from bot.store.audit import AuditEntry, AuditStream
from bot.store.store import Store

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class DigestRelease:
    """One release as the digest shows it, with what happened to it since yesterday."""

    release: Release
    approvers: tuple[str, ...]  # who may approve (empty: anyone but the requester)
    issues: tuple[AuditEntry, ...]  # its lifecycle audit entries of the last 24 h, oldest first
    failed_rounds: dict[str, int] = field(default_factory=dict)  # metric -> failed rounds, 24 h
    rounds: int = 0  # rounds judged in the last 24 h


@dataclass(frozen=True)
class Digest:
    """One channel's post of one local day."""

    channel: str
    day: date
    timezone: str
    now: float
    releases: tuple[DigestRelease, ...]


class DigestPoster(Protocol):
    """Where a digest goes: a channel post (Slack), or the terminal (console)."""

    async def post_digest(self, digest: Digest) -> None: ...


def qualifies(release: Release, min_hold: float) -> bool:
    """Whether a release belongs in the digest: waiting for a person, or on a long step."""
    if release.state in (State.PAUSED, State.PENDING_APPROVAL):
        return True
    if release.state is State.BAKING:
        return release.bake >= min_hold
    if release.state is not State.PROGRESSING:
        return False
    return any(h >= min_hold for h in release.holds[release.step : release.step + 2])


class DigestScheduler:
    """Decides each tick which channels' digests are due, and posts each once."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        tick: float = 30.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.tick = tick
        # The last local day each channel was dealt with here; Redis decides across replicas.
        self._done: dict[str, date] = {}

    def channels(self) -> dict[str, DigestSettings]:
        """Channel -> the digest settings it posts by. Services sharing a channel share its
        post; its time and zone are those of the first such service by name."""
        found: dict[str, DigestSettings] = {}
        for name in sorted(self.policy.services):
            sp = self.policy.services[name]
            if sp.digest is not None and sp.channel not in found:
                found[sp.channel] = sp.digest
        return found

    async def run(self, stop: asyncio.Event, poster: DigestPoster) -> None:
        """Tick after tick until ``stop`` is set; an outage only costs the tick it hit."""
        while not stop.is_set():
            try:
                await self.run_once(poster)
            except DependencyError as exc:
                log.warning("daily digest: skipped a tick (%s)", exc)
            except Exception:
                # A fault here must never stop the controller it runs beside.
                log.exception("daily digest: a tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)

    async def run_once(self, poster: DigestPoster) -> list[str]:
        """Post the digests due now; the channels posted to."""
        now = self.clock()
        due: dict[str, tuple[DigestSettings, date]] = {}
        for channel, settings in self.channels().items():
            day = digest_due(now, self._done.get(channel), settings.time_of_day, settings.zone)
            if day is not None:
                due[channel] = (settings, day)
        if not due:
            return []
        active = await self.store.active_releases()
        posted = []
        for channel, (settings, day) in due.items():
            releases = [r for r in active if self._listed(r, channel)]
            self._done[channel] = day
            # A quiet day posts nothing; a busy one is claimed by exactly one replica.
            if not releases or not await self.store.claim_digest(channel, day.isoformat()):
                continue
            items = [await self._gather(r, now) for r in releases]
            await poster.post_digest(Digest(channel, day, settings.timezone, now, tuple(items)))
            posted.append(channel)
        return posted

    def _listed(self, release: Release, channel: str) -> bool:
        sp = self.policy.services.get(release.service)
        if sp is None or sp.digest is None or sp.channel != channel:
            return False
        return qualifies(release, sp.digest.min_hold)

    async def _gather(self, release: Release, now: float) -> DigestRelease:
        since = now - DAY_S
        entries = await self.store.audit_between(since, stream=AuditStream.LIFECYCLE)
        issues = tuple(e for e in entries if e.release_id == release.id and since <= e.at <= now)
        failed: dict[str, int] = {}
        rounds = 0
        for point in await self.store.points(release.id):
            if not since <= float(point.get("t", 0)) <= now:
                continue
            rounds += 1
            for metric, value in (point.get("m") or {}).items():
                if len(value) > 2 and value[2] == "fail":  # [canary, control, outcome]
                    failed[metric] = failed.get(metric, 0) + 1
        sp = self.policy.services.get(release.service)
        approvers = tuple(sp.approvers) if sp else ()
        return DigestRelease(release, approvers, issues, failed, rounds)
