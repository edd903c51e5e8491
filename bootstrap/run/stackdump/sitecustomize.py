"""Injected into the command's Python processes by the hang watchdog
(BOOTSTRAP_HANG_SECONDS), through PYTHONPATH: needs nothing installed.

Registers ``faulthandler`` on a real-time signal the supervisor never forwards
(:data:`SIGNAL`), writing every thread's stack to ``$BOOTSTRAP_STACKS_DIR/<pid>.txt``,
and leaves ``<pid>.ready`` so the supervisor signals only processes that can answer
(an unhandled real-time signal would kill the others). py-spy would show native
frames too, but under Yama's ptrace_scope=1 only an ancestor may attach, and the
supervisor's helper would be a sibling; this needs no privilege at all.

Then the next ``sitecustomize`` on the path (the image's own, if any) runs as usual.
"""

import os
import sys

SIGNAL_OFFSET = 5  # SIGRTMIN + 5


def _install() -> None:
    folder = os.environ.get("BOOTSTRAP_STACKS_DIR")
    if not folder or not os.path.isdir(folder):
        return
    try:
        import faulthandler
        import signal

        pid = os.getpid()
        out = open(os.path.join(folder, f"{pid}.txt"), "a")  # noqa: SIM115 - lives as long as we do
        faulthandler.register(signal.SIGRTMIN + SIGNAL_OFFSET, file=out, all_threads=True,
                              chain=False)
        with open(os.path.join(folder, f"{pid}.ready"), "w") as ready:
            ready.write(str(pid))
    except Exception:  # noqa: BLE001 - a diagnostic aid must never break the job
        return


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_install()
_chain()
