//! Raw JetStream API requests (`$JS.API.…`) as JSON, shared by pyococtl, the daemons and the
//! test harness.
//!
//! They work on every nats-server version, where some async-nats 0.51 helpers do not: its
//! `Context::query_account` (also called by `create_key_value`) cannot parse nats-server 2.9's
//! `$JS.API.INFO` answer (no `reserved_memory`/`reserved_storage`), and 2.9 is what Debian ships.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

/// A JetStream API error (`{"error": {"code", "err_code", "description"}}`) or a transport failure.
#[derive(Debug)]
pub enum ApiError {
    Api {
        code: u64,
        err_code: u64,
        description: String,
    },
    Transport(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Api {
                code,
                err_code,
                description,
            } => write!(f, "{description} (code {code}, err_code {err_code})"),
            ApiError::Transport(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn err_code(&self) -> Option<u64> {
        match self {
            ApiError::Api { err_code, .. } => Some(*err_code),
            ApiError::Transport(_) => None,
        }
    }
}

/// `stream not found`
pub const STREAM_NOT_FOUND: u64 = 10059;
/// `server is not a member of the cluster`
pub const SERVER_NOT_MEMBER: u64 = 10044;

/// Sends `payload` to `subject` and parses the JSON answer; `{"error": …}` becomes `ApiError::Api`.
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    timeout: Duration,
) -> Result<Value, ApiError> {
    let req = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    let msg = client
        .send_request(subject.to_string(), req)
        .await
        .map_err(|e| ApiError::Transport(format!("{subject}: {e}")))?;
    if msg.payload.is_empty() {
        if let Some(st) = msg.status {
            return Err(ApiError::Transport(format!(
                "{subject}: status {st}{}",
                msg.description.map(|d| format!(" {d}")).unwrap_or_default()
            )));
        }
    }
    let v: Value = serde_json::from_slice(&msg.payload).map_err(|e| {
        ApiError::Transport(format!(
            "{subject}: answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&msg.payload)
        ))
    })?;
    if let Some(err) = v.get("error") {
        return Err(ApiError::Api {
            code: err.get("code").and_then(Value::as_u64).unwrap_or(0),
            err_code: err.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: err
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
        });
    }
    Ok(v)
}

pub async fn request_json(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, ApiError> {
    request(
        client,
        subject,
        Bytes::from(serde_json::to_vec(body).expect("JSON")),
        timeout,
    )
    .await
}

/// `$JS.API.STREAM.INFO.<name>`; `Ok(None)` when the stream does not exist.
pub async fn stream_info(
    client: &async_nats::Client,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    match request(
        client,
        &format!("$JS.API.STREAM.INFO.{name}"),
        Bytes::new(),
        Duration::from_secs(10),
    )
    .await
    {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.err_code() == Some(STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `$JS.API.INFO`: the account's JetStream info (an error when JetStream is off).
pub async fn account_info(client: &async_nats::Client) -> Result<Value, ApiError> {
    request(client, "$JS.API.INFO", Bytes::new(), Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_show_both_codes() {
        let e = ApiError::Api {
            code: 404,
            err_code: STREAM_NOT_FOUND,
            description: "stream not found".into(),
        };
        assert_eq!(e.to_string(), "stream not found (code 404, err_code 10059)");
        assert_eq!(e.err_code(), Some(STREAM_NOT_FOUND));
        assert_eq!(ApiError::Transport("x".into()).err_code(), None);
    }
}
