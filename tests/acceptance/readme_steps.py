#!/usr/bin/env python3
"""Runs the README's "Run it" section literally and checks what it promises.

    python3 tests/acceptance/readme_steps.py [--readme README.md] [--list]

The commands come out of README.md itself, so an edit that breaks the user's path fails here:
- the section is the one headed `## Run it`, up to the next `## ` heading;
- its first ```sh block is the set-up command: started in the background (its output goes to
  .acceptance/setup.log), then the gateway's /health and the worker's readiness are awaited;
- every following ```sh block is run by one bash, command by command (a command may continue
  over lines ending in `\\`; shell variables carry over from one command to the next);
- comment lines right after a command state what its output must contain: fragments separated
  by `…` that must appear in that order (`# {"run_id":"…","status":"PENDING"}`);
- every command must exit 0.
Standard library only: it runs on a fresh Debian machine with nothing but python3.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

SETUP_TIMEOUT = float(os.environ.get("ACCEPT_SETUP_TIMEOUT", "1800"))
STEP_TIMEOUT = float(os.environ.get("ACCEPT_STEP_TIMEOUT", "120"))


def section(text, heading):
    m = re.search(rf"^## {re.escape(heading)}\s*$", text, re.M)
    if not m:
        sys.exit(f"acceptance: README has no '## {heading}' section")
    rest = text[m.end():]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start()] if end else rest


def sh_blocks(text):
    return [b for b in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)]


def steps(block):
    """[(command, [expected fragments lists])]: continuation lines joined, comments attached."""
    out = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.lstrip().startswith("#"):
            if not out:
                sys.exit(f"acceptance: an expectation comes before any command: {line!r}")
            out[-1][1].append(expectation(line))
            i += 1
            continue
        cmd = [line]
        while cmd[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd.append(lines[i])
        out.append(("\n".join(cmd), []))
        i += 1
    return out


def expectation(comment):
    body = comment.lstrip()[1:].strip()
    return [f.strip() for f in body.split("…") if f.strip()]


def check_output(output, fragments):
    pos = 0
    for f in fragments:
        j = output.find(f, pos)
        if j < 0:
            return f
        pos = j + len(f)
    return None


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status == 200, r.read().decode()
    except Exception as exc:  # not up yet
        return False, str(exc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--list", action="store_true", help="print the steps and exit")
    ap.add_argument("--gateway", default="http://127.0.0.1:8000")
    args = ap.parse_args()
    text = open(args.readme, encoding="utf-8").read()
    blocks = sh_blocks(section(text, "Run it"))
    if len(blocks) < 2:
        sys.exit("acceptance: '## Run it' needs a set-up block and at least one block of commands")
    setup, rest = blocks[0].strip(), blocks[1:]
    if args.list:
        print("setup:", setup)
        for b in rest:
            for cmd, exp in steps(b):
                print("step:", cmd, "| expect:", exp)
        return 0

    os.makedirs(".acceptance", exist_ok=True)
    passed = failed = 0
    t0 = time.monotonic()
    log = open(".acceptance/setup.log", "wb")
    print(f"== setup (background): {setup}", flush=True)
    stack = subprocess.Popen(["bash", "-c", setup], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(n=40):
        log.flush()
        with open(".acceptance/setup.log", "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")

    ready = False
    deadline = time.monotonic() + SETUP_TIMEOUT
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            print(f"FAIL setup exited ({stack.returncode}) before the stack was ready:\n{tail()}")
            print("acceptance: 0 passed, 1 failed")
            return 1
        ok, body = http_ok(args.gateway + "/health")
        if ok and '"connected"' in body and "stack ready" in tail(200):
            ready = True
            break
        time.sleep(1)
    if not ready:
        print(f"FAIL setup not ready after {SETUP_TIMEOUT:.0f} s:\n{tail()}")
        os.killpg(stack.pid, signal.SIGTERM)
        print("acceptance: 0 passed, 1 failed")
        return 1
    print(f"PASS setup ready in {time.monotonic() - t0:.1f} s", flush=True)
    passed += 1

    try:
        for n, block in enumerate(rest, 1):
            block_steps = steps(block)
            # One bash per block, so variables set by one command serve the next.
            script = ["set -o pipefail"]
            for k, (cmd, _) in enumerate(block_steps):
                script.append(f"echo '@@step {k} begin'")
                script.append(f"{{ {cmd}\n}} 2>&1")
                # On a line of its own even when the output does not end in a newline.
                script.append(f"rc=$?; printf '\\n@@step {k} rc=%d\\n' \"$rc\"")
            t = time.monotonic()
            r = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True,
                               timeout=STEP_TIMEOUT * max(1, len(block_steps)))
            outputs = {}
            cur = None
            for line in r.stdout.splitlines():
                m = re.match(r"@@step (\d+) (begin|rc=(\d+))$", line)
                if m and m.group(2) == "begin":
                    cur = int(m.group(1))
                    outputs[cur] = {"out": [], "rc": None}
                elif m:
                    outputs[int(m.group(1))]["rc"] = int(m.group(3))
                    cur = None
                elif cur is not None:
                    outputs[cur]["out"].append(line)
            for k, (cmd, exps) in enumerate(block_steps):
                res = outputs.get(k)
                first = cmd.splitlines()[0]
                if res is None or res["rc"] is None:
                    print(f"FAIL block {n} step {k}: did not run: {first}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                    failed += 1
                    continue
                text_out = "\n".join(res["out"])
                problems = []
                if res["rc"] != 0:
                    problems.append(f"exit status {res['rc']}")
                for frags in exps:
                    missing = check_output(text_out, frags)
                    if missing is not None:
                        problems.append(f"output lacks {missing!r} (expected, in order: {frags})")
                if problems:
                    failed += 1
                    print(f"FAIL {first}\n    " + "\n    ".join(problems) + "\n    output:\n" +
                          "\n".join("      " + l for l in res["out"][-30:]))
                else:
                    passed += 1
                    print(f"PASS {first}  ({len(exps)} expectation(s))", flush=True)
            print(f"   block {n}: {time.monotonic() - t:.1f} s", flush=True)
    finally:
        # Ctrl-C of the set-up command: everything must stop within 10 s, cleanly.
        t = time.monotonic()
        os.killpg(stack.pid, signal.SIGINT)
        try:
            rc = stack.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            rc = "killed"
        took = time.monotonic() - t
        if rc == 0 and took <= 10:
            passed += 1
            print(f"PASS Ctrl-C stops the stack in {took:.1f} s (exit 0)")
        else:
            failed += 1
            print(f"FAIL Ctrl-C: exit {rc} after {took:.1f} s\n{tail()}")
    print(f"acceptance: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
