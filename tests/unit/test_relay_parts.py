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
