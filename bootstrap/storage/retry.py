"""Which object-store failures are worth another try, and how to wait between tries.

Throttling (503 SlowDown), 5xx, timeouts, resets and short bodies are transient:
OBS answers SlowDown by design when a large job starts hundreds of nodes at once.
Wrong credentials, a missing bucket or a refused key are not, and fail at once.
Waits are exponential with full jitter (:mod:`bootstrap.backoff`, the house's one
retry idiom) so that a fleet of nodes retrying together
spreads out instead of returning in lock-step; throttling gets longer waits and more
tries (within the same deadline) than a dropped connection, which is usually gone
on the next try. The policy is pure (:func:`is_retryable`, :func:`backoff`) and
driven by one loop for threads (:func:`call`) and one for coroutines
(:func:`call_async`); the libraries' own retries are off, so attempts and time are
bounded here and only here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..backoff import jittered, uniform
from .errors import StorageError, TransientError

if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

RETRYABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "BadDigest",
})
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                            "RequestLimitExceeded"})
THROTTLE_PATIENCE = 4  # throttled requests get this many times the attempts (same deadline)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, StorageError):
        if exc.kind in ("io", "timeout", "connect"):
            return True
        if exc.kind == "http":
            return exc.code in RETRYABLE_CODES or exc.status >= 500 or exc.status == 429
    return False


def is_throttling(exc: BaseException | None) -> bool:
    """SlowDown and friends: the server is fine, just busy; patience is the cure."""
    return isinstance(exc, StorageError) and exc.kind == "http" and (
        exc.code in THROTTLE_CODES or exc.status in (429, 503))


def backoff(attempt: int, throttled: bool, rng: Callable[[], float] = uniform) -> float:
    """Full-jitter exponential wait before try ``attempt + 1`` (``attempt`` >= 1):
    patient for throttling (0.5 s doubling up to 20 s: the fleet must spread out, not
    come back in step) and brisk for a dropped connection or a 500 (0.05 s doubling
    up to 2 s: the next try likely works)."""
    base, cap = (0.5, 20.0) if throttled else (0.05, 2.0)
    return jittered(attempt, base, cap, rng)


class Policy:
    """Attempts and deadline for one request; :meth:`wait` says how long to sleep
    before the next try, or None to give up (re-raise)."""

    def __init__(self, attempts: int, deadline: float,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = uniform) -> None:
        self.attempts, self.deadline = attempts, deadline
        self._clock, self._rng = clock, rng  # injectable: the schedule is unit-tested
        self.started = clock()
        self.tried = 0

    def wait(self, exc: BaseException) -> float | None:
        self.tried += 1
        if not is_retryable(exc):
            return None
        throttled = is_throttling(exc)
        limit = self.attempts * (THROTTLE_PATIENCE if throttled else 1)
        if self.tried >= limit:
            return None
        pause = backoff(self.tried, throttled, self._rng)
        if self._clock() + pause - self.started > self.deadline:
            return None
        return pause


def call(fn: Callable[[], T], attempts: int, deadline: float,
         on_retry: Callable[[BaseException], None] | None = None,
         sleep: Callable[[float], object] = time.sleep) -> T:
    """``fn`` until it returns, or the policy gives up (its last failure re-raised);
    ``sleep`` waits between tries (a stop event's ``wait``, so a stopping run does not
    sit out a throttling pause of up to 20 s)."""
    policy = Policy(attempts, deadline)
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the policy decides; others re-raise
            pause = policy.wait(exc)
            if pause is None:
                raise
            if on_retry is not None:
                on_retry(exc)
            sleep(pause)


async def call_async(fn: Callable[[], Awaitable[T]], attempts: int, deadline: float,
                     on_retry: Callable[[BaseException], None] | None = None) -> T:
    import asyncio

    policy = Policy(attempts, deadline)
    while True:
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - the policy decides; others re-raise
            pause = policy.wait(exc)
            if pause is None:
                raise
            if on_retry is not None:
                on_retry(exc)
            await asyncio.sleep(pause)
