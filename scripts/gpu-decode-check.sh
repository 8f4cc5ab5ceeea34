#!/usr/bin/env bash
# GPU check of the decode path (no cargo on the GPU machine: stage here, run there).
#   here:   CUDA_HOME=<nvcc 13.0> CARGO_TARGET_DIR=... scripts/gpu-decode-check.sh stage <dir>
#   there:  bash <dir>/gpu-decode-check.sh run     (device tool, carrying <dir>)
# Env for run: BENCH_ARGS / BENCH2_ARGS (two bench_backward_decode.py runs), SKIP_BENCH=1, SKIP_SAN=1, SKIP_V1=1, SKIP_NVRTC=1.
set -u -o pipefail
if [ "${1:-}" = stage ]; then
    cd "$(dirname "$0")/.."
    D=${2:?staging dir}; T=${CARGO_TARGET_DIR:-target}/release
    cargo build --release --lib --tests || exit 1
    mkdir -p "$D" && rm -rf "$D"/*
    cp "$(ls -t $T/deps/gpu_decode-* | grep -v '\.d$' | head -1)" "$D/gpu_decode"
    mkdir -p "$D/scripts" && cp scripts/bench_backward_decode.py "$D/scripts/"
    cp $T/libdashattn.so scripts/gpu-decode-check.sh scripts/gpu-decode-pdl-check.sh "$D/"
    mkdir -p "$D/bindings" && cp -r bindings/python "$D/bindings/" && rm -rf "$D"/bindings/python/**/__pycache__
    strip "$D/gpu_decode" "$D/libdashattn.so"
    ls -la "$D"; exit 0
fi
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
rc=0
step() { echo "=== $1 ($(date +%T))"; shift; "$@" || { echo "=== FAILED rc=$?"; rc=1; }; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step "decode tests (fatbin, v2)" bash -c "timeout 240 $D/gpu_decode --test-threads=1 --nocapture > $OUT/dec.txt 2>&1; r=\$?; grep -E '^decode|worst|test result|panicked|FAILED' $OUT/dec.txt; exit \$r"
[ "${SKIP_V1:-0}" = 1 ] || step "decode table, v1 forced" bash -c "DASHATTN_DECODE_V1=1 timeout 120 $D/gpu_decode gpu_decode_matches --test-threads=1 --nocapture 2>&1 | grep -E 'worst|test result|panicked'"
[ "${SKIP_NVRTC:-0}" = 1 ] || step "decode table, NVRTC" bash -c "DASHATTN_FORCE_NVRTC=1 timeout 120 $D/gpu_decode gpu_decode_matches --test-threads=1 2>&1 | grep -E 'test result|panicked'"
if [ "${SKIP_SAN:-0}" != 1 ]; then
step "memcheck decode table + batch 512" bash -c "timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 $D/gpu_decode gpu_decode_ma gpu_decode_b --test-threads=1 2>&1 | tail -2"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
step "bench decode" bash -c "PYTHONPATH=$D/bindings/python DASHATTN_LIBRARY=$D/libdashattn.so PYTHONUNBUFFERED=1 timeout 330 python3 $D/scripts/bench_backward_decode.py --skip bwd ${BENCH_ARGS:-} 2>&1 | tee $OUT/bench.txt"
fi
if [ -n "${BENCH2_ARGS:-}" ]; then
step "bench decode (2)" bash -c "PYTHONPATH=$D/bindings/python DASHATTN_LIBRARY=$D/libdashattn.so PYTHONUNBUFFERED=1 timeout 200 python3 $D/scripts/bench_backward_decode.py --skip bwd ${BENCH2_ARGS} 2>&1 | tee $OUT/bench2.txt"
fi
echo "gpu-decode-check rc=$rc"
exit $rc
