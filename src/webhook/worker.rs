//! The delivery worker: one router thread (`ringcast-webhooks`) that drains the cores'
//! queues, runs the `Router` and hands POSTs to `webhooks.concurrency` sender threads
//! (`ringcast-webhook-N`), each with its own HTTP agent (ureq, rustls for https; a total
//! timeout per POST). No core ever waits for any of it: cores only push to `WebhookQueues`.
//!
//! The router thread polls the core queues every `POLL_MAX` at most (there is no doorbell: the
//! batching window is much longer) and otherwise sleeps on its inbox, which carries the
//! senders' outcomes, reloads from the control thread, and the stop request.
//!
//! With a durable outbox (`[storage] dir`), the router thread also does the outbox's disk IO
//! (it may block; it is not a core). When the outbox fails (a write or sync error of its
//! write-ahead log), the thread exits the process with status 1 before it sends anything more:
//! nothing is acknowledged that was not persisted.
//!
//! In a hot standby pair an `OutboxGate` decides when the durable outbox may be open: only
//! while this node is the primary. A standby's worker holds an empty in-memory outbox and
//! delivers nothing; once promoted it opens the outbox on the `webhooks` stream the standby
//! copied and delivers what is pending; stepping down closes it again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::router::{Job, Outcome, Router};
use super::{Outbox, TargetKey, WEBHOOK_ID_HEADER, WebhookEvent, WebhookQueues, WebhookStats};
use crate::config::Config;
use crate::shard::Apps;

use crate::limits::{WEBHOOK_DRAIN_PER_CORE_MAX, WEBHOOK_RESPONSE_BYTES_MAX};
/// The longest the router thread sleeps before looking at the core queues again.
const POLL_MAX: Duration = Duration::from_millis(crate::limits::WEBHOOK_POLL_MAX_MS);

enum Message {
    Reload {
        config: Arc<Config>,
        apps: Arc<Apps>,
    },
    Done {
        sender: usize,
        target: TargetKey,
        outcome: Outcome,
    },
    Stop {
        deadline: Instant,
    },
}

/// When the durable outbox may be open (a hot standby pair hands its stream between this
/// worker and the replication link).
pub trait OutboxGate: Send + Sync {
    /// The outbox, opened now that this node is the primary and the stream is free; `None`
    /// while it may not be opened. An error is a stream that cannot be recovered.
    fn open(&self, config: &Config, apps: &Apps) -> Option<Result<Box<dyn Outbox>, String>>;
    /// This node is no longer the primary: an open outbox must be closed.
    fn must_close(&self) -> bool;
    /// The outbox was closed: the stream is free.
    fn closed(&self);
}

/// The outbox of a worker that may not deliver (a standby's): empty, in memory.
pub fn dormant_outbox(config: &Config) -> Box<dyn Outbox> {
    Box::new(super::MemoryOutbox::new(config.webhooks.outbox_max))
}

