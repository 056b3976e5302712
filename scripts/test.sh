#!/usr/bin/env bash
# scripts/test.sh — run Keel's whole check suite: the one command to use.
#
# Usage:
#   scripts/test.sh                     # fmt, clippy, all tests
#   scripts/test.sh -E 'test(foo)'      # extra args go to the test runner
#   KEEL_TEST_SKIP_LINT=1 scripts/test.sh   # skip fmt/clippy (quick local run)
#
# What it does:
#   1. `scripts/services.sh up` finds or starts PostgreSQL and Redis, and we
#      export KEEL_TEST_PG_URL, KEEL_TEST_REDIS_URL and KEEL_TEST_REQUIRE_PG=1
#      (tests then fail, rather than skip, when PostgreSQL is unavailable).
#      `scripts/services.sh down` runs on exit: success, failure or Ctrl-C.
#      scripts/test-tools.sh installs aiosmtpd (the SMTP sink of the email tests)
#      into target/venv-test and s3rver (an S3-compatible server on disk, for the
#      file tests) into target/s3rver, and promtool (Debian's prometheus package: the
#      metrics and alert-rule checks) and oidc-provider (the OpenID provider of the
#      sign-in tests) into target/oidc-provider; we export KEEL_TEST_PYTHON,
#      KEEL_TEST_S3RVER, KEEL_TEST_PROMTOOL and KEEL_TEST_OIDC_MODULES.
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo nextest run --workspace --no-fail-fast [ARGS...]
#      + cargo test --workspace --doc (nextest does not run doctests; skipped
#        when ARGS are given, since a filtered run wants just those tests),
#      or, without cargo-nextest, cargo test --workspace --no-fail-fast [ARGS...]
#   5. scripts/check-openapi.sh: every example app's OpenAPI document through
#      openapi-spec-validator (PyPI, in a venv under target/).
#   6. scripts/schemathesis.sh: schemathesis (PyPI) fuzzes the API of two example apps
#      served by `keel demo`; any 5xx or answer that breaks the document fails.
#   7. scripts/supply-chain.sh: cargo deny check with deny.toml (cargo-deny is installed
#      once per machine; advisories need github.com and say NOT RUN without it).
#   It stops at the first failing stage and exits with its status.
#
# Environment:
#   KEEL_TEST_SKIP_LINT=1     skip stages 2 and 3.
#   KEEL_TEST_CMD_OVERRIDE    FOR TESTING THIS SCRIPT ONLY: run this shell
#                             command (via `bash -c`, extra args as "$@")
#                             instead of all cargo stages, with the services up
#                             and the env exported, e.g.
#                             KEEL_TEST_CMD_OVERRIDE='env | grep KEEL_TEST' scripts/test.sh
#   NEXTEST_PROFILE           nextest profile; defaults to `ci` when $CI is set.
#   KEEL_SERVICES_*           see scripts/services.sh.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# services.sh writes here and we read it back; export so both agree.
export KEEL_SERVICES_ENV="${KEEL_SERVICES_ENV:-$ROOT/target/services.env}"

START=$SECONDS
STAGE_NO=0

# Print a stage header.
stage() {
    STAGE_NO=$((STAGE_NO + 1))
    printf '\n==> [%d] %s\n' "$STAGE_NO" "$*"
}

# Print a header, then run the command; `set -e` stops the script if it fails.
run_stage() {
    stage "$*"
    local t0=$SECONDS
    "$@"
    printf '==> [%d] ok (%ds)\n' "$STAGE_NO" $((SECONDS - t0))
}

