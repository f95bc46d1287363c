#!/usr/bin/env bash
# Debian's chromium, for the dashboard's test in a real headless browser
# (tests/dashboard.rs), installed from the package registry where missing.
# Prints the browser's path; fails (the test then says SKIPPED) where it
# cannot be installed (not root, no apt-get).
set -euo pipefail
find_browser() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
browser="$(find_browser)"
if [ -z "$browser" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium is missing and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
    exec 9>/tmp/dtrain-chromium-install.lock
    flock 9
    browser="$(find_browser)"
    if [ -z "$browser" ]; then
        echo "installing chromium (Debian's package) for the dashboard's test" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
        browser="$(find_browser)"
    fi
fi
[ -n "$browser" ] || { echo "chromium did not install" >&2; exit 1; }
echo "$browser"
