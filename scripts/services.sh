#!/usr/bin/env bash
# scripts/services.sh — provide PostgreSQL and Redis servers for Keel's tests.
#
# Usage:
#   scripts/services.sh up      # find or start servers, print `export` lines
#   scripts/services.sh down    # stop the throwaway servers `up` started
#   source scripts/services.sh up   # same as `up`, and export into this shell
#
# `up` picks, for each service, the first of:
#   1. the URL already in the environment (KEEL_TEST_PG_URL / KEEL_TEST_REDIS_URL)
#      if it answers;
#   2. the machine's own server on the default port (127.0.0.1:5432 with trust
#      auth as user postgres / 127.0.0.1:6379) if it answers;
#   3. a THROWAWAY server on a free port in a temp dir under /tmp, installing
#      the server package with apt-get first if it is missing.
# It writes `export KEEL_TEST_PG_URL=... KEEL_TEST_REDIS_URL=...` lines to
# $KEEL_SERVICES_ENV (default target/services.env) and prints them on stdout.
# All progress messages go to stderr, so `eval "$(scripts/services.sh up)"` works.
#
# `down` stops only the throwaway servers recorded in the state file
# ($KEEL_SERVICES_STATE, default target/services.state) and removes their temp
# dirs; the machine's own services are never touched. `down` is idempotent.
#
# Environment knobs:
#   KEEL_SERVICES_FORCE_THROWAWAY=1  skip steps 1 and 2 (always start throwaways)
#   KEEL_SERVICES_ENV                where to write the export lines
#   KEEL_SERVICES_STATE              where `up` records what `down` must stop
#   KEEL_SERVICES_TMPDIR             parent dir for throwaway data (default /tmp;
#                                    must be reachable by the postgres user)
#
# One checkout runs one suite at a time: `up` first cleans up throwaways left
# behind by an earlier run that died without calling `down` (e.g. kill -9).

# --- sourced mode -----------------------------------------------------------
# When sourced, run the real work in a child bash (so `set -euo pipefail` and
# `exit` do not leak into the caller's shell) and eval the export lines it prints.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    if [[ $# -eq 0 ]]; then
        echo "usage: source ${BASH_SOURCE[0]} up|down" >&2
        return 2
    fi
    _keel_services_out="$(bash "${BASH_SOURCE[0]}" "$@")" || {
        unset _keel_services_out
        return 1
    }
    eval "$_keel_services_out"
    unset _keel_services_out
    return 0
fi

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${KEEL_SERVICES_ENV:-$ROOT/target/services.env}"
STATE_FILE="${KEEL_SERVICES_STATE:-$ROOT/target/services.state}"
TMP_BASE="${KEEL_SERVICES_TMPDIR:-/tmp}"
FORCE_THROWAWAY="${KEEL_SERVICES_FORCE_THROWAWAY:-0}"
START_TIMEOUT=60 # seconds to wait for a throwaway server to accept connections

# --- helpers ----------------------------------------------------------------

log() { printf 'services.sh: %s\n' "$*" >&2; }
die() {
    printf 'services.sh: error: %s\n' "$*" >&2
    exit 1
}

# Append one KEY=VALUE line (shell-quoted) to the state file.
state_set() {
    mkdir -p "$(dirname "$STATE_FILE")"
    printf '%s=%q\n' "$1" "$2" >>"$STATE_FILE"
}

# Print a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    if command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null; then
        return 0
    fi
    # Fallback: probe random high ports until one refuses connections.
    local port i
    for i in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "could not find a free TCP port"
}

# Install Debian packages (root, or via passwordless sudo). `apt-get update`
# runs at most once per invocation. Output goes to stderr to keep stdout clean.
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "need to install '$*' but apt-get is not available; install it manually"
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            die "need to install '$*' but not root and no passwordless sudo"
        fi
    fi
    log "installing $* with apt-get (this may take a minute)"
    if [[ $APT_UPDATED -eq 0 ]]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
            die "apt-get update failed"
        APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed"
}

# Remove a throwaway temp dir, but only if it looks like one of ours.
remove_tmpdir() {
    local dir="$1"
    [[ -n "$dir" && -d "$dir" ]] || return 0
    case "$(basename "$dir")" in
    keel-test-pg.* | keel-test-redis.*) rm -rf -- "$dir" ;;
    *) log "warning: not removing unexpected directory '$dir'" ;;
    esac
}

# Write the env file and print the export lines on stdout.
write_env() {
    local pg_url="$1" redis_url="$2"
    mkdir -p "$(dirname "$ENV_FILE")"
    {
        echo "# Written by scripts/services.sh up on $(date -u +%Y-%m-%dT%H:%M:%SZ); source it."
        printf 'export KEEL_TEST_PG_URL=%q\n' "$pg_url"
        printf 'export KEEL_TEST_REDIS_URL=%q\n' "$redis_url"
    } >"$ENV_FILE"
    grep '^export ' "$ENV_FILE"
    log "wrote $ENV_FILE"
}

