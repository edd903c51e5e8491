#!/usr/bin/env bash
# Debian packages the tests need beyond Python: iproute2 and util-linux for the
# multi-node tests' network namespaces, GNU time for peak-memory checks, docker.io
# and debootstrap for the image tests. Installs only what is missing, and only as
# root; elsewhere those tests fall back to loopback addresses and say so.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
[ -x /usr/bin/time ] || missing+=(time)
# The docker tests: an engine (started by the tests themselves) and debootstrap for
# the locally built base image (no registry is reachable).
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# MPI-style launch's proof: Open MPI (mpirun, mpicc) from Debian's packages.
command -v mpicc >/dev/null 2>&1 || missing+=(openmpi-bin libopenmpi-dev)
# ...and pdsh, the remote shell fan-out DeepSpeed's default multi-node runner calls, and
# MPICH (Hydra's mpiexec; Debian keeps Open MPI the default mpirun and mpicc).
command -v pdsh >/dev/null 2>&1 || missing+=(pdsh)
command -v mpicc.mpich >/dev/null 2>&1 || missing+=(mpich libmpich-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-system: missing ${missing[*]} and not root: those tests will say so" >&2
        exit 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
