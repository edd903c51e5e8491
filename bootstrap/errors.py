"""One error hierarchy, mapped to exit codes in one place.

Every failure the bootstrap can explain is a :class:`BootstrapError` carrying the
exit code the README documents and its diagnosis (``reason`` and ``category``, what the
failure record says: ``infrastructure`` or ``user``); ``__main__`` prints its message as
one line (``run_train: error: ...``) and exits with that code. Nothing else decides exit
codes or diagnoses, so a new failure mode means a new subclass here, not a
``sys.exit`` or a table of class names elsewhere.
"""

from __future__ import annotations

import signal

# Documented in README.md ("Exit codes"); keep the two in step.
EXIT_USAGE = 2  # bad argv or configuration: fix the job definition
EXIT_PEERS = 3  # peers never resolved / never answered within BOOTSTRAP_PEER_TIMEOUT
EXIT_PREFLIGHT = 4  # this node failed its GPU/node checks
EXIT_BARRIER = 5  # another node failed, or the start barrier broke
EXIT_DEPENDENCIES = 6  # pip install of the code directory's requirements failed
EXIT_NO_SPACE = 7  # the node lacks room for the job's data (BOOTSTRAP_DATA_DIR)
EXIT_INTERNAL = 70  # a bug in the bootstrap (EX_SOFTWARE)
EXIT_HANG = 124  # the hang watchdog stopped the command (the code timeout(1) uses)
EXIT_NOT_EXECUTABLE = 126  # like a shell: the command exists but cannot be run
EXIT_DOWNLOAD = 127  # the original run_train.sh's "App download error" code
EXIT_NOT_FOUND = 127  # like a shell: command not found


class BootstrapError(Exception):
    """A failure with a one-line explanation for the user and a documented exit code."""

    exit_code = EXIT_INTERNAL
    reason, category = "bootstrap", "infrastructure"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(BootstrapError):
    """The run command itself is wrong (no command, interpreter without file, ...)."""

    exit_code = EXIT_USAGE
    reason, category = "config", "user"


class ConfigError(BootstrapError):
    """An environment variable holds something the bootstrap cannot use."""

    exit_code = EXIT_USAGE
    reason, category = "config", "user"


class TransferError(BootstrapError):
    """Bytes could not be moved between the object store and this node (the original
    script's "App download error" code, for uploads too)."""

    exit_code = EXIT_DOWNLOAD
    reason, category = "transfer", "infrastructure"


class DownloadError(TransferError):
    """The code directory could not be fetched; the job cannot start without it."""

    reason = "download"


class UploadError(TransferError):
    """Outputs, a log or a synced tree could not be uploaded."""

    reason = "upload"


class NoSpaceForData(BootstrapError):
    """The data to stage does not fit where it should land (or exceeds the cap)."""

    exit_code = EXIT_NO_SPACE
    reason, category = "space", "infrastructure"


class CommandNotFound(BootstrapError):
    exit_code = EXIT_NOT_FOUND
    reason, category = "command", "user"


class CommandNotExecutable(BootstrapError):
    exit_code = EXIT_NOT_EXECUTABLE
    reason, category = "command", "user"


class PeersNotReady(BootstrapError):
    exit_code = EXIT_PEERS
    reason, category = "peers", "infrastructure"


class PreflightFailed(BootstrapError):
    exit_code = EXIT_PREFLIGHT
    reason, category = "preflight", "infrastructure"


class BarrierFailed(BootstrapError):
    exit_code = EXIT_BARRIER
    reason, category = "barrier", "infrastructure"


class LauncherLost(BootstrapError):
    """MPI-style launch: node 0's launcher never reached this node, or went away
    without its exit code (another node failed, as at the barrier)."""

    exit_code = EXIT_BARRIER
    reason, category = "launcher", "infrastructure"


class DependencyInstallFailed(BootstrapError):
    exit_code = EXIT_DEPENDENCIES
    reason, category = "dependencies", "user"


# Signals that stop the bootstrap itself before the command runs (job.py turns them
# into Terminated; the transfer engines stop their requests and remove their temporaries).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Terminated(BootstrapError):
    """A signal asked the bootstrap to stop before the command started.

    Exits like a shell would report a process killed by that signal: 128 + number,
    so SIGTERM during the download gives 143, the same as a terminated command.
    """

    reason, category = "signal", "infrastructure"

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} before the command started")
        self.signum = signum
        self.exit_code = 128 + signum
