"""A private Prometheus for `shipwatch demo`, scraping the demo's sample service every second.

It runs only when a ``prometheus`` binary is on PATH, from a generated config in a temporary
directory under the data directory (its TSDB goes there too, and is deleted at the end), on a
free port of 127.0.0.1. ``start`` returns once Prometheus is ready and has scraped every target
once, so the first release is judged on real numbers from its first check; anything that goes
wrong on the way raises MetricsError with the reason, and leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bot.demo.daemon import Daemon, find, free_port, version_of
from bot.errors import MetricsError

log = logging.getLogger(__name__)

JOB = "shipwatch-demo"
# Each HTTP request made while starting; a busy machine answers well within it.
_REQUEST_TIMEOUT = 2.0


def find_prometheus() -> str | None:
    return find("prometheus")


def scrape_config(targets: Sequence[str], interval: float) -> dict[str, Any]:
    every = f"{interval:g}s"
    return {
        # The scrape timeout must not exceed the interval; the sample service answers in ms.
        "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }


class DemoPrometheus:
    """One ``prometheus`` process scraping ``targets`` (``host:port``) every ``interval``."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        targets: Sequence[str],
        *,
        interval: float = 1.0,
    ) -> None:
        if not targets:
            raise ValueError("Prometheus needs at least one target to scrape")
        self.binary = binary
        self.data_dir = data_dir
        self.targets = list(targets)
        self.interval = interval
        # Kept after the run (the temporary directory is not), for reading after a failure.
        self.log_path = data_dir / "prometheus.log"
        self.url = ""
        self.version = ""
        self._workdir: Path | None = None
        self._daemon = Daemon("prometheus", self.log_path)

    async def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until every target has been scraped; MetricsError otherwise."""
        self.version = await version_of(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=self.data_dir))
        config = self._workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets, self.interval)))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        try:
            await self._daemon.start(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ]
            )
            await asyncio.wait_for(self._until_scraping(), timeout)
        except TimeoutError:
            await self.stop()
            raise MetricsError(
                f"prometheus was not scraping the sample service within {timeout:g}s "
                f"(see {self.log_path})"
            ) from None
        except (MetricsError, OSError) as exc:
            await self.stop()
            if isinstance(exc, MetricsError):
                raise
            raise MetricsError(f"could not run {self.binary}: {exc}") from exc
        except BaseException:
            await self.stop()  # Ctrl-C while starting: nothing is left running
            raise
        log.info("prometheus %s at %s scraping %s", self.version, self.url, self.targets)

    async def _until_scraping(self) -> None:
        """Poll until the server is ready, then until every target is up."""
        query = f'up{{job="{JOB}"}}'
        timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._check_running()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(f"{self.url}/-/ready") as ready:
                        if ready.status == 200:
                            async with session.get(
                                f"{self.url}/api/v1/query", params={"query": query}
                            ) as answer:
                                body = await answer.json()
                            result = body.get("data", {}).get("result", [])
                            up = [r for r in result if r.get("value", [0, "0"])[1] == "1"]
                            if len(up) == len(self.targets):
                                return
                await asyncio.sleep(0.2)

    def _check_running(self) -> None:
        if why := self._daemon.exited():
            raise MetricsError(why)

    async def stop(self) -> None:
        """Stop the process and delete its TSDB. Idempotent; safe after a failed start."""
        await self._daemon.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
