//! `pyoco-worker` as a library: runs pyoco flows from JetStream through a pool of Python runners.
//!
//! The Rust process owns everything about the queue, state and liveness (fetching, snapshots,
//! heartbeats, in-progress acks, cancel, timeouts, the systemd watchdog); Python runners run user
//! code and nothing else. Compatible with pyoco-server 0.5's worker on the same queues.
//!
//! [`run`] is the whole daemon given validated [`WorkerSettings`] and a shutdown token; the
//! binary (`main.rs`) only parses flags, loads the configuration, sets up logging, turns
//! signals into the token and errors into exit codes.
//!
//! Shutdown: cancelling the token stops fetching and starts the drain (running runs may finish
//! until the drain timeout, the rest is put back). When the fetch loop has drained, the
//! background tasks (worker record writer, advisory subscribers, status/watchdog) are halted and
//! joined, bounded, and the final worker record (STOPPED_GRACEFUL) is written.

pub mod error;
pub mod fetch;
pub mod job;
pub mod protocol;
pub mod registry;
pub mod runner;
pub mod settings;
pub mod snapshot;
pub mod text;
pub mod wheels;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pyoco_core::nats::{redact_url, NatsAuth};
use pyoco_core::{resources, systemd};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::error::WorkerError;
pub use crate::settings::WorkerSettings;

use crate::fetch::{FetchLoop, LoopStatus};
use crate::job::JobCtx;
use crate::registry::Registry;
use crate::runner::{Runner, RunnerSpec};

