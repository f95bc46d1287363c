#!/usr/bin/env bash
# Runs the emulated kernel tests (tests/cuda_emu.rs) under valgrind's
# memcheck: every out-of-bounds read or write of a kernel, and every use of
# uninitialised memory, is an error. The slow whole-model test is skipped.
#
#   scripts/check-kernels-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
cargo test --release --test cuda_emu --no-run >/dev/null 2>&1
bin="$(ls -t target/release/deps/cuda_emu-* | grep -v '\.d$' | head -1)"
# The coroutine stacks of the emulation look like stack switches to valgrind.
exec valgrind --quiet --error-exitcode=9 --max-stackframe=8000000 "$bin" --test-threads=1 --skip training
