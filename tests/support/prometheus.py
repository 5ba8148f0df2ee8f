"""Run a real Prometheus for the tests, scraping given targets every second."""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import free_port, require_binary, running

logger = logging.getLogger(__name__)


def write_config(path: Path, targets: Sequence[str], *, job: str = "sample") -> None:
    config = {
        # One-second scrapes (and a timeout that must not exceed them) so rate() has data
        # a few seconds after start, which keeps the real-Prometheus tests short.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def wait_until_ready(url: str, timeout: float = 20.0) -> None:
    """Poll ``/-/ready`` until it answers 200 (the port opens before the TSDB is loaded)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            exc.close()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"Prometheus at {url} not ready after {timeout}s (last: {last})")


@contextmanager
def prometheus_server(
    tmp: Path, targets: Sequence[str], *flags: str, job: str = "sample"
) -> Iterator[str]:
    """Start ``prometheus`` on a free port scraping ``targets`` (``host:port``); yields its URL.

    ``flags`` go on its command line after ours (a test that needs a limit such as
    ``--query.max-samples``). Skips the test when the binary is missing (see
    ``require_binary``). The config, the TSDB and the log all go to ``tmp``, so a failing test
    leaves ``tmp/prometheus.log`` to read.
    """
    binary = require_binary("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    write_config(config, targets, job=job)
    port = free_port()
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
    ]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, port, tmp / "prometheus.log"):
        wait_until_ready(url)
        logger.info("prometheus at %s scraping %s", url, ", ".join(targets))
        yield url


def instant_query(url: str, promql: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The raw ``result`` of an instant query; raises on any error (test helper, no retries)."""
    body = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=timeout) as response:
        payload = json.load(response)
    if payload.get("status") != "success":
        raise RuntimeError(f"query failed: {payload}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def wait_for_data(
    url: str,
    promql: str,
    *,
    timeout: float = 20.0,
    at_least: float | None = None,
    interval: float = 0.25,
) -> float:
    """Poll until ``promql`` returns a series with a finite value (``>= at_least`` if given).

    Returns the value of the first series. Prometheus needs a couple of scrapes before a
    rate() has anything to say, so tests wait here instead of sleeping a guessed time.
    """
    deadline = time.monotonic() + timeout
    last: object = "nothing yet"
    while time.monotonic() < deadline:
        try:
            result = instant_query(url, promql)
        except (OSError, RuntimeError, ValueError) as exc:
            last = exc
        else:
            last = result
            if result:
                value = float(result[0]["value"][1])
                if math.isfinite(value) and (at_least is None or value >= at_least):
                    return value
        time.sleep(interval)
    raise TimeoutError(f"{promql!r} returned no usable data within {timeout}s (last: {last})")
