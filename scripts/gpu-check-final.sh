#!/usr/bin/env bash
# Compact final GPU check after a merge (one device call, ~5 min): decode tests (graph
# replay, 1M tokens, batch 512), decode memcheck + racecheck of the table test, backward
# table, the decode bench at 128k (batch 1/8/64, per-kernel times) and batch 1 without PDL.
#   here:  CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage
#   there: bash scripts/gpu-check-final.sh      (device tool, carry .dev-lead)
set -u -o pipefail
cd "$(dirname "$0")/.."
D=.dev-lead; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
rc=0
step() { echo "=== $1"; shift; "$@" || { echo "=== FAILED rc=$?"; rc=1; }; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "decode tests" bash -o pipefail -c "timeout 200 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; r=\$?; grep -E 'worst|test result|panicked|FAILED' $OUT/dec.txt; exit \$r"
step "backward tests" bash -o pipefail -c "timeout 100 $D/gpu_backward --test-threads=1 --nocapture > $OUT/bwd.txt 2>&1; r=\$?; grep -E 'worst|test result|panicked' $OUT/bwd.txt; exit \$r"
step "memcheck decode table + merge" bash -o pipefail -c "timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches gpu_merge --test-threads=1 2>&1 | tail -1"
step "racecheck decode table" bash -o pipefail -c "timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | tail -1"
B="env DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 python3 scripts/bench_backward_decode.py --skip bwd --dec-lens 131072 --kscale 2,8"
step "decode bench 128k (PDL on)" bash -o pipefail -c "timeout 200 $B --batches 1,8,64 --reps 20 --kernels 2>&1 | grep -v -i warn | tee $OUT/bench.txt | tail -12"
step "decode bench 128k batch 1, DASHATTN_NO_PDL=1" bash -o pipefail -c "DASHATTN_NO_PDL=1 timeout 60 $B --batches 1 --reps 30 2>&1 | grep -E '^\|  *1 '"
step "decode bench 128k batch 1, PDL on again" bash -o pipefail -c "timeout 60 $B --batches 1 --reps 30 2>&1 | grep -E '^\|  *1 '"
echo "gpu-check-final rc=$rc"
exit $rc
