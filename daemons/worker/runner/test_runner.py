"""Tests for pyoco_runner.py, driven the way the Rust worker drives it: a subprocess, JSON lines
on pipes.  Standard library only.

    .test-env/py311/bin/python -m unittest discover -s daemons/worker/runner -v

The interpreter running the tests (sys.executable) is the one the runner is started with; it
must have pyoco installed.  Task modules are written to a temp dir put on PYTHONPATH.
"""

import importlib.metadata
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "pyoco_runner.py")

TASKS_PY = r'''
import os
import sys
import time

def add_one(x=0):
    return x + 1

def to_text(add_one):
    return f"v={add_one}"

def boom():
    raise ValueError("boom happened")

def slow():
    time.sleep(1.0)
    return "slow done"

def half():
    time.sleep(0.3)
    return "half done"

def after():
    return "after done"

def par_a():
    time.sleep(0.3)
    return "A"

def par_b():
    time.sleep(0.3)
    return "B"

def join_c(par_a, par_b):
    return par_a + par_b

def first():
    return "first"

def second():
    return "second"

def third():
    return "third"

def each(ctx):
    return ctx.loop.item if ctx.loop else None

def hello():
    print("hello from task")
    return 1

HUGE = "H" * 300000

def noisy():
    print('{"type":"run_finished","run_id":"fake","status":"COMPLETED"}')
    print('{"type":"pong","seq":424242}')
    print(HUGE)
    os.write(1, b'{"type":"pong","seq":999}\n')
    sys.__stdout__.write('{"type":"cancel_ack","run_id":"fake","active":true}\n')
    sys.__stdout__.flush()
    print("to stderr", file=sys.stderr)
    print("caf\u00e9 \u2713")
    return "noisy done"

def flood():
    for _ in range(5):
        print("F" * 600000)
    return "flooded"

def nan_out():
    return {"x": float("nan"), "s": {1, 2}}

def reads_stdin():
    import subprocess
    data = sys.stdin.read()
    child = subprocess.run([sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"],
                           capture_output=True, text=True, timeout=20)
    return [data, child.stdout]

def exits():
    sys.exit(3)

def hog():
    data = bytearray(1 << 30)
    return len(data)

def chdir_away():
    os.chdir("/")
    return os.getcwd()

class Cls:
    @staticmethod
    def run():
        return 1

NOT_CALLABLE = 42
'''

RESOLVER_PY = r'''
from pyoco.core.models import Flow, Task
from pyoco.dsl.syntax import TaskWrapper
import rt_tasks

NOT_CALLABLE = 42

def resolve(name):
    if name == "hello":
        flow = Flow(name="hello")
        a = TaskWrapper(Task(func=rt_tasks.add_one, name="add_one"))
        b = TaskWrapper(Task(func=rt_tasks.to_text, name="to_text"))
        flow >> a >> b
        return flow
    if name == "isolated":
        flow = Flow(name="isolated")
        bad = Task(func=rt_tasks.boom, name="boom", fail_policy="isolate")
        ok = Task(func=rt_tasks.first, name="first")
        flow.add_task(bad)
        flow.add_task(ok)
        return flow
    if name == "explodes":
        raise RuntimeError("resolver exploded")
    if name == "not_a_flow":
        return 42
    raise KeyError(name)
'''


def workflow_yaml(graph, tasks, defaults=None):
    """A flow.yaml (JSON is YAML) with tasks {name: callable}."""
    doc = {
        "version": 1,
        "flow": {"graph": graph, "defaults": defaults or {}},
        "tasks": {name: {"callable": c} for name, c in tasks.items()},
    }
    return json.dumps(doc)


def T(*names):
    return {n: f"rt_tasks:{n}" for n in names}