/// How long background tasks may take to end once halted before we stop waiting for them.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the worker until it has drained after `shutdown` fired, or, in run-once mode, after
/// one poll's runs are done. Errors are start-up failures; once running, the worker rides out
/// NATS outages and runner deaths.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let settings = Arc::new(settings);
    let cfg = settings.cfg.clone();
    let tags = settings.tags.clone();
    let worker_id = settings.worker_id.clone();
    let work_dir = settings.work_dir.clone();
    // Absolute, because every runner runs in its own slot directory below it.
    std::fs::create_dir_all(&work_dir).map_err(|e| {
        WorkerError::Start(format!("cannot create the work directory {}: {e}; fix: point --work-dir at a writable directory", work_dir.display()))
    })?;
    let work_dir = work_dir.canonicalize().unwrap_or(work_dir);
    let (shim_dir, compat_dir) = runner::install_shim(&work_dir).map_err(|e| {
        WorkerError::Start(format!("cannot write the runner shim under {}: {e}; fix: point --work-dir at a writable directory", work_dir.display()))
    })?;
    let python = settings.python.clone();
    // Wheel sync: the set a previous run made current is on the first runners' path already.
    let wheels = wheels::prepare(&cfg).map_err(WorkerError::Start)?;
    let spec = RunnerSpec {
        python: python.clone(),
        shim_dir,
        compat_dir: Some(compat_dir),
        flow_resolver: settings.flow_resolver.clone(),
        callable_allow: settings.callable_allow.as_setting(),
        pythonpath: settings.pythonpath.clone(),
        work_dir: work_dir.clone(),
        ready_timeout: settings.ready_timeout,
        memory_max: settings.runner_memory_max,
        wheels: wheels.as_ref().map(|(_, sets)| sets.clone()),
    };

    for dir in &spec.pythonpath {
        if !dir.is_dir() {
            tracing::warn!(err_id = "ERR-PYOCO-0002", path = %dir.display(), "--pythonpath / PYOCO_WORKER_PYTHONPATH entry is not a directory; task modules there cannot be imported");
        }
    }
    tracing::info!(python = %python.display(), pythonpath = %cfg.worker_pythonpath, work_dir = %work_dir.display(), flow_resolver = %cfg.worker_flow_resolver, callable_allow = %settings.callable_allow.describe(), "starting runners");
    // Runners first: a missing or too old pyoco is a start-up error, not a failed run later.
    systemd::notify_status("starting Python runners");
    let mut runners = Vec::new();
    for slot in 0..settings.concurrency {
        match Runner::spawn(&spec, slot).await {
            Ok(r) => {
                tracing::info!(runner_slot = slot, pid = r.info.pid, python = %r.info.python, pyoco_version = %r.info.pyoco_version, "runner ready");
                runners.push(r);
            }
            Err(e) => {
                tracing::error!(err_id = "ERR-PYOCO-0018", error = %e, "runner failed to start");
                return Err(WorkerError::Start(format!("the Python runtime at {} cannot run flows: {e}; the packaged workers' runtime is made with `pyococtl runtime setup` (and checked with `pyococtl runtime check`)", python.display())));
            }
        }
    }

    // NATS: retried until reachable (an outage at start is not fatal).
    let shown_url = redact_url(&cfg.nats_url);
    let auth = NatsAuth::from_config(&cfg).map_err(|e| WorkerError::Config(e.to_string()))?;
    let client = pyoco_core::nats::connect(
        &cfg.nats_url,
        &auth,
        &format!("pyoco-nats-worker:{worker_id}"),
    )
    .await
    .map_err(|e| WorkerError::Start(format!("NATS URL {shown_url}: {e}")))?;
    let js = async_nats::jetstream::new(client.clone());
    let mut next_warning = Duration::from_secs(3);
    let mut backoff = Duration::from_millis(200);
    let (res, consumers) = loop {
        let ensured = resources::ensure_until_ready(&client, &cfg, &shutdown, |w| match w {
            resources::Waiting::Unreachable { waited } => {
                systemd::notify_status(&format!("NATS unreachable at {shown_url}, retrying"));
                if waited >= next_warning {
                    tracing::warn!(err_id = "ERR-PYOCO-0003", nats_url = %shown_url, waited_sec = waited.as_secs(), "NATS is not reachable yet; retrying. Is nats-server running there? (start one with `pyococtl up`, or `pyoco-server up --with-nats` for a local stack; or point --nats-url / PYOCO_NATS_URL at yours)");
                    next_warning = waited + Duration::from_secs(10);
                }
            }
            resources::Waiting::Failing(e) => {
                // NATS answers, but the streams are not there and this login may not create
                // them (the worker role of a secured NATS): a gateway creates them at start.
                systemd::notify_status(&format!(
                    "waiting for the streams at {shown_url} ({}); a gateway creates them at start",
                    e.resource
                ));
                tracing::error!(err_id = "ERR-PYOCO-0003", error = %e, "ensuring resources failed; retrying (with a worker-only NATS login the streams are created by a gateway, or once by `pyococtl key list` as admin)")
            }
        })
        .await;
        let Some(res) = ensured else {
            // Stopped before NATS was ever usable: nothing was fetched, nothing to drain.
            tracing::info!(worker_id = %worker_id, "stopped before NATS was reachable");
            for r in runners {
                r.shutdown(Duration::from_secs(5)).await;
            }
            return Ok(());
        };
        match fetch::bind_consumers(&js, &settings).await {
            Ok(c) => break (res, c),
            Err(e) => {
                tracing::error!(err_id = "ERR-PYOCO-0003", error = %e, "binding consumers failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {
                tracing::info!(worker_id = %worker_id, "stopped before the consumers could be bound");
                for r in runners {
                    r.shutdown(Duration::from_secs(5)).await;
                }
                return Ok(());
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };

    // Background tasks run until `halt` (after the drain); everything is joined at the end.
    let halt = CancellationToken::new();
    let tracker = TaskTracker::new();

    let registry = Registry::new(res.workers.clone(), &worker_id, &tags, Default::default());
    if let Err(e) = registry.write().await {
        tracing::warn!(worker_id = %worker_id, error = %e, "writing the worker record failed");
    }
    tracker.spawn(
        registry
            .clone()
            .writer_loop(settings.worker_heartbeat, halt.clone()),
    );
    if let Some((dir, sets)) = wheels {
        registry.set_wheel_sync(wheels::initial_block(true));
        // The store was ensured with the other resources; a listing that fails is retried by
        // the sync itself (and reported in the record).
        let store = wheels::WheelStore::new(js.clone(), &cfg.wheel_object_store_bucket);
        let mut sync = wheels::WheelSync::new(
            &cfg,
            store,
            python.clone(),
            tags.clone(),
            dir,
            sets,
            registry.clone(),
        );
        // As the original: synced before the first fetch, so the first runs see the wheels.
        systemd::notify_status("syncing wheels");
        sync.attempt().await;
        tracker.spawn(sync.run(client.clone(), halt.clone()));
    }

    let (drain_tx, drain_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let max_payload = client.server_info().max_payload;
    let ctx = Arc::new(JobCtx {
        settings: settings.clone(),
        res: res.clone(),
        worker_id: worker_id.clone(),
        registry: registry.clone(),
        limits: snapshot::Limits {
            max_snapshot_bytes: settings.max_snapshot_bytes,
            max_payload: if max_payload > 0 {
                max_payload
            } else {
                1024 * 1024
            },
        },
        drain: drain_rx,
    });
    let (status_tx, status_rx) = tokio::sync::watch::channel(LoopStatus {
        busy: 0,
        runners: runners.len(),
        last_fetch: Instant::now(),
        last_tick: Instant::now(),
    });
    let fetch_loop = FetchLoop {
        ctx: ctx.clone(),
        consumers,
        tags: tags.clone(),
        spec,
        poll_timeout: settings.poll_timeout,
        run_once: settings.run_once,
        status: status_tx,
        tracker: tracker.clone(),
    };
    // Max-deliveries advisories of our consumers: one worker of the group handles each.
    for tag in &tags {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            res.names.work_stream,
            resources::Names::consumer_name(tag)
        );
        match client
            .queue_subscribe(subject.clone(), "pyoco-max-deliveries".to_string())
            .await
        {
            Ok(mut sub) => {
                let ctx = ctx.clone();
                let halt = halt.clone();
                tracker.spawn(async move {
                    loop {
                        let msg = tokio::select! {
                            m = sub.next() => m,
                            _ = halt.cancelled() => None,
                        };
                        let Some(msg) = msg else { break };
                        job::on_max_deliveries(&ctx, &msg.payload).await;
                    }
                    let _ = sub.unsubscribe().await;
                });
            }
            Err(e) => {
                tracing::warn!(subject = %subject, error = %e, "cannot subscribe to max-deliveries advisories")
            }
        }
    }
    let mut loop_task = tracker.spawn(fetch_loop.run(runners, shutdown.clone()));
    tracker.spawn(status_and_watchdog(status_rx, tags.join(","), halt.clone()));

    tracing::info!(worker_id = %worker_id, tags = %tags.join(","), concurrency = settings.concurrency, "worker ready");
    systemd::notify_ready(&format!(
        "tags {} · 0/{} busy",
        tags.join(","),
        settings.concurrency
    ));

    tokio::select! {
        _ = &mut loop_task => {}
        _ = shutdown.cancelled() => {
            let drain = settings.drain_timeout;
            tracing::info!(worker_id = %worker_id, drain_timeout_sec = drain.as_secs_f64(), "stopping: no new runs; letting running runs finish");
            systemd::notify_stopping(&format!("draining (up to {:.0} s)", drain.as_secs_f64()));
            let _ = drain_tx.send(Some(Instant::now() + drain));
            let _ = loop_task.await;
        }
    }
    // Drained (or run-once done): halt the background tasks and join everything, bounded.
    halt.cancel();
    tracker.close();
    if tokio::time::timeout(JOIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(worker_id = %worker_id, tasks = tracker.len(), "background tasks did not end in time; stopping without them");
    }
    registry.stopped("graceful_shutdown").await;
    tracing::info!(worker_id = %worker_id, "stopped");
    Ok(())
}

/// Keeps `STATUS=` current and pings the watchdog only while the fetch loop is alive.
async fn status_and_watchdog(
    status: tokio::sync::watch::Receiver<LoopStatus>,
    tags: String,
    halt: CancellationToken,
) {
    let watchdog = systemd::watchdog_interval();
    let every = watchdog
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = halt.cancelled() => return,
        }
        let s = status.borrow().clone();
        systemd::notify_status(&format!(
            "tags {tags} · {}/{} busy · last fetch {:.1} s ago",
            s.busy,
            s.runners,
            s.last_fetch.elapsed().as_secs_f64()
        ));
        if watchdog.is_some() && s.last_tick.elapsed() < Duration::from_secs(5) {
            systemd::notify_watchdog();
        }
    }
}
