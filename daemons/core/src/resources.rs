//! JetStream resources of the product (contract §0): names, creation, drift reporting.
//!
//! Like the original, an existing resource is never changed. Unlike the original, a resource
//! whose configuration differs from what this process would create is reported (with both
//! values) so an operator sees the drift instead of a silently ignored setting.

use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, kv, object_store, stream, Context};

use crate::config::Config;

/// Work-queue stream name; fixed in the original (not configurable).
pub const WORK_STREAM: &str = "PYOCO_WORK";
/// Durable consumer name prefix; fixed in the original.
pub const CONSUMER_PREFIX: &str = "pyoco_workers";

/// Every resource name, resolved from the configuration once.
#[derive(Debug, Clone)]
pub struct Names {
    pub work_stream: String,
    pub work_subject_prefix: String,
    pub dlq_stream: String,
    pub dlq_subject_prefix: String,
    pub runs_bucket: String,
    pub workers_bucket: String,
    pub auth_bucket: String,
    pub wheels_bucket: String,
    pub wheel_history_bucket: String,
    pub idempotency_bucket: String,
}

impl Names {
    pub fn from_config(cfg: &Config) -> Names {
        Names {
            work_stream: WORK_STREAM.to_string(),
            work_subject_prefix: cfg.work_subject_prefix.clone(),
            dlq_stream: cfg.dlq_stream.clone(),
            dlq_subject_prefix: cfg.dlq_subject_prefix.clone(),
            runs_bucket: cfg.runs_kv_bucket.clone(),
            workers_bucket: cfg.workers_kv_bucket.clone(),
            auth_bucket: cfg.auth_kv_bucket.clone(),
            wheels_bucket: cfg.wheel_object_store_bucket.clone(),
            wheel_history_bucket: cfg.wheel_history_kv_bucket.clone(),
            idempotency_bucket: cfg.idempotency_kv_bucket.clone(),
        }
    }

    pub fn work_subject(&self, tag: &str) -> String {
        format!("{}.{}", self.work_subject_prefix, tag)
    }

    pub fn dlq_subject(&self, tag: &str) -> String {
        format!("{}.{}", self.dlq_subject_prefix, tag)
    }

    pub fn consumer_name(tag: &str) -> String {
        format!("{CONSUMER_PREFIX}_{tag}")
    }

    /// The product's streams, for backup and doctor: work queue, DLQ, KV and object stores.
    pub fn all_streams(&self) -> Vec<String> {
        let mut v = vec![self.work_stream.clone(), self.dlq_stream.clone()];
        for b in [
            &self.runs_bucket,
            &self.workers_bucket,
            &self.auth_bucket,
            &self.wheel_history_bucket,
            &self.idempotency_bucket,
        ] {
            v.push(format!("KV_{b}"));
        }
        v.push(format!("OBJ_{}", self.wheels_bucket));
        v
    }
}

/// One difference between an existing resource and what this process expects.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub resource: String,
    pub field: &'static str,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has {}={} but this configuration expects {} (kept as is; recreate it or change the configuration to match)",
            self.resource, self.field, self.actual, self.expected
        )
    }
}

/// Handles on the buckets the daemons use, bound after `ensure`.
#[derive(Clone)]
pub struct Resources {
    pub js: Context,
    pub names: Names,
    pub runs: kv::Store,
    pub workers: kv::Store,
    pub auth: kv::Store,
    pub wheel_history: kv::Store,
    pub idempotency: kv::Store,
}

#[derive(Debug, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct EnsureError {
    pub resource: String,
    pub message: String,
}

fn secs(v: f64) -> Duration {
    if v > 0.0 {
        Duration::from_secs_f64(v)
    } else {
        Duration::ZERO
    }
}

