"""Incident tickets after an automatic rollback: writing.tickets against real local HTTP servers.

A signed webhook receiver and a GitHub issues stand-in (tests.support.github_api) run on
127.0.0.1; TicketSinks talks to them with its real aiohttp client. The last tests run the whole
Slack app (tests.support.slack_rig) on a real Redis: an automatic rollback files the tickets
and says where in the release thread; a rollback by a person files none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bot.engine.events import EventKind
from bot.observe.telemetry import REGISTRY
from bot.release.policy import GitHubTickets, Policy, TicketSettings, WebhookTickets
from bot.release.rollout import State
from bot.traffic.webhook import verify_signature
from bot.writing.tickets import Incident, Ticket, TicketSinks
from tests.support.github_api import MEDIA_TYPE, GitHubStandIn
from tests.support.rollback_flow import (
    checkout_with,
    deploy,
    event_of,
    roll_back_automatically,
    running,
)
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL
from tests.support.standin import LocalServer

HOOK_SECRET = "whsec-incident-hook-0123456789"
HOOK_SECRET_ENV = "SHIPWATCH_TEST_TICKET_HOOK_SECRET"
GH_TOKEN = "ghp_" + "T3stT0ken" * 4
GH_TOKEN_ENV = "SHIPWATCH_TEST_GITHUB_TOKEN"
TICKET_URL = "https://tickets.example/INC-42"

INCIDENT = Incident(
    release="checkout#12 (v2.4.1)",
    release_id="01HQZX4RELEASE12",
    service="checkout",
    version="v2.4.1",
    stable_version="v2.4.0",
    title="Rollback: checkout v2.4.1 at 10%",
    diagnosis=(
        "Rolled back at the 10% step because latency_p99 was 1.84 s against 0.41 s on the "
        "control (limit ratio 2x).\nLikely cause: the new cart cache probably.\n"
        "_(written by gpt-4o-mini from the release record)_"
    ),
    thread_url="https://shipwatch.slack.com/archives/C0CHECKOUT/p1700000000000100",
    metrics=[
        {
            "metric": "latency_p99",
            "canary": 1.84,
            "control": 0.41,
            "limit": "ratio 2x",
            "reason": "canary p99 is 4.5x the control's",
        }
    ],
    decided_at=1700000000.0,
    rolled_back_at=1700000000.4,
)

# Every field the module docstring of bot.writing.tickets documents for the webhook's JSON.
DOCUMENTED_FIELDS = {
    "kind",
    "release",
    "release_id",
    "service",
    "version",
    "stable_version",
    "title",
    "diagnosis",
    "thread_url",
    "metrics",
    "decided_at",
    "rolled_back_at",
}
METRIC_FIELDS = {"metric", "canary", "control", "limit", "reason"}


# --- a webhook receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes


class WebhookReceiver(LocalServer):
    """An incident webhook on 127.0.0.1: records each POST, answers as scripted."""

    def __init__(self, *, status: int = 200, answer: str = "", delay: float = 0.0) -> None:
        super().__init__()
        self.status = status
        self.answer = answer
        self.delay = delay
        self.received: list[Received] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/hooks/incidents", self._handle)

    @property
    def url(self) -> str:
        return f"{self.base_url}/hooks/incidents"

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(
            Received(
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.read(),
            )
        )
        if self.delay:
            await self.stall(self.delay)
        return web.Response(status=self.status, text=self.answer, content_type="application/json")


def webhook(url: str, *, timeout: float = 5.0, signed: bool = True) -> WebhookTickets:
    return WebhookTickets(url=url, secret_env=HOOK_SECRET_ENV if signed else None, timeout=timeout)


def github(api_url: str, **more: Any) -> GitHubTickets:
    return GitHubTickets(repo="acme/checkout", api_url=api_url, token_env=GH_TOKEN_ENV, **more)


def env(**more: str) -> dict[str, str]:
    return {HOOK_SECRET_ENV: HOOK_SECRET, GH_TOKEN_ENV: GH_TOKEN} | more


def ticket_errors(where: str) -> float:
    value = REGISTRY.get_sample_value("shipwatch_chat_errors_total", {"method": f"ticket:{where}"})
    return value or 0.0


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.writing.tickets" and r.levelno >= logging.ERROR
    ]


# --- the webhook ---------------------------------------------------------------------------


async def test_the_webhook_gets_the_documented_payload_signed_and_its_url_is_the_link() -> None:
    async with WebhookReceiver(answer=json.dumps({"url": TICKET_URL, "id": 42})) as hook:
        sinks = TicketSinks(TicketSettings(webhook=webhook(hook.url)), env=env())
        assert sinks.configured

        tickets = await sinks.file(INCIDENT)

    assert tickets == [Ticket("webhook", TICKET_URL)]
    [got] = hook.received
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "shipwatch"
    timestamp = got.headers["x-shipwatch-timestamp"]
    signature = got.headers["x-shipwatch-signature"]
    assert abs(int(timestamp) - time.time()) < 60
    assert signature.startswith("v1=")
    assert verify_signature(HOOK_SECRET, timestamp, got.body, signature)
    # The signature covers exactly this body, this time, this secret.
    assert not verify_signature(HOOK_SECRET, timestamp, got.body.replace(b"10%", b"50%"), signature)
    assert not verify_signature(HOOK_SECRET, str(int(timestamp) + 1), got.body, signature)
    assert not verify_signature("another-secret", timestamp, got.body, signature)

    payload = json.loads(got.body)
    assert set(payload) == DOCUMENTED_FIELDS
    assert payload == {
        "kind": "shipwatch.rollback",
        "release": "checkout#12 (v2.4.1)",
        "release_id": "01HQZX4RELEASE12",
        "service": "checkout",
        "version": "v2.4.1",
        "stable_version": "v2.4.0",
        "title": "Rollback: checkout v2.4.1 at 10%",
        "diagnosis": INCIDENT.diagnosis,
        "thread_url": INCIDENT.thread_url,
        "metrics": [
            {
                "metric": "latency_p99",
                "canary": 1.84,
                "control": 0.41,
                "limit": "ratio 2x",
                "reason": "canary p99 is 4.5x the control's",
            }
        ],
        "decided_at": 1700000000.0,
        "rolled_back_at": 1700000000.4,
    }
    # Compact with sorted keys, as documented, so a receiver can re-serialise and compare.
    assert got.body == json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


async def test_a_webhook_without_a_secret_is_sent_unsigned_and_a_bare_2xx_is_a_ticket() -> None:
    async with WebhookReceiver(status=202, answer="accepted") as hook:
        sinks = TicketSinks(TicketSettings(webhook=webhook(hook.url, signed=False)), env={})

        tickets = await sinks.file(INCIDENT)

    assert tickets == [Ticket("webhook", "")]  # filed, but no link was given
    [got] = hook.received
    assert "x-shipwatch-signature" not in got.headers
    assert json.loads(got.body)["release_id"] == INCIDENT.release_id


async def test_a_failing_webhook_gives_no_ticket_and_no_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = ticket_errors("webhook")
    async with WebhookReceiver(status=500, answer='{"url": "https://never.example/"}') as hook:
        # Credentials and a token in the URL must not reach the log.
        url = hook.url.replace("http://", "http://svc:pa55word@") + "?token=abc123"
        sinks = TicketSinks(TicketSettings(webhook=webhook(url)), env=env())

        with caplog.at_level(logging.ERROR, logger="bot.writing.tickets"):
            tickets = await sinks.file(INCIDENT)

    assert tickets == []
    assert len(hook.received) == 1  # one attempt
    [error] = errors_logged(caplog)
    assert error == f"incident ticket (webhook) not filed: {hook.url} answered HTTP 500"
    assert "pa55word" not in caplog.text and "abc123" not in caplog.text
    assert ticket_errors("webhook") == before + 1


async def test_a_webhook_that_hangs_is_given_up_on_at_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with WebhookReceiver(delay=10.0, answer=json.dumps({"url": TICKET_URL})) as hook:
        sinks = TicketSinks(TicketSettings(webhook=webhook(hook.url, timeout=0.3)), env=env())
        started = time.monotonic()

        with caplog.at_level(logging.ERROR, logger="bot.writing.tickets"):
            tickets = await sinks.file(INCIDENT)

        took = time.monotonic() - started
    assert tickets == []
    assert 0.3 <= took < 2.0, took
    [error] = errors_logged(caplog)
    assert error.startswith(f"incident ticket (webhook) not filed: {hook.url} unreachable")


# --- GitHub issues ---------------------------------------------------------------------------


async def test_a_github_issue_carries_the_diagnosis_the_metrics_table_and_the_thread() -> None:
    async with GitHubStandIn(token=GH_TOKEN, first_number=7) as gh:
        cfg = github(gh.api_url, labels=["incident", "checkout"])
        sinks = TicketSinks(TicketSettings(github=cfg), env=env())

        tickets = await sinks.file(INCIDENT)

    assert tickets == [Ticket("github", "https://github.com/acme/checkout/issues/7")]
    [request] = gh.requests
    assert (request.method, request.path) == ("POST", "/repos/acme/checkout/issues")
    assert request.headers["authorization"] == f"Bearer {GH_TOKEN}"
    assert request.headers["accept"] == MEDIA_TYPE
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert set(json.loads(request.body)) == {"title", "body", "labels"}
    [issue] = gh.issues
    assert (issue.owner, issue.repo, issue.number) == ("acme", "checkout", 7)
    assert issue.title == "Rollback: checkout v2.4.1 at 10%"
    assert issue.labels == ["incident", "checkout"]
    assert issue.body.startswith(INCIDENT.diagnosis + "\n\n")
    assert (
        "| metric | canary | control | limit |\n"
        "|---|---|---|---|\n"
        "| latency_p99 | 1.84 | 0.41 | ratio 2x |"
    ) in issue.body
    assert f"Slack thread: {INCIDENT.thread_url}" in issue.body
    assert issue.body.endswith("Release id: `01HQZX4RELEASE12`")


async def test_github_refusing_the_token_gives_no_ticket_and_a_logged_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = ticket_errors("github")
    async with GitHubStandIn(token=GH_TOKEN) as gh:
        wrong = "ghp_" + "Wr0ngT0ken" * 4
        sinks = TicketSinks(
            TicketSettings(github=github(gh.api_url)), env=env(**{GH_TOKEN_ENV: wrong})
        )

        with caplog.at_level(logging.ERROR, logger="bot.writing.tickets"):
            tickets = await sinks.file(INCIDENT)

    assert tickets == []
    assert len(gh.requests) == 1
    assert gh.issues == []
    assert errors_logged(caplog) == [
        "incident ticket (github) not filed: GitHub answered HTTP 401: Bad credentials"
    ]
    assert wrong not in caplog.text
    assert ticket_errors("github") == before + 1


async def test_a_missing_github_token_gives_no_ticket_a_logged_error_and_no_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with GitHubStandIn(token=GH_TOKEN) as gh:
        sinks = TicketSinks(TicketSettings(github=github(gh.api_url)), env={})

        with caplog.at_level(logging.ERROR, logger="bot.writing.tickets"):
            tickets = await sinks.file(INCIDENT)

    assert tickets == []
    assert gh.requests == []
    assert errors_logged(caplog) == [
        f"incident ticket (github) not filed: no GitHub token in ${GH_TOKEN_ENV}"
    ]


async def test_one_failing_sink_does_not_stop_the_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with WebhookReceiver(status=503) as hook, GitHubStandIn(token=GH_TOKEN) as gh:
        settings = TicketSettings(webhook=webhook(hook.url), github=github(gh.api_url))
        sinks = TicketSinks(settings, env=env())

        with caplog.at_level(logging.ERROR, logger="bot.writing.tickets"):
            tickets = await sinks.file(INCIDENT)

    assert tickets == [Ticket("github", "https://github.com/acme/checkout/issues/1")]
    assert len(hook.received) == 1
    assert errors_logged(caplog) == [
        f"incident ticket (webhook) not filed: {hook.url} answered HTTP 503"
    ]


async def test_a_201_without_a_json_body_from_github_raises_nothing() -> None:
    async with GitHubStandIn(token=GH_TOKEN) as gh:
        gh.answer_raw_next(201, "")
        sinks = TicketSinks(TicketSettings(github=github(gh.api_url)), env=env())

        tickets = await sinks.file(INCIDENT)

    assert tickets in ([], [Ticket("github", "")])


# --- end to end through Slack ------------------------------------------------------------------


@pytest.fixture
async def slack(redis_client: aioredis.Redis) -> AsyncIterator[SlackStandIn]:
    # redis_client flushes the database first: every test starts from an empty workspace.
    async with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def ticket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets the policy names, in the bot's environment (read when a ticket is filed)."""
    monkeypatch.setenv(HOOK_SECRET_ENV, HOOK_SECRET)
    monkeypatch.setenv(GH_TOKEN_ENV, GH_TOKEN)


