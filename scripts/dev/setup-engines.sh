#!/usr/bin/env bash
# The engines whose pins clash with .venv's (numpy, protobuf, opt_einsum) or that need
# another Python, each in a venv of its own under .engines/<name>, built once and reused
# while its line below is unchanged. tests/test_engines.py puts an engine's bin/ first on
# the job's PATH (the engines' launchers run `python` from PATH); the bootstrap itself
# runs from .venv (BOOTSTRAP_PYTHON). Sizes and times: README, "Development".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${BOOTSTRAP_DEV_PYTHON:-python3}
# The oldest torch whose torchrun and c10d rendezvous run here: 1.12.1 (1.13's PyPI wheel
# needs 870 MB of CUDA libraries to import; 1.11's agent segfaults on Python 3.10).
PY310=${BOOTSTRAP_DEV_PYTHON310:-/root/.pyenv/versions/3.10.13/bin/python3}

build() {  # build NAME PYTHON REQUIREMENT...
    local name=$1 python=$2 dir=.engines/$1
    shift 2
    if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$*" ]; then
        return 0
    fi
    if ! command -v "$python" > /dev/null; then
        echo "setup-engines: $python not found: $name's environment is not built" >&2
        return 0
    fi
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --no-cache-dir "$@"
    echo "$*" > "$dir/.stamp"
}

build paddle "$PY" paddlepaddle==3.3.1
build mindspore "$PY" mindspore==2.10.0
build torch1 "$PY310" torch==1.12.1
