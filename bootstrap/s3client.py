"""Build the one boto3 S3 client a transfer shares, configured for OBS.

boto3 is imported here and only here, lazily: it costs ~0.3 s of start-up, which
a job with no object-store URL should not pay.

Endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` (boto3's own standard), else
the platform's ``S3_ENDPOINT`` (host, no scheme) with ``S3_USE_HTTPS`` and
``S3_VERIFY_SSL``. Credentials: ``S3_ACCESS_KEY_ID``/``S3_SECRET_ACCESS_KEY`` (the
platform's tools), then boto3's chain when ``AWS_ACCESS_KEY_ID`` is set, then
``OBS_ACCESS_KEY_ID``/``OBS_SECRET_ACCESS_KEY``/``OBS_SECURITY_TOKEN`` (Huawei's
SDK), then the rest of boto3's chain (config files, instance metadata).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from .errors import ConfigError
from .settings import Settings, env_flag

_OBS_REGION = re.compile(r"^obs\.([a-z0-9-]+)\.myhuaweicloud\.com$")


@dataclass(frozen=True)
class Endpoint:
    url: Optional[str]  # None: boto3's default (AWS)
    verify: bool
    addressing: str  # "path" | "virtual"
    region: str


def resolve_endpoint(env: Mapping[str, str], addressing: str = "auto") -> Endpoint:
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    verify = env_flag(env, "S3_VERIFY_SSL", True)
    if url is None and env.get("S3_ENDPOINT"):
        host = env["S3_ENDPOINT"].strip()
        if "://" in host:  # tolerated: people paste full URLs here
            url = host
        else:
            url = ("https://" if env_flag(env, "S3_USE_HTTPS", True) else "http://") + host
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
        m = _OBS_REGION.match(host)
        region = m.group(1) if m else "us-east-1"
    return Endpoint(url=url, verify=verify, addressing=addressing, region=region)


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


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: Optional[str] = None


def env_credentials(env: Mapping[str, str]) -> Optional[Credentials]:
    if env.get("S3_ACCESS_KEY_ID") and env.get("S3_SECRET_ACCESS_KEY"):
        return Credentials(env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"])
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                           env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN"))
    if env.get("OBS_ACCESS_KEY_ID") and env.get("OBS_SECRET_ACCESS_KEY"):
        return Credentials(env["OBS_ACCESS_KEY_ID"], env["OBS_SECRET_ACCESS_KEY"],
                           env.get("OBS_SECURITY_TOKEN"))
    return None


def _credentials(env: Mapping[str, str]) -> dict[str, str]:
    """boto3's keyword arguments for the same precedence; none: boto3's own chain."""
    creds = env_credentials(env)
    if creds is None:
        return {}
    out = {"aws_access_key_id": creds.access_key, "aws_secret_access_key": creds.secret_key}
    if creds.token:
        out["aws_session_token"] = creds.token
    return out


def make_client(env: Mapping[str, str], settings: Settings, pool_size: int) -> Any:
    """A thread-safe client whose connection pool holds ``pool_size`` connections.

    botocore's own retries are off: the transfer engine retries with tenacity so
    that attempts and total time are bounded in one place.
    """
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint(env, settings.addressing)
    options: dict[str, Any] = dict(
        signature_version="s3v4",
        s3={"addressing_style": endpoint.addressing},
        max_pool_connections=max(pool_size, 10),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1},
        tcp_keepalive=True,
        # OBS rejects the CRC checksums boto3 >= 1.36 sends by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        config = Config(**options)
    except TypeError:  # botocore < 1.36 knows neither checksum option nor needs them
        del options["request_checksum_calculation"], options["response_checksum_validation"]
        config = Config(**options)
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint.url, verify=endpoint.verify,
                          region_name=endpoint.region, config=config, **_credentials(env))
