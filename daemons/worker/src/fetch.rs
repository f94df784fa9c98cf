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
use pyoco_core::resources::Names;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::{self, JobCtx, RunnerFate};
use crate::runner::{Runner, RunnerSpec};
use crate::settings::WorkerSettings;

const SHORT_POLL: Duration = Duration::from_millis(250);

/// Binds (or creates, as the original does) the durable consumer of each tag.
pub async fn bind_consumers(
    js: &jetstream::Context,
    settings: &WorkerSettings,
) -> Result<Vec<PullConsumer>, String> {
    let cfg = &settings.cfg;
    let names = Names::from_config(cfg);
    let stream: Stream = js
        .get_stream(&names.work_stream)
        .await
        .map_err(|e| format!("stream {}: {e}", names.work_stream))?;
    let mut out = Vec::new();
    for tag in &settings.tags {
        let name = Names::consumer_name(tag);
        let consumer = match stream.get_consumer::<pull::Config>(&name).await {
            Ok(c) => c,
            Err(_) => {
                let config = pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: names.work_subject(tag),
                    ack_wait: settings.ack_wait,
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

/// One pull to start: the tag's index and how many messages it may reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    pub tag: usize,
    pub want: usize,
}

/// The pulls of one fill round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pulls: Vec<Pull>,
    /// Every waiting tag got a share: pulls may long-poll. Otherwise tags take turns with short
    /// polls so that none starves another.
    pub long: bool,
    /// Where the next round starts (the tag after the last one served).
    pub next_rr: usize,
}

/// Shares `free` runners among the tags without an outstanding pull (`pulling[i]` false),
/// starting at tag `rr`: evenly, each served tag at least one, never more than `free` in all.
pub fn plan(free: usize, pulling: &[bool], rr: usize) -> Plan {
    let n = pulling.len();
    let mut out = Plan {
        pulls: Vec::new(),
        long: true,
        next_rr: rr,
    };
    if n == 0 {
        return out;
    }
    let waiting: Vec<usize> = (0..n)
        .map(|i| (rr + i) % n)
        .filter(|i| !pulling[*i])
        .collect();
    out.long = free >= waiting.len();
    let mut free = free;
    let mut remaining = waiting.len();
    for i in waiting {
        if free == 0 {
            break;
        }
        let want = (free / remaining).max(1);
        remaining -= 1;
        free -= want;
        out.pulls.push(Pull { tag: i, want });
        out.next_rr = (i + 1) % n;
    }
    out
}

enum Event {
    Message(usize, jetstream::Message),
    PullDone(usize, usize),
    JobDone(RunnerFate),
    RunnerReady(Runner),
    /// A dead runner was not replaced because the loop is stopping.
    RunnerRetired,
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
    /// Pulls, runs and runner replacements are tracked here, so the worker can wait for them.
    pub tracker: TaskTracker,
}

impl FetchLoop {
    /// Runs until drained (`stop` fires and every run finished or was put back), or after one
    /// poll in `--run-once` mode.
    pub async fn run(self, runners: Vec<Runner>, stop: CancellationToken) {
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
        let mut wheel_rx = self.spec.wheels.as_ref().map(|w| w.subscribe());

        loop {
            let stopping = stop.is_cancelled() || (self.run_once && polled_once);
            // A new wheel set: idle runners not reserved by a pull restart with it now (a reserved
            // one restarts when its job arrives, busy ones after their run).
            if !stopping {
                while idle.len() > reserved {
                    let Some(i) = idle.iter().position(|r| self.stale(r)) else {
                        break;
                    };
                    let old = idle.swap_remove(i);
                    busy += 1;
                    let (spec, tx) = (self.spec.clone(), tx.clone());
                    self.tracker.spawn(async move {
                        let r = renew(&spec, old).await;
                        let _ = tx.send(Event::RunnerReady(r)).await;
                    });
                }
            }
            // Fill: give tags without an outstanding pull a share of the free runners.
            if !stopping {
                let round = plan(idle.len().saturating_sub(reserved), &pulling, rr);
                let expiry = if round.long || self.run_once {
                    self.poll_timeout
                } else {
                    SHORT_POLL
                };
                rr = round.next_rr;
                for Pull { tag, want } in round.pulls {
                    reserved += want;
                    pulling[tag] = true;
                    self.tracker.spawn(pull(
                        self.consumers[tag].clone(),
                        tag,
                        want,
                        expiry,
                        tx.clone(),
                    ));
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
                        if stop.is_cancelled() {
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
                        let stale = self.stale(&runner);
                        let spec = self.spec.clone();
                        self.tracker.spawn(async move {
                            // Runs fetched after a new wheel set became current run with it.
                            let runner = if stale { renew(&spec, runner).await } else { runner };
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
                        // A stale one is renewed by the check at the top of the loop.
                        busy -= 1;
                        idle.push(r);
                    }
                    Event::JobDone(RunnerFate::Replace(mut old)) => {
                        // The slot stays busy until its replacement runner is ready. When stopping,
                        // no replacement: a fresh Python would only be shut down again (and a
                        // missing interpreter would keep the drain waiting on retries).
                        let spec = self.spec.clone();
                        let tx = tx.clone();
                        let slot = old.slot;
                        let replace = !(stop.is_cancelled() || (self.run_once && polled_once));
                        self.tracker.spawn(async move {
                            old.kill(Duration::from_millis(500)).await;
                            drop(old);
                            let ev = if replace {
                                Event::RunnerReady(respawn(&spec, slot).await)
                            } else {
                                Event::RunnerRetired
                            };
                            let _ = tx.send(ev).await;
                        });
                    }
                    Event::RunnerReady(r) => {
                        busy -= 1;
                        idle.push(r);
                    }
                    Event::RunnerRetired => busy -= 1,
                },
                _ = tick.tick() => {}
                changed = async { wheel_rx.as_mut().expect("guarded").changed().await }, if wheel_rx.is_some() => {
                    if changed.is_err() {
                        wheel_rx = None;
                    }
                }
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
            }
        }
    }
}

impl FetchLoop {
    /// The runner imports from a wheel set that is no longer current.
    fn stale(&self, r: &Runner) -> bool {
        self.spec
            .wheels
            .as_ref()
            .is_some_and(|w| w.current() != r.wheel_dir)
    }
}

/// Replaces an idle runner by one started with the current wheel set (no run is interrupted:
/// it is between runs).
async fn renew(spec: &RunnerSpec, old: Runner) -> Runner {
    let slot = old.slot;
    old.shutdown(Duration::from_secs(2)).await;
    tracing::info!(
        runner_slot = slot,
        "restarting the runner with the new wheel set"
    );
    respawn(spec, slot).await
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
    let losses = pyoco_core::nats::connection_losses();
    match consumer
        .fetch()
        .max_messages(want)
        .expires(expiry)
        .messages()
        .await
    {
        Ok(mut batch) => {
            let mut check = tokio::time::interval(Duration::from_millis(200));
            loop {
                let item = tokio::select! {
                    item = batch.next() => item,
                    _ = check.tick() => {
                        // The connection was lost since the request went out: the request
                        // is gone (its node died, or the restarted server forgot it), and
                        // async-nats would wait for it until expiry + 5 s. Ask again now.
                        if pyoco_core::nats::connection_losses() != losses {
                            tracing::debug!("pull ended: the NATS connection was lost meanwhile");
                            break;
                        }
                        continue;
                    }
                };
                let Some(item) = item else { break };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(p: &Plan) -> Vec<(usize, usize)> {
        p.pulls.iter().map(|p| (p.tag, p.want)).collect()
    }

    #[test]
    fn enough_runners_every_tag_long_polls_with_an_even_share() {
        let p = plan(5, &[false, false], 0);
        assert_eq!(wants(&p), vec![(0, 2), (1, 3)]);
        assert!(p.long);
        assert_eq!(p.next_rr, 0);
        // Tags with a pull outstanding are skipped; the others share.
        let p = plan(4, &[false, true, false], 1);
        assert_eq!(wants(&p), vec![(2, 2), (0, 2)]);
        assert!(p.long);
    }

    #[test]
    fn fewer_runners_than_tags_take_turns_with_short_polls() {
        let mut rr = 0;
        let mut served = Vec::new();
        for _ in 0..6 {
            let p = plan(1, &[false, false, false], rr);
            assert!(!p.long);
            assert_eq!(p.pulls.len(), 1);
            served.push(p.pulls[0].tag);
            rr = p.next_rr;
        }
        assert_eq!(
            served,
            vec![0, 1, 2, 0, 1, 2],
            "round robin: no tag starves"
        );
        let p = plan(2, &[false, false, false], 2);
        assert_eq!(wants(&p), vec![(2, 1), (0, 1)]);
        assert_eq!(p.next_rr, 1);
    }

    #[test]
    fn nothing_free_or_nothing_waiting_means_no_pulls() {
        assert!(plan(0, &[false, false], 0).pulls.is_empty());
        assert_eq!(plan(0, &[false, false], 1).next_rr, 1);
        let p = plan(3, &[true, true], 0);
        assert!(p.pulls.is_empty() && p.long);
        assert!(plan(3, &[], 0).pulls.is_empty());
    }

    #[test]
    fn never_beyond_the_free_runners_each_tag_at_most_once() {
        for n in 1..6usize {
            for free in 0..12usize {
                for mask in 0..(1u32 << n) {
                    let pulling: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
                    for rr in 0..n {
                        let p = plan(free, &pulling, rr);
                        let total: usize = p.pulls.iter().map(|p| p.want).sum();
                        assert!(total <= free, "{free} {pulling:?} {rr}: {p:?}");
                        let waiting = pulling.iter().filter(|b| !**b).count();
                        // Every free runner is offered while some tag waits.
                        if waiting > 0 {
                            assert_eq!(total, free, "{free} {pulling:?}: {p:?}");
                        }
                        let mut tags: Vec<usize> = p.pulls.iter().map(|p| p.tag).collect();
                        assert!(
                            tags.iter().all(|t| !pulling[*t])
                                && p.pulls.iter().all(|p| p.want >= 1)
                        );
                        tags.sort();
                        tags.dedup();
                        assert_eq!(tags.len(), p.pulls.len());
                        assert_eq!(p.pulls.len(), waiting.min(free));
                    }
                }
            }
        }
    }
}
