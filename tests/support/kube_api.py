"""A Kubernetes API server stand-in for namespaced custom objects (Argo Rollouts, Gateway API).

No real API server can be installed on these machines, so the tests drive shipwatch's backends
through the real ``kubernetes_asyncio`` client against this one, which answers as
kube-apiserver does for what those backends use:

- ``GET``/``PUT``/``PATCH`` on ``/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}`` and
  its ``/status`` subresource: a write to the main resource never changes ``status``, a write
  to ``status`` never changes anything else;
- ``metadata.resourceVersion`` bumped on every write; a ``PUT`` carrying a stale one is a 409
  ``Conflict``; ``metadata.generation`` bumped when ``spec`` changes;
- patch types: ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902, a failed ``test`` op is a 422), ``application/apply-patch+yaml`` (needs
  ``fieldManager``); ``application/strategic-merge-patch+json`` is refused with 415 on custom
  resources, and a JSON object sent as a JSON patch with 400, as the real server does;
- 401 without a known bearer token, 403 for a verb the token's role lacks (``rbac``), 404 for an
  object that does not exist; every error is a ``Status`` object.

``objects`` is the store, shared with the test's stand-in controllers (which move ``status``
the way Argo Rollouts would) through ``update_status``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.standin import LocalServer

TOKEN = "shipwatch-tests-kube-token"
Key = tuple[str, str, str, str]  # group, namespace, plural, name
Json = dict[str, Any]

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
STRATEGIC = "application/strategic-merge-patch+json"


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }
    return web.json_response(body, status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class PatchFailed(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _walk(doc: Any, pointer: str) -> tuple[Any, str]:
    """The container of ``pointer``'s last token, and that token."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if not parts:
        raise PatchFailed(422, "Invalid", "the root cannot be patched")
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise PatchFailed(422, "Invalid", f"missing path: {pointer}")
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise PatchFailed(422, "Invalid", f"missing path: {pointer}")
    return node, parts[-1]


def json_patch(doc: Json, ops: list[Any]) -> Json:
    """RFC 6902 add, remove, replace and test (what the backends send)."""
    out = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchFailed(400, "BadRequest", f"invalid JSON patch operation: {op!r}")
        node, last = _walk(out, op["path"])
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last) if last.isdigit() else -1
            if not 0 <= index <= len(node) or (kind != "add" and index == len(node)):
                raise PatchFailed(422, "Invalid", f"index out of range: {op['path']}")
            if kind == "add":
                node.insert(index, op.get("value"))
            elif kind == "remove":
                node.pop(index)
            elif kind == "replace":
                node[index] = op.get("value")
            elif kind == "test" and node[index] != op.get("value"):
                raise PatchFailed(422, "Invalid", f"testing value {op['path']} failed: test failed")
            continue
        if kind in ("remove", "replace", "test") and last not in node:
            raise PatchFailed(422, "Invalid", f"missing path: {op['path']}")
        if kind in ("add", "replace"):
            node[last] = op.get("value")
        elif kind == "remove":
            del node[last]
        elif kind == "test" and node[last] != op.get("value"):
            raise PatchFailed(422, "Invalid", f"testing value {op['path']} failed: test failed")
        elif kind not in ("add", "replace", "remove", "test"):
            raise PatchFailed(400, "BadRequest", f"unsupported JSON patch op {kind!r}")
    return out


