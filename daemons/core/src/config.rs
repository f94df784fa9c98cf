//! Configuration shared by all daemons (reference §9, `NatsBackendConfig.from_env()`).
//!
//! Every setting is one line of the [`config_fields!`] table below: field name, type, default,
//! environment variable and options. Everything else (the [`Config`] struct, defaults, parsing
//! from env / `.env` / TOML / flags, [`field_names`], [`Loaded::describe`]) is derived from it.
//!
//! Sources, highest precedence first:
//! 1. command-line flags ([`LoadOptions::flags`], `(field name, raw value)`); a bad value is an
//!    error;
//! 2. the process environment (`PYOCO_*`), used only when non-empty;
//! 3. the `.env` file (see [`crate::dotenv`]), used only when non-empty;
//! 4. the TOML file: `--config PATH` (must exist), else `$PYOCO_CONFIG` (must exist), else
//!    `/etc/pyoco/pyoco.toml` when it exists. A flat table keyed by field name
//!    (`consumer_ack_wait_sec = 30`); unknown keys and wrong types are errors;
//! 5. the defaults of the table.
//!
//! As in the original, an env / `.env` value that does not parse is ignored (the next source
//! applies), but here a warning is recorded in [`Loaded::warnings`].
//!
//! Logging variables (`PYOCO_LOG_*`) are read from the process environment only, never from
//! `.env`, exactly as the original's `logging_config.py` does (they may still be set in the TOML
//! file or by flags).
//!
//! Secrets (`Option<String>` fields: `auth_pepper`, `nats_password`, `nats_token`) may also be
//! given as a file:
//! `PYOCO_AUTH_PEPPER_FILE` (env / `.env`, same precedence level as `PYOCO_AUTH_PEPPER`),
//! `auth_pepper_file` (TOML key / flag name). The trailing newline of the file is trimmed.
//!
//! Deliberate difference from the original: `workers_kv_ttl_sec` defaults to 86400 instead of 15
//! (a 15 s TTL makes crashed workers vanish before they can be shown DISCONNECTED).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::dotenv;
use crate::py;

/// The TOML file read when neither `--config` nor `PYOCO_CONFIG` is given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pyoco/pyoco.toml";
/// Environment variable naming the TOML file.
pub const CONFIG_FILE_ENV: &str = "PYOCO_CONFIG";
/// Suffix of the env var / key that gives a secret as a file path.
const FILE_SUFFIX_ENV: &str = "_FILE";
const FILE_SUFFIX_KEY: &str = "_file";

/// Value kind of a configuration field (derived from its Rust type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `String`
    Str,
    /// `Option<String>`: a secret, never displayed, also accepted from a `_FILE`.
    Secret,
    /// `f64`
    Float,
    /// `i64`
    Int,
    /// `bool`
    Bool,
    /// `u16`
    Port,
}

impl Kind {
    /// Human description of the accepted text form (env, `.env`, flags).
    pub fn expected_text(self) -> &'static str {
        match self {
            Kind::Str | Kind::Secret => "a non-empty string",
            Kind::Float => "a number (e.g. 30 or 2.5)",
            Kind::Int => "an integer (e.g. 200)",
            Kind::Bool => "a boolean (1/true/yes/on or 0/false/no/off)",
            Kind::Port => "a port number (0-65535)",
        }
    }

    /// Human description of the accepted TOML form.
    pub fn expected_toml(self) -> &'static str {
        match self {
            Kind::Str | Kind::Secret => "a string",
            Kind::Float => "a number (e.g. 30 or 2.5)",
            Kind::Int => "an integer (e.g. 200)",
            Kind::Bool => "a boolean (true or false)",
            Kind::Port => "an integer port number (0-65535)",
        }
    }
}

/// A field value, independent of the field.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Secret(Option<String>),
    Float(f64),
    Int(i64),
    Bool(bool),
    Port(u16),
}

trait FieldType: Sized {
    const KIND: Kind;
    fn to_value(&self) -> Value;
    fn from_value(v: Value) -> Self;
}

macro_rules! field_type {
    ($ty:ty, $kind:ident) => {
        impl FieldType for $ty {
            const KIND: Kind = Kind::$kind;
            fn to_value(&self) -> Value {
                Value::$kind(Clone::clone(self))
            }
            fn from_value(v: Value) -> Self {
                match v {
                    Value::$kind(x) => x,
                    other => unreachable!(
                        "config value {other:?} assigned to a {:?} field",
                        Kind::$kind
                    ),
                }
            }
        }
    };
}
field_type!(String, Str);
field_type!(Option<String>, Secret);
field_type!(f64, Float);
field_type!(i64, Int);
field_type!(bool, Bool);
field_type!(u16, Port);

/// Per-field options of the table.
#[derive(Clone, Copy, Debug)]
struct Opts {
    /// Values below are raised to this (with a warning), as the original's workers do.
    min: Option<f64>,
    /// Read from the process environment only, never from `.env`.
    process_env_only: bool,
    /// The value names a path: made absolute once at load time (see [`PathRule`]).
    path: PathRule,
    /// The value is a URL that may carry a password: displayed through
    /// [`crate::nats::redact_url`].
    url: bool,
}

/// How a path-valued setting is made absolute by [`load`]: against the directory the command
/// was started in, or, for a value from the TOML file, against that file's directory. Daemons
/// change directory (every runner runs in its own slot directory), so a relative path kept as
/// given would silently mean something else later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRule {
    /// Not a path.
    None,
    /// One path.
    Path,
    /// `:`-separated paths (like `PYTHONPATH`).
    List,
    /// A program: resolved only when it contains a `/` (a bare `python3` is looked up in `PATH`).
    Program,
    /// `module:function` (left as is) or `path/file.py:function` (the path part resolved); the
    /// file form is recognised as the original's worker does: it ends with `.py` or contains `/`.
    Resolver,
}

impl Opts {
    const NEW: Opts = Opts {
        min: None,
        process_env_only: false,
        path: PathRule::None,
        url: false,
    };

    const fn url(mut self) -> Self {
        self.url = true;
        self
    }

    const fn path(mut self) -> Self {
        self.path = PathRule::Path;
        self
    }

    const fn path_list(mut self) -> Self {
        self.path = PathRule::List;
        self
    }

    const fn program(mut self) -> Self {
        self.path = PathRule::Program;
        self
    }

    const fn resolver(mut self) -> Self {
        self.path = PathRule::Resolver;
        self
    }

    const fn min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    const fn process_env_only(mut self) -> Self {
        self.process_env_only = true;
        self
    }
}

/// One row of the static field table.
struct Field {
    name: &'static str,
    env: &'static str,
    kind: Kind,
    opts: Opts,
    get: fn(&Config) -> Value,
    set: fn(&mut Config, Value),
}

macro_rules! config_fields {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr , $env:literal $(, $opt:ident ( $($arg:expr)? ))* ;
    )*) => {
        /// The configuration shared by all daemons. Build it with [`load`] (or
        /// [`Config::defaults`]); see the module documentation for the sources.
        #[derive(Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])* #[doc = concat!("\n\nEnvironment: `", $env, "`.")] pub $name: $ty, )*
        }

        impl Config {
            /// All defaults (what [`load`] returns with no file, env or flags).
            pub fn defaults() -> Config {
                Config { $( $name: $default, )* }
            }
        }

        static FIELDS: &[Field] = &[ $(
            Field {
                name: stringify!($name),
                env: $env,
                kind: <$ty as FieldType>::KIND,
                opts: Opts::NEW $( .$opt($($arg)?) )*,
                get: |c| FieldType::to_value(&c.$name),
                set: |c, v| c.$name = <$ty as FieldType>::from_value(v),
            },
        )* ];

        static FIELD_NAMES: &[&str] = &[ $( stringify!($name), )* ];
    };
}

