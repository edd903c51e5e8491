"""Waiting for something to happen, on the thing itself (a condition polled under a
deadline, a line a process prints, a port that accepts), never a sleep of a guessed
length."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Calls ``predicate`` every ``interval`` seconds until it returns something true and
    returns that; after ``timeout`` seconds, its last (false) answer, so that the caller
    asserts, or goes on, as the test requires."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def accepts(host: str, port: int) -> bool:
    """Whether something listens on ``host``:``port`` (a connection is accepted)."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> None:
    """Reads ``proc``'s stdout until a line holds ``needle``; fails with its stderr when
    the process ends first or ``timeout`` seconds pass."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"{needle!r} never appeared; stderr: {stderr}")
