//! `run submit` parameters: `--params-file` < `--params` < `--param k=v`, as pyoco-client merges them.

use std::path::Path;

use serde_json::{Map, Value};

use crate::client::{CtlError, CtlResult};

const PARAM_EXAMPLE: &str = "pyococtl run submit --flow-name main --param x=1 --param name=alice";
const PARAMS_EXAMPLE: &str = "pyococtl run submit --flow-name main --params '{\"x\": 1}'";
const FILE_EXAMPLE: &str =
    "pyococtl run submit --flow-name main --params-file params.yaml   # file: `x: 1` or {\"x\": 1}";

/// Merges the three sources: later ones override earlier keys (top level only).
pub fn build(
    params_file: Option<&Path>,
    params: Option<&str>,
    assignments: &[String],
) -> CtlResult<Map<String, Value>> {
    let mut out = Map::new();
    if let Some(path) = params_file {
        out.extend(parse_params_file(path)?);
    }
    if let Some(raw) = params {
        out.extend(parse_json_object(raw)?);
    }
    out.extend(parse_assignments(assignments)?);
    Ok(out)
}

/// `--params '{"x":1}'`.
pub fn parse_json_object(raw: &str) -> CtlResult<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CtlError::usage(
            format!(
                "--params must be a JSON object, not {} ({})",
                kind(&other),
                short(raw)
            ),
            PARAMS_EXAMPLE,
        )),
        Err(e) => Err(CtlError::usage(
            format!("--params must be a valid JSON object: {e} ({})", short(raw)),
            PARAMS_EXAMPLE,
        )),
    }
}

/// `--param k=v`: the value is JSON-decoded when it parses (`1`, `true`, `[1,2]`, `"s"`), else
/// kept as a string; key and value are trimmed; an empty value is `""`.
pub fn parse_assignments(items: &[String]) -> CtlResult<Map<String, Value>> {
    let mut out = Map::new();
    for raw in items {
        let Some((key, value)) = raw.split_once('=') else {
            return Err(CtlError::usage(
                format!("--param must be key=value ('{raw}')"),
                PARAM_EXAMPLE,
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(CtlError::usage(
                format!("--param key is empty ('{raw}')"),
                PARAM_EXAMPLE,
            ));
        }
        let v = if value.is_empty() {
            Value::String(String::new())
        } else {
            serde_json::from_str::<Value>(value)
                .unwrap_or_else(|_| Value::String(value.to_string()))
        };
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

/// `--params-file`: JSON, else YAML; the top level must be a mapping.
pub fn parse_params_file(path: &Path) -> CtlResult<Map<String, Value>> {
    let raw = std::fs::read(path).map_err(|e| {
        CtlError::usage(
            format!("cannot read --params-file {}: {e}", path.display()),
            FILE_EXAMPLE,
        )
    })?;
    let text = String::from_utf8(raw).map_err(|e| {
        CtlError::usage(
            format!("--params-file {} is not UTF-8 text: {e}", path.display()),
            FILE_EXAMPLE,
        )
    })?;
    let value = match serde_json::from_str::<Value>(&text) {
        Ok(v) => v,
        Err(json_err) => match serde_norway::from_str::<serde_norway::Value>(&text) {
            Ok(y) => yaml_to_json(y).map_err(|why| {
                CtlError::usage(format!("--params-file {}: {why}", path.display()), FILE_EXAMPLE)
            })?,
            Err(yaml_err) => {
                return Err(CtlError::usage(
                    format!(
                        "--params-file must be a JSON or YAML object ({})\n- detail: json: {json_err}; yaml: {yaml_err}",
                        path.display()
                    ),
                    FILE_EXAMPLE,
                ))
            }
        },
    };
    match value {
        Value::Object(m) => Ok(m),
        other => Err(CtlError::usage(
            format!(
                "--params-file must contain an object (mapping) at the top level, not {} ({})",
                kind(&other),
                path.display()
            ),
            FILE_EXAMPLE,
        )),
    }
}

/// YAML → JSON as `json.dumps(yaml.safe_load(...))` would do it: scalar keys become strings.
fn yaml_to_json(y: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{f} cannot be sent as JSON"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match yaml_to_json(k)? {
                    Value::String(s) => s,
                    Value::Null => "null".into(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => super::pyjson::dumps(&Value::Number(n)),
                    other => {
                        return Err(format!(
                            "a mapping key must be a scalar, not {}",
                            kind(&other)
                        ))
                    }
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("'{}…'", s.chars().take(60).collect::<String>())
    } else {
        format!("'{s}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn assignments_decode_json_else_string() {
        let m = parse_assignments(&s(&[
            "a=1",
            " b = true ",
            "c=hello",
            "d=",
            "e=[1,2]",
            "f=\"q\"",
            "g=x=y",
            "h={bad",
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": 1, "b": true, "c": "hello", "d": "", "e": [1, 2], "f": "q", "g": "x=y", "h": "{bad"})
        );
    }

    #[test]
    fn assignment_errors() {
        let e = parse_assignments(&s(&["x"])).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert!(
            e.message.contains("--param must be key=value ('x')"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("- example: pyococtl run submit"),
            "{}",
            e.message
        );
        let e = parse_assignments(&s(&[" =1"])).unwrap_err();
        assert!(
            e.message.contains("--param key is empty (' =1')"),
            "{}",
            e.message
        );
    }

    #[test]
    fn params_must_be_an_object() {
        assert!(parse_json_object("[1]")
            .unwrap_err()
            .message
            .contains("--params must be a JSON object, not a list"));
        assert!(parse_json_object("{x")
            .unwrap_err()
            .message
            .contains("--params must be a valid JSON object"));
        assert_eq!(parse_json_object("{\"x\": 1}").unwrap()["x"], 1);
    }

    #[test]
    fn merge_order_file_params_param() {
        let dir = std::env::temp_dir().join(format!("pyococtl-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("p.yaml");
        std::fs::write(&yaml, "a: 1\nb: 1\nc: 1\n1: one\nnested: {k: [1, 2.5]}\n").unwrap();
        let m = build(Some(&yaml), Some("{\"b\": 2, \"c\": 2}"), &s(&["c=3"])).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": 1, "b": 2, "c": 3, "1": "one", "nested": {"k": [1, 2.5]}})
        );
        let js = dir.join("p.json");
        std::fs::write(&js, "{\"z\": null}").unwrap();
        assert_eq!(
            Value::Object(build(Some(&js), None, &[]).unwrap()),
            json!({"z": null})
        );
        let list = dir.join("l.yaml");
        std::fs::write(&list, "- 1\n- 2\n").unwrap();
        let e = build(Some(&list), None, &[]).unwrap_err();
        assert!(
            e.message
                .contains("must contain an object (mapping) at the top level, not a list"),
            "{}",
            e.message
        );
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "a: [1\n").unwrap();
        assert!(build(Some(&bad), None, &[])
            .unwrap_err()
            .message
            .contains("must be a JSON or YAML object"));
        let missing = dir.join("missing.yaml");
        let e = build(Some(&missing), None, &[]).unwrap_err();
        assert!(
            e.message
                .contains(&format!("cannot read --params-file {}", missing.display())),
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
