"""The files MPI-style launch leaves in the job directory, and the variables that point
at them (every file whole or absent, :mod:`bootstrap.landing`)::

    <job dir>/.bootstrap-mpi/hostfile        each host once: "host slots=N"
    <job dir>/.bootstrap-mpi/hostfile.mpich  the same as "host:N"
    <job dir>/.bootstrap-mpi/client.json     0600: the agents' addresses, the derived key
    <job dir>/.bootstrap-mpi/bin/ssh         the client, first on the command's PATH
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from .. import landing
from ..config.platform import Cluster
from . import plan as mpi


def install(job_dir: Path, p: mpi.Plan, cluster: Cluster, slots: Mapping[int, int],
            addresses: Mapping[str, str]) -> tuple[dict[str, str], Path]:
    """Writes the files; returns the exports and the folder to put first on PATH."""
    folder = job_dir / ".bootstrap-mpi"
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # the key's folder: this user's only
    hostfile, mpich = folder / "hostfile", folder / "hostfile.mpich"
    landing.write_text(hostfile, mpi.hostfile(cluster, slots), mode=0o644)
    landing.write_text(mpich, mpi.mpich_hostfile(cluster, slots), mode=0o644)
    config = folder / "client.json"
    landing.write_text(config, json.dumps(mpi.client_config(p, addresses)) + "\n", mode=0o600)
    root = Path(__file__).resolve().parents[2]  # the folder holding the bootstrap package
    program = (f"import sys; sys.path.insert(0, {str(root)!r}); "
               "from bootstrap.mpi.ssh import main; main()")
    client = bin_dir / "ssh"
    landing.write_text(client, "#!/bin/sh\n"
                      "# This job's ssh (BOOTSTRAP_LAUNCH=mpi): it reaches the bootstrap's "
                      "launch agents, not sshd.\n"
                      f"exec {shlex.quote(sys.executable)} -E -s -c {shlex.quote(program)} "
                      f"{shlex.quote(str(config))} \"$@\"\n", mode=0o755)
    return mpi.exports(client, hostfile, mpich), bin_dir
