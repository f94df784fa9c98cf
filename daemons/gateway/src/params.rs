//! Query-string and JSON-body parsing with FastAPI's validation semantics: the same 422 items
//! for the same bad input, so clients written against the original see the same errors.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

use crate::error::{item, ApiError, ApiResult};

/// Raw query pairs; repeated keys keep every value (`include` is repeatable).
#[derive(Debug, Default)]
pub struct Query(pub HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded_pairs(raw.unwrap_or("")) {
            map.entry(k).or_default().push(v);
        }
        Query(map)
    }

    /// The last value, as Starlette's `QueryParams.get` would pick for a scalar parameter.
    pub fn last(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.last()).map(String::as_str)
    }

    pub fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

fn form_urlencoded_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Collects 422 items across all parameters so one response lists every problem, as FastAPI does.
#[derive(Default)]
pub struct Errors(pub Vec<Value>);

impl Errors {
    pub fn finish(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.0))
        }
    }
}

/// An optional integer query parameter within `[min, max]`.
pub fn query_int(q: &Query, key: &str, default: i64, min: i64, max: i64, errs: &mut Errors) -> i64 {
    let Some(raw) = q.last(key) else {
        return default;
    };
    let loc = json!(["query", key]);
    match raw.trim().parse::<i64>() {
        Err(_) => {
            errs.0.push(item::int_parsing(loc, raw));
            default
        }
        Ok(v) if v < min => {
            errs.0.push(item::ge(loc, raw, min));
            default
        }
        Ok(v) if v > max => {
            errs.0.push(item::le(loc, raw, max));
            default
        }
        Ok(v) => v,
    }
}

pub fn query_float(q: &Query, key: &str, errs: &mut Errors) -> Option<f64> {
    let raw = q.last(key)?;
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() || v.is_nan() => Some(v),
        Ok(v) => Some(v),
        Err(_) => {
            errs.0.push(item::float_parsing(json!(["query", key]), raw));
            None
        }
    }
}

/// pydantic's lax boolean strings.
pub fn parse_lax_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

pub fn query_bool(q: &Query, key: &str, default: bool, errs: &mut Errors) -> bool {
    let Some(raw) = q.last(key) else {
        return default;
    };
    match parse_lax_bool(raw) {
        Some(b) => b,
        None => {
            errs.0
                .push(item::bool_parsing(json!(["query", key]), json!(raw)));
            default
        }
    }
}

/// A JSON object body the way FastAPI reads a pydantic model body.
/// The JSON bodies' size limit (axum's default body limit, which the handlers keep).
pub const MAX_JSON_BODY: usize = 2 * 1024 * 1024;

/// A buffered request body, or a JSON error: 413 naming the limit for an oversized one
/// (instead of axum's plain-text rejection), 400 for a body that could not be read.
pub fn body_bytes(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                e.status(),
                format!("request body too large: at most {MAX_JSON_BODY} bytes"),
            )
        } else {
            ApiError::new(
                e.status(),
                format!("invalid request body: {}", e.body_text()),
            )
        }
    })
}

pub fn json_object_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<serde_json::Map<String, Value>> {
    if body.is_empty() {
        return Err(ApiError::validation(vec![item::missing(
            json!(["body"]),
            Value::Null,
        )]));
    }
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        let text = String::from_utf8_lossy(body).into_owned();
        return Err(ApiError::validation(vec![item::model_type(json!(text))]));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::validation(vec![item::model_type(other)])),
        Err(e) => {
            let text = String::from_utf8_lossy(body);
            let offset = byte_offset(&text, e.line(), e.column());
            Err(ApiError::validation(vec![json!({
                "type": "json_invalid", "loc": ["body", offset], "msg": "JSON decode error",
                "input": {}, "ctx": {"error": e.to_string()}
            })]))
        }
    }
}

fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let before: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.chars().count())
        .sum();
    before + column.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "include=full&include=records&flow=a%20b&x=1+2&bad=%zz",
        ));
        assert_eq!(
            q.all("include"),
            &["full".to_string(), "records".to_string()]
        );
        assert_eq!(q.last("flow"), Some("a b"));
        assert_eq!(q.last("x"), Some("1 2"));
        assert_eq!(q.last("bad"), Some("%zz"));
    }

    #[test]
    fn int_bounds() {
        let mut e = Errors::default();
        let q = Query::parse(Some("limit=0"));
        query_int(&q, "limit", 50, 1, 200, &mut e);
        assert_eq!(e.0[0]["type"], "greater_than_equal");
    }
}
