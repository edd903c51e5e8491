"""The start barrier's message check: what a node accepts from the network."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bootstrap.cluster.barrier import MAGIC, Readiness, _report_message, parse_report, token
from bootstrap.cluster.topology import MemberFacts
from bootstrap.config.platform import Cluster, Member

CLUSTER = Cluster(nodes=tuple(Member(i, f"w{i}", 29500) for i in range(3)), rank=0,
                  source="new", job_id="job-1")


def line(**changes: Any) -> bytes:
    msg = _report_message(CLUSTER, Readiness(2, True, "", MemberFacts(gpus=8, ib_addr="10.0.0.3")))
    msg.update(changes)
    return json.dumps(msg).encode()


def test_a_good_message_round_trips() -> None:
    got = parse_report(line(), CLUSTER)
    assert got == Readiness(2, True, "", MemberFacts(gpus=8, ib_addr="10.0.0.3"))


@pytest.mark.parametrize("raw, why", [
    (b"GET / HTTP/1.1", "not JSON"),
    (b"[1, 2]", "not a bootstrap barrier message"),
    (line(magic="other/1"), "not a bootstrap barrier message"),
    (line(token="0" * 32), "token mismatch"),
    (line(rank=0), "invalid rank"),  # node 0 is the server, never a client
    (line(rank=3), "invalid rank"),
    (line(rank=True), "invalid rank"),
    (line(rank="1"), "invalid rank"),
    (line(gpus=-1), "malformed facts"),
    (line(ib_addr=5), "malformed facts"),
])
def test_refused_messages_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_report(raw, CLUSTER)


def test_the_token_binds_the_job_and_its_size() -> None:
    other_job = Cluster(CLUSTER.nodes, 0, "new", "job-2")
    fewer = Cluster(CLUSTER.nodes[:2], 0, "new", "job-1")
    assert len({token(CLUSTER), token(other_job), token(fewer)}) == 3
    assert MAGIC.startswith("modelarts-bootstrap/barrier/")
