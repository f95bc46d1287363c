#!/usr/bin/env bash
# A Python virtual environment with the Prometheus project's Python client
# (prometheus_client), whose OpenMetrics parser tests/metrics.rs checks the
# nodes' /metrics with: under target/, installed once from PyPI. Prints its
# python.
set -euo pipefail
cd "$(dirname "$0")/.."
version="0.21.1"
dir="${DTRAIN_PROMETHEUS_ENV:-$PWD/target/prometheus-client-$version}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
probe="import prometheus_client.openmetrics.parser"
if ! "$dir/venv/bin/python" -c "$probe" >/dev/null 2>&1; then
    echo "installing prometheus_client $version from PyPI into $dir (once)" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "prometheus_client==$version" >&2
fi
echo "$dir/venv/bin/python"
