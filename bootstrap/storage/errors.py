"""One error model for every object-store backend.

Each backend turns its library's failures into :class:`StorageError` at its edge, so
the retry policy (:mod:`.retry`) and the transfer layer's one-line explanations
(:mod:`bootstrap.transfer.explain`) never branch on a client library. ``kind`` says
what failed, ``status``/``code`` carry the server's answer when there was one:

===============  ===========================================================
``http``         the server answered an error (``status``, S3 ``code``)
``connect``      no connection (refused, DNS, unreachable)
``timeout``      connect or read timed out (a stalled transfer)
``io``           the connection broke mid-answer (reset, short body)
``tls``          the server's certificate is not trusted
``not_s3``       an answer that is not S3 (HTML, unparseable XML)
``not_partial``  a ranged GET answered with something other than the range
``credentials``  no credentials anywhere
===============  ===========================================================
"""

from __future__ import annotations


class StorageError(Exception):
    def __init__(self, operation: str, *, kind: str, status: int = 0, code: str = "",
                 message: str = "") -> None:
        detail = f"HTTP {status} {code}".strip() if status else kind
        super().__init__(f"{operation}: {detail}: {message}" if message else
                         f"{operation}: {detail}")
        self.operation, self.kind, self.status, self.code = operation, kind, status, code
        self.message = message


class TransientError(Exception):
    """An answer that looked fine but was not (short body, digest mismatch): retry it."""
