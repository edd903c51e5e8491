"""Wait until every peer's name resolves: DNS often lags a container's start by
seconds, sometimes minutes, and a job that crashes on the first failed lookup
crash-loops the whole cluster. Waits with backoff and jitter under one deadline
(``BOOTSTRAP_PEER_TIMEOUT``), logging who is still missing; on timeout, one error
naming the peers that never resolved (exit 3)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

from ..backoff import until
from ..config.platform import Member
from ..errors import PeersNotReady
from ..log import Log


def resolve(host: str) -> str | None:
    """The first IPv4/IPv6 address of ``host``, or None while it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


def wait_for_names(peers: Sequence[Member], timeout: float, log: Log,
                   report_every: float = 10.0,
                   stop: threading.Event | None = None) -> dict[str, str]:
    """Maps every peer's host to an address, or raises PeersNotReady after ``timeout``.
    ``stop`` ends the wait early (another stage failed): PeersNotReady then too."""
    stop = stop or threading.Event()
    addresses: dict[str, str] = {}
    pending = sorted({n.host for n in peers})
    last_report = time.monotonic()

    def resolved() -> bool:
        nonlocal last_report
        for host in list(pending):
            addr = resolve(host)
            if addr is not None:
                addresses[host] = addr
                pending.remove(host)
        now = time.monotonic()
        if pending and now - last_report >= report_every:
            log.info(f"peers: waiting for DNS of {len(pending)}: {', '.join(pending[:8])}"
                     + (" ..." if len(pending) > 8 else ""))
            last_report = now
        return not pending

    # Waits of up to 0.2 s doubling to 5 s; ``stop`` (another stage failed) wakes it.
    if not until(resolved, timeout, stop, base=0.2, cap=5.0):
        raise PeersNotReady(
            f"{len(pending)} peer(s) never resolved within {timeout:g} s "
            f"(BOOTSTRAP_PEER_TIMEOUT): {', '.join(pending)}; check that those nodes "
            "started and that their names are right") from None
    return addresses