config_fields! {
    /// NATS server URL.
    nats_url: String = "nats://127.0.0.1:4222".into(), "PYOCO_NATS_URL", url();
    /// NATS user name (with `nats_password`).
    nats_user: String = "".into(), "PYOCO_NATS_USER";
    /// NATS password (secret; also `PYOCO_NATS_PASSWORD_FILE`).
    nats_password: Option<String> = None, "PYOCO_NATS_PASSWORD";
    /// NATS token (secret; also `PYOCO_NATS_TOKEN_FILE`).
    nats_token: Option<String> = None, "PYOCO_NATS_TOKEN";
    /// File holding an NKey seed (`SU…`) to authenticate with.
    nats_nkey_seed_file: String = "".into(), "PYOCO_NATS_NKEY_SEED_FILE", path();
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    nats_creds_file: String = "".into(), "PYOCO_NATS_CREDS_FILE", path();
    /// PEM file of CA certificates trusted for the NATS server's TLS certificate.
    nats_tls_ca_file: String = "".into(), "PYOCO_NATS_TLS_CA_FILE", path();
    /// PEM client certificate for NATS TLS (with `nats_tls_key_file`).
    nats_tls_cert_file: String = "".into(), "PYOCO_NATS_TLS_CERT_FILE", path();
    /// PEM private key of `nats_tls_cert_file`.
    nats_tls_key_file: String = "".into(), "PYOCO_NATS_TLS_KEY_FILE", path();
    /// Refuse to talk to NATS without TLS.
    nats_tls_required: bool = false, "PYOCO_NATS_TLS_REQUIRED";
    /// Work subjects are `<prefix>.<tag>`.
    work_subject_prefix: String = "pyoco.work".into(), "PYOCO_WORK_SUBJECT_PREFIX";
    /// Tag used when a submission names none.
    default_tag: String = "default".into(), "PYOCO_DEFAULT_TAG";
    /// KV bucket of run snapshots.
    runs_kv_bucket: String = "pyoco_runs".into(), "PYOCO_RUNS_KV_BUCKET";
    /// KV bucket of the worker registry.
    workers_kv_bucket: String = "pyoco_workers".into(), "PYOCO_WORKERS_KV_BUCKET";
    /// TTL of the workers bucket (bucket creation only). Default 86400 (original: 15).
    workers_kv_ttl_sec: f64 = 86400.0, "PYOCO_WORKERS_KV_TTL_SEC";
    /// Address the HTTP gateway binds.
    http_host: String = "127.0.0.1".into(), "PYOCO_HTTP_HOST";
    /// Port the HTTP gateway binds.
    http_port: u16 = 8000, "PYOCO_HTTP_PORT";
    /// `none` (no auth) or `api_key`; see [`Config::api_key_auth`].
    http_auth_mode: String = "none".into(), "PYOCO_HTTP_AUTH_MODE";
    /// Header carrying the API key.
    http_api_key_header: String = "X-API-Key".into(), "PYOCO_HTTP_API_KEY_HEADER";
    /// KV bucket of API key records.
    auth_kv_bucket: String = "pyoco_auth".into(), "PYOCO_AUTH_KV_BUCKET";
    /// Pepper mixed into API key hashes (secret; also `PYOCO_AUTH_PEPPER_FILE`).
    auth_pepper: Option<String> = None, "PYOCO_AUTH_PEPPER";
    /// How long verified API key records are cached by the gateway.
    auth_cache_ttl_sec: f64 = 300.0, "PYOCO_AUTH_CACHE_TTL_SEC";
    /// Run snapshot heartbeat interval of workers (min 0.1).
    run_heartbeat_interval_sec: f64 = 1.0, "PYOCO_RUN_HEARTBEAT_INTERVAL_SEC", min(0.1);
    /// Worker registry heartbeat interval (min 0.1).
    worker_heartbeat_interval_sec: f64 = 5.0, "PYOCO_WORKER_HEARTBEAT_INTERVAL_SEC", min(0.1);
    /// A worker without heartbeat for this long is shown DISCONNECTED.
    worker_disconnect_timeout_sec: f64 = 20.0, "PYOCO_WORKER_DISCONNECT_TIMEOUT_SEC";
    /// Grace period after a cancel request (worker logs only).
    cancel_grace_period_sec: f64 = 30.0, "PYOCO_CANCEL_GRACE_PERIOD_SEC";
    /// Interval of JetStream in-progress acks for running jobs.
    ack_progress_interval_sec: f64 = 10.0, "PYOCO_ACK_PROGRESS_INTERVAL_SEC";
    /// Consumer `ack_wait` (consumer creation).
    consumer_ack_wait_sec: f64 = 30.0, "PYOCO_CONSUMER_ACK_WAIT_SEC";
    /// Consumer `max_deliver`.
    consumer_max_deliver: i64 = 20, "PYOCO_CONSUMER_MAX_DELIVER";
    /// Consumer `max_ack_pending`.
    consumer_max_ack_pending: i64 = 200, "PYOCO_CONSUMER_MAX_ACK_PENDING";
    /// Dead-letter stream name.
    dlq_stream: String = "PYOCO_DLQ".into(), "PYOCO_DLQ_STREAM";
    /// DLQ subjects are `<prefix>.<tag>`.
    dlq_subject_prefix: String = "pyoco.dlq".into(), "PYOCO_DLQ_SUBJECT_PREFIX";
    /// Also dead-letter runs that failed while executing.
    dlq_publish_execution_error: bool = true, "PYOCO_DLQ_PUBLISH_EXECUTION_ERROR";
    /// DLQ stream `max_age` (stream creation).
    dlq_max_age_sec: f64 = 604800.0, "PYOCO_DLQ_MAX_AGE_SEC";
    /// DLQ stream `max_msgs` (stream creation).
    dlq_max_msgs: i64 = 100_000, "PYOCO_DLQ_MAX_MSGS";
    /// DLQ stream `max_bytes` (stream creation).
    dlq_max_bytes: i64 = 536_870_912, "PYOCO_DLQ_MAX_BYTES";
    /// Replicas of the streams, buckets and object store this process creates (existing ones
    /// are kept): 0 = 3 when the server is in a cluster of 3 or more servers, else 1; at most 5.
    nats_replicas: i64 = 0, "PYOCO_NATS_REPLICAS", min(0.0);
    /// Size guard of run snapshots written by workers.
    max_run_snapshot_bytes: i64 = 262_144, "PYOCO_MAX_RUN_SNAPSHOT_BYTES";
    /// Size limit of submitted `flow.yaml` documents.
    workflow_yaml_max_bytes: i64 = 262_144, "PYOCO_WORKFLOW_YAML_MAX_BYTES";
    /// Object store bucket of wheels.
    wheel_object_store_bucket: String = "pyoco_wheels".into(), "PYOCO_WHEEL_OBJECT_STORE_BUCKET";
    /// Size limit of uploaded wheels (and bucket `max_bytes`).
    wheel_max_bytes: i64 = 536_870_912, "PYOCO_WHEEL_MAX_BYTES";
    /// Size limit of one uploaded wheel (0 = only `PYOCO_WHEEL_MAX_BYTES`); the smaller of the two applies.
    wheel_max_file_bytes: i64 = 268_435_456, "PYOCO_WHEEL_MAX_FILE_BYTES";
    /// The gateway refuses uploads that are not zip archives with safe member names and a
    /// `*.dist-info/` (METADATA, WHEEL). Off = 0.5's behaviour (any bytes named `*.whl`).
    wheel_check_archive: bool = true, "PYOCO_WHEEL_CHECK_ARCHIVE";
    /// Workers sync and install wheels from the object store.
    wheel_sync_enabled: bool = false, "PYOCO_WHEEL_SYNC_ENABLED";
    /// Local directory of synced wheels.
    wheel_sync_dir: String = ".pyoco/wheels".into(), "PYOCO_WHEEL_SYNC_DIR", path();
    /// Wheel sync interval (min 0.1).
    wheel_sync_interval_sec: f64 = 10.0, "PYOCO_WHEEL_SYNC_INTERVAL_SEC", min(0.1);
    /// Timeout of one wheel install (min 1).
    wheel_install_timeout_sec: f64 = 180.0, "PYOCO_WHEEL_INSTALL_TIMEOUT_SEC", min(1.0);
    /// KV bucket of the wheel upload/delete history.
    wheel_history_kv_bucket: String = "pyoco_wheel_history".into(), "PYOCO_WHEEL_HISTORY_KV_BUCKET";
    /// TTL of the wheel history bucket (bucket creation).
    wheel_history_ttl_sec: f64 = 7_776_000.0, "PYOCO_WHEEL_HISTORY_TTL_SEC";
    /// Dashboard language: `auto`, `ja` or `en`.
    dashboard_lang: String = "auto".into(), "PYOCO_DASHBOARD_LANG";
    /// Gateway: how long `/health` and systemd's `READY=1` wait at start for the first NATS
    /// connection and the resources before the gateway reports itself up without them.
    ready_timeout_sec: f64 = 5.0, "PYOCO_READY_TIMEOUT_SEC";
    /// Gateway: open `/watch` streams at once, in all (more answer 429).
    sse_max_streams: i64 = 2000, "PYOCO_SSE_MAX_STREAMS";
    /// Gateway: open `/watch` streams at once per tenant (`api_key` mode; one pool without auth).
    sse_max_streams_per_tenant: i64 = 200, "PYOCO_SSE_MAX_STREAMS_PER_TENANT";
    /// Gateway: a request head (request line and headers) must arrive within this many seconds
    /// (slowloris); counted from the accept, then from a request's first byte.
    http_header_read_timeout_sec: f64 = 10.0, "PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC";
    /// Gateway: a keep-alive connection without a request, or whose request body stalls, is
    /// closed after this many seconds (a response in progress, e.g. `/watch`, never is).
    http_idle_timeout_sec: f64 = 60.0, "PYOCO_HTTP_IDLE_TIMEOUT_SEC";
    /// Gateway: HTTP connections served at once; more wait up to 1 s, then get 503. Must be
    /// above `sse_max_streams` (every stream holds a connection).
    http_max_connections: i64 = 4096, "PYOCO_HTTP_MAX_CONNECTIONS";
    /// Finished runs older than this are removed (0 = keep forever).
    run_retention_sec: f64 = 2_592_000.0, "PYOCO_RUN_RETENTION_SEC";
    /// KV bucket of idempotency keys.
    idempotency_kv_bucket: String = "pyoco_idempotency".into(), "PYOCO_IDEMPOTENCY_KV_BUCKET";
    /// TTL of idempotency keys.
    idempotency_ttl_sec: f64 = 86400.0, "PYOCO_IDEMPOTENCY_TTL_SEC";
    /// Gateway and worker: module prefixes (`a.b`), callables (`a.b:f`) or `*` a flow.yaml task may
    /// name besides the default rule (see `docs/security.md`); comma-separated.
    callable_allow: String = "".into(), "PYOCO_CALLABLE_ALLOW";
    /// Worker: routing tags served, comma-separated (the original's `--tags`).
    worker_tags: String = "".into(), "PYOCO_WORKER_TAGS";
    /// Worker: its id; empty = `<hostname>-<tags>` (unique per host and tag set).
    worker_id: String = "".into(), "PYOCO_WORKER_ID";
    /// Worker: `module:function` or `file.py:function` resolving flow names (the original's `--flow-resolver`).
    worker_flow_resolver: String = "".into(), "PYOCO_WORKER_FLOW_RESOLVER", resolver();
    /// Worker: runner processes, i.e. runs at once.
    worker_concurrency: i64 = 1, "PYOCO_WORKER_CONCURRENCY";
    /// Worker: the runners' Python; empty = `$VIRTUAL_ENV/bin/python`, else `python3`.
    python: String = "".into(), "PYOCO_PYTHON", program();
    /// Worker: directories prepended to the runners' `PYTHONPATH`, `:`-separated.
    worker_pythonpath: String = "".into(), "PYOCO_WORKER_PYTHONPATH", path_list();
    /// Worker: where runner working directories live; empty = `./.pyoco-worker` (or `$STATE_DIRECTORY`).
    worker_work_dir: String = "".into(), "PYOCO_WORKER_WORK_DIR", path();
    /// Worker: on SIGTERM, how long running runs may finish before they are put back.
    worker_drain_timeout_sec: f64 = 60.0, "PYOCO_WORKER_DRAIN_TIMEOUT_SEC";
    /// Worker: a run still running after this long is killed and FAILED with `timeout` (0 = none).
    worker_run_timeout_sec: f64 = 0.0, "PYOCO_WORKER_RUN_TIMEOUT_SEC";
    /// Worker: address-space limit (RLIMIT_AS) of each Python runner, bytes (0 = none); a run over it ends FAILED `resource_limit`.
    worker_runner_memory_max_bytes: i64 = 4_294_967_296, "PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES";
    /// Worker: a cancelled run still running after this long is killed; negative = the cancel grace period.
    cancel_kill_after_sec: f64 = -1.0, "PYOCO_CANCEL_KILL_AFTER_SEC";
    /// Worker: long-poll length of a fetch, seconds (the original's `--poll-timeout`).
    worker_poll_timeout_sec: f64 = 5.0, "PYOCO_WORKER_POLL_TIMEOUT_SEC", min(0.05);
    /// Log level (process env only, never `.env`).
    log_level: String = "INFO".into(), "PYOCO_LOG_LEVEL", process_env_only();
    /// Log format `json` or `text` (process env only).
    log_format: String = "json".into(), "PYOCO_LOG_FORMAT", process_env_only();
    /// Timestamps in UTC (process env only).
    log_utc: bool = true, "PYOCO_LOG_UTC", process_env_only();
    /// Include tracebacks / error chains in logs (process env only).
    log_include_traceback: bool = true, "PYOCO_LOG_INCLUDE_TRACEBACK", process_env_only();
}

