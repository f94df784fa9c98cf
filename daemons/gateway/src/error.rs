//! HTTP errors in the original's shapes: `{"detail": "<string>"}` for handler errors and
//! FastAPI/pydantic-v2's list form for request validation errors (contract §1.1).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: Value::String(detail.into()),
        }
    }
    pub fn not_found(detail: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
    /// 503 `nats unavailable: <reason>`, the original's answer to any NATS failure.
    pub fn nats(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("nats unavailable: {reason}"),
        )
    }
    /// 422 in pydantic's list form.
    pub fn validation(items: Vec<Value>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: Value::Array(items),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "detail": self.detail }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Builders for single pydantic-v2 validation error items.
pub mod item {
    use serde_json::{json, Value};

    pub fn missing(loc: Value, input: Value) -> Value {
        json!({"type": "missing", "loc": loc, "msg": "Field required", "input": input})
    }
    pub fn int_parsing(loc: Value, input: &str) -> Value {
        json!({"type": "int_parsing", "loc": loc,
               "msg": "Input should be a valid integer, unable to parse string as an integer", "input": input})
    }
    pub fn float_parsing(loc: Value, input: &str) -> Value {
        json!({"type": "float_parsing", "loc": loc,
               "msg": "Input should be a valid number, unable to parse string as a number", "input": input})
    }
    pub fn bool_parsing(loc: Value, input: Value) -> Value {
        json!({"type": "bool_parsing", "loc": loc,
               "msg": "Input should be a valid boolean, unable to interpret input", "input": input})
    }
    pub fn ge(loc: Value, input: &str, bound: i64) -> Value {
        json!({"type": "greater_than_equal", "loc": loc,
               "msg": format!("Input should be greater than or equal to {bound}"), "input": input, "ctx": {"ge": bound}})
    }
    pub fn le(loc: Value, input: &str, bound: i64) -> Value {
        json!({"type": "less_than_equal", "loc": loc,
               "msg": format!("Input should be less than or equal to {bound}"), "input": input, "ctx": {"le": bound}})
    }
    pub fn gt_float(loc: Value, input: Value, bound: f64) -> Value {
        json!({"type": "greater_than", "loc": loc,
               "msg": format!("Input should be greater than {bound}"), "input": input, "ctx": {"gt": bound}})
    }
    pub fn string_type(loc: Value, input: Value) -> Value {
        json!({"type": "string_type", "loc": loc, "msg": "Input should be a valid string", "input": input})
    }
    pub fn float_type(loc: Value, input: Value) -> Value {
        json!({"type": "float_type", "loc": loc, "msg": "Input should be a valid number", "input": input})
    }
    pub fn too_short(loc: Value, input: Value) -> Value {
        json!({"type": "string_too_short", "loc": loc, "msg": "String should have at least 1 character",
               "input": input, "ctx": {"min_length": 1}})
    }
    pub fn too_long(loc: Value, input: Value, max: usize) -> Value {
        json!({"type": "string_too_long", "loc": loc,
               "msg": format!("String should have at most {max} characters"), "input": input, "ctx": {"max_length": max}})
    }
    pub fn list_too_long(loc: Value, input: Value, max: usize, actual: usize) -> Value {
        json!({"type": "too_long", "loc": loc,
               "msg": format!("List should have at most {max} items after validation, not {actual}"),
               "input": input, "ctx": {"field_type": "List", "max_length": max, "actual_length": actual}})
    }
    pub fn pattern(loc: Value, input: Value, pattern: &str) -> Value {
        json!({"type": "string_pattern_mismatch", "loc": loc,
               "msg": format!("String should match pattern '{pattern}'"), "input": input, "ctx": {"pattern": pattern}})
    }
    pub fn dict_type(loc: Value, input: Value) -> Value {
        json!({"type": "dict_type", "loc": loc, "msg": "Input should be a valid dictionary", "input": input})
    }
    pub fn list_type(loc: Value, input: Value) -> Value {
        json!({"type": "list_type", "loc": loc, "msg": "Input should be a valid list", "input": input})
    }
    pub fn model_type(input: Value) -> Value {
        json!({"type": "model_attributes_type", "loc": ["body"],
               "msg": "Input should be a valid dictionary or object to extract fields from", "input": input})
    }
}
