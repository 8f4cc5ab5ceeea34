#!/usr/bin/env bash
# CI compile check for the CUDA kernels, no GPU needed.
#  - installs nvcc 13.0 from PyPI wheels into a cache dir (reused when present),
#  - compiles every kernels/*.cu for sm_80 and sm_90a with -Xptxas -v,
#  - writes the resource report to target/ptxas-report.txt,
#  - fails on any compile error and on any spill (stack frame / spill stores) in an
#    attention kernel (every extern "C" kernel in kernels/ counts as one),
#  - compiles every kernels/*.cu through NVRTC too (the library's run-time fallback;
#    scripts/nvrtc-check.py), for the same archs.
# Env: CUDA_WHEEL_DIR (default ~/.cache/dashattn-nvcc), CUDA_HOME (use an existing
# toolkit instead), DASHATTN_CUDA_ARCHS (default "80,90a").
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${CUDA_WHEEL_DIR:-$HOME/.cache/dashattn-nvcc}"
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "${CUDA_HOME}/bin/nvcc" ]; then
    if [ ! -x "$DIR/nvidia/cu13/bin/nvcc" ]; then
        python3 -m pip install -q --target "$DIR" "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" \
            "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
            nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
    fi
    # (NVRTC in a folder of its own: pip --target will not add to an existing nvidia/)
    if ! ls "$DIR"/nvrtc/nvidia/cu13/lib/libnvrtc.so* > /dev/null 2>&1; then
        python3 -m pip install -q --target "$DIR/nvrtc" --no-deps "nvidia-cuda-nvrtc==13.0.*"
    fi
    export CUDA_HOME="$DIR/nvidia/cu13" NVRTC_DIR="$DIR/nvrtc/nvidia/cu13/lib"
fi
NVCC="$CUDA_HOME/bin/nvcc"
"$NVCC" --version | tail -2
ARCHS="${DASHATTN_CUDA_ARCHS:-80,90a}"
mkdir -p target/ptxas
REPORT=target/ptxas-report.txt
: > "$REPORT"
fail=0
for f in kernels/*.cu; do
    stem=$(basename "$f" .cu)
    gen=()
    for a in ${ARCHS//,/ }; do gen+=("-gencode=arch=compute_${a},code=sm_${a}"); done
    echo "== $f" | tee -a "$REPORT"
    if ! "$NVCC" -fatbin -O3 -std=c++17 "${gen[@]}" -Xptxas -v "$f" -o "target/ptxas/$stem.fatbin" >> "$REPORT" 2>&1; then
        echo "COMPILE FAILED: $f" | tee -a "$REPORT"; fail=1
    fi
done
# spills: ptxas prints "N bytes stack frame, N bytes spill stores, N bytes spill loads" after
# "Compiling entry function 'NAME' for 'sm_XX'"
awk '
/Compiling entry function/ { fn=$0; sub(/.*function .\047?/, "", fn); sub(/\047.*/, "", fn); arch=$NF }
/bytes stack frame/ {
    split($0, w, " "); st=w[1]+0; ss=0; sl=0
    for (i=1;i<=NF;i++) { if ($i=="spill" && $(i+1)=="stores,") ss=$(i-2)+0; if ($i=="spill" && $(i+1)=="loads") sl=$(i-2)+0 }
    if (ss>0 || sl>0) { printf "SPILL %s %s: %s\n", fn, arch, $0; bad=1 }
}
END { exit bad }' "$REPORT" || fail=1
grep -E "Compiling entry|registers" "$REPORT" | paste - - | sed -E "s/ptxas info *: //g; s/Compiling entry function//; s/Function properties for.*//" | awk '{print}' > target/ptxas-summary.txt || true
echo "report: $REPORT ($(grep -c 'Compiling entry' "$REPORT") kernel builds)"
NVRTC_LIB=$(ls "${NVRTC_DIR:-$CUDA_HOME/lib}"/libnvrtc.so* "$CUDA_HOME"/lib64/libnvrtc.so* \
    "$DIR"/nvrtc/nvidia/cu13/lib/libnvrtc.so* 2>/dev/null | grep -v -e builtins -e alt | head -1 || true)
if [ -n "$NVRTC_LIB" ]; then
    LD_LIBRARY_PATH="$(dirname "$NVRTC_LIB")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        python3 scripts/nvrtc-check.py "$NVRTC_LIB" "$ARCHS" | tee -a "$REPORT" || { echo "NVRTC compile FAILED"; fail=1; }
else
    echo "NVRTC check FAILED: no libnvrtc under $CUDA_HOME"; fail=1
fi
[ $fail = 0 ] && echo "ci-cuda-compile: OK (no errors, no spills, NVRTC compiles)" || echo "ci-cuda-compile: FAILED"
exit $fail
