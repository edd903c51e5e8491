"""``python -m bootstrap check``: the node preflight alone, for image authors and probes.

Prints the same report a job prints before its command starts (``--json`` for
machines), writes it to the job dir, resolves the peers once when the platform's
variables describe a cluster, and exits 0 when the node can train, 4 when not.
``--config`` prints instead the settings a job would run with, as JSON, every secret
value the environment holds replaced by ``***``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..cluster import peers
from ..config import settings as settings_mod
from ..config.platform import Cluster
from ..errors import EXIT_PREFLIGHT, UsageError
from ..node import preflight


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"check: {message}; usage: python -m bootstrap check [--json] "
                         "[--image] [--config]")


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    parser = _Parser(prog="python -m bootstrap check",
                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--image", action="store_true",
                        help="also check the image itself (user, run_train.sh, setuid files)")
    parser.add_argument("--config", action="store_true",
                        help="print the settings in effect (secrets redacted) and exit")
    args = parser.parse_args(argv)
    settings = settings_mod.load(env)
    if args.config:
        print(config_text(settings, env))
        return 0
    report = preflight.run(settings.preflight, settings.job_dir, settings.cluster.ipoib_device)
    cluster = settings.cluster.layout
    unresolved = [n.host for n in cluster.peers if peers.resolve(n.host) is None]
    image = []
    if args.image:
        from ..node import imagecheck

        image = imagecheck.check(settings.preflight, report)
    else:
        preflight.write(report, settings.job_dir)
    image_ok = not any(f.level == "fail" for f in image)
    net = _network(cluster, settings)
    if args.json:
        out = report.to_json()
        out["peers_unresolved"] = unresolved
        out["network"] = net
        if args.image:
            out["image"] = [asdict(f) for f in image]
            out["ok"] = out["ok"] and image_ok
        print(json.dumps(out, indent=2))
    else:
        for line in facts_table(report):
            print(line)
        for f in image:
            print(f"image: {f.level.upper() if f.level == 'fail' else f.level} {f.check}: "
                  f"{f.message}")
        if cluster.size > 1:
            print(f"peers: {cluster.size - 1 - len(unresolved)} of {cluster.size - 1} resolve"
                  + (f"; not yet: {', '.join(unresolved)}" if unresolved else ""))
        for line in _network_lines(net):
            print(line)
    return 0 if report.ok and image_ok else EXIT_PREFLIGHT


def config_text(settings: settings_mod.Settings, env: Mapping[str, str]) -> str:
    """The settings as indented JSON, with the bootstrap's version first; every value of
    a secret variable (keys, tokens, the job secret) is redacted wherever it appears."""
    from ..log import Redactor
    from ..version import describe

    redact = Redactor(env)
    body = {"version": describe(settings.transfer.backend), **asdict(settings)}
    return redact(json.dumps(body, indent=2, default=str))


def _network(cluster: Cluster, settings: settings_mod.Settings) -> dict[str, Any]:
    """Interfaces, HCA ports, and what a job here would export for the engines."""
    from ..cluster import network

    ifaces = network.interfaces()
    choice = network.Choice(None, "single node: the engines need no interface")
    if cluster.size > 1:
        if cluster.rank == 0:
            choice = network.choose(0, peers.resolve(cluster.master.host),
                                    peers.resolve(cluster.nodes[1].host), None, ifaces)
        else:
            choice = network.choose(cluster.rank, peers.resolve(cluster.master.host), None,
                                    None, ifaces)
    choice = network.with_hcas(choice, settings.cluster.sysfs_root)
    return {"interfaces": [asdict(i) for i in ifaces],
            "hca_ports": [asdict(p) for p in choice.hcas],
            "chosen": choice.interface, "reason": choice.reason,
            "exports": choice.exports() if cluster.size > 1 else {}}


def _network_lines(net: Mapping[str, Any]) -> list[str]:
    lines = ["network:"]
    for i in net["interfaces"]:
        speed = f", {i['speed_mbps']} Mb/s" if i["speed_mbps"] else ""
        lines.append(f"  {i['name']:<12} {'up' if i['up'] else 'down'}{speed}: "
                     f"{', '.join(i['addresses']) or '(no address)'}")
    for p in net["hca_ports"]:
        gid = f", RoCE v2 GID {p['roce_v2_gid']}" if p["roce_v2_gid"] is not None else ""
        lines.append(f"  hca {p['device']}:{p['port']} "
                     f"{'ACTIVE' if p['active'] else 'down'}, {p['link_layer']}{gid}")
    lines.append(f"  engines' interface: {net['chosen'] or '-'} ({net['reason']})")
    for k, v in net["exports"].items():
        lines.append(f"  would export {k}={v}")
    return lines


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def facts_table(report: preflight.Report) -> list[str]:
    """The node as an operator reads it: one row per fact, then what is wrong with it."""
    inv, res = report.inventory, report.node
    if not inv.nvml:
        gpus = "none (no NVML library or driver: CPU-only)"
    elif inv.error:
        gpus = inv.error
    else:
        names = sorted({g.name for g in inv.gpus})
        gpus = f"{len(inv.gpus)} x {', '.join(names) or '-'}" + (
            f" ({inv.hidden} hidden by CUDA_VISIBLE_DEVICES)" if inv.hidden else "")
    driver = (f"{inv.driver}, CUDA {preflight.cuda_text(inv.cuda_driver)}"
              if inv.nvml and inv.driver and inv.cuda_driver else "-")
    rows = [
        ("GPUs", gpus),
        ("driver / CUDA", driver + (f"; image CUDA {res.cuda_image}" if res.cuda_image else "")),
        ("disk", f"{_size(res.job_dir_free)} free at {res.job_dir}"),
        ("/cache", f"{_size(res.cache_free)} free at {res.cache_dir}" if res.cache_dir
         else "absent"),
        ("/dev/shm", _size(res.shm_total)),
        ("memory", f"{_size(res.mem_total)} total, {_size(res.mem_available)} available"),
        ("nofile", str(res.nofile) if res.nofile >= 0 else "unlimited"),
        ("memlock", "unlimited" if res.memlock < 0 else _size(res.memlock)),
        ("IB", res.ib_device or "none"),
    ]
    lines = ["node:"] + [f"  {name:<14}{value}" for name, value in rows]
    problems = [f for f in report.findings if f.level != "ok"]
    lines.append("findings:" if problems else "findings: none")
    lines += [f"  {'FAIL' if f.level == 'fail' else 'warn'} {f.check}: {f.message}"
              for f in problems]
    fails, warns = len(report.failures()), sum(f.level == "warn" for f in report.findings)
    lines.append(f"verdict: {f'FAILED ({fails} fatal)' if fails else 'ok'}, "
                 f"{warns} warning(s), {report.seconds * 1000:.0f} ms")
    return lines
