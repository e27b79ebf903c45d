//! Webhooks (spec §8): the events owner cores generate, and the bounded per-core queues that
//! carry them to the delivery worker. Cores only `push` (never block, never do IO); the worker
//! thread (in `worker.rs`) batches, signs, POSTs and retries off every core. A full queue drops
//! the event, counts it and logs it: the broker keeps serving.
//!
//! Reading order: this file (events, queues, stats), `outbox.rs` (the `Outbox` interface and
//! its bounded in-memory implementation), `durable.rs` (the outbox on the write-ahead log,
//! used when `[storage] dir` is set), `router.rs` (sans-IO: removal delay, filtering,
//! batching, signing, retry schedule), `worker.rs` (the threads and the HTTP POSTs).

mod durable;
mod outbox;
mod router;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::config::Config;
use crate::shard::Apps;

pub use durable::{PositionSink, WalOutbox};
pub use outbox::{Batch, MemoryOutbox, Outbox, Settled, TargetKey};
pub use router::{Job, Outcome, Router, Settings};
pub use worker::{OutboxGate, WebhookWorker, dormant_outbox};

/// The header carrying each webhook's unique id (the same on every retry of it), so receivers
/// can de-duplicate.
pub const WEBHOOK_ID_HEADER: &str = "X-Ringcast-Webhook-Id";

/// Upper bounds (seconds) of the delivery latency histogram (first event created → 2xx).
pub const DELIVERY_LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

/// What the delivery worker counts; read by the Prometheus collector (`metrics.rs`). Events
/// are counted once per target they are sent to.
#[derive(Debug)]
pub struct WebhookStats {
    /// Events placed in the outbox.
    pub queued: AtomicU64,
    /// Events in POSTs answered with 2xx.
    pub delivered: AtomicU64,
    /// Failed POSTs (non-2xx, timeout, connection error) scheduled again.
    pub retried: AtomicU64,
    /// Events dropped: a core's queue or the outbox was full, or retries ran out.
    pub dropped: AtomicU64,
    /// Removal/re-add pairs cancelled by `webhook_removal_delay_ms` (neither is sent).
    pub cancelled: AtomicU64,
    /// Events in the outbox now (gauge).
    pub pending: AtomicU64,
    /// Per-bucket counts of delivered POSTs (last = +Inf); cumulated on scrape.
    pub latency_buckets: [AtomicU64; DELIVERY_LATENCY_BUCKETS.len() + 1],
    pub latency_sum_ms: AtomicU64,
    pub latency_count: AtomicU64,
}

impl Default for WebhookStats {
    fn default() -> WebhookStats {
        WebhookStats {
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ms: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }
}

impl WebhookStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one delivered POST whose first event was created `latency_ms` before the 2xx.
    pub fn latency(&self, latency_ms: u64) {
        let seconds = latency_ms as f64 / 1e3;
        let index = DELIVERY_LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DELIVERY_LATENCY_BUCKETS.len());
        Self::add(&self.latency_buckets[index], 1);
        Self::add(&self.latency_sum_ms, latency_ms);
        Self::add(&self.latency_count, 1);
    }
}

/// Each configured app's index (in `apps`) and id.
pub fn app_ids(config: &Config, apps: &Apps) -> Vec<(u32, Arc<str>)> {
    config
        .apps
        .iter()
        .filter_map(|app| Some((apps.by_id(&app.id)?, Arc::from(app.id.as_str()))))
        .collect()
}

/// The outbox `config` asks for: on the write-ahead log under `[storage] dir` (pending batches
/// of the previous run restored), or in memory when it is empty.
///
/// # Errors
///
/// The `webhooks` stream cannot be recovered (damage, IO).
pub fn open_outbox(
    config: &Config,
    apps: &Apps,
    now: std::time::Instant,
    now_unix_ms: u64,
) -> Result<Box<dyn Outbox>, crate::wal::RecoveryError> {
    if config.storage.dir.is_empty() {
        return Ok(Box::new(MemoryOutbox::new(config.webhooks.outbox_max)));
    }
    let outbox = WalOutbox::open(
        Arc::new(crate::wal::FsStorage),
        std::path::Path::new(&config.storage.dir),
        &config.storage,
        config.webhooks.outbox_max,
        &app_ids(config, apps),
        // The node epoch, until replication persists one (epochs only ever grow).
        1,
        now,
        now_unix_ms,
    )?;
    Ok(Box::new(outbox))
}

