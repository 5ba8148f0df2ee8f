"""The CI API end to end: HTTP requests to the app `serve` runs (the Slack rig), the real core on
a real Redis, and what reaches Slack read from the Slack stand-in. The token format's parser is
unit-tested at the end.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.engine.events import EventKind
from bot.errors import UserError
from bot.release.buttons import ButtonAction
from bot.release.gates import GateResult, GateStatus
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from handlers.api.records import RELEASES, ROLLOUTS
from handlers.api.routes import RolloutApi
from handlers.api.tokens import TokenRing, parse_tokens
from handlers.context import status_of
from handlers.server import build_core, web_app
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import (
    ALICE,
    CAROL,
    CHECKOUT_CHANNEL,
    POLICY,
    SlackRig,
    wait_until,
)

GITHUB = "gh-0123456789abcdef0123"  # may release every service
PAYMENTS = "pay-0123456789abcdef0123"  # limited to payments
TOKENS = f"github:{GITHUB},payments-ci:{PAYMENTS}:payments"

CHANGES: list[dict[str, Any]] = [
    {
        "title": "Round totals half-even",
        "pr": 812,
        "author": "octocat",
        "url": "https://github.com/acme/checkout/pull/812",
    },
    {"title": "Bump the HTTP client", "pr": None, "author": None, "url": None},
]


def body(**overrides: Any) -> dict[str, Any]:
    """A valid request to start checkout v2 (stable v1), with ``overrides`` applied."""
    return {
        "service": "checkout",
        "version": "v2",
        "stable": "v1",
        "changes": CHANGES,
        "requested_by": "octocat",
    } | overrides


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The rig's services plus one that requires two pre-release gates (no status URL is set, so
# only the request's own `gates` can pass them).
GATED_POLICY = POLICY + f"""
  gated:
    gates: [ci_build, tests]
    approvers: [{CAROL}]
