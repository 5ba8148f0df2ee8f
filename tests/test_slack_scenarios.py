"""The Slack app end to end: signed requests in over HTTP, the real core and controller on a
real Redis, and the real slack_sdk client posting to a Slack Web API stand-in.

Every test ends by validating each blocks payload the bot posted with slack_sdk's Block Kit
models.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.judging.thresholds import fmt
from bot.release.buttons import ButtonAction, parse_button_value
from bot.release.commands import USAGE, Verb
from bot.release.rollout import State
from bot.render.mrkdwn import esc
from bot.render.thread import event_message
from tests.support.slack_rig import (
    ALICE,
    BOB,
    CAROL,
    CHECKOUT_CHANNEL,
    DAVE,
    PAYMENTS_CHANNEL,
    SECRET,
    SlackRig,
    running_rig,
    wait_until,
)
from tests.support.slack_signing import retry_headers, sign, slash_command

ACK_WITHIN = 1.5  # seconds; Slack gives an app 3 s to answer


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    # redis_client flushes the database first: every test starts from an empty workspace.
    async with running_rig(redis_url) as rig:
        yield rig


def text_of(message: dict[str, object]) -> str:
    """A message's fallback text and every text in its blocks, for "does it say X" checks."""
    parts = [str(message.get("text", ""))]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.get("blocks", []))
    return "\n".join(parts)


def actions_of(message: dict[str, object]) -> list[str]:
    blocks = message.get("blocks", [])
    assert isinstance(blocks, list)
    return [
        str(element["action_id"])
        for block in blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


async def deploy_checkout(rig: SlackRig) -> str:
    """`/deploy checkout v2 --stable v1` by alice; the status message's ts once it is posted."""
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    ts = await rig.status_ts(CHECKOUT_CHANNEL)
    await rig.settle()
    return ts


# --- 1. a whole release from Slack --------------------------------------------------------


async def test_release_driven_by_command_and_button_runs_to_success(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)

    assert delivery.status == 200
    assert delivery.seconds < ACK_WITHIN
    answer = await rig.reply(delivery)
    assert answer["response_type"] == "ephemeral"
    assert "U0ALICE started checkout v2 (replacing v1)" in answer["text"]
    ts = await rig.status_ts(CHECKOUT_CHANNEL)
    await rig.settle()
    first = rig.slack.message(CHECKOUT_CHANNEL, ts)
    assert "checkout v2 is progressing at 1% (step 1/4)" in first["text"]
    assert actions_of(first)[0] == ButtonAction.ADVANCE

    value = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)
    release = await rig.release("checkout")
    assert parse_button_value(value).release_id == release.id
    click = await rig.click(ButtonAction.ADVANCE, value, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)

    assert click.status == 200
    assert click.seconds < ACK_WITHIN
    clicked = await rig.reply(click)
    assert clicked["response_type"] == "ephemeral"
    assert clicked["replace_original"] is False
    assert "advanced to 10% (step 2/4)" in clicked["text"]
    advanced = await rig.release("checkout")
    assert (advanced.state, advanced.step, advanced.weight) == (State.PROGRESSING, 1, 10)
    [by_hand] = await rig.audit("advance")
    assert by_hand.actor == ALICE and by_hand.surface == "slack"

    rig.start_controller()
    await wait_until(
        lambda: EventKind.SUCCEEDED in rig.recorder.kinds("checkout"), "checkout to succeed"
    )
    await rig.settle()

    done = await rig.release("checkout")
    assert done.state is State.SUCCEEDED
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)  # still the one message
    assert status["ts"] == ts
    versions = rig.slack.versions(CHECKOUT_CHANNEL, ts)
    assert len(versions) >= 5  # posted, then updated in place at every event
    assert "checkout v2 succeeded" in status["text"]
    assert actions_of(status) == []  # nothing left to click
    # One reply per event, in the order the events happened, all in the status's thread.
    replies = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    await wait_until(
        lambda: EventKind.NOTES_FINAL in rig.recorder.kinds("checkout"), "the announcement"
    )
    # The "shipped" announcement goes to the announcement channel, not into the thread.
    events = [e for e in rig.recorder.events if e.kind is not EventKind.NOTES_FINAL]
    [announcement] = rig.slack.messages("#releases")
    assert "checkout v2 shipped to 100% of users" in text_of(announcement)
    sp = rig.policy.service("checkout")
    expected = [
        event_message(e, oncall=sp.oncall, approvers=sp.approvers, metrics=sp.metrics).text
        for e in events
    ]
    assert [r["text"] for r in replies] == expected
    kinds = [e.kind for e in events if e.kind is not EventKind.METRICS_SUMMARY]
    assert kinds == [
        EventKind.STARTED,
        EventKind.STEP_ADVANCED,  # alice's click
        EventKind.STEP_ADVANCED,  # the controller: 50%
        EventKind.BAKING,
        EventKind.SUCCEEDED,
    ]
    assert events[1].actor == ALICE and events[2].actor == "shipwatch"
    assert replies[0]["text"] == "U0ALICE started checkout v2"
    assert "succeeded" in replies[-1]["text"]
    assert status["reply_count"] == len(replies)
    assert rig.validate_blocks() >= len(replies) + len(versions)


