#!/usr/bin/env bash
# Make sure a headless Chromium is available for the browser test of the HTML report
# (tests/test_report_browser.py). Installs Debian's `chromium` package when it is missing.
#
# Never fails the build: when Chromium cannot be installed (not root, no apt-get, no network),
# it says so and exits 0, and the browser test skips itself.
set -u

if command -v chromium >/dev/null 2>&1; then
    echo "ensure_chromium: $(chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; cannot install chromium (the browser test will skip)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: not root; cannot install chromium (the browser test will skip)." \
         "As root run: apt-get install -y --no-install-recommends chromium"
    exit 0
fi

LOG="${TMPDIR:-/tmp}/ensure_chromium.log"
echo "ensure_chromium: installing chromium with apt-get (a few minutes the first time)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >"$LOG" 2>&1; then
    # The package lists may be missing or stale: refresh them once and try again.
    apt-get update >>"$LOG" 2>&1
    if ! apt-get install -y --no-install-recommends chromium >>"$LOG" 2>&1; then
        echo "ensure_chromium: could not install chromium (see $LOG);" \
             "the browser test will skip"
        exit 0
    fi
fi
echo "ensure_chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
exit 0
