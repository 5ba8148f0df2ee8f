"""The completion summary through the product: ``shipwatch serve``'s core on a real Redis, the
real controller on the synthetic source, the real slack_sdk client against the Slack stand-in
(tests.support.slack_rig), and the real ``openai`` client against its stand-in.

What the thread's success message, the status message and the announcement say is checked
against the record the release ended with: the numbers shown are the code's, whatever a model
writes, and what people typed stays escaped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.judging.thresholds import fmt
from bot.release.rollout import Release, State
from bot.release.summary import CompletionSummary, MomentKind
from bot.render.summary import summary_note
from tests.support.openai_api import OpenAIStandIn
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL, SlackRig, running_rig, wait_until

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]
NOMINAL = "*All metrics nominal*"
ANNOUNCE_CHANNEL = "#releases"


def text_of(message: Json) -> str:
    """A message's fallback text and every text in its blocks."""
    parts = [str(message.get("text", ""))]
    for block in message.get("blocks", []):
        if "text" in block:
            parts.append(str(block["text"]["text"]))
        for element in block.get("elements", []):
            parts.append(str(element.get("text", "")))
    return "\n".join(parts)


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with running_rig(redis_url) as rig:
        yield rig


@pytest.fixture
async def openai_api() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as api:
        yield api


async def deploy(rig: SlackRig, args: str = "checkout v2 --stable v1") -> str:
    delivery = await rig.command("/deploy", args, ALICE)
    assert delivery.status == 200
    assert "started checkout" in (await rig.reply(delivery))["text"]
    return await rig.status_ts(CHECKOUT_CHANNEL)


async def shipped(rig: SlackRig) -> tuple[Release, CompletionSummary, Json, Json, Json]:
    """Once the release succeeded and was announced: the record, its summary, the thread's
    success reply, the status message and the announcement."""
    await wait_until(
        lambda: EventKind.NOTES_FINAL in rig.recorder.kinds("checkout"), "the announcement"
    )
    await rig.settle()
    release = await rig.release("checkout")
    assert release.state is State.SUCCEEDED
    assert release.summary is not None
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    [success] = [
        r
        for r in rig.slack.thread(CHECKOUT_CHANNEL, str(status["ts"]))
        if "succeeded in" in r["text"]
    ]
    [announcement] = rig.slack.messages(ANNOUNCE_CHANNEL)
    return release, release.summary, success, status, announcement


def final_numbers(release: Release) -> list[str]:
    """The last round's canary and baseline numbers, as the code formats them."""
    units = {"latency_p99": "s"}
    out = []
    for check in release.last_checks:
        out += [
            fmt(check.canary, units.get(check.metric, "")),
            fmt(check.control, units.get(check.metric, "")),
        ]
    return out


async def test_a_healthy_release_says_all_metrics_nominal_with_its_real_numbers(
    rig: SlackRig,
) -> None:
    await deploy(rig)
    rig.start_controller()

    release, summary, success, status, announcement = await shipped(rig)

    assert summary.nominal, summary
    assert summary.rounds >= release.evaluations - 1 and not summary.partial
    assert [s.weight for s in summary.steps] == release.weights
    for message in (success, status, announcement):
        said = text_of(message)
        assert NOMINAL in said
        for number in final_numbers(release):
            assert number in said, (number, said)
    assert "is live for everyone" in text_of(success)
    assert success["text"].endswith("; all metrics nominal")
    assert status["text"] == "✅ checkout v2 succeeded: all metrics nominal"
    assert "checkout v2 shipped to 100% of users" in text_of(announcement)
    assert "_(template text: no LLM configured)_" in text_of(announcement)
    assert rig.validate_blocks()


