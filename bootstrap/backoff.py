"""The one way the bootstrap waits before trying again: full-jitter exponential
backoff under one deadline.

One idiom for every caller: the object store's retries (:mod:`bootstrap.storage.retry`
adds which failures are worth another try), the peers' DNS wait
(:mod:`bootstrap.cluster.peers`, :func:`until`), and every connect to another node
until a deadline (the barrier, the master's port, the relay's parent, the launch
agents: :func:`tries`). Full jitter (a uniform wait between 0 and the
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
from collections.abc import Callable, Iterator


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


def tries(deadline: float, base: float, cap: float, stop: threading.Event | None = None,
          clock: Callable[[], float] = time.monotonic) -> Iterator[float]:
    """Yields once a try, with the seconds left to the deadline (a try's own timeout
    should not pass it), until the caller stops asking (a try that worked), the
    deadline passes or ``stop`` is set; between tries a jittered wait, never past the
    deadline. The caller's ``for ... else`` is what happens when every try failed::

        for left in backoff.tries(deadline, 0.1, 2.0):
            try:
                return socket.create_connection(address, timeout=min(left, 5))
            except OSError as exc:
                last = exc
        raise Unreachable(last)
    """
    attempt = 0
    while (left := deadline - clock()) > 0 and not (stop is not None and stop.is_set()):
        yield left
        attempt += 1
        wait = min(jittered(attempt, base, cap), max(deadline - clock(), 0.0))
        if stop is not None:
            stop.wait(wait)
        else:
            time.sleep(wait)
