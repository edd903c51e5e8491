"""The bootstrap's own log lines: text or JSON, always redacted.

Lines go to stderr so that the user command owns stdout; the platform's log view
shows both. Every line passes through :class:`Redactor`, which knows the values of
the secret variables in the environment, so a key can never reach the log even
when it is embedded in a URL, a command argument or an exception message.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, TextIO

# Variables whose values are secret wherever they appear. Names matching
# SECRET_NAME below are treated the same way, so a user's own MY_API_TOKEN is safe too.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "S3_SECRET_ACCESS_KEY", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN",
)
KEY_ID_VARIABLES = ("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID", "OBS_ACCESS_KEY_ID")
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY)", re.I)
# "--password=x", "token: x", "secret_key=x" inside free text or argv.
SECRET_ASSIGNMENT = re.compile(
    r"(?i)((?:secret|token|password|passwd|access[_-]?key)[\w-]*\s*[=:]\s*)([^\s,;&'\"]+)")
# What the pattern needs to find anything: text without any of these words is left to
# the value replacements alone (the regex scans 17 MB/s, an evidence log 1 GiB).
ASSIGNMENT_WORDS = ("secret", "token", "passw", "access")


class Redactor:
    """Replaces known secret values (and ``secret=value`` patterns) in text."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        secrets: set[str] = set()
        for name, value in environ.items():
            if len(value) >= 4 and (name in SECRET_VARIABLES or SECRET_NAME.search(name)):
                secrets.add(value)
        self._secrets = sorted(secrets, key=len, reverse=True)
        self._key_ids = sorted({environ[n] for n in KEY_ID_VARIABLES
                                if len(environ.get(n, "")) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for key_id in self._key_ids:
            text = text.replace(key_id, key_id[:4] + "***")
        lowered = text.lower()
        if not any(word in lowered for word in ASSIGNMENT_WORDS):
            return text
        return SECRET_ASSIGNMENT.sub(r"\1***", text)

    def argv(self, argv: Iterable[str]) -> list[str]:
        return [self(a) for a in argv]


class Log:
    """A minimal, thread-safe logger: ``info``/``warn``/``error`` one line each."""

    def __init__(self, redact: Redactor, fmt: str = "text", stream: TextIO | None = None) -> None:
        self._redact = redact
        self._json = fmt == "json"
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()

    @property
    def redact(self) -> Redactor:
        return self._redact

    def _emit(self, level: str, message: str, fields: Mapping[str, Any]) -> None:
        message = self._redact(message)
        if self._json:
            import json

            record = {"ts": round(time.time(), 3), "level": level, "msg": message}
            record.update({k: (self._redact(v) if isinstance(v, str) else v)
                           for k, v in fields.items()})
            line = json.dumps(record, ensure_ascii=False)
        elif level == "error":
            line = f"run_train: error: {message}"
        elif level == "warning":
            line = f"run_train: warning: {message}"
        else:
            line = f"run_train: {message}"
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)

    def stage(self, name: str, seconds: float, detail: str = "", **fields: Any) -> None:
        """The one line each pipeline stage prints when it ends."""
        text = f"stage {name}: {seconds * 1000:.0f} ms" if seconds < 10 else \
            f"stage {name}: {seconds:.1f} s"
        self._emit("info", f"{text}{' (' + detail + ')' if detail else ''}",
                   {"stage": name, "seconds": round(seconds, 4), **fields})

    @contextmanager
    def timed(self, name: str) -> Iterator[Timing]:
        """``with log.timed(NAME) as t:`` says ``stage NAME: N ms (t.detail)`` at the end,
        with ``t.fields`` as JSON fields beside ``stage`` and ``seconds`` (not when the
        stage raises: its error is the story then)."""
        timing = Timing()
        started = time.monotonic()
        yield timing
        self.stage(name, time.monotonic() - started, timing.detail, **timing.fields)


class Timing:
    """What a timed stage says at its end: a detail for the text line, fields for JSON."""

    def __init__(self) -> None:
        self.detail = ""
        self.fields: dict[str, Any] = {}


SCRUB_CHUNK = 256 << 10  # a block where a secret-like word appears is scanned by a regex


def scrubbed(path: Path, redact: Redactor) -> Path:
    """A temporary copy of ``path`` with every secret value redacted, line by line."""
    import tempfile  # here: only a job that uploads a log pays for it

    fd, name = tempfile.mkstemp(prefix=".scrubbed-", suffix=".tmp")
    with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
        pending = b""
        while True:
            chunk = src.read(SCRUB_CHUNK)
            pending += chunk
            cut = pending.rfind(b"\n") + 1 if chunk else len(pending)
            if not cut and len(pending) > 4 * SCRUB_CHUNK:  # one endless line: cut it anyway
                cut = len(pending)
            if cut:
                text = pending[:cut].decode("utf-8", "surrogateescape")
                dst.write(redact(text).encode("utf-8", "surrogateescape"))
                pending = pending[cut:]
            if not chunk:
                break
    return Path(name)
