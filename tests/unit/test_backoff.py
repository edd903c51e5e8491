"""The one retry idiom: full jitter under one deadline, cut short by a stop event."""

from __future__ import annotations

import threading
import time

from bootstrap.backoff import jittered, tries, until
from bootstrap.storage import retry


def test_full_jitter_doubles_to_its_cap() -> None:
    top = [jittered(a, 0.2, 5.0, rng=lambda: 0.999999) for a in range(1, 8)]
    assert [round(t, 2) for t in top] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert jittered(3, 0.2, 5.0, rng=lambda: 0.0) == 0.0
    # The storage policy is the same idiom with its own base and cap.
    assert retry.backoff(2, throttled=True, rng=lambda: 0.5) == jittered(2, 0.5, 20.0,
                                                                          rng=lambda: 0.5)


def test_until_returns_true_once_done_and_false_at_the_deadline() -> None:
    calls: list[float] = []
    ready_at = time.monotonic() + 0.3

    def done() -> bool:
        calls.append(time.monotonic())
        return calls[-1] >= ready_at

    assert until(done, 5.0, threading.Event(), base=0.01, cap=0.05)
    assert len(calls) >= 3  # it waited between tries instead of giving up

    started = time.monotonic()
    assert not until(lambda: False, 0.3, threading.Event(), base=0.01, cap=0.05)
    assert 0.29 <= time.monotonic() - started < 1.0  # never waits past the deadline


def test_a_stop_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert not until(lambda: False, 30.0, stop, base=5.0, cap=5.0)
    assert time.monotonic() - started < 1.0


def test_tries_go_on_to_the_deadline_waiting_between_and_never_past_it() -> None:
    start = time.monotonic()
    lefts = list(tries(start + 0.3, 0.01, 0.05))
    took = time.monotonic() - start
    assert len(lefts) >= 4, lefts  # it waited between tries, not once and done
    assert lefts == sorted(lefts, reverse=True) and 0 < lefts[-1] < lefts[0] <= 0.3
    assert 0.3 <= took < 0.45


def test_tries_end_at_the_callers_break_or_a_stop() -> None:
    stop = threading.Event()
    seen = 0
    for _ in tries(time.monotonic() + 5, 0.01, 0.02, stop):
        seen += 1
        if seen == 3:
            stop.set()
    assert seen == 3
    assert list(tries(time.monotonic() - 1, 0.01, 0.02)) == []  # past its deadline: none
