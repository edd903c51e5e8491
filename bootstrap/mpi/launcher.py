"""Node 0's side of MPI-style launch: a control connection to every other node's agent
before the command starts, and the command's exit code to each of them at its end.

The agents listen before the start barrier, so by the time node 0 dials they are up;
the dial still retries for :data:`.plan.CONNECT_WINDOW` seconds (a slow node's accept
loop). A node whose agent does not answer stops the job before the command runs (exit
5, naming it). If node 0 itself dies, its control connections drop and every agent
stops its commands and exits (:meth:`.agent.Agent.wait`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping

from ..errors import BarrierFailed
from ..log import Log
from ..run.watchdog import DUMP_WAIT
from .channel import HANDSHAKE, Broken, Channel, Unreachable, dial
from .plan import CONNECT_WINDOW, Plan


class Launcher:
    def __init__(self, plan: Plan, addresses: Mapping[str, str], log: Log) -> None:
        self.plan, self.addresses, self.log = plan, addresses, log
        self.controls: dict[int, Channel] = {}
        self._lock = threading.Lock()  # the watchdog's thread asks for stacks too

    def connect_all(self) -> None:
        deadline = time.monotonic() + CONNECT_WINDOW
        for rank in range(1, len(self.plan.hosts)):
            self.controls[rank] = self._connect(rank, deadline)
        self.log.info(f"launch: {len(self.controls)} agent(s) connected; node 0 runs the "
                      "command")

    def _connect(self, rank: int, deadline: float) -> Channel:
        host = self.plan.hosts[rank]
        target = (self.addresses.get(host) or host, self.plan.ports[rank])
        try:
            channel = dial(target, self.plan.key, 0, rank, max(deadline - time.monotonic(), 0))
            channel.send_json({"op": "control"})
            if channel.recv_json(time.monotonic() + HANDSHAKE).get("ok") is True:
                return channel
            channel.close()
            why = "it refused the launcher"
        except (Unreachable, Broken, ValueError, OSError) as exc:
            why = str(exc) or type(exc).__name__
        raise BarrierFailed(f"node {rank}'s launch agent at {target[0]}:{target[1]} did not "
                            f"answer within {CONNECT_WINDOW:g} s ({why}); see that node's log")

    def stacks(self) -> str:
        """Every other node's Python stacks (the hang watchdog's ``remote``): each
        agent is asked at once, and answers within a few seconds; a node that does not
        is named instead."""
        with self._lock:
            asked = {}
            for rank, channel in self.controls.items():
                try:
                    channel.send_json({"op": "dump"})
                    asked[rank] = channel
                except OSError:
                    continue
            deadline = time.monotonic() + DUMP_WAIT + HANDSHAKE
            parts = []
            for rank, channel in asked.items():
                try:
                    text = channel.recv_json(deadline).get("stacks")
                except (Broken, ValueError, OSError, TimeoutError):
                    text = None
                parts.append(text if isinstance(text, str) else
                             f"--- node {rank}: no stacks (its agent did not answer)\n")
        return "".join(f"\n{p}" for p in parts if p)

    def finish(self, code: int) -> None:
        """Tells every agent the command's exit code, then lets them go."""
        with self._lock:
            for channel in self.controls.values():
                with contextlib.suppress(OSError):  # a node gone already: its log says why
                    channel.send_json({"exit": code})
                channel.close()
            self.controls.clear()

    def abandon(self) -> None:
        """The command never ran (a failure, a stop): the agents end with their own
        line, not a code of ours."""
        with self._lock:
            for channel in self.controls.values():
                channel.close()
            self.controls.clear()
