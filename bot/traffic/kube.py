"""The Kubernetes API as the Kubernetes engines use it: namespaced custom objects read, replaced
with their resourceVersion, and their status merge-patched, through the official
``kubernetes_asyncio`` client (the ``k8s`` extra), from a kubeconfig file or the pod's service
account. Every call has a timeout; every failure is a TrafficError in the API's own words."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kube
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from bot.errors import TrafficError

MERGE_PATCH = "application/merge-patch+json"

Json = dict[str, Any]


@dataclass(frozen=True)
class Ref:
    """One namespaced custom object (``kind`` only names it in messages)."""

    kind: str
    group: str
    version: str
    plural: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def args(self) -> tuple[str, str, str, str, str]:
        return (self.group, self.version, self.namespace, self.plural, self.name)


class KubeObjects:
    def __init__(self, *, kubeconfig: str | None = None, timeout: float = 5.0) -> None:
        self.kubeconfig = kubeconfig
        self.timeout = timeout
        self._client: kube.ApiClient | None = None

    async def get(self, ref: Ref) -> Json:
        api = await self._api()
        found: Json = await self._call(
            f"reading {ref}",
            api.get_namespaced_custom_object(*ref.args, _request_timeout=self.timeout),
        )
        return found

    async def replace(self, ref: Ref, body: Json) -> Json | None:
        """PUT ``body`` (carrying the resourceVersion it was read at); None when someone wrote
        the object since (409): read it again and decide again."""
        api = await self._api()
        try:
            replaced: Json = await self._call(
                f"replacing {ref}",
                api.replace_namespaced_custom_object(
                    *ref.args, body, _request_timeout=self.timeout
                ),
                conflict_ok=True,
            )
        except _Conflict:
            return None
        return replaced

    async def patch_status(self, ref: Ref, body: Json) -> None:
        api = await self._api()
        # The client would send a dict as a JSON patch: say what it is. (Its stubs leave out
        # `_content_type`, which its code reads.)
        await self._call(
            f"patching the status of {ref}",
            api.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                *ref.args, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout
            ),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _api(self) -> kube.CustomObjectsApi:
        if self._client is None:
            try:
                if self.kubeconfig:
                    self._client = await kube_config.new_client_from_config(
                        config_file=self.kubeconfig
                    )
                else:
                    configuration = kube.Configuration()
                    kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                    self._client = kube.ApiClient(configuration=configuration)
            except (ConfigException, OSError) as exc:
                where_from = self.kubeconfig or "the pod's service account"
                raise TrafficError(
                    f"cannot configure the Kubernetes client from {where_from}: {exc}"
                ) from exc
        return kube.CustomObjectsApi(self._client)

    async def _call(self, what: str, call: Any, *, conflict_ok: bool = False) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout + 1)
        except ApiException as exc:
            if conflict_ok and exc.status == 409:
                raise _Conflict from exc
            raise TrafficError(f"the Kubernetes API refused {what}: {_said(exc)}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TrafficError(
                f"cannot reach the Kubernetes API {what} ({type(exc).__name__}: {exc})"
            ) from exc


class _Conflict(Exception):
    """A 409 on a write that carried a resourceVersion (handled inside this module)."""


def _said(exc: ApiException) -> str:
    """HTTP status and the Status object's message (a Kubernetes error's own words)."""
    message = ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
    except (TypeError, ValueError):
        message = str(exc.body or "")[:300]
    return f"HTTP {exc.status} {exc.reason}: {message}".rstrip(": ")
