#!/usr/bin/env bash
# scripts/check-openapi.sh — validates the OpenAPI document of every example app with a
# standard validator (openapi-spec-validator from PyPI, installed into target/venv-openapi).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/target/venv-openapi"
if [[ ! -x "$VENV/bin/openapi-spec-validator" ]]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian splits venv out of python3; we are root in CI.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check openapi-spec-validator
fi
cargo build --quiet -p keel
for spec in examples/*/keel.toml; do
    out="target/openapi-$(basename "$(dirname "$spec")").json"
    target/debug/keel openapi "$spec" > "$out"
    "$VENV/bin/openapi-spec-validator" "$out" >/dev/null
    echo "openapi: $spec: valid"
done
