"""deploy/kubernetes: every object valid against the Kubernetes schemas (kubernetes-validate,
offline), the kustomization complete, the Deployment wired to what `serve` reads, the policy a
valid policy, and the RBAC exactly the verbs the Kubernetes backends use: enough for a whole
release and a rollback through the API stand-in, and nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bot.config import Settings
from bot.release.policy import parse_policy
from bot.traffic.argo_rollouts import ArgoRolloutsBackend
from bot.traffic.base import Applied, TrafficAction, TrafficChange
from bot.traffic.gateway_api import GatewayApiBackend
from tests.support.argo import GROUP, PLURAL, ArgoController, rollout
from tests.support.kube_api import KubeApi, kubeconfig

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                found.append((path.name, doc))
    return found


def the(kind: str) -> dict[str, Any]:
    [obj] = [doc for _, doc in documents() if doc["kind"] == kind]
    return obj


@pytest.mark.parametrize(
    ("file", "obj"), documents(), ids=[f"{f}:{d['kind']}" for f, d in documents()]
)
def test_every_object_is_valid_for_kubernetes(file: str, obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_file_and_only_those() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = sorted(kustomization["resources"])
    on_disk = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert listed == on_disk


def test_the_deployment_runs_two_replicas_probed_on_what_serve_answers() -> None:
    deployment = the("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["PORT"]) == port == Settings.model_validate({"PORT": port}).port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["envFrom"] == [{"secretRef": {"name": "shipwatch"}}]
    # Every variable set here is one the bot reads (or matplotlib's cache directory).
    aliases = {f.validation_alias or name.upper() for name, f in Settings.model_fields.items()}
    assert set(env) - {"MPLCONFIGDIR"} <= {str(a) for a in aliases}
    # The grace period outlasts the bot's own shutdown budget.
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(env["SHIPWATCH_SHUTDOWN_TIMEOUT"])
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounted["/etc/shipwatch"] == "policy"
    assert env["SHIPWATCH_POLICY"].startswith("/etc/shipwatch/")
    assert the("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert the("Service")["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_the_policy_in_the_config_map_is_a_valid_policy() -> None:
    text = the("ConfigMap")["data"]["shipwatch.yaml"]
    policy = parse_policy(text, "deploy/kubernetes/configmap.yaml")
    assert policy.service("checkout").traffic.backend == "argo-rollouts"
    assert policy.service("search").traffic.backend == "gateway-api"


def granted() -> set[tuple[str, str, str]]:
    """(api group, resource, verb) the ClusterRole grants."""
    rules = the("ClusterRole")["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip


def test_the_role_grants_only_what_the_backends_use() -> None:
    assert granted() == {
        ("argoproj.io", "rollouts", "get"),
        ("argoproj.io", "rollouts/status", "patch"),
        ("gateway.networking.k8s.io", "httproutes", "get"),
        ("gateway.networking.k8s.io", "httproutes", "update"),
        ("networking.istio.io", "virtualservices", "get"),
        ("networking.istio.io", "virtualservices", "update"),
    }
    binding = the("RoleBinding")
    assert binding["roleRef"]["name"] == the("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shipwatch", "namespace": "shipwatch"}
    ]


@pytest.fixture
async def kube_api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as api:
        ArgoController(api)
        # The stand-in enforces exactly the role's verbs for this token.
        api.rbac["role"] = {(verb, resource) for _, resource, verb in granted()}
        yield api


async def test_those_verbs_are_enough_for_a_release_and_a_rollback(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig.yaml"
    config.write_text(yaml.safe_dump(kubeconfig(kube_api.url, "role")), encoding="utf-8")
    kube_api.put(GROUP, "shop", PLURAL, rollout("checkout", [10, 50, 100]))
    kube_api.put(
        "gateway.networking.k8s.io",
        "shop",
        "httproutes",
        {
            "metadata": {"name": "search"},
            "spec": {"rules": [{"backendRefs": [
                {"name": "search-stable", "weight": 100}, {"name": "search-canary", "weight": 0},
            ]}]},
        },
    )  # fmt: skip
    key = (GROUP, "shop", PLURAL, "checkout")

    def new_image(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "shop/checkout:v2"

    kube_api.edit(key, new_image)
    argo = ArgoRolloutsBackend(namespace="shop", kubeconfig=str(config), step_timeout=3)
    route = GatewayApiBackend(namespace="shop", kubeconfig=str(config))
    try:
        for weight, action in ((10, TrafficAction.START), (50, TrafficAction.SHIFT),
                               (100, TrafficAction.PROMOTE)):  # fmt: skip
            await argo.apply(TrafficChange("r", "checkout", "v2", "v1", weight, action))
            await route.apply(TrafficChange("s", "search", "v2", "v1", weight, action))
            assert await argo.current("checkout") == Applied(weight)
            assert await route.current("search") == Applied(weight)
        await argo.apply(TrafficChange("r", "checkout", "v2", "v1", 0, TrafficAction.ROLLBACK))
        await route.apply(TrafficChange("s", "search", "v2", "v1", 0, TrafficAction.ROLLBACK))
        assert await route.current("search") == Applied(0)
    finally:
        await argo.close()
        await route.close()
    # Every kind of call the backends make went through under the role (a 403 would have
    # raised above): reads, status patches and replaces.
    assert {m for m, _, _ in kube_api.requests} == {"GET", "PATCH", "PUT"}
