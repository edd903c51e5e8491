"""What both engines run on: an event loop's worker pool, a memory budget and a
stoppable run; and for the download's ranges, the same on threads.

Downloads and uploads keep hundreds of requests in flight from one thread: a pool of
coroutines taking work until none is left (:func:`run_workers`); what bounds them is
the bytes they hold (:class:`ByteBudget`), and what ends them early is a stop signal
(:func:`run_stoppable`), after which every ``finally`` has run. Large objects' ranges
and a few whole objects run on threads instead (:func:`run_threads`: blocking reads
into reused buffers, the GIL released), with the same guarantees: the first failure or
a stop signal ends them all, and nothing outlives the call.

``asyncio`` is imported by the functions that run a loop, not here: with its ``ssl``,
``inspect``, ``logging`` and ``concurrent.futures`` it is ~55 ms of a job's start
(bench/README.md), which a fetch that needs no loop does not pay.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import STOP_SIGNALS, Terminated

if TYPE_CHECKING:
    from typing import Any


class ByteBudget:
    """At most ``limit`` bytes held at once; one request larger than the whole budget
    still runs, alone, so no object is ever stuck. Taking a share that fits costs no
    await (the common case, thousands of times a second)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._freed: Any | None = None  # an asyncio.Event while someone waits

    async def acquire(self, n: int) -> None:
        while not (self.used == 0 or self.used + n <= self.limit):
            if self._freed is None:
                import asyncio

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
    import asyncio

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
    import asyncio

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


def run_threads(count: int, worker: Callable[[], None], stop: threading.Event,
                tick: Callable[[], None] | None = None, every: float = 5.0) -> None:
    """Runs ``count`` threads of ``worker`` (each takes work until none is left, or until
    ``stop`` is set: it must look between chunks) to the end, calling ``tick`` every
    ``every`` seconds meanwhile. The first failure sets ``stop`` and is raised once every
    thread has ended. In the main thread SIGTERM/SIGINT/SIGHUP set ``stop`` too and then
    raise Terminated, as :func:`run_stoppable` does, the previous handlers restored (a
    signal the caller ignores stays ignored)."""
    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:  # noqa: BLE001 - raised again by the caller's thread
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, name=f"transfer-{i}", daemon=True)
               for i in range(count)]
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS
                if signal.getsignal(s) is not signal.SIG_IGN} \
        if threading.current_thread() is threading.main_thread() else {}

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    for s in previous:
        signal.signal(s, on_signal)
    try:
        for thread in threads:
            thread.start()
        due = time.monotonic() + every
        for thread in threads:
            while True:  # a join that wakes for signals (their handlers run here) and ticks
                thread.join(max(0.0, due - time.monotonic()))
                if not thread.is_alive():
                    break
                if tick is not None:
                    tick()
                due = time.monotonic() + every
    except BaseException:
        stop.set()  # an exception of this thread's own (a handler's): wait for them
        for thread in threads:
            thread.join()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Terminated(received[0])
    if failures:
        raise failures[0]
