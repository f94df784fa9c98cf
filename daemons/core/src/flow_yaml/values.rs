//! The Python values `yaml.safe_load` produces, and their conversion to JSON as `json.dumps`
//! would write them.

use serde_json::{Map, Value};

use crate::py;

/// Convert a mapping to a JSON object. `strict`: fail where `json.dumps(..., allow_nan=False)`
/// would, and on integers outside the 64-bit range; otherwise substitute the YAML text.
pub(super) fn json_object(d: &Dict, strict: bool) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (k, v) in &d.entries {
        let key = json_key(k, strict)?;
        let value = to_json(v, strict).map_err(|e| format!("key {key:?}: {e}"))?;
        out.insert(key, value);
    }
    Ok(out)
}

fn to_json(v: &Py, strict: bool) -> Result<Value, String> {
    Ok(match v {
        Py::Null => Value::Null,
        Py::Bool(b) => Value::Bool(*b),
        Py::Int(i) => {
            if let Ok(x) = i64::try_from(*i) {
                Value::from(x)
            } else if let Ok(x) = u64::try_from(*i) {
                Value::from(x)
            } else if strict {
                return Err(format!("integer {i} is outside the 64-bit range"));
            } else {
                Value::String(i.to_string())
            }
        }
        Py::BigInt(text) => {
            if strict {
                return Err(format!("integer {text} is outside the 64-bit range"));
            }
            Value::String(text.clone())
        }
        Py::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None if strict => return Err(format!("{} is not a JSON number", py::float_repr(*f))),
            None => Value::Null,
        },
        Py::Str(s) => Value::String(s.clone()),
        Py::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(x, strict).map_err(|e| format!("item {i}: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        Py::Map(d) => Value::Object(json_object(d, strict)?),
        Py::Opaque { kind, text, .. } => {
            if strict {
                return Err(format!(
                    "{} {text:?} has no JSON form; quote it to pass a string",
                    kind.name()
                ));
            }
            Value::String(text.clone())
        }
    })
}

/// Mapping keys as `json.dumps` writes them.
fn json_key(k: &Py, strict: bool) -> Result<String, String> {
    Ok(match k {
        Py::Str(s) => s.clone(),
        Py::Null => "null".into(),
        Py::Bool(true) => "true".into(),
        Py::Bool(false) => "false".into(),
        Py::Int(i) => i.to_string(),
        Py::BigInt(t) => t.clone(),
        Py::Float(f) => py::float_repr(*f),
        Py::Opaque { kind, text, .. } => {
            if strict {
                return Err(format!(
                    "{} {text:?} cannot be a JSON object key",
                    kind.name()
                ));
            }
            text.clone()
        }
        Py::Seq(_) | Py::Map(_) => unreachable!("unhashable keys are refused while loading"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpaqueKind {
    Date,
    DateTime,
    Bytes,
}

impl OpaqueKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            OpaqueKind::Date => "date",
            OpaqueKind::DateTime => "datetime",
            OpaqueKind::Bytes => "binary value",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Py {
    Null,
    Bool(bool),
    Int(i128),
    /// An integer beyond `i128`, kept as written.
    BigInt(String),
    Float(f64),
    Str(String),
    Seq(Vec<Py>),
    Map(Dict),
    /// Values with no JSON form (dates, datetimes, bytes), kept as written.
    Opaque {
        kind: OpaqueKind,
        text: String,
        truthy: bool,
    },
}

impl Py {
    /// Python truthiness (`x or default`).
    pub(super) fn truthy(&self) -> bool {
        match self {
            Py::Null => false,
            Py::Bool(b) => *b,
            Py::Int(i) => *i != 0,
            Py::BigInt(_) => true,
            Py::Float(f) => *f != 0.0,
            Py::Str(s) => !s.is_empty(),
            Py::Seq(v) => !v.is_empty(),
            Py::Map(d) => !d.entries.is_empty(),
            Py::Opaque { truthy, .. } => *truthy,
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Py::Null => "null",
            Py::Bool(_) => "boolean",
            Py::Int(_) | Py::BigInt(_) => "integer",
            Py::Float(_) => "float",
            Py::Str(_) => "string",
            Py::Seq(_) => "list",
            Py::Map(_) => "mapping",
            Py::Opaque { kind, .. } => kind.name(),
        }
    }

    /// How a key is named in messages (Python's `str()` of it).
    pub(super) fn key_display(&self) -> String {
        match self {
            Py::Null => "None".into(),
            Py::Bool(true) => "True".into(),
            Py::Bool(false) => "False".into(),
            Py::Int(i) => i.to_string(),
            Py::BigInt(t) => t.clone(),
            Py::Float(f) => py::float_str(*f),
            Py::Str(s) => s.clone(),
            Py::Seq(_) => "[...]".into(),
            Py::Map(_) => "{...}".into(),
            Py::Opaque { text, .. } => text.clone(),
        }
    }

    /// Python `hash`/`==` class of a hashable value; `None` when unhashable.
    pub(super) fn hash_key(&self) -> Option<HashKey> {
        Some(match self {
            Py::Null => HashKey::Null,
            Py::Bool(b) => HashKey::Int(i128::from(*b)),
            Py::Int(i) => HashKey::Int(*i),
            Py::BigInt(t) => HashKey::Other(format!("int:{t}")),
            Py::Float(f) => {
                if f.is_nan() {
                    // PyYAML returns one shared NaN object, and dicts compare by identity first.
                    HashKey::Nan
                } else if f.fract() == 0.0 && f.abs() < 1.0e38 {
                    HashKey::Int(*f as i128)
                } else {
                    HashKey::Float(f.to_bits())
                }
            }
            Py::Str(s) => HashKey::Str(s.clone()),
            Py::Opaque { kind, text, .. } => HashKey::Other(format!("{}:{text}", kind.name())),
            Py::Seq(_) | Py::Map(_) => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum HashKey {
    Null,
    Int(i128),
    Float(u64),
    Nan,
    Str(String),
    Other(String),
}

/// A Python dict: insertion order, later duplicates replace the value in place.
#[derive(Debug, Clone, Default)]
pub(super) struct Dict {
    pub(super) entries: Vec<(Py, Py)>,
}

impl Dict {
    pub(super) fn get(&self, key: &str) -> Option<&Py> {
        self.entries
            .iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_workflow_yaml;
    use super::super::testutil::defaults;
    use serde_json::json;

    #[test]
    fn flow_yaml_float_keys_and_messages_like_python() {
        // Float keys become JSON keys as json.dumps writes them (repr, Python's exponent form);
        // messages name keys as str() does (`inf`, not json's `Infinity`).
        let d = defaults("flow:\n  graph: a\n  defaults: {1.0e+16: a, 0.00001: b, -0.0: c}\n");
        assert_eq!(d, json!({"1e+16": "a", "1e-05": "b", "-0.0": "c"}));
        let e = parse_workflow_yaml(b"flow: {graph: a}\n.inf: 1\n", true).unwrap_err();
        assert_eq!(e.code, "unknown_top_level_keys");
        assert!(e.detail.contains(": inf (allowed"), "{e}");
    }
}
