"""Slack posts under a storm: the outbox against posting directly, side by side in one run.

Run from the project root::

    .venv/bin/python -m bench.outbox_bench

The Slack stand-in enforces Slack's per-channel limit (1 message a second, bursts of 3, 429 with
Retry-After: 1 above it) and, during the first STORM_S seconds, fails one call in every few with
a 429, a 5xx, an HTML 502 or a 5xx after the post has landed (the answer is lost). Two writers
post the same messages: BUSY of them to one channel at once (many releases starting together),
then QUIET to a second channel.

- ``outbox``: shipwatch's path: entries in the Redis outbox, written by handlers.outbox at the
  channel's pace (rate 1/s, burst 3), found by their metadata before a resend.
- ``direct``: what a bot without one does: each message posted as soon as it exists, with
  slack_sdk's own retry handlers (connection errors, 429 after Retry-After, 5xx), one task per
  message.

For each: messages lost (never in Slack), doubled (in Slack more than once), 429s answered, how
long the quiet channel's first message waited, and when the last message landed. Prints a table,
then one JSON object on the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.release.rollout import Release
from bot.render.kit import Message
from bot.store.outbox import EntryKind
from bot.store.store import Store
from handlers.client import web_client
from handlers.outbox import OutboxWriter
from tests.support.procs import redis_server
from tests.support.slack_api import BOT_TOKEN, SlackStandIn

BUSY = 60  # messages to one channel, all at once
QUIET = 3  # then these to another channel
STORM_S = 20.0  # failures are injected for this long
FAIL_EVERY_S = 0.7
RATE, BURST = 1.0, 3
SEED = 7
DEADLINE_S = 240.0

FAILURES: list[dict[str, Any]] = [
    {"status": 429, "retry_after": 1},
    {"status": 500},
    {"status": 503, "applied": True},
    {"status": 502, "html": True},
    {"status": 500, "applied": True},
]


def _no_status(release: Release) -> Message:
    raise AssertionError("the bench posts no status messages")


async def _storm(slack: SlackStandIn, rng: random.Random) -> None:
    started = time.monotonic()
    while time.monotonic() - started < STORM_S:
        slack.fail_next("chat.postMessage", **rng.choice(FAILURES))
        await asyncio.sleep(FAIL_EVERY_S)
    slack.clear_failures("chat.postMessage")


def _messages() -> list[tuple[str, str]]:
    return [("#busy", f"busy {n:03d}") for n in range(BUSY)] + [
        ("#quiet", f"quiet {n}") for n in range(QUIET)
    ]


def _tally(slack: SlackStandIn, started: float, quiet_queued: float) -> dict[str, Any]:
    landed = Counter(
        str(m.get("text", "")) for ch in ("#busy", "#quiet") for m in slack.messages(ch)
    )
    expected = [text for _, text in _messages()]
    lost = [t for t in expected if landed[t] == 0]
    doubled = sum(n - 1 for n in landed.values() if n > 1)
    posts = slack.calls_to("chat.postMessage")
    quiet_first = min(
        (c.at for c in posts if c.args.get("channel") == "#quiet" and c.status == 200),
        default=float("nan"),
    )
    last_ok = max((c.at for c in posts if c.status == 200), default=float("nan"))
    return {
        "lost": len(lost),
        "doubled": doubled,
        "answered_429": sum(1 for c in posts if c.status == 429),
        "limit_429": slack.rate_limited,
        "calls": len(posts),
        "quiet_first_s": round(quiet_first - quiet_queued, 2),
        "all_landed_s": round(last_ok - started, 1),
    }


async def run_outbox(redis_url: str) -> dict[str, Any]:
    async with SlackStandIn() as slack:
        slack.limit_rate(RATE, BURST, methods=("chat.postMessage",))
        store = await Store.connect(redis_url)
        await store.redis.flushdb()
        writer = OutboxWriter(
            web_client(BOT_TOKEN, slack.api_url, retries=False),
            store,
            _no_status,
            owner="bench",
            rate=RATE,
            burst=BURST,
        )
        storm = asyncio.create_task(_storm(slack, random.Random(SEED)))
        started = time.monotonic()
        quiet_queued = started
        for channel, text in _messages():
            if channel == "#quiet" and quiet_queued == started:
                quiet_queued = time.monotonic()
            await store.outbox.add(
                channel, channel, EntryKind.POST, text=text, item_id=uuid.uuid4().hex
            )
        writer.start()
        try:
            await writer.flush(DEADLINE_S)
        finally:
            await writer.close()
            storm.cancel()
            await store.close()
        return _tally(slack, started, quiet_queued)


async def run_direct() -> dict[str, Any]:
    async with SlackStandIn() as slack:
        slack.limit_rate(RATE, BURST, methods=("chat.postMessage",))
        client = web_client(BOT_TOKEN, slack.api_url)

        async def post(channel: str, text: str) -> None:
            # What the client gives up on after its own retries is lost.
            with contextlib.suppress(SlackApiError, SlackClientError, TimeoutError):
                await client.chat_postMessage(channel=channel, text=text)

        storm = asyncio.create_task(_storm(slack, random.Random(SEED)))
        started = time.monotonic()
        tasks = [asyncio.create_task(post(c, t)) for c, t in _messages() if c == "#busy"]
        quiet_queued = time.monotonic()
        tasks += [asyncio.create_task(post(c, t)) for c, t in _messages() if c == "#quiet"]
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
        storm.cancel()
        return _tally(slack, started, quiet_queued)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp, redis_server(Path(tmp)) as url:
        outbox = asyncio.run(run_outbox(url))
        direct = asyncio.run(run_direct())
    rows = [
        ("messages lost", "lost"),
        ("messages doubled", "doubled"),
        ("calls answered 429", "answered_429"),
        ("  of them by the channel limit", "limit_429"),
        ("chat.postMessage calls", "calls"),
        ("quiet channel's first post (s)", "quiet_first_s"),
        ("last message landed (s)", "all_landed_s"),
    ]
    print(f"{BUSY} messages to one channel at once, then {QUIET} to another; Slack's limit "
          f"{RATE:g}/s burst {BURST}; failures every {FAIL_EVERY_S}s for {STORM_S:g}s")  # fmt: skip
    print(f"{'':34}{'outbox':>10}{'direct':>10}")
    for label, key in rows:
        print(f"{label:34}{outbox[key]!s:>10}{direct[key]!s:>10}")
    print(json.dumps({"busy": BUSY, "quiet": QUIET, "outbox": outbox, "direct": direct}))


if __name__ == "__main__":
    main()