# --- 2. a rollback by command -------------------------------------------------------------


async def test_rollback_command_rolls_back_and_pages_the_oncall(rig: SlackRig) -> None:
    ts = await deploy_checkout(rig)

    delivery = await rig.command("/rollback", "checkout customers see errors", ALICE)

    assert delivery.status == 200
    answer = await rig.reply(delivery)
    assert "rolled back: customers see errors" in answer["text"]
    await wait_until(
        lambda: EventKind.ROLLED_BACK in rig.recorder.kinds("checkout"), "the rollback to finish"
    )
    await rig.settle()
    release = await rig.release("checkout")
    assert release.state is State.ROLLED_BACK
    assert release.reason == "customers see errors"
    [rollback] = await rig.audit("rollback")
    assert (rollback.actor, rollback.reason) == (ALICE, "customers see errors")

    replies = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    rolled = [r for r in replies if "rolled back" in r["text"] or "rolling back" in r["text"]]
    assert [r["text"] for r in rolled] == [
        "checkout v2 rolling back: customers see errors",
        "checkout v2 rolled back: customers see errors",
    ]
    for reply in rolled:
        assert f"On-call: <@{DAVE}>" in text_of(reply)
        assert "customers see errors" in text_of(reply)
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert status["ts"] == ts
    assert "checkout v2 is rolled back: customers see errors" in status["text"]
    assert "*Rolled back*: customers see errors" in text_of(status)
    assert actions_of(status) == []
    rig.validate_blocks()


async def test_rollback_button_rolls_back_attributed_to_the_clicker(rig: SlackRig) -> None:
    ts = await deploy_checkout(rig)
    value = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ROLLBACK)

    click = await rig.click(ButtonAction.ROLLBACK, value, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)

    assert click.status == 200
    assert "rolled back" in (await rig.reply(click))["text"]
    await wait_until(
        lambda: EventKind.ROLLED_BACK in rig.recorder.kinds("checkout"), "the rollback to finish"
    )
    await rig.settle()
    release = await rig.release("checkout")
    assert (release.state, release.weight, release.last.by) == (State.ROLLED_BACK, 0, ALICE)
    [rollback] = await rig.audit("rollback")
    assert (rollback.actor, rollback.surface) == (ALICE, "slack")
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert status["ts"] == ts and actions_of(status) == []
    kinds = rig.recorder.kinds("checkout")
    done_at = kinds.index(EventKind.ROLLED_BACK)
    assert kinds[done_at - 1] is EventKind.ROLLBACK_STARTED
    # After the rollback, and never before it: the written diagnosis.
    await wait_until(lambda: EventKind.DIAGNOSIS in rig.recorder.kinds("checkout"), "diagnosis")
    assert rig.recorder.kinds("checkout").index(EventKind.DIAGNOSIS) > done_at
    thread = [text_of(m) for m in rig.slack.thread(CHECKOUT_CHANNEL, ts)]
    rolled = next(t for t in thread if "rolled back" in t.lower() and "On-call" in t)
    assert f"On-call: <@{DAVE}>" in rolled
    rig.validate_blocks()


