//! systemd integration without systemd: a real `NOTIFY_SOCKET` datagram socket receives what the
//! gateway tells systemd, and `systemd-socket-activate` passes it a listening socket the way
//! `pyoco-server.socket` does. (The packaged units are tested under real systemd separately.)

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pyoco_tests::*;

/// Collects notify messages until `pred` holds for the concatenation, or the timeout.
fn collect_until(sock: &UnixDatagram, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let mut all = String::new();
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline && !pred(&all) {
        if let Ok(n) = sock.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
        }
    }
    all
}

#[tokio::test]
async fn notifies_ready_status_watchdog_and_stopping() {
    let nats = NatsServer::start().await;
    let dir = TestDir::new("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let port = free_port().to_string();
    let mut gw = spawn_workspace_bin(
        "pyoco-server",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--nats-url",
            &nats.url(),
        ],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let got = tokio::task::spawn_blocking(move || {
        let got = collect_until(&sock, Duration::from_secs(10), |s| {
            s.contains("READY=1") && s.contains("runs indexed") && s.contains("WATCHDOG=1")
        });
        (sock, got)
    });
    let (sock, messages) = got.await.unwrap();
    assert!(messages.contains("READY=1"), "{messages}");
    assert!(
        messages.contains(&format!("STATUS=listening on 127.0.0.1:{port}")),
        "{messages}"
    );
    assert!(
        messages.contains("NATS connected · 0 runs indexed"),
        "{messages}"
    );
    assert!(
        messages.contains("WATCHDOG=1"),
        "watchdog pings when WATCHDOG_USEC is set: {messages}"
    );

    gw.signal(Signal::SIGTERM);
    let stopping = tokio::task::spawn_blocking(move || {
        collect_until(&sock, Duration::from_secs(5), |s| s.contains("STOPPING=1"))
    })
    .await
    .unwrap();
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}

#[tokio::test]
async fn serves_on_a_socket_passed_by_socket_activation() {
    let nats = NatsServer::start().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = bin_path("pyoco-server");
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.args([
        "-l",
        &listen,
        "--fdname=http",
        "-E",
        "PYOCO_LOAD_DOTENV=0",
        "-E",
        "PYOCO_HTTP_PORT=1",
    ])
    .arg(&bin)
    .args(["--nats-url", &nats.url()]);
    scrub_pyoco_env(&mut cmd);
    let mut activator = Daemon::spawn("socket-activate", cmd);
    // The first connection starts the gateway, which serves on the inherited socket (the
    // configured port 1 is never bound).
    let base = format!("http://{listen}");
    wait_healthy(&mut activator, &base, Duration::from_secs(20)).await;
    let ok = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            http()
                .get(format!("{base}/runs"))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        },
    )
    .await;
    assert!(ok, "log:\n{}", activator.log_text());
    assert!(
        activator.log_text().contains("Execing"),
        "{}",
        activator.log_text()
    );
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port().to_string();
    let out = run_workspace_bin(
        "pyoco-server",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--nats-url",
            "nats://127.0.0.1:1",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(1));
    let err = out.stderr_text();
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")) && err.contains("fix:"),
        "{err}"
    );
}
