"""The haproxy traffic backend against a real HAProxy: users split by the map at each step
within a few points, nobody moving back, rollback to 0, read-back, a reload found and repaired
by the controller, HAProxy down, and a map HAProxy does not know."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.app import App
from bot.engine.events import EventKind
from bot.engine.service import Outcome
from bot.errors import ConflictError, TrafficError
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.traffic.base import Applied, TrafficAction
from bot.traffic.haproxy import HAProxyBackend, RuntimeApi
from tests.support.engines import (
    USER_IDS,
    USERS,
    a_decided_step_lost_in_a_crash_is_applied,
    app_driving,
    assert_share,
    change,
    down_is_a_traffic_error,
    paused_when_the_engine_stops,
    rounds_until,
    split_at_each_step,
    unreachable_after_stop,
)
from tests.support.engines import canary_users as through_engine
from tests.support.haproxy import HAProxy, haproxy_running
from tests.support.recorder import Recorder


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    with haproxy_running(tmp_path) as proxy:
        yield proxy


def map_backend(proxy: HAProxy, **overrides: str) -> HAProxyBackend:
    options = {"map_path": proxy.map_file} | overrides
    return HAProxyBackend(RuntimeApi(proxy.socket), mode="map", **options)


async def canary_users(proxy: HAProxy) -> set[str]:
    return await through_engine(
        proxy.url, USER_IDS, lambda u: {"X-Service": "checkout", "X-User-Id": u}
    )


async def test_map_mode_splits_users_at_each_step_and_nobody_moves_back(
    haproxy: HAProxy,
) -> None:
    backend = map_backend(haproxy)
    await split_at_each_step(
        backend,
        [(10, TrafficAction.START), (25, TrafficAction.SHIFT),
         (50, TrafficAction.SHIFT), (100, TrafficAction.PROMOTE)],
        lambda: canary_users(haproxy),
    )  # fmt: skip

    await backend.apply(change(100, TrafficAction.ROLLBACK))  # absolute: 0% whatever it carried
    assert await backend.current("checkout") == Applied(0)
    assert await canary_users(haproxy) == set()


async def test_weight_mode_sets_both_servers_and_rollback_puts_the_canary_in_maint(
    haproxy: HAProxy,
) -> None:
    backend = HAProxyBackend(RuntimeApi(haproxy.socket), mode="weight", backend="pool")
    api = RuntimeApi(haproxy.socket)

    await backend.apply(change(25))
    assert await backend.current("checkout") == Applied(25)
    assert (await api.run("get weight pool/stable")).startswith("75 ")

    await backend.apply(change(25, TrafficAction.ROLLBACK))
    assert await backend.current("checkout") == Applied(0)
    state = await api.run("show servers state pool")
    canary_line = next(line for line in state.splitlines() if " canary " in line)
    # srv_admin_state (the 7th field) has the maintenance bit set.
    assert int(canary_line.split()[6]) & 1


async def test_a_map_haproxy_does_not_know_is_refused_with_haproxys_words(
    haproxy: HAProxy,
) -> None:
    backend = map_backend(haproxy, map_path="/nowhere/canary.map")

    with pytest.raises(TrafficError, match="Unknown map"):
        await backend.apply(change(10))
    with pytest.raises(TrafficError, match="knows no map"):
        await backend.current("checkout")


async def test_haproxy_down_is_a_clear_traffic_error(haproxy: HAProxy) -> None:
    await down_is_a_traffic_error(
        map_backend(haproxy),
        haproxy.stop,
        reading="cannot reach HAProxy's runtime API",
        applying="stats socket",
    )


# --- in the whole bot: a reload found and repaired ----------------------------------------


@pytest.fixture
async def app(
    haproxy: HAProxy, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[App, Recorder]]:
    traffic = {"backend": "haproxy", "socket": haproxy.socket, "map_file": haproxy.map_file}
    async with app_driving(redis_url, "checkout", traffic) as built:
        yield built


async def test_a_reload_that_lost_the_weight_is_found_and_repaired(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    core, recorder = app
    alice = Actor(user="alice", surface="slack")
    result = await core.service.deploy(alice, "checkout", "v2", DeployOptions(stable="v1"))
    release = result.release
    backend = core.backends["checkout"]
    assert await backend.current("checkout") == Applied(10)

    haproxy.restart()  # a reload: the runtime change is gone, the map file says nothing
    assert await backend.current("checkout") == Applied(None)

    assert await rounds_until(core, backend, "checkout", Applied(10)) == Applied(10)
    await core.events.drain()
    [repaired] = [e for e in recorder.events if e.kind is EventKind.TRAFFIC_REPAIRED]
    assert (repaired.release.id, repaired.detail) == (release.id, "")
    assert_share(await canary_users(haproxy), 10)


async def test_an_engine_that_cannot_be_reached_is_named_at_start(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    said = await unreachable_after_stop(app[0], "checkout", haproxy.stop)
    assert "cannot reach HAProxy's runtime API" in said


async def test_a_step_decided_but_not_applied_before_a_crash_is_applied_by_the_next_round(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    await a_decided_step_lost_in_a_crash_is_applied(app[0], "checkout")
    assert_share(await canary_users(haproxy), 50)


async def test_haproxy_down_mid_release_pauses_it_with_the_reason(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    async def stop() -> None:
        haproxy.stop()

    paused = await paused_when_the_engine_stops(*app, "checkout", stop)
    assert paused.reason.startswith("cannot read back the traffic engine: cannot reach HAProxy")


# --- after a success: the canary pool serves everyone until handed back --------------------


async def released(core: App, version: str) -> Release:
    """``version`` of checkout taken to 100% by a person's clicks, then past its bake."""
    alice = Actor(user="alice", surface="slack")
    release = (await core.service.deploy(alice, "checkout", version)).release
    while release.state is State.PROGRESSING:
        step = release.step
        release = (await core.service.advance(alice, "checkout", expected_step=step)).release
        await core.actuator.drain()
    for _ in range(50):  # the bake (0s here) ends at the controller's next round
        if release.state is State.SUCCEEDED:
            break
        await core.controller.run_once()
        release = await core.store.get(release.id) or release
        await asyncio.sleep(0.02)
    assert release.state is State.SUCCEEDED, release.describe_state()
    return release


