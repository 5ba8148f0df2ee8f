"""The daily digest: when it is due (DST included), what it says, and that it goes out once per
channel per local day, whatever the number of replicas, through the outbox to Slack."""

from __future__ import annotations

import io
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from bot.app import build_app
from bot.config import Settings
from bot.console import Console, ConsoleNotifier
from bot.engine.digest import Digest, DigestRelease, DigestScheduler, qualifies
from bot.errors import PolicyError
from bot.metrics.synthetic import SyntheticSource
from bot.release import rollout
from bot.release.checks import CheckResult, Outcome
from bot.release.digest import digest_due
from bot.release.policy import Policy, Risk, Strategy, parse_policy
from bot.release.rollout import Actor, Release, State, Surface
from bot.render.digest import digest_message
from bot.render.policy_words import explain_service
from bot.store.audit import AuditEntry
from bot.store.store import Store
from bot.writing.digest import DigestWriter
from bot.writing.llm import LLM
from handlers.client import web_client
from handlers.notifier import SlackNotifier
from tests.support.openai_api import OpenAIStandIn
from tests.support.slack_api import BOT_TOKEN, SlackStandIn

pytestmark = pytest.mark.timeout(60)

BERLIN = ZoneInfo("Europe/Berlin")
HOSTILE = "<!channel> 2.0 <https://evil.example|click>"


def at_utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp()


# --- when it is due --------------------------------------------------------------------------


def test_due_at_the_local_time_in_winter_and_in_summer() -> None:
    nine_thirty = clock_time(9, 30)
    # Winter (CET, UTC+1): 09:30 in Berlin is 08:30 UTC.
    assert digest_due(at_utc("2026-01-15T08:29:59"), None, nine_thirty, BERLIN) is None
    assert digest_due(at_utc("2026-01-15T08:30:00"), None, nine_thirty, BERLIN) == date(2026, 1, 15)
    # The morning after the spring change (CEST, UTC+2): 09:30 is 07:30 UTC.
    assert digest_due(at_utc("2026-03-30T07:29:00"), date(2026, 3, 29), nine_thirty, BERLIN) is None
    assert digest_due(
        at_utc("2026-03-30T07:30:00"), date(2026, 3, 29), nine_thirty, BERLIN
    ) == date(2026, 3, 30)


def test_due_once_per_local_day_and_again_the_next_day() -> None:
    nine_thirty = clock_time(9, 30)
    first = digest_due(at_utc("2026-06-01T07:31:00"), None, nine_thirty, BERLIN)
    assert first == date(2026, 6, 1)
    assert digest_due(at_utc("2026-06-01T20:00:00"), first, nine_thirty, BERLIN) is None
    # 23:30 UTC is already June 2nd in Berlin, but before 09:30 there.
    assert digest_due(at_utc("2026-06-01T23:30:00"), first, nine_thirty, BERLIN) is None
    assert digest_due(at_utc("2026-06-02T07:30:00"), first, nine_thirty, BERLIN) == date(2026, 6, 2)


def test_a_time_the_spring_change_skips_is_posted_right_after_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    two_thirty = clock_time(2, 30)
    assert digest_due(at_utc("2026-03-29T00:59:00"), None, two_thirty, BERLIN) is None  # 01:59
    assert digest_due(at_utc("2026-03-29T01:00:00"), None, two_thirty, BERLIN) == date(2026, 3, 29)


def test_a_time_the_autumn_change_repeats_is_posted_once() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    two_thirty = clock_time(2, 30)
    first = digest_due(at_utc("2026-10-25T00:30:00"), None, two_thirty, BERLIN)  # 02:30 CEST
    assert first == date(2026, 10, 25)
    assert digest_due(at_utc("2026-10-25T01:30:00"), first, two_thirty, BERLIN) is None  # CET


# --- the policy ------------------------------------------------------------------------------

POLICY = """
defaults:
  metrics:
    - {name: error_rate, query: 'sum(rate(errors{version="{version}"}[{window}]))', max: 0.05}
services:
  search:
    channel: "#search-releases"
    approvers: [U0APPROVE1]
    digest: {at: "09:30", timezone: Europe/Berlin, min_hold: 2h}
  ranking:
    channel: "#search-releases"
    digest: {at: "09:30", timezone: Europe/Berlin}
  checkout:
    channel: "#checkout-releases"
"""