pub use crate::limits::WEBHOOK_QUEUE_DEPTH;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl WebhookKind {
    /// The name in the webhook body and in `event_types`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
            WebhookKind::CacheMiss => "cache_miss",
            WebhookKind::SubscriptionCount => "subscription_count",
        }
    }

    pub const ALL: [WebhookKind; 7] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
        WebhookKind::CacheMiss,
        WebhookKind::SubscriptionCount,
    ];

    /// The kind named `name` in `event_types`.
    pub fn from_name(name: &str) -> Option<WebhookKind> {
        WebhookKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// A distinct bit per kind (event type filters are bit sets).
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One webhook event as generated on a core.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// App index (as in `shard::Apps`).
    pub app: u32,
    pub kind: WebhookKind,
    pub channel: Arc<str>,
    /// Presence events: the member; client events on presence channels: the sender's user id.
    pub user_id: Option<Arc<str>>,
    /// Client events: the event name, the raw JSON text of `data`, and the sender's socket id.
    pub event: Option<Box<str>>,
    pub data_json: Option<Box<str>>,
    pub socket_id: Option<Box<str>>,
    /// `subscription_count` events.
    pub subscription_count: Option<u64>,
    /// Unix milliseconds when the core generated it (the body's `time_ms` is taken from the
    /// first event of a batch and kept across retries).
    pub created_ms: u64,
}

impl WebhookEvent {
    pub fn new(app: u32, kind: WebhookKind, channel: Arc<str>, created_ms: u64) -> WebhookEvent {
        WebhookEvent {
            app,
            kind,
            channel,
            user_id: None,
            event: None,
            data_json: None,
            socket_id: None,
            subscription_count: None,
            created_ms,
        }
    }

    /// The event object inside the body's `events` array (spec §8 table), as JSON text.
    pub fn to_json(&self) -> String {
        let string = |text: &str| serde_json::to_string(text).expect("serializing a str");
        let mut json = format!(
            r#"{{"name":"{}","channel":{}"#,
            self.kind.name(),
            string(&self.channel)
        );
        if let Some(event) = &self.event {
            json.push_str(&format!(r#","event":{}"#, string(event)));
        }
        if let Some(data) = &self.data_json {
            // The client's `data` as sent; Pusher delivers it as a string of JSON.
            let text = match serde_json::from_str::<serde_json::Value>(data) {
                Ok(serde_json::Value::String(text)) => text,
                _ => data.to_string(),
            };
            json.push_str(&format!(r#","data":{}"#, string(&text)));
        }
        if let Some(socket_id) = &self.socket_id {
            json.push_str(&format!(r#","socket_id":{}"#, string(socket_id)));
        }
        if let Some(user_id) = &self.user_id {
            json.push_str(&format!(r#","user_id":{}"#, string(user_id)));
        }
        if let Some(count) = self.subscription_count {
            json.push_str(&format!(r#","subscription_count":{count}"#));
        }
        json.push('}');
        json
    }
}

/// The per-core queues from cores to the worker, and the drop counter.
#[derive(Debug)]
pub struct WebhookQueues {
    queues: Box<[ArrayQueue<WebhookEvent>]>,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

impl WebhookQueues {
    pub fn new(cores: usize) -> WebhookQueues {
        WebhookQueues {
            queues: (0..cores)
                .map(|_| ArrayQueue::new(WEBHOOK_QUEUE_DEPTH))
                .collect(),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }

    /// Never blocks: a full queue drops the event and counts it.
    pub fn push(&self, core: usize, event: WebhookEvent) {
        match self.queues[core].push(event) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(event) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        kind = event.kind.name(),
                        "webhook queue full: event dropped"
                    );
                }
            }
        }
    }

    /// The worker's side: takes what core `core` queued.
    pub fn pop(&self, core: usize) -> Option<WebhookEvent> {
        self.queues[core].pop()
    }

    pub fn cores(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_objects_match_the_spec_table() {
        let occupied =
            WebhookEvent::new(0, WebhookKind::ChannelOccupied, Arc::from("my-channel"), 1);
        assert_eq!(
            occupied.to_json(),
            r#"{"name":"channel_occupied","channel":"my-channel"}"#
        );
        let mut added =
            WebhookEvent::new(0, WebhookKind::MemberAdded, Arc::from("presence-foobar"), 1);
        added.user_id = Some(Arc::from("10"));
        assert_eq!(
            added.to_json(),
            r#"{"name":"member_added","channel":"presence-foobar","user_id":"10"}"#
        );
        let mut client =
            WebhookEvent::new(0, WebhookKind::ClientEvent, Arc::from("private-test"), 1);
        client.event = Some("client-typing".into());
        client.data_json = Some(r#"{"x":1}"#.into());
        client.socket_id = Some("123.456".into());
        assert_eq!(
            client.to_json(),
            r#"{"name":"client_event","channel":"private-test","event":"client-typing","data":"{\"x\":1}","socket_id":"123.456"}"#
        );
    }
}
