"""The step hooks in Redis: where each step's hooks stand, and the CI jobs webhook hooks started
with the callbacks they owe (bot.release.hook_runs holds the records)."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis.asyncio as aioredis

from bot.release.hook_runs import CallAnswer, CallState, HookCall, HookProgress, HookRun
from bot.store import keys
from bot.store.redis_io import as_text, run

# A call's record outlives its deadline by a day: a late callback is told "too late" rather
# than "unknown", and the thread's story can still be read back.
CALL_KEPT_AFTER_S = 86400

# KEYS: the call. ARGV: state, detail, now, '1' to refuse after the deadline.
# Returns {code, record}: 0 unknown, 1 recorded, 2 already answered, 3 too late. The first answer
# wins, so a CI job that retries its callback, or one racing the hook's own timeout, cannot
# change a verdict already acted on.
ANSWER = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {0, ''} end
local call = cjson.decode(raw)
if call['state'] ~= 'pending' then return {2, raw} end
if ARGV[4] == '1' and tonumber(ARGV[3]) > tonumber(call['deadline']) then return {3, raw} end
call['state'] = ARGV[1]
call['detail'] = ARGV[2]
call['answered_at'] = tonumber(ARGV[3])
local out = cjson.encode(call)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
return {1, out}
"""

_CODES = {
    0: CallAnswer.UNKNOWN,
    1: CallAnswer.RECORDED,
    2: CallAnswer.ALREADY,
    3: CallAnswer.TOO_LATE,
}


class HookRuns:
    def __init__(self, redis: aioredis.Redis, kept: Callable[[], float]) -> None:
        self.redis = redis
        self._kept = kept  # how long a release's records are kept (the retention policy)
        self._answer = redis.register_script(ANSWER)

    # --- where a step's hooks stand ------------------------------------------------------

    async def started(self, release_id: str, step: int, weight: int, at: float) -> None:
        await self._put(release_id, step, {"step": step, "weight": weight, "started_at": at})

    async def finished(self, run_: HookRun, *, reported: bool = False) -> None:
        """Record a finished run; ``reported``: it was said in the thread and the audit, so a
        process that takes the release over does not say it again."""
        record = {
            "step": run_.step,
            "weight": run_.weight,
            "started_at": run_.started_at,
            "run": run_.to_dict(),
            "reported": reported,
        }
        await self._put(run_.release_id, run_.step, record)

    async def cleared(self, release_id: str, step: int) -> None:
        """Forget a step's run, so that its hooks run afresh (after a hold, or a resume)."""
        await run("clearing step hooks", self.redis.hdel(keys.hook_runs(release_id), str(step)))

    async def get(self, release_id: str, step: int) -> HookProgress | None:
        key = keys.hook_runs(release_id)
        raw = await run("reading step hooks", self.redis.hget(key, str(step)))
        return None if raw is None else _progress(release_id, as_text(raw))

    async def all(self, release_id: str) -> list[HookProgress]:
        """Every step's hooks that ran (or run) for a release, in ladder order."""
        raw = await run("reading step hooks", self.redis.hgetall(keys.hook_runs(release_id)))
        found = [_progress(release_id, as_text(v)) for v in raw.values()]
        return sorted(found, key=lambda p: p.step)

    async def _put(self, release_id: str, step: int, record: dict[str, object]) -> None:
        key = keys.hook_runs(release_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, str(step), json.dumps(record))
            pipe.expire(key, int(self._kept()))
            await run("saving step hooks", pipe.execute())

    # --- the CI jobs webhook hooks started ---------------------------------------------------

    async def open_call(self, call: HookCall) -> None:
        """Record a job about to be started, and that it is the latest for its hook."""
        ttl = max(1, int(call.deadline - call.started_at) + CALL_KEPT_AFTER_S)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.hook_call(call.token), call.model_dump_json(), ex=ttl)
            pipe.set(keys.hook_call_for(call.release_id, call.step, call.index), call.token, ex=ttl)
            await run("recording a CI job", pipe.execute())

    async def latest_call(self, release_id: str, step: int, index: int) -> HookCall | None:
        """The latest job started for one hook of one step (None if none is kept)."""
        token = await run(
            "reading a CI job", self.redis.get(keys.hook_call_for(release_id, step, index))
        )
        return None if token is None else await self.call(as_text(token))

    async def call(self, token: str) -> HookCall | None:
        raw = await run("reading a CI job", self.redis.get(keys.hook_call(token)))
        return None if raw is None else HookCall.model_validate_json(as_text(raw))

    async def answer_call(
        self, token: str, state: CallState, detail: str, now: float, *, by_deadline: bool = True
    ) -> tuple[CallAnswer, HookCall | None]:
        """Record a job's answer (the first one wins); with ``by_deadline``, refused once the
        hook's deadline has passed."""
        code, raw = await run(
            "recording a CI job's answer",
            self._answer(
                keys=[keys.hook_call(token)],
                args=[state.value, detail, repr(now), "1" if by_deadline else "0"],
            ),
        )
        text = as_text(raw)
        return _CODES[int(code)], HookCall.model_validate_json(text) if text else None


def _progress(release_id: str, raw: str) -> HookProgress:
    d = json.loads(raw)
    done = d.get("run")
    return HookProgress(
        step=int(d["step"]),
        weight=int(d["weight"]),
        started_at=float(d["started_at"]),
        run=None if done is None else HookRun.from_dict(release_id, done),
        reported=bool(d.get("reported", False)),
    )
