"""The one TLS layout the native core cannot verify, found before it is tried.

People who run a private MinIO or OBS gateway often make its certificate with
``openssl req -x509 ...`` and point ``AWS_CA_BUNDLE`` at it: a self-signed leaf, marked
``CA:TRUE`` by openssl's defaults. OpenSSL (boto3, the signed listing client) accepts a
trust anchor presented as the server's own certificate; rustls (obstore) refuses a CA
used as an end entity, so the native engine failed such a job with exit 127 where boto3
would have worked. Verification is never relaxed for it: that endpoint gets the boto3
engine, which checks the same certificate against the same bundle.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import urlsplit

# Text, compiled on first use (re caches it): only a job with a CA bundle needs it.
_PEM = r"(?s)-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----"


@functools.lru_cache(maxsize=8)
def own_certificate_in_bundle(url: str, ca_bundle: str, timeout: float) -> str | None:
    """Why the native core would refuse ``url`` under ``ca_bundle`` (the server presents,
    as its own certificate, one of the bundle's: a self-signed leaf), or None. A server
    that cannot be reached or is not trusted at all gives None here: the transfer itself
    says what is wrong, as before."""
    import socket
    import ssl

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        anchors = {ssl.PEM_cert_to_DER_cert(block)
                   for block in re.findall(_PEM, Path(ca_bundle).read_text())}
    except (OSError, ValueError):
        return None
    context = ssl.create_default_context(cafile=ca_bundle)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            leaf = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError, ValueError):
        return None
    if leaf not in anchors:
        return None
    return (f"the server's own certificate is one of AWS_CA_BUNDLE's ({ca_bundle}: a "
            "self-signed certificate), which the native core (rustls) refuses as an end "
            "entity; the boto3 engine verifies it against the same bundle")


# Where distributions keep the system's CA bundle. The runtime's OpenSSL looks in
# /etc/ssl (Debian's and Ubuntu's layout); the rest are found here, by the bootstrap
# itself, and never exported to the command (its Python has its own OpenSSL and paths).
CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, CentOS, EulerOS, openEuler
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # the same, extracted
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",  # Alpine
)


@functools.lru_cache(maxsize=1)
def system_cafile(root: str = "/") -> str | None:
    """The system's CA bundle when this interpreter's OpenSSL would not find one by
    itself (its compiled-in paths hold none), else None: then its defaults stand."""
    import os
    import ssl

    paths = ssl.get_default_verify_paths()
    if root == "/" and paths.cafile and os.path.isfile(paths.cafile):
        return None
    if root == "/" and paths.capath and os.path.isdir(paths.capath) and any(
            name.endswith(".0") for name in os.listdir(paths.capath)):
        return None  # hashed certificates, as c_rehash leaves them
    for candidate in CA_FILES:
        path = os.path.join(root, candidate.lstrip("/"))
        if os.path.isfile(path):
            return path
    return None
