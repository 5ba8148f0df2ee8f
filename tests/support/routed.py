"""A stable and a canary instance of one service, with traffic routed by the real canary flag.

``RoutedService`` runs two ``SampleService`` instances of one service ("v1" stable, "v2"
canary, same ``service`` label) so one Prometheus can scrape both. ``start(redis_url)`` opens
a ``FlagClient`` on that Redis and a bounded load generator: for every request it picks the
next synthetic user, asks ``flags.variant(service, user)`` and sends the request to the canary
or the stable instance accordingly. Whatever the controller does to the flag therefore moves
real requests between the two instances, and Prometheus sees it.

Faults are injected into the canary at run time (``inject_fault``), and the moment they went
live is kept (``fault_at``, ``time.monotonic()``), so a test can measure how long the system
took to send every user back to stable (``first_pct_at(0, after=fault_at)``).

The instances are built once (Prometheus needs their addresses in its config before it
starts) and can serve several runs: ``stop()`` ends the load and the flag client and clears
the fault, the next ``start()`` begins with fresh counters and flag history, and the
instances keep serving until ``close()``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from bot.flags import CANARY, FlagClient, FlagState
from tests.support.sample_service import SampleService

logger = logging.getLogger(__name__)

STABLE_VERSION = "v1"
CANARY_VERSION = "v2"
ERROR_FAULT_RATE = 0.20  # share of the canary's requests answered with 500
LATENCY_FAULT = 0.300  # seconds added to every canary request
REQUEST_TIMEOUT = 2.0

# The queries a policy judges these instances with: the 5xx share of http_requests_total and
# the p99 of http_request_duration_seconds, per service and version, over {window}.
_SELECTOR = 'service="{service}",version="{version}"'
ERROR_RATE_QUERY = (
    f'sum(rate(http_requests_total{{{_SELECTOR},code=~"5.."}}[{{window}}]))'
    f" / sum(rate(http_requests_total{{{_SELECTOR}}}[{{window}}]))"
)
LATENCY_P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) "
    f"(rate(http_request_duration_seconds_bucket{{{_SELECTOR}}}[{{window}}])))"
)

# The rules the end-to-end tests and the rollback benchmark judge these services by.
ERROR_RATE_RULE: dict[str, Any] = {
    "name": "error_rate",
    "query": ERROR_RATE_QUERY,
    "unit": "ratio",
    "max": 0.05,
    "max_diff": 0.02,
    "min_requests": 10,
    "failure_limit": 2,
}
# max_diff rather than max_ratio: the control's p99 sits in the lowest histogram bucket
# (~5 ms), so one slow request could double it and roll back a healthy canary.
LATENCY_P99_RULE: dict[str, Any] = {
    "name": "latency_p99",
    "query": LATENCY_P99_QUERY,
    "unit": "s",
    "max_diff": 0.15,
    "critical": True,
    "min_requests": 10,
}


class FaultKind(StrEnum):
    ERRORS = "errors"  # 20% of canary requests fail with 500
    LATENCY = "latency"  # every canary request takes 300 ms longer


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    at: float  # time.monotonic() when the fault went live


@dataclass(frozen=True)
class PctChange:
    at: float  # time.monotonic() when the flag client applied it
    pct: int
    seq: int


@dataclass(frozen=True)
class LoadStats:
    """What the routed load generator did, at one moment."""

    sent: dict[str, int]  # requests per version
    server_errors: dict[str, int]  # 5xx answers per version
    failed: int  # no HTTP answer at all (refused, timed out)
    by_pct: dict[int, dict[str, int]]  # flag pct seen when routing -> requests per version
    # time.monotonic() just before the last canary-bound request asked the flag: a request
    # that asked after the client applied 0% can only have gone to stable.
    last_canary_at: float | None

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class RoutedLoad:
    """Sends ``GET /work`` for synthetic users, each routed by the flag, from a few threads.

    Bounded three ways so it can never outlive a test: ``max_seconds``, ``max_requests`` (in
    total, over every worker), or ``stop()``. The rate is shared by ``workers`` threads, each
    pacing itself; a worker stuck on a slow request skips its late slots rather than bursting
    afterwards, so a slow canary gets fewer requests instead of a flood.
    """

    def __init__(
        self,
        rig: RoutedService,
        flags: FlagClient,
        *,
        per_second: float,
        workers: int,
        users: int,
        max_seconds: float,
        max_requests: int,
    ) -> None:
        if per_second <= 0 or workers < 1 or users < 1:
            raise ValueError("per_second, workers and users must be positive")
        self._rig = rig
        self._flags = flags
        self._interval = workers / per_second  # each worker's own pace
        self._users = users
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next_user = itertools.count()
        self._issued = 0
        self._sent: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._by_pct: dict[int, Counter[str]] = {}
        self._failed = 0
        self._last_canary_at: float | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"routed-load-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        # A worker is at most one request (REQUEST_TIMEOUT) away from seeing the stop flag.
        deadline = time.monotonic() + REQUEST_TIMEOUT + 1.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stats(self) -> LoadStats:
        with self._lock:
            return LoadStats(
                sent=dict(self._sent),
                server_errors=dict(self._errors),
                failed=self._failed,
                by_pct={pct: dict(c) for pct, c in self._by_pct.items()},
                last_canary_at=self._last_canary_at,
            )

    def _reserve(self) -> int | None:
        """The next request's number, or None once the request budget is spent."""
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return next(self._next_user)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        next_slot = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            number = self._reserve()
            if number is None:
                return
            self._one(f"u{number % self._users}")
            next_slot = max(next_slot + self._interval, time.monotonic())
            self._stop.wait(next_slot - time.monotonic())

    def _one(self, user: str) -> None:
        service = self._rig.service
        routed_at = time.monotonic()
        pct = self._flags.pct(service)
        canary = self._flags.variant(service, user) == CANARY
        instance = self._rig.canary if canary else self._rig.stable
        status: int | None
        try:
            with urllib.request.urlopen(
                f"{instance.url}/work?user={user}", timeout=REQUEST_TIMEOUT
            ) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except OSError as exc:
            status = None
            logger.debug("routed load: %s %s failed: %s", service, instance.version, exc)
        with self._lock:
            self._sent[instance.version] += 1
            self._by_pct.setdefault(pct, Counter())[instance.version] += 1
            if canary:
                self._last_canary_at = max(self._last_canary_at or 0.0, routed_at)
            if status is None:
                self._failed += 1
            elif status >= 500:
                self._errors[instance.version] += 1


