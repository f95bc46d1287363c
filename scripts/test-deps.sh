#!/usr/bin/env bash
# What the tests need beyond cargo, installed only where missing:
# iproute2's `ip` for the test hosts (tests/testnet.rs, src/testnet).
# Without root or the package registry the test hosts' tests say SKIPPED.
set -euo pipefail
if ! command -v ip >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing iproute2 for the test hosts" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q iproute2 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }
    else
        echo "iproute2 (ip) is missing and cannot be installed here: the test hosts' tests will say SKIPPED" >&2
    fi
fi
