#!/usr/bin/env bash
# A Python virtual environment with the Bittensor SDK the interop tests talk
# to (bittensor 10.5.0: the newest with Axon/Dendrite/Synapse), under
# target/, installed once from PyPI. Prints the environment's python.
#
#   scripts/bittensor-env.sh          # install if missing, print .../bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DTRAIN_BITTENSOR_ENV:-$PWD/target/bittensor-10.5.0}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ! "$dir/venv/bin/python" -c "import bittensor, bittensor_wallet" >/dev/null 2>&1; then
    echo "installing bittensor 10.5.0 from PyPI into $dir (once)" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "bittensor==10.5.0" >&2
fi
echo "$dir/venv/bin/python"
