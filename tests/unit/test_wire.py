"""cluster/wire.py: lines read under a deadline (a blocking reader) or as a socket turns
readable (a server that selects over many), with one cap and one framing for both."""

from __future__ import annotations

import socket
import time

import pytest

from bootstrap.cluster.wire import Wire


def test_a_line_comes_whole_however_it_is_cut_on_the_wire() -> None:
    a, b = socket.socketpair()
    with a, b:
        wire = Wire(b)
        a.sendall(b'{"rank": ')
        assert wire.line_ready() is None  # half a line: ask again when readable
        a.sendall(b'1}\n{"rank": 2}\n')
        assert wire.line_ready() == b'{"rank": 1}'
        assert wire.line(time.monotonic() + 1) == b'{"rank": 2}'  # already buffered


def test_a_line_past_the_cap_is_refused_before_it_ends() -> None:
    a, b = socket.socketpair()
    with a, b:
        wire = Wire(b)
        a.sendall(b"x" * 100)
        with pytest.raises(ValueError, match="a line over 64 bytes"):
            wire.line_ready(limit=64)


def test_a_closed_or_silent_peer_ends_the_read() -> None:
    a, b = socket.socketpair()
    with b:
        wire = Wire(b)
        with pytest.raises(TimeoutError):
            wire.line(time.monotonic() + 0.2)  # silence: the deadline, not for ever
        a.close()
        with pytest.raises(ConnectionError):
            wire.line_ready()
