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

What moves users (``--traffic``): the embedded flags by default; or a real HAProxy or NGINX in
front of each service's stable and canary pools (bot.demo.haproxy, bot.demo.nginx), or an
Unleash the operator runs with the sample services asking its SDK (bot.demo.unleash), each
driven by shipwatch's own backend for that engine, exactly as ``serve`` drives it. Those need
real metrics, and between the two releases the script hands back.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from bot.demo.fleet import LOAD_PER_SECOND, Deployer, SampleFleet
from bot.demo.haproxy import DemoHAProxy, find_haproxy
from bot.demo.nginx import DemoNginx, find_nginx
from bot.demo.prometheus import DemoPrometheus, find_prometheus
from bot.demo.proxy import DemoProxy
from bot.demo.unleash import SDK_REFRESH_S, UnleashRouter
from bot.engine.events import Notifier
from bot.errors import MetricsError, TrafficError, UserError
from bot.release.policy import (
    Hook,
    LoadHook,
    Metric,
    Policy,
    ServicePolicy,
    Strategy,
    TrafficSettings,
)

log = logging.getLogger(__name__)

MetricsMode = Literal["auto", "prometheus", "synthetic"]
METRICS_MODES: tuple[MetricsMode, ...] = ("auto", "prometheus", "synthetic")
TrafficMode = Literal["flags", "haproxy", "nginx", "unleash"]
TRAFFIC_MODES: tuple[TrafficMode, ...] = ("flags", "haproxy", "nginx", "unleash")
PACKAGES = {"haproxy": "haproxy", "nginx": "nginx-light"}
HOW = {
    "haproxy": "`set map` on the runtime API, no reload",
    "nginx": "a split_clients include, `nginx -t`, reload",
    "unleash": "a flexibleRollout strategy through the Admin API",
}

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
    "# 3. A blue-green release: checks on the idle colour at 0% (with synthetic load on it, since",
    "#    no user reaches it yet), then one switch to 100%.",
    "deploy search v2 --stable v1",
    "await search",
]

SCRAPE_INTERVAL = 1.0
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


# Before a blue-green switch, the idle colour gets synthetic load for this long: enough for
# REAL_MIN_REQUESTS in the demo's window and the demo's hold, with room for scrapes.
SWITCH_LOAD_S = 10.0
SWITCH_LOAD_RATE = 20.0


def with_switch_load(policy: Policy, fleet: SampleFleet) -> Policy:
    """Blue-green services whose policy sets no switch hooks get one: synthetic load on the idle
    colour's preview address, so the pre-switch checks judge real requests (at 0% no user
    reaches it)."""

    def service(name: str, sp: ServicePolicy) -> ServicePolicy:
        if sp.strategy is not Strategy.BLUE_GREEN or sp.switch_hooks or name not in fleet.instances:
            return sp
        load = LoadHook(url=fleet.preview(name), seconds=SWITCH_LOAD_S, rate=SWITCH_LOAD_RATE)
        hook = Hook(load=load, timeout=SWITCH_LOAD_S * 3)
        return sp.model_copy(update={"switch_hooks": [hook]})

    return policy.model_copy(
        update={"services": {name: service(name, sp) for name, sp in policy.services.items()}}
    )


class Engine(Protocol):
    def traffic(self, service: str) -> dict[str, str]: ...


def through(policy: Policy, engine: Engine, services: list[str]) -> Policy:
    """The policy with ``services`` driven through ``engine`` instead of the embedded flags."""
    updated = {
        name: sp.model_copy(
            update={"traffic": TrafficSettings.model_validate(engine.traffic(name))}
        )
        for name, sp in policy.services.items()
        if name in services
    }
    return policy.model_copy(update={"services": policy.services | updated})


# With a proxy or Unleash, the pipeline's step between two releases: the released version is on
# the stable pool now (the demo's Deployer put it there), so everyone goes back to that pool.
HANDBACK = [
    "# Between releases: v2 is on the stable pool too; everyone goes back to it.",
    "handback checkout",
]


def script_for(hands_back: bool) -> list[str]:
    """The demo's script; with a handback after the first release when the engine needs one."""
    if not hands_back:
        return list(SCRIPT)
    first_await = SCRIPT.index("await checkout") + 1
    return [*SCRIPT[:first_await], *HANDBACK, *SCRIPT[first_await:]]


def scripted_input(
    interactive: bool, echo: Callable[[str], None], script: list[str] = SCRIPT
) -> Callable[[], str]:
    """Feed the script to the console line by line, then the user's input (or the end)."""
    lines: Iterator[str] = iter(script)
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


@dataclass(frozen=True)
class MetricsChoice:
    """What the demo judges with: a Prometheus URL (None: synthetic) and the lines saying so."""

    prometheus_url: str | None
    line: str
    detail: str = ""
    traffic: str = ""  # the engine that moves users, when not the embedded flags


