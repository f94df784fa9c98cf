#!/usr/bin/env bash
# One command for a local stack on a fresh Debian machine: installs nats-server and a Python venv
# with pyoco if missing, builds, then runs `pyoco-server up --with-nats --with-worker --tags hello`
# in the foreground (NATS, gateway on :8000 and a worker); Ctrl-C stops everything.
#   scripts/dev-stack.sh [--port 8000] [--tags hello] [extra `pyoco-server up` flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=8000
TAGS=hello
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --tags) TAGS=$2; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
need=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "dev-stack: apt-get install ${need[*]}" >&2
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
# Debian starts its packaged nats-server on :4222; ours brings its own.
$sudo_cmd systemctl disable --now nats-server >/dev/null 2>&1 || true
VENV=.pyoco-dev/venv
if ! "$VENV/bin/python" -c 'import pyoco' 2>/dev/null; then
  echo "dev-stack: creating $VENV with pyoco" >&2
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'pyoco>=0.6.2'
fi
cargo build --release -p pyoco-gateway -p pyoco-worker -p pyococtl
echo "dev-stack: gateway on http://127.0.0.1:$PORT, worker on tags $TAGS — Ctrl-C stops everything" >&2
PYOCO_LOG_FORMAT=${PYOCO_LOG_FORMAT:-text} exec ./target/release/pyoco-server up \
  --host 127.0.0.1 --port "$PORT" --with-nats --nats-store-dir .pyoco-dev/nats \
  --with-worker --tags "$TAGS" --worker-python "$VENV/bin/python" --worker-pythonpath deploy/examples \
  "${EXTRA[@]}"
