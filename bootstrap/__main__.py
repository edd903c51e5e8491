"""``python -m bootstrap [COMMAND...]``: the entry point run_train.sh execs.

Errors the bootstrap can explain print one line, ``run_train: error: ...``, and exit
with the code errors.py documents. Anything else is a bug: one line too, exit 70,
and the traceback only with BOOTSTRAP_DEBUG=1 (it could hold paths or values the
user did not mean to publish in a shared log).
"""

from __future__ import annotations

import os
import sys
import traceback

from .errors import EXIT_INTERNAL, EXIT_USAGE, BootstrapError
from .log import Redactor


def _fail(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"run_train: error: {Redactor(os.environ)(message)}\n")
    sys.stderr.flush()


def main() -> int:
    try:
        from . import main as story

        story.run(sys.argv[1:], os.environ)
    except BootstrapError as exc:
        _fail(exc.message)
        return exc.exit_code
    except ImportError as exc:
        _fail(f"{sys.executable} lacks the bootstrap's dependency {exc.name!r}; install it "
              "there (pip install modelarts-bootstrap) or set BOOTSTRAP_PYTHON")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback
        if os.environ.get("BOOTSTRAP_DEBUG") == "1":
            traceback.print_exc()
        _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with BOOTSTRAP_DEBUG=1 "
              "and report it")
        return EXIT_INTERNAL
    return 0  # pragma: no cover - run() execs or raises


def check_main() -> int:
    raise SystemExit("bootstrap-check: not available yet")


def sync_main() -> int:
    raise SystemExit("bootstrap-sync: not available yet")


if __name__ == "__main__":
    sys.exit(main())
