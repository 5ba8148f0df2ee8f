"""Paging after an automatic rollback: PagerDuty and Opsgenie through their own Python clients.

Local stand-ins of both APIs (tests.support.pagerduty_api, tests.support.opsgenie_api) answer
as the services document, errors included, and refuse a request of the wrong shape. The whole
Slack app runs on a real Redis (tests.support.slack_rig): the controller rolls a release back on
the synthetic source's numbers, the pager triggers both services once with the release's key,
and the release's end resolves the page; failures are said in the thread and logged while the
rollback completes; a person's rollback pages nobody; no key is ever in a post or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind, ReleaseEvent
from bot.errors import PolicyError
from bot.release.policy import (
    OpsgeniePaging,
    PagerDutyPaging,
    PagingSettings,
    Policy,
    parse_policy,
)
from bot.release.rollout import State
from tests.support.opsgenie_api import OpsgenieStandIn
from tests.support.pagerduty_api import PagerDutyStandIn
from tests.support.rollback_flow import (
    checkout_with,
    deploy,
    event_of,
    roll_back_automatically,
    running,
)
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL, SlackRig, wait_until

PD_KEY = "e93facc04764012d7bfb002500d5d1a6"  # an Events API v2 integration key's shape
PD_ENV = "SHIPWATCH_TEST_PAGERDUTY_ROUTING_KEY"
OG_KEY = "5f0c3b1e-8d2a-4c6b-9e7f-0a1b2c3d4e5f"  # an Opsgenie API key's shape
OG_ENV = "SHIPWATCH_TEST_OPSGENIE_API_KEY"
RESPONDERS = [{"type": "team", "name": "checkout-oncall"}]


@pytest.fixture
async def slack(redis_client: aioredis.Redis) -> AsyncIterator[SlackStandIn]:
    # redis_client flushes the database first: every test starts from an empty workspace.
    async with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def paging_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys the policy names, in the bot's environment (read when a page goes out)."""
    monkeypatch.setenv(PD_ENV, PD_KEY)
    monkeypatch.setenv(OG_ENV, OG_KEY)


def paging(
    pd: PagerDutyStandIn | None,
    og: OpsgenieStandIn | None,
    *,
    timeout: float = 5.0,
    retries: int = 2,
) -> PagingSettings:
    return PagingSettings(
        pagerduty=None
        if pd is None
        else PagerDutyPaging(
            routing_key_env=PD_ENV, url=pd.base_url, timeout=timeout, retries=retries
        ),
        opsgenie=None
        if og is None
        else OpsgeniePaging(
            api_key_env=OG_ENV,
            url=og.base_url,
            responders=RESPONDERS,
            timeout=timeout,
            retries=retries,
        ),
    )


def policy_with(settings: PagingSettings) -> Policy:
    return checkout_with("paging scenarios", paging=settings)


async def events_of(rig: SlackRig, kinds: set[EventKind], count: int) -> list[ReleaseEvent]:
    def found() -> list[ReleaseEvent]:
        return [e for e in rig.recorder.events if e.kind in kinds]

    await wait_until(lambda: len(found()) >= count, f"{count} paging events")
    return found()


async def pages_done(rig: SlackRig) -> None:
    pager = rig.core.app.pager
    assert pager is not None
    await asyncio.wait_for(pager.drain(), 15.0)
    await rig.settle()


def secrets_absent(*texts: str) -> None:
    for text in texts:
        assert PD_KEY not in text
        assert OG_KEY not in text


