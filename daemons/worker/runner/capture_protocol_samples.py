"""Captures one real message of every event type from pyoco_runner.py, driven like the Rust
worker drives it (a subprocess, JSON lines on pipes), into protocol_samples.jsonl.

The Rust tests (daemons/worker/src/protocol.rs) decode that file; test_runner.py checks it
against EVENTS and that a fresh capture still has the same message shapes.  Regenerate after a
protocol change with a Python that has pyoco:

    .test-env/py311/bin/python daemons/worker/runner/capture_protocol_samples.py
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "pyoco_runner.py")
SAMPLES = os.path.join(HERE, "protocol_samples.jsonl")

TASKS = '''
def greet(name="world"):
    print(f"hello {name}")
    return name

def boom():
    raise ValueError("boom happened")
'''


def _flow(graph, tasks):
    return json.dumps({"version": 1, "flow": {"graph": graph, "defaults": {}},
                       "tasks": {t: {"callable": f"capture_tasks:{t}"} for t in tasks}})


def _start(tmp, args=()):
    env = dict(os.environ, PYTHONPATH=tmp, PYTHONUNBUFFERED="1", PYTHONUTF8="1")
    env.pop("PYTHONHOME", None)
    return subprocess.Popen([sys.executable, RUNNER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp, env=env)


def _read_until(proc, pred):
    out = []
    for raw in proc.stdout:
        msg = json.loads(raw)
        out.append(msg)
        if pred(msg):
            return out
    raise RuntimeError(f"runner exited early; got {out}")


def capture():
    """The messages of one scripted session, in order, with machine-specific paths replaced."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "capture_tasks.py"), "w") as f:
            f.write(TASKS)
        msgs = []
        proc = _start(tmp)
        try:
            msgs += _read_until(proc, lambda m: m["type"] in ("ready", "fatal"))

            def send(obj, pred):
                proc.stdin.write((json.dumps(obj) + "\n").encode())
                proc.stdin.flush()
                return _read_until(proc, pred)

            msgs += send({"type": "ping", "seq": 1}, lambda m: m["type"] == "pong")
            msgs += send({"type": "run", "run_id": "r-ok", "flow_name": "main", "params": {"name": "pyoco"},
                          "workflow_yaml": _flow("greet", ["greet"])},
                         lambda m: m["type"] == "run_finished")
            msgs += send({"type": "run", "run_id": "r-fail", "flow_name": "main", "params": {},
                          "workflow_yaml": _flow("boom", ["boom"])},
                         lambda m: m["type"] == "run_finished")
            msgs += send({"type": "cancel", "run_id": "r-later"}, lambda m: m["type"] == "cancel_ack")
            msgs += send({"type": "telemetry"}, lambda m: m["type"] == "error")
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        bad = _start(tmp, ["--flow-resolver", "no_such_module_for_capture:resolve"])
        msgs += _read_until(bad, lambda m: m["type"] == "fatal")
        bad.wait(timeout=30)
        # Machine-specific paths out, so the samples do not change with the checkout.
        text = json.dumps(msgs).replace(tmp, "/tmp/capture")
        text = text.replace(json.dumps(sys.executable)[1:-1], "/usr/bin/python3")
        text = text.replace(json.dumps(HERE)[1:-1], "/usr/lib/pyoco-worker/runner")
        text = text.replace(json.dumps(sys.prefix)[1:-1], "/opt/venv")
        return json.loads(text)


def shapes(msgs):
    """(type, sorted field names) of each message: what must stay in step with the Rust side."""
    return sorted({(m["type"], tuple(sorted(m))) for m in msgs})


def main():
    msgs = capture()
    with open(SAMPLES, "w", encoding="utf-8") as f:
        for m in msgs:
            f.write(json.dumps(m, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {len(msgs)} messages to {SAMPLES}")


if __name__ == "__main__":
    main()
