"""The work that follows an ack, kept out of the acks' way.

Slack gets its answer (the ack) as soon as a request is checked; what the request asks for
(a command's reply, a click, a mention) runs afterwards. Run as one task per request, that
work shares the event loop with the next requests' acks on equal terms, so a burst of fifty
commands makes every ack wait behind fifty replies being built. Here it waits in a queue
served by a few workers instead: acks keep their place at the front, and the replies follow
as fast as the process can write them (a response_url stays valid for 30 minutes).

Each job runs in the context (request id, log fields) of the request that queued it, and
``drain`` lets a stopping process finish what it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]

WORKERS = 4


class AfterAck:
    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._queue: asyncio.Queue[tuple[Job, contextvars.Context]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: Job) -> None:
        """Queue ``job`` to run after the ack (never blocks; the queue has no bound because
        every entry is a request Slack was already told we took)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"after-ack-{i}")
                for i in range(self._workers)
            ]
        self._queue.put_nowait((job, contextvars.copy_context()))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            job, context = await self._queue.get()
            try:
                await asyncio.create_task(_run(job), context=context)
            except Exception:
                log.exception("work after an ack failed")
            finally:
                self._queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Finish the queued work within ``timeout`` s, then stop the workers. False when some
        was left undone (logged)."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            done = True
        except TimeoutError:
            log.warning("shutdown: %d requests were acknowledged but not handled", self.pending)
            done = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return done


async def _run(job: Job) -> None:
    await job()