PAGING = {EventKind.PAGED, EventKind.PAGE_FAILED}


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.usefixtures("paging_env")
async def test_an_automatic_rollback_pages_both_once_with_the_release_key_and_its_end_resolves(
    slack: SlackStandIn, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        PagerDutyStandIn(PD_KEY) as pd,
        OpsgenieStandIn(OG_KEY) as og,
        running(slack, redis_url, policy_with(paging(pd, og))) as rig,
    ):
        ts = await roll_back_automatically(rig)
        triggered, resolved = await events_of(rig, PAGING, 2)
        await pages_done(rig)
        release = await rig.release("checkout")
        thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
        channel = rig.slack.channel_id(CHECKOUT_CHANNEL)
        rig.validate_blocks()

    key = f"shipwatch-{release.id}"
    assert release.state is State.ROLLED_BACK
    # The page went out once the rollback was decided; its resolve once it was complete.
    kinds = rig.recorder.kinds("checkout")
    assert kinds.index(EventKind.ROLLBACK_STARTED) < kinds.index(EventKind.PAGED)
    assert (triggered.kind, resolved.kind) == (EventKind.PAGED, EventKind.PAGED)
    assert triggered.page is not None and resolved.page is not None
    assert (triggered.page.action, triggered.page.key) == ("trigger", key)
    assert set(triggered.page.done) == {"PagerDuty", "Opsgenie"}
    assert (resolved.page.action, set(resolved.page.done)) == ("resolve", {"PagerDuty", "Opsgenie"})

    # PagerDuty: one trigger, then one resolve, both with the release's dedup key.
    trigger, resolve = pd.events
    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", key)
    assert resolve == {"event_action": "resolve", "dedup_key": key, "routing_key": PD_KEY}
    assert pd.alerts == {key: "resolved"}
    weight = release.weights[release.step]
    payload = trigger["payload"]
    assert payload["source"] == "checkout"
    assert payload["severity"] == "critical"
    assert payload["class"] == "automatic rollback"
    assert payload["summary"].startswith(
        f"shipwatch rolled back checkout v2 automatically at {weight}%: latency_p99 "
    )
    details = payload["custom_details"]
    [latency] = [c for c in release.last_checks if c.metric == "latency_p99"]
    assert {k: details[k] for k in ("service", "version", "stable_version", "release_id")} == {
        "service": "checkout",
        "version": "v2",
        "stable_version": "v1",
        "release_id": release.id,
    }
    assert details["weight"] == weight
    assert details["failing_checks"] == [
        {
            "metric": "latency_p99",
            "canary": latency.canary,
            "control": latency.control,
            "limit": latency.limit,
            "critical": True,
        }
    ]
    # The one link is the thread's permalink, which shipwatch asked Slack for.
    permalink = f"https://shipwatch.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    assert trigger["links"] == [{"href": permalink, "text": "Release thread in Slack"}]
    assert details["thread"] == permalink

    # Opsgenie: one alert with the same key as its alias, then closed by that alias.
    [alert] = og.alerts.values()
    assert (alert.alias, alert.status, alert.count) == (key, "closed", 1)
    assert alert.message == payload["summary"][:130]
    assert alert.body["priority"] == "P1"
    assert alert.body["responders"] == RESPONDERS
    assert alert.body["entity"] == "checkout"
    assert json.loads(alert.body["details"]["failing_checks"]) == details["failing_checks"]
    create, close = og.requests
    assert (create.path, close.path) == ("/v2/alerts", f"/v2/alerts/{key}/close")
    assert close.query == {"identifierType": "alias"}

    # What the thread says, with the key; and no key anywhere but where each API wants it.
    texts = [r["text"] for r in thread]
    assert any(t.startswith("paging for checkout v2: 📟 Paged the on-call through") for t in texts)
    assert any("Page resolved in PagerDuty and Opsgenie" in t for t in texts)
    for request in pd.requests:
        assert request.event["routing_key"] == PD_KEY
        secrets_absent(json.dumps({k: v for k, v in request.event.items() if k != "routing_key"}))
    for og_request in og.requests:
        assert og_request.headers["authorization"] == f"GenieKey {OG_KEY}"
        secrets_absent(og_request.body.decode())
    secrets_absent(json.dumps(thread), caplog.text)


@pytest.mark.usefixtures("paging_env")
async def test_a_manual_rollback_pages_nobody(slack: SlackStandIn, redis_url: str) -> None:
    async with (
        PagerDutyStandIn(PD_KEY) as pd,
        OpsgenieStandIn(OG_KEY) as og,
        running(slack, redis_url, policy_with(paging(pd, og))) as rig,
    ):
        await deploy(rig)

        delivery = await rig.command("/rollback", "checkout customers see errors", ALICE)

        assert "rolled back" in (await rig.reply(delivery))["text"]
        await event_of(rig, EventKind.ROLLED_BACK)
        await pages_done(rig)
        release = await rig.release("checkout")
        assert (release.state, release.last.by) == (State.ROLLED_BACK, ALICE)
        assert not PAGING & set(rig.recorder.kinds())

    assert pd.requests == []
    assert og.requests == []