/// Names of all fields, in table order (also the TOML keys and flag names).
pub fn field_names() -> &'static [&'static str] {
    FIELD_NAMES
}

fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The environment variable of a field (`None` for an unknown name).
pub fn env_var_of(name: &str) -> Option<&'static str> {
    field(name).map(|f| f.env)
}

impl Config {
    /// Whether API key auth is on (`http_auth_mode` is `api_key` after trim + lowercase).
    pub fn api_key_auth(&self) -> bool {
        py::strip(&self.http_auth_mode).to_lowercase() == "api_key"
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::defaults()
    }
}

impl fmt::Debug for Config {
    /// Like a derived `Debug`, but secrets are shown as `<set>` / `<unset>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        for field in FIELDS {
            d.field(field.name, &format_args!("{}", render_field(field, self)));
        }
        d.finish()
    }
}

/// Display form of a field's value: secrets and URL passwords redacted.
fn render_field(f: &Field, cfg: &Config) -> String {
    match (f.get)(cfg) {
        Value::Str(s) if f.opts.url => crate::nats::redact_url(&s),
        v => render(v),
    }
}

/// Display form of a value (secrets redacted).
fn render(v: Value) -> String {
    match v {
        Value::Str(s) => s,
        Value::Secret(Some(_)) => "<set>".to_string(),
        Value::Secret(None) => "<unset>".to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Port(p) => p.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Text parsing (env, .env, flags), Python-compatible.

/// Python `int(str)` restricted to base 10 and the `i64` range.
fn parse_int(raw: &str) -> Option<i64> {
    py::int_from_str(raw)
}

/// Python `float(str)`, but only finite values are accepted: no setting can use an infinity or
/// NaN, which Python would accept.
fn parse_float(raw: &str) -> Option<f64> {
    py::float_from_str(raw).filter(|x| x.is_finite())
}

fn parse_bool(raw: &str) -> Option<bool> {
    match py::strip(raw).to_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parse a raw text value for a field kind; `None` when invalid.
fn parse_text(kind: Kind, raw: &str) -> Option<Value> {
    Some(match kind {
        Kind::Str => Value::Str(raw.to_string()),
        Kind::Secret => Value::Secret(Some(raw.to_string())),
        Kind::Float => Value::Float(parse_float(raw)?),
        Kind::Int => Value::Int(parse_int(raw)?),
        Kind::Bool => Value::Bool(parse_bool(raw)?),
        Kind::Port => Value::Port(u16::try_from(parse_int(raw)?).ok()?),
    })
}

/// Convert a TOML value; `Err((found type, reason))`.
fn parse_toml(kind: Kind, v: &toml::Value) -> Result<Value, (String, Option<String>)> {
    let wrong = || (v.type_str().to_string(), None);
    match (kind, v) {
        (Kind::Str | Kind::Secret, toml::Value::String(s)) => {
            if py::strip(s).is_empty() {
                Err((
                    "an empty string".into(),
                    Some("it must not be empty (remove the key to use the default)".into()),
                ))
            } else if kind == Kind::Str {
                Ok(Value::Str(s.clone()))
            } else {
                Ok(Value::Secret(Some(s.clone())))
            }
        }
        (Kind::Float, toml::Value::Float(x)) if x.is_finite() => Ok(Value::Float(*x)),
        (Kind::Float, toml::Value::Float(_)) => Err((
            "a non-finite float".into(),
            Some("it must be a finite number".into()),
        )),
        (Kind::Float, toml::Value::Integer(i)) => Ok(Value::Float(*i as f64)),
        (Kind::Int, toml::Value::Integer(i)) => Ok(Value::Int(*i)),
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::Port, toml::Value::Integer(i)) => u16::try_from(*i).map(Value::Port).map_err(|_| {
            (
                format!("{i}"),
                Some("it is out of the port range 0-65535".into()),
            )
        }),
        _ => Err(wrong()),
    }
}

// ---------------------------------------------------------------------------------------------
// Sources, options, result.

/// Where a field's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    DotEnv(PathBuf),
    Env,
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::DotEnv(p) => write!(f, ".env {}", p.display()),
            Source::Env => f.write_str("env"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

/// Inputs of [`load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `--config PATH`: must exist. Otherwise `PYOCO_CONFIG`, then `/etc/pyoco/pyoco.toml`.
    pub config_file: Option<PathBuf>,
    /// Command-line overrides, `(field name, raw value)`, applied in order (last wins). The
    /// name may also be `<secret>_file` (e.g. `auth_pepper_file`).
    pub flags: Vec<(String, String)>,
    /// Read the process environment (and thus the `.env` file and the implicit
    /// `/etc/pyoco/pyoco.toml`). `true` in [`LoadOptions::default`].
    pub use_process_env: bool,
    /// Tests: when `Some`, replaces the process environment (including `PYOCO_CONFIG`,
    /// `PYOCO_LOAD_DOTENV`, `PYOCO_ENV_FILE`, `HOME`); `/etc/pyoco/pyoco.toml` is then never
    /// read implicitly.
    pub env_overrides: Option<HashMap<String, String>>,
    /// The directory relative paths of flags, the environment and `.env` are resolved against
    /// (and where `.env` is looked for); `None` = the current directory.
    pub base_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            config_file: None,
            flags: Vec::new(),
            use_process_env: true,
            env_overrides: None,
            base_dir: None,
        }
    }
}

