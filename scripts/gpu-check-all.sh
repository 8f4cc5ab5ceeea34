#!/usr/bin/env bash
# GPU verification of backward, decode, bindings and examples (the forward has
# scripts/gpu-check.sh). No cargo on the GPU machine: stage here, run there.
#   here:   CUDA_HOME=<nvcc 13.0> scripts/gpu-check-all.sh stage   # builds, copies into .dev-lead/
#   there:  bash scripts/gpu-check-all.sh run                     # (device tool, carry .dev-lead)
# Env for run: BENCH_ARGS (extra args of scripts/bench_backward_decode.py), SKIP_BENCH=1.
set -u -o pipefail
cd "$(dirname "$0")/.."
D=.dev-lead
if [ "${1:-}" = stage ]; then
    T=${CARGO_TARGET_DIR:-target}/release
    cargo build --release --lib --tests --examples || exit 1
    mkdir -p $D && rm -f $D/*
    for t in gpu_forward gpu_backward gpu_decode gpu_training; do cp "$(ls -t $T/deps/$t-* | grep -v '\.d$' | head -1)" $D/$t; done
    cp $T/libdashattn.so $T/examples/demo $D/
    gcc -std=c99 -O2 -Wall -Wextra -Werror examples/c/engine.c -Iinclude -L$D -ldashattn -ldl -lm -Wl,-rpath,'$ORIGIN' -o $D/engine || exit 1
    strip $D/* 2>/dev/null
    grep -q "/$D/" .git/info/exclude 2>/dev/null || echo "/$D/" >> .git/info/exclude
    ls -la $D; exit 0
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
rc=0
step() { echo "=== $1"; shift; "$@" || { echo "=== FAILED rc=$?"; rc=1; }; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "forward table + graph (fatbin)" bash -o pipefail -c "timeout 150 $D/gpu_forward --test-threads=1 --nocapture > $OUT/fwd.txt 2>&1; r=\$?; grep -E 'test result|failed cases' $OUT/fwd.txt; exit \$r"
step "backward table + determinism (fatbin)" bash -o pipefail -c "timeout 200 $D/gpu_backward --test-threads=1 --nocapture > $OUT/bwd.txt 2>&1; r=\$?; grep -E 'worst|test result|panicked' $OUT/bwd.txt; exit \$r"
step "decode table + graph replay + merge (fatbin)" bash -o pipefail -c "timeout 120 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; r=\$?; grep -E '^decode|worst|test result|panicked' $OUT/dec.txt; exit \$r"
step "training-style check through the C ABI (GPU vs CPU loss curves)" bash -o pipefail -c "timeout 100 $D/gpu_training --nocapture 2>&1 | grep -E 'loss curve|test result|panicked'"
step "backward + decode (NVRTC path)" bash -o pipefail -c "DASHATTN_FORCE_NVRTC=1 DASHATTN_TEST_CASES=6 timeout 200 $D/gpu_backward --test-threads=1 2>&1 | grep 'test result' && DASHATTN_FORCE_NVRTC=1 timeout 120 $D/gpu_decode --test-threads=1 --skip gpu_decode_one_million_tokens 2>&1 | grep 'test result'"
step "memcheck backward (3 cases) + decode (all but the 1M-token test)" bash -o pipefail -c "DASHATTN_TEST_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_backward --test-threads=1 2>&1 | tail -1 && timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode --test-threads=1 --skip gpu_decode_one_million_tokens 2>&1 | tail -1"
step "racecheck backward (1 case) + decode table + merge" bash -o pipefail -c "DASHATTN_TEST_CASES=1 timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_backward --test-threads=1 2>&1 | tail -1 && timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 $D/gpu_decode gpu_decode_matches gpu_merge --test-threads=1 2>&1 | tail -1"
step "python torch GPU tests" bash -o pipefail -c "DASHATTN_LIBRARY=$PWD/$D/libdashattn.so timeout 150 python3 -m pytest -q -rs bindings/python/tests/test_torch_gpu.py 2>&1 | tail -4"
step "C engine on the GPU" bash -o pipefail -c "timeout 60 $D/engine --check-every 64 2>&1 | tail -4"
step "demo" bash -o pipefail -c "timeout 60 $D/demo --len 4096 2>&1 | tail -5"
if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "bench backward + decode" bash -c "DASHATTN_LIBRARY=$PWD/$D/libdashattn.so PYTHONUNBUFFERED=1 timeout 300 python3 scripts/bench_backward_decode.py ${BENCH_ARGS:-} 2>&1 | tee $OUT/bench.txt | tail -45"
fi
echo "gpu-check-all rc=$rc"
exit $rc
