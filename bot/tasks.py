"""Stopping background tasks for sure.

On Python 3.11, ``asyncio.wait_for`` (which redis-py puts around every command it sends when a
socket timeout is set) swallows a cancel that lands just as the awaited call completes
(CPython gh-86296, fixed in 3.12). A loop that a cancel alone should end then runs on, and
whoever awaits it waits forever. So loops also check a stop flag, and ``cancel_and_wait``
cancels again whatever is still running, within a bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

# How often a task that is still running is cancelled again while we wait for it.
RECANCEL_EVERY_S = 0.1
# How long a close waits for its background tasks to stop: a cancelled task stops at its next
# await, in milliseconds; this bounds a shutdown when one does not.
CLOSE_TIMEOUT_S = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[object]], timeout: float
) -> set[asyncio.Task[object]]:
    """Cancel ``tasks`` and wait until they have ended, for at most ``timeout`` seconds.

    Returns the tasks still running then (logged). A cancel aimed at the caller is not
    swallowed: it propagates as usual. Errors the tasks end with while we wait are logged, not
    raised; a task that had ended before is its owner's to read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    ended: set[asyncio.Task[object]] = set()
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY_S, left))
        ended |= done
    for task in ended:
        if not task.cancelled() and (failure := task.exception()) is not None:
            log.error("task %s ended with an error", task.get_name(), exc_info=failure)
    for task in pending:
        log.error("task %s did not stop within %.1fs of being cancelled", task.get_name(), timeout)
    return pending
