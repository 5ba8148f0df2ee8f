"""Synthetic traffic: a steady stream of requests from many users, against the sample service
(the demo's users) or against a canary a step's load hook warms up (bot.engine.hooks).

Each request names a user (``u0`` … ``u{users-1}``, in turn), so a service that routes users
by the canary flag sends a stable share of them to the canary. Requests are sent
concurrently: a slow version gets slow answers, not less traffic for everyone else. When too
many are still in flight, a slot is skipped rather than queued, so a stalled service is never
flooded afterwards. Answers are counted by the version that served them (the ``version`` of
the JSON body), which is how a test sees traffic follow the flag.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadStats:
    """What the generator did so far."""

    sent: int
    answered: dict[str, int]  # answers (any status) by the version that gave them
    server_errors: dict[str, int]  # 5xx answers by version
    failed: int  # no usable answer: refused, timed out, not the sample service's JSON
    skipped: int  # slots dropped because max_in_flight requests were still running


class LoadGenerator:
    """Sends ``GET {target}/work?user=…`` to every target, ``per_second`` times a second each.

    Bounded so that it cannot outlive its purpose: ``max_seconds`` and ``max_requests`` (when
    given) end it, as does ``stop()``. Every request has ``timeout``.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        per_second: float = 100.0,
        users: int = 1000,
        timeout: float = 2.0,
        max_in_flight: int = 200,
        max_seconds: float | None = None,
        max_requests: int | None = None,
    ) -> None:
        if not targets:
            raise ValueError("the load generator needs at least one target URL")
        if per_second <= 0 or users < 1 or timeout <= 0 or max_in_flight < 1:
            raise ValueError("per_second, users, timeout and max_in_flight must be positive")
        self.targets = [t.rstrip("/") for t in targets]
        self.per_second = per_second
        self.users = users
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self._sent = 0
        self._failed = 0
        self._skipped = 0
        self._answered: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sending from the running loop; returns at once."""
        if self._task is not None:
            raise RuntimeError("the load generator is already running")
        self._task = asyncio.create_task(self._run(), name="synthetic-load")

    async def stop(self) -> None:
        """Stop sending and cancel the requests still running. Idempotent."""
        task = self._task
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def finished(self) -> LoadStats:
        """Wait until the generator ends by its own bounds (callers bound the wait themselves
        when it has none), then what it did."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        return self.stats()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stats(self) -> LoadStats:
        return LoadStats(
            sent=self._sent,
            answered=dict(self._answered),
            server_errors=dict(self._errors),
            failed=self._failed,
            skipped=self._skipped,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.per_second
        started = next_at = loop.time()
        numbers = itertools.count()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            try:
                while self.max_seconds is None or loop.time() - started < self.max_seconds:
                    for target in self.targets:
                        if self.max_requests is not None and self._sent >= self.max_requests:
                            log.info("load: sent its %d requests, stopping", self._sent)
                            return
                        if len(self._in_flight) >= self.max_in_flight:
                            self._skipped += 1
                            continue
                        user = f"u{next(numbers) % self.users}"
                        self._sent += 1
                        task = asyncio.create_task(self._one(session, target, user))
                        self._in_flight.add(task)
                        task.add_done_callback(self._in_flight.discard)
                    # Late slots are not made up for: a stall is followed by the normal rate.
                    next_at = max(next_at + interval, loop.time())
                    await asyncio.sleep(next_at - loop.time())
            finally:
                for task in self._in_flight:
                    task.cancel()
                await asyncio.gather(*self._in_flight, return_exceptions=True)
                log.info("load: stopped after %d requests", self._sent)

    async def _one(self, session: aiohttp.ClientSession, target: str, user: str) -> None:
        try:
            async with session.get(f"{target}/work?user={user}") as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed += 1
            log.debug("load: %s for %s failed: %s", target, user, exc)
            return
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str):
            self._failed += 1
            return
        self._answered[version] += 1
        if status >= 500:
            self._errors[version] += 1
