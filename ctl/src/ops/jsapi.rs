//! Raw JetStream API requests: core's [`pyoco_core::jsapi`], plus pyococtl's fail-fast connect.

use std::path::Path;
use std::time::Duration;

pub use pyoco_core::jsapi::*;

use crate::client::CtlError;
use crate::exit;

/// Connects once (fail fast), optionally with a credentials file.
pub async fn connect(url: &str, creds: Option<&Path>) -> Result<async_nats::Client, CtlError> {
    let opts = match creds {
        Some(c) => async_nats::ConnectOptions::with_credentials_file(c.to_path_buf())
            .await
            .map_err(|e| CtlError::new(exit::USAGE, format!("--creds {}: {e}", c.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    let attempt = opts
        .name("pyococtl")
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(crate::client::nats_error(url, "cannot connect to NATS", &e)),
        Err(_) => Err(crate::client::nats_error(
            url,
            "cannot connect to NATS",
            &"timed out after 10 s",
        )),
    }
}
