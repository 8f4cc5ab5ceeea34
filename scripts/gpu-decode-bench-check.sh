#!/usr/bin/env bash
# Decode check + benchmark in one device call (< 600 s; ~290 s on the H200): GPU decode tests
# (graph replay, 1M tokens, batch 512), the decode bench at 128k (batch 1/8/64, four
# sparsities, per-kernel times) and at 8k / 32k / 1M (per-layer and single-replay times
# beside SDPA cuDNN / flash, copy bandwidth, SM clock sampled), memcheck of every decode
# test but the 1M one, racecheck of the table + merge, the NVRTC path on the table.
#   here:   CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage    # -> .dev-lead/
#   there:  bash scripts/gpu-decode-bench-check.sh                  (device tool, carry .dev-lead
#           or the folder named by env D;
#           only libdashattn.so and gpu_decode are needed: drop the rest to travel light)
set -u -o pipefail
cd "$(dirname "$0")/.."
D=${D:-.dev-lead}; OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "=== gpu_decode (fatbin) $(el)"
timeout 200 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; echo "rc=$?"; grep -E '^decode|worst|test result|panicked' $OUT/dec.txt | tail -9
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader,nounits -lms 200 > $OUT/clk.txt &
B="env DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 python3 scripts/bench_backward_decode.py --skip bwd --reps 20"
echo "=== bench 128k $(el)"
timeout 150 $B --dec-lens 131072 --batches 1,8,64 --kscale 0.25,0.5,2,8 --kernels 2>&1 | grep -v -i warn | tee $OUT/bench128k.txt | grep -E "^\|  |kernels|copy"
echo "=== bench 8k 32k 1M $(el)"
timeout 150 $B --dec-lens 8192,32768,1048576 --batches 1,8,64 --kscale 0.5,8 2>&1 | grep -v -i warn | tee $OUT/bench_other.txt | grep -E "^\|  "
kill %1 2>/dev/null
sort -n $OUT/clk.txt | awk '{a[NR]=$1} END{print "SM clock (MHz): samples", NR, "min", a[1], "median", a[int(NR/2)+1], "max", a[NR]}'
echo "=== memcheck decode (all but 1M) $(el)"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode --test-threads=1 --skip gpu_decode_one_million_tokens 2>&1 | tail -1
echo "=== racecheck table + merge $(el)"
timeout 80 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches gpu_merge --test-threads=1 2>&1 | tail -1
echo "=== NVRTC table $(el)"
DASHATTN_FORCE_NVRTC=1 timeout 90 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | grep -E 'test result|panicked'
echo "done $(el)"
