#!/usr/bin/env bash
# scripts/supply-chain.sh — cargo-deny (S13) with the checked-in deny.toml: licences, bans
# and sources of every dependency, then RustSec advisories.
# cargo-deny is installed with `cargo install` (once per machine) when missing. The
# advisory database is a git repository on github.com; when it cannot be fetched and no
# earlier copy exists, the advisory check is reported as NOT RUN (loudly, on stderr) and
# the other checks still decide the result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$VERSION"; then
    echo "supply-chain: installing cargo-deny $VERSION (once per machine)" >&2
    cargo install --quiet --locked cargo-deny --version "$VERSION"
fi
cargo deny --log-level error check licenses bans sources
echo "supply-chain: licences, bans and sources ok"
if timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1; then
    cargo deny --log-level error check --disable-fetch advisories
    echo "supply-chain: advisories ok"
elif compgen -G "$HOME/.cargo/advisory-dbs/advisory-db-*/crates" >/dev/null; then
    echo "supply-chain: the advisory database could not be updated; checking against the copy on this machine" >&2
    cargo deny --log-level error check --disable-fetch advisories
    echo "supply-chain: advisories ok (database not updated)"
else
    echo "supply-chain: ADVISORIES NOT RUN: the RustSec database (github.com/RustSec/advisory-db) is unreachable from this machine and no copy exists" >&2
fi
