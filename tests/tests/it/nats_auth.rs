//! NATS credentials (`PYOCO_NATS_USER`/`_PASSWORD[_FILE]`, `PYOCO_NATS_TOKEN[_FILE]`, a password
//! in the URL) against a real nats-server that requires them, and that no daemon ever shows the
//! secret.

use std::process::Command;
use std::time::Duration;

use pyoco_tests::*;

const USER: &str = "alice";
const PASSWORD: &str = "pw-Zq81-never-logged";
const TOKEN: &str = "tok-Yk27-never-logged";

/// A nats-server with JetStream whose `authorization` block is `auth` (the harness's
/// `NatsServer` checks readiness with an anonymous client, which this server refuses).
struct AuthNats {
    _daemon: Daemon,
    port: u16,
    _dir: TestDir,
}

impl AuthNats {
    async fn start(auth: &str) -> AuthNats {
        let dir = TestDir::new("nats-auth");
        let store = dir.subdir("store");
        let port = free_port();
        let conf = dir.write(
            "nats.conf",
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\nauthorization {{ {auth} }}\n",
                store.display().to_string()
            ),
        );
        let (bin, _) = nats_binary(&nats::default_nats_choice());
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&conf).current_dir(dir.path());
        let daemon = Daemon::spawn_logged(
            &format!("nats-server(auth) :{port}"),
            cmd,
            &dir.join("nats.log"),
        );
        assert!(
            daemon
                .wait_for_log("Server is ready", Duration::from_secs(30))
                .await,
            "nats-server did not start; log:\n{}",
            daemon.log_tail(40)
        );
        AuthNats {
            _daemon: daemon,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

async fn health(gw: &Gateway) -> serde_json::Value {
    http()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn user_and_password_file_gateway_and_worker_run_a_flow() {
    let nats = AuthNats::start(&format!("user: {USER}, password: {PASSWORD:?}")).await;
    let secrets = TestDir::new("nats-secrets");
    let pw_file = secrets.write("password", format!("{PASSWORD}\n"));
    let env = [
        ("PYOCO_NATS_USER", USER),
        ("PYOCO_NATS_PASSWORD_FILE", pw_file.to_str().unwrap()),
    ];
    let gw = Gateway::start(&nats.url(), &env).await;
    gw.wait_nats_connected().await;
    let tag = unique("auth");
    let run_id = submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &tag).await;

    let tasks = TestDir::new("wtasks");
    tasks.write("wtasks.py", TEST_TASKS);
    let worker = Worker::start(&nats.url(), &tag, &unique("w"), tasks.path(), &[], &env).await;
    let run = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");

    // pyococtl's direct NATS commands use the same settings.
    let mut ctl_env = env.to_vec();
    let url = nats.url();
    ctl_env.push(("PYOCO_NATS_URL", &url));
    let out = ctl(&["dlq", "list", "--output", "json"], &ctl_env).await;
    expect_code(&out, 0);
    let out = ctl(
        &["dlq", "list", "--output", "json"],
        &[("PYOCO_NATS_URL", &url)],
    )
    .await;
    assert_ne!(out.code(), Some(0), "no credentials: refused");
    assert!(
        out.stderr_text().to_lowercase().contains("authorization"),
        "{}",
        out.stderr_text()
    );

    assert_no_secret("gateway log", &gw.log_text());
    assert_no_secret("worker log", &worker.log_text());
}

#[tokio::test]
async fn token_from_file_connects() {
    let nats = AuthNats::start(&format!("token: {TOKEN:?}")).await;
    let secrets = TestDir::new("nats-secrets");
    let token_file = secrets.write("token", TOKEN);
    let gw = Gateway::start(
        &nats.url(),
        &[("PYOCO_NATS_TOKEN_FILE", token_file.to_str().unwrap())],
    )
    .await;
    gw.wait_nats_connected().await;
    submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &unique("tok")).await;
    assert_no_secret("gateway log", &gw.log_text());
}

