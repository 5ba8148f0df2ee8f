"""The chat outbox against a real Redis and the Slack stand-in: every message once, in order
per thread, paced per channel, urgent ones first, through 429s, 5xx, lost answers, restarts and
two writers at once."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.release.policy import parse_policy
from bot.release.rollout import Release
from bot.render.kit import Message
from bot.render.thread import event_message
from bot.store.outbox import EntryKind
from bot.store.store import Store
from handlers.client import web_client
from handlers.outbox import OutboxWriter
from tests.support.slack_api import BOT_TOKEN, Call, SlackStandIn
from tests.support.slack_rig import (
    ALICE,
    CHECKOUT_CHANNEL,
    SlackRig,
    running_rig,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def store(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Store]:
    s = await Store.connect(redis_url)  # redis_client flushed the database
    yield s
    await s.close()


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as api:
        yield api


def _no_status(release: Release) -> Message:
    raise AssertionError(f"no status message expected for {release.id}")


def writer_for(
    slack: SlackStandIn, store: Store, *, owner: str = "w1", rate: float = 1000, burst: int = 1000
) -> OutboxWriter:
    return OutboxWriter(
        web_client(BOT_TOKEN, slack.api_url, retries=False),
        store,
        _no_status,
        owner=owner,
        rate=rate,
        burst=burst,
        poll=0.05,
        retry_base=0.05,
    )


async def write_all(slack: SlackStandIn, store: Store) -> None:
    """Start a writer, wait until it has written everything queued, and close it."""
    writer = writer_for(slack, store)
    writer.start()
    try:
        assert await writer.flush(10), "the outbox did not empty"
    finally:
        await writer.close()


async def post(store: Store, channel: str, thread: str, text: str, *, urgent: bool = False) -> None:
    await store.outbox.add(
        channel, thread, EntryKind.POST, text=text, urgent=urgent, item_id=uuid.uuid4().hex
    )


def texts(slack: SlackStandIn, channel: str) -> list[str]:
    return [str(m.get("text", "")) for m in slack.messages(channel)]


# --- order and priority ----------------------------------------------------------------------


async def test_urgent_entries_go_first_and_lift_the_earlier_entries_of_their_thread(
    slack: SlackStandIn, store: Store
) -> None:
    await post(store, "#storm", "a", "a1")
    await post(store, "#storm", "b", "b1")
    await post(store, "#storm", "a", "a2")
    await post(store, "#storm", "b", "b2 rollback", urgent=True)
    await post(store, "#storm", "b", "b3")
    await write_all(slack, store)
    # b's thread jumps the line as a whole (b1 before b2), a's keeps its order; b3 was not urgent.
    assert texts(slack, "#storm") == ["b1", "b2 rollback", "a1", "a2", "b3"]


async def test_a_busy_channel_does_not_delay_another(slack: SlackStandIn, store: Store) -> None:
    for n in range(10):
        await post(store, "#busy", "a", f"busy {n}")
    await post(store, "#quiet", "b", "quiet 0")
    writer = writer_for(slack, store, rate=2, burst=1)
    started = time.monotonic()
    writer.start()
    try:
        await wait_until(lambda: texts(slack, "#quiet") == ["quiet 0"], "the quiet channel's post")
        took = time.monotonic() - started
        busy_sent = len(texts(slack, "#busy"))
    finally:
        await writer.close()
    assert took < 1.0, f"the quiet channel waited {took:.2f}s behind the busy one"
    assert busy_sent < 10  # the busy one is still being paced


async def test_two_writers_on_one_redis_send_every_entry_once_and_in_order(
    slack: SlackStandIn, store: Store, redis_url: str
) -> None:
    other = await Store.connect(redis_url)
    channels = ["#one", "#two", "#three"]
    for n in range(6):
        for channel in channels:
            await post(store, channel, "t", f"{channel} {n}")
    writers = [writer_for(slack, store, owner="w1"), writer_for(slack, other, owner="w2")]
    for w in writers:
        w.start()
    try:
        assert await writers[0].flush(20)
    finally:
        for w in writers:
            await w.close()
        await other.close()
    for channel in channels:
        assert texts(slack, channel) == [f"{channel} {n}" for n in range(6)]


# --- what Slack answers ----------------------------------------------------------------------


async def test_a_429_pauses_the_channel_for_its_retry_after_and_nothing_is_lost(
    slack: SlackStandIn, store: Store
) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1, count=2)
    for n in range(3):
        await post(store, "#storm", "t", f"m{n}")
    await write_all(slack, store)
    assert texts(slack, "#storm") == ["m0", "m1", "m2"]
    calls = slack.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 429, 200, 200, 200]
    assert calls[1].at - calls[0].at >= 0.9  # Retry-After was waited out
    assert calls[2].at - calls[1].at >= 0.9


async def test_blocks_slack_refuses_are_sent_again_as_text(
    slack: SlackStandIn, store: Store
) -> None:
    slack.fail_next("chat.postMessage", error="invalid_blocks")
    await store.outbox.add(
        "#storm", "t", EntryKind.POST, text="the words",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "the words"}}],
        item_id="x1",
    )  # fmt: skip
    await write_all(slack, store)
    [message] = slack.messages("#storm")
    assert message["text"] == "the words"
    assert "blocks" not in message


async def test_a_message_slack_refuses_for_good_is_set_aside_and_the_channel_goes_on(
    slack: SlackStandIn, store: Store
) -> None:
    slack.fail_next("chat.postMessage", error="restricted_action")
    await post(store, "#storm", "t", "refused")
    await post(store, "#storm", "t", "next")
    await write_all(slack, store)
    assert texts(slack, "#storm") == ["next"]
    [dead] = await store.outbox.dead_entries()
    assert (dead["text"], dead["reason"]) == ("refused", "restricted_action")


async def test_the_first_post_to_a_channel_whose_answer_was_lost_is_not_sent_again(
    slack: SlackStandIn, store: Store
) -> None:
    # Nothing has told the writer this channel's id yet: it finds it by name to read the history.
    slack.add_channel("brand-new")
    slack.fail_next("chat.postMessage", status=500, applied=True)
    await post(store, "#brand-new", "t", "hello")
    await write_all(slack, store)
    assert texts(slack, "#brand-new") == ["hello"]
    assert slack.calls_to("conversations.list")
    assert await store.outbox.channel_id("#brand-new") == slack.channel_id("#brand-new")


# --- in the whole bot --------------------------------------------------------------------------


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with running_rig(redis_url) as rig:
        yield rig


async def _deploy(rig: SlackRig, text: str = "checkout v2 --stable v1") -> None:
    delivery = await rig.command("/deploy", text, ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    await rig.settle()


async def test_a_thread_reply_whose_answer_was_lost_is_in_slack_once(rig: SlackRig) -> None:
    await _deploy(rig)
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    # Slack posts the reply, and the answer is lost on the way back.
    rig.slack.fail_next("chat.postMessage", status=500, applied=True)
    delivery = await rig.command("/rollout", "pause checkout looking at a graph", ALICE)
    await rig.reply(delivery)
    await rig.settle()

    thread = rig.slack.thread(CHECKOUT_CHANNEL, status["ts"])
    paused = [m for m in thread if "paused" in m["text"]]
    assert len(paused) == 1, [m["text"] for m in thread]
    looked = [
        c for c in rig.slack.calls_to("conversations.replies") if c.args.get("include_all_metadata")
    ]
    assert looked, "the writer should have looked for the post before sending it again"


async def test_a_status_message_whose_answer_was_lost_is_posted_once(rig: SlackRig) -> None:
    await _deploy(rig)
    rollback = await rig.command("/rollback", "checkout not today", ALICE)
    await rig.reply(rollback)
    await rig.settle()
    # The second release's status message lands, and Slack's answer does not arrive.
    rig.slack.fail_next("chat.postMessage", status=503, applied=True)
    await _deploy(rig, "checkout v3 --stable v1")

    statuses = rig.slack.messages(CHECKOUT_CHANNEL)
    assert len(statuses) == 2, [m["text"] for m in statuses]
    assert "checkout v3" in statuses[-1]["text"]
    thread = rig.slack.thread(CHECKOUT_CHANNEL, statuses[-1]["ts"])
    assert thread and all("v3" in m["text"] for m in thread)


# --- a storm of 429s and 5xx with several releases in one channel ------------------------------

STORM_RATE = 4.0  # Slack's ~1 post/s/channel, scaled up so the scenario runs in seconds
STORM_BURST = 2
STORM_POLICY = """
defaults:
  steps: [1, 10, 50, 100]
  hold: 200ms
  interval: 100ms
  window: 1s
  bake: 200ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
