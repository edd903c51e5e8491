"""What ran: the bootstrap's version, its Python and its transfer engine.

The job's first log line and ``python -m bootstrap --version`` say it, so an operator
reading a failed attempt's log knows which release, interpreter and S3 core produced
it. Nothing heavy is imported for that: ``importlib.metadata`` costs 25-40 ms of
start-up (it imports ``email`` and ``zipfile``); the transfer engine's version is
read from its installed ``NAME-VERSION.dist-info`` folder's name, which the wheel
format fixes, found beside the module ``find_spec`` locates without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from . import __version__


def installed_version(module: str) -> str | None:
    """The version of the distribution installed as ``module`` (None: not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    site = os.path.dirname(os.path.dirname(spec.origin))
    try:
        names = os.listdir(site)
    except OSError:
        return None
    stem = f"{module}-"
    for name in names:
        if name.startswith(stem) and name.endswith(".dist-info"):
            return name[len(stem):-len(".dist-info")]
    return "unknown version"


def transfer_engine(backend: str) -> str:
    """The S3 core BOOTSTRAP_S3_BACKEND picks here (``auto``: obstore when installed)."""
    if backend in ("auto", "native"):
        found = installed_version("obstore")
        if found is not None:
            return f"native (obstore {found})"
    found = installed_version("boto3")
    return f"boto3 {found}" if found else "boto3 (not installed)"


def describe(backend: str = "auto") -> str:
    """``bootstrap 0.2.0, Python 3.11.9 (/usr/bin/python3), transfer native (obstore
    0.12.1)``."""
    python = ".".join(str(n) for n in sys.version_info[:3])
    return (f"bootstrap {__version__}, Python {python} ({sys.executable}), transfer "
            f"{transfer_engine(backend)}")
