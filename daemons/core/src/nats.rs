//! The NATS connection every daemon uses: it never fails at start (NATS may come up later),
//! reconnects forever, and lets request handlers fail fast while disconnected.
//!
//! Credentials and TLS come from the `nats_*` settings ([`NatsAuth::from_config`]); a user and
//! password embedded in the URL keep working (async-nats reads them). A URL is only ever shown
//! through [`redact_url`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::config::{Config, ConfigError};

/// `url` (one or a comma-separated list) with passwords and tokens replaced by `***`:
/// `nats://alice:s3cret@h:4222` → `nats://alice:***@h:4222`, `nats://tok@h` → `nats://***@h`.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The userinfo ends at the last `@`: a password may itself contain `@`.
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = authority.split_at(at);
    let shown = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // A lone userinfo is a token.
        None => "***".to_string(),
    };
    format!("{scheme}{shown}{host}{tail}")
}

/// The user and password (or token) of the first entry of `url` that carries any,
/// percent-decoded. async-nats 0.51 ignores a URL's userinfo, so [`NatsAuth::apply`] uses this.
fn url_credentials(url: &str) -> Option<Method> {
    url.split(',').find_map(|one| {
        let rest = one.find("://").map_or(one, |i| &one[i + 3..]);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let userinfo = &authority[..authority.rfind('@')?];
        Some(match userinfo.split_once(':') {
            Some((u, p)) => Method::UserPassword(percent_decode(u), percent_decode(p)),
            None => Method::Token(percent_decode(userinfo)),
        })
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to authenticate (at most one method) and the TLS files, checked and read from a
/// [`Config`]. `Debug` never shows a secret.
#[derive(Clone, Default)]
pub struct NatsAuth {
    method: Method,
    tls_ca_file: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    tls_required: bool,
}

#[derive(Clone, Default)]
enum Method {
    /// None configured (a URL may still carry `user:password@`).
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    /// The seed read from `nats_nkey_seed_file`.
    NKey(String),
    /// The contents of `nats_creds_file` (parsed once at load to fail early).
    Creds(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("method", &self.method_name())
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

fn auth_error(reason: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::NatsAuth {
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// `Some(path)` when set; an error naming the setting when the file is not there.
fn existing_file(name: &str, env: &str, raw: &str) -> Result<Option<PathBuf>, ConfigError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(raw.trim());
    if !path.is_file() {
        return Err(auth_error(
            format!(
                "`{name}` ({env}) is {}, which is not a file",
                path.display()
            ),
            format!("point {env} at an existing file, or unset it"),
        ));
    }
    Ok(Some(path))
}

fn read_file(name: &str, env: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        auth_error(
            format!("cannot read `{name}` ({env}) {}: {e}", path.display()),
            "make the file readable by the daemon's user",
        )
    })
}

impl NatsAuth {
    /// No credentials, no TLS files (what the defaults give).
    pub fn none() -> NatsAuth {
        NatsAuth::default()
    }

    /// Checks the `nats_*` settings: a user needs a password (and the reverse), at most one
    /// method, a client certificate needs its key, and every file must exist.
    pub fn from_config(cfg: &Config) -> Result<NatsAuth, ConfigError> {
        Self::build(cfg, true)
    }

    /// [`NatsAuth::from_config`] without reading the seed or creds file: what loading the
    /// configuration checks, so that a pyococtl user who may not read the daemons' creds file
    /// can still use the HTTP commands.
    pub fn check_config(cfg: &Config) -> Result<(), ConfigError> {
        Self::build(cfg, false).map(|_| ())
    }

    fn build(cfg: &Config, read: bool) -> Result<NatsAuth, ConfigError> {
        let user = cfg.nats_user.trim();
        let nkey = existing_file(
            "nats_nkey_seed_file",
            "PYOCO_NATS_NKEY_SEED_FILE",
            &cfg.nats_nkey_seed_file,
        )?;
        let creds = existing_file(
            "nats_creds_file",
            "PYOCO_NATS_CREDS_FILE",
            &cfg.nats_creds_file,
        )?;
        let mut given = Vec::new();
        if !user.is_empty() || cfg.nats_password.is_some() {
            given.push("nats_user/nats_password");
        }
        if cfg.nats_token.is_some() {
            given.push("nats_token");
        }
        if nkey.is_some() {
            given.push("nats_nkey_seed_file");
        }
        if creds.is_some() {
            given.push("nats_creds_file");
        }
        if url_credentials(&cfg.nats_url).is_some() {
            given.push("credentials in nats_url");
        }
        if given.len() > 1 {
            return Err(auth_error(
                format!("more than one authentication method is set: {}", given.join(", ")),
                "keep exactly one of them (PYOCO_NATS_USER+PYOCO_NATS_PASSWORD, PYOCO_NATS_TOKEN, PYOCO_NATS_NKEY_SEED_FILE, PYOCO_NATS_CREDS_FILE, or user:password@ in PYOCO_NATS_URL)",
            ));
        }
        let method = match (user, &cfg.nats_password) {
            ("", Some(_)) => {
                return Err(auth_error(
                    "`nats_password` (PYOCO_NATS_PASSWORD) is set without `nats_user`",
                    "set PYOCO_NATS_USER too, or use PYOCO_NATS_TOKEN for a token",
                ))
            }
            ("", None) => None,
            (_, None) => {
                return Err(auth_error(
                    format!("`nats_user` (PYOCO_NATS_USER) is {user:?} but no password is set"),
                    "set PYOCO_NATS_PASSWORD_FILE (or PYOCO_NATS_PASSWORD, or nats_password_file in the TOML file), or unset PYOCO_NATS_USER",
                ))
            }
            (u, Some(p)) => Some(Method::UserPassword(u.to_string(), p.clone())),
        };
        let method = if let Some(m) = method {
            m
        } else if let Some(t) = &cfg.nats_token {
            Method::Token(t.clone())
        } else if !read && (nkey.is_some() || creds.is_some()) {
            // Only checked: the files exist; their contents are read when connecting.
            Method::None
        } else if let Some(path) = nkey {
            let seed = read_file("nats_nkey_seed_file", "PYOCO_NATS_NKEY_SEED_FILE", &path)?;
            let seed = seed.trim().to_string();
            if !seed.starts_with('S') {
                return Err(auth_error(
                    format!(
                        "`nats_nkey_seed_file` (PYOCO_NATS_NKEY_SEED_FILE) {} does not hold an NKey seed (one line starting with `S`, e.g. `SUA…`)",
                        path.display()
                    ),
                    "write the user's seed (`nk -gen user`) into the file; a public key (`U…`) is not enough",
                ));
            }
            Method::NKey(seed)
        } else if let Some(path) = creds {
            let text = read_file("nats_creds_file", "PYOCO_NATS_CREDS_FILE", &path)?;
            ConnectOptions::new().credentials(&text).map_err(|e| {
                auth_error(
                    format!(
                        "`nats_creds_file` (PYOCO_NATS_CREDS_FILE) {} is not a NATS credentials file: {e}",
                        path.display()
                    ),
                    "use the .creds file made by `nsc generate creds` (a user JWT and its seed)",
                )
            })?;
            Method::Creds(text)
        } else {
            Method::None
        };

        let tls_ca_file = existing_file(
            "nats_tls_ca_file",
            "PYOCO_NATS_TLS_CA_FILE",
            &cfg.nats_tls_ca_file,
        )?;
        let cert = existing_file(
            "nats_tls_cert_file",
            "PYOCO_NATS_TLS_CERT_FILE",
            &cfg.nats_tls_cert_file,
        )?;
        let key = existing_file(
            "nats_tls_key_file",
            "PYOCO_NATS_TLS_KEY_FILE",
            &cfg.nats_tls_key_file,
        )?;
        let tls_client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(auth_error(
                    "`nats_tls_cert_file` (PYOCO_NATS_TLS_CERT_FILE) is set without `nats_tls_key_file`",
                    "set PYOCO_NATS_TLS_KEY_FILE to the certificate's private key",
                ))
            }
            (None, Some(_)) => {
                return Err(auth_error(
                    "`nats_tls_key_file` (PYOCO_NATS_TLS_KEY_FILE) is set without `nats_tls_cert_file`",
                    "set PYOCO_NATS_TLS_CERT_FILE to the client certificate",
                ))
            }
        };
        Ok(NatsAuth {
            method,
            tls_ca_file,
            tls_client,
            tls_required: cfg.nats_tls_required,
        })
    }

    /// The method, for logs: `none`, `user/password`, `token`, `nkey`, `creds`.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::None => "none",
            Method::UserPassword(..) => "user/password",
            Method::Token(_) => "token",
            Method::NKey(_) => "nkey",
            Method::Creds(_) => "creds",
        }
    }

    /// Whether an authentication method is configured (TLS aside).
    pub fn has_method(&self) -> bool {
        !matches!(self.method, Method::None)
    }

    /// This with its method replaced by a credentials file (pyococtl's `--creds`); TLS kept.
    pub async fn with_creds_file(&self, path: &Path) -> std::io::Result<NatsAuth> {
        let text = tokio::fs::read_to_string(path).await?;
        ConnectOptions::new().credentials(&text)?;
        Ok(NatsAuth {
            method: Method::Creds(text),
            ..self.clone()
        })
    }

    /// `opts` with the credentials and TLS applied for connecting to `url`; without a configured
    /// method, the user and password (or token) in `url` are used.
    pub fn apply(&self, url: &str, opts: ConnectOptions) -> std::io::Result<ConnectOptions> {
        let from_url = match self.method {
            Method::None => url_credentials(url),
            _ => None,
        };
        let opts = match from_url.as_ref().unwrap_or(&self.method) {
            Method::None => opts,
            Method::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
            Method::Token(t) => opts.token(t.clone()),
            Method::NKey(seed) => opts.nkey(seed.clone()),
            Method::Creds(text) => opts.credentials(text)?,
        };
        Ok(self.apply_tls(opts))
    }

    /// `opts` with only the TLS settings applied (for callers with their own credentials, e.g.
    /// pyococtl's controller with `--sys-creds`).
    pub fn apply_tls(&self, mut opts: ConnectOptions) -> ConnectOptions {
        if let Some(ca) = &self.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        // A CA or client certificate only makes sense over TLS: ask for it.
        if self.tls_required || self.tls_ca_file.is_some() || self.tls_client.is_some() {
            opts = opts.require_tls(true);
        }
        opts
    }
}