services:
""" + "".join(f"  s{n}:\n    channel: '#storm'\n" for n in range(4))


def _posting_calls(slack: SlackStandIn, channel_id: str) -> list[Call]:
    return [
        c
        for c in slack.calls
        if c.method in ("chat.postMessage", "chat.update")
        and slack.channel_id(str(c.args.get("channel", ""))) == channel_id
    ]


async def test_a_storm_of_429s_and_5xx_loses_and_doubles_nothing_and_keeps_the_pace(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    policy = parse_policy(STORM_POLICY, "storm")
    settings: dict[str, Any] = {
        "SHIPWATCH_SLACK_CHANNEL_RATE": STORM_RATE,
        "SHIPWATCH_SLACK_CHANNEL_BURST": STORM_BURST,
    }
    async with running_rig(redis_url, policy=policy, extra_settings=settings) as rig:
        rig.recorder.delivered = None  # the storm is slow on purpose; record as events come
        rig.slack.limit_rate(STORM_RATE, STORM_BURST)
        rng = random.Random(11)
        failures: list[dict[str, Any]] = [
            {"status": 429, "retry_after": 1},
            {"status": 500},
            {"status": 503, "applied": True},
            {"status": 502, "html": True},
            {"status": 500, "applied": True},
        ]

        async def storm() -> None:
            while True:
                method = rng.choice(["chat.postMessage", "chat.update"])
                rig.slack.fail_next(method, **rng.choice(failures))
                await asyncio.sleep(0.4)

        # The first post fails whatever the machine's pace: on a loaded machine the releases can
        # end before the storm's own failures reach a call to #storm.
        rig.slack.fail_next("chat.postMessage", status=500)
        trouble = asyncio.create_task(storm())
        try:
            for n in range(4):
                delivery = await rig.command("/deploy", f"s{n} v2 --stable v1", ALICE)
                assert delivery.status == 200
            rig.start_controller()
            await wait_until(
                lambda: rig.recorder.kinds().count(EventKind.NOTES_FINAL) == 4,
                "every release to finish",
                timeout=30,
            )
        finally:
            trouble.cancel()
        for method in ("chat.postMessage", "chat.update"):
            rig.slack.clear_failures(method)
        await rig.core.app.events.drain()
        assert await rig.notifier.writer.flush(60), "the outbox did not empty"

        channel_id = rig.slack.channel_id("#storm")
        top = rig.slack.messages("#storm")
        announced = [m["text"] for m in rig.slack.messages("#releases")]
        for n in range(4):
            release = await rig.release(f"s{n}")
            events = [e for e in rig.recorder.events if e.release.id == release.id]
            expected = [
                event_message(e, metrics=policy.services[f"s{n}"].metrics).text
                for e in events
                if e.kind is not EventKind.NOTES_FINAL
            ]
            [status] = [m for m in top if m.get("metadata", {}).get("event_payload", {}).get("id")
                        == f"status-{release.id}"]  # fmt: skip
            thread = [m["text"] for m in rig.slack.thread("#storm", status["ts"])]
            assert thread == expected, f"s{n}: thread differs from its events"
            assert f"s{n} v2" in status["text"] and "succeeded" in status["text"].lower()
            # The announcement goes to the announce channel (the policy's default), once.
            assert sum(f"s{n} v2 shipped" in t for t in announced) == 1, announced
        assert len(top) == 4  # one status message per release, none doubled

        calls = _posting_calls(rig.slack, channel_id)
        failed = [c for c in calls if c.status != 200]
        assert failed, "the storm should have failed some calls"
        # The pace: in every 2 s window, at most what the bucket allows (rate x 2 s + burst).
        times = sorted(c.at for c in calls)
        most = max(sum(1 for t in times if start <= t < start + 2.0) for start in times)
        assert most <= STORM_RATE * 2 + STORM_BURST + 1, f"{most} calls in 2 s"
        assert await rig.core.app.store.outbox.pending() == 0
        assert await rig.core.app.store.outbox.dead_entries() == []
