//! The flow.yaml policy (contract §4): the check the gateway runs on `POST /runs/yaml` and the
//! worker runs again before it hands a YAML job to the Python runner.
//!
//! [`parse_workflow_yaml`] answers the same accept/reject as the original's
//! `parse_workflow_yaml_bytes` and names the same reason code, checked in the same order:
//! `invalid_utf8`, `invalid_yaml`, `invalid_yaml_root`, `unsupported_key_flows`,
//! `unsupported_key_discovery`, `unknown_top_level_keys`, `missing_flow`, `invalid_flow`,
//! `unknown_flow_keys`, `missing_flow_graph`, `invalid_flow_defaults`, `invalid_tasks`,
//! `invalid_task_name`, `invalid_task_config`, `unknown_task_keys`, `invalid_task_callable`,
//! `invalid_task_inputs`, `invalid_task_outputs`, `invalid_runtime`, `unknown_runtime_keys`,
//! `invalid_runtime_expose_env`, `invalid_version`. Two codes are ours alone:
//! `unserializable_flow_defaults` (see below) and `too_deep` (brackets nested more than 1000
//! levels, refused before the YAML scanner, which is quadratic in that depth), checked right
//! after `invalid_utf8`.
//!
//! # YAML semantics
//!
//! The original reads the file with PyYAML's `yaml.safe_load`, which implements YAML 1.1, while
//! `serde_norway` resolves plain scalars by YAML 1.2 rules. Since `flow.defaults` becomes the run's
//! `params` and the accept/reject must match, this module re-resolves scalars the PyYAML way:
//! `serde_norway` (libyaml) does the parsing; a first pass records the node tree and serde's typed
//! scalars, a second pass fetches every scalar's source text and position, and the PyYAML resolver
//! and constructors are then applied to that text. What that gives, as PyYAML does:
//!
//! * `yes`/`no`/`on`/`off` (any of their three casings) are booleans; `y`/`n` stay strings;
//! * `0755` is octal (493), `0o17` is a string, `1_000` is 1000, `0x_1F` is 31, `1:30` is 90
//!   (base 60), `08` is a string;
//! * floats need a dot and a signed exponent: `1.0e+3` is 1000.0 but `1e3`, `1.0e3` and `-.5` are
//!   strings; `.inf`, `-.inf`, `.nan` are floats;
//! * `2024-01-01` is a date and `2024-01-01 10:00:00` a datetime (an impossible date such as
//!   `2024-13-01` makes the whole file invalid YAML);
//! * quoted and block scalars are always strings; `!!str` forces a string;
//! * merge keys (`<<: *anchor`, `<<: [*a, *b]`) are applied, including PyYAML 6's rule that when
//!   several merged mappings share a key, the later one wins unless the key is one character long
//!   (an artefact of CPython interning one-character strings, reproduced on purpose);
//! * duplicate keys are allowed, the last value wins and keeps the first position; keys that are
//!   equal in Python (`1`, `1.0`, `true`) are one key;
//! * a plain `<<` or `=` used as a value, an explicit `!!python/...` or other unknown `!!` tag, any
//!   local tag (`!foo`), a sequence or mapping used as a key: invalid YAML.
//!
//! `flow.defaults` is converted to JSON as `json.dumps` would (non-string keys: `1` → `"1"`,
//! `true` → `"true"`, `null` → `"null"`, `1.5` → `"1.5"`).
//!
//! # Known differences from the original
//!
//! * Values `json.dumps` cannot write (dates, binary, sets) or that only Python's JSON dialect
//!   accepts (`NaN`, `Infinity`), and integers beyond the 64-bit range, in `flow.defaults`: the
//!   original accepts the file and then fails when it stores the run (HTTP 500, or a NaN token
//!   in KV that strict JSON readers reject); here the file is rejected with the code
//!   `unserializable_flow_defaults` (HTTP 422 like every other policy failure).
//! * The original crashes with `TypeError` when a set of unknown keys mixes strings and
//!   non-strings (it sorts them); here the regular `unknown_*_keys` code is returned.
//! * `version` must fit in an `i64`, and only ASCII digits are read from a string (Python's
//!   `int()` also reads other Unicode decimal digits).
//! * Explicit tags on sequences and mappings (`!!set`, `!!omap`, `!!python/tuple [...]`) are not
//!   seen; the node is read as a plain sequence or mapping. Tags on block scalars (`!!binary |`)
//!   are not seen either (the value stays a string). Explicit standard tags whose text is only
//!   valid in YAML 1.1 (`!!bool yes`, `!!int 0755`) and the non-specific tag `!` are rejected by
//!   libyaml/serde_norway as invalid YAML; PyYAML accepts them. Verbatim tags (`!<...>`) are
//!   only recognised when they contain no comma.
//! * A multi-line plain scalar is always a string (PyYAML would still resolve e.g. a timestamp
//!   folded over two lines).
//! * Nesting deeper than 128 levels is invalid YAML here (serde_norway's recursion limit), and so
//!   is a document that expands, through aliases, to more than 100 000 + 2 × its size in nodes.
//! * Where libyaml and PyYAML's pure-Python scanner disagree on exotic syntax, libyaml decides.