async def test_a_success_leaves_the_canary_pool_serving_until_it_is_handed_back(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    core, recorder = app
    bob = Actor(user="bob", surface="slack")
    first = await released(core, "v2")
    assert await core.backends["checkout"].current("checkout") == Applied(100)

    # The next build would land on the pool everyone is on: refused, with the way out.
    with pytest.raises(ConflictError) as refused:
        await core.service.deploy(bob, "checkout", "v3")
    assert str(refused.value) == (
        "cannot deploy v3: the canary pool of `checkout` still serves 100% of users since "
        "checkout#1 (v2) succeeded. Put `v2` on the stable pool, then `/rollout handback "
        "checkout` moves everyone there; deploy the new build to the canary pool after that."
    )
    assert await core.store.active_for("checkout") is None
    assert len(await canary_users(haproxy)) == USERS  # nothing moved

    handed = await core.service.hand_back(bob, "checkout")

    assert handed.outcome is Outcome.DONE and handed.release.id == first.id
    assert await core.backends["checkout"].current("checkout") == Applied(0)
    assert await canary_users(haproxy) == set()
    again = await core.service.hand_back(bob, "checkout")
    assert again.outcome is Outcome.DUPLICATE
    assert again.message == "everyone on `checkout` is on the stable pool already"
    await core.events.drain()
    [event] = [e for e in recorder.events if e.kind is EventKind.HANDED_BACK]
    assert (event.release.id, event.actor) == (first.id, "bob")
    [audit] = [a for a in await core.store.audit_between(0) if a.action == "hand_back"]
    assert (audit.actor, audit.release_id) == ("bob", first.id)

    started = await core.service.deploy(bob, "checkout", "v3")  # now it may start
    assert started.release.stable_version == "v2"
    assert await core.backends["checkout"].current("checkout") == Applied(10)
    with pytest.raises(ConflictError, match=r"cannot hand back `checkout`: checkout#2 \(v3\)"):
        await core.service.hand_back(bob, "checkout")


async def test_a_handback_needs_a_release_that_succeeded(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    core, _ = app
    bob = Actor(user="bob", surface="slack")
    with pytest.raises(ConflictError, match="there is no release yet"):
        await core.service.hand_back(bob, "checkout")
    await core.service.deploy(bob, "checkout", "v2", DeployOptions(stable="v1"))
    await core.service.rollback(bob, "checkout", "not today")
    await core.actuator.drain()
    with pytest.raises(ConflictError, match=r"checkout#1 \(v2\) rolled_back"):
        await core.service.hand_back(bob, "checkout")


async def test_a_deploy_while_haproxy_cannot_be_read_is_refused_and_changes_nothing(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    core, _ = app
    haproxy.stop()
    with pytest.raises(TrafficError, match=r"^cannot deploy v2: the traffic engine of `checkout`"):
        await core.service.deploy(Actor(user="bob", surface="slack"), "checkout", "v2")
    assert await core.store.active_for("checkout") is None


async def test_a_canary_share_no_release_of_ours_set_refuses_a_deploy_with_the_way_out(
    app: tuple[App, Recorder], haproxy: HAProxy
) -> None:
    core, _ = app
    # Someone set a share by hand on the runtime API; shipwatch has no release running.
    answer = await RuntimeApi(haproxy.socket).run(f"add map {haproxy.map_file} checkout 30")
    assert answer.strip() == ""
    with pytest.raises(ConflictError) as refused:
        await core.service.deploy(Actor(user="bob", surface="slack"), "checkout", "v2")
    assert str(refused.value) == (
        "cannot deploy v2: the canary pool of `checkout` still serves 30% of users, and no "
        "release of it is running. Set it to 0% in the traffic engine (or finish whatever set "
        "it), then deploy again."
    )
    assert await core.store.active_for("checkout") is None
    [refusal] = [a for a in await core.store.audit_between(0) if a.outcome == "refused"]
    assert refusal.reason == "canary pool at 30%"