class RunnerProcess:
    """One runner subprocess with a reader thread for its protocol channel."""

    def __init__(self, tmp, args=(), python=None, env_extra=None, cwd=None, pythonpath=None,
                 preexec_fn=None):
        self.cwd = cwd or tempfile.mkdtemp(prefix="cwd-", dir=tmp)
        self.stderr_path = os.path.join(tmp, f"stderr-{time.monotonic_ns()}.txt")
        self.stderr_file = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env["PYTHONPATH"] = pythonpath if pythonpath is not None else tmp
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONUTF8"] = "1"
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [python or sys.executable, RUNNER, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_file,
            cwd=self.cwd, env=env, start_new_session=True, preexec_fn=preexec_fn,
        )
        self.q = queue.Queue()
        self.messages = []       # everything received, in order
        self.bad_lines = []      # anything on the channel that is not one JSON object
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw.decode("utf-8"))
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except Exception:
                self.bad_lines.append(raw[:300])
                continue
            self.messages.append(msg)
            self.q.put(msg)
        self.q.put(None)

    def send(self, obj):
        self.send_raw((json.dumps(obj) + "\n").encode())

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, pred=lambda m: True, timeout=10.0):
        """The next message matching pred (others are skipped but kept in self.messages)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; last messages: {self.messages[-5:]}; stderr: {self.stderr()[-2000:]}")
            try:
                msg = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                self.q.put(None)
                raise AssertionError(f"runner closed its channel; stderr: {self.stderr()[-2000:]}")
            if pred(msg):
                return msg

    def recv_type(self, mtype, run_id=None, timeout=10.0):
        return self.recv(lambda m: m.get("type") == mtype and (run_id is None or m.get("run_id") == run_id), timeout)

    def ready(self):
        return self.recv(lambda m: m.get("type") in ("ready", "fatal"))

    def events(self, run_id, mtype="task"):
        return [m for m in self.messages if m.get("type") == mtype and m.get("run_id") == run_id]

    def stderr(self):
        self.stderr_file.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait(self, timeout=10.0):
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)  # everything the runner wrote has been read
        return code

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send({"type": "shutdown"})
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.stderr_file.close()


class RunnerTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="pyoco-runner-test-")
        with open(os.path.join(cls.tmp, "rt_tasks.py"), "w") as f:
            f.write(TASKS_PY)
        with open(os.path.join(cls.tmp, "resolver.py"), "w") as f:
            f.write(RESOLVER_PY)
        cls.resolver_arg = os.path.join(cls.tmp, "resolver.py") + ":resolve"
        cls.counter = 0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def new_runner(self, *args, **kw):
        r = RunnerProcess(self.tmp, args=args, **kw)
        self.addCleanup(r.close)
        return r

    @classmethod
    def next_id(cls, prefix="run"):
        cls.counter += 1
        return f"{prefix}-{cls.counter}"

    def run_flow(self, runner, graph=None, tasks=None, params=None, flow_name="main",
                 yaml_text=None, timeout=10.0, run_id=None):
        run_id = run_id or self.next_id()
        if graph is not None:
            yaml_text = workflow_yaml(graph, tasks or {})
        runner.send({"type": "run", "run_id": run_id, "flow_name": flow_name,
                     "params": params or {}, "workflow_yaml": yaml_text})
        return runner.recv_type("run_finished", run_id, timeout=timeout)

    def task_states(self, runner, run_id, task):
        return [m["state"] for m in runner.events(run_id) if m["task"] == task]


class SharedRunnerTests(RunnerTestBase):
    """Most tests share one runner (started with a resolver file), as a pool slot would."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.r = RunnerProcess(cls.tmp, args=("--flow-resolver", cls.resolver_arg))
        cls.ready_msg = cls.r.ready()

    @classmethod
    def tearDownClass(cls):
        cls.r.close()
        super().tearDownClass()

    def tearDown(self):
        self.assertEqual(self.r.bad_lines, [], "non-protocol data on the protocol channel")

    # -- handshake -------------------------------------------------------------------
    def test_ready_handshake(self):
        m = self.ready_msg
        self.assertEqual(m["type"], "ready")
        self.assertEqual(m["pid"], self.r.proc.pid)
        self.assertEqual(m["python"], platform.python_version())
        self.assertEqual(m["python_executable"], sys.executable)
        self.assertEqual(m["pyoco_version"], importlib.metadata.version("pyoco"))
        self.assertEqual(m["protocol"], 1)
        self.assertIs(m["has_resolver"], True)

    # -- basic flows -----------------------------------------------------------------
    def test_example_flow(self):
        fin = self.run_flow(self.r, "add_one >> to_text", T("add_one", "to_text"), {"x": 1})
        rid = fin["run_id"]
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertIsNone(fin["error"])
        self.assertIsNone(fin["error_kind"])
        self.assertEqual(fin["flow_name"], "main")
        self.assertEqual(fin["tasks"], {"add_one": "SUCCEEDED", "to_text": "SUCCEEDED"})
        self.assertEqual(fin["task_records"]["to_text"]["output"], "v=2")
        self.assertEqual(fin["task_records"]["add_one"]["output"], 2)
        self.assertEqual(fin["task_records"]["add_one"]["inputs"], {"x": 1})
        self.assertLessEqual(fin["start_time"], fin["end_time"])
        started = [m for m in self.r.messages if m.get("type") == "run_started" and m["run_id"] == rid]
        self.assertEqual(started, [{"type": "run_started", "run_id": rid, "flow_name": "main",
                                    "tasks": ["add_one", "to_text"]}])
        self.assertEqual(self.task_states(self.r, rid, "add_one"), ["PENDING", "RUNNING", "SUCCEEDED"])
        self.assertEqual(self.task_states(self.r, rid, "to_text"), ["PENDING", "RUNNING", "SUCCEEDED"])
        ev = [(m["task"], m["state"]) for m in self.r.events(rid) if m["state"] != "PENDING"]
        self.assertEqual(ev, [("add_one", "RUNNING"), ("add_one", "SUCCEEDED"),
                              ("to_text", "RUNNING"), ("to_text", "SUCCEEDED")])
        for m in self.r.events(rid):
            self.assertIsInstance(m["ts"], float)
            if m["state"] == "SUCCEEDED":
                self.assertIsInstance(m["duration_ms"], float)
        # the order on the channel: run_started, task events, run_finished
        idx = [i for i, m in enumerate(self.r.messages) if m.get("run_id") == rid]
        kinds = [self.r.messages[i]["type"] for i in idx]
        self.assertEqual(kinds[0], "run_started")
        self.assertEqual(kinds[-1], "run_finished")

    def test_resolver_flow(self):
        fin = self.run_flow(self.r, flow_name="hello", params={"x": 41})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["flow_name"], "hello")
        self.assertEqual(fin["task_records"]["to_text"]["output"], "v=42")

    def test_parallel(self):
        fin = self.run_flow(self.r, "(par_a & par_b) >> join_c", T("par_a", "par_b", "join_c"))
        self.assertEqual(fin["status"], "COMPLETED", fin)
        rec = fin["task_records"]
        self.assertEqual(rec["join_c"]["output"], "AB")
        a, b, c = rec["par_a"], rec["par_b"], rec["join_c"]
        # a and b overlapped; c started after both ended
        self.assertLess(a["started_at"], b["ended_at"])
        self.assertLess(b["started_at"], a["ended_at"])
        self.assertGreaterEqual(c["started_at"], max(a["ended_at"], b["ended_at"]))
        for t in ("par_a", "par_b", "join_c"):
            self.assertEqual(self.task_states(self.r, fin["run_id"], t), ["PENDING", "RUNNING", "SUCCEEDED"])

    def test_task_exception(self):
        fin = self.run_flow(self.r, "add_one >> boom >> to_text", T("add_one", "boom", "to_text"))
        rid = fin["run_id"]
        self.assertEqual(fin["status"], "FAILED")
        self.assertEqual(fin["error"], "boom happened")
        self.assertEqual(fin["error_kind"], "execution_error")
        self.assertEqual(fin["exc_type"], "ValueError")
        self.assertIn("ValueError: boom happened", fin["traceback"])
        self.assertIn("in boom", fin["traceback"])
        self.assertEqual(fin["tasks"], {"add_one": "SUCCEEDED", "boom": "FAILED", "to_text": "PENDING"})
        self.assertEqual(fin["task_records"]["boom"]["error"], "boom happened")
        failed = [m for m in self.r.events(rid) if m["state"] == "FAILED"]
        self.assertEqual([(m["task"], m["error"]) for m in failed], [("boom", "boom happened")])
        self.assertEqual(self.task_states(self.r, rid, "to_text"), ["PENDING"])

    def test_isolated_failure_completes_with_error(self):
        fin = self.run_flow(self.r, flow_name="isolated")
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["error"], "boom happened")
        self.assertIsNone(fin["error_kind"])
        self.assertEqual(fin["tasks"], {"boom": "FAILED", "first": "SUCCEEDED"})

    # -- resolution errors ------------------------------------------------------------
    def test_flow_not_found(self):
        fin = self.run_flow(self.r, flow_name="nope")
        self.assertEqual(fin["status"], "FAILED")
        self.assertEqual(fin["error"], "flow_not_found: 'nope'")
        self.assertEqual(fin["error_kind"], "flow_not_found")
        self.assertEqual(fin["exc_type"], "KeyError")
        self.assertEqual(fin["flow_name"], "nope")
        self.assertEqual(fin["tasks"], {})
        self.assertEqual(self.r.events(fin["run_id"], "run_started"), [])

    def test_resolver_other_errors(self):
        fin = self.run_flow(self.r, flow_name="explodes")
        self.assertEqual((fin["status"], fin["error_kind"], fin["error"]),
                         ("FAILED", "build_error", "resolver exploded"))
        self.assertEqual(fin["exc_type"], "RuntimeError")
        fin = self.run_flow(self.r, flow_name="not_a_flow")
        self.assertEqual((fin["status"], fin["error_kind"]), ("FAILED", "build_error"))
        self.assertIn("expected a pyoco Flow", fin["error"])

    def test_import_errors(self):
        fin = self.run_flow(self.r, "add_one >> to_text",
                            {"add_one": "no_such_mod_xyz:add_one", "to_text": "rt_tasks:to_text"})
        self.assertEqual(fin["status"], "FAILED")
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertEqual(fin["error"], "cannot import callable 'no_such_mod_xyz:add_one' of task 'add_one': "
                                       "ModuleNotFoundError: No module named 'no_such_mod_xyz'")
        self.assertEqual(fin["exc_type"], "ModuleNotFoundError")
        self.assertIn("No module named 'no_such_mod_xyz'", fin["traceback"])
        self.assertEqual(self.r.events(fin["run_id"]), [])

        fin = self.run_flow(self.r, "add_one", {"add_one": "rt_tasks:nope"})
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertEqual(fin["error"], "cannot import callable 'rt_tasks:nope' of task 'add_one': "
                                       "AttributeError: module 'rt_tasks' has no attribute 'nope'")

        fin = self.run_flow(self.r, "add_one", {"add_one": "rt_tasks:Cls.run"})
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertTrue(fin["error"].startswith(
            "cannot import callable 'rt_tasks:Cls.run' of task 'add_one': "
            "AttributeError: module 'rt_tasks' has no attribute 'Cls.run'"), fin["error"])
        self.assertIn("dotted", fin["error"])

        fin = self.run_flow(self.r, "add_one", {"add_one": "rt_tasks:a:b"})
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertIn("exactly one ':'", fin["error"])

    def test_yaml_reason_codes(self):
        fin = self.run_flow(self.r, yaml_text="flows: {}\n")
        self.assertEqual((fin["status"], fin["error_kind"], fin["error"]),
                         ("FAILED", "build_error", "unsupported_key_flows"))
        fin = self.run_flow(self.r, yaml_text="- 1\n")
        self.assertEqual(fin["error"], "invalid_yaml_root")
        fin = self.run_flow(self.r, yaml_text="flow: {graph: 'a >> '}\n")
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertEqual(fin["exc_type"], "SyntaxError")

    # -- the restricted graph ----------------------------------------------------------
    def test_graph_not_allowed(self):
        cases = [
            ("import os", "import statement at line 1, col 0"),
            ('os.system("x")', "attribute access 'os.system' at line 1, col 0"),
            ('__import__("os")', "call of '__import__'"),
            ("first.task", "attribute access 'first.task' at line 1, col 0"),
            ("x = first", "assignment at line 1, col 0"),
            ("[t for t in first]", "list comprehension at line 1, col 0"),
            ("first >> nope", "unknown name 'nope'"),
            ("lambda: first", "lambda at line 1, col 0"),
            ("first >> second\nfirst >> (lambda: 1)", "lambda at line 2, col 10"),
            ("print(first)", "call of 'print'"),
            ('switch(first)["x" >> second]', "non-constant argument 'first' to switch()"),
            ("first + second", "operator '+'"),
            ("first[1:2]", "slice"),
            ("(x := first)", "assignment expression"),
            ("first if True else second", "conditional expression"),
            ("{'a': first}", "dict display"),
            ("-first", "unary operator"),
            ('f"{first}"', "f-string"),
            ("b'x'", "constant"),
            ("__builtins__", "unknown name '__builtins__'"),
            ("def f(): pass", "function definition"),
            ("for t in []: pass", "for loop"),
        ]
        for graph, expected in cases:
            with self.subTest(graph=graph):
                fin = self.run_flow(self.r, graph, T("first", "second"))
                self.assertEqual(fin["status"], "FAILED", fin)
                self.assertEqual(fin["error_kind"], "graph_not_allowed", fin)
                self.assertTrue(fin["error"].startswith("graph_not_allowed: "), fin["error"])
                self.assertIn(expected, fin["error"])
                self.assertIn(" at line ", fin["error"])
                # nothing ran, nothing was announced
                self.assertEqual(self.r.events(fin["run_id"]), [])
                self.assertEqual(self.r.events(fin["run_id"], "run_started"), [])
                self.assertEqual(fin["tasks"], {})

    def test_repeat(self):
        fin = self.run_flow(self.r, "flow >> first >> second[2]", T("first", "second"))
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(self.task_states(self.r, fin["run_id"], "second"),
                         ["PENDING", "RUNNING", "SUCCEEDED", "RUNNING", "SUCCEEDED"])

    def test_foreach(self):
        fin = self.run_flow(self.r, 'flow >> each["$ctx.params.items as it"]', T("each"),
                            params={"items": [1, 2, 3]})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(self.task_states(self.r, fin["run_id"], "each").count("RUNNING"), 3)
        self.assertEqual(fin["task_records"]["each"]["output"], 3)

    def test_until(self):
        fin = self.run_flow(self.r, 'flow >> first % ("$ctx.params.done", 5)', T("first"),
                            params={"done": True})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(self.task_states(self.r, fin["run_id"], "first"), ["PENDING", "RUNNING", "SUCCEEDED"])

    def test_switch_with_default(self):
        graph = 'flow >> first >> switch("$ctx.params.mode")["x" >> second, "*" >> third]'
        fin = self.run_flow(self.r, graph, T("first", "second", "third"), params={"mode": "other"})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["tasks"], {"first": "SUCCEEDED", "second": "PENDING", "third": "SUCCEEDED"})
        fin = self.run_flow(self.r, graph, T("first", "second", "third"), params={"mode": "x"})
        self.assertEqual(fin["tasks"], {"first": "SUCCEEDED", "second": "SUCCEEDED", "third": "PENDING"})

    def test_or_join(self):
        fin = self.run_flow(self.r, "(first | second) >> third", T("first", "second", "third"))
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["tasks"]["third"], "SUCCEEDED")
        self.assertEqual(fin["task_records"]["third"]["output"], "third")

    def test_multi_statement_graph_and_fanout_error(self):
        fin = self.run_flow(self.r, "first >> second\nfirst >> third\n# comment\n", T("first", "second", "third"))
        self.assertEqual(fin["status"], "COMPLETED", fin)
        rec = fin["task_records"]
        self.assertGreaterEqual(rec["second"]["started_at"], rec["first"]["ended_at"])
        self.assertGreaterEqual(rec["third"]["started_at"], rec["first"]["ended_at"])
        # pyoco's own operator semantics: fan-out with & is a TypeError (build error)
        fin = self.run_flow(self.r, "first >> (second & third)", T("first", "second", "third"))
        self.assertEqual((fin["status"], fin["error_kind"], fin["exc_type"]), ("FAILED", "build_error", "TypeError"))
        self.assertIn("Cannot treat", fin["error"])

    def test_unreferenced_tasks_still_run(self):
        # like the original: every loaded task is part of the flow
        fin = self.run_flow(self.r, "first", T("first", "second"))
        self.assertEqual(fin["tasks"], {"first": "SUCCEEDED", "second": "SUCCEEDED"})

    # -- cancel, busy, ping ------------------------------------------------------------
    def test_cooperative_cancel(self):
        rid = self.next_id("cancel")
        t0 = time.monotonic()
        self.r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {},
                     "workflow_yaml": workflow_yaml("slow >> after", T("slow", "after"))})
        self.r.recv(lambda m: m.get("type") == "task" and m.get("run_id") == rid
                    and m["task"] == "slow" and m["state"] == "RUNNING")
        time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))
        self.r.send({"type": "cancel", "run_id": rid})
        ack = self.r.recv_type("cancel_ack", rid)
        self.assertEqual(ack, {"type": "cancel_ack", "run_id": rid, "active": True})
        fin = self.r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "CANCELLED", fin)
        self.assertIsNone(fin["error"])
        self.assertIsNone(fin["error_kind"])
        self.assertEqual(fin["tasks"], {"slow": "SUCCEEDED", "after": "CANCELLED"})
        self.assertEqual(self.task_states(self.r, rid, "slow"), ["PENDING", "RUNNING", "SUCCEEDED"])
        self.assertEqual(self.task_states(self.r, rid, "after"), ["PENDING", "CANCELLED"])
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)

    def test_cancel_during_the_last_task_ends_cancelled(self):
        # The last (only) task finishes successfully after the cancel was accepted: nothing is
        # left to skip, and the run still ends CANCELLED, with the task's result kept.
        rid = self.next_id("lastcancel")
        self.r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {},
                     "workflow_yaml": workflow_yaml("slow", T("slow"))})
        self.r.recv(lambda m: m.get("type") == "task" and m.get("run_id") == rid
                    and m["task"] == "slow" and m["state"] == "RUNNING")
        self.r.send({"type": "cancel", "run_id": rid})
        self.assertTrue(self.r.recv_type("cancel_ack", rid)["active"])
        fin = self.r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "CANCELLED", fin)
        self.assertEqual(fin["tasks"], {"slow": "SUCCEEDED"})
        self.assertEqual(fin["task_records"]["slow"]["output"], "slow done")

    def test_cancel_sent_with_run_is_sticky(self):
        # run and cancel in one write: the cancel is read before the engine registers the run
        rid = self.next_id("sticky")
        req = {"type": "run", "run_id": rid, "flow_name": "main", "params": {},
               "workflow_yaml": workflow_yaml("half >> after", T("half", "after"))}
        self.r.send_raw((json.dumps(req) + "\n" + json.dumps({"type": "cancel", "run_id": rid}) + "\n").encode())
        # The ack and the end of the (fast) run may come in either order.
        got = {}
        while len(got) < 2:
            m = self.r.recv(lambda m: m.get("run_id") == rid and m.get("type") in ("cancel_ack", "run_finished"))
            got[m["type"]] = m
        self.assertTrue(got["cancel_ack"]["active"])
        fin = got["run_finished"]
        self.assertEqual(fin["status"], "CANCELLED", fin)
        self.assertEqual(fin["tasks"]["after"], "CANCELLED")
        self.assertNotIn("RUNNING", self.task_states(self.r, rid, "after"))

    def test_cancel_before_run_message(self):
        rid = self.next_id("precancel")
        self.r.send({"type": "cancel", "run_id": rid})
        self.assertEqual(self.r.recv_type("cancel_ack", rid)["active"], False)
        fin = self.run_flow(self.r, "half >> after", T("half", "after"), run_id=rid)
        self.assertEqual(fin["status"], "CANCELLED", fin)
        self.assertEqual(fin["tasks"], {"half": "CANCELLED", "after": "CANCELLED"})
        self.assertNotIn("RUNNING", self.task_states(self.r, rid, "half"))

    def test_cancel_unknown_run(self):
        self.r.send({"type": "cancel", "run_id": "never-seen"})
        self.assertEqual(self.r.recv_type("cancel_ack", "never-seen"),
                         {"type": "cancel_ack", "run_id": "never-seen", "active": False})

    def test_busy_and_ping_while_task_sleeps(self):
        rid = self.next_id("busy")
        self.r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {},
                     "workflow_yaml": workflow_yaml("slow", T("slow"))})
        self.r.recv(lambda m: m.get("type") == "task" and m.get("run_id") == rid and m["state"] == "RUNNING")
        t0 = time.monotonic()
        self.r.send({"type": "ping", "seq": 7})
        self.assertEqual(self.r.recv_type("pong"), {"type": "pong", "seq": 7})
        self.assertLess(time.monotonic() - t0, 0.5)
        other = self.next_id("busy")
        self.r.send({"type": "run", "run_id": other, "flow_name": "hello", "params": {}, "workflow_yaml": None})
        err = self.r.recv_type("error", other)
        self.assertEqual(err["kind"], "busy")
        self.assertIn(rid, err["message"])
        fin = self.r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertEqual(self.r.events(other, "run_finished"), [])
        # immediately after run_finished the runner takes the next run
        fin = self.run_flow(self.r, flow_name="hello", params={"x": 1})
        self.assertEqual(fin["status"], "COMPLETED")

    # -- the channel -----------------------------------------------------------------
    def test_task_output_never_corrupts_channel(self):
        fin = self.run_flow(self.r, "noisy", T("noisy"))
        rid = fin["run_id"]
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(self.r.bad_lines, [])
        # none of the fake protocol lines the task wrote arrived as messages
        self.assertFalse([m for m in self.r.messages if m.get("run_id") == "fake"])
        self.assertFalse([m for m in self.r.messages if m.get("type") == "pong" and m.get("seq") in (999, 424242)])
        logs = self.r.events(rid, "log")
        for m in logs:
            self.assertEqual(m["task"], "noisy")
            self.assertLessEqual(len(m["text"].encode("utf-8")), 64 * 1024)
        out = "".join(m["text"] for m in logs if m["stream"] == "stdout")
        self.assertIn('{"type":"run_finished","run_id":"fake","status":"COMPLETED"}\n', out)
        self.assertIn("H" * 300000 + "\n", out)
        self.assertIn("caf\u00e9 \u2713\n", out)
        err = "".join(m["text"] for m in logs if m["stream"] == "stderr")
        self.assertIn("to stderr", err)
        # the text written to fd 1 went to stderr
        self.assertIn('{"type":"pong","seq":999}', self.r.stderr())

    def test_log_volume_is_bounded(self):
        fin = self.run_flow(self.r, "flood", T("flood"))
        self.assertEqual(fin["status"], "COMPLETED")
        logs = self.r.events(fin["run_id"], "log")
        total = sum(len(m["text"].encode()) for m in logs)
        self.assertLessEqual(total, 2 * 1024 * 1024 + 200)
        self.assertTrue(logs[-1].get("truncated"))
        self.assertIn("truncated", logs[-1]["text"])
        self.assertEqual(sum(1 for m in logs if m.get("truncated")), 1)

    def test_log_event(self):
        fin = self.run_flow(self.r, "hello", T("hello"))
        logs = self.r.events(fin["run_id"], "log")
        self.assertEqual([(m["task"], m["stream"], m["text"]) for m in logs],
                         [("hello", "stdout", "hello from task\n")])

    def test_non_json_output_values(self):
        fin = self.run_flow(self.r, "nan_out", T("nan_out"))
        self.assertEqual(fin["status"], "COMPLETED", fin)
        out = fin["task_records"]["nan_out"]["output"]
        self.assertIsInstance(out, str)  # pyoco's serialize_task_records repr()s it (a set inside)
        self.assertEqual(self.r.bad_lines, [])

    def test_tasks_cannot_read_requests(self):
        # a task reading stdin (itself or through a child process) must not eat our requests
        rid = self.next_id("stdin")
        req = {"type": "run", "run_id": rid, "flow_name": "main", "params": {},
               "workflow_yaml": workflow_yaml("reads_stdin", T("reads_stdin"))}
        self.r.send_raw((json.dumps(req) + "\n" + json.dumps({"type": "ping", "seq": "s1"}) + "\n").encode())
        self.assertEqual(self.r.recv_type("pong")["seq"], "s1")
        self.r.send({"type": "ping", "seq": "s2"})
        self.assertEqual(self.r.recv_type("pong")["seq"], "s2")
        fin = self.r.recv_type("run_finished", rid, timeout=20)
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["task_records"]["reads_stdin"]["output"], ["", "0\n"])

    def test_task_calling_sys_exit(self):
        fin = self.run_flow(self.r, "exits", T("exits"))
        self.assertEqual((fin["status"], fin["error_kind"], fin["exc_type"]),
                         ("FAILED", "execution_error", "SystemExit"))
        self.assertEqual(fin["tasks"], {"exits": "FAILED"})
        self.assertEqual(fin["task_records"]["exits"]["error"], "3")
        self.assertEqual(self.task_states(self.r, fin["run_id"], "exits"), ["PENDING", "RUNNING", "FAILED"])
        self.assertIsNone(self.r.proc.poll())
        fin = self.run_flow(self.r, "add_one", T("add_one"))
        self.assertEqual(fin["status"], "COMPLETED")

    def test_task_changing_cwd(self):
        fin = self.run_flow(self.r, "chdir_away", T("chdir_away"))
        self.assertEqual(fin["status"], "COMPLETED")
        fin = self.run_flow(self.r, "add_one", T("add_one"))
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertFalse(os.path.exists("/artifacts") and not os.path.exists(os.path.join(self.r.cwd, "artifacts")))
        self.assertTrue(os.path.isdir(os.path.join(self.r.cwd, "artifacts")))

    def test_bad_requests(self):
        bad = [
            b"this is not json\n",
            b"[1, 2, 3]\n",
            b"\xff\xfe garbage\n",
            b'{"no_type": 1}\n',
            b'{"type": "frobnicate"}\n',
            b'{"type": "run", "flow_name": "main", "params": {}}\n',
            b'{"type": "run", "run_id": "x1", "params": {}}\n',
            b'{"type": "run", "run_id": "x2", "flow_name": "main", "params": [1]}\n',
            b'{"type": "run", "run_id": "x3", "flow_name": 5, "params": {}}\n',
            b'{"type": "run", "run_id": "x4", "flow_name": "main", "params": {}, "workflow_yaml": 3}\n',
            b'{"type": "cancel"}\n',
            b'{"type": 5}\n',
        ]
        for line in bad:
            with self.subTest(line=line):
                self.r.send_raw(line)
                err = self.r.recv_type("error")
                self.assertEqual(err["kind"], "bad_request", err)
                self.assertIsInstance(err["message"], str)
        self.r.send_raw(b"\n   \n")  # blank lines are ignored
        self.r.send({"type": "ping", "seq": "after-bad"})
        self.assertEqual(self.r.recv_type("pong")["seq"], "after-bad")
        fin = self.run_flow(self.r, "add_one >> to_text", T("add_one", "to_text"), {"x": 1})
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertIsNone(self.r.proc.poll())


