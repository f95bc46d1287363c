#!/usr/bin/env bash
# Installs the CUDA compiler from PyPI (nvcc, ptxas, NVRTC and headers of
# CUDA 13.0, the version the project's GPU machines run) into a virtual
# environment under target/, once, and prints the toolkit's root: nvcc is
# ROOT/bin/nvcc, NVRTC ROOT/lib/libnvrtc.so.13. No GPU is needed.
#
#   scripts/cuda-toolchain.sh            # install if missing, print ROOT
#
# Every package is pinned to 13.0: unpinned, pip pulls a newer NVVM whose
# PTX the 13.0 ptxas refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DTRAIN_CUDA_TOOLCHAIN:-$PWD/target/cuda-toolchain}"
root="$dir/venv/lib/python3*/site-packages/nvidia/cu13"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ! ls $root/bin/nvcc >/dev/null 2>&1; then
    echo "installing the CUDA 13.0 compiler from PyPI into $dir (once)" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
        "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" >&2
fi
echo $root