class RoutedService:
    """Two instances of ``service`` behind the canary flag, plus the load that follows it."""

    def __init__(
        self,
        service: str,
        *,
        stable_version: str = STABLE_VERSION,
        canary_version: str = CANARY_VERSION,
    ) -> None:
        self.service = service
        self.stable = SampleService(service, stable_version)
        self.canary = SampleService(service, canary_version)
        self.stable.start()
        self.canary.start()
        self.flags: FlagClient | None = None
        self.load: RoutedLoad | None = None
        self.fault: Fault | None = None
        self._changes: list[PctChange] = []
        self._changes_lock = threading.Lock()

    @property
    def targets(self) -> list[str]:
        """``host:port`` of both instances, for Prometheus' static scrape config."""
        return [self.stable.target, self.canary.target]

    @property
    def stable_version(self) -> str:
        return self.stable.version

    @property
    def canary_version(self) -> str:
        return self.canary.version

    # -- lifecycle -----------------------------------------------------------------------------

    def start(
        self,
        redis_url: str,
        *,
        per_second: float = 120.0,
        workers: int = 12,
        users: int = 1000,
        max_seconds: float = 60.0,
        max_requests: int = 20_000,
    ) -> None:
        """Open a flag client on ``redis_url`` and start the routed load."""
        if self.load is not None:
            raise RuntimeError(f"{self.service}: the routed load is already running")
        self.reset_fault()
        with self._changes_lock:
            self._changes.clear()
        flags = FlagClient(redis_url, on_change=self._flag_changed)
        flags.start()
        self.flags = flags
        self.load = RoutedLoad(
            self,
            flags,
            per_second=per_second,
            workers=workers,
            users=users,
            max_seconds=max_seconds,
            max_requests=max_requests,
        )
        self.load.start()

    def stop(self) -> LoadStats | None:
        """Stop the load and the flag client and clear the fault; returns the final counts."""
        stats: LoadStats | None = None
        if self.load is not None:
            self.load.stop()
            stats = self.load.stats()
            self.load = None
        if self.flags is not None:
            self.flags.close()
            self.flags = None
        self.reset_fault()
        return stats

    def close(self) -> None:
        self.stop()
        self.stable.stop()
        self.canary.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------

    def inject_fault(self, kind: FaultKind) -> float:
        """Make the canary misbehave from now on; returns (and keeps) the onset time."""
        if kind is FaultKind.ERRORS:
            self.canary.configure(error_rate=ERROR_FAULT_RATE)
        else:
            self.canary.configure(latency=LATENCY_FAULT)
        onset = time.monotonic()
        self.fault = Fault(kind, onset)
        logger.info("%s %s: fault %s injected", self.service, self.canary.version, kind.value)
        return onset

    def reset_fault(self) -> None:
        self.canary.configure(error_rate=0.0, latency=0.0)
        self.fault = None

    @property
    def fault_at(self) -> float | None:
        return None if self.fault is None else self.fault.at

    # -- what happened -------------------------------------------------------------------------

    def stats(self) -> LoadStats:
        if self.load is None:
            raise RuntimeError(f"{self.service}: the routed load is not running")
        return self.load.stats()

    def pct_changes(self) -> list[PctChange]:
        """Every change of this service's flag the client applied, oldest first."""
        with self._changes_lock:
            return list(self._changes)

    def pct_history(self) -> list[int]:
        """The distinct percentages the flag went through, in order."""
        out: list[int] = []
        for change in self.pct_changes():
            if not out or out[-1] != change.pct:
                out.append(change.pct)
        return out

    def first_pct_at(self, pct: int, *, after: float) -> float | None:
        """When the flag client first held ``pct`` at or after ``after`` (monotonic)."""
        return next((c.at for c in self.pct_changes() if c.at >= after and c.pct == pct), None)

    def wait_for_pct(self, pct: int, timeout: float) -> FlagState:
        """Block until this rig's flag client holds ``pct`` for the service."""
        if self.flags is None:
            raise RuntimeError(f"{self.service}: the flag client is not running")
        return self.flags.wait_for(self.service, lambda s: s.pct == pct, timeout)

    def _flag_changed(self, service: str, state: FlagState | None) -> None:
        if service != self.service:
            return
        change = PctChange(
            at=time.monotonic(),
            pct=0 if state is None else state.pct,
            seq=0 if state is None else state.seq,
        )
        with self._changes_lock:
            self._changes.append(change)


def close_all(rigs: Sequence[RoutedService]) -> None:
    """Close several rigs, each even if another one fails to close."""
    errors: list[BaseException] = []
    for rig in rigs:
        try:
            rig.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
