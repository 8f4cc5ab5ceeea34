#!/usr/bin/env bash
# Runs on the GPU machine (no cargo there): the prebuilt GPU test binary, the NVRTC path,
# compute-sanitizer memcheck on small cases, and (if present) the forward benchmark.
# Build here first:  CUDA_HOME=... cargo build --release --tests --examples
#                    scripts/gpu-check.sh stage   (copies the binaries into .dev/)
# then on the device: bash scripts/gpu-check.sh run
set -u -o pipefail
if [ "${1:-}" = stage ]; then
    mkdir -p .dev && rm -f .dev/gpu_forward .dev/bench_forward
    cp "$(ls -t target/release/deps/gpu_forward-* | grep -v '\.d$' | head -1)" .dev/gpu_forward
    [ -f target/release/examples/bench_forward ] && cp target/release/examples/bench_forward .dev/
    [ -f target/release/libdashattn.so ] && cp target/release/libdashattn.so .dev/
    strip .dev/gpu_forward .dev/bench_forward 2>/dev/null
    ls -la .dev; exit 0
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DASHATTN_CACHE_DIR=/tmp/dashattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
rc=0
echo "== table + graph tests (fatbin)"
.dev/gpu_forward --skip nvrtc_compiles --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_fatbin.txt" || rc=1
if [ "${SKIP_NVRTC:-0}" != 1 ]; then
    echo "== table test (NVRTC path)"
    DASHATTN_FORCE_NVRTC=1 .dev/gpu_forward gpu_forward_matches --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_nvrtc.txt" || rc=1
fi
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
    echo "== compute-sanitizer memcheck (small cases)"
    DASHATTN_TEST_FILTER="${SANITIZER_FILTER:-unaligned}" compute-sanitizer --tool memcheck --error-exitcode 9 \
        .dev/gpu_forward gpu_forward_matches --test-threads=1 --nocapture 2>&1 | tail -25 | tee "$OUT/memcheck.txt" || rc=1
    DASHATTN_TEST_FILTER="Lq>Lk" compute-sanitizer --tool memcheck --error-exitcode 9 \
        .dev/gpu_forward gpu_forward_matches --test-threads=1 --nocapture 2>&1 | tail -8 | tee -a "$OUT/memcheck.txt" || rc=1
fi
if [ -x .dev/bench_forward ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
    echo "== benchmark"
    PYTHONUNBUFFERED=1 python3 scripts/bench_forward.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt" || rc=1
fi
if [ -x .dev/bench_forward ] && [ "${NCU:-0}" = 1 ]; then
    echo "== ncu: coarse + fine kernels, one forward (L=${NCU_LEN:-16384}, kscale ${NCU_KSCALE:-1})"
    ncu --kernel-name regex:"dash_(coarse|fine)" --launch-count 2 --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        .dev/bench_forward --lens "${NCU_LEN:-16384}" --kscale "${NCU_KSCALE:-1}" --reps 1 > "$OUT/ncu.txt" 2>&1 || rc=1
    grep -E "dash_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|Executed Ipc A|L1/TEX Hit|Stall|Theoretical Occ|Block Limit|Mem Pipes Busy|Shared Memory" "$OUT/ncu.txt" | head -70
fi
echo "gpu-check rc=$rc"
exit $rc
