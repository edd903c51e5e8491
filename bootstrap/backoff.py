"""The one way the bootstrap waits before trying again: full-jitter exponential
backoff under one deadline.

Two callers, one idiom: the object store's retries (:mod:`bootstrap.storage.retry`
adds which failures are worth another try) and the peers' DNS wait
(:mod:`bootstrap.cluster.peers`). Full jitter (a uniform wait between 0 and the
doubling cap) spreads a fleet of nodes that failed together instead of bringing them
back in step, which is what OBS's SlowDown and a cluster's DNS both need.

Why not tenacity, which the peers' wait used: measured on this machine, importing it
costs 40-75 ms (it pulls asyncio and concurrent.futures into every multi-node job's
start-up) against ~6 ms for this module with the storage policy, and a call through it
30-60 us against 0.5-1.7 us, paid on every request of a 20,000-object download.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def uniform() -> float:
    """A uniform draw in [0, 1). :mod:`random` is imported on the first wait, not on
    every job's start (~3 ms, with its hashes): most jobs never retry."""
    import random

    return random.random()


def jittered(attempt: int, base: float, cap: float,
             rng: Callable[[], float] = uniform) -> float:
    """The wait before try ``attempt + 1`` (``attempt`` >= 1): uniform in
    [0, min(cap, base * 2**(attempt - 1)))."""
    return float(rng() * min(cap, base * 2 ** (attempt - 1)))


def until(done: Callable[[], bool], timeout: float, stop: threading.Event, base: float,
          cap: float, clock: Callable[[], float] = time.monotonic) -> bool:
    """Calls ``done()`` until it returns True (then True), ``timeout`` seconds pass or
    ``stop`` is set (then False); between calls a jittered wait, cut short by ``stop``
    and never past the deadline."""
    deadline = clock() + timeout
    attempt = 0
    while True:
        if done():
            return True
        attempt += 1
        left = deadline - clock()
        if left <= 0 or stop.is_set():
            return False
        if stop.wait(min(left, jittered(attempt, base, cap))):
            return False
