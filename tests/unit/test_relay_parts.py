"""The relay's pure parts: the tree by rank, the proof of membership, the held set."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.relay import client, protocol, server
from bootstrap.transfer import verify
from bootstrap.transfer.listing import RemoteObject


def test_a_binary_tree_by_rank_covers_every_node_once() -> None:
    size = 87
    seen = [c for r in range(size) for c in protocol.children(r, size)]
    assert sorted(seen) == list(range(1, size))  # every node but 0 has one parent
    assert all(protocol.parent(c) == r for r in range(size) for c in protocol.children(r, size))
    assert protocol.parent(0) is None and protocol.children(0, 1) == []
    depth = max(len(list(_ancestors(r))) for r in range(512))
    assert depth == 9  # log2(512) levels: the time grows with log N


def _ancestors(rank: int) -> Iterator[int]:
    while (up := protocol.parent(rank)) is not None:
        yield up
        rank = up


def test_held_files_wake_their_waiters_and_close_ends_the_wait() -> None:
    held = server.Held()
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
    pace = client.Pace(clock)
    clock.now = protocol.PACE_WINDOW - 0.1
    assert not pace.slow()  # too early to judge anything
    clock.now = protocol.PACE_WINDOW
    assert pace.slow()  # a whole window, nothing came: slower than the store
    pace.add(int(protocol.MIN_BYTES_PER_S * protocol.PACE_WINDOW))
    clock.now += protocol.PACE_WINDOW
    assert not pace.slow()  # big files at the byte floor
    pace.add(0, files=int(protocol.MIN_FILES_PER_S * protocol.PACE_WINDOW))
    clock.now += protocol.PACE_WINDOW
    assert not pace.slow()  # small files at the file floor
    pace.add(1000, files=3)
    clock.now += protocol.PACE_WINDOW
    assert pace.slow()  # a parent that slowed down late is caught in its window


def test_a_parent_waiting_on_its_own_download_is_not_judged_for_it() -> None:
    clock = Clock()
    pace = client.Pace(clock)
    for _ in range(10):
        pace.pause()  # a "wait" line: the store's pace, not the parent's
        clock.now += protocol.PACE_WINDOW * 3
        pace.resume()
        clock.now += protocol.PACE_WINDOW * 0.05
        pace.add(10, files=1)
        assert not pace.slow()
    clock.now += protocol.PACE_WINDOW  # but active time adds up across the waits
    assert pace.slow()


def test_a_child_behind_the_parents_stamps_knows_its_own_stall() -> None:
    clock = Clock()
    theirs = client.ParentClock(clock)
    clock.now = 100.0
    assert not theirs.lagging(5000.0)  # the first stamp fixes the offset
    clock.now = 102.0
    assert not theirs.lagging(5002.0)  # read as soon as sent
    clock.now = 120.0  # stopped for 18 s: what was sent at 5003 is read only now
    assert theirs.lagging(5003.0)
    assert not theirs.lagging(5020.0)
    assert not theirs.lagging("never a number")


def test_a_wait_is_left_when_the_parents_progress_stands_still_by_its_clock() -> None:
    theirs = client.ParentClock()
    theirs.start_wait()

    def beat(t: float, files: int, nbytes: int) -> bool:
        return theirs.stalled({"wait": "x", "files": files, "bytes": nbytes, "t": t})

    assert not beat(0, 3, 100)
    assert not beat(protocol.STALL, 3, 100)  # exactly STALL: not yet
    assert not beat(protocol.STALL + 1, 3, 200)  # bytes moved (a range landed): patience renews
    assert not beat(2 * protocol.STALL, 3, 200)
    assert beat(2 * protocol.STALL + 1.5, 3, 200)
    theirs.start_wait()  # each wait is judged on its own
    assert not beat(1000, 3, 200)


def test_relay_ports_stay_clear_of_the_jobs_other_ports() -> None:
    from bootstrap.config.platform import Cluster, Member

    four = Cluster(nodes=tuple(Member(i, "host-a" if i < 2 else "host-b", 6000 + i)
                               for i in range(4)), rank=1, source="old", job_id="j")
    wide = (32768, 60999)
    assert protocol.port_conflict(29611, four, wide) is None
    assert [protocol.port_of(29611, r, p) for r in range(2) for p in protocol.PROTOCOLS] == \
        [29611, 29612, 29613, 29614, 29615, 29616]  # three a node: nodes on one host never share
    said = protocol.port_conflict(5995, four, wide)
    # 6000 = 5995 + 3 * 1 + 2: node 1's outputs port
    assert said is not None and "port 6000 (node 1's)" in said and "MASTER_PORT" in said
    said = protocol.port_conflict(6001, four, wide)
    assert said is not None and "node 1's port in the job's host list" in said
    said = protocol.port_conflict(32765, four, wide)
    assert said is not None and "ephemeral range" in said
    said = protocol.port_conflict(65530, four, wide)
    assert said is not None and "past 65535" in said


def _multipart(parts: list[bytes]) -> RemoteObject:
    sums = b"".join(hashlib.md5(p).digest() for p in parts)
    return RemoteObject("k", "k", sum(map(len, parts)),
                        f"{hashlib.md5(sums).hexdigest()}-{len(parts)}")


@pytest.mark.parametrize("pieces", [1, 7, 1 << 20])
def test_a_multipart_etag_is_recomputed_from_the_bytes_as_they_arrive(pieces: int) -> None:
    parts = [b"a" * 5000, b"b" * 5000, b"c" * 17]
    obj = _multipart(parts)
    assert obj.parts == 3 and obj.md5 is None
    data = b"".join(parts)
    check = verify.Verifier(obj, (5000, 5000, 17))
    for i in range(0, len(data), pieces):  # however the network cuts it
        check.update(data[i:i + pieces])
    assert check.matches()
    wrong = verify.Verifier(obj, (5000, 5000, 17))
    wrong.update(data[:-1] + b"x")
    assert not wrong.matches()
    cut = verify.Verifier(obj, (5000, 5000, 17))
    cut.update(data[:10000])  # two whole parts: a count of 2, not 3
    assert not cut.matches()
    other_split = verify.Verifier(obj, (4000, 4000, 2017))
    other_split.update(data)
    assert not other_split.matches()


def test_a_plain_etag_is_the_md5() -> None:
    obj = RemoteObject("k", "k", 3, hashlib.md5(b"abc").hexdigest())
    assert obj.parts is None
    check = verify.Verifier(obj, None)
    check.update(b"ab")
    check.update(b"c")
    assert check.matches()


def test_only_equal_parts_that_make_the_size_are_trusted() -> None:
    assert verify.uniform(10017, 3, 5000, None) == (5000, 5000, 17)
    assert verify.uniform(10017, 3, 5000, 3) == (5000, 5000, 17)
    assert verify.uniform(10017, 3, 5000, 4) is None  # the store counts otherwise
    assert verify.uniform(10017, 3, 10017, None) is None  # partNumber ignored
    assert verify.uniform(11 << 20, 2, 5 << 20, 2) is None  # 5 MiB + 6 MiB: uneven
    assert verify.uniform(1000, 1, 1000, 1) == (1000,)
    assert verify.uniform(1000, 1, 0, None) is None


def test_uneven_parts_are_asked_one_by_one_and_must_add_up() -> None:
    parts = [b"a" * (5 << 20), b"b" * (6 << 20)]
    obj = _multipart(parts)
    asked: list[int] = []

    def head(k: int) -> tuple[int, int]:
        asked.append(k)
        return len(parts[k - 1]), 2

    assert verify.layout(obj, head) == (5 << 20, 6 << 20) and asked == [1, 2]
    assert verify.layout(obj, lambda k: (obj.size, None)) is None  # partNumber ignored
    assert verify.layout(obj, lambda k: (5 << 20, 2)) is None  # 10 MiB is not the size
    check = verify.Verifier(obj, (5 << 20, 6 << 20))
    check.update(b"".join(parts))
    assert check.matches()


def test_equal_parts_from_part_1_alone_are_a_guess_that_each_part_can_overrule(
        tmp_path: Path) -> None:
    """6 + 5 + 6 MiB reads as 6 + 6 + 5 from part 1's length alone; such a layout is known
    to be a guess, and asking every part gives the one the body matches."""
    parts = [b"a" * (6 << 20), b"b" * (5 << 20), b"c" * (6 << 20)]
    obj = _multipart(parts)
    asked: list[int] = []

    def head(k: int) -> tuple[int, int]:
        asked.append(k)
        return len(parts[k - 1]), 3

    guess = verify.layout(obj, head)
    assert guess == (6 << 20, 6 << 20, 5 << 20) and asked == [1] and verify.guessed(guess)
    asked.clear()
    exact = verify.layout(obj, head, every=True)
    assert exact == (6 << 20, 5 << 20, 6 << 20) and asked == [1, 2, 3]
    assert not verify.guessed(exact)
    body = tmp_path / "body"
    body.write_bytes(b"".join(parts))
    assert verify.file_matches(obj, body, exact) and not verify.file_matches(obj, body, guess)
    body.write_bytes(b"".join(parts)[:-1])
    assert not verify.file_matches(obj, body, exact)  # a short file never matches
    assert not verify.guessed((5, 3))  # two parts: part 1 gives the other exactly
    assert verify.guessed((5, 5, 3)) and not verify.guessed((5, 6, 3))


def test_which_encryption_leaves_an_etag_that_is_not_the_md5() -> None:
    """OBS: every server-side encryption (SSE-KMS, SSE-OBS's AES256, SSE-C); S3: SSE-KMS
    and SSE-C, not SSE-S3 (AES256, on every object S3 stores now: still its MD5)."""
    assert not verify.etag_is_not_its_md5("", "OBS")
    assert verify.etag_is_not_its_md5("kms", "OBS")
    assert verify.etag_is_not_its_md5("AES256", "OBS")
    assert verify.etag_is_not_its_md5("aws:kms", "AmazonS3")
    assert verify.etag_is_not_its_md5("aws:kms:dsse", "AmazonS3")
    assert verify.etag_is_not_its_md5("SSE-C", "AmazonS3")
    assert not verify.etag_is_not_its_md5("AES256", "AmazonS3")
