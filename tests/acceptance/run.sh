#!/usr/bin/env bash
# First-contact acceptance test: the README's "Run it" commands exactly as written, then the
# Python original's quickstart verbatim, from a clean export of the checked-out tree, in a fresh
# Debian 12 container (systemd-nspawn via ../shared/tools/systemd-harness.sh: real systemd, no
# state from the host). What a fresh machine has: Debian 12 with a Rust toolchain (the host's
# toolchain, mounted read-only), gcc and CA certificates. The container shares the host's network
# so that apt, PyPI and crates.io are reached as on a real machine: the README's own set-up
# command installs nats-server and python3-venv with apt, creates the venv with pip and builds.
#
#   tests/acceptance/run.sh          (root; ports 8000, 4222 and 8222 must be free on the host)
#
# Each check prints PASS/FAIL with its time; the last line is `acceptance: N passed, M failed`.
# PYOCO_ACCEPT_KEEP=1 leaves the container and the work directory for debugging.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
H=${SDH_HARNESS:-$ROOT/../shared/tools/systemd-harness.sh}
[ -x "$H" ] || H=/work/shared/tools/systemd-harness.sh
fail() { echo "FAIL $*"; echo "acceptance: 0 passed, 1 failed"; exit 1; }
[ -x "$H" ] || fail "systemd-harness.sh not found (set SDH_HARNESS)"
[ "$(id -u)" = 0 ] || fail "must run as root (systemd-nspawn)"
for port in 8000 4222 8222; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is in use on this host; the README's stack needs it (the container shares the host's network)"
    fi
done
export SDH_NAME=pyoco-accept SDH_NETWORK=host SDH_EXTRA_PACKAGES=ca-certificates,gcc,libc6-dev
log() { printf '[acceptance %s] %s\n' "$(date +%T)" "$*" >&2; }

WORK=$(mktemp -d /var/tmp/pyoco-accept.XXXXXX)
chmod 755 "$WORK"
# A clean copy of the tree as checked out (tracked files only, uncommitted edits included):
# what `git clone` of this commit gives, without target/, .test-env/ or .pyoco-dev/.
rev=$(git stash create 2>/dev/null); rev=${rev:-HEAD}
mkdir "$WORK/pyoco-server"
git archive "$rev" | tar -x -C "$WORK/pyoco-server" || fail "git archive $rev"
TOOLCHAIN=$(rustc --print sysroot) || fail "no Rust toolchain on the host (rustc --print sysroot)"

cleanup() {
    if [ "${PYOCO_ACCEPT_KEEP:-0}" = 1 ]; then
        log "left up: SDH_NAME=$SDH_NAME $H exec …; work dir $WORK"
        return
    fi
    "$H" down >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
t0=$(date +%s)
"$H" build >"$WORK/harness.log" 2>&1 || { tail -20 "$WORK/harness.log"; fail "harness build"; }
# This workplace reaches the registries through a TLS proxy whose CA only the host's bundle has:
# the container gets the host's bundle (and pip is pointed at it, as on the host).
ca=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(--bind-ro=/etc/ssl/certs/ca-certificates.crt)
"$H" up --bind-ro="$TOOLCHAIN":/opt/rust --bind="$WORK":/home/user "${ca[@]}" >>"$WORK/harness.log" 2>&1 \
    || { tail -20 "$WORK/harness.log"; fail "harness up"; }
log "fresh container up in $(( $(date +%s) - t0 )) s"
# The user's shell: a login with the toolchain on PATH, in the clone.
inside() {
    "$H" exec env PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root CARGO_TERM_COLOR=never PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" \
        bash -c "cd /home/user/pyoco-server && $1"
}
inside 'python3 tests/acceptance/readme_steps.py'
readme=$?
quick=1
if [ "$readme" = 0 ]; then
    log "the original's quickstart"
    inside 'tests/acceptance/quickstart.sh'
    quick=$?
else
    echo "SKIP the original's quickstart: the README's own path failed first"
fi
[ "$readme" = 0 ] && [ "$quick" = 0 ] && { echo "acceptance: both parts passed in $(( $(date +%s) - t0 )) s"; exit 0; }
echo "acceptance: README $readme, quickstart $quick (non-zero = failed) after $(( $(date +%s) - t0 )) s"
exit 1
