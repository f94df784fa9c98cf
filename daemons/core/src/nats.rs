//! The NATS connection every daemon uses: it never fails at start (NATS may come up later),
//! reconnects forever, and lets request handlers fail fast while disconnected.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

/// Connects in the background: returns at once; the client keeps retrying until NATS answers.
pub async fn connect(url: &str, name: &str) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|attempts| {
            // 100 ms growing to 2 s: quick to recover after a NATS restart, quiet while it is down.
            Duration::from_millis((100u64 << attempts.min(5)).min(2000))
        })
        .connect(url)
        .await
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