/// Stream configurations as the original creates them.
pub fn work_stream_config(n: &Names) -> stream::Config {
    stream::Config {
        name: n.work_stream.clone(),
        subjects: vec![format!("{}.>", n.work_subject_prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        // Nats-Msg-Id = run_id makes a re-sent submit harmless within this window.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub fn dlq_stream_config(n: &Names, cfg: &Config) -> stream::Config {
    stream::Config {
        name: n.dlq_stream.clone(),
        subjects: vec![format!("{}.>", n.dlq_subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        max_age: secs(cfg.dlq_max_age_sec),
        max_messages: cfg.dlq_max_msgs,
        max_bytes: cfg.dlq_max_bytes,
        ..Default::default()
    }
}

/// (bucket, ttl) of every KV bucket, history 1 like the original.
pub fn kv_buckets(n: &Names, cfg: &Config) -> Vec<(String, Duration)> {
    vec![
        (n.runs_bucket.clone(), Duration::ZERO),
        (n.workers_bucket.clone(), secs(cfg.workers_kv_ttl_sec)),
        (n.auth_bucket.clone(), Duration::ZERO),
        (
            n.wheel_history_bucket.clone(),
            secs(cfg.wheel_history_ttl_sec),
        ),
        (n.idempotency_bucket.clone(), secs(cfg.idempotency_ttl_sec)),
    ]
}

/// The `KV_<bucket>` stream of a KV bucket (history 1), exactly as nats-py (the original's
/// client) creates it. Identical configurations make a concurrent create by the original and by
/// us both succeed, where different ones fail with "stream name already in use".
///
/// Built here rather than with async-nats' `create_key_value`, which first asks
/// `$JS.API.INFO` and cannot parse nats-server 2.9's answer (the version Debian ships; raw
/// requests that work everywhere are in [`crate::jsapi`]).
pub fn kv_stream_config(bucket: &str, ttl: Duration) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        allow_rollup: true,
        deny_delete: true,
        // nats-py sends allow_msg_ttl and leaves allow_direct unset; servers before 2.11
        // ignore the former.
        allow_message_ttl: true,
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Looks a stream up; `Ok(None)` when it does not exist.
async fn stream_info(js: &Context, name: &str) -> Result<Option<stream::Info>, EnsureError> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s.cached_info().clone())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(EnsureError {
            resource: name.to_string(),
            message: e.to_string(),
        }),
    }
}

fn compare(
    resource: &str,
    expected: &stream::Config,
    actual: &stream::Config,
    out: &mut Vec<Drift>,
) {
    let mut push = |field: &'static str, e: String, a: String| {
        if e != a {
            out.push(Drift {
                resource: resource.to_string(),
                field,
                expected: e,
                actual: a,
            });
        }
    };
    if !expected.subjects.is_empty() {
        push(
            "subjects",
            format!("{:?}", expected.subjects),
            format!("{:?}", actual.subjects),
        );
    }
    push(
        "retention",
        format!("{:?}", expected.retention),
        format!("{:?}", actual.retention),
    );
    push(
        "max_age",
        format!("{:?}", expected.max_age),
        format!("{:?}", actual.max_age),
    );
    // The server stores "unlimited" as -1 whatever was sent (0 or -1).
    let limit = |v: i64| {
        if v <= 0 {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    push(
        "max_messages",
        limit(expected.max_messages),
        limit(actual.max_messages),
    );
    push(
        "max_bytes",
        limit(expected.max_bytes),
        limit(actual.max_bytes),
    );
    push(
        "max_messages_per_subject",
        limit(expected.max_messages_per_subject),
        limit(actual.max_messages_per_subject),
    );
    // Fewer replicas than this process would create (an R1 stream on a cluster) loses data
    // with a node; more is fine.
    if actual.num_replicas.max(1) < expected.num_replicas {
        out.push(Drift {
            resource: resource.to_string(),
            field: "num_replicas",
            expected: expected.num_replicas.to_string(),
            actual: actual.num_replicas.max(1).to_string(),
        });
    }
}

/// Why [`ensure_until_ready`] is still waiting, for the caller's status line and logs.
#[derive(Debug)]
pub enum Waiting<'a> {
    /// Not connected to NATS (yet); `waited` since the call began.
    Unreachable { waited: Duration },
    /// Connected, but creating or binding a resource failed.
    Failing(&'a EnsureError),
}

/// The one "ensure resources until ready" loop of the daemons: waits for the connection, then
/// [`ensure`]s every resource, retrying with backoff (200 ms doubling to 5 s) and telling
/// `on_wait` why after each failed round. Drift is logged once, on success. `None` when `stop`
/// is cancelled first.
pub async fn ensure_until_ready(
    client: &async_nats::Client,
    cfg: &Config,
    stop: &tokio_util::sync::CancellationToken,
    mut on_wait: impl FnMut(Waiting<'_>),
) -> Option<Resources> {
    let js = jetstream::new(client.clone());
    let began = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        if crate::nats::is_connected(client) {
            match ensure(&js, cfg).await {
                Ok((res, drift)) => {
                    for d in drift {
                        tracing::warn!(err_id = "ERR-PYOCO-0003", resource = %d.resource, field = d.field, expected = %d.expected, actual = %d.actual, "resource configuration drift: {d}");
                    }
                    return Some(res);
                }
                Err(e) => on_wait(Waiting::Failing(&e)),
            }
        } else {
            on_wait(Waiting::Unreachable {
                waited: began.elapsed(),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Replicas for what this process creates: `nats_replicas`, or with 0 (auto) 3 when the
/// server reports a cluster of at least 3 servers (`connect_urls` lists every server's client
/// URL), else 1 — so a cluster made by `pyococtl up/join` survives the loss of a node.
pub fn replicas(cfg: &Config, info: &async_nats::ServerInfo) -> usize {
    match cfg.nats_replicas {
        n if n > 0 => n.min(5) as usize,
        _ => {
            let clustered = info.cluster.as_deref().is_some_and(|c| !c.is_empty());
            if clustered && info.connect_urls.len() >= 3 {
                3
            } else {
                1
            }
        }
    }
}

/// Creates what is missing, reports drift of what exists, and binds the buckets.
pub async fn ensure(js: &Context, cfg: &Config) -> Result<(Resources, Vec<Drift>), EnsureError> {
    let names = Names::from_config(cfg);
    let mut drift = Vec::new();
    let r = replicas(cfg, &js.client().server_info());
    let with_replicas = |mut c: stream::Config| {
        c.num_replicas = r;
        c
    };
    let err = |resource: &str, e: &dyn std::fmt::Display| EnsureError {
        resource: resource.to_string(),
        message: e.to_string(),
    };

    for expected in [
        with_replicas(work_stream_config(&names)),
        with_replicas(dlq_stream_config(&names, cfg)),
    ] {
        match stream_info(js, &expected.name).await? {
            Some(info) => {
                // The duplicate window is ours alone; an original-created stream has 2 min too.
                compare(&expected.name, &expected, &info.config, &mut drift)
            }
            None => {
                if let Err(e) = js.create_stream(expected.clone()).await {
                    // Another process may have created it between our look-up and create.
                    if stream_info(js, &expected.name).await?.is_none() {
                        return Err(err(&expected.name, &e));
                    }
                }
            }
        }
    }

    for (bucket, ttl) in kv_buckets(&names, cfg) {
        let stream_name = format!("KV_{bucket}");
        match stream_info(js, &stream_name).await? {
            Some(info) => {
                let expected = stream::Config {
                    max_age: ttl,
                    max_messages_per_subject: 1,
                    max_messages: info.config.max_messages,
                    max_bytes: info.config.max_bytes,
                    retention: info.config.retention,
                    num_replicas: r,
                    ..Default::default()
                };
                compare(&stream_name, &expected, &info.config, &mut drift);
            }
            None => {
                if let Err(e) = js
                    .create_stream(with_replicas(kv_stream_config(&bucket, ttl)))
                    .await
                {
                    if stream_info(js, &stream_name).await?.is_none() {
                        return Err(err(&stream_name, &e));
                    }
                }
            }
        }
    }

    let obj_stream = format!("OBJ_{}", names.wheels_bucket);
    if stream_info(js, &obj_stream).await?.is_none() {
        let oc = object_store::Config {
            bucket: names.wheels_bucket.clone(),
            max_bytes: cfg.wheel_max_bytes,
            num_replicas: r,
            ..Default::default()
        };
        if let Err(e) = js.create_object_store(oc).await {
            if stream_info(js, &obj_stream).await?.is_none() {
                return Err(err(&obj_stream, &e));
            }
        }
    }

    let bind = |bucket: String| async move {
        js.get_key_value(bucket.clone())
            .await
            .map_err(|e| err(&format!("KV_{bucket}"), &e))
    };
    let resources = Resources {
        js: js.clone(),
        runs: bind(names.runs_bucket.clone()).await?,
        workers: bind(names.workers_bucket.clone()).await?,
        auth: bind(names.auth_bucket.clone()).await?,
        wheel_history: bind(names.wheel_history_bucket.clone()).await?,
        idempotency: bind(names.idempotency_bucket.clone()).await?,
        names,
    };
    Ok((resources, drift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_the_cluster_unless_set() {
        let info = |cluster: Option<&str>, servers: usize| async_nats::ServerInfo {
            cluster: cluster.map(str::to_string),
            connect_urls: (0..servers).map(|i| format!("10.0.0.{i}:4222")).collect(),
            ..Default::default()
        };
        let mut cfg = Config::defaults();
        assert_eq!(replicas(&cfg, &info(None, 0)), 1, "a single server");
        assert_eq!(
            replicas(&cfg, &info(Some("c"), 2)),
            1,
            "two servers cannot keep a quorum"
        );
        assert_eq!(replicas(&cfg, &info(Some("c"), 3)), 3);
        assert_eq!(replicas(&cfg, &info(Some("c"), 7)), 3);
        cfg.nats_replicas = 2;
        assert_eq!(replicas(&cfg, &info(None, 0)), 2);
        cfg.nats_replicas = 9;
        assert_eq!(
            replicas(&cfg, &info(Some("c"), 9)),
            5,
            "JetStream allows at most 5"
        );
    }
}