async def test_pause_and_rollback_buttons_name_the_clicker_as_one_working_mention(
    rig: SlackRig,
) -> None:
    ts = await deploy_checkout(rig)
    pause = await rig.click(
        ButtonAction.PAUSE,
        rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.PAUSE),
        ALICE,
        channel=CHECKOUT_CHANNEL,
        ts=ts,
    )
    paused = await rig.reply(pause)
    await rig.settle()
    rollback = await rig.click(
        ButtonAction.ROLLBACK,
        rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ROLLBACK),
        ALICE,
        channel=CHECKOUT_CHANNEL,
        ts=ts,
    )
    rolled = await rig.reply(rollback)
    await wait_until(
        lambda: EventKind.ROLLED_BACK in rig.recorder.kinds("checkout"), "the rollback to finish"
    )
    await rig.settle()
    rig.validate_blocks()

    thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    [paused_reply] = [r for r in thread if "paused" in r["text"]]
    shown = [paused, rolled, paused_reply, *thread, rig.slack.message(CHECKOUT_CHANNEL, ts)]
    for message in shown:
        # Escaped markup renders as the literal text "<@U0ALICE>", not as a mention.
        assert "&lt;@" not in text_of(message), text_of(message)
    for reply in (paused_reply, thread[-2]):  # paused, rolling back
        section = reply["blocks"][0]["text"]["text"]
        assert section.count(ALICE) == 1 and f"<@{ALICE}>" in section, section


# --- 3. an automatic rollback ---------------------------------------------------------------


async def test_latency_fault_rolls_back_and_the_thread_names_the_numbers(rig: SlackRig) -> None:
    ts = await deploy_checkout(rig)
    assert {m.name for m in rig.policy.service("checkout").metrics} == {
        "error_rate",
        "latency_p99",
    }
    rig.start_controller()
    await wait_until(
        lambda: EventKind.STEP_ADVANCED in rig.recorder.kinds("checkout"), "the first advance"
    )

    rig.source.inject("checkout", "latency_p99", 5.0, version="v2")
    await wait_until(
        lambda: EventKind.ROLLED_BACK in rig.recorder.kinds("checkout"), "the automatic rollback"
    )
    await rig.settle()

    release = await rig.release("checkout")
    assert release.state is State.ROLLED_BACK
    assert "latency_p99" in release.reason
    [decision] = await rig.audit("decision:rollback")
    latency = next(c for c in decision.detail["checks"] if c["metric"] == "latency_p99")
    assert latency["outcome"] == "fail"
    assert latency["canary"] > 2 * latency["control"] > 0
    [started] = [r for r in rig.slack.thread(CHECKOUT_CHANNEL, ts) if "rolling back" in r["text"]]
    said = text_of(started)
    assert "*What failed*" in said
    assert (
        f"*latency_p99*: canary *{fmt(latency['canary'], 's')}*, limit `ratio 2x`, "
        f"control {fmt(latency['control'], 's')} (critical)"
    ) in said
    assert f"<@{DAVE}>" in said
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert "rolled back" in status["text"] and actions_of(status) == []
    rig.validate_blocks()


# --- 4. approvals ---------------------------------------------------------------------------


