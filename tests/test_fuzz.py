"""Fuzzed requests to every HTTP route of `serve`: none is answered with a 5xx, and none ends in
an unexpected error in the log (Slack's acks come first, so a handler that fails after them
would only show there)."""

from __future__ import annotations

import json
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.release.buttons import ButtonAction
from handlers.api.records import RELEASES, ROLLOUTS
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import ALICE, SECRET, SlackRig
from tests.support.slack_signing import (
    block_actions,
    event_callback,
    sign,
    slash_command,
)

pytestmark = pytest.mark.timeout(180)

TOKEN = "fz-0123456789abcdef0123"
REQUESTS = 2000
SEED = 20261206

# Text that has broken parsers and renderers elsewhere.
HOSTILE = [
    "<!channel>", "<!here|here>", "<@U0ADMIN01>", "<!subteam^S0123|@oncall>",
    "<http://evil.example|click>", "&amp;&lt;&gt;", "`` ``` ```", "*_~", "\u202e\u2066bidi",
    "\ud800", "\x00\x01\x1b[31m", "%s%n%x", "{{7*7}}", "${jndi:ldap://x}", "../../etc/passwd",
    "a" * 10_000, "😀" * 500, "NaN", "-1", "1e309", "[]", "{}", "null", "true", " ", "",
]  # fmt: skip


def hostile(rng: random.Random) -> str:
    """Hostile text; lone surrogates included (JSON can carry them as \\ud800 escapes)."""
    return " ".join(rng.choice(HOSTILE) for _ in range(rng.randint(1, 3)))


def form_text(rng: random.Random) -> str:
    """Hostile text a form field can carry: UTF-8 cannot encode a lone surrogate."""
    return hostile(rng).encode("utf-8", "replace").decode("utf-8")


def junk_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return hostile(rng)
    if kind == 1:
        return rng.choice([0, -1, 2**63, 1.5, float("1e308")])
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return rng.choice(["checkout", "v2", "payments", "ledger"])
    if kind in (4, 5):
        keys = ["service", "version", "stable", "changes", "notes", "requested_by", "risk",
                "steps", "hold", "strategy", "gates", "title", "pr", "x", hostile(rng)[:40]]
        return {rng.choice(keys): junk_json(rng, depth + 1) for _ in range(rng.randint(0, 6))}
    return [junk_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]  # fmt: skip


def junk_body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    if kind == 1:
        return json.dumps(junk_json(rng), allow_nan=True).encode("utf-8", "surrogatepass")
    if kind == 2:
        return b"\xff\xfe" + hostile(rng).encode("utf-8", "surrogatepass")
    if kind == 3:
        fields = {rng.choice(["payload", "command", "text", "type", "x"]): form_text(rng)}
        return urllib.parse.urlencode(fields).encode()
    return b"payload=" + urllib.parse.quote(json.dumps(junk_json(rng))).encode()


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with SlackStandIn() as slack:
        rig = SlackRig(
            slack, redis_url, extra_settings={"SHIPWATCH_API_TOKENS": f"fuzz:{TOKEN}"}
        )
        await rig.start()
        try:
            yield rig
        finally:
            await rig.close()


Request = tuple[str, str, bytes, dict[str, str]]  # method, path, body, headers


