"""The engines' one worker pool: every copy runs to the end, or the first failure stops
them all before it is raised."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from bootstrap.transfer.loop import run_workers


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
                await asyncio.sleep(0.01)
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
