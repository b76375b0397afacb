#!/usr/bin/env bash
# The measurement plan on a GPU machine (calibrate/gpu_run.md): the carried wheels, the plan
# under a hard time limit, then the results packed into $OUT whatever happened.
#
#   OUT=DIR [BUDGET=300] [NAME=gpu] [GPU_TESTS=1] [DRY=1] [PLAN_ARGS=...] bash calibrate/gpu_run.sh
#
# BUDGET: seconds for the plan (it stops itself; a hard kill follows 45 s later).
# NAME: the results folder, .plan/NAME (git-ignored; kept on a warm machine, so a second
# call resumes it). GPU_TESTS=1: the GPU-only tests afterwards (at most 90 s).
# DRY=1: the CPU rehearsal (fake device). Exit status: the plan's.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
BUDGET=${BUDGET:-300}
NAME=${NAME:-gpu}
DIR=.plan/$NAME
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import simpy" || { echo "simgpu: error: SimPy is missing: carry .whl (calibrate/gpu_run.md)"; exit 3; }
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -1
    python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
    python3 --version
} >"$OUT/env.txt"
mkdir -p "$DIR"
# shellcheck disable=SC2086  # PLAN_ARGS is split on purpose
timeout -k 10 $((BUDGET + 45)) python3 -m calibrate.plan --out "$DIR" --budget-s "$BUDGET" \
    ${DRY:+--dry-run} ${PLAN_ARGS:-}
rc=$?
[ $rc -eq 124 ] && echo "simgpu: the plan was killed at its hard limit: plan.json names the step"
if [ -n "${GPU_TESTS:-}" ] && [ -z "${DRY:-}" ]; then
    timeout -k 5 90 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/test_calibrate.py tests/test_plan.py tests/test_memory_calibration.py \
        >"$OUT/gpu-tests.txt" 2>&1
    tail -3 "$OUT/gpu-tests.txt"
fi
tar czf "$OUT/results.tar.gz" -C .plan "$NAME"
cp "$DIR/plan.log" "$DIR/summary.md" "$OUT/" 2>/dev/null
echo "plan exit $rc; $OUT/results.tar.gz: $(du -k "$OUT/results.tar.gz" | cut -f1) KiB"
exit $rc
