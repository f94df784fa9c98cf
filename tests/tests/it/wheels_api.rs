//! The wheel registry (`/wheels*`): every check and detail string, the auth matrix, a large
//! upload with bounded gateway memory, bad input leaving nothing in the store, and interop
//! with the original's client and gateway (objects and meta written by either are read by
//! the other).

use pyoco_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const PEPPER: &str = "pepper-for-tests";

/// Builds a wheel by hand with Python's zipfile. `mode`: `ok`, `traversal` (a `../` member),
/// `noinfo` (no dist-info). `pad` bytes of random (incompressible) data go into `pkg/blob.bin`.
async fn mk_wheel(
    dir: &TestDir,
    dist: &str,
    version: &str,
    mode: &str,
    pad: u64,
) -> std::path::PathBuf {
    let script = dir.write(
        "mkwheel.py",
        r#"import os, sys, zipfile
out_dir, dist, version, mode, pad = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
out = f"{out_dir}/{dist}-{version}-py3-none-any.whl"
info = f"{dist}-{version}.dist-info/"
files = {
    f"{dist}/__init__.py": "def hello():\n    return 'hi'\n",
    info + "METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nSummary: test\n\n" + "Usage text. " * 10 + "\n",
    info + "WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    info + "entry_points.txt": f"[pyoco.tasks]\nhello = {dist}:hello\n",
}
if mode == "traversal":
    files["../evil.py"] = "x = 1\n"
if mode == "bare":
    del files[info + "entry_points.txt"]
    files[info + "METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\nshort\n"
if mode == "noinfo":
    files = {f"{dist}/__init__.py": "x = 1\n"}
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for n, t in files.items():
        z.writestr(n, t)
    if pad:
        with z.open(f"{dist}/blob.bin", "w", force_zip64=True) as f:
            left = pad
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
    z.writestr(info + "RECORD", "")
print(out)
"#,
    );
    let out = run_python_program(
        &py311(),
        &[
            script.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            dist,
            version,
            mode,
            &pad.to_string(),
        ],
        &[],
    )
    .await;
    out.assert_success();
    std::path::PathBuf::from(out.stdout_text().trim())
}

async fn upload_bytes(
    base: &str,
    filename: &str,
    data: Vec<u8>,
    tags: Option<&str>,
    replace: Option<&str>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    if let Some(r) = replace {
        form = form.text("replace", r.to_string());
    }
    if let Some(t) = tags {
        form = form.text("tags", t.to_string());
    }
    form = form.part(
        "wheel",
        reqwest::multipart::Part::bytes(data)
            .file_name(filename.to_string())
            .mime_str("application/octet-stream")
            .unwrap(),
    );
    let mut req = http().post(format!("{base}/wheels")).multipart(form);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn upload(base: &str, path: &std::path::Path, tags: Option<&str>) -> (u16, Value) {
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    upload_bytes(base, &name, std::fs::read(path).unwrap(), tags, None, None).await
}

async fn get_json(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = http().get(url);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn endpoints_checks_and_detail_strings() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    let base = gw.base_url();
    let dir = TestDir::new("wheels-api");
    let (s, v) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!((s, v.clone()), (200, Value::Array(vec![])), "{v}");
    let (_, spec) = get_json(&gw.url("/openapi.json"), None).await;
    for p in ["/wheels", "/wheels/history", "/wheels/{wheel_name}"] {
        assert!(spec["paths"][p].is_object(), "openapi.json documents {p}");
    }

    let w1 = mk_wheel(&dir, "demo_pkg", "1.0.0", "ok", 0).await;
    let bytes1 = std::fs::read(&w1).unwrap();
    let (s, v) = upload(&base, &w1, Some(" cpu, linux,cpu,, ")).await;
    assert_eq!(s, 200, "{v}");
    let sha = hex::encode(Sha256::digest(&bytes1));
    assert_eq!(v["name"], "demo_pkg-1.0.0-py3-none-any.whl");
    assert_eq!(v["size_bytes"], bytes1.len() as u64);
    assert_eq!(v["sha256_hex"], sha.as_str());
    assert_eq!(v["tags"], serde_json::json!(["cpu", "linux"]));
    assert!(v["digest"].as_str().unwrap().starts_with("SHA-256="));
    assert_eq!(
        v["sha256_b64"].as_str().unwrap(),
        &v["digest"].as_str().unwrap()[8..]
    );
    assert!(!v["nuid"].as_str().unwrap().is_empty());
    assert!(!v["mtime"].as_str().unwrap().is_empty());

    // The PEP 440 / PEP 503 version rule: same canonical name, equal or lower → 409.
    let (s, v) = upload(&base, &w1, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (409, "wheel version already exists; bump version")
    );
    let same = mk_wheel(&dir, "Demo.Pkg", "1.0", "ok", 0).await;
    let (s, v) = upload(&base, &same, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (409, "wheel version already exists; bump version"),
        "1.0 == 1.0.0"
    );
    let w2 = mk_wheel(&dir, "demo_pkg", "1.10", "ok", 0).await;
    assert_eq!(upload(&base, &w2, None).await.0, 200);
    let low = mk_wheel(&dir, "demo_pkg", "1.9", "ok", 0).await;
    let (s, v) = upload(&base, &low, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (
            409,
            "wheel version must be greater than existing latest version"
        )
    );

    // Name, filename, tags: the original's 422 details, in its order.
    let (s, v) = upload_bytes(&base, "../evil.whl", bytes1.clone(), None, None, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (422, "invalid wheel name")
    );
    let (s, v) = upload_bytes(
        &base,
        "demo-pkg.whl",
        bytes1.clone(),
        Some("bad tag"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (422, "invalid wheel filename")
    );
    let (s, v) = upload_bytes(
        &base,
        "other-1.0-py3-none-any.whl",
        bytes1.clone(),
        Some("a.b"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (422, "invalid wheel tags")
    );
    let (s, v) = upload_bytes(
        &base,
        "other-1.0-py3-none-any.whl",
        bytes1.clone(),
        None,
        Some("maybe"),
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["detail"][0]["loc"],
        serde_json::json!(["body", "replace"])
    );

    // Not a zip, a traversal member, no dist-info: 422 naming the reason, nothing stored.
    let (s, v) = upload_bytes(
        &base,
        "junk-1.0-py3-none-any.whl",
        b"not a zip at all".repeat(100),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("invalid wheel file: not a zip archive"),
        "{v}"
    );
    let trav = mk_wheel(&dir, "trav", "1.0", "traversal", 0).await;
    let (s, v) = upload(&base, &trav, None).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("'..' in a member path"),
        "{v}"
    );
    let noinfo = mk_wheel(&dir, "noinfo", "1.0", "noinfo", 0).await;
    let (s, v) = upload(&base, &noinfo, None).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("no *.dist-info/METADATA"),
        "{v}"
    );
    let (_, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(
        names(&list),
        vec![
            "demo_pkg-1.0.0-py3-none-any.whl",
            "demo_pkg-1.10-py3-none-any.whl"
        ]
    );
    assert_eq!(list[0]["tags"], serde_json::json!(["cpu", "linux"]));

    // Download: streamed bytes, headers.
    let r = http()
        .get(gw.url("/wheels/demo_pkg-1.0.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"demo_pkg-1.0.0-py3-none-any.whl\""
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes1);
    for bad in ["/wheels/nope-1.0-py3-none-any.whl", "/wheels/not..a..wheel"] {
        let (s, v) = get_json(&gw.url(bad), None).await;
        assert_eq!(
            (s, v["detail"].as_str().unwrap()),
            (404, "wheel not found"),
            "{bad}"
        );
    }

    // Delete, then 404; history records both actions, newest first, filters work.
    let r = http()
        .delete(gw.url("/wheels/demo_pkg-1.0.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"name": "demo_pkg-1.0.0-py3-none-any.whl", "deleted": true})
    );
    let r = http()
        .delete(gw.url("/wheels/demo_pkg-1.0.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (s, h) = get_json(&gw.url("/wheels/history"), None).await;
    assert_eq!(s, 200);
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[0]["action"], "delete");
    assert_eq!(h[0]["sha256_hex"], sha.as_str());
    assert_eq!(h[0]["tags"], serde_json::json!(["cpu", "linux"]));
    assert_eq!(h[0]["replace"], Value::Null);
    assert_eq!(h[2]["action"], "upload");
    assert_eq!(h[2]["replace"], true);
    assert_eq!(
        h[2]["actor"],
        serde_json::json!({"tenant_id": null, "api_key_id": null})
    );
    assert!(h[2]["source"]["host"].as_str().is_some());
    assert_eq!(h[0]["event_id"].as_str().unwrap().len(), 32);
    let (_, h) = get_json(&gw.url("/wheels/history?action=UPLOAD&limit=1"), None).await;
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["wheel_name"], "demo_pkg-1.10-py3-none-any.whl");
    let (_, h) = get_json(
        &gw.url("/wheels/history?wheel_name=demo_pkg-1.0.0-py3-none-any.whl"),
        None,
    )
    .await;
    assert_eq!(h.as_array().unwrap().len(), 2);
    let (s, v) = get_json(&gw.url("/wheels/history?action=rename"), None).await;
    assert_eq!((s, v["detail"].as_str().unwrap()), (422, "invalid action"));
    let (s, v) = get_json(&gw.url("/wheels/history?wheel_name=x/y"), None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (422, "invalid wheel name")
    );
    let (s, v) = get_json(&gw.url("/wheels/history?limit=501"), None).await;
    assert_eq!(s, 422);
    assert_eq!(v["detail"][0]["loc"], serde_json::json!(["query", "limit"]));

    // A deleted version is no longer "existing": re-uploading 1.0.0 is still lower than 1.10.
    let (s, _) = upload(&base, &w1, None).await;
    assert_eq!(s, 409);

    // Form errors: not multipart, no wheel part, oversized extra parts.
    let r = http()
        .post(gw.url("/wheels"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"][0]["type"], "missing");
    assert_eq!(v["detail"][0]["loc"], serde_json::json!(["body", "wheel"]));
    let form = reqwest::multipart::Form::new().text("tags", "a");
    let r = http()
        .post(gw.url("/wheels"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let form = reqwest::multipart::Form::new().text("junk", "x".repeat(2 << 20));
    let r = http()
        .post(gw.url("/wheels"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("unexpected form parts too large"),
        "{v}"
    );
}

#[tokio::test]
async fn too_large_is_413_and_a_big_upload_streams_with_bounded_memory() {
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[("PYOCO_WHEEL_MAX_FILE_BYTES", "120000000")]).await;
    let base = gw.base_url();
    let dir = TestDir::new("wheels-big");
    let big = mk_wheel(&dir, "big", "1.0", "ok", 96 * 1024 * 1024).await;
    let len = std::fs::metadata(&big).unwrap().len();
    let pid = gw.daemon().pid();
    let rss = |field: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss("VmRSS:");
    // Streamed from disk so the client does not hold it either.
    let file = tokio::fs::File::open(&big).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_util_stream(file));
    let part = reqwest::multipart::Part::stream_with_length(body, len)
        .file_name("big-1.0-py3-none-any.whl")
        .mime_str("application/octet-stream")
        .unwrap();
    let form = reqwest::multipart::Form::new().part("wheel", part);
    let r = http()
        .post(format!("{base}/wheels"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["size_bytes"], len);
    let peak = rss("VmHWM:");
    assert!(
        peak < before + 48 * 1024 * 1024,
        "gateway peak RSS {peak} grew more than 48 MiB over {before} for a {len}-byte upload"
    );
    // Download streams the same bytes back.
    let r = http()
        .get(gw.url("/wheels/big-1.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap();
    let got = r.bytes().await.unwrap();
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(std::fs::read(&big).unwrap())
    );

    // Over the per-wheel limit: 413, nothing listed, no chunks left in the stream.
    let over = vec![0u8; 120_000_001];
    let (s, v) = upload_bytes(&base, "big-2.0-py3-none-any.whl", over, None, None, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap_or("")),
        (413, "wheel too large")
    );
    let (_, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(names(&list), vec!["big-1.0-py3-none-any.whl"]);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut st = js.get_stream("OBJ_pyoco_wheels").await.unwrap();
    let info = st.info().await.unwrap();
    assert!(
        info.state.bytes < len + 4 * 1024 * 1024,
        "{} bytes in the object stream after a refused upload",
        info.state.bytes
    );
}

fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

#[tokio::test]
async fn api_key_mode_protects_every_wheel_endpoint_and_records_the_actor() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("PYOCO_HTTP_AUTH_MODE", "api_key"),
            ("PYOCO_AUTH_PEPPER", PEPPER),
        ],
    )
    .await;
    let base = gw.base_url();
    let out = orig_admin(
        &nats.url(),
        &["api-key", "create", "--tenant", "team-a"],
        &[("PYOCO_AUTH_PEPPER", PEPPER)],
    )
    .await;
    out.assert_success();
    let k = out.stdout_json();
    let (key, key_id) = (
        k["api_key"].as_str().unwrap(),
        k["key_id"].as_str().unwrap(),
    );
    let dir = TestDir::new("wheels-auth");
    let w = mk_wheel(&dir, "authpkg", "1.0", "ok", 0).await;
    let data = std::fs::read(&w).unwrap();
    let name = "authpkg-1.0-py3-none-any.whl";

    let (s, v) = upload_bytes(&base, name, data.clone(), None, None, None).await;
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (401, "api key required")
    );
    let (s, v) = upload_bytes(&base, name, data.clone(), None, None, Some("pyoco_bad")).await;
    assert_eq!(s, 403, "{v}");
    for p in ["/wheels", "/wheels/history", &format!("/wheels/{name}")] {
        let (s, v) = get_json(&gw.url(p), None).await;
        assert_eq!(
            (s, v["detail"].as_str().unwrap()),
            (401, "api key required"),
            "{p}"
        );
    }
    let r = http()
        .delete(gw.url(&format!("/wheels/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (s, v) = upload_bytes(&base, name, data, None, None, Some(key)).await;
    assert_eq!(s, 200, "{v}");
    let (s, list) = get_json(&gw.url("/wheels"), Some(key)).await;
    assert_eq!((s, names(&list)), (200, vec![name.to_string()]));
    let (_, h) = get_json(&gw.url("/wheels/history"), Some(key)).await;
    assert_eq!(h[0]["actor"]["tenant_id"], "team-a");
    assert_eq!(h[0]["actor"]["api_key_id"], key_id);
}

#[tokio::test]
async fn original_client_and_gateway_interoperate_with_ours() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    let orig = OrigGateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("wheels-interop");
    let w1 = mk_wheel(&dir, "interop_pkg", "1.0", "ok", 300 * 1024).await;
    let w1s = w1.to_str().unwrap();

    // The original's client against our gateway.
    let out = orig_client(
        &gw.base_url(),
        &["wheel-upload", "--wheel-file", w1s, "--tags", "cpu,gpu"],
        &[],
    )
    .await;
    out.assert_success();
    let v = out.stdout_json();
    assert_eq!(v["tags"], serde_json::json!(["cpu", "gpu"]));
    let out = orig_client(&gw.base_url(), &["wheels"], &[]).await;
    out.assert_success();
    assert_eq!(
        names(&out.stdout_json()),
        vec!["interop_pkg-1.0-py3-none-any.whl"]
    );
    let out = orig_client(&gw.base_url(), &["wheel-upload", "--wheel-file", w1s], &[]).await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr_text().contains("bump version"),
        "{}",
        out.stderr_text()
    );

    // The original's gateway reads what ours wrote: tags, size, bytes.
    let (s, list) = get_json(&orig.url("/wheels"), None).await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["tags"], serde_json::json!(["cpu", "gpu"]));
    assert_eq!(list[0]["size_bytes"], std::fs::metadata(&w1).unwrap().len());
    let got = http()
        .get(orig.url("/wheels/interop_pkg-1.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), std::fs::read(&w1).unwrap());

    // Ours reads what the original's gateway wrote.
    let w2 = mk_wheel(&dir, "interop_pkg", "2.0", "ok", 200 * 1024).await;
    let out = orig_client(
        &orig.base_url(),
        &[
            "wheel-upload",
            "--wheel-file",
            w2.to_str().unwrap(),
            "--tags",
            "linux",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let (_, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(
        names(&list),
        vec![
            "interop_pkg-1.0-py3-none-any.whl",
            "interop_pkg-2.0-py3-none-any.whl"
        ]
    );
    assert_eq!(list[1]["tags"], serde_json::json!(["linux"]));
    let got = http()
        .get(gw.url("/wheels/interop_pkg-2.0-py3-none-any.whl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), std::fs::read(&w2).unwrap());
    // Both gateways' history entries are read by ours; the original's client deletes through ours.
    let out = orig_client(
        &gw.base_url(),
        &["wheel-delete", "--name", "interop_pkg-2.0-py3-none-any.whl"],
        &[],
    )
    .await;
    out.assert_success();
    assert_eq!(
        out.stdout_text(),
        "{\"name\": \"interop_pkg-2.0-py3-none-any.whl\", \"deleted\": true}\n"
    );
    let (_, list) = get_json(&orig.url("/wheels"), None).await;
    assert_eq!(names(&list), vec!["interop_pkg-1.0-py3-none-any.whl"]);
    let out = orig_client(&gw.base_url(), &["wheel-history", "--limit", "10"], &[]).await;
    out.assert_success();
    let h = out.stdout_json();
    let actions: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["delete", "upload", "upload"]);
    assert_eq!(h[0]["tags"], serde_json::json!(["linux"]));
}

#[tokio::test]
async fn pyococtl_wheel_commands_print_what_pyoco_client_prints() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    let base = gw.base_url();
    let dir = TestDir::new("wheels-ctl");
    let ctl = |args: Vec<String>| {
        let base = base.clone();
        async move {
            let mut all = vec!["--server".to_string(), base];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_workspace_bin("pyococtl", &refs, &[]).await
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Preflight strict refuses a wheel without entry points or usage docs, with 0.5.1's reasons,
    // before sending anything.
    let bare = mk_wheel(&dir, "bare_pkg", "1.0", "bare", 0).await;
    let out = ctl(s(&[
        "wheel",
        "upload",
        "--wheel-file",
        bare.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    let reason = "- reason: wheel preflight failed: usage documentation is missing (need METADATA description>=80 chars or Project-URL: Documentation,...); entry_points are missing (dist-info/entry_points.txt)";
    assert!(out.stderr_text().contains(reason), "{}", out.stderr_text());
    assert!(out
        .stderr_text()
        .contains("[preflight][warn] METADATA Summary is empty"));
    let orig = orig_client(
        &base,
        &["wheel-upload", "--wheel-file", bare.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(orig.code(), Some(1));
    assert!(
        orig.stderr_text().contains(reason),
        "{}",
        orig.stderr_text()
    );
    let (_, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(list, Value::Array(vec![]));
    let out = ctl(s(&[
        "wheel",
        "upload",
        "--wheel-file",
        bare.to_str().unwrap(),
        "--allow-no-entry-points",
        "--allow-missing-usage-doc",
    ]))
    .await;
    out.assert_success();
    let junk = dir.write("junk-1.0-py3-none-any.whl", "not a zip");
    let out = ctl(s(&[
        "wheel",
        "upload",
        "--wheel-file",
        junk.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(out.code(), Some(2));
    assert!(out
        .stderr_text()
        .contains("wheel preflight failed: wheel file is not a valid zip archive"));
    let out = ctl(s(&[
        "wheel",
        "upload",
        "--wheel-file",
        junk.to_str().unwrap(),
        "--preflight",
        "off",
    ]))
    .await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr_text()
            .contains("HTTP 422 POST /wheels: invalid wheel file: not a zip archive"),
        "{}",
        out.stderr_text()
    );

    // Upload with tags, list, history: the same bytes as pyoco-client's.
    let w = mk_wheel(&dir, "ctl_pkg", "1.0", "ok", 0).await;
    let out = ctl(s(&[
        "wheel",
        "upload",
        "--wheel-file",
        w.to_str().unwrap(),
        "--tags",
        "a, b",
    ]))
    .await;
    out.assert_success();
    let up = out.stdout_json();
    assert_eq!(up["tags"], serde_json::json!(["a", "b"]));
    let ours = ctl(s(&["wheel", "list"])).await;
    let theirs = orig_client(&base, &["wheels"], &[]).await;
    assert_eq!(ours.stdout_text(), theirs.stdout_text());
    let ours = ctl(s(&[
        "wheel", "history", "--action", "upload", "--limit", "5",
    ]))
    .await;
    let theirs = orig_client(
        &base,
        &["wheel-history", "--action", "upload", "--limit", "5"],
        &[],
    )
    .await;
    assert_eq!(ours.stdout_text(), theirs.stdout_text());
    let out = ctl(s(&["wheel", "upload", "--wheel-file", w.to_str().unwrap()])).await;
    assert_eq!(out.code(), Some(1));
    assert!(out
        .stderr_text()
        .contains("HTTP 409 POST /wheels: wheel version already exists; bump version"));

    // Download checks the digest and writes the same bytes.
    let target = dir.join("dl.whl");
    let out = ctl(s(&[
        "wheel",
        "download",
        "--name",
        "ctl_pkg-1.0-py3-none-any.whl",
        "--file",
        target.to_str().unwrap(),
    ]))
    .await;
    out.assert_success();
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&w).unwrap());
    assert_eq!(out.stdout_json()["sha256_hex"], up["sha256_hex"]);

    let out = ctl(s(&[
        "wheel",
        "delete",
        "--name",
        "ctl_pkg-1.0-py3-none-any.whl",
    ]))
    .await;
    out.assert_success();
    assert_eq!(
        out.stdout_text(),
        "{\"name\": \"ctl_pkg-1.0-py3-none-any.whl\", \"deleted\": true}\n"
    );
    let out = ctl(s(&["wheel", "delete", "--name", "../runs"])).await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr_text().contains("HTTP 404"),
        "{}",
        out.stderr_text()
    );
}

async fn obj_stream_bytes(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut st = js.get_stream("OBJ_pyoco_wheels").await.unwrap();
    st.info().await.unwrap().state.bytes
}

#[tokio::test]
async fn nats_outage_mid_upload_is_503_and_leaves_nothing_behind() {
    let mut nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    let base = gw.base_url();
    // 40 MiB sent slowly (1 MiB every 50 ms) so NATS can die halfway.
    let body = futures::stream::unfold(0u32, |i| async move {
        if i == 40 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1 << 20])),
            i + 1,
        ))
    });
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), 40 << 20)
            .file_name("cut-1.0-py3-none-any.whl")
            .mime_str("application/octet-stream")
            .unwrap();
    let form = reqwest::multipart::Form::new().part("wheel", part);
    let req = tokio::spawn(async move {
        let r = http()
            .post(format!("{base}/wheels"))
            .multipart(form)
            .send()
            .await;
        match r {
            Ok(r) => Some((
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )),
            Err(_) => None,
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    nats.kill();
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), req)
        .await
        .expect("the upload must end, not hang")
        .unwrap();
    eprintln!("outage upload answer: {got:?}");
    if let Some((s, v)) = got {
        assert_eq!(s, 503, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .starts_with("nats unavailable"),
            "{v}"
        );
    }
    nats.start_again().await;
    gw.wait_nats_connected().await;
    let (s, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!((s, list), (200, Value::Array(vec![])));
    // The chunks written before the outage are purged once NATS is back.
    let clean = wait_until(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(250),
        || async { obj_stream_bytes(&nats).await < 1 << 20 },
    )
    .await;
    assert!(
        clean,
        "{} bytes of an aborted upload left in the object stream",
        obj_stream_bytes(&nats).await
    );
    let _ = gw.daemon();
}

#[tokio::test]
async fn a_download_whose_content_does_not_match_its_digest_is_cut_short() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("wheels-digest");
    let w = mk_wheel(&dir, "digest_pkg", "1.0", "ok", 400 * 1024).await;
    assert_eq!(upload(&gw.base_url(), &w, None).await.0, 200);
    // Rewrite the meta with another digest, as a corrupted store would present it.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = "digest_pkg-1.0-py3-none-any.whl";
    use base64::Engine;
    let subj = format!(
        "$O.pyoco_wheels.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(name)
    );
    let st = js.get_stream("OBJ_pyoco_wheels").await.unwrap();
    let m = st.get_last_raw_message_by_subject(&subj).await.unwrap();
    let mut meta: Value = serde_json::from_slice(&m.payload).unwrap();
    meta["digest"] = Value::String(format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode([0u8; 32])
    ));
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Rollup", "sub");
    js.publish_with_headers(subj, h, serde_json::to_vec(&meta).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let r = http()
        .get(gw.url(&format!("/wheels/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a corrupt wheel must not arrive as a complete body"
    );
    // pyococtl's download fails and leaves no file.
    let target = dir.join("out.whl");
    let out = run_workspace_bin(
        "pyococtl",
        &[
            "--server",
            &gw.base_url(),
            "wheel",
            "download",
            "--name",
            name,
            "--file",
            target.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    assert!(!target.exists());
    assert!(!dir.join("out.whl.part").exists());
}

/// The scenario of the original's `tests/test_wheel_registry.py` (fake, non-zip bytes): refused by
/// default (422 `invalid wheel file`), accepted as in 0.5 with `PYOCO_WHEEL_CHECK_ARCHIVE=0`.
#[tokio::test]
async fn original_registry_scenario_holds_with_the_archive_check_off() {
    let nats = NatsServer::start().await;
    let strict = Gateway::start(&nats.url(), &[]).await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_WHEEL_CHECK_ARCHIVE", "0")]).await;
    let name = "demo_pkg-0.1.0-py3-none-any.whl";
    let data = b"fake-wheel-bytes-v1".to_vec();
    let (s, v) = upload_bytes(
        &strict.base_url(),
        name,
        data.clone(),
        Some("gpu,linux"),
        Some("true"),
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .starts_with("invalid wheel file: "));

    let (s, body) = upload_bytes(
        &gw.base_url(),
        name,
        data.clone(),
        Some("gpu,linux"),
        Some("true"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["name"], name);
    assert_eq!(body["size_bytes"], data.len());
    assert_eq!(body["tags"], serde_json::json!(["gpu", "linux"]));
    let (_, h) = get_json(&gw.url("/wheels/history"), None).await;
    assert_eq!(h[0]["action"], "upload");
    assert_eq!(h[0]["wheel_name"], name);
    assert_eq!(h[0]["tags"], serde_json::json!(["gpu", "linux"]));
    assert!(h[0]["source"]
        .as_object()
        .unwrap()
        .contains_key("remote_addr"));
    let (_, items) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(names(&items), vec![name]);
    assert_eq!(items[0]["tags"], serde_json::json!(["gpu", "linux"]));
    let got = http()
        .get(gw.url(&format!("/wheels/{name}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), data);
    let r = http()
        .delete(gw.url(&format!("/wheels/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], true);
    let (_, h) = get_json(&gw.url(&format!("/wheels/history?wheel_name={name}")), None).await;
    assert_eq!(h[0]["action"], "delete");
    assert_eq!(h[1]["action"], "upload");
    let (_, items) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(items, Value::Array(vec![]));

    // The strict version bump of the same file (test_http_wheel_registry_upload_requires_strict_version_bump).
    let v1 = upload_bytes(
        &gw.base_url(),
        "bump_pkg-1.0.0-py3-none-any.whl",
        b"v1".to_vec(),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(v1.0, 200);
    let same = upload_bytes(
        &gw.base_url(),
        "bump_pkg-1.0.0-py3-none-any.whl",
        b"v1b".to_vec(),
        None,
        None,
        None,
    )
    .await;
    assert!(same.1["detail"].as_str().unwrap().contains("bump version"));
    let older = upload_bytes(
        &gw.base_url(),
        "bump_pkg-0.9.0-py3-none-any.whl",
        b"v0".to_vec(),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(older.0, 409);
    assert!(older.1["detail"]
        .as_str()
        .unwrap()
        .contains("must be greater"));
    let v2 = upload_bytes(
        &gw.base_url(),
        "bump_pkg-1.1.0-py3-none-any.whl",
        b"v2".to_vec(),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(v2.0, 200);
}

/// Concurrent uploads of one version under different file names (as a pure and a platform wheel
/// would be): exactly one is stored, the others get the bump-version 409.
#[tokio::test]
async fn concurrent_uploads_of_one_version_store_exactly_one() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("wheels-race");
    let w = mk_wheel(&dir, "race_pkg", "1.0", "ok", 2 * 1024 * 1024).await;
    let data = std::fs::read(&w).unwrap();
    let names_ = [
        "race_pkg-1.0-py3-none-any.whl",
        "race_pkg-1.0-py2.py3-none-any.whl",
        "race_pkg-1.0-cp311-none-any.whl",
        "race_pkg-1.0-1-py3-none-any.whl",
    ];
    let tasks: Vec<_> = names_
        .iter()
        .map(|n| {
            let (base, data, n) = (gw.base_url(), data.clone(), n.to_string());
            tokio::spawn(async move { upload_bytes(&base, &n, data, None, None, None).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 => ok += 1,
            409 => assert_eq!(v["detail"], "wheel version already exists; bump version"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 1);
    let (_, list) = get_json(&gw.url("/wheels"), None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// Wheel file names, PEP 503 names and PEP 440 ordering agree with `packaging` (the library the
/// original's gateway uses), on names that stress each rule.
#[tokio::test]
async fn file_names_and_versions_agree_with_packaging() {
    let names = [
        "demo_pkg-1.0.0-py3-none-any.whl",
        "Demo.Pkg-1.0-py3-none-any.whl",
        "demo-1.0-py3-none-any.whl",
        "a-1.0.0-alpha1-py3-none-any.whl",
        "a-1.0a1-py3-none-any.whl",
        "a-1.0.0.RC1-py3-none-any.whl",
        "a-1.0.post1-py3-none-any.whl",
        "a-1.0-r1-py3-none-any.whl",
        "a-1.0.dev3-py3-none-any.whl",
        "a-1!2.0-py3-none-any.whl",
        "a-1.0+local.7-py3-none-any.whl",
        "a-v1.0-py3-none-any.whl",
        "a-1.0-1-py3-none-any.whl",
        "a-1.0-1abc-py3-none-any.whl",
        "a-1.0-x1-py3-none-any.whl",
        "a-1.0-py3-none.whl",
        "a__b-1.0-py3-none-any.whl",
        "a.b_c-1.0-py3-none-any.whl",
        "a-1.0-1-2-py3-none-any.whl",
        "a-not.a.version-py3-none-any.whl",
        "a-1.0_1-py3-none-any.whl",
        "a-01.00-py3-none-any.whl",
        "A_B-2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    ];
    let dir = TestDir::new("wheels-packaging");
    let script = dir.write(
        "cmp.py",
        r#"import json, sys
from packaging.utils import parse_wheel_filename, InvalidWheelFilename
from packaging.version import Version
out = []
for n in sys.argv[1:]:
    try:
        name, v, _, _ = parse_wheel_filename(n)
        out.append([str(name), str(v)])
    except InvalidWheelFilename:
        out.append(None)
vs = [Version(x) for x in ["1.0", "1.0.0", "1.0a1", "1.0b2", "1.0rc1", "1.0.post1", "1.0.dev1", "1.0a1.dev1", "1!0.1", "1.0+a", "1.0+1", "1.10", "1.9", "0.9.post2.dev3"]]
order = [str(v) for v in sorted(vs)]
print(json.dumps({"names": out, "order": order}))
"#,
    );
    let mut args = vec![script.to_str().unwrap().to_string()];
    args.extend(names.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = orig_venv_run("python", &refs, &[]).await;
    out.assert_success();
    let v = out.stdout_json();
    for (i, n) in names.iter().enumerate() {
        let ours = pyoco_core::wheel::parse_wheel_filename(n)
            .ok()
            .map(|w| serde_json::json!([w.name, w.version.to_string()]))
            .unwrap_or(Value::Null);
        assert_eq!(ours, v["names"][i], "{n}");
    }
    use std::str::FromStr;
    let mut ours: Vec<pyoco_core::wheel::Version> = [
        "1.0",
        "1.0.0",
        "1.0a1",
        "1.0b2",
        "1.0rc1",
        "1.0.post1",
        "1.0.dev1",
        "1.0a1.dev1",
        "1!0.1",
        "1.0+a",
        "1.0+1",
        "1.10",
        "1.9",
        "0.9.post2.dev3",
    ]
    .iter()
    .map(|s| pyoco_core::wheel::Version::from_str(s).unwrap())
    .collect();
    ours.sort();
    let ours: Vec<String> = ours.iter().map(|v| v.to_string()).collect();
    assert_eq!(serde_json::json!(ours), v["order"]);
}
