//! `pyoco-server`: the HTTP gateway of pyoco-server, in Rust, as a library.
//!
//! A drop-in replacement for pyoco-server 0.5's gateway (same HTTP API, JetStream resources and
//! documents), built as a systemd-native daemon: socket activation, `Type=notify` readiness and
//! status, watchdog, journald logging, graceful shutdown on SIGTERM. The `pyoco-server` binary
//! (`main.rs`) only parses the command line and calls [`server::run`]; tests build an
//! [`AppState`] and drive [`router`] in-process.
//!
//! - [`app`]: the shared state and the router; [`runs`], [`workers`], [`sse`],
//!   [`metrics_route`]: the handlers.
//! - [`index`]: the in-memory run and worker indexes fed by KV watches.
//! - [`metrics`]: the Prometheus text.
//! - [`server`]: bind, serve, background tasks, shutdown; [`conn`]: the accept loop with the
//!   connection cap and the header-read and idle timeouts; [`tasks`]: the shutdown token, task
//!   tracker and registry of named supervised tasks; [`settings`]: typed settings.
//! - [`devstack`]: `pyoco-server up --with-nats --with-worker`.

pub mod app;
pub mod auth;
pub mod conn;
pub mod devstack;
pub mod error;
pub mod index;
pub mod metrics;
pub mod metrics_route;
pub mod params;
pub mod retention;
pub mod runs;
pub mod server;
pub mod settings;
pub mod sse;
pub mod streams;
pub mod tasks;
pub mod wheels;
pub mod workers;

pub use app::{router, AppState, SharedState};
pub use index::{RunFilter, RunIndex, SortKey, WorkerIndex};
pub use metrics::{Gauges, Metrics};
pub use server::{bind_listener, run, serve, start_background};
pub use settings::{GatewaySettings, SettingsError};
pub use tasks::Runtime;
