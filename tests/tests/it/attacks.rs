//! The attack catalogue, gateway part (issue 11): each known attack tried against the real
//! `pyoco-server` binary (real nats-server, raw sockets where a client library would be too
//! polite) and refused. What other modules already prove is referenced, not repeated:
//!
//! | attack | refused how | proven in |
//! |---|---|---|
//! | slowloris (heads a byte a second, or nothing at all) | closed at `PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC`; `/health` stays fast | [`slowloris_is_cut_at_the_header_timeout`] |
//! | idle keep-alive / stalled request body | closed at `PYOCO_HTTP_IDLE_TIMEOUT_SEC`; a `/watch` stream is never cut | [`idle_and_stalled_connections_close_but_streams_do_not`] |
//! | connection flood past the cap | waits ≤ 1 s, then `503` naming `PYOCO_HTTP_MAX_CONNECTIONS`; accepted requests never 5xx; served again after | [`connection_flood_past_the_cap`] |
//! | SSE streams configured to take every connection | refused at start | [`stream_cap_must_leave_connections_for_requests`] |
//! | running out of file descriptors below the cap | soft `RLIMIT_NOFILE` raised at start | [`the_open_files_limit_fits_the_connection_cap`] |
//! | 10 000 bogus API keys (+ wrong secrets for a real key id) | all 403, bounded time; the valid key stays cached and fast | [`ten_thousand_bogus_keys_do_not_thrash_the_cache`] |
//! | revocation during in-flight verifications | refused within 1 s, never cached as valid | [`revocation_during_inflight_verifications`]; plain revocation: `gateway_auth::auth_matrix_tenants_and_revocation` |
//! | cross-tenant reads/writes on every run endpoint and list | 404 `run not found`; lists, `/workers`, `/metrics` never show the run | [`cross_tenant_on_every_endpoint`]; `gateway_auth::auth_matrix_tenants_and_revocation`, `gateway_auth::workers_do_not_show_another_tenants_run_ids` |
//! | missing / malformed / foreign keys on every protected endpoint | 401 / 403 | `gateway_auth::auth_matrix_tenants_and_revocation` |
//! | oversized / malformed submits (flow_name, tag, tags, params, deep JSON, bad UTF-8, 50 MiB, YAML bombs, huge headers) | 4xx naming the field or limit, never 5xx, still healthy | [`oversized_and_malformed_submits`]; `gateway_api::bad_input_never_gets_a_server_error`, `gateway_api::an_oversized_tag_is_a_422_and_never_reaches_nats`, `gateway_api::oversized_names_and_tag_lists_are_422s_naming_the_limit` |
//! | SSE stream exhaustion | 429 naming the limit, in all and per tenant | [`watch_streams_in_all_are_capped_with_a_429`]; per tenant: `gateway_api::watch_streams_are_bounded_with_a_clear_429` |
//! | invented HTTP methods minting metric labels | one `OTHER` label | `gateway_api::invented_http_methods_do_not_mint_metric_labels` |
//!
//! The rest of issue 11's catalogue (callables, graph bombs, NATS credentials, the worker
//! user) belongs to the worker, runner and packaging tests.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pyoco_core::apikey;
use pyoco_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PEPPER: &str = "pepper-for-attacks";
const GATEWAY_START: Duration = Duration::from_secs(30);

fn addr(gw: &Gateway) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], gw.port()))
}

/// A fresh client: no pooled connection is reused between the requests of a test that counts
/// connections.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Reads one HTTP/1.1 response (with `content-length`): status, head, body.
async fn read_response(s: &mut TcpStream) -> io::Result<(u16, String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..]).to_string();
            return Ok((status, head, body));
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn get_on(s: &mut TcpStream, path: &str) -> io::Result<(u16, String, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await?;
    read_response(s).await
}