/// Why [`connect`] gave up at once (it never does for an unreachable server).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("NATS credentials: {0}")]
    Credentials(std::io::Error),
    #[error(transparent)]
    Nats(#[from] async_nats::ConnectError),
}

/// Connects in the background: returns at once; the client keeps retrying until NATS answers.
/// A refused login is logged once per distinct reason (never with the secret) and retried,
/// since the credentials may be fixed on the server side.
pub async fn connect(url: &str, auth: &NatsAuth, name: &str) -> Result<Client, ConnectError> {
    let last_problem: Arc<Mutex<Option<String>>> = Arc::default();
    let method = auth.method_name();
    let shown_url = redact_url(url);
    let opts = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|attempts| {
            // 100 ms growing to 2 s: quick to recover after a NATS restart, quiet while it is down.
            Duration::from_millis((100u64 << attempts.min(5)).min(2000))
        })
        .event_callback(move |event| {
            let (last_problem, shown_url) = (last_problem.clone(), shown_url.clone());
            async move { log_event(&event, &last_problem, &shown_url, method) }
        });
    let opts = auth.apply(url, opts).map_err(ConnectError::Credentials)?;
    // async-nats parses a `&str` as ONE address: a `nats_url` listing a cluster's nodes must be
    // handed over as a list, or it fails with "invalid port number".
    Ok(opts.connect(server_list(url)).await?)
}

