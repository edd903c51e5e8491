"""``python -m bootstrap sync SRC DST``: copy a tree between a local folder and OBS.

The tool user scripts call instead of the platform's old copy helper, with the
bootstrap's engine (parallel, atomic files, retries, verification) in either
direction: ``s3://``/``obs://`` to a local folder, or a local folder to a prefix.
Unlike the job's code download, DST is the exact target (no last-component rule).

``--once-per-node``: in a job where every local process (torchrun's workers) calls
sync, only the first one copies; the others wait for it to finish and then return,
so each node transfers once. A lock file under ``/tmp`` (or ``TMPDIR``) keyed by
SRC and DST coordinates them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ..config import location as loc
from ..config import settings as settings_mod
from ..errors import UsageError
from ..log import Log, Redactor


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"sync: {message}; usage: python -m bootstrap sync [--once-per-node] "
                         "SRC DST")


@contextlib.contextmanager
def once_per_node(src: str, dst: str) -> Iterator[bool]:
    """Yields True for the process that should copy, False for those that arrive while
    (or after) it did; all of them return only once the copy has finished."""
    key = hashlib.sha256(f"{src}\0{dst}".encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir())
    lock_path, done_path = base / f"bootstrap-sync-{key}.lock", base / f"bootstrap-sync-{key}.done"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another process copies
        try:
            if done_path.exists():
                yield False
                return
            yield True
            done_path.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    parser = _Parser(prog="python -m bootstrap sync",
                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--once-per-node", action="store_true",
                        help="only one process per node copies; the others wait for it")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    transfer = settings_mod.load_transfer(env)
    log = Log(Redactor(env), settings_mod.log_format(env))
    src, dst = loc.parse(args.src, "SRC"), loc.parse(args.dst, "DST")
    if src.is_remote == dst.is_remote:
        raise UsageError("sync copies between a local folder and s3:// or obs://; "
                         f"got {args.src} -> {args.dst}")
    guard = once_per_node(args.src, args.dst) if args.once_per_node else \
        contextlib.nullcontext(True)
    with guard as mine:
        if not mine:
            log.info(f"sync: {args.src} -> {args.dst} already done by another process here")
            return 0
        if src.is_remote:
            from ..transfer.fetch import fetch

            assert dst.path is not None
            stats = fetch(src, dst.path, transfer, log)
            log.info(f"sync: {stats.summary()} -> {dst.path}")
        else:
            from ..transfer.upload import sync_tree

            assert src.path is not None
            if not src.path.is_dir():
                raise UsageError(f"sync: {src.path} is not a folder")
            ustats = sync_tree(src.path, dst, transfer, log)
            log.info(f"sync: {ustats.summary()} -> {args.dst}")
    return 0
