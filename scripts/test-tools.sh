#!/usr/bin/env bash
# scripts/test-tools.sh — the real peers some tests talk to, installed once under target/:
# a Python venv with aiosmtpd (an SMTP sink for the email handler's tests).
# Prints the venv's python; tests read it from KEEL_TEST_PYTHON.
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
echo "$VENV/bin/python"
