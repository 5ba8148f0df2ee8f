"""An automatic rollback through the whole Slack app (tests.support.slack_rig), for the tests of
what a rollback sets off: pages, tickets.

The rig runs on the test's own Slack stand-in (its fixture flushes Redis first), with the rig's
policy changed for ``checkout`` only; the release is deployed by ``/deploy`` as a person would,
and the synthetic source's latency fault makes the controller roll it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.engine.events import EventKind, ReleaseEvent
from bot.release.policy import Policy, parse_policy
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL, POLICY, SlackRig, wait_until


def checkout_with(source: str, **changes: object) -> Policy:
    """The rig's policy with ``changes`` to the ``checkout`` service's settings (``source``
    names it in policy errors)."""
    base = parse_policy(POLICY, source)
    checkout = base.services["checkout"].model_copy(update=changes)
    return base.model_copy(update={"services": {**base.services, "checkout": checkout}})


@asynccontextmanager
async def running(slack: SlackStandIn, redis_url: str, policy: Policy) -> AsyncIterator[SlackRig]:
    rig = SlackRig(slack, redis_url, policy=policy)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()


async def deploy(rig: SlackRig) -> str:
    """Deploy checkout v2 against v1 by the slash command; the status message's ts."""
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    return await rig.status_ts(CHECKOUT_CHANNEL)


async def event_of(rig: SlackRig, kind: EventKind) -> ReleaseEvent:
    """The first ``kind`` event of checkout, once there is one."""
    await wait_until(lambda: kind in rig.recorder.kinds("checkout"), f"the {kind.value} event")
    return next(e for e in rig.recorder.events if e.kind is kind)


async def roll_back_automatically(rig: SlackRig) -> str:
    """Deploy, break the canary's latency and let the controller roll it back; the status ts."""
    ts = await deploy(rig)
    rig.source.inject("checkout", "latency_p99", 5.0, version="v2")
    rig.start_controller()
    await event_of(rig, EventKind.ROLLED_BACK)
    return ts
