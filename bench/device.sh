#!/usr/bin/env bash
# The download benchmark on a lent device machine: 16 cores, where the hash of every
# byte has cores of its own (on the 2-core reference machine the MD5 and the store share
# two, which bounds large4x64 at ~1.7x s5cmd: bench/README.md, "A cheaper MD5?").
#
# That machine reaches no package index, so what the run needs travels with the
# working tree, in .devicekit/ (git-ignored, under the tool's 64 MiB): SeaweedFS's
# `weed` and s5cmd (xz), and obstore's wheel; its own Python (3.12, with psutil,
# nvidia-ml-py and setuptools) is the bootstrap's. No boto3 there, so no uploads,
# latency mode or rclone (bench/run.py --downloads-only): downloads of each set by the
# bootstrap, s5cmd and "s5cmd + md5sum on every core", every tree verified.
#
#     bash bench/device.sh pack          # here, once: builds .devicekit/ (~45 MB)
#     # then, through the device tool, carry [".devicekit"], timeout_s 540:
#     bash bench/device.sh run --only small2k,large4x64,mixed3k,one255,one1g --reps 3
#
# `run` first runs scripts/gpu_check.sh (the preflight and the Xid watch on the real
# GPU), then the benchmark; it prints both and leaves their logs, the check's JSON and
# the results file in $OUT (bench/report.py turns that into bench/README.md's tables).
# `run --smoke` tries the kit on tiny sets.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.devicekit

pack() {
    [ -x .venv/bin/weed ] || bash scripts/dev/setup-dev.sh test
    mkdir -p "$KIT"
    local s5
    s5=$(.venv/bin/python -c 'import bench.run as r; print(r.S5CMD)')
    for bin in .venv/bin/weed "$s5"; do
        local name out
        name=$(basename "$bin")
        out="$KIT/$name.xz"
        if [ ! -s "$out" ] || [ "$bin" -nt "$out" ]; then
            echo "device kit: compressing $name (weed takes ~2 min)"
            xz -T0 -9 -c "$bin" > "$out.part" && mv "$out.part" "$out"
        fi
    done
    rm -f "$KIT"/*.whl
    local obstore
    obstore=$(.venv/bin/python -c 'import obstore; print(obstore.__version__)')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$KIT" "obstore==$obstore"
    du -b -c "$KIT"/* | tail -1 | awk -v kit="$KIT" '{printf "device kit: %s, %.1f MB\n", kit, $1 / 1e6}'
}

run() {
    local tools=/tmp/bootstrap-kit
    mkdir -p "$tools/bin"
    for packed in "$KIT"/*.xz; do
        python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$packed" "$tools/bin/$(basename "$packed" .xz)"
        chmod +x "$tools/bin/$(basename "$packed" .xz)"
    done
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$tools/site" "$KIT"/*.whl
    export PATH="$tools/bin:$PATH" PYTHONPATH="$tools/site" PYTHONUNBUFFERED=1
    echo "device: $(nproc) cores, $(python3 --version), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    local out=${OUT:-/tmp}
    # The same machine's GPUs through the real NVML (the suite fakes it): one call, two checks.
    TMPDIR="$out" timeout 120 bash scripts/gpu_check.sh 2>&1 | tee "$out/gpu-check.log" \
        || echo "device: scripts/gpu_check.sh exited $?"
    # The transfers compared, not a GPU node's preflight (NVML's start on a real driver).
    BOOTSTRAP_PREFLIGHT=off python3 bench/run.py --downloads-only \
        --data /tmp/bootstrap-bench-data "$@" 2>&1 | tee "$out/device-bench.log"
    local newest
    newest=$(ls -t bench/results/*.json | head -1)
    cp "$newest" "$out/"
}

case "${1:-}" in
    pack) pack ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/device.sh pack | run [bench/run.py options]" >&2; exit 2 ;;
esac
