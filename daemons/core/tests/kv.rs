//! `kv::modify`, the one compare-and-set loop, against a real nats-server from the test
//! harness: create, update, keep, delete, conflicts with another writer, concurrent writers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use pyoco_core::kv::{modify, modify_bounded, Decision, ModifyError};
use pyoco_core::wire::Doc;
use pyoco_tests::NatsServer;
use serde_json::json;

async fn bucket(nats: &NatsServer) -> Store {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The buckets as the daemons create them (works on Debian's nats-server 2.9 too).
    js.create_stream(pyoco_core::resources::kv_stream_config("t", Duration::ZERO))
        .await
        .unwrap();
    js.get_key_value("t").await.unwrap()
}

fn doc(v: serde_json::Value) -> Doc {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn creates_updates_keeps_and_deletes() {
    let nats = NatsServer::start().await;
    let store = bucket(&nats).await;
    assert!(matches!(
        modify(&store, "k", |_| Decision::Keep).await,
        Err(ModifyError::NotFound)
    ));
    let m = modify(&store, "k", |d| {
        assert!(d.is_none());
        Decision::Write(doc(json!({"n": 1, "é": 1.0})))
    })
    .await
    .unwrap();
    assert!(m.written && m.previous.is_none());
    // Stored as the original writes it: compact ASCII JSON.
    assert_eq!(
        store.get("k").await.unwrap().unwrap().as_ref(),
        br#"{"n":1,"\u00e9":1.0}"#
    );
    let m2 = modify(&store, "k", |d| {
        let mut d = d.unwrap().clone();
        d.insert("n".into(), json!(2));
        Decision::Write(d)
    })
    .await
    .unwrap();
    assert!(m2.revision > m.revision);
    assert_eq!(
        m2.previous.as_deref(),
        Some(&br#"{"n":1,"\u00e9":1.0}"#[..])
    );
    let kept = modify(&store, "k", |_| Decision::Keep).await.unwrap();
    assert!(!kept.written);
    assert_eq!(kept.revision, m2.revision);
    assert_eq!(kept.doc.unwrap()["n"], json!(2));
    let del = modify(&store, "k", |_| Decision::Delete).await.unwrap();
    assert!(del.written && del.doc.is_none());
    assert!(store.get("k").await.unwrap().is_none());
    assert!(matches!(
        modify(&store, "k", |_| Decision::Keep).await,
        Err(ModifyError::NotFound)
    ));
    // A deleted key is written again at the tombstone's revision.
    let again = modify(&store, "k", |d| {
        assert!(d.is_none());
        Decision::WriteBytes(doc(json!({"n": 3})), b"{\"n\": 3}".to_vec())
    })
    .await
    .unwrap();
    assert_eq!(again.doc.unwrap()["n"], json!(3));
    assert_eq!(
        store.get("k").await.unwrap().unwrap().as_ref(),
        b"{\"n\": 3}"
    );
    store.put("bad", "[1]".into()).await.unwrap();
    assert!(matches!(
        modify(&store, "bad", |_| Decision::Keep).await,
        Err(ModifyError::Undecodable(b)) if b.as_ref() == b"[1]"
    ));
}

/// Another writer gets in between the read and the write: the closure runs again on what
/// that writer stored, and its change survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_reads_again_and_keeps_the_other_write() {
    let nats = NatsServer::start().await;
    let store = bucket(&nats).await;
    store.put("k", r#"{"a":1}"#.into()).await.unwrap();
    let calls = AtomicU32::new(0);
    let other = store.clone();
    let m = modify(&store, "k", |d| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(other.put("k", r#"{"a":1,"b":2}"#.into()))
                    .unwrap();
            });
        }
        let mut d = d.unwrap().clone();
        d.insert("c".into(), json!(3));
        Decision::Write(d)
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(m.doc.unwrap(), doc(json!({"a": 1, "b": 2, "c": 3})));
    assert_eq!(
        store.get("k").await.unwrap().unwrap().as_ref(),
        br#"{"a":1,"b":2,"c":3}"#
    );
    // A key that changes on every attempt exhausts the bound.
    let err = modify_bounded(&store, "k", 3, |d| {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(other.put("k", r#"{"x":0}"#.into()))
                .unwrap();
        });
        Decision::Write(d.cloned().unwrap_or_default())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ModifyError::Conflict(3)));
}

/// Concurrent writers incrementing one counter: no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_nothing() {
    let nats = NatsServer::start().await;
    let store = bucket(&nats).await;
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, calls) = (store.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                modify(&store, "n", |d| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let n = d.and_then(|d| d["n"].as_u64()).unwrap_or(0);
                    Decision::Write(doc(json!({ "n": n + 1 })))
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v: Doc = serde_json::from_slice(&store.get("n").await.unwrap().unwrap()).unwrap();
    assert_eq!(v["n"], json!(40));
    assert!(calls.load(Ordering::SeqCst) >= 40);
}
