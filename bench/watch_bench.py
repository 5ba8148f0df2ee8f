"""Benchmark of the post-release watch at scale: one watcher round over N running watches, next to
one controller round over N active releases.

Run from the project root::

    .venv/bin/python -m bench.watch_bench [--watches 100,1000,5000] [--rounds 10]

For each N, on a private redis-server and the synthetic source (seed 3, as the controller bench):

- the watch: N services each deploy one release through the real product (release service,
  controller, embedded flags; steps of 50 and 100%, a 50 ms hold) and the controller takes it
  to 100%, freezing the baseline; then each release's succeed transition is committed to the
  store and ``Watcher.begin`` starts its watch, as the event bus does in bot/app.py. (Not by
  a controller round: N completion summaries in one round cost O(N²), see ``_ship_all``; so
  the release records lack that summary and are smaller than in production.)
  The watch interval is a few milliseconds, so every watch is due every round. After one
  warm-up round (the first leases), each of ``--rounds`` rounds of ``Watcher.run_once()`` is
  timed: the bot process's wall time and CPU time (process_time), the Redis server's CPU from
  INFO, and the Redis commands it ran from INFO commandstats (the commands the watch's Lua
  scripts run count too: this is the server's work, not the number of round trips).
- the idle tick: then every watch is made not due for an hour and ``--rounds`` more rounds are
  timed the same way. Most of a watcher's rounds are these: it looks every tick (a second in
  ``serve``) and a watch judges every few minutes.
- the peer: bench.controller_bench's own run over N active releases with the same metrics (two
  metrics, canary and control, plus the request guard), every release evaluated every round.

Medians over the rounds. Prints a table (the watch's cost per watched release beside the
controller's per active release), then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench.controller_bench import METRICS, _redis_cpu
from bench.controller_bench import run as controller_run
from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.engine.watch import Watcher
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release import rollout
from bot.release.policy import Policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import CONTROLLER, Actor, State
from bot.store.audit import AuditEntry
from bot.store.connection import client_for
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import redis_server

# Short enough that every watch is due at the start of every round (the benchmark sleeps a bit
# longer between rounds); the window is long enough that no watch closes during the run.
WATCH_INTERVAL_S = 0.01
WATCH_WINDOW = "1h"


def _policy(n: int) -> Policy:
    """The controller bench's metrics; a ladder that reaches 100% in seconds, a bake that never
    ends on its own, and a watch due every round."""
    services = "\n".join(f"  svc{i}: {{}}" for i in range(n))
    text = (
        "defaults:\n"
        "  steps: [50, 100]\n"
        "  interval: 0.05s\n"
        "  hold: 0.05s\n"
        "  bake: 1h\n"
        f"  watch: {{window: {WATCH_WINDOW}, interval: {WATCH_INTERVAL_S}s}}\n"
        f"  metrics:{METRICS}services:\n{services}\n"
    )
    return parse_policy(text, "bench")


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    """Calls so far by command; INFO itself is left out: the benchmark's own probes use it."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if name != "cmdstat_info"
    }