async def test_requester_cannot_approve_and_the_approver_can(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "payments p2 --stable p1", ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    ts = await rig.status_ts(PAYMENTS_CHANNEL)
    await rig.settle()
    waiting = await rig.release("payments")
    assert waiting.state is State.PENDING_APPROVAL
    value = rig.button(PAYMENTS_CHANNEL, ts, ButtonAction.APPROVE)
    versions_before = len(rig.slack.versions(PAYMENTS_CHANNEL, ts))
    replies_before = len(rig.slack.thread(PAYMENTS_CHANNEL, ts))

    own = await rig.click(ButtonAction.APPROVE, value, ALICE, channel=PAYMENTS_CHANNEL, ts=ts)

    refusal = await rig.reply(own)
    assert refusal["response_type"] == "ephemeral"
    assert "you may not approve your own release of `payments`" in refusal["text"]
    assert f"{CAROL} (not the requester)" in refusal["text"]
    await rig.settle()
    still = await rig.release("payments")
    assert (still.state, still.rev, still.approvals) == (State.PENDING_APPROVAL, waiting.rev, [])
    assert len(rig.slack.versions(PAYMENTS_CHANNEL, ts)) == versions_before
    assert len(rig.slack.thread(PAYMENTS_CHANNEL, ts)) == replies_before
    [refused] = await rig.audit("approve")
    assert (refused.actor, refused.outcome) == (ALICE, "refused")
    assert refused.reason == "requester cannot approve"

    theirs = await rig.click(ButtonAction.APPROVE, value, CAROL, channel=PAYMENTS_CHANNEL, ts=ts)

    approved = await rig.reply(theirs)
    assert "advanced to 1% (step 1/4)" in approved["text"]
    await rig.settle()
    release = await rig.release("payments")
    assert (release.state, release.step, release.weight) == (State.PROGRESSING, 0, 1)
    assert [(a.step, a.by) for a in release.approvals] == [(0, CAROL)]
    audit = await rig.audit("approve")
    assert [(e.actor, e.outcome) for e in audit] == [(ALICE, "refused"), (CAROL, "ok")]
    assert audit[1].from_state == State.PENDING_APPROVAL
    assert audit[1].to_state == State.PROGRESSING
    replies = rig.slack.thread(PAYMENTS_CHANNEL, ts)
    assert f"<@{CAROL}> approved *1%*" in text_of(replies[replies_before])
    [status] = rig.slack.messages(PAYMENTS_CHANNEL)
    assert "payments p2 is progressing at 1% (step 1/4)" in status["text"]
    rig.validate_blocks()


# --- 5. a stale button ----------------------------------------------------------------------


async def test_a_button_from_an_earlier_step_is_refused_as_out_of_date(rig: SlackRig) -> None:
    ts = await deploy_checkout(rig)
    old = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)
    first = await rig.click(ButtonAction.ADVANCE, old, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)
    await rig.reply(first)
    await rig.settle()
    moved = await rig.release("checkout")
    assert (moved.step, moved.weight) == (1, 10)
    assert parse_button_value(rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)).step == 1
    versions = len(rig.slack.versions(CHECKOUT_CHANNEL, ts))
    replies = len(rig.slack.thread(CHECKOUT_CHANNEL, ts))

    # Bob still has the first version of the message on screen: its button says step 0.
    assert rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE, version=0) == old
    stale = await rig.click(ButtonAction.ADVANCE, old, BOB, channel=CHECKOUT_CHANNEL, ts=ts)

    answer = await rig.reply(stale)
    assert answer["response_type"] == "ephemeral"
    assert "this button is out of date" in answer["text"]
    assert "checkout#1 (v2) is progressing at 10% (step 2/4)" in answer["text"]
    await rig.settle()
    after = await rig.release("checkout")
    assert (after.step, after.rev) == (1, moved.rev)
    assert len(await rig.audit("advance")) == 1
    assert len(rig.slack.versions(CHECKOUT_CHANNEL, ts)) == versions
    assert len(rig.slack.thread(CHECKOUT_CHANNEL, ts)) == replies
    rig.validate_blocks()


