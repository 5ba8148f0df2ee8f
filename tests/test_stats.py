"""Release stats from the audit stream: the pure computation on a hand-written stream with
numbers worked out by hand, the store's reads by time on a real redis-server, `/rollout stats`
through the real command path with the controller, and the /metrics series."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bot.engine import dispatch
from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.errors import UnknownServiceError
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.observe import telemetry
from bot.observe.release_metrics import ReleaseMetrics, ReleaseSeries
from bot.observe.stats import ALL, DAY_S, ReleaseStats, Spread, compute, render
from bot.release.commands import parse
from bot.release.policy import parse_policy
from bot.release.rollout import Actor, Release, State
from bot.store import keys
from bot.store.audit import AuditEntry, AuditReach, AuditStream
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import redis_server
from tests.support.slack_rig import SlackRig, running_rig

T0 = 1_700_000_000.0  # the window's start in the hand-written stream
END = T0 + 7 * DAY_S

# --- a hand-written audit stream ------------------------------------------------------------


def entry(
    at: float,
    action: str,
    release: str,
    service: str = "checkout",
    *,
    to: str = "",
    frm: str = "",
    outcome: str = "ok",
    actor: str = "shipwatch",
    **detail: Any,
) -> AuditEntry:
    return AuditEntry(
        action=action,
        actor=actor,
        surface="controller" if actor == "shipwatch" else "slack",
        service=service,
        release_id=release,
        from_state=frm,
        to_state=to,
        outcome=outcome,
        detail=dict(detail),
        at=at,
    )


def traffic(at: float, release: str, weight: int, service: str = "checkout") -> AuditEntry:
    return entry(at, "traffic", release, service, frm="progressing", to="progressing",
                 weight=weight)


def stream() -> list[AuditEntry]:
    t = T0
    return [
        # F (checkout, steps 1,100): deployed before the window, promoted and done inside it.
        entry(t - 1000, "deploy", "F", to="progressing", actor="alice"),
        traffic(t - 998, "F", 1),
        entry(t + 498, "decision:advance", "F", frm="progressing", to="baking", weight=1),
        traffic(t + 500, "F", 100),
        entry(t + 800, "decision:succeed", "F", frm="baking", to="succeeded", weight=100),
        # A (checkout, 1,10,50,100): to success, with holds and a refused deploy in between.
        entry(t + 100, "deploy", "A", to="progressing", actor="alice"),
        traffic(t + 102, "A", 1),
        entry(t + 200, "decision:hold", "A", frm="progressing", to="progressing", weight=1),
        entry(t + 300, "deploy", "A", outcome="refused", actor="bob"),
        entry(t + 400, "decision:advance", "A", frm="progressing", to="progressing", weight=1),
        traffic(t + 402, "A", 10),
        entry(t + 1000, "advance", "A", frm="progressing", to="progressing", actor="alice"),
        traffic(t + 1002, "A", 50),
        entry(t + 1600, "decision:advance", "A", frm="progressing", to="baking", weight=50),
        traffic(t + 1602, "A", 100),
        entry(t + 2502, "decision:succeed", "A", frm="baking", to="succeeded", weight=100),
        # B (checkout): rolled back automatically at 10%, 4 s from decision to 0%.
        entry(t + 10000, "deploy", "B", to="progressing", actor="alice"),
        traffic(t + 10002, "B", 1),
        entry(t + 10300, "decision:advance", "B", frm="progressing", to="progressing"),
        traffic(t + 10302, "B", 10),
        entry(t + 10500, "decision:rollback", "B", frm="progressing", to="rolling_back"),
        entry(t + 10504, "rolled_back", "B", frm="rolling_back", to="rolled_back",
              rollback_seconds=4.0),
        # C (payments, high risk): two approval waits, one refused approval, a pause inside
        # the second wait (it goes on), then success.
        entry(t + 20000, "deploy", "C", "payments", to="pending_approval", actor="alice"),
        entry(t + 20100, "approve", "C", "payments", outcome="refused", actor="alice"),
        entry(t + 20600, "approve", "C", "payments", frm="pending_approval", to="progressing",
              actor="carol"),
        traffic(t + 20602, "C", 1, "payments"),
        entry(t + 20900, "decision:request_approval", "C", "payments", frm="progressing",
              to="pending_approval"),
        entry(t + 21000, "pause", "C", "payments", frm="pending_approval", to="paused",
              actor="carol"),
        entry(t + 21100, "resume", "C", "payments", frm="paused", to="pending_approval",
              actor="carol"),
        entry(t + 22700, "approve", "C", "payments", frm="pending_approval", to="progressing",
              actor="carol"),
        traffic(t + 22702, "C", 10, "payments"),
        entry(t + 23000, "decision:advance", "C", "payments", frm="progressing", to="baking"),
        traffic(t + 23002, "C", 100, "payments"),
        entry(t + 23302, "decision:succeed", "C", "payments", frm="baking", to="succeeded"),
        # D (payments): rolled back by a person while waiting for approval.
        entry(t + 30000, "deploy", "D", "payments", to="pending_approval", actor="alice"),
        entry(t + 30900, "rollback", "D", "payments", frm="pending_approval",
              to="rolling_back", actor="alice"),
        entry(t + 30901.5, "rolled_back", "D", "payments", frm="rolling_back",
              to="rolled_back", rollback_seconds=1.5),
        # E (payments): still waiting for approval when the window ends.
        entry(t + 40000, "deploy", "E", "payments", to="pending_approval", actor="alice"),
        # H (search): its start is older than anything read; only the actuator's own
        # rollback_seconds says how long the rollback took.
        entry(t + 50, "rolled_back", "H", "search", frm="rolling_back", to="rolled_back",
              rollback_seconds=2.0),
        # G (checkout): after the window; a lock has no release and counts for nothing.
        entry(END, "deploy", "G", to="progressing", actor="alice"),
        entry(t + 5, "lock", "", actor="alice"),
    ]


@pytest.fixture(scope="module")
def known() -> ReleaseStats:
    # Order must not matter: the stream is handed over shuffled by reversal.
    return compute(list(reversed(stream())), start=T0, end=END)


def test_outcomes_frequency_and_rollback_rate(known: ReleaseStats) -> None:
    s = known.overall
    assert s.service == ALL
    # A, B, C, D, E started in the window; F before it, G at its (exclusive) end.
    assert (s.started, s.succeeded, s.rolled_back) == (5, 3, 3)
    assert s.deploys_per_day == pytest.approx(5 / 7)
    assert s.rollback_rate == pytest.approx(0.5)
    checkout = known.by_service["checkout"]
    assert (checkout.started, checkout.succeeded, checkout.rolled_back) == (2, 2, 1)
    assert checkout.rollback_rate == pytest.approx(1 / 3)
    payments = known.by_service["payments"]
    assert (payments.started, payments.succeeded, payments.rolled_back) == (3, 1, 1)
    search = known.by_service["search"]
    assert (search.started, search.rolled_back) == (0, 1)
    assert list(known.by_service) == ["checkout", "payments", "search"]


def test_lead_time_is_deploy_request_to_100_percent_confirmed(known: ReleaseStats) -> None:
    # F 1500 s (its deploy is before the window, read as lookback), A 1502 s, C 3002 s.
    assert known.overall.lead_time.values == (1500.0, 1502.0, 3002.0)
    assert known.overall.lead_time.median == 1502.0
    assert known.overall.lead_time.p90 == 3002.0
    assert known.by_service["checkout"].lead_time.median == 1501.0


def test_rollback_time_is_decision_to_0_percent(known: ReleaseStats) -> None:
    # D 1.5 s (a person's rollback), H 2.0 s (from the actuator's detail), B 4.0 s.
    assert known.overall.rollback_time.values == (1.5, 2.0, 4.0)
    assert known.overall.rollback_time.median == 2.0
    assert known.overall.rollback_time.max == 4.0


def test_time_per_step_from_traffic_confirmations(known: ReleaseStats) -> None:
    steps = {w: s.values for w, s in known.overall.step_time.items()}
    assert steps == {
        1: (300.0, 300.0, 1498.0, 2100.0),  # A, B, F, C (C's includes its approval wait)
        10: (300.0, 600.0),  # C, A; B's 10% was cut short by its rollback
        50: (600.0,),  # A
        100: (300.0, 300.0, 900.0),  # the bake: C, F, A
    }
    assert [s.median for s in known.overall.step_time.values()] == [899.0, 450.0, 600.0, 300.0]
    assert list(known.by_service["payments"].step_time) == [1, 10, 100]


def test_approval_waits(known: ReleaseStats) -> None:
    payments = known.by_service["payments"]
    # C waited 600 s for its first step and 1800 s for its second (paused meanwhile).
    assert payments.approval_wait.values == (600.0, 1800.0)
    assert payments.approval_wait.median == 1200.0
    assert payments.approval_wait.max == 1800.0
    assert payments.waits_rolled_back == 1  # D
    assert payments.waits_open == 1  # E
    assert payments.approvals_refused == 1
    checkout = known.by_service["checkout"]
    assert (checkout.approval_wait.count, checkout.waits_open, checkout.approvals_refused) == (
        0, 0, 0)


def test_service_filter_keeps_one_service() -> None:
    only = compute(stream(), start=T0, end=END, service="payments")

    assert list(only.by_service) == ["payments"]
    assert only.overall.service == "payments"
    assert (only.overall.started, only.overall.succeeded, only.overall.rolled_back) == (3, 1, 1)
    assert only.overall.lead_time.values == (3002.0,)
    assert only.overall.rollback_time.values == (1.5,)


def test_window_edges_count_what_ends_inside() -> None:
    # A window that starts after F's deploy and A's 1% step but before they finish.
    start, end = T0 + 450, T0 + 1602

    s = compute(stream(), start=start, end=end).overall

    assert s.started == 0  # A and F started before it
    assert s.lead_time.values == (1500.0,)  # F's promotion at T0+500; A's is at the end: out
    assert (s.succeeded, s.rolled_back) == (1, 0)  # F at T0+800; H (T0+50) is before it
    # Only step times ending inside: F's 1% (T0+500), A's 10% (T0+1002); A's 1% ended at
    # T0+402, before the window, and A's 50% ends exactly at the window's end.
    assert {w: v.values for w, v in s.step_time.items()} == {1: (1498.0,), 10: (600.0,),
                                                              100: (300.0,)}


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    at_start = compute(stream(), start=T0 + 100, end=T0 + 200).overall
    at_end = compute(stream(), start=T0 + 50, end=T0 + 100).overall

    assert at_start.started == 1  # A's deploy at exactly the start
    assert at_end.started == 0  # ... and not in a window ending there
    assert at_end.rolled_back == 1  # H at T0+50, the start of that one


def test_nearest_rank_p90_and_empty_spreads() -> None:
    spread = Spread.of(float(v) for v in range(1, 11))

    assert (spread.count, spread.median, spread.p90, spread.max) == (10, 5.5, 9.0, 10.0)
    assert Spread.of([7.0]).p90 == 7.0
    assert (Spread().median, Spread().p90, Spread().max) == (None, None, None)


# --- rendering ------------------------------------------------------------------------------


def test_render_all_services() -> None:
    text = render(compute(stream(), start=T0, end=END))

    assert text.splitlines() == [
        "*Release stats, all services, last 7 days*",
        "• *5 releases started* (0.7 a day) · *6 finished*: 3 succeeded, 3 rolled back "
        "(rollback rate 50%)",
        "• *lead time* (request → 100%): median 25m2s, p90 50m2s (3 releases)",
        "• *rollback time* (decision → 0%): median 2.0s, max 4.0s (3 rollbacks)",
        "• *time per step* (median): 1% 14m59s · 10% 7m30s · 50% 10m · 100% (bake) 5m",
        "• *approval waits*: median 20m, max 30m (2 approved); 1 ended in a rollback; "
        "1 still waiting; 1 approval refused",
        "*By service*",
        "• `checkout`: 2 started, 2 succeeded, 1 rolled back (33%), lead time median 25m1s",
        "• `payments`: 3 started, 1 succeeded, 1 rolled back (50%), lead time median 50m2s",
        "• `search`: 0 started, 0 succeeded, 1 rolled back (100%)",
    ]


def test_render_one_service_and_an_empty_window() -> None:
    text = render(compute(stream(), start=T0, end=END, service="checkout"))
    empty = render(compute(stream(), start=END + DAY_S, end=END + 31 * DAY_S, service="ledger"))
    none_at_all = render(compute([], start=T0, end=T0 + DAY_S))

    assert text.startswith("*Release stats of `checkout`, last 7 days*\n")
    assert "*By service*" not in text
    assert "approval waits" not in text  # nothing to say about them
    assert empty == "no releases of `ledger` in the last 30 days"
    assert none_at_all == "no releases in the last day"


def test_render_says_when_the_audit_log_is_shorter_than_the_window() -> None:
    truncated = compute(stream(), start=T0, end=END, audit_from=END - 2 * DAY_S - 3 * 3600)
    complete = compute(stream(), start=T0, end=END, audit_from=T0 - 1)
    empty = compute([], start=T0, end=END, audit_from=END - 3600)

    note = "_The audit log covers only the last 2d3h: anything older"
    assert truncated.covered_from == END - 2 * DAY_S - 3 * 3600
    assert render(truncated).splitlines()[-1].startswith(note)
    assert complete.covered_from is None
    assert "covers only" not in render(complete)
    assert render(empty).splitlines() == [
        "no releases in the last 7 days",
        "_The audit log covers only the last 1h: anything older has been trimmed from it and "
        "is not counted._",
    ]


# --- reading the stream by time (real Redis) -------------------------------------------------


async def xadd_at(redis: aioredis.Redis, stream_id: str, e: AuditEntry) -> None:
    """An entry with a chosen stream id: ids are the Redis server's clock, so a test that
    needs entries from the past writes their ids itself."""
    flat = e.fields()
    await redis.xadd(keys.audit(), dict(zip(flat[::2], flat[1::2], strict=True)), id=stream_id)


async def test_audit_between_selects_by_stream_id_oldest_first(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    assert await store.audit_reach() == AuditReach(None, trimmed=False)
    for ms, action in ((1000, "a"), (2000, "b"), (2000, "c"), (2999, "d"), (3000, "e"),
                       (3001, "f")):
        seq = 1 if action == "c" else 0
        await xadd_at(redis_client, f"{ms}-{seq}", entry(ms / 1000, action, "r"))

    between = await store.audit_between(2.0, 3.0)
    open_ended = await store.audit_between(2.5)

    # The window is on ids, both ends inclusive to the millisecond.
    assert [e.action for e in between] == ["b", "c", "d", "e"]
    assert [e.action for e in open_ended] == ["d", "e", "f"]
    assert await store.audit_reach() == AuditReach(1.0, trimmed=False)


async def test_audit_reach_knows_when_the_capped_stream_was_trimmed(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    for i in range(5):
        flat = entry(float(i), "traffic", "r").fields()
        await redis_client.xadd(keys.audit(), dict(zip(flat[::2], flat[1::2], strict=True)),
                                id=f"{(i + 1) * 1000}-0", maxlen=3, approximate=False)

    assert await store.audit_reach() == AuditReach(3.0, trimmed=True)


async def test_audit_between_pages_a_long_stream_and_skips_actions(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(2500):
            e = entry(10 + i / 1000, "decision:hold" if i % 2 else "traffic", f"r{i}")
            flat = e.fields()
            pipe.xadd(keys.audit(), dict(zip(flat[::2], flat[1::2], strict=True)),
                      id=f"{10_000 + i}-0")
        await pipe.execute()

    everything = await store.audit_between(0, page=300)
    kept = await store.audit_between(0, skip_actions={"decision:hold"}, page=300)
    page = await store.audit_page("10000", count=300)

    assert len(everything) == 2500
    assert [e.release_id for e in everything] == [f"r{i}" for i in range(2500)]
    assert len(kept) == 1250 and {e.action for e in kept} == {"traffic"}
    assert (len(page.entries), page.last_id, page.complete) == (300, "10299-0", False)


async def test_append_audit_round_trips_through_audit_between(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    written = entry(T0 + 1, "rolled_back", "B", to="rolled_back", rollback_seconds=4.0)
    before = time.time()
    await store.append_audit(written)

    [read] = await store.audit_between(before - 5)
    reach = await store.audit_reach()

    assert read == written  # its own `at` survives; the window used the server's clock
    assert reach.oldest is not None and abs(reach.oldest - before) < 5
    assert reach.trimmed is False


# --- `/rollout stats` through the command path, with the controller --------------------------

POLICY = """
defaults:
  steps: [1, 50, 100]
  hold: 200ms
  interval: 100ms
  window: 1s
  bake: 200ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
      max_diff: 0.01
      failure_limit: 2
