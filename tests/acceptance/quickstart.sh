#!/usr/bin/env bash
# The Python original's quickstart (pyoco-server 0.5's README), verbatim, against our binaries:
#   pyoco-server up --with-nats-bootstrap --host 127.0.0.1 --port 8000
#   pyoco-worker --nats-url nats://127.0.0.1:4222 --tags hello --worker-id w1
#   pyoco-client submit-yaml --workflow-file flow.yaml --flow-name main --tag hello
#   pyoco-client watch <run_id> --until-terminal --output status
# with the quickstart's flow.yaml (callables pyoco_server._workflow_test_tasks:add_one/:to_text),
# the original's own pyoco-client (pip install pyoco-server==0.5.1, in a venv of its own), and
# our worker given a Python with pyoco only (PYOCO_PYTHON): the example tasks come from our
# stand-in module. Run from the project's root after `cargo build --release`; needs PyPI.
# Prints PASS/FAIL per check and `quickstart: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PWD/target/release:$PATH
PY=${QUICKSTART_PYOCO_PYTHON:-$PWD/.pyoco-dev/venv/bin/python}
CLIENT_VENV=${QUICKSTART_CLIENT_VENV:-$PWD/.acceptance/client-venv}
W=$PWD/.acceptance/quickstart
mkdir -p "$W"
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
ko() { fail=$((fail + 1)); echo "FAIL $*"; }
finish() {
    [ -n "${worker_pid:-}" ] && kill -TERM "$worker_pid" 2>/dev/null
    [ -n "${up_pid:-}" ] && { kill -INT "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null; }
    echo "quickstart: $pass passed, $fail failed"
    [ "$fail" = 0 ]
    exit $?
}
trap finish EXIT

t0=$(date +%s)
if ! "$CLIENT_VENV/bin/python" -c 'import pyoco_server' 2>/dev/null; then
    python3 -m venv "$CLIENT_VENV" && "$CLIENT_VENV/bin/pip" install -q --disable-pip-version-check 'pyoco-server==0.5.1' \
        || { ko "pip install pyoco-server==0.5.1 (the original's client)"; exit 1; }
fi
ok "the original's pyoco-client installed ($(( $(date +%s) - t0 )) s)"
"$PY" -c 'import pyoco' || { ko "$PY has pyoco"; exit 1; }
if "$PY" -c 'import pyoco_server' 2>/dev/null; then
    ko "the worker's Python must not have the original installed (the stand-in is under test)"; exit 1
fi

cat > "$W/flow.yaml" <<'YAML'
version: 1
flow:
  graph: |
    add_one >> to_text
  defaults:
    x: 1
tasks:
  add_one:
    callable: pyoco_server._workflow_test_tasks:add_one
  to_text:
    callable: pyoco_server._workflow_test_tasks:to_text
YAML

cd "$W"
pyoco-server up --with-nats-bootstrap --host 127.0.0.1 --port 8000 >"$W/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8000/health >/dev/null && break; sleep 0.1; done
if curl -sf http://127.0.0.1:8000/health | grep -q '"nats":"connected"'; then
    ok "pyoco-server up --with-nats-bootstrap: /health 200, NATS connected"
else
    ko "pyoco-server up --with-nats-bootstrap" "$(tail -20 "$W/up.log")"; exit 1
fi
PYOCO_PYTHON=$PY pyoco-worker --nats-url nats://127.0.0.1:4222 --tags hello --worker-id w1 >"$W/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 300); do grep -q "worker ready" "$W/worker.log" && break; sleep 0.1; done
grep -q "worker ready" "$W/worker.log" && ok "pyoco-worker --tags hello --worker-id w1 ready" \
    || { ko "pyoco-worker ready" "$(tail -20 "$W/worker.log")"; exit 1; }

client="$CLIENT_VENV/bin/pyoco-client --server http://127.0.0.1:8000"
out=$($client submit-yaml --workflow-file flow.yaml --flow-name main --tag hello)
run_id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null)
[ -n "$run_id" ] && ok "pyoco-client submit-yaml → $out" || { ko "pyoco-client submit-yaml: $out"; exit 1; }
watch=$(timeout 60 $client watch "$run_id" --until-terminal --output status)
last=$(printf '%s\n' "$watch" | tail -n 1 | cut -f3)
[ "$last" = COMPLETED ] && ok "pyoco-client watch --until-terminal --output status ends COMPLETED" \
    || ko "pyoco-client watch ended '$last'" "$watch"
out=$($client get "$run_id" --records)
printf '%s' "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["task_records"]["to_text"]["output"] == "v=2", d' \
    && ok "pyoco-client get --records: task_records.to_text.output == \"v=2\"" || ko "v=2" "$out"

# A stopped stack stops cleanly: the worker first (its record says so), then up.
kill -TERM "$worker_pid"; wait "$worker_pid"; rc=$?; worker_pid=
[ "$rc" = 0 ] && ok "pyoco-worker stops on SIGTERM (exit 0)" || ko "pyoco-worker exit $rc"
state=$(curl -s 'http://127.0.0.1:8000/workers?scope=all' | python3 -c 'import json,sys; print([w.get("state") for w in json.load(sys.stdin) if w.get("worker_id")=="w1"])' 2>/dev/null)
case "$state" in *STOPPED_GRACEFUL*) ok "worker record w1: STOPPED_GRACEFUL" ;; *) ko "worker record w1: $state" ;; esac
t=$(date +%s.%N)
kill -INT "$up_pid"; wait "$up_pid"; rc=$?; up_pid=
took=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
[ "$rc" = 0 ] && ok "Ctrl-C stops up in $took s (exit 0)" || ko "up exit $rc after Ctrl-C" "$(tail -20 "$W/up.log")"
