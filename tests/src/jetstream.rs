//! JetStream helpers that also work against nats-server 2.9.
//!
//! async-nats 0.51's `Context::create_key_value` (and `update_key_value`,
//! `query_account`) first asks `$JS.API.INFO` and fails to parse nats-server 2.9's answer
//! ("data did not match any variant of untagged enum Response": 2.9 has no
//! `reserved_memory`/`reserved_storage`). [`create_kv`] builds the same `KV_<bucket>` stream
//! config itself and then binds with `get_key_value`, which works on 2.9 and later.

use async_nats::jetstream::{self, kv, stream};

/// Creates (or returns, if an identical one exists) a KV bucket without `query_account`.
/// Mirrors async-nats' own `kv_to_stream_config` for the plain (no mirror/sources) case.
pub async fn create_kv(js: &jetstream::Context, config: kv::Config) -> kv::Store {
    let bucket = config.bucket.clone();
    let history = if config.history > 0 {
        config.history
    } else {
        1
    };
    let stream_config = stream::Config {
        name: format!("KV_{bucket}"),
        description: if config.description.is_empty() {
            None
        } else {
            Some(config.description)
        },
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        republish: config.republish,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: if config.num_replicas == 0 {
            1
        } else {
            config.num_replicas
        },
        discard: stream::DiscardPolicy::New,
        placement: config.placement,
        ..Default::default()
    };
    js.get_or_create_stream(stream_config)
        .await
        .unwrap_or_else(|e| panic!("create stream KV_{bucket}: {e:?}"));
    js.get_key_value(&bucket)
        .await
        .unwrap_or_else(|e| panic!("bind KV bucket {bucket}: {e:?}"))
}

/// `$JS.API.INFO` as raw JSON (core's request, which works on every server version); panics
/// on a transport failure or an error answer.
pub async fn account_info_json(client: &async_nats::Client) -> serde_json::Value {
    pyoco_core::jsapi::account_info(client)
        .await
        .unwrap_or_else(|e| panic!("$JS.API.INFO: {e}"))
}