/// Waits until the server closes `s` (EOF or reset); returns how long that took, or `None`
/// if it was still open after `limit`. Whatever the server sends meanwhile is returned too.
async fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Option<Duration>, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, s.read(&mut tmp)).await {
            Err(_) => return (None, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(t0.elapsed()), got),
            Ok(Ok(n)) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

/// The value of one metric line of `/metrics` (auth off).
async fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = fresh_client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

async fn keyed(method: reqwest::Method, url: &str, key: &str) -> (u16, String) {
    let r = http()
        .request(method, url)
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A key stored straight into the auth bucket, as `pyococtl key create` stores it.
async fn mint_key(
    nats: &NatsServer,
    tenant: &str,
    iterations: u32,
) -> (String, apikey::ApiKeyRecord) {
    let (key, record) =
        apikey::generate_with(tenant, Some(PEPPER), 1_700_000_000.0, iterations).unwrap();
    put_record(nats, &record).await;
    (key, record)
}

async fn put_record(nats: &NatsServer, record: &apikey::ApiKeyRecord) {
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_auth").await.unwrap();
    kv.put(
        apikey::kv_key(&record.key_id),
        record.to_json_bytes().into(),
    )
    .await
    .unwrap();
}

fn auth_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", PEPPER),
    ]
}

/// Slowloris: many connections that send a request head a byte a second (or nothing at all)
/// and never finish it, to hold every connection the server has. The gateway closes each at
/// the header-read timeout (counted from the accept, so bytes trickling in do not extend it)
/// and answers `/health` at once meanwhile. The original (uvicorn's defaults) kept them open.
#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC", "2")]).await;
    let target = addr(&gw);
    let mut lorises = vec![];
    for i in 0..40 {
        lorises.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(target).await.unwrap();
            let t0 = Instant::now();
            let silent = i % 4 == 0; // some send nothing at all
            if !silent {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
                    .await
                    .unwrap();
            }
            let mut tmp = [0u8; 512];
            loop {
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut tmp)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), Vec::new()),
                    Ok(Ok(n)) => return (t0.elapsed(), tmp[..n].to_vec()),
                    Err(_) if t0.elapsed() > Duration::from_secs(15) => {
                        panic!("a slowloris connection is still open after 15 s")
                    }
                    Err(_) => {
                        if !silent && s.write_all(b"a").await.is_err() {
                            return (t0.elapsed(), Vec::new());
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile an honest client is served at once.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = fresh_client().get(gw.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "/health took {worst:?} during the attack"
    );
    for l in lorises {
        let (after, sent) = l.await.unwrap();
        assert!(
            sent.is_empty() || !sent.starts_with(b"HTTP/1.1 5"),
            "no server error: {}",
            String::from_utf8_lossy(&sent)
        );
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_millis(4500),
            "closed after {after:?} (header-read timeout 2 s)"
        );
    }
    eprintln!("worst /health during the attack: {worst:?}");
    let cut = metric(
        &gw,
        "pyoco_http_connections_closed_total{reason=\"header_read_timeout\"}",
    )
    .await;
    assert!(cut >= 40, "{cut} connections counted as cut");
}

