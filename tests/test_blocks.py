"""Block Kit messages: every kind validates with slack_sdk's models and stays within Slack's
limits, buttons per state, opaque button values, mentions, truncation, terminal rendering."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    SectionBlock,
    TextObject,
)

from bot.engine.events import EventKind, ReleaseEvent
from bot.release.buttons import (
    ButtonAction,
    ButtonRef,
    button_value,
    parse_button_value,
    stale_reason,
)
from bot.release.checks import CheckResult, Outcome, ScoreRecord
from bot.release.policy import Metric, Risk, Strategy, TrafficSettings, parse_policy
from bot.release.rollout import (
    CONTROLLER,
    Actor,
    GateRecord,
    Release,
    advance,
    approve,
    finish_rollback,
    new_release,
    pause,
    request_approval,
    resume,
    start_rollback,
    succeed,
)
from bot.render.kit import Choice, Message, ephemeral, fit, plain_message
from bot.render.mrkdwn import clip, esc, mention
from bot.render.status import status_message
from bot.render.terminal import render_text
from bot.render.thread import ACTION_EDIT_NOTES, event_message, notes_modal

NOW = 1_700_000_000.0
ALICE = Actor(user="U012AB3CD", surface="slack")
BOB = Actor(user="U045EF6GH", surface="slack")
ONCALL = "S0ONCALL12"
APPROVERS = ["U045EF6GH", "S0APPROV34"]

POLICY = """
defaults:
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      unit: ratio
      max: 0.05
      max_diff: 0.01
    - name: latency_p99
      query: 'p99{service="{service}",version="{version}"}'
      unit: s
      max_ratio: 2
      critical: true
services:
  checkout: {}
"""
METRICS: list[Metric] = list(parse_policy(POLICY, "test").services["checkout"].metrics)

PASSING = CheckResult(
    metric="error_rate",
    outcome=Outcome.PASS,
    canary=0.0041,
    control=0.0038,
    reason="error_rate: 0.0041 within limits (control 0.0038)",
)
FAILING = replace(
    PASSING,
    metric="latency_p99",
    outcome=Outcome.FAIL,
    canary=1.9,
    control=0.25,
    reason="latency_p99: 1.9 s is 7.60x control (limit 2x)",
    limit="ratio 2x",
    critical=True,
)
CHECKS = [PASSING, FAILING]


# --- releases in every state, made with the real transitions ---------------------------------


def fresh(risk: str = "normal", **changes: Any) -> Release:
    release = new_release(
        release_id="a1b2c3d4e5f6",
        number=7,
        service="checkout",
        version="v2.4.1",
        stable_version="v2.4.0",
        weights=[1, 10, 25, 50, 100],
        holds=[900.0] * 5,
        interval=30.0,
        bake=3600.0,
        strategy=Strategy.CANARY,
        risk=Risk(risk),
        notes="",
        actor=ALICE,
        now=NOW - 600,
    )
    return release.model_copy(update={"rev": 3, "last_eval_at": NOW - 5, **changes})


def progressing() -> Release:
    return advance(fresh(), CONTROLLER, NOW - 300, "hold passed").model_copy(
        update={"last_checks": [PASSING]}
    )


def progressing_high() -> Release:
    return approve(fresh("high"), BOB, NOW - 300)


def pending_first() -> Release:
    return fresh("high")


def pending_later() -> Release:
    return request_approval(progressing_high(), CONTROLLER, NOW - 60, "hold passed")


def paused() -> Release:
    return pause(progressing(), ALICE, NOW - 30, "checking a dashboard <first> & more")


def baking() -> Release:
    release = progressing()
    for _ in range(3):
        release = advance(release, CONTROLLER, NOW - 100, "hold passed")
    return release


def succeeded() -> Release:
    return succeed(baking(), CONTROLLER, NOW)


def rolling_back() -> Release:
    release = progressing().model_copy(update={"last_checks": CHECKS})
    return start_rollback(release, CONTROLLER, NOW - 2, "latency_p99 failed (critical)")


def rolled_back() -> Release:
    return finish_rollback(rolling_back(), CONTROLLER, NOW)


STATES: dict[str, Callable[[], Release]] = {
    "progressing": progressing,
    "progressing_high": progressing_high,
    "pending_first": pending_first,
    "pending_later": pending_later,
    "paused": paused,
    "baking": baking,
    "succeeded": succeeded,
    "rolling_back": rolling_back,
    "rolled_back": rolled_back,
}


# --- validation with slack_sdk's Block Kit models -------------------------------------------


def units(text: str) -> int:
    """Length as Slack counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def assert_valid(message: Message) -> None:
    """Every block parses into slack_sdk's model, validates (nested elements too), and
    round-trips unchanged (no key Slack does not know); and every limit holds."""
    assert 1 <= len(message.blocks) <= 50
    assert message.text.strip()
    assert units(message.text) <= 3000
    for raw in message.blocks:
        block = Block.parse(raw)
        assert block is not None, raw
        block.validate_json()
        assert block.to_dict() == raw
        if isinstance(block, HeaderBlock):
            assert block.text is not None and units(block.text.text) <= 150
        if isinstance(block, SectionBlock):
            if block.text is not None:
                assert units(block.text.text) <= 3000
                assert block.text.text.count("```") % 2 == 0  # no code block left open
            assert len(block.fields or []) <= 10
            for field in block.fields or []:
                assert 1 <= units(field.text) <= 2000
        if isinstance(block, ContextBlock):
            assert 1 <= len(block.elements) <= 10
            for element in block.elements:
                assert isinstance(element, TextObject)  # the builders use text elements only
                assert 1 <= units(element.text) <= 3000
        if isinstance(block, ActionsBlock):
            for element in block.elements:
                element.validate_json()
                assert isinstance(element, ButtonElement)
                assert element.text is not None and units(element.text.text) <= 75
                assert element.action_id is not None and len(element.action_id) <= 255
                assert element.value is not None and len(element.value) <= 2000
                if element.confirm is not None:
                    element.confirm.validate_json()


