#!/usr/bin/env bash
# Decode PDL / L2-prefetch check (one device call, < 600 s): decode GPU tests (graph replay
# included) with the defaults, NVRTC table, bench at 128k (batch 1/8/64, per-kernel times),
# batch-1 ablations (DASHATTN_NO_PDL=1, DASHATTN_DEC_NO_PREFETCH=1, both, default again for
# the run-to-run spread), then memcheck of the decode table in the time left.
#   here:   scripts/gpu-decode-check.sh stage <dir>   (copies this script too)
#   there:  bash <dir>/gpu-decode-pdl-check.sh        (device tool, carrying <dir>)
set -u -o pipefail
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "=== tests (fatbin, PDL + prefetch) $(el)"
timeout 200 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; echo "rc=$?"
grep -E '^decode|worst|test result|panicked|FAILED' $OUT/dec.txt
echo "=== NVRTC table $(el)"
DASHATTN_FORCE_NVRTC=1 timeout 100 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | grep -E 'test result|panicked'
B="env PYTHONPATH=$D/bindings/python DASHATTN_LIBRARY=$D/libdashattn.so PYTHONUNBUFFERED=1 python3 $D/scripts/bench_backward_decode.py --skip bwd --dec-lens 131072 --kscale 2,8"
echo "=== bench default (PDL + prefetch) $(el)"
timeout 170 $B --batches 1,8,64 --reps 30 --kernels 2>&1 | tee $OUT/bench_default.txt
for cfg in "DASHATTN_NO_PDL=1" "DASHATTN_DEC_NO_PREFETCH=1" "DASHATTN_NO_PDL=1 DASHATTN_DEC_NO_PREFETCH=1" "X=1"; do
  echo "=== bench batch 1, $cfg $(el)"
  timeout 60 env $cfg $B --batches 1 --reps 30 2>&1 | grep -E '^\|  *1 ' | tee -a $OUT/bench_ablate.txt
done
echo "=== memcheck decode table $(el)"
left=$(( 560 - ($(date +%s) - T0) ))
if [ $left -gt 60 ]; then timeout $left compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode gpu_decode_ma --test-threads=1 2>&1 | tail -3; echo "memcheck rc=$?"; else echo "skipped (time)"; fi
echo "=== done $(el)"