def policy() -> Policy:
    return parse_policy(textwrap.dedent(POLICY), "test.yaml")


def test_the_policy_reads_the_digest_and_leaves_it_off_when_absent() -> None:
    p = policy()
    digest = p.services["search"].digest
    assert digest is not None
    assert (digest.time_of_day, digest.timezone, digest.min_hold) == (
        clock_time(9, 30),
        "Europe/Berlin",
        7200.0,
    )
    assert p.services["checkout"].digest is None
    assert explain_service(p.services["search"])[-1] == (
        "daily digest in #search-releases at 09:30 Europe/Berlin, listing releases on steps "
        "that hold 2 hours or more"
    )


@pytest.mark.parametrize(
    ("digest", "hint"),
    [
        ('{at: "9.30", timezone: UTC}', "HH:MM"),
        ('{at: "25:00", timezone: UTC}', "HH:MM"),
        ('{at: "09:30", timezone: Europe/Berlinn}', "IANA"),
    ],
)
def test_a_wrong_time_or_zone_is_refused_with_how_to_fix_it(digest: str, hint: str) -> None:
    text = POLICY.replace('{at: "09:30", timezone: Europe/Berlin, min_hold: 2h}', digest)
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "test.yaml")
    assert hint in str(info.value) or any(hint in str(p) for p in info.value.problems)


# --- what it says ----------------------------------------------------------------------------

T0 = at_utc("2026-06-01T07:30:00")  # 09:30 in Berlin
HOUR = 3600.0


def release(
    service: str = "search",
    *,
    version: str = "2.0",
    holds: tuple[float, ...] = (HOUR, 86400, 2 * 86400, 86400, 0),
    now: float = T0,
) -> Release:
    r = rollout.new_release(
        release_id=uuid.uuid4().hex,
        number=7,
        service=service,
        version=version,
        stable_version="1.9",
        weights=[1, 10, 25, 50, 100],
        holds=list(holds),
        interval=60,
        bake=HOUR,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes="",
        actor=Actor(user="U0ALICE01", surface=Surface.SLACK),
        now=now - 30 * HOUR,
    )
    checks = [
        CheckResult("error_rate", Outcome.PASS, 0.0123, 0.0101, "ok", limit="max 0.05"),
        CheckResult("latency_p99", Outcome.FAIL, 0.512, 0.301, "slow", limit="max_ratio 1.5x"),
    ]
    return r.model_copy(
        update={"step": 1, "weight": 10, "step_started_at": now - 5 * HOUR, "last_checks": checks}
    )


def test_the_content_gives_numbers_issues_and_the_decision_due() -> None:
    r = release()
    issues: tuple[AuditEntry, ...] = (
        AuditEntry(action="decision:pause", actor="shipwatch", surface="controller",
                   release_id=r.id, reason="metrics unreadable", at=T0 - 20 * HOUR),
        AuditEntry(action="resume", actor="U0BOB0001", surface="slack", release_id=r.id,
                   at=T0 - 19 * HOUR),
    )  # fmt: skip
    issues += (
        AuditEntry(action="decision:request_approval", actor="shipwatch", surface="controller",
                   release_id=r.id, at=T0 - 10 * HOUR),
        AuditEntry(action="approve", actor="U0APPROVE1", surface="slack", release_id=r.id,
                   at=T0 - 8 * HOUR),
        AuditEntry(action="deploy:{x}", actor="<!here>", surface="api", release_id=r.id,
                   outcome="refused", at=T0 - 7 * HOUR),
    )  # fmt: skip
    item = DigestRelease(r, ("U0APPROVE1",), issues, {"latency_p99": 3}, 1200)
    text = str(
        digest_message(
            Digest("#search-releases", date(2026, 6, 1), "Europe/Berlin", T0, (item,))
        ).blocks
    )

    assert "error_rate: canary 0.0123 vs control 0.0101, limit max 0.05 (pass)" in text
    assert "latency_p99: canary 0.512 vs control 0.301, limit max_ratio 1.5x (fail)" in text
    assert "failed rounds out of 1200: latency_p99 3" in text
    assert "paused by shipwatch: metrics unreadable" in text
    assert "resumed by <@U0BOB0001>" in text
    assert "approval requested" in text
    assert "approved by <@U0APPROVE1> after waiting 2h" in text
    assert "deploy:{x} refused" in text
    # The 10% step started 5 h ago and holds 1 d: 25% is due in 19 h, 04:30 Berlin time.
    assert "next step 25% at Tue 04:30 if metrics hold" in text


