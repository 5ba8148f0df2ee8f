from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.procs import redis_server

# On a timeout, the asyncio tasks are dumped too (a hung async test waits in a task).
pytest_plugins = ["tests.support.timeouts"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, for the whole session."""
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a freshly flushed database."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


# End-to-end tests start several real services and play whole releases: they get longer than the
# 60 s default (pyproject), still short enough that a hang fails with its stack.
E2E_TIMEOUT_SECONDS = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that touch a real service are marked by the fixtures they use, so `-m "not redis"`
    # gives the fast unit run and CI can prove none of the real-service tests was skipped.
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "redis_url" in names or "sentinel" in names or "cluster" in names:
            item.add_marker(pytest.mark.redis)
        if "prometheus_url" in names:
            item.add_marker(pytest.mark.prometheus)
        if "haproxy" in names:
            item.add_marker(pytest.mark.haproxy)
        if "nginx" in names:
            item.add_marker(pytest.mark.nginx)
        if "unleash" in names:
            item.add_marker(pytest.mark.unleash)
        if "chromium" in names:
            item.add_marker(pytest.mark.chromium)
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_SECONDS))
