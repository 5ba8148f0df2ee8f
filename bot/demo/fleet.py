"""The demo's sample services, the load that keeps them busy, and its deploy pipeline.

Each service of the policy runs as the real sample service (bot.demo.service). How users reach
versions is the fleet's shape: one instance routing by the canary flag the bot writes (the
embedded flags), one instance asking Unleash's SDK, or a stable and a canary pool behind a
proxy. With an engine between users and versions, ``Deployer`` plays the team's pipeline.
"""

from __future__ import annotations

import asyncio

from bot.demo.load import LoadGenerator
from bot.demo.proxy import DemoProxy, Pools
from bot.demo.service import DEMO_BEHAVIOUR, DemoService
from bot.demo.unleash import UnleashRouter
from bot.engine.events import EventKind, ReleaseEvent
from bot.errors import UserError
from bot.flags import FlagClient

# The version every sample service serves before any release has set its flag; the script's
# first release names it as the stable one.
FIRST_VERSION = "v1"
# Requests per second to each sample service. At the first step (10%) that is about 10 a
# second on the canary: REAL_MIN_REQUESTS within a few seconds of a step starting.
LOAD_PER_SECOND = 100.0
DEMO_USERS = 1000


class SampleFleet:
    """The sample services of the policy, and the load that keeps them busy.

    How users reach versions is the fleet's shape. By default one instance per service routes
    each user by the canary flag (the embedded flags backend); with an ``unleash`` router, by
    Unleash's SDK instead. With a ``proxy``, each service runs a stable pool and a canary pool
    behind it and the load goes through the proxy. Either way ``deploy`` is what a deploy
    pipeline does: put versions where users will meet them. The fleet is also where the
    console's ``fault`` and ``clear`` go in the real-metrics demo.
    """

    def __init__(
        self,
        services: list[str],
        proxy: DemoProxy | None = None,
        unleash: UnleashRouter | None = None,
    ) -> None:
        self.proxy = proxy
        self.unleash = unleash
        per_service = 1 if proxy is None else 2
        self.instances = {
            name: [
                DemoService(name, FIRST_VERSION, DEMO_BEHAVIOUR, flags=unleash)
                for _ in range(per_service)
            ]
            for name in services
        }
        self.load: LoadGenerator | None = None
        self.flags: FlagClient | None = None

    @property
    def targets(self) -> list[str]:
        return [s.target for group in self.instances.values() for s in group]

    @property
    def routed_by_pipeline(self) -> bool:
        """Whether versions reach users only once ``deploy`` put them somewhere."""
        return self.proxy is not None or self.unleash is not None

    async def start(self) -> None:
        for group in self.instances.values():
            for svc in group:
                await svc.start()
        if self.unleash is not None:
            await self.unleash.start()
        if self.proxy is not None:
            await self.proxy.start(
                {name: Pools(*(s.target for s in group)) for name, group in self.instances.items()}
            )
        entries = [self.entry(name) for name in self.instances]
        # Traffic from the start, before any release: the first release's control (v1) has a
        # history by the time it is compared with the canary.
        self.load = LoadGenerator(entries, per_second=LOAD_PER_SECOND, users=DEMO_USERS)
        self.load.start()

    def entry(self, service: str) -> str:
        """Where users of ``service`` send their requests."""
        return self.proxy.entry(service) if self.proxy else self.instances[service][0].url

    def preview(self, service: str) -> str:
        """Where any version of ``service`` is served whatever the routing says (``{version}``
        left for the hook to fill): how a blue-green release reaches its idle colour."""
        return f"{self.instances[service][0].url}/preview/{{version}}"

    def deploy(self, service: str, *, stable: str = "", canary: str = "") -> None:
        """Put ``stable`` and ``canary`` (either may be "") where users of ``service`` meet them."""
        group = self.instances.get(service)
        if group is None:
            return
        if self.unleash is not None:
            self.unleash.deploy(service, stable=stable, canary=canary)
        elif self.proxy is not None:
            for pool, version in zip(group, (stable, canary), strict=True):
                if version:
                    pool.deploy(version)

    async def follow_flags(self, redis_url: str) -> None:
        """Route users by the canary flags in ``redis_url``, the ones the bot writes."""
        if self.routed_by_pipeline:
            return  # the proxy or Unleash routes them
        flags = FlagClient(redis_url, poll_interval=1.0)
        # start() reads the flags once, blocking: off the loop.
        await asyncio.to_thread(flags.start)
        self.flags = flags
        for group in self.instances.values():
            group[0].flags = flags

    async def close(self) -> None:
        if self.load is not None:
            await self.load.stop()
            self.load = None
        try:
            if self.proxy is not None:
                await self.proxy.stop()
            if self.unleash is not None:
                await self.unleash.stop()
        finally:
            for group in self.instances.values():
                for svc in group:
                    svc.flags = None
                    await svc.stop()
            if self.flags is not None:
                await asyncio.to_thread(self.flags.close)
                self.flags = None

    def inject(self, service: str, metric: str, factor: float, version: str = "*") -> str:
        group = self.instances.get(service)
        if group is None:
            raise UserError(
                f"no sample service `{service}` in this demo",
                hint="sample services: " + ", ".join(sorted(self.instances)),
            )
        # A fault belongs to a version: every pool that runs (or will run) it behaves so.
        said = [svc.inject(service, metric, factor, version) for svc in group]
        return said[0]

    def clear(self, service: str | None = None) -> None:
        for name, group in self.instances.items():
            if service in (None, name):
                for svc in group:
                    svc.clear()


class Deployer:
    """The demo's deploy pipeline when a proxy or Unleash routes users: a release's versions are
    put in place when it starts (its canary on the canary pool, or known to the SDK's routing),
    and its version becomes the stable one once it has succeeded, as a team's pipeline would do
    around shipwatch. A notifier, so it hears the release start before its first weight is
    applied."""

    def __init__(self, fleet: SampleFleet) -> None:
        self.fleet = fleet

    async def notify(self, event: ReleaseEvent) -> None:
        release = event.release
        if event.kind is EventKind.STARTED:
            self.fleet.deploy(
                release.service, stable=release.stable_version, canary=release.version
            )
        elif event.kind is EventKind.SUCCEEDED:
            self.fleet.deploy(release.service, stable=release.version)
