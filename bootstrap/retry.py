"""Which object-store failures are worth another try, and how to wait between tries.

Throttling (503 SlowDown), 5xx, timeouts, resets and short bodies are transient:
OBS answers SlowDown by design when a large job starts hundreds of nodes at once.
Wrong credentials, a missing bucket or a refused key are not, and fail at once.
Waits are exponential with full jitter so that a fleet of nodes retrying together
spreads out instead of returning in lock-step; throttling gets longer waits and more
tries (within the same deadline) than a dropped connection, which is usually gone
on the next try.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any, Callable, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")

RETRYABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "BadDigest",
    "500", "502", "503", "504", "429",
})


class TransientError(Exception):
    """A response that looked fine but was not (short body, digest mismatch): retry it."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (TransientError, socket.timeout, ConnectionError, TimeoutError,
                        http.client.HTTPException)):
        return True  # HTTPException: IncompleteRead, RemoteDisconnected, BadStatusLine, ...
    from .s3lean import S3Error

    if isinstance(exc, S3Error):
        return exc.code in RETRYABLE_CODES or exc.status >= 500 or exc.status == 429
    try:
        from botocore import exceptions as bce
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return str(err.get("Code", "")) in RETRYABLE_CODES or status >= 500 or status == 429
    transient = (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                 getattr(bce, "ResponseStreamingError", bce.HTTPClientError))
    if isinstance(exc, transient):
        return True
    try:
        from urllib3 import exceptions as u3
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (u3.ProtocolError, u3.ReadTimeoutError, u3.IncompleteRead))


THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                            "RequestLimitExceeded", "503", "429"})
THROTTLE_PATIENCE = 4  # throttled requests get this many times the attempts (same deadline)


def is_throttling(exc: BaseException | None) -> bool:
    """SlowDown and friends: the server is fine, just busy; patience is the cure."""
    from .s3lean import S3Error

    if isinstance(exc, S3Error):
        return exc.code in THROTTLE_CODES or exc.status in (429, 503)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) in THROTTLE_CODES
    return False


class _Stop:
    """Stop after ``attempts`` tries, or ``attempts * THROTTLE_PATIENCE`` when the last
    answer was throttling (a large job starting hundreds of nodes at once is throttled
    by design; giving up then would fail the job), and always at ``deadline``."""

    def __init__(self, attempts: int, deadline: float) -> None:
        self.attempts, self.deadline = attempts, deadline

    def __call__(self, state: Any) -> bool:
        if stop_after_delay(self.deadline)(state):
            return True
        exc = state.outcome.exception() if state.outcome is not None else None
        limit = self.attempts * (THROTTLE_PATIENCE if is_throttling(exc) else 1)
        return bool(stop_after_attempt(limit)(state))


class _Wait:
    """Full-jitter exponential backoff, patient for throttling (0.5 s doubling up to
    20 s: the fleet must spread out, not come back in step) and brisk for a dropped
    connection or a 500 (0.05 s doubling up to 2 s: the next try likely works)."""

    throttled = wait_random_exponential(multiplier=0.5, max=20)
    transient = wait_random_exponential(multiplier=0.05, max=2)

    def __call__(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return float((self.throttled if is_throttling(exc) else self.transient)(state))


def retrying(attempts: int, deadline: float,
             before_sleep: Callable[[Any], None] | None = None) -> Retrying:
    return Retrying(
        stop=_Stop(attempts, deadline),
        wait=_Wait(),
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


def call(fn: Callable[[], T], attempts: int, deadline: float,
         on_retry: Callable[[BaseException], None] | None = None) -> T:
    def before_sleep(state: Any) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc)

    for attempt in retrying(attempts, deadline, before_sleep):
        with attempt:
            return fn()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
