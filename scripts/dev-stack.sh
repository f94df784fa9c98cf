#!/usr/bin/env bash
# One command for a local stack on a fresh Debian machine: installs nats-server if missing,
# builds the gateway, starts a single-node JetStream nats-server (store in .dev/nats) and the
# gateway in the foreground; Ctrl-C stops both.
#   scripts/dev-stack.sh [--port 8000] [--nats-port 4222]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=8000
NATS_PORT=4222
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --nats-port) NATS_PORT=$2; shift 2 ;;
    *) echo "usage: $0 [--port N] [--nats-port N]" >&2; exit 2 ;;
  esac
done
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "dev-stack: installing nats-server (apt)" >&2
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq nats-server
fi
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
cargo build --release -p pyoco-gateway
mkdir -p .dev/nats
"$NATS_BIN" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$PWD/.dev/nats" > .dev/nats.log 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID 2>/dev/null; wait $NATS_PID 2>/dev/null' EXIT INT TERM
echo "dev-stack: nats-server on nats://127.0.0.1:$NATS_PORT (log .dev/nats.log)" >&2
echo "dev-stack: gateway on http://127.0.0.1:$PORT — Ctrl-C stops both" >&2
PYOCO_LOG_FORMAT=${PYOCO_LOG_FORMAT:-text} ./target/release/pyoco-server \
  --host 127.0.0.1 --port "$PORT" --nats-url "nats://127.0.0.1:$NATS_PORT"