impl LoadOptions {
    /// Hermetic options for tests: `env` replaces the process environment.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        LoadOptions {
            env_overrides: Some(env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
            ..LoadOptions::default()
        }
    }
}

/// Result of [`load`].
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// Source of every field (all fields present).
    pub sources: BTreeMap<&'static str, Source>,
    /// Ignored values and adjustments, one human-readable line each (log them at startup).
    pub warnings: Vec<String>,
    /// The TOML file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// The `.env` file that was read, if any.
    pub dotenv_file: Option<PathBuf>,
}

/// One line of [`Loaded::describe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRow {
    /// Field name (TOML key / flag name).
    pub key: &'static str,
    /// Environment variable.
    pub env: String,
    /// Current value as text; secrets are `<set>` / `<unset>`.
    pub value: String,
    /// `default`, `file PATH`, `.env PATH`, `env` or `flag`.
    pub source: String,
}

impl Loaded {
    /// Every field with its value and source, in table order (for `config show` style output).
    pub fn describe(&self) -> Vec<ConfigRow> {
        FIELDS
            .iter()
            .map(|f| ConfigRow {
                key: f.name,
                env: f.env.to_string(),
                value: render_field(f, &self.config),
                source: self
                    .sources
                    .get(f.name)
                    .unwrap_or(&Source::Default)
                    .to_string(),
            })
            .collect()
    }
}

/// A configuration error: which input, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} (from {origin}) does not exist; fix: create it or point {origin} at an existing TOML file", path.display())]
    ConfigFileMissing { path: PathBuf, origin: String },
    #[error("cannot read config file {}: {source}; fix: check the path and its permissions", path.display())]
    ConfigFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}; fix: use flat `key = value` lines, e.g. nats_url = \"nats://127.0.0.1:4222\"", path.display())]
    TomlSyntax { path: PathBuf, message: String },
    #[error("config file {}: unknown key `{key}`{}; fix: remove or rename it (valid keys are the field names, e.g. nats_url, consumer_ack_wait_sec)", path.display(), suggest(.suggestions))]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestions: Vec<String>,
    },
    #[error("config file {}: key `{key}` must be {expected}, found {found}; fix: change the value in the file", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
    #[error("{origin}: invalid value {value:?} for `{key}`: {reason}; fix: {fix}")]
    InvalidValue {
        origin: String,
        key: String,
        value: String,
        reason: String,
        fix: String,
    },
    #[error("unknown configuration flag `{name}`{}; fix: use one of the field names", suggest(.suggestions))]
    UnknownFlag {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("cannot read secret file {} given by {origin}: {source}; fix: make the file readable or unset {origin}", path.display())]
    SecretFile {
        origin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS credentials: {reason}; fix: {fix}")]
    NatsAuth { reason: String, fix: String },
    #[error("{origin}: both {first} and {second} are set; fix: set only one of them")]
    Conflict {
        origin: String,
        first: String,
        second: String,
    },
}

fn suggest(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(
            " (did you mean {}?)",
            suggestions
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// All accepted keys: field names plus `<secret>_file`.
fn accepted_keys() -> Vec<String> {
    let mut keys: Vec<String> = FIELDS.iter().map(|f| f.name.to_string()).collect();
    keys.extend(
        FIELDS
            .iter()
            .filter(|f| f.kind == Kind::Secret)
            .map(|f| format!("{}{FILE_SUFFIX_KEY}", f.name)),
    );
    keys
}

/// Close matches of an unknown key (also recognises env-var spellings like `PYOCO_NATS_URL`).
fn close_matches(key: &str) -> Vec<String> {
    let lower = key.trim().to_lowercase().replace('-', "_");
    let norm = lower.strip_prefix("pyoco_").unwrap_or(&lower).to_string();
    let keys = accepted_keys();
    if let Some(exact) = keys.iter().find(|k| **k == norm) {
        return vec![exact.clone()];
    }
    let mut scored: Vec<(usize, String)> = keys
        .into_iter()
        .filter_map(|k| {
            let d = levenshtein(&norm, &k);
            let limit = (k.len() / 4).max(2);
            let related = norm.len() >= 4 && (k.contains(&norm) || norm.contains(k.as_str()));
            (d <= limit || related).then_some((d, k))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, k)| k).collect()
}

/// Which secret field a `<name>_file` key refers to.
fn secret_file_field(key: &str) -> Option<&'static Field> {
    let base = key.strip_suffix(FILE_SUFFIX_KEY)?;
    field(base).filter(|f| f.kind == Kind::Secret)
}

/// Read a secret file: trailing newlines trimmed; `None` when blank.
fn read_secret_file(path: &Path, origin: &str) -> Result<Option<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        origin: origin.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    Ok((!py::strip(text).is_empty()).then(|| text.to_string()))
}

/// Mutable state of one [`load`] run.
struct Builder {
    /// Base of relative paths given outside the TOML file.
    cwd: PathBuf,
    config: Config,
    sources: BTreeMap<&'static str, Source>,
    warnings: Vec<String>,
}

impl Builder {
    fn set(&mut self, f: &Field, v: Value, source: Source) {
        (f.set)(&mut self.config, v);
        self.sources.insert(f.name, source);
    }

    fn current(&self, f: &Field) -> String {
        format!(
            "{} ({})",
            render_field(f, &self.config),
            self.sources[f.name]
        )
    }

