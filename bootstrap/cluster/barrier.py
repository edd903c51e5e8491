"""The start barrier: every node reports to node 0 before anyone launches.

It replaces the old images' ``get_cluster_ib_ip.py``: each node sends node 0 one JSON
line (its rank, whether its checks passed, its IB address, its GPU count); node 0
waits for all of them, then answers everyone with the full map and the verdict.
So every node learns every node's IB address, and a node that failed its checks
stops the whole job with a clear message instead of leaving the others hanging in
``init_process_group`` until a NCCL timeout.

Node 0 listens on its own port (the one ``MASTER_PORT`` names) and closes it before
the user command starts, so the engines can bind it. Messages must carry the job's
token (derived from the job id) and a valid rank: anything else, a stray scanner or
another job's node, is refused and logged, and the wait goes on. Everything is
bounded by one deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import backoff
from ..config.platform import Cluster
from ..errors import BarrierFailed
from ..log import Log
from .topology import MemberFacts
from .wire import Wire

MAGIC = "modelarts-bootstrap/barrier/1"
MAX_LINE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Readiness:
    """One node's answer at the start barrier: whether it can start (and why not), with the
    facts it measured (GPUs, IB address) for the topology."""

    rank: int
    ok: bool
    reason: str
    facts: MemberFacts


def token(cluster: Cluster) -> str:
    return hashlib.sha256(f"{cluster.job_id}|{cluster.size}".encode()).hexdigest()[:32]


def _encode(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _report_message(cluster: Cluster, report: Readiness) -> dict[str, Any]:
    return {"magic": MAGIC, "token": token(cluster), "rank": report.rank, "ok": report.ok,
            "reason": report.reason[:500], "gpus": report.facts.gpus,
            "ib_addr": report.facts.ib_addr}


def parse_report(line: bytes, cluster: Cluster) -> Readiness:
    """Validates one node's message; ValueError says why it was refused."""
    try:
        msg = json.loads(line)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict) or msg.get("magic") != MAGIC:
        raise ValueError("not a bootstrap barrier message")
    if msg.get("token") != token(cluster):
        raise ValueError("from another job (token mismatch)")
    rank = msg.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank < cluster.size:
        raise ValueError(f"invalid rank {rank!r}")
    gpus = msg.get("gpus", 0)
    ib = msg.get("ib_addr")
    if not isinstance(gpus, int) or gpus < 0 or (ib is not None and not isinstance(ib, str)):
        raise ValueError("malformed facts")
    return Readiness(rank, bool(msg.get("ok")), str(msg.get("reason", "")),
                  MemberFacts(gpus=gpus, ib_addr=ib))


class _Conn:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.wire = Wire(sock)


def serve(cluster: Cluster, mine: Readiness, deadline: float,
          log: Log) -> tuple[dict[int, Readiness], str | None]:
    """Node 0: collects every report, answers all, closes the port. Returns the map and
    the local address the peers dialled (what the network stage ties to an interface)."""
    listener = _listen(cluster)
    reports: dict[int, Readiness] = {0: mine}
    dialled: list[str] = []  # the local address of every accepted report
    waiting: dict[int, _Conn] = {}  # rank -> connection that reported it
    pending: dict[socket.socket, _Conn] = {}
    try:
        while len(reports) < cluster.size:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [n.host for n in cluster.nodes if n.rank not in reports]
                raise BarrierFailed(f"start barrier timed out: {len(missing)} node(s) never "
                                    f"reported to node 0: {', '.join(missing)}")
            readable, _, _ = select.select([listener, *pending], [], [], min(left, 1.0))
            for sock in readable:
                if sock is listener:
                    try:
                        conn, addr = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    pending[conn] = _Conn(conn, f"{addr[0]}:{addr[1]}")
                    continue
                c = pending[sock]
                try:
                    line = c.wire.line_ready(MAX_LINE)
                except (OSError, ValueError) as exc:  # closed, or a line past the cap
                    if isinstance(exc, ValueError):
                        log.warn(f"barrier: refused {c.peer}: message too long")
                    del pending[sock]
                    sock.close()
                    continue
                if line is None:
                    continue
                del pending[sock]
                try:
                    report = parse_report(line, cluster)
                except ValueError as exc:
                    log.warn(f"barrier: refused a message from {c.peer}: {exc}")
                    sock.close()
                    continue
                if report.rank in waiting:  # a node that reconnected: keep the newest
                    waiting[report.rank].sock.close()
                reports[report.rank] = report
                waiting[report.rank] = c
                with contextlib.suppress(OSError):
                    dialled.append(str(sock.getsockname()[0]))
        failed = {r: rep.reason for r, rep in reports.items() if not rep.ok}
        _answer(cluster, reports, failed, list(waiting.values()), log)
    finally:
        for c in list(pending.values()) + list(waiting.values()):
            c.sock.close()
        listener.close()  # the port is free again before the user command starts
    _raise_if_failed(failed, cluster)
    local = max(set(dialled), key=dialled.count) if dialled else None
    return reports, local