/// Idle keep-alive connections and request bodies that stop halfway hold connections too:
/// both are closed at the idle timeout; a keep-alive connection outlives the header-read
/// timeout (that one is only for a head in progress), and an open `/watch` stream outlives
/// both (its response is in progress; heartbeats every 5 s).
#[tokio::test]
async fn idle_and_stalled_connections_close_but_streams_do_not() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC", "1"),
            ("PYOCO_HTTP_IDLE_TIMEOUT_SEC", "3"),
        ],
    )
    .await;
    gw.wait_nats_connected().await;
    let (code, body) = {
        let r = http()
            .post(gw.url("/runs"))
            .json(&json!({"flow_name": "main", "tag": "nobody"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(code, 200, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_string();

    let watch = {
        let url = gw.url(&format!("/runs/{run_id}/watch?timeout_sec=8"));
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut events = sse_events(http().get(url).send().await.unwrap());
            let mut seen = vec![];
            while let Some(ev) = events.next().await {
                let ev = ev.expect("the stream is not cut");
                seen.push((ev.event.clone(), t0.elapsed()));
            }
            (seen, t0.elapsed())
        })
    };

    // Keep-alive: still usable after the header-read timeout, closed at the idle timeout.
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    assert_eq!(get_on(&mut s, "/health").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get_on(&mut s, "/health").await.unwrap().0,
        200,
        "an idle keep-alive connection outlives the header-read timeout"
    );
    let (closed, _) = wait_closed(&mut s, Duration::from_secs(8)).await;
    let closed = closed.expect("idle connection closed");
    assert!(
        closed >= Duration::from_millis(2500) && closed < Duration::from_millis(5000),
        "idle connection closed after {closed:?} (idle timeout 3 s)"
    );

    // A body that stops halfway.
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(
        b"POST /runs HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"flow",
    )
    .await
    .unwrap();
    let (closed, sent) = wait_closed(&mut s, Duration::from_secs(8)).await;
    let closed = closed.expect("stalled body closed");
    assert!(
        closed >= Duration::from_millis(2500) && closed < Duration::from_millis(5000),
        "stalled body closed after {closed:?}"
    );
    assert!(
        !sent.starts_with(b"HTTP/1.1 5"),
        "{}",
        String::from_utf8_lossy(&sent)
    );

    let (seen, lasted) = watch.await.unwrap();
    for reason in ["idle_timeout", "body_stalled"] {
        let n = metric(
            &gw,
            &format!("pyoco_http_connections_closed_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n >= 1, "{reason}: {n}");
    }
    assert_eq!(
        seen.first().map(|e| e.0.as_str()),
        Some("snapshot"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(e, at)| e == "heartbeat" && *at > Duration::from_secs(4)),
        "heartbeats past both timeouts: {seen:?}"
    );
    assert!(
        lasted >= Duration::from_millis(7500),
        "the stream ran its own timeout_sec, not cut by the idle timeout: {lasted:?}"
    );
}

/// Connection flood: more connections than the gateway serves. Over the cap a connection
/// waits up to 1 s for a slot (taken if one frees), then gets a `503` naming the setting; a
/// flood far past it is refused without piling up tasks. Requests on accepted connections
/// are served normally throughout, and the gateway serves everyone again once the flood ends.
#[tokio::test]
async fn connection_flood_past_the_cap() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("PYOCO_HTTP_MAX_CONNECTIONS", "16"),
            ("PYOCO_SSE_MAX_STREAMS", "8"),
        ],
    )
    .await;
    // Take every slot with keep-alive connections (each served once).
    let mut held = vec![];
    for _ in 0..16 {
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        assert_eq!(get_on(&mut s, "/health").await.unwrap().0, 200);
        held.push(s);
    }
    // One more: a clear 503 after the short wait.
    let t = Instant::now();
    let r = fresh_client().get(gw.url("/health")).send().await.unwrap();
    let waited = t.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("too many open connections: 16 are open")
            && detail.contains("PYOCO_HTTP_MAX_CONNECTIONS"),
        "{detail}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A slot that frees while a connection waits is given to it.
    let waiter = {
        let target = addr(&gw);
        tokio::spawn(async move {
            let mut s = TcpStream::connect(target).await.unwrap();
            let code = get_on(&mut s, "/health").await.unwrap().0;
            (code, s)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held.pop());
    let (code, s) = waiter.await.unwrap();
    assert_eq!(code, 200, "the waiting connection got the slot");
    held.push(s); // every slot taken again

    // A flood of 400 at once: every one answered 503 or closed, none served, none hanging.
    let t = Instant::now();
    let flood: Vec<_> = (0..400)
        .map(|_| {
            let target = addr(&gw);
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(target).await else {
                    return None;
                };
                let _ = s
                    .write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
                    .await;
                let (closed, got) = wait_closed(&mut s, Duration::from_secs(10)).await;
                assert!(
                    closed.is_some(),
                    "a refused connection was left hanging: {}",
                    String::from_utf8_lossy(&got)
                );
                Some(got)
            })
        })
        .collect();
    let (mut refused, mut reset) = (0, 0);
    for f in flood {
        match f.await.unwrap() {
            Some(got) if got.is_empty() => reset += 1,
            Some(got) => {
                let text = String::from_utf8_lossy(&got);
                assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
                refused += 1;
            }
            None => reset += 1,
        }
    }
    eprintln!(
        "flood: {refused} answered 503, {reset} closed without an answer, in {:?}",
        t.elapsed()
    );
    assert!(refused > 0);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Accepted connections were never refused or failed meanwhile.
    for s in held.iter_mut() {
        assert_eq!(get_on(s, "/health").await.unwrap().0, 200);
    }
    drop(held);
    let ok = wait_until(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || async {
            matches!(fresh_client().get(gw.url("/health")).send().await, Ok(r) if r.status() == 200)
        },
    )
    .await;
    assert!(ok, "served again after the flood");
    assert!(metric(&gw, "pyoco_http_connections_refused_total").await >= 401);
    let open = metric(&gw, "pyoco_http_connections_open").await;
    assert!(open <= 2, "only the metrics request itself is open: {open}");
    assert!(!gw.log_text().contains("panicked"), "{}", gw.log_text());
}

/// The cap is only a cap if the gateway can open that many sockets: it raises its soft
/// open-files limit at start (the usual soft limit, 1024, would fail accepts well below the
/// default cap of 4096).
#[tokio::test]
async fn the_open_files_limit_fits_the_connection_cap() {
    let nats = NatsServer::start().await;
    let port = free_port();
    // Started with the usual soft limit of 1024.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""])
        .arg(bin_path("pyoco-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--nats-url", &nats.url()]);
    scrub_pyoco_env(&mut cmd);
    cmd.env("PYOCO_LOAD_DOTENV", "0");
    let mut gw = Daemon::spawn("pyoco-server(ulimit 1024)", cmd);
    wait_healthy(&mut gw, &format!("http://127.0.0.1:{port}"), GATEWAY_START).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (soft, hard) = (nums[0], nums[1]);
    assert!(soft >= hard.min(4096 + 512), "{line}");
    assert!(soft > 1024 || hard <= 1024, "{line}");
}

/// Watch streams each hold a connection: a stream cap at or above the connection cap would
/// let streams take every connection (and the stream 429 would never be reached). Refused at
/// start, naming both settings.
#[tokio::test]
async fn stream_cap_must_leave_connections_for_requests() {
    let out = run_workspace_bin(
        "pyoco-server",
        &["--port", "0"],
        &[
            ("PYOCO_HTTP_MAX_CONNECTIONS", "100"),
            ("PYOCO_LOAD_DOTENV", "0"),
        ],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains("PYOCO_HTTP_MAX_CONNECTIONS") && err.contains("PYOCO_SSE_MAX_STREAMS"),
        "{err}"
    );
}

/// 10 000 bogus API keys as fast as 64 connections send them, then wrong secrets for a real
/// key id (each costs a PBKDF2): all refused in bounded time; the negative cache fills on its
/// own so the valid key stays cached and is answered fast, during and after.
#[tokio::test]
async fn ten_thousand_bogus_keys_do_not_thrash_the_cache() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &auth_env()).await;
    gw.wait_nats_connected().await;
    let (key, record) = mint_key(&nats, "tenant-a", 200_000).await;
    let t = Instant::now();
    assert_eq!(
        keyed(reqwest::Method::GET, &gw.url("/workers"), &key)
            .await
            .0,
        200
    );
    eprintln!("first verification of the valid key: {:?}", t.elapsed());

    let probe = {
        let url = gw.url("/workers");
        let key = key.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let stop = Instant::now() + Duration::from_secs(600);
            let mut n = 0;
            while Instant::now() < stop {
                let t = Instant::now();
                let (code, _) = keyed(reqwest::Method::GET, &url, &key).await;
                assert_eq!(code, 200);
                worst = worst.max(t.elapsed());
                n += 1;
                if n >= 40 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            worst
        })
    };
    let client = http();
    let t = Instant::now();
    let url = gw.url("/workers");
    let bogus = futures::stream::iter(0..10_000u32)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let k = format!(
                    "pyoco_{:024x}.{}",
                    (i as u128) << 40 | 0xbad,
                    "s".repeat(32)
                );
                client
                    .get(url)
                    .header("X-API-Key", k)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<u16>>()
        .await;
    let flood_time = t.elapsed();
    assert!(bogus.iter().all(|c| *c == 403), "all refused");
    // Wrong secrets for the real key id: PBKDF2 each, at most 4 at once.
    let wrong = futures::stream::iter(0..16u32)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            let id = record.key_id.clone();
            async move {
                let k = format!("pyoco_{id}.wrong-secret-{i:08}-xxxxxxxx");
                client
                    .get(url)
                    .header("X-API-Key", k)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<u16>>()
        .await;
    assert!(wrong.iter().all(|c| *c == 403), "{wrong:?}");
    // Far more wrong secrets at once than may wait for a PBKDF2 turn: the excess is answered
    // 503 at once instead of queueing behind the others.
    let (_, cheap) = mint_key(&nats, "tenant-c", 5_000).await;
    let t = Instant::now();
    let burst = futures::stream::iter(0..150u32)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            let id = cheap.key_id.clone();
            async move {
                let r = client
                    .get(url)
                    .header(
                        "X-API-Key",
                        format!("pyoco_{id}.burst-secret-{i:08}-xxxxxxx"),
                    )
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        })
        .buffer_unordered(150)
        .collect::<Vec<(u16, String)>>()
        .await;
    let busy = burst.iter().filter(|(c, _)| *c == 503).count();
    eprintln!(
        "burst of 150 wrong secrets: {busy} answered 503 in {:?}",
        t.elapsed()
    );
    assert!(busy > 0, "some were refused at once");
    for (code, body) in &burst {
        assert!(
            *code == 403
                || (*code == 503 && body.contains("too many api key verifications in progress")),
            "{code} {body}"
        );
    }
    let worst_during = probe.await.unwrap();
    eprintln!(
        "10 000 bogus keys in {flood_time:?}; worst valid-key latency meanwhile {worst_during:?}"
    );
    assert!(flood_time < Duration::from_secs(60), "{flood_time:?}");
    assert!(
        worst_during < Duration::from_millis(1500),
        "the valid key waited {worst_during:?}"
    );
    // After: still cached (no PBKDF2, no KV read), so fast.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(keyed(reqwest::Method::GET, &url, &key).await.0, 200);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(250),
        "valid key after the flood: {worst:?}"
    );
}

