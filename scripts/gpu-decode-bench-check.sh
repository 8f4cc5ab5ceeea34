#!/usr/bin/env bash
# Decode check + benchmark in one device call (< 600 s): GPU decode tests (graph replay,
# 1M tokens, batch 512), the decode bench at 128k (batch 1/8/64, four sparsities, per-layer
# and single-replay times beside SDPA cuDNN / flash, copy bandwidth, SM clock sampled),
# memcheck of the decode table, the bench at 8k / 32k / 1M, and the NVRTC path in the
# time left.
#   here:   CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage    # -> .dev-lead/
#   there:  bash scripts/gpu-decode-bench-check.sh                  (device tool, carry .dev-lead)
set -u -o pipefail
cd "$(dirname "$0")/.."
D=.dev-lead; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
left() { echo $(( ${1:-560} - ($(date +%s) - T0) )); }
rc=0
step() { echo "=== $1 $(el)"; shift; "$@" || { echo "=== FAILED rc=$?"; rc=1; }; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "decode tests (fatbin)" bash -o pipefail -c "timeout 150 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; r=\$?; grep -E '^decode|worst|test result|panicked' $OUT/dec.txt; exit \$r"
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader,nounits -lms 200 > $OUT/clk.txt &
B="env DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 python3 scripts/bench_backward_decode.py --skip bwd --reps 20"
step "decode bench 128k" bash -o pipefail -c "timeout 200 $B --dec-lens 131072 --batches 1,8,64 --kscale 0.25,0.5,2,8 --kernels 2>&1 | grep -v -i warn | tee $OUT/bench128k.txt"
step "memcheck decode table + merge" bash -o pipefail -c "timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches gpu_merge --test-threads=1 2>&1 | tail -1"
step "decode bench 8k, 32k, 1M" bash -o pipefail -c "timeout $(left 500) $B --dec-lens 8192,32768,1048576 --batches 1,8,64 --kscale 0.5,8 2>&1 | grep -v -i warn | tee $OUT/bench_other.txt | grep -E '^\|  '"
kill %1 2>/dev/null
sort -n $OUT/clk.txt | awk '{a[NR]=$1} END{print "SM clock during the benches (MHz): samples", NR, "min", a[1], "median", a[int(NR/2)+1], "max", a[NR]}'
if [ "$(left 570)" -gt 70 ]; then
  step "decode table (NVRTC)" bash -o pipefail -c "DASHATTN_FORCE_NVRTC=1 timeout $(left 575) $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | grep -E 'test result|panicked'"
else echo "=== NVRTC decode table skipped (time) $(el)"; fi
echo "gpu-decode-bench-check rc=$rc $(el)"
exit $rc
