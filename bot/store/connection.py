"""One client for the store, from ``REDIS_URL``: a single Redis, the master Redis Sentinel names,
or a Redis Cluster.

``redis+sentinel://[[user]:password@]host:port[,host:port…]/master-name[/db]`` asks the
sentinels which server is the master and follows a failover by itself (redis-py's Sentinel
support): a command that finds the old master gone or demoted is retried against the new one.
The URL's password is the data servers'; sentinels that require one of their own take it from
``?sentinel_password=``.

``redis+cluster://[[user]:password@]host:port[,host:port…]`` starts from those nodes and
learns the rest from the cluster. Every shipwatch key carries one hash tag (bot.store.keys),
so each multi-key script and transaction runs on the one node that owns that slot.

Replication is asynchronous, so a master that dies can take its last writes with it. With
``min_replicas`` the store waits (``WAIT``) until each release change is on that many replicas
before anything acts on it, so a failover promotes a replica that has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.errors import UserError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SOCKET_TIMEOUT_S = 5.0
# A failover takes the sentinels' down-after time plus an election: seconds. The retries span
# about that, so a command issued mid-failover lands on the new master instead of failing.
_FAILOVER_RETRIES = 8
_FAILOVER_BACKOFF = ExponentialBackoff(cap=2.0, base=0.1)


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def is_cluster(url: str) -> bool:
    return url.lower().startswith(CLUSTER_SCHEME + "://")


def _hosts(netloc: str, example: str) -> tuple[str, str, list[tuple[str, int]]]:
    """(username, password, [(host, port)…]) of a netloc listing several hosts."""
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    out: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"REDIS_URL names a server `{item.strip()}` without a port",
                hint=f"{example}; nothing was started",
            )
        out.append((host.strip("[]"), int(port)))
    return unquote(username), unquote(password), out


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL, or a UserError saying how to write it."""
    example = "write it as redis+sentinel://[:password@]host:26379[,host:26379]/mymaster[/0]"
    hint = f"{example}; nothing was started"
    parts = urlsplit(url)
    username, password, sentinels = _hosts(parts.netloc, example)
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise UserError("REDIS_URL must name the master the sentinels watch", hint=hint)
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise UserError(
            f"REDIS_URL has unknown options {sorted(unknown)}",
            hint=f"the only option read is sentinel_password; {hint}",
        )
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=username or None,
        password=password or None,
        sentinel_password=sentinel_password,
    )


def client_for(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """The store's client for ``url`` (decoded replies, a timeout on every call)."""
    if is_cluster(url):
        return _cluster_client(url, max_connections)
    if not is_sentinel(url):
        # A blocking pool: a burst of commands waits briefly for a connection instead of
        # failing with "too many connections" (the default pool raises at its limit).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=5,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )
        return aioredis.Redis.from_pool(pool)  # the client owns the pool
    spec = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(spec.sentinels),
        min_other_sentinels=0,
        sentinel_kwargs={
            "password": spec.sentinel_password,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
        },
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    # A demoted master answers writes with READONLY; that, a refused connection and a timeout
    # are what a failover looks like from here, and all mean "ask the sentinels again".
    client: aioredis.Redis = sentinel.master_for(
        spec.master,
        db=spec.db,
        username=spec.username,
        password=spec.password,
        decode_responses=True,
        max_connections=max_connections,
        health_check_interval=30,
        retry=Retry(_FAILOVER_BACKOFF, _FAILOVER_RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ReadOnlyError],
    )
    return client


def _cluster_client(url: str, max_connections: int) -> aioredis.Redis:
    example = "write it as redis+cluster://[:password@]host:6379[,host:6379]"
    parts = urlsplit(url)
    username, password, nodes = _hosts(parts.netloc, example)
    if parts.path.strip("/") or parts.query:
        raise UserError(
            "REDIS_URL for a cluster takes no database or options (a cluster has database 0 only)",
            hint=f"{example}; nothing was started",
        )
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username or None,
        password=password or None,
        decode_responses=True,
        max_connections=max_connections,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(_FAILOVER_BACKOFF, _FAILOVER_RETRIES),
    )
    # The store uses the commands both clients share (the cluster client routes each by its
    # keys' slot, all of them one slot here), so it takes the cluster client as a Redis.
    return cast(aioredis.Redis, cluster)