REEXPORT_PY = r'''
from os import getpid as innocent          # a stdlib function re-exported under a harmless name
from subprocess import getoutput

def own():
    return "own"
'''


class CallablePolicyTests(RunnerTestBase):
    """The callable policy (issue: any submitter ran any code): what a flow.yaml may name."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with open(os.path.join(cls.tmp, "reexport_tasks.py"), "w") as f:
            f.write(REEXPORT_PY)
        cls.r = RunnerProcess(cls.tmp)
        assert cls.r.ready()["type"] == "ready"

    @classmethod
    def tearDownClass(cls):
        cls.r.close()
        super().tearDownClass()

    def refused(self, fin, callable_path, why):
        self.assertEqual((fin["status"], fin["error_kind"]), ("FAILED", "callable_not_allowed"), fin)
        self.assertTrue(fin["error"].startswith("callable_not_allowed: "), fin["error"])
        self.assertIn(repr(callable_path), fin["error"])
        self.assertIn(why, fin["error"])
        self.assertIn("fix: ", fin["error"])
        self.assertEqual(self.r.events(fin["run_id"]), [], "nothing may run")

    def test_standard_library_refused_before_import(self):
        for path in ("subprocess:getoutput", "os:system", "os.path:join", "builtins:exec",
                     "posix:system", "importlib:import_module", "_io:open"):
            with self.subTest(path=path):
                fin = self.run_flow(self.r, "t", {"t": path}, params={"cmd": "id"})
                self.refused(fin, path, "part of the Python standard library")

    def test_site_packages_and_runner_refused(self):
        # yaml and pyoco are installed in the runner's site-packages: not task code
        fin = self.run_flow(self.r, "t", {"t": "yaml:safe_load"})
        self.refused(fin, "yaml:safe_load", "outside the worker's --pythonpath directories")
        fin = self.run_flow(self.r, "t", {"t": "pyoco_runner:main"})
        self.refused(fin, "pyoco_runner:main", "the runner itself")
        fin = self.run_flow(self.r, "t", {"t": "__main__:main"})
        self.refused(fin, "__main__:main", "the runner itself")

    def test_reexported_stdlib_function_refused(self):
        fin = self.run_flow(self.r, "t", {"t": "reexport_tasks:getoutput"}, params={"cmd": "id"})
        self.refused(fin, "reexport_tasks:getoutput", "defined in 'subprocess'")
        fin = self.run_flow(self.r, "t", {"t": "reexport_tasks:innocent"})
        self.refused(fin, "reexport_tasks:innocent", "standard library")
        fin = self.run_flow(self.r, "t", {"t": "reexport_tasks:own"})
        self.assertEqual(fin["status"], "COMPLETED", fin)

    def test_pythonpath_modules_allowed_and_missing_module_reported_as_before(self):
        fin = self.run_flow(self.r, "add_one >> to_text", T("add_one", "to_text"), params={"x": 1})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        fin = self.run_flow(self.r, "t", {"t": "no_such_mod_abc:f"})
        self.assertEqual(fin["error_kind"], "build_error")
        self.assertIn("No module named 'no_such_mod_abc'", fin["error"])

    def test_allow_list_and_star(self):
        r = self.new_runner("--callable-allow", " json , yaml:safe_dump")
        self.assertEqual(r.ready()["type"], "ready")
        fin = self.run_flow(r, "t", {"t": "json:dumps"}, params={"obj": [1]})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        fin = self.run_flow(r, "t", {"t": "yaml:safe_dump"}, params={"data": 1})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        fin = self.run_flow(r, "t", {"t": "yaml:safe_load"}, params={"stream": "1"})
        self.assertEqual(fin["error_kind"], "callable_not_allowed", fin)
        self.assertIn("PYOCO_CALLABLE_ALLOW=json,yaml:safe_dump", fin["error"])
        # `json` does not allow `jsonschema` or `json2`: prefixes end at a dot
        fin = self.run_flow(r, "t", {"t": "json2x:f"})
        self.assertEqual(fin["error_kind"], "build_error", fin)
        star = self.new_runner("--callable-allow", "*")
        self.assertEqual(star.ready()["type"], "ready")
        fin = self.run_flow(star, "t", {"t": "os:getpid"})
        self.assertEqual((fin["status"], fin["task_records"]["t"]["output"]), ("COMPLETED", star.proc.pid))

    def test_example_module_allowed_by_name(self):
        compat = os.path.join(HERE, "compat")
        r = self.new_runner("--compat-path", compat)
        self.assertEqual(r.ready()["type"], "ready")
        fin = self.run_flow(r, "add_one >> to_text",
                            {"add_one": "pyoco_server._workflow_test_tasks:add_one",
                             "to_text": "pyoco_server._workflow_test_tasks:to_text"}, params={"x": 1})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        # only that module: the rest of the package is not task code
        fin = self.run_flow(r, "t", {"t": "pyoco_server:__init__"})
        self.assertEqual(fin["error_kind"], "callable_not_allowed", fin)

    def test_recorded_packages_allowed(self):
        """A distribution listed in <venv>/pyoco-task-packages.txt (what `pyococtl runtime setup
        PACKAGE` records) and a pyoco task plug-in may be named; an unlisted package in the same
        site-packages may not."""
        # outside self.tmp, which is the runner's PYTHONPATH (everything there is allowed)
        venv = tempfile.mkdtemp(prefix="pyoco-policy-venv-")
        self.addCleanup(shutil.rmtree, venv, True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        site = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        # the test venv's packages (pyoco, yaml) through a .pth, as a venv would have them
        import sysconfig
        with open(os.path.join(site, "parent.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        for dist, mod in (("My_Tasks", "my_tasks_pkg"), ("other-lib", "other_lib_pkg")):
            os.makedirs(os.path.join(site, mod))
            with open(os.path.join(site, mod, "__init__.py"), "w") as f:
                f.write("def hello(name='x'):\n    return 'hello ' + name\n")
            info = os.path.join(site, f"{dist.replace('-', '_')}-1.0.dist-info")
            os.makedirs(info)
            with open(os.path.join(info, "METADATA"), "w") as f:
                f.write(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
            with open(os.path.join(info, "top_level.txt"), "w") as f:
                f.write(mod + "\n")
        # a pyoco task plug-in (entry point group pyoco.tasks): its module may be named
        os.makedirs(os.path.join(site, "plug_pkg"))
        with open(os.path.join(site, "plug_pkg", "__init__.py"), "w") as f:
            f.write("def register(registry):\n    pass\n\ndef ptask():\n    return 'plugged'\n")
        info = os.path.join(site, "plug_dist-1.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: plug-dist\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write("[pyoco.tasks]\nplug = plug_pkg:register\n")
        with open(os.path.join(venv, "pyoco-task-packages.txt"), "w") as f:
            f.write("# recorded by pyococtl runtime setup\nmy-tasks\n")
        r = self.new_runner(python=os.path.join(venv, "bin", "python"))
        self.assertEqual(r.ready()["type"], "ready", r.stderr())
        fin = self.run_flow(r, "t", {"t": "my_tasks_pkg:hello"})
        self.assertEqual((fin["status"], fin["task_records"]["t"]["output"]), ("COMPLETED", "hello x"), fin)
        fin = self.run_flow(r, "t", {"t": "plug_pkg:ptask"})
        self.assertEqual((fin["status"], fin["task_records"]["t"]["output"]), ("COMPLETED", "plugged"), fin)
        fin = self.run_flow(r, "t", {"t": "other_lib_pkg:hello"})
        self.assertEqual(fin["error_kind"], "callable_not_allowed", fin)
        self.assertIn("pyococtl runtime setup PACKAGE", fin["error"])

    def test_resolver_flows_follow_the_rule(self):
        with open(os.path.join(self.tmp, "evil_resolver.py"), "w") as f:
            f.write("import os\nfrom pyoco.core.models import Flow, Task\n"
                    "def resolve(name):\n    flow = Flow(name=name)\n"
                    "    flow.add_task(Task(func=os.getpid, name='pid'))\n    return flow\n"
                    "def own_task():\n    return 7\n"
                    "def resolve_own(name):\n    flow = Flow(name=name)\n"
                    "    flow.add_task(Task(func=own_task, name='own'))\n    return flow\n")
        r = self.new_runner("--flow-resolver", os.path.join(self.tmp, "evil_resolver.py") + ":resolve")
        self.assertEqual(r.ready()["type"], "ready", r.stderr())
        fin = self.run_flow(r, flow_name="x")
        self.assertEqual(fin["error_kind"], "callable_not_allowed", fin)
        ok = self.new_runner("--flow-resolver", os.path.join(self.tmp, "evil_resolver.py") + ":resolve_own")
        self.assertEqual(ok.ready()["type"], "ready", ok.stderr())
        fin = self.run_flow(ok, flow_name="x")
        self.assertEqual(fin["status"], "COMPLETED", fin)


class GraphBoundsTests(RunnerTestBase):
    """Graph strings that would make the runner allocate or compute without bound are refused
    before anything is evaluated: fast, and the runner's peak memory does not move."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.r = RunnerProcess(cls.tmp)
        cls.r.ready()
        # Warm up (yaml, task module imports) so later growth can only come from the graph.
        cls.r.send({"type": "run", "run_id": "warm-up", "flow_name": "main", "params": {},
                    "workflow_yaml": workflow_yaml("first >> second", T("first", "second"))})
        cls.r.recv_type("run_finished", "warm-up")

    @classmethod
    def tearDownClass(cls):
        cls.r.close()
        super().tearDownClass()

    def peak_rss_kib(self):
        # VmHWM is the high-water mark: a transient allocation shows even after it was freed.
        with open(f"/proc/{self.r.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        self.fail("no VmHWM in /proc/<pid>/status")

    def assert_refused_fast(self, graph, expected):
        before = self.peak_rss_kib()
        t0 = time.monotonic()
        fin = self.run_flow(self.r, graph, T("first", "second", "third"))
        elapsed = time.monotonic() - t0
        self.assertEqual((fin["status"], fin["error_kind"]), ("FAILED", "graph_not_allowed"), fin)
        self.assertTrue(fin["error"].startswith("graph_not_allowed: "), fin["error"])
        self.assertIn(expected, fin["error"])
        self.assertEqual(self.r.events(fin["run_id"], "run_started"), [])
        self.assertLess(elapsed, 0.5, f"refusing {graph[:60]!r} took {elapsed:.3f} s")
        grown = self.peak_rss_kib() - before
        self.assertLess(grown, 16 * 1024, f"peak RSS grew by {grown} KiB for {graph[:60]!r}")
        return fin

    def test_formatting_a_string_constant(self):
        # Before: built a 200 MB string per element while the graph was evaluated.
        fin = self.assert_refused_fast('("%200000000s" % "", first) >> second',
                                       "operator '%' with left operand \"'%200000000s'\"")
        self.assertIn("at line 1, col 1", fin["error"])
        self.assert_refused_fast('first >> second % ("%200000000s" % "x", 2)', "operator '%' with left operand")

    def test_power(self):
        self.assert_refused_fast("first[9 ** 9 ** 9]", "operator '**' at line 1, col 6")
        # In a condition pyoco evaluates during the run: before, the run spun holding the GIL.
        self.assert_refused_fast('flow >> first % ("9 ** 9 ** 9 == 1", 2)',
                                 "operator '**' in expression '9 ** 9 ** 9 == 1'")
        self.assert_refused_fast('flow >> switch("$ctx.params.n ** 99999999")["x" >> second]',
                                 "operator '**' in expression")

    def test_repeating_a_string(self):
        self.assert_refused_fast('first >> ("ab" * 200000000)', "operator '*' at line 1, col 10")
        self.assert_refused_fast('flow >> switch("\'ab\' * 200000000")["x" >> second]',
                                 "operator '*' on a string in expression")
        self.assert_refused_fast('flow >> first["(\'%9s\' % 1) as it"]',
                                 "operator '%' on a string in expression")
        self.assert_refused_fast('first >> ("ab" + "cd")', "operator '+'")

    def test_huge_constants(self):
        self.assert_refused_fast('"' + "x" * 2000 + '" >> first',
                                 "string constant of 2000 bytes (at most 1024")
        self.assert_refused_fast("first[" + "9" * 30 + "]", "integer constant of 100 bits (at most 63)")
        self.assert_refused_fast("flow >> [" + ", ".join(["first"] * 300) + "]",
                                 "list display of 300 elements (at most 256)")

    def test_deep_nesting(self):
        self.assert_refused_fast("first >> [" * 40 + "second" + "]" * 40,
                                 "nesting deeper than 32 levels")
        self.assert_refused_fast("first >> " * 3000 + "second", "graph nested too deeply for Python's parser")

    def test_graph_text_size(self):
        fin = self.assert_refused_fast("first >> second\n" * 5000, "graph text of 80000 bytes (at most 65536)")
        self.assertEqual(fin["tasks"], {})

    def test_operators_on_plain_values(self):
        self.assert_refused_fast("1 >> first >> second", "operator '>>' with left operand '1 >> first'")
        self.assert_refused_fast('switch("x") >> first', "operator '>>' with left operand \"switch('x')\"")
        self.assert_refused_fast("first & 5 % 3", "operator '%' with left operand '5'")
        self.assert_refused_fast('"x" >> ("y" >> first)', "operator '>>' from case label")
        self.assert_refused_fast('"ab"[0] >> first', "subscript of \"'ab'\"")

    def test_bounded_graphs_still_work(self):
        cases = [
            ("first >> second >> third", {}),
            ("flow >> [first, second] >> third", {}),
            ("flow >> (first, second) >> third", {}),
            ("(first & second) >> third", {}),
            ("(first | second) >> [third]", {}),
            ('flow >> first % ("$ctx.params.n * 2 > 1 and $ctx.params.n % 2 == 1", 3)', {"n": 1}),
            ('flow >> switch("$ctx.params.n")[1 >> second, "*" >> third]', {"n": 1}),
            ("first >> second\n" * 100 + "second >> third", {}),
            ("(((first))) >> ((second)) >> third", {}),
        ]
        for graph, params in cases:
            with self.subTest(graph=graph[:60]):
                fin = self.run_flow(self.r, graph, T("first", "second", "third"), params=params)
                self.assertEqual(fin["status"], "COMPLETED", fin)
        fin = self.run_flow(self.r, 'flow >> switch("$ctx.params.n")[1 >> second, "*" >> third]',
                            T("second", "third"), params={"n": 1})
        self.assertEqual(fin["tasks"], {"second": "SUCCEEDED", "third": "PENDING"})


class MemoryLimitTests(RunnerTestBase):
    """A runner under RLIMIT_AS (as the worker starts it with worker_runner_memory_max_bytes)."""

    LIMIT = 512 * 1024 * 1024

    def test_memory_error_ends_the_run_resource_limit_and_the_runner_goes_on(self):
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (self.LIMIT, self.LIMIT))

        r = RunnerProcess(self.tmp, preexec_fn=limit)
        self.addCleanup(r.close)
        self.assertEqual(r.ready()["type"], "ready")
        t0 = time.monotonic()
        fin = self.run_flow(r, "first >> hog >> second", T("first", "hog", "second"))
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertEqual((fin["status"], fin["error_kind"], fin["exc_type"]),
                         ("FAILED", "resource_limit", "MemoryError"), fin)
        self.assertTrue(fin["error"].startswith(
            "resource_limit: task 'hog' ran out of memory (MemoryError) over the runner's memory "
            "limit of 536870912 bytes (512 MiB, RLIMIT_AS)"), fin["error"])
        self.assertIn("PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES", fin["error"])
        self.assertEqual(fin["tasks"], {"first": "SUCCEEDED", "hog": "FAILED", "second": "PENDING"})
        self.assertEqual(fin["task_records"]["hog"]["error"], fin["error"])
        failed = [m for m in r.events(fin["run_id"]) if m["state"] == "FAILED"]
        self.assertEqual([(m["task"], m["error"]) for m in failed], [("hog", fin["error"])])
        # Same process, next run: it completes.
        fin = self.run_flow(r, "add_one >> to_text", T("add_one", "to_text"), {"x": 1})
        self.assertEqual(fin["status"], "COMPLETED", fin)
        self.assertEqual(fin["task_records"]["to_text"]["output"], "v=2")
        self.assertIsNone(r.proc.poll(), "the runner is still alive")