def _listen(cluster: Cluster) -> socket.socket:
    """Node 0's listening socket on MASTER_PORT (non-blocking), or BarrierFailed."""
    port = cluster.master.port
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as exc:
        listener.close()
        raise BarrierFailed(f"node 0 cannot listen on port {port} for the start barrier: "
                            f"{exc.strerror}; is another process using it?") from None
    listener.listen(max(cluster.size * 2, 16))
    listener.setblocking(False)
    return listener


def _answer(cluster: Cluster, reports: Mapping[int, Readiness], failed: Mapping[int, str],
            waiting: list[_Conn], log: Log) -> None:
    """The verdict and every node's facts, to every node that reported."""
    answer = _encode({"magic": MAGIC, "token": token(cluster), "ok": not failed,
                      "failed": {str(r): why for r, why in failed.items()},
                      "facts": {str(r): {"gpus": rep.facts.gpus, "ib_addr": rep.facts.ib_addr}
                                for r, rep in reports.items()}})
    for c in waiting:
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(5)
            c.sock.sendall(answer)
        except OSError as exc:
            log.warn(f"barrier: could not answer {c.peer}: {exc}")


def join(cluster: Cluster, mine: Readiness, address: str, deadline: float,
         log: Log) -> tuple[dict[int, Readiness], str | None]:
    """Nodes 1..N-1: report to node 0 (retrying until it listens), await the verdict.
    Also returns the local address the connection left from."""
    port = cluster.master.port
    last_error = ""
    for left in backoff.tries(deadline, 0.1, 2.0):
        try:
            with socket.create_connection((address, port), timeout=min(left, 5)) as sock:
                local = str(sock.getsockname()[0])
                sock.sendall(_encode(_report_message(cluster, mine)))
                # node 0 answers once every node has reported: up to the deadline
                answer = Wire(sock).line(max(deadline, time.monotonic() + 0.1), MAX_LINE * 64)
            break
        except (OSError, ValueError) as exc:
            last_error = str(exc) or type(exc).__name__
    else:
        raise BarrierFailed(f"start barrier timed out: node 0 ({cluster.master.host}:"
                            f"{port}) never answered ({last_error or 'no answer'})")
    try:
        msg = json.loads(answer)
        if msg.get("magic") != MAGIC or msg.get("token") != token(cluster):
            raise ValueError("foreign answer")
        facts = {int(r): MemberFacts(gpus=int(f.get("gpus", 0)), ib_addr=f.get("ib_addr"))
                 for r, f in msg["facts"].items()}
        failed = {int(r): str(why) for r, why in msg.get("failed", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BarrierFailed(f"node 0 ({cluster.master.host}:{port}) answered the start "
                            "barrier with something that is not a bootstrap message") from None
    _raise_if_failed(failed, cluster)
    return {r: Readiness(r, True, "", f) for r, f in facts.items()}, local


def _raise_if_failed(failed: Mapping[int, str], cluster: Cluster) -> None:
    if failed:
        detail = "; ".join(f"node {r} ({cluster.nodes[r].host}): {why}"
                           for r, why in sorted(failed.items()))
        raise BarrierFailed(f"{len(failed)} node(s) failed their checks, so no node starts: "
                            f"{detail}")


def exchange(cluster: Cluster, mine: Readiness, master_address: str | None, timeout: float,
             log: Log) -> tuple[dict[int, Readiness], str | None]:
    """Every node's report, and the local address this node's barrier traffic used."""
    deadline = time.monotonic() + timeout
    if cluster.rank == 0:
        return serve(cluster, mine, deadline, log)
    return join(cluster, mine, master_address or cluster.master.host, deadline, log)