async def _ship_all(
    n: int, store: Store, service: ReleaseService, controller: Controller, watcher: Watcher
) -> None:
    """Deploy svc0..svcN-1, let the controller take each to 100% (it freezes the baseline the
    watch judges against), then end each one succeeded and start its watch."""
    actor = Actor(user="bench", surface="api")
    for i in range(n):
        # --stable: these are first releases, so name the control version explicitly.
        await service.deploy(actor, f"svc{i}", "v2", DeployOptions(stable="v1"))
    # Generous: a controller round over 5,000 releases takes seconds.
    deadline = time.monotonic() + 120 + n * 0.05
    while not all(
        r.state is State.BAKING and r.applied_weight == 100 for r in await store.active_releases()
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the releases did not all reach 100% in time")
        await controller.run_once()
        await asyncio.sleep(0.06)  # past the hold, so the next round advances them
    # The succeed decision is committed here, not by a controller round: on success the
    # controller writes a completion summary that reads the lifecycle stream of every service
    # from a minute before the release started, so N releases succeeding together cost O(N²)
    # (300 took 10 s, 1,000 did not finish in 3 minutes). The same transition and commit, minus
    # that summary (the release records the watch reads are that much smaller).
    for release in await store.active_releases():
        done = rollout.succeed(release, CONTROLLER, time.time())
        audit = AuditEntry.transition("decision:succeed", CONTROLLER, release, done)
        committed = await store.commit(done, expected_rev=release.rev, audit=audit)
        if committed.current is None:
            raise RuntimeError(f"{release.label}: succeed not committed ({committed.status})")
        await watcher.begin(committed.current)  # what the bus delivers to it in bot/app.py


async def _rounds_done(store: Store, ids: list[str]) -> int:
    """The watch rounds judged so far, over all watches (to prove every watch was due)."""
    total = 0
    for release_id in ids:
        record = await store.watches.get(release_id)
        total += record.rounds if record is not None else 0
    return total


async def run_watch(n: int, rounds: int, url: str) -> dict[str, object]:
    # The store's own client (a blocking pool of 64), as bot/app.py builds it.
    client = client_for(url)
    await client.flushdb()
    policy = _policy(n)
    store = Store(client)
    source = SyntheticSource(seed=3)
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(client))
    actuator = TrafficActuator(store, lambda _s: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    controller = Controller(
        store, policy, source, actuator, events, summary_every=0, owner="bench", lease_ttl=60
    )
    # Built as bot/app.py builds it, minus the pager: a healthy fleet raises no finding.
    watcher = Watcher(store, policy, source, events, owner="bench")
    events.start()  # drained as it goes: 5,000 deploys and advances overflow an unread queue
    t0 = time.perf_counter()
    await _ship_all(n, store, service, controller, watcher)
    setup_s = time.perf_counter() - t0
    ids = await store.watches.running()
    if len(ids) != n:
        raise RuntimeError(f"{len(ids)} watches running, expected {n}")

    await watcher.run_once()  # warm-up: the first leases, each watch's first round
    judged_before = await _rounds_done(store, ids)
    due = await _measure(watcher, client, rounds, pause=WATCH_INTERVAL_S * 2)
    judged = (await _rounds_done(store, ids) - judged_before) / rounds
    if judged != n:
        # Not every watch was judged each round: the numbers would understate the cost.
        logging.getLogger(__name__).warning("%s watches, %s judged per round", n, judged)
    # Then the ticks between rounds, which are most ticks: a watch judges every few minutes
    # while the watcher looks every second. Each watch is made not due for an hour.
    for release_id in ids:
        record = await store.watches.get(release_id)
        if record is not None:
            await store.watches.save(
                record.model_copy(update={"interval": 3600.0, "last_round_at": time.time()})
            )
    idle = await _measure(watcher, client, rounds, pause=0.0)
    await actuator.close()
    await events.close()
    await client.aclose()
    return {
        "watches": n,
        "rounds": rounds,
        "judged_per_round": judged,
        **due.as_json(n, "", rounds),
        **idle.as_json(n, "idle_tick_", rounds),
        "ship_setup_s": round(setup_s, 2),
    }


@dataclass
class _Rounds:
    """What a series of watcher rounds cost: per round, the bot's CPU and wall time, the Redis
    server's CPU and its commands."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    redis_cpu: list[float] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)
    by_command: dict[str, int] = field(default_factory=dict)

    def as_json(self, n: int, prefix: str, rounds: int) -> dict[str, object]:
        cpu_ms = statistics.median(self.cpu) * 1000
        wall_ms = statistics.median(self.wall) * 1000
        cmds = statistics.median(self.commands)
        return {
            f"{prefix}bot_cpu_ms_per_round_median": round(cpu_ms, 1),
            f"{prefix}bot_cpu_us_per_release_median": round(cpu_ms * 1000 / n, 1),
            f"{prefix}wall_ms_per_round_median": round(wall_ms, 1),
            f"{prefix}wall_us_per_release_median": round(wall_ms * 1000 / n, 1),
            f"{prefix}redis_cpu_ms_per_round_median": round(
                statistics.median(self.redis_cpu) * 1000, 1
            ),
            f"{prefix}redis_commands_per_round_median": cmds,
            f"{prefix}redis_commands_per_release": round(cmds / n, 2),
            # Mean calls per round by command, most first: which of them grows with N.
            f"{prefix}redis_commands_by_command": {
                name: round(calls / rounds, 1)
                for name, calls in sorted(self.by_command.items(), key=lambda kv: -kv[1])
                if calls
            },
        }


async def _measure(watcher: Watcher, client: aioredis.Redis, rounds: int, pause: float) -> _Rounds:
    out = _Rounds()
    for _ in range(rounds):
        await asyncio.sleep(pause)
        r0 = await _redis_cpu(client)
        k0 = await _commands(client)
        c0, w0 = time.process_time(), time.perf_counter()
        await watcher.run_once()
        out.cpu.append(time.process_time() - c0)
        out.wall.append(time.perf_counter() - w0)
        k1 = await _commands(client)
        out.redis_cpu.append(await _redis_cpu(client) - r0)
        delta = {name: calls - k0.get(name, 0) for name, calls in k1.items()}
        out.commands.append(sum(delta.values()))
        for name, calls in delta.items():
            out.by_command[name] = out.by_command.get(name, 0) + calls
    return out


def _num(result: dict[str, object], key: str) -> float:
    value = result[key]
    if not isinstance(value, int | float):
        raise TypeError(f"{key} is {value!r}, not a number")
    return float(value)


async def run(sizes: list[int], rounds: int, url: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for n in sizes:
        # One at a time on the same server (each flushes it): neither competes with the other.
        watch = await run_watch(n, rounds, url)
        controller = await controller_run(n, rounds, url)
        watch_us = _num(watch, "bot_cpu_us_per_release_median")
        controller_us = _num(controller, "bot_cpu_us_per_release_median")
        ratio = watch_us / controller_us if controller_us else float("nan")
        rows.append(
            {
                "releases": n,
                "watch": watch,
                "controller": controller,
                "cpu_per_release_ratio_watch_to_controller": round(ratio, 2),
            }
        )
    return rows


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"give release counts such as 100,1000, got {text!r}")
    return sizes


def _table(rows: list[dict[str, object]]) -> list[str]:
    header = (
        "releases",
        "watch ms/round",
        "watch µs CPU/release",
        "controller ms/round",
        "controller µs CPU/release",
        "ratio",
        "redis cmds/round (watch)",
        "cmds/release",
        "idle tick ms",
        "idle µs CPU/release",
    )
    lines: list[list[str]] = []
    for row in rows:
        watch, controller = row["watch"], row["controller"]
        assert isinstance(watch, dict) and isinstance(controller, dict)
        lines.append(
            [
                str(row["releases"]),
                f"{_num(watch, 'wall_ms_per_round_median'):.1f}",
                f"{_num(watch, 'bot_cpu_us_per_release_median'):.1f}",
                f"{_num(controller, 'wall_ms_per_round_median'):.1f}",
                f"{_num(controller, 'bot_cpu_us_per_release_median'):.1f}",
                f"{_num(row, 'cpu_per_release_ratio_watch_to_controller'):.2f}",
                f"{_num(watch, 'redis_commands_per_round_median'):.0f}",
                f"{_num(watch, 'redis_commands_per_release'):.2f}",
                f"{_num(watch, 'idle_tick_wall_ms_per_round_median'):.1f}",
                f"{_num(watch, 'idle_tick_bot_cpu_us_per_release_median'):.1f}",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--watches",
        type=_sizes,
        default=[100, 1000, 5000],
        help="comma-separated release counts, e.g. 100,1000",
    )
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        rows = asyncio.run(run(args.watches, args.rounds, url))
    for line in _table(rows):
        print(line)
    print("ms/round: wall time of one round; µs CPU/release: bot process CPU per release;")
    print("ratio: watch ÷ controller CPU per release; redis cmds include those run by Lua scripts")
    print("idle tick: a watcher round in which no watch is due (most rounds: it looks every tick)")
    print(
        json.dumps({"rounds": args.rounds, "watch_interval_s": WATCH_INTERVAL_S, "results": rows})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