/// The revocation race: verifications of a key are in flight (its record keeps changing, so
/// the cache keeps being invalidated and the key re-verified) when the revocation lands. A
/// verification that read the record before the revocation must not cache "valid" after it:
/// within a second every request is refused, and stays refused (the cache TTL is 300 s).
#[tokio::test]
async fn revocation_during_inflight_verifications() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &auth_env()).await;
    gw.wait_nats_connected().await;
    // Cheap verifications, so many are in flight around the revocation.
    let (key, mut record) = mint_key(&nats, "tenant-a", 2_000).await;
    assert_eq!(
        keyed(reqwest::Method::GET, &gw.url("/workers"), &key)
            .await
            .0,
        200
    );
    let stop_at = Instant::now() + Duration::from_secs(5);
    let hammers: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/workers");
            let key = key.clone();
            tokio::spawn(async move {
                let mut seen = vec![];
                while Instant::now() < stop_at {
                    let sent = Instant::now();
                    let (code, _) = keyed(reqwest::Method::GET, &url, &key).await;
                    seen.push((sent, code));
                }
                seen
            })
        })
        .collect();
    // Touch the record (same content) for 1.5 s: every write invalidates the cached key.
    let touch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < touch_until {
        put_record(&nats, &record).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    record.revoked_at = Some(1_700_000_100.0);
    put_record(&nats, &record).await;
    let revoked = Instant::now();
    let mut before = 0;
    for h in hammers {
        for (sent, code) in h.await.unwrap() {
            if sent + Duration::from_millis(50) < revoked && code == 200 {
                before += 1;
            }
            if sent > revoked + Duration::from_secs(1) {
                assert_eq!(
                    code,
                    403,
                    "a request {:?} after the revocation",
                    sent - revoked
                );
            }
            assert!(code == 200 || code == 403, "{code}");
        }
    }
    assert!(before > 0, "the key worked before the revocation");
    assert_eq!(
        keyed(reqwest::Method::GET, &gw.url("/workers"), &key)
            .await
            .0,
        403
    );
}

