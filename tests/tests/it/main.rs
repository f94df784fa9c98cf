//! The one integration-test binary (one link instead of one per file): each module is a former
//! test file. Run one group with a path filter, e.g. `cargo test -p pyoco-tests --test it gateway_api::`.

mod attacks;
mod callable_policy;
mod ctl_admin;
mod ctl_ops;
mod ctl_run;
mod dev_stack;
mod faults;
mod gateway_api;
mod gateway_auth;
mod gateway_config;
mod gateway_systemd;
mod harness_smoke;
mod interop_original;
mod nats_auth;
mod nats_secure;
mod reliability;
mod runner_bounds;
mod wheel_sync;
mod wheels_api;
mod worker;