async def test_a_transient_fault_that_recovered_is_told_and_not_nominal(rig: SlackRig) -> None:
    await deploy(rig)
    # Errors 20x the base (0.08 against max 0.05) fail the first round; cleared at once, the
    # failures stop well short of the three in a row that roll back.
    rig.source.inject("checkout", "error_rate", 20.0, version="v2")
    rig.start_controller()

    async def failed_once() -> bool:
        counters = (await rig.release("checkout")).counters.get("error_rate")
        return counters is not None and counters.total_failures >= 1

    await wait_until(failed_once, "a failed error_rate check")
    rig.source.clear("checkout")

    _, summary, success, status, announcement = await shipped(rig)

    assert not summary.nominal
    [failed] = summary.of_kind(MomentKind.FAILED)
    assert failed.metric == "error_rate" and failed.weight == 1 and failed.rounds >= 1
    assert failed.failure_limit == 3
    for message in (success, status, announcement):
        said = text_of(message)
        assert NOMINAL not in said
        assert "*error_rate* failed" in said and "and recovered" in said
        assert fmt(failed.value) in said
    assert "failed check" in success["text"] and "recovered" in success["text"]
    assert summary_note(summary) in status["text"]
    assert rig.validate_blocks()


async def test_hostile_notes_and_versions_stay_escaped_everywhere(rig: SlackRig) -> None:
    # Slack sends <, > and & as entities; the notes hold a broadcast, a link and a user mention.
    typed = "&lt;!channel&gt; free &amp; fast &lt;https://evil.example|click&gt; &lt;@U0EVIL01&gt;"
    await deploy(rig, f"checkout v2+build/7 --stable v1 --notes {typed}")
    rig.start_controller()

    release, _, success, status, announcement = await shipped(rig)

    assert release.notes == "<!channel> free & fast <https://evil.example|click> <@U0EVIL01>"
    for message in (success, status, announcement):
        said = text_of(message)
        assert (
            "<!channel>" not in said and "<https://evil" not in said and "<@U0EVIL01>" not in said
        )
        assert "v2+build/7" in said
    assert "&lt;!channel&gt; free &amp; fast" in text_of(announcement)
    assert rig.validate_blocks()


WRONG = (
    "Checkout v2 reached everyone without a hitch. Errors stayed at 42% and p99 at 9.9 s the "
    "whole time.\nLatency was 7x the control! Customers got faster cart totals."
)


async def test_a_model_paragraph_with_wrong_numbers_never_shows_them(
    redis_url: str, redis_client: aioredis.Redis, openai_api: OpenAIStandIn
) -> None:
    def respond(body: Json) -> str:
        user = str(body["messages"][1]["content"])
        return WRONG if "How the rollout went" in user else "• Faster cart totals."

    openai_api.respond_with(respond)
    settings = {
        "OPENAI_API_KEY": "sk-test-completion-0123456789",
        "OPENAI_BASE_URL": openai_api.base_url,
        "SHIPWATCH_LLM_MODEL": "standin-model-7",
        "SHIPWATCH_LLM_TIMEOUT": 5.0,
    }
    async with running_rig(redis_url, extra_settings=settings) as rig:
        await deploy(rig, "checkout v2 --stable v1 --notes faster cart totals")
        rig.start_controller()

        release, summary, _, _, announcement = await shipped(rig)

        said = text_of(announcement)
        assert "Checkout v2 reached everyone without a hitch." in said
        assert "Customers got faster cart totals." in said
        for wrong in ("42%", "9.9 s", "7x"):
            assert wrong not in said
        assert "_(written by standin-model-7 from the release record)_" in said
        for number in final_numbers(release):
            assert number in said
        assert (NOMINAL in said) is summary.nominal
        [asked] = [
            b
            for b in openai_api.completion_requests()
            if "How the rollout went" in str(b["messages"][1]["content"])
        ]
        facts = str(asked["messages"][1]["content"]).split("<<<FACTS", 1)[1]
        facts = facts.replace("latency_p99", "")
        assert not any(c.isdigit() for c in facts)  # the model is given no numbers to copy
        assert rig.validate_blocks()
