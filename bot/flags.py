"""Canary flags: the SDK applications call on their request path, and the writer behind it.

The rollout controller decides *how many* users see the canary; this module decides *which*
ones, inside each application process, without a network round trip per request.

Data model. Redis hash ``keys.flags()`` maps a service to the JSON of its :class:`FlagState`;
every write also publishes the same JSON on ``keys.flags_channel()``. A write goes through one
Lua script (:func:`publish_flag`) that reads the stored ``seq``, stores the new state with
``seq + 1`` and publishes it, all atomically. Concurrent writers are therefore serialised by
Redis, and every published message carries a strictly larger ``seq`` than the one before it
for that service.

Bucketing is Unleash's ``flexibleRollout`` with ``stickiness=userId``: a user is in the canary
iff ``murmur3_32("{group}:{user}") % 100 + 1 <= pct``. Being Unleash-compatible means a service
can move between shipwatch flags and an Unleash server without reshuffling its users, and the
bucket of a user never changes as the percentage rises, so a canary user stays a canary user
from 1% to 100% (no flapping between versions mid-rollout).

Reading (:class:`FlagClient`). One daemon thread per client keeps a local copy of the hash:
it subscribes to the channel, then re-reads the whole hash (so nothing published before the
subscription is lost), then applies messages as they come, and re-reads the hash every
``poll_interval`` as a backstop for anything pub/sub dropped. The request path reads only that
local copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import mmh3
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry
from redis.sentinel import Sentinel

from bot.store import keys
from bot.store.connection import is_sentinel, parse_sentinel_url

log = logging.getLogger(__name__)

Variant = Literal["canary", "stable"]
CANARY: Final = "canary"
STABLE: Final = "stable"

# Bound as module globals so the request path does one global lookup instead of an attribute
# lookup on the mmh3 module per call.
_hash: Final = mmh3.hash

# Connection name of every FlagClient connection (CLIENT LIST / CLIENT KILL).
CLIENT_NAME: Final = "shipwatch-flags"
# How often the subscriber thread looks at its stop flag while no message arrives; it bounds
# how long close() waits. A blocked read cannot be interrupted portably, so it is polled.
_WAKE_INTERVAL: Final = 0.1
# Reconnect backoff after a Redis error: doubles from MIN to MAX, with jitter so that many
# application processes do not reconnect in lockstep after a Redis restart.
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
# How long start() waits for the subscription when Redis answered the initial load.
_READY_TIMEOUT: Final = 5.0


def normalized_number(identifier: str, group_id: str, normalizer: int = 100) -> int:
    """Unleash's bucket of ``identifier`` within ``group_id``: 1..normalizer.

    murmur3 x86_32, seed 0, unsigned, of ``"{group_id}:{identifier}"``; identical to the
    value every Unleash SDK computes for ``flexibleRollout`` / ``gradualRolloutUserId``.
    """
    return mmh3.hash(f"{group_id}:{identifier}", 0, signed=False) % normalizer + 1


def in_canary(pct: int, n: int) -> bool:
    """Whether bucket ``n`` (1..100) is inside a ``pct`` percent rollout."""
    return pct > 0 and n <= pct


@dataclass(frozen=True)
class FlagState:
    """What one service's flag says. ``seq`` is assigned by Redis on write (see publish_flag)."""

    service: str
    pct: int
    canary_version: str
    stable_version: str
    release_id: str
    seq: int
    updated_at: float

    def __post_init__(self) -> None:
        # Validated here because the same object is built from Redis data written by other
        # processes (and, in an incident, by hand): a bad value must fail loudly at the edge.
        if not isinstance(self.service, str) or not self.service:
            raise ValueError(f"flag service must be a non-empty string, got {self.service!r}")
        if not _is_int(self.pct) or not 0 <= self.pct <= 100:
            raise ValueError(
                f"flag pct of {self.service} must be an int in 0..100, got {self.pct!r}"
            )
        if not _is_int(self.seq) or self.seq < 0:
            raise ValueError(f"flag seq of {self.service} must be an int >= 0, got {self.seq!r}")
        for name in ("canary_version", "stable_version", "release_id"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"flag {name} of {self.service} must be a string")
        if not isinstance(self.updated_at, int | float) or isinstance(self.updated_at, bool):
            raise ValueError(f"flag updated_at of {self.service} must be a number")
        object.__setattr__(self, "updated_at", float(self.updated_at))

    def to_json(self) -> str:
        """The wire format stored in the hash and published on the channel."""
        return json.dumps(
            {
                "service": self.service,
                "pct": self.pct,
                "canary_version": self.canary_version,
                "stable_version": self.stable_version,
                "release_id": self.release_id,
                "seq": self.seq,
                "updated_at": self.updated_at,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> FlagState:
        """Parse the wire format. Raises ValueError on anything malformed."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("flag state must be a JSON object")
        fields = (
            "service",
            "pct",
            "canary_version",
            "stable_version",
            "release_id",
            "seq",
            "updated_at",
        )
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f"flag state lacks {', '.join(missing)}")
        pct = _json_int(data["pct"], "pct")
        seq = _json_int(data["seq"], "seq")
        return cls(
            service=data["service"],
            pct=pct,
            canary_version=data["canary_version"],
            stable_version=data["stable_version"],
            release_id=data["release_id"],
            seq=seq,
            updated_at=data["updated_at"],
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_int(value: object, name: str) -> int:
    # Lua numbers are doubles. Redis' cjson prints integral ones as 5, but another writer (or
    # a hand edit during an incident) may well store 5.0: accept that, reject 5.5.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"flag {name} must be an integer, got {value!r}")


# KEYS[1] flags hash; ARGV[1] service, ARGV[2] new state JSON (its seq is ignored),
# ARGV[3] channel. Reading the old seq, writing and publishing in one script is what makes
# seq strictly increasing per service and the publish order equal to the write order, however
# many writers race. A corrupt stored value aborts the write instead of restarting seq at 1,
# which every client would ignore as "older" than what it holds.
_PUBLISH_LUA: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local seq = 0
if current then
  local ok, old = pcall(cjson.decode, current)
  if not ok or type(old) ~= 'table' or type(old['seq']) ~= 'number' then
    return redis.error_reply('stored flag state of ' .. ARGV[1] .. ' is not valid JSON with a seq')
  end
  seq = old['seq']
end
local new = cjson.decode(ARGV[2])
new['seq'] = seq + 1
local encoded = cjson.encode(new)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
redis.call('PUBLISH', ARGV[3], encoded)
return encoded
"""


async def publish_flag(client: aioredis.Redis, state: FlagState) -> FlagState:
    """Store ``state`` and publish it, atomically; returns it with the seq Redis assigned.

    ``state.seq`` is ignored: Redis assigns the stored seq + 1. Raises redis errors unchanged;
    callers translate them at their own boundary (see bot.traffic.flags).
    """
    script = client.register_script(_PUBLISH_LUA)
    raw = await script(
        keys=[keys.flags()], args=[state.service, state.to_json(), keys.flags_channel()]
    )
    return FlagState.from_json(raw)


class FlagStoreError(Exception):
    """Redis did not take or give a flag (the writer's errors, whatever the client library)."""


class FlagWriter:
    """The writing side, for the process that moves traffic (shipwatch's ``flags`` backend).

    Does not own the client it is given. Redis errors come out as :class:`FlagStoreError`, a
    malformed stored state as ``ValueError``.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.key = keys.flags()  # the hash of every service's state, named in error messages

    async def publish(self, state: FlagState) -> FlagState:
        try:
            return await publish_flag(self._client, state)
        except redis.RedisError as exc:
            raise FlagStoreError(str(exc)) from exc

    async def read(self, service: str) -> FlagState | None:
        """The state Redis holds for ``service``, or None when it holds none."""
        try:
            raw = await self._client.hget(self.key, service)
        except redis.RedisError as exc:
            raise FlagStoreError(str(exc)) from exc
        return None if raw is None else FlagState.from_json(raw)


# Per-service entry of a client's local copy: (pct, "{group}:" hash prefix, state). A tuple,
# unpacked on the request path, because that is the cheapest thing CPython can index.
_Route = tuple[int, str, FlagState]

OnChange = Callable[[str, "FlagState | None"], None]


class FlagClient:
    """Local, self-healing copy of every service's flag, for the request path.

    ``variant()`` does no I/O and takes no lock: the subscriber thread builds a new dict on
    every change and swaps the reference, which readers pick up atomically. Until the first
    load (or while Redis has never been reachable) every user gets ``"stable"``: failing
    towards the known-good version is the safe default for a canary system.

    ``on_change(service, state)`` runs after each change the client applies (``state`` is
    None when a service's flag disappeared from Redis): in the caller of start() for the
    initial load, on the subscriber thread afterwards. Keep it short; it delays later updates.

    Redis errors never escape the subscriber thread: it logs a warning, backs off, reconnects
    and re-reads the hash. It is a daemon thread, so a forgotten close() does not hold up
    interpreter shutdown.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        poll_interval: float = 5.0,
        group_id: str | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self._url = redis_url
        self._poll_interval = poll_interval
        self._group_id = group_id
        self._on_change = on_change
        self._routes: dict[str, _Route] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis: redis.Redis | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load every flag once, then follow changes on a daemon thread.

        Does not raise when Redis is down: the client serves "stable" and keeps retrying in
        the background, because an application must not fail to boot over its canary flags.
        """
        if self._thread is not None:
            raise RuntimeError("FlagClient already started")
        # Our own retry loop (with a reload after every reconnect) replaces redis-py's: its
        # silent pub/sub reconnect would resubscribe without re-reading the hash.
        self._redis = _connect(
            self._url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            # TCP keepalive notices a vanished peer; a unix socket (the embedded Redis) has no
            # such option, and redis-py refuses it there.
            **({} if self._url.startswith("unix://") else {"socket_keepalive": True}),
            retry=Retry(NoBackoff(), 0),
            # Shows up in CLIENT LIST, so an operator can tell flag subscribers apart.
            client_name=CLIENT_NAME,
        )
        loaded = False
        try:
            self._reload(self._redis)
            loaded = True
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "flags: initial load from Redis failed (%s); serving stable until it is reachable",
                exc,
            )
        self._thread = threading.Thread(target=self._run, name="shipwatch-flags", daemon=True)
        self._thread.start()
        if loaded:
            # Redis is up, so the subscription is a round trip away: waiting for it makes
            # "start() returned" mean "changes from now on arrive by pub/sub".
            self._ready.wait(_READY_TIMEOUT)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the subscriber thread and release connections. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._redis is not None:
            self._redis.close()

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- request path ----------------------------------------------------------------------

    def variant(self, service: str, user_id: str) -> Variant:
        """``"canary"`` or ``"stable"`` for this user. No I/O, no lock; unknown -> stable."""
        route = self._routes.get(service)
        if route is None:
            return STABLE
        pct, prefix, _ = route
        # hash % 100 + 1 <= pct  <=>  hash % 100 < pct, which is also false for pct == 0, so
        # this single comparison is in_canary(pct, normalized_number(...)).
        return CANARY if _hash(prefix + user_id, 0, False) % 100 < pct else STABLE

    def version(self, service: str, user_id: str) -> str | None:
        """The version this user should be served, or None for a service with no flag."""
        route = self._routes.get(service)
        if route is None:
            return None
        pct, prefix, state = route
        if _hash(prefix + user_id, 0, False) % 100 < pct:
            return state.canary_version
        return state.stable_version

    def pct(self, service: str) -> int:
        """Percent of users on the canary; 0 for a service with no flag."""
        route = self._routes.get(service)
        return 0 if route is None else route[0]

    def state(self, service: str) -> FlagState | None:
        """The flag state this client currently holds for ``service``."""
        route = self._routes.get(service)
        return None if route is None else route[2]

    def wait_for(
        self, service: str, predicate: Callable[[FlagState], bool], timeout: float
    ) -> FlagState:
        """Block until ``service``'s state satisfies ``predicate``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                state = self.state(service)
                if state is not None and predicate(state):
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"flag of {service} did not reach the expected state within "
                        f"{timeout}s (holding {state})"
                    )
                self._changed.wait(remaining)

    # -- subscriber thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._stop.is_set():
            assert self._redis is not None
            try:
                self._follow(self._redis)
            except (redis.RedisError, OSError) as exc:
                if self._stop.is_set():
                    break
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning(
                    "flags: lost Redis (%s: %s); reconnecting in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
            except Exception:
                # A bug must not silently freeze the flags of a running application.
                if self._stop.is_set():
                    break
                delay = backoff * random.uniform(0.5, 1.0)
                log.exception(
                    "flags: unexpected error in the subscriber; restarting in %.2fs", delay
                )
            else:
                break
            if self._ready.is_set():
                # The session got as far as a subscription: this is a fresh outage.
                self._ready.clear()
                backoff = _BACKOFF_MIN
                delay = min(delay, _BACKOFF_MIN)
            else:
                backoff = min(backoff * 2, _BACKOFF_MAX)
            self._stop.wait(delay)

    def _follow(self, client: redis.Redis) -> None:
        """One connected session: subscribe, reload, then apply messages and poll until stop."""
        pubsub: PubSub = client.pubsub()
        try:
            pubsub.subscribe(keys.flags_channel())
            next_poll = time.monotonic() + self._poll_interval
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    self._reload(client)
                    next_poll = now + self._poll_interval
                wait = min(next_poll - now, _WAKE_INTERVAL)
                message = pubsub.get_message(timeout=max(wait, 0.0))
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "message":
                    self._apply_message(message.get("data"))
                elif kind == "subscribe":
                    # Subscribed (first time or after a reconnect): anything written before
                    # this point may have been missed, so re-read the whole hash now.
                    self._reload(client)
                    next_poll = time.monotonic() + self._poll_interval
                    self._ready.set()
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def _reload(self, client: redis.Redis) -> None:
        raw: Mapping[str, str] = client.hgetall(keys.flags())  # type: ignore[assignment]
        self._apply_snapshot(raw)

    def _apply_snapshot(self, raw: Mapping[str, str]) -> None:
        """Replace the local copy with what the hash holds.

        The hash is authoritative, even against a higher cached seq. This is safe against
        reordering because messages and reloads are handled on this one thread: a message
        handled before a reload was published by a script that had already written the hash,
        so the reload sees that write or a newer one. A *lower* seq in the hash therefore only
        happens when Redis lost data (restart without persistence, failover, manual edit),
        and following Redis is the only way to converge with the writers after that.
        """
        old = self._routes
        new: dict[str, _Route] = {}
        changed: list[tuple[str, FlagState | None]] = []
        for service, text in raw.items():
            previous = old.get(service)
            try:
                state = FlagState.from_json(text)
                if state.service != service:
                    raise ValueError(f"it names service {state.service!r}")
            except ValueError as exc:
                log.warning("flags: ignoring malformed flag of %s in Redis: %s", service, exc)
                if previous is not None:
                    new[service] = previous
                continue
            if previous is not None and previous[2] == state:
                new[service] = previous
                continue
            if previous is not None and state.seq < previous[2].seq:
                log.warning(
                    "flags: %s went back from seq %d to %d in Redis (data lost or "
                    "edited); following Redis",
                    service,
                    previous[2].seq,
                    state.seq,
                )
            new[service] = self._route(state)
            changed.append((service, state))
        for service in old.keys() - new.keys():
            log.info("flags: %s no longer has a flag in Redis; serving stable", service)
            changed.append((service, None))
        if changed:
            self._routes = new
            self._notify(changed)

    def _apply_message(self, data: Any) -> None:
        try:
            state = FlagState.from_json(data)
        except (TypeError, ValueError) as exc:
            log.warning("flags: ignoring malformed message on %s: %s", keys.flags_channel(), exc)
            return
        previous = self._routes.get(state.service)
        if previous is not None and state.seq <= previous[2].seq:
            # Out of order or a duplicate (e.g. already picked up by a reload): never go back.
            return
        routes = dict(self._routes)
        routes[state.service] = self._route(state)
        self._routes = routes
        self._notify([(state.service, state)])

    def _route(self, state: FlagState) -> _Route:
        group = self._group_id if self._group_id is not None else state.service
        return (state.pct, f"{group}:", state)

    def _notify(self, changed: list[tuple[str, FlagState | None]]) -> None:
        with self._changed:
            self._changed.notify_all()
        if self._on_change is None:
            return
        for service, state in changed:
            try:
                self._on_change(service, state)
            except Exception:
                log.exception("flags: on_change callback failed for %s", service)


def _connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``; behind Sentinel (``redis+sentinel://…``, as the bot takes it) the
    master the sentinels name, found again by the reconnect loop after a failover."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    spec = parse_sentinel_url(url)
    timeouts: dict[str, Any] = {
        k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options
    }
    sentinel = Sentinel(
        list(spec.sentinels),
        sentinel_kwargs={"password": spec.sentinel_password, **timeouts},
        **timeouts,
    )
    client: redis.Redis = sentinel.master_for(
        spec.master, db=spec.db, username=spec.username, password=spec.password, **options
    )
    return client
