"""The relay's pure parts: the tree by rank, the proof of membership, the held set."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from bootstrap.transfer import relay


def test_a_four_ary_tree_by_rank_covers_every_node_once() -> None:
    size = 87
    seen = [c for r in range(size) for c in relay.children(r, size)]
    assert sorted(seen) == list(range(1, size))  # every node but 0 has one parent
    assert all(relay.parent(c) == r for r in range(size) for c in relay.children(r, size))
    assert relay.parent(0) is None and relay.children(0, 1) == []
    depth = max(len(list(_ancestors(r))) for r in range(512))
    assert depth == 5  # log4(512) levels: the time grows with log N


def _ancestors(rank: int) -> Iterator[int]:
    while (up := relay.parent(rank)) is not None:
        yield up
        rank = up


def test_the_proof_binds_the_secret_the_job_the_nonce_and_the_rank() -> None:
    key = relay.job_key("secret", "job-1")
    good = relay.proof(key, "n1", 3)
    assert good == relay.proof(relay.job_key("secret", "job-1"), "n1", 3)
    assert good != relay.proof(relay.job_key("other", "job-1"), "n1", 3)  # no key, no entry
    assert good != relay.proof(relay.job_key("secret", "job-2"), "n1", 3)  # another job
    assert good != relay.proof(key, "n2", 3)  # a replay under a fresh nonce fails
    assert good != relay.proof(key, "n1", 4)


def test_held_files_wake_their_waiters_and_close_ends_the_wait() -> None:
    held = relay.Held()
    threading.Timer(0.1, held.add, args=("a.py",)).start()
    assert held.wait_for("a.py", 5)
    started = time.monotonic()
    threading.Timer(0.1, held.close).start()
    assert not held.wait_for("never.py", 5)  # closed: it will not land here
    assert time.monotonic() - started < 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pace_judges_whole_windows_of_active_time_by_bytes_or_files() -> None:
    clock = Clock()
    pace = relay.Pace(clock)
    clock.now = relay.PACE_WINDOW - 0.1
    assert not pace.slow()  # too early to judge anything
    clock.now = relay.PACE_WINDOW
    assert pace.slow()  # a whole window, nothing came: slower than the store
    pace.add(int(relay.MIN_BYTES_PER_S * relay.PACE_WINDOW))
    clock.now += relay.PACE_WINDOW
    assert not pace.slow()  # big files at the byte floor
    pace.add(0, files=int(relay.MIN_FILES_PER_S * relay.PACE_WINDOW))
    clock.now += relay.PACE_WINDOW
    assert not pace.slow()  # small files at the file floor
    pace.add(1000, files=3)
    clock.now += relay.PACE_WINDOW
    assert pace.slow()  # a parent that slowed down late is caught in its window


def test_a_parent_waiting_on_its_own_download_is_not_judged_for_it() -> None:
    clock = Clock()
    pace = relay.Pace(clock)
    for _ in range(10):
        clock.now += relay.PACE_WINDOW * 0.6
        pace.restart()  # a "wait" line: the store's pace, not the parent's
        pace.add(10, files=1)
        assert not pace.slow()