def buttons(message: Message) -> list[dict[str, Any]]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def all_text(message: Message) -> str:
    """Every mrkdwn/plain text in the message, joined."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text"):
                out.append(str(node["text"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.blocks)
    return "\n".join(out)


# --- the status message ----------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("oncall", ["", ONCALL])
def test_status_message_validates_in_every_state(state: str, oncall: str) -> None:
    release = STATES[state]()
    message = status_message(release, oncall=oncall, approvers=APPROVERS, now=NOW, metrics=METRICS)
    assert_valid(message)
    header = message.blocks[0]
    assert header["type"] == "header"
    assert "checkout v2.4.1" in header["text"]["text"]
    assert "checkout" in message.text and "v2.4.1" in message.text
    assert ("<!subteam^S0ONCALL12>" in all_text(message)) is bool(oncall)


PAUSE = ("Pause", ButtonAction.PAUSE)
ROLL_BACK = ("Roll back", ButtonAction.ROLLBACK)
BUTTONS_BY_STATE = [
    ("progressing", [("Advance", ButtonAction.ADVANCE), PAUSE, ROLL_BACK]),
    (
        "progressing_high",
        [
            ("Approve next step", ButtonAction.ADVANCE),
            ("Pause", ButtonAction.PAUSE),
            ("Roll back", ButtonAction.ROLLBACK),
        ],
    ),
    ("pending_first", [("Approve", ButtonAction.APPROVE), PAUSE, ROLL_BACK]),
    ("pending_later", [("Approve", ButtonAction.APPROVE), PAUSE, ROLL_BACK]),
    ("paused", [("Resume", ButtonAction.RESUME), ("Roll back", ButtonAction.ROLLBACK)]),
    ("baking", [("Pause", ButtonAction.PAUSE), ("Roll back", ButtonAction.ROLLBACK)]),
    ("rolling_back", []),
    ("succeeded", []),
    ("rolled_back", []),
]


@pytest.mark.parametrize(("state", "expected"), BUTTONS_BY_STATE)
def test_buttons_by_state(state: str, expected: list[tuple[str, str]]) -> None:
    release = STATES[state]()
    found = buttons(status_message(release, now=NOW))
    assert [(b["text"]["text"], b["action_id"]) for b in found] == expected
    for button in found:
        assert parse_button_value(button["value"]) == ButtonRef(release.id, release.step, 3)
    forward = (ButtonAction.ADVANCE, ButtonAction.APPROVE, ButtonAction.RESUME)
    if found and found[0]["action_id"] in forward:
        assert found[0]["style"] == "primary"
    assert not [
        b for b in found if b.get("style") == "danger" and b["action_id"] != ButtonAction.ROLLBACK
    ]


def test_roll_back_is_dangerous_and_asks_for_confirmation() -> None:
    (rollback,) = [
        b
        for b in buttons(status_message(progressing(), now=NOW))
        if b["action_id"] == ButtonAction.ROLLBACK
    ]
    assert rollback["style"] == "danger"
    confirm = rollback["confirm"]
    assert confirm["title"]["text"] == "Roll back checkout v2.4.1?"
    assert "`v2.4.0`" in confirm["text"]["text"]  # where the traffic goes
    assert confirm["confirm"]["text"] == "Roll back"
    assert confirm["deny"]["text"] == "Cancel"


def test_pending_approval_names_approvers_and_says_the_requester_cannot_approve() -> None:
    text = all_text(status_message(pending_later(), approvers=APPROVERS, now=NOW))
    assert "Approval needed* for step 2/5 (*10%*)" in text
    assert "<@U045EF6GH>, <!subteam^S0APPROV34>" in text
    assert "<@U012AB3CD> started this release and cannot approve it" in text


def test_status_shows_progress_weight_time_and_the_metrics_table() -> None:
    release = progressing().model_copy(update={"last_checks": CHECKS})
    message = status_message(release, now=NOW, metrics=METRICS)
    text = all_text(message)
    assert "🟩 1%  🔵 *10%*  ⬜ 25%  ⬜ 50%  ⬜ 100%" in text
    assert "10% · step 2/5" in text
    assert "5m of 15m hold" in text  # advanced at NOW - 300, hold 900 s
    # The table: canary vs control with each metric's limits from the policy.
    assert "max 0.05, diff +0.01" in text
    assert "1.9 s" in text and "0.25 s" in text and "max_ratio" not in text
    assert "ratio 2x" in text
    assert "latency_p99: 1.9 s is 7.60x control (limit 2x)" in text  # the failing reason


def test_status_without_policy_metrics_shows_the_failing_checks_limit() -> None:
    release = progressing().model_copy(update={"last_checks": CHECKS})
    text = all_text(status_message(release, now=NOW))
    assert "ratio 2x" in text


def test_paused_and_rolled_back_say_why() -> None:
    assert "checking a dashboard &lt;first&gt; &amp; more" in all_text(
        status_message(paused(), now=NOW)
    )
    message = status_message(rolled_back(), now=NOW)
    assert "latency_p99 failed (critical)" in all_text(message)
    assert "took 10m" in all_text(message)


def test_score_line_is_shown_when_present() -> None:
    score = ScoreRecord(value=97.0, verdict="pass", text="canary score 97 (pass; pass ≥ 95)")
    release = progressing().model_copy(update={"last_score": score})
    assert "🟢 canary score 97 (pass; pass ≥ 95)" in all_text(status_message(release, now=NOW))


def test_gates_are_shown_compactly_with_links_to_their_runs() -> None:
    gates = GateRecord(
        required=["ci_build", "tests"],
        results={"ci_build": "passed", "tests": "passed"},
        links={"tests": "https://ci.test/runs/4711?a=1&b=2"},
        source="status_url",
    )
    message = status_message(progressing().model_copy(update={"gates": gates}), now=NOW)
    assert_valid(message)
    assert "🛡️ Gates: ✅ ci_build · ✅ <https://ci.test/runs/4711?a=1&amp;b=2|tests>" in all_text(
        message
    )
    assert "Forced" not in all_text(message)
    assert "Gates" not in all_text(status_message(progressing(), now=NOW))  # none required


def test_a_forced_release_says_who_forced_it_past_which_gates() -> None:
    gates = GateRecord(
        required=["ci_build", "security_scan", "compliance"],
        results={"ci_build": "passed", "security_scan": "failed"},
        source="status_url",
        forced_by=BOB.user,
        overridden={"security_scan": "failed", "compliance": "missing"},
    )
    message = status_message(progressing().model_copy(update={"gates": gates}), now=NOW)
    assert_valid(message)
    text = all_text(message)
    assert (
        "⚠️ *Forced* by <@U045EF6GH> past gates that had not passed: "
        "security_scan (failed), compliance (missing)"
    ) in text
    assert "✅ ci_build · ❌ security_scan · ❔ compliance" in text
    # The console shows the same warning.
    rendered, _ = render_text(message)
    assert "⚠️ Forced by @U045EF6GH past gates that had not passed" in rendered


def test_a_release_forced_while_the_gates_were_unknown_says_why() -> None:
    gates = GateRecord(
        required=["tests"],
        source="status_url",
        problem="the gates status URL http://ci.test/gates/checkout/v2 answered HTTP 502",
        forced_by=ALICE.user,
        overridden={"tests": "unknown"},
    )
    text = all_text(status_message(progressing().model_copy(update={"gates": gates}), now=NOW))
    assert "past gates that had not passed: tests (unknown)" in text
    assert "could not be read: the gates status URL http://ci.test/gates/checkout/v2 answered" in (
        text
    )


# --- button values ---------------------------------------------------------------------------


def test_button_value_round_trips() -> None:
    release = progressing()
    value = button_value(release)
    assert value == f"{release.id}:1:3"
    assert parse_button_value(value) == ButtonRef(release.id, 1, 3)


@pytest.mark.parametrize(
    "junk",
    ["", "abc", "a:b:c", "id:1", "id:-1:0", "id:1:2:3", "x y:1:2", "id:１:0", ":1:2", "id:1:"],
)
def test_junk_button_values_are_refused(junk: str) -> None:
    with pytest.raises(ValueError, match="not a shipwatch button value"):
        parse_button_value(junk)


def test_a_stale_value_parses_but_carries_the_old_step() -> None:
    shown = progressing()
    ref = parse_button_value(button_value(shown))
    moved = advance(shown, CONTROLLER, NOW, "hold passed")
    assert ref.step == 1 and moved.step == 2
    assert stale_reason(shown, ref, ButtonAction.ADVANCE) == ""
    assert "step 3/5" in stale_reason(moved, ref, ButtonAction.ADVANCE)
    # Stopping stays possible while the release moves on; moving forward does not.
    assert stale_reason(moved, ref, ButtonAction.PAUSE) == ""
    assert stale_reason(moved, ref, ButtonAction.ROLLBACK) == ""


def test_a_second_click_on_approve_cannot_approve_again() -> None:
    shown = pending_first()
    ref = parse_button_value(button_value(shown))
    approved = approve(shown, BOB, NOW)
    assert approved.step == shown.step  # the same step: only the state tells them apart
    assert stale_reason(shown, ref, ButtonAction.APPROVE) == ""
    assert "progressing" in stale_reason(approved, ref, ButtonAction.APPROVE)


def test_clicks_on_a_finished_or_other_release_are_stale() -> None:
    release = rolled_back()
    ref = parse_button_value(button_value(release))
    assert "rolled_back" in stale_reason(release, ref, ButtonAction.ROLLBACK)
    other = ButtonRef("ffffffffffff", release.step, release.rev)
    assert "another release" in stale_reason(progressing(), other, ButtonAction.PAUSE)
    assert "unknown button" in stale_reason(progressing(), ref, "something_else")


def test_resume_is_stale_once_resumed() -> None:
    shown = paused()
    ref = parse_button_value(button_value(shown))
    assert stale_reason(shown, ref, ButtonAction.RESUME) == ""
    assert "progressing" in stale_reason(resume(shown, ALICE, NOW), ref, ButtonAction.RESUME)


# --- mentions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("U012AB3CD", "<@U012AB3CD>"),
        ("W0123ABCD", "<@W0123ABCD>"),
        ("S0123ABCD", "<!subteam^S0123ABCD>"),
        ("@checkout-oncall", "@checkout-oncall"),
        ("alice", "alice"),
        ("SREOPSTEAM", "SREOPSTEAM"),  # no digit: a name, not an id
        ("a<b>&c", "a&lt;b&gt;&amp;c"),
    ],
)
def test_mentions(who: str, expected: str) -> None:
    assert mention(who) == expected


# --- thread replies --------------------------------------------------------------------------


EVENT_STATE = {
    EventKind.STARTED: progressing,
    EventKind.STEP_ADVANCED: progressing,
    EventKind.APPROVAL_NEEDED: pending_later,
    EventKind.APPROVED: progressing_high,
    EventKind.METRICS_SUMMARY: progressing,
    EventKind.PAUSED: paused,
    EventKind.RESUMED: progressing,
    EventKind.BAKING: baking,
    EventKind.SUCCEEDED: succeeded,
    EventKind.ROLLBACK_STARTED: rolling_back,
    EventKind.ROLLED_BACK: rolled_back,
    EventKind.TRAFFIC_FAILED: rolling_back,
    EventKind.TRAFFIC_REPAIRED: progressing,
    EventKind.DIAGNOSIS: rolled_back,
    EventKind.NOTES_DRAFT: progressing,
    EventKind.NOTES_FINAL: succeeded,
    EventKind.TICKET_FILED: rolled_back,
    EventKind.PAGED: rolled_back,
    EventKind.PAGE_FAILED: rolling_back,
    EventKind.HANDED_BACK: succeeded,
    EventKind.WATCH_FINDING: succeeded,
    EventKind.WATCH_CLOSED: succeeded,
    EventKind.WATCH_SUPERSEDED: succeeded,
    EventKind.HOOKS_PASSED: progressing,
    EventKind.HOOK_FAILED: progressing,
}


def test_every_event_kind_has_a_state_here() -> None:
    assert set(EVENT_STATE) == set(EventKind)


@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("with_checks", [False, True])
def test_every_event_validates(kind: EventKind, with_checks: bool) -> None:
    release = EVENT_STATE[kind]()
    event = ReleaseEvent(
        kind,
        release,
        "something happened",
        actor="U045EF6GH",
        checks=CHECKS if with_checks else (),
        at=NOW,
    )
    message = event_message(event, oncall=ONCALL, approvers=APPROVERS, metrics=METRICS)
    assert_valid(message)
    assert "checkout" in message.text
    # Release buttons live on the status message only; the notes draft has its Edit button.
    expected = [ACTION_EDIT_NOTES] if kind is EventKind.NOTES_DRAFT else []
    assert [b["action_id"] for b in buttons(message)] == expected


def test_a_success_on_a_pool_engine_says_how_to_hand_back_and_the_handback_says_who() -> None:
    pools = TrafficSettings(backend="webhook", url="https://lb.example/shipwatch")
    done = event_message(ReleaseEvent(EventKind.SUCCEEDED, succeeded(), ""), traffic=pools)
    assert_valid(done)
    assert (
        "Everyone is on the canary pool. Put `v2.4.1` on the stable pool too, then "
        "`/rollout handback checkout` moves everyone there"
    ) in all_text(done)
    plain = event_message(ReleaseEvent(EventKind.SUCCEEDED, succeeded(), ""))
    assert "handback" not in all_text(plain)  # the embedded flags carry the versions
    argo = TrafficSettings(backend="argo-rollouts", namespace="shop")
    by_argo = event_message(ReleaseEvent(EventKind.SUCCEEDED, succeeded(), ""), traffic=argo)
    assert "handback" not in all_text(by_argo)  # Argo makes the canary stable itself
    aborted = event_message(ReleaseEvent(EventKind.ROLLED_BACK, rolled_back(), ""), traffic=argo)
    assert_valid(aborted)
    assert "the Rollout's `spec.template` still names `v2.4.1`" in all_text(aborted)
    flagger = TrafficSettings(backend="flagger")
    asked = event_message(ReleaseEvent(EventKind.ROLLED_BACK, rolled_back(), ""), traffic=flagger)
    assert "Flagger rolls the canary back when it next calls its `rollback` webhook" in all_text(
        asked
    )
    assert "spec.template" not in all_text(asked)

    back = event_message(ReleaseEvent(EventKind.HANDED_BACK, succeeded(), "", actor="U045EF6GH"))
    assert_valid(back)
    assert all_text(back).startswith(
        "↪️ *checkout* `v2.4.1` handed back by <@U045EF6GH>: everyone is on the stable pool "
        "again, which runs `v2.4.1` now"
    ), all_text(back)
    assert back.text == "checkout v2.4.1: handed back to the stable pool"


def test_started_event_gives_the_plan_and_short_notes() -> None:
    release = progressing().model_copy(update={"notes": "n" * 5000})
    message = event_message(ReleaseEvent(EventKind.STARTED, release, "", actor="U012AB3CD"))
    text = all_text(message)
    assert "<@U012AB3CD> started *checkout* `v2.4.1` (replacing `v2.4.0`)" in text
    assert "Plan: 1% → 10% → 25% → 50% → 100%" in text
    assert "truncated: /rollout status checkout shows the rest" in text
    assert units(text) < 1000


def test_step_advanced_event_gives_weight_and_step() -> None:
    event = ReleaseEvent(EventKind.STEP_ADVANCED, progressing(), "held 15m, every check green")
    text = all_text(event_message(event))
    assert "*10%* (step 2/5)" in text
    assert " by " not in text.split("\n")[0]  # the controller is not named as a person
    assert text.endswith("held 15m, every check green")  # why the controller advanced


def test_a_persons_advance_says_who_and_no_why() -> None:
    event = ReleaseEvent(EventKind.STEP_ADVANCED, progressing(), actor="U045EF6GH")
    message = event_message(event)
    assert len(message.blocks) == 1
    assert "*10%* (step 2/5) by <@U045EF6GH>" in all_text(message)


def test_approval_needed_event_mentions_the_approvers() -> None:
    event = ReleaseEvent(EventKind.APPROVAL_NEEDED, pending_later(), "hold passed")
    text = all_text(event_message(event, approvers=APPROVERS))
    assert "<@U045EF6GH>, <!subteam^S0APPROV34>" in text
    assert "cannot approve" in text


def test_approved_and_resumed_name_who_did_it() -> None:
    approved = ReleaseEvent(EventKind.APPROVED, progressing_high(), "ok", actor="U045EF6GH")
    assert "<@U045EF6GH> approved *1%*" in all_text(event_message(approved))
    resumed = ReleaseEvent(EventKind.RESUMED, progressing(), "resumed", actor="U045EF6GH")
    assert "resumed at *10%* by <@U045EF6GH>" in all_text(event_message(resumed))


def test_paused_event_gives_the_reason() -> None:
    event = ReleaseEvent(EventKind.PAUSED, paused(), "error_rate query failed 3 times")
    text = all_text(event_message(event))
    assert "paused at *10%*: error_rate query failed 3 times" in text


def test_metrics_summary_is_the_table() -> None:
    event = ReleaseEvent(EventKind.METRICS_SUMMARY, progressing(), "holding", checks=CHECKS)
    text = all_text(event_message(event, metrics=METRICS))
    assert "```" in text
    assert "error_rate" in text and "latency_p99" in text and "0.0041" in text


def test_succeeded_event_gives_the_total_time() -> None:
    event = ReleaseEvent(EventKind.SUCCEEDED, succeeded(), "live", at=NOW)
    assert "Took 10m." in all_text(event_message(event))


@pytest.mark.parametrize("kind", [EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK])
def test_rollback_names_the_failing_value_limit_and_control_and_pages(kind: EventKind) -> None:
    release = rolling_back() if kind is EventKind.ROLLBACK_STARTED else rolled_back()
    # The rolled-back event carries no checks: the failing one comes from the release.
    checks = CHECKS if kind is EventKind.ROLLBACK_STARTED else ()
    event = ReleaseEvent(kind, release, "rolled back", checks=checks)
    message = event_message(event, oncall=ONCALL, metrics=METRICS)
    text = all_text(message)
    assert "*latency_p99*: canary *1.9 s*, limit `ratio 2x`, control 0.25 s (critical)" in text
    assert "error_rate" not in text.split("What failed")[1]  # the passing metric is not blamed
    assert "<!subteam^S0ONCALL12>" in text
    assert "latency_p99 failed (critical)" in message.text


def test_traffic_failure_is_loud() -> None:
    event = ReleaseEvent(
        EventKind.TRAFFIC_FAILED, rolling_back(), "the webhook answered 503"
    )
    message = event_message(event, oncall=ONCALL)
    assert message.blocks[0]["type"] == "header"
    assert "FAILED" in message.blocks[0]["text"]["text"]
    text = all_text(message)
    assert "*rollback is NOT applied yet, retrying: the webhook answered 503*" in text
    assert "<!subteam^S0ONCALL12>" in text
    assert message.text.startswith("TRAFFIC CHANGE FAILED")


# --- command replies -------------------------------------------------------------------------


def test_ephemeral_reply_with_usage() -> None:
    message = ephemeral("unknown command `frob` <here>", usage="/rollout help")
    assert_valid(message)
    text = all_text(message)
    assert "unknown command `frob` &lt;here&gt;" in text
    assert "Usage: `/rollout help`" in text
    assert "/rollout help" in message.text


def test_ephemeral_reply_is_truncated() -> None:
    message = ephemeral("x" * 10_000)
    assert_valid(message)
    assert "(truncated)" in all_text(message)


# --- limits: huge content is cut, never rejected -----------------------------------------------


def many_checks(count: int) -> list[CheckResult]:
    return [
        replace(FAILING, metric=f"metric_with_a_long_name_{i:03d}", reason="r" * 400)
        for i in range(count)
    ]


def test_huge_status_message_is_truncated_within_the_limits() -> None:
    release = paused().model_copy(
        update={
            "notes": "note " * 1000,  # 5,000 characters
            "reason": "why " * 1500,
            "last_checks": many_checks(200),
            "version": "v" + "9" * 127,
        }
    )
    message = status_message(release, oncall=ONCALL, approvers=APPROVERS * 50, now=NOW)
    assert_valid(message)
    assert message.blocks[-1]["type"] == "actions"  # the buttons survive the cut
    text = all_text(message)
    assert "(truncated" in text
    assert "more metric(s)" in text  # the table is cut between rows and says how many are left
    assert units(message.blocks[0]["text"]["text"]) <= 150


def test_huge_summary_event_is_truncated_within_the_limits() -> None:
    event = ReleaseEvent(
        EventKind.METRICS_SUMMARY, progressing(), "m" * 5000, checks=many_checks(300)
    )
    message = event_message(event)
    assert_valid(message)
    assert "truncated: /rollout status checkout shows the rest" in all_text(message)


def test_fit_keeps_fifty_blocks_and_the_buttons() -> None:
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"line {i}"}} for i in range(80)
    ]
    actions = {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "B" * 200},
                "action_id": "a" * 300,
                "value": "v" * 3000,
            }
        ],
    }
    message = fit([*sections, actions], "t" * 4000, more="look elsewhere")
    assert_valid(message)
    assert len(message.blocks) == 50
    assert message.blocks[-1]["type"] == "actions"
    assert "32 more block(s) left out (truncated: look elsewhere)" in all_text(message)
    assert message.text.endswith("… (truncated: look elsewhere)")


def test_fit_caps_fields_and_confirm_dialogs() -> None:
    section = {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2500}] * 14}
    button = {
        "type": "button",
        "text": {"type": "plain_text", "text": "Roll back"},
        "action_id": ButtonAction.ROLLBACK,
        "value": "x:1:2",
        "style": "danger",
        "confirm": {
            "title": {"type": "plain_text", "text": "T" * 150},
            "text": {"type": "mrkdwn", "text": "t" * 400},
            "confirm": {"type": "plain_text", "text": "C" * 40},
            "deny": {"type": "plain_text", "text": "Cancel"},
        },
    }
    message = fit([section, {"type": "actions", "elements": [button]}], "text")
    assert_valid(message)
    fields = message.blocks[0]["fields"]
    assert len(fields) == 10 and fields[-1]["text"] == "… 5 more"


def test_clip_keeps_mentions_entities_emoji_and_code_blocks_whole() -> None:
    text = "x" * 2985 + "<@U012AB3CD> and more"
    cut = clip(text, 3000, "p")
    assert units(cut) <= 3000 and cut.count("<") == cut.count(">")
    entity = clip("y" * 2990 + "&amp;&amp;&amp;&amp;", 3000)
    assert re.search(r"&(?!amp;)", entity) is None  # every & still starts a whole &amp;
    emoji = clip("🟩" * 2000, 3000, "p")
    assert units(emoji) <= 3000 and "🟩" in emoji
    code = clip("```\n" + "row\n" * 1000 + "```", 300, "p")
    assert code.count("```") == 2 and units(code) <= 300
    assert clip("short", 3000, "p") == "short"


# --- terminal rendering --------------------------------------------------------------------


def test_render_text_numbers_the_buttons() -> None:
    release = progressing().model_copy(update={"last_checks": CHECKS, "notes": "a <b> & c"})
    message = status_message(release, oncall=ONCALL, now=NOW, metrics=METRICS)
    text, choices = render_text(message)
    assert "[1] Advance  [2] Pause  [3] Roll back" in text
    value = button_value(release)
    assert choices == [
        Choice(1, "Advance", ButtonAction.ADVANCE, value),
        Choice(2, "Pause", ButtonAction.PAUSE, value),
        Choice(3, "Roll back", ButtonAction.ROLLBACK, value),
    ]
    assert "checkout v2.4.1" in text.splitlines()[0]  # the header
    assert "started by @U012AB3CD" in text and "On-call: @S0ONCALL12" in text
    assert "a <b> & c" in text  # escapes undone for the terminal
    assert "```" not in text and "&lt;" not in text and "*" not in text
    assert any(line.startswith("  FAIL latency_p99") for line in text.splitlines())
    assert "─" * 40 in text  # the divider


def test_render_text_without_buttons_has_no_choices() -> None:
    text, choices = render_text(status_message(succeeded(), now=NOW))
    assert choices == []
    assert "[1]" not in text and "succeeded" in text


def test_render_text_of_links_and_groups() -> None:
    message = Message(
        "t",
        [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "<https://x.test|dash> <!subteam^S1|@sre> <!here>",
                },
            }
        ],
    )
    assert render_text(message) == ("dash (https://x.test) @sre @here", [])


def test_status_time_defaults_to_now() -> None:
    release = progressing().model_copy(update={"step_started_at": time.time() - 120})
    assert "2m of 15m hold" in all_text(status_message(release))


def test_a_default_reason_that_names_the_actor_is_not_repeated() -> None:
    release = pause(progressing(), ALICE, NOW, "paused by U012AB3CD")
    text = all_text(status_message(release, now=NOW))
    assert "*Paused*: paused by U012AB3CD" in text
    event = ReleaseEvent(EventKind.PAUSED, release, "paused by U012AB3CD", actor="U012AB3CD")
    assert "paused at *10%*: paused by U012AB3CD" in all_text(event_message(event))
    # A reason that does not name them keeps the attribution.
    other = ReleaseEvent(EventKind.PAUSED, release, "dashboard looks odd", actor="U012AB3CD")
    assert "paused at *10%* by <@U012AB3CD>: dashboard" in all_text(event_message(other))


def test_long_generated_text_is_split_into_valid_sections() -> None:
    text = "\n".join(f"Line {i}: " + "x" * 200 for i in range(60))  # ~12,000 chars
    event = ReleaseEvent(EventKind.DIAGNOSIS, rolled_back(), text)

    message = event_message(event)

    sections = [b for b in message.blocks if b["type"] == "section"]
    assert len(sections) >= 4
    assert all(len(b["text"]["text"]) <= 3000 for b in sections)
    assert "Line 59" in "".join(b["text"]["text"] for b in sections)
    for block in message.blocks:
        Block.parse(block).validate_json()  # type: ignore[union-attr]


def test_the_notes_draft_has_an_edit_button_and_the_modal_fits_slack() -> None:
    release = progressing()
    message = event_message(ReleaseEvent(EventKind.NOTES_DRAFT, release, "• faster checkout"))

    [actions] = [b for b in message.blocks if b["type"] == "actions"]
    [button] = actions["elements"]
    assert (button["action_id"], button["value"]) == (ACTION_EDIT_NOTES, release.id)
    modal = notes_modal(release.model_copy(update={"notes": "n" * 5000}))
    assert len(modal["title"]["text"]) <= 24
    assert len(modal["blocks"][1]["element"]["initial_value"]) <= 3000
    assert modal["private_metadata"] == release.id


def test_a_status_judged_on_demo_metrics_says_so_on_the_message() -> None:
    release = progressing()
    assert "DEMO METRICS" in all_text(status_message(release, now=NOW, demo_metrics=True))
    assert "DEMO METRICS" not in all_text(status_message(release, now=NOW))


def test_a_status_of_an_unjudged_service_says_not_judged() -> None:
    release = progressing()
    assert "Not judged" in all_text(status_message(release, now=NOW, unjudged=True))
    assert "Not judged" not in all_text(status_message(release, now=NOW))


@pytest.mark.parametrize(
    ("given", "shown_as"),
    [
        ("fix \ud800 here", "fix ? here"),  # a lone surrogate, which Slack refuses
        ("gnp\u202e.exe", "gnp.exe"),  # a bidi override
        ("a\u2066b\u2069c", "abc"),  # isolates
        ("bell\x07 esc\x1b[31m nul\x00", "bell esc[31m nul"),
        ("tab\tand\nnewline stay", "tab\tand\nnewline stay"),
        ("émoji 😀 and ß stay", "émoji 😀 and ß stay"),
    ],
)
def test_text_no_message_needs_is_removed_from_blocks_and_fallback(
    given: str, shown_as: str
) -> None:
    message = plain_message(given)
    assert message.text == esc(shown_as)
    assert message.blocks[0]["text"]["text"] == esc(shown_as)


# --- hostile text at every place a message shows untrusted text ------------------------------

HOSTILE = (
    "<!channel> <!here|here> <!everyone> <@U0EVIL01> <!subteam^S0EVIL01|@x> "
    "<http://evil.example|docs> &amp; *b* `c` \u202egnp.exe \x1b[31m \ud800 " + "z" * 10_000
)
# What Slack would read as a ping or a disguised link, and what no post may carry at all.
LIVE_MARKUP = ("<!channel>", "<!here", "<!everyone>", "<@U0EVIL01>", "<!subteam^S0EVIL01", "<http")
NEVER_SHOWN = ("\u202e", "\x1b", "\ud800")


def hostile_release(kind: EventKind) -> Release:
    release = EVENT_STATE[kind]()
    bad_check = CheckResult(
        metric=HOSTILE[:200], outcome=Outcome.FAIL, canary=1.0, control=0.1,
        reason=HOSTILE, limit=HOSTILE[:100], warning=HOSTILE[:300], query=HOSTILE[:500],
    )  # fmt: skip
    return release.model_copy(
        update={
            "notes": HOSTILE,
            "reason": HOSTILE,
            "changes": [{"title": HOSTILE, "pr": 1, "author": HOSTILE[:50], "url": HOSTILE}],
            "last_checks": [bad_check],
            "last": release.last.model_copy(update={"reason": HOSTILE, "by": HOSTILE[:60]}),
        }
    )


def marked_up(message: Message) -> list[str]:
    """What Slack reads as markup: the fallback and every mrkdwn text object."""
    out = [message.text]

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                out.append(str(node.get("text", "")))
            for value in node.values():
                walk(value)

    walk(message.blocks)
    return out


@pytest.mark.parametrize("kind", list(EventKind))
def test_hostile_text_pings_nobody_in_any_event_or_status_message(kind: EventKind) -> None:
    release = hostile_release(kind)
    event = ReleaseEvent(
        kind, release, HOSTILE, actor=HOSTILE[:80], checks=release.last_checks, at=NOW,
        link=HOSTILE[:300],
    )  # fmt: skip
    messages = [
        event_message(event, oncall=ONCALL, approvers=APPROVERS, metrics=METRICS),
        status_message(release, oncall=ONCALL, approvers=APPROVERS, now=NOW, metrics=METRICS),
    ]
    for message in messages:
        assert_valid(message)
        found = [(p, t[:80]) for t in marked_up(message) for p in LIVE_MARKUP if p in t]
        assert not found, found[:2]
        sent = json.dumps([message.text, message.blocks], ensure_ascii=False)
        assert not [c for c in NEVER_SHOWN if c in sent]


UNLEASH = TrafficSettings(backend="unleash", unleash_url="http://unleash:4242")  # 15 s refresh


def test_a_step_through_an_engine_applications_poll_says_when_they_see_it() -> None:
    moved = event_message(
        ReleaseEvent(EventKind.STEP_ADVANCED, progressing(), "hold passed"), traffic=UNLEASH
    )
    held = event_message(ReleaseEvent(EventKind.PAUSED, paused()), traffic=UNLEASH)
    direct = event_message(ReleaseEvent(EventKind.STEP_ADVANCED, progressing(), "hold passed"))

    assert "applications see it within 15s" in all_text(moved)
    assert "applications see it" not in all_text(held)
    assert "applications see it" not in all_text(direct)
    assert_valid(moved)
