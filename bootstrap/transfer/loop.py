"""The event loop both engines run on: a worker pool, a memory budget and a
stoppable run.

Downloads and uploads keep hundreds of requests in flight from one thread: a pool of
coroutines taking work until none is left (:func:`run_workers`); what bounds them is
the bytes they hold (:class:`ByteBudget`), and what ends them early is a stop signal
(:func:`run_stoppable`), after which every ``finally`` has run.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from ..errors import STOP_SIGNALS, Terminated


class ByteBudget:
    """At most ``limit`` bytes held at once; one request larger than the whole budget
    still runs, alone, so no object is ever stuck. Taking a share that fits costs no
    await (the common case, thousands of times a second)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._freed: Optional[Any] = None  # an asyncio.Event while someone waits

    async def acquire(self, n: int) -> None:
        while not (self.used == 0 or self.used + n <= self.limit):
            if self._freed is None:
                self._freed = asyncio.Event()
            await self._freed.wait()
        self.used += n

    async def release(self, n: int) -> None:
        self.used -= n
        if self._freed is not None:
            self._freed.set()
            self._freed = None


async def run_workers(count: int, worker: Callable[[], Awaitable[None]]) -> None:
    """Runs ``count`` copies of ``worker`` (each takes work until none is left) to the
    end. The first failure cancels the others and is raised once they have all stopped,
    so no request outlives the call; a cancel of the caller does the same."""
    tasks = [asyncio.ensure_future(worker()) for _ in range(count)]
    try:
        if tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_stoppable(main: Any) -> None:
    """``asyncio.run(main)``; in the main thread, SIGTERM/SIGINT/SIGHUP cancel it (every
    ``finally`` runs, thread work is waited for) and then raise Terminated, the
    bootstrap's own handlers being restored."""

    if threading.current_thread() is not threading.main_thread():
        asyncio.run(main)
        return
    received: list[int] = []
    # A signal the caller ignores stays ignored (the final output sync must finish
    # even when the platform repeats its SIGTERM).
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS
                if signal.getsignal(s) is not signal.SIG_IGN}

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)

        def stop(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for s in previous:
            loop.add_signal_handler(s, stop, s)
        try:
            await task
        except asyncio.CancelledError:
            if not received:
                raise

    try:
        asyncio.run(guarded())
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Terminated(received[0])
