#!/usr/bin/env bash
# Tests the C++, Go and Julia bindings against the release library.
# Assumes `cargo build --release` has been run (target/release/libdashattn.so) and that Go
# (Debian golang-go, 1.19+) is installed. No network access is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f target/release/libdashattn.so ]; then
    echo "target/release/libdashattn.so is missing: run 'cargo build --release' first" >&2
    exit 1
fi

echo "=== C++ wrapper: make -C bindings/cpp test"
make -C bindings/cpp test

echo "=== Go binding: go test ./..."
(cd bindings/go && GOFLAGS=-mod=mod GOTOOLCHAIN=local GOPROXY=off go test -count=1 ./...)

echo "=== Julia binding: ccall signatures against include/dashattn.h"
python3 bindings/julia/check_signatures.py
python3 bindings/julia/check_signatures.py --self-test

echo "=== bindings: all passed"