def test_a_paused_and_an_approval_waiting_release_say_who() -> None:
    paused = rollout.pause(
        release(), Actor(user="U0CAROL01", surface=Surface.SLACK), T0 - 2 * HOUR, "investigating"
    )
    waiting = release().model_copy(update={"state": State.PENDING_APPROVAL, "awaiting_step": 2})
    digest = Digest(
        "#search-releases", date(2026, 6, 1), "Europe/Berlin", T0,
        (DigestRelease(paused, (), ()), DigestRelease(waiting, ("U0APPROVE1",), ())),
    )  # fmt: skip
    text = str(digest_message(digest).blocks)
    assert "paused by <@U0CAROL01> since Mon 07:30: investigating" in text
    assert "`/rollout resume search`" in text
    assert "approval needed from <@U0APPROVE1> to go to 25%" in text


def test_outside_text_is_escaped_and_names_never_mention() -> None:
    r = release(version=HOSTILE)
    issues = (AuditEntry(action="pause", actor="<!here>", surface="slack", release_id=r.id,
                         reason="<@U0EVIL001> <!everyone>", at=T0 - HOUR),)  # fmt: skip
    message = digest_message(
        Digest(
            "#search-releases", date(2026, 6, 1), "UTC", T0, (DigestRelease(r, ("@team",), issues),)
        )
    )
    rendered = message.text + str(message.blocks)
    for live in ("<!channel>", "<!here>", "<!everyone>", "<@U0EVIL001>", "<https://"):
        assert live not in rendered
    assert "&lt;!channel&gt; 2.0" in rendered


def test_only_long_or_waiting_releases_are_listed() -> None:
    short = release(holds=(900, 900, 900, 900, 0))
    assert not qualifies(short, 7200)
    assert qualifies(release(), 7200)  # its next step holds 2 d
    assert qualifies(rollout.pause(short, Actor(user="U0CAROL01"), T0, "why"), 7200)


# --- once per channel per day, across replicas -----------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Collected:
    """A poster that keeps what it was given (the digest port's outermost seam)."""

    def __init__(self) -> None:
        self.digests: list[Digest] = []

    async def post_digest(self, digest: Digest) -> None:
        self.digests.append(digest)


def next_nine_thirty_in_berlin(after: float) -> float:
    local = datetime.fromtimestamp(after, BERLIN)
    target = local.replace(hour=9, minute=30, second=0, microsecond=0)
    if target <= local:
        target = (local + timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)
    return target.timestamp()


@pytest.fixture
async def store(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Store]:
    s = await Store.connect(redis_url)  # redis_client flushed the database
    yield s
    await s.close()


async def started(store: Store, r: Release) -> Release:
    await store.create(r, AuditEntry(action="deploy", actor=r.requested_by, surface="slack",
                                     service=r.service, release_id=r.id))  # fmt: skip
    got = await store.get(r.id)
    assert got is not None
    return got


async def test_one_post_per_channel_per_day_with_two_replicas(store: Store) -> None:
    due = next_nine_thirty_in_berlin(time.time())
    await started(store, release("search", now=due))
    await started(store, release("ranking", version="3.1", now=due))
    await started(store, release("checkout", now=due))  # no digest for its channel
    clock = FakeClock(due - 60)
    p = policy()
    replicas = [DigestScheduler(store, p, clock=clock) for _ in range(2)]
    seen = Collected()

    assert [await s.run_once(seen) for s in replicas] == [[], []]  # not before 09:30
    clock.now = due + 1
    assert sorted([c for s in replicas for c in await s.run_once(seen)]) == ["#search-releases"]
    assert [sorted(i.release.service for i in d.releases) for d in seen.digests] == [
        ["ranking", "search"]
    ]
    clock.now = due + 3 * HOUR
    fresh = DigestScheduler(store, p, clock=clock)  # a restarted replica finds the marker
    assert [await s.run_once(seen) for s in [*replicas, fresh]] == [[], [], []]
    clock.now = due + 86400 + 1
    assert sorted([c for s in replicas for c in await s.run_once(seen)]) == ["#search-releases"]
    assert len(seen.digests) == 2


