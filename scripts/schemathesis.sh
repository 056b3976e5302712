#!/usr/bin/env bash
# scripts/schemathesis.sh — property-based API fuzzing (S7, X3): runs schemathesis (PyPI,
# installed into target/venv-st) against the OpenAPI document of example apps served by
# `keel demo` on embedded SQLite, signed in as a demo org's owner. It fails on any 5xx and
# on any response that does not match the document. Rate limits are off for the run (the
# fuzzer sends hundreds of requests a second from one address); the routes that end the
# session (logout, logout-all, password) are left out so the run keeps its token.
#
# Usage: scripts/schemathesis.sh [APP...]     (default: pms schedules)
#   KEEL_ST_EXAMPLES   examples per operation and phase (default 25)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/target/venv-st"
VERSION=4.32.5
if [[ ! -x "$VENV/bin/st" ]] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi
cargo build --quiet -p keel
APPS=("$@")
[[ ${#APPS[@]} -gt 0 ]] || APPS=(pms schedules)
EXAMPLES="${KEEL_ST_EXAMPLES:-25}"
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

for app in "${APPS[@]}"; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    KEEL_SERVER__RATE_LIMITS=false RUST_LOG=error target/debug/keel demo "$app" --scale 0.01 --port "$port" \
        --data-dir "$WORK/$app" >"$WORK/$app.log" 2>&1 &
    SERVER=$!
    base="http://127.0.0.1:$port"
    for _ in $(seq 1 600); do
        curl -sf "$base/health/ready" >/dev/null 2>&1 && break
        kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/$app.log"; exit 1; }
        sleep 0.2
    done
    token=$(curl -sf -X POST -H 'content-type: application/json' \
        -d '{"email":"owner@org-001.demo.keel","password":"keel-demo-password"}' \
        "$base/api/v1/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    echo "schemathesis: $app on $base"
    # The demo's first org, so org routes reach their handlers instead of 404.
    printf '[parameters]\n"path.org" = "org-001"\n' >"$WORK/schemathesis.toml"
    "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$base/api/v1/openapi.json" \
        -H "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --exclude-path-regex '(/auth/(logout|logout-all|password)|/events)$' \
        --max-examples "$EXAMPLES" --seed 1 --workers 2 \
        --phases examples,fuzzing \
        --no-color \
        --report junit --report-dir "$ROOT/target/schemathesis-$app" \
        >"$WORK/$app.st" 2>&1 || { cat "$WORK/$app.st"; echo "schemathesis: $app FAILED"; exit 1; }
    tail -n 4 "$WORK/$app.st"
    kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    SERVER=""
done
