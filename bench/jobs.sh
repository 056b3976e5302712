#!/usr/bin/env bash
# bench/jobs.sh — P5 in one run: Keel's job queue on SQLite and on PostgreSQL, then the peers
# (graphile-worker 0.17 batched and default, BullMQ 6) on the same PostgreSQL and Redis.
# Usage: bench/jobs.sh [postgres-url]   (default postgres://postgres@127.0.0.1:5432/postgres)
# Env: N (jobs per throughput run, default 100000), CONCURRENCY (default 10,50).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PG_URL="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
N="${N:-100000}"
CONCURRENCY="${CONCURRENCY:-10,50}"
cargo build --release -q -p keel
echo "## Keel, SQLite"
target/release/keel bench jobs --jobs "$N" --concurrency "$CONCURRENCY"
echo "## Keel, PostgreSQL"
target/release/keel bench jobs --jobs "$N" --concurrency "$CONCURRENCY" --database-url "$PG_URL"
echo "## Peers (JSON lines)"
PEERS_PG_URL="${PG_URL%/*}/keel_bench_peers" N="$N" CONCURRENCY="$CONCURRENCY" bench/peers/run.sh