# --- failures never hold the rollback up ------------------------------------------------------


@pytest.mark.usefixtures("paging_env")
@pytest.mark.parametrize("failure", ["pagerduty_400", "opsgenie_401", "429", "timeout"])
async def test_a_failing_paging_service_is_said_in_the_thread_and_logged_and_the_rollback_completes(
    slack: SlackStandIn,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    caplog.set_level(logging.INFO)
    # Every answer is late, so the rollback (milliseconds) is over before any page could be:
    # the order of the events below then shows it did not wait, with half a second to spare.
    delay = 5.0 if failure == "timeout" else 0.5
    async with (
        PagerDutyStandIn(PD_KEY, delay=delay) as pd,
        OpsgenieStandIn(OG_KEY, delay=delay) as og,
    ):
        settings = paging(pd, og, timeout=0.3 if failure == "timeout" else 3.0, retries=1)
        if failure == "pagerduty_400":
            monkeypatch.setenv(PD_ENV, "0" * 32)  # a routing key PagerDuty does not know
        elif failure == "opsgenie_401":
            monkeypatch.setenv(OG_ENV, "00000000-0000-0000-0000-000000000000")
        elif failure == "429":
            pd.fail_next(429, count=10)
            og.fail_next(429, count=10)
        async with running(slack, redis_url, policy_with(settings)) as rig:
            ts = await roll_back_automatically(rig)
            failed = await event_of(rig, EventKind.PAGE_FAILED)
            await pages_done(rig)
            release = await rig.release("checkout")
            thread = rig.slack.thread(CHECKOUT_CHANNEL, ts)
            rig.validate_blocks()

    # The rollback finished on its own schedule, while the paging services were still silent.
    assert release.state is State.ROLLED_BACK
    kinds = rig.recorder.kinds("checkout")
    assert kinds.index(EventKind.ROLLED_BACK) < kinds.index(EventKind.PAGE_FAILED)
    assert failed.page is not None and failed.page.action == "trigger"
    failed_where = dict(failed.page.failed)
    expected = {
        "pagerduty_400": {
            "PagerDuty": "PagerDuty answered HTTP 400: Event object is invalid "
            "(Invalid routing key)"
        },
        "opsgenie_401": {"Opsgenie": "Opsgenie answered HTTP 401: Could not authenticate"},
        "429": {
            "PagerDuty": "PagerDuty answered HTTP 429 after its retries: Requests for this "
            "service are arriving too quickly. Please retry later.",
            "Opsgenie": "Opsgenie answered HTTP 429 after its retries: You are making too many "
            "requests! To avoid errors, we recommend you limit requests.",
        },
    }.get(failure)
    if expected is not None:
        assert failed_where == expected
    else:
        assert set(failed_where) == {"PagerDuty", "Opsgenie"}
        assert all("unreachable" in why or "did not answer" in why for why in failed_where.values())
    # Each failure is a log line, and a sentence in the thread that says to page by hand.
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.writing.paging.pager" and r.levelno >= logging.ERROR
    ]
    for name, why in failed_where.items():
        assert f"{name} trigger of {release.label} failed: {why}" in logged
        assert any(f"Paging the on-call through {name} failed: {why}" in r["text"] for r in thread)
    assert any("page the on-call by hand" in json.dumps(r.get("blocks")) for r in thread)
    # 4xx are not retried; 429 (and a timeout) are, a bounded number of times.
    triggers = [r for r in pd.requests if r.event.get("event_action") == "trigger"]
    creates = [r for r in og.requests if r.path == "/v2/alerts"]
    if failure == "pagerduty_400":
        assert len(triggers) == 1
    elif failure == "opsgenie_401":
        assert len(creates) == 1
    elif failure == "429":
        assert (len(triggers), len(creates)) == (2, 2)
    secrets_absent(json.dumps(thread), caplog.text)


