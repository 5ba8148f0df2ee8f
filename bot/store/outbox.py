"""The chat outbox: every message the bot owes a channel, kept in Redis until chat has it.

A message is written here first and sent from here, so a 429, an outage of chat or a restart
delays it but never loses it, and whichever process runs next sends it. Each channel has its
own queue and one writer at a time (a lease), so a busy channel never holds up another and the
writer can pace the channel on its own. Urgent entries (a rollback, an approval) go first;
lifting one lifts the earlier entries of its thread with it, so a thread keeps its order.
Status updates are not queued messages but one mark per release: however often the release
changed, one update goes out, rendered from the record when it is sent.

An entry whose send had no clear answer (a timeout, a 5xx) is kept as ``sending``: before it is
sent again, the writer looks for it in the channel (every post carries its entry id as message
metadata), so it is posted once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from bot.store import keys
from bot.store.redis_io import as_text as _text
from bot.store.redis_io import run

URGENT_BAND = 0
NORMAL_BAND = 10**12  # above any sequence number: every urgent entry sorts first
DEAD_KEPT = 1000
DEAD_TTL_S = 30 * 86400
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


class EntryKind(StrEnum):
    THREAD = "thread"  # a reply in the release's thread (its status message is posted first)
    POST = "post"  # a message of its own in the channel (the announcement)
    FILES = "files"  # files attached in the release's thread (a chart)


@dataclass(frozen=True)
class Entry:
    id: str
    channel: str
    release_id: str
    kind: EntryKind
    text: str
    blocks: list[dict[str, Any]]
    created: float
    files: tuple[tuple[str, bytes], ...] = ()
    attempts: int = 0
    sending: bool = False  # a send whose outcome is unknown: look before sending again

    def describe(self) -> str:
        return f"{self.kind.value} {self.id} of {self.release_id} to {self.channel}"


@dataclass(frozen=True)
class StatusDue:
    """A release whose status message must be brought up to date (or posted)."""

    channel: str
    release_id: str
    generation: int


Next = Entry | StatusDue


ENQUEUE = """
-- KEYS: seq, item, queue, thread set, status zset, status gen, channels
-- ARGV: item id, release id, urgent '1'/'0', now, with status '1'/'0', channel, fields...
local seq = redis.call('INCR', KEYS[1])
local urgent = ARGV[3] == '1'
local band = urgent and 0 or 1000000000000
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[5], 'LT', band + seq, ARGV[2])
  redis.call('HSET', KEYS[6], ARGV[2], seq)
  seq = redis.call('INCR', KEYS[1])
