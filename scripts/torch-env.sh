#!/usr/bin/env bash
# A Python virtual environment with PyTorch for the benchmarks' anchors
# (gloo all-reduce, CPU training), under target/, installed once from PyPI
# (about 3 GB). Prints its python:
#
#   dtrain bench allreduce --python "$(scripts/torch-env.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DTRAIN_TORCH_ENV:-$PWD/target/torch-env}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ! "$dir/venv/bin/python" -c "import torch, torch.distributed, numpy" >/dev/null 2>&1; then
    echo "installing torch from PyPI into $dir (once, about 3 GB)" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check torch numpy >&2
fi
echo "$dir/venv/bin/python"
