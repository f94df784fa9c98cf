//! A secured three-node NATS cluster made the way operators make one: `pyococtl up --cluster`
//! on the first node and `pyococtl join --seed` on the others, sharing one credential directory.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::nats::{default_nats_choice, nats_binary};
use crate::{free_port, http, spawn_workspace_bin, wait_until, Daemon, TestDir};

/// One node: its `pyococtl up/join` process and its client, monitoring and route ports.
pub struct ClusterMember {
    pub daemon: Daemon,
    pub client: u16,
    pub monitor: u16,
    pub route: u16,
}

/// Whether the node behind `monitor` answers `/healthz` with JetStream up.
pub async fn nats_healthz(monitor: u16) -> bool {
    matches!(
        http()
            .get(format!("http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"))
            .timeout(Duration::from_secs(2))
            .send()
            .await,
        Ok(r) if r.status().is_success()
    )
}

async fn wait_member_healthy(m: &ClusterMember) {
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        nats_healthz(m.monitor)
    })
    .await;
    assert!(
        ok,
        "nats-server on monitor port {} never became healthy; log:\n{}",
        m.monitor,
        m.daemon.log_tail(60)
    );
}

/// Starts nodes `n1..n3` under `dir` (credentials in `auth_dir`) and waits until every node is
/// healthy and the JetStream meta group of 3 has a leader (within `formed_within`).
pub async fn start_secured_cluster(
    dir: &TestDir,
    auth_dir: &Path,
    formed_within: Duration,
) -> Vec<ClusterMember> {
    let auth = auth_dir.display().to_string();
    let bin = nats_binary(&default_nats_choice()).0.display().to_string();
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut members: Vec<ClusterMember> = Vec::new();
    for i in 0..3 {
        let (client, monitor) = (free_port(), free_port());
        let (name, listen, cp, mp, data) = (
            format!("n{}", i + 1),
            format!("127.0.0.1:{}", cluster_ports[i]),
            client.to_string(),
            monitor.to_string(),
            dir.join(format!("n{}", i + 1)).display().to_string(),
        );
        let seeds: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("127.0.0.1:{}", cluster_ports[j]))
            .collect();
        let mut args = vec![
            if i == 0 { "up" } else { "join" },
            "--cluster",
            "pyoco",
            "--server-name",
            &name,
            "--listen",
            &listen,
            "--client-port",
            &cp,
            "--http-port",
            &mp,
            "--datafolder",
            &data,
            "--auth-dir",
            &auth,
            "--nats-server-path",
            &bin,
        ];
        for sd in &seeds {
            args.extend(["--seed", sd]);
        }
        let member = ClusterMember {
            daemon: spawn_workspace_bin("pyococtl", &args, &[]),
            client,
            monitor,
            route: cluster_ports[i],
        };
        if i == 0 {
            // The first node writes the shared credential files the others read.
            wait_member_healthy(&member).await;
        }
        members.push(member);
    }
    for m in &members {
        wait_member_healthy(m).await;
    }
    let m1 = members[0].monitor;
    let formed = wait_until(formed_within, Duration::from_millis(200), || async move {
        let j: Value = match http()
            .get(format!("http://127.0.0.1:{m1}/jsz"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        j["meta_cluster"]["cluster_size"] == 3
            && j["meta_cluster"]["leader"]
                .as_str()
                .is_some_and(|l| !l.is_empty())
    })
    .await;
    assert!(
        formed,
        "the meta group of 3 never formed; n1:\n{}",
        members[0].daemon.log_tail(40)
    );
    members
}
