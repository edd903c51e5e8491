"""Where the object store is and who we are to it: endpoint and credential resolution.

Pure functions of the environment (no I/O, no client library imported), so a bad
endpoint fails in milliseconds before anything is downloaded.

Endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` (boto3's own standard), else
the platform's ``S3_ENDPOINT`` (host, no scheme) with ``S3_USE_HTTPS`` and
``S3_VERIFY_SSL``. A private CA: ``AWS_CA_BUNDLE`` (boto3's convention), else
``SSL_CERT_FILE``. Credentials, first found: ``S3_ACCESS_KEY_ID``/
``S3_SECRET_ACCESS_KEY`` (the platform's tools), ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), ``OBS_ACCESS_KEY_ID``/
``OBS_SECRET_ACCESS_KEY`` (+ ``OBS_SECURITY_TOKEN``, Huawei's SDK), then botocore's
chain (config files, container and instance roles), frozen once per transfer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError
from . import parse

# Text, compiled on first use (re caches it): ~0.5 ms of every start otherwise.
_OBS_REGION = r"^obs\.([a-z0-9-]+)\.myhuaweicloud\.com$"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the store is and how to talk to it: URL (None: AWS's default for the region),
    TLS verification and extra roots, path or virtual-host addressing."""

    url: str | None  # None: AWS's default endpoint for the region
    verify: bool  # S3_VERIFY_SSL: check the server's certificate
    addressing: str  # "path" | "virtual"
    region: str
    ca_bundle: str | None = None  # PEM file of extra trusted roots

    @property
    def effective_url(self) -> str:
        return self.url or f"https://s3.{self.region}.amazonaws.com"

    @property
    def where(self) -> str:
        """How error messages name the endpoint (never with credentials: URLs hold none)."""
        return self.url or "the default AWS endpoint"


def resolve_endpoint(env: Mapping[str, str], addressing: str = "auto") -> Endpoint:
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    verify = parse.flag(env, "S3_VERIFY_SSL", True)
    if url is None and env.get("S3_ENDPOINT"):
        host = env["S3_ENDPOINT"].strip()
        if "://" in host:  # tolerated: people paste full URLs here
            url = host
        else:
            url = ("https://" if parse.flag(env, "S3_USE_HTTPS", True) else "http://") + host
    host = ""
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"S3 endpoint {url!r} is not an http(s) URL; set "
                              "AWS_ENDPOINT_URL=https://obs.<region>.myhuaweicloud.com")
        host = parts.hostname
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"S3 endpoint {url!r} has an invalid port") from None
    if addressing == "auto":
        addressing = "path" if _is_ip_or_local(host) else "virtual"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    if not region:
        m = re.match(_OBS_REGION, host)
        region = m.group(1) if m else "us-east-1"
    ca_bundle = (env.get("AWS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or "").strip() or None
    return Endpoint(url=url, verify=verify, addressing=addressing, region=region,
                    ca_bundle=ca_bundle)


def _is_ip_or_local(host: str) -> bool:
    """Path style for IPs and single-label names (localhost, a compose service):
    virtual-hosted addressing needs a DNS name per bucket, which they lack."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return "." not in host


@dataclass(frozen=True, slots=True)
class Credentials:
    """The store's keys (and a session token when they are temporary); the repr never shows
    the secret."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # a stray repr in a log line must not leak the secret
        return f"Credentials(access_key={self.access_key[:4]}…)"


def env_credentials(env: Mapping[str, str]) -> Credentials | None:
    if env.get("S3_ACCESS_KEY_ID") and env.get("S3_SECRET_ACCESS_KEY"):
        return Credentials(env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"])
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                           env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN"))
    if env.get("OBS_ACCESS_KEY_ID") and env.get("OBS_SECRET_ACCESS_KEY"):
        return Credentials(env["OBS_ACCESS_KEY_ID"], env["OBS_SECRET_ACCESS_KEY"],
                           env.get("OBS_SECURITY_TOKEN"))
    return None
