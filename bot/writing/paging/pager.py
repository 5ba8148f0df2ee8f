"""The pager: pages the on-call when the controller rolls a release back, and resolves the page
when the release ends.

It listens on the event bus like any notifier, and never holds the bus up: every page runs as
its own tracked task, after the rollback was decided and committed (the event that starts it is
emitted only then), so a slow, failing or rate-limiting paging service cannot delay a rollback
by a millisecond. A person's rollback pages nobody: they already know. What each paging service
did is said in the release's thread (``EventKind.PAGED`` / ``PAGE_FAILED``) and in the log.

One release's pages run one after the other (its resolve waits for its trigger), so a resolve
never overtakes the page it resolves. ``page_finding`` and ``resolve`` are the entry points for
callers other than the bus (the post-release watch): same services, same key, same reporting.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from bot.engine.events import EventBus, EventKind, PageReport, ReleaseEvent
from bot.observe import telemetry
from bot.observe.logs import log_context
from bot.release.policy import PagingSettings, Policy
from bot.release.rollout import Release, Surface
from bot.tasks import CLOSE_TIMEOUT_S, cancel_and_wait
from bot.writing.paging.alert import (
    Alert,
    PageError,
    finding_alert,
    page_key,
    rollback_alert,
)
from bot.writing.paging.opsgenie import Opsgenie
from bot.writing.paging.pagerduty import PagerDuty

log = logging.getLogger(__name__)

# How long the thread's permalink may take: a page goes out without it rather than late.
LINK_TIMEOUT_S = 3.0


class PagingService(Protocol):
    name: str

    async def trigger(self, alert: Alert) -> None: ...

    async def resolve(self, key: str) -> None: ...


LinkFor = Callable[[Release], Awaitable[str]]


async def _no_link(_: Release) -> str:
    return ""


class Pager:
    def __init__(
        self,
        policy: Policy,
        events: EventBus,
        *,
        env: Mapping[str, str] | None = None,
        link_for: LinkFor = _no_link,
    ) -> None:
        self._policy = policy
        self.events = events
        # Keys are read when a page goes out, as the ticket sinks read theirs: the policy names
        # them, and nothing holds them longer than one page. None: the process's environment.
        self._env = env
        self.link_for = link_for
        self._tails: dict[str, asyncio.Task[PageReport | None]] = {}
        self._running: set[asyncio.Task[PageReport | None]] = set()

    # --- the notifier port -----------------------------------------------------------------

    async def notify(self, event: ReleaseEvent) -> None:
        release = event.release
        # Automatic only: the controller decided the rollback (a ROLLED_BACK keeps who decided).
        if release.last.surface is not Surface.CONTROLLER:
            return
        if event.kind is EventKind.ROLLBACK_STARTED:
            self._spawn(release, lambda: self._trigger(release, None))
        elif event.kind is EventKind.ROLLED_BACK and self._settings(release).resolve_on_end:
            self._spawn(release, lambda: self._resolve(release))

    # --- public entry points ----------------------------------------------------------------

    async def page_finding(
        self, release: Release, summary: str, details: Mapping[str, Any] | None = None
    ) -> PageReport | None:
        """Page the on-call about a finding on ``release`` after it shipped (the post-release
        watch): the release's services and key, ``summary`` as the alert's one line, and
        ``details`` (typed data, redacted before it leaves) beside the release's own. Waits for
        the release's earlier pages first; None when the service configures no paging."""
        finding = (summary, dict(details or {}))
        return await self._spawn(release, lambda: self._trigger(release, finding))

    async def resolve(self, release: Release) -> PageReport | None:
        """Resolve the release's page in every paging service it configures (the release ended),
        after its earlier pages; None when it configures none."""
        return await self._spawn(release, lambda: self._resolve(release))

    # --- lifecycle --------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for the pages under way (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def close(self) -> None:
        await cancel_and_wait(list(self._running), CLOSE_TIMEOUT_S)

    # --- how ---------------------------------------------------------------------------------

    def _spawn(
        self, release: Release, work: Callable[[], Awaitable[PageReport | None]]
    ) -> asyncio.Task[PageReport | None]:
        """Run ``work`` as a tracked task once the release's earlier pages are done."""
        earlier = self._tails.get(release.id)
        with log_context(release_id=release.id, service=release.service):
            task = asyncio.ensure_future(_after(earlier, work))
        task.set_name(f"page|{release.id}")
        self._tails[release.id] = task
        self._running.add(task)

        def _done(t: asyncio.Task[PageReport | None]) -> None:
            self._running.discard(t)
            if self._tails.get(release.id) is t:
                del self._tails[release.id]

        task.add_done_callback(_done)
        return task

    async def _resolve(self, release: Release) -> PageReport | None:
        services = self._services(release.service)
        if not services:
            return None
        key = page_key(release)
        return await self._run(
            release, "resolve", key, [s.resolve(key) for s in services], services
        )

    async def _trigger(
        self, release: Release, finding: tuple[str, dict[str, Any]] | None
    ) -> PageReport | None:
        services = self._services(release.service)
        if not services:
            return None
        thread_url = await self._link(release)
        alert = (
            rollback_alert(release, thread_url)
            if finding is None
            else finding_alert(release, finding[0], finding[1], thread_url)
        )
        calls = [s.trigger(alert) for s in services]
        return await self._run(release, "trigger", alert.key, calls, services, alert.finding)

    async def _run(
        self,
        release: Release,
        action: str,
        key: str,
        calls: Sequence[Awaitable[None]],
        services: list[PagingService],
        finding: bool = False,
    ) -> PageReport:
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        done: list[str] = []
        failed: list[tuple[str, str]] = []
        for service, outcome in zip(services, outcomes, strict=True):
            if isinstance(outcome, PageError):
                telemetry.CHAT_ERRORS.labels(f"page:{service.name.lower()}").inc()
                log.error("%s %s of %s failed: %s", service.name, action, release.label, outcome)
                failed.append((service.name, str(outcome)))
            elif isinstance(outcome, BaseException):
                log.error(
                    "%s %s of %s failed", service.name, action, release.label, exc_info=outcome
                )
                failed.append((service.name, f"unexpected {type(outcome).__name__}"))
            else:
                log.info("%s %s of %s sent (key %s)", service.name, action, release.label, key)
                done.append(service.name)
        report = PageReport(action, key, tuple(done), tuple(failed), finding)
        kind = EventKind.PAGE_FAILED if failed else EventKind.PAGED
        self.events.emit(ReleaseEvent(kind, release, page=report))
        return report

    async def _link(self, release: Release) -> str:
        try:
            return await asyncio.wait_for(self.link_for(release), LINK_TIMEOUT_S)
        except Exception as exc:  # a page without the link beats no page
            log.warning("no thread link for the page of %s: %s", release.label, exc)
            return ""

    def _settings(self, service_or_release: str | Release) -> PagingSettings:
        name = (
            service_or_release.service
            if isinstance(service_or_release, Release)
            else service_or_release
        )
        sp = self._policy.services.get(name)
        return sp.paging if sp is not None else PagingSettings()

    def _services(self, service: str) -> list[PagingService]:
        settings = self._settings(service)
        env = self._env if self._env is not None else os.environ
        services: list[PagingService] = []
        if settings.pagerduty is not None:
            cfg = settings.pagerduty
            services.append(PagerDuty(cfg, env.get(cfg.routing_key_env, "")))
        if settings.opsgenie is not None:
            ogc = settings.opsgenie
            services.append(Opsgenie(ogc, env.get(ogc.api_key_env, "")))
        return services


async def _after(
    earlier: asyncio.Task[PageReport | None] | None,
    work: Callable[[], Awaitable[PageReport | None]],
) -> PageReport | None:
    if earlier is not None and not earlier.done():
        # Only its being over matters here (its outcome is its own to report); asyncio.wait
        # neither raises that outcome nor swallows a cancel of this task.
        await asyncio.wait([earlier])
    try:
        return await work()
    except Exception:  # a task of its own: nobody else would see it
        log.exception("paging failed")
        return None