def slack_requests(rig: SlackRig, rng: random.Random) -> Request:
    url = rig.new_response_url("C0RELEASES", ALICE)
    kind = rng.randrange(6)
    if kind == 0:  # unsigned or wrongly signed junk
        body = junk_body(rng)
        headers = sign("not-the-secret", body) if rng.random() < 0.5 else {}
        return "POST", "/slack/events", body, headers | {"Content-Type": rng.choice(
            ["application/json", "application/x-www-form-urlencoded", "text/plain"])}
    if kind == 1:  # signed junk
        body = junk_body(rng)
        return "POST", "/slack/events", body, sign(SECRET, body) | {"Content-Type": rng.choice(
            ["application/json", "application/x-www-form-urlencoded"])}
    if kind == 2:  # a slash command with hostile text
        command = rng.choice(["/deploy", "/rollout", "/rollback", "/advance", "/x"])
        words = rng.choice(["", "checkout", "status", "lock checkout", "pause checkout",
                            "checkout v2 --stable", "deploy ledger v9 --hold", "stats --days"])
        body = slash_command(command, f"{words} {form_text(rng)}", user_id=ALICE, response_url=url)
        return "POST", "/slack/events", body, sign(SECRET, body)
    if kind == 3:  # a button with a forged value
        body = block_actions(
            rng.choice([a.value for a in ButtonAction] + ["nope"]), form_text(rng)[:2000],
            user_id=ALICE, message_ts="1700000000.000100", response_url=url)
        return "POST", "/slack/events", body, sign(SECRET, body)
    if kind == 4:  # an event with odd fields
        event = {"type": rng.choice(["app_mention", "message", "reaction_added"]),
                 "text": hostile(rng), "user": rng.choice([ALICE, "", hostile(rng)[:20]]),
                 "channel": rng.choice(["C0RELEASES", "", hostile(rng)[:20]]),
                 "thread_ts": rng.choice(["1700000000.000100", "", "x"]), "ts": "1.2"}
        body = event_callback(event, event_id=f"Ev{rng.randrange(10**9)}")
        return "POST", "/slack/events", body, sign(SECRET, body)
    # a view submission of any shape
    payload = {"type": "view_submission", "user": {"id": ALICE}, "view": junk_json(rng),
               "team": {"id": "T0001"}, "api_app_id": "A0001"}
    body = b"payload=" + urllib.parse.quote(json.dumps(payload)).encode()
    return "POST", "/slack/events", body, sign(SECRET, body) | {
        "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip


def api_requests(rig: SlackRig, rng: random.Random) -> Request:
    auth = rng.choice([{"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer x y z"},
                       {}, {"Authorization": "Bearer "}])  # fmt: skip
    kind = rng.randrange(5)
    if kind == 4:  # a CI job's callback: a token of the right shape or junk, any body
        token = rng.choice(["A" * 43, urllib.parse.quote(form_text(rng)[:80], safe="")])
        body = rng.choice([junk_body(rng), json.dumps(junk_json(rng)).encode("utf-8", "replace"),
                           json.dumps({"status": "passed", "detail": hostile(rng)}).encode()])
        return "POST", f"/api/v1/hooks/{token}", body, {"Content-Type": "application/json"}
    if kind == 0:
        return "POST", ROLLOUTS, junk_body(rng), auth | {"Content-Type": "application/json"}
    if kind == 1:
        body = json.dumps(junk_json(rng)).encode("utf-8", "surrogatepass")
        return "POST", ROLLOUTS, body, auth | {"Content-Type": "application/json"}
    if kind == 2:
        name = urllib.parse.quote(form_text(rng)[:300], safe="")
        return "GET", f"{ROLLOUTS}/{name}", b"", auth
    query = urllib.parse.urlencode({rng.choice(["service", "limit", "cursor", "since", "x"]):
                                    form_text(rng)[:200] for _ in range(rng.randint(0, 3))})
    return "GET", f"{RELEASES}?{query}", b"", auth


def plain_requests(rig: SlackRig, rng: random.Random) -> Request:
    path = rng.choice(["/healthz", "/readyz", "/metrics", "/", "/slack/events", ROLLOUTS,
                       "/api/v1", "/%ff%fe", "/" + "a" * 3000])
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    return method, path, junk_body(rng) if method in ("POST", "PUT", "PATCH") else b"", {}


async def test_fuzzed_requests_to_every_route_get_no_5xx_and_no_unexpected_error(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(SEED)
    makers: list[Callable[[SlackRig, random.Random], Request]] = [
        slack_requests, api_requests, plain_requests]
    statuses: dict[int, int] = {}
    worst: list[tuple[int, str, str, bytes]] = []
    for _ in range(REQUESTS):
        method, path, body, headers = rng.choice(makers)(rig, rng)
        async with rig.http.request(method, rig.url(path), data=body, headers=headers) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status >= 500:
                worst.append((resp.status, method, path[:80], body[:200]))
    await rig.settle()
    await rig.core.app.drain(10)

    print("answers by status:", dict(sorted(statuses.items())))
    assert not worst, f"{len(worst)} answers >= 500, e.g. {worst[:3]}"
    assert sum(statuses.values()) == REQUESTS
    assert any(s == 200 for s in statuses), statuses  # some requests were valid and went through
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unexpected, [f"{r.name}: {r.getMessage()}" for r in unexpected[:5]]
