"""The argo-rollouts traffic backend, through the real kubernetes_asyncio client, against the
Kubernetes API stand-in (tests/support/cluster.api.py) with Argo's controller played by
tests/support/argo.py: a release walked step by step to 100% and made stable by Argo, a rollback
as an abort, a Rollout whose steps differ from the plan refused, a step decided before a crash
applied by the next round, Argo not moving, RBAC refusals and a missing Rollout said plainly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from kubernetes_asyncio import client as kube
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client.exceptions import ApiException

from bot.app import App
from bot.engine.events import EventKind
from bot.errors import ConflictError, TrafficError
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from bot.traffic.argo_rollouts import ArgoRolloutsBackend, mirror_problem, with_tag
from bot.traffic.base import Applied, TrafficAction, TrafficChange
from tests.support.argo import GROUP, PLURAL, ArgoController, rollout
from tests.support.engines import a_decided_step_lost_in_a_crash_is_applied, app_driving
from tests.support.kube_api import TOKEN, KubeApi, kubeconfig
from tests.support.recorder import Recorder

NAMESPACE = "shop"
KEY = (GROUP, NAMESPACE, PLURAL, "checkout")
ALICE = Actor(user="alice", surface="slack")


@dataclass
class Cluster:
    api: KubeApi
    argo: ArgoController


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with KubeApi() as api:
        argo = ArgoController(api)
        api.put(GROUP, NAMESPACE, PLURAL, rollout("checkout", [10, 50, 100]))
        yield Cluster(api, argo)


def config_file(tmp_path: Path, api: KubeApi, token: str = TOKEN) -> str:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kubeconfig(api.url, token)), encoding="utf-8")
    return str(path)


def new_revision(api: KubeApi, image: str = "shop/checkout:v2") -> None:
    """What the team's pipeline does before /deploy: a new image in the pod template."""

    def set_image(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = image

    api.edit(KEY, set_image)


def argo_traffic(cluster: Cluster, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The policy's traffic block for checkout's Rollout in the stand-in."""
    return {
        "backend": "argo-rollouts",
        "namespace": NAMESPACE,
        "kubeconfig": config_file(tmp_path, cluster.api),
        "step_timeout": "3s",
        **extra,
    }


@pytest.fixture
async def app(
    cluster: Cluster, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[App, Recorder]]:
    async with app_driving(redis_url, "checkout", argo_traffic(cluster, tmp_path)) as built:
        yield built


async def until_paused_at(api: KubeApi, weight: int) -> None:
    for _ in range(100):
        status = api.objects[KEY].get("status", {})
        if (
            status.get("pauseConditions")
            and status["canary"]["weights"]["canary"]["weight"] == weight
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"Argo did not pause at {weight}%: {api.objects[KEY]['status']}")


async def test_a_release_walks_the_rollout_and_argo_makes_the_canary_stable(
    app: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, recorder = app
    backend = core.backends["checkout"]
    new_revision(cluster.api)
    await until_paused_at(cluster.api, 10)

    release = (
        await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
    ).release
    assert await backend.current("checkout") == Applied(10)

    release = (await core.service.advance(ALICE, "checkout", expected_step=0)).release
    await core.actuator.drain()
    assert await backend.current("checkout") == Applied(50)
    status = cluster.api.objects[KEY]["status"]
    assert (status["currentStepIndex"], status["phase"]) == (3, "Paused")

    release = (await core.service.advance(ALICE, "checkout", expected_step=1)).release
    await core.actuator.drain()
    assert await backend.current("checkout") == Applied(100)
    status = cluster.api.objects[KEY]["status"]
    assert status["stableRS"] == status["currentPodHash"] and status["phase"] == "Healthy"
    # Only the status subresource was written, each time as a merge patch.
    writes = [(m, p.rsplit("/", 1)[-1], t) for m, p, t in cluster.api.requests if m != "GET"]
    assert writes == [("PATCH", "status", "application/merge-patch+json")] * 2

    for _ in range(50):
        await core.controller.run_once()
        stored = await core.store.get(release.id)
        if stored is not None and stored.state is State.SUCCEEDED:
            break
        await asyncio.sleep(0.02)
    assert stored is not None and stored.state is State.SUCCEEDED
    await core.events.drain()
    assert EventKind.TRAFFIC_REPAIRED not in recorder.kinds("checkout")  # 100% read as 100%


async def test_a_rollback_aborts_the_rollout(app: tuple[App, Recorder], cluster: Cluster) -> None:
    core, _ = app
    new_revision(cluster.api)
    await until_paused_at(cluster.api, 10)
    await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))

    result = await core.service.rollback(ALICE, "checkout", "p99 doubled")
    await core.actuator.drain()

    assert (await core.store.get(result.release.id)).state is State.ROLLED_BACK  # type: ignore[union-attr]
    assert cluster.api.objects[KEY]["status"]["abort"] is True  # written; Argo acts on it
    assert await core.backends["checkout"].current("checkout") == Applied(0)
    for _ in range(100):
        status = cluster.api.objects[KEY]["status"]
        if status["phase"] == "Degraded":
            break
        await asyncio.sleep(0.02)
    assert status["phase"] == "Degraded"
    assert status["canary"]["weights"]["canary"]["weight"] == 0
    # Argo keeps the new version in the template: the pipeline's next revision replaces it.
    image = cluster.api.objects[KEY]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "shop/checkout:v2"


async def test_a_rollout_whose_steps_differ_from_the_plan_is_refused_naming_the_step(
    app: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, _ = app
    cluster.api.put(GROUP, NAMESPACE, PLURAL, rollout("checkout", [10, 25, 100]))

    with pytest.raises(ConflictError) as refused:
        await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))

    assert str(refused.value) == (
        'cannot deploy v2: Rollout shop/checkout: step 3 of the Rollout is {"setWeight": 25}, '
        'and shipwatch\'s ladder (10% → 50% → 100%) needs {"setWeight": 50} there. Make the '
        "engine's steps match (or the service's `steps` in the policy), then deploy again."
    )
    assert await core.store.active_for("checkout") is None


def test_the_steps_must_be_set_weights_each_followed_by_an_indefinite_pause() -> None:
    ladder = [10, 50, 100]
    good = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    assert mirror_problem(good, ladder) == ""
    assert mirror_problem([*good, {"setWeight": 100}], ladder) == ""
    timed = [{"setWeight": 10}, {"pause": {"duration": "5m"}}, *good[2:]]
    assert mirror_problem(timed, ladder).startswith(
        'step 2 of the Rollout is {"pause": {"duration": "5m"}}'
    )
    assert mirror_problem(good[:2], ladder).startswith("step 3 of the Rollout is nothing")
    extra = [*good, {"analysis": {"templates": []}}]
    assert "steps after its last pause" in mirror_problem(extra, ladder)


async def test_a_step_decided_but_not_applied_before_a_crash_is_applied_by_the_next_round(
    app: tuple[App, Recorder], cluster: Cluster
) -> None:
    new_revision(cluster.api)
    await until_paused_at(cluster.api, 10)
    await a_decided_step_lost_in_a_crash_is_applied(app[0], "checkout")
    assert cluster.api.objects[KEY]["status"]["currentStepIndex"] == 3


async def test_argo_not_moving_pauses_the_release_with_where_the_rollout_stands(
    app: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, recorder = app
    new_revision(cluster.api)
    await until_paused_at(cluster.api, 10)
    await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
    cluster.argo.enabled = False  # Argo's controller is down: nothing moves

    result = await core.service.advance(ALICE, "checkout", expected_step=0)
    await core.actuator.drain()

    stored = await core.store.get(result.release.id)
    assert stored is not None and stored.state is State.PAUSED
    assert stored.reason.startswith(
        "traffic backend failed to set 50%: Argo Rollouts did not bring shop/checkout to 50% "
        "within 3s (phase Paused, step index 1, canary weight 10%)"
    ), stored.reason
    await core.events.drain()
    assert EventKind.PAUSED in recorder.kinds("checkout")


async def test_a_token_without_the_status_verb_and_a_missing_rollout_are_said_plainly(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.api.rbac["read-only"] = {("get", "rollouts")}
    backend = ArgoRolloutsBackend(
        namespace=NAMESPACE, kubeconfig=config_file(tmp_path, cluster.api, "read-only"), timeout=2
    )
    try:
        new_revision(cluster.api)
        await until_paused_at(cluster.api, 10)
        with pytest.raises(TrafficError) as refused:
            await backend.apply(TrafficChange("r", "checkout", "v2", "v1", 50, TrafficAction.SHIFT))
        assert str(refused.value) == (
            "the Kubernetes API refused patching the status of Rollout shop/checkout: HTTP 403 "
            'Forbidden: rollouts.argoproj.io "checkout" is forbidden: User '
            '"system:serviceaccount:shipwatch:shipwatch" cannot patch resource '
            '"rollouts/status" in API group "argoproj.io" in the namespace "shop"'
        )
        with pytest.raises(TrafficError, match=r'HTTP 404 Not Found: rollouts.argoproj.io "cart"'):
            await backend.current("cart")
    finally:
        await backend.close()


async def test_the_stand_in_refuses_patches_the_way_a_real_api_server_does(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The bug class the backend avoids: the client sends a dict as a JSON patch unless told."""
    api_client = await kube_config.new_client_from_config(
        config_file=config_file(tmp_path, cluster.api)
    )
    try:
        api = kube.CustomObjectsApi(api_client)
        args = (GROUP, "v1alpha1", NAMESPACE, PLURAL, "checkout")
        with pytest.raises(ApiException) as as_json_patch:
            await api.patch_namespaced_custom_object_status(*args, {"status": {"abort": True}})
        assert as_json_patch.value.status == 400
        with pytest.raises(ApiException) as strategic:
            await api.patch_namespaced_custom_object(
                *args,
                {"spec": {}},
                _content_type="application/strategic-merge-patch+json",  # type: ignore[call-arg]
            )
        assert strategic.value.status == 415
        test_fails = [{"op": "test", "path": "/spec/replicas", "value": 9}]
        with pytest.raises(ApiException) as tested:
            await api.patch_namespaced_custom_object(*args, test_fails)
        assert tested.value.status == 422
        stale = dict(cluster.api.objects[KEY])
        stale["metadata"] = dict(stale["metadata"], resourceVersion="1")
        with pytest.raises(ApiException) as conflict:
            await api.replace_namespaced_custom_object(*args, stale)
        assert conflict.value.status == 409
        # A write to the main resource never changes status, and the reverse.
        await api.patch_namespaced_custom_object(
            *args, {"spec": {"replicas": 6}, "status": {"phase": "Hacked"}},
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]
        )  # fmt: skip
        assert cluster.api.objects[KEY]["status"]["phase"] == "Healthy"
        assert cluster.api.objects[KEY]["spec"]["replicas"] == 6
    finally:
        await api_client.close()


# --- set_image: /deploy changes the image where no GitOps tool owns the Rollout ---------------


@pytest.fixture
async def setting_images(
    cluster: Cluster, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[App, Recorder]]:
    traffic = argo_traffic(cluster, tmp_path, set_image="true")
    async with app_driving(redis_url, "checkout", traffic) as built:
        yield built


def image(cluster: Cluster) -> str:
    return str(cluster.api.objects[KEY]["spec"]["template"]["spec"]["containers"][0]["image"])


async def test_deploy_sets_the_image_and_argo_starts_the_canary(
    setting_images: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, _ = setting_images
    cluster.api.meddle[KEY] = 2  # someone else writes the Rollout twice meanwhile

    await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))

    assert image(cluster) == "shop/checkout:v2"
    assert await core.backends["checkout"].current("checkout") == Applied(10)
    # At least one write met a newer resourceVersion (409) and was read and written again.
    assert sum(1 for m, _, _ in cluster.api.requests if m == "PUT") >= 2


