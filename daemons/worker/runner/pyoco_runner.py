#!/usr/bin/env python3
"""pyoco runner for the Rust pyoco-worker.

The Rust worker starts one of these per concurrency slot:

    <python> pyoco_runner.py [--flow-resolver module:function|path/file.py:function]

and talks to it with JSON lines: requests on stdin, events on the original stdout (the
"protocol channel").  Right at start the original stdout is duplicated for the protocol and fd 1
is pointed at stderr, so nothing a task prints (print(), os.write(1, ...), child processes,
pyoco's own messages) can ever reach the protocol channel.  Human-readable logs go to stderr.

One run at a time.  The run executes on its own thread so the main thread keeps reading stdin
(cancel, ping) while tasks run.  Only the standard library and pyoco (+ PyYAML) are used.

Requests (Rust -> runner):
  {"type":"run","run_id":..,"flow_name":..,"params":{..},"workflow_yaml":str|null}
  {"type":"cancel","run_id":..}
  {"type":"ping","seq":n}
  {"type":"shutdown"}                      (EOF on stdin means the same)

Events (runner -> Rust):
  ready | fatal | run_started | task | log | run_finished | cancel_ack | pong | error

Both are defined once, with their fields, in REQUESTS and EVENTS below; every event is built by
event() from that table.  The Rust side (daemons/worker/src/protocol.rs) mirrors it and decodes
runner/protocol_samples.jsonl, messages captured from a real run (capture_protocol_samples.py);
runner/protocol_requests.jsonl holds the request lines the Rust side writes.
"""

import ast
import collections
import importlib
import importlib.util
import json
import math
import operator
import os
import platform
import re
import sys
import threading
import time
import traceback

PROTOCOL = 1
MIN_PYOCO = (0, 6, 2)
MIN_PYOCO_TEXT = "0.6.2"
EXIT_FATAL = 3

# Bounds on what we put on the channel.
MAX_REQUEST_LINE = 16 * 1024 * 1024          # bytes per request line
LOG_CHUNK_BYTES = 64 * 1024                  # UTF-8 bytes of log text per `log` message
LOG_BYTES_PER_RUN = 2 * 1024 * 1024          # log text per run; the rest is dropped (with a note)
MAX_RUN_FINISHED_BYTES = 16 * 1024 * 1024    # above this, task_records are left out
PRECANCEL_MEMORY = 256                       # cancels remembered for runs not started yet

TASK_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


# --------------------------------------------------------------------------------------------
# Protocol messages: type -> (required fields, optional fields)
# --------------------------------------------------------------------------------------------

REQUESTS = {
    "run": (("run_id", "flow_name"), ("params", "workflow_yaml")),
    "cancel": (("run_id",), ()),
    "ping": ((), ("seq",)),
    "shutdown": ((), ()),
}

EVENTS = {
    # The handshake after pyoco (and the resolver) loaded.
    "ready": (("pid", "python", "python_executable", "pyoco_version", "protocol", "has_resolver"), ()),
    # Cannot work at all (pyoco missing or too old, bad resolver); the runner exits.
    "fatal": (("kind", "message"), ()),
    "run_started": (("run_id", "flow_name", "tasks"), ()),
    # A task changed state; duration_ms on SUCCEEDED, error on FAILED.
    "task": (("run_id", "task", "state", "ts"), ("duration_ms", "error")),
    "log": (("run_id", "task", "stream", "text"), ("truncated",)),
    "run_finished": (("run_id", "status", "error", "error_kind", "exc_type", "traceback", "flow_name",
                      "tasks", "task_records", "start_time", "end_time"),
                     ("task_records_truncated",)),
    "cancel_ack": (("run_id", "active"), ()),
    "pong": (("seq",), ()),
    # A request was refused (bad_request, busy).
    "error": (("kind", "message"), ("run_id",)),
}


class ProtocolError(Exception):
    """A message that does not match EVENTS: a bug in this file, never the user's."""


def event(mtype, **fields):
    """The one constructor of runner -> worker messages; checks the fields against EVENTS."""
    required, optional = EVENTS[mtype]
    missing = [f for f in required if f not in fields]
    unknown = [f for f in fields if f not in required and f not in optional]
    if missing or unknown:
        raise ProtocolError(f"{mtype}: missing fields {missing}, unknown fields {unknown}")
    msg = {"type": mtype}
    msg.update(fields)
    return msg


# --------------------------------------------------------------------------------------------
# Protocol channel
# --------------------------------------------------------------------------------------------

class Channel:
    """JSON-lines writer on the duplicated original stdout; one whole line per write, locked."""

    def __init__(self, fileobj):
        self._f = fileobj
        self._lock = threading.Lock()

    def send(self, obj):
        self.send_raw(_encode_line(obj))

    def send_raw(self, data):
        with self._lock:
            try:
                self._f.write(data)
                self._f.flush()
            except (OSError, ValueError) as exc:
                # The worker is gone: nobody can receive results any more.
                _log(f"protocol channel closed ({exc.__class__.__name__}: {exc}); exiting")
                _hard_exit(1)

    def exit(self, code):
        """Exit the process without ever cutting a protocol line in half."""
        with self._lock:
            try:
                self._f.flush()
            except Exception:
                pass
            _hard_exit(code)