#[tokio::test]
async fn wrong_or_missing_credentials_stay_disconnected_and_say_why() {
    let nats = AuthNats::start(&format!("user: {USER}, password: {PASSWORD:?}")).await;
    let bad_secret = "WRONG-Qx93-in-url";
    let url_with_bad_password = format!("nats://{USER}:{bad_secret}@127.0.0.1:{}", nats.port);
    let mut anonymous = Gateway::start(&nats.url(), &[]).await;
    let mut wrong = Gateway::start(&url_with_bad_password, &[]).await;
    for gw in [&mut anonymous, &mut wrong] {
        let said = gw
            .daemon()
            .wait_for_log("NATS authorization failed", Duration::from_secs(15))
            .await;
        assert!(said, "log names the cause:\n{}", gw.log_text());
        assert_eq!(health(gw).await["nats"], "disconnected");
    }
    let log = wrong.log_text();
    assert!(!log.contains(bad_secret), "password in the log:\n{log}");
    assert!(
        log.contains(&format!("{USER}:***@")),
        "redacted URL:\n{log}"
    );
    assert_no_secret("gateway log", &anonymous.log_text());
}

#[tokio::test]
async fn config_output_redacts_and_bad_settings_fail_clearly() {
    let out = run_workspace_bin(
        "pyoco-server",
        &["config"],
        &[(
            "PYOCO_NATS_URL",
            "nats://alice:s3cret-url@h1:4222,nats://h2:4222",
        )],
    )
    .await;
    out.assert_success();
    let text = out.stdout_text();
    assert!(
        text.contains("nats://alice:***@h1:4222,nats://h2:4222") && !text.contains("s3cret-url"),
        "{text}"
    );

    let out = run_workspace_bin("pyoco-server", &["config"], &[("PYOCO_NATS_USER", USER)]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stdout_text());
    assert!(
        out.stderr_text().contains("PYOCO_NATS_PASSWORD_FILE"),
        "names the fix: {}",
        out.stderr_text()
    );

    let out = run_workspace_bin(
        "pyoco-worker",
        &["--nats-creds", "/nonexistent/x.creds"],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("PYOCO_NATS_CREDS_FILE")
            && out.stderr_text().contains("/nonexistent/x.creds"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn password_in_the_url_still_works_and_is_shown_redacted() {
    let nats = AuthNats::start(&format!("user: {USER}, password: {PASSWORD:?}")).await;
    let url = format!("nats://{USER}:{PASSWORD}@127.0.0.1:{}", nats.port);
    let mut gw = Gateway::start(&url, &[]).await;
    gw.wait_nats_connected().await;
    assert!(
        gw.daemon()
            .wait_for_log("resources ensured", Duration::from_secs(10))
            .await,
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    assert!(
        log.contains(&format!("{USER}:***@")),
        "redacted URL:\n{log}"
    );
    assert_no_secret("gateway log", &log);
}

#[tokio::test]
async fn systemd_status_shows_the_url_redacted() {
    use std::os::unix::net::UnixDatagram;
    let nats = AuthNats::start(&format!("user: {USER}, password: {PASSWORD:?}")).await;
    let dir = TestDir::new("notify-auth");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let bad_secret = "WRONG-Vb55-in-url";
    let url = format!("nats://{USER}:{bad_secret}@127.0.0.1:{}", nats.port);
    let port = free_port().to_string();
    let _gw = spawn_workspace_bin(
        "pyoco-server",
        &["--host", "127.0.0.1", "--port", &port, "--nats-url", &url],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("PYOCO_READY_TIMEOUT_SEC", "1"),
        ],
    );
    let messages = tokio::task::spawn_blocking(move || {
        let mut all = String::new();
        let mut buf = vec![0u8; 4096];
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline && !all.contains("NATS unreachable at") {
            if let Ok(n) = sock.recv(&mut buf) {
                all.push_str(&String::from_utf8_lossy(&buf[..n]));
                all.push('\n');
            }
        }
        all
    })
    .await
    .unwrap();
    assert!(
        messages.contains(&format!("NATS unreachable at nats://{USER}:***@127.0.0.1")),
        "{messages}"
    );
    assert!(!messages.contains(bad_secret), "{messages}");
}