class KubeApi(LocalServer):
    """The store and its HTTP face. ``rbac``: token → the (verb, resource) pairs it may use
    (resource ``rollouts`` or ``rollouts/status``); the default token may do anything."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[Key, Json] = {}
        self.rbac: dict[str, set[tuple[str, str]]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, content type
        # Called after every successful write (the stand-in controllers react here).
        self.on_write: list[Callable[[Key], None]] = []
        # Another writer that touches an object right after each of its next N reads, so a
        # write based on what was read meets a newer resourceVersion (a conflict storm).
        self.meddle: dict[Key, int] = {}
        self._version = 1000

    @property
    def url(self) -> str:
        return self.base_url

    # --- the store ----------------------------------------------------------------------------

    def put(self, group: str, namespace: str, plural: str, obj: Json) -> Json:
        """Create or replace an object as an admin would (kubectl apply), status included."""
        key = (group, namespace, plural, obj["metadata"]["name"])
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["generation"] = self.objects.get(key, {}).get("metadata", {}).get("generation", 0) + 1
        self._stamp(stored)
        self.objects[key] = stored
        return stored

    def update_status(self, key: Key, change: Callable[[Json], None]) -> None:
        """A controller writing ``status`` (through the status subresource, as they do)."""
        obj = self.objects[key]
        status_doc = copy.deepcopy(obj.get("status") or {})
        change(status_doc)
        obj["status"] = status_doc
        self._stamp(obj)
        self._written(key)

    def edit(self, key: Key, change: Callable[[Json], None]) -> None:
        """Someone changes the object's spec (a pipeline setting a new image): a new generation."""
        obj = self.objects[key]
        change(obj)
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        self._stamp(obj)
        self._written(key)

    def bump(self, key: Key) -> None:
        """Another writer touched the object (a label, an annotation): a new resourceVersion."""
        obj = self.objects[key]
        obj["metadata"].setdefault("annotations", {})["touched"] = str(self._version)
        self._stamp(obj)

    def _stamp(self, obj: Json) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _written(self, key: Key) -> None:
        for callback in list(self.on_write):
            callback(key)

    # --- HTTP -----------------------------------------------------------------------------------

    def routes(self, router: web.UrlDispatcher) -> None:
        base = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"
        for path, sub in ((base, False), (base + "/status", True)):
            router.add_get(path, self._handler("get", sub))
            router.add_put(path, self._handler("update", sub))
            router.add_patch(path, self._handler("patch", sub))

    def _handler(self, verb: str, sub: bool) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            return await self._handle(request, verb, sub)

        return handle

    async def _handle(self, request: web.Request, verb: str, sub: bool) -> web.Response:
        m = request.match_info
        group, plural, name = m["group"], m["plural"], m["name"]
        resource = plural + ("/status" if sub else "")
        kind = f"{plural}.{group}"
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        self.requests.append((request.method, request.path, content_type))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token != TOKEN and token not in self.rbac:
            return status(401, "Unauthorized", "Unauthorized")
        if token in self.rbac and (verb, resource) not in self.rbac[token]:
            return status(
                403,
                "Forbidden",
                f'{kind} "{name}" is forbidden: User "system:serviceaccount:shipwatch:shipwatch" '
                f'cannot {verb} resource "{resource}" in API group "{group}" in the namespace '
                f'"{m["namespace"]}"',
                name=name,
                group=group,
                kind=plural,
            )
        key = (group, m["namespace"], plural, name)
        current = self.objects.get(key)
        if current is None:
            return status(404, "NotFound", f'{kind} "{name}" not found', name=name, group=group)
        if verb == "get":
            answer = web.json_response(current)
            if self.meddle.get(key, 0) > 0:
                self.meddle[key] -= 1
                self.bump(key)
            return answer
        raw = await request.read()
        if verb == "update":
            try:
                body = json.loads(raw)
            except ValueError:
                return status(400, "BadRequest", "the body is not JSON")
            return self._update(key, current, body, sub, kind, name)
        return self._patch(key, current, raw, content_type, request, sub)

    def _update(
        self, key: Key, current: Json, body: Any, sub: bool, kind: str, name: str
    ) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            return status(400, "BadRequest", "the object has no metadata")
        sent = body["metadata"].get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=name,
            )
        return self._store(key, current, body, sub)

    def _patch(
        self,
        key: Key,
        current: Json,
        raw: bytes,
        content_type: str,
        request: web.Request,
        sub: bool,
    ) -> web.Response:
        if content_type not in (MERGE, JSON_PATCH, APPLY):
            return status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE}, {APPLY}",
            )
        if content_type == APPLY and not request.query.get("fieldManager"):
            return status(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                "required for apply patch",
            )
        try:
            patch = json.loads(raw)
        except ValueError:
            return status(400, "BadRequest", "the patch is not JSON")
        try:
            if content_type == JSON_PATCH:
                if not isinstance(patch, list):
                    raise PatchFailed(
                        400,
                        "BadRequest",
                        "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                    )
                new = json_patch(current, patch)
            else:
                if not isinstance(patch, dict):
                    raise PatchFailed(
                        422,
                        "Invalid",
                        "couldn't get version/kind; json parse error: json: cannot unmarshal "
                        "array into Go value of type struct",
                    )
                new = merge_patch(current, patch)
        except PatchFailed as exc:
            return status(exc.code, exc.reason, exc.message)
        return self._store(key, current, new, sub)

    def _store(self, key: Key, current: Json, new: Json, sub: bool) -> web.Response:
        stored = copy.deepcopy(current)
        if sub:
            stored["status"] = copy.deepcopy(new.get("status") or {})
        else:
            for field_name, value in new.items():
                if field_name not in ("status", "metadata"):
                    stored[field_name] = copy.deepcopy(value)
            for gone in set(stored) - set(new) - {"status", "metadata"}:
                del stored[gone]
            meta = new.get("metadata") or {}
            for keep in ("labels", "annotations"):
                if keep in meta:
                    stored["metadata"][keep] = copy.deepcopy(meta[keep])
            if stored.get("spec") != current.get("spec"):
                stored["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        self._stamp(stored)
        self.objects[key] = stored
        self._written(key)
        return web.json_response(stored)


def kubeconfig(url: str, token: str = TOKEN, namespace: str = "default") -> Json:
    """A kubeconfig that points the real client at the stand-in."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "shipwatch", "user": {"token": token}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "shipwatch", "namespace": namespace},
            }
        ],
        "current-context": "standin",
    }
