"""The release page: its HTML for every state and for hostile text (pure), then through the app
`serve` runs, on a real Redis, with releases driven by the product: who may read it, what it
shows, and the live stream that says when the release moved.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.engine.release_page import PageView, ladder_of
from bot.page_links import PageLinks, page_path
from bot.release.checks import CheckResult, Outcome
from bot.release.hook_runs import HookProgress, HookResult, HookRun
from bot.release.policy import Risk, Strategy
from bot.release.rollout import (
    Actor,
    Release,
    State,
    advance,
    approve,
    finish_rollback,
    new_release,
    pause,
    request_approval,
    start_rollback,
    succeed,
)
from bot.render.page import release_page
from bot.render.page_kit import content_security_policy
from bot.store.audit import AuditEntry
from handlers.server import DRAINING
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL, SlackRig, running_rig, wait_until

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000.0
NONCE = "n0nceN0NCEn0nce"
PERSON = Actor(user="alice", surface="slack")
HOSTILE = '<script>alert(1)</script>"onload="alert(2)" javascript:alert(3)'


# --- the page as HTML (pure) ----------------------------------------------------------------


def fresh(*, version: str = "v2", notes: str = "", risk: Risk = Risk.NORMAL) -> Release:
    return new_release(
        release_id="r1", number=7, service="checkout", version=version, stable_version="v1",
        weights=[1, 10, 50, 100], holds=[60.0] * 4, interval=10.0, bake=600.0,
        strategy=Strategy.CANARY, risk=risk, notes=notes, actor=PERSON, now=NOW,
    )  # fmt: skip


def checks(outcome: Outcome = Outcome.PASS) -> list[CheckResult]:
    return [
        CheckResult("error_rate", outcome, 0.004, 0.003, "under 0.05", limit="max 0.05"),
        CheckResult("latency_p99", Outcome.PASS, 0.21, 0.2, "ratio 1.05x", limit="ratio 2x"),
    ]


def in_state(state: State) -> Release:
    r = fresh(risk=Risk.HIGH if state is State.PENDING_APPROVAL else Risk.NORMAL)
    if state is State.PENDING_APPROVAL:
        return r
    r = advance(r, PERSON, NOW + 60).model_copy(update={"last_checks": checks()})
    if state is State.PAUSED:
        return pause(r, PERSON, NOW + 90, "looking at a dashboard")
    if state in (State.ROLLING_BACK, State.ROLLED_BACK):
        r = start_rollback(r, Actor(user="shipwatch", surface="controller"), NOW + 90, "error_rate")
        return r if state is State.ROLLING_BACK else finish_rollback(r, PERSON, NOW + 91)
    if state in (State.BAKING, State.SUCCEEDED):
        r = advance(advance(r, PERSON, NOW + 120), PERSON, NOW + 180)
        return r if state is State.BAKING else succeed(r, PERSON, NOW + 800)
    return r


def view_of(release: Release, **changes: Any) -> PageView:
    timeline = [
        AuditEntry(action="deploy", actor="alice", surface="slack", release_id=release.id,
                   to_state=State.PROGRESSING, at=NOW),
        AuditEntry(action="advance", actor="carol", surface="slack", release_id=release.id,
                   detail={"step": 1, "weight": 10}, at=NOW + 60, reason="looks fine"),
    ]  # fmt: skip
    points = [
        {"t": NOW + i * 10, "weight": 1 if i < 6 else 10,
         "m": {"error_rate": [0.004, 0.003, "fail" if i == 8 else "pass"],
               "latency_p99": [0.2, 0.2, "no_data" if i == 2 else "pass"]}}
        for i in range(12)
    ]  # fmt: skip
    return PageView(
        release=release,
        ladder=ladder_of(release, timeline),
        timeline=timeline,
        points=points,
        **changes,
    )


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.parametrize("state", list(State))
def test_the_page_shows_every_state(state: State) -> None:
    release = in_state(state)
    markup = release_page(view_of(release), NONCE, events_url="/x/events?exp=1&mac=a", now=NOW)
    parsed = Tags(markup)
    text = " ".join(parsed.text)

    assert release.state is state
    assert markup.startswith("<!doctype html>")
    assert f'data-state="{state.value}"' in markup
    assert "checkout" in text and "v2" in text
    assert 'id="ladder"' in markup and markup.count("<li class=") == 4
    assert 'id="timeline"' in markup and "looks fine" in text
    assert "<svg" in markup  # the weight bar, the verdicts chart
    assert f"{release.weight}%" in text
    if release.last_checks:
        assert 'id="checks"' in markup and "error_rate" in text
    # Live only while it can still change; a finished page is a snapshot.
    scripts = [a for t, a in parsed.tags if t == "script"]
    if release.is_active:
        assert scripts == [{"nonce": NONCE}]
        assert 'http-equiv="refresh"' in markup
    else:
        assert scripts == []
        assert "refresh" not in markup


def test_the_ladder_says_when_each_step_was_reached() -> None:
    release = advance(fresh(), PERSON, NOW + 60)
    ladder = ladder_of(release, view_of(release).timeline)

    assert [(r.weight, r.reached_at, r.current) for r in ladder] == [
        (1, NOW, False),
        (10, NOW + 60, True),
        (50, None, False),
        (100, None, False),
    ]


def test_a_first_step_that_waited_for_approval_is_reached_when_approved() -> None:
    waiting = fresh(risk=Risk.HIGH)
    approved = approve(waiting, Actor(user="carol", surface="slack"), NOW + 30)
    entries = [
        AuditEntry(action="deploy", actor="alice", surface="slack", release_id="r1",
                   to_state=State.PENDING_APPROVAL, at=NOW),
        AuditEntry(action="approve", actor="carol", surface="slack", release_id="r1",
                   detail={"step": 0, "weight": 1}, at=NOW + 30),
    ]  # fmt: skip

    assert [r.reached_at for r in ladder_of(waiting, entries[:1])] == [None] * 4
    assert ladder_of(waiting, entries[:1])[0].current
    assert [r.reached_at for r in ladder_of(approved, entries)][:2] == [NOW + 30, None]
    asked = request_approval(approved, PERSON, NOW + 90)
    assert [r.current for r in ladder_of(asked, entries)] == [False, True, False, False]


def test_hostile_text_is_escaped_everywhere() -> None:
    release = fresh(version=HOSTILE, notes=HOSTILE).model_copy(
        update={
            "requested_by": HOSTILE,
            "changes": [{"title": HOSTILE, "url": "javascript:alert(4)", "author": HOSTILE}],
            "last_checks": [CheckResult(HOSTILE, Outcome.FAIL, 1.0, 0.1, HOSTILE, limit=HOSTILE)],
            "reason": HOSTILE,
        }
    )
    release = pause(release, Actor(user=HOSTILE, surface="slack"), NOW + 5, HOSTILE)
    view = view_of(release, diagnosis=HOSTILE)
    hostile_entry = AuditEntry(action=HOSTILE, actor=HOSTILE, surface=HOSTILE, reason=HOSTILE,
                               release_id="r1", at=NOW + 5)  # fmt: skip
    view = PageView(**{**view.__dict__, "timeline": [*view.timeline, hostile_entry]})
    points = [{"t": NOW, "weight": 1, "m": {HOSTILE: [1.0, 0.1, "fail"]}}]
    ran = HookRun("r1", 1, 10, (HookResult("webhook", HOSTILE, False, HOSTILE, 1.5),), NOW + 4)
    hooks = [HookProgress(1, 10, NOW + 3, ran), HookProgress(2, 50, NOW + 4)]
    view = PageView(**{**view.__dict__, "points": points, "hooks": hooks})
    markup = release_page(view, NONCE, events_url="/e?exp=1&mac=x", now=NOW + 10)
    parsed = Tags(markup)

    assert "<script>alert" not in markup
    assert '"onload="' not in markup
    # The only script is ours, the only event-handler attributes none, no javascript: link.
    assert [t for t, _ in parsed.tags if t == "script"] == ["script"]
    assert not [a for _, attrs in parsed.tags for a in attrs if a.startswith("on")]
    hrefs = [attrs.get("href") or "" for t, attrs in parsed.tags if t == "a"]
    assert not [h for h in hrefs if "javascript" in h.lower()]
    # Shown as text, all of it: the page hides nothing it was given.
    text = "".join(parsed.text)
    assert text.count("<script>alert(1)</script>") >= 8
    # The step checks: the CI job's failure with its words, and a run under way.
    assert "Step checks" in text and "CI job started at" in text and "running" in text


def test_the_policy_allows_nothing_from_outside() -> None:
    csp = content_security_policy(NONCE)
    assert "default-src 'none'" in csp
    assert f"script-src 'nonce-{NONCE}'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "http" not in csp


# --- through the app `serve` runs -----------------------------------------------------------

TOKEN = "page-reader-0123456789abcdef"
PAYMENTS_ONLY = "pay-reader-0123456789abcdef"
SECRET = "page-secret-0123456789abcdef0123"
PUBLIC = "https://ship.example"
LINKS = PageLinks(SECRET, PUBLIC)


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    settings = {
        "SHIPWATCH_API_TOKENS": f"pages:{TOKEN},pay:{PAYMENTS_ONLY}:payments",
        "SHIPWATCH_PAGE_SECRET": SECRET,
        "SHIPWATCH_PUBLIC_URL": PUBLIC,
    }
    async with running_rig(redis_url, extra_settings=settings) as rig:
        yield rig


async def deploy(rig: SlackRig, text: str = "checkout v2 --stable v1") -> Release:
    delivery = await rig.command("/deploy", text, ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    await rig.settle()
    return await rig.release(text.split(maxsplit=1)[0])


def local(url: str) -> str:
    """A posted link (public address) as a path and query on the test server."""
    split = urlsplit(url)
    return f"{split.path}?{split.query}"


async def fetch(
    rig: SlackRig, path: str, token: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with rig.http.get(rig.url(path), headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def posted_link(rig: SlackRig) -> str:
    """The release page link in the channel's status message, as it reads now."""
    [message] = rig.slack.messages(CHECKOUT_CHANNEL)
    found = re.search(
        r"<(https://ship\.example/releases/[^|>]+)\|Release page>", json.dumps(message)
    )
    assert found, f"no release page link in the status message: {json.dumps(message)}"
    return found.group(1).replace("&amp;", "&")


