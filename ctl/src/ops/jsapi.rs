//! Raw JetStream API requests: core's [`pyoco_core::jsapi`], plus pyococtl's fail-fast connect.

use std::path::Path;
use std::time::Duration;

pub use pyoco_core::jsapi::*;
use pyoco_core::nats::NatsAuth;

use crate::client::CtlError;
use crate::exit;

/// Connects once (fail fast) with the configuration's credentials, or with `creds` (`--creds`)
/// in their place.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    creds: Option<&Path>,
) -> Result<async_nats::Client, CtlError> {
    let auth = match creds {
        Some(c) => auth
            .with_creds_file(c)
            .await
            .map_err(|e| CtlError::new(exit::USAGE, format!("--creds {}: {e}", c.display())))?,
        None => auth.clone(),
    };
    let opts = auth
        .apply(url, async_nats::ConnectOptions::new())
        .map_err(|e| crate::client::nats_error(url, "cannot use the NATS credentials", &e))?;
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
