#!/usr/bin/env bash
# Installs PyTorch + transformers (about 3 GB, once) and runs the checkpoint
# tests that need them: a dtrain checkpoint must load in transformers with
# matching logits. Optionally regenerates the PyTorch fixtures first.
#   scripts/check_hf_interop.sh [--regenerate-fixtures]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import torch, transformers, safetensors' 2>/dev/null || python3 -m pip install --quiet torch transformers safetensors
if [ "${1:-}" = "--regenerate-fixtures" ]; then python3 tests/fixtures/make_gpt2_fixtures.py >/dev/null; fi
cargo test --release --test checkpoint --test parity_torch -- --nocapture
