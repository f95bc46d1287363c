#!/usr/bin/env bash
# Everything a session with a GPU should run, in order, each command's
# output kept in OUT_DIR (one file per step, plus the JSON lines of the
# benchmarks), so that a short loan of a GPU machine is not spent typing:
#
#   scripts/gpu-report.sh OUT_DIR [DTRAIN_BINARY]
#
# The binary defaults to target/release/dtrain (built on another machine
# and carried over: the GPU machines have no Rust toolchain). A step that
# fails is recorded and the next one runs; the exit status says whether all
# passed. PyTorch on the machine is the anchor of `bench train`; without
# it those steps record the error and go on. Copy the numbers into
# docs/BENCHMARKS.md with the date and the device.
set -uo pipefail
out="${1:?usage: scripts/gpu-report.sh OUT_DIR [DTRAIN_BINARY]}"
bin="${2:-target/release/dtrain}"
mkdir -p "$out"
failed=0
step() {
    local name="$1"
    shift
    echo "== $name: $*" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    if "$@" >"$out/$name.txt" 2>&1; then
        echo "   ok ($((SECONDS - t0)) s)" | tee -a "$out/summary.txt"
    else
        echo "   FAILED ($((SECONDS - t0)) s): tail of $out/$name.txt:" | tee -a "$out/summary.txt"
        tail -n 15 "$out/$name.txt" | tee -a "$out/summary.txt"
        failed=1
    fi
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; "$bin" --version; } >"$out/machine.txt" 2>&1
step check-kernels "$bin" check kernels
step check-gpu "$bin" check gpu
step bench-kernels-bf16 "$bin" bench kernels --device cuda
step bench-kernels-fp32 "$bin" bench kernels --device cuda --precision fp32
step bench-train-bf16 "$bin" bench train --device cuda --model 124m --batch 8 --seq 1024 --steps 10 --json "$out/bench.jsonl"
step bench-train-fp32 "$bin" bench train --device cuda --model 124m --batch 8 --seq 1024 --steps 10 --precision fp32 --json "$out/bench.jsonl"
step bench-train-tf32 "$bin" bench train --device cuda --model 124m --batch 8 --seq 1024 --steps 10 --precision fp32 --gemm-math tf32 --no-torch --json "$out/bench.jsonl"
step torch-compile-bf16 python3 benches/anchors/torch_gpu_train.py --preset 124m --batch 8 --seq 1024 --precision bf16 --compile
exit $failed
