"""One error model for every object-store backend, and the one-line explanations.

Each backend turns its library's failures into :class:`StorageError` at its edge, so
the retry policy (:mod:`.retry`) and :func:`explain` never branch on a client
library. ``kind`` says what failed, ``status``/``code`` carry the server's answer
when there was one:

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

from typing import Optional

from ..config.location import Location
from ..errors import DownloadError


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


class IntegrityError(Exception):
    """Bytes that still did not verify after every retry; the message says which."""


def explain(exc: BaseException, location: Location, where: str,
            verb: str = "download") -> DownloadError:
    """One line that says what went wrong and what to change, for any transfer failure."""
    if isinstance(exc, DownloadError):
        return exc
    if isinstance(exc, StorageError):
        return _explain_storage(exc, location, where)
    if isinstance(exc, (TransientError, IntegrityError)):
        return DownloadError(f"{exc}, still after retries; the object store serves a "
                             "broken object: check it, or upload it again"
                             if verb == "download" else f"{exc}, still after retries")
    if isinstance(exc, OSError):
        what = "write the code directory" if verb == "download" else "read the files to upload"
        return DownloadError(f"cannot {what}: {exc.strerror or exc} "
                             f"({exc.filename or ''}); check free space and permissions")
    raise exc


def _explain_storage(exc: StorageError, location: Location, where: str) -> DownloadError:
    if exc.kind == "credentials":
        return DownloadError("no object-store credentials found: set S3_ACCESS_KEY_ID and "
                             "S3_SECRET_ACCESS_KEY (or AWS_*/OBS_* equivalents)")
    if exc.kind == "tls":
        return DownloadError(f"the certificate of {where} is not trusted ({exc.message}); "
                             "point AWS_CA_BUNDLE at the CA's PEM file, or set "
                             "S3_VERIFY_SSL=0 to skip the check")
    if exc.kind == "connect":
        return DownloadError(f"cannot connect to the object store at {where} "
                             f"({exc.message or 'refused'}); check AWS_ENDPOINT_URL / "
                             "S3_ENDPOINT and the network")
    if exc.kind == "timeout":
        return DownloadError(f"the object store at {where} stopped answering "
                             f"({exc.operation} timed out); check the network, or raise "
                             "BOOTSTRAP_S3_READ_TIMEOUT")
    if exc.kind == "io":
        return DownloadError(f"the object store at {where} kept dropping the connection: "
                             f"{_short(exc.message)}")
    if exc.kind == "not_s3":
        return DownloadError(f"{where} did not answer like an S3 server ({exc.message}); "
                             "check AWS_ENDPOINT_URL / S3_ENDPOINT")
    if exc.kind == "not_partial":
        return DownloadError(f"{where} does not answer ranged GETs properly "
                             f"({exc.message}); raise BOOTSTRAP_MULTIPART_THRESHOLD above "
                             "the largest file")
    known = {
        "NoSuchBucket": f"bucket {location.bucket!r} does not exist at {where}; check "
                        "the URL",
        "InvalidAccessKeyId": f"the access key id is not known at {where}; check "
                              "S3_ACCESS_KEY_ID / AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "the secret key does not match the access key id; "
                                 "check S3_SECRET_ACCESS_KEY / AWS_SECRET_ACCESS_KEY",
        "AccessDenied": f"access denied to {location.url}: the credentials may not "
                        "list, read or write it",
        "NoSuchKey": f"an object under {location.url} vanished during the transfer; "
                     "rerun once the upload is finished",
        "InvalidBucketName": f"bucket name {location.bucket!r} is refused by {where}",
    }
    if exc.code in known:
        return DownloadError(known[exc.code])
    if exc.status == 403:
        return DownloadError(f"access denied to {location.url} (HTTP 403 {exc.code})")
    return DownloadError(f"the object store at {where} answered {exc.code or exc.status} "
                         f"for {location.url}: {_short(exc.message)}")


def _short(text: Optional[str]) -> str:
    first = (text or "").strip().splitlines()
    return first[0][:300] if first else "(no detail)"
