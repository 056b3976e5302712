#!/usr/bin/env bash
# scripts/test-tools.sh — the real peers some tests talk to, installed once under target/:
# - a Python venv with aiosmtpd (an SMTP sink for the email handler's tests);
# - s3rver (npm), an S3-compatible server that keeps objects on disk (the file tests on S3).
# - promtool (Debian's prometheus package), which checks /metrics and the exported alert rules.
# - oidc-provider (npm, OpenID Certified), the OpenID provider of the sign-in tests, run by
#   scripts/oidc-test-provider.mjs.
# - Debian's chromium and chromium-driver, and playwright-core (npm; it drives the installed
#   Chromium and never downloads a browser), for the console's browser suite
#   (scripts/console-test.mjs).
# Prints six lines: the venv's python (tests read KEEL_TEST_PYTHON), the s3rver
# program (KEEL_TEST_S3RVER), promtool (KEEL_TEST_PROMTOOL), the folder oidc-provider is
# installed in (KEEL_TEST_OIDC_MODULES), the folder playwright-core is installed in
# (KEEL_TEST_PLAYWRIGHT_MODULES) and Chromium (KEEL_TEST_CHROMIUM).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/target/venv-test"
if ! "$VENV/bin/python" -c "import aiosmtpd" >/dev/null 2>&1; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian splits venv out of python3; we are root in CI.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check aiosmtpd >&2
fi
S3RVER_DIR="$ROOT/target/s3rver"
S3RVER="$S3RVER_DIR/node_modules/.bin/s3rver"
if [ ! -x "$S3RVER" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
    mkdir -p "$S3RVER_DIR"
    npm install --prefix "$S3RVER_DIR" --no-audit --no-fund --loglevel=error s3rver@3.7.1 >&2
fi
OIDC_DIR="$ROOT/target/oidc-provider"
if [ ! -f "$OIDC_DIR/node_modules/oidc-provider/package.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
    mkdir -p "$OIDC_DIR"
    npm install --prefix "$OIDC_DIR" --no-audit --no-fund --loglevel=error oidc-provider@9.13.3 >&2
fi
BROWSER_DIR="$ROOT/target/browser-test"
if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
    mkdir -p "$BROWSER_DIR"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$BROWSER_DIR" --no-audit --no-fund --loglevel=error playwright-core@1.65.2 >&2
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
    # The package's service is not wanted: only its promtool.
    (command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus >/dev/null 2>&1) || true
fi
echo "$VENV/bin/python"
echo "$S3RVER"
command -v promtool
echo "$OIDC_DIR"
echo "$BROWSER_DIR"
command -v chromium
