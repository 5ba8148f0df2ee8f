"""First-step sizing through the real product: slash commands into the Slack app as ``serve``
builds it (real Redis, the synthetic demo source, the Slack stand-in), and the release service
on a metrics source that cannot be reached.

The synthetic source answers the stable version's request count with its ``total_requests``
profile; a test sets it to 600 requests a 1s window (noise 0), so at 1% the canary would see 6
of the 20 that ``min_requests`` needs, and 5% (30) is the smallest step that gives enough.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.events import EventBus, EventKind
from bot.engine.service import ReleaseService
from bot.engine.sizing import FirstStepUnsized
from bot.flags import FlagWriter
from bot.judging.sizing import SizingOutcome, Unsized
from bot.metrics.base import TOTAL_REQUESTS_METRIC
from bot.metrics.prometheus import PrometheusSource
from bot.metrics.synthetic import Profile
from bot.release.policy import FirstStep, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.recorder import Recorder
from tests.support.slack_rig import ALICE, CAROL, SlackRig, running_rig

CHANNEL = "#checkout-releases"
PAYMENTS = "#payments-releases"


def policy_text(first_step: FirstStep) -> str:
    return f"""
defaults:
  steps: [1, 10, 50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  first_step: {first_step.value}
  metrics:
    - name: error_rate
      query: 'errors{{service="{{service}}",version="{{version}}"}}'
      max: 0.05
      max_diff: 0.01
      min_requests: 20
services:
  checkout:
    channel: "{CHANNEL}"
  payments:
    risk: high
    approvers: [{CAROL}]
    channel: "{PAYMENTS}"
"""


async def started_rig(redis_url: str, first_step: FirstStep) -> AsyncIterator[SlackRig]:
    """The Slack app on ``first_step``; the fixtures below also take ``redis_client``, which
    flushes the database first."""
    policy = parse_policy(policy_text(first_step), "first-step test")
    async with running_rig(redis_url, policy=policy) as rig:
        # 600 requests a window on the stable version, every time: 10 req/s over a 1s window
        # would be too noisy to test on, so the count is the profile's base, unjittered.
        rig.source.profiles[TOTAL_REQUESTS_METRIC] = Profile(600.0, 0.0)
        yield rig


@pytest.fixture
async def warn_rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async for rig in started_rig(redis_url, FirstStep.WARN):
        yield rig


@pytest.fixture
async def require_rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async for rig in started_rig(redis_url, FirstStep.REQUIRE):
        yield rig


@pytest.fixture
async def auto_rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async for rig in started_rig(redis_url, FirstStep.AUTO):
        yield rig


async def flag_pct(rig: SlackRig, service: str) -> int | None:
    flags = FlagsBackend(FlagWriter(rig.core.app.store.redis))
    state = await flags.flag(service)
    return None if state is None else state.pct


def thread_texts(rig: SlackRig, channel: str, ts: str) -> list[str]:
    return [str(m.get("text", "")) for m in rig.slack.thread(channel, ts)]


async def test_warn_starts_at_1_percent_and_says_the_step_is_too_thin(warn_rig: SlackRig) -> None:
    rig = warn_rig
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)

    answer = await rig.reply(delivery)
    text = answer["text"]
    assert "U0ALICE started checkout v2 (replacing v1)" in text
    assert "at 1% checkout's canary would see ~6 requests in each 1s window" in text
    assert "fewer than the 20 that error_rate's min_requests needs" in text
    assert "Consider starting at 5% (~30 requests per window there)" in text
    assert "/deploy checkout v2 --steps 5,10,50,100" in text
    release = await rig.release("checkout")
    assert (release.state, release.weights, release.weight) == (
        State.PROGRESSING, [1, 10, 50, 100], 1)  # fmt: skip
    assert await flag_pct(rig, "checkout") == 1
    ts = await rig.status_ts(CHANNEL)
    await rig.settle()
    [started] = [t for t in thread_texts(rig, CHANNEL, ts) if "started checkout v2" in t]
    assert "at 1% checkout's canary would see ~6 requests" in started
    [deploy] = await rig.audit("deploy")
    assert deploy.detail["first_step"]["outcome"] == "too_few"
    assert deploy.detail["first_step"]["suggestion"] == [5, 10, 50, 100]


async def test_require_refuses_and_changes_nothing(require_rig: SlackRig) -> None:
    rig = require_rig
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)

    answer = await rig.reply(delivery)
    text = answer["text"]
    assert "cannot deploy checkout v2: at 1% checkout's canary would see ~6 requests" in text
    assert "Nothing was changed" in text and "first_step: require" in text
    assert "/deploy checkout v2 --steps 5,10,50,100" in text
    store = rig.core.app.store
    assert await store.history("checkout") == []
    assert await store.active_index() == {}
    assert await store.get_lock("checkout") is None
    assert await flag_pct(rig, "checkout") is None
    await rig.settle()
    assert rig.recorder.kinds("checkout") == []
    [refused] = await rig.audit("deploy")
    assert (refused.outcome, refused.actor, refused.service) == ("refused", ALICE, "checkout")
    assert "first_step require: canary ~6 of 20 requests" in refused.reason
    assert refused.detail["first_step"]["shortfall"]["need"] == 20

    # The fix the refusal gives goes through.
    fixed = await rig.command("/deploy", "checkout v2 --stable v1 --steps 5,10,50,100", ALICE)
    assert "started checkout v2" in (await rig.reply(fixed))["text"]
    assert (await rig.release("checkout")).weights == [5, 10, 50, 100]
    assert await flag_pct(rig, "checkout") == 5


async def test_auto_starts_at_the_smallest_step_that_gives_enough(auto_rig: SlackRig) -> None:
    rig = auto_rig
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)

    text = (await rig.reply(delivery))["text"]
    assert "starts at 5% instead of 1% (first_step: auto)" in text
    assert "at 5% it would see ~30 per window" in text
    release = await rig.release("checkout")
    assert (release.state, release.weights, release.weight) == (
        State.PROGRESSING, [5, 10, 50, 100], 5)  # fmt: skip
    assert release.holds == [0.3, 0.3, 0.3, 0.3]
    assert await flag_pct(rig, "checkout") == 5
    ts = await rig.status_ts(CHANNEL)
    await rig.settle()
    assert "5% → 10% → 50% → 100%" in rig.slack.thread(CHANNEL, ts)[0]["blocks"][0]["text"]["text"]
    assert any("starts at 5% instead of 1%" in t for t in thread_texts(rig, CHANNEL, ts))


async def test_a_high_risk_release_is_sized_the_same_way(auto_rig: SlackRig) -> None:
    rig = auto_rig
    delivery = await rig.command("/deploy", "payments p2 --stable p1", ALICE)

    assert "starts at 5% instead of 1%" in (await rig.reply(delivery))["text"]
    release = await rig.release("payments")
    assert release.state is State.PENDING_APPROVAL  # the first step still waits for a person
    assert release.weights == [5, 10, 50, 100]
    await rig.settle()
    assert EventKind.APPROVAL_NEEDED in rig.recorder.kinds("payments")


async def test_enough_traffic_says_nothing_more(warn_rig: SlackRig) -> None:
    rig = warn_rig
    rig.source.profiles[TOTAL_REQUESTS_METRIC] = Profile(60_000.0, 0.0)
    text = (await rig.reply(await rig.command("/deploy", "checkout v2 --stable v1", ALICE)))["text"]
    assert "started checkout v2" in text and "would see" not in text
    assert (await rig.release("checkout")).weights == [1, 10, 50, 100]


# --- a metrics source that cannot be reached --------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def service_on_dead_prometheus(
    redis_client: aioredis.Redis, first_step: FirstStep
) -> tuple[ReleaseService, Store, EventBus, Recorder]:
    policy = parse_policy(policy_text(first_step), "first-step test")
    store = Store(redis_client)
    recorder = Recorder()
    events = EventBus([recorder])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    source = PrometheusSource(f"http://127.0.0.1:{closed_port()}", timeout=1.0)
    return ReleaseService(store, policy, actuator, events, source=source), store, events, recorder


ALICE_ACTOR = Actor(user="alice", surface="console")


@pytest.mark.parametrize("first_step", [FirstStep.WARN, FirstStep.AUTO])
async def test_unreachable_metrics_proceed_as_planned_and_say_so(
    redis_client: aioredis.Redis, first_step: FirstStep
) -> None:
    service, store, events, recorder = await service_on_dead_prometheus(redis_client, first_step)
    try:
        result = await service.deploy(ALICE_ACTOR, "checkout", "v2", DeployOptions(stable="v1"))
        assert result.sizing is not None
        assert (result.sizing.outcome, result.sizing.unsized) == (
            SizingOutcome.UNSIZED, Unsized.ERROR)  # fmt: skip
        assert result.release.weights == [1, 10, 50, 100]
        await events.drain()
        [started] = [e for e in recorder.events if e.kind is EventKind.STARTED]
        assert started.sizing == result.sizing
    finally:
        await service.actuator.close()
        await service.source.close() if service.source else None
        await events.close()
    assert await store.active_index() == {"checkout": result.release.id}


async def test_unreachable_metrics_under_require_refuse_and_change_nothing(
    redis_client: aioredis.Redis,
) -> None:
    service, store, events, _ = await service_on_dead_prometheus(redis_client, FirstStep.REQUIRE)
    try:
        with pytest.raises(FirstStepUnsized) as refused:
            await service.deploy(ALICE_ACTOR, "checkout", "v2", DeployOptions(stable="v1"))
    finally:
        await service.actuator.close()
        await service.source.close() if service.source else None
        await events.close()
    assert refused.value.sizing.unsized is Unsized.ERROR
    assert await store.history("checkout") == []
    assert await store.active_index() == {}
    [entry] = await store.audit_tail(10)
    assert (entry.action, entry.outcome) == ("deploy", "refused")
    assert entry.reason == "first_step require: could not size (error)"
