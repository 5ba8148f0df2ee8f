"""cancel_and_wait stops what a single cancel would not, and never hides the caller's cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from bot.tasks import cancel_and_wait


async def _ignores_one_cancel(started: asyncio.Event) -> None:
    # What a loop does after asyncio.wait_for swallowed its cancel: it carries on.
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    await asyncio.sleep(3600)


async def test_a_task_that_survives_one_cancel_is_cancelled_again() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_ignores_one_cancel(started))
    await started.wait()
    assert await cancel_and_wait([task], timeout=5.0) == set()
    assert task.cancelled()


async def test_a_task_that_will_not_stop_is_reported_after_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    let_go = asyncio.Event()

    async def stubborn() -> None:
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="bot.tasks"):
        assert await cancel_and_wait([task], timeout=0.3) == {task}
    assert "task stubborn did not stop within 0.3s" in caplog.text
    let_go.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()


async def test_an_error_a_task_ends_with_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel(), name="cleanup")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="bot.tasks"):
        assert await cancel_and_wait([task], timeout=5.0) == set()
    assert "task cleanup ended with an error" in caplog.text


async def test_the_callers_own_cancel_still_reaches_it() -> None:
    started = asyncio.Event()
    worker = asyncio.create_task(_ignores_one_cancel(started))
    await started.wait()

    async def closer() -> None:
        await cancel_and_wait([worker], timeout=60.0)

    closing = asyncio.create_task(closer())
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    worker.cancel()
    await asyncio.wait({worker}, timeout=1.0)
