"""Work repeated every few seconds while the command runs (the periodic output sync, the
log's evidence), in one thread, one round at a time; stopped before the final round."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


class Rounds:
    """``work`` run in order every ``interval`` seconds (none when ``interval`` <= 0 or
    there is no work) from :meth:`start` until :meth:`stop`, which waits for the round
    in progress. Each piece of work handles its own failures."""

    def __init__(self, interval: float, work: Sequence[Callable[[], None]]) -> None:
        self.interval, self.work = interval, list(work)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or not self.work:
            return

        def loop() -> None:
            while not self._stop.wait(self.interval):
                for piece in self.work:
                    piece()

        self._thread = threading.Thread(target=loop, name="rounds", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
