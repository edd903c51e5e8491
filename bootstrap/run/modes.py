"""Launch modes: how the command starts across the job's nodes (``BOOTSTRAP_LAUNCH``).

* ``default``: every node runs the command itself (torchrun, msrun, a script); the
  bootstrap hands each engine its topology and execs or supervises the command.
* ``mpi`` (:mod:`bootstrap.mpi.mode`): node 0 runs the launcher (``mpirun``,
  ``deepspeed``); the other nodes serve it through their launch agents.
* ``ray`` (:mod:`bootstrap.rayjob.mode`): the MPI mode's agents start a Ray cluster;
  node 0 runs the driver.

:class:`Mode` is the interface :mod:`bootstrap.job` calls, hook by hook, in this order:
``before_barrier`` (a node that serves listens before the barrier, so node 0 finds it
up once the barrier is passed), ``exports`` (what the mode hands the engines, once the
topology is known), ``environment`` (last touches to the command's environment), then
either ``serve`` (a node that serves node 0, ``serves`` true) or ``run``; ``teardown``
when the start fails before either. A peer's death during the run is the run's to
handle: the launcher's channel to each agent ends the job (see :mod:`bootstrap.mpi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import stage

if TYPE_CHECKING:
    from ..cluster.topology import Topology
    from ..config.settings import Settings
    from ..log import Log
    from ..restart.evidence import Evidence


class Mode:
    """The default mode, and the hooks every mode answers (see the module's order)."""

    force_barrier = False  # the start barrier runs even where nothing else needs it
    supervises = False  # the command is supervised, never exec'd
    serves = False  # this node serves node 0 instead of running the command

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings, self.log = settings, log

    def before_barrier(self, addresses: Mapping[str, str]) -> None:
        """Runs before the start barrier, the peers' names resolved."""

    def exports(self, topo: Topology, addresses: Mapping[str, str]) -> dict[str, str]:
        """The mode's variables for the command (a user's own value wins)."""
        return {}

    def environment(self, env: dict[str, str]) -> None:
        """Last touches to the command's environment (PATH)."""

    def serve(self, env: Mapping[str, str], cwd: Path | None,
              evidence: Evidence | None) -> int:
        """Serves node 0 until its end; the exit code (only where ``serves``)."""
        raise NotImplementedError(f"{type(self).__name__} has no node that serves")

    def run(self, ready: stage.Ready) -> int:
        """Runs the command supervised; the job's exit code."""
        return stage.supervise(ready, self.settings, self.log)

    def teardown(self) -> None:
        """Releases what ``before_barrier`` took, when the start fails."""

