#!/usr/bin/env bash
# Runs every test of the project on a fresh machine (Rust toolchain, gcc, Python 3.11):
# installs what it needs (numpy, pytest, Go from Debian, the CUDA 13 compiler wheels for the
# kernel compile check), then Rust tests, C/C++/Go/Julia/Python binding tests, examples.
# Set DASHATTN_SKIP_CUDA_COMPILE=1 to skip the (large) CUDA compiler download.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
passed=0
failed=0
failures=()

step() {
    local name=$1
    shift
    echo
    echo "=== $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "=== FAILED: $name"
    fi
}

install_python_deps() {
    python3 -c 'import numpy, pytest' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check numpy pytest
}

install_go() {
    command -v go >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null) || return 1
    else
        (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null) || return 1
    fi
}

step "cargo build --release (library, examples)" cargo build --release --all-targets
step "cargo test --release (CPU backend, C ABI, header drift, fuzz; GPU tests skip without a GPU)" cargo test --release
step "demo (CPU fallback here)" cargo run --release --quiet --example demo -- --len 512
[ -f tests/c/Makefile ] && step "C API test (C99) and header as C++17" make -s -C tests/c test
[ -f examples/c/Makefile ] && step "C engine example" make -s -C examples/c run
[ -f docs/examples/Makefile ] && step "docs C example" make -s -C docs/examples run
[ -f bindings/cpp/Makefile ] && step "C++ wrapper test" make -s -C bindings/cpp test
if [ -d bindings/go ]; then
    step "install Go (Debian golang-go)" install_go
    step "Go binding: go test" bash -c "cd bindings/go && GOFLAGS=-mod=mod GOTOOLCHAIN=local go test ./..."
fi
[ -f bindings/julia/check_signatures.py ] && step "Julia binding: ccall signatures against the header" python3 bindings/julia/check_signatures.py
if [ -d bindings/python/tests ]; then
    step "install numpy, pytest" install_python_deps
    step "Python binding: pytest" python3 -m pytest -q bindings/python/tests
fi
if [ -f scripts/ci-cuda-compile.sh ] && [ "${DASHATTN_SKIP_CUDA_COMPILE:-0}" != 1 ]; then
    step "CUDA kernels compile for sm_80 and sm_90a (nvcc, no spills; NVRTC)" bash scripts/ci-cuda-compile.sh
fi

echo
for f in "${failures[@]:-}"; do [ -n "$f" ] && echo "failed step: $f"; done
echo "steps: $passed passed, $failed failed"
[ "$failed" = 0 ]