class DemoRig:
    """Everything `shipwatch demo` runs beside the bot, started and stopped as one.

    ``start`` decides where the numbers come from (``mode``: "auto" uses Prometheus when it
    can, "prometheus" insists, "synthetic" never tries) and starts the sample services, their
    load and Prometheus for real numbers. ``close`` stops all of it, whatever happened before;
    call it from a ``finally``.
    """

    def __init__(
        self,
        data_dir: Path,
        policy: Policy,
        mode: MetricsMode = "auto",
        traffic: TrafficMode = "flags",
        unleash_url: str = "",
    ) -> None:
        self.data_dir = data_dir
        self.mode = mode
        self.traffic = traffic
        self.unleash_url = unleash_url
        self.policy = demo_policy(policy)
        self.fleet: SampleFleet | None = None
        self.prometheus: DemoPrometheus | None = None

    def _proxy(self) -> DemoProxy | None:
        """The proxy ``--traffic`` asks for; UserError when it cannot run here."""
        if self.traffic in ("flags", "unleash"):
            return None
        found = {"haproxy": find_haproxy, "nginx": find_nginx}[self.traffic]()
        if found is None:
            raise UserError(
                f"{self.traffic} is not installed here",
                hint=f"apt-get install {PACKAGES[self.traffic]}, or leave out --traffic to move "
                "users with the embedded flags",
            )
        maker = DemoHAProxy if self.traffic == "haproxy" else DemoNginx
        return maker(found, self.data_dir)

    def _unleash(self) -> UnleashRouter | None:
        if self.traffic != "unleash":
            return None
        if not self.unleash_url:
            raise UserError(
                "--traffic unleash drives an Unleash server you run: say where it is",
                hint="add --unleash-url http://unleash.example:4242",
            )
        router = UnleashRouter(self.unleash_url, self.data_dir)
        router.tokens()  # both tokens there, before anything starts
        return router

    async def start(self) -> MetricsChoice:
        if self.traffic != "flags" and self.mode == "synthetic":
            raise UserError(
                f"--traffic {self.traffic} moves real requests, and synthetic metrics would not "
                "see them",
                hint="leave out --metrics synthetic (the demo then needs prometheus on PATH)",
            )
        proxy = self._proxy()
        unleash = self._unleash()
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
        fleet = self.fleet = SampleFleet(services, proxy, unleash)
        try:
            await fleet.start()
            prometheus = self.prometheus = DemoPrometheus(
                binary, self.data_dir, fleet.targets, interval=SCRAPE_INTERVAL
            )
            await prometheus.start()
        except TrafficError:
            await self.close()
            raise  # the engine asked for by name: no quiet way round it
        except (MetricsError, OSError) as exc:
            await self.close()
            return self._fallback(str(exc))
        self.policy = with_switch_load(for_real_metrics(self.policy), fleet)
        routed = "by the canary flag"
        traffic = ""
        if proxy is not None:
            self.policy = through(self.policy, proxy, services)
            routed = f"through {proxy.label}"
            traffic = (
                f"traffic: {proxy.label} in front of each service's stable and canary pools; "
                f"shipwatch moves users with its {proxy.engine} backend ({HOW[proxy.engine]})"
            )
        if unleash is not None:
            self.policy = through(self.policy, unleash, services)
            routed = "by Unleash's Python SDK"
            flags = ", ".join(unleash.flag_of(name) for name in services)
            traffic = (
                f"traffic: {unleash.label}, flags {flags} (project default, environment "
                f"development); shipwatch moves users with its unleash backend "
                f"({HOW['unleash']}); the sample services ask Unleash's Python SDK, refreshing "
                f"every {SDK_REFRESH_S} s"
            )
        version = f" {prometheus.version}" if prometheus.version else ""
        return MetricsChoice(
            prometheus.url,
            f"metrics: real Prometheus{version} at {prometheus.url}, scraping the sample "
            f"services every {SCRAPE_INTERVAL:g} s ({', '.join(services)}; "
            f"{LOAD_PER_SECOND:g} requests/s each, users routed to versions {routed})",
            f"(steps start at {REAL_MIN_WEIGHT}%: the smallest share of that traffic that gives "
            f"a canary {REAL_MIN_REQUESTS} requests to be judged on within a few seconds)",
            traffic,
        )

    async def follow_flags(self, redis_url: str) -> None:
        if self.fleet is not None:
            await self.fleet.follow_flags(redis_url)

    @property
    def script(self) -> list[str]:
        return script_for(self.fleet is not None and self.fleet.routed_by_pipeline)

    @property
    def deployers(self) -> list[Notifier]:
        """What puts each release's versions on the pools: nothing when flags route users."""
        if self.fleet is None or not self.fleet.routed_by_pipeline:
            return []
        return [Deployer(self.fleet)]

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
        if self.mode == "prometheus" or self.traffic != "flags":
            raise MetricsError(f"the demo cannot use a real Prometheus: {reason}")
        log.warning("demo: synthetic metrics: %s", reason)
        return self._synthetic(reason)

    def _synthetic(self, reason: str) -> MetricsChoice:
        return MetricsChoice(None, f"metrics: synthetic ({reason})")
