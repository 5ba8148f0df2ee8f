"""A small real HTTP service instrumented with prometheus-client, for a real Prometheus to scrape.

Tests run two of these side by side (a stable and a canary version of the same service) and
change their behaviour while they run: the error rate and the latency can be set through
``SampleService.configure`` or ``POST /admin/config`` with a JSON body.

    GET  /work?user=<id>   200 {"service", "version", "user"} or 500 (at the configured rate)
    GET  /metrics          Prometheus text exposition of this instance's own registry
    GET  /admin/config     the current behaviour
    POST /admin/config     {"error_rate": 0.2, "latency": 0.05}; fields left out are kept

Every instance has its own ``CollectorRegistry``, so several can live in one process without
their counters colliding. ``generate_load`` is a bounded background load generator for them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

logger = logging.getLogger(__name__)

# Latency above this is surely a mistake in a test and would only make it hang.
MAX_LATENCY = 10.0


class _QuietServer(ThreadingHTTPServer):
    """A load generator that gives up on a slow answer closes its socket; that is expected
    here, so a broken pipe is not printed as a server error."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Behaviour:
    error_rate: float = 0.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.error_rate <= 1.0) or math.isnan(self.error_rate):
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate!r}")
        if not (0.0 <= self.latency <= MAX_LATENCY) or math.isnan(self.latency):
            raise ValueError(f"latency must be within [0, {MAX_LATENCY}] s, got {self.latency!r}")


class SampleService:
    """One instance of the sample service on 127.0.0.1, serving from a background thread."""

    def __init__(self, service: str, version: str, behaviour: Behaviour | None = None) -> None:
        self.service = service
        self.version = version
        self._behaviour = behaviour or Behaviour()
        self._lock = threading.Lock()
        # Errors are spread evenly instead of drawn at random: with a few hundred requests in a
        # short rate() window, a random 1% could as well come out as 0% or 3%, and the tests
        # compare measured rates against fixed ranges.
        self._error_credit = 0.0
        self.requests_served = 0

        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "http_requests",
            "Requests served, by status code.",
            ["service", "version", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Time spent serving /work.",
            ["service", "version"],
            registry=self.registry,
        )
        # Both series exist from the first scrape on, so a rate() over them starts at zero
        # instead of missing the first errors (a series born with value 1 shows no increase).
        for code in ("200", "500"):
            self._requests.labels(service, version, code)
        self._duration.labels(service, version)

        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=functools.partial(self._server.serve_forever, poll_interval=0.1),
            name=f"sample-{service}-{version}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """``host:port`` as Prometheus wants it in a static scrape config."""
        return f"127.0.0.1:{self.port}"

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    def configure(
        self, *, error_rate: float | None = None, latency: float | None = None
    ) -> Behaviour:
        """Change the behaviour at run time; returns the new one."""
        with self._lock:
            current = self._behaviour
            self._behaviour = Behaviour(
                error_rate=current.error_rate if error_rate is None else float(error_rate),
                latency=current.latency if latency is None else float(latency),
            )
            self._error_credit = 0.0
            logger.info("%s %s now behaves as %s", self.service, self.version, self._behaviour)
            return self._behaviour

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_outcome(self) -> tuple[bool, float]:
        """Whether the next request fails, and how long it takes."""
        with self._lock:
            self.requests_served += 1
            self._error_credit += self._behaviour.error_rate
            failed = self._error_credit >= 1.0
            if failed:
                self._error_credit -= 1.0
            return failed, self._behaviour.latency

    def serve_work(self, user: str) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        failed, latency = self._next_outcome()
        if latency:
            time.sleep(latency)
        code = 500 if failed else 200
        self._requests.labels(self.service, self.version, str(code)).inc()
        self._duration.labels(self.service, self.version).observe(time.perf_counter() - started)
        if failed:
            return code, {"error": "injected failure", "version": self.version}
        return code, {"service": self.service, "version": self.version, "user": user}

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


def _handler_for(app: SampleService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "shipwatch-sample/1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/work":
                user = parse_qs(parts.query).get("user", ["anonymous"])[0]
                code, body = app.serve_work(user)
                self._send_json(code, body)
            elif parts.path == "/metrics":
                self._send(200, app.metrics(), CONTENT_TYPE_LATEST)
            elif parts.path == "/admin/config":
                self._send_json(200, asdict(app.behaviour))
            else:
                self._send_json(404, {"error": f"no route for {parts.path}"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/admin/config":
                self._send_json(404, {"error": f"no route for {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("the body must be a JSON object")
                unknown = set(data) - {"error_rate", "latency"}
                if unknown:
                    raise ValueError(f"unknown fields: {sorted(unknown)}")
                new = app.configure(error_rate=data.get("error_rate"), latency=data.get("latency"))
            except (ValueError, TypeError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, asdict(new))

        def _send_json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, payload: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            # The default writes every request to stderr, which drowns the test output.
            logger.debug("%s %s: " + format, app.service, app.version, *args)

    return Handler


@contextmanager
def sample_service(
    service: str, version: str, *, error_rate: float = 0.0, latency: float = 0.0
) -> Iterator[SampleService]:
    """Run one instance on a free port for the duration of the block."""
    app = SampleService(service, version, Behaviour(error_rate=error_rate, latency=latency))
    app.start()
    try:
        yield app
    finally:
        app.stop()


class LoadGenerator:
    """Sends ``GET /work`` round-robin to some services from one background thread.

    Bounded three ways so a test that forgets to stop it cannot leave it running: it stops
    after ``max_seconds``, after ``max_requests``, or when ``stop()`` is called.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        per_second: float = 40.0,
        max_seconds: float = 60.0,
        max_requests: int = 20_000,
    ) -> None:
        if not urls:
            raise ValueError("the load generator needs at least one URL")
        self.urls = list(urls)
        # The rate is per target: each round sends one request to every URL.
        self._round_interval = 1.0 / per_second
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sample-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        next_round = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            for base in self.urls:
                if self.sent >= self.max_requests:
                    logger.info("load generator: sent its %d requests, stopping", self.sent)
                    return
                self._send(f"{base}/work?user={self.sent % 1000}")
            next_round += self._round_interval
            # Late rounds are not made up for: a slow service gets fewer requests, not bursts.
            next_round = max(next_round, time.monotonic())
            self._stop.wait(next_round - time.monotonic())
        logger.info("load generator: stopped after %d requests", self.sent)

    def _send(self, url: str) -> None:
        self.sent += 1
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # an injected 500 is an expected answer, not a problem
        except OSError as exc:
            self.failed += 1
            logger.debug("load generator: %s failed: %s", url, exc)


@contextmanager
def generate_load(
    urls: Sequence[str],
    *,
    per_second: float = 40.0,
    max_seconds: float = 60.0,
    max_requests: int = 20_000,
) -> Iterator[LoadGenerator]:
    load = LoadGenerator(
        urls, per_second=per_second, max_seconds=max_seconds, max_requests=max_requests
    )
    load.start()
    try:
        yield load
    finally:
        load.stop()