def _encode_line(obj):
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(_jsonable(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from surrogateescape'd bytes): not valid UTF-8, not valid for the
        # Rust side either; replace them.
        data = text.encode("utf-8", "replace")
    return data + b"\n"


def _jsonable(value, depth=0):
    """A strictly JSON-safe copy: non-finite floats become strings, unknown objects repr()."""
    if depth > 200:
        return "<too deep>"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                k = str(k) if (k is None or isinstance(k, (bool, int, float))) else _safe_repr(k)
            out[k] = _jsonable(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return _safe_repr(value)


def _safe_repr(value):
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__
        return f"<unrepresentable {type(value).__name__}: {exc.__class__.__name__}>"


_ERR = sys.stderr


def _log(msg):
    try:
        _ERR.write(f"[pyoco-runner] {msg}\n")
        _ERR.flush()
    except Exception:
        pass


def _hard_exit(code):
    try:
        _ERR.flush()
    except Exception:
        pass
    os._exit(code)


def _exc_text(exc):
    return f"{_exc_type(exc)}: {exc}"


def _exc_type(exc):
    cls = type(exc)
    mod = getattr(cls, "__module__", "builtins")
    if mod in ("builtins", "__main__", None):
        return cls.__qualname__
    return f"{mod}.{cls.__qualname__}"


def _memory_limit_text(what):
    """The error of a run that hit MemoryError: which limit it was and the setting that raises it."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        unlimited = soft == resource.RLIM_INFINITY
    except Exception:  # no resource module (not Linux)
        soft, unlimited = None, True
    if unlimited:
        limit = "with no address-space limit on the runner (the machine or the service's MemoryMax= ran out)"
    else:
        limit = f"over the runner's memory limit of {soft} bytes ({soft / (1 << 20):.0f} MiB, RLIMIT_AS)"
    return (f"resource_limit: {what} ran out of memory (MemoryError) {limit}; make it use less, or "
            f"raise worker_runner_memory_max_bytes (PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES, "
            f"--runner-memory-max; 0 = no limit)")


def _format_tb(exc):
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# Start-up: pyoco check, resolver loading
# --------------------------------------------------------------------------------------------

class Fatal(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _install_hint():
    if sys.prefix == getattr(sys, "base_prefix", sys.prefix):
        # Not a virtual environment: Debian's Python refuses `pip install` (PEP 668).
        return (f'python3 -m venv ~/.pyoco-venv && ~/.pyoco-venv/bin/pip install "pyoco>={MIN_PYOCO_TEXT}", '
                f'then start the worker with --python ~/.pyoco-venv/bin/python (or PYOCO_PYTHON=...)')
    return f'{sys.executable} -m pip install "pyoco>={MIN_PYOCO_TEXT}"'


def _parse_version(text):
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not m:
        return None
    return tuple(int(p) if p is not None else 0 for p in m.groups())


PY = None  # namespace holding the pyoco objects we use


def load_pyoco():
    """Import pyoco and the parts of it we use; returns the version string."""
    global PY
    try:
        import pyoco  # noqa: F401
    except Exception as exc:
        raise Fatal(
            "pyoco_missing",
            f"pyoco cannot be imported by {sys.executable} ({_exc_text(exc)}); "
            f"install it into that interpreter: {_install_hint()}",
        )
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        try:
            version = dist_version("pyoco")
        except PackageNotFoundError:
            version = None
    except Exception:  # pragma: no cover - importlib.metadata exists on 3.8+
        version = None
    if version is None:
        _log("pyoco has no installed distribution metadata (source checkout?); version unknown")
        version = "unknown"
    else:
        parsed = _parse_version(version)
        if parsed is not None and parsed < MIN_PYOCO:
            raise Fatal(
                "pyoco_too_old",
                f"pyoco {version} is installed for {sys.executable}, but pyoco>={MIN_PYOCO_TEXT} "
                f"is required; upgrade it: {_install_hint()}",
            )
    try:
        from pyoco.core.engine import Engine
        from pyoco.core.models import Flow, RunContext, RunStatus, TaskState
        from pyoco.discovery.loader import TaskLoader
        from pyoco.dsl import syntax as dsl_syntax
        from pyoco.dsl.syntax import TaskWrapper, switch
        from pyoco.schemas.config import FlowConfig, PyocoConfig, RuntimeConfig, TaskConfig
        from pyoco.trace.backend import TraceBackend
    except Exception as exc:
        raise Fatal(
            "pyoco_incompatible",
            f"pyoco {version} for {sys.executable} lacks what the runner needs ({_exc_text(exc)}); "
            f"reinstall a supported version: {_install_hint()}",
        )

    _cache_entry_points()

    class NS:
        pass

    PY = NS()
    PY.Engine, PY.Flow, PY.RunContext, PY.RunStatus, PY.TaskState = Engine, Flow, RunContext, RunStatus, TaskState
    PY.TaskLoader, PY.TaskWrapper, PY.switch = TaskLoader, TaskWrapper, switch
    PY.FlowConfig, PY.PyocoConfig, PY.RuntimeConfig, PY.TaskConfig = FlowConfig, PyocoConfig, RuntimeConfig, TaskConfig
    PY.TraceBackend = TraceBackend
    # What `>>`, `&`, `|` produce: fragments (TaskWrapper is one), the Flow, and the
    # Parallel/Branch groups of `a & b` / `a | b`.
    PY.flow_types = (Flow, TaskWrapper) + tuple(
        getattr(dsl_syntax, n) for n in ("FlowFragment", "Parallel", "Branch") if hasattr(dsl_syntax, n))
    return version


def load_flow_resolver(spec):
    """Load `module:function` or `path/file.py:function` the way pyoco-worker does."""
    if ":" not in spec:
        raise Fatal("resolver_error",
                    f"--flow-resolver must be module:function or file.py:function ({spec!r})")
    module_spec, attr = spec.split(":", 1)
    module_spec, attr = module_spec.strip(), attr.strip()
    if not module_spec or not attr:
        raise Fatal("resolver_error",
                    f"--flow-resolver must include module/file and callable ({spec!r})")
    try:
        if module_spec.endswith(".py") or "/" in module_spec or "\\" in module_spec:
            path = os.path.realpath(os.path.expanduser(module_spec))
            if not os.path.exists(path):
                raise Fatal("resolver_error",
                            f"--flow-resolver {spec!r}: flow_resolver file not found: {path}")
            stem = os.path.splitext(os.path.basename(path))[0]
            mod_name = f"pyoco_worker_resolver_{stem}"
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            if mspec is None or mspec.loader is None:
                raise Fatal("resolver_error",
                            f"--flow-resolver {spec!r}: failed to load resolver module from: {path}")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            try:
                mspec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
        else:
            module = importlib.import_module(module_spec)
        obj = module
        for name in attr.split("."):
            obj = getattr(obj, name)
    except Fatal:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        _log(f"--flow-resolver {spec!r} failed to load:\n{_format_tb(exc) or ''}")
        raise Fatal("resolver_error", f"--flow-resolver {spec!r} cannot be loaded: {_exc_text(exc)}")
    if not callable(obj):
        raise Fatal("resolver_error",
                    f"--flow-resolver {spec!r}: flow_resolver is not callable: {spec} "
                    f"(got {type(obj).__name__})")
    return obj


# --------------------------------------------------------------------------------------------
# flow.yaml -> pyoco config (the Rust side already validated it; we re-check cheaply so a bad
# document can never crash the runner, with the original's reason codes as error texts)
# --------------------------------------------------------------------------------------------

class BuildError(Exception):
    """A flow that cannot be built; str() is the run's error text."""


class GraphNotAllowed(Exception):
    pass


class CallableNotAllowed(BuildError):
    """A task callable the callable policy refuses (error kind `callable_not_allowed`)."""


# --------------------------------------------------------------------------------------------
# Callable policy: which `module:function` a submitted flow.yaml may name.
#
# A flow.yaml comes from whoever may submit; without a rule it could name any importable
# function (`subprocess:getoutput`) and run it as the worker's user.  Allowed are:
#   * prefixes in PYOCO_CALLABLE_ALLOW (`--callable-allow`; `*` = anything, the original's rule);
#   * the original's example module pyoco_server._workflow_test_tasks, by name;
#   * modules found under the worker's PYTHONPATH directories (--pythonpath), as the runner
#     saw them at start, before any task code ran;
#   * modules of `pyoco.tasks` entry points (pyoco task plug-ins the operator installed);
#   * top-level packages of the distributions recorded in <venv>/pyoco-task-packages.txt
#     (`pyococtl runtime setup PACKAGE…` writes it).
# The standard library is refused by name whatever its location, and so is everything else
# (other site-packages, the runner itself).  The check runs before the module is imported, and
# again on the attribute's defining module, so an allowed module cannot re-export `os.system`.
# --------------------------------------------------------------------------------------------

EXAMPLE_TASK_MODULE = "pyoco_server._workflow_test_tasks"
TASK_PACKAGES_FILE = "pyoco-task-packages.txt"
# Never task code, wherever found: the runner's own modules.
_ALWAYS_REFUSED = frozenset({"__main__", "__mp_main__", "pyoco_runner"})


def _canonical_dist(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _under(path, dirs):
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d + os.sep) for d in dirs)


class CallablePolicy:
    def __init__(self, allow_spec, pythonpath_dirs, packages_file):
        self.anything = False
        self.prefixes = []
        for part in (allow_spec or "").split(","):
            part = part.strip()
            if part == "*":
                self.anything = True
            elif part:
                self.prefixes.append(part)
        self.dirs = [os.path.realpath(d) for d in pythonpath_dirs if d and os.path.isdir(d)]
        self.packages_file = packages_file
        self._recorded_tops = None
        self._plugin_modules = None

    @classmethod
    def from_environment(cls, allow_spec):
        dirs = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return cls(allow_spec, dirs, os.path.join(sys.prefix, TASK_PACKAGES_FILE))

    def describe(self):
        allow = "*" if self.anything else (",".join(self.prefixes) or "(unset)")
        return f"PYOCO_CALLABLE_ALLOW={allow}; pythonpath={os.pathsep.join(self.dirs) or '(none)'}"

    def _prefix_allowed(self, module, attr):
        for p in self.prefixes:
            if ":" in p:
                if p == f"{module}:{attr}":
                    return True
            elif module == p or module.startswith(p.rstrip(".") + "."):
                return True
        return False

    def _recorded(self):
        """Top-level module names of the recorded distributions (read once per runner)."""
        if self._recorded_tops is None:
            tops = set()
            try:
                with open(self.packages_file, encoding="utf-8") as f:
                    wanted = {_canonical_dist(line.strip()) for line in f
                              if line.strip() and not line.startswith("#")}
            except OSError:
                wanted = set()
            if wanted:
                import importlib.metadata as md
                for top, dists in md.packages_distributions().items():
                    if any(_canonical_dist(d) in wanted for d in dists):
                        tops.add(top)
            self._recorded_tops = tops
        return self._recorded_tops

    def _plugins(self):
        if self._plugin_modules is None:
            mods = set()
            try:
                import importlib.metadata as md
                for ep in md.entry_points(group="pyoco.tasks"):
                    mods.add(ep.value.split(":", 1)[0].strip())
            except Exception as exc:  # a broken dist must not stop every run
                _log(f"reading pyoco.tasks entry points failed: {_exc_text(exc)}")
            self._plugin_modules = mods
        return self._plugin_modules

    def refusal(self, module, attr):
        """None when `module:attr` may run, else why not (a sentence naming the rule)."""
        if self.anything or self._prefix_allowed(module, attr):
            return None
        if module == EXAMPLE_TASK_MODULE:
            return None
        top = module.split(".", 1)[0]
        if top in _ALWAYS_REFUSED:
            return f"module {module!r} is the runner itself"
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            return f"module {module!r} is part of the Python standard library"
        if any(module == m or module.startswith(m + ".") for m in self._plugins()):
            return None
        if top in self._recorded():
            return None
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return None  # not importable: the import reports ModuleNotFoundError as before
        locations = list(spec.submodule_search_locations or [])
        if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
            locations.append(spec.origin)
        if locations and all(_under(loc, self.dirs) for loc in locations):
            return None
        where = locations[0] if locations else "an unknown location"
        return f"module {module!r} is at {where}, outside the worker's --pythonpath directories"

    def check(self, task_name, path, module, attr):
        why = self.refusal(module, attr)
        if why is not None:
            raise CallableNotAllowed(self._text(task_name, path, why))

    def check_object(self, task_name, path, obj):
        """The function a callable names must be defined in an allowed module too."""
        target = getattr(obj, "func", obj)  # a pyoco @task object wraps its function
        defined_in = getattr(target, "__module__", None)
        if defined_in is None and hasattr(target, "__self__"):
            defined_in = getattr(getattr(target, "__self__"), "__name__", None)
        if not isinstance(defined_in, str):
            return
        why = self.refusal(defined_in, getattr(target, "__name__", ""))
        if why is not None:
            raise CallableNotAllowed(self._text(
                task_name, path, f"it is defined in {defined_in!r} and {why}"))

    def _text(self, task_name, path, why):
        return (f"callable_not_allowed: task {task_name!r} names {path!r}: {why}; "
                f"allowed are modules under the worker's --pythonpath, pyoco task plug-ins, packages "
                f"installed with `pyococtl runtime setup PACKAGE`, and PYOCO_CALLABLE_ALLOW prefixes "
                f"({self.describe()}); fix: put the task in your own module there, or add its module "
                f"to PYOCO_CALLABLE_ALLOW on the worker")


POLICY = CallablePolicy("", [], os.devnull)


def _cache_entry_points():
    """pyoco's TaskLoader re-reads every installed distribution's entry points on every load
    (about 1 ms per run, more in big environments). The installed packages cannot change under a
    running runner without it being recycled (the worker replaces runners after installs), so
    the answer is kept for the runner's life."""
    import importlib.metadata as md

    original = md.entry_points
    cache = {}

    def entry_points(**params):
        key = tuple(sorted(params.items()))
        if key not in cache:
            cache[key] = original(**params)
        return cache[key]

    entry_points.__wrapped__ = original
    md.entry_points = entry_points


_YAML_CACHE = {}
_YAML_CACHE_MAX = 64


def _load_yaml(text):
    """`yaml.safe_load`, remembered per text: the same flow.yaml is usually submitted again and
    again. Callers get their own deep copy."""
    import copy

    import yaml

    if text not in _YAML_CACHE:
        if len(_YAML_CACHE) >= _YAML_CACHE_MAX:
            _YAML_CACHE.pop(next(iter(_YAML_CACHE)))
        _YAML_CACHE[text] = yaml.safe_load(text)
    return copy.deepcopy(_YAML_CACHE[text])


def parse_workflow_yaml(text):
    def bad(reason):
        raise BuildError(reason)

    try:
        data = _load_yaml(text)
    except Exception:
        bad("invalid_yaml")
    if not isinstance(data, dict):
        bad("invalid_yaml_root")
    if "flows" in data:
        bad("unsupported_key_flows")
    if "discovery" in data:
        bad("unsupported_key_discovery")
    unknown = set(data) - {"version", "flow", "tasks", "runtime"}
    if unknown:
        bad(f"unknown_top_level_keys: {sorted(map(str, unknown))}")
    flow = data.get("flow")
    if flow is None:
        bad("missing_flow")
    if not isinstance(flow, dict):
        bad("invalid_flow")
    unknown = set(flow) - {"graph", "defaults"}
    if unknown:
        bad(f"unknown_flow_keys: {sorted(map(str, unknown))}")
    graph = flow.get("graph")
    if not isinstance(graph, str) or not graph.strip():
        bad("missing_flow_graph")
    defaults = flow.get("defaults") or {}
    if not isinstance(defaults, dict):
        bad("invalid_flow_defaults")
    tasks_data = data.get("tasks") or {}
    if not isinstance(tasks_data, dict):
        bad("invalid_tasks")
    tasks = {}
    for name, conf in tasks_data.items():
        if not isinstance(name, str) or not name.strip():
            bad("invalid_task_name")
        if not isinstance(conf, dict):
            bad(f"invalid_task_config: {name}")
        unknown = set(conf) - {"callable", "inputs", "outputs"}
        if unknown:
            bad(f"unknown_task_keys: {name}: {sorted(map(str, unknown))}")
        callable_path = conf.get("callable")
        if callable_path is not None and (not isinstance(callable_path, str) or ":" not in callable_path):
            bad(f"invalid_task_callable: {name}")
        inputs = conf.get("inputs") or {}
        if not isinstance(inputs, dict):
            bad(f"invalid_task_inputs: {name}")
        outputs = conf.get("outputs") or []
        if not isinstance(outputs, list) or any(not isinstance(x, str) for x in outputs):
            bad(f"invalid_task_outputs: {name}")
        tasks[name] = PY.TaskConfig(callable=callable_path, inputs=inputs, outputs=outputs)
    runtime = data.get("runtime") or {}
    if not isinstance(runtime, dict):
        bad("invalid_runtime")
    unknown = set(runtime) - {"expose_env"}
    if unknown:
        bad(f"unknown_runtime_keys: {sorted(map(str, unknown))}")
    expose_env = runtime.get("expose_env") or []
    if not isinstance(expose_env, list) or any(not isinstance(x, str) for x in expose_env):
        bad("invalid_runtime_expose_env")
    try:
        version = int(data.get("version", 1))
    except Exception:
        bad("invalid_version")
    return PY.PyocoConfig(
        version=version,
        flow=PY.FlowConfig(graph=graph, defaults=defaults),
        tasks=tasks,
        runtime=PY.RuntimeConfig(expose_env=expose_env),
    )


def preimport_callables(config):
    """Import every `module:function` before pyoco's TaskLoader (which swallows import errors)."""
    for task_name, conf in config.tasks.items():
        path = conf.callable
        if not path:
            continue

        def fail(detail, cause=None):
            raise BuildError(f"cannot import callable {path!r} of task {task_name!r}: {detail}") from cause

        parts = path.split(":")
        if len(parts) != 2:
            # pyoco unpacks `module, attr = path.split(':')` and fails with a ValueError.
            fail("ValueError: a callable must be 'module:function' with exactly one ':'")
        module_name, attr = parts
        POLICY.check(task_name, path, module_name, attr)
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            _log(f"import of {module_name!r} for task {task_name!r} failed:\n{_format_tb(exc) or ''}")
            fail(_exc_text(exc), exc)
        if not hasattr(module, attr):
            hint = ""
            if "." in attr:
                hint = " (pyoco looks the attribute up with a single getattr: dotted paths such as 'Cls.method' are not supported; expose a module-level function)"
            fail(f"AttributeError: module {module_name!r} has no attribute {attr!r}{hint}")
        POLICY.check_object(task_name, path, getattr(module, attr))


# --------------------------------------------------------------------------------------------
# Restricted graph evaluator (instead of the original's exec)
# --------------------------------------------------------------------------------------------

_BINOPS = {
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.Mod: operator.mod,
}

# Bounds on the graph string.  Nothing in a flow graph needs more, and without them a short
# graph could make the runner build gigabytes ("%999999999s" % "") or spin holding the GIL.
GRAPH_MAX_BYTES = 64 * 1024       # the whole graph text (UTF-8)
GRAPH_MAX_STR_BYTES = 1024        # one string constant (case labels, $ctx expressions)
GRAPH_MAX_INT = 2 ** 63 - 1       # one integer constant (repeat counts, max_iter, case labels)
GRAPH_MAX_ELEMENTS = 256          # items of one tuple/list display or call
GRAPH_MAX_DEPTH = 32              # nested brackets/subscripts/calls; a >> b >> c chains are flat

_CONSTRUCT_NAMES = {
    # statements
    "Import": "import statement", "ImportFrom": "import statement",
    "Assign": "assignment", "AugAssign": "augmented assignment", "AnnAssign": "annotated assignment",
    "Delete": "del statement", "FunctionDef": "function definition",
    "AsyncFunctionDef": "function definition", "ClassDef": "class definition",
    "Return": "return statement", "For": "for loop", "AsyncFor": "for loop", "While": "while loop",
    "If": "if statement", "With": "with statement", "AsyncWith": "with statement",
    "Raise": "raise statement", "Try": "try statement", "TryStar": "try statement",
    "Assert": "assert statement", "Global": "global statement", "Nonlocal": "nonlocal statement",
    "Pass": "pass statement", "Break": "break statement", "Continue": "continue statement",
    "Match": "match statement",
    # expressions
    "Attribute": "attribute access", "Lambda": "lambda", "ListComp": "list comprehension",
    "SetComp": "set comprehension", "DictComp": "dict comprehension",
    "GeneratorExp": "generator expression", "NamedExpr": "assignment expression (:=)",
    "Await": "await", "Yield": "yield", "YieldFrom": "yield", "IfExp": "conditional expression",
    "BoolOp": "boolean operator", "Compare": "comparison", "UnaryOp": "unary operator",
    "Dict": "dict display", "Set": "set display", "JoinedStr": "f-string",
    "FormattedValue": "f-string", "Starred": "starred expression", "Slice": "slice",
}

_OP_NAMES = {
    "Add": "+", "Sub": "-", "Mult": "*", "MatMult": "@", "Div": "/", "FloorDiv": "//",
    "Pow": "**", "LShift": "<<", "BitXor": "^", "RShift": ">>", "BitAnd": "&", "BitOr": "|",
    "Mod": "%",
}

# pyoco's own $ctx/$env reference syntax inside expression strings.
_EXPR_REF = re.compile(r"\$(?:ctx|env)\.[A-Za-z_][\w.]*")


def _where(node):
    return f"at line {getattr(node, 'lineno', '?')}, col {getattr(node, 'col_offset', '?')}"


def _snippet(node, limit=60):
    try:
        text = ast.unparse(node)
    except Exception:
        return type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _op_symbol(op):
    return _OP_NAMES.get(type(op).__name__, type(op).__name__)


def _stringish(node):
    """A node of an expression string that evaluates to a string without looking at $ctx."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    if isinstance(node, ast.BinOp):
        return _stringish(node.left) or _stringish(node.right)
    return False


class GraphEvaluator:
    """Evaluates a flow graph string over a fixed set of names without exec.

    Allowed: expression statements made of names (tasks, `flow`, `switch`), the operators
    `>>`, `&`, `|`, `%` with a task, `flow` or task group as left operand (or a constant case
    label left of `>>`), subscripts of tasks and switch(...), `switch(<constant>)` calls,
    bounded constants, tuples and lists.  The objects are the same ones the original's exec
    would see, so operator semantics are pyoco's own; nothing can compute on plain values.
    """

    def __init__(self, names, flow_types=()):
        self.names = names
        # Values an operator may have on its left, checked again while evaluating.
        self.flow_types = tuple(flow_types)

    def run(self, source):
        size = len(source.encode("utf-8", "surrogatepass"))
        if size > GRAPH_MAX_BYTES:
            raise GraphNotAllowed(
                f"graph_not_allowed: graph text of {size} bytes (at most {GRAPH_MAX_BYTES}); "
                f"a flow graph only names tasks: shorten it or split the work into several flows")
        try:
            tree = ast.parse(source, filename="<string>", mode="exec")
        except SyntaxError as exc:
            raise BuildError(str(exc)) from exc
        except RecursionError:
            raise GraphNotAllowed(
                "graph_not_allowed: graph nested too deeply for Python's parser (a chain of about "
                "1000 or more operators, or deep brackets) at line 1, col 0; split long chains "
                "over several lines (a >> b, then b >> c)") from None
        # First check everything, then evaluate: nothing is evaluated for a rejected graph.
        for stmt in tree.body:
            if not isinstance(stmt, ast.Expr):
                self._reject(stmt)
            self._check(stmt.value, 0)
        for stmt in tree.body:
            self._eval(stmt.value)

    # -- checking ------------------------------------------------------------------------
    def _reject(self, node, what=None):
        if what is None:
            kind = type(node).__name__
            what = _CONSTRUCT_NAMES.get(kind)
            if what == "attribute access":
                what = f"attribute access {_snippet(node)!r}"
            elif kind == "BinOp":
                what = f"operator {_op_symbol(node.op)!r}"
            elif what is None:
                what = f"{kind} construct"
        raise GraphNotAllowed(f"graph_not_allowed: {what} {_where(node)}")

    def _flowish(self, node):
        """Statically: can this node be a task, `flow` or task group (an operator's left side)?"""
        if isinstance(node, ast.Name):
            return node.id != "switch"
        if isinstance(node, ast.BinOp):
            # Every checked operator has a flow-ish left side, except a `"x" >> task` case.
            return not isinstance(node.left, ast.Constant)
        return isinstance(node, ast.Subscript)

    def _check(self, node, depth):
        if depth > GRAPH_MAX_DEPTH:
            self._reject(node, f"nesting deeper than {GRAPH_MAX_DEPTH} levels (brackets, subscripts, calls)")
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                self._reject(node, "assignment")
            if node.id not in self.names:
                self._reject(node, f"unknown name {node.id!r} (not a task of this flow, 'flow' or 'switch')")
            return
        if isinstance(node, ast.Constant):
            self._check_constant(node)
            return
        if isinstance(node, ast.BinOp):
            # Walk the left spine in a loop: a long a >> b >> c chain is one level, not N.
            spine = []
            while isinstance(node, ast.BinOp):
                spine.append(node)
                node = node.left
            self._check(node, depth + 1)
            for op_node in reversed(spine):
                self._check_operator(op_node)
                self._check(op_node.right, depth + 1)
            return
        if isinstance(node, ast.Subscript):
            if not (self._flowish(node.value) or self._is_switch_call(node.value)):
                self._reject(node, f"subscript of {_snippet(node.value)!r} (only tasks and switch(...) take [...])")
            self._check(node.value, depth + 1)
            sl = node.slice
            if type(sl).__name__ == "Index":  # Python < 3.9
                sl = sl.value
            self._check(sl, depth + 1)
            if isinstance(sl, ast.Constant) and isinstance(sl.value, str):
                # foreach: "<expression> as <alias>"
                self._check_expression(sl.value.split(" as ", 1)[0], sl)
            return
        if isinstance(node, (ast.Tuple, ast.List)):
            if len(node.elts) > GRAPH_MAX_ELEMENTS:
                kind = "tuple" if isinstance(node, ast.Tuple) else "list"
                self._reject(node, f"{kind} display of {len(node.elts)} elements (at most {GRAPH_MAX_ELEMENTS})")
            for elt in node.elts:
                self._check(elt, depth + 1)
            return
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name):
                if isinstance(func, ast.Attribute):
                    self._reject(func)
                self._reject(node, f"call of {_snippet(func)!r} (only switch(...) may be called)")
            if func.id != "switch":
                self._reject(node, f"call of {func.id!r} (only switch(...) may be called)")
            self._check(func, depth + 1)
            if len(node.args) + len(node.keywords) > GRAPH_MAX_ELEMENTS:
                self._reject(node, f"call with {len(node.args) + len(node.keywords)} arguments (at most {GRAPH_MAX_ELEMENTS})")
            for arg in node.args:
                if not isinstance(arg, ast.Constant):
                    self._reject(arg, f"non-constant argument {_snippet(arg)!r} to switch()")
                self._check(arg, depth + 1)
                if isinstance(arg.value, str):
                    self._check_expression(arg.value, arg)
            for kw in node.keywords:
                if kw.arg is None or not isinstance(kw.value, ast.Constant):
                    self._reject(kw.value, f"non-constant argument {_snippet(kw.value)!r} to switch()")
                self._check(kw.value, depth + 1)
                if isinstance(kw.value.value, str):
                    self._check_expression(kw.value.value, kw.value)
            return
        self._reject(node)

    @staticmethod
    def _is_switch_call(node):
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "switch"

    def _check_constant(self, node):
        value = node.value
        if isinstance(value, str):
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > GRAPH_MAX_STR_BYTES:
                self._reject(node, f"string constant of {size} bytes (at most {GRAPH_MAX_STR_BYTES}; "
                                   f"pass data to tasks as run params)")
            return
        if value is None or isinstance(value, (bool, float)):
            return
        if isinstance(value, int):
            if abs(value) > GRAPH_MAX_INT:
                self._reject(node, f"integer constant of {value.bit_length()} bits (at most 63)")
            return
        self._reject(node, f"constant {_snippet(node)!r} of type {type(value).__name__}")

    def _check_operator(self, node):
        """`>>`, `&`, `|`, `%` combine tasks: on plain values they would compute (formatting,
        shifts), which a graph never needs."""
        if type(node.op) not in _BINOPS:
            self._reject(node)
        sym = _op_symbol(node.op)
        left = node.left
        if isinstance(node.op, ast.RShift) and isinstance(left, ast.Constant):
            # A switch case: "x" >> task
            if not self._flowish(node.right):
                self._reject(node, f"operator '>>' from case label {_snippet(left)!r} to "
                                   f"{_snippet(node.right)!r} (a case must lead to a task)")
            return
        if not self._flowish(left):
            self._reject(node, f"operator {sym!r} with left operand {_snippet(left)!r} (only tasks, "
                               f"'flow' and task groups are combined in a graph; compute values in a task)")
        if isinstance(node.op, ast.Mod):
            # until: task % ("<expression>", max_iter)
            cond = node.right
            if isinstance(cond, ast.Tuple) and cond.elts:
                cond = cond.elts[0]
            if isinstance(cond, ast.Constant) and isinstance(cond.value, str):
                self._check_expression(cond.value, cond)

    def _check_expression(self, text, node):
        """The condition strings of switch/until/foreach, which pyoco evaluates during the run:
        no powers ("9**9**9" spins holding the GIL) and no repeating or formatting strings."""
        try:
            tree = ast.parse(_EXPR_REF.sub("_ref", text.strip()), mode="eval")
        except (SyntaxError, ValueError, RecursionError):
            return  # pyoco reports its own syntax errors when it compiles the expression
        for sub in ast.walk(tree):
            if not isinstance(sub, ast.BinOp):
                continue
            if isinstance(sub.op, ast.Pow):
                self._reject(node, f"operator '**' in expression {text!r} (conditions compare and "
                                   f"do simple arithmetic; compute powers in a task)")
            if isinstance(sub.op, (ast.Mult, ast.Mod)) and (_stringish(sub.left) or _stringish(sub.right)):
                self._reject(node, f"operator {_op_symbol(sub.op)!r} on a string in expression {text!r} "
                                   f"(conditions compare values; build strings in a task)")

    # -- evaluation (only after _check accepted the whole graph) ----------------------------
    def _check_operands(self, node, left, right):
        """The static check again, on the values: a left operand that is not a task, `flow`
        or task group never reaches Python's operator."""
        if isinstance(left, self.flow_types):
            return
        if (isinstance(node.op, ast.RShift) and isinstance(left, (str, int, float, bool))
                and isinstance(right, self.flow_types)):
            return  # switch case
        raise GraphNotAllowed(
            f"graph_not_allowed: operator {_op_symbol(node.op)!r} on a {type(left).__name__} value "
            f"{_snippet(node.left)!r} (only tasks, 'flow' and task groups are combined in a graph) "
            f"{_where(node)}")

    def _eval(self, node):
        if isinstance(node, ast.Name):
            return self.names[node.id]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.BinOp):
            spine = []
            while isinstance(node, ast.BinOp):
                spine.append(node)
                node = node.left
            value = self._eval(node)
            for op_node in reversed(spine):
                right = self._eval(op_node.right)
                if self.flow_types:
                    self._check_operands(op_node, value, right)
                value = _BINOPS[type(op_node.op)](value, right)
            return value
        if isinstance(node, ast.Subscript):
            value = self._eval(node.value)
            sl = node.slice
            if type(sl).__name__ == "Index":
                sl = sl.value
            return value[self._eval(sl)]
        if isinstance(node, ast.Tuple):
            return tuple(self._eval(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [self._eval(e) for e in node.elts]
        if isinstance(node, ast.Call):
            func = self._eval(node.func)
            args = [self._eval(a) for a in node.args]
            kwargs = {kw.arg: self._eval(kw.value) for kw in node.keywords}
            return func(*args, **kwargs)
        raise GraphNotAllowed(f"graph_not_allowed: {type(node).__name__} {_where(node)}")  # unreachable


def build_flow_from_yaml(flow_name, workflow_yaml):
    config = parse_workflow_yaml(workflow_yaml)
    preimport_callables(config)
    loader = PY.TaskLoader(config)
    loader.load()
    flow = PY.Flow(name=(flow_name or "main"))
    for task in loader.tasks.values():
        flow.add_task(task)
    names = {name: PY.TaskWrapper(task) for name, task in loader.tasks.items()}
    names["switch"] = PY.switch
    names["flow"] = flow
    GraphEvaluator(names, PY.flow_types).run(config.flow.graph)
    return flow


# --------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------

def _state_name(state):
    return getattr(state, "value", state) if state is not None else None


def _utf8_chunks(text, limit):
    data = text.encode("utf-8", "replace")
    start = 0
    n = len(data)
    while start < n:
        end = min(start + limit, n)
        if end < n:
            # do not cut a multi-byte character: back up over continuation bytes
            while end > start and (data[end] & 0xC0) == 0x80:
                end -= 1
            if end == start:
                end = min(start + limit, n)
        yield data[start:end].decode("utf-8", "replace")
        start = end


class Run:
    def __init__(self, runner, run_id, flow_name, params, workflow_yaml):
        self.runner = runner
        self.channel = runner.channel
        self.run_id = run_id
        self.flow_name = flow_name
        self.params = params
        self.workflow_yaml = workflow_yaml
        self.cancel_requested = False
        self.run_ctx = PY.RunContext(run_id=run_id)
        self.run_ctx.flow_name = flow_name
        self.run_ctx.params = params
        self.engine = None
        self.flow = None
        self.last_error = None          # last task error seen by the trace (original: backend error)
        self.memory_error_task = None   # the task that raised MemoryError, if one did
        self._emit_lock = threading.Lock()
        self._emitted = {}              # task -> last emitted state
        self._log_index = 0
        self._log_bytes = 0
        self._log_truncated = False
        self.thread = threading.Thread(target=self._thread_main, name=f"run-{run_id}", daemon=True)

    # -- cancel ------------------------------------------------------------------------
    def request_cancel(self):
        self.cancel_requested = True
        self.apply_cancel()

    def apply_cancel(self):
        """Sticky cancel: re-applied at every trace callback until the run ends."""
        if not self.cancel_requested:
            return
        try:
            if self.engine is not None:
                self.engine.cancel(self.run_id)
            # Before the engine registers the run (or between on_flow_start and registration)
            # engine.cancel is a no-op; do what it does, on our RunContext, directly.
            if self.run_ctx.status == PY.RunStatus.RUNNING:
                self.run_ctx.status = PY.RunStatus.CANCELLING
        except Exception as exc:
            _log(f"run {self.run_id}: applying cancel failed: {_exc_text(exc)}")

    # -- events ------------------------------------------------------------------------
    def _send_task(self, name, state, **extra):
        """Must hold _emit_lock."""
        if self._emitted.get(name) == state:
            return
        self._emitted[name] = state
        self.channel.send(event("task", run_id=self.run_id, task=name, state=state, ts=time.time(),
                                **extra))

    def _diff(self, final=False):
        """Emit states that have no trace callback (PENDING, CANCELLED, FAILED of dependents).

        RUNNING and SUCCEEDED only come from callbacks while the run is live (pyoco records
        SUCCEEDED after on_node_end, so a diff would see a stale RUNNING); at the end every
        difference is emitted.
        """
        try:
            current = dict(self.run_ctx.tasks)
        except RuntimeError:
            current = dict(self.run_ctx.tasks)
        for name, state in current.items():
            state = _state_name(state)
            if state not in TASK_STATES:
                continue
            if not final and state in ("RUNNING", "SUCCEEDED"):
                continue
            if self._emitted.get(name) == state:
                continue
            extra = {}
            record = self.run_ctx.task_records.get(name)
            if state == "FAILED":
                extra["error"] = getattr(record, "error", None)
            elif state == "SUCCEEDED":
                extra["duration_ms"] = getattr(record, "duration_ms", None)
            self._send_task(name, state, **extra)

    def _drain_logs(self):
        """Must hold _emit_lock.  Reads run_ctx.logs (append-only) past our index."""
        logs = getattr(self.run_ctx, "logs", None)
        if not isinstance(logs, list):
            return
        n = len(logs)
        entries = logs[self._log_index:n]
        self._log_index = n
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            text = entry.get("text")
            if not isinstance(text, str) or not text:
                continue
            if self._log_truncated:
                continue
            task = entry.get("task")
            stream = entry.get("stream") or "stdout"
            for chunk in _utf8_chunks(text, LOG_CHUNK_BYTES):
                size = len(chunk.encode("utf-8", "replace"))
                if self._log_bytes + size > LOG_BYTES_PER_RUN:
                    self._log_truncated = True
                    self.channel.send(event(
                        "log", run_id=self.run_id, task=task, stream=stream,
                        text=f"[pyoco-runner: log output of this run truncated after {self._log_bytes} bytes]\n",
                        truncated=True,
                    ))
                    break
                self._log_bytes += size
                self.channel.send(event("log", run_id=self.run_id, task=task, stream=stream,
                                        text=chunk))

    def on_flow_start(self):
        self.apply_cancel()
        with self._emit_lock:
            self._diff()

    def on_node_start(self, name):
        self.apply_cancel()
        with self._emit_lock:
            self._diff()
            self._send_task(name, "RUNNING")

    def on_node_end(self, name, duration_ms):
        self.apply_cancel()
        with self._emit_lock:
            self._drain_logs()
            self._send_task(name, "SUCCEEDED", duration_ms=duration_ms)
            self._diff()

    def on_node_error(self, name, error):
        self.apply_cancel()
        if isinstance(error, MemoryError):
            # str(MemoryError()) is empty: say what happened, in the event and the record.
            self.memory_error_task = name
            text = _memory_limit_text(f"task {name!r}")
            record = self.run_ctx.task_records.get(name)
            if record is not None:
                record.error = text
        else:
            try:
                text = str(error)
            except Exception:
                text = _safe_repr(error)
        self.last_error = text
        with self._emit_lock:
            self._drain_logs()
            self._send_task(name, "FAILED", error=text)
            self._diff()

    def on_flow_end(self):
        self.apply_cancel()
        with self._emit_lock:
            self._diff()

    # -- the run thread ---------------------------------------------------------------------
    def _thread_main(self):
        result = None
        try:
            result = self._execute()
        except BaseException as exc:  # never leave without a run_finished
            _log(f"run {self.run_id}: internal error:\n{_format_tb(exc) or ''}")
            if isinstance(exc, MemoryError):
                text, kind = _memory_limit_text("the run"), "resource_limit"
            else:
                text, kind = f"internal runner error: {_exc_text(exc)}", "execution_error"
            try:
                result = self._finished("FAILED", text, kind, exc)
            except BaseException:
                result = None
            if result is None:
                result = event(
                    "run_finished", run_id=self.run_id, status="FAILED",
                    error=text, error_kind=kind, exc_type=_exc_type(exc), traceback=None,
                    flow_name=self.flow_name, tasks={}, task_records={},
                    start_time=None, end_time=time.time(),
                )
        finally:
            self.runner.restore_process_state()
            self.runner.run_done(self, result)

    def _build(self):
        if self.workflow_yaml is None:
            resolver = self.runner.resolver
            try:
                flow = resolver(self.flow_name)
            except KeyError as exc:
                return None, ("flow_not_found", f"flow_not_found: {exc}", exc)
            if not isinstance(flow, PY.Flow):
                raise BuildError(
                    f"flow resolver returned {type(flow).__name__} for {self.flow_name!r}, expected a pyoco Flow")
            self._check_resolver_tasks(flow)
            return flow, None
        return build_flow_from_yaml(self.flow_name, self.workflow_yaml), None

    def _check_resolver_tasks(self, flow):
        """A resolver's flow follows the callable policy too; the resolver's own module (the
        operator named it with --flow-resolver) counts as allowed."""
        own = getattr(self.runner.resolver, "__module__", None) or ""
        own_top = own.split(".", 1)[0]
        for task in list(getattr(flow, "tasks", []) or []):
            func = getattr(task, "func", None)
            defined_in = getattr(func, "__module__", None)
            if not isinstance(defined_in, str) or defined_in.split(".", 1)[0] == own_top:
                continue
            name = getattr(task, "name", "?")
            POLICY.check_object(name, f"{defined_in}:{getattr(func, '__name__', '?')}", func)

    def _execute(self):
        try:
            flow, failure = self._build()
        except GraphNotAllowed as exc:
            return self._finished("FAILED", str(exc), "graph_not_allowed", None)
        except CallableNotAllowed as exc:
            _log(f"run {self.run_id}: {exc}")
            return self._finished("FAILED", str(exc), "callable_not_allowed", None)
        except MemoryError as exc:
            _log(f"run {self.run_id}: building the flow ran out of memory")
            return self._finished("FAILED", _memory_limit_text("building the flow"), "resource_limit", exc)
        except BuildError as exc:
            # exc_type/traceback describe the underlying error (import error, syntax error), if any
            return self._finished("FAILED", str(exc), "build_error", exc.__cause__)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            _log(f"run {self.run_id}: building the flow failed:\n{_format_tb(exc) or ''}")
            return self._finished("FAILED", str(exc), "build_error", exc)
        if failure is not None:
            kind, text, exc = failure
            _log(f"run {self.run_id}: {text}")
            return self._finished("FAILED", text, kind, exc)

        self.flow = flow
        self.run_ctx.flow_name = flow.name
        try:
            names = sorted(t.name for t in flow.tasks)
        except Exception:
            names = []
        self.channel.send(event("run_started", run_id=self.run_id, flow_name=flow.name, tasks=names))

        self.engine = PY.Engine(trace_backend=_make_backend(self))
        self.apply_cancel()
        raised = None
        try:
            self.engine.run(flow, self.params, self.run_ctx)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raised = exc
        if raised is not None and not isinstance(raised, Exception):
            # SystemExit & co. from a task: pyoco only handles Exception, so the task stays
            # RUNNING although nothing runs any more (engine.run joined its threads).
            self._fail_stale_running(raised)
        with self._emit_lock:
            self._drain_logs()
            self._diff(final=True)

        status = _state_name(self.run_ctx.status)
        if raised is not None:
            if status == "CANCELLED":
                return self._finished("CANCELLED", None, None, None)
            _log(f"run {self.run_id}: execution error:\n{_format_tb(raised) or ''}")
            self.run_ctx.status = PY.RunStatus.FAILED
            if self.run_ctx.end_time is None:
                self.run_ctx.end_time = time.time()
            if isinstance(raised, MemoryError):
                # The allocation that failed is gone with the task's frames: this runner goes
                # on with the next run.
                what = f"task {self.memory_error_task!r}" if self.memory_error_task else "the run"
                return self._finished("FAILED", _memory_limit_text(what), "resource_limit", raised)
            return self._finished("FAILED", str(raised), "execution_error", raised)
        if status == "CANCELLING" or (status == "COMPLETED" and self.cancel_requested):
            # A cancel accepted before the run ended wins, as in pyoco's engine: the task that
            # was running keeps its result in task_records, and the run ends CANCELLED even when
            # no task was left to skip (reporting COMPLETED here lost cancels to completion).
            status = "CANCELLED"
        elif status not in ("COMPLETED", "FAILED", "CANCELLED"):
            status = "COMPLETED"
        self.run_ctx.status = getattr(PY.RunStatus, status)
        return self._finished(status, self.last_error, None, None)

    def _fail_stale_running(self, exc):
        text = str(exc) or type(exc).__name__
        now = time.time()
        for name, state in dict(self.run_ctx.tasks).items():
            if _state_name(state) != "RUNNING":
                continue
            self.run_ctx.tasks[name] = PY.TaskState.FAILED
            record = self.run_ctx.task_records.get(name)
            if record is not None:
                record.state = PY.TaskState.FAILED
                record.error = text
                record.traceback = _format_tb(exc)
                if record.ended_at is None:
                    record.ended_at = now
                if record.started_at is not None and record.duration_ms is None:
                    record.duration_ms = (record.ended_at - record.started_at) * 1000

    def _finished(self, status, error, error_kind, exc):
        rc = self.run_ctx
        if rc.end_time is None:
            rc.end_time = time.time()
        try:
            tasks = {name: _state_name(state) for name, state in dict(rc.tasks).items()}
        except Exception:
            tasks = {}
        try:
            records = rc.serialize_task_records()
        except Exception as e:
            _log(f"run {self.run_id}: serialize_task_records failed: {_exc_text(e)}")
            records = {}
        return event(
            "run_finished",
            run_id=self.run_id,
            status=status,
            error=error,
            error_kind=error_kind,
            exc_type=_exc_type(exc) if exc is not None else None,
            traceback=_format_tb(exc) if exc is not None else None,
            flow_name=self.flow.name if self.flow is not None else self.flow_name,
            tasks=tasks,
            task_records=records,
            start_time=rc.start_time,
            end_time=rc.end_time,
        )


def _make_backend(run):
    class RunnerTraceBackend(PY.TraceBackend):
        """Forwards pyoco's trace callbacks to the run; never lets an error reach the engine."""

        def _guard(self, fn, *args):
            try:
                fn(*args)
            except Exception as exc:
                _log(f"run {run.run_id}: trace callback failed: {_exc_text(exc)}")

        def on_flow_start(self, flow_name, run_id=None):
            self._guard(run.on_flow_start)

        def on_flow_end(self, flow_name):
            self._guard(run.on_flow_end)

        def on_node_start(self, node_name):
            self._guard(run.on_node_start, node_name)

        def on_node_end(self, node_name, duration_ms):
            self._guard(run.on_node_end, node_name, duration_ms)

        def on_node_error(self, node_name, error):
            self._guard(run.on_node_error, node_name, error)

        def on_node_transition(self, source, target):
            pass

    return RunnerTraceBackend()


# --------------------------------------------------------------------------------------------
# The runner (main thread: stdin)
# --------------------------------------------------------------------------------------------

def _missing_flow_resolver(flow_name):
    # Like pyoco-worker without --flow-resolver: YAML-only, every named flow is unknown.
    raise KeyError(flow_name)


class Runner:
    def __init__(self, channel, resolver):
        self.channel = channel
        self.resolver = resolver or _missing_flow_resolver
        self.lock = threading.Lock()
        self.active = None
        self.precancelled = collections.OrderedDict()
        self.shutting_down = False
        self.cwd = os.getcwd()
        self.stdout, self.stderr = sys.stdout, sys.stderr

    def restore_process_state(self):
        """Undo what a task may have changed that matters for the next run."""
        try:
            if os.getcwd() != self.cwd:
                _log(f"a task changed the working directory; back to {self.cwd}")
                os.chdir(self.cwd)
        except OSError as exc:
            _log(f"cannot return to {self.cwd}: {exc}")
        sys.stdout, sys.stderr = self.stdout, self.stderr

    def error(self, kind, message, run_id=None):
        if run_id is None:
            self.channel.send(event("error", kind=kind, message=message))
        else:
            self.channel.send(event("error", kind=kind, message=message, run_id=run_id))

    def run_done(self, run, result):
        # Clear `active` and send run_finished atomically: a `run` that arrives right after
        # the worker saw run_finished must never get `busy`.
        with self.lock:
            if self.active is run:
                self.active = None
            if result is not None:
                data = _encode_line(result)
                if len(data) > MAX_RUN_FINISHED_BYTES:
                    fields = {k: v for k, v in result.items() if k != "type"}
                    fields.update(task_records={}, task_records_truncated=True)
                    data = _encode_line(event("run_finished", **fields))
                self.channel.send_raw(data)

    def handle(self, msg):
        mtype = msg.get("type")
        if mtype == "ping":
            self.channel.send(event("pong", seq=msg.get("seq")))
        elif mtype == "run":
            self.handle_run(msg)
        elif mtype == "cancel":
            run_id = msg.get("run_id")
            if not isinstance(run_id, str) or not run_id:
                self.error("bad_request", "cancel needs a non-empty string run_id")
                return
            with self.lock:
                run = self.active
                if run is not None and run.run_id == run_id:
                    run.request_cancel()
                    active = True
                else:
                    # Remember it: the run may still be on its way to us.
                    self.precancelled[run_id] = True
                    while len(self.precancelled) > PRECANCEL_MEMORY:
                        self.precancelled.popitem(last=False)
                    active = False
            self.channel.send(event("cancel_ack", run_id=run_id, active=active))
        elif mtype == "shutdown":
            self.shutdown()
        elif isinstance(mtype, str):
            self.error("bad_request", f"unknown request type {mtype!r}", _rid(msg))
        else:
            self.error("bad_request", "request has no string 'type'", _rid(msg))
        return None

    def handle_run(self, msg):
        run_id = msg.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            self.error("bad_request", "run needs a non-empty string run_id", _rid(msg))
            return
        if "flow_name" not in msg:
            self.error("bad_request", "run needs flow_name", run_id)
            return
        flow_name = msg.get("flow_name")
        if flow_name is None:
            flow_name = ""
        if not isinstance(flow_name, str):
            self.error("bad_request", "flow_name must be a string", run_id)
            return
        params = msg.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            self.error("bad_request", "params must be a JSON object", run_id)
            return
        workflow_yaml = msg.get("workflow_yaml")
        if workflow_yaml is not None and not isinstance(workflow_yaml, str):
            self.error("bad_request", "workflow_yaml must be a string or null", run_id)
            return
        with self.lock:
            if self.shutting_down:
                self.error("busy", "runner is shutting down", run_id)
                return
            if self.active is not None:
                self.error("busy", f"runner is busy with run {self.active.run_id}", run_id)
                return
            try:
                run = Run(self, run_id, flow_name, params, workflow_yaml)
            except Exception as exc:
                self.error("bad_request", f"cannot set up the run: {_exc_text(exc)}", run_id)
                return
            if self.precancelled.pop(run_id, None):
                run.request_cancel()
            self.active = run
            run.thread.start()

    def shutdown(self):
        """Finish the current run, then exit 0; meanwhile keep answering cancel and ping."""
        with self.lock:
            if self.shutting_down:
                return
            self.shutting_down = True
            run = self.active
        if run is None:
            self.channel.exit(0)

        def wait_then_exit():
            run.thread.join()
            self.channel.exit(0)

        threading.Thread(target=wait_then_exit, name="shutdown", daemon=True).start()

    def wait_idle(self):
        with self.lock:
            self.shutting_down = True
            run = self.active
        if run is not None:
            run.thread.join()


def _rid(msg):
    rid = msg.get("run_id") if isinstance(msg, dict) else None
    return rid if isinstance(rid, str) else None


def _parse_args(argv):
    """Returns (resolver spec or None, compat dirs to append to sys.path, PYOCO_CALLABLE_ALLOW)."""
    resolver = None
    compat = []
    allow = ""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--compat-path" and i + 1 < len(argv):
            compat.append(argv[i + 1])
            i += 2
        elif arg == "--callable-allow" and i + 1 < len(argv):
            allow = argv[i + 1]
            i += 2
        elif arg == "--flow-resolver":
            if i + 1 >= len(argv):
                raise Fatal("resolver_error",
                            "--flow-resolver must be module:function or file.py:function ('')")
            resolver = argv[i + 1]
            i += 2
        elif arg.startswith("--flow-resolver="):
            resolver = arg.split("=", 1)[1]
            i += 1
        else:
            raise Fatal("usage", f"unknown argument {arg!r}; usage: pyoco_runner.py [--flow-resolver module:function|path/file.py:function] [--compat-path DIR] [--callable-allow PREFIXES]")
    return resolver, compat, allow


def main():
    global _ERR, POLICY
    # 1. Reserve the original stdout for the protocol; fd 1 and sys.stdout go to stderr.
    #    Likewise stdin: requests are read from a private duplicate, fd 0 becomes /dev/null, so
    #    neither a task (input(), sys.stdin.read()) nor a child process it starts can swallow
    #    requests.  os.dup() makes non-inheritable fds: children never hold the protocol pipes.
    proto_file = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _ERR = sys.stderr
    channel = Channel(proto_file)
    requests = os.fdopen(os.dup(0), "rb")
    try:
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.close(null_fd)
    except OSError as exc:
        _log(f"cannot point stdin at {os.devnull}: {exc}")

    def fatal(exc):
        _log(f"fatal ({exc.kind}): {exc.message}")
        channel.send(event("fatal", kind=exc.kind, message=exc.message))
        _hard_exit(EXIT_FATAL)

    # 2. pyoco and the resolver.
    try:
        resolver_spec, compat, allow = _parse_args(sys.argv[1:])
        # Taken before any other code runs: the PYTHONPATH the worker set is the allowed tree.
        POLICY = CallablePolicy.from_environment(allow)
        # Last on the path: stand-ins (the original's example module) never shadow a real
        # installed package of the same name.
        sys.path.extend(compat)
        version = load_pyoco()
        resolver = load_flow_resolver(resolver_spec) if resolver_spec is not None else None
    except Fatal as exc:
        fatal(exc)
        return

    runner = Runner(channel, resolver)
    channel.send(event(
        "ready",
        pid=os.getpid(),
        python=platform.python_version(),
        python_executable=sys.executable,
        pyoco_version=version,
        protocol=PROTOCOL,
        has_resolver=resolver is not None,
    ))

    # 3. Requests.
    stdin = requests
    while True:
        try:
            line = stdin.readline(MAX_REQUEST_LINE + 1)
        except KeyboardInterrupt:
            break
        except (OSError, ValueError):
            break
        if not line:
            break  # EOF = shutdown
        if len(line) > MAX_REQUEST_LINE and not line.endswith(b"\n"):
            while True:  # skip the rest of the oversized line
                rest = stdin.readline(MAX_REQUEST_LINE)
                if not rest or rest.endswith(b"\n"):
                    break
            runner.error("bad_request", f"request line longer than {MAX_REQUEST_LINE} bytes")
            continue
        if not line.strip():
            continue
        try:
            msg = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            runner.error("bad_request", f"request is not a JSON line: {exc}")
            continue
        if not isinstance(msg, dict):
            runner.error("bad_request", "request must be a JSON object")
            continue
        try:
            runner.handle(msg)
        except Exception as exc:  # never die on a request
            _log(f"handling a request failed:\n{_format_tb(exc) or ''}")
            runner.error("bad_request", f"request failed: {_exc_text(exc)}", _rid(msg))

    # 4. EOF: finish the current run, then exit.
    runner.wait_idle()
    channel.exit(0)


if __name__ == "__main__":
    main()
