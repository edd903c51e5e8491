"""The engines' worker pools, on the event loop and on threads: every copy runs to the
end, or the first failure stops them all before it is raised."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import deque

import pytest

from bootstrap.errors import Terminated
from bootstrap.transfer.loop import run_threads, run_workers
from tests.support.wait import wait_until


def test_workers_share_the_queue_until_it_is_empty() -> None:
    queue, done = deque(range(50)), []

    async def worker() -> None:
        while queue:
            item = queue.popleft()
            await asyncio.sleep(0)
            done.append(item)

    asyncio.run(run_workers(8, worker))
    assert sorted(done) == list(range(50))


def test_the_first_failure_stops_the_others_before_it_is_raised() -> None:
    running: set[int] = set()
    stopped: list[int] = []
    ids = iter(range(100))

    async def worker() -> None:
        me = next(ids)
        running.add(me)
        try:
            if me == 3:
                while len(running) < 6:  # until the others run too (they wait below)
                    await asyncio.sleep(0)
                raise OSError("disk full")
            await asyncio.sleep(30)
        finally:
            running.discard(me)
            stopped.append(me)

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(asyncio.wait_for(run_workers(6, worker), 5))
    assert running == set() and sorted(stopped) == list(range(6))


def test_no_work_no_workers() -> None:
    asyncio.run(run_workers(0, lambda: asyncio.sleep(30)))


# The threads' pool (ranges, and a few whole objects): the same contract, and signals.

def test_threads_share_the_queue_until_it_is_empty() -> None:
    queue, done = deque(range(200)), []

    def worker() -> None:
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                return
            done.append(item)

    run_threads(8, worker, threading.Event())
    assert sorted(done) == list(range(200))


def test_a_threads_failure_stops_the_others_before_it_is_raised() -> None:
    stop = threading.Event()
    ids = iter(range(100))
    lock = threading.Lock()
    ended: list[int] = []
    waiting: list[int] = []

    def worker() -> None:
        with lock:
            me = next(ids)
        try:
            if me == 3:
                wait_until(lambda: len(waiting) == 5, 10, interval=0.001)  # the others wait
                raise OSError("disk full")
            with lock:
                waiting.append(me)
            stop.wait(30)  # as a range thread looks at its stop between chunks
        finally:
            with lock:
                ended.append(me)

    started = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        run_threads(6, worker, stop)
    assert sorted(ended) == list(range(6)) and stop.is_set()
    assert time.monotonic() - started < 10  # not the others' 30 s


def test_a_stop_signal_ends_the_threads_then_raises_terminated() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    ticks: list[float] = []

    def worker() -> None:
        if threading.current_thread().name == "transfer-0":
            wait_until(lambda: ticks, 10, interval=0.005)  # the main thread is in its join
            os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, in its join
        stop.wait(30)

    with pytest.raises(Terminated) as caught:
        run_threads(3, worker, stop, tick=lambda: ticks.append(time.monotonic()), every=0.01)
    assert caught.value.signum == signal.SIGTERM
    assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    assert [t.name for t in threading.enumerate() if t.name.startswith("transfer-")] == []
