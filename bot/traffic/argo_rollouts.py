"""Traffic backend that walks an Argo Rollouts canary, step by step, from shipwatch's verdicts.

Argo Rollouts moves the traffic (through the Rollout's own traffic router); shipwatch decides
when. The Rollout's canary steps mirror shipwatch's ladder, a ``setWeight: N`` followed by an
indefinite ``pause: {}`` for every step below 100% (checked when a release starts, naming the
step that differs). The team's pipeline changes the pod template (or ``set_image`` does, where
GitOps does not own the Rollout); Argo starts the canary and pauses at the first step. Then:

- a step is what ``kubectl argo rollouts promote`` does: a merge patch of the ``status``
  subresource clearing ``pauseConditions``, sent only while the Rollout is paused right before
  that step's ``setWeight``; Argo moves on and pauses again; shipwatch waits until it has;
- promote (100%) clears the last pause: Argo finishes the steps and makes the canary stable;
- rollback is ``{"status": {"abort": true}}``, one write, retried by the controller until it
  lands; ``spec.template`` still names the new version afterwards (Argo keeps it), which the
  thread says;
- read-back: ``status.canary.weights.canary.weight`` (0 once aborted; 100 once the steps are
  done and the canary became stable), with ``currentStepIndex``, ``pauseConditions`` and
  ``phase`` for the errors.

The Kubernetes API is reached through bot.traffic.kube (the official client, the ``k8s`` extra).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from bot.errors import TrafficError
from bot.traffic.base import Applied, TrafficAction, TrafficChange, target_weight
from bot.traffic.kube import Json, KubeObjects, Ref

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "rollouts"
CONFLICT_RETRIES = 5
POLL_S = 0.2  # how often a step's progress is read while Argo carries it out


def ladder_of(steps: list[Any]) -> list[int]:
    """The ``setWeight`` values of a Rollout's canary steps, in order."""
    return [int(s["setWeight"]) for s in steps if isinstance(s, dict) and "setWeight" in s]


def mirror_problem(steps: list[Any], weights: list[int]) -> str:
    """Why the Rollout's steps do not mirror shipwatch's ladder ("" when they do).

    Expected: for each weight below 100, ``setWeight: w`` then ``pause: {}`` (no duration, so
    Argo waits for shipwatch); a last ``setWeight: 100`` is allowed."""
    expected: list[Json] = []
    for w in weights:
        if w < 100:
            expected += [{"setWeight": w}, {"pause": {}}]
    found = list(steps)
    if found and found[-1] == {"setWeight": 100}:
        found.pop()
    for index, want in enumerate(expected):
        got = found[index] if index < len(found) else None
        if got != want:
            shown = json.dumps(got, sort_keys=True) if got is not None else "nothing"
            return (
                f"step {index + 1} of the Rollout is {shown}, and shipwatch's ladder "
                f"({' → '.join(f'{w}%' for w in weights)}) needs {json.dumps(want)} there"
            )
    if len(found) > len(expected):
        extra = json.dumps(found[len(expected)], sort_keys=True)
        return f"the Rollout has steps after its last pause that shipwatch does not drive: {extra}"
    return ""


# Labels and annotations by which Argo CD and Flux mark what they own (and would revert).
GITOPS_MARKS = {
    "argocd.argoproj.io/instance": "Argo CD",
    "argocd.argoproj.io/tracking-id": "Argo CD",
    "kustomize.toolkit.fluxcd.io/name": "Flux",
    "helm.toolkit.fluxcd.io/name": "Flux",
}
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def gitops_owner(obj: Json) -> str:
    """The GitOps tool that owns the object ("" when none does)."""
    meta = obj.get("metadata") or {}
    marks = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    return next((tool for mark, tool in GITOPS_MARKS.items() if mark in marks), "")


def with_tag(image: str, tag: str) -> str:
    """``image`` with its tag (and digest) replaced by ``tag``."""
    if not _TAG.match(tag):
        raise TrafficError(f"`{tag}` cannot be an image tag (letters, digits, _ . - only)")
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}:{tag}" if head else f"{last}:{tag}"


def _status(obj: Json) -> Json:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _steps(obj: Json) -> list[Any]:
    canary = ((obj.get("spec") or {}).get("strategy") or {}).get("canary") or {}
    steps = canary.get("steps") or []
    return steps if isinstance(steps, list) else []


def completed(obj: Json) -> bool:
    """Argo ran every step and made the canary the stable version."""
    status = _status(obj)
    index = status.get("currentStepIndex")
    return (
        isinstance(index, int)
        and index >= len(_steps(obj))
        and bool(status.get("stableRS"))
        and status.get("stableRS") == status.get("currentPodHash")
    )


def weight_of(obj: Json) -> int | None:
    """The percent of users on the canary, as the Rollout's status says."""
    status = _status(obj)
    if status.get("abort"):
        return 0
    if completed(obj):
        return 100
    weight = (((status.get("canary") or {}).get("weights") or {}).get("canary") or {}).get("weight")
    return int(weight) if isinstance(weight, int) else None


def paused_before(obj: Json) -> int | None:
    """The ``setWeight`` the Rollout would go to when its pause is cleared (100 at the last
    pause), or None when it is not paused at a step."""
    status = _status(obj)
    if not status.get("pauseConditions"):
        return None
    index = status.get("currentStepIndex")
    steps = _steps(obj)
    if not isinstance(index, int) or index >= len(steps) or "pause" not in steps[index]:
        return None
    following = ladder_of(steps[index + 1 :])
    return following[0] if following else 100


