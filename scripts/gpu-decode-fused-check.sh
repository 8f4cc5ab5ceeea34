#!/usr/bin/env bash
# Decode check for the fused cluster kernel (one device call, < 600 s): GPU decode tests
# (every case on the three-kernel and the fused path, graph replay), memcheck / racecheck
# of the decode table, the NVRTC path, then the decode bench (per-layer and single-replay
# times, both paths, beside SDPA cuDNN / flash in the same process).
#   here:   CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage        # -> .dev-lead/
#   there:  bash scripts/gpu-decode-fused-check.sh [tests|bench|all]     (device tool, carry .dev-lead)
# Env: BENCH_ARGS (bench_backward_decode.py arguments after --skip bwd).
set -u -o pipefail
cd "$(dirname "$0")/.."
D=.dev-lead; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
what=${1:-all}
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
rc=0
step() { echo "=== $1 $(el)"; shift; "$@" || { echo "=== FAILED rc=$?"; rc=1; }; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
if [ "$what" != bench ]; then
  step "decode tests (fatbin)" bash -o pipefail -c "timeout 240 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; r=\$?; grep -E 'worst|test result|panicked|FAILED|assert' $OUT/dec.txt; exit \$r"
  step "memcheck decode table + out-of-range" bash -o pipefail -c "timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches gpu_decode_out --test-threads=1 2>&1 | tail -2"
  step "racecheck decode table" bash -o pipefail -c "timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | tail -2"
  step "decode table (NVRTC)" bash -o pipefail -c "DASHATTN_FORCE_NVRTC=1 timeout 150 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | grep -E 'test result|panicked'"
fi
if [ "$what" != tests ]; then
  step "decode bench" bash -o pipefail -c "DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 timeout 400 python3 scripts/bench_backward_decode.py --skip bwd ${BENCH_ARGS:---dec-lens 131072 --batches 1,8,64 --kscale 0.5,2,8 --reps 20} 2>&1 | grep -v -i warn | tee $OUT/bench.txt"
fi
echo "gpu-decode-fused-check rc=$rc $(el)"
exit $rc
