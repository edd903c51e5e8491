"""One line for the user from any transfer failure: what went wrong, what to change.

The storage layer reports *what* failed (:class:`~bootstrap.storage.errors.StorageError`,
its ``kind`` and the server's code) and knows nothing of the job; this layer knows the
location being moved and the direction, so it words the fix ("check the URL", "check
S3_ACCESS_KEY_ID") and picks the error the job stops with: a
:class:`~bootstrap.errors.DownloadError` for a download, an
:class:`~bootstrap.errors.UploadError` for an upload (both exit 127; the diagnosis
tells them apart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.location import Location
from ..errors import DownloadError, TransferError, UploadError
from ..storage.errors import StorageError, TransientError

if TYPE_CHECKING:
    from typing import Literal

    Direction = Literal["download", "upload"]


def explain(exc: BaseException, location: Location, where: str,
            direction: Direction = "download") -> TransferError:
    """The error to stop with; re-raises what is not a transfer failure (a bug).

    An upload's line starts with ``upload to URL failed:`` (the job's other work went
    well, so the line says what did not)."""
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, StorageError):
        line = _storage(exc, location, where)
    elif isinstance(exc, TransientError):
        line = (f"{exc}, still after retries; the object store serves a broken object: "
                "check it, or upload it again" if direction == "download"
                else f"{exc}, still after retries")
    elif isinstance(exc, OSError):
        what = ("write the code directory" if direction == "download"
                else "read the files to upload")
        line = (f"cannot {what}: {exc.strerror or exc} ({exc.filename or ''}); check free "
                "space and permissions")
    else:
        raise exc
    if direction == "download":
        return DownloadError(line)
    return UploadError(f"upload to {location.url} failed: {line}")


def _storage(exc: StorageError, location: Location, where: str) -> str:
    if exc.kind == "credentials":
        return ("no object-store credentials found: set S3_ACCESS_KEY_ID and "
                "S3_SECRET_ACCESS_KEY (or AWS_*/OBS_* equivalents)")
    if exc.kind == "tls":
        return (f"the certificate of {where} is not trusted ({exc.message}); point "
                "AWS_CA_BUNDLE at the CA's PEM file, or set S3_VERIFY_SSL=0 to skip the check")
    if exc.kind == "connect":
        return (f"cannot connect to the object store at {where} "
                f"({exc.message or 'refused'}); check AWS_ENDPOINT_URL / S3_ENDPOINT and "
                "the network")
    if exc.kind == "timeout":
        return (f"the object store at {where} stopped answering ({exc.operation} timed "
                "out); check the network, or raise BOOTSTRAP_S3_READ_TIMEOUT")
    if exc.kind == "io":
        return (f"the object store at {where} kept dropping the connection: "
                f"{_short(exc.message)}")
    if exc.kind == "not_s3":
        return (f"{where} did not answer like an S3 server ({exc.message}); check "
                "AWS_ENDPOINT_URL / S3_ENDPOINT")
    if exc.kind == "not_partial":
        return (f"{where} does not answer ranged GETs properly ({exc.message}); raise "
                "BOOTSTRAP_MULTIPART_THRESHOLD above the largest file")
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
        return known[exc.code]
    if exc.status == 403:
        return f"access denied to {location.url} (HTTP 403 {exc.code})"
    return (f"the object store at {where} answered {exc.code or exc.status} for "
            f"{location.url}: {_short(exc.message)}")


def _short(text: str | None) -> str:
    first = (text or "").strip().splitlines()
    return first[0][:300] if first else "(no detail)"
