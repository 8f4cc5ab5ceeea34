#!/usr/bin/env bash
# Device script for docs/wip/warm-select.patch (the select's dry pass, flags bit 3): one call
# of ~5-6 min on the GPU machine. Staging here, on a branch with the patch applied
# (git apply docs/wip/warm-select.patch), CUDA_HOME pointing at the nvcc wheels:
#   cargo build --release --lib --tests
#   mkdir -p .dev-lead/new .dev-lead/base/kernels .dev-lead/base/scripts/microbench
#   cp target/release/deps/gpu_decode-<hash> .dev-lead/new/gpu_decode; cp target/release/libdashattn.so .dev-lead/new/
#   strip .dev-lead/new/*
#   for f in kernels/decode.cu kernels/common.cuh scripts/microbench/decode_trace.cu; do git show main:$f > .dev-lead/base/$f; done
#   cp docs/wip/warm-select-run.sh scripts/.run-warm.sh     (then run: bash scripts/.run-warm.sh, carry .dev-lead and it)
# Order: tests, harness A/B (batch 1 at 128k twice, WARM=0, batch 8, batch 1 at 1M, where the
# loops past 2048 candidates differ), the tests with the bit off, sanitizers, a bench A/B.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
N=$(command -v nvcc); CH=$(dirname $(dirname $N))
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/log.txt; }
NV="nvcc -O3 -std=c++17 -DDASH_TRACE -gencode arch=compute_90a,code=sm_90a"
( $NV scripts/microbench/decode_trace.cu -o /tmp/tr_new -L$CH/lib > /tmp/nvcc_new.txt 2>&1; echo "nvcc new rc=$?" >> /tmp/nvcc_new.txt ) &
( cd .dev-lead/base && $NV scripts/microbench/decode_trace.cu -o /tmp/tr_base -L$CH/lib > /tmp/nvcc_base.txt 2>&1; echo "nvcc base rc=$?" >> /tmp/nvcc_base.txt ) &
el "tests (new), beside the harness compiles"
timeout 200 .dev-lead/new/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; echo "rc=$?" >> $OUT/dec.txt
grep -E 'worst|test result|panicked|FAILED|^test |^rc' $OUT/dec.txt | tail -14 | tee -a $OUT/log.txt
wait; cat /tmp/nvcc_new.txt /tmp/nvcc_base.txt | grep -v '^$' | tail -4 | tee -a $OUT/log.txt
H=$OUT/harness.txt
hr() { el "harness $*"; echo "##### $*" >> $H; env $1 RING=1 timeout 40 /tmp/tr_$2 $3 $4 $5 >> $H 2>&1; }
for k in 1 2; do hr K=$k base 131072 0.5,2,8 1; hr K=$k new 131072 0.5,2,8 1; done
hr WARM=0 new 131072 0.5,2,8 1
hr K=1 base 131072 0.5,2,8 8; hr K=1 new 131072 0.5,2,8 8
hr K=1 base 1048576 0.5,8 1; hr K=1 new 1048576 0.5,8 1
grep -E '^#####|^## kscale|^per layer' $H | tee -a $OUT/log.txt
el "tests WARM=0 (table + mergers)"
DASHATTN_DEC_WARM=0 timeout 70 .dev-lead/new/gpu_decode gpu_decode_matches gpu_decode_mergers --test-threads=1 > $OUT/dec_w0.txt 2>&1; echo "rc=$?" >> $OUT/dec_w0.txt; grep -E 'test result|panicked|^rc' $OUT/dec_w0.txt | tee -a $OUT/log.txt
el "memcheck + racecheck (new)"
timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 .dev-lead/new/gpu_decode gpu_decode_mergers --test-threads=1 > $OUT/memcheck.txt 2>&1; echo "rc=$?" >> $OUT/memcheck.txt; tail -3 $OUT/memcheck.txt | tee -a $OUT/log.txt
timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 .dev-lead/new/gpu_decode gpu_decode_mergers --test-threads=1 > $OUT/racecheck.txt 2>&1; echo "rc=$?" >> $OUT/racecheck.txt; tail -3 $OUT/racecheck.txt | tee -a $OUT/log.txt
for w in 1 0; do
el "bench batch 1 / 128k, DASHATTN_DEC_WARM=$w"
DASHATTN_DEC_WARM=$w DASHATTN_LIBRARY=$PWD/.dev-lead/new/libdashattn.so PYTHONUNBUFFERED=1 timeout 60 python3 scripts/bench_backward_decode.py --skip bwd --reps 10 --dec-lens 131072 --batches 1 --kscale 0.5,2,8 > $OUT/bench_w$w.txt 2>&1; echo "rc=$?" >> $OUT/bench_w$w.txt; grep -E '^\||rc=|Error|error' $OUT/bench_w$w.txt | cut -c1-260 | tee -a $OUT/log.txt
done
el done
