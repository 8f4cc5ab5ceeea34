#!/usr/bin/env bash
# Backward-only GPU check and benchmark (quicker than gpu-check-all.sh while tuning).
#   here:  CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage
#   there: bash scripts/gpu-check-bwd.sh           (device tool, carry .dev-lead)
# Env: SAN=0 skips compute-sanitizer, TESTS=0 skips the tests, BENCH_ARGS for
# scripts/bench_backward_decode.py (default: 8k-64k, kscale 2 and 8, --profile).
set -o pipefail
cd "$(dirname "$0")/.."
D=.dev-lead; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "${TESTS:-1}" = 1 ]; then
    echo "=== gpu_backward"; timeout 200 $D/gpu_backward --test-threads=1 --nocapture > "$OUT/bwd.txt" 2>&1; echo "rc=$?"
    grep -E "rel L2|worst|test result|panicked" "$OUT/bwd.txt" | cut -c1-220 | head -60
    echo "=== gpu_training"; timeout 100 $D/gpu_training --nocapture 2>&1 | grep -E 'loss curve|test result|panicked'
fi
if [ "${SAN:-1}" = 1 ]; then
    echo "=== memcheck"; DASHATTN_TEST_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_backward --test-threads=1 2>&1 | tail -2
    echo "=== racecheck"; DASHATTN_TEST_CASES=1 timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_backward --test-threads=1 2>&1 | tail -2
fi
echo "=== bench"
DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 timeout 400 python3 scripts/bench_backward_decode.py --skip dec \
    ${BENCH_ARGS:---bwd-lens 8192,32768,65536 --kscale 2,8 --reps 6 --profile} 2>&1 | grep -v -i "warn" | tee "$OUT/bench.txt" | tail -14
