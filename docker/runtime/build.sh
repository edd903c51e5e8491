#!/usr/bin/env bash
# Builds the bootstrap's self-contained runtime into $PREFIX (default /opt/bootstrap):
# its own CPython, OpenSSL, zlib and libffi, compiled with zig's C compiler against
# glibc $GLIBC (default 2.17: symbol versions of that release only, so the result runs
# on any image with glibc >= 2.17), then the bootstrap and its dependencies from binary
# wheels only. Nothing of it depends on the image's own Python or libraries.
#
#   bash docker/runtime/build.sh [STEP] [SOURCE_DIR]
#
# STEP: libraries (zig, the sources, zlib, libffi, OpenSSL), interpreter (CPython), packages
# (the dependencies' wheels), bootstrap (the bootstrap itself, then the trim and the
# glibc floor), or all (the default); the Dockerfiles run one a layer, so a change to
# the bootstrap's code rebuilds only the last. SOURCE_DIR: the bootstrap's source tree
# (default: this repository). Needs bash, make, perl, xz, binutils (strip), autoconf,
# automake, libtool and libltdl-dev (libffi's tree), python3 with venv (to fetch zig from PyPI),
# apt-get reaching Debian's source packages (the upstream tarballs of CPython, OpenSSL,
# zlib and libffi) and the package index for the wheels. A plain build: no PGO, no LTO, no test suites. The
# README ("The self-contained runtime") says why this way and what it costs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
step=${1:-all}
src=${2:-$(cd "$here/../.." && pwd)}
PREFIX=${PREFIX:-/opt/bootstrap}
GLIBC=${GLIBC:-2.17}
SUITE=${SUITE:-trixie}  # where the upstream sources come from (Debian's .orig tarballs)
WORK=${WORK:-/tmp/bootstrap-runtime-build}
ZIG_VERSION=${ZIG_VERSION:-0.17.1}
PYTHON_PACKAGE=${PYTHON_PACKAGE:-python3.13}
jobs=$(nproc)
arch=$(uname -m)
deps=$WORK/deps
py=$PREFIX/bin/python3
say() { echo "runtime: $*" >&2; }
logged() {  # logged NAME COMMAND...: quiet, but a failure shows the end of its log
    mkdir -p "$WORK/logs"
    if ! "${@:2}" >"$WORK/logs/$1.log" 2>&1; then
        tail -n 40 "$WORK/logs/$1.log" >&2
        say "$1 failed (whole log: $WORK/logs/$1.log)"
        exit 1
    fi
}

