"""The one composition root: builds every client and service from Settings and the policy."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.config import DEFAULT_POLICY, Settings
from bot.engine.actuator import TrafficActuator
from bot.engine.ci_jobs import CiJobs
from bot.engine.controller import Controller
from bot.engine.digest import DigestScheduler
from bot.engine.events import EventBus, Notifier
from bot.engine.flagger_gate import FlaggerGate
from bot.engine.gates import GateChecker
from bot.engine.hooks import HookRunner
from bot.engine.service import ReleaseService
from bot.engine.watch import Watcher
from bot.errors import PolicyError, PolicyProblem, StoreError, TrafficError
from bot.flags import FlagWriter
from bot.metrics.base import MetricSource
from bot.metrics.prometheus import PrometheusSource
from bot.metrics.synthetic import SyntheticSource
from bot.redact import remember_secrets
from bot.release.policy import Policy, TrafficSettings, embedded_policy, load_policy
from bot.release.rollout import Release
from bot.release.watch import WatchRecord
from bot.render.watch import finding_summary
from bot.store.embedded_redis import EmbeddedRedis
from bot.store.store import Store
from bot.traffic.base import TrafficBackend
from bot.traffic.flagger import FlaggerBackend
from bot.traffic.flags import FlagsBackend
from bot.traffic.haproxy import HAProxyBackend, RuntimeApi
from bot.traffic.nginx import NginxBackend
from bot.traffic.unleash import UnleashBackend
from bot.traffic.webhook import WebhookBackend
from bot.writing.llm import LLM
from bot.writing.narrator import Narrator
from bot.writing.paging.pager import Pager

log = logging.getLogger(__name__)


def resolve_policy(settings: Settings) -> Policy:
    """The policy file, or the embedded demo policy when the default path does not exist.

    An invalid file raises PolicyError: nothing starts on a policy that does not validate.
    """
    path = settings.policy_path
    if path.exists():
        return load_policy(path)
    if path == DEFAULT_POLICY:
        log.info(
            "no %s here: using the embedded demo policy (services: checkout, payments, search)",
            path,
        )
        return embedded_policy()
    raise PolicyError(
        str(path),
        [
            PolicyProblem(
                "(file)", "not found", "fix SHIPWATCH_POLICY, or unset it to use ./shipwatch.yaml"
            )
        ],
    )


@dataclass
class App:
    settings: Settings
    policy: Policy
    store: Store
    events: EventBus
    source: MetricSource
    actuator: TrafficActuator
    service: ReleaseService
    controller: Controller
    narrator: Narrator | None = None
    pager: Pager | None = None
    embedded_redis: EmbeddedRedis | None = None
    backends: dict[str, TrafficBackend] = field(default_factory=dict)
    flagger: FlaggerGate | None = None
    # The daily digest; run beside the controller by the processes that drive releases.
    digest: DigestScheduler | None = None
    # The post-release watch of succeeded releases; run beside the controller.
    watcher: Watcher | None = None
    # The CI jobs webhook hooks start: the controller waits for them, the API takes their answer.
    ci_jobs: CiJobs | None = None

    @property
    def demo_metrics(self) -> bool:
        """Judging on the synthetic demo source, not a real Prometheus."""
        return self.source.is_demo

    def start(self) -> None:
        """Start delivering events, and the writing left unfinished by a stopped process."""
        self.events.start()
        if self.narrator is not None:
            self.narrator.start()

    async def drive(self, stop: asyncio.Event) -> None:
        """What a process that drives releases runs until ``stop``: the controller and, beside
        it, the post-release watch (slow rounds of their own, so neither delays the other)."""
        watching = (
            asyncio.create_task(self.watcher.run(stop), name="watch") if self.watcher else None
        )
        try:
            await self.controller.run(stop)
        finally:
            if watching is not None:
                stop.set()  # the controller ended (even by an error): the watch ends with it
                await asyncio.wait({watching})

    async def unreachable_engines(self) -> dict[str, str]:
        """Service -> why its traffic engine cannot be read now (services on the flags backend
        share shipwatch's Redis and are not asked). Said at start, so a wrong socket path or a
        stopped proxy is known before the first release needs it."""
        found: dict[str, str] = {}
        for service, backend in self.backends.items():
            if backend.name == "flags":
                continue
            try:
                await backend.current(service)
            except TrafficError as exc:
                found[service] = str(exc)
        return found

    async def drain(self, timeout: float) -> bool:
        """Let the work under way finish, for at most ``timeout`` seconds (a shutdown): traffic
        changes, the events they emit, the writing those start (a rollback's diagnosis) and
        its events in turn. True when all of it is done; ``close`` cuts off the rest."""

        async def settle() -> None:
            await self.actuator.drain()
            await self.events.drain()
            if self.pager is not None:
                await self.pager.drain()
            if self.narrator is not None:
                await self.narrator.drain()
                await self.events.drain()

        try:
            await asyncio.wait_for(settle(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self.controller.close()
        if self.narrator is not None:
            await self.narrator.close()
        if self.pager is not None:
            await self.pager.close()
        await self.actuator.close()
        await self.service.gates.close()
        await self.events.close()
        for backend in {id(b): b for b in self.backends.values()}.values():
            await backend.close()
        await self.source.close()
        await self.store.close()
        if self.embedded_redis is not None:
            await self.embedded_redis.stop()


async def build_app(
    settings: Settings,
    *,
    policy: Policy | None = None,
    notifiers: Sequence[Notifier] = (),
    source: MetricSource | None = None,
    owner: str | None = None,
) -> App:
    policy = policy or resolve_policy(settings)
    # From here on, none of the process's own secrets can leave it: not in a post, a prompt,
    # a ticket or a log line, whatever their shape.
    remember_secrets(
        [*settings.secret_values(), *(os.environ.get(name) for name in policy.secret_envs())]
    )
    # Before anything is started: a malformed SHIPWATCH_GATES_URL stops us here.
    gates = GateChecker(
        settings.gates_url,
        timeout=settings.gates_timeout,
        token=settings.gates_token.get_secret_value() if settings.gates_token else None,
    )
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await embedded.start()
    try:
        store = await Store.connect(
            url, retention=policy.retention, min_replicas=settings.redis_min_replicas
        )
    except StoreError:
        if embedded is not None:
            await embedded.stop()
        raise
    if source is None:
        if settings.prometheus_url:
            source = PrometheusSource(settings.prometheus_url, timeout=settings.prometheus_timeout)
        else:
            log.warning("PROMETHEUS_URL is not set: using the SYNTHETIC demo metrics source")
            source = SyntheticSource()
    events = EventBus(notifiers)
    flags = FlagsBackend(FlagWriter(store.redis))
    backends: dict[str, TrafficBackend] = {}
    for name, sp in policy.services.items():
        backends[name] = _backend(sp.traffic, flags)

    def backend_for(service: str) -> TrafficBackend:
        return backends.get(service, flags)

    actuator = TrafficActuator(store, backend_for, events)
    service = ReleaseService(store, policy, actuator, events, gates=gates, source=source)
    ci_jobs = CiJobs(store.hook_runs, settings.public_url)
    if settings.public_url is None and policy.has_webhook_hooks():
        log.warning(
            "the policy has webhook step hooks but SHIPWATCH_PUBLIC_URL is not set: their CI "
            "jobs would have no URL to call back, so those hooks fail"
        )
    controller = Controller(
        store,
        policy,
        source,
        actuator,
        events,
        tick=settings.controller_tick,
        lease_ttl=settings.lease_ttl,
        owner=owner,
        hooks=HookRunner(store.hook_runs, ci_jobs),
    )
    llm = LLM(
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        model=settings.llm_model,
        timeout=settings.llm_timeout,
    )
    narrator = Narrator(store, llm, events, policy)
    events.notifiers.append(narrator)
    # Pages go out from their own tasks, beside the rollback that the event reports as decided.
    pager = Pager(policy, events)
    events.notifiers.append(pager)

    async def page_finding(release: Release, watch: WatchRecord) -> None:
        sp = policy.services.get(release.service)
        summary = finding_summary(release, watch, sp.metrics if sp else ())
        await pager.page_finding(release, summary, _finding_details(watch))

    watcher = Watcher(
        store, policy, source, events, page=page_finding, tick=settings.watch_tick, owner=owner
    )
    events.notifiers.append(watcher)  # a success starts the release's watch
    return App(
        settings=settings,
        policy=policy,
        store=store,
        events=events,
        source=source,
        actuator=actuator,
        service=service,
        controller=controller,
        embedded_redis=embedded,
        backends=backends,
        narrator=narrator,
        pager=pager,
        flagger=FlaggerGate(service, store),
        digest=DigestScheduler(store, policy),
        watcher=watcher,
        ci_jobs=ci_jobs,
    )


def _finding_details(watch: WatchRecord) -> dict[str, Any]:
    """The finding as data for the page's details (numbers, never sentences)."""
    f = watch.finding
    if f is None:
        return {}
    return {"metric": f.metric, "value": f.value, "baseline": f.baseline, "limit": f.limit}


def _backend(traffic: TrafficSettings, flags: FlagsBackend) -> TrafficBackend:
    if traffic.backend == "haproxy":
        assert traffic.socket is not None  # validated by the policy
        return HAProxyBackend(
            RuntimeApi(traffic.socket, timeout=traffic.timeout),
            mode=traffic.mode,
            map_path=traffic.map_file or "",
            key=traffic.key or "",
            backend=traffic.haproxy_backend or "",
            stable_server=traffic.stable_server,
            canary_server=traffic.canary_server,
        )
    if traffic.backend == "nginx":
        assert traffic.include_file is not None  # validated by the policy
        return NginxBackend(
            traffic.include_file,
            test_command=traffic.test_command,
            reload_command=traffic.reload_command,
            marker_url=traffic.marker_url,
            split_key=traffic.split_key,
            timeout=traffic.timeout,
        )
    if traffic.backend == "unleash":
        return _unleash(traffic)
    if traffic.backend in ("argo-rollouts", "gateway-api"):
        return _kubernetes(traffic)
    if traffic.backend == "flagger":
        return FlaggerBackend()
    if traffic.backend == "webhook":
        return _webhook(traffic)
    return flags


def _unleash(traffic: TrafficSettings) -> UnleashBackend:
    assert traffic.unleash_url is not None  # validated by the policy
    token = os.environ.get(traffic.token_env, "")
    if not token:
        raise PolicyError(
            "traffic",
            [
                PolicyProblem(
                    "traffic.token_env",
                    f"environment variable {traffic.token_env} is empty",
                    "export an Unleash admin API token under that name",
                )
            ],
        )
    return UnleashBackend(
        traffic.unleash_url,
        token,
        project=traffic.project,
        environment=traffic.environment,
        flag=traffic.flag or "",
        timeout=traffic.timeout,
    )


def _kubernetes(traffic: TrafficSettings) -> TrafficBackend:
    try:
        # The Kubernetes client is an extra: only services on Kubernetes engines need it.
        from bot.traffic.argo_rollouts import ArgoRolloutsBackend  # noqa: PLC0415
        from bot.traffic.gateway_api import GatewayApiBackend  # noqa: PLC0415
    except ImportError as exc:
        raise PolicyError(
            "traffic",
            [
                PolicyProblem(
                    "traffic.backend",
                    f"{traffic.backend} needs the Kubernetes client, which is not installed "
                    f"({exc})",
                    "install shipwatch with its k8s extra: pip install 'shipwatch[k8s]'",
                )
            ],
        ) from exc
    if traffic.backend == "gateway-api":
        return GatewayApiBackend(
            namespace=traffic.namespace,
            route=traffic.route or "",
            kind=traffic.route_kind,
            rule=traffic.rule,
            stable_backend=traffic.stable_backend or "",
            canary_backend=traffic.canary_backend or "",
            kubeconfig=traffic.kubeconfig,
            timeout=traffic.timeout,
        )
    return ArgoRolloutsBackend(
        namespace=traffic.namespace,
        rollout=traffic.rollout or "",
        kubeconfig=traffic.kubeconfig,
        step_timeout=traffic.step_timeout,
        timeout=traffic.timeout,
        set_image=traffic.set_image,
        container=traffic.container or "",
    )


def _webhook(traffic: TrafficSettings) -> WebhookBackend:
    assert traffic.url is not None  # validated by the policy
    secret = os.environ.get(traffic.secret_env) if traffic.secret_env else None
    if traffic.secret_env and not secret:
        raise PolicyError(
            "traffic",
            [
                PolicyProblem(
                    "traffic.secret_env",
                    f"environment variable {traffic.secret_env} is empty",
                    "export the webhook's HMAC secret under that name",
                )
            ],
        )
    return WebhookBackend(
        traffic.url,
        secret,
        timeout=traffic.timeout,
        retries=max(1, traffic.retries),
        read_url=traffic.read_url,
    )
