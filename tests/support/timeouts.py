"""A test that times out shows where every asyncio task was, not only the threads.

pytest-timeout's signal method dumps the threads' stacks, and an async test that hangs is
almost always the main thread idle in the event loop's selector: the task that is stuck is
what tells the cause. This timer is pytest-timeout's own signal timer plus that dump.
"""

from __future__ import annotations

import asyncio
import io
import signal
import threading
from types import FrameType
from typing import Any

import pytest
import pytest_timeout


def dump_tasks(item: pytest.Item) -> None:
    loop = asyncio._get_running_loop()  # the handler runs on the main thread, inside the loop
    if loop is None:
        return
    terminal = item.config.get_terminal_writer()
    terminal.sep("+", title="asyncio tasks at the timeout")
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        terminal.write(out.getvalue())
    terminal.sep("+", title="end of asyncio tasks")


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer (the thread method ends the run with stacks)

    def handler(signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        dump_tasks(item)
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout reads it
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True