async def test_a_rollout_a_gitops_tool_owns_gets_no_image_from_shipwatch(
    setting_images: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, _ = setting_images
    cluster.api.objects[KEY]["metadata"]["labels"] = {"argocd.argoproj.io/instance": "shop"}

    with pytest.raises(ConflictError, match=r"it is managed by Argo CD, which would put the old"):
        await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))

    assert image(cluster) == "shop/checkout:v1"
    assert await core.store.active_for("checkout") is None


def test_an_image_gets_the_release_as_its_tag() -> None:
    assert (
        with_tag("registry:5000/shop/checkout:v1", "v2.4.1") == "registry:5000/shop/checkout:v2.4.1"
    )
    assert with_tag("checkout@sha256:0123abcd", "v2") == "checkout:v2"
    assert with_tag("ghcr.io/acme/checkout", "2026-12-06_1") == "ghcr.io/acme/checkout:2026-12-06_1"
    with pytest.raises(TrafficError, match="cannot be an image tag"):
        with_tag("checkout:v1", "v2+build.7")


async def test_after_a_rollback_the_next_release_sets_its_image_and_starts_a_new_canary(
    setting_images: tuple[App, Recorder], cluster: Cluster
) -> None:
    core, _ = setting_images
    await core.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
    await core.service.rollback(ALICE, "checkout", "p99 doubled")
    await core.actuator.drain()
    assert cluster.api.objects[KEY]["status"]["abort"] is True

    # The abort still shows when the new image is written; Argo clears it a moment later.
    started = await core.service.deploy(ALICE, "checkout", "v3", DeployOptions(stable="v1"))

    assert started.release.state is State.PROGRESSING
    assert image(cluster) == "shop/checkout:v3"
    assert await core.backends["checkout"].current("checkout") == Applied(10)
    assert "abort" not in cluster.api.objects[KEY]["status"]
