#!/usr/bin/env bash
# Builds a minimal local base image (no registry is reachable here): debootstrap of a
# Debian release (RELEASE, default this machine's) from this machine's mirror, with
# the packages in INCLUDE (default python3, python3-venv, CA certificates and procps;
# the images tests give other releases, or no Python at all), imported as
# ${1:-bootstrap-base:<release>}. Skips the work when the image already exists (the
# tests reuse it between runs on the same machine).
# Like a company's own base image, it trusts this machine's extra CA certificates
# (/usr/local/share/ca-certificates), so pip inside `docker build` reaches the package
# index through the same TLS-inspecting egress the machine itself uses.
set -euo pipefail
. /etc/os-release
release=${RELEASE:-${VERSION_CODENAME:-bookworm}}
include=${INCLUDE:-python3,python3-venv,ca-certificates,procps}
image=${1:-bootstrap-base:$release}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/bootstrap-base-XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$include" "$release" "$root" "$mirror" >&2
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
fi
tar -C "$root" -c . | docker import \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$image" >&2
echo "$image"
