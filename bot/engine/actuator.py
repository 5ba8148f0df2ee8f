"""Moves traffic to the weight a release record asks for, and records that it did.

The record is committed first (the decision is durable), then the backend acts, then the
applied weight is committed. A process that dies in between leaves ``applied_weight`` behind
``weight``, and whichever controller holds the lease next finishes the job: no step is lost or
applied twice, because applying the same weight again is a no-op for every backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.errors import TrafficError
from bot.observe import telemetry
from bot.observe.logs import log_context
from bot.release.rollout import CONTROLLER, Actor, Release, State, finish_rollback, pause
from bot.store.audit import AuditEntry
from bot.store.store import CommitStatus, Store
from bot.tasks import CLOSE_TIMEOUT_S, cancel_and_wait
from bot.traffic.base import (
    Applied,
    PlanChecker,
    TrafficAction,
    TrafficBackend,
    TrafficChange,
    target_weight,
)

log = logging.getLogger(__name__)

BackendFor = Callable[[str], TrafficBackend]


class TrafficActuator:
    def __init__(
        self, store: Store, backend_for: BackendFor, events: EventBus, rollback_wait: float = 5.0
    ) -> None:
        self.store = store
        self.backend_for = backend_for
        self.events = events
        self.rollback_wait = rollback_wait
        self._inflight: dict[str, asyncio.Task[Release]] = {}

    def busy(self, release_id: str) -> bool:
        task = self._inflight.get(release_id)
        return task is not None and not task.done()

    async def sync(
        self, release: Release, fence: int | None = None, *, again: bool = False
    ) -> Release:
        """Apply ``release.weight`` if it is not applied yet (``again``: even if the record
        says it is, because the engine was found applying another). A rollback runs as its own
        task (a webhook may retry it for a long time); we wait for it up to ``rollback_wait``."""
        needs = (
            again or release.applied_weight != release.weight or release.state is State.ROLLING_BACK
        )
        if not needs or release.state in (State.SUCCEEDED, State.ROLLED_BACK):
            return release
        if self.busy(release.id):
            return release
        task = asyncio.create_task(self._apply(release, fence), name=f"traffic-{release.id}")
        self._inflight[release.id] = task
        task.add_done_callback(lambda _t: self._forget(release.id, task))
        if release.state is State.ROLLING_BACK:
            done, _ = await asyncio.wait({task}, timeout=self.rollback_wait)
            return task.result() if done else release
        return await task

    def _forget(self, release_id: str, task: asyncio.Task[Release]) -> None:
        if self._inflight.get(release_id) is task:
            del self._inflight[release_id]

    async def drain(self) -> None:
        """Wait for the traffic changes under way. Cancelling this wait cancels none of them
        (``close`` does): a rollback being applied should land if it can."""
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        # A rollback still retrying is cut off here; the next process to hold the release's
        # lease finishes it from the record.
        await cancel_and_wait(list(self._inflight.values()), CLOSE_TIMEOUT_S)

    async def _apply(self, release: Release, fence: int | None) -> Release:
        # A task of its own, started by the controller or a person's command: name the release.
        with log_context(release_id=release.id, service=release.service):
            return await self._change(release, fence)

    async def _change(self, release: Release, fence: int | None) -> Release:
        change = TrafficChange(
            release_id=release.id,
            service=release.service,
            version=release.version,
            stable_version=release.stable_version,
            weight=release.weight,
            action=_action(release),
        )
        backend = self.backend_for(release.service)
        try:
            await backend.apply(change)
            if change.action is not TrafficAction.ROLLBACK:
                # A rollback is one write retried until it lands; it never waits on a read.
                await _verify(backend, change)
        except TrafficError as exc:
            return await self._failed(release, fence, exc)
        return await self._record(release, fence, change)

    async def current(self, service: str) -> Applied | None:
        """What the service's engine applies now; TrafficError when it cannot be read."""
        return await self.backend_for(service).current(service)

    async def plan_problem(self, service: str, weights: list[int]) -> str:
        """How the engine's own steps differ from ``weights`` ("" when they agree, or when the
        engine has no steps of its own); TrafficError when it cannot be read."""
        backend = self.backend_for(service)
        if isinstance(backend, PlanChecker):
            return await backend.check_plan(service, weights)
        return ""

    async def hand_back(self, release: Release) -> None:
        """Everyone of a succeeded ``release``'s service to the stable pool (0%), read back;
        TrafficError when the engine does not take it."""
        backend = self.backend_for(release.service)
        change = TrafficChange(
            release_id=release.id,
            service=release.service,
            version=release.version,
            stable_version=release.version,  # the stable pool runs it now
            weight=0,
            action=TrafficAction.HAND_BACK,
        )
        with log_context(release_id=release.id, service=release.service):
            await backend.apply(change)
            await _verify(backend, change)
        log.info("%s: handed back to the stable pool on %s", release.label, backend.name)

    async def reconcile(self, release: Release, fence: int | None) -> bool:
        """Compare what the engine applies with the record. True when they agree (the release
        may be judged); on drift the recorded weight is applied again and the thread told; an
        engine that cannot be read pauses the release (never a pass)."""
        if release.applied_weight is None or release.applied_weight != release.weight:
            return True  # a change under way: sync finishes it
        backend = self.backend_for(release.service)
        try:
            applied = await backend.current(release.service)
        except TrafficError as exc:
            await self._pause(release, fence, f"cannot read back the traffic engine: {exc}")
            return False
        if applied is None or applied.weight == release.applied_weight:
            return True
        found = "nothing" if applied.weight is None else f"{applied.weight}%"
        log.warning(
            "%s: %s applies %s, the record %d%%: setting %d%% again",
            release.label, backend.name, found, release.applied_weight, release.weight,
        )  # fmt: skip
        self.events.emit(
            ReleaseEvent(
                EventKind.TRAFFIC_REPAIRED,
                release,
                "" if applied.weight is None else str(applied.weight),
            )
        )
        await self.sync(release, fence, again=True)
        return False

    async def _record(self, release: Release, fence: int | None, change: TrafficChange) -> Release:
        current: Release | None = release
        for _ in range(5):
            if current is None or current.weight != change.weight:
                return current or release  # a newer decision moved on; it will be synced itself
            now = time.time()
            if current.state is State.ROLLING_BACK:
                # The rollback stays attributed to whoever decided it (a person or the controller).
                decided_by = Actor(user=current.last.by, surface=current.last.surface)
                new = finish_rollback(current, decided_by, now)
                audit = AuditEntry.transition(
                    "rolled_back",
                    CONTROLLER,
                    current,
                    new,
                    reason=current.reason,
                    detail={
                        "rollback_seconds": round(now - (current.rollback_started_at or now), 3),
                        "backend": self.backend_for(current.service).name,
                    },
                )
            else:
                new = current.model_copy(
                    update={"applied_weight": change.weight, "updated_at": now}
                )
                audit = AuditEntry.transition(
                    "traffic",
                    CONTROLLER,
                    current,
                    new,
                    detail={"weight": change.weight, "action": change.action.value},
                )
            result = await self.store.commit(
                new, expected_rev=current.rev, audit=audit, fence=fence
            )
            if result.status is CommitStatus.OK and result.current is not None:
                if new.state is State.ROLLED_BACK:
                    telemetry.ROLLBACKS.labels(current.last.surface).inc()
                    took = now - (current.rollback_started_at or now)
                    self.events.emit(
                        ReleaseEvent(
                            EventKind.ROLLED_BACK, result.current, current.reason, seconds=took
                        )
                    )
                return result.current
            if result.status is CommitStatus.FENCED:
                return release
            current = result.current if result.status is CommitStatus.CONFLICT else None
        return release

    async def _failed(self, release: Release, fence: int | None, exc: TrafficError) -> Release:
        if release.state is State.ROLLING_BACK:
            # Never give up on a rollback: the next round tries again; shout meanwhile.
            log.error("ROLLBACK NOT APPLIED for %s: %s", release.label, exc)
            self.events.emit(ReleaseEvent(EventKind.TRAFFIC_FAILED, release, str(exc)))
            return release
        return await self._pause(
            release, fence, f"traffic backend failed to set {release.weight}%: {exc}"
        )

    async def _pause(self, release: Release, fence: int | None, reason: str) -> Release:
        log.warning("%s: %s", release.label, reason)
        if release.state in (State.PROGRESSING, State.BAKING, State.PENDING_APPROVAL):
            new = pause(release, CONTROLLER, time.time(), reason)
            audit = AuditEntry.transition("pause", CONTROLLER, release, new, reason=reason)
            result = await self.store.commit(
                new, expected_rev=release.rev, audit=audit, fence=fence
            )
            if result.status is CommitStatus.OK and result.current is not None:
                self.events.emit(ReleaseEvent(EventKind.PAUSED, result.current, reason))
                return result.current
        return release


async def _verify(backend: TrafficBackend, change: TrafficChange) -> None:
    """Read the engine back after a change: TrafficError when it does not apply it."""
    applied = await backend.current(change.service)
    want = target_weight(change)
    if applied is not None and applied.weight != want:
        found = "nothing" if applied.weight is None else f"{applied.weight}%"
        raise TrafficError(
            f"{backend.name} applies {found} for `{change.service}` after being set to {want}%"
        )


def _action(release: Release) -> TrafficAction:
    if release.state is State.ROLLING_BACK:
        return TrafficAction.ROLLBACK
    if release.applied_weight is None:
        return TrafficAction.START
    if release.weight >= 100:
        return TrafficAction.PROMOTE
    return TrafficAction.SHIFT
