"""The retry schedule, without a server: which failures are retried, how patiently."""

from __future__ import annotations

from bootstrap.storage.errors import StorageError, TransientError
from bootstrap.storage.retry import THROTTLE_PATIENCE, Policy, backoff, is_retryable


def http(status: int, code: str = "") -> StorageError:
    return StorageError("get", kind="http", status=status, code=code)


def test_what_is_retried() -> None:
    assert is_retryable(http(503, "SlowDown")) and is_retryable(http(500))
    assert is_retryable(http(429)) and is_retryable(http(400, "BadDigest"))
    assert is_retryable(StorageError("get", kind="connect"))
    assert is_retryable(StorageError("get", kind="io")) and is_retryable(TransientError("x"))
    # A wrong key, a missing object, a bad certificate: retrying cannot help.
    assert not is_retryable(http(403, "SignatureDoesNotMatch")) and not is_retryable(http(404))
    assert not is_retryable(StorageError("get", kind="tls"))
    assert not is_retryable(ValueError("a bug is not a network problem"))


def test_backoff_is_patient_for_throttling_and_brisk_for_resets() -> None:
    top = lambda: 1.0  # noqa: E731 - the jitter's upper bound
    assert [backoff(a, False, top) for a in (1, 2, 3, 10)] == [0.05, 0.1, 0.2, 2.0]
    assert [backoff(a, True, top) for a in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 20.0]
    assert backoff(5, True, lambda: 0.0) == 0.0  # full jitter: anywhere from zero


def schedule(exc: BaseException, attempts: int, deadline: float) -> list[float]:
    """The pauses a policy hands out for one request failing with ``exc`` every time,
    on a clock that advances by exactly the pauses taken."""
    now = [0.0]
    policy = Policy(attempts, deadline, clock=lambda: now[0], rng=lambda: 1.0)
    pauses = []
    while (pause := policy.wait(exc)) is not None:
        pauses.append(pause)
        now[0] += pause
    return pauses


def test_a_reset_gets_the_attempts_throttling_gets_more() -> None:
    assert len(schedule(StorageError("get", kind="io"), 5, 1000)) == 4  # 5 tries in all
    throttled = schedule(http(503, "SlowDown"), 5, 1000)
    assert len(throttled) == 5 * THROTTLE_PATIENCE - 1
    assert throttled[:3] == [0.5, 1.0, 2.0] and max(throttled) == 20.0


def test_the_deadline_ends_retrying_before_the_attempts_do() -> None:
    pauses = schedule(http(503, "SlowDown"), 100, 10.0)
    assert sum(pauses) <= 10.0 and len(pauses) < 100
    assert schedule(http(403), 100, 1000) == []  # not retryable: no pause at all