mod loader;
mod policy;
mod values;

use std::fmt;

use serde_json::{Map, Value};

pub use policy::{
    parse_workflow_yaml, ALLOWED_FLOW_KEYS, ALLOWED_RUNTIME_KEYS, ALLOWED_TASK_KEYS,
    ALLOWED_TOP_LEVEL_KEYS,
};

/// The contract's example single-flow `flow.yaml` (§4): `add_one >> to_text` with `x: 1`, tasks
/// from the original's test module. Used by tests and by `pyococtl bench`.
pub const EXAMPLE_FLOW_YAML: &str = "version: 1
flow:
  graph: |
    add_one >> to_text
  defaults:
    x: 1
tasks:
  add_one: {callable: pyoco_server._workflow_test_tasks:add_one}
  to_text: {callable: pyoco_server._workflow_test_tasks:to_text}
";

/// Why a flow.yaml was refused. `code` is the original's reason code (the part before `:` of
/// its `WorkflowYamlValidationError.reason`); `detail` says what was wrong, for logs and CLIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlPolicyError {
    pub code: String,
    pub detail: String,
}

impl YamlPolicyError {
    fn new(code: &str, detail: impl Into<String>) -> Self {
        YamlPolicyError {
            code: code.to_string(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for YamlPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for YamlPolicyError {}

/// One entry of `tasks`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    /// `module:function`, or `None` when the task is only named (pyoco then resolves it).
    pub callable: Option<String>,
    /// `inputs` as JSON, `{}` when absent. Best effort: values JSON cannot hold (dates, NaN,
    /// huge integers) appear as their YAML text; only the Python runner interprets inputs.
    pub inputs: Map<String, Value>,
    pub outputs: Vec<String>,
}

/// A flow.yaml that passed the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowYaml {
    /// SHA-256 of the raw bytes, lowercase hex (`workflow_yaml_sha256`).
    pub sha256_hex: String,
    /// Length of the raw bytes (`workflow_yaml_bytes`).
    pub size_bytes: usize,
    /// The file as text (the job message carries it in `workflow_yaml`).
    pub text: String,
    /// `version`, 1 when absent.
    pub version: i64,
    /// `flow.graph`; empty only when `flow` is absent, which `require_flow = false` allows.
    pub graph: String,
    /// `flow.defaults` as JSON (the run's `params`); `{}` when absent or null.
    pub defaults: Map<String, Value>,
    /// `tasks`, in file order.
    pub tasks: Vec<TaskSpec>,
    /// `runtime.expose_env`.
    pub expose_env: Vec<String>,
}

impl WorkflowYaml {
    /// Whether the file had a `flow` section (always true when parsed with `require_flow`).
    pub fn has_flow(&self) -> bool {
        !self.graph.is_empty()
    }
}

#[cfg(test)]
mod testutil {
    //! Shorthands shared by the submodules' tests.
    use super::*;

    pub fn code(yaml: &str) -> String {
        parse_workflow_yaml(yaml.as_bytes(), true)
            .expect_err("must be refused")
            .code
    }

    pub fn defaults(yaml: &str) -> Value {
        Value::Object(
            parse_workflow_yaml(yaml.as_bytes(), true)
                .expect("accepted")
                .defaults,
        )
    }
}
