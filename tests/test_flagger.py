"""shipwatch as Flagger's gate, driven by Flagger-shaped webhook calls over HTTP: a Canary
becomes a release with its status message; weight increases are granted one per step the judge
reached; a high-risk canary waits for an approver's click; the judge's rollback is what the
rollback webhook answers; a retried call never starts a second release or grants twice. Also
the verdict Argo Rollouts' AnalysisTemplate web metric reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.release.buttons import ButtonAction
from bot.release.policy import parse_policy
from bot.release.rollout import State
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import CAROL, POLICY, SlackRig, wait_until

TOKEN = "flagger-0123456789abcdef0123"
TOKENS = f"flagger:{TOKEN}:cart|vault"
CART_CHANNEL = "#cart-releases"
VAULT_CHANNEL = "#vault-releases"
FLAGGER_POLICY = (
    POLICY
    + f"""
  cart:
    channel: "{CART_CHANNEL}"
    traffic: {{backend: flagger}}
  vault:
    risk: high
    approvers: [{CAROL}]
    channel: "{VAULT_CHANNEL}"
    traffic: {{backend: flagger}}
"""
)


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with SlackStandIn() as slack:
        rig = SlackRig(
            slack,
            redis_url,
            policy=parse_policy(FLAGGER_POLICY, "flagger tests"),
            extra_settings={"SHIPWATCH_API_TOKENS": TOKENS},
        )
        await rig.start()
        try:
            yield rig
        finally:
            await rig.close()


def canary(name: str, checksum: str = "6d4f8c9b7a", **metadata: str) -> dict[str, Any]:
    """What Flagger POSTs: the Canary, its phase, its revision's checksum, the hook's metadata
    (Flagger sends no headers, so the token rides in the metadata)."""
    return {
        "name": name,
        "namespace": "shop",
        "phase": "Progressing",
        "checksum": checksum,
        "metadata": {"token": TOKEN, "version": "v2", "stable": "v1", **metadata},
    }


async def hook(rig: SlackRig, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with rig.http.post(rig.url(f"/api/v1/flagger/{name}"), data=json.dumps(body)) as resp:
        return resp.status, await resp.json()


async def test_a_canary_is_gated_step_by_step_and_rolled_back_by_the_judge(rig: SlackRig) -> None:
    status, answer = await hook(rig, "confirm-traffic-increase", canary("cart"))
    assert (status, answer["allowed"]) == (403, False)  # nothing started yet

    status, answer = await hook(rig, "confirm-rollout", canary("cart"))
    assert status == 200, answer
    assert answer["release"]["version"] == "v2" and answer["release"]["state"] == "progressing"
    again, _ = await hook(rig, "confirm-rollout", canary("cart"))  # Flagger asks every interval
    assert again == 200
    assert len(await rig.releases("cart")) == 1
    await rig.status_ts(CART_CHANNEL)  # the release's status message is posted

    first, _ = await hook(rig, "confirm-traffic-increase", canary("cart"))
    second, held = await hook(rig, "confirm-traffic-increase", canary("cart"))
    assert (first, second) == (200, 403)
    assert held["reason"].endswith("holds at 1%: not judged past it yet")

    rig.start_controller()
    await wait_until(lambda: EventKind.STEP_ADVANCED in rig.recorder.kinds("cart"), "a step")
    status, _ = await hook(rig, "confirm-traffic-increase", canary("cart"))
    assert status == 200
    assert (await hook(rig, "rollback", canary("cart")))[0] == 403

    rig.source.inject("cart", "latency_p99", 5.0, version="v2")
    await wait_until(lambda: EventKind.ROLLED_BACK in rig.recorder.kinds("cart"), "the rollback")
    status, answer = await hook(rig, "rollback", canary("cart"))
    assert status == 200 and "latency_p99" in answer["reason"]
    assert (await hook(rig, "confirm-promotion", canary("cart")))[0] == 403
    # The same revision asking again does not start it again.
    status, answer = await hook(rig, "confirm-rollout", canary("cart"))
    assert status == 403 and answer["release"]["state"] == "rolled_back"
    assert len(await rig.releases("cart")) == 1


async def test_a_high_risk_canary_waits_for_an_approvers_click(rig: SlackRig) -> None:
    status, answer = await hook(rig, "confirm-rollout", canary("vault"))
    assert status == 403 and answer["release"]["state"] == "pending_approval"
    ts = await rig.status_ts(VAULT_CHANNEL)
    await rig.settle()
    value = rig.button(VAULT_CHANNEL, ts, ButtonAction.APPROVE)

    await rig.click(ButtonAction.APPROVE, value, CAROL, channel=VAULT_CHANNEL, ts=ts)
    await wait_until(lambda: EventKind.APPROVED in rig.recorder.kinds("vault"), "the approval")

    assert (await hook(rig, "confirm-rollout", canary("vault")))[0] == 200
    assert (await hook(rig, "confirm-traffic-increase", canary("vault")))[0] == 200
    release = await rig.release("vault")
    assert release.state in (State.PROGRESSING, State.PENDING_APPROVAL)


async def test_webhooks_without_a_known_token_or_for_other_services_are_refused(
    rig: SlackRig,
) -> None:
    body = canary("cart")
    body["metadata"]["token"] = "not-a-token"
    assert (await hook(rig, "confirm-rollout", body))[0] == 401
    status, answer = await hook(rig, "confirm-rollout", canary("checkout"))
    assert status == 403 and "may not answer Flagger for `checkout`" in answer["error"]
    status, answer = await hook(rig, "promote-please", canary("cart"))
    assert status == 404 and "confirm-traffic-increase" in answer["error"]
    status, answer = await hook(rig, "confirm-rollout", {"name": "Bad Name!", "namespace": "x"})
    assert status in (401, 422)
    assert await rig.releases("cart") == []


async def test_the_verdict_endpoint_says_pass_hold_or_fail_with_the_reason(rig: SlackRig) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def verdict() -> dict[str, Any]:
        async with rig.http.get(rig.url("/api/v1/verdict/cart"), headers=headers) as resp:
            assert resp.status == 200
            answer: dict[str, Any] = await resp.json()
            return answer

    assert (await verdict())["verdict"] == "hold"
    await hook(rig, "confirm-rollout", canary("cart"))
    assert (await verdict())["reason"] == "no clean check yet at 1%"
    rig.start_controller()

    async def passing() -> bool:
        return bool((await verdict())["verdict"] == "pass")

    await wait_until(passing, "a pass")
    rig.source.inject("cart", "error_rate", 20.0, version="v2")

    async def failing() -> bool:
        return bool((await verdict())["verdict"] == "fail")

    await wait_until(failing, "a fail")
    async with rig.http.get(rig.url("/api/v1/verdict/cart")) as resp:
        assert resp.status == 401
