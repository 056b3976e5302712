#!/usr/bin/env bash
# bench/peers/run.sh — run the peer job-queue benchmarks (graphile-worker in
# batched and default mode, BullMQ) one after another and print one JSON line
# per measurement on stdout (progress goes to stderr).
#
# Env (all optional):
#   PEERS_PG_URL     default postgres://postgres@127.0.0.1:5432/keel_bench_peers
#   PEERS_REDIS_URL  default redis://127.0.0.1:6379/5
#   N                jobs per throughput run (default 100000)
#   CONCURRENCY      comma list of worker concurrencies (default 10,50)
#   PEERS            which peers, space-separated
#                    (default "graphile-batched graphile-default bullmq")
#   STEP_TIMEOUT_S   hard limit for each peer's node process (default 900)
#   plus the knobs read by graphile.js / bullmq.js (see README.md).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

export PEERS_PG_URL="${PEERS_PG_URL:-postgres://postgres@127.0.0.1:5432/keel_bench_peers}"
export PEERS_REDIS_URL="${PEERS_REDIS_URL:-redis://127.0.0.1:6379/5}"
export N="${N:-100000}"
CONCURRENCY="${CONCURRENCY:-10,50}"
PEERS="${PEERS:-graphile-batched graphile-default bullmq}"
STEP_TIMEOUT_S="${STEP_TIMEOUT_S:-900}"
# the scripts' own watchdog fires first, so they can still print an error line
export SCRIPT_TIMEOUT_S="${SCRIPT_TIMEOUT_S:-$((STEP_TIMEOUT_S - 30))}"

say() { echo "[run.sh] $*" >&2; }

if [[ ! -d node_modules ]]; then
    say "installing pinned dependencies (npm ci)"
    # The lock file has no entries for msgpackr-extract's prebuilt binaries for
    # other platforms (the registry this was locked against has only Linux ones),
    # which makes `npm ci` refuse; `npm install --no-save` then installs the same
    # locked versions and leaves package-lock.json untouched.
    if ! timeout 600 npm ci --no-audit --no-fund >&2; then
        say "npm ci refused the lock file; installing the locked versions with npm install --no-save"
        timeout 600 npm install --no-save --no-audit --no-fund >&2 || { say "npm install failed"; exit 1; }
    fi
fi

# Create the dedicated database if it is missing (connect to the server's
# `postgres` database with the same credentials to do so).
db="${PEERS_PG_URL##*/}"
db="${db%%\?*}"
admin_url="${PEERS_PG_URL%/*}/postgres"
if ! timeout 30 psql "$admin_url" -Atc "select 1 from pg_database where datname = '$db'" | grep -q 1; then
    say "creating database $db"
    timeout 30 psql "$admin_url" -c "create database \"$db\"" >&2 || { say "cannot create database $db"; exit 1; }
fi
if command -v redis-cli >/dev/null; then
    timeout 10 redis-cli -u "$PEERS_REDIS_URL" ping >/dev/null || { say "Redis at $PEERS_REDIS_URL does not answer"; exit 1; }
fi

status=0
step() {
    say "node $*  (loadavg: $(cut -d' ' -f1-3 /proc/loadavg))"
    timeout --kill-after=10 "$STEP_TIMEOUT_S" node "$@"
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        say "FAILED (exit $rc): node $*"
        status=1
    fi
}

for peer in $PEERS; do
    case "$peer" in
        # One process per run: graphile-worker caches what it migrated per process, and each
        # run starts from a dropped schema.
        graphile-batched | graphile-default)
            mode="${peer#graphile-}"
            for conc in ${CONCURRENCY//,/ }; do
                step graphile.js --mode "$mode" --concurrency "$conc"
            done
            step graphile.js --mode "$mode" --no-throughput --pickup
            ;;
        bullmq)           step bullmq.js --concurrency "$CONCURRENCY" --pickup ;;
        *) say "unknown peer $peer"; status=1 ;;
    esac
done
exit $status
