#!/usr/bin/env bash
# Device script for docs/wip/warm-select.patch (the select's dry pass, flags bit 3): one call
# of ~5-6 min on the GPU machine. Staging here, on a branch with the patch applied
# (git apply docs/wip/warm-select.patch), CUDA_HOME pointing at the nvcc wheels:
#   cargo build --release --lib --tests
#   mkdir -p .dev-lead/new .dev-lead/base/kernels
#   cp target/release/deps/gpu_decode-<hash> .dev-lead/new/gpu_decode; cp target/release/libdashattn.so .dev-lead/new/
#   strip .dev-lead/new/*
#   for f in kernels/decode.cu kernels/common.cuh; do git show main:$f > .dev-lead/base/$f; done
#   cp docs/wip/warm-select-run.sh scripts/.run-warm.sh     (then run: bash scripts/.run-warm.sh, carry .dev-lead and it)
# Order: tests, harness A/B (batch 1 at 128k twice, WARM=0, batch 8, batch 1 at 1M, where the
# loops past 2048 candidates differ), the tests with the bit off, sanitizers, a bench A/B.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/log.txt; }
el "tests (new)"
timeout 200 .dev-lead/new/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; echo "rc=$?" >> $OUT/dec.txt
grep -E 'worst|test result|panicked|FAILED|^test |^rc' $OUT/dec.txt | tail -14 | tee -a $OUT/log.txt
# harness A/B (scripts/microbench/ab_trace.sh; the first call builds the harnesses, the others reuse them)
ABBIN=$(mktemp -d)
ab() { el "harness $*"; BIN=$ABBIN OUT=$OUT/ab HENV_new0="RING=1 WARM=0" bash scripts/microbench/ab_trace.sh "$@" | tee -a $OUT/log.txt; }
RUNS=2 ab base=.dev-lead/base new=. new0=. -- 131072 0.5,2,8 1
RUNS=1 ab base=.dev-lead/base new=. -- 131072 0.5,2,8 8
RUNS=1 ab base=.dev-lead/base new=. -- 1048576 0.5,8 1
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