async def test_the_status_message_links_to_a_page_that_opens_with_the_link(rig: SlackRig) -> None:
    release = await deploy(rig)
    link = posted_link(rig)

    status, body, headers = await fetch(rig, local(link))

    assert link.startswith(f"{PUBLIC}{page_path('checkout', release.id)}?exp=")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert 'data-state="progressing"' in body and "1%" in body
    assert "started the release" in body  # the audit's deploy entry, in the timeline
    assert f'data-events="{page_path("checkout", release.id)}/events?exp=' in body


async def test_a_token_opens_the_page_and_the_index(rig: SlackRig) -> None:
    release = await deploy(rig)

    status, body, _ = await fetch(rig, page_path("checkout", release.id), TOKEN)
    assert status == 200, body
    assert "data-events" not in body  # a header cannot follow EventSource: a snapshot

    status, body, _ = await fetch(rig, "/releases", TOKEN)
    assert status == 200, body
    assert 'id="active"' in body and "checkout" in body
    # The index links each release with a link of its own, so a browser can open it.
    assert f"{page_path('checkout', release.id)}?exp=" in body


async def test_refusals_say_how_to_get_in(rig: SlackRig) -> None:
    release = await deploy(rig)
    path = page_path("checkout", release.id)
    good = local(LINKS.url("checkout", release.id, int(release.created_at) + 3600))
    expired = local(LINKS.url("checkout", release.id, 1_000_000_000))
    other = local(LINKS.url("checkout", "0123456789ab", int(release.created_at) + 3600))
    forged = re.sub(r"mac=[0-9a-f]{4}", "mac=ffff", good)

    cases = {
        "no credentials": (path, None, 401),
        "an unknown token": (path, "not-a-token-0123456789", 401),
        "a token for another service": (path, PAYMENTS_ONLY, 403),
        "an expired link": (expired, None, 403),
        "a forged link": (forged, None, 403),
        "another release's link": (other.replace("0123456789ab", release.id), None, 403),
        "another service's path": (good.replace("/checkout/", "/payments/"), None, 403),
        "the index without a token": ("/releases", None, 401),
    }
    for what, (target, token, expected) in cases.items():
        status, body, headers = await fetch(rig, target, token)
        assert status == expected, f"{what}: {status}"
        assert "status message" in body, what  # where a fresh link is
        assert "Content-Security-Policy" in headers, what
    status, body, _ = await fetch(rig, expired)
    assert "expired" in body

    # Known to the token's scope but not kept: 404, with or without a link.
    status, _, _ = await fetch(rig, page_path("checkout", "0123456789ab"), TOKEN)
    assert status == 404
    status, _, _ = await fetch(rig, other)
    assert status == 404
    # The right id under the wrong service is not that release.
    wrong = page_path("payments", release.id)
    assert (await fetch(rig, wrong, TOKEN))[0] == 404