def where(obj: Json) -> str:
    """The Rollout's position in words, for errors."""
    status = _status(obj)
    weight = weight_of(obj)
    paused = " (paused)" if status.get("pauseConditions") else ""
    return (
        f"phase {status.get('phase', '?')}, step index {status.get('currentStepIndex', '?')}, "
        f"canary weight {weight if weight is not None else '?'}%{paused}"
    )


class ArgoRolloutsBackend:
    name = "argo-rollouts"

    def __init__(
        self,
        *,
        namespace: str,
        rollout: str = "",
        kubeconfig: str | None = None,
        step_timeout: float = 120.0,
        timeout: float = 5.0,
        set_image: bool = False,
        container: str = "",
    ) -> None:
        self.namespace = namespace
        self.rollout = rollout
        self.set_image = set_image
        self.container = container
        self.step_timeout = step_timeout
        self.kube = KubeObjects(kubeconfig=kubeconfig, timeout=timeout)

    def rollout_of(self, service: str) -> str:
        return self.rollout or service

    # --- the port -----------------------------------------------------------------------------

    async def check_plan(self, service: str, weights: list[int]) -> str:
        obj = await self._get(service)
        problem = mirror_problem(_steps(obj), weights)
        if not problem and self.set_image and (owner := gitops_owner(obj)):
            problem = (
                f"it is managed by {owner}, which would put the old image back: shipwatch does "
                "not set images there (leave out `set_image` and let git change the image)"
            )
        if problem:
            return f"Rollout {self._name(service)}: {problem}"
        return ""

    async def apply(self, change: TrafficChange) -> None:
        service = change.service
        if change.action is TrafficAction.ROLLBACK:
            await self._patch_status(service, {"status": {"abort": True}})
            return
        if change.action is TrafficAction.HAND_BACK:
            return  # Argo made the canary stable itself when its steps ended
        want = target_weight(change)
        if change.action is TrafficAction.START and self.set_image:
            await self._set_image(service, change.version)
        starting = change.action is TrafficAction.START
        obj = await self._get(service)
        # At a start the last release's abort may still show until Argo takes up the new
        # revision (the image just set, or the pipeline's): that is waited for below.
        if _status(obj).get("abort") and not starting:
            raise TrafficError(
                f"Rollout {self._name(service)} is aborted ({where(obj)}): a new revision (a "
                "changed pod template) starts a new canary"
            )
        if self._reached(obj, want):
            return
        if change.action is not TrafficAction.START:
            next_weight = paused_before(obj)
            if next_weight != want:
                raise TrafficError(
                    f"Rollout {self._name(service)} is not paused right before {want}% "
                    f"({where(obj)}); shipwatch moves it only from there"
                )
            await self._patch_status(service, {"status": {"pauseConditions": None}})
        await self._until_reached(service, want, starting=starting)

    async def current(self, service: str) -> Applied:
        return Applied(weight_of(await self._get(service)))

    async def close(self) -> None:
        await self.kube.close()

    # --- setting the image, where no GitOps tool owns the Rollout --------------------------------

    async def _set_image(self, service: str, version: str) -> None:
        """What ``kubectl argo rollouts set image`` does: the container's image at the new tag,
        written with the resourceVersion read (a 409 is read and written again)."""
        ref = self._ref(service)
        for _ in range(CONFLICT_RETRIES):
            obj = await self._get(service)
            if owner := gitops_owner(obj):
                raise TrafficError(f"{ref} is managed by {owner}: shipwatch does not set its image")
            container = self._container(obj, ref)
            image = with_tag(str(container.get("image", "")), version)
            if container.get("image") == image:
                return
            container["image"] = image
            if await self.kube.replace(ref, obj) is not None:
                return
        raise TrafficError(f"{ref} changed under every one of {CONFLICT_RETRIES} image writes")

    def _container(self, obj: Json, ref: Ref) -> Json:
        template = (obj.get("spec") or {}).get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        named = [c for c in containers if not self.container or c.get("name") == self.container]
        if not named:
            have = ", ".join(str(c.get("name")) for c in containers) or "none"
            raise TrafficError(f"{ref} has no container {self.container} (it has: {have})")
        found: Json = named[0]
        return found

    # --- waiting for Argo -----------------------------------------------------------------------

    @staticmethod
    def _reached(obj: Json, want: int) -> bool:
        if want >= 100:
            return completed(obj)
        # A step is reached once Argo set its weight and paused again (or moved on).
        return weight_of(obj) == want and paused_before(obj) != want

    async def _until_reached(self, service: str, want: int, *, starting: bool = False) -> None:
        deadline = time.monotonic() + self.step_timeout
        while True:
            obj = await self._get(service)
            if self._reached(obj, want):
                return
            aborted = bool(_status(obj).get("abort"))
            if aborted and not starting:
                raise TrafficError(f"Rollout {self._name(service)} was aborted ({where(obj)})")
            if time.monotonic() >= deadline:
                hint = (
                    "; it is still aborted: a new revision (a changed pod template) starts a "
                    "new canary"
                    if aborted
                    else ""
                )
                raise TrafficError(
                    f"Argo Rollouts did not bring {self._name(service)} to {want}% within "
                    f"{self.step_timeout:g}s ({where(obj)}){hint}"
                )
            await asyncio.sleep(POLL_S)

    # --- the Kubernetes API ---------------------------------------------------------------------

    def _name(self, service: str) -> str:
        return f"{self.namespace}/{self.rollout_of(service)}"

    def _ref(self, service: str) -> Ref:
        return Ref("Rollout", GROUP, VERSION, PLURAL, self.namespace, self.rollout_of(service))

    async def _get(self, service: str) -> Json:
        return await self.kube.get(self._ref(service))

    async def _patch_status(self, service: str, body: Json) -> None:
        await self.kube.patch_status(self._ref(service), body)
