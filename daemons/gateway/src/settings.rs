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
