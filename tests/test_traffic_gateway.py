"""The gateway-api traffic backend, through the real kubernetes_asyncio client, against the
Kubernetes API stand-in: an HTTPRoute's two backendRefs weighted at each step of a release (and
handed back after it), found by name in a reordered route, a conflict storm converging or
refused, a route its Gateway does not accept read as applying nothing, and the same on an Istio
VirtualService."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from bot.app import App
from bot.engine.events import EventKind
from bot.errors import TrafficError
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from bot.traffic.base import Applied, TrafficAction, TrafficChange
from bot.traffic.gateway_api import CONFLICT_RETRIES, GatewayApiBackend
from tests.support.engines import a_decided_step_lost_in_a_crash_is_applied, app_driving
from tests.support.kube_api import KubeApi, kubeconfig
from tests.support.recorder import Recorder

GATEWAY = "gateway.networking.k8s.io"
NAMESPACE = "shop"
ROUTE_KEY = (GATEWAY, NAMESPACE, "httproutes", "checkout")
ALICE = Actor(user="alice", surface="slack")
ACCEPTED = {
    "parents": [
        {
            "parentRef": {"name": "public"},
            "controllerName": "example.net/gateway-controller",
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted"},
                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"},
            ],
        }
    ]
}


def http_route(*refs: tuple[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GATEWAY}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "checkout"},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "hostnames": ["shop.example"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": name, "port": 8080, "weight": weight} for name, weight in refs
                    ],
                }
            ],
        },
        "status": copy.deepcopy(ACCEPTED),
    }


def weights(api: KubeApi) -> dict[str, int]:
    refs = api.objects[ROUTE_KEY]["spec"]["rules"][0]["backendRefs"]
    return {r["name"]: r["weight"] for r in refs}


@pytest.fixture
async def kube_api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as api:
        api.put(
            GATEWAY,
            NAMESPACE,
            "httproutes",
            http_route(("checkout-stable", 100), ("checkout-canary", 0)),
        )
        yield api


def config_file(tmp_path: Path, api: KubeApi) -> str:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kubeconfig(api.url)), encoding="utf-8")
    return str(path)


@pytest.fixture
async def backend(kube_api: KubeApi, tmp_path: Path) -> AsyncIterator[GatewayApiBackend]:
    built = GatewayApiBackend(namespace=NAMESPACE, kubeconfig=config_file(tmp_path, kube_api))
    try:
        yield built
    finally:
        await built.close()


def change(weight: int, action: TrafficAction = TrafficAction.SHIFT) -> TrafficChange:
    return TrafficChange("r-1", "checkout", "v2", "v1", weight, action)


@pytest.fixture
async def app(
    kube_api: KubeApi, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[App, Recorder]]:
    traffic = {
        "backend": "gateway-api",
        "namespace": NAMESPACE,
        "kubeconfig": config_file(tmp_path, kube_api),
    }
    async with app_driving(redis_url, "checkout", traffic) as built:
        yield built


async def test_a_release_weights_both_backends_at_each_step_and_hands_back(
    app: tuple[App, Recorder], kube_api: KubeApi
) -> None:
    core, recorder = app
    release = (
        await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
    ).release
    assert weights(kube_api) == {"checkout-stable": 90, "checkout-canary": 10}
    for step, expected in ((0, 50), (1, 100)):
        release = (await core.service.advance(ALICE, "checkout", expected_step=step)).release
        await core.actuator.drain()
        assert weights(kube_api) == {"checkout-stable": 100 - expected, "checkout-canary": expected}
    assert await core.backends["checkout"].current("checkout") == Applied(100)
    for _ in range(50):
        await core.controller.run_once()
        release = await core.store.get(release.id) or release
        if release.state is State.SUCCEEDED:
            break
    assert release.state is State.SUCCEEDED
    # Every write was a PUT carrying the resourceVersion it was read at.
    assert {m for m, _, _ in kube_api.requests} == {"GET", "PUT"}

    handed = await core.service.hand_back(ALICE, "checkout")
    assert handed.release.id == release.id
    assert weights(kube_api) == {"checkout-stable": 100, "checkout-canary": 0}
    await core.events.drain()
    assert EventKind.HANDED_BACK in recorder.kinds("checkout")


async def test_backends_are_found_by_name_in_a_reordered_route_and_rollback_is_zero(
    backend: GatewayApiBackend, kube_api: KubeApi
) -> None:
    kube_api.put(
        GATEWAY,
        NAMESPACE,
        "httproutes",
        http_route(("checkout-canary", 0), ("checkout-stable", 100)),
    )
    await backend.apply(change(25))
    assert weights(kube_api) == {"checkout-stable": 75, "checkout-canary": 25}
    assert [r["name"] for r in kube_api.objects[ROUTE_KEY]["spec"]["rules"][0]["backendRefs"]] == [
        "checkout-canary", "checkout-stable"
    ]  # fmt: skip
    await backend.apply(change(25, TrafficAction.ROLLBACK))
    assert await backend.current("checkout") == Applied(0)


async def test_a_route_without_one_of_the_backends_is_refused_naming_what_it_has(
    backend: GatewayApiBackend, kube_api: KubeApi
) -> None:
    kube_api.put(GATEWAY, NAMESPACE, "httproutes", http_route(("checkout", 100)))
    before = kube_api.objects[ROUTE_KEY]["metadata"]["resourceVersion"]
    with pytest.raises(TrafficError) as refused:
        await backend.apply(change(10))
    assert str(refused.value) == (
        "rule 0 of HTTPRoute shop/checkout has no backend checkout-stable or checkout-canary "
        "(it has: checkout)"
    )
    assert kube_api.objects[ROUTE_KEY]["metadata"]["resourceVersion"] == before


async def test_a_conflict_storm_converges_and_an_endless_one_is_refused(
    backend: GatewayApiBackend, kube_api: KubeApi
) -> None:
    kube_api.meddle[ROUTE_KEY] = CONFLICT_RETRIES - 1  # every read but the last goes stale
    await backend.apply(change(10))
    assert weights(kube_api) == {"checkout-stable": 90, "checkout-canary": 10}
    puts = [r for r in kube_api.requests if r[0] == "PUT"]
    assert len(puts) == CONFLICT_RETRIES

    kube_api.meddle[ROUTE_KEY] = 1000
    with pytest.raises(TrafficError, match=r"changed under every one of 5 writes of 50%"):
        await backend.apply(change(50))
    assert weights(kube_api) == {"checkout-stable": 90, "checkout-canary": 10}


async def test_a_route_its_gateway_does_not_accept_applies_nothing(
    backend: GatewayApiBackend, kube_api: KubeApi
) -> None:
    def unresolved(status: dict[str, Any]) -> None:
        status["parents"][0]["conditions"][1] = {
            "type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
            "message": "service shop/checkout-canary not found",
        }  # fmt: skip

    kube_api.update_status(ROUTE_KEY, unresolved)
    with pytest.raises(TrafficError) as refused:
        await backend.current("checkout")
    assert str(refused.value) == (
        "HTTPRoute shop/checkout is not applied by Gateway public: ResolvedRefs is False "
        "(BackendNotFound: service shop/checkout-canary not found)"
    )


async def test_an_istio_virtual_service_is_weighted_the_same_way(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    kube_api.put(
        "networking.istio.io",
        NAMESPACE,
        "virtualservices",
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {"name": "checkout"},
            "spec": {
                "hosts": ["checkout"],
                "http": [
                    {"route": [
                        {"destination": {"host": "checkout", "subset": "stable"}, "weight": 100},
                        {"destination": {"host": "checkout", "subset": "canary"}, "weight": 0},
                    ]}
                ],
            },
        },
    )  # fmt: skip
    backend = GatewayApiBackend(
        namespace=NAMESPACE,
        kind="VirtualService",
        stable_backend="checkout/stable",
        canary_backend="checkout/canary",
        kubeconfig=config_file(tmp_path, kube_api),
    )
    try:
        await backend.apply(change(25))
        assert await backend.current("checkout") == Applied(25)
        routes = kube_api.objects[("networking.istio.io", NAMESPACE, "virtualservices", "checkout")]
        assert [r["weight"] for r in routes["spec"]["http"][0]["route"]] == [75, 25]
    finally:
        await backend.close()


async def test_a_step_decided_but_not_applied_before_a_crash_is_applied_by_the_next_round(
    app: tuple[App, Recorder], kube_api: KubeApi
) -> None:
    await a_decided_step_lost_in_a_crash_is_applied(app[0], "checkout")
    assert weights(kube_api) == {"checkout-stable": 50, "checkout-canary": 50}


async def test_a_rollback_in_the_whole_bot_weights_the_canary_zero(
    app: tuple[App, Recorder], kube_api: KubeApi
) -> None:
    core, _ = app
    await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
    result = await core.service.rollback(ALICE, "checkout", "errors doubled")
    await core.actuator.drain()
    stored = await core.store.get(result.release.id)
    assert stored is not None and stored.state is State.ROLLED_BACK
    assert weights(kube_api) == {"checkout-stable": 100, "checkout-canary": 0}