async def test_the_post_lands_in_the_channel_with_the_numbers_and_escaped(store: Store) -> None:
    due = next_nine_thirty_in_berlin(time.time())
    r = await started(store, release("search", version=HOSTILE, now=due))
    await store.append_audit(
        AuditEntry(
            action="pause",
            actor="U0CAROL01",
            surface="slack",
            service="search",
            release_id=r.id,
            reason="<!channel> look",
        )
    )
    async with SlackStandIn() as slack:
        notifier = SlackNotifier(
            web_client(BOT_TOKEN, slack.api_url), store, policy(),
            web_client(BOT_TOKEN, slack.api_url, retries=False), owner="w1", rate=1000, burst=1000,
        )  # fmt: skip
        notifier.start()
        try:
            scheduler = DigestScheduler(store, policy(), clock=FakeClock(due + 5))
            assert await scheduler.run_once(notifier) == ["#search-releases"]
            assert await notifier.writer.flush(10)
        finally:
            await notifier.close()
        posts = slack.messages("#search-releases")
    assert len(posts) == 1
    assert "thread_ts" not in posts[0]
    body = str(posts[0].get("blocks")) + str(posts[0].get("text"))
    assert "canary 0.0123 vs control 0.0101, limit max 0.05" in body
    assert "paused by <@U0CAROL01>: &lt;!channel&gt; look" in body
    assert "<!channel>" not in body


# --- the model's summary ---------------------------------------------------------------------


def one_release_digest() -> Digest:
    r = release()
    return Digest("#search-releases", date(2026, 6, 1), "UTC", T0, (DigestRelease(r, (), ()),))


async def test_the_model_summary_keeps_no_number_and_is_labelled() -> None:
    async with OpenAIStandIn() as api:
        api.reply(
            "Search is moving on by itself. Its latency failed 3 times since 09:30. "
            "Nothing needs a person today. <!channel> ping"
        )
        llm = LLM(api_key="sk-test", base_url=api.base_url, model="test-model")
        try:
            summary, label = await DigestWriter(llm).summarize(one_release_digest())
        finally:
            await llm.close()
        prompt = api.last_prompt()
    assert "Release of search is progressing" in prompt
    assert "0.0123" not in prompt  # the model is told no numbers
    assert summary.startswith("Search is moving on by itself. Nothing needs a person today.")
    assert "3" not in summary and "09:30" not in summary
    assert label == "_(written by test-model from the release record)_"
    text = str(digest_message(one_release_digest(), summary=summary, label=label).blocks)
    assert "Nothing needs a person today" in text and "test-model" in text
    assert "<!channel>" not in text


async def test_without_a_model_there_is_no_summary() -> None:
    assert await DigestWriter(LLM(api_key=None)).summarize(one_release_digest()) == ("", "")


# --- the console face --------------------------------------------------------------------------


async def test_the_console_prints_the_digest_when_it_is_due(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    out = io.StringIO()
    settings = Settings.model_validate({"REDIS_URL": redis_url, "SHIPWATCH_CONTROLLER_TICK": 0.05})
    app = await build_app(
        settings, policy=policy(), notifiers=[ConsoleNotifier(out)], source=SyntheticSource()
    )
    assert app.digest is not None
    due = next_nine_thirty_in_berlin(time.time())
    clock = FakeClock(due - 60)
    app.digest.clock, app.digest.tick = clock, 0.05

    def script() -> Iterator[str]:
        yield "deploy search v2 --stable v1 --hold 1d"
        clock.now = due + 1  # the morning comes while the release holds its first step
        yield "wait 1s"
        yield ""

    lines = script()
    try:
        console = Console(app, "alice", out=out, read_line=lambda: next(lines))
        assert await console.run() == 0
    finally:
        await app.close()
    printed = out.getvalue()
    assert printed.count("[digest to #search-releases]") == 1
    assert "search `v2` at 1%" in printed
