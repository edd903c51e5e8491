"""Entry points: which command runs, and how its failures become exit codes.

* ``run_train.sh ARGS`` and ``python -m bootstrap ARGS``: the job (:func:`job_main`).
* ``python -m bootstrap check [--json]`` / ``bootstrap-check``: the node preflight alone.
* ``python -m bootstrap sync SRC DST`` / ``bootstrap-sync``: copy a tree to or from OBS.
* ``--help`` (or ``-h``) alone prints :data:`USAGE`.

Errors the bootstrap can explain print one line, ``run_train: error: ...``, and exit
with the code errors.py documents. Anything else is a bug: one line too, exit 70,
and the traceback only with BOOTSTRAP_DEBUG=1 (it could hold paths or values the
user did not mean to publish in a shared log).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from .errors import EXIT_INTERNAL, EXIT_USAGE, BootstrapError
from .log import Redactor

USAGE = """\
usage: bash run_train.sh [python|python3|bash|sh] FILE [PARAMS...]
       bash run_train.sh COMMAND [ARGS...]
       python -m bootstrap check [--json] [--image] [--config]
       python -m bootstrap --version
       python -m bootstrap sync [--once-per-node] SRC DST

Prepares a ModelArts training job and runs its command: downloads the code
directory (DLS_APP_URL) into the job dir, checks the node's GPUs, meets the other
nodes, exports the cluster's topology for torchrun, MPI and NCCL, then runs the
command in the code directory. FILE is looked up in the code directory, then in
the current directory.

  check   the node preflight alone (exit 4 when the node cannot train);
          --config prints the settings in effect instead, secrets redacted
  sync    copy a tree between a local folder and s3:// or obs://

Settings are environment variables (BOOTSTRAP_*, the platform's DLS_*, MA_*, VC_*,
BATCH_*): README.md lists them all, with the exit codes.
"""


def _fail(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"run_train: error: {Redactor(os.environ)(message)}\n")
    sys.stderr.flush()


def _guard(body: Callable[[], int]) -> int:
    """Runs ``body`` and turns every failure into one line and a documented exit code."""
    return _leave(_run(body))


def _leave(code: int) -> int:
    """Ends the process at once when the native transfer core was used.

    obstore's Tokio threads hand results back to asyncio through
    ``call_soon_threadsafe``, which releases the GIL inside a socket write. If the
    interpreter starts finalizing meanwhile, CPython ends such a thread with
    ``pthread_exit``, whose forced unwind through Rust frames aborts the whole
    process (SIGABRT instead of our exit code: 1 run in 4 of the log-upload test).
    Nothing is left to finalize here: our files are closed and stdio is flushed.
    """
    if "obstore" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(body: Callable[[], int]) -> int:
    try:
        return body()
    except BootstrapError as exc:
        _fail(exc.message)
        return exc.exit_code
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != "bootstrap":
            _fail(f"{sys.executable} lacks the bootstrap's dependency {exc.name!r}; install "
                  "it there (pip install modelarts-bootstrap) or set BOOTSTRAP_PYTHON")
            return EXIT_USAGE
        # A name missing from the bootstrap's own modules is a bug of ours, not the
        # image's: the last line of defence below says so (exit 70).
        return _internal(exc)
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback
        return _internal(exc)


def _internal(exc: BaseException) -> int:
    from .config.settings import debug

    if debug(os.environ):
        import traceback

        traceback.print_exception(exc)
    _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with BOOTSTRAP_DEBUG=1 "
          "and report it")
    return EXIT_INTERNAL


def job_main(argv: Sequence[str] | None = None) -> int:
    """The job: what run_train.sh execs. Returns only on failure (success execs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--help"], ["-h"]):
        sys.stdout.write(USAGE)
        return 0
    if args == ["--version"]:
        from .version import describe

        sys.stdout.write(describe() + "\n")
        return 0

    def body() -> int:
        from . import job

        return job.run(args, os.environ)

    return _guard(body)


def check_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from .commands import check

        return check.run(args, os.environ)

    return _guard(body)


def sync_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from .commands import sync

        return sync.run(args, os.environ)

    return _guard(body)


def main() -> int:
    """``python -m bootstrap``: ``check`` and ``sync`` are tools, anything else is a job."""
    args = sys.argv[1:]
    if args[:1] == ["check"]:
        return check_main(args[1:])
    if args[:1] == ["sync"]:
        return sync_main(args[1:])
    return job_main(args)


if __name__ == "__main__":
    sys.exit(main())