/// The running worker, owned by the control thread.
pub struct WebhookWorker {
    inbox: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl WebhookWorker {
    /// Starts the router and sender threads over `outbox` (see `webhook::open_outbox`); what
    /// it already holds is sent first. With a `gate` (a hot standby pair), `outbox` is the
    /// gate's (`active`) or a dormant one, and the worker follows the gate from then on.
    pub fn start(
        config: &Arc<Config>,
        apps: Arc<Apps>,
        queues: Arc<WebhookQueues>,
        stats: Arc<WebhookStats>,
        outbox: Box<dyn Outbox>,
        gate: Option<(Arc<dyn OutboxGate>, bool)>,
    ) -> std::io::Result<WebhookWorker> {
        let now = Instant::now();
        let router = Router::new(config, &apps, outbox, Arc::clone(&stats), now, unix_ms());

        let (inbox, receiver) = mpsc::channel();
        let mut senders = Vec::with_capacity(config.webhooks.concurrency);
        for index in 0..config.webhooks.concurrency.max(1) {
            let (jobs, job_receiver) = mpsc::channel::<(Job, Duration)>();
            let results = inbox.clone();
            std::thread::Builder::new()
                .name(format!("ringcast-webhook-{index}"))
                .spawn(move || send_loop(index, job_receiver, results))?;
            senders.push(jobs);
        }
        let idle = (0..senders.len()).rev().collect();
        let (gate, active) = match gate {
            Some((gate, active)) => (Some(gate), active),
            None => (None, true),
        };
        let state = RouterThread {
            router,
            config: Arc::clone(config),
            apps,
            gate,
            active,
            queues,
            stats,
            inbox: receiver,
            senders,
            idle,
            in_flight: 0,
            drained: Vec::new(),
            core_drops_seen: 0,
            stopping: None,
            unknown_app_drops: 0,
        };
        let thread = std::thread::Builder::new()
            .name("ringcast-webhooks".to_string())
            .spawn(move || state.run())?;
        Ok(WebhookWorker {
            inbox,
            thread: Some(thread),
        })
    }

    /// A reloaded config and app table (SIGHUP); send it before the cores get theirs.
    pub fn reload(&self, config: Arc<Config>, apps: Arc<Apps>) {
        let _ = self.inbox.send(Message::Reload { config, apps });
    }

    /// Stops the worker after the cores stopped: what is held, open or queued is sent, for at
    /// most `flush_for` (no retry waits beyond it); the rest is lost (the outbox is in memory).
    pub fn stop(mut self, flush_for: Duration) {
        let _ = self.inbox.send(Message::Stop {
            deadline: Instant::now() + flush_for,
        });
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct RouterThread {
    router: Router,
    /// The config and apps the router was last given (a new router takes them).
    config: Arc<Config>,
    apps: Arc<Apps>,
    gate: Option<Arc<dyn OutboxGate>>,
    /// The router holds the durable outbox (always true without a gate).
    active: bool,
    queues: Arc<WebhookQueues>,
    stats: Arc<WebhookStats>,
    inbox: Receiver<Message>,
    senders: Vec<Sender<(Job, Duration)>>,
    idle: Vec<usize>,
    /// POSTs handed to senders and not answered yet.
    in_flight: usize,
    /// Per-core events taken in one drain, merged by creation time.
    drained: Vec<VecDeque<WebhookEvent>>,
    core_drops_seen: u64,
    stopping: Option<Instant>,
    unknown_app_drops: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RouterThread {
    fn run(mut self) {
        loop {
            while let Ok(message) = self.inbox.try_recv() {
                self.handle(message);
            }
            let now = Instant::now();
            self.follow_gate(now);
            self.drain_queues(now);
            if self.stopping.is_some() {
                self.router.flush(now);
            }
            self.router.tick(now);
            self.router.maintain_outbox(now, unix_ms());
            self.exit_if_outbox_failed();
            self.dispatch(now);
            if let Some(deadline) = self.stopping
                && ((self.router.is_idle() && self.in_flight == 0) || now >= deadline)
            {
                if !self.router.is_idle() {
                    tracing::warn!(
                        pending = self
                            .stats
                            .pending
                            .load(std::sync::atomic::Ordering::Relaxed),
                        "stopping with webhooks undelivered"
                    );
                }
                return;
            }
            let wait = self
                .router
                .next_deadline(!self.idle.is_empty())
                .map_or(POLL_MAX, |at| at.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), POLL_MAX);
            match self.inbox.recv_timeout(wait) {
                Ok(message) => self.handle(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The outbox can no longer persist anything: exit before anything more is sent or
    /// acknowledged (the PostgreSQL fsync rule; systemd restarts us and the log is recovered).
    fn exit_if_outbox_failed(&self) {
        if let Some(failure) = self.router.outbox_failure() {
            tracing::error!(%failure, "webhook outbox failed; exiting so that nothing is acknowledged that was not persisted");
            eprintln!("ringcast: webhook outbox failed: {failure}; exiting");
            std::process::exit(1);
        }
    }

    /// With a gate: opens the outbox once this node is the primary (pending batches are sent
    /// at once), closes it when it no longer is.
    fn follow_gate(&mut self, now: Instant) {
        let Some(gate) = self.gate.clone() else {
            return;
        };
        if self.active {
            if gate.must_close() {
                let dormant = dormant_outbox(&self.config);
                self.replace_router(dormant, now);
                self.active = false;
                gate.closed();
                tracing::info!("webhook outbox closed: this node is no longer the primary");
            }
            return;
        }
        match gate.open(&self.config, &self.apps) {
            None => {}
            Some(Ok(outbox)) => {
                self.replace_router(outbox, now);
                self.active = true;
                tracing::info!("webhook outbox open: this node is the primary");
            }
            Some(Err(error)) => {
                tracing::error!(%error, "cannot recover the webhook outbox; exiting");
                eprintln!("ringcast: cannot recover the webhook outbox: {error}; exiting");
                std::process::exit(1);
            }
        }
    }

    /// A new router over `outbox` (the old one's outbox is dropped: a durable one syncs and
    /// closes its stream). POSTs in flight report to the new router, which knows none of
    /// their targets' heads and ignores them.
    fn replace_router(&mut self, outbox: Box<dyn Outbox>, now: Instant) {
        let stats = Arc::clone(&self.stats);
        let router = Router::new(&self.config, &self.apps, outbox, stats, now, unix_ms());
        self.router = router;
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Reload { config, apps } => {
                self.router.set_apps(&config, &apps);
                self.config = config;
                self.apps = apps;
            }
            Message::Done {
                sender,
                target,
                outcome,
            } => {
                self.idle.push(sender);
                self.in_flight -= 1;
                self.router
                    .completed(&target, outcome, Instant::now(), unix_ms());
            }
            Message::Stop { deadline } => self.stopping = Some(deadline),
        }
    }

    /// Takes what the cores queued and feeds it to the router, merged across cores by creation
    /// time (a client event, made on its sender's core, lands between the owner's events of
    /// its channel as it happened); each core's own order is never changed.
    fn drain_queues(&mut self, now: Instant) {
        let cores = self.queues.cores();
        self.drained.resize_with(cores, VecDeque::new);
        let mut total = 0;
        for core in 0..cores {
            for _ in 0..WEBHOOK_DRAIN_PER_CORE_MAX {
                let Some(event) = self.queues.pop(core) else {
                    break;
                };
                self.drained[core].push_back(event);
                total += 1;
            }
        }
        for _ in 0..total {
            let core = (0..cores)
                .filter_map(|core| self.drained[core].front().map(|e| (e.created_ms, core)))
                .min()
                .map(|(_, core)| core)
                .expect("counted above");
            let event = self.drained[core].pop_front().expect("front seen");
            if let Err(event) = self.router.accept(event, now) {
                // An app this table does not know yet: a reload may be on its way.
                while let Ok(message) = self.inbox.try_recv() {
                    self.handle(message);
                }
                if self.router.accept(event, now).is_err() {
                    WebhookStats::add(&self.stats.dropped, 1);
                    self.unknown_app_drops += 1;
                    if self.unknown_app_drops.is_power_of_two() {
                        tracing::warn!(
                            dropped = self.unknown_app_drops,
                            "webhook event of an unknown app dropped"
                        );
                    }
                }
            }
        }
        // Events the cores could not queue (their queue was full) count as dropped too.
        let core_drops = self
            .queues
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        if core_drops > self.core_drops_seen {
            WebhookStats::add(&self.stats.dropped, core_drops - self.core_drops_seen);
            self.core_drops_seen = core_drops;
        }
    }

    fn dispatch(&mut self, now: Instant) {
        if self.idle.is_empty() {
            return;
        }
        let timeout = self.router.settings().timeout;
        for job in self.router.due_jobs(now, self.idle.len()) {
            let sender = self.idle.pop().expect("at most one job per idle sender");
            self.in_flight += 1;
            if let Err(mpsc::SendError((job, _))) = self.senders[sender].send((job, timeout)) {
                // The sender thread is gone (it cannot panic short of a bug): report a failure
                // so the batch is retried elsewhere, and leave that sender out.
                self.in_flight -= 1;
                self.router.completed(
                    &job.batch.target,
                    Outcome::Failed("sender thread gone".to_string()),
                    now,
                    unix_ms(),
                );
            }
        }
    }
}

/// One sender thread: POSTs what it is given, reports each outcome.
fn send_loop(index: usize, jobs: Receiver<(Job, Duration)>, results: Sender<Message>) {
    let mut agent: Option<(Duration, ureq::Agent)> = None;
    while let Ok((job, timeout)) = jobs.recv() {
        let agent = match &agent {
            Some((current, agent)) if *current == timeout => agent,
            _ => &agent.insert((timeout, new_agent(timeout))).1,
        };
        let outcome = post(agent, &job);
        let done = Message::Done {
            sender: index,
            target: job.batch.target.clone(),
            outcome,
        };
        if results.send(done).is_err() {
            return;
        }
    }
}

fn new_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("ringcast-webhooks/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// One POST of a sealed batch: 2xx is delivered, anything else (status, timeout, connection
/// error) failed.
fn post(agent: &ureq::Agent, job: &Job) -> Outcome {
    let batch = &job.batch;
    let mut request = agent
        .post(&*batch.target.url)
        .header("Content-Type", "application/json")
        .header("X-Pusher-Key", &*batch.app_key)
        .header("X-Pusher-Signature", &*batch.signature)
        .header(WEBHOOK_ID_HEADER, &*batch.id);
    for (name, value) in batch.headers.iter() {
        request = request.header(&**name, &**value);
    }
    match request.send(batch.body.as_bytes()) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let _ = response
                .body_mut()
                .with_config()
                .limit(WEBHOOK_RESPONSE_BYTES_MAX)
                .read_to_vec();
            if (200..300).contains(&status) {
                Outcome::Delivered
            } else {
                Outcome::Failed(format!("HTTP {status} (attempt {})", job.attempt))
            }
        }
        Err(error) => Outcome::Failed(format!("{error} (attempt {})", job.attempt)),
    }
}
