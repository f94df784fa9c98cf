//! The gateway's typed view of [`Config`]: seconds become [`Duration`]s once, at start, so no
//! handler clamps or converts again. `pyoco_core::config` has already checked the values are
//! finite numbers; what is left to check here is what a `Duration` can hold.

use std::time::Duration;

use pyoco_core::callables::CallableAllow;
use pyoco_core::config::{env_var_of, Config};

/// A setting the gateway cannot use, named as the user wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("setting `{name}` ({env}) = {value}: {reason}; fix: {fix}")]
pub struct SettingsError {
    pub name: &'static str,
    pub env: &'static str,
    pub value: String,
    pub reason: &'static str,
    pub fix: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    /// How long `/health` and `READY=1` wait at start for NATS and the resources.
    pub ready_timeout: Duration,
    /// How long a verified API key stays cached.
    pub auth_cache_ttl: Duration,
    /// Terminal runs older than this are deleted; `None` keeps them forever (`<= 0`).
    pub run_retention: Option<Duration>,
    /// Passed as seconds to core's worker normalization, which compares it the way the
    /// original does (a plain float comparison, negative values included).
    pub worker_disconnect_timeout_sec: f64,
    /// `PYOCO_CALLABLE_ALLOW`: what a submitted flow.yaml's callables may name.
    pub callable_allow: CallableAllow,
    /// The HTTP connection limits (header-read and idle timeouts, connection cap).
    pub http: crate::conn::Limits,
}

/// Bounds of the HTTP limits: below, the gateway would refuse honest clients on a slow link;
/// above, the limit no longer protects anything.
const HEADER_READ_TIMEOUT_RANGE: (f64, f64) = (0.1, 600.0);
const IDLE_TIMEOUT_RANGE: (f64, f64) = (0.1, 86_400.0);
const MAX_CONNECTIONS_RANGE: (i64, i64) = (1, 1_000_000);

fn bounded_seconds(
    name: &'static str,
    value: f64,
    (lo, hi): (f64, f64),
    fix: &'static str,
) -> Result<Duration, SettingsError> {
    if !(lo..=hi).contains(&value) {
        return Err(SettingsError {
            name,
            env: env_var_of(name).unwrap_or(""),
            value: format!("{value:?}"),
            reason: "out of range",
            fix,
        });
    }
    seconds(name, value)
}

fn http_limits(cfg: &Config) -> Result<crate::conn::Limits, SettingsError> {
    let header_read_timeout = bounded_seconds(
        "http_header_read_timeout_sec",
        cfg.http_header_read_timeout_sec,
        HEADER_READ_TIMEOUT_RANGE,
        "use 0.1 to 600 seconds (default 10)",
    )?;
    let idle_timeout = bounded_seconds(
        "http_idle_timeout_sec",
        cfg.http_idle_timeout_sec,
        IDLE_TIMEOUT_RANGE,
        "use 0.1 to 86400 seconds (default 60)",
    )?;
    let max = cfg.http_max_connections;
    let err = |reason, fix| SettingsError {
        name: "http_max_connections",
        env: env_var_of("http_max_connections").unwrap_or(""),
        value: max.to_string(),
        reason,
        fix,
    };
    if !(MAX_CONNECTIONS_RANGE.0..=MAX_CONNECTIONS_RANGE.1).contains(&max) {
        return Err(err("out of range", "use 1 to 1000000 (default 4096)"));
    }
    // Every open /watch stream holds a connection: with streams allowed up to the connection
    // cap, streams could take every connection, ordinary requests would wait for a slot and
    // the stream limit's clear 429 would never be reached.
    if cfg.sse_max_streams >= max {
        return Err(err(
            "not above PYOCO_SSE_MAX_STREAMS (every watch stream holds a connection, so streams could take them all)",
            "raise PYOCO_HTTP_MAX_CONNECTIONS above PYOCO_SSE_MAX_STREAMS (the difference is what stays for other requests) or lower PYOCO_SSE_MAX_STREAMS",
        ));
    }
    Ok(crate::conn::Limits {
        header_read_timeout,
        idle_timeout,
        max_connections: max as usize,
    })
}

/// Seconds → Duration. Negative values mean "none" (0), as the gateway always treated them;
/// values too large for a Duration are an error instead of a panic at first use.
fn seconds(name: &'static str, value: f64) -> Result<Duration, SettingsError> {
    Duration::try_from_secs_f64(value.max(0.0)).map_err(|_| SettingsError {
        name,
        env: env_var_of(name).unwrap_or(""),
        value: format!("{value:?}"),
        reason: "too large for a duration",
        fix: "use a number of seconds below 1e18",
    })
}

