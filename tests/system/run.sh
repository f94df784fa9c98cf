#!/usr/bin/env bash
# System test of the packages and systemd units on a real systemd (Debian bookworm, systemd 252,
# booted with systemd-nspawn by ../shared/tools/systemd-harness.sh; nothing is mocked).
#
#   tests/system/run.sh            build the packages (release), then test them
#   tests/system/run.sh --no-build test the packages already in target/system-test/
#
# What it proves, in order: a fresh install of the previous version's .deb — the packaging of
# the old layout (one user pyoco owning /var/lib/pyoco and the NATS store, NATS open) — (system
# user, state directory, the socket enabled and listening, the gateway not started); the workers'
# runtime made offline by `pyococtl runtime setup --wheel-dir`; pyoco-nats; a worker instance;
# socket activation (the gateway inactive before the first request, active after); a run; an
# upgrade to this version while everything runs (configuration and data kept, daemons restarted,
# /var/lib/pyoco root's again, the NATS store moved to the user pyoco-nats with the run still
# there); who may write what: the workers' user cannot write /var/lib/pyoco, venv/, flows/, nor
# read the NATS store, /etc/pyoco/credentials or the gateway's environment; NATS refuses an
# anonymous client and accepts the workers' password; `pyococtl runtime setup` as root refuses a
# venv the workers' user planted (its "python" never runs); a flow submitted
# with `pyococtl run submit-yaml` and followed with `run watch --until-terminal` to COMPLETED;
# the run's RUN_ID in the worker's journal; `systemctl stop` of a worker during a slow run
# (drained: the run completes, the worker record says STOPPED_GRACEFUL); the socket moved by a
# drop-in; `pyococtl backup`; a worker without a runtime naming `pyococtl runtime setup`;
# `systemd-analyze security` and `verify`; apt remove (data and configuration kept), reinstall,
# apt purge (both deleted); a fresh install whose worker, started before any gateway, runs a
# flow. Then the .rpm in a fresh container: `rpm -i --nodeps` runs the
# scriptlets against systemd, the socket starts the gateway, `rpm -e` stops everything.
#
# Each check prints PASS/FAIL (SKIP when a feature is not there yet); the last line is
# `system: N passed, M failed[, K skipped]`; the exit code is non-zero when a check failed.
# Needs root (systemd-nspawn). Environment: SDH_HARNESS (path of systemd-harness.sh),
# PYOCO_SYSTEST_KEEP=1 (leave the container up on exit for debugging; `SDH_NAME=pyoco-systest
# ../shared/tools/systemd-harness.sh exec …`, then `… down`), PYOCO_SYSTEST_OLD_LAYOUT_REF (the
# commit whose packaging is the previous version).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
build=1
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$a'" >&2; exit 2 ;;
    esac
done