    /// Apply the TOML file.
    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ConfigFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::TomlSyntax {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " | "),
        })?;
        let source = Source::File(path.to_path_buf());
        for (key, value) in &table {
            if let Some(f) = field(key) {
                match parse_toml(f.kind, value) {
                    Ok(v) => {
                        if f.kind == Kind::Secret
                            && table.contains_key(&format!("{key}{FILE_SUFFIX_KEY}"))
                        {
                            return Err(ConfigError::Conflict {
                                origin: format!("config file {}", path.display()),
                                first: key.clone(),
                                second: format!("{key}{FILE_SUFFIX_KEY}"),
                            });
                        }
                        self.set(f, v, source.clone());
                    }
                    Err((found, None)) => {
                        return Err(ConfigError::WrongType {
                            path: path.to_path_buf(),
                            key: key.clone(),
                            expected: f.kind.expected_toml().to_string(),
                            found,
                        })
                    }
                    Err((_, Some(reason))) => {
                        return Err(ConfigError::InvalidValue {
                            origin: format!("config file {}", path.display()),
                            key: key.clone(),
                            value: value.to_string(),
                            reason,
                            fix: format!(
                                "change the value in the file ({})",
                                f.kind.expected_toml()
                            ),
                        })
                    }
                }
            } else if let Some(f) = secret_file_field(key) {
                let Some(file) = value.as_str() else {
                    return Err(ConfigError::WrongType {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        expected: "a string (path of the secret file)".to_string(),
                        found: value.type_str().to_string(),
                    });
                };
                let origin = format!("`{key}` in {}", path.display());
                let file = absolutize(path.parent().unwrap_or(Path::new("/")), file);
                let file = file.as_str();
                match read_secret_file(Path::new(file), &origin)? {
                    Some(secret) => self.set(f, Value::Secret(Some(secret)), source.clone()),
                    None => self
                        .warnings
                        .push(format!("{origin}: secret file {file} is empty; ignored")),
                }
            } else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    suggestions: close_matches(key),
                });
            }
        }
        Ok(())
    }

    /// Apply one environment-like layer (`.env` values or the process environment).
    fn apply_env(
        &mut self,
        values: &HashMap<String, String>,
        source: Source,
    ) -> Result<(), ConfigError> {
        let is_dotenv = matches!(source, Source::DotEnv(_));
        let label = match &source {
            Source::DotEnv(p) => format!(".env file {}", p.display()),
            _ => "the environment".to_string(),
        };
        for f in FIELDS {
            let raw = values.get(f.env).filter(|v| !v.is_empty());
            if is_dotenv && f.opts.process_env_only {
                if raw.is_some() {
                    self.warnings.push(format!(
                        "{} in {label} is ignored: logging variables are read from the process environment only",
                        f.env
                    ));
                }
                continue;
            }
            if f.kind == Kind::Secret {
                self.apply_env_secret(f, values, &source, &label)?;
                continue;
            }
            let Some(raw) = raw else { continue };
            match parse_text(f.kind, raw) {
                Some(v) => self.set(f, v, source.clone()),
                None => self.warnings.push(format!(
                    "ignoring {}={raw:?} from {label}: expected {}; keeping {}",
                    f.env,
                    f.kind.expected_text(),
                    self.current(f)
                )),
            }
        }
        Ok(())
    }

    fn apply_env_secret(
        &mut self,
        f: &Field,
        values: &HashMap<String, String>,
        source: &Source,
        label: &str,
    ) -> Result<(), ConfigError> {
        let file_var = format!("{}{FILE_SUFFIX_ENV}", f.env);
        // As in the original, a blank (whitespace-only) secret counts as unset.
        let direct = values.get(f.env).filter(|v| !py::strip(v).is_empty());
        let file = values.get(&file_var).filter(|v| !py::strip(v).is_empty());
        match (direct, file) {
            (Some(_), Some(_)) => Err(ConfigError::Conflict {
                origin: label.to_string(),
                first: f.env.to_string(),
                second: file_var,
            }),
            (Some(v), None) => {
                self.set(f, Value::Secret(Some(v.clone())), source.clone());
                Ok(())
            }
            (None, Some(path)) => {
                let origin = format!("{file_var} in {label}");
                let path = &absolutize(&self.cwd, py::strip(path));
                match read_secret_file(Path::new(path), &origin)? {
                    Some(secret) => self.set(f, Value::Secret(Some(secret)), source.clone()),
                    None => self
                        .warnings
                        .push(format!("{origin}: secret file {path} is empty; ignored")),
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Apply command-line overrides (errors, never silent).
    fn apply_flags(&mut self, flags: &[(String, String)]) -> Result<(), ConfigError> {
        for (name, raw) in flags {
            if let Some(f) = field(name) {
                let v = if raw.is_empty() {
                    None
                } else {
                    parse_text(f.kind, raw)
                };
                let Some(v) = v else {
                    return Err(ConfigError::InvalidValue {
                        origin: "command line".to_string(),
                        key: name.clone(),
                        value: raw.clone(),
                        reason: format!("expected {}", f.kind.expected_text()),
                        fix: format!("pass {} or omit the flag", f.kind.expected_text()),
                    });
                };
                self.set(f, v, Source::Flag);
            } else if let Some(f) = secret_file_field(name) {
                let origin = format!("command-line flag `{name}`");
                let raw = &absolutize(&self.cwd, raw);
                match read_secret_file(Path::new(raw), &origin)? {
                    Some(secret) => self.set(f, Value::Secret(Some(secret)), Source::Flag),
                    None => self
                        .warnings
                        .push(format!("{origin}: secret file {raw} is empty; ignored")),
                }
            } else {
                return Err(ConfigError::UnknownFlag {
                    name: name.clone(),
                    suggestions: close_matches(name),
                });
            }
        }
        Ok(())
    }

    /// Make every path-valued setting absolute (see [`PathRule`]): TOML values against the
    /// file's directory, flags, environment and `.env` against `cwd`.
    fn apply_paths(&mut self, cwd: &Path) {
        for f in FIELDS {
            if f.opts.path == PathRule::None {
                continue;
            }
            let Value::Str(raw) = (f.get)(&self.config) else {
                continue;
            };
            let base = match &self.sources[f.name] {
                Source::File(file) => file.parent().unwrap_or(Path::new("/")).to_path_buf(),
                // Defaults are the daemons' own (made absolute where they are used).
                Source::Default => continue,
                _ => cwd.to_path_buf(),
            };
            let resolved = resolve_path_value(f.opts.path, &base, &raw);
            if resolved != raw {
                (f.set)(&mut self.config, Value::Str(resolved));
            }
        }
    }

    /// Raise values below their minimum (the original's workers do `max(min, value)`).
    fn apply_minimums(&mut self) {
        for f in FIELDS {
            let (Some(min), Value::Float(x)) = (f.opts.min, (f.get)(&self.config)) else {
                continue;
            };
            if x < min {
                self.warnings.push(format!(
                    "{} = {x:?} ({}) is below the minimum {min:?}; using {min:?}",
                    f.name, self.sources[f.name]
                ));
                (f.set)(&mut self.config, Value::Float(min));
            }
        }
    }
}

/// `raw` joined to `base` when relative; `.` components dropped (`..` kept: only the file
/// system knows what it means under symlinks). Empty stays empty.
pub fn absolutize(base: &Path, raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    let p = Path::new(raw);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        if c != std::path::Component::CurDir {
            out.push(c);
        }
    }
    out.display().to_string()
}

/// The absolute form of one path-valued setting (see [`PathRule`]).
pub fn resolve_path_value(rule: PathRule, base: &Path, raw: &str) -> String {
    let trimmed = py::strip(raw);
    match rule {
        PathRule::None => raw.to_string(),
        PathRule::Path => absolutize(base, trimmed),
        PathRule::List => trimmed
            .split(':')
            .filter(|p| !p.is_empty())
            .map(|p| absolutize(base, p))
            .collect::<Vec<_>>()
            .join(":"),
        PathRule::Program if trimmed.contains('/') => absolutize(base, trimmed),
        PathRule::Program => trimmed.to_string(),
        PathRule::Resolver => match trimmed.rsplit_once(':') {
            Some((path, func))
                if path.ends_with(".py") || path.contains('/') || path.contains('\\') =>
            {
                format!("{}:{func}", absolutize(base, path))
            }
            _ => trimmed.to_string(),
        },
    }
}

/// Which TOML file to read.
fn resolve_config_file(
    opts: &LoadOptions,
    env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = &opts.config_file {
        let path = &PathBuf::from(absolutize(cwd, &path.display().to_string()));
        if !path.exists() {
            return Err(ConfigError::ConfigFileMissing {
                path: path.clone(),
                origin: "--config".into(),
            });
        }
        return Ok(Some(path.clone()));
    }
    if let Some(path) = env
        .get(CONFIG_FILE_ENV)
        .map(|v| py::strip(v))
        .filter(|v| !v.is_empty())
    {
        let path = PathBuf::from(absolutize(cwd, path));
        if !path.exists() {
            return Err(ConfigError::ConfigFileMissing {
                path,
                origin: CONFIG_FILE_ENV.into(),
            });
        }
        return Ok(Some(path));
    }
    let system = Path::new(DEFAULT_CONFIG_FILE);
    if opts.use_process_env && opts.env_overrides.is_none() && system.is_file() {
        return Ok(Some(system.to_path_buf()));
    }
    Ok(None)
}

/// Load the configuration from flags, environment, `.env`, TOML file and defaults.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let env_active = opts.env_overrides.is_some() || opts.use_process_env;
    let env: HashMap<String, String> = match &opts.env_overrides {
        Some(map) => map.clone(),
        None if opts.use_process_env => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
        None => HashMap::new(),
    };

    let cwd = match &opts.base_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    let mut b = Builder {
        cwd: cwd.clone(),
        config: Config::defaults(),
        sources: FIELDS.iter().map(|f| (f.name, Source::Default)).collect(),
        warnings: Vec::new(),
    };

    // Absolute (the file exists: canonical), so that messages, `config` and the paths inside the
    // file are unambiguous. so that messages, `config` and the paths inside the file are unambiguous.
    let config_file =
        resolve_config_file(opts, &env, &cwd)?.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    if let Some(path) = &config_file {
        b.apply_file(path)?;
    }

    let dotenv = if env_active {
        dotenv::load_dotenv_with(&|k| env.get(k).cloned(), &cwd)
    } else {
        None
    };
    if let Some((path, values)) = &dotenv {
        b.apply_env(values, Source::DotEnv(path.clone()))?;
    }
    b.apply_env(&env, Source::Env)?;
    b.apply_flags(&opts.flags)?;
    b.apply_minimums();
    let cwd = b.cwd.clone();
    b.apply_paths(&cwd);
    // Bad credentials are a configuration error at start, not an endless reconnect loop.
    crate::nats::NatsAuth::check_config(&b.config)?;

    Ok(Loaded {
        config: b.config,
        sources: b.sources,
        warnings: b.warnings,
        config_file,
        dotenv_file: dotenv.map(|(p, _)| p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn no_dotenv() -> Vec<(String, String)> {
        vec![("PYOCO_LOAD_DOTENV".into(), "0".into())]
    }

    fn env_opts(pairs: &[(&str, &str)]) -> LoadOptions {
        let mut env = no_dotenv();
        env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        LoadOptions::with_env(env)
    }

    #[test]
    fn relative_paths_resolve_against_the_start_directory_or_the_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("project");
        let etc = dir.path().join("etc");
        fs::create_dir_all(&base).unwrap();
        fs::create_dir_all(&etc).unwrap();
        let toml_path = etc.join("pyoco.toml");
        fs::write(
            &toml_path,
            "worker_work_dir = \"state/work\"\nwheel_sync_dir = \"/abs/wheels\"\n",
        )
        .unwrap();
        let mut opts = env_opts(&[
            ("PYOCO_PYTHON", ".venv/bin/python"),
            ("PYOCO_WORKER_PYTHONPATH", "tasks:./lib::/opt/shared"),
        ]);
        opts.base_dir = Some(base.clone());
        // Relative to the start directory, not to the process's current one.
        opts.config_file = Some(PathBuf::from("../etc/pyoco.toml"));
        opts.flags = vec![(
            "worker_flow_resolver".into(),
            "flows/resolve.py:resolve".into(),
        )];
        let l = load(&opts).unwrap();
        let b = base.display();
        assert_eq!(l.config.python, format!("{b}/.venv/bin/python"));
        assert_eq!(
            l.config.worker_pythonpath,
            format!("{b}/tasks:{b}/lib:/opt/shared")
        );
        assert_eq!(
            l.config.worker_flow_resolver,
            format!("{b}/flows/resolve.py:resolve")
        );
        // TOML values: against the file's directory; absolute values stay.
        assert_eq!(
            l.config.worker_work_dir,
            format!("{}/state/work", etc.display())
        );
        assert_eq!(l.config.wheel_sync_dir, "/abs/wheels");
        assert_eq!(
            l.config_file.as_deref(),
            Some(etc.join("pyoco.toml").as_path())
        );

        // A bare program name is looked up in PATH, a module resolver is not a path.
        let mut opts = env_opts(&[
            ("PYOCO_PYTHON", "python3"),
            ("PYOCO_WORKER_FLOW_RESOLVER", "myflows.registry:resolve"),
        ]);
        opts.base_dir = Some(base.clone());
        let l = load(&opts).unwrap();
        assert_eq!(l.config.python, "python3");
        assert_eq!(l.config.worker_flow_resolver, "myflows.registry:resolve");
        assert_eq!(
            l.config.wheel_sync_dir, ".pyoco/wheels",
            "defaults stay as they are"
        );
        assert_eq!(
            l.config.worker_work_dir, "",
            "empty stays empty (daemon default)"
        );
        assert_eq!(
            resolve_path_value(PathRule::Resolver, &base, "resolve.py:f"),
            format!("{b}/resolve.py:f")
        );
    }

    #[test]
    fn secret_files_in_toml_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pepper"), "s3cret\n").unwrap();
        let toml_path = dir.path().join("pyoco.toml");
        fs::write(&toml_path, "auth_pepper_file = \"pepper\"\n").unwrap();
        let mut opts = env_opts(&[]);
        opts.config_file = Some(toml_path);
        opts.base_dir = Some(PathBuf::from("/nonexistent"));
        let l = load(&opts).unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("s3cret"));
    }

    #[test]
    fn defaults_match_the_table() {
        let c = Config::defaults();
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.work_subject_prefix, "pyoco.work");
        assert_eq!(c.default_tag, "default");
        assert_eq!(c.runs_kv_bucket, "pyoco_runs");
        assert_eq!(c.workers_kv_bucket, "pyoco_workers");
        assert_eq!(c.workers_kv_ttl_sec, 86400.0);
        assert_eq!(c.http_auth_mode, "none");
        assert!(!c.api_key_auth());
        assert_eq!(c.http_api_key_header, "X-API-Key");
        assert_eq!(c.auth_kv_bucket, "pyoco_auth");
        assert_eq!(c.auth_pepper, None);
        assert_eq!(c.run_heartbeat_interval_sec, 1.0);
        assert_eq!(c.worker_heartbeat_interval_sec, 5.0);
        assert_eq!(c.worker_disconnect_timeout_sec, 20.0);
        assert_eq!(c.cancel_grace_period_sec, 30.0);
        assert_eq!(c.ack_progress_interval_sec, 10.0);
        assert_eq!(c.consumer_ack_wait_sec, 30.0);
        assert_eq!(c.consumer_max_deliver, 20);
        assert_eq!(c.consumer_max_ack_pending, 200);
        assert_eq!(c.dlq_stream, "PYOCO_DLQ");
        assert_eq!(c.dlq_subject_prefix, "pyoco.dlq");
        assert!(c.dlq_publish_execution_error);
        assert_eq!(c.dlq_max_age_sec, 604800.0);
        assert_eq!(c.dlq_max_msgs, 100000);
        assert_eq!(c.dlq_max_bytes, 536870912);
        assert_eq!(c.max_run_snapshot_bytes, 262144);
        assert_eq!(c.workflow_yaml_max_bytes, 262144);
        assert_eq!(c.wheel_object_store_bucket, "pyoco_wheels");
        assert_eq!(c.wheel_max_bytes, 536870912);
        assert!(!c.wheel_sync_enabled);
        assert_eq!(c.wheel_sync_dir, ".pyoco/wheels");
        assert_eq!(c.wheel_sync_interval_sec, 10.0);
        assert_eq!(c.wheel_install_timeout_sec, 180.0);
        assert_eq!(c.wheel_history_kv_bucket, "pyoco_wheel_history");
        assert_eq!(c.wheel_history_ttl_sec, 7776000.0);
        assert_eq!(c.dashboard_lang, "auto");
        assert_eq!(c.log_level, "INFO");
        assert_eq!(c.log_format, "json");
        assert!(c.log_utc);
        assert!(c.log_include_traceback);
        assert_eq!(c.http_host, "127.0.0.1");
        assert_eq!(c.http_port, 8000);
        assert_eq!(c.run_retention_sec, 2592000.0);
        assert_eq!(c.idempotency_kv_bucket, "pyoco_idempotency");
        assert_eq!(c.idempotency_ttl_sec, 86400.0);
        assert_eq!(c.auth_cache_ttl_sec, 300.0);
    }

    #[test]
    fn load_without_anything_gives_defaults() {
        let opts = LoadOptions {
            use_process_env: false,
            ..LoadOptions::default()
        };
        let l = load(&opts).unwrap();
        assert_eq!(l.config, Config::defaults());
        assert!(l.warnings.is_empty());
        assert!(l.config_file.is_none() && l.dotenv_file.is_none());
        assert_eq!(l.sources.len(), field_names().len());
        assert!(l.sources.values().all(|s| *s == Source::Default));

        let l = load(&env_opts(&[])).unwrap();
        assert_eq!(l.config, Config::defaults());
    }

    #[test]
    fn table_is_consistent() {
        let names = field_names();
        assert_eq!(names.len(), FIELDS.len());
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "duplicate {n}");
            let env = env_var_of(n).unwrap();
            assert_eq!(env, format!("PYOCO_{}", n.to_uppercase()));
        }
        // Every default renders and round-trips through the text parser.
        let d = Config::defaults();
        for f in FIELDS {
            if let Value::Secret(_) = (f.get)(&d) {
                continue;
            }
            let text = render((f.get)(&d));
            assert_eq!(parse_text(f.kind, &text), Some((f.get)(&d)), "{}", f.name);
        }
    }

    #[test]
    fn precedence_flag_env_dotenv_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("pyoco.toml");
        fs::write(
            &toml_path,
            "nats_url = \"nats://file:4222\"\ndefault_tag = \"file\"\ndashboard_lang = \"ja\"\n\
             consumer_ack_wait_sec = 45\nhttp_port = 9000\n",
        )
        .unwrap();
        let env_path = dir.path().join("test.env");
        fs::write(&env_path, "PYOCO_NATS_URL=nats://dotenv:4222\nPYOCO_DEFAULT_TAG=dotenv\nPYOCO_DASHBOARD_LANG=en\n")
            .unwrap();
        let mut opts = LoadOptions::with_env([
            ("PYOCO_ENV_FILE", env_path.to_str().unwrap()),
            ("PYOCO_NATS_URL", "nats://env:4222"),
            ("PYOCO_DEFAULT_TAG", "env"),
        ]);
        opts.config_file = Some(toml_path.clone());
        opts.flags = vec![("nats_url".into(), "nats://flag:4222".into())];
        let l = load(&opts).unwrap();
        assert_eq!(l.config_file.as_deref(), Some(toml_path.as_path()));
        assert_eq!(l.dotenv_file.as_deref(), Some(env_path.as_path()));
        let c = &l.config;
        assert_eq!(c.nats_url, "nats://flag:4222");
        assert_eq!(c.default_tag, "env");
        assert_eq!(c.dashboard_lang, "en");
        assert_eq!(c.consumer_ack_wait_sec, 45.0);
        assert_eq!(c.http_port, 9000);
        assert_eq!(c.runs_kv_bucket, "pyoco_runs");
        assert_eq!(l.sources["nats_url"], Source::Flag);
        assert_eq!(l.sources["default_tag"], Source::Env);
        assert_eq!(
            l.sources["dashboard_lang"],
            Source::DotEnv(env_path.clone())
        );
        assert_eq!(
            l.sources["consumer_ack_wait_sec"],
            Source::File(toml_path.clone())
        );
        assert_eq!(l.sources["runs_kv_bucket"], Source::Default);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);

        let rows = l.describe();
        assert_eq!(rows.len(), field_names().len());
        let row = |k: &str| rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(row("nats_url").source, "flag");
        assert_eq!(row("default_tag").source, "env");
        assert_eq!(
            row("dashboard_lang").source,
            format!(".env {}", env_path.display())
        );
        assert_eq!(
            row("consumer_ack_wait_sec").source,
            format!("file {}", toml_path.display())
        );
        assert_eq!(row("consumer_ack_wait_sec").value, "45.0");
        assert_eq!(
            row("consumer_ack_wait_sec").env,
            "PYOCO_CONSUMER_ACK_WAIT_SEC"
        );
        assert_eq!(row("runs_kv_bucket").source, "default");
        assert_eq!(row("auth_pepper").value, "<unset>");
    }

    #[test]
    fn empty_env_value_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join(".env");
        fs::write(
            &env_path,
            "PYOCO_DEFAULT_TAG=fromdotenv\nPYOCO_RUNS_KV_BUCKET=\n",
        )
        .unwrap();
        let opts = LoadOptions::with_env([
            ("PYOCO_ENV_FILE", env_path.to_str().unwrap()),
            ("PYOCO_DEFAULT_TAG", ""),
            ("PYOCO_NATS_URL", ""),
            ("PYOCO_RUNS_KV_BUCKET", ""),
        ]);
        let l = load(&opts).unwrap();
        assert_eq!(l.config.default_tag, "fromdotenv");
        assert_eq!(l.config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(l.config.runs_kv_bucket, "pyoco_runs");
        assert_eq!(l.sources["runs_kv_bucket"], Source::Default);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn bad_values_fall_back_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join(".env");
        fs::write(&env_path, "PYOCO_CONSUMER_MAX_ACK_PENDING=300\n").unwrap();
        let opts = LoadOptions::with_env([
            ("PYOCO_ENV_FILE", env_path.to_str().unwrap()),
            ("PYOCO_CONSUMER_MAX_DELIVER", "1.5"),
            ("PYOCO_CONSUMER_MAX_ACK_PENDING", "lots"),
            ("PYOCO_CONSUMER_ACK_WAIT_SEC", "soon"),
            ("PYOCO_WHEEL_SYNC_ENABLED", "maybe"),
            ("PYOCO_HTTP_PORT", "70000"),
            ("PYOCO_DLQ_MAX_AGE_SEC", "nan"),
        ]);
        let l = load(&opts).unwrap();
        let c = &l.config;
        assert_eq!(c.consumer_max_deliver, 20);
        // Falls back to the next source (.env), not straight to the default.
        assert_eq!(c.consumer_max_ack_pending, 300);
        assert_eq!(
            l.sources["consumer_max_ack_pending"],
            Source::DotEnv(env_path.clone())
        );
        assert_eq!(c.consumer_ack_wait_sec, 30.0);
        assert!(!c.wheel_sync_enabled);
        assert_eq!(c.http_port, 8000);
        assert_eq!(c.dlq_max_age_sec, 604800.0);
        assert_eq!(l.warnings.len(), 6, "{:?}", l.warnings);
        let w = &l.warnings[..];
        assert!(w
            .iter()
            .any(|w| w.contains("PYOCO_CONSUMER_MAX_DELIVER=\"1.5\"")
                && w.contains("an integer")
                && w.contains("keeping 20 (default)")));
        assert!(w
            .iter()
            .any(|w| w.contains("PYOCO_CONSUMER_MAX_ACK_PENDING=\"lots\"")
                && w.contains("keeping 300 (.env")));
        assert!(w
            .iter()
            .any(|w| w.contains("PYOCO_WHEEL_SYNC_ENABLED") && w.contains("a boolean")));
    }

    #[test]
    fn python_compatible_number_and_bool_parsing() {
        assert_eq!(parse_int(" 42 "), Some(42));
        assert_eq!(parse_int("+7"), Some(7));
        assert_eq!(parse_int("-7"), Some(-7));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("007"), Some(7));
        for bad in [
            "1.5",
            "",
            " ",
            "1e3",
            "_1",
            "1_",
            "1__0",
            "0x10",
            "+",
            "99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
        assert_eq!(parse_float(" 2.5 "), Some(2.5));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("5"), Some(5.0));
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_float("1_0.5"), Some(10.5));
        for bad in ["", "abc", "inf", "nan", "-Infinity", "1,5", "0x1p3", "1.5s"] {
            assert_eq!(parse_float(bad), None, "{bad:?}");
        }
        for t in ["1", "true", "YES", " On "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "False", "no", "OFF"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("2"), None);
        let l = load(&env_opts(&[
            ("PYOCO_WHEEL_SYNC_ENABLED", "YES"),
            ("PYOCO_DLQ_PUBLISH_EXECUTION_ERROR", "off"),
        ]))
        .unwrap();
        assert!(l.config.wheel_sync_enabled);
        assert!(!l.config.dlq_publish_execution_error);
    }

    #[test]
    fn unknown_toml_key_is_an_error_with_suggestions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyoco.toml");
        fs::write(
            &path,
            "nats_url = \"nats://x:4222\"\nconsumer_ack_wait = 30\n",
        )
        .unwrap();
        let opts = LoadOptions {
            config_file: Some(path.clone()),
            ..env_opts(&[])
        };
        let err = load(&opts).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }));
        let msg = err.to_string();
        assert!(msg.contains("unknown key `consumer_ack_wait`"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("did you mean `consumer_ack_wait_sec`"),
            "{msg}"
        );

        fs::write(&path, "PYOCO_NATS_URL = \"nats://x:4222\"\n").unwrap();
        let msg = load(&opts).unwrap_err().to_string();
        assert!(msg.contains("did you mean `nats_url`?"), "{msg}");

        fs::write(&path, "completely_unrelated = 1\n").unwrap();
        let msg = load(&opts).unwrap_err().to_string();
        assert!(msg.contains("unknown key `completely_unrelated`;"), "{msg}");

        // Sections are not accepted either.
        fs::write(&path, "[pyoco]\nnats_url = \"nats://x:4222\"\n").unwrap();
        assert!(matches!(
            load(&opts).unwrap_err(),
            ConfigError::UnknownKey { .. }
        ));
    }

    #[test]
    fn toml_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyoco.toml");
        let opts = LoadOptions {
            config_file: Some(path.clone()),
            ..env_opts(&[])
        };

        fs::write(
            &path,
            "worker_disconnect_timeout_sec = 25\nrun_heartbeat_interval_sec = 0.5\nwheel_sync_enabled = true\n\
             dlq_max_msgs = 10\nauth_pepper = \"pep\"\n",
        )
        .unwrap();
        let l = load(&opts).unwrap();
        assert_eq!(l.config.worker_disconnect_timeout_sec, 25.0);
        assert_eq!(l.config.run_heartbeat_interval_sec, 0.5);
        assert!(l.config.wheel_sync_enabled);
        assert_eq!(l.config.dlq_max_msgs, 10);
        assert_eq!(l.config.auth_pepper.as_deref(), Some("pep"));

        fs::write(&path, "consumer_max_deliver = 2.5\n").unwrap();
        let err = load(&opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::WrongType { .. }));
        assert!(
            msg.contains("`consumer_max_deliver` must be an integer"),
            "{msg}"
        );
        assert!(msg.contains("found float"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");

        fs::write(&path, "wheel_sync_enabled = \"yes\"\n").unwrap();
        let msg = load(&opts).unwrap_err().to_string();
        assert!(
            msg.contains("must be a boolean (true or false), found string"),
            "{msg}"
        );

        fs::write(&path, "http_port = 123456\n").unwrap();
        let msg = load(&opts).unwrap_err().to_string();
        assert!(msg.contains("port range"), "{msg}");

        fs::write(&path, "nats_url = \"\"\n").unwrap();
        assert!(matches!(
            load(&opts).unwrap_err(),
            ConfigError::InvalidValue { .. }
        ));

        fs::write(&path, "nats_url = \n").unwrap();
        assert!(matches!(
            load(&opts).unwrap_err(),
            ConfigError::TomlSyntax { .. }
        ));
    }

    #[test]
    fn config_file_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let opts = LoadOptions {
            config_file: Some(missing.clone()),
            ..env_opts(&[])
        };
        let msg = load(&opts).unwrap_err().to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("--config"),
            "{msg}"
        );

        let err = load(&env_opts(&[("PYOCO_CONFIG", missing.to_str().unwrap())])).unwrap_err();
        assert!(err.to_string().contains("PYOCO_CONFIG"));

        let path = dir.path().join("p.toml");
        fs::write(&path, "default_tag = \"cfgenv\"\n").unwrap();
        let l = load(&env_opts(&[("PYOCO_CONFIG", path.to_str().unwrap())])).unwrap();
        assert_eq!(l.config.default_tag, "cfgenv");
        assert_eq!(l.config_file.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn flags_override_and_errors() {
        let mut opts = env_opts(&[
            ("PYOCO_CONSUMER_MAX_DELIVER", "7"),
            ("PYOCO_HTTP_PORT", "9001"),
        ]);
        opts.flags = vec![
            ("consumer_max_deliver".into(), "9".into()),
            ("wheel_sync_enabled".into(), "on".into()),
            ("http_host".into(), "0.0.0.0".into()),
        ];
        let l = load(&opts).unwrap();
        assert_eq!(l.config.consumer_max_deliver, 9);
        assert!(l.config.wheel_sync_enabled);
        assert_eq!(l.config.http_host, "0.0.0.0");
        assert_eq!(l.config.http_port, 9001);
        assert_eq!(l.sources["http_port"], Source::Env);
        assert_eq!(l.sources["consumer_max_deliver"], Source::Flag);

        opts.flags = vec![("consumer_max_deliver".into(), "1.5".into())];
        let err = load(&opts).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidValue { .. }));
        assert!(
            err.to_string().contains("consumer_max_deliver")
                && err.to_string().contains("an integer")
        );

        opts.flags = vec![("nats_url".into(), String::new())];
        assert!(load(&opts).is_err());

        opts.flags = vec![("nats-url".into(), "x".into())];
        let msg = load(&opts).unwrap_err().to_string();
        assert!(
            msg.contains("unknown configuration flag `nats-url`") && msg.contains("`nats_url`"),
            "{msg}"
        );
    }

    #[test]
    fn pepper_from_env_file_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let pep = dir.path().join("pepper");
        fs::write(&pep, "s3cret\n").unwrap();
        let l = load(&env_opts(&[(
            "PYOCO_AUTH_PEPPER_FILE",
            pep.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("s3cret"));
        assert_eq!(l.sources["auth_pepper"], Source::Env);
        let row = l
            .describe()
            .into_iter()
            .find(|r| r.key == "auth_pepper")
            .unwrap();
        assert_eq!(row.value, "<set>");
        assert!(!format!("{:?}", l.config).contains("s3cret"));

        // Both at the same level: error.
        let err = load(&env_opts(&[
            ("PYOCO_AUTH_PEPPER", "x"),
            ("PYOCO_AUTH_PEPPER_FILE", pep.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");

        // Env var beats a _FILE given in .env.
        let env_path = dir.path().join(".env");
        fs::write(
            &env_path,
            format!("PYOCO_AUTH_PEPPER_FILE={}\n", pep.display()),
        )
        .unwrap();
        let l = load(&LoadOptions::with_env([
            ("PYOCO_ENV_FILE", env_path.to_str().unwrap()),
            ("PYOCO_AUTH_PEPPER", "direct"),
        ]))
        .unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("direct"));
        let l = load(&LoadOptions::with_env([(
            "PYOCO_ENV_FILE",
            env_path.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("s3cret"));
        assert_eq!(l.sources["auth_pepper"], Source::DotEnv(env_path.clone()));

        // Blank pepper counts as unset (original); missing file is an error.
        let l = load(&env_opts(&[("PYOCO_AUTH_PEPPER", "   ")])).unwrap();
        assert_eq!(l.config.auth_pepper, None);
        let missing = dir.path().join("nope");
        let err = load(&env_opts(&[(
            "PYOCO_AUTH_PEPPER_FILE",
            missing.to_str().unwrap(),
        )]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::SecretFile { .. }));
        assert!(err.to_string().contains("PYOCO_AUTH_PEPPER_FILE"));

        // TOML and flag forms.
        let toml_path = dir.path().join("c.toml");
        fs::write(
            &toml_path,
            format!("auth_pepper_file = {:?}\n", pep.to_str().unwrap()),
        )
        .unwrap();
        let l = load(&LoadOptions {
            config_file: Some(toml_path),
            ..env_opts(&[])
        })
        .unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("s3cret"));
        let mut opts = env_opts(&[("PYOCO_AUTH_PEPPER", "env")]);
        opts.flags = vec![("auth_pepper_file".into(), pep.to_str().unwrap().into())];
        let l = load(&opts).unwrap();
        assert_eq!(l.config.auth_pepper.as_deref(), Some("s3cret"));
        assert_eq!(l.sources["auth_pepper"], Source::Flag);
    }

    #[test]
    fn nats_credentials_load_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        fs::write(&pw, "hunter2\n").unwrap();
        let l = load(&env_opts(&[
            ("PYOCO_NATS_USER", "alice"),
            ("PYOCO_NATS_PASSWORD_FILE", pw.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(l.config.nats_password.as_deref(), Some("hunter2"));
        let value =
            |l: &Loaded, k: &str| l.describe().into_iter().find(|r| r.key == k).unwrap().value;
        assert_eq!(value(&l, "nats_password"), "<set>");
        assert!(!format!("{:?}", l.config).contains("hunter2"));

        let l = load(&env_opts(&[(
            "PYOCO_NATS_URL",
            "nats://alice:urlpass@h:4222",
        )]))
        .unwrap();
        assert_eq!(value(&l, "nats_url"), "nats://alice:***@h:4222");
        assert!(!format!("{:?}", l.config).contains("urlpass"));

        // A user without a password fails the load, naming the fix.
        let err = load(&env_opts(&[("PYOCO_NATS_USER", "alice")])).unwrap_err();
        assert!(matches!(err, ConfigError::NatsAuth { .. }), "{err}");
        // A relative creds path is resolved against the start directory before the check.
        let mut opts = env_opts(&[("PYOCO_NATS_CREDS_FILE", "x.creds")]);
        opts.base_dir = Some(dir.path().to_path_buf());
        let msg = load(&opts).unwrap_err().to_string();
        assert!(
            msg.contains(&dir.path().join("x.creds").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn log_vars_ignore_dotenv() {
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join(".env");
        fs::write(
            &env_path,
            "PYOCO_LOG_LEVEL=DEBUG\nPYOCO_LOG_UTC=false\nPYOCO_DASHBOARD_LANG=ja\n",
        )
        .unwrap();
        let l = load(&LoadOptions::with_env([(
            "PYOCO_ENV_FILE",
            env_path.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(l.config.log_level, "INFO");
        assert!(l.config.log_utc);
        assert_eq!(l.config.dashboard_lang, "ja");
        assert_eq!(l.sources["log_level"], Source::Default);
        assert!(l
            .warnings
            .iter()
            .any(|w| w.contains("PYOCO_LOG_LEVEL") && w.contains("process environment only")));

        let l = load(&LoadOptions::with_env([
            ("PYOCO_ENV_FILE", env_path.to_str().unwrap()),
            ("PYOCO_LOG_LEVEL", "WARNING"),
            ("PYOCO_LOG_FORMAT", "text"),
        ]))
        .unwrap();
        assert_eq!(l.config.log_level, "WARNING");
        assert_eq!(l.config.log_format, "text");
        assert_eq!(l.sources["log_level"], Source::Env);
    }

    #[test]
    fn minimums_are_enforced_with_a_warning() {
        let l = load(&env_opts(&[
            ("PYOCO_RUN_HEARTBEAT_INTERVAL_SEC", "0.01"),
            ("PYOCO_WHEEL_INSTALL_TIMEOUT_SEC", "0"),
            ("PYOCO_WORKER_HEARTBEAT_INTERVAL_SEC", "0.1"),
        ]))
        .unwrap();
        assert_eq!(l.config.run_heartbeat_interval_sec, 0.1);
        assert_eq!(l.config.wheel_install_timeout_sec, 1.0);
        assert_eq!(l.config.worker_heartbeat_interval_sec, 0.1);
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(l.warnings[0]
            .contains("run_heartbeat_interval_sec = 0.01 (env) is below the minimum 0.1"));
    }

    #[test]
    fn api_key_auth_and_workers_ttl() {
        for (mode, on) in [
            ("api_key", true),
            (" API_KEY ", true),
            ("none", false),
            ("apikey", false),
        ] {
            let l = load(&env_opts(&[("PYOCO_HTTP_AUTH_MODE", mode)])).unwrap();
            assert_eq!(l.config.api_key_auth(), on, "{mode}");
        }
        let l = load(&env_opts(&[("PYOCO_WORKERS_KV_TTL_SEC", "15")])).unwrap();
        assert_eq!(l.config.workers_kv_ttl_sec, 15.0);
    }

    #[test]
    fn close_matches_work() {
        // Both are one edit away; the nearer one first.
        assert_eq!(close_matches("nats_ur"), vec!["nats_url", "nats_user"]);
        assert_eq!(
            close_matches("PYOCO_HTTP_PORT"),
            vec!["http_port".to_string()]
        );
        assert_eq!(
            close_matches("auth-pepper-file"),
            vec!["auth_pepper_file".to_string()]
        );
        assert!(close_matches("zzzzzzzzzzzz").is_empty());
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