/// `a, b,c` → `["a", "b", "c"]` (empty entries dropped).
fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

static CONNECTION_LOSSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times a NATS connection of this process (made by [`connect`]) was lost so far.
/// A pull request pending on a lost connection is gone with it (the server, or the node that
/// died, forgot it): whoever waits for its answer compares this counter to stop waiting.
pub fn connection_losses() -> u64 {
    CONNECTION_LOSSES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Logs authentication and TLS failures; connection-refused noise is left to the daemons'
/// own "NATS unreachable" messages.
fn log_event(event: &Event, last: &Mutex<Option<String>>, url: &str, method: &str) {
    let problem = match event {
        Event::Connected => {
            *last.lock().unwrap() = None;
            return;
        }
        Event::Disconnected => {
            CONNECTION_LOSSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
            "authorization violation".to_string()
        }
        Event::ClientError(async_nats::ClientError::Other(text)) => text.clone(),
        _ => return,
    };
    let auth = problem.contains("authorization violation") || problem.contains("signing nonce");
    let tls = problem.contains("TLS");
    if !auth && !tls {
        return;
    }
    let mut last = last.lock().unwrap();
    if last.as_deref() == Some(problem.as_str()) {
        return;
    }
    *last = Some(problem.clone());
    if auth {
        tracing::error!(err_id = "ERR-PYOCO-0003", nats_url = %url, auth_method = method, "NATS authorization failed ({problem}); retrying. Check the credentials: nats_user/nats_password, nats_token, nats_nkey_seed_file or nats_creds_file (PYOCO_NATS_*), or the user:password in PYOCO_NATS_URL");
    } else {
        tracing::error!(err_id = "ERR-PYOCO-0003", nats_url = %url, "NATS TLS handshake failed ({problem}); retrying. Check nats_tls_ca_file / nats_tls_cert_file / nats_tls_key_file (PYOCO_NATS_TLS_*) and that the server has TLS on");
    }
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_is_a_server_list() {
        use async_nats::ToServerAddrs;
        let list = server_list("nats://a:4222, nats://b:4223,,nats://u:p@c:4224");
        assert_eq!(
            list,
            ["nats://a:4222", "nats://b:4223", "nats://u:p@c:4224"]
        );
        assert_eq!(list.to_server_addrs().unwrap().count(), 3);
        assert!("nats://a:4222,nats://b:4223".to_server_addrs().is_err());
    }

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(
            redact_url("nats://alice:s3cret@h:4222,nats://h2:4222"),
            "nats://alice:***@h:4222,nats://h2:4222"
        );
        assert_eq!(redact_url("nats://tok@h"), "nats://***@h");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("tls://a:p@w@h:4222/x"), "tls://a:***@h:4222/x");
        assert_eq!(redact_url("a:b@host:4222"), "a:***@host:4222");
        assert_eq!(
            redact_url("nats://u:p@h1,nats://v:q@h2"),
            "nats://u:***@h1,nats://v:***@h2"
        );
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn url_credentials_are_read_and_decoded() {
        let Some(Method::UserPassword(u, p)) =
            url_credentials("nats://h0:4222,nats://al%40ice:p%3Aw@h:4222")
        else {
            panic!("user/password expected")
        };
        assert_eq!((u.as_str(), p.as_str()), ("al@ice", "p:w"));
        assert!(matches!(url_credentials("nats://tok@h"), Some(Method::Token(t)) if t == "tok"));
        assert!(url_credentials("nats://h:4222").is_none());
        let mut c = Config::defaults();
        c.nats_url = "nats://a:b@h:4222".into();
        assert_eq!(NatsAuth::from_config(&c).unwrap().method_name(), "none");
        c.nats_token = Some("t".into());
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(msg.contains("credentials in nats_url"), "{msg}");
    }

    fn cfg() -> Config {
        Config::defaults()
    }

    #[test]
    fn auth_settings_are_checked() {
        assert_eq!(NatsAuth::from_config(&cfg()).unwrap().method_name(), "none");

        let mut c = cfg();
        c.nats_user = "a".into();
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(
            msg.contains("nats_user") && msg.contains("PYOCO_NATS_PASSWORD_FILE"),
            "{msg}"
        );
        c.nats_password = Some("pw-secret".into());
        let auth = NatsAuth::from_config(&c).unwrap();
        assert_eq!(auth.method_name(), "user/password");
        assert!(!format!("{auth:?}").contains("pw-secret"));

        c.nats_token = Some("t".into());
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(
            msg.contains("more than one") && msg.contains("nats_token"),
            "{msg}"
        );

        let mut c = cfg();
        c.nats_password = Some("p".into());
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(msg.contains("without `nats_user`"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").unwrap();
        let mut c = cfg();
        c.nats_tls_cert_file = cert.display().to_string();
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(msg.contains("PYOCO_NATS_TLS_KEY_FILE"), "{msg}");

        let mut c = cfg();
        c.nats_creds_file = dir.path().join("missing.creds").display().to_string();
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(
            msg.contains("PYOCO_NATS_CREDS_FILE") && msg.contains("missing.creds"),
            "{msg}"
        );
        std::fs::write(dir.path().join("bad.creds"), "nothing here").unwrap();
        c.nats_creds_file = dir.path().join("bad.creds").display().to_string();
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(msg.contains("not a NATS credentials file"), "{msg}");
        // Loading the configuration only checks that it is there (pyococtl may not read it).
        NatsAuth::check_config(&c).unwrap();

        let mut c = cfg();
        let seed = dir.path().join("seed");
        std::fs::write(&seed, "UABCDEF\n").unwrap();
        c.nats_nkey_seed_file = seed.display().to_string();
        let msg = NatsAuth::from_config(&c).unwrap_err().to_string();
        assert!(msg.contains("NKey seed"), "{msg}");
    }
}