end
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 7))
redis.call('ZADD', KEYS[3], band + seq, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
if urgent then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local score = tonumber(redis.call('ZSCORE', KEYS[3], id))
    if score and score >= 1000000000000 then
      redis.call('ZADD', KEYS[3], score - 1000000000000, id)
    end
  end
  local score = tonumber(redis.call('ZSCORE', KEYS[5], ARGV[2]))
  if score and score >= 1000000000000 then
    redis.call('ZADD', KEYS[5], score - 1000000000000, ARGV[2])
  end
end
redis.call('ZADD', KEYS[7], 'NX', ARGV[4], ARGV[6])
return seq
"""

STATUS_DONE = """
-- KEYS: status zset, status gen   ARGV: release id, generation sent
-- Only the update that showed the newest change clears the mark.
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

ENTRY_DONE = """
-- KEYS: item, queue, thread set   ARGV: item id
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

CHANNEL_IDLE = """
-- KEYS: queue, status zset, channels, owner   ARGV: channel, owner
-- The writer lets a channel go only when nothing is left in it, atomically with the check.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
"""

RENEW = """
-- KEYS: owner   ARGV: owner, ttl ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

LET_GO = """
-- KEYS: owner   ARGV: owner
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Outbox:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(ENQUEUE)
        self._status_done = redis.register_script(STATUS_DONE)
        self._entry_done = redis.register_script(ENTRY_DONE)
        self._channel_idle = redis.register_script(CHANNEL_IDLE)
        self._renew = redis.register_script(RENEW)
        self._let_go = redis.register_script(LET_GO)

    # --- asking for messages ------------------------------------------------------------------

    async def add(
        self,
        channel: str,
        release_id: str,
        kind: EntryKind,
        *,
        item_id: str,
        text: str = "",
        blocks: list[dict[str, Any]] | None = None,
        files: tuple[tuple[str, bytes], ...] = (),
        urgent: bool = False,
        status: bool = False,
    ) -> None:
        """Queue a message for a release (and, with ``status``, an update of its status
        message ahead of it)."""
        now = time.time()
        fields = [
            "id", item_id,
            "channel", channel,
            "release_id", release_id,
            "kind", kind.value,
            "text", text,
            "blocks", json.dumps(blocks or []),
            "files", json.dumps([[name, data.hex()] for name, data in files]),
            "created", repr(now),
            "attempts", "0",
            "sending", "0",
        ]  # fmt: skip
        await run(
            "queueing a chat message",
            self._enqueue(
                keys=[
                    keys.outbox_seq(),
                    keys.outbox_item(item_id),
                    keys.outbox_queue(channel),
                    keys.outbox_thread(channel, release_id),
                    keys.outbox_status(channel),
                    keys.outbox_status_gen(channel),
                    keys.outbox_channels(),
                ],
                args=[
                    item_id,
                    release_id,
                    "1" if urgent else "0",
                    repr(now),
                    "1" if status else "0",
                    channel,
                    *fields,
                ],
            ),
        )

    # --- the writer's side --------------------------------------------------------------------

    async def channels(self) -> list[str]:
        raw = await run("listing chat channels", self.redis.zrange(keys.outbox_channels(), 0, -1))
        return [_text(c) for c in raw]

    async def hold(self, channel: str, owner: str, ttl: float) -> bool:
        """Take or keep the channel for ``owner``; False when another process writes it."""
        held = await run(
            "holding a chat channel",
            self._renew(keys=[keys.outbox_owner(channel)], args=[owner, max(1, int(ttl * 1000))]),
        )
        return bool(held)

    async def let_go(self, channel: str, owner: str) -> None:
        await run(
            "letting a chat channel go",
            self._let_go(keys=[keys.outbox_owner(channel)], args=[owner]),
        )

    async def idle(self, channel: str, owner: str) -> bool:
        """Let the channel go if nothing is left in it; False when something is."""
        done = await run(
            "closing a chat channel",
            self._channel_idle(
                keys=[
                    keys.outbox_queue(channel),
                    keys.outbox_status(channel),
                    keys.outbox_channels(),
                    keys.outbox_owner(channel),
                ],
                args=[channel, owner],
            ),
        )
        return int(done) != 0

    async def next(self, channel: str) -> Next | None:
        """The channel's most pressing entry or status update, without taking it off."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(keys.outbox_queue(channel), 0, 0, withscores=True)
            pipe.zrange(keys.outbox_status(channel), 0, 0, withscores=True)
            queued, statuses = await run("reading a chat queue", pipe.execute())
        if statuses and (not queued or statuses[0][1] <= queued[0][1]):
            release_id = _text(statuses[0][0])
            generation = await run(
                "reading a status mark",
                self.redis.hget(keys.outbox_status_gen(channel), release_id),
            )
            return StatusDue(channel, release_id, int(generation or 0))
        if not queued:
            return None
        item_id = _text(queued[0][0])
        raw = await run("reading a chat entry", self.redis.hgetall(keys.outbox_item(item_id)))
        if not raw:  # the queue outlived its entry (it cannot, but never spin on it)
            await run("dropping a chat entry", self.redis.zrem(keys.outbox_queue(channel), item_id))
            return await self.next(channel)
        return _entry(raw)

    async def sending(self, entry: Entry) -> None:
        """Record that a send starts: if its answer is lost, look before sending again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.outbox_item(entry.id), "sending", "1")
            pipe.hincrby(keys.outbox_item(entry.id), "attempts", 1)
            await run("marking a chat entry", pipe.execute())

    async def not_sent(self, entry: Entry) -> None:
        """Chat said plainly it did not take the message (a 429): no need to look next time."""
        await run(
            "marking a chat entry", self.redis.hset(keys.outbox_item(entry.id), "sending", "0")
        )

    async def done(self, entry: Entry) -> None:
        await run(
            "removing a sent chat entry",
            self._entry_done(
                keys=[
                    keys.outbox_item(entry.id),
                    keys.outbox_queue(entry.channel),
                    keys.outbox_thread(entry.channel, entry.release_id),
                ],
                args=[entry.id],
            ),
        )

    async def dead(self, entry: Entry, reason: str) -> None:
        """Chat refused the entry for good: keep a trace for an operator, and move on."""
        trace = json.dumps(
            {
                "id": entry.id,
                "channel": entry.channel,
                "release_id": entry.release_id,
                "kind": entry.kind.value,
                "text": entry.text[:500],
                "reason": reason,
                "at": time.time(),
            }
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.outbox_dead(), trace)
            pipe.ltrim(keys.outbox_dead(), 0, DEAD_KEPT - 1)
            pipe.expire(keys.outbox_dead(), DEAD_TTL_S)
            await run("recording a refused chat entry", pipe.execute())
        await self.done(entry)

    async def dead_entries(self) -> list[dict[str, Any]]:
        raw = await run(
            "reading refused chat entries", self.redis.lrange(keys.outbox_dead(), 0, -1)
        )
        return [json.loads(_text(r)) for r in raw]

    async def status_done(self, due: StatusDue) -> bool:
        """Clear the mark if no newer change asked for another update; True when cleared."""
        cleared = await run(
            "clearing a status mark",
            self._status_done(
                keys=[keys.outbox_status(due.channel), keys.outbox_status_gen(due.channel)],
                args=[due.release_id, str(due.generation)],
            ),
        )
        return bool(cleared)

    async def posting_status(self, release_id: str, *, done: bool = False) -> bool:
        """Whether an earlier post of the release's status message got no clear answer (and
        from now on, until ``done``, this one counts as such)."""
        key = keys.outbox_status_posting(release_id)
        if done:
            await run("clearing a status post mark", self.redis.delete(key))
            return False
        before = await run(
            "marking a status post", self.redis.set(key, "1", ex=DEAD_TTL_S, get=True)
        )
        return before is not None

    async def channel_id(self, channel: str) -> str:
        """The chat id of a channel named in the policy, once a post has told us; else ""."""
        if CHANNEL_ID.match(channel):
            return channel
        raw = await run("reading a channel id", self.redis.get(keys.outbox_channel_id(channel)))
        return _text(raw) if raw else ""

    async def learn_channel_id(self, channel: str, channel_id: str) -> None:
        if channel_id and channel_id != channel:
            await run(
                "saving a channel id", self.redis.set(keys.outbox_channel_id(channel), channel_id)
            )

    async def pending(self) -> int:
        """How many entries and status updates wait, over every channel."""
        channels = await self.channels()
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zcard(keys.outbox_queue(channel))
                pipe.zcard(keys.outbox_status(channel))
            counts = await run("counting chat entries", pipe.execute())
        return sum(int(c) for c in counts)


def _entry(raw: Mapping[Any, Any]) -> Entry:
    data = {_text(k): _text(v) for k, v in raw.items()}
    return Entry(
        id=data["id"],
        channel=data["channel"],
        release_id=data["release_id"],
        kind=EntryKind(data["kind"]),
        text=data.get("text", ""),
        blocks=json.loads(data.get("blocks") or "[]"),
        created=float(data.get("created") or 0),
        files=tuple(
            (name, bytes.fromhex(hexed)) for name, hexed in json.loads(data.get("files") or "[]")
        ),
        attempts=int(data.get("attempts") or 0),
        sending=data.get("sending") == "1",
    )
