#!/usr/bin/env bash
# A Python virtual environment with a Bittensor SDK the interop tests talk
# to, under target/, installed once from PyPI. Prints its python.
#
#   scripts/bittensor-env.sh          # bittensor 10.5.0: Axon, Dendrite, Synapse
#   scripts/bittensor-env.sh 11.3.0   # bittensor 11.x: http_auth (btauth/1)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-10.5.0}"
case "$version" in
    10.5.0) probe="import bittensor, bittensor_wallet" ;;
    11.3.0) probe="import bittensor.http_auth" ;;
    *) echo "bittensor-env.sh: versions 10.5.0 and 11.3.0 are pinned" >&2; exit 2 ;;
esac
dir="${DTRAIN_BITTENSOR_ENV:-$PWD/target/bittensor-$version}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ! "$dir/venv/bin/python" -c "$probe" >/dev/null 2>&1; then
    echo "installing bittensor $version from PyPI into $dir (once)" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "bittensor==$version" >&2
fi
echo "$dir/venv/bin/python"
