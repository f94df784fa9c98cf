//! The gateway's HTTP API as pyococtl uses it, and the errors people can act on.

use std::time::Duration;

use pyoco_core::nats::{redact_url, NatsAuth};
use serde_json::Value;

use crate::exit;

/// A failure with the message to print and the exit code.
#[derive(Debug)]
pub struct CtlError {
    pub code: u8,
    pub message: String,
}

impl CtlError {
    pub fn new(code: u8, message: impl Into<String>) -> CtlError {
        CtlError {
            code,
            message: message.into(),
        }
    }
    /// The original's usage-error form: `ERR-PYOCO-0018` with the reason and a corrected example.
    pub fn usage(reason: impl std::fmt::Display, example: &str) -> CtlError {
        CtlError::new(
            exit::USAGE,
            format!("ERR-PYOCO-0018: invalid command-line input\n- reason: {reason}\n- example: {example}\n- hint: add --help to the command for all options"),
        )
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type CtlResult<T> = Result<T, CtlError>;

/// A failed request from [`Client::try_send`].
#[derive(Debug)]
pub struct SendError {
    /// The HTTP status when the gateway answered; `None` for transport errors.
    pub status: Option<u16>,
    pub error: CtlError,
}

/// HTTP client bound to one gateway and credentials.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    api_key: Option<(String, String)>,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>, header: &str) -> CtlResult<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| {
                CtlError::new(exit::ERROR, format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            api_key: api_key
                .filter(|k| !k.is_empty())
                .map(|k| (header.to_string(), k)),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the API key header set.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, self.url(path));
        if let Some((h, k)) = &self.api_key {
            req = req.header(h.as_str(), k.as_str());
        }
        req
    }

    /// Sends and turns transport errors and non-2xx answers into `CtlError`s that name the URL,
    /// the status and the gateway's `detail`.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> CtlResult<reqwest::Response> {
        self.try_send(req).await.map_err(|e| e.error)
    }

    /// As [`Client::send`], keeping the HTTP status of a failed answer (`None`: no answer, a
    /// transport error) so that callers can decide whether retrying may help.
    pub async fn try_send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let built = req.build().map_err(|e| SendError {
            status: None,
            error: CtlError::new(exit::ERROR, format!("ERR-PYOCO-HTTP: bad request: {e}")),
        })?;
        let (method, path) = (built.method().clone(), built.url().path().to_string());
        let resp = self.http.execute(built).await.map_err(|e| SendError {
            status: None,
            error: self.transport_error(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").cloned())
            .map(|d| match d {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or(body);
        Err(SendError {
            status: Some(status.as_u16()),
            error: CtlError::new(
                exit::ERROR,
                format!(
                    "ERR-PYOCO-HTTP: request failed\n- reason: HTTP {} {method} {path}: {detail}",
                    status.as_u16()
                ),
            ),
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> CtlError {
        if e.is_connect() {
            CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-HTTP: connection error\n- reason: cannot connect to the gateway at {}\n- hint: is pyoco-server running there? check --server / PYOCO_SERVER (systemctl status pyoco-server; for a local stack: pyoco-server up --with-nats --with-worker)", self.base),
            )
        } else if e.is_timeout() {
            CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-HTTP: timeout talking to {}", self.base),
            )
        } else {
            CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-HTTP: connection error\n- reason: {e}"),
            )
        }
    }

    pub async fn json(&self, req: reqwest::RequestBuilder) -> CtlResult<Value> {
        let resp = self.send(req).await?;
        resp.json::<Value>().await.map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-HTTP: the gateway answered with invalid JSON: {e}"),
            )
        })
    }

    pub async fn get_json(&self, path: &str, query: &[(&str, String)]) -> CtlResult<Value> {
        self.json(self.request(reqwest::Method::GET, path).query(query))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// NATS, for the commands that talk to it directly (`key`, `dlq`).

/// `auth` when it has a method (or `url` carries credentials); otherwise, when the packaged
/// admin password (`$PYOCO_CREDENTIALS_DIR/admin.password`, default
/// `/etc/pyoco/credentials/admin.password`) is readable, user `pyoco-admin` with it — so that
/// `pyococtl backup` as root on a packaged host needs no flags.
pub fn admin_default(cfg: &pyoco_core::config::Config, url: &str, auth: NatsAuth) -> NatsAuth {
    if auth.has_method() || redact_url(url) != url {
        return auth;
    }
    let file = crate::ops::secure::packaged_credentials_dir().join(crate::ops::secure::ADMIN.file);
    let Ok(password) = crate::ops::secure::read_password(&file) else {
        return auth;
    };
    let mut c = cfg.clone();
    c.nats_user = crate::ops::secure::ADMIN.user.to_string();
    c.nats_password = Some(password);
    NatsAuth::from_config(&c).unwrap_or(auth)
}

/// Connects to NATS once (no background retry: a CLI should fail fast), naming the URL and the
/// flags to check when it cannot.
pub async fn connect_nats(url: &str, auth: &NatsAuth) -> CtlResult<async_nats::Client> {
    let opts = auth
        .apply(url, async_nats::ConnectOptions::new())
        .map_err(|e| nats_error(url, "cannot use the NATS credentials", &e))?;
    let attempt = opts
        .name("pyococtl")
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(nats_error(url, "cannot connect to NATS", &e)),
        Err(_) => Err(nats_error(
            url,
            "cannot connect to NATS",
            &"timed out after 10 s",
        )),
    }
}

/// A NATS failure: what failed, the URL, and what to check.
pub fn nats_error(url: &str, what: &str, e: &dyn std::fmt::Display) -> CtlError {
    let url = redact_url(url);
    CtlError::new(
        exit::ERROR,
        format!(
            "ERR-PYOCO-NATS: {what}\n- reason: {e} (NATS at {url})\n- hint: is nats-server running there with JetStream (-js)? check --nats-url / PYOCO_NATS_URL (or nats_url in the config file) and the credentials (PYOCO_NATS_USER/PYOCO_NATS_PASSWORD, PYOCO_NATS_TOKEN, PYOCO_NATS_NKEY_SEED_FILE, PYOCO_NATS_CREDS_FILE)"
        ),
    )
}
