#!/usr/bin/env bash
# One GPU session's checks (issue 11): at most 8.5 minutes on an H200 (the sum of the step timeouts).
# Runs from the repo root with the machine's own torch/triton (no network); writes everything, flat, under $OUT:
#   log                  everything printed, step by step, and a summary of each step's exit status and time
#   audit.json audit.md  `attnbench audit --ci`: the kernels compiled for sm_80/90/100 (a CPU job; triton here)
#   bench-results.jsonl  triton_blockwise vs torch SDPA flash, float16, N 1k/4k/16k, D 64/128, fwd and fwd+bwd
#                        (each point in a fresh process); the log has its table: measured TFLOP/s beside the
#                        predicted roofline bound for this GPU
#   perf-report.md perf-results.jsonl   `attnbench perf --device cuda` on a small sweep
# Each step has its own timeout; a failing step is reported and the next one runs. Exit status: the number of
# failed steps (0: all passed).
#
#   OUT=/tmp/out bash scripts/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to an (empty) output directory}
mkdir -p "$OUT"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
WORK=$(mktemp -d -t attnbench-gpu.XXXXXX)
export PY WORK OUT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TRITON_DEFAULT_FP_FUSION=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset TRITON_INTERPRET
SUMMARY=""
FAILED=0

step() {   # step NAME LIMIT_SECONDS COMMAND...: run under timeout, log the exit status and time, never abort
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo
    echo "=== $name (limit ${limit} s): $*"
    if declare -F "$1" >/dev/null; then    # a function of this script: timeout needs a process
        timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $*"
    else
        timeout --kill-after=10 "$limit" "$@"
    fi
    rc=$?
    LAST_RC=$rc
    [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit} s"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    SUMMARY+=$(printf '%-18s exit %3d  %4d s' "$name" "$rc" "$((SECONDS - t0))")$'\n'
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
}

use_pythonpath() {   # when pip cannot install: a symlink tree with the installed import names, on PYTHONPATH
    echo "pip install failed: falling back to PYTHONPATH"
    mkdir -p "$WORK/site/attnbench"
    ln -sf "$PWD"/attnbench/*.py "$WORK/site/attnbench/"
    for sub in reference implementations perf; do ln -sfn "$PWD/$sub" "$WORK/site/attnbench/$sub"; done
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import attnbench.perf.audit, attnbench.implementations; print('attnbench importable from', '$WORK/site')"
}

environment() {
    nvidia-smi -L || true
    "$PY" - <<'EOF'
import os, torch
try:
    import triton; tv = triton.__version__
except ImportError as e:
    tv = f"missing ({e})"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, cores {os.cpu_count()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
else:
    print("no CUDA device visible: the CUDA steps below will fail (that is the check)")
EOF
}

bench() {
    "$PY" -m attnbench.perf.tools gpu-bench --dtype float16 --causal none --seq-lens 1024,4096,16384 \
        --out "$WORK/bench" || return $?
    cp "$(ls -d "$WORK"/bench/*/ | head -n 1)/results.jsonl" "$OUT/bench-results.jsonl"
}

perf_sweep() {
    "$PY" -m attnbench perf --device cuda --backends triton_blockwise,torch_sdpa_flash --seq-lens 1024,4096 \
        --dtype float16 --pass fwd,fwd+bwd --heads 16 --timeout 60 --out "$WORK/perf" --allow-failures || return $?
    local run
    run=$(ls -d "$WORK"/perf/*/ | head -n 1)
    cp "$run/report.md" "$OUT/perf-report.md" && cp "$run/results.jsonl" "$OUT/perf-results.jsonl"
}

main() {
    local start=$SECONDS
    echo "attnbench gpu_check: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    step environment 30 environment
    step install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .
    [ "$LAST_RC" -eq 0 ] || use_pythonpath
    step audit 60 "$PY" -m attnbench audit --ci --jobs "$(nproc)" --json "$OUT/audit.json" --md "$OUT/audit.md"
    step bench 170 bench
    step conformance 90 "$PY" -m pytest conformance/test_agreement.py conformance/test_tile_edges.py \
        --device cuda --backend triton_blockwise --backend torch_sdpa_flash -x -q -p no:cacheprovider
    step launch-configs 40 "$PY" -m pytest conformance/test_launch_configs.py --device cuda -x -q \
        -p no:cacheprovider -k "half and (D64 or D128)"
    step perf 60 perf_sweep
    echo
    echo "=== summary ($((SECONDS - start)) s, $FAILED failed)"
    printf '%s' "$SUMMARY"
    return "$FAILED"
}

main 2>&1 | tee "$OUT/log"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
