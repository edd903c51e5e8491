"""This node's IPoIB address (the ``ip_mapper.py`` replacement).

8-GPU dedicated pools run host networking with InfiniBand; NCCL and user code want
each node's address on ``ib0`` (``DLS_IPOIB_DEVICE``, read by the configuration,
names another device).
"""

from __future__ import annotations

import os


def local_address(name: str) -> str | None:
    """The IPv4 address of device ``name``, or None when it has none or does not exist."""
    if "/" in name or not os.path.exists(f"/sys/class/net/{name}"):
        return None  # the common case, answered without importing psutil (~15 ms)
    import socket

    import psutil

    for addr in psutil.net_if_addrs().get(name, ()):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None
