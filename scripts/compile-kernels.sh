#!/usr/bin/env bash
# Compiles every kernels/*.cu to a cubin for each GPU architecture the
# project targets (sm_80: A100, sm_90: H100) with nvcc from PyPI, and keeps
# ptxas's register and spill report:
#
#   scripts/compile-kernels.sh OUT_DIR
#
# writes OUT_DIR/NAME.sm_XX.cubin and OUT_DIR/ptxas.txt. Fails on the first
# kernel that does not compile. No GPU is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/compile-kernels.sh OUT_DIR}"
mkdir -p "$out"
root="$(scripts/cuda-toolchain.sh)"
: >"$out/ptxas.txt"
for src in kernels/*.cu; do
    name="$(basename "$src" .cu)"
    for arch in 80 90; do
        echo "== $name sm_$arch" >>"$out/ptxas.txt"
        "$root/bin/nvcc" -cubin -arch="sm_$arch" -O3 -std=c++17 -Xptxas -v \
            -o "$out/$name.sm_$arch.cubin" "$src" >>"$out/ptxas.txt" 2>&1 || {
            cat "$out/ptxas.txt" >&2
            echo "compile-kernels: $src failed for sm_$arch" >&2
            exit 1
        }
    done
done
echo "compiled $(ls "$out"/*.cubin | wc -l) cubins; report in $out/ptxas.txt" >&2