services:
  checkout: {}
  payments: {}
"""
ALICE = Actor(user="alice", surface="slack")
DEADLINE = 10.0


async def drive(controller: Controller, store: Store, release_id: str) -> Release:
    """Controller rounds until the release has finished."""
    deadline = time.monotonic() + DEADLINE
    while True:
        release = await store.get(release_id)
        assert release is not None
        if not release.is_active:
            return release
        assert time.monotonic() < deadline, f"stuck: {release.describe_state()}"
        await controller.run_once()
        await asyncio.sleep(0.01)


async def test_rollout_stats_shows_a_success_and_an_automatic_rollback(
    redis_client: aioredis.Redis,
) -> None:
    policy = parse_policy(POLICY, "test")
    store = Store(redis_client)
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    source = SyntheticSource(seed=3)
    controller = Controller(store, policy, source, actuator, events, tick=0.05,
                            lease_ttl=0.5, owner="stats")
    events.start()
    try:
        first = await dispatch.run(service, parse("/deploy checkout v2 --stable v1"), ALICE)
        assert first.release is not None
        done = await drive(controller, store, first.release.id)
        source.inject("checkout", "error_rate", 20.0, version="v3")
        second = await dispatch.run(service, parse("/deploy checkout v3"), ALICE)
        assert second.release is not None
        failed = await drive(controller, store, second.release.id)

        reply = await dispatch.run(service, parse("/rollout stats checkout"), ALICE)
        week = await dispatch.run(service, parse("/rollout stats --days 7"), ALICE)
        other = await dispatch.run(service, parse("/rollout stats payments --days 30"), ALICE)
        with pytest.raises(UnknownServiceError) as unknown:
            await dispatch.run(service, parse("/rollout stats chekout"), ALICE)
    finally:
        await actuator.close()
        await events.close()

    assert (done.state, failed.state) == (State.SUCCEEDED, State.ROLLED_BACK)
    lines = reply.text.splitlines()
    assert lines[0] == "*Release stats of `checkout`, last 7 days*"
    assert lines[1] == (
        "• *2 releases started* (0.3 a day) · *2 finished*: 1 succeeded, 1 rolled back "
        "(rollback rate 50%)"
    )
    assert lines[2].startswith("• *lead time* (request → 100%): median ")
    assert lines[2].endswith("(1 release)")
    assert lines[3].startswith("• *rollback time* (decision → 0%): median ")
    assert lines[3].endswith("(1 rollback)")
    assert lines[4].startswith("• *time per step* (median): 1% ")
    assert " · 50% " in lines[4] and " · 100% (bake) " in lines[4]  # v2's steps
    assert week.text.splitlines()[1] == lines[1]  # one service: the same numbers
    assert other.text == "no releases of `payments` in the last 30 days"
    assert "did you mean `checkout`?" in str(unknown.value)

    # The stats read the lifecycle stream: the audit without the hold rounds, all else alike.
    audit = await store.audit_between(0)
    lifecycle = await store.audit_between(0, stream=AuditStream.LIFECYCLE)
    holds = [e for e in audit if e.action == "decision:hold"]
    assert holds, "the controller held at least once while the steps' holds ran"
    assert lifecycle == [e for e in audit if e.action != "decision:hold"]
    assert {"deploy", "traffic", "decision:advance", "decision:rollback", "rolled_back"} <= {
        e.action for e in lifecycle
    }


async def test_append_audit_writes_the_lifecycle_stream_except_for_hold_rounds(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    refused = entry(T0, "approve", "A", outcome="refused")
    hold = entry(T0 + 1, "decision:hold", "A", frm="progressing", to="progressing", weight=10)
    for written in (refused, hold):
        await store.append_audit(written)

    assert await store.audit_between(0) == [refused, hold]
    assert await store.audit_between(0, stream=AuditStream.LIFECYCLE) == [refused]
    reach = await store.audit_reach(AuditStream.LIFECYCLE)
    assert reach.oldest is not None and reach.trimmed is False


# --- /metrics ---------------------------------------------------------------------------------


def samples(families: Iterable[Any], name: str, **labels: str) -> dict[str, float]:
    """Values of one series by the labels not given, e.g. {"0.5": 12.0, "1": 20.0}."""
    out: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name != name or any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            rest = {k: v for k, v in sample.labels.items() if k not in labels}
            out[",".join(rest.values())] = sample.value
    return out


def recent_stream(now: float) -> list[AuditEntry]:
    """The hand-written stream moved to end an hour ago, and only what is in a 7-day window
    (its entries before the window would be older than the lookback here)."""
    shift = now - 3600 - 41_000 - T0
    return [dataclasses.replace(e, at=e.at + shift) for e in stream()
            if T0 - 1000 <= e.at < T0 + 41_000]


@pytest.fixture
async def slack_rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with running_rig(redis_url) as rig:
        yield rig


async def test_metrics_endpoint_serves_release_stats(slack_rig: SlackRig) -> None:
    store = slack_rig.core.app.store
    for e in recent_stream(time.time()):
        await store.append_audit(e)

    async with slack_rig.http.get(slack_rig.url("/metrics")) as resp:
        assert resp.status == 200
        families = list(text_string_to_metric_families(await resp.text()))
    week = {"service": ALL, "window": "7d"}

    # Unlike in the pure tests F's deploy is inside the window here: 6 started.
    assert samples(families, "shipwatch_release_deploys", window="7d") == {
        ALL: 6.0, "checkout": 3.0, "payments": 3.0, "search": 0.0}
    assert samples(families, "shipwatch_release_deploys_per_day", **week) == {"": 6 / 7}
    assert samples(families, "shipwatch_release_finished", **week) == {
        "succeeded": 3.0, "rolled_back": 3.0}
    assert samples(families, "shipwatch_release_rollback_ratio", window="30d") == {
        ALL: 0.5, "checkout": 1 / 3, "payments": 0.5, "search": 1.0}
    assert samples(families, "shipwatch_release_lead_time_seconds", **week) == {
        "0.5": 1502.0, "0.9": 3002.0, "1": 3002.0}
    assert samples(families, "shipwatch_release_rollback_time_seconds", **week) == {
        "0.5": 2.0, "0.9": 4.0, "1": 4.0}
    assert samples(families, "shipwatch_release_step_time_seconds", quantile="0.5", **week) == {
        "1": 899.0, "10": 450.0, "50": 600.0, "100": 300.0}
    assert samples(families, "shipwatch_release_approval_wait_seconds", service="payments",
                   window="7d") == {"0.5": 1200.0, "0.9": 1800.0, "1": 1800.0}
    assert samples(families, "shipwatch_release_approval_waits", **week) == {
        "approved": 2.0, "rolled_back": 1.0, "waiting": 1.0}
    assert samples(families, "shipwatch_release_approvals_refused", **week) == {"": 1.0}
    [oldest] = samples(families, "shipwatch_audit_oldest_timestamp_seconds").values()
    assert abs(oldest - time.time()) < 60  # the entries were all just added


# --- the refresher: cache, incremental reads, failures ----------------------------------------


def series_values(series: ReleaseSeries, name: str, **labels: str) -> dict[str, float]:
    return samples(series.collect(), name, **labels)


async def test_refresh_is_cached_and_reads_only_what_is_new(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    now = [time.time()]
    series = ReleaseSeries()
    metrics = ReleaseMetrics(store, ttl=30, clock=lambda: now[0], series=series)
    await store.append_audit(entry(now[0] - 60, "deploy", "A", to="progressing"))

    assert await metrics.refresh() is True
    await store.append_audit(entry(now[0] - 30, "deploy", "B", to="progressing"))
    now[0] += 10
    cached = await metrics.refresh()
    before = series_values(series, "shipwatch_release_deploys", service=ALL)
    now[0] += 25
    again = await metrics.refresh()

    assert cached is False
    assert before == {"7d": 1.0, "30d": 1.0}
    assert again is True
    # The second read continued after the first: B is added, A is not counted twice.
    assert series_values(series, "shipwatch_release_deploys", service=ALL) == {
        "7d": 2.0, "30d": 2.0}


def failure_count() -> float:
    value = telemetry.REGISTRY.get_sample_value("shipwatch_release_stats_refresh_failures_total")
    assert value is not None
    return value


async def test_a_redis_failure_keeps_the_last_values_and_is_counted(tmp_path: Path) -> None:
    series = ReleaseSeries()
    with redis_server(tmp_path) as url:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=2)
        store = Store(client)
        await store.append_audit(entry(time.time() - 60, "deploy", "A", to="progressing"))
        metrics = ReleaseMetrics(store, ttl=0, series=series)
        assert await metrics.refresh() is True
    failures = failure_count()

    refreshed = await metrics.refresh()  # the server is gone now
    await client.aclose()

    assert refreshed is False
    assert failure_count() == failures + 1
    assert series_values(series, "shipwatch_release_deploys", service=ALL) == {
        "7d": 1.0, "30d": 1.0}