# On any exit: stop throwaway services, report the time, keep the exit status.
finish() {
    local rc=$?
    trap - EXIT INT TERM
    scripts/services.sh down || echo "test.sh: warning: scripts/services.sh down failed" >&2
    local total=$((SECONDS - START))
    if [[ $rc -eq 0 ]]; then
        printf '\n==> all stages passed in %dm%02ds\n' $((total / 60)) $((total % 60))
    else
        printf '\n==> FAILED (exit %d) after %dm%02ds\n' "$rc" $((total / 60)) $((total % 60)) >&2
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- services ---------------------------------------------------------------
stage "services: PostgreSQL and Redis (scripts/services.sh up)"
scripts/services.sh up >/dev/null
# shellcheck disable=SC1090
source "$KEEL_SERVICES_ENV"
export KEEL_TEST_PG_URL KEEL_TEST_REDIS_URL
export KEEL_TEST_REQUIRE_PG=1
echo "KEEL_TEST_PG_URL=$KEEL_TEST_PG_URL"
echo "KEEL_TEST_REDIS_URL=$KEEL_TEST_REDIS_URL"

# --- tools some tests talk to (an SMTP sink) -------------------------------------
stage "test tools: aiosmtpd in target/venv-test, s3rver in target/s3rver, promtool, oidc-provider in target/oidc-provider, playwright-core in target/browser-test and Debian chromium (scripts/test-tools.sh)"
TOOLS="$(scripts/test-tools.sh)"
KEEL_TEST_PYTHON="$(echo "$TOOLS" | sed -n 1p)"
KEEL_TEST_S3RVER="$(echo "$TOOLS" | sed -n 2p)"
KEEL_TEST_PROMTOOL="$(echo "$TOOLS" | sed -n 3p)"
KEEL_TEST_OIDC_MODULES="$(echo "$TOOLS" | sed -n 4p)"
KEEL_TEST_PLAYWRIGHT_MODULES="$(echo "$TOOLS" | sed -n 5p)"
KEEL_TEST_CHROMIUM="$(echo "$TOOLS" | sed -n 6p)"
export KEEL_TEST_PYTHON KEEL_TEST_S3RVER KEEL_TEST_PROMTOOL KEEL_TEST_OIDC_MODULES KEEL_TEST_PLAYWRIGHT_MODULES KEEL_TEST_CHROMIUM
echo "KEEL_TEST_PYTHON=$KEEL_TEST_PYTHON"
echo "KEEL_TEST_S3RVER=$KEEL_TEST_S3RVER"
echo "KEEL_TEST_OIDC_MODULES=$KEEL_TEST_OIDC_MODULES"
echo "KEEL_TEST_PLAYWRIGHT_MODULES=$KEEL_TEST_PLAYWRIGHT_MODULES KEEL_TEST_CHROMIUM=$KEEL_TEST_CHROMIUM"
echo "KEEL_TEST_PROMTOOL=$KEEL_TEST_PROMTOOL"

# --- override (testing this script without cargo) -----------------------------
if [[ -n "${KEEL_TEST_CMD_OVERRIDE:-}" ]]; then
    stage "KEEL_TEST_CMD_OVERRIDE (instead of the cargo stages): $KEEL_TEST_CMD_OVERRIDE"
    bash -c "$KEEL_TEST_CMD_OVERRIDE" keel-test-override "$@"
    exit 0
fi

# --- lint -------------------------------------------------------------------
if [[ "${KEEL_TEST_SKIP_LINT:-0}" == 1 ]]; then
    stage "lint skipped (KEEL_TEST_SKIP_LINT=1)"
else
    run_stage cargo fmt --all --check
    run_stage cargo clippy --workspace --all-targets -- -D warnings
fi

# --- tests ------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
    if [[ -n "${CI:-}" && -z "${NEXTEST_PROFILE:-}" ]]; then
        export NEXTEST_PROFILE=ci
    fi
    run_stage cargo nextest run --workspace --no-fail-fast "$@"
    if [[ $# -eq 0 ]]; then
        run_stage cargo test --workspace --doc
    else
        stage "doctests skipped (test filter arguments given)"
    fi
else
    echo "test.sh: cargo-nextest not found; falling back to cargo test" >&2
    run_stage cargo test --workspace --no-fail-fast "$@"
fi

# --- the OpenAPI documents of the example apps, checked by a standard validator ----------
if [[ $# -eq 0 ]]; then
    run_stage scripts/check-openapi.sh
    # --- API fuzzing against two example apps: no 5xx, every answer as documented ------
    run_stage scripts/schemathesis.sh
    # --- dependencies: licences, bans, sources, advisories (deny.toml) -----------------
    run_stage scripts/supply-chain.sh
fi
