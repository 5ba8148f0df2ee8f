"""Traffic backend that sets the weights of a route's two backends: a Gateway API HTTPRoute, or an
Istio VirtualService.

Per service one route (``namespace``/``route``), one rule of it (``rule``, the index in
``spec.rules`` or ``spec.http``) and the two backends it splits between (``stable_backend`` and
``canary_backend``: Service names for an HTTPRoute's ``backendRefs``; for a VirtualService the
destination ``host``, or ``host/subset``). A step reads the route, sets both weights (canary N,
stable 100 − N) and writes it back with the ``resourceVersion`` it read, so a route someone
changed meanwhile is read again and the step decided again (409, a bounded number of times),
never written over. Backends are found by name, never by position: a reordered route gets the
right weights or, if a backend is gone, a clear refusal. A rollback is the same write at 0,
retried by the controller until it lands. Read back: the weights in the route (their share, as
the Gateway API weighs them) and, for an HTTPRoute, its ``status.parents`` conditions: a route a
Gateway does not accept, or whose backends it cannot resolve, applies nothing.

GitOps tools revert writes made outside git: exclude these weights from Argo CD / Flux sync
(README). The Kubernetes API is reached through bot.traffic.kube.
"""

from __future__ import annotations

from typing import Any

from bot.errors import TrafficError
from bot.traffic.base import Applied, TrafficChange, target_weight
from bot.traffic.kube import Json, KubeObjects, Ref

CONFLICT_RETRIES = 5
KINDS: dict[str, tuple[str, str, str, str]] = {
    # kind: (group, version, plural, where the rules are)
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes", "rules"),
    "VirtualService": ("networking.istio.io", "v1beta1", "virtualservices", "http"),
}


class GatewayApiBackend:
    name = "gateway-api"

    def __init__(
        self,
        *,
        namespace: str,
        route: str = "",
        kind: str = "HTTPRoute",
        rule: int = 0,
        stable_backend: str = "",
        canary_backend: str = "",
        kubeconfig: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"route kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.namespace = namespace
        self.route = route
        self.kind = kind
        self.rule = rule
        self.stable_backend = stable_backend
        self.canary_backend = canary_backend
        self.kube = KubeObjects(kubeconfig=kubeconfig, timeout=timeout)

    def _ref(self, service: str) -> Ref:
        group, version, plural, _ = KINDS[self.kind]
        return Ref(self.kind, group, version, plural, self.namespace, self.route or service)

    def _names(self, service: str) -> tuple[str, str]:
        return (
            self.stable_backend or f"{service}-stable",
            self.canary_backend or f"{service}-canary",
        )

    # --- the port -----------------------------------------------------------------------------

    async def apply(self, change: TrafficChange) -> None:
        want = target_weight(change)
        ref = self._ref(change.service)
        for _ in range(CONFLICT_RETRIES):
            route = await self.kube.get(ref)
            stable, canary = self._backends(route, change.service)
            if (self._weight(canary), self._weight(stable)) == (want, 100 - want):
                return
            canary["weight"], stable["weight"] = want, 100 - want  # in the copy just read
            if await self.kube.replace(ref, route) is not None:
                return
        raise TrafficError(
            f"{ref} changed under every one of {CONFLICT_RETRIES} writes of {want}%: something "
            "else keeps writing it (a GitOps sync, another controller); see the README"
        )

    async def current(self, service: str) -> Applied:
        obj = await self.kube.get(self._ref(service))
        self._accepted(obj, service)
        stable, canary = self._backends(obj, service)
        total = self._weight(stable) + self._weight(canary)
        if total <= 0:
            return Applied(None)
        return Applied(round(100 * self._weight(canary) / total))

    async def close(self) -> None:
        await self.kube.close()

    # --- the route ------------------------------------------------------------------------------

    def _backends(self, obj: Json, service: str) -> tuple[Json, Json]:
        """The stable and the canary backend entries of the rule (the dicts inside ``obj``)."""
        ref = self._ref(service)
        rules_key = KINDS[self.kind][3]
        rules = (obj.get("spec") or {}).get(rules_key)
        if not isinstance(rules, list) or not 0 <= self.rule < len(rules):
            count = len(rules) if isinstance(rules, list) else 0
            raise TrafficError(f"{ref} has no rule {self.rule} (it has {count})")
        entries = rules[self.rule].get("backendRefs" if self.kind == "HTTPRoute" else "route")
        entries = entries if isinstance(entries, list) else []
        stable_name, canary_name = self._names(service)
        found = {name: self._find(entries, name) for name in (stable_name, canary_name)}
        missing = [name for name, entry in found.items() if entry is None]
        if missing:
            have = ", ".join(self._label(e) for e in entries) or "none"
            raise TrafficError(
                f"rule {self.rule} of {ref} has no backend {' or '.join(missing)} (it has: {have})"
            )
        stable, canary = found[stable_name], found[canary_name]
        assert stable is not None and canary is not None
        return stable, canary

    def _label(self, entry: Any) -> str:
        if not isinstance(entry, dict):
            return "?"
        if self.kind == "HTTPRoute":
            return str(entry.get("name", "?"))
        destination = entry.get("destination") or {}
        subset = f"/{destination['subset']}" if destination.get("subset") else ""
        return f"{destination.get('host', '?')}{subset}"

    def _find(self, entries: list[Any], name: str) -> Json | None:
        matches = [e for e in entries if isinstance(e, dict) and self._label(e) == name]
        return matches[0] if len(matches) == 1 else None

    def _accepted(self, obj: Json, service: str) -> None:
        """TrafficError when a parent Gateway does not accept the route or cannot resolve its
        backends (an HTTPRoute says so in its status; a VirtualService does not)."""
        if self.kind != "HTTPRoute":
            return
        for parent in ((obj.get("status") or {}).get("parents")) or []:
            for condition in parent.get("conditions") or []:
                if (
                    condition.get("type") in ("Accepted", "ResolvedRefs")
                    and condition.get("status") == "False"
                ):
                    gateway = (parent.get("parentRef") or {}).get("name", "?")
                    raise TrafficError(
                        f"{self._ref(service)} is not applied by Gateway {gateway}: "
                        f"{condition.get('type')} is False ({condition.get('reason', '?')}: "
                        f"{condition.get('message', '')})"
                    )

    def _weight(self, entry: Json) -> int:
        # An HTTPRoute backendRef without a weight weighs 1; a VirtualService route, nothing.
        weight = entry.get("weight", 1 if self.kind == "HTTPRoute" else 0)
        return int(weight) if isinstance(weight, int) else 0