class ProcessLifecycleTests(RunnerTestBase):
    def test_shutdown_after_run(self):
        r = self.new_runner()
        self.assertEqual(r.ready()["type"], "ready")
        rid = self.next_id()
        r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {},
                "workflow_yaml": workflow_yaml("half", T("half"))})
        r.send({"type": "shutdown"})
        self.assertEqual(r.wait(10), 0)
        fin = r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "COMPLETED")

    def test_shutdown_keeps_answering_until_run_ends(self):
        r = self.new_runner()
        r.ready()
        rid = self.next_id()
        r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {},
                "workflow_yaml": workflow_yaml("slow >> after", T("slow", "after"))})
        r.recv(lambda m: m.get("type") == "task" and m.get("run_id") == rid and m["state"] == "RUNNING")
        r.send({"type": "shutdown"})
        r.send({"type": "ping", "seq": 1})
        self.assertEqual(r.recv_type("pong")["seq"], 1)
        r.send({"type": "run", "run_id": "late", "flow_name": "main", "params": {}, "workflow_yaml": None})
        self.assertEqual(r.recv_type("error", "late")["kind"], "busy")
        r.send({"type": "cancel", "run_id": rid})
        self.assertTrue(r.recv_type("cancel_ack", rid)["active"])
        fin = r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "CANCELLED")
        self.assertEqual(r.wait(10), 0)
        self.assertEqual(r.messages[-1]["type"], "run_finished")

    def test_shutdown_when_idle(self):
        r = self.new_runner()
        r.ready()
        r.send({"type": "shutdown"})
        self.assertEqual(r.wait(10), 0)

    def test_eof_after_run(self):
        r = self.new_runner()
        r.ready()
        rid = self.next_id()
        r.send({"type": "run", "run_id": rid, "flow_name": "main", "params": {"x": 1},
                "workflow_yaml": workflow_yaml("half >> add_one", T("half", "add_one"))})
        r.proc.stdin.close()
        self.assertEqual(r.wait(10), 0)
        fin = r.recv_type("run_finished", rid)
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertEqual(fin["task_records"]["add_one"]["output"], 2)

    def test_no_resolver_means_yaml_only(self):
        r = self.new_runner()
        self.assertIs(r.ready()["has_resolver"], False)
        fin = self.run_flow(r, flow_name="hello")
        self.assertEqual((fin["status"], fin["error_kind"], fin["error"]),
                         ("FAILED", "flow_not_found", "flow_not_found: 'hello'"))

    def test_artifacts_dir_in_runner_cwd(self):
        cwd = tempfile.mkdtemp(prefix="slot-", dir=self.tmp)
        before_here = os.path.exists(os.path.join(HERE, "artifacts"))
        before_test_cwd = os.path.exists(os.path.join(os.getcwd(), "artifacts"))
        r = self.new_runner(cwd=cwd)
        r.ready()
        fin = self.run_flow(r, "add_one", T("add_one"))
        self.assertEqual(fin["status"], "COMPLETED")
        self.assertTrue(os.path.isdir(os.path.join(cwd, "artifacts")))
        self.assertEqual(os.path.exists(os.path.join(HERE, "artifacts")), before_here)
        self.assertEqual(os.path.exists(os.path.join(os.getcwd(), "artifacts")), before_test_cwd)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "artifacts")))

    # -- fatal start-up errors ----------------------------------------------------------
    def fatal(self, *args, **kw):
        r = self.new_runner(*args, **kw)
        msg = r.ready()
        self.assertEqual(msg["type"], "fatal", msg)
        self.assertEqual(r.wait(10), 3)
        self.assertEqual([m["type"] for m in r.messages], ["fatal"])
        return msg

    def test_bad_flow_resolver(self):
        m = self.fatal("--flow-resolver", "nocolon")
        self.assertEqual(m["kind"], "resolver_error")
        self.assertEqual(m["message"], "--flow-resolver must be module:function or file.py:function ('nocolon')")

        m = self.fatal("--flow-resolver", "no_such_resolver_mod_xyz:resolve")
        self.assertEqual(m["kind"], "resolver_error")
        self.assertIn("no_such_resolver_mod_xyz:resolve", m["message"])
        self.assertIn("ModuleNotFoundError", m["message"])

        m = self.fatal("--flow-resolver", os.path.join(self.tmp, "resolver.py") + ":missing_fn")
        self.assertEqual(m["kind"], "resolver_error")
        self.assertIn("AttributeError", m["message"])

        m = self.fatal("--flow-resolver", os.path.join(self.tmp, "resolver.py") + ":NOT_CALLABLE")
        self.assertEqual(m["kind"], "resolver_error")
        self.assertIn("not callable", m["message"])

        m = self.fatal("--flow-resolver", "/nonexistent/dir/r.py:resolve")
        self.assertEqual(m["kind"], "resolver_error")
        self.assertIn("not found", m["message"])

    def test_module_form_resolver(self):
        r = self.new_runner("--flow-resolver", "resolver:resolve")
        self.assertIs(r.ready()["has_resolver"], True)
        fin = self.run_flow(r, flow_name="hello", params={"x": 2})
        self.assertEqual(fin["task_records"]["to_text"]["output"], "v=3")

    def _python_without_pyoco(self):
        venv = os.path.join(self.tmp, "venv-nopyoco")
        if not os.path.exists(venv):
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        py = os.path.join(venv, "bin", "python")
        probe = subprocess.run([py, "-c", "import pyoco"], capture_output=True, env={"PATH": os.environ.get("PATH", "")})
        if probe.returncode == 0:
            self.skipTest("the base interpreter has pyoco installed globally")
        return py

    def test_pyoco_missing(self):
        py = self._python_without_pyoco()
        m = self.fatal(python=py, pythonpath=os.path.join(self.tmp, "empty-path"))
        self.assertEqual(m["kind"], "pyoco_missing")
        self.assertIn(py, m["message"])
        self.assertIn('-m pip install "pyoco>=0.6.2"', m["message"])

    def test_pyoco_too_old(self):
        py = self._python_without_pyoco()
        fake = os.path.join(self.tmp, "fake-old-pyoco")
        os.makedirs(os.path.join(fake, "pyoco"), exist_ok=True)
        os.makedirs(os.path.join(fake, "pyoco-0.5.0.dist-info"), exist_ok=True)
        with open(os.path.join(fake, "pyoco", "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(fake, "pyoco-0.5.0.dist-info", "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: pyoco\nVersion: 0.5.0\n")
        m = self.fatal(python=py, pythonpath=fake)
        self.assertEqual(m["kind"], "pyoco_too_old")
        self.assertIn("0.5.0", m["message"])
        self.assertIn('-m pip install "pyoco>=0.6.2"', m["message"])

    def test_unknown_argument(self):
        m = self.fatal("--bogus")
        self.assertEqual(m["kind"], "usage")


class ProtocolSchemaTest(unittest.TestCase):
    """The shim's message table (EVENTS), the captured samples the Rust tests decode, and a fresh
    capture must agree: a field added or renamed on one side shows up here."""

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, HERE)
        try:
            import capture_protocol_samples
            import pyoco_runner
        finally:
            sys.path.remove(HERE)
        cls.capture = capture_protocol_samples
        cls.shim = pyoco_runner
        with open(capture_protocol_samples.SAMPLES, encoding="utf-8") as f:
            cls.samples = [json.loads(line) for line in f if line.strip()]

    def test_samples_match_the_schema_and_cover_every_event(self):
        for m in self.samples:
            required, optional = self.shim.EVENTS[m["type"]]
            fields = set(m) - {"type"}
            self.assertLessEqual(set(required), fields, m)
            self.assertLessEqual(fields, set(required) | set(optional), m)
        self.assertEqual({m["type"] for m in self.samples}, set(self.shim.EVENTS))

    def test_samples_are_current(self):
        fresh = self.capture.capture()
        self.assertEqual(self.capture.shapes(fresh), self.capture.shapes(self.samples),
                         "protocol changed: regenerate with capture_protocol_samples.py")

    def test_the_workers_requests_match_the_table(self):
        # The lines the Rust side writes (its tests compare them byte for byte).
        with open(os.path.join(HERE, "protocol_requests.jsonl"), encoding="utf-8") as f:
            requests = [json.loads(line) for line in f if line.strip()]
        for m in requests:
            required, optional = self.shim.REQUESTS[m["type"]]
            fields = set(m) - {"type"}
            self.assertLessEqual(set(required), fields, m)
            self.assertLessEqual(fields, set(required) | set(optional), m)
        self.assertEqual({m["type"] for m in requests}, set(self.shim.REQUESTS))

    def test_event_rejects_fields_outside_the_table(self):
        self.assertEqual(self.shim.event("pong", seq=1), {"type": "pong", "seq": 1})
        with self.assertRaises(self.shim.ProtocolError):
            self.shim.event("pong", seq=1, extra=2)
        with self.assertRaises(self.shim.ProtocolError):
            self.shim.event("cancel_ack", run_id="r")


if __name__ == "__main__":
    unittest.main()