# --- PostgreSQL ---------------------------------------------------------------

# Directory holding the newest PostgreSQL server binaries, or empty.
pg_bindir() {
    local dir dirs
    dirs=(/usr/lib/postgresql/*/bin)
    dir=""
    [[ -d "${dirs[0]}" ]] && dir="$(printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)" # non-Debian layout: server binaries on PATH
    fi
}

# Path of a psql client, installing postgresql-client if there is none.
PSQL=""
find_psql() {
    [[ -n "$PSQL" ]] && return 0
    local bindir
    bindir="$(pg_bindir)"
    if command -v psql >/dev/null 2>&1; then
        PSQL="$(command -v psql)"
    elif [[ -n "$bindir" && -x "$bindir/psql" ]]; then
        PSQL="$bindir/psql"
    else
        apt_install postgresql-client
        PSQL="$(command -v psql)" || die "psql still missing after installing postgresql-client"
    fi
}

# True if `select 1` works with the given psql connection arguments (no password prompt).
pg_answers() {
    local out
    out="$(PGCONNECT_TIMEOUT=5 "$PSQL" --no-password -X -A -t -q -c 'select 1' "$@" 2>/dev/null)" || return 1
    [[ "$out" == 1 ]]
}

# Run a command as the user that owns throwaway clusters: `postgres` when we are
# root (initdb refuses to run as root), otherwise ourselves.
PG_RUN_AS=""
run_as_pg() {
    if [[ "$PG_RUN_AS" == "$(id -un)" ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$PG_RUN_AS" -- "$@"
    else
        su "$PG_RUN_AS" -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

# Start a throwaway cluster; set PG_URL.
start_throwaway_pg() {
    local bindir
    bindir="$(pg_bindir)"
    if [[ -z "$bindir" ]]; then
        # The package's own auto-created cluster (15/main on 5432) may start as a
        # side effect; we ignore it and use our own instance below.
        apt_install postgresql
        bindir="$(pg_bindir)"
        [[ -n "$bindir" ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after install"
    fi

    if [[ $EUID -eq 0 ]]; then
        PG_RUN_AS=postgres
        if ! id postgres >/dev/null 2>&1; then
            log "creating system user 'postgres' to own the throwaway cluster"
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        fi
    else
        PG_RUN_AS="$(id -un)"
    fi

    local tmp
    tmp="$(mktemp -d "$TMP_BASE/keel-test-pg.XXXXXX")"
    chown "$PG_RUN_AS" "$tmp"
    chmod 700 "$tmp"
    # Record the dir before anything else so `down` cleans up even if start fails.
    state_set PG_TMPDIR "$tmp"
    state_set PG_BINDIR "$bindir"
    state_set PG_RUN_AS "$PG_RUN_AS"
    local datadir="$tmp/data"
    state_set PG_DATADIR "$datadir"

    log "initialising throwaway PostgreSQL ($bindir) in $datadir"
    (cd "$tmp" && run_as_pg "$bindir/initdb" -D "$datadir" -A trust -U postgres \
        -E UTF8 --locale=C --no-sync) >"$tmp/initdb.log" 2>&1 || {
        cat "$tmp/initdb.log" >&2
        die "initdb failed (log above)"
    }
    cat >>"$datadir/postgresql.conf" <<EOF

# --- added by keel scripts/services.sh: throwaway test server ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    # The port is picked just before starting; retry if someone grabbed it.
    local port attempt
    for attempt in 1 2 3; do
        port="$(free_port)"
        log "starting throwaway PostgreSQL on 127.0.0.1:$port"
        if (cd "$tmp" && run_as_pg "$bindir/pg_ctl" start -D "$datadir" -l "$tmp/postgres.log" \
            -o "-p $port" -w -t "$START_TIMEOUT") >&2; then
            break
        fi
        log "pg_ctl start failed (attempt $attempt); tail of $tmp/postgres.log:"
        tail -n 20 "$tmp/postgres.log" >&2 || true
        [[ $attempt -lt 3 ]] || die "could not start throwaway PostgreSQL"
    done
    state_set PG_PORT "$port"

    local isready="$bindir/pg_isready"
    [[ -x "$isready" ]] || isready=pg_isready
    "$isready" -h 127.0.0.1 -p "$port" -U postgres -t "$START_TIMEOUT" >&2 ||
        die "throwaway PostgreSQL on port $port did not become ready within ${START_TIMEOUT}s"
    [[ -n "$PSQL" ]] || PSQL="$bindir/psql"
    pg_answers -h 127.0.0.1 -p "$port" -U postgres -d postgres ||
        die "throwaway PostgreSQL on port $port does not answer 'select 1'"

    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# Decide which PostgreSQL to use; set PG_URL.
PG_URL=""
pg_up() {
    if [[ "$FORCE_THROWAWAY" != 1 ]]; then
        find_psql
        if [[ -n "${KEEL_TEST_PG_URL:-}" ]]; then
            if pg_answers "$KEEL_TEST_PG_URL"; then
                log "PostgreSQL: using KEEL_TEST_PG_URL from the environment"
                state_set PG_KIND env
                PG_URL="$KEEL_TEST_PG_URL"
                return 0
            fi
            log "warning: KEEL_TEST_PG_URL is set but does not answer; looking elsewhere"
        fi
        if pg_answers -h 127.0.0.1 -p 5432 -U postgres -d postgres; then
            log "PostgreSQL: reusing the machine's server on 127.0.0.1:5432"
            state_set PG_KIND machine
            PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
            return 0
        fi
        log "PostgreSQL: nothing usable found; starting a throwaway server"
    else
        log "PostgreSQL: KEEL_SERVICES_FORCE_THROWAWAY=1; starting a throwaway server"
    fi
    state_set PG_KIND throwaway
    start_throwaway_pg
}

# Stop the throwaway cluster recorded in the state file (if any).
pg_down() {
    [[ "${PG_KIND:-}" == throwaway && -n "${PG_TMPDIR:-}" ]] || return 0
    PG_RUN_AS="${PG_RUN_AS:-postgres}"
    if [[ -n "${PG_DATADIR:-}" && -f "$PG_DATADIR/postmaster.pid" ]]; then
        log "stopping throwaway PostgreSQL (${PG_PORT:+port $PG_PORT, }$PG_DATADIR)"
        if ! (cd / && run_as_pg "$PG_BINDIR/pg_ctl" stop -D "$PG_DATADIR" -m fast -w -t 30) >&2; then
            local pid
            pid="$(head -n 1 "$PG_DATADIR/postmaster.pid" 2>/dev/null || true)"
            if pid_is_ours "$pid" "$PG_DATADIR"; then
                log "pg_ctl stop failed; sending SIGKILL to postmaster $pid"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
            fi
        fi
    fi
    remove_tmpdir "$PG_TMPDIR"
}

# --- Redis --------------------------------------------------------------------

REDIS_CLI=""
find_redis_cli() {
    [[ -n "$REDIS_CLI" ]] && return 0
    if ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-tools
    fi
    REDIS_CLI="$(command -v redis-cli)" || die "redis-cli still missing after installing redis-tools"
}

# True if PING gets PONG with the given redis-cli connection arguments.
redis_answers() {
    local out
    out="$(timeout 5 "$REDIS_CLI" "$@" ping 2>/dev/null </dev/null)" || return 1
    [[ "$out" == PONG ]]
}

# Start a throwaway Redis; set REDIS_URL.
start_throwaway_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        # The package may also start the machine's own redis on 6379; we ignore it.
        apt_install redis-server
        command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
    fi
    find_redis_cli

    local tmp
    tmp="$(mktemp -d "$TMP_BASE/keel-test-redis.XXXXXX")"
    state_set REDIS_TMPDIR "$tmp"
    state_set REDIS_PIDFILE "$tmp/redis.pid"

    local port attempt i
    for attempt in 1 2 3; do
        port="$(free_port)"
        state_set REDIS_PORT "$port" # before starting, so `down` can find it if we die now
        log "starting throwaway Redis on 127.0.0.1:$port (dir $tmp)"
        redis-server --save "" --appendonly no --daemonize yes \
            --port "$port" --bind 127.0.0.1 --dir "$tmp" \
            --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log" \
            </dev/null >>"$tmp/redis-start.log" 2>&1 || true
        for ((i = 0; i < START_TIMEOUT * 5; i++)); do
            redis_answers -h 127.0.0.1 -p "$port" && break
            # Give up early on this port if the server already exited.
            if ((i > 10)) && [[ -f "$tmp/redis.pid" ]] && ! kill -0 "$(cat "$tmp/redis.pid")" 2>/dev/null; then
                break
            fi
            sleep 0.2
        done
        if redis_answers -h 127.0.0.1 -p "$port"; then
            REDIS_URL="redis://127.0.0.1:$port/"
            return 0
        fi
        log "Redis did not answer on port $port (attempt $attempt); tail of $tmp/redis.log:"
        tail -n 20 "$tmp/redis.log" "$tmp/redis-start.log" >&2 2>/dev/null || true
    done
    die "could not start throwaway Redis"
}

# Decide which Redis to use; set REDIS_URL.
REDIS_URL=""
redis_up() {
    if [[ "$FORCE_THROWAWAY" != 1 ]]; then
        find_redis_cli
        if [[ -n "${KEEL_TEST_REDIS_URL:-}" ]]; then
            if redis_answers -u "$KEEL_TEST_REDIS_URL"; then
                log "Redis: using KEEL_TEST_REDIS_URL from the environment"
                state_set REDIS_KIND env
                REDIS_URL="$KEEL_TEST_REDIS_URL"
                return 0
            fi
            log "warning: KEEL_TEST_REDIS_URL is set but does not answer; looking elsewhere"
        fi
        if redis_answers -h 127.0.0.1 -p 6379; then
            log "Redis: reusing the machine's server on 127.0.0.1:6379"
            state_set REDIS_KIND machine
            REDIS_URL="redis://127.0.0.1:6379/"
            return 0
        fi
        log "Redis: nothing usable found; starting a throwaway server"
    else
        log "Redis: KEEL_SERVICES_FORCE_THROWAWAY=1; starting a throwaway server"
    fi
    state_set REDIS_KIND throwaway
    start_throwaway_redis
}

# Is $1 a live process whose working directory is $2? Throwaway servers chdir
# into their temp dir (redis: --dir; postgres: its data dir), so this tells our
# processes apart from the machine's even if a stale pidfile names a reused pid.
pid_is_ours() {
    [[ "$1" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null &&
        [[ "$(readlink "/proc/$1/cwd" 2>/dev/null)" == "$2" ]]
}

# Is $1 our live throwaway redis-server? (Zombies have no cwd, so they fail.)
is_redis_pid() {
    pid_is_ours "$1" "$REDIS_TMPDIR"
}

# True if the Redis on 127.0.0.1:$1 is ours, i.e. its working dir is $2.
redis_is_ours() {
    command -v redis-cli >/dev/null 2>&1 || return 1
    local dir
    dir="$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" config get dir 2>/dev/null </dev/null | sed -n 2p)" ||
        return 1
    [[ -n "$dir" && "$dir" == "$2" ]]
}

# Wait up to $2 seconds for pid $1 to stop being a live redis-server.
wait_redis_exit() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        is_redis_pid "$1" || return 0
        sleep 0.2
    done
    return 1
}

# Stop the throwaway Redis recorded in the state file (if any).
redis_down() {
    [[ "${REDIS_KIND:-}" == throwaway && -n "${REDIS_TMPDIR:-}" ]] || return 0
    local pid=""
    [[ -f "${REDIS_PIDFILE:-}" ]] && pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
    # Ask it to shut down by port, but only after checking it is ours (its dir
    # is our temp dir): this also covers a server whose pidfile was not written.
    if [[ -n "${REDIS_PORT:-}" ]] && redis_is_ours "$REDIS_PORT" "$REDIS_TMPDIR"; then
        log "stopping throwaway Redis (port $REDIS_PORT${pid:+, pid $pid})"
        timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 </dev/null || true
    fi
    # Fall back to signals via the pidfile.
    if ! wait_redis_exit "$pid" 5; then
        log "sending SIGTERM to throwaway Redis $pid"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_redis_exit "$pid" 10; then
            log "Redis $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    remove_tmpdir "$REDIS_TMPDIR"
}

# --- subcommands --------------------------------------------------------------

cmd_down() {
    if [[ ! -f "$STATE_FILE" ]]; then
        log "down: nothing to stop (no $STATE_FILE)"
        rm -f "$ENV_FILE"
        return 0
    fi
    # The state file is KEY=VALUE lines; sourcing it here assigns these locals.
    local PG_KIND="" PG_TMPDIR="" PG_BINDIR="" PG_DATADIR="" PG_PORT="" PG_RUN_AS=""
    local REDIS_KIND="" REDIS_TMPDIR="" REDIS_PIDFILE="" REDIS_PORT=""
    # shellcheck disable=SC1090
    source "$STATE_FILE"
    pg_down
    redis_down
    rm -f "$STATE_FILE" "$ENV_FILE"
    log "down: done"
}

# EXIT trap while `up` runs: on failure, undo what this invocation started.
on_up_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        log "up failed; cleaning up"
        cmd_down || true
    fi
}

cmd_up() {
    if [[ -f "$STATE_FILE" ]]; then
        if grep -q '_KIND=throwaway' "$STATE_FILE"; then
            log "found throwaway servers left by an earlier run; stopping them first"
        fi
        cmd_down >/dev/null
    fi
    mkdir -p "$(dirname "$STATE_FILE")"
    : >"$STATE_FILE"
    # If anything below fails, stop whatever this invocation already started.
    trap on_up_exit EXIT

    pg_up
    redis_up
    write_env "$PG_URL" "$REDIS_URL"
    trap - EXIT
}

usage() {
    # Print the header comment (up to the first non-comment line).
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
}

main() {
    case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    -h | --help | help) usage ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
