"""This node's IPoIB address (the ``ip_mapper.py`` replacement).

8-GPU dedicated pools run host networking with InfiniBand; NCCL and user code want
each node's address on ``ib0`` (``DLS_IPOIB_DEVICE`` names another device).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

DEFAULT_DEVICE = "ib0"


def device(env: Mapping[str, str]) -> str:
    return env.get("DLS_IPOIB_DEVICE", "").strip() or DEFAULT_DEVICE


def local_address(name: str) -> Optional[str]:
    """The IPv4 address of device ``name``, or None when it has none or does not exist."""
    if "/" in name or not os.path.exists(f"/sys/class/net/{name}"):
        return None  # the common case, answered without importing psutil (~15 ms)
    import socket

    import psutil

    for addr in psutil.net_if_addrs().get(name, ()):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None