@pytest.mark.usefixtures("paging_env")
async def test_a_429_then_an_answer_pages_once(slack: SlackStandIn, redis_url: str) -> None:
    async with PagerDutyStandIn(PD_KEY) as pd, OpsgenieStandIn(OG_KEY) as og:
        pd.fail_next(429)
        og.fail_next(503)
        async with running(slack, redis_url, policy_with(paging(pd, og, retries=2))) as rig:
            await roll_back_automatically(rig)
            triggered = await event_of(rig, EventKind.PAGED)
            await pages_done(rig)
            assert EventKind.PAGE_FAILED not in rig.recorder.kinds()

    assert triggered.page is not None and set(triggered.page.done) == {"PagerDuty", "Opsgenie"}
    assert len([r for r in pd.requests if r.event["event_action"] == "trigger"]) == 2
    assert len(pd.accepted("trigger")) == 1
    assert len([r for r in og.requests if r.path == "/v2/alerts"]) == 2
    [alert] = og.alerts.values()
    assert alert.count == 1


# --- the entry point for a finding after the release ------------------------------------------


@pytest.mark.usefixtures("paging_env")
async def test_a_finding_pages_on_the_same_path_redacted_and_resolves(
    slack: SlackStandIn, redis_url: str
) -> None:
    token = "ghp_" + "F1nd1ngT0ken" * 3
    async with (
        PagerDutyStandIn(PD_KEY) as pd,
        OpsgenieStandIn(OG_KEY) as og,
        running(slack, redis_url, policy_with(paging(pd, og))) as rig,
    ):
        await deploy(rig)
        release = await rig.release("checkout")
        pager = rig.core.app.pager
        assert pager is not None

        report = await asyncio.wait_for(
            pager.page_finding(
                release,
                "checkout v2: error rate 2.1% against 0.5% before the release",
                {"metric": "error_rate", "now": 0.021, "before": 0.005, "note": token},
            ),
            15.0,
        )
        resolved = await asyncio.wait_for(pager.resolve(release), 15.0)
        await pages_done(rig)

    key = f"shipwatch-{release.id}"
    assert report is not None and report.finding and report.key == key
    assert set(report.done) == {"PagerDuty", "Opsgenie"}
    assert resolved is not None and resolved.action == "resolve" and not resolved.failed
    trigger = pd.accepted("trigger")[0]
    assert trigger["dedup_key"] == key
    assert trigger["payload"]["class"] == "post-release finding"
    details = trigger["payload"]["custom_details"]
    assert (details["metric"], details["now"], details["before"]) == ("error_rate", 0.021, 0.005)
    assert token not in json.dumps(pd.events) and token not in json.dumps(
        [a.body for a in og.alerts.values()]
    )
    assert pd.alerts == {key: "resolved"}
    assert og.alerts[key].status == "closed"
    assert "post-release-finding" in og.alerts[key].body["tags"]


# --- the policy -------------------------------------------------------------------------------


def test_paging_merges_like_tickets_and_its_keys_are_secrets() -> None:
    policy = parse_policy(
        """
defaults:
  paging:
    pagerduty: {routing_key_env: PD_KEY_ENV, severity: error}
services:
  checkout:
    paging:
      opsgenie:
        api_key_env: OG_KEY_ENV
        url: https://api.eu.opsgenie.com
        priority: P2
        responders: [{type: team, name: checkout}]
        timeout: 5s
  search: {}
""",
        "paging policy",
    )
    checkout = policy.services["checkout"].paging
    assert checkout.pagerduty == PagerDutyPaging(routing_key_env="PD_KEY_ENV", severity="error")
    assert checkout.opsgenie is not None
    assert (checkout.opsgenie.priority, checkout.opsgenie.timeout) == ("P2", 5.0)
    assert checkout.resolve_on_end
    assert policy.services["search"].paging.opsgenie is None
    assert {"PD_KEY_ENV", "OG_KEY_ENV"} <= policy.secret_envs()


@pytest.mark.parametrize(
    ("paging_yaml", "said"),
    [
        ("{pagerduty: {severity: urgent}}", "severity"),
        ("{opsgenie: {priority: P9}}", "priority"),
        ("{opsgenie: {responders: [{type: squad, name: x}]}}", "team, user, escalation"),
        ("{pagerduty: {routing_key: abc}}", "routing_key_env"),
    ],
)
def test_a_wrong_paging_setting_is_refused_with_its_path(paging_yaml: str, said: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"services:\n  checkout:\n    paging: {paging_yaml}\n", "bad paging")
    text = str(caught.value) + " ".join(
        f"{p.path} {p.message} {p.hint}" for p in caught.value.problems
    )
    assert "paging" in text
    assert said in text