H=${SDH_HARNESS:-$ROOT/../shared/tools/systemd-harness.sh}
[ -x "$H" ] || H=/work/shared/tools/systemd-harness.sh
[ -x "$H" ] || { echo "run.sh: systemd-harness.sh not found (set SDH_HARNESS)"; echo "system: 0 passed, 1 failed"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (systemd-nspawn)"; echo "system: 0 passed, 1 failed"; exit 1; }
export SDH_NAME=${SDH_NAME:-pyoco-systest}
# The run-time dependencies of the .deb, baked into the container (it has no network), plus rpm
# for the .rpm smoke test.
export SDH_EXTRA_PACKAGES=nats-server,python3-venv,rpm

OUT=$ROOT/target/system-test
PREV_VERSION=0.0.1
# The last commit whose packages had the old layout (see "previous version" below).
OLD_LAYOUT_REF=${PYOCO_SYSTEST_OLD_LAYOUT_REF:-37b9131e4024ea234f4ea7d3da5096d1a31b7018}
mkdir -p "$OUT"
log() { printf '[system %s] %s\n' "$(date +%T)" "$*" >&2; }

pass=0 fail=0 skip=0
report() {  # report PASS|FAIL|SKIP NAME [DETAIL...]
    local r=$1 name=$2; shift 2
    case "$r" in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; SKIP) skip=$((skip + 1)) ;; esac
    printf '%s %s\n' "$r" "$name"
    [ $# -gt 0 ] && [ -n "$*" ] && printf '%s\n' "$*" | tail -n 25 | sed 's/^/    /'
    return 0
}
finish() {
    local extra=""
    [ "$skip" -gt 0 ] && extra=", $skip skipped"
    echo "system: $pass passed, $fail failed$extra"
    [ "$fail" = 0 ]
    exit $?
}
inside() { "$H" exec "$@"; }
# check NAME 'SHELL SCRIPT run inside the container': PASS when it exits 0; its output is shown
# on failure (and with PYOCO_SYSTEST_VERBOSE=1).
check() {
    local name=$1 script=$2 out
    if out=$(inside sh -c "$script" 2>&1); then
        if [ "${PYOCO_SYSTEST_VERBOSE:-0}" = 1 ]; then report PASS "$name" "$out"; else report PASS "$name"; fi
        return 0
    fi
    report FAIL "$name" "$out"
    return 1
}
# value 'SHELL SCRIPT': its stdout (for values the next checks need)
value() { inside sh -c "$1" 2>/dev/null; }
# offers 'COMMAND' PATTERN: whether COMMAND's output (its --help) contains PATTERN. (Not a pipe
# into grep -q: with pipefail, the early exit of grep can fail the pipeline.)
offers() { local text; text=$(value "$1"); grep -q -- "$2" <<<"$text"; }

# ---------------------------------------------------------------------------------------------
# Host side: packages and wheels

VERSION=$(awk '/^\[workspace.package\]/{w=1} w && /^version *=/{gsub(/[" ]/,""); sub(/version=/,""); print; exit}' Cargo.toml)
DEB=$OUT/pyoco-server_${VERSION}-1_amd64.deb
PREV_DEB=$OUT/prev/pyoco-server_${PREV_VERSION}-1_amd64.deb
RPM=$OUT/pyoco-server-${VERSION//-/_}-1.x86_64.rpm
if [ "$build" = 1 ]; then
    log "building the packages (release binaries)"
    if ! packaging/build.sh all --out "$OUT" >"$OUT/build.log" 2>&1; then
        report FAIL "build-packages" "$(tail -n 30 "$OUT/build.log")"
        finish
    fi
    # The "previous version", for the upgrade: the packaging (units, maintainer scripts) of the
    # last commit with the old layout — one user pyoco owning /var/lib/pyoco and the NATS store,
    # an open NATS — around this build's binaries. Without that commit (a shallow clone): this
    # tree's packaging, and the checks of the move from the old layout are skipped.
    rm -rf "$OUT/prev" "$OUT/prev-src"
    mkdir -p "$OUT/prev" "$OUT/prev-src"
    prev_tree=$ROOT
    if git cat-file -e "$OLD_LAYOUT_REF^{commit}" 2>/dev/null \
        && git archive "$OLD_LAYOUT_REF" -- Cargo.toml README.md docs deploy/examples packaging systemd | tar -x -C "$OUT/prev-src"; then
        prev_tree=$OUT/prev-src
        echo old >"$OUT/prev/layout"
    else
        echo current >"$OUT/prev/layout"
    fi
    if ! CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} "$prev_tree/packaging/build.sh" deb --no-build --version "$PREV_VERSION" --out "$OUT/prev" >>"$OUT/build.log" 2>&1; then
        report FAIL "build-previous-package" "$(tail -n 30 "$OUT/build.log")"
        finish
    fi
fi
OLD_LAYOUT=0
[ "$(cat "$OUT/prev/layout" 2>/dev/null)" = old ] && OLD_LAYOUT=1
for f in "$DEB" "$PREV_DEB" "$RPM"; do
    [ -f "$f" ] || { report FAIL "packages-present" "missing $f (run without --no-build)"; finish; }
done
report PASS "build-packages" "$(basename "$DEB") $(basename "$RPM") $(basename "$PREV_DEB")"

# pyoco and its dependencies as wheels for Debian bookworm's CPython 3.11 (x86_64), downloaded
# on the host: the container installs them offline.
WHEELS=$OUT/wheels
if ! ls "$WHEELS"/pyoco-*.whl >/dev/null 2>&1; then
    log "downloading pyoco wheels for CPython 3.11 into $WHEELS"
    PIP_PY=""
    for c in "$ROOT/.test-env/py311/bin/python" /usr/bin/python3 python3; do
        if "$c" -m pip --version >/dev/null 2>&1; then PIP_PY=$c; break; fi
    done
    if [ -z "$PIP_PY" ] || ! "$PIP_PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
            --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
            -d "$WHEELS" 'pyoco>=0.6.2' >"$OUT/pip-download.log" 2>&1; then
        report FAIL "download-wheels" "$(tail -n 20 "$OUT/pip-download.log" 2>/dev/null)"
        finish
    fi
fi
report PASS "download-wheels" "$(cd "$WHEELS" && ls | tr '\n' ' ')"

# Test flows: the example (add_one >> to_text, "v=2") and a slow one for the drain.
FLOWS=$OUT/flows
mkdir -p "$FLOWS"
cp deploy/examples/flow.yaml "$FLOWS/flow.yaml"
cat >"$FLOWS/slow.yaml" <<'EOF'
version: 1
flow:
  graph: |
    nap
  defaults:
    seconds: 8
tasks:
  nap: {callable: systest_tasks:nap}
EOF
cat >"$FLOWS/systest_tasks.py" <<'EOF'
"""Tasks of the system test: a run that takes a while (for the drain on systemctl stop)."""
import time


def nap(seconds: float = 8) -> str:
    time.sleep(float(seconds))
    return "rested"
EOF

# ---------------------------------------------------------------------------------------------
# The container

log "booting the container ($SDH_NAME)"
if ! "$H" build >"$OUT/harness.log" 2>&1; then report FAIL "harness-build" "$(tail -n 20 "$OUT/harness.log")"; finish; fi
"$H" down >/dev/null 2>&1 || true
if ! "$H" up >>"$OUT/harness.log" 2>&1; then report FAIL "harness-up" "$(tail -n 20 "$OUT/harness.log")"; finish; fi
cleanup() {
    if [ "${PYOCO_SYSTEST_KEEP:-0}" = 1 ]; then
        log "container $SDH_NAME left up (PYOCO_SYSTEST_KEEP=1)"
    else
        "$H" down >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
T=/var/tmp/pyoco-test
"$H" push "$DEB" "$PREV_DEB" "$WHEELS" "$FLOWS" "$T" >/dev/null
APT='DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold'

# ---------------------------------------------------------------------------------------------
# Install the previous version

check "install-previous-deb" "cd $T && $APT install ./$(basename "$PREV_DEB") 2>&1 | tail -n 5 && dpkg-query -W -f='\${Version}' pyoco-server | grep -qx '$PREV_VERSION-1'"
check "system-user" 'getent passwd pyoco | grep -q ":/var/lib/pyoco:/usr/sbin/nologin$" && getent group pyoco >/dev/null'
if [ "$OLD_LAYOUT" = 1 ]; then
    check "old-layout-state-dir" 'test "$(stat -c "%U:%G %a" /var/lib/pyoco)" = "pyoco:pyoco 750" && test "$(stat -c "%U %a" /var/lib/pyoco/flows)" = "root 755"'
else
    report SKIP "old-layout-state-dir" "the previous package has this tree's layout (commit $OLD_LAYOUT_REF not in this clone)"
fi
check "conffiles" 'dpkg-query -W -f="\${Conffiles}\n" pyoco-server | awk "NF{print \$1}" | sort | tr "\n" " " | grep -qx "/etc/pyoco/nats.env /etc/pyoco/pyoco-server.env /etc/pyoco/pyoco.toml /etc/pyoco/worker.env "'
check "env-files-root-only" 'test "$(stat -c %a /etc/pyoco/pyoco-server.env)" = 600 && test "$(stat -c %a /etc/pyoco/worker.env)" = 600'
check "socket-enabled-on-install" 'systemctl is-enabled pyoco-server.socket && systemctl is-active pyoco-server.socket'
check "socket-listens-8000" 'systemctl show -p Listen --value pyoco-server.socket | grep -q "127.0.0.1:8000 (Stream)"'
check "gateway-not-started-yet" '! systemctl is-active pyoco-server.service'
check "completions-and-man" 'test -s /usr/share/bash-completion/completions/pyococtl && test -s /usr/share/zsh/vendor-completions/_pyococtl && test -s /usr/share/fish/vendor_completions.d/pyococtl.fish && test -s /usr/share/man/man1/pyococtl.1.gz && test -s /usr/share/man/man1/pyococtl-runtime-setup.1.gz'

# ---------------------------------------------------------------------------------------------
# The workers' runtime, NATS, a worker, socket activation

check "runtime-check-before-setup" 'out=$(pyococtl runtime check 2>&1); rc=$?; echo "$out"; [ $rc = 1 ] && echo "$out" | grep -q "pyococtl runtime setup"'
if [ "$OLD_LAYOUT" = 1 ]; then
    # This pyococtl will not install, as root, below a /var/lib/pyoco the workers' user owns;
    # the venv is made the way the old pyococtl made it (python3 -m venv, then pip, as root).
    check "runtime-setup-refuses-old-layout" 'out=$(pyococtl runtime setup --wheel-dir '"$T"'/wheels 2>&1); rc=$?; echo "$out"; [ $rc != 0 ] && ! test -e /var/lib/pyoco/venv && echo "$out" | grep -q "refusing to use --venv /var/lib/pyoco/venv as root: /var/lib/pyoco is owned by pyoco" && echo "$out" | grep -q "fix: chown root:root /var/lib/pyoco"'
    check "runtime-setup-offline" "python3 -m venv /var/lib/pyoco/venv && /var/lib/pyoco/venv/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links $T/wheels 'pyoco>=0.6.2' && pyococtl runtime check | tail -n 1 | grep -q '^ok: pyoco-worker can run flows'"
else
    check "runtime-setup-offline" "pyococtl runtime setup --wheel-dir $T/wheels 2>&1 | tail -n 8 | tee /dev/stderr | grep -q '^ok: pyoco-worker can run flows'"
fi
check "runtime-venv-root-owned-readable" 'test "$(stat -c "%U %a" /var/lib/pyoco/venv)" = "root 755" && pyococtl runtime check | grep -q "as user pyoco"'
# Task modules where the packaged worker.env looks for them (PYOCO_WORKER_PYTHONPATH).
check "task-modules" "cp /usr/share/doc/pyoco-server/examples/hello_tasks.py $T/flows/systest_tasks.py /var/lib/pyoco/flows/ && pyococtl runtime check --pythonpath /var/lib/pyoco/flows --import hello_tasks --import systest_tasks"

# pyoco-nats runs `pyococtl up --wait-ready`; until that exists, the same unit with nats-server.
nats_fallback=0
if ! offers 'pyococtl up --help' '--wait-ready'; then
    nats_fallback=1
    inside sh -c 'mkdir -p /etc/systemd/system/pyoco-nats.service.d && printf "[Service]\nType=exec\nExecStart=\nExecStart=/usr/sbin/nats-server -js -sd /var/lib/pyoco/nats -a 127.0.0.1 -p 4222 -m 8222\n" >/etc/systemd/system/pyoco-nats.service.d/fallback.conf && systemctl daemon-reload'
    report SKIP "nats-via-pyococtl-up" "pyococtl up --wait-ready not in this build: pyoco-nats runs nats-server directly (drop-in)"
fi
# The old units ran an open NATS (and clients without passwords); this pyococtl secures it by
# default, so the old unit gets --insecure, as its pyococtl did.
if [ "$OLD_LAYOUT" = 1 ] && offers 'pyococtl up --help' '--insecure'; then
    inside sh -c 'mkdir -p /etc/systemd/system/pyoco-nats.service.d && printf "[Service]\nEnvironment=NATS_EXTRA_ARGS=--insecure\n" >/etc/systemd/system/pyoco-nats.service.d/old-open.conf && systemctl daemon-reload'
fi
check "nats-start" 'systemctl start pyoco-nats.service && systemctl is-active pyoco-nats.service'
check "nats-jetstream" 'for i in $(seq 1 50); do curl -fsS http://127.0.0.1:8222/jsz >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1'
if [ "$OLD_LAYOUT" = 1 ]; then nats_owner=pyoco; else nats_owner=pyoco-nats; fi
check "nats-store-in-state-dir" "for i in \$(seq 1 20); do [ -d /var/lib/pyoco/nats/jetstream ] && break; sleep 0.2; done; test \"\$(stat -c %U /var/lib/pyoco/nats/jetstream)\" = $nats_owner"
check "worker-start" 'systemctl start pyoco-worker@hello && systemctl is-active pyoco-worker@hello'
check "worker-notify-status" 'systemctl show -p StatusText --value pyoco-worker@hello | tee /dev/stderr | grep -q "tags hello"'
check "worker-watchdog" 'test "$(systemctl show -p WatchdogUSec --value pyoco-worker@hello)" = 30s'
check "worker-runs-as-pyoco" 'test "$(stat -c %U /proc/$(systemctl show -p MainPID --value pyoco-worker@hello))" = pyoco'
check "gateway-inactive-before-request" '! systemctl is-active pyoco-server.service'
check "socket-activation" 'curl -fsS --max-time 20 http://127.0.0.1:8000/health && systemctl is-active pyoco-server.service'
check "gateway-notify-status" 'for i in $(seq 1 50); do systemctl show -p StatusText --value pyoco-server.service | grep -q "listening on 127.0.0.1:8000" && exit 0; sleep 0.2; done; systemctl show -p StatusText pyoco-server.service; exit 1'
[ "$OLD_LAYOUT" = 1 ] && check "old-gateway-runs-as-pyoco" 'test "$(stat -c %U /proc/$(systemctl show -p MainPID --value pyoco-server.service))" = pyoco'
# Data written before the upgrade (by the old open layout): a completed run.
PRE_RID=$(value "curl -fsS -F workflow=@$T/flows/flow.yaml -F flow_name=main -F tag=hello http://127.0.0.1:8000/runs/yaml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null)
if [ -n "$PRE_RID" ]; then
    check "run-before-upgrade" "for i in \$(seq 1 300); do curl -fsS http://127.0.0.1:8000/runs/$PRE_RID | grep -q '\"status\": *\"COMPLETED\"' && exit 0; sleep 0.2; done; curl -s http://127.0.0.1:8000/runs/$PRE_RID; exit 1"
else
    report FAIL "run-before-upgrade" "could not submit the example flow"
fi

# ---------------------------------------------------------------------------------------------
# Upgrade to this version while everything runs

inside sh -c 'echo "# local change kept across upgrades" >>/etc/pyoco/pyoco.toml; printf "PYOCO_WORKER_CONCURRENCY=2\n" >/etc/pyoco/worker-hello.env'
worker_inv=$(value 'systemctl show -p InvocationID --value pyoco-worker@hello')
gateway_inv=$(value 'systemctl show -p InvocationID --value pyoco-server.service')
inside sh -c 'rm -rf /etc/systemd/system/pyoco-nats.service.d && systemctl daemon-reload'
# What the workers' user could plant in the old store: a link to a file of root's, which the
# upgrade's chown must not follow.
[ "$OLD_LAYOUT" = 1 ] && inside sh -c 'echo root-only >/var/tmp/victim && chmod 600 /var/tmp/victim && runuser -u pyoco -- ln -s /var/tmp/victim /var/lib/pyoco/nats/planted-link'
nats_inv=$(value 'systemctl show -p InvocationID --value pyoco-nats')
check "upgrade-deb" "cd $T && $APT install ./$(basename "$DEB") 2>&1 | tail -n 5 && dpkg-query -W -f='\${Version}' pyoco-server | grep -qx '$VERSION-1'"
# A locally changed conffile is kept (dpkg's default without a prompt); when the new version
# ships a different default, it lands beside it as *.dpkg-dist — never *.dpkg-old (replaced).
check "upgrade-keeps-config" 'grep -q "^# local change kept across upgrades" /etc/pyoco/pyoco.toml && grep -q CONCURRENCY=2 /etc/pyoco/worker-hello.env && ! ls /etc/pyoco/*.dpkg-old 2>/dev/null'
check "upgrade-keeps-data" 'test -x /var/lib/pyoco/venv/bin/python && test -d /var/lib/pyoco/nats/jetstream && test -f /var/lib/pyoco/flows/hello_tasks.py'
check "upgrade-restarts-daemons" "systemctl is-active pyoco-server.socket pyoco-server.service pyoco-worker@hello pyoco-nats && test \"\$(systemctl show -p InvocationID --value pyoco-worker@hello)\" != '$worker_inv' && test \"\$(systemctl show -p InvocationID --value pyoco-server.service)\" != '$gateway_inv'"
check "worker-instance-env" 'tr "\0" "\n" </proc/$(systemctl show -p MainPID --value pyoco-worker@hello)/environ | grep -qx PYOCO_WORKER_CONCURRENCY=2'

# ---------------------------------------------------------------------------------------------
# Who may write what (after the upgrade from the old layout)

check "users" 'getent passwd pyoco | grep -q ":/var/lib/pyoco:/usr/sbin/nologin$" && getent passwd pyoco-nats | grep -q ":/var/lib/pyoco/nats:/usr/sbin/nologin$"'
check "state-dir-root-owned" 'for d in /var/lib/pyoco /var/lib/pyoco/venv /var/lib/pyoco/flows; do s=$(stat -c "%U:%G %a" $d); echo "$d $s"; [ "$s" = "root:root 755" ] || exit 1; done'
check "worker-dir-own" 'test "$(stat -c "%U:%G %a" /var/lib/pyoco/worker-hello)" = "pyoco:pyoco 750"'
if [ "$OLD_LAYOUT" = 1 ]; then
    check "upgrade-moves-nats-store" "test \"\$(stat -c '%U %a' /var/lib/pyoco/nats)\" = 'pyoco-nats 700' && n=\$(find /var/lib/pyoco/nats ! -user pyoco-nats | wc -l) && echo \"\$n entries not owned by pyoco-nats\" && [ \$n = 0 ] && test \"\$(systemctl show -p InvocationID --value pyoco-nats)\" != '$nats_inv'"
    check "upgrade-follows-no-planted-link" 'test "$(stat -c "%U %a" /var/tmp/victim)" = "root 600" && test "$(stat -c %U /var/lib/pyoco/nats/planted-link)" = pyoco-nats'
    [ -n "$PRE_RID" ] && check "upgrade-keeps-runs" "curl -fsS http://127.0.0.1:8000/runs/$PRE_RID | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"status\"]); assert d[\"status\"]==\"COMPLETED\"'"
fi
check "nats-runs-as-pyoco-nats" 'pid=$(systemctl show -p MainPID --value pyoco-nats); test "$(stat -c %U /proc/$pid)" = pyoco-nats || exit 1; for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = nats-server ] && echo "nats-server: $(stat -c %U $p)"; done | tee /dev/stderr | grep -qx "nats-server: pyoco-nats"'
# (The container's NSS has no nss-systemd: the dynamic user shows as a uid in systemd's range.)
check "gateway-own-dynamic-user" 'uid=$(stat -c %u /proc/$(systemctl show -p MainPID --value pyoco-server.service)); echo "gateway runs as uid $uid"; [ "$(systemctl show -p DynamicUser --value pyoco-server.service)" = yes ] && [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]'
check "credentials-root-only" 'test "$(stat -c "%U %a" /etc/pyoco/credentials)" = "root 700" && for f in gateway worker admin system route; do test "$(stat -c "%U %a" /etc/pyoco/credentials/$f.password)" = "root 600" && test "$(wc -c </etc/pyoco/credentials/$f.password)" -ge 16 || exit 1; done'
# As the workers' user (what a task can do): nothing root executes or NATS keeps is writable;
# the store, the passwords and the gateway's environment are not even readable.
check "worker-user-cannot-write" 'fail=0
try() { if runuser -u pyoco -- sh -c "$1" 2>/dev/null; then echo "pyoco could: $1"; fail=1; fi; }
try "touch /var/lib/pyoco/planted"
try "mv /var/lib/pyoco/venv /var/lib/pyoco/venv.old"
try "mv /var/lib/pyoco/flows /var/lib/pyoco/flows.old"
try "touch /var/lib/pyoco/venv/planted"
try "touch /var/lib/pyoco/venv/bin/planted"
try "touch /var/lib/pyoco/flows/planted.py"
try "ls /var/lib/pyoco/nats"
try "touch /var/lib/pyoco/nats/planted"
try "ls /etc/pyoco/credentials"
try "cat /etc/pyoco/credentials/worker.password"
try "cat /etc/pyoco/pyoco-server.env"
try "cat /proc/$(systemctl show -p MainPID --value pyoco-server.service)/environ"
try "cat /proc/$(systemctl show -p MainPID --value pyoco-nats)/environ"
# (The same user can write its own directory: the refusals above are permissions, not runuser.)
runuser -u pyoco -- sh -c "touch /var/lib/pyoco/worker-hello/probe && rm /var/lib/pyoco/worker-hello/probe" || { echo "pyoco cannot even write /var/lib/pyoco/worker-hello"; exit 1; }
[ $fail = 0 ] && echo "every attempt refused"; exit $fail'
# NATS asks every client to log in: anonymous is refused, the workers' password is accepted.
check "nats-refuses-anonymous" "python3 - /etc/pyoco/credentials/worker.password <<'EOF'
import json, socket, sys
def session(connect):
    s = socket.create_connection(('127.0.0.1', 4222), timeout=5)
    f = s.makefile('rb')
    info = json.loads(f.readline().decode().split(' ', 1)[1])
    s.sendall(b'CONNECT ' + json.dumps(connect).encode() + b'\\r\\nPING\\r\\n')
    line = f.readline().decode().strip()
    s.close()
    return info, line
info, anon = session({'verbose': False, 'pedantic': False})
print('auth_required:', info.get('auth_required'), '| anonymous:', anon)
assert info.get('auth_required') is True and 'Authorization Violation' in anon
password = open(sys.argv[1]).read().strip()
_, worker = session({'verbose': False, 'pedantic': False, 'user': 'pyoco-worker', 'pass': password})
print('pyoco-worker:', worker)
assert worker == 'PONG'
EOF"
check "daemons-log-in" 'tr "\0" "\n" </proc/$(systemctl show -p MainPID --value pyoco-worker@hello)/environ | grep -qx PYOCO_NATS_USER=pyoco-worker && curl -fsS http://127.0.0.1:8000/health | grep -q "\"nats\": *\"connected\""'
check "runtime-setup-after-upgrade" "pyococtl runtime setup --wheel-dir $T/wheels 2>&1 | tail -n 8 | tee /dev/stderr | grep -q '^ok: pyoco-worker can run flows'"
# Root never runs a venv the workers' user could have planted (here in the one directory that
# user may write); the planted "python" would leave /root/planted-ran behind.
check "runtime-setup-refuses-planted-venv" "rm -f /root/planted-ran; runuser -u pyoco -- sh -c 'python3 -m venv --without-pip /var/lib/pyoco/worker-hello/planted && rm /var/lib/pyoco/worker-hello/planted/bin/python && printf \"#!/bin/sh\\necho ran >/root/planted-ran\\n\" >/var/lib/pyoco/worker-hello/planted/bin/python && chmod 755 /var/lib/pyoco/worker-hello/planted/bin/python' || exit 1
out=\$(pyococtl runtime setup --venv /var/lib/pyoco/worker-hello/planted --wheel-dir $T/wheels 2>&1); rc=\$?; echo \"rc=\$rc: \$out\"
rm -rf /var/lib/pyoco/worker-hello/planted
[ \$rc != 0 ] && ! test -e /root/planted-ran && echo \"\$out\" | grep -q 'refusing to run /var/lib/pyoco/worker-hello/planted/bin/python as root: /var/lib/pyoco/worker-hello' && echo \"\$out\" | grep -q 'fix: '"

# ---------------------------------------------------------------------------------------------
# A flow, end to end

run_cli=1
offers 'pyococtl run submit-yaml --help' '--workflow-file' || run_cli=0
RID=""
if [ "$run_cli" = 1 ]; then
    RID=$(value "pyococtl --output json run submit-yaml --workflow-file $T/flows/flow.yaml --flow-name main --tag hello" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null)
    if [ -n "$RID" ]; then report PASS "run-submit-yaml" "run $RID"; else report FAIL "run-submit-yaml" "$(inside pyococtl --output json run submit-yaml --workflow-file $T/flows/flow.yaml --flow-name main --tag hello 2>&1)"; fi
    [ -n "$RID" ] && check "run-watch-until-terminal" "timeout 120 pyococtl run watch $RID --until-terminal >/tmp/watch.out 2>&1; rc=\$?; tail -n 3 /tmp/watch.out; [ \$rc = 0 ] && grep -q COMPLETED /tmp/watch.out"
else
    RID=$(value "curl -fsS -F workflow=@$T/flows/flow.yaml -F flow_name=main -F tag=hello http://127.0.0.1:8000/runs/yaml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null)
    report SKIP "run-submit-yaml" "pyococtl run submit-yaml not in this build: submitted with curl (run $RID)"
    [ -n "$RID" ] && check "run-watch-curl" "timeout 120 curl -sN http://127.0.0.1:8000/runs/$RID/watch | grep -q '\"status\": *\"COMPLETED\"'"
fi
if [ -n "$RID" ]; then
    check "run-completed-output" "curl -fsS 'http://127.0.0.1:8000/runs/$RID?include=records' | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"status\"], d[\"task_records\"][\"to_text\"][\"output\"]); assert d[\"status\"]==\"COMPLETED\" and d[\"task_records\"][\"to_text\"][\"output\"]==\"v=2\"'"
    check "journal-run-id" "journalctl -u pyoco-worker@hello -o json --no-pager | python3 -c 'import json,sys
n=sum(1 for l in sys.stdin if json.loads(l).get(\"RUN_ID\")==\"$RID\")
print(n, \"journal entries with RUN_ID=$RID\"); assert n>0'"
else
    report FAIL "run-completed-output" "no run id"
fi

# ---------------------------------------------------------------------------------------------
# systemctl stop during a slow run: the worker drains it

SLOW=$(value "curl -fsS -F workflow=@$T/flows/slow.yaml -F flow_name=main -F tag=hello http://127.0.0.1:8000/runs/yaml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null)
if [ -n "$SLOW" ]; then
    check "slow-run-running" "for i in \$(seq 1 100); do curl -fsS http://127.0.0.1:8000/runs/$SLOW | grep -q '\"status\": *\"RUNNING\"' && exit 0; sleep 0.1; done; curl -s http://127.0.0.1:8000/runs/$SLOW; exit 1"
    check "stop-drains-worker" "t0=\$(date +%s); systemctl stop pyoco-worker@hello; t=\$((\$(date +%s)-t0)); echo \"stop took \${t}s\"; ! systemctl is-active pyoco-worker@hello && systemctl show -p Result --value pyoco-worker@hello | grep -qx success"
    check "drained-run-completed" "curl -fsS http://127.0.0.1:8000/runs/$SLOW | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"status\"]); assert d[\"status\"]==\"COMPLETED\"'"
    check "worker-record-stopped-graceful" "for i in \$(seq 1 50); do curl -fsS 'http://127.0.0.1:8000/workers?scope=all' | python3 -c 'import json,sys; d=json.load(sys.stdin); ws=d if isinstance(d,list) else d.get(\"workers\", d.get(\"items\", [])); s=[w.get(\"state\") for w in ws if \"hello\" in (w.get(\"tags\") or [])]; print(s); assert \"STOPPED_GRACEFUL\" in s' && exit 0; sleep 0.2; done; exit 1"
    check "journal-drain" 'journalctl -u pyoco-worker@hello --no-pager -o cat | grep -q "letting running runs finish"'
else
    report FAIL "slow-run-submit" "could not submit the slow flow"
fi

# ---------------------------------------------------------------------------------------------
# The socket address changed with a drop-in

check "socket-dropin-address" 'mkdir -p /etc/systemd/system/pyoco-server.socket.d && printf "[Socket]\nListenStream=\nListenStream=127.0.0.1:8080\n" >/etc/systemd/system/pyoco-server.socket.d/listen.conf && systemctl daemon-reload && systemctl stop pyoco-server.service pyoco-server.socket && systemctl start pyoco-server.socket && curl -fsS --max-time 20 http://127.0.0.1:8080/health && ! curl -fsS --max-time 3 http://127.0.0.1:8000/health'
inside sh -c 'rm -rf /etc/systemd/system/pyoco-server.socket.d && systemctl daemon-reload && systemctl stop pyoco-server.service pyoco-server.socket && systemctl start pyoco-server.socket' >/dev/null 2>&1
check "socket-back-on-8000" 'curl -fsS --max-time 20 http://127.0.0.1:8000/health >/dev/null && systemctl is-active pyoco-server.service'

# ---------------------------------------------------------------------------------------------
# pyococtl backup, as packaged

if offers 'pyococtl backup --help' '--dir'; then
    check "pyococtl-backup" 'rm -rf /var/tmp/pyoco-backup && pyococtl backup --dir /var/tmp/pyoco-backup 2>&1 | tail -n 5 && test -n "$(ls -A /var/tmp/pyoco-backup)"'
else
    report SKIP "pyococtl-backup" "pyococtl backup is not implemented in this build"
fi

# ---------------------------------------------------------------------------------------------
# A worker without a usable runtime says how to make one

inside sh -c 'printf "PYOCO_PYTHON=/var/lib/pyoco/no-venv/bin/python\n" >/etc/pyoco/worker-nort.env; systemctl start pyoco-worker@nort; systemctl stop pyoco-worker@nort; rm -f /etc/pyoco/worker-nort.env; systemctl reset-failed pyoco-worker@nort' >/dev/null 2>&1
check "worker-without-runtime-fails" 'journalctl -u pyoco-worker@nort --no-pager -o cat | grep "cannot run flows"'
check "worker-without-runtime-names-setup" 'journalctl -u pyoco-worker@nort --no-pager -o cat | grep "cannot run flows" | grep -q "pyococtl runtime setup"'

# ---------------------------------------------------------------------------------------------
# The units themselves

check "units-verify" 'out=$(systemd-analyze verify /lib/systemd/system/pyoco-server.socket /lib/systemd/system/pyoco-server.service /lib/systemd/system/pyoco-worker@.service /lib/systemd/system/pyoco-nats.service /lib/systemd/system/pyoco.target 2>&1); echo "$out"; ! echo "$out" | grep -i pyoco'
exposure() {  # exposure UNIT MAX: systemd-analyze security's overall rating must be <= MAX
    local line v
    line=$(value "systemd-analyze security --no-pager $1 | tail -n 1")
    v=$(grep -oE '[0-9]+\.[0-9]+' <<<"$line" | tail -n 1)
    if [ -n "$v" ] && awk -v v="$v" -v max="$2" 'BEGIN {exit !(v + 0 <= max + 0)}'; then
        report PASS "security-$1<=$2" "$line"
    else
        report FAIL "security-$1<=$2" "${line:-no rating}"
    fi
}
exposure pyoco-server.service 2.0
exposure pyoco-nats.service 2.0
exposure pyoco-worker@hello.service 2.0
# (`systemctl stop pyoco.target` returns before the units it stops through PartOf= are down.)
check "target-stops-all" 'systemctl start pyoco.target pyoco-worker@hello && systemctl is-active pyoco-nats pyoco-worker@hello && systemctl stop pyoco.target && for i in $(seq 1 150); do systemctl is-active --quiet pyoco-nats pyoco-server.socket pyoco-server.service pyoco-worker@hello || exit 0; sleep 0.2; done; systemctl is-active pyoco-nats pyoco-server.socket pyoco-server.service pyoco-worker@hello; exit 1'
check "target-starts-suite" 'systemctl start pyoco.target && systemctl is-active pyoco-nats pyoco-server.socket'
check "no-failed-units" 'systemctl --failed --no-legend --plain | grep pyoco && exit 1 || exit 0'

# ---------------------------------------------------------------------------------------------
# Remove, reinstall, purge

check "apt-remove" "$APT remove pyoco-server 2>&1 | tail -n 2; ! test -e /usr/bin/pyoco-server"
check "remove-stops-units" '! systemctl is-active pyoco-server.socket pyoco-server.service pyoco-nats pyoco-worker@hello && ! curl -fsS --max-time 3 http://127.0.0.1:8000/health'
check "remove-keeps-config-and-data" 'test -f /etc/pyoco/pyoco.toml && test -f /etc/pyoco/worker-hello.env && test -s /etc/pyoco/credentials/gateway.password && test -x /var/lib/pyoco/venv/bin/python && test -d /var/lib/pyoco/nats/jetstream && getent passwd pyoco >/dev/null && getent passwd pyoco-nats >/dev/null'
check "reinstall-after-remove" "cd $T && $APT install ./$(basename "$DEB") 2>&1 | tail -n 2; systemctl is-enabled pyoco-server.socket && systemctl is-active pyoco-server.socket && grep -q '^# local change' /etc/pyoco/pyoco.toml"
check "apt-purge" "$APT purge pyoco-server 2>&1 | tail -n 2; ! test -e /etc/pyoco && ! test -e /var/lib/pyoco && ! ls /etc/systemd/system/*.wants/pyoco* 2>/dev/null && ! systemctl is-active pyoco-server.socket"

# A fresh installation, in the order install.md gives: NATS, the runtime, a worker — which is
# ready before any gateway ran (pyoco-nats made the streams), and runs a flow.
check "fresh-install-worker-before-gateway" "cd $T && $APT install ./$(basename "$DEB") 2>&1 | tail -n 1; systemctl start pyoco-nats && pyococtl runtime setup --wheel-dir $T/wheels >/dev/null 2>&1 && cp /usr/share/doc/pyoco-server/examples/hello_tasks.py /var/lib/pyoco/flows/ && timeout 60 systemctl start pyoco-worker@hello && ! systemctl is-active pyoco-server.service && systemctl is-active pyoco-worker@hello || exit 1; timeout 120 pyococtl run submit-yaml --workflow-file $T/flows/flow.yaml --flow-name main --tag hello --watch >/tmp/fresh.out 2>&1; rc=\$?; tail -n 3 /tmp/fresh.out; [ \$rc = 0 ]"

"$H" down >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------------
# The .rpm: scriptlets against systemd (no RPM distribution here: rpm -i --nodeps on Debian)

log "rpm smoke test in a fresh container"
if ! "$H" up >>"$OUT/harness.log" 2>&1; then report FAIL "harness-up-rpm" "$(tail -n 20 "$OUT/harness.log")"; finish; fi
"$H" push "$RPM" "$T" >/dev/null
check "rpm-install-scriptlets" "rpm -i --nodeps $T/$(basename "$RPM") 2>&1 | grep -v 'warning: .*(NOKEY)'; rpm -q pyoco-server && getent passwd pyoco >/dev/null && getent passwd pyoco-nats >/dev/null && test \"\$(stat -c '%U %a' /var/lib/pyoco)\" = 'root 755' && test -d /var/lib/pyoco/flows && test \"\$(stat -c '%U %a' /etc/pyoco/credentials)\" = 'root 700' && test -s /etc/pyoco/credentials/route.password"
check "rpm-socket-enabled" 'systemctl is-enabled pyoco-server.socket && systemctl is-active pyoco-server.socket'
check "rpm-config-noreplace" 'rpm -qc pyoco-server | sort | tr "\n" " " | grep -qx "/etc/pyoco/nats.env /etc/pyoco/pyoco-server.env /etc/pyoco/pyoco.toml /etc/pyoco/worker.env "'
check "rpm-socket-activation" '! systemctl is-active pyoco-server.service; curl -fsS --max-time 20 -o /dev/null -w "%{http_code}\n" http://127.0.0.1:8000/health; systemctl is-active pyoco-server.service'
check "rpm-erase" 'rpm -e --nodeps pyoco-server; ! rpm -q pyoco-server >/dev/null && ! systemctl is-active pyoco-server.socket pyoco-server.service && ! ls /etc/systemd/system/*.wants/pyoco* 2>/dev/null && test -d /var/lib/pyoco'

finish
