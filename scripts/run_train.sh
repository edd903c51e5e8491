#!/usr/bin/env bash
# ModelArts training entrypoint: `bash /home/work/run_train.sh [python] FILE ARGS...`.
# Thin on purpose: find a Python that can import the bootstrap and exec it with argv
# untouched ("$@": the platform's shell already split the words; quoting survives).
# Works when copied alone to /home/work/run_train.sh, as images do.

# The original script's home was the folder holding it (/home/work); keep that default.
# It is passed apart from BOOTSTRAP_HOME: a home the user set wins over MA_JOB_DIR, this
# default does not.
# An image may name its home instead (docker/Dockerfile does).
# Found with bash's own string operations: a fork (a subshell, dirname) costs ~1 ms of
# every job's start, so one is spent only on a path that needs cd to normalize it.
if [ -z "${BOOTSTRAP_LAUNCHER_HOME:-}" ]; then
    here=${BASH_SOURCE[0]:-$0}
    case $here in
        */*) here=${here%/*}; here=${here:-/} ;;
        *) here=. ;;
    esac
    case $here in /*) ;; *) here=$PWD/$here ;; esac
    case $here/ in
        *//* | */./* | */../*) here=$(cd "$here" && pwd) || exit 2 ;;
    esac
    BOOTSTRAP_LAUNCHER_HOME=$here
    export BOOTSTRAP_LAUNCHER_HOME
fi

# Run by exec, so the bootstrap keeps this process's pid (PID 1 in a container).
# `python -c` puts the current folder first on sys.path: drop it, so a user's own
# bootstrap.py (or bootstrap/) in the working directory cannot shadow the package.
launcher='import sys
del sys.path[0]
try:
    from bootstrap.__main__ import job_main as main
except ImportError as exc:
    sys.stderr.write("run_train: error: %s cannot import the bootstrap (%s); install it there "
                     "(pip install modelarts-bootstrap) or set BOOTSTRAP_PYTHON\n" % (sys.executable, exc))
    sys.exit(2)
sys.exit(main())'

# The self-contained runtime (/opt/bootstrap, docker/runtime/build.sh) records the
# oldest glibc its binaries run on: an image below it (or with another C library) gets
# one line and exit 2 here, never the loader's "GLIBC_2.xx not found".
version_below() {  # version_below A B: A < B as versions
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]
}
check_libc() {  # check_libc PYTHON
    local python=$1 runtime floor have
    case $python in
        */*) ;;
        *) hash "$python" 2>/dev/null && python=${BASH_CMDS[$python]} ;;
    esac
    case $python in */*) runtime=${python%/*}/.. ;; *) return 0 ;; esac
    [ -r "$runtime/glibc-floor" ] || return 0
    runtime=$(cd "$runtime" && pwd) || return 0  # for the message: a runtime's home
    read -r floor < "$runtime/glibc-floor"
    have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
    [ -n "$have" ] || have=$(ldd --version 2>/dev/null | awk 'NR==1 {print $NF}')
    if [ -z "$have" ]; then
        echo "run_train: error: this image has no GNU C library; the bootstrap's runtime in" \
             "$runtime needs glibc $floor or newer: build on a glibc image (Debian, Ubuntu," \
             "RHEL, EulerOS), or install the bootstrap into the image's own Python 3.11+" >&2
        exit 2
    fi
    if version_below "$have" "$floor"; then
        echo "run_train: error: this image's glibc is $have; the bootstrap's runtime in" \
             "$runtime needs glibc $floor or newer: use a newer base image, or install the" \
             "bootstrap into the image's own Python 3.11+ (docker/Dockerfile: RUNTIME=image)" >&2
        exit 2
    fi
}

if [ -n "${BOOTSTRAP_PYTHON:-}" ]; then
    # An explicit choice: no probing (it costs a Python start-up), no silent fallback.
    if ! command -v "$BOOTSTRAP_PYTHON" >/dev/null 2>&1; then
        echo "run_train: error: BOOTSTRAP_PYTHON=$BOOTSTRAP_PYTHON is not an executable;" \
             "point it at the Python the bootstrap is installed in" >&2
        exit 2
    fi
    check_libc "$BOOTSTRAP_PYTHON"
    exec "$BOOTSTRAP_PYTHON" -c "$launcher" "$@"
fi
# bash's own PATH search (hash fills BASH_CMDS) instead of $(command -v): no subshells.
py3=
py=
if hash python3 2>/dev/null; then py3=${BASH_CMDS[python3]}; fi
if hash python 2>/dev/null; then py=${BASH_CMDS[python]}; fi
if [ -z "$py3$py" ]; then  # none, or hashing turned off (set +h): ask command -v
    py3=$(command -v python3 2>/dev/null)
    py=$(command -v python 2>/dev/null)
fi
# One Python, or two names for the same file (venvs, conda): no probe needed, and
# skipping it saves a whole interpreter start-up (~20 ms) on every job.
if [ -n "$py3" ] && { [ -z "$py" ] || [ "$py3" -ef "$py" ]; }; then
    exec "$py3" -c "$launcher" "$@"
fi
if [ -z "$py3" ] && [ -n "$py" ]; then
    exec "$py" -c "$launcher" "$@"
fi
for candidate in "$py3" "$py"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; del sys.path[0]; import bootstrap' \
            >/dev/null 2>&1; then
        exec "$candidate" -c "$launcher" "$@"
    fi
done
echo "run_train: error: no python3 or python on PATH can import the bootstrap;" \
     "install it (pip install modelarts-bootstrap) or set BOOTSTRAP_PYTHON" >&2
exit 2
