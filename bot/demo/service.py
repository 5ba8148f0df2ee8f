"""The sample service that `shipwatch demo` and the compose demo release.

A small web service instrumented with prometheus-client. One instance serves one service name
in any version: the versions live side by side in the process, the way a code path guarded by a
feature flag does. Each request's user is routed by the canary flag through the SDK
applications embed (``bot.flags.FlagClient``) to the canary or the stable version and served
with that version's behaviour, so when shipwatch moves the flag, traffic moves, and Prometheus
sees every version's requests apart. Without a flag (or without Redis) every request is served
by the instance's own version.

    GET  /work?user=<id>   200 {"service", "version", "user"}, or 500 at the version's error rate
    GET  /preview/<version>/work?user=<id>
                           the same, served by <version> whatever the flag says: the idle
                           colour's preview address, which a step's load hook warms up
    GET  /metrics          http_requests_total{service,version,code} and
                           http_request_duration_seconds_bucket{service,version,le}
    GET  /admin/config     the behaviour of ?version=<v> (default: every version's default)
    POST /admin/config     {"error_rate": 0.2, "latency": 0.05, "jitter": 0.5, "version": "v3"};
                           fields left out are kept; without "version" it sets the default
    GET  /healthz          200 ok

Each instance has its own ``CollectorRegistry``, so several can live in one process.
``python -m bot.demo.service`` runs one for docker compose (see ``main``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from bot.demo.load import LoadGenerator
from bot.errors import UserError
from bot.flags import FlagClient

log = logging.getLogger(__name__)


class Router(Protocol):
    """What routes a user to a version in the application: the canary flag's SDK (``FlagClient``)
    or another flag service's. None: no opinion (the instance's own version serves)."""

    def version(self, service: str, user: str) -> str | None: ...


# Latency above this is surely a typo, and would only make clients time out.
MAX_LATENCY = 10.0
MAX_JITTER = 2.0
# A healthy version answers without errors, so "n times the errors" of a fault needs a base:
# a fault on the error rate multiplies at least this much.
NOMINAL_ERROR_RATE = 0.01

# How the demo's versions behave unless a fault says otherwise: no errors, a 60 ms median and a
# log-normal tail (p99 about 0.2 s). The tail matters: with every request taking the same time,
# a p99 sits at a histogram bucket's edge and one slow request can double it.
DEMO_BEHAVIOUR_ARGS: dict[str, float] = {"error_rate": 0.0, "latency": 0.06, "jitter": 0.5}


@dataclass(frozen=True)
class Behaviour:
    """How one version answers: the share of 500s, the median latency and its spread."""

    error_rate: float = 0.0
    latency: float = 0.0  # seconds: every request's, or the median when jitter > 0
    jitter: float = 0.0  # sigma of a log-normal factor on latency; 0: always exactly latency

    def __post_init__(self) -> None:
        for name, value, top, unit in (
            ("error_rate", self.error_rate, 1.0, ""),
            ("latency", self.latency, MAX_LATENCY, " s"),
            ("jitter", self.jitter, MAX_JITTER, ""),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if math.isnan(value) or not 0.0 <= value <= top:
                raise ValueError(f"{name} must be within [0, {top:g}]{unit}, got {value!r}")


DEMO_BEHAVIOUR = Behaviour(**DEMO_BEHAVIOUR_ARGS)


class DemoService:
    """One instance of the sample service; serves from the running event loop once started."""

    def __init__(
        self,
        service: str,
        version: str,
        behaviour: Behaviour | None = None,
        *,
        flags: Router | None = None,
        seed: int | None = None,
    ) -> None:
        self.service = service
        self.version = version
        # Read on every request; set it after construction when Redis comes up later.
        self.flags = flags
        self._default = behaviour or Behaviour()
        self._own: dict[str, Behaviour] = {}
        self._lock = threading.Lock()  # configure() may be called from another thread
        # Errors are spread evenly instead of drawn at random: in a short rate() window a
        # random 1% could as well come out as 0% or 3%, and judges compare it with a limit.
        self._error_credit: dict[str, float] = {}
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self.requests_served = 0

        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "http_requests",
            "Requests served, by the version that served them and status code.",
            ["service", "version", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Time spent serving /work.",
            ["service", "version"],
            registry=self.registry,
        )
        self._prepare(version)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- behaviour ---------------------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        """The default behaviour (of every version without one of its own)."""
        with self._lock:
            return self._default

    def behaviour_of(self, version: str) -> Behaviour:
        with self._lock:
            return self._own.get(version, self._default)

    def configure(
        self,
        *,
        version: str | None = None,
        error_rate: float | None = None,
        latency: float | None = None,
        jitter: float | None = None,
    ) -> Behaviour:
        """Change a version's behaviour (or the default) at run time; returns the new one.

        Raises ValueError for a value out of range; nothing changes then.
        """
        given = {"error_rate": error_rate, "latency": latency, "jitter": jitter}
        changes = {name: float(value) for name, value in given.items() if value is not None}
        with self._lock:
            current = self._default if version is None else self._own.get(version, self._default)
            new = replace(current, **changes)
            if version is None:
                self._default = new
            else:
                self._own[version] = new
            self._error_credit.clear()
        log.info("%s %s now behaves as %s", self.service, version or "(default)", new)
        return new

    def inject(self, service: str, metric: str, factor: float, version: str = "*") -> str:
        """Make ``metric`` of ``version`` ("*": every version) ``factor`` times worse.

        The console's ``fault`` verb: ``latency…`` metrics multiply the latency, ``error…``
        metrics the error rate (from at least NOMINAL_ERROR_RATE). Raises UserError otherwise.
        """
        if service != self.service:
            raise UserError(
                f"the sample service here is `{self.service}`, not `{service}`",
                hint=f"e.g. fault {self.service} latency_p99 4 v2",
            )
        if not math.isfinite(factor) or factor <= 0:
            raise UserError(f"the factor must be a positive number, got {factor:g}")
        kind = "latency" if "latency" in metric else "errors" if "error" in metric else ""
        if not kind:
            raise UserError(
                f"the sample service can make latency or errors worse, not `{metric}`",
                hint="e.g. fault checkout latency_p99 4 v2, or fault checkout error_rate 5 v2",
            )
        targets: list[str | None] = [version]
        if version == "*":
            with self._lock:
                targets = [None, *self._own]
        try:
            for target in targets:
                current = self.behaviour if target is None else self.behaviour_of(target)
                if kind == "latency":
                    latency = min(current.latency * factor, MAX_LATENCY)
                    self.configure(version=target, latency=latency)
                else:
                    rate = min(max(current.error_rate, NOMINAL_ERROR_RATE) * factor, 1.0)
                    self.configure(version=target, error_rate=rate)
        except ValueError as exc:
            raise UserError(f"cannot apply that fault: {exc}") from exc
        shown = self.behaviour if version == "*" else self.behaviour_of(version)
        which = "every version" if version == "*" else version
        now = (
            f"median latency now {shown.latency * 1000:.0f} ms"
            if kind == "latency"
            else f"now {shown.error_rate:.1%} of requests fail"
        )
        return f"sample service: {self.service} {which}: {kind} ×{factor:g} ({now})"

    def clear(self, service: str | None = None) -> None:
        """Every version back to the default behaviour."""
        if service not in (None, self.service):
            return
        with self._lock:
            self._own.clear()
            self._error_credit.clear()

    # -- serving -----------------------------------------------------------------------------

    def deploy(self, version: str) -> None:
        """Serve ``version`` from now on (when no flag routes the user): what a deploy to this
        instance's pool does."""
        with self._lock:
            if version not in self._seen:
                self._prepare(version)
            self.version = version
        log.info("sample service %s now runs %s", self.service, version)

    def version_for(self, user: str) -> str:
        """The version that serves ``user``: the flag's choice, or this instance's own."""
        flags = self.flags
        chosen = flags.version(self.service, user) if flags is not None else None
        return chosen or self.version

    def _prepare(self, version: str) -> None:
        # Series exist (at zero) before their first request, so a rate() over them starts at
        # zero instead of missing the first requests (a series born at 1 shows no increase).
        self._seen.add(version)
        for code in ("200", "500"):
            self._requests.labels(self.service, version, code)
        self._duration.labels(self.service, version)

    def _next_outcome(self, version: str) -> tuple[bool, float]:
        """Whether the next request of ``version`` fails, and how long it takes."""
        with self._lock:
            if version not in self._seen:
                self._prepare(version)
            self.requests_served += 1
            behaviour = self._own.get(version, self._default)
            credit = self._error_credit.get(version, 0.0) + behaviour.error_rate
            failed = credit >= 1.0
            self._error_credit[version] = credit - 1.0 if failed else credit
            delay = behaviour.latency
            if behaviour.jitter and delay:
                delay = min(delay * math.exp(self._rng.gauss(0.0, behaviour.jitter)), MAX_LATENCY)
            return failed, delay

    async def _work(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        user = request.query.get("user", "anonymous")
        version = request.match_info.get("version") or self.version_for(user)
        failed, delay = self._next_outcome(version)
        if delay:
            await asyncio.sleep(delay)
        code = 500 if failed else 200
        self._requests.labels(self.service, version, str(code)).inc()
        self._duration.labels(self.service, version).observe(time.perf_counter() - started)
        if failed:
            body = {"error": "injected failure", "service": self.service, "version": version}
        else:
            body = {"service": self.service, "version": version, "user": user}
        return web.json_response(body, status=code)

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_config(self, request: web.Request) -> web.Response:
        version = request.query.get("version")
        behaviour = self.behaviour if version is None else self.behaviour_of(version)
        return web.json_response(asdict(behaviour))

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read() or b"{}")
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            unknown = set(data) - {"error_rate", "latency", "jitter", "version"}
            if unknown:
                raise ValueError(f"unknown fields: {sorted(unknown)}")
            version = data.get("version")
            if version is not None and not isinstance(version, str):
                raise ValueError("version must be a string")
            new = self.configure(
                version=version,
                error_rate=data.get("error_rate"),
                latency=data.get("latency"),
                jitter=data.get("jitter"),
            )
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(new))

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/work", self._work)
        # A version name is a Prometheus label here: bounded like a release's version.
        preview = r"/preview/{version:[A-Za-z0-9][A-Za-z0-9._+:@~-]{0,127}}/work"
        app.router.add_get(preview, self._work)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/config", self._get_config)
        app.router.add_post("/admin/config", self._post_config)
        app.router.add_get("/healthz", self._healthz)
        return app

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Serve on ``host:port`` (0: a free port), or on an already bound ``sock``."""
        if self._runner is not None:
            raise RuntimeError(f"{self.service} {self.version} is already serving")
        # No access log: at demo rates it would be hundreds of lines a second.
        runner = web.AppRunner(self.web_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site: web.BaseSite
        site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner)
        log.info("sample service %s %s listening on %s", self.service, self.version, self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """``host:port`` as Prometheus wants it in a static scrape config."""
        return f"127.0.0.1:{self.port}"


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the sample service is not listening on a TCP port")


# --- python -m bot.demo.service -------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    """The entry point's settings, from the environment of its own process."""

    service: str = "demo"
    version: str = "v1"
    port: int = 8080
    redis_url: str | None = None
    load: float = 0.0  # requests/s this process sends itself; 0: none

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ServiceConfig:
        try:
            port = int(env.get("PORT", "8080"))
            load = float(env.get("DEMO_LOAD_RPS", "0"))
        except ValueError as exc:
            raise UserError(f"bad number in the environment: {exc}") from exc
        if not 0 < port < 65536 or not 0 <= load <= 1000:
            raise UserError("PORT must be a TCP port and DEMO_LOAD_RPS within 0..1000")
        return cls(
            service=env.get("DEMO_SERVICE") or "demo",
            version=env.get("DEMO_VERSION") or "v1",
            port=port,
            redis_url=env.get("REDIS_URL") or None,
            load=load,
        )


async def serve(config: ServiceConfig) -> None:
    """Run until SIGINT/SIGTERM: the service, its flag client and its own load, if asked."""
    flags: FlagClient | None = None
    if config.redis_url:
        flags = FlagClient(config.redis_url)
        # Blocking (a first read of the flags): off the loop. It never raises for Redis being
        # down; the client serves the own version and keeps retrying.
        await asyncio.to_thread(flags.start)
    app = DemoService(config.service, config.version, DEMO_BEHAVIOUR, flags=flags)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    load: LoadGenerator | None = None
    try:
        await app.start("0.0.0.0", config.port)
        if config.load:
            load = LoadGenerator([f"http://127.0.0.1:{config.port}"], per_second=config.load)
            load.start()
        routed = "by the canary flag in Redis" if flags else f"to {config.version} (no REDIS_URL)"
        log.info("serving %s on :%d; users routed %s", config.service, config.port, routed)
        await stop.wait()
    finally:
        if load is not None:
            await load.stop()
        await app.stop()
        if flags is not None:
            await asyncio.to_thread(flags.close)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = ServiceConfig.from_env(dict(os.environ))
    except UserError as exc:
        print(f"bot.demo.service: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
