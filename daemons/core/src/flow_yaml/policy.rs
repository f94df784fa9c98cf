//! The key and shape rules of flow.yaml and their reason codes, applied to the values the loader
//! produced; see the module documentation for the order and the list of codes.

use serde_json::Map;
use sha2::{Digest, Sha256};

use super::loader::safe_load;
use super::values::{json_object, Dict, Py};
use super::{TaskSpec, WorkflowYaml, YamlPolicyError};
use crate::py;

/// Top-level keys a flow.yaml may hold.
pub const ALLOWED_TOP_LEVEL_KEYS: [&str; 4] = ["flow", "runtime", "tasks", "version"];
/// Keys allowed under `flow`.
pub const ALLOWED_FLOW_KEYS: [&str; 2] = ["defaults", "graph"];
/// Keys allowed under `tasks.<name>`.
pub const ALLOWED_TASK_KEYS: [&str; 3] = ["callable", "inputs", "outputs"];
/// Keys allowed under `runtime`.
pub const ALLOWED_RUNTIME_KEYS: [&str; 1] = ["expose_env"];

/// Far above the parser's own recursion limit (128), so no document it accepts is refused.
const MAX_YAML_NESTING: usize = 1000;

/// Where `[`/`{` nesting first exceeds [`MAX_YAML_NESTING`], counted without regard to quotes
/// (so a string full of brackets can count too: 1000 unclosed ones is no real flow.yaml). The YAML scanner is quadratic in flow-collection depth: a
/// 256 KiB document of brackets kept a core busy for seconds (a minute in a debug build)
/// before the recursion limit refused it.
fn too_deep(raw: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in raw.iter().enumerate() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_YAML_NESTING {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Apply the flow.yaml policy to `raw` (contract §4). With `require_flow = false` a file
/// without `flow` (or with `flow: null`) is accepted, with an empty `graph` and `defaults`.
pub fn parse_workflow_yaml(
    raw: &[u8],
    require_flow: bool,
) -> Result<WorkflowYaml, YamlPolicyError> {
    // Size and hash come from the bytes as received, before any decoding.
    let size_bytes = raw.len();
    let sha256_hex = hex::encode(Sha256::digest(raw));

    let text = std::str::from_utf8(raw).map_err(|e| {
        YamlPolicyError::new(
            "invalid_utf8",
            format!(
                "flow.yaml must be UTF-8 text; invalid byte sequence at byte offset {}",
                e.valid_up_to()
            ),
        )
    })?;

    // Before the scanner, which is quadratic in bracket depth (jobs from any gateway reach the
    // worker's copy of this check, so the bound lives here).
    if let Some(at) = too_deep(raw) {
        return Err(YamlPolicyError::new(
            "too_deep",
            format!(
                "flow.yaml nests brackets more than {MAX_YAML_NESTING} levels deep (at byte {at}); flatten it"
            ),
        ));
    }
    let root = safe_load(text).map_err(|e| {
        YamlPolicyError::new("invalid_yaml", format!("flow.yaml is not valid YAML: {e}"))
    })?;

    let data = match &root {
        Py::Map(d) => d,
        other => {
            return Err(YamlPolicyError::new(
                "invalid_yaml_root",
                format!(
                    "the top level of flow.yaml must be a mapping, found {}",
                    other.type_name()
                ),
            ))
        }
    };

    if data.get("flows").is_some() {
        return Err(YamlPolicyError::new(
            "unsupported_key_flows",
            "top-level key 'flows' is not supported: a flow.yaml holds one workflow, under 'flow:'",
        ));
    }
    if data.get("discovery").is_some() {
        return Err(YamlPolicyError::new(
            "unsupported_key_discovery",
            "top-level key 'discovery' is not supported: discovery scope cannot be set in flow.yaml; \
             name each task's 'callable' instead",
        ));
    }
    check_keys(
        data,
        &ALLOWED_TOP_LEVEL_KEYS,
        "unknown_top_level_keys",
        "unknown top-level keys",
    )?;

    // flow
    let mut graph = String::new();
    let mut defaults_py: Option<&Dict> = None;
    match data.get("flow") {
        None | Some(Py::Null) => {
            if require_flow {
                return Err(YamlPolicyError::new(
                    "missing_flow",
                    "'flow' is required (a mapping with 'graph' and optional 'defaults')",
                ));
            }
        }
        Some(Py::Map(flow)) => {
            check_keys(
                flow,
                &ALLOWED_FLOW_KEYS,
                "unknown_flow_keys",
                "unknown keys in 'flow'",
            )?;
            match flow.get("graph") {
                Some(Py::Str(g)) if !py::strip(g).is_empty() => graph = g.clone(),
                other => {
                    return Err(YamlPolicyError::new(
                        "missing_flow_graph",
                        format!(
                            "'flow.graph' must be a non-empty string, found {}",
                            other.map_or_else(|| "nothing".to_string(), describe_short)
                        ),
                    ))
                }
            }
            match flow.get("defaults") {
                Some(d) if d.truthy() => match d {
                    Py::Map(m) => defaults_py = Some(m),
                    other => {
                        return Err(YamlPolicyError::new(
                            "invalid_flow_defaults",
                            format!(
                                "'flow.defaults' must be a mapping or null, found {}",
                                other.type_name()
                            ),
                        ))
                    }
                },
                _ => {}
            }
        }
        Some(other) => {
            return Err(YamlPolicyError::new(
                "invalid_flow",
                format!("'flow' must be a mapping, found {}", other.type_name()),
            ))
        }
    }

    // tasks
    let mut tasks = Vec::new();
    let empty = Dict::default();
    let tasks_map = match data.get("tasks") {
        Some(t) if t.truthy() => match t {
            Py::Map(m) => m,
            other => {
                return Err(YamlPolicyError::new(
                    "invalid_tasks",
                    format!(
                        "'tasks' must be a mapping of task name to task settings, found {}",
                        other.type_name()
                    ),
                ))
            }
        },
        _ => &empty,
    };
    for (name, conf) in &tasks_map.entries {
        let name = match name {
            Py::Str(s) if !py::strip(s).is_empty() => s.clone(),
            other => {
                return Err(YamlPolicyError::new(
                    "invalid_task_name",
                    format!(
                        "task names must be non-empty strings, found {}",
                        describe_short(other)
                    ),
                ))
            }
        };
        let conf = match conf {
            Py::Map(m) => m,
            other => {
                return Err(YamlPolicyError::new(
                    "invalid_task_config",
                    format!(
                        "tasks.{name} must be a mapping, found {}",
                        other.type_name()
                    ),
                ))
            }
        };
        check_keys(
            conf,
            &ALLOWED_TASK_KEYS,
            "unknown_task_keys",
            &format!("unknown keys in tasks.{name}"),
        )?;
        let callable = match conf.get("callable") {
            None | Some(Py::Null) => None,
            Some(Py::Str(c)) if c.contains(':') => Some(c.clone()),
            Some(other) => {
                return Err(YamlPolicyError::new(
                    "invalid_task_callable",
                    format!(
                        "tasks.{name}.callable must be a string 'module:function', found {}",
                        describe_short(other)
                    ),
                ))
            }
        };
        let inputs = match conf.get("inputs") {
            Some(i) if i.truthy() => match i {
                Py::Map(m) => json_object(m, false).unwrap_or_default(),
                other => {
                    return Err(YamlPolicyError::new(
                        "invalid_task_inputs",
                        format!(
                            "tasks.{name}.inputs must be a mapping, found {}",
                            other.type_name()
                        ),
                    ))
                }
            },
            _ => Map::new(),
        };
        let outputs = match conf.get("outputs") {
            Some(o) if o.truthy() => string_list(o).ok_or_else(|| {
                YamlPolicyError::new(
                    "invalid_task_outputs",
                    format!(
                        "tasks.{name}.outputs must be a list of strings, found {}",
                        describe_list(o)
                    ),
                )
            })?,
            _ => Vec::new(),
        };
        tasks.push(TaskSpec {
            name,
            callable,
            inputs,
            outputs,
        });
    }

    // runtime
    let runtime = match data.get("runtime") {
        Some(r) if r.truthy() => match r {
            Py::Map(m) => m,
            other => {
                return Err(YamlPolicyError::new(
                    "invalid_runtime",
                    format!("'runtime' must be a mapping, found {}", other.type_name()),
                ))
            }
        },
        _ => &empty,
    };
    check_keys(
        runtime,
        &ALLOWED_RUNTIME_KEYS,
        "unknown_runtime_keys",
        "unknown keys in 'runtime'",
    )?;
    let expose_env = match runtime.get("expose_env") {
        Some(e) if e.truthy() => string_list(e).ok_or_else(|| {
            YamlPolicyError::new(
                "invalid_runtime_expose_env",
                format!(
                    "'runtime.expose_env' must be a list of strings, found {}",
                    describe_list(e)
                ),
            )
        })?,
        _ => Vec::new(),
    };

    // version
    let version = match data.get("version") {
        None => 1,
        Some(v) => py_int(v).ok_or_else(|| {
            YamlPolicyError::new(
                "invalid_version",
                format!("'version' must be an integer, found {}", describe_short(v)),
            )
        })?,
    };

    // Ours alone: the defaults become JSON documents (KV snapshot, job message).
    let defaults = match defaults_py {
        None => Map::new(),
        Some(d) => json_object(d, true).map_err(|e| {
            YamlPolicyError::new(
                "unserializable_flow_defaults",
                format!("'flow.defaults' cannot be stored as JSON: {e}"),
            )
        })?,
    };

    Ok(WorkflowYaml {
        sha256_hex,
        size_bytes,
        text: text.to_string(),
        version,
        graph,
        defaults,
        tasks,
        expose_env,
    })
}

fn check_keys(map: &Dict, allowed: &[&str], code: &str, what: &str) -> Result<(), YamlPolicyError> {
    let mut unknown: Vec<String> = map
        .entries
        .iter()
        .filter(|(k, _)| !matches!(k, Py::Str(s) if allowed.contains(&s.as_str())))
        .map(|(k, _)| k.key_display())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(YamlPolicyError::new(
        code,
        format!(
            "{what}: {} (allowed: {})",
            unknown.join(", "),
            allowed.join(", ")
        ),
    ))
}

fn string_list(v: &Py) -> Option<Vec<String>> {
    match v {
        Py::Seq(items) => items
            .iter()
            .map(|i| match i {
                Py::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn describe_list(v: &Py) -> String {
    match v {
        Py::Seq(items) => match items.iter().find(|i| !matches!(i, Py::Str(_))) {
            Some(bad) => format!("a list containing {}", describe_short(bad)),
            None => "a list".to_string(),
        },
        other => other.type_name().to_string(),
    }
}

fn describe_short(v: &Py) -> String {
    match v {
        Py::Null | Py::Bool(_) | Py::Int(_) | Py::BigInt(_) | Py::Float(_) => {
            format!("{} {}", v.type_name(), v.key_display())
        }
        Py::Str(s) if s.chars().count() <= 40 => format!("string {s:?}"),
        other => other.type_name().to_string(),
    }
}

/// Python's `int(value)` for the value kinds YAML yields, limited to `i64`.
fn py_int(v: &Py) -> Option<i64> {
    match v {
        Py::Bool(b) => Some(i64::from(*b)),
        Py::Int(i) => i64::try_from(*i).ok(),
        Py::Float(f) => py::int_from_float(*f),
        Py::Str(s) => py::int_from_str(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::EXAMPLE_FLOW_YAML;

    #[test]
    fn brackets_nested_too_deep_are_refused_before_parsing() {
        let deep = format!(
            "flow: {{graph: a, defaults: {{x: {}1{}}}}}\n",
            "[".repeat(1001),
            "]".repeat(1001)
        );
        let t = std::time::Instant::now();
        let e = parse_workflow_yaml(deep.as_bytes(), true).unwrap_err();
        assert_eq!(e.code, "too_deep", "{e}");
        assert!(e.detail.contains("1000 levels"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_millis(200));
        // within the bound the parser's own limit (128) answers as before
        let nested = format!(
            "flow: {{graph: a, defaults: {{x: {}1{}}}}}\n",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(
            parse_workflow_yaml(nested.as_bytes(), true)
                .unwrap_err()
                .code,
            "invalid_yaml"
        );
    }
    use super::*;
    use serde_json::{json, Value};

    const EXAMPLE: &str = EXAMPLE_FLOW_YAML;

    #[test]
    fn flow_yaml_accepts_contract_example() {
        let w = parse_workflow_yaml(EXAMPLE.as_bytes(), true).unwrap();
        assert_eq!(w.version, 1);
        assert_eq!(w.graph, "add_one >> to_text\n");
        assert_eq!(Value::Object(w.defaults.clone()), json!({"x": 1}));
        assert_eq!(w.size_bytes, EXAMPLE.len());
        assert_eq!(
            w.sha256_hex,
            hex::encode(Sha256::digest(EXAMPLE.as_bytes()))
        );
        assert_eq!(w.text, EXAMPLE);
        assert_eq!(w.tasks.len(), 2);
        assert_eq!(w.tasks[0].name, "add_one");
        assert_eq!(
            w.tasks[0].callable.as_deref(),
            Some("pyoco_server._workflow_test_tasks:add_one")
        );
        assert_eq!(w.tasks[1].name, "to_text");
        assert!(w.tasks[1].inputs.is_empty() && w.tasks[1].outputs.is_empty());
        assert!(w.expose_env.is_empty());
        assert!(w.has_flow());
    }

    #[test]
    fn flow_yaml_reason_codes() {
        let g = "flow: {graph: a}\n";
        let cases: &[(&[u8], &str)] = &[
            (b"flow: {graph: \xff}\n", "invalid_utf8"),
            (b"flow: [unclosed\n", "invalid_yaml"),
            (b"- a\n- b\n", "invalid_yaml_root"),
            (b"", "invalid_yaml_root"),
            (b"flows: {}\nflow: {graph: a}\n", "unsupported_key_flows"),
            (
                b"discovery: {}\nflow: {graph: a}\n",
                "unsupported_key_discovery",
            ),
            (b"flows2: {}\nflow: {graph: a}\n", "unknown_top_level_keys"),
            (b"version: 1\n", "missing_flow"),
            (b"flow: a >> b\n", "invalid_flow"),
            (b"flow: {graph: a, name: x}\n", "unknown_flow_keys"),
            (b"flow: {graph: '  '}\n", "missing_flow_graph"),
            (
                b"flow: {graph: a, defaults: [1]}\n",
                "invalid_flow_defaults",
            ),
            (b"flow: {graph: a}\ntasks: [a]\n", "invalid_tasks"),
            (b"flow: {graph: a}\ntasks: {1: {}}\n", "invalid_task_name"),
            (
                b"flow: {graph: a}\ntasks: {a: m:f}\n",
                "invalid_task_config",
            ),
            (
                b"flow: {graph: a}\ntasks: {a: {use: x}}\n",
                "unknown_task_keys",
            ),
            (
                b"flow: {graph: a}\ntasks: {a: {callable: nocolon}}\n",
                "invalid_task_callable",
            ),
            (
                b"flow: {graph: a}\ntasks: {a: {inputs: [x]}}\n",
                "invalid_task_inputs",
            ),
            (
                b"flow: {graph: a}\ntasks: {a: {outputs: [1]}}\n",
                "invalid_task_outputs",
            ),
            (b"flow: {graph: a}\nruntime: [x]\n", "invalid_runtime"),
            (
                b"flow: {graph: a}\nruntime: {env: [x]}\n",
                "unknown_runtime_keys",
            ),
            (
                b"flow: {graph: a}\nruntime: {expose_env: HOME}\n",
                "invalid_runtime_expose_env",
            ),
            (b"flow: {graph: a}\nversion: one\n", "invalid_version"),
            (
                b"flow: {graph: a, defaults: {d: 2024-01-01}}\n",
                "unserializable_flow_defaults",
            ),
        ];
        for (yaml, want) in cases {
            let got = parse_workflow_yaml(yaml, true)
                .expect_err(&String::from_utf8_lossy(yaml))
                .code;
            assert_eq!(&got, want, "for {:?}", String::from_utf8_lossy(yaml));
        }
        assert!(parse_workflow_yaml(g.as_bytes(), true).is_ok());
    }

    #[test]
    fn flow_yaml_error_display_and_detail() {
        let e = parse_workflow_yaml(b"flows2: 1\nflow: {graph: a}\n", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown_top_level_keys: unknown top-level keys: flows2 (allowed: flow, runtime, tasks, version)"
        );
        let e = parse_workflow_yaml(b"flow: {graph: a}\ntasks: {a: 1}\n", true).unwrap_err();
        assert_eq!(e.code, "invalid_task_config");
        assert!(e.detail.contains("tasks.a"), "{e}");
    }

    #[test]
    fn flow_yaml_require_flow_false() {
        let w = parse_workflow_yaml(b"tasks: {a: {callable: 'm:f'}}\n", false).unwrap();
        assert_eq!(w.graph, "");
        assert!(!w.has_flow());
        assert!(w.defaults.is_empty());
        assert_eq!(w.tasks.len(), 1);
        // A present flow is still checked.
        assert_eq!(
            parse_workflow_yaml(b"flow: 1\n", false).unwrap_err().code,
            "invalid_flow"
        );
        assert_eq!(
            parse_workflow_yaml(b"flow: null\n", true).unwrap_err().code,
            "missing_flow"
        );
    }

    #[test]
    fn flow_yaml_falsy_sections_default() {
        let w = parse_workflow_yaml(
            b"flow: {graph: a, defaults: 0}\ntasks: []\nruntime: ''\n",
            true,
        )
        .unwrap();
        assert!(w.defaults.is_empty() && w.tasks.is_empty());
        let w = parse_workflow_yaml(
            b"flow: {graph: a}\ntasks: {t: {inputs: [], outputs: 0}}\n",
            true,
        )
        .unwrap();
        assert!(w.tasks[0].inputs.is_empty() && w.tasks[0].outputs.is_empty());
    }

    #[test]
    fn flow_yaml_version_coercion() {
        let v = |s: &str| {
            parse_workflow_yaml(
                format!("flow: {{graph: a}}\nversion: {s}\n").as_bytes(),
                true,
            )
        };
        assert_eq!(v("2").unwrap().version, 2);
        assert_eq!(v("'3'").unwrap().version, 3);
        assert_eq!(v("' 1_0 '").unwrap().version, 10);
        assert_eq!(v("true").unwrap().version, 1);
        assert_eq!(v("1.9").unwrap().version, 1);
        assert_eq!(v("-1.9").unwrap().version, -1);
        assert_eq!(v("'1.0'").unwrap_err().code, "invalid_version");
        assert_eq!(v("null").unwrap_err().code, "invalid_version");
        assert_eq!(v(".inf").unwrap_err().code, "invalid_version");
        assert_eq!(v("[1]").unwrap_err().code, "invalid_version");
        assert_eq!(v("2024-01-01").unwrap_err().code, "invalid_version");
    }

    #[test]
    fn flow_yaml_version_int_whitespace_like_python() {
        // int() of a string skips Unicode spaces but not U+001C..U+001F, as CPython does.
        let v = |s: &str| {
            parse_workflow_yaml(
                format!("flow: {{graph: a}}\nversion: \"{s}\"\n").as_bytes(),
                true,
            )
        };
        assert_eq!(v("\\u30007").unwrap().version, 7);
        assert_eq!(v("\\x1c7").unwrap_err().code, "invalid_version");
    }
}
