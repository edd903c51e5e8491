#!/usr/bin/env bash
# The main job, locally: a ModelArts-like single-node training job on embedded
# defaults. Starts a local S3 server (SeaweedFS), uploads examples/hello to
# s3://demo-code/hello/, runs `bash scripts/run_train.sh python train.py --lr 0.05`
# with DLS_APP_URL pointing at it, then stops the server. BOOTSTRAP_DEMO_NODES=2 runs
# the same job as two local nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/dev/setup-dev.sh demo
export PATH="$PWD/.venv/bin:$PATH"
exec python -m devtools.demo "$@"
