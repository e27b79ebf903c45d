//! The delivery state machine, sans-IO (the worker passes `Instant`s in and carries out the
//! POSTs): what happens to an event between a core's queue and a 2xx.
//!
//! 1. **Removal delay** (`apps[].webhook_removal_delay_ms`): `channel_vacated` and
//!    `member_removed` wait in their channel's hold queue; a `channel_occupied` (same channel)
//!    or `member_added` (same channel and user) arriving meanwhile cancels both. Any other event
//!    of a channel with something held queues behind it, so per-channel order is kept.
//! 2. **Routing**: each target of the app gets the events its `event_types` and
//!    `channel_prefix` select.
//! 3. **Batching**: per target, events collect for `batch_window_ms` (or until
//!    `batch_events_max`, or the body nears `WEBHOOK_BATCH_BODY_BYTES_MAX`); the batch is then sealed
//!    (body, HMAC signature, unique id: fixed from here on) and appended to the outbox.
//! 4. **Delivery**: one batch in flight per target, oldest first (so a channel's events never
//!    overtake each other, retries included). A failure is retried with exponential back-off
//!    and jitter until `retry_for_secs` after the batch's first attempt, then dropped and
//!    counted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbox::{Batch, Outbox, Settled, TargetKey};
use super::{WebhookEvent, WebhookKind, WebhookStats};
use crate::config::{Config, WebhooksConfig};
use crate::http::signature::hmac_sha256_hex;
use crate::shard::Apps;

use crate::limits::WEBHOOK_BATCH_BODY_BYTES_MAX;

/// The `[webhooks]` settings, as durations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_window: Duration,
    pub batch_events_max: usize,
    pub timeout: Duration,
    pub retry_for: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The outbox bound in events; also the bound of events held by the removal delay.
    pub outbox_max: usize,
}

impl Settings {
    pub fn from_config(config: &WebhooksConfig) -> Settings {
        Settings {
            batch_window: Duration::from_millis(config.batch_window_ms),
            batch_events_max: config.batch_events_max.max(1),
            timeout: Duration::from_millis(config.timeout_ms),
            retry_for: Duration::from_secs(config.retry_for_secs),
            retry_initial: Duration::from_millis(config.retry_initial_ms),
            retry_max: Duration::from_millis(config.retry_max_ms.max(config.retry_initial_ms)),
            outbox_max: config.outbox_max,
        }
    }
}

/// One target as configured: where, which events, which extra headers.
#[derive(Debug)]
struct Route {
    target: TargetKey,
    /// `WebhookKind::bit`s selected by `event_types` (all when it is empty).
    kinds: u8,
    prefix: Option<Box<str>>,
    headers: Headers,
}

impl Route {
    fn accepts(&self, event: &WebhookEvent) -> bool {
        self.kinds & event.kind.bit() != 0
            && self
                .prefix
                .as_deref()
                .is_none_or(|prefix| event.channel.starts_with(prefix))
    }
}

/// What the router needs of one app.
#[derive(Debug)]
struct AppRoutes {
    key: Arc<str>,
    secret: Arc<str>,
    removal_delay: Duration,
    routes: Vec<Route>,
}

/// An event held by the removal delay, or queued behind one.
#[derive(Debug)]
struct Held {
    due: Instant,
    event: WebhookEvent,
}

type ChannelKey = (u32, Arc<str>);
/// A target's extra headers, shared by its batches.
type Headers = Arc<[(Box<str>, Box<str>)]>;
/// A held removal's due time, a tie-breaking sequence number, and its channel (app, name).
type DueAt = Reverse<(Instant, u64, u32, Arc<str>)>;

/// A batch still collecting events.
#[derive(Debug)]
struct Open {
    opened: Instant,
    time_ms: u64,
    /// The event objects so far, comma-separated.
    events: String,
    count: usize,
    app_key: Arc<str>,
    secret: Arc<str>,
    headers: Headers,
}

/// The delivery state of a target's oldest batch.
#[derive(Debug)]
struct Head {
    attempts: u32,
    first_attempt: Option<Instant>,
    next_at: Instant,
    in_flight: bool,
}

impl Head {
    fn fresh(now: Instant) -> Head {
        Head {
            attempts: 0,
            first_attempt: None,
            next_at: now,
            in_flight: false,
        }
    }
}

