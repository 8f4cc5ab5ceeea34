#!/usr/bin/env bash
# Device script for the two patches here that never ran on a GPU, in two calls of < 10 min:
#   warm-select.patch  (dir .dev-lead/warm): the select's dry pass before its PDL wait
#                      (flags bit 3; DASHATTN_DEC_WARM=0 off, harness WARM=0);
#   tma-prefetch.patch (dir .dev-lead/tma): the select prefetches its selected blocks' K/V
#                      into L2 by TMA (DASHATTN_DEC_PF_MB=0 off, harness PFMB=0).
# PART=1: tma's decode tests (with DASHATTN_DEC_PF_REQUIRE=1, so that tensor maps the
#         driver refuses fail the tests instead of turning the prefetch off), the harness A/B
#         (scripts/microbench/ab_trace.sh) of main's kernels, warm, warm with WARM=0, tma,
#         tma with PFMB=0 and tmaE (tma built with -DDASH_PF_EARLY: the prefetches ~2 us
#         earlier, before the list writes) at batch 1 / 128k twice, batch 8 and batch 1 / 1M
#         (where the warm patch's loops past 2048 candidates differ from main's); then
#         warm's decode tests.
# PART=2: the tests with each switch off, memcheck of the merger test for both and racecheck
#         for warm (its dry pass reuses the shared scratch), library bench A/Bs at batch 1
#         (both patches) and batch 8 (tma).
# Staging (this machine, CUDA_HOME at the nvcc wheels), for P/L = warm-select/warm and
# tma-prefetch/tma, from /work/main:
#   git worktree add --detach /tmp/wt-L main && (cd /tmp/wt-L && git apply docs/wip/P.patch && cargo build --release --lib --tests)
#   mkdir -p .dev-lead/L/kernels && cp /tmp/wt-L/kernels/{decode.cu,common.cuh} .dev-lead/L/kernels/
#   cp /tmp/wt-L/target/release/deps/gpu_decode-<hash> .dev-lead/L/gpu_decode; cp /tmp/wt-L/target/release/libdashattn.so .dev-lead/L/
#   strip .dev-lead/L/gpu_decode .dev-lead/L/libdashattn.so
# and main's kernels: mkdir -p .dev-lead/base/kernels; git show main:kernels/decode.cu > .dev-lead/base/kernels/decode.cu
# (the same for common.cuh); the tmaE kernels: mkdir -p .dev-lead/tmaE/kernels; (echo
# '#define DASH_PF_EARLY 1'; cat .dev-lead/tma/kernels/decode.cu) > .dev-lead/tmaE/kernels/decode.cu
# and common.cuh beside it; cp docs/wip/next-run.sh scripts/.run-next.sh; then run
# `PART=1 bash scripts/.run-next.sh` and `PART=2 bash scripts/.run-next.sh` with carry
# [".dev-lead", "scripts/.run-next.sh"] (43 MB), timeout_s 600.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/log.txt; }
# tests L TIMEOUT ENV [FILTER...]: the decode tests of .dev-lead/L (ENV: VAR=value or -)
tests() {
    local l=$1 t=$2 e=$3
    local f=$OUT/tests_${l}_${e//[^A-Za-z0-9]/_}.txt
    shift 3
    [ "$e" = - ] && e=
    el "tests $l $e ${*:-(all)}"
    env $e timeout $t .dev-lead/$l/gpu_decode "$@" --test-threads=1 --nocapture > $f 2>&1; echo "rc=$?" >> $f
    grep -E 'worst|test result|panicked|FAILED|^rc' $f | tail -12 | tee -a $OUT/log.txt
}
if [ "${PART:-1}" = 1 ]; then
    tests tma 200 DASHATTN_DEC_PF_REQUIRE=1
    ABBIN=$(mktemp -d)
    ab() { el "harness $*"; BIN=$ABBIN OUT=$OUT/ab HENV_warm0="RING=1 WARM=0" HENV_tma0="RING=1 PFMB=0" bash scripts/microbench/ab_trace.sh "$@" | tee -a $OUT/log.txt; }
    RUNS=2 ab base=.dev-lead/base warm=.dev-lead/warm warm0=.dev-lead/warm tma=.dev-lead/tma tma0=.dev-lead/tma tmaE=.dev-lead/tmaE -- 131072 0.5,2,8 1
    RUNS=1 ab base=.dev-lead/base warm=.dev-lead/warm tma=.dev-lead/tma tmaE=.dev-lead/tmaE -- 131072 0.5,2,8 8
    RUNS=1 ab base=.dev-lead/base warm=.dev-lead/warm tma=.dev-lead/tma -- 1048576 0.5,8 1
    tests warm 200 -
else
    tests warm 80 DASHATTN_DEC_WARM=0 gpu_decode_matches gpu_decode_mergers
    tests tma 80 DASHATTN_DEC_PF_MB=0 gpu_decode_matches gpu_decode_mergers
    for l in warm tma; do
        el "memcheck $l (merger test)"
        timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 .dev-lead/$l/gpu_decode gpu_decode_mergers --test-threads=1 > $OUT/memcheck_$l.txt 2>&1
        echo "rc=$?" >> $OUT/memcheck_$l.txt; tail -3 $OUT/memcheck_$l.txt | tee -a $OUT/log.txt
    done
    el "racecheck warm (merger test)"
    timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 .dev-lead/warm/gpu_decode gpu_decode_mergers --test-threads=1 > $OUT/racecheck_warm.txt 2>&1
    echo "rc=$?" >> $OUT/racecheck_warm.txt; tail -3 $OUT/racecheck_warm.txt | tee -a $OUT/log.txt
    # bench L BATCH ENV: the library bench of .dev-lead/L at 128k
    bench() {
        local l=$1 b=$2 e=$3
        local f=$OUT/bench_${l}_b${b}_${e//[^A-Za-z0-9]/_}.txt
        el "bench $l batch $b / 128k, $e"
        env $e DASHATTN_LIBRARY=$PWD/.dev-lead/$l/libdashattn.so PYTHONUNBUFFERED=1 timeout 70 python3 scripts/bench_backward_decode.py --skip bwd --reps 10 \
            --dec-lens 131072 --batches $b --kscale 0.5,2,8 > $f 2>&1
        echo "rc=$?" >> $f; grep -E '^\||rc=|Error|error' $f | cut -c1-260 | tee -a $OUT/log.txt
    }
    bench warm 1 DASHATTN_DEC_WARM=1; bench warm 1 DASHATTN_DEC_WARM=0
    bench tma 1 DASHATTN_DEC_PF_MB=24; bench tma 1 DASHATTN_DEC_PF_MB=0
    bench tma 8 DASHATTN_DEC_PF_MB=24; bench tma 8 DASHATTN_DEC_PF_MB=0
fi
el done
