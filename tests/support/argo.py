"""Argo Rollouts' controller, played for Rollouts kept in the Kubernetes API stand-in.

What the tests need of Argo, as Argo does it (writing only ``status``, a moment after the
change it reacts to, through the stand-in's store):

- a changed pod template is a new revision: the canary restarts at step 0 (``abort`` cleared);
- ``setWeight: N`` sets ``status.canary.weights.canary.weight`` and moves on; ``pause: {}``
  stops there with a ``CanaryPauseStep`` pause condition (``controllerPause``);
- clearing ``pauseConditions`` at a pause resumes: the next steps run until the next pause;
- after the last step the canary becomes stable (``stableRS`` = ``currentPodHash``, canary
  weight 0, phase Healthy);
- ``abort: true`` sends everyone back to stable (canary weight 0, phase Degraded).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from tests.support.kube_api import Json, Key, KubeApi

GROUP = "argoproj.io"
PLURAL = "rollouts"
REACTION_S = 0.05  # Argo reacts a moment after a change, not within the request


def rollout(name: str, weights: list[int], image: str = "shop/checkout:v1") -> Json:
    """A Rollout whose canary steps mirror ``weights`` (setWeight, pause {} for each below 100),
    fully rolled out at ``image``."""
    steps: list[Json] = []
    for weight in weights:
        if weight < 100:
            steps += [{"setWeight": weight}, {"pause": {}}]
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]}}  # fmt: skip
    pod_hash = template_hash(template)
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
            "strategy": {
                "canary": {
                    "canaryService": f"{name}-canary",
                    "stableService": f"{name}-stable",
                    "trafficRouting": {"nginx": {"stableIngress": name}},
                    "steps": steps,
                }
            },
        },
        "status": {
            "phase": "Healthy",
            "currentStepIndex": len(steps),
            "currentPodHash": pod_hash,
            "stableRS": pod_hash,
            "canary": {"weights": {"canary": {"weight": 0}, "stable": {"weight": 100}}},
        },
    }


def template_hash(template: Any) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class ArgoController:
    """Reacts to every write to a Rollout in ``api``, as Argo's controller would."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.enabled = True  # False: Argo is down; nothing moves
        self._pending: set[Key] = set()
        api.on_write.append(self._changed)

    def _changed(self, key: Key) -> None:
        if key[2] != PLURAL or key in self._pending or not self.enabled:
            return
        self._pending.add(key)
        asyncio.get_running_loop().call_later(REACTION_S, self._reconcile, key)

    def _reconcile(self, key: Key) -> None:
        self._pending.discard(key)
        obj = self.api.objects.get(key)
        if obj is None or not self.enabled:
            return
        new = next_status(obj)
        if new != obj.get("status"):

            def write(status: Json) -> None:
                status.clear()
                status.update(new)

            self.api.update_status(key, write)


def next_status(obj: Json) -> Json:
    """The status Argo would write next for ``obj``."""
    spec = obj["spec"]
    steps: list[Json] = spec["strategy"]["canary"]["steps"]
    status: Json = json.loads(json.dumps(obj.get("status") or {}))
    pod_hash = template_hash(spec["template"])
    weights = status.setdefault("canary", {}).setdefault("weights", {})
    if status.get("currentPodHash") != pod_hash:  # a new revision: a new canary
        status.update(currentPodHash=pod_hash, currentStepIndex=0, phase="Progressing")
        status.pop("abort", None)
        status.pop("pauseConditions", None)
        status.pop("controllerPause", None)
    if status.get("stableRS") == pod_hash:
        return status  # fully rolled out: nothing to do
    if status.get("abort"):
        weights["canary"] = {"weight": 0}
        weights["stable"] = {"weight": 100}
        status.update(phase="Degraded", message="RolloutAborted: Rollout aborted update")
        status.pop("pauseConditions", None)
        return status
    index = int(status.get("currentStepIndex") or 0)
    if status.get("controllerPause") and not status.get("pauseConditions"):
        index += 1  # someone cleared the pause: resume
        status.pop("controllerPause", None)
    while index < len(steps):
        step = steps[index]
        if "setWeight" in step:
            weights["canary"] = {"weight": step["setWeight"]}
            weights["stable"] = {"weight": 100 - step["setWeight"]}
            index += 1
            continue
        if "pause" in step:
            status.update(
                currentStepIndex=index,
                phase="Paused",
                controllerPause=True,
                pauseConditions=[
                    {"reason": "CanaryPauseStep", "startTime": "2026-12-06T00:00:00Z"}
                ],
            )
            return status
        index += 1
    status.update(currentStepIndex=index, phase="Healthy", stableRS=pod_hash)
    weights["canary"] = {"weight": 0}
    weights["stable"] = {"weight": 100}
    return status