impl GatewaySettings {
    pub fn from_config(cfg: &Config) -> Result<GatewaySettings, SettingsError> {
        let retention = seconds("run_retention_sec", cfg.run_retention_sec)?;
        seconds(
            "worker_disconnect_timeout_sec",
            cfg.worker_disconnect_timeout_sec,
        )?;
        Ok(GatewaySettings {
            ready_timeout: seconds("ready_timeout_sec", cfg.ready_timeout_sec)?,
            auth_cache_ttl: seconds("auth_cache_ttl_sec", cfg.auth_cache_ttl_sec)?,
            run_retention: (!retention.is_zero()).then_some(retention),
            worker_disconnect_timeout_sec: cfg.worker_disconnect_timeout_sec,
            callable_allow: CallableAllow::parse(&cfg.callable_allow).map_err(|_| SettingsError {
                name: "callable_allow",
                env: "PYOCO_CALLABLE_ALLOW",
                value: format!("{:?}", cfg.callable_allow),
                reason: "not a comma-separated list of module prefixes (a.b), callables (a.b:func) or *",
                fix: "PYOCO_CALLABLE_ALLOW=mycorp.tasks,other_mod:func",
            })?,
            http: http_limits(cfg)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_convert() {
        let s = GatewaySettings::from_config(&Config::defaults()).unwrap();
        assert_eq!(s.ready_timeout, Duration::from_secs(5));
        assert_eq!(s.auth_cache_ttl, Duration::from_secs(300));
        assert_eq!(s.run_retention, Some(Duration::from_secs(2_592_000)));
        assert_eq!(s.worker_disconnect_timeout_sec, 20.0);
    }

    #[test]
    fn negative_and_zero_mean_none() {
        let mut c = Config::defaults();
        c.ready_timeout_sec = -1.0;
        c.auth_cache_ttl_sec = 0.0;
        c.run_retention_sec = -5.0;
        let s = GatewaySettings::from_config(&c).unwrap();
        assert_eq!(s.ready_timeout, Duration::ZERO);
        assert_eq!(s.auth_cache_ttl, Duration::ZERO);
        assert_eq!(s.run_retention, None);
        c.run_retention_sec = 0.0;
        assert_eq!(
            GatewaySettings::from_config(&c).unwrap().run_retention,
            None
        );
        c.run_retention_sec = 0.25;
        assert_eq!(
            GatewaySettings::from_config(&c).unwrap().run_retention,
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn http_limits_default_and_bounds() {
        let s = GatewaySettings::from_config(&Config::defaults()).unwrap();
        assert_eq!(
            s.http,
            crate::conn::Limits {
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: 4096,
            }
        );
        let mut c = Config::defaults();
        for bad in [0.0, -1.0, 601.0, f64::NAN] {
            c.http_header_read_timeout_sec = bad;
            let e = GatewaySettings::from_config(&c).unwrap_err();
            assert_eq!(e.env, "PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC", "{bad}");
        }
        c = Config::defaults();
        c.http_idle_timeout_sec = 0.0;
        assert_eq!(
            GatewaySettings::from_config(&c).unwrap_err().env,
            "PYOCO_HTTP_IDLE_TIMEOUT_SEC"
        );
        c = Config::defaults();
        c.http_max_connections = 0;
        assert_eq!(
            GatewaySettings::from_config(&c).unwrap_err().env,
            "PYOCO_HTTP_MAX_CONNECTIONS"
        );
        // The stream cap must stay below the connection cap.
        c.http_max_connections = 2000;
        let msg = GatewaySettings::from_config(&c).unwrap_err().to_string();
        assert!(
            msg.contains("PYOCO_HTTP_MAX_CONNECTIONS") && msg.contains("PYOCO_SSE_MAX_STREAMS"),
            "{msg}"
        );
        c.sse_max_streams = 1999;
        assert_eq!(
            GatewaySettings::from_config(&c)
                .unwrap()
                .http
                .max_connections,
            2000
        );
    }

    #[test]
    fn too_large_names_the_setting() {
        let mut c = Config::defaults();
        c.ready_timeout_sec = 1e30;
        let e = GatewaySettings::from_config(&c).unwrap_err();
        assert_eq!(e.name, "ready_timeout_sec");
        assert_eq!(e.env, "PYOCO_READY_TIMEOUT_SEC");
        let msg = e.to_string();
        assert!(msg.contains("ready_timeout_sec"), "{msg}");
        assert!(msg.contains("PYOCO_READY_TIMEOUT_SEC"), "{msg}");
        assert!(msg.contains("fix:"), "{msg}");
    }
}