toolchain() {  # zig cc, targeting the oldest glibc we promise, as cc/ar/ranlib
    mkdir -p "$WORK/bin" "$WORK/src" "$deps"
    if [ ! -x "$WORK/zig/bin/python" ]; then
        python3 -m venv "$WORK/zig"
        "$WORK/zig/bin/pip" install -q --disable-pip-version-check "ziglang==$ZIG_VERSION"
    fi
    local zig
    zig=$("$WORK/zig/bin/python" -c \
        'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
    # zig's clang makes __DATE__ an error (reproducible builds); CPython's build info uses it.
    printf '#!/bin/sh\nexec "%s" cc -target %s-linux-gnu.%s -Wno-error=date-time "$@"\n' \
        "$zig" "$arch" "$GLIBC" > "$WORK/bin/cc"
    printf '#!/bin/sh\nexec "%s" ar "$@"\n' "$zig" > "$WORK/bin/ar"
    printf '#!/bin/sh\nexec "%s" ranlib "$@"\n' "$zig" > "$WORK/bin/ranlib"
    chmod +x "$WORK/bin/cc" "$WORK/bin/ar" "$WORK/bin/ranlib"
}

fetch() {  # fetch PACKAGE: leaves its upstream (.orig) tarball in $WORK/src
    local pkg=$1 list=$WORK/apt mirror version
    local apt=(apt-get -qq -o Dir::Etc::sourcelist="$list/sources.list"
               -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$list/lists")
    if compgen -G "$WORK/src/${pkg}_*.orig.tar.*" >/dev/null; then return; fi
    mkdir -p "$list/lists/partial"
    if [ ! -s "$list/sources.list" ]; then
        # The mirror the system's apt uses (deb822 or one-line form), else Debian's.
        mirror=$(cat /etc/apt/sources.list.d/debian.sources 2>/dev/null \
            | sed -n 's/^URIs: *//p' | head -n1 || true)
        mirror=${mirror:-$(cat /etc/apt/sources.list 2>/dev/null \
            | awk '/^deb /{print $2; exit}' || true)}
        mirror=${mirror:-http://deb.debian.org/debian}
        printf 'deb-src %s %s main\ndeb-src %s %s-updates main\ndeb-src %s-security %s-security main\n' \
            "$mirror" "$SUITE" "$mirror" "$SUITE" "$mirror" "$SUITE" > "$list/sources.list"
        "${apt[@]}" update 2>/dev/null || "${apt[@]}" update
    fi
    # Only the upstream tarball is used (a plain build of the upstream source), so any
    # version the suite lists will do: a mirror that no longer carries the newest
    # revision's files still has an older one's.
    for version in "" $(apt-cache -o Dir::Etc::sourcelist="$list/sources.list" \
            -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$list/lists" showsrc "$pkg" \
            2>/dev/null | sed -n 's/^Version: //p' | sort -rVu); do
        (cd "$WORK/src" && "${apt[@]}" source -d --only-source "$pkg${version:+=$version}" \
            >/dev/null 2>&1) || true
        if compgen -G "$WORK/src/${pkg}_*.orig.tar.*" >/dev/null; then return; fi
    done
    say "cannot fetch the source of $pkg from Debian $SUITE"
    exit 1
}

unpack() {  # unpack PACKAGE: prints the folder of its upstream tree
    local tarball dir
    tarball=$(find "$WORK/src" -name "${1}_*.orig.tar.*" ! -name '*.asc' | head -n1)
    dir=$WORK/build/$1
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        tar -xf "$tarball" -C "$dir" --strip-components=1
    fi
    echo "$dir"
}

compiler() {  # zig on PATH as cc, and only our own libraries visible to configure
    toolchain
    # Only our own libraries are visible to configure: zig sees no system headers, so a
    # system library found through pkg-config would break the build (liblzma did).
    export PATH="$WORK/bin:$PATH" CC=cc AR=ar RANLIB=ranlib \
        PKG_CONFIG_LIBDIR="$deps/lib/pkgconfig" PKG_CONFIG_PATH=""
}

libraries() {  # zlib, libffi and OpenSSL, static, into $deps
    compiler
    for pkg in zlib libffi openssl "$PYTHON_PACKAGE"; do fetch "$pkg"; done
    if [ ! -f "$deps/lib/libz.a" ]; then
        say "zlib"
        (cd "$(unpack zlib)" && logged zlib sh -c \
            "./configure --static --prefix='$deps' && make -j$jobs && make install")
    fi
    if [ ! -f "$deps/lib/libffi.a" ]; then
        say "libffi"
        # Debian's libffi tarball is the upstream git tree: configure is generated here.
        (cd "$(unpack libffi)" && logged libffi sh -c \
            "{ [ -x configure ] || autoreconf -fi; } && ./configure --disable-shared \
             --enable-static --with-pic --disable-docs --prefix='$deps' --libdir='$deps/lib' \
             && make -j$jobs && make install")
    fi
    if [ ! -f "$deps/lib/libssl.a" ]; then
        say "openssl"
        # OPENSSLDIR /etc/ssl: Debian's and Ubuntu's hashed /etc/ssl/certs work as they
        # are; other layouts (RHEL, EulerOS) are found by the bootstrap (storage/tls.py).
        (cd "$(unpack openssl)" && logged openssl sh -c \
            "./Configure linux-$arch no-shared no-tests no-docs no-apps no-module -fPIC \
             --prefix='$deps' --libdir=lib --openssldir=/etc/ssl \
             && make -j$jobs build_libs && make install_dev")
    fi
}

interpreter() {  # CPython into $PREFIX, on the libraries
    libraries
    if [ ! -x "$py" ]; then
        say "cpython"
        # The libraries named outright: a builder without pkg-config finds them too.
        (cd "$(unpack "$PYTHON_PACKAGE")" && logged cpython sh -c \
            "./configure --prefix='$PREFIX' --with-ensurepip=no --disable-test-modules \
             --with-openssl='$deps' --with-openssl-rpath=no LIBS='-lpthread -ldl' \
             LIBFFI_CFLAGS='-I$deps/include' LIBFFI_LIBS='-L$deps/lib -lffi' \
             ZLIB_CFLAGS='-I$deps/include' ZLIB_LIBS='-L$deps/lib -lz' \
             && make -j$jobs && make install")
    fi
    "$py" -c 'import ssl, zlib, ctypes, hashlib; print("runtime:", ssl.OPENSSL_VERSION)' >&2
}

packages() {  # the dependencies: binary wheels only (no compiler at install)
    "$py" -m ensurepip >/dev/null
    # Wheels for glibc 2.17 (manylinux2014), the runtime's floor: pip would otherwise take
    # the newest a builder allows (cryptography ships _2_28 and _2_34 wheels too) and raise
    # the floor of every job. Downloaded for that platform, then installed from there.
    local wheels=/tmp/bootstrap-runtime-wheels version
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    rm -rf "$wheels"
    "$py" -m pip download -q --disable-pip-version-check --no-cache-dir --only-binary=:all: \
        --platform "manylinux2014_$(uname -m)" --implementation cp --python-version "$version" \
        -r "$src/docker/requirements.txt" -d "$wheels"
    "$py" -m pip install -q --disable-pip-version-check --no-cache-dir --no-index \
        --find-links "$wheels" -r "$src/docker/requirements.txt"
    rm -rf "$wheels"
}

bootstrap() {  # the bootstrap itself, then what a job never needs goes
    "$py" -m pip --version >/dev/null 2>&1 || "$py" -m ensurepip >/dev/null
    "$py" -m pip install -q --disable-pip-version-check --no-cache-dir --no-deps "$src"
    local lib
    lib=$("$py" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
    rm -rf "$lib"/test "$lib"/idlelib "$lib"/tkinter "$lib"/turtledemo \
        "$lib"/site-packages/pip "$lib"/site-packages/pip-* "$PREFIX"/bin/pip* \
        "$PREFIX"/bin/idle* "$PREFIX"/bin/pydoc* "$PREFIX"/share/man "$PREFIX"/include \
        "$lib"/config-*/*.a
    # botocore ships the models of every AWS service (30 MB); the bootstrap speaks S3 and,
    # for role credentials, STS and SSO.
    local data=$lib/site-packages/botocore/data
    find "$data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts ! -name sso \
        ! -name sso-oidc -exec rm -rf {} +
    find "$PREFIX" -type f \( -name '*.so' -o -name 'python3.*' \) ! -name '*.py' \
        -exec strip --strip-unneeded {} + 2>/dev/null || true
    "$py" -m compileall -q -j0 "$PREFIX/lib" >/dev/null || true
    # The floor, read from what was built (the reader `bootstrap-check --image` uses).
    "$py" -m bootstrap.node.libc "$PREFIX" > "$PREFIX/glibc-floor"
    say "built $PREFIX: $("$py" -V), glibc >= $(cat "$PREFIX/glibc-floor"), $(du -sh "$PREFIX" | cut -f1)"
}

case "$step" in
    libraries) libraries ;;
    interpreter) interpreter ;;
    packages) packages ;;
    bootstrap) bootstrap ;;
    all) interpreter; packages; bootstrap ;;
    *) echo "build.sh: unknown step '$step' (libraries, interpreter, packages, bootstrap," \
            "all)" >&2; exit 2 ;;
esac