/// Cross-tenant access on every endpoint that takes a run id or lists: tenant A's key never
/// reads, watches or cancels tenant B's run (404 `run not found`, as for a run that does not
/// exist: the id's existence is not revealed) and never sees it in any list, with any filter,
/// in `/workers` or `/metrics` (`/metrics` is gateway-wide counts by status and tag, never run
/// ids or flow names).
#[tokio::test]
async fn cross_tenant_on_every_endpoint() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &auth_env()).await;
    gw.wait_nats_connected().await;
    let (key_a, _) = mint_key(&nats, "tenant-a", 1_000).await;
    let (key_b, _) = mint_key(&nats, "tenant-b", 1_000).await;
    let submit = |key: String, flow: &'static str, tag: &'static str| {
        let url = gw.url("/runs");
        async move {
            let r = http()
                .post(url)
                .header("X-API-Key", key)
                .json(&json!({"flow_name": flow, "tag": tag, "params": {"secret": "b-only"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let run_b = submit(key_b.clone(), "flow-of-tenant-b", "tagb").await;
    let _run_a = submit(key_a.clone(), "flow-of-tenant-a", "taga").await;
    // A worker busy with B's run.
    let js = nats.jetstream().await;
    let now = 1.0e10;
    js.get_key_value("pyoco_workers")
        .await
        .unwrap()
        .put(
            "w-b",
            serde_json::to_vec(
                &json!({"worker_id": "w-b", "state": "RUNNING", "tags": ["tagb"],
                "current_run_id": run_b, "last_run_id": run_b, "last_seen_at": now,
                "last_heartbeat_at": now, "hidden": false}),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    let indexed = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            keyed(reqwest::Method::GET, &gw.url("/runs"), &key_b)
                .await
                .1
                .contains(&run_b)
                && keyed(reqwest::Method::GET, &gw.url("/workers"), &key_b)
                    .await
                    .1
                    .contains("w-b")
        },
    )
    .await;
    assert!(indexed);

    let not_found = (404, json!({"detail": "run not found"}).to_string());
    use reqwest::Method;
    for (m, path) in [
        (Method::GET, format!("/runs/{run_b}")),
        (Method::GET, format!("/runs/{run_b}/tasks")),
        (Method::GET, format!("/runs/{run_b}/watch")),
        (Method::POST, format!("/runs/{run_b}/cancel")),
    ] {
        let (code, body) = keyed(m.clone(), &gw.url(&path), &key_a).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, body.to_string()), not_found, "{m} {path}");
    }
    // B's run was not touched by A's cancel.
    let (_, snap) = keyed(Method::GET, &gw.url(&format!("/runs/{run_b}")), &key_b).await;
    let snap: Value = serde_json::from_str(&snap).unwrap();
    assert_eq!(snap["status"], "PENDING", "{snap}");
    assert_eq!(snap["cancel_requested_at"], Value::Null, "{snap}");

    let leaks = |text: &str| text.contains(&run_b) || text.contains("flow-of-tenant-b");
    for q in [
        "",
        "?status=PENDING",
        "?flow=flow-of-tenant-b",
        "?tag=tagb",
        "?include=full",
        "?include=full&flow=flow-of-tenant-b",
        "?updated_after=0",
        "?updated_after=0&limit=1",
        "?limit=200",
    ] {
        let (code, text) = keyed(Method::GET, &gw.url(&format!("/runs{q}")), &key_a).await;
        assert_eq!(code, 200, "{q}: {text}");
        assert!(!leaks(&text), "GET /runs{q} shows B's run: {text}");
    }
    // Every page of a cursor walk.
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let q = match &cursor {
            Some(c) => format!("/runs?updated_after=0&limit=1&cursor={c}"),
            None => "/runs?updated_after=0&limit=1".to_string(),
        };
        let (_, text) = keyed(Method::GET, &gw.url(&q), &key_a).await;
        assert!(!leaks(&text), "{q}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let (_, workers) = keyed(Method::GET, &gw.url("/workers?scope=all"), &key_a).await;
    assert!(workers.contains("w-b") && !leaks(&workers), "{workers}");
    let (_, metrics) = keyed(Method::GET, &gw.url("/metrics"), &key_a).await;
    assert!(!leaks(&metrics), "{metrics}");
}

/// Oversized and malformed submits: every one a 4xx naming the field or the limit, none a
/// 5xx, and the gateway healthy afterwards. (Smaller cases: `gateway_api`, see the table.)
#[tokio::test]
async fn oversized_and_malformed_submits() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let post = |body: Vec<u8>| {
        let url = gw.url("/runs");
        async move {
            match fresh_client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None, // refused before the body was sent; checked by `healthy` below
            }
        }
    };
    let mib = 1024 * 1024;
    let loc = |v: &str| -> Value {
        serde_json::from_str::<Value>(v)
            .map(|v| v["detail"][0]["loc"].clone())
            .unwrap_or(Value::Null)
    };
    let (code, body) = post(
        json!({"flow_name": "f".repeat(mib)})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!((code, loc(&body)), (422, json!(["body", "flow_name"])));
    let (code, body) = post(
        json!({"flow_name": "main", "tag": "t".repeat(mib)})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!((code, loc(&body)), (422, json!(["body", "tag"])));
    // Params above the NATS max_payload (1 MiB) but within the body limit.
    let (code, body) = post(
        json!({"flow_name": "main", "params": {"blob": "p".repeat(mib + mib / 2)}})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("params"), "{body}");
    // Deep JSON: a recursion limit, not a stack overflow.
    let deep = format!(
        "{{\"flow_name\":\"main\",\"params\":{{\"a\":{}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (code, body) = post(deep.into_bytes()).await.unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("json_invalid"), "{body}");
    // Invalid UTF-8 inside a string.
    let (code, body) = post(b"{\"flow_name\":\"ma\xffin\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(code, 422, "{body}");
    // 50 MiB: refused (413) or cut off while sending; never a 5xx, never buffered whole.
    let t = Instant::now();
    let huge = format!(
        "{{\"flow_name\":\"main\",\"params\":{{\"a\":\"{}\"}}}}",
        "x".repeat(50 * mib)
    );
    if let Some((code, body)) = post(huge.into_bytes()).await {
        assert_eq!(
            (code, body.as_str()),
            (
                413,
                r#"{"detail":"request body too large: at most 2097152 bytes"}"#
            )
        );
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // YAML bombs on /runs/yaml: a billion-laughs alias expansion and deep nesting.
    let laughs =
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
            .to_string();
    let deep_yaml = format!(
        "version: 1\nflow:\n  graph: x\ndefaults: {}1{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    for (yaml, why) in [(laughs, "invalid_yaml"), (deep_yaml, "too_deep")] {
        let t = Instant::now();
        let form = reqwest::multipart::Form::new()
            .part(
                "workflow",
                reqwest::multipart::Part::bytes(yaml.into_bytes()).file_name("flow.yaml"),
            )
            .text("flow_name", "main");
        let r = fresh_client()
            .post(gw.url("/runs/yaml"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(code, 422, "{body}");
        assert!(body.contains(why), "{body}");
        // The scanner is quadratic in bracket depth: refused before it runs.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{why}: {:?}",
            t.elapsed()
        );
    }
    // Headers: one huge header, and very many.
    // Heads up to 64 KiB are served (large cookies, long keys)…
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    let (code, _, _) = get_on(&mut s, &format!("/health?pad={}", "p".repeat(32 * 1024)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    // …larger ones are refused: slow heads must not pin megabytes per connection.
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(
        format!(
            "GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
            "h".repeat(100 * 1024)
        )
        .as_bytes(),
    )
    .await
    .ok();
    let (_, got) = wait_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431") || got.is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: gw\r\n{many}\r\n").as_bytes())
        .await
        .ok();
    let (_, got) = wait_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431") || got.is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let r = fresh_client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["nats"], "connected");
    let log = gw.log_text();
    assert!(
        !log.contains("panicked") && !log.contains("stack overflow"),
        "{log}"
    );
}

/// SSE stream exhaustion in all (the per-tenant cap: `gateway_api`): a 429 naming the total
/// limit and its setting.
#[tokio::test]
async fn watch_streams_in_all_are_capped_with_a_429() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_SSE_MAX_STREAMS", "2")]).await;
    gw.wait_nats_connected().await;
    let r = http()
        .post(gw.url("/runs"))
        .json(&json!({"flow_name": "main", "tag": "nobody"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = gw.url(&format!("/runs/{id}/watch?timeout_sec=30"));
    let a = fresh_client().get(&url).send().await.unwrap();
    let b = fresh_client().get(&url).send().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = fresh_client().get(&url).send().await.unwrap();
    assert_eq!(c.status(), 429);
    let detail = c.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        detail,
        "too many open watch streams: 2 are open on this gateway (its limit); close some (or raise PYOCO_SSE_MAX_STREAMS)"
    );
    // Ordinary requests are still served while the streams are open.
    assert_eq!(
        fresh_client()
            .get(gw.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop((a, b));
}
