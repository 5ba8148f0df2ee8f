"""Running a paging service's synchronous client off the event loop, under a deadline.

Both official clients block (PagerDuty's on httpx2, Opsgenie's on urllib3) and retry with
``time.sleep``; each call runs in a worker thread so the loop (and every rollback on it) never
waits for them. The clients are configured so their own attempts and backoff fit in the
deadline; the deadline is the backstop that reports a hang even if they do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The first backoff after a 429 or a 5xx; it doubles at each retry.
FIRST_BACKOFF_S = 0.5


def backoff_total(retries: int) -> float:
    """How long the retries of one call sleep in all (0.5 s, 1 s, 2 s, …)."""
    return FIRST_BACKOFF_S * float(2 ** max(0, retries) - 1)


def deadline(timeout: float, retries: int) -> float:
    """The longest one paging call may take: every attempt at its timeout, plus the backoff
    between them, plus a second for the thread and the client's setup."""
    return (retries + 1) * timeout + backoff_total(retries) + 1.0


async def in_thread(call: Callable[[], T], within: float) -> T:
    """``call()`` in a worker thread; TimeoutError if it has not returned ``within`` seconds
    (the thread then ends on its own, at its client's timeouts)."""
    return await asyncio.wait_for(asyncio.to_thread(call), within)
