"""Pre-release gates end to end: /deploy (and the CI API) against a local stand-in for a CI
system's gate status endpoint (tests.support.gates_api), on the whole Slack app with a real
Redis.

The stand-in answers ``GET /gates/{service}/{version}`` with the results a test sets, checks the
bearer token, and can be made to fail the ways a real one does (an error status, a slow answer,
a body that is not JSON, a report in the wrong shape, or not running at all).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.engine.gates import GateChecker, GateVerdict, Source, fill_url
from bot.errors import UserError
from bot.release.gates import GateResult, GateStatus
from bot.release.policy import parse_policy
from bot.release.rollout import Release
from handlers.api.records import ROLLOUTS
from tests.support.gates_api import Fault, GatesStandIn
from tests.support.slack_rig import (
    ALICE,
    BOB,
    CAROL,
    CHECKOUT_CHANNEL,
    SlackRig,
    running_rig,
    wait_until,
)

GATES_TOKEN = "gates-read-token-0123456789"
API_TOKEN = "gh-0123456789abcdef0123"
REQUIRED = ["ci_build", "tests", "security_scan"]
ALL_PASSED = dict.fromkeys(REQUIRED, "passed")
SCAN_RUN = "https://ci.example.com/runs/4711"

# checkout requires three gates and only CAROL may force past them; search has no gates.
POLICY = f"""
defaults:
  steps: [1, 10, 50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{{service="{{service}}",version="{{version}}"}}'
      max: 0.05
services:
  checkout:
    channel: "{CHECKOUT_CHANNEL}"
    gates: [{", ".join(REQUIRED)}]
    approvers: [{CAROL}]
  search: {{}}
"""


@pytest.fixture
async def gates() -> AsyncIterator[GatesStandIn]:
    async with GatesStandIn(GATES_TOKEN) as standin:
        yield standin


@pytest.fixture
async def rig(
    redis_url: str, redis_client: aioredis.Redis, gates: GatesStandIn
) -> AsyncIterator[SlackRig]:
    settings = {
        "SHIPWATCH_GATES_URL": gates.template,
        "SHIPWATCH_GATES_TOKEN": GATES_TOKEN,
        "SHIPWATCH_GATES_TIMEOUT": 0.3,
        "SHIPWATCH_API_TOKENS": f"github:{API_TOKEN}",
    }
    policy = parse_policy(POLICY, "gates tests")
    async with running_rig(redis_url, policy=policy, extra_settings=settings) as rig:
        yield rig


async def deploy(rig: SlackRig, text: str, user: str) -> str:
    """Type ``/deploy <text>`` as ``user``; the bot's ephemeral answer."""
    delivery = await rig.command("/deploy", text, user)
    return str((await rig.reply(delivery))["text"])


async def assert_refused(rig: SlackRig, reason: str) -> dict[str, Any]:
    """Nothing was started, and the refusal is in the audit stream; its detail."""
    assert await rig.releases("checkout") == []
    [entry] = await rig.audit("deploy")
    assert entry.outcome == "refused"
    assert reason in entry.reason
    return entry.detail


# --- /deploy ---------------------------------------------------------------------------------


async def test_all_gates_passed_starts_the_release_and_shows_them(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED | {
        "security_scan": {"status": "passed", "url": SCAN_RUN},
        "lint": "failed",  # not required by the policy: not in the way
    }

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert "started checkout v2" in answer
    [(path, headers)] = gates.requests
    assert path == "/gates/checkout/v2"
    assert headers["Authorization"] == f"Bearer {GATES_TOKEN}"
    release = await rig.release("checkout")
    assert release.gates is not None
    assert release.gates.source == "status_url" and not release.gates.forced
    assert release.gates.results == ALL_PASSED | {"lint": "failed"}
    assert release.gates.links == {"security_scan": SCAN_RUN}
    [entry] = await rig.audit("deploy")
    assert entry.outcome == "ok" and entry.detail["forced"] is False
    assert entry.detail["gates"]["required"] == REQUIRED

    await rig.settle()
    [message] = rig.slack.messages(CHECKOUT_CHANNEL)
    text = json.dumps(message["blocks"], ensure_ascii=False)
    assert f"🛡️ Gates: ✅ ci_build · ✅ tests · ✅ <{SCAN_RUN}|security_scan>" in text
    assert "Forced" not in text
    rig.validate_blocks()


async def test_a_failed_gate_refuses_the_deploy_naming_it(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED | {
        "security_scan": {"status": "failed", "url": SCAN_RUN}
    }

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert f"gate `security_scan` failed for checkout v2 ({SCAN_RUN})" in answer
    assert "fix what failed" in answer
    assert "an approver of the service can override with --force" in answer
    detail = await assert_refused(rig, "security_scan failed")
    assert detail["gates"]["not_passed"] == {"security_scan": "failed"}


@pytest.mark.parametrize(
    ("results", "named", "todo", "not_passed"),
    [
        (
            ALL_PASSED | {"tests": "pending"},
            "gate `tests` pending for checkout v2",
            "wait for what is pending",
            {"tests": "pending"},
        ),
        (
            {"ci_build": "passed", "tests": "passed"},
            "gate `security_scan` missing for checkout v2",
            "report every required gate (ci_build, tests, security_scan)",
            {"security_scan": "missing"},
        ),
        (
            {"ci_build": "failed", "tests": "pending"},
            "gates not passed for checkout v2: `ci_build` failed, `tests` pending, "
            "`security_scan` missing",
            "fix what failed and run it again; wait for what is pending; report every",
            {"ci_build": "failed", "tests": "pending", "security_scan": "missing"},
        ),
    ],
    ids=["pending", "missing", "several"],
)
async def test_a_gate_that_has_not_passed_refuses_the_deploy(
    rig: SlackRig,
    gates: GatesStandIn,
    results: dict[str, Any],
    named: str,
    todo: str,
    not_passed: dict[str, str],
) -> None:
    gates.answers["checkout", "v2"] = results

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert named in answer
    assert todo in answer
    detail = await assert_refused(rig, next(iter(not_passed)))
    assert detail["gates"]["not_passed"] == not_passed


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        (Fault(status=500, body=b"upstream broke"), "answered HTTP 500"),
        (Fault(status=302), "answered HTTP 302"),
        (Fault(delay=1.0), "did not answer within 0.3s"),
        (Fault(body=b"<html>maintenance</html>"), "did not answer JSON"),
        (
            Fault(body=b'{"gates": {"tests": "green"}}'),
            "answered JSON that is not a gates report (gates.tests.status:",
        ),
        (Fault(body=b'{"results": []}'), "answered JSON that is not a gates report (gates:"),
    ],
    ids=["500", "redirect", "timeout", "not-json", "unknown-status", "wrong-shape"],
)
async def test_a_failing_status_url_refuses_the_deploy_and_says_why(
    rig: SlackRig, gates: GatesStandIn, fault: Fault, problem: str
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED  # what it would say if it worked
    gates.fault = fault

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert answer.startswith(":rotating_light: cannot check the gates of checkout v2: ")
    assert f"the gates status URL {gates.url('checkout', 'v2')} {problem}" in answer
    assert "Nothing was started" in answer and "--force" in answer
    detail = await assert_refused(rig, "gates unknown")
    assert detail["gates"]["not_passed"] == dict.fromkeys(REQUIRED, "unknown")


async def test_a_status_url_that_is_down_refuses_the_deploy(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    await gates.close()

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert f"the gates status URL {gates.url('checkout', 'v2')} is unreachable" in answer
    await assert_refused(rig, "gates unknown")


async def test_a_service_without_gates_never_asks_the_status_url(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    answer = await deploy(rig, "search v2 --stable v1", BOB)

    assert "started search v2" in answer
    assert gates.requests == []
    assert (await rig.release("search")).gates is None


async def test_without_a_status_url_a_gated_service_is_refused_with_how_to_configure_it(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    del rig.extra_settings["SHIPWATCH_GATES_URL"]
    await rig.restart()

    answer = await deploy(rig, "checkout v2 --stable v1", BOB)

    assert "`checkout` requires the gates ci_build, tests, security_scan" in answer
    assert "no results for v2: SHIPWATCH_GATES_URL is not set" in answer
    assert "set SHIPWATCH_GATES_URL to your CI's gate status endpoint" in answer
    assert "--force" in answer
    await assert_refused(rig, "SHIPWATCH_GATES_URL is not set")


# --- --force ---------------------------------------------------------------------------------


async def test_an_approver_forces_past_a_failed_gate_and_it_shows(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED | {"security_scan": "failed"}

    answer = await deploy(rig, "checkout v2 --stable v1 --force", CAROL)

    assert "started checkout v2" in answer
    assert f"forced by {CAROL} past the gates: security_scan (failed)" in answer
    release = await rig.release("checkout")
    assert release.gates is not None
    assert release.gates.forced_by == CAROL
    assert release.gates.overridden == {"security_scan": "failed"}
    [entry] = await rig.audit("deploy")
    assert (entry.outcome, entry.actor, entry.detail["forced"]) == ("ok", CAROL, True)
    assert entry.detail["gates"]["overridden"] == {"security_scan": "failed"}
    assert entry.detail["gates"]["forced_by"] == CAROL

    await rig.settle()
    [message] = rig.slack.messages(CHECKOUT_CHANNEL)
    text = json.dumps(message["blocks"], ensure_ascii=False)
    assert (
        f"⚠️ *Forced* by <@{CAROL}> past gates that had not passed: security_scan (failed)"
    ) in text
    assert "✅ ci_build · ✅ tests · ❌ security_scan" in text
    thread = rig.slack.thread(CHECKOUT_CHANNEL, str(message["ts"]))
    assert any("past gates that had not passed" in json.dumps(reply) for reply in thread)
    rig.validate_blocks()


async def test_an_approver_may_force_past_a_status_url_that_is_down(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.fault = Fault(status=503)

    answer = await deploy(rig, "checkout v2 --stable v1 --force", CAROL)

    assert "started checkout v2" in answer
    release = await rig.release("checkout")
    assert release.gates is not None
    assert release.gates.overridden == dict.fromkeys(REQUIRED, "unknown")
    assert "answered HTTP 503" in release.gates.problem
    await rig.settle()
    [message] = rig.slack.messages(CHECKOUT_CHANNEL)
    assert "The gates could not be read: the gates status URL" in json.dumps(message["blocks"])


async def test_force_when_every_gate_passed_records_no_override(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED

    await deploy(rig, "checkout v2 --stable v1 --force", CAROL)

    release = await rig.release("checkout")
    assert release.gates is not None and not release.gates.forced
    assert release.gates.overridden == {}


@pytest.mark.parametrize("user", [BOB, ALICE])
async def test_force_by_someone_who_is_not_an_approver_is_refused(
    rig: SlackRig, gates: GatesStandIn, user: str
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED | {"security_scan": "failed"}

    answer = await deploy(rig, "checkout v2 --stable v1 --force", user)

    assert answer.startswith(":lock: you may not force a release past the gates of `checkout`")
    assert f"<@{CAROL}>" in answer
    await assert_refused(rig, "not an approver")
    assert gates.requests == []  # refused before anything was asked of the CI system


# --- the CI API ------------------------------------------------------------------------------


async def start(rig: SlackRig, **body: Any) -> tuple[int, dict[str, Any]]:
    payload = {
        "service": "checkout",
        "version": "v2",
        "stable": "v1",
        "changes": [],
        "requested_by": "octocat",
    } | body
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with rig.http.post(rig.url(ROLLOUTS), json=payload, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_api_reads_the_status_url_when_the_body_has_no_gates(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = ALL_PASSED | {"tests": "failed"}

    status, answer = await start(rig)

    assert status == 409
    assert answer["error"] == "gate `tests` failed for checkout v2"
    assert answer["gates"]["not_passed"] == {"tests": "failed"}
    assert answer["gates"]["source"] == "status_url"
    assert await rig.releases("checkout") == []

    gates.answers["checkout", "v2"] = ALL_PASSED
    status, answer = await start(rig)
    assert status == 201, answer
    release = await rig.release("checkout")
    assert release.gates is not None and release.gates.source == "status_url"


async def test_the_api_answers_503_when_the_status_url_fails(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.fault = Fault(status=500)

    status, answer = await start(rig)

    assert status == 503
    assert "answered HTTP 500" in answer["error"]
    assert answer["gates"]["not_passed"] == dict.fromkeys(REQUIRED, "unknown")
    assert await rig.releases("checkout") == []


async def test_gates_in_the_body_are_used_instead_of_the_status_url(
    rig: SlackRig, gates: GatesStandIn
) -> None:
    gates.answers["checkout", "v2"] = dict.fromkeys(REQUIRED, "failed")

    status, answer = await start(rig, gates=ALL_PASSED)

    assert status == 201, answer
    assert gates.requests == []
    release = await rig.release("checkout")
    assert release.gates is not None and release.gates.source == "request"
    await wait_until(lambda: bool(rig.recorder.events), "the started event")


# --- the pieces ------------------------------------------------------------------------------


def test_the_verdict_names_what_stands_in_the_way() -> None:
    results = {
        "ci_build": GateResult(status=GateStatus.PASSED),
        "tests": GateResult(status=GateStatus.PENDING, url="https://ci.test/4"),
    }
    verdict = GateVerdict(("ci_build", "tests", "compliance"), results, Source.REQUEST)

    assert not verdict.passed
    assert verdict.not_passed() == {"tests": "pending", "compliance": "missing"}
    assert verdict.summary() == "tests pending, compliance missing"
    error = verdict.refusal("checkout", "v2")
    assert str(error.args[0]) == (
        "gates not passed for checkout v2: `tests` pending (https://ci.test/4), "
        "`compliance` missing"
    )
    record = verdict.record(forced_by="U0CAROL")
    assert record.forced and record.overridden == {"tests": "pending", "compliance": "missing"}
    assert record.links == {"tests": "https://ci.test/4"}
    assert GateVerdict(("tests",), {"tests": GateResult(status=GateStatus.PASSED)}).passed


async def test_nothing_required_passes_without_asking_anyone() -> None:
    checker = GateChecker("http://127.0.0.1:9/gates/{service}/{version}", timeout=0.1)
    try:
        verdict = await checker.check("search", "v2", [])
    finally:
        await checker.close()
    assert verdict.passed and verdict.problem == ""


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ci.example.com/gates/{service}/{version}", "http:// or https:// URL"),
        ("https://ci.example.com/gates/{service}", "must contain {version}"),
        ("https://ci.example.com/gates/{service}/ {version}", "without white space"),
    ],
)
def test_a_malformed_status_url_is_refused_at_start(template: str, message: str) -> None:
    with pytest.raises(UserError, match="SHIPWATCH_GATES_URL") as caught:
        GateChecker(template)
    assert message in str(caught.value)
    assert "https://ci.example.com/gates/{service}/{version}" in str(caught.value)


def test_the_url_template_is_filled_url_encoded() -> None:
    assert fill_url("https://ci.test/g/{service}/{version}?v={version}", "checkout", "v2+b/1") == (
        "https://ci.test/g/checkout/v2%2Bb%2F1?v=v2%2Bb%2F1"
    )


def test_releases_recorded_before_gates_existed_still_load() -> None:
    old = {
        "id": "a1b2c3",
        "number": 3,
        "service": "checkout",
        "version": "v2",
        "weights": [1, 100],
        "holds": [1.0, 1.0],
        "interval": 1.0,
        "bake": 1.0,
        "state": "succeeded",
        "requested_by": "alice",
        "surface": "slack",
        "created_at": 1.0,
        "step_started_at": 1.0,
        "updated_at": 2.0,
        "last": {
            "action": "succeed", "state": "succeeded", "by": "x", "surface": "controller", "at": 2.0
        },
    }
    assert Release.model_validate(old).gates is None
