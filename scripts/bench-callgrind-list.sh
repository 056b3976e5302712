#!/usr/bin/env bash
# scripts/bench-callgrind-list.sh BINARY PORT OUTFILE
#
# Instructions the server executes for 200 filtered list requests, under
# `valgrind --tool=callgrind` (repeatable where wall-clock seconds are not).
# Needs demo data in /tmp/cg-data first:
#   BINARY demo pms --data-dir /tmp/cg-data --no-serve --scale 0.1
# Each run serves a fresh copy of it. Instructions per request:
#   grep -h '^totals' OUTFILE* | awk '{s+=$2} END {print s/200}'
set -euo pipefail
BIN=$1; PORT=$2; OUT=$3
RUN=$(mktemp -d)
cp -r /tmp/cg-data/. "$RUN"
KEEL_SERVER__RATE_LIMITS=false KEEL_LOG__LEVEL=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT" "$BIN" demo pms --data-dir "$RUN" --port "$PORT" > "$RUN.log" 2>&1 &
VPID=$!
trap 'kill $VPID 2>/dev/null || true; rm -rf "$RUN" "$RUN.log"' EXIT
for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/health/live" && break; sleep 0.5; done
TOKEN=$(curl -s "http://127.0.0.1:$PORT/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"owner@org-001.demo.keel","password":"keel-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
URL="http://127.0.0.1:$PORT/api/v1/orgs/org-001/tasks?filter=status%20%3D%20%22todo%22&limit=50"
get() { for _ in $(seq 1 "$1"); do curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "$URL"; done; }
get 30
callgrind_control -i on $VPID > /dev/null
get 200
callgrind_control -i off $VPID > /dev/null
kill $VPID; wait $VPID 2>/dev/null || true
