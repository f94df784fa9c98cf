//! Logging for every daemon: journald with structured fields (`RUN_ID`, `FLOW_NAME`, `TAG`,
//! `WORKER_ID`, `ERR_ID`, …) when stderr is connected to systemd's journal, otherwise JSON lines
//! with the original's field names (`ts`, `service`, `level`, `logger`, `message`, then the
//! context fields) or one text line per event, as `PYOCO_LOG_FORMAT` says.
//!
//! Context fields are written lowercase in `tracing` macros (`run_id = %id`); journald
//! uppercases them.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Journald,
    Json,
    Text,
}

/// Python logging level names → tracing levels (`WARNING`/`CRITICAL` included; unknown → INFO).
pub fn level_from_name(name: &str) -> Level {
    match name.trim().to_ascii_uppercase().as_str() {
        "DEBUG" | "TRACE" => Level::DEBUG,
        "WARNING" | "WARN" => Level::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => Level::ERROR,
        _ => Level::INFO,
    }
}

fn python_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// The format in force: journald when systemd connected stderr to the journal, else the setting.
pub fn choose_format(log_format: &str) -> Format {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        return Format::Journald;
    }
    match log_format.trim().to_ascii_lowercase().as_str() {
        "text" | "plain" => Format::Text,
        _ => Format::Json,
    }
}

/// Installs the global subscriber. `service` is the original's service name
/// (`pyoco-server:http`, `pyoco-server:worker`).
pub fn init(service: &'static str, level: &str, log_format: &str, utc: bool) {
    let level = level_from_name(level);
    // Our crates at the configured level; the NATS client only when something is wrong.
    let filter = EnvFilter::new(format!(
        "{},async_nats=warn,hyper=warn,h2=warn",
        level.as_str().to_lowercase()
    ));
    let format = choose_format(log_format);
    let registry = tracing_subscriber::registry().with(filter);
    let fallback = PlainLayer {
        service,
        json: format != Format::Text,
        utc,
    };
    if format == Format::Journald {
        if let Ok(layer) = tracing_journald::layer() {
            // The binary's name (pyoco-server, pyoco-worker), like the lines systemd itself logs.
            let ident = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| service.split(':').next().unwrap_or(service).to_string());
            let layer = layer.with_field_prefix(None).with_syslog_identifier(ident);
            let _ = registry.with(layer).try_init();
            return;
        }
    }
    let _ = registry.with(fallback).try_init();
}

/// JSON or text lines on stderr.
struct PlainLayer {
    service: &'static str,
    json: bool,
    utc: bool,
}

#[derive(Default)]
struct Fields {
    message: String,
    extra: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra
                .insert(field.name().to_string(), Value::String(value.to_string()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.extra
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.extra
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.extra
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.extra
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.extra
                .insert(field.name().to_string(), Value::String(text));
        }
    }
}

impl<S: Subscriber> Layer<S> for PlainLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = if self.utc {
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
        } else {
            chrono::Local::now()
                .format("%Y-%m-%dT%H:%M:%S%z")
                .to_string()
        };
        let line = if self.json {
            let mut m = Map::new();
            m.insert("ts".into(), ts.into());
            m.insert("service".into(), self.service.into());
            m.insert("level".into(), python_level(meta.level()).into());
            m.insert("logger".into(), meta.target().into());
            m.insert("message".into(), fields.message.into());
            m.insert("pathname".into(), meta.file().unwrap_or("").into());
            m.insert("lineno".into(), meta.line().unwrap_or(0).into());
            m.insert("process".into(), std::process::id().into());
            m.extend(fields.extra);
            serde_json::to_string(&m).unwrap_or_default()
        } else {
            let ctx: Vec<String> = fields
                .extra
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            let ctx = if ctx.is_empty() {
                String::new()
            } else {
                format!(" ({})", ctx.join(", "))
            };
            format!(
                "{ts} {} {} {} - {}{}",
                python_level(meta.level()),
                self.service,
                meta.target(),
                fields.message,
                ctx
            )
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}
