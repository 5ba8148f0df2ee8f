"""`shipwatch demo`: two releases at demo speed on the embedded defaults, then the console.

A healthy release of `checkout` walks to 100% and bakes; a second one gets slower on its canary
after its first step and is rolled back by itself, with its diagnosis. Every message is printed
as it would appear in Slack. No Slack, no Prometheus URL and no OpenAI key needed.

Where the numbers come from (``DemoRig``): with a ``prometheus`` binary on PATH, a real
Prometheus scrapes the real sample service (bot.demo.service) every second, one instance per
service of the policy, each with its own load; users are routed to versions by the canary flag
the bot writes, and the fault of the script slows the faulty version down for real. Without
it, or when it fails to start, the synthetic source makes the numbers up. Either way the demo
says which, and why.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.demo.load import LoadGenerator
from bot.demo.prometheus import DemoPrometheus, find_prometheus
from bot.demo.service import DEMO_BEHAVIOUR, DemoService
from bot.errors import MetricsError, UserError
from bot.flags import FlagClient
from bot.release.policy import Metric, Policy, ServicePolicy

log = logging.getLogger(__name__)

MetricsMode = Literal["auto", "prometheus", "synthetic"]
METRICS_MODES: tuple[MetricsMode, ...] = ("auto", "prometheus", "synthetic")

SCRIPT = [
    "# 1. A healthy release: it advances by itself while its metrics hold.",
    'deploy checkout v2 --stable v1 --notes "Cart totals update instantly."',
    "await checkout",
    "# 2. A faulty release: after its first step its canary gets 4x slower.",
    'deploy checkout v3 --notes "New recommendations widget on the cart page."',
    "wait 5s",
    "fault checkout latency_p99 4 v3",
    "await checkout",
    "wait 1s",
    "history checkout",
]

# The version every sample service serves before any release has set its flag; the script's
# first release names it as the stable one.
FIRST_VERSION = "v1"
SCRAPE_INTERVAL = 1.0
# Requests per second to each sample service. At the first step (10%) that is about 10 a
# second on the canary: REAL_MIN_REQUESTS within a few seconds of a step starting.
LOAD_PER_SECOND = 100.0
DEMO_USERS = 1000
# Real numbers need real traffic: below this weight the canary gets too few requests in a
# demo-speed window for a verdict, and the release would hold on "no data".
REAL_MIN_WEIGHT = 10
REAL_MIN_REQUESTS = 20


def demo_policy(
    policy: Policy, *, interval: float = 1.0, hold: float = 4.0, bake: float = 5.0
) -> Policy:
    """Seconds instead of minutes, so a whole release plays out while you watch."""
    services = {
        name: sp.model_copy(
            update={
                "interval": interval,
                "hold": hold,
                "bake": bake,
                "window": max(5.0, interval * 5),
                "steps": [s.model_copy(update={"hold": None}) for s in sp.steps],
            }
        )
        for name, sp in policy.services.items()
    }
    return policy.model_copy(update={"services": services})


def for_real_metrics(policy: Policy) -> Policy:
    """The demo policy adjusted for numbers scraped from a real service every second.

    * Steps below REAL_MIN_WEIGHT go: their canary would hold on too little traffic.
    * Every metric waits for REAL_MIN_REQUESTS canary requests in its window: a p99 of a
      handful of requests says nothing.
    * The statistical judge only reports (``both`` becomes the threshold rules alone, a
      Mann-Whitney-only metric becomes dry-run): it compares minutes of series, and a demo
      step lasts seconds, so it would compare a few points, or none.
    """

    def metric(m: Metric) -> Metric:
        update: dict[str, object] = {"min_requests": max(m.min_requests, REAL_MIN_REQUESTS)}
        if m.judge == "both":
            update["judge"] = "threshold"
        elif m.judge == "mann_whitney":
            update["dry_run"] = True
        return m.model_copy(update=update)

    def service(sp: ServicePolicy) -> ServicePolicy:
        steps = [s for s in sp.steps if s.weight >= REAL_MIN_WEIGHT]
        return sp.model_copy(update={"steps": steps, "metrics": [metric(m) for m in sp.metrics]})

    return policy.model_copy(
        update={"services": {name: service(sp) for name, sp in policy.services.items()}}
    )


def scripted_input(interactive: bool, echo: Callable[[str], None]) -> Callable[[], str]:
    """Feed the script to the console line by line, then the user's input (or the end)."""
    lines: Iterator[str] = iter(SCRIPT)
    announced = False

    def read_line() -> str:
        nonlocal announced
        for line in lines:
            if line.startswith("#"):
                echo(f"\n{line}")
                continue
            return line + "\n"
        if not interactive:
            return ""
        if not announced:
            announced = True
            echo("\nThe demo is over; the console is yours (try `help`, or `quit`).")
        return sys.stdin.readline()

    return read_line


