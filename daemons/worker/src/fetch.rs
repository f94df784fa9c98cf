//! The fetch loop: pulls jobs from every tag's durable consumer, fairly, never more messages
//! than there are idle runners, and hands each one to a runner.
//!
//! Invariant: messages reserved by outstanding pull requests + runs in progress ≤ runners.
//! When every tag can have a pull outstanding, pulls are long polls (`--poll-timeout`) and a job
//! starts the moment it is published. When there are fewer free runners than tags, the tags take
//! turns with short polls, so no tag starves another.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use pyoco_core::config::Config;
use pyoco_core::resources::Names;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::job::{self, JobCtx, RunnerFate};
use crate::runner::{Runner, RunnerSpec};

const SHORT_POLL: Duration = Duration::from_millis(250);

/// Binds (or creates, as the original does) the durable consumer of each tag.
pub async fn bind_consumers(
    js: &jetstream::Context,
    cfg: &Config,
    tags: &[String],
) -> Result<Vec<PullConsumer>, String> {
    let names = Names::from_config(cfg);
    let stream: Stream = js
        .get_stream(&names.work_stream)
        .await
        .map_err(|e| format!("stream {}: {e}", names.work_stream))?;
    let mut out = Vec::new();
    for tag in tags {
        let name = Names::consumer_name(tag);
        let consumer = match stream.get_consumer::<pull::Config>(&name).await {
            Ok(c) => c,
            Err(_) => {
                let config = pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: names.work_subject(tag),
                    ack_wait: Duration::from_secs_f64(cfg.consumer_ack_wait_sec.max(1.0)),
                    max_deliver: cfg.consumer_max_deliver,
                    max_ack_pending: cfg.consumer_max_ack_pending,
                    ..Default::default()
                };
                match stream.create_consumer(config).await {
                    Ok(c) => c,
                    // Created by another worker meanwhile: use theirs.
                    Err(e) => stream
                        .get_consumer(&name)
                        .await
                        .map_err(|_| format!("consumer {name}: {e}"))?,
                }
            }
        };
        out.push(consumer);
    }
    Ok(out)
}

enum Event {
    Message(usize, jetstream::Message),
    PullDone(usize, usize),
    JobDone(RunnerFate),
    RunnerReady(Runner),
}

/// Status shown in `systemctl status` and used by the watchdog.
#[derive(Debug, Clone)]
pub struct LoopStatus {
    pub busy: usize,
    pub runners: usize,
    pub last_fetch: Instant,
    pub last_tick: Instant,
}

pub struct FetchLoop {
    pub ctx: Arc<JobCtx>,
    pub consumers: Vec<PullConsumer>,
    pub tags: Vec<String>,
    pub spec: RunnerSpec,
    pub poll_timeout: Duration,
    pub run_once: bool,
    pub status: tokio::sync::watch::Sender<LoopStatus>,
}

impl FetchLoop {
    /// Runs until drained (`stop` fires and every run finished or was put back), or after one
    /// poll in `--run-once` mode.
    pub async fn run(self, runners: Vec<Runner>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let total = runners.len();
        let mut idle = runners;
        let mut reserved = 0usize;
        let mut pulling = vec![false; self.tags.len()];
        let mut rr = 0usize;
        let mut busy = 0usize;
        let mut polled_once = false;
        let mut last_fetch = Instant::now();
        let (tx, mut rx) = mpsc::channel::<Event>(64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));

        loop {
            let stopping = *stop.borrow() || (self.run_once && polled_once);
            // Fill: give tags without an outstanding pull a share of the free runners.
            if !stopping {
                let mut free = idle.len().saturating_sub(reserved);
                let waiting: Vec<usize> = (0..self.tags.len())
                    .map(|i| (rr + i) % self.tags.len())
                    .filter(|i| !pulling[*i])
                    .collect();
                let long = free >= waiting.len();
                let expiry = if long || self.run_once {
                    self.poll_timeout
                } else {
                    SHORT_POLL
                };
                let mut remaining = waiting.len();
                for i in waiting {
                    if free == 0 {
                        break;
                    }
                    let want = (free / remaining).max(1);
                    remaining -= 1;
                    free -= want;
                    reserved += want;
                    pulling[i] = true;
                    rr = (i + 1) % self.tags.len();
                    tokio::spawn(pull(self.consumers[i].clone(), i, want, expiry, tx.clone()));
                }
                if self.run_once {
                    polled_once = true;
                }
            }
            let done = (stopping || (self.run_once && polled_once)) && busy == 0 && reserved == 0;
            if done {
                for r in idle {
                    r.shutdown(Duration::from_secs(5)).await;
                }
                return;
            }
            self.status.send_replace(LoopStatus {
                busy,
                runners: total,
                last_fetch,
                last_tick: Instant::now(),
            });

            tokio::select! {
                Some(ev) = rx.recv() => match ev {
                    Event::Message(i, msg) => {
                        reserved = reserved.saturating_sub(1);
                        last_fetch = Instant::now();
                        if *stop.borrow() {
                            // Draining: no new runs; give it back at once for another worker.
                            let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
                            continue;
                        }
                        let Some(runner) = idle.pop() else {
                            // Cannot happen by the reservation invariant; never lose the job.
                            tracing::error!(tag = %self.tags[i], "no idle runner for a fetched job; putting it back");
                            let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
                            continue;
                        };
                        busy += 1;
                        let ctx = self.ctx.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let fate = job::process(&ctx, msg, runner).await;
                            let _ = tx.send(Event::JobDone(fate)).await;
                        });
                    }
                    Event::PullDone(i, unused) => {
                        reserved = reserved.saturating_sub(unused);
                        pulling[i] = false;
                        last_fetch = Instant::now();
                    }
                    Event::JobDone(RunnerFate::Reusable(r)) => {
                        busy -= 1;
                        idle.push(r);
                    }
                    Event::JobDone(RunnerFate::Replace(mut old)) => {
                        // The slot stays busy until its replacement runner is ready.
                        let spec = self.spec.clone();
                        let tx = tx.clone();
                        let slot = old.slot;
                        tokio::spawn(async move {
                            old.kill(Duration::from_millis(500)).await;
                            drop(old);
                            let fresh = respawn(&spec, slot).await;
                            let _ = tx.send(Event::RunnerReady(fresh)).await;
                        });
                    }
                    Event::RunnerReady(r) => {
                        busy -= 1;
                        idle.push(r);
                    }
                },
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Starts a replacement runner, retrying with backoff (an interpreter may be briefly missing
/// during a package upgrade).
pub async fn respawn(spec: &RunnerSpec, slot: usize) -> Runner {
    let mut backoff = Duration::from_millis(200);
    loop {
        match Runner::spawn(spec, slot).await {
            Ok(r) => {
                tracing::info!(runner_slot = slot, pid = r.info.pid, "runner replaced");
                return r;
            }
            Err(e) => {
                tracing::error!(runner_slot = slot, error = %e, "cannot start a replacement runner; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn pull(
    consumer: PullConsumer,
    i: usize,
    want: usize,
    expiry: Duration,
    tx: mpsc::Sender<Event>,
) {
    let mut got = 0usize;
    match consumer
        .fetch()
        .max_messages(want)
        .expires(expiry)
        .messages()
        .await
    {
        Ok(mut batch) => {
            while let Some(item) = batch.next().await {
                match item {
                    Ok(msg) => {
                        got += 1;
                        if tx.send(Event::Message(i, msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "pull ended");
                        break;
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "pull request failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let _ = tx.send(Event::PullDone(i, want - got.min(want))).await;
}