async def test_a_bot_on_the_synthetic_source_says_demo_metrics_on_every_status(
    rig: SlackRig,
) -> None:
    ts = await deploy_checkout(rig)  # the rig has no PROMETHEUS_URL: synthetic metrics
    versions = rig.slack.versions(CHECKOUT_CHANNEL, ts)
    assert versions and all("DEMO METRICS" in text_of(v) for v in versions)


@pytest.mark.parametrize("value", ["not-ours", "a1b2:0", "x" * 3000, "<!channel>:1:2"])
async def test_a_forged_button_value_is_refused_plainly_and_changes_nothing(
    rig: SlackRig, value: str
) -> None:
    ts = await deploy_checkout(rig)
    before = await rig.release("checkout")
    forged = await rig.click(ButtonAction.ROLLBACK, value, BOB, channel=CHECKOUT_CHANNEL, ts=ts)

    answer = await rig.reply(forged)
    assert answer["response_type"] == "ephemeral"
    assert "that is not a shipwatch button" in answer["text"]
    assert "something went wrong" not in answer["text"]  # a bad request, not a bug
    await rig.settle()
    after = await rig.release("checkout")
    assert (after.state, after.rev) == (before.state, before.rev)


async def test_a_thread_slack_cannot_read_is_still_answered(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    ts = await deploy_checkout(rig)
    # A proxy in front of Slack answers an HTML page, past the client's retries.
    rig.slack.fail_next("conversations.replies", status=502, html=True, count=3)
    before = len(rig.slack.thread(CHECKOUT_CHANNEL, ts))

    status = await rig.mention(
        "how is it going?", BOB, channel=CHECKOUT_CHANNEL, thread_ts=ts, event_id="Ev0HTML502"
    )

    assert status == 200
    await wait_until(lambda: len(rig.slack.thread(CHECKOUT_CHANNEL, ts)) == before + 1, "answer")
    assert any(
        "cannot read thread" in r.getMessage() and "HTTP 502" in r.getMessage()
        for r in caplog.records
    )


async def test_what_a_person_typed_is_kept_as_typed_and_shown_escaped_once(
    rig: SlackRig,
) -> None:
    # Slack sends `a < b & c` as entities; a broadcast typed as text comes the same way.
    typed = "a &lt; b &amp; c &lt;!channel&gt;"
    answer = await rig.reply(await rig.command("/rollout", f"lock checkout {typed}", ALICE))

    lock = await rig.core.app.store.get_lock("checkout")
    assert lock is not None and lock.reason == "a < b & c <!channel>"
    assert "a &lt; b &amp; c &lt;!channel&gt;" in text_of(answer)  # escaped once, shown right
    assert "&amp;lt;" not in text_of(answer) and "<!channel>" not in text_of(answer)


# --- 6. Slack's redelivery of a slash command ------------------------------------------------


async def test_a_retried_slash_command_starts_one_release(rig: SlackRig) -> None:
    url = rig.new_response_url("C0RELEASES", ALICE)
    body = slash_command("/deploy", "checkout v2 --stable v1", user_id=ALICE, response_url=url)

    first = await rig.deliver(body, sign(SECRET, body))
    # The identical request again, as a retry, while the first may still be working.
    second = await rig.deliver(body, sign(SECRET, body) | retry_headers(1))

    assert (first[0], second[0]) == (200, 200)
    await wait_until(lambda: len(rig.slack.responses(url)) == 2, "both answers")
    await rig.status_ts(CHECKOUT_CHANNEL)
    await rig.settle()
    texts = sorted(r["text"] for r in rig.slack.responses(url))
    assert sum(t.startswith("(already applied)") for t in texts) == 1, texts
    assert len(await rig.releases("checkout")) == 1
    assert len(await rig.audit("deploy")) == 1
    assert rig.recorder.kinds("checkout").count(EventKind.STARTED) == 1
    assert len(rig.slack.messages(CHECKOUT_CHANNEL)) == 1
    rig.validate_blocks()


async def test_a_replayed_lock_after_an_unlock_does_not_lock_again(rig: SlackRig) -> None:
    url = rig.new_response_url("C0RELEASES", ALICE)
    lock = slash_command("/rollout", "lock checkout incident 42", user_id=ALICE, response_url=url)
    assert (await rig.deliver(lock, sign(SECRET, lock)))[0] == 200
    await wait_until(lambda: len(rig.slack.responses(url)) == 1, "the lock's answer")
    unlocked = await rig.reply(await rig.command("/rollout", "unlock checkout", ALICE))
    assert "unlocked" in unlocked["text"]

    # The same signed request again (Slack's retry of it, or a replay within five minutes).
    assert (await rig.deliver(lock, sign(SECRET, lock) | retry_headers(1)))[0] == 200
    await wait_until(lambda: len(rig.slack.responses(url)) == 2, "the replay's answer")
    await rig.settle()
    assert await rig.core.app.store.get_lock("checkout") is None
    assert len(await rig.audit("lock")) == 1


# --- 7. requests not from Slack -------------------------------------------------------------


async def test_bad_signature_and_stale_timestamp_are_refused(rig: SlackRig) -> None:
    url = rig.new_response_url("C0RELEASES", ALICE)
    body = slash_command("/deploy", "checkout v2 --stable v1", user_id=ALICE, response_url=url)

    forged, _ = await rig.deliver(body, sign("not-the-secret", body))
    tampered, _ = await rig.deliver(
        body.replace(b"v2", b"v3"), sign(SECRET, body)
    )  # signed body != sent body
    old = int(time.time()) - 6 * 60
    replayed, _ = await rig.deliver(body, sign(SECRET, body, timestamp=old))

    assert (forged, tampered, replayed) == (401, 401, 401)
    await rig.settle()
    # Nothing after the bot's own auth.test at start: the forged requests reached nothing.
    assert [c.method for c in rig.slack.calls] == ["auth.test"]
    assert rig.slack.responses(url) == []
    assert await rig.audit() == []
    assert await rig.releases("checkout") == []

    # The very same body, properly signed and fresh, is acted on: the refusals were the check.
    accepted, _ = await rig.deliver(body, sign(SECRET, body))
    assert accepted == 200
    await wait_until(lambda: bool(rig.slack.responses(url)), "the accepted command's answer")
    assert len(await rig.releases("checkout")) == 1
    await rig.status_ts(CHECKOUT_CHANNEL)
    await rig.settle()
    rig.validate_blocks()


# --- 8. permissions -------------------------------------------------------------------------


async def test_an_unauthorized_deploy_is_refused_naming_who_may(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "ledger v2 --stable v1", BOB)

    assert delivery.status == 200
    answer = await rig.reply(delivery)
    assert answer["response_type"] == "ephemeral"
    assert "you may not deploy `ledger`" in answer["text"]
    assert f"Who may: <@{ALICE}>" in answer["text"]  # a working mention, not a raw id
    await rig.settle()
    [refused] = await rig.audit()
    assert (refused.action, refused.actor, refused.service, refused.outcome) == (
        "deploy",
        BOB,
        "ledger",
        "refused",
    )
    assert ALICE in refused.reason
    assert await rig.releases("ledger") == []
    assert rig.slack.calls_to("chat.postMessage") == []
    assert rig.recorder.events == []
    rig.validate_blocks()


# --- 9. a misspelt service ------------------------------------------------------------------


async def test_a_misspelt_service_gets_a_suggestion_and_changes_nothing(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "chekout v2", ALICE)

    assert delivery.status == 200
    answer = await rig.reply(delivery)
    assert answer["response_type"] == "ephemeral"
    assert "unknown service `chekout`" in answer["text"]
    assert "did you mean `checkout`?" in answer["text"]
    await rig.settle()
    assert await rig.audit() == []
    assert await rig.releases("checkout") == []
    assert rig.slack.calls_to("chat.postMessage") == []
    rig.validate_blocks()


async def test_a_misspelt_service_reply_shows_the_usage(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "chekout v2", ALICE)

    answer = await rig.reply(delivery)
    rig.validate_blocks()
    assert "did you mean `checkout`?" in answer["text"]
    assert esc(USAGE[Verb.DEPLOY]) in text_of(answer)  # as Slack shows it: <service>


# --- 10. a restart in the middle of a release ---------------------------------------------


async def test_after_a_restart_the_same_status_message_is_updated(rig: SlackRig) -> None:
    ts = await deploy_checkout(rig)
    value = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)
    posts_before = len(rig.slack.calls_to("chat.postMessage"))

    await rig.restart()  # a new process: new core, notifier, bolt app and HTTP server
    click = await rig.click(ButtonAction.ADVANCE, value, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)

    assert click.status == 200
    assert "advanced to 10% (step 2/4)" in (await rig.reply(click))["text"]
    await wait_until(
        lambda: EventKind.STEP_ADVANCED in rig.recorder.kinds("checkout"), "the advance event"
    )
    await rig.settle()
    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert status["ts"] == ts
    assert "checkout v2 is progressing at 10% (step 2/4)" in status["text"]
    updates = [c for c in rig.slack.calls_to("chat.update") if c.ok]
    assert updates and updates[-1].args["ts"] == ts
    assert updates[-1].args["channel"] == rig.slack.channel_id(CHECKOUT_CHANNEL)
    # The one new post after the restart is the thread reply, in the same thread.
    new_posts = rig.slack.calls_to("chat.postMessage")[posts_before:]
    assert [c.args.get("thread_ts") for c in new_posts] == [ts]
    assert rig.slack.thread(CHECKOUT_CHANNEL, ts)[-1]["text"] == (
        "checkout v2 is at 10% (step 2/4)"
    )
    rig.validate_blocks()


