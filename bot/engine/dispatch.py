"""Carry out a parsed command for an actor: the one place every surface (Slack, console) uses.

Returns a Reply for the adapter to render; user mistakes and conflicts are raised as the
error tree's exceptions, for the adapter's one error handler.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bot.engine.service import Outcome, ReleaseService
from bot.judging.sizing import Sizing
from bot.observe import stats
from bot.release.commands import STATS_DAYS, USAGE, Command, Verb
from bot.release.durations import format_duration
from bot.release.rollout import Actor, Release, State
from bot.store.audit import AuditStream

HELP = "\n".join(f"• `{usage}`" for usage in USAGE.values())


@dataclass(frozen=True)
class Reply:
    text: str
    release: Release | None = None  # the release the command acted on or showed
    duplicate: bool = False
    sizing: Sizing | None = None  # deploy: its first step against the service's traffic


async def run(service: ReleaseService, cmd: Command, actor: Actor, request_id: str = "") -> Reply:
    verb = cmd.verb
    if verb is Verb.DEPLOY:
        result = await service.deploy(actor, cmd.service, cmd.version, cmd.options, request_id)
    elif verb is Verb.ADVANCE:
        result = await service.advance(actor, cmd.service, request_id=request_id)
    elif verb is Verb.APPROVE:
        result = await service.approve(actor, cmd.service, request_id=request_id)
    elif verb is Verb.ROLLBACK:
        result = await service.rollback(actor, cmd.service, cmd.text, request_id)
    elif verb is Verb.PAUSE:
        result = await service.pause(actor, cmd.service, cmd.text, request_id)
    elif verb is Verb.RESUME:
        result = await service.resume(actor, cmd.service, request_id)
    elif verb is Verb.HANDBACK:
        result = await service.hand_back(actor, cmd.service, request_id)
    else:
        return await _read(service, cmd, actor, request_id)
    duplicate = result.outcome is Outcome.DUPLICATE
    text = result.message or result.release.describe_state()
    return Reply(
        ("(already applied) " if duplicate else "") + text, result.release, duplicate, result.sizing
    )


async def _read(service: ReleaseService, cmd: Command, actor: Actor, request_id: str = "") -> Reply:
    verb = cmd.verb
    if verb is Verb.STATUS:
        release = await service.status(cmd.service)
        if release is None:
            return Reply(f"no releases of `{cmd.service}` yet")
        return Reply(release.describe_state(), release)
    if verb is Verb.LIST:
        active = await service.list_active()
        if not active:
            return Reply("no active releases")
        return Reply("\n".join(f"• {r.describe_state()}" for r in active))
    if verb is Verb.HISTORY:
        count = int(cmd.text) if cmd.text.strip().isdigit() else 10
        rows = await service.history(cmd.service, min(count, 50))
        if not rows:
            return Reply(f"no releases of `{cmd.service}` yet")
        return Reply("\n".join(_history_line(r) for r in rows))
    if verb is Verb.STATS:
        return Reply(await _stats(service, cmd.service or None, cmd.days or STATS_DAYS))
    if verb is Verb.LOCK:
        lock = await service.lock(actor, cmd.service, cmd.text, request_id)
        return Reply(
            f"🔒 {lock.describe()}. Releases of `{cmd.service}` are refused until "
            f"`/rollout unlock {cmd.service}`; a release already running continues."
        )
    if verb is Verb.UNLOCK:
        lock = await service.unlock(actor, cmd.service, request_id)
        return Reply(f"🔓 `{cmd.service}` unlocked (was locked by {lock.by}: {lock.reason})")
    return Reply(HELP)


def _history_line(r: Release) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.created_at))
    took = f" in {format_duration(r.finished_at - r.created_at)}" if r.finished_at else ""
    why = f": {r.reason}" if r.reason and r.state is State.ROLLED_BACK else ""
    return f"• {when} {r.label} by {r.requested_by}: {r.state.value}{took}{why}"


async def _stats(service: ReleaseService, name: str | None, days: int) -> str:
    """Release stats of the last ``days`` days, computed from the audit's lifecycle stream."""
    if name:
        service.policy.service(name)  # unknown service: a clear error with a suggestion
    end = service.clock()
    start = end - days * stats.DAY_S
    # Read from before the window so releases started earlier and finished inside it still
    # have a known start (see bot.observe.stats for the rule).
    entries = await service.store.audit_between(
        start - stats.LOOKBACK_S, stream=AuditStream.LIFECYCLE
    )
    reach = await service.store.audit_reach(AuditStream.LIFECYCLE)
    # Only a trimmed log has lost anything: a young one holds every release there ever was.
    audit_from = reach.oldest if reach.trimmed else None
    # Pure Python over possibly tens of thousands of entries: off the event loop.
    computed = await asyncio.to_thread(
        stats.compute, entries, start=start, end=end, service=name, audit_from=audit_from
    )
    return stats.render(computed)