class SampleFleet:
    """One sample service per service of the policy, and the load that keeps them busy.

    It is also where the console's ``fault`` and ``clear`` go in the real-metrics demo.
    """

    def __init__(self, services: list[str]) -> None:
        self.services = {
            name: DemoService(name, FIRST_VERSION, DEMO_BEHAVIOUR) for name in services
        }
        self.load: LoadGenerator | None = None
        self.flags: FlagClient | None = None

    @property
    def targets(self) -> list[str]:
        return [s.target for s in self.services.values()]

    async def start(self) -> None:
        for svc in self.services.values():
            await svc.start()
        # Traffic from the start, before any flag exists: the first release's control (v1)
        # has a history by the time it is compared with the canary.
        self.load = LoadGenerator(
            [s.url for s in self.services.values()], per_second=LOAD_PER_SECOND, users=DEMO_USERS
        )
        self.load.start()

    async def follow_flags(self, redis_url: str) -> None:
        """Route users by the canary flags in ``redis_url``, the ones the bot writes."""
        flags = FlagClient(redis_url, poll_interval=1.0)
        # start() reads the flags once, blocking: off the loop.
        await asyncio.to_thread(flags.start)
        self.flags = flags
        for svc in self.services.values():
            svc.flags = flags

    async def close(self) -> None:
        if self.load is not None:
            await self.load.stop()
            self.load = None
        for svc in self.services.values():
            svc.flags = None
            await svc.stop()
        if self.flags is not None:
            await asyncio.to_thread(self.flags.close)
            self.flags = None

    def inject(self, service: str, metric: str, factor: float, version: str = "*") -> str:
        svc = self.services.get(service)
        if svc is None:
            raise UserError(
                f"no sample service `{service}` in this demo",
                hint="sample services: " + ", ".join(sorted(self.services)),
            )
        return svc.inject(service, metric, factor, version)

    def clear(self, service: str | None = None) -> None:
        for name, svc in self.services.items():
            if service in (None, name):
                svc.clear()


@dataclass(frozen=True)
class MetricsChoice:
    """What the demo judges with: a Prometheus URL (None: synthetic) and the lines saying so."""

    prometheus_url: str | None
    line: str
    detail: str = ""


class DemoRig:
    """Everything `shipwatch demo` runs beside the bot, started and stopped as one.

    ``start`` decides where the numbers come from (``mode``: "auto" uses Prometheus when it
    can, "prometheus" insists, "synthetic" never tries) and starts the sample services, their
    load and Prometheus for real numbers. ``close`` stops all of it, whatever happened before;
    call it from a ``finally``.
    """

    def __init__(self, data_dir: Path, policy: Policy, mode: MetricsMode = "auto") -> None:
        self.data_dir = data_dir
        self.mode = mode
        self.policy = demo_policy(policy)
        self.fleet: SampleFleet | None = None
        self.prometheus: DemoPrometheus | None = None

    async def start(self) -> MetricsChoice:
        if self.mode == "synthetic":
            return self._synthetic("asked for with --metrics synthetic")
        binary = find_prometheus()
        if binary is None:
            return self._fallback(
                "prometheus not found on PATH; install it for the real thing: "
                "apt-get install prometheus"
            )
        services = [n for n, sp in self.policy.services.items() if sp.traffic.backend == "flags"]
        if not services:
            return self._fallback("no service of the policy uses the flags traffic backend")
        fleet = self.fleet = SampleFleet(services)
        try:
            await fleet.start()
            prometheus = self.prometheus = DemoPrometheus(
                binary, self.data_dir, fleet.targets, interval=SCRAPE_INTERVAL
            )
            await prometheus.start()
        except (MetricsError, OSError) as exc:
            await self.close()
            return self._fallback(str(exc))
        self.policy = for_real_metrics(self.policy)
        version = f" {prometheus.version}" if prometheus.version else ""
        return MetricsChoice(
            prometheus.url,
            f"metrics: real Prometheus{version} at {prometheus.url}, scraping the sample "
            f"services every {SCRAPE_INTERVAL:g} s ({', '.join(services)}; "
            f"{LOAD_PER_SECOND:g} requests/s each, users routed to versions by the canary flag)",
            f"(steps start at {REAL_MIN_WEIGHT}%: the smallest share of that traffic that gives "
            f"a canary {REAL_MIN_REQUESTS} requests to be judged on within a few seconds)",
        )

    async def follow_flags(self, redis_url: str) -> None:
        if self.fleet is not None:
            await self.fleet.follow_flags(redis_url)

    @property
    def faults(self) -> SampleFleet | None:
        """Where `fault` goes: the sample services; None leaves it to the synthetic source."""
        return self.fleet

    async def close(self) -> None:
        """Stop the load, the flag client, the services and Prometheus. Idempotent."""
        fleet, self.fleet = self.fleet, None
        prometheus, self.prometheus = self.prometheus, None
        try:
            if fleet is not None:
                await fleet.close()
        finally:
            if prometheus is not None:
                await prometheus.stop()

    def _fallback(self, reason: str) -> MetricsChoice:
        if self.mode == "prometheus":
            raise MetricsError(f"the demo cannot use a real Prometheus: {reason}")
        log.warning("demo: synthetic metrics: %s", reason)
        return self._synthetic(reason)

    def _synthetic(self, reason: str) -> MetricsChoice:
        return MetricsChoice(None, f"metrics: synthetic ({reason})")