# --- 11. a status update Slack keeps failing -------------------------------------------------


async def test_a_failed_status_update_is_retried_until_the_message_is_current(
    rig: SlackRig,
) -> None:
    ts = await deploy_checkout(rig)
    release = await rig.release("checkout")
    value = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)
    updates_before = len(rig.slack.calls_to("chat.update"))
    rig.slack.fail_next("chat.update", status=500, count=10)

    click = await rig.click(ButtonAction.ADVANCE, value, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)
    await rig.reply(click)
    await rig.settle()

    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert status["ts"] == ts
    assert "checkout v2 is progressing at 10% (step 2/4)" in status["text"]
    assert rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE).startswith(f"{release.id}:1:")
    updates = rig.slack.calls_to("chat.update")[updates_before:]
    # The outbox's client does not retry by itself: each failure is one call, then the update.
    assert [c.status for c in updates] == [500] * 10 + [200]
    assert all(c.args["ts"] == ts for c in updates)
    # The thread kept its order: the reply went out after the status update it follows.
    thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    assert thread[-1]["text"] == "checkout v2 is at 10% (step 2/4)"
    assert (
        len(rig.slack.calls_to("chat.postMessage")) == len(thread) + 1
    )  # the status message itself, posted once
    rig.validate_blocks()


# --- 12. health, readiness and metrics -------------------------------------------------------