"""


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    # redis_client flushes the database first: every test starts from an empty workspace.
    async with SlackStandIn() as slack:
        rig = SlackRig(
            slack,
            redis_url,
            policy=parse_policy(GATED_POLICY, "api tests"),
            extra_settings={"SHIPWATCH_API_TOKENS": TOKENS},
        )
        await rig.start()
        try:
            yield rig
        finally:
            await rig.close()


async def post(
    rig: SlackRig, payload: object, token: str | None = GITHUB, *, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = bearer(token) if token else {}
    data = raw if raw is not None else json.dumps(payload).encode()
    headers["Content-Type"] = "application/json"
    async with rig.http.post(rig.url(ROLLOUTS), data=data, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def get(
    rig: SlackRig, service: str, token: str | None = GITHUB
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = bearer(token) if token else {}
    async with rig.http.get(rig.url(f"{ROLLOUTS}/{service}"), headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def get_releases(
    rig: SlackRig, query: str, token: str | None = GITHUB
) -> tuple[int, dict[str, Any]]:
    headers = bearer(token) if token else {}
    async with rig.http.get(rig.url(f"{RELEASES}?{query}"), headers=headers) as resp:
        return resp.status, await resp.json()


def without_times(blocks: list[dict[str, Any]]) -> list[str]:
    """Each block as JSON with durations ("3s", "250ms", "1h30m") blanked: they move with time.

    One string per block keeps a failure's diff short and readable.
    """
    return [re.sub(r"\d+(?:ms|s|m|h|d)(?:\d+(?:s|m|h))?\b", "<t>", json.dumps(b)) for b in blocks]


# --- starting a release ---------------------------------------------------------------------


async def test_start_posts_the_status_message_deploy_would(rig: SlackRig) -> None:
    status, answer, headers = await post(rig, body(notes="Totals round half-even now"))

    assert status == 201, answer
    release = answer["release"]
    assert {k: release[k] for k in ("service", "version", "stable_version", "risk")} == {
        "service": "checkout",
        "version": "v2",
        "stable_version": "v1",
        "risk": "normal",
    }
    assert (release["state"], release["weight"], release["step"]) == ("progressing", 1, 0)
    assert release["steps"] == [1, 10, 50, 100]
    assert release["requested_by"] == "octocat (via github)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", release["created_at"])
    assert answer["status_url"] == "/api/v1/rollouts/checkout"
    assert headers["Location"] == "/api/v1/rollouts/checkout"

    stored = await rig.release("checkout")
    assert stored.id == release["id"] and stored.number == release["number"]
    assert stored.surface == "api"
    assert stored.changes == CHANGES  # the change list, as CI sent it
    assert stored.notes == "Totals round half-even now"
    [audit] = await rig.audit("deploy")
    assert (audit.actor, audit.surface) == ("octocat (via github)", "api")

    # The changes make the narrator draft notes; once that is in, Slack has heard everything.
    await wait_until(lambda: EventKind.NOTES_DRAFT in rig.recorder.kinds(), "the notes draft")
    await rig.settle()
    [message] = rig.slack.messages(CHECKOUT_CHANNEL)  # one top-level message, as for /deploy
    stored = await rig.release("checkout")
    # The very message /deploy gets: the notifier renders every release with status_of.
    assert without_times(message["blocks"]) == without_times(status_of(rig.core, stored).blocks)
    assert "started by octocat (via github) via api" in json.dumps(message["blocks"])
    assert rig.button(CHECKOUT_CHANNEL, str(message["ts"]), ButtonAction.ADVANCE)
    thread = rig.slack.thread(CHECKOUT_CHANNEL, str(message["ts"]))
    assert thread[0]["text"] == "octocat (via github) started checkout v2"
    assert any("Round totals half-even" in json.dumps(r) for r in thread[1:])
    rig.validate_blocks()


async def test_api_refuses_everyone_when_no_tokens_are_configured(rig: SlackRig) -> None:
    app = web.Application()
    app.add_routes(RolloutApi(rig.core, ()).routes())
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url(ROLLOUTS))
        async with rig.http.post(url, json=body(), headers=bearer(GITHUB)) as resp:
            assert resp.status == 401
            assert "SHIPWATCH_API_TOKENS" in (await resp.json())["error"]
    finally:
        await server.close()
    assert await rig.releases("checkout") == []


async def test_api_works_without_slack_in_the_web_app(rig: SlackRig) -> None:
    # Socket Mode: web_app gets no bolt app, and the API must not care.
    server = TestServer(web_app(rig.core, None))
    await server.start_server()
    try:
        url = str(server.make_url(ROLLOUTS))
        async with rig.http.post(url, json=body(), headers=bearer(GITHUB)) as resp:
            assert resp.status == 201, await resp.text()
        async with rig.http.get(f"{url}/checkout", headers=bearer(GITHUB)) as resp:
            assert resp.status == 200
            assert (await resp.json())["release"]["version"] == "v2"
        async with rig.http.post(str(server.make_url("/slack/events"))) as resp:
            assert resp.status == 404
    finally:
        await server.close()


async def test_a_controller_process_serves_only_its_probes_and_metrics(rig: SlackRig) -> None:
    # `serve --role controller`: nothing that acks Slack or answers a pipeline runs there.
    server = TestServer(web_app(rig.core, None, faces=False))
    await server.start_server()
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with rig.http.get(str(server.make_url(path))) as resp:
                assert resp.status == 200, path
        async with rig.http.post(str(server.make_url("/slack/events"))) as resp:
            assert resp.status == 404
        url = str(server.make_url(ROLLOUTS))
        async with rig.http.post(url, json=body(), headers=bearer(GITHUB)) as resp:
            assert resp.status == 404
    finally:
        await server.close()
    assert await rig.releases("checkout") == []


# --- who may ask ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "invalid"),
    [
        (None, False),
        ("Bearer", False),
        (f"Basic {GITHUB}", False),
        ("Bearer not-a-configured-token-at-all", True),
        (f"Bearer {GITHUB}x", True),
    ],
)
async def test_401_without_a_known_token(
    rig: SlackRig, caplog: pytest.LogCaptureFixture, authorization: str | None, invalid: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": authorization} if authorization else {}
    async with rig.http.post(rig.url(ROLLOUTS), json=body(), headers=headers) as resp:
        assert resp.status == 401
        answer = await resp.json()
        challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is invalid
    assert answer["error"]
    async with rig.http.get(rig.url(f"{ROLLOUTS}/checkout"), headers=headers) as resp:
        assert resp.status == 401
    assert await rig.releases("checkout") == []
    assert GITHUB not in caplog.text and "not-a-configured-token" not in caplog.text


async def test_403_for_a_token_limited_to_other_services(rig: SlackRig) -> None:
    status, answer, _ = await post(rig, body(), token=PAYMENTS)

    assert status == 403
    assert "`checkout`" in answer["error"] and "payments-ci" in answer["error"]
    assert answer["service"] == "checkout"
    assert await rig.releases("checkout") == []
    # Even a service that does not exist gets 403: a limited token cannot probe for names.
    assert (await post(rig, body(service="chekout"), token=PAYMENTS))[0] == 403
    assert (await get(rig, "checkout", token=PAYMENTS))[0] == 403
    # Its own service it may release.
    status, answer, _ = await post(
        rig, body(service="payments", requested_by="ci-bot"), token=PAYMENTS
    )
    assert status == 201, answer
    assert answer["release"]["requested_by"] == "ci-bot (via payments-ci)"


async def test_403_when_the_policy_limits_deployers(rig: SlackRig) -> None:
    # ledger lets only alice deploy; a pipeline is not alice, whatever its token allows.
    status, answer, _ = await post(rig, body(service="ledger"))

    assert status == 403
    assert "may not deploy `ledger`" in answer["error"]
    assert ALICE in answer["hint"]


# --- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "message"),
    [
        ({k: v for k, v in body().items() if k != "version"}, "version", "required"),
        (body(risk="medium"), "risk", "'normal' or 'high'"),
        (body(colour="blue"), "colour", "unknown field"),
        (body(changes=[{"pr": 3}]), "changes[0].title", "required"),
        (body(changes=[CHANGES[0], {"title": "x", "pr": "12"}]), "changes[1].pr", "integer"),
        (body(requested_by="bob (via prod)"), "requested_by", "without parentheses"),
        (body(changes=[{"title": "x", "url": "javascript:alert(1)"}]), "changes[0].url", "URL"),
        ([body()], "(body)", "JSON object"),
        (body(gates={"tests": "green"}), "gates.tests.status", "'passed', 'failed' or 'pending'"),
        (body(gates={"tests": 1}), "gates.tests", 'its status ("passed", "failed" or "pending")'),
        (body(gates={"Unit Tests": "passed"}), "gates.Unit Tests", "lowercase identifier"),
        (body(gates={"tests": {"status": "passed", "link": "x"}}), "gates.tests.link", "unknown"),
        (body(force=True), "force", "an approver of the service decides that"),
    ],
)
async def test_422_names_each_bad_field(
    rig: SlackRig, payload: object, path: str, message: str
) -> None:
    status, answer, _ = await post(rig, payload)

    assert status == 422
    assert answer["error"] == "invalid request"
    [problem] = answer["fields"]
    assert problem["path"] == path
    assert message in problem["message"]
    assert await rig.releases("checkout") == []


async def test_422_for_a_body_that_is_not_json(rig: SlackRig) -> None:
    status, answer, _ = await post(rig, None, raw=b"service=checkout&version=v2")

    assert status == 422
    [problem] = answer["fields"]
    assert problem["path"] == "(body)"
    assert problem["message"].startswith("not valid JSON")


async def test_422_for_what_the_release_service_refuses(rig: SlackRig) -> None:
    status, answer, _ = await post(rig, body(version="v1"))  # what already runs

    assert status == 422
    assert answer["error"] == "`checkout` already runs v1"
    assert answer["hint"]


# --- what the rules refuse ------------------------------------------------------------------


async def test_409_while_a_release_is_active_names_who_what_and_when(rig: SlackRig) -> None:
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)
    await rig.reply(delivery)
    active = await rig.release("checkout")

    status, answer, _ = await post(rig, body(version="v3"))

    assert status == 409
    error = answer["error"]
    assert "cannot deploy v3" in error
    assert "checkout v2 is already being released" in error  # what
    assert f"started by {ALICE}" in error  # who
    assert re.search(r"at \d\d:\d\d UTC", error)  # when
    assert answer["release"]["id"] == active.id
    assert answer["release"]["requested_by"] == ALICE
    assert [r.id for r in await rig.releases("checkout")] == [active.id]


async def test_409_while_the_service_is_locked_names_who_and_why(rig: SlackRig) -> None:
    alice = Actor(user=ALICE, surface="slack")
    await rig.core.app.service.lock(alice, "checkout", "code freeze for the sale")

    status, answer, _ = await post(rig, body())

    assert status == 409
    assert f"locked by {ALICE}" in answer["error"]
    assert "code freeze for the sale" in answer["error"]
    assert answer["lock"]["by"] == ALICE
    assert answer["lock"]["reason"] == "code freeze for the sale"
    assert answer["release"] is None
    assert await rig.releases("checkout") == []


async def test_404_for_an_unknown_service_suggests_the_right_one(rig: SlackRig) -> None:
    status, answer, _ = await post(rig, body(service="chekout"))

    assert status == 404
    assert answer["error"] == "unknown service `chekout`"
    assert answer["suggestion"] == "checkout"
    assert "did you mean `checkout`?" in answer["hint"]


# --- retries and status ---------------------------------------------------------------------


async def test_a_repeated_request_id_starts_one_release(rig: SlackRig) -> None:
    first = await post(rig, body(request_id="run-4711-attempt"))
    again = await post(rig, body(request_id="run-4711-attempt"))

    assert first[0] == 201 and again[0] == 200
    assert again[1]["release"]["id"] == first[1]["release"]["id"]
    assert again[1]["duplicate"] is True
    assert len(await rig.releases("checkout")) == 1
    await rig.settle()
    assert len(rig.slack.messages(CHECKOUT_CHANNEL)) == 1
    # The same id for another release is a mistake in the pipeline, not a retry.
    status, answer, _ = await post(rig, body(version="v3", request_id="run-4711-attempt"))
    assert status == 422
    assert "already used for checkout#" in answer["error"]


async def handback(
    rig: SlackRig, service: str, payload: object, token: str | None = GITHUB
) -> tuple[int, dict[str, Any]]:
    headers = (bearer(token) if token else {}) | {"Content-Type": "application/json"}
    url = rig.url(f"{ROLLOUTS}/{service}/handback")
    async with rig.http.post(url, data=json.dumps(payload).encode(), headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_pipeline_hands_back_after_a_success_and_not_before(rig: SlackRig) -> None:
    who = {"requested_by": "octocat", "request_id": "run-7"}
    status, answer = await handback(rig, "checkout", who)
    assert (status, answer["error"]) == (
        409,
        "nothing to hand back for `checkout`: there is no release yet. A handback follows a "
        "release that succeeded.",
    )
    assert (await handback(rig, "checkout", who, token=None))[0] == 401
    assert (await handback(rig, "checkout", who, token=PAYMENTS))[0] == 403
    status, answer = await handback(rig, "checkout", {"requested_by": "a (via b)"})
    assert status == 422 and "requested_by" in json.dumps(answer)
    status, answer = await handback(rig, "ledger", who)  # only alice may release ledger
    assert (status, answer["error"]) == (403, "you may not hand back `ledger`")

    assert (await post(rig, body()))[0] == 201
    status, answer = await handback(rig, "checkout", who)
    assert status == 409 and answer["error"].startswith("cannot hand back `checkout`: ")
    rig.start_controller()
    await wait_until(
        lambda: EventKind.SUCCEEDED in rig.recorder.kinds("checkout"), "checkout to succeed"
    )

    status, answer = await handback(rig, "checkout", who)

    assert status == 200, answer
    assert answer["duplicate"] is False
    assert answer["release"]["version"] == "v2"
    assert answer["message"] == (
        "everyone on `checkout` is on the stable pool (v2) again; the canary pool is free for "
        "the next build"
    )
    # The embedded flags: the flag now sends everyone to v2 as the stable version.
    flag = await rig.core.app.backends["checkout"].current("checkout")
    assert flag is not None and (flag.weight, flag.stable_version) == (0, "v2")
    status, answer = await handback(rig, "checkout", who)
    assert (status, answer["duplicate"]) == (200, True)
    audits = await rig.audit("hand_back")
    assert [(a.outcome, a.service) for a in audits] == [("refused", "ledger"), ("ok", "checkout")]
    audit = audits[1]
    assert audit.actor == "octocat (via github)"
    assert audit.request_id == "api:github:run-7"


async def test_get_status_shows_the_release_and_its_checks(rig: SlackRig) -> None:
    status, answer, _ = await get(rig, "checkout")
    assert status == 404
    assert answer["error"] == "no releases of `checkout` yet"
    status, answer, _ = await get(rig, "chekout")
    assert (status, answer["suggestion"]) == (404, "checkout")

    started = (await post(rig, body()))[1]["release"]
    rig.start_controller()

    async def checked() -> bool:
        return bool((await rig.release("checkout")).last_checks)

    await wait_until(checked, "the controller's first checks")
    status, answer, _ = await get(rig, "checkout")

    assert status == 200
    assert answer["release"]["id"] == started["id"]
    assert answer["active"] is True
    assert {c["metric"] for c in answer["last_checks"]} == {"error_rate", "latency_p99"}
    assert "last_score" in answer

    await rig.core.app.service.rollback(Actor(user=ALICE, surface="slack"), "checkout", "stop")

    async def rolled_back() -> bool:
        return (await rig.release("checkout")).state is State.ROLLED_BACK

    await wait_until(rolled_back, "the rollback")
    status, answer, _ = await get(rig, "checkout")
    assert (status, answer["active"], answer["release"]["state"]) == (200, False, "rolled_back")


# --- pre-release gates ---------------------------------------------------------------------


async def test_gates_that_all_passed_in_the_body_start_the_release(rig: SlackRig) -> None:
    gates = {"ci_build": "passed", "tests": {"status": "passed", "url": "https://ci.test/r/9"}}

    status, answer, _ = await post(rig, body(service="gated", gates=gates))

    assert status == 201, answer
    stored = await rig.release("gated")
    assert stored.gates is not None
    assert (stored.gates.source, stored.gates.forced) == ("request", False)
    assert stored.gates.results == {"ci_build": "passed", "tests": "passed"}
    assert stored.gates.links == {"tests": "https://ci.test/r/9"}
    [audit] = await rig.audit("deploy")
    assert audit.detail["gates"]["required"] == ["ci_build", "tests"]


async def test_409_names_each_gate_that_has_not_passed_and_starts_nothing(rig: SlackRig) -> None:
    gates = {"ci_build": {"status": "failed", "url": "https://ci.test/r/7"}, "lint": "passed"}

    status, answer, _ = await post(rig, body(service="gated", gates=gates))

    assert status == 409
    assert answer["error"] == (
        "gates not passed for gated v2: `ci_build` failed (https://ci.test/r/7), "
        "`tests` missing"
    )
    assert "--force" in answer["hint"]
    assert answer["release"] is None
    assert answer["gates"]["required"] == ["ci_build", "tests"]
    assert answer["gates"]["not_passed"] == {"ci_build": "failed", "tests": "missing"}
    assert answer["gates"]["results"]["ci_build"] == {
        "status": "failed",
        "url": "https://ci.test/r/7",
    }
    assert answer["gates"]["source"] == "request"
    assert await rig.releases("gated") == []
    [audit] = await rig.audit("deploy")
    assert (audit.outcome, audit.reason) == ("refused", "ci_build failed, tests missing")


async def test_409_without_gates_and_without_a_status_url_says_how_to_report_them(
    rig: SlackRig,
) -> None:
    status, answer, _ = await post(rig, body(service="gated"))

    assert status == 409
    assert "`gated` requires the gates ci_build, tests" in answer["error"]
    assert "SHIPWATCH_GATES_URL" in answer["hint"] and "`gates`" in answer["hint"]
    assert answer["gates"]["not_passed"] == {"ci_build": "unknown", "tests": "unknown"}
    assert await rig.releases("gated") == []


# --- the deployment record ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("not-a-configured-token-at-all", 401), (PAYMENTS, 403)]
)
async def test_releases_need_a_token_that_may_read_the_service(
    rig: SlackRig, token: str | None, status: int
) -> None:
    code, answer = await get_releases(rig, "service=checkout", token=token)

    assert code == status
    assert answer["error"]
    if status == 403:
        assert "payments-ci" in answer["error"] and "`checkout`" in answer["error"]


@pytest.mark.parametrize(
    ("query", "path", "message"),
    [
        ("", "service", "required"),
        ("limit=5", "service", "required"),
        ("service=", "service", "at least 1 character"),
        ("service=checkout&limit=0", "limit", "greater than or equal to 1"),
        ("service=checkout&limit=101", "limit", "less than or equal to 100"),
        ("service=checkout&limit=ten", "limit", "valid integer"),
        ("service=checkout&servce=checkout", "servce", "unknown field"),
    ],
)
async def test_releases_422_names_the_bad_parameter(
    rig: SlackRig, query: str, path: str, message: str
) -> None:
    status, answer = await get_releases(rig, query)

    assert status == 422
    assert answer["error"] == "invalid request"
    problems = {p["path"]: p["message"] for p in answer["fields"]}
    assert message in problems[path]


async def test_releases_of_an_unknown_service_404_with_a_suggestion(rig: SlackRig) -> None:
    status, answer = await get_releases(rig, "service=chekout")

    assert status == 404
    assert (answer["error"], answer["suggestion"]) == ("unknown service `chekout`", "checkout")
    status, answer = await get_releases(rig, "service=checkout")
    assert (status, answer) == (200, {"service": "checkout", "count": 0, "releases": []})


async def test_releases_are_the_deployment_record_newest_first(rig: SlackRig) -> None:
    carol = Actor(user=CAROL, surface="slack")
    status, first, _ = await post(
        rig,
        body(service="payments", requested_by="ci-bot", notes="Faster refunds"),
        token=PAYMENTS,
    )
    assert status == 201, first
    await rig.core.app.service.approve(carol, "payments")  # high risk: 1% needs an approver
    rig.start_controller()

    async def checked() -> bool:
        return bool((await rig.release("payments")).last_checks)

    await wait_until(checked, "the controller's first checks")
    await rig.core.app.service.rollback(carol, "payments", "refund p99 looks off")

    async def rolled_back() -> bool:
        return (await rig.release("payments")).state is State.ROLLED_BACK

    await wait_until(rolled_back, "the rollback")
    status, second, _ = await post(
        rig, body(service="payments", version="v3", requested_by="ci-bot"), token=PAYMENTS
    )
    assert status == 201, second

    status, answer = await get_releases(rig, "service=payments", token=PAYMENTS)

    assert status == 200
    assert (answer["service"], answer["count"]) == ("payments", 2)
    newest, older = answer["releases"]
    assert (newest["version"], older["version"]) == ("v3", "v2")  # newest first
    assert newest["id"] == second["release"]["id"] and older["id"] == first["release"]["id"]
    assert (newest["outcome"], newest["active"], newest["finished_at"]) == (
        "in_progress",
        True,
        None,
    )

    # The finished one: who, what, when, how it went and why.
    assert older["requested_by"] == "ci-bot (via payments-ci)"
    assert (older["surface"], older["risk"], older["strategy"]) == ("api", "high", "canary")
    assert (older["stable_version"], older["steps"]) == ("v1", [1, 10, 50, 100])
    assert (older["state"], older["outcome"], older["active"]) == (
        "rolled_back",
        "rolled_back",
        False,
    )
    assert older["reason"] == "refund p99 looks off"
    assert older["notes"] == "Faster refunds"
    assert older["changes"] == CHANGES
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(iso, older["created_at"]) and re.fullmatch(iso, older["finished_at"])
    assert older["finished_at_epoch"] >= older["created_at_epoch"] > 0
    assert older["duration_s"] == pytest.approx(
        older["finished_at_epoch"] - older["created_at_epoch"], abs=0.01
    )
    [approval] = older["approvals"]
    assert (approval["step"], approval["weight"], approval["by"]) == (0, 1, CAROL)
    assert re.fullmatch(iso, approval["at"])
    assert {c["metric"] for c in older["last_checks"]} == {"error_rate", "latency_p99"}
    assert "last_score" in older
    assert (older["gates"], older["forced"], older["forced_by"]) == (None, False, None)

    status, answer = await get_releases(rig, "service=payments&limit=1", token=PAYMENTS)
    assert [r["version"] for r in answer["releases"]] == ["v3"]


async def test_the_record_shows_who_forced_a_release_past_which_gates(rig: SlackRig) -> None:
    carol = Actor(user=CAROL, surface="slack")
    gates = {"ci_build": GateResult(status=GateStatus.PASSED)}
    options = DeployOptions(stable="v1", force=True, gates=gates)
    await rig.core.app.service.deploy(carol, "gated", "v2", options)

    status, answer = await get_releases(rig, "service=gated")

    assert status == 200
    [release] = answer["releases"]
    assert (release["forced"], release["forced_by"]) == (True, CAROL)
    assert release["gates"]["overridden"] == {"tests": "missing"}
    assert release["gates"]["results"] == {"ci_build": "passed"}
    assert release["gates"]["required"] == ["ci_build", "tests"]


# --- the token format -----------------------------------------------------------------------


def test_tokens_parse_names_and_services() -> None:
    tokens = parse_tokens(
        f" github:{GITHUB} , payments-ci:{PAYMENTS}:payments|checkout,",
        known_services={"checkout", "payments", "ledger"},
    )

    assert [t.name for t in tokens] == ["github", "payments-ci"]
    assert tokens[0].services is None and tokens[0].allows("ledger")
    assert tokens[1].services == frozenset({"payments", "checkout"})
    assert not tokens[1].allows("ledger")
    assert GITHUB not in repr(tokens) and PAYMENTS not in repr(tokens)
    ring = TokenRing(tokens)
    assert ring.authenticate(PAYMENTS) is tokens[1]
    assert ring.authenticate(GITHUB) is tokens[0]
    assert ring.authenticate(GITHUB[:-1]) is None
    assert ring.authenticate("") is None
    assert parse_tokens("") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"github{GITHUB}", "entry 1 has 1 `:`-separated parts"),
        (f"github:{GITHUB}:checkout:extra", "entry 1 has 4 `:`-separated parts"),
        (f"github:{GITHUB},ci:short", "entry 2: the token must be at least 16 characters"),
        (f"git hub:{GITHUB}", "entry 1: the name must be letters"),
        (f"github:{GITHUB}:checkout|", "entry 1: an empty service name"),
        (f"github:{GITHUB}:chekout", "entry 1: unknown service `chekout`; did you mean"),
        (f"ci:{GITHUB},ci:{PAYMENTS}", "entries 1 and 2 are both named `ci`"),
        (f"a:{GITHUB},b:{GITHUB}", "entries 1 and 2 use the same token"),
    ],
)
def test_a_malformed_entry_is_refused_clearly(text: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_tokens(text, known_services={"checkout", "payments"})

    message = str(caught.value)
    assert message.startswith("SHIPWATCH_API_TOKENS: ")
    assert expected in message
    assert "name:token[:service1|service2]" in message  # the hint shows the format
    assert GITHUB not in message and PAYMENTS not in message


async def test_serve_refuses_to_start_on_malformed_tokens() -> None:
    settings = Settings.model_validate(
        {
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_SIGNING_SECRET": "secret",
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the tokens fail first
            "SHIPWATCH_API_TOKENS": "github",
        }
    )
    with pytest.raises(UserError, match="SHIPWATCH_API_TOKENS"):
        await build_core(settings, parse_policy(POLICY, "api tests"))


README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


async def test_the_readme_github_actions_step_starts_a_release(rig: SlackRig) -> None:
    """The README's curl body, with the workflow's expressions filled in, is accepted as is."""
    match = re.search(r"(?s)curl .*?/api/v1/rollouts.*?-d '(\{.*?\})'", README)
    assert match, "README's CI section shows a curl step with a JSON body"
    expressions = {
        "github.ref_name": "v2",
        "github.actor": "octocat",
        "github.run_id": "1234567",
        "github.event.head_commit.message": "Round totals half-even",
    }
    filled = re.sub(r"\$\{\{ ([\w.]+) \}\}", lambda m: expressions[m.group(1)], match.group(1))
    payload = json.loads(filled)
    # The example releases checkout, gated here like the README's gates section; the first
    # release of a service also names the version running now, as the README says.
    payload |= {"service": "gated", "stable": "v1"}
    status, answer, headers = await post(rig, payload)
    assert status == 201, answer
    assert answer["release"]["version"] == "v2"
    assert {k.lower(): v for k, v in headers.items()}["x-request-id"]
    status, record = await get_releases(rig, "service=gated")
    assert status == 200
    assert record["releases"][0]["gates"]["results"] == {"ci_build": "passed", "tests": "passed"}


# Pieces of text that Slack would turn into a live ping or a disguised link if they reached a
# post as they are.
LIVE = ("<!channel>", "<!here>", "<!everyone>", "<@U0EVIL01>", "<!subteam^S0EVIL01>", "<http")
# What must not reach a post at all: a lone surrogate (invalid Unicode), bidi overrides and
# isolates, control characters.
UNSHOWN = ("\ud800", "\u202e", "\u2066", "\x00", "\x1b")


async def test_hostile_text_from_a_pipeline_pings_nobody_in_any_post(rig: SlackRig) -> None:
    hostile = (
        "<!channel> <!here> <@U0EVIL01> <!subteam^S0EVIL01> <http://evil.example|docs> "
        + "".join(UNSHOWN[1:])  # a lone surrogate is refused as JSON by the API itself
    )
    status, answer, _ = await post(
        rig,
        body(
            notes=f"fixes {hostile}",
            requested_by="mallory",
            changes=[{"title": f"PR {hostile}", "pr": 7}],
        ),
    )
    assert status == 201, answer
    await wait_until(lambda: EventKind.NOTES_DRAFT in rig.recorder.kinds(), "the notes draft")
    await rig.settle()
    # A version is a tag: markup there is refused outright, with what a version may hold.
    refused, why, _ = await post(rig, body(service="payments", version="v3-<!channel>"))
    assert refused == 422 and "is not a version" in why["error"]
    assert "letters, digits" in why["hint"]

    posts = rig.slack.calls_to("chat.postMessage") + rig.slack.calls_to("chat.update")
    assert len(posts) >= 3  # the status message, the started reply, the notes draft
    sent = json.dumps([c.args for c in posts], ensure_ascii=False)
    for unshown in UNSHOWN:
        assert unshown not in sent, f"{unshown!r} reached Slack"
    for call in posts:
        blocks = call.args.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        # What Slack reads as markup: the fallback text and every mrkdwn text object (plain_text
        # is shown as written and pings nobody).
        marked = [str(call.args.get("text", "")), *mrkdwn_texts(blocks)]
        found = [(piece, text) for text in marked for piece in LIVE if piece in text]
        assert not found, (call.method, found[:2])
    rig.validate_blocks()


def mrkdwn_texts(node: object) -> list[str]:
    if isinstance(node, list):
        return [t for item in node for t in mrkdwn_texts(item)]
    if not isinstance(node, dict):
        return []
    own = [str(node["text"])] if node.get("type") == "mrkdwn" and "text" in node else []
    return own + [t for value in node.values() for t in mrkdwn_texts(value)]
