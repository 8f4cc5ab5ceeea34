#!/usr/bin/env bash
# Regenerates include/dashattn.h from src/ffi (cbindgen runs in build.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
out=$(ls -t target/debug/build/dashattn-*/out/dashattn.h | head -n 1)
cp "$out" include/dashattn.h
echo "include/dashattn.h updated from $out"