async def test_health_readiness_and_metrics_endpoints(rig: SlackRig) -> None:
    await deploy_checkout(rig)

    async with rig.http.get(rig.url("/healthz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with rig.http.get(rig.url("/readyz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"ready": True, "problems": {}}
    async with rig.http.get(rig.url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        exposition = await resp.text()
    series = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line.startswith("shipwatch_")
    }
    assert "shipwatch_active_releases" in series
    assert "shipwatch_command_seconds_count" in series
    assert "shipwatch_active_releases 1.0" in exposition.splitlines()
    assert 'shipwatch_command_seconds_count{command="deploy"}' in exposition
    rig.validate_blocks()


# --- mentions ------------------------------------------------------------------------------


async def test_a_mention_in_the_thread_is_answered_once_even_when_redelivered(
    rig: SlackRig,
) -> None:
    ts = await deploy_checkout(rig)
    replies = len(rig.slack.thread(CHECKOUT_CHANNEL, ts))

    first = await rig.mention(
        "how is it going?", BOB, channel=CHECKOUT_CHANNEL, thread_ts=ts, event_id="Ev0MENTION1"
    )
    await wait_until(
        lambda: len(rig.slack.thread(CHECKOUT_CHANNEL, ts)) == replies + 1, "the answer"
    )
    again = await rig.mention(
        "how is it going?",
        BOB,
        channel=CHECKOUT_CHANNEL,
        thread_ts=ts,
        event_id="Ev0MENTION1",
        retry=1,
    )

    # A fresh mention after the redelivery: once it is answered, the redelivery (acked and
    # handed to its listener earlier) has had its turn too.
    later = await rig.mention(
        "and now?", BOB, channel=CHECKOUT_CHANNEL, thread_ts=ts, event_id="Ev0MENTION2"
    )
    await wait_until(
        lambda: len(rig.slack.thread(CHECKOUT_CHANNEL, ts)) >= replies + 2, "the second answer"
    )

    assert (first, again, later) == (200, 200, 200)
    await rig.settle()
    thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    assert len(thread) == replies + 2  # one answer per distinct event, none for the retry
    for answer in thread[replies:]:
        assert "checkout v2 is progressing at 1% (step 1/4)" in answer["text"]
        assert answer["thread_ts"] == ts
    assert len(rig.slack.messages(CHECKOUT_CHANNEL)) == 1
    rig.validate_blocks()


async def test_a_status_update_slack_refused_until_a_restart_is_sent_by_the_next_process(
    rig: SlackRig,
) -> None:
    ts = await deploy_checkout(rig)
    value = rig.button(CHECKOUT_CHANNEL, ts, ButtonAction.ADVANCE)
    # Slack keeps failing the update for longer than this process lives.
    rig.slack.fail_next("chat.update", status=500, count=1000)
    click = await rig.click(ButtonAction.ADVANCE, value, ALICE, channel=CHECKOUT_CHANNEL, ts=ts)
    await rig.reply(click)
    await wait_until(
        lambda: len(rig.slack.calls_to("chat.update")) >= 3, "the update to fail a few times"
    )

    await rig.restart()
    assert await rig.core.app.store.outbox.pending() >= 1  # still owed, in Redis
    rig.slack.clear_failures("chat.update")  # Slack is back
    await rig.settle()

    [status] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert status["ts"] == ts
    assert "at 10% (step 2/4)" in status["text"]
    thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
    assert [m["text"] for m in thread].count("checkout v2 is at 10% (step 2/4)") == 1
    assert await rig.core.app.store.outbox.pending() == 0
    rig.validate_blocks()


# --- secrets --------------------------------------------------------------------------------


async def test_the_bots_own_secrets_and_pasted_credentials_never_reach_slack(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Pasted in the notes: the bot's own signing secret (no shape to spot), a bot token, a
    # connection string password; and a pause reason carrying a Stripe key.
    notes = f"rotated {SECRET}; token xoxb-1234567890-abcdefghij; Pwd=Tr0ub4dor9;"
    delivery = await rig.command("/deploy", f"checkout v2 --stable v1 --notes {notes}", ALICE)
    await rig.reply(delivery)
    pause = await rig.command("/rollout", "pause checkout key sk_live_51H8abcdEFGH0123", ALICE)
    await rig.reply(pause)
    await rig.settle()

    sent = json.dumps([c.args for c in rig.slack.calls]) + json.dumps(
        [rig.slack.responses(url) for url in rig.response_urls]
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET, "xoxb-1234567890-abcdefghij", "Tr0ub4dor9", "sk_live_51H8abcdEFGH0123"):
        assert secret not in sent, f"{secret} reached Slack"
        assert secret not in logged, f"{secret} reached the log"
    assert "[redacted]" in sent
    assert "rotated" in sent  # the rest of the notes came through