def policy_with(tickets: TicketSettings) -> Policy:
    return checkout_with("ticket scenarios", tickets=tickets)


@pytest.mark.usefixtures("ticket_env")
async def test_an_automatic_rollback_files_tickets_and_says_where_in_the_thread(
    slack: SlackStandIn, redis_url: str
) -> None:
    async with (
        WebhookReceiver(answer=json.dumps({"url": TICKET_URL})) as hook,
        GitHubStandIn(token=GH_TOKEN) as gh,
    ):
        tickets = TicketSettings(webhook=webhook(hook.url), github=github(gh.api_url))
        async with running(slack, redis_url, policy_with(tickets)) as rig:
            ts = await roll_back_automatically(rig)

            filed = await event_of(rig, EventKind.TICKET_FILED)
            diagnosis = await event_of(rig, EventKind.DIAGNOSIS)
            await rig.settle()
            release = await rig.release("checkout")
            channel = rig.slack.channel_id(CHECKOUT_CHANNEL)

            issue_url = "https://github.com/acme/checkout/issues/1"
            assert filed.link == f"webhook: {TICKET_URL}; github: {issue_url}"
            kinds = rig.recorder.kinds("checkout")
            assert kinds.index(EventKind.ROLLED_BACK) < kinds.index(EventKind.DIAGNOSIS)
            assert kinds.index(EventKind.DIAGNOSIS) < kinds.index(EventKind.TICKET_FILED)
            [reply] = [
                r
                for r in rig.slack.thread(CHECKOUT_CHANNEL, ts)
                if r["text"].startswith("incident ticket for checkout v2:")
            ]
            assert reply["blocks"][0]["text"]["text"] == f"🎫 Incident ticket filed: {filed.link}"
            rig.validate_blocks()

    assert release.state is State.ROLLED_BACK
    [got] = hook.received
    headers = got.headers
    assert verify_signature(
        HOOK_SECRET, headers["x-shipwatch-timestamp"], got.body, headers["x-shipwatch-signature"]
    )
    payload = json.loads(got.body)
    assert set(payload) == DOCUMENTED_FIELDS
    weight = release.weights[release.step]
    assert {k: payload[k] for k in ("kind", "release", "release_id", "title")} == {
        "kind": "shipwatch.rollback",
        "release": release.label,
        "release_id": release.id,
        "title": f"Rollback: checkout v2 at {weight}%",
    }
    assert (payload["service"], payload["version"], payload["stable_version"]) == (
        "checkout",
        "v2",
        "v1",
    )
    assert payload["diagnosis"] == diagnosis.detail
    # The link to the thread is Slack's permalink of the release's status message.
    assert payload["thread_url"] == (
        f"https://shipwatch.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    )
    [metric] = payload["metrics"]
    assert set(metric) == METRIC_FIELDS
    [latency] = [c for c in release.last_checks if c.metric == "latency_p99"]
    assert (metric["metric"], metric["canary"], metric["control"], metric["limit"]) == (
        "latency_p99",
        latency.canary,
        latency.control,
        "ratio 2x",
    )
    assert (payload["decided_at"], payload["rolled_back_at"]) == (
        release.rollback_started_at,
        release.finished_at,
    )
    assert payload["decided_at"] <= payload["rolled_back_at"]
    [issue] = gh.issues
    assert issue.title == payload["title"]
    assert issue.body.startswith(diagnosis.detail)
    assert f"Slack thread: {payload['thread_url']}" in issue.body


@pytest.mark.usefixtures("ticket_env")
async def test_a_failing_sink_is_reported_in_the_thread(
    slack: SlackStandIn, redis_url: str
) -> None:
    async with WebhookReceiver(status=500) as hook:
        policy = policy_with(TicketSettings(webhook=webhook(hook.url)))
        async with running(slack, redis_url, policy) as rig:
            ts = await roll_back_automatically(rig)

            filed = await event_of(rig, EventKind.TICKET_FILED)
            await rig.settle()

            assert filed.link == ""  # nothing was filed
            texts = [r["text"] for r in rig.slack.thread(CHECKOUT_CHANNEL, ts)]
            failed = "Filing the incident ticket failed; see the bot's log."
            assert f"incident ticket for checkout v2: {failed}" in texts
            rig.validate_blocks()
    assert len(hook.received) == 1


@pytest.mark.usefixtures("ticket_env")
async def test_a_manual_rollback_files_no_ticket(slack: SlackStandIn, redis_url: str) -> None:
    async with (
        WebhookReceiver(answer=json.dumps({"url": TICKET_URL})) as hook,
        GitHubStandIn(token=GH_TOKEN) as gh,
    ):
        tickets = TicketSettings(webhook=webhook(hook.url), github=github(gh.api_url))
        async with running(slack, redis_url, policy_with(tickets)) as rig:
            ts = await deploy(rig)

            delivery = await rig.command("/rollback", "checkout customers see errors", ALICE)

            assert "rolled back" in (await rig.reply(delivery))["text"]
            await event_of(rig, EventKind.DIAGNOSIS)
            narrator = rig.core.app.narrator
            assert narrator is not None
            await asyncio.wait_for(narrator.drain(), 5.0)  # the diagnosis task has ended
            await rig.settle()
            release = await rig.release("checkout")
            assert (release.state, release.last.by) == (State.ROLLED_BACK, ALICE)
            assert EventKind.TICKET_FILED not in rig.recorder.kinds()
            texts = [r["text"] for r in rig.slack.thread(CHECKOUT_CHANNEL, ts)]
            assert not any(t.startswith("incident ticket") for t in texts)
            rig.validate_blocks()

    assert hook.received == []
    assert gh.requests == []
