"""``python -m bootstrap check``: the node preflight alone, for image authors and probes.

Prints the same report a job prints before its command starts (``--json`` for
machines), writes it to the job dir, resolves the peers once when the platform's
variables describe a cluster, and exits 0 when the node can train, 4 when not.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

from . import cluster as cluster_mod
from . import peers, preflight
from . import settings as settings_mod
from .errors import EXIT_PREFLIGHT, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"check: {message}; usage: python -m bootstrap check [--json]")


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    parser = _Parser(prog="python -m bootstrap check", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    settings = settings_mod.load(env)
    report = preflight.run(env, settings.job_dir)
    cluster = cluster_mod.discover(env)
    unresolved = [n.host for n in cluster.peers if peers.resolve(n.host) is None]
    preflight.write(report, settings.job_dir)
    if args.json:
        out = report.to_json()
        out["peers_unresolved"] = unresolved
        print(json.dumps(out, indent=2))
    else:
        for line in report.lines():
            print(line)
        if cluster.size > 1:
            print(f"peers: {cluster.size - 1 - len(unresolved)} of {cluster.size - 1} resolve"
                  + (f"; not yet: {', '.join(unresolved)}" if unresolved else ""))
    return 0 if report.ok else EXIT_PREFLIGHT
