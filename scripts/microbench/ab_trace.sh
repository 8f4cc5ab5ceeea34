#!/usr/bin/env bash
# A/B of kernels/decode.cu versions in the trace harness (decode_trace.cu), for the GPU
# machine (it has nvcc; no cargo needed). Each version is a directory holding
# kernels/decode.cu and kernels/common.cuh (a source tree, or a copy staged here, e.g.
# `mkdir -p .dev-lead/base/kernels && git show main:kernels/decode.cu > ...`). The harness
# is this tree's scripts/microbench/decode_trace.cu, built against each version's kernels;
# the versions then run in turns (a b a b ...), so that drift in the machine shows.
#   bash scripts/microbench/ab_trace.sh base=.dev-lead/base new=. -- 131072 0.5,2,8 1
# Env: RUNS (turns, default 2), HENV (environment for every harness run, default RING=1),
#      HENV_<label> (instead of HENV for that label: `new=. new0=.` with HENV_new0="RING=1 WARM=0"),
#      BIN (keep the built harnesses in $BIN/<label>/ and reuse them in later calls; labels
#      of one directory share one build),
#      OUT (full outputs: $OUT/ab_<label>.txt; default /tmp/ab).
set -u -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
labels=() dirs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    [ -f "${1#*=}/kernels/decode.cu" ] || { echo "ab_trace: no ${1#*=}/kernels/decode.cu" >&2; exit 2; }
    labels+=("${1%%=*}"); dirs+=("$(cd "${1#*=}" && pwd)"); shift
done
[ "${1:-}" = -- ] && shift
[ ${#labels[@]} -ge 1 ] || { echo "usage: ab_trace.sh label=dir ... -- harness args" >&2; exit 2; }
OUT=${OUT:-/tmp/ab}; mkdir -p "$OUT"
W=${BIN:-$(mktemp -d)}
nvcc_=$(command -v nvcc) || { echo "ab_trace: no nvcc" >&2; exit 2; }
lib="$(dirname "$(dirname "$nvcc_")")/lib"
same=()  # "label earlier-label" for labels whose directory an earlier label builds
for i in "${!labels[@]}"; do
    l=${labels[$i]}
    [ -x "$W/$l/tr" ] && continue
    for ((j = 0; j < i; ++j)); do [ "${dirs[$j]}" = "${dirs[$i]}" ] && { same+=("$l ${labels[$j]}"); continue 2; }; done
    mkdir -p "$W/$l/kernels" "$W/$l/scripts/microbench"
    cp "${dirs[$i]}"/kernels/decode.cu "${dirs[$i]}"/kernels/common.cuh "$W/$l/kernels/"
    cp "$here/decode_trace.cu" "$W/$l/scripts/microbench/"
    ( nvcc -O3 -std=c++17 -DDASH_TRACE -gencode arch=compute_90a,code=sm_90a "$W/$l/scripts/microbench/decode_trace.cu" \
        -o "$W/$l/tr" -L"$lib" > "$W/$l/nvcc.txt" 2>&1 || { echo "ab_trace: nvcc failed for $l"; cat "$W/$l/nvcc.txt"; } ) &
done
wait
for e in "${same[@]}"; do mkdir -p "$W/${e% *}" && cp "$W/${e#* }/tr" "$W/${e% *}/tr" 2>/dev/null; done
for ((k = 1; k <= ${RUNS:-2}; ++k)); do
    for l in "${labels[@]}"; do
        [ -x "$W/$l/tr" ] || continue
        echo "##### $l (turn $k): $*" | tee -a "$OUT/ab_$l.txt"
        e="HENV_$l"
        env ${!e:-${HENV:-RING=1}} timeout 120 "$W/$l/tr" "$@" > "$W/run.txt" 2>&1
        cat "$W/run.txt" >> "$OUT/ab_$l.txt"
        grep -E '^## kscale|^per layer' "$W/run.txt"
    done
done
[ -n "${BIN:-}" ] || rm -rf "$W"