/// A POST to make: the worker sends it and reports an `Outcome` for `batch.target`.
#[derive(Debug, Clone)]
pub struct Job {
    pub batch: Arc<Batch>,
    /// 1 for the first attempt.
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Anything else: a status, a timeout, a connection error.
    Failed(String),
}

pub struct Router {
    settings: Settings,
    apps: HashMap<u32, AppRoutes>,
    /// Apps a reload removed: their last events are ignored, not handed back as unknown.
    retired: HashSet<u32>,
    held: HashMap<ChannelKey, VecDeque<Held>>,
    /// When each held removal is due, with its channel (an entry whose removal was cancelled
    /// only releases what is due in that channel anyway).
    held_due: BinaryHeap<DueAt>,
    held_count: usize,
    held_seq: u64,
    open: HashMap<TargetKey, Open>,
    /// Targets with at least one batch in the outbox, and how their oldest is doing.
    heads: HashMap<TargetKey, Head>,
    outbox: Box<dyn Outbox>,
    stats: Arc<WebhookStats>,
    id_prefix: u64,
    next_id: u64,
    /// Shutting down: no removal delay, no batching window.
    flushing: bool,
    outbox_full_drops: u64,
}

impl Router {
    /// A router over `outbox`. Batches already in it (a durable outbox after a restart) are
    /// sent at once, and the oldest of each target keeps the retry budget it had before the
    /// restart: `retry_for_secs` counted from its `time_ms` (wall clock, `now_unix_ms` now),
    /// so a crash loop never extends it. The batches behind it get theirs when they come up,
    /// as they would have.
    pub fn new(
        config: &Config,
        apps: &Apps,
        outbox: Box<dyn Outbox>,
        stats: Arc<WebhookStats>,
        now: Instant,
        now_unix_ms: u64,
    ) -> Router {
        let heads = outbox
            .targets()
            .into_iter()
            .map(|target| {
                let mut head = Head::fresh(now);
                if let Some(batch) = outbox.peek(&target) {
                    let age = Duration::from_millis(now_unix_ms.saturating_sub(batch.time_ms));
                    head.first_attempt = Some(now.checked_sub(age).unwrap_or(now));
                }
                (target, head)
            })
            .collect();
        let mut router = Router {
            settings: Settings::from_config(&config.webhooks),
            apps: HashMap::new(),
            retired: HashSet::new(),
            held: HashMap::new(),
            held_due: BinaryHeap::new(),
            held_count: 0,
            held_seq: 0,
            open: HashMap::new(),
            heads,
            outbox,
            stats,
            id_prefix: rand::random::<u64>(),
            next_id: 0,
            flushing: false,
            outbox_full_drops: 0,
        };
        router.set_apps(config, apps);
        router.update_pending();
        router
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Takes a (re)loaded config and app table: targets, keys, secrets, delays and settings
    /// apply to what is routed and sealed from now on; sealed batches stay as they are.
    pub fn set_apps(&mut self, config: &Config, apps: &Apps) {
        self.retired.extend(self.apps.keys());
        self.apps.clear();
        for app in &config.apps {
            let Some(index) = apps.by_id(&app.id) else {
                continue;
            };
            let routes = app
                .webhooks
                .iter()
                .map(|webhook| Route {
                    target: TargetKey {
                        app: index,
                        url: Arc::from(webhook.url.as_str()),
                    },
                    kinds: if webhook.event_types.is_empty() {
                        u8::MAX
                    } else {
                        webhook
                            .event_types
                            .iter()
                            .filter_map(|name| WebhookKind::from_name(name))
                            .fold(0, |bits, kind| bits | kind.bit())
                    },
                    prefix: webhook
                        .channel_prefix
                        .as_deref()
                        .filter(|prefix| !prefix.is_empty())
                        .map(Box::from),
                    headers: webhook
                        .headers
                        .iter()
                        .map(|(name, value)| (Box::from(name.as_str()), Box::from(value.as_str())))
                        .collect(),
                })
                .collect();
            self.apps.insert(
                index,
                AppRoutes {
                    key: Arc::from(app.key.as_str()),
                    secret: Arc::from(app.secret.as_str()),
                    removal_delay: Duration::from_millis(app.webhook_removal_delay_ms),
                    routes,
                },
            );
        }
        for index in self.apps.keys() {
            self.retired.remove(index);
        }
        self.settings = Settings::from_config(&config.webhooks);
        self.outbox.set_capacity(self.settings.outbox_max);
        self.outbox.set_app_ids(&super::app_ids(config, apps));
    }

    /// The outbox's periodic work (see `Outbox::maintain`).
    pub fn maintain_outbox(&mut self, now: Instant, now_unix_ms: u64) {
        self.outbox.maintain(now, now_unix_ms);
    }

    /// Why the outbox cannot store anything any more (the process must exit).
    pub fn outbox_failure(&self) -> Option<String> {
        self.outbox.failure()
    }

    /// Takes one event from a core. `Err` hands it back when its app index is not in the
    /// table (the worker has not seen the reload that added the app yet); events of apps a
    /// reload removed are ignored.
    pub fn accept(&mut self, event: WebhookEvent, now: Instant) -> Result<(), WebhookEvent> {
        let Some(app) = self.apps.get(&event.app) else {
            if self.retired.contains(&event.app) {
                return Ok(());
            }
            return Err(event);
        };
        if app.routes.is_empty() {
            return Ok(());
        }
        let delay = if self.flushing {
            Duration::ZERO
        } else {
            app.removal_delay
        };
        let removal = matches!(
            event.kind,
            WebhookKind::ChannelVacated | WebhookKind::MemberRemoved
        ) && !delay.is_zero();
        let channel: ChannelKey = (event.app, Arc::clone(&event.channel));
        if let Some(queue) = self.held.get_mut(&channel) {
            let cancels = match event.kind {
                WebhookKind::ChannelOccupied => queue
                    .iter()
                    .rposition(|held| held.event.kind == WebhookKind::ChannelVacated),
                WebhookKind::MemberAdded => queue.iter().rposition(|held| {
                    held.event.kind == WebhookKind::MemberRemoved
                        && held.event.user_id == event.user_id
                }),
                _ => None,
            };
            if let Some(index) = cancels {
                queue.remove(index);
                self.held_count -= 1;
                WebhookStats::add(&self.stats.cancelled, 1);
                self.release_channel(&channel, now, false);
                return Ok(());
            }
            if self.held_count >= self.settings.outbox_max {
                // The hold is full: this channel's held events go now, in order.
                self.release_channel(&channel, now, true);
                self.route(event, now);
                return Ok(());
            }
            let due = if removal { now + delay } else { now };
            queue.push_back(Held { due, event });
            self.held_count += 1;
            if removal {
                self.schedule_release(due, channel);
            }
            return Ok(());
        }
        if removal && self.held_count < self.settings.outbox_max {
            let due = now + delay;
            self.held
                .insert(channel.clone(), VecDeque::from([Held { due, event }]));
            self.held_count += 1;
            self.schedule_release(due, channel);
            return Ok(());
        }
        self.route(event, now);
        Ok(())
    }

    fn schedule_release(&mut self, due: Instant, channel: ChannelKey) {
        self.held_seq += 1;
        self.held_due
            .push(Reverse((due, self.held_seq, channel.0, channel.1)));
    }

    /// Routes the channel's held events from the front while they are due (all of them when
    /// `all`).
    fn release_channel(&mut self, channel: &ChannelKey, now: Instant, all: bool) {
        let Some(queue) = self.held.get_mut(channel) else {
            return;
        };
        let mut ready = Vec::new();
        while queue.front().is_some_and(|held| all || held.due <= now) {
            ready.push(queue.pop_front().expect("checked").event);
        }
        if queue.is_empty() {
            self.held.remove(channel);
        }
        self.held_count -= ready.len();
        for event in ready {
            self.route(event, now);
        }
    }

    /// Adds the event to the open batch of every target that selects it.
    fn route(&mut self, event: WebhookEvent, now: Instant) {
        let Some(app) = self.apps.get(&event.app) else {
            return;
        };
        let targets: Vec<(TargetKey, Headers)> = app
            .routes
            .iter()
            .filter(|route| route.accepts(&event))
            .map(|route| (route.target.clone(), Arc::clone(&route.headers)))
            .collect();
        if targets.is_empty() {
            return;
        }
        let (app_key, secret) = (Arc::clone(&app.key), Arc::clone(&app.secret));
        let json = event.to_json();
        for (target, headers) in targets {
            let overflows = self.open.get(&target).is_some_and(|open| {
                open.events.len() + 1 + json.len() > WEBHOOK_BATCH_BODY_BYTES_MAX
            });
            if overflows {
                self.seal(&target, now);
            }
            let open = self.open.entry(target.clone()).or_insert_with(|| Open {
                opened: now,
                time_ms: event.created_ms,
                events: String::new(),
                count: 0,
                app_key: Arc::clone(&app_key),
                secret: Arc::clone(&secret),
                headers,
            });
            if open.count > 0 {
                open.events.push(',');
            }
            open.events.push_str(&json);
            open.count += 1;
            if open.count >= self.settings.batch_events_max
                || self.settings.batch_window.is_zero()
                || self.flushing
            {
                self.seal(&target, now);
            }
        }
    }

    /// Closes the target's open batch: body, signature and id are fixed, and it goes to the
    /// outbox (or is dropped and counted when the outbox is full).
    fn seal(&mut self, target: &TargetKey, now: Instant) {
        let Some(open) = self.open.remove(target) else {
            return;
        };
        let body = format!(
            r#"{{"time_ms":{},"events":[{}]}}"#,
            open.time_ms, open.events
        );
        let signature = hmac_sha256_hex(&open.secret, &body);
        self.next_id += 1;
        let batch = Arc::new(Batch {
            id: format!("{:016x}-{}", self.id_prefix, self.next_id).into(),
            target: target.clone(),
            app_key: Box::from(&*open.app_key),
            signature: signature.into(),
            headers: open.headers,
            body: body.into(),
            events: open.count,
            time_ms: open.time_ms,
        });
        match self.outbox.push(batch) {
            Ok(()) => {
                WebhookStats::add(&self.stats.queued, open.count as u64);
                self.heads
                    .entry(target.clone())
                    .or_insert_with(|| Head::fresh(now));
            }
            Err(batch) => {
                WebhookStats::add(&self.stats.dropped, batch.events as u64);
                self.outbox_full_drops += 1;
                if self.outbox_full_drops.is_power_of_two() {
                    tracing::warn!(
                        url = %target.url,
                        events = batch.events,
                        outbox_events = self.outbox.events(),
                        batches_dropped = self.outbox_full_drops,
                        "webhook outbox full: batch dropped (webhooks.outbox_max)"
                    );
                }
            }
        }
        self.update_pending();
    }

    fn update_pending(&self) {
        self.stats.pending.store(
            self.outbox.events() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Timers: due removals are released, batches whose window ended are sealed.
    pub fn tick(&mut self, now: Instant) {
        while let Some(Reverse((due, ..))) = self.held_due.peek() {
            if *due > now {
                break;
            }
            let Reverse((_, _, app, channel)) = self.held_due.pop().expect("peeked");
            self.release_channel(&(app, channel), now, false);
        }
        let window = self.settings.batch_window;
        let ended: Vec<TargetKey> = self
            .open
            .iter()
            .filter(|(_, open)| open.opened + window <= now)
            .map(|(target, _)| target.clone())
            .collect();
        for target in ended {
            self.seal(&target, now);
        }
    }

    /// Shutting down: from now on nothing is held or left open; what is, goes now.
    pub fn flush(&mut self, now: Instant) {
        self.flushing = true;
        let mut channels: Vec<ChannelKey> = self.held.keys().cloned().collect();
        channels.sort();
        for channel in channels {
            self.release_channel(&channel, now, true);
        }
        self.held_due.clear();
        let targets: Vec<TargetKey> = self.open.keys().cloned().collect();
        for target in targets {
            self.seal(&target, now);
        }
    }

    /// Up to `max` POSTs due now, the longest-waiting targets first; each target's oldest
    /// batch, and only when that target has nothing in flight.
    pub fn due_jobs(&mut self, now: Instant, max: usize) -> Vec<Job> {
        if max == 0 {
            return Vec::new();
        }
        let mut due: Vec<(Instant, TargetKey)> = self
            .heads
            .iter()
            .filter(|(_, head)| !head.in_flight && head.next_at <= now)
            .map(|(target, head)| (head.next_at, target.clone()))
            .collect();
        due.sort();
        let mut jobs = Vec::new();
        for (_, target) in due.into_iter().take(max) {
            let Some(batch) = self.outbox.peek(&target) else {
                self.heads.remove(&target);
                continue;
            };
            let head = self.heads.get_mut(&target).expect("listed above");
            head.in_flight = true;
            head.attempts += 1;
            head.first_attempt.get_or_insert(now);
            jobs.push(Job {
                batch,
                attempt: head.attempts,
            });
        }
        jobs
    }

    /// The answer to the POST of `target`'s oldest batch. `now_unix_ms` measures latency.
    pub fn completed(
        &mut self,
        target: &TargetKey,
        outcome: Outcome,
        now: Instant,
        now_unix_ms: u64,
    ) {
        let Some(head) = self.heads.get_mut(target) else {
            return;
        };
        head.in_flight = false;
        match outcome {
            Outcome::Delivered => {
                if let Some(batch) = self.outbox.ack(target, Settled::Delivered) {
                    WebhookStats::add(&self.stats.delivered, batch.events as u64);
                    self.stats
                        .latency(now_unix_ms.saturating_sub(batch.time_ms));
                    if head.attempts > 1 {
                        tracing::info!(
                            url = %target.url,
                            id = %batch.id,
                            attempts = head.attempts,
                            "webhook delivered after retries"
                        );
                    }
                }
                self.next_head(target, now);
            }
            Outcome::Failed(error) => {
                let first = *head.first_attempt.get_or_insert(now);
                let deadline = first + self.settings.retry_for;
                let attempts = head.attempts;
                if now >= deadline {
                    if let Some(batch) = self.outbox.ack(target, Settled::GaveUp) {
                        WebhookStats::add(&self.stats.dropped, batch.events as u64);
                        tracing::warn!(
                            url = %target.url,
                            id = %batch.id,
                            events = batch.events,
                            attempts,
                            %error,
                            retried_for_secs = self.settings.retry_for.as_secs(),
                            "webhook dropped: retries exhausted"
                        );
                    }
                    self.next_head(target, now);
                    return;
                }
                let delay = backoff(&self.settings, attempts);
                head.next_at = (now + delay).min(deadline);
                WebhookStats::add(&self.stats.retried, 1);
                if attempts == 1 {
                    tracing::warn!(url = %target.url, %error, retry_in_ms = delay.as_millis() as u64, "webhook POST failed; retrying");
                } else {
                    tracing::debug!(url = %target.url, %error, attempts, retry_in_ms = delay.as_millis() as u64, "webhook POST failed again; retrying");
                }
            }
        }
        self.update_pending();
    }

    fn next_head(&mut self, target: &TargetKey, now: Instant) {
        if self.outbox.peek(target).is_some() {
            self.heads.insert(target.clone(), Head::fresh(now));
        } else {
            self.heads.remove(target);
        }
        self.update_pending();
    }

    /// The earliest moment `tick` or `due_jobs` has something to do (retries only count when
    /// a sender is free to make them: a busy one reports back when it is done).
    pub fn next_deadline(&self, sender_free: bool) -> Option<Instant> {
        let held = self.held_due.peek().map(|Reverse((due, ..))| *due);
        let window = self.settings.batch_window;
        let open = self.open.values().map(|open| open.opened + window).min();
        let retry = self
            .heads
            .values()
            .filter(|head| sender_free && !head.in_flight)
            .map(|head| head.next_at)
            .min();
        [held, open, retry].into_iter().flatten().min()
    }

    /// Nothing held, open, queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty() && self.open.is_empty() && self.heads.is_empty()
    }
}

/// Exponential back-off with jitter: `retry_initial` doubling per failed attempt up to
/// `retry_max`, then a random point in its upper half.
fn backoff(settings: &Settings, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = settings
        .retry_initial
        .saturating_mul(1 << exponent)
        .min(settings.retry_max);
    let half = full / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::super::MemoryOutbox;
    use super::*;
    use std::sync::atomic::Ordering;

    const APP: &str =
        "version = 1\n[[apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"app-secret\"\n";

    fn router(extra: &str) -> (Router, Arc<WebhookStats>, Instant) {
        let config = crate::config::parse(&format!("{APP}{extra}"))
            .unwrap()
            .config;
        let apps = Apps::new(&config);
        let stats = Arc::new(WebhookStats::default());
        let now = Instant::now();
        let outbox = Box::new(MemoryOutbox::new(config.webhooks.outbox_max));
        (
            Router::new(&config, &apps, outbox, Arc::clone(&stats), now, 0),
            stats,
            now,
        )
    }

    fn event(kind: WebhookKind, channel: &str, created_ms: u64) -> WebhookEvent {
        WebhookEvent::new(0, kind, Arc::from(channel), created_ms)
    }

    fn member(kind: WebhookKind, channel: &str, user: &str) -> WebhookEvent {
        let mut event = event(kind, channel, 1);
        event.user_id = Some(Arc::from(user));
        event
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The event names (and channels) of a job's body.
    fn names(job: &Job) -> Vec<String> {
        let body: serde_json::Value = serde_json::from_str(&job.batch.body).unwrap();
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut name = format!(
                    "{}:{}",
                    e["name"].as_str().unwrap(),
                    e["channel"].as_str().unwrap()
                );
                if let Some(user) = e["user_id"].as_str() {
                    name.push_str(&format!(":{user}"));
                }
                name
            })
            .collect()
    }

    #[test]
    fn batches_within_the_window_and_signs_the_exact_body() {
        let (mut router, stats, t0) =
            router("[[apps.webhooks]]\nurl = \"http://127.0.0.1:1/hook\"\n");
        router
            .accept(
                event(WebhookKind::ChannelOccupied, "my-channel", 1327078148132),
                t0,
            )
            .unwrap();
        router
            .accept(
                event(WebhookKind::ChannelOccupied, "other", 1327078148140),
                t0 + ms(10),
            )
            .unwrap();
        router.tick(t0 + ms(49));
        assert!(
            router.due_jobs(t0 + ms(49), 8).is_empty(),
            "window still open"
        );
        assert_eq!(router.next_deadline(true), Some(t0 + ms(50)));
        router.tick(t0 + ms(50));
        let jobs = router.due_jobs(t0 + ms(50), 8);
        assert_eq!(jobs.len(), 1);
        let batch = &jobs[0].batch;
        assert_eq!(
            &*batch.body,
            r#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"},{"name":"channel_occupied","channel":"other"}]}"#
        );
        assert_eq!(&*batch.app_key, "app-key");
        assert_eq!(
            &*batch.signature,
            hmac_sha256_hex("app-secret", &batch.body)
        );
        assert_eq!(batch.events, 2);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        router.completed(
            &batch.target.clone(),
            Outcome::Delivered,
            t0 + ms(60),
            1327078148200,
        );
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(stats.latency_count.load(Ordering::Relaxed), 1);
        assert!(router.is_idle());
    }

    #[test]
    fn spec_vector_body_and_signature() {
        // Spec §11.3, first vector, with the vector's secret.
        let config = crate::config::parse(
            "version = 1\n[webhooks]\nbatch_window_ms = 0\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"7ad3773142a6692b25b8\"\n[[apps.webhooks]]\nurl = \"http://h/\"\n",
        )
        .unwrap()
        .config;
        let apps = Apps::new(&config);
        let now = Instant::now();
        let mut router = Router::new(
            &config,
            &apps,
            Box::new(MemoryOutbox::new(10)),
            Arc::new(WebhookStats::default()),
            now,
            0,
        );
        router
            .accept(
                event(WebhookKind::ChannelOccupied, "my-channel", 1327078148132),
                now,
            )
            .unwrap();
        let jobs = router.due_jobs(now, 1);
        assert_eq!(
            &*jobs[0].batch.body,
            r#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}"#
        );
        assert_eq!(
            &*jobs[0].batch.signature,
            "c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf"
        );
    }

    #[test]
    fn filters_by_event_type_and_channel_prefix() {
        let (mut router, _, t0) = router(
            "[[apps.webhooks]]\nurl = \"http://a/\"\nevent_types = [\"member_added\"]\n[[apps.webhooks]]\nurl = \"http://b/\"\nchannel_prefix = \"private-\"\n",
        );
        router
            .accept(member(WebhookKind::MemberAdded, "presence-x", "u1"), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelOccupied, "private-y", 1), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelOccupied, "public", 1), t0)
            .unwrap();
        router.tick(t0 + ms(50));
        let mut jobs = router.due_jobs(t0 + ms(50), 8);
        jobs.sort_by(|a, b| a.batch.target.cmp(&b.batch.target));
        assert_eq!(jobs.len(), 2);
        assert_eq!(&*jobs[0].batch.target.url, "http://a/");
        assert_eq!(names(&jobs[0]), ["member_added:presence-x:u1"]);
        assert_eq!(names(&jobs[1]), ["channel_occupied:private-y"]);
    }

    #[test]
    fn one_batch_in_flight_per_target_and_retries_keep_id_and_body() {
        let (mut router, stats, t0) = router(
            "[webhooks]\nbatch_window_ms = 0\nretry_initial_ms = 100\nretry_max_ms = 400\nretry_for_secs = 2\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
        );
        router
            .accept(event(WebhookKind::ChannelOccupied, "c", 1), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelVacated, "c", 2), t0)
            .unwrap();
        let jobs = router.due_jobs(t0, 8);
        assert_eq!(jobs.len(), 1, "the second batch waits for the first");
        let first = jobs[0].batch.clone();
        let target = first.target.clone();
        router.completed(&target, Outcome::Failed("HTTP 500".into()), t0, 0);
        assert_eq!(stats.retried.load(Ordering::Relaxed), 1);
        let retry_at = router.next_deadline(true).unwrap();
        assert!(
            retry_at >= t0 + ms(50) && retry_at <= t0 + ms(100),
            "{:?}",
            retry_at - t0
        );
        assert!(router.due_jobs(retry_at - ms(1), 8).is_empty());
        let jobs = router.due_jobs(retry_at, 8);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].attempt, 2);
        assert_eq!(jobs[0].batch.id, first.id);
        assert_eq!(jobs[0].batch.body, first.body);
        router.completed(&target, Outcome::Delivered, retry_at, 0);
        let jobs = router.due_jobs(retry_at, 8);
        assert_eq!(names(&jobs[0]), ["channel_vacated:c"]);
        assert_ne!(jobs[0].batch.id, first.id);
    }

    #[test]
    fn gives_up_after_retry_for_and_counts_the_drop() {
        let (mut router, stats, t0) = router(
            "[webhooks]\nbatch_window_ms = 0\nretry_initial_ms = 1000\nretry_max_ms = 60000\nretry_for_secs = 5\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
        );
        router
            .accept(event(WebhookKind::ChannelOccupied, "c", 1), t0)
            .unwrap();
        let mut now = t0;
        let mut attempts = 0;
        loop {
            let jobs = router.due_jobs(now, 1);
            if jobs.is_empty() {
                match router.next_deadline(true) {
                    Some(next) => {
                        now = next;
                        continue;
                    }
                    None => break,
                }
            }
            attempts += 1;
            assert!(
                now <= t0 + Duration::from_secs(5),
                "no attempt after the deadline"
            );
            router.completed(
                &jobs[0].batch.target.clone(),
                Outcome::Failed("refused".into()),
                now,
                0,
            );
        }
        assert!(attempts >= 3, "{attempts}");
        assert!(now >= t0 + Duration::from_secs(5));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.retried.load(Ordering::Relaxed), attempts - 1);
        assert!(router.is_idle());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let settings = Settings::from_config(&WebhooksConfig::default());
        for _ in 0..100 {
            let first = backoff(&settings, 1);
            assert!(first >= ms(500) && first <= ms(1000), "{first:?}");
            let third = backoff(&settings, 3);
            assert!(third >= ms(2000) && third <= ms(4000), "{third:?}");
            let late = backoff(&settings, 40);
            assert!(late >= ms(30_000) && late <= ms(60_000), "{late:?}");
        }
    }

    #[test]
    fn a_full_outbox_drops_and_counts() {
        let (mut router, stats, t0) = router(
            "[webhooks]\nbatch_window_ms = 0\noutbox_max = 2\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
        );
        for n in 0..5 {
            router
                .accept(event(WebhookKind::ChannelOccupied, &format!("c{n}"), 1), t0)
                .unwrap();
        }
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.pending.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn removal_delay_cancels_vacate_and_reoccupy() {
        let (mut router, stats, t0) = router(
            "webhook_removal_delay_ms = 3000\n[webhooks]\nbatch_window_ms = 0\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
        );
        router
            .accept(member(WebhookKind::MemberRemoved, "presence-p", "u1"), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelVacated, "presence-p", 1), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelVacated, "gone", 1), t0)
            .unwrap();
        assert!(router.due_jobs(t0, 8).is_empty(), "held");
        router
            .accept(
                event(WebhookKind::ChannelOccupied, "presence-p", 1),
                t0 + ms(1000),
            )
            .unwrap();
        router
            .accept(
                member(WebhookKind::MemberAdded, "presence-p", "u1"),
                t0 + ms(1000),
            )
            .unwrap();
        router
            .accept(
                member(WebhookKind::MemberAdded, "presence-p", "u2"),
                t0 + ms(1000),
            )
            .unwrap();
        assert_eq!(stats.cancelled.load(Ordering::Relaxed), 2);
        let jobs = router.due_jobs(t0 + ms(1000), 8);
        assert_eq!(names(&jobs[0]), ["member_added:presence-p:u2"]);
        router.completed(
            &jobs[0].batch.target.clone(),
            Outcome::Delivered,
            t0 + ms(1000),
            0,
        );
        router.tick(t0 + ms(2999));
        assert!(router.due_jobs(t0 + ms(2999), 8).is_empty());
        router.tick(t0 + ms(3000));
        let jobs = router.due_jobs(t0 + ms(3000), 8);
        assert_eq!(names(&jobs[0]), ["channel_vacated:gone"]);
        router.completed(
            &jobs[0].batch.target.clone(),
            Outcome::Delivered,
            t0 + ms(3000),
            0,
        );
        assert!(router.is_idle());
    }

    #[test]
    fn removal_delay_keeps_channel_order() {
        let (mut router, _, t0) =
            router("webhook_removal_delay_ms = 1000\n[[apps.webhooks]]\nurl = \"http://a/\"\n");
        router
            .accept(member(WebhookKind::MemberRemoved, "presence-p", "u1"), t0)
            .unwrap();
        router
            .accept(member(WebhookKind::MemberAdded, "presence-p", "u2"), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelOccupied, "other", 1), t0)
            .unwrap();
        router.tick(t0 + ms(50));
        let jobs = router.due_jobs(t0 + ms(50), 8);
        assert_eq!(names(&jobs[0]), ["channel_occupied:other"]);
        router.completed(
            &jobs[0].batch.target.clone(),
            Outcome::Delivered,
            t0 + ms(50),
            0,
        );
        router.tick(t0 + ms(1000));
        router.tick(t0 + ms(1050));
        let jobs = router.due_jobs(t0 + ms(1050), 8);
        assert_eq!(
            names(&jobs[0]),
            ["member_removed:presence-p:u1", "member_added:presence-p:u2"]
        );
    }

    #[test]
    fn flush_sends_everything_held_or_open() {
        let (mut router, _, t0) =
            router("webhook_removal_delay_ms = 5000\n[[apps.webhooks]]\nurl = \"http://a/\"\n");
        router
            .accept(event(WebhookKind::ChannelVacated, "c", 1), t0)
            .unwrap();
        router
            .accept(event(WebhookKind::ChannelOccupied, "d", 1), t0)
            .unwrap();
        router.flush(t0);
        let jobs = router.due_jobs(t0, 8);
        let all: Vec<String> = jobs.iter().flat_map(names).collect();
        assert_eq!(all.len(), 2, "{all:?}");
    }

    #[test]
    fn unknown_apps_are_handed_back() {
        let (mut router, _, t0) = router("[[apps.webhooks]]\nurl = \"http://a/\"\n");
        let mut stranger = event(WebhookKind::ChannelOccupied, "c", 1);
        stranger.app = 7;
        assert!(router.accept(stranger, t0).is_err());
    }

    #[test]
    fn events_of_removed_apps_are_ignored() {
        let text = |apps: &str| format!("version = 1\n{apps}");
        let app = |id: &str, key: &str| {
            format!(
                "[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"s\"\n[[apps.webhooks]]\nurl = \"http://a/\"\n"
            )
        };
        let first = crate::config::parse(&text(&format!("{}{}", app("a", "ka"), app("b", "kb"))))
            .unwrap()
            .config;
        let apps = Apps::new(&first);
        let now = Instant::now();
        let mut router = Router::new(
            &first,
            &apps,
            Box::new(MemoryOutbox::new(10)),
            Arc::new(WebhookStats::default()),
            now,
            0,
        );
        let second = crate::config::parse(&text(&app("a", "ka"))).unwrap().config;
        let reloaded = apps.reloaded(&second).unwrap();
        router.set_apps(&second, &reloaded);
        let mut gone = event(WebhookKind::ChannelVacated, "c", 1);
        gone.app = 1;
        assert!(router.accept(gone, now).is_ok());
        let mut unknown = event(WebhookKind::ChannelVacated, "c", 1);
        unknown.app = 2;
        assert!(router.accept(unknown, now).is_err());
        assert!(router.is_idle());
    }

    #[test]
    fn full_batches_are_sealed_before_the_window_ends() {
        let (mut router, _, t0) =
            router("[webhooks]\nbatch_events_max = 2\n[[apps.webhooks]]\nurl = \"http://a/\"\n");
        for n in 0..3 {
            router
                .accept(event(WebhookKind::ChannelOccupied, &format!("c{n}"), 1), t0)
                .unwrap();
        }
        let jobs = router.due_jobs(t0, 8);
        assert_eq!(
            names(&jobs[0]),
            ["channel_occupied:c0", "channel_occupied:c1"]
        );
    }
}