async def read_events(
    resp: aiohttp.ClientResponse, done: Callable[[str], bool], timeout: float
) -> list[str]:
    """Server-sent events (each as its raw text) read until ``done`` holds for one."""
    seen: list[str] = []
    buffer = ""
    async with asyncio.timeout(timeout):
        async for chunk in resp.content.iter_any():
            buffer += chunk.decode()
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                seen.append(event)
                if done(event):
                    return seen
    raise AssertionError(f"the stream ended first: {seen}")


def rev_of(event: str) -> int:
    """The revision a "changed" event announces (-1 for any other event)."""
    if "event: changed" not in event:
        return -1
    return int(json.loads(event.split("data: ", 1)[1])["rev"])


async def test_the_stream_says_when_the_release_advances(rig: SlackRig) -> None:
    release = await deploy(rig)
    link = local(LINKS.url("checkout", release.id, int(release.created_at) + 3600))
    path, _, query = link.partition("?")

    async with rig.http.get(rig.url(f"{path}/events?{query}")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Cache-Control"] == "no-store"
        advanced = await rig.command("/advance", "checkout", ALICE)
        assert advanced.status == 200

        async def at_ten() -> bool:
            return (await rig.release("checkout")).weight == 10

        await wait_until(at_ten, "checkout at 10%")
        moved = await rig.release("checkout")
        seen = await read_events(resp, lambda e: rev_of(e) >= moved.rev, timeout=10)

    assert seen[0].startswith("retry: ")
    last = json.loads(seen[-1].split("data: ", 1)[1])
    assert last["rev"] >= moved.rev and last["active"] is True
    # What the page's script then fetches: its <main> alone, showing the new step.
    status, body, _ = await fetch(rig, f"{link}&part=main")
    assert status == 200 and 'id="weight">10%<' in body
    assert body.startswith('<main id="release"') and body.endswith("</main>")


async def test_a_rolled_back_release_shows_why_with_its_diagnosis(rig: SlackRig) -> None:
    release = await deploy(rig)
    rig.source.inject("checkout", "error_rate", 40.0, version="v2")
    rig.start_controller()
    await wait_until(
        lambda: EventKind.DIAGNOSIS in rig.recorder.kinds("checkout"), "the diagnosis", 15
    )
    await rig.settle()
    link = local(LINKS.url("checkout", release.id, int(release.created_at) + 3600))
    path, _, query = link.partition("?")

    status, body, _ = await fetch(rig, link)
    assert status == 200
    assert 'data-state="rolled_back"' in body
    assert 'id="diagnosis"' in body
    assert "rolled back: the canary failed" in body  # the controller's decision, in words
    assert "Verdicts over time" in body
    # A finished release's stream says so and ends at once.
    async with rig.http.get(rig.url(f"{path}/events?{query}")) as resp:
        seen = await read_events(resp, lambda e: "event: end" in e, timeout=5)
    assert not [e for e in seen if "event: changed" in e]


async def test_without_a_page_secret_no_link_is_posted_and_links_are_refused(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = {"SHIPWATCH_API_TOKENS": f"pages:{TOKEN}", "SHIPWATCH_PUBLIC_URL": PUBLIC}
    async with running_rig(redis_url, extra_settings=settings) as rig:
        release = await deploy(rig)
        [message] = rig.slack.messages(CHECKOUT_CHANNEL)
        assert "/releases/" not in json.dumps(message)
        link = local(LINKS.url("checkout", release.id, int(release.created_at) + 3600))
        status, body, _ = await fetch(rig, link)
        assert status == 403 and "SHIPWATCH_PAGE_SECRET" in body
        assert (await fetch(rig, page_path("checkout", release.id), TOKEN))[0] == 200


async def test_a_shutdown_ends_the_streams(rig: SlackRig) -> None:
    release = await deploy(rig)
    link = local(LINKS.url("checkout", release.id, int(release.created_at) + 3600))
    path, _, query = link.partition("?")
    server = rig._server
    assert server is not None

    async with rig.http.get(rig.url(f"{path}/events?{query}")) as resp:
        await read_events(resp, lambda e: e.startswith("retry: "), timeout=5)
        server.app[DRAINING].set()  # what `serve` does first on SIGTERM
        async with asyncio.timeout(5):
            rest = await resp.content.read()  # returns once the server closed the stream
    assert b"event: changed" not in rest


async def test_the_success_announcement_links_to_the_page(rig: SlackRig) -> None:
    release = await deploy(rig)
    rig.start_controller()
    await wait_until(
        lambda: EventKind.SUCCEEDED in rig.recorder.kinds("checkout"), "checkout to succeed"
    )
    await rig.settle()
    ts = await rig.status_ts(CHECKOUT_CHANNEL)

    [live] = [
        m for m in rig.slack.thread(CHECKOUT_CHANNEL, ts) if "is live for everyone" in json.dumps(m)
    ]
    found = re.search(r"<(https://ship\.example/releases/[^|>]+)\|Release page>", json.dumps(live))
    assert found, json.dumps(live)
    status, body, _ = await fetch(rig, local(found.group(1).replace("&amp;", "&")))
    assert status == 200
    assert 'data-state="succeeded"' in body and release.id in found.group(1)
    assert "data-events" not in body  # finished: a snapshot, nothing left to follow
