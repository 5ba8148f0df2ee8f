"""What the bot says, as events, and the port adapters (console, log, later Slack) implement.

Emitting never blocks the caller: the controller hands an event to the bus and moves on, so a
slow or failing chat API can never delay a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from bot.judging.sizing import Sizing
from bot.observe.logs import log_context
from bot.release.checks import CheckResult
from bot.release.hook_runs import HookRun
from bot.release.rollout import Release
from bot.release.watch import WatchRecord
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    STARTED = "started"
    STEP_ADVANCED = "step_advanced"
    APPROVAL_NEEDED = "approval_needed"
    APPROVED = "approved"
    METRICS_SUMMARY = "metrics_summary"
    PAUSED = "paused"
    RESUMED = "resumed"
    BAKING = "baking"
    SUCCEEDED = "succeeded"
    ROLLBACK_STARTED = "rollback_started"
    ROLLED_BACK = "rolled_back"
    TRAFFIC_FAILED = "traffic_failed"
    # The engine was found applying another weight than the record's (a reload, a hand edit,
    # a restart): the recorded weight is set again. detail: the weight found ("" for none).
    TRAFFIC_REPAIRED = "traffic_repaired"
    # A succeeded release's users moved from the canary pool to the stable pool (0%), which now
    # runs its version too: said in its thread.
    HANDED_BACK = "handed_back"
    # Written after the fact (by the LLM or its template fallback); never on a decision's path.
    DIAGNOSIS = "diagnosis"
    NOTES_DRAFT = "notes_draft"
    NOTES_FINAL = "notes_final"  # goes to the announcement channel, not the thread
    TICKET_FILED = "ticket_filed"
    # The on-call paging services (PagerDuty, Opsgenie) took a page or its resolve (PAGED), or
    # at least one of them did not (PAGE_FAILED); ``page`` says which and why.
    PAGED = "paged"
    PAGE_FAILED = "page_failed"
    # The post-release watch (bot.engine.watch): its one finding, its closing report, and its end
    # when a newer release of the service started; ``watch`` carries the numbers.
    WATCH_FINDING = "watch_finding"
    WATCH_CLOSED = "watch_closed"
    WATCH_SUPERSEDED = "watch_superseded"
    # The hooks before the next step (bot.engine.hooks) finished: all passed, or one failed (the
    # decision it led to is the detail); ``hooks`` carries each hook's result.
    HOOKS_PASSED = "hooks_passed"
    HOOK_FAILED = "hook_failed"


@dataclass(frozen=True)
class PageReport:
    """What one paging action (a trigger or a resolve) did, service by service."""

    action: str  # "trigger" | "resolve"
    key: str  # the release's dedup key (PagerDuty) and alias (Opsgenie)
    done: tuple[str, ...] = ()  # the paging services that took it, e.g. ("PagerDuty",)
    failed: tuple[tuple[str, str], ...] = ()  # (paging service, why), the why redacted
    finding: bool = False  # paged for a finding after the release, not for a rollback


@dataclass(frozen=True)
class ReleaseEvent:
    """Something that happened to a release, as data; ``bot.render.thread`` says it in words.

    ``detail`` is what the event carries beyond the release record: the reason a decision or a
    person gave (a pause, a rollback, an automatic advance, a metrics summary), the error of a
    traffic change that failed, or the text written for a diagnosis or release notes. It is
    never a sentence built for display, and nothing parses it back.
    """

    kind: EventKind
    release: Release
    detail: str = ""
    actor: str = "shipwatch"
    checks: Sequence[CheckResult] = ()
    at: float = field(default_factory=time.time)
    files: Sequence[tuple[str, bytes]] = ()  # (file name, content) to attach, e.g. a chart
    seconds: float | None = None  # ROLLED_BACK: from the decision to traffic back on stable
    link: str = ""  # TICKET_FILED: where the ticket is; "" when filing it failed
    sizing: Sizing | None = None  # STARTED: the first step against the service's traffic
    page: PageReport | None = None  # PAGED, PAGE_FAILED: what each paging service did
    watch: WatchRecord | None = None  # WATCH_*: the watch as it stood
    hooks: HookRun | None = None  # HOOKS_PASSED, HOOK_FAILED: the run of the step's hooks


class Notifier(Protocol):
    async def notify(self, event: ReleaseEvent) -> None: ...


class LogNotifier:
    """Writes every event to the log: the notifier of a headless controller."""

    async def notify(self, event: ReleaseEvent) -> None:
        log.info(
            "%s %s: %s",
            event.release.label,
            event.kind.value,
            event.detail,
            extra={"release_id": event.release.id, "event": event.kind.value},
        )


class EventBus:
    """Fans events out to notifiers from a background task, each call under a timeout."""

    def __init__(
        self, notifiers: Sequence[Notifier] = (), timeout: float = 10.0, maxsize: int = 10_000
    ) -> None:
        self.notifiers = list(notifiers)
        self.timeout = timeout
        self._queue: asyncio.Queue[ReleaseEvent] = asyncio.Queue(maxsize=maxsize)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0

    def emit(self, event: ReleaseEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("event queue full, dropped %s for %s", event.kind.value, event.release.label)

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="shipwatch-events")

    async def _run(self) -> None:
        # Ends on the flag as well as the cancel: a cancel that lands as a notifier's call
        # completes can be swallowed by asyncio.wait_for on Python 3.11 (CPython gh-86296), and
        # the loop would then wait on an empty queue with close waiting for it.
        while not self._closing:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: ReleaseEvent) -> None:
        # Delivery runs on the bus's own task, outside the context the event was emitted in:
        # name the release again so every chat line about it carries its id.
        with log_context(release_id=event.release.id, service=event.release.service):
            for notifier in self.notifiers:
                try:
                    await asyncio.wait_for(notifier.notify(event), self.timeout)
                except Exception:
                    log.exception(
                        "notifier %s failed on %s for %s",
                        type(notifier).__name__,
                        event.kind.value,
                        event.release.label,
                    )

    async def drain(self) -> None:
        """Wait until every emitted event has been delivered (tests, shutdown)."""
        if self._task is None:
            while not self._queue.empty():
                await self._deliver(self._queue.get_nowait())
                self._queue.task_done()
            return
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.timeout)
            self._closing = True
            await cancel_and_wait([self._task], self.timeout)
            self._task = None
