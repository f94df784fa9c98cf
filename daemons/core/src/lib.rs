//! Shared library of the pyoco-server daemons (gateway, worker, pyococtl).
//!
//! One module per concern; every binary links this crate so that configuration, resource
//! names and the JSON documents on the wire are defined exactly once.

pub mod apikey;
pub mod callables;
pub mod config;
pub mod dotenv;
pub mod flow_yaml;
pub mod io;
pub mod jsapi;
pub mod json;
pub mod kv;
pub mod logging;
pub mod nats;
pub mod py;
pub mod resources;
pub mod sse;
pub mod systemd;
pub mod time;
pub mod wheel;
pub mod wire;
