"""What a restarted job needs: its outputs back, its attempt's number, the evidence of
every attempt kept.

ModelArts restarts a failed job (1-128 times, 3 by default) and a hung one (up to 3
times), each time in new containers, with the same job id and the same
``DLS_TRAIN_URL``. Everything a restart needs therefore lives in the store, under
``DLS_TRAIN_URL`` (:mod:`.keys` is the map):

* :mod:`.attempts`: which attempt of the job this is (``BOOTSTRAP_ATTEMPT``), counted
  from the attempts the store has seen of this node, and the new one's marker;
* :mod:`.restore`: before the command starts, the outputs earlier attempts of the
  same job left in the store come back into ``BOOTSTRAP_OUTPUT_DIR``;
* :mod:`.evidence`: each attempt's log, failure record, hang stacks and preflight
  report, credentials scrubbed, under its own ``attempt-K/``, on every end.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evidence import Evidence


class Attempt:
    """This attempt as the resume stage learns it, for the rest of the job to read: its
    number (``BOOTSTRAP_ATTEMPT``), its evidence (None: nowhere to upload it), and
    ``known`` once both are set."""

    def __init__(self) -> None:
        self.number = 1
        self.evidence: Evidence | None = None
        self.known = threading.Event()
        self.asked = False  # the resume stage started: ``known`` will be set

    def evidence_when_known(self, timeout: float) -> Evidence | None:
        """The evidence, once the stage has learnt it (at most ``timeout`` seconds)."""
        return self.evidence if self.asked and self.known.wait(timeout) else None
