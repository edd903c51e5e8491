"""Waiting for something to happen, on the thing itself: a line a process prints.
Never a sleep of a guessed length."""

from __future__ import annotations

import subprocess
import time


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
