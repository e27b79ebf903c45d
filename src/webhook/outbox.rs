//! The outbox: sealed webhook batches waiting for a 2xx, one FIFO per target. The router
//! appends (`push`), delivers the oldest of each target (`peek`) and removes it once it was
//! answered with 2xx or given up on (`ack`, saying which). Nothing else is stored here: the
//! retry schedule of the head batch is the router's. Two implementations: `MemoryOutbox`
//! (here; lost on exit) and `WalOutbox` (`durable.rs`: `push` appends a `WebhookEnqueued`
//! record to the `webhooks` write-ahead log stream before it returns, `ack` a `WebhookDone`;
//! on start-up the pending batches are rebuilt from the log and the router seeds its targets
//! from `targets()`, so unacknowledged batches are re-sent after a restart with the same id
//! and body, and receivers de-duplicate).
//!
//! A batch is self-contained: the exact body, its signature and id, the headers and the URL,
//! so a reload that edits or removes a target never changes what an already sealed batch is.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One webhook target: an app (by index, as in `shard::Apps`) and a URL (unique per app).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub app: u32,
    pub url: Arc<str>,
}

/// One POST, exactly as it is sent on every attempt.
#[derive(Debug)]
pub struct Batch {
    /// Unique per batch, the same on every retry (`WEBHOOK_ID_HEADER`).
    pub id: Box<str>,
    pub target: TargetKey,
    /// `X-Pusher-Key`.
    pub app_key: Box<str>,
    /// `X-Pusher-Signature`: lowercase hex HMAC-SHA256(app secret, body).
    pub signature: Box<str>,
    /// The target's extra headers (never one of ours: config validation refuses them).
    pub headers: Arc<[(Box<str>, Box<str>)]>,
    /// `{"time_ms":…,"events":[…]}`.
    pub body: Box<str>,
    /// Events in `body`.
    pub events: usize,
    /// The body's `time_ms`: Unix ms when its first event was created.
    pub time_ms: u64,
}

/// How a batch left the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Answered with 2xx.
    Delivered,
    /// Retries ran out (`webhooks.retry_for_secs`).
    GaveUp,
}

/// Where sealed batches wait for delivery. Implementations are bounded: `push` refuses a batch
/// (handing it back) rather than grow past their capacity.
pub trait Outbox: Send {
    /// Appends `batch` to its target's FIFO (durably, for a durable outbox), or returns it when
    /// the outbox is full (or cannot store it).
    fn push(&mut self, batch: Arc<Batch>) -> Result<(), Arc<Batch>>;
    /// The oldest batch of `target` not yet acknowledged.
    fn peek(&self, target: &TargetKey) -> Option<Arc<Batch>>;
    /// Removes the oldest batch of `target` (delivered, or given up on) and returns it.
    fn ack(&mut self, target: &TargetKey, settled: Settled) -> Option<Arc<Batch>>;
    /// The targets that have at least one batch (the router's start-up view).
    fn targets(&self) -> Vec<TargetKey>;
    /// Events in every batch held.
    fn events(&self) -> usize;
    /// A new bound in events (a reload); batches already held stay.
    fn set_capacity(&mut self, events: usize);
    /// The apps' indexes and ids (at start and on every reload): a durable outbox names apps
    /// by id on disk.
    fn set_app_ids(&mut self, _ids: &[(u32, Arc<str>)]) {}
    /// Periodic work off the delivery path (a durable outbox's interval sync, retention,
    /// disk-full retries); `now_unix_ms` is the wall clock.
    fn maintain(&mut self, _now: std::time::Instant, _now_unix_ms: u64) {}
    /// Why the outbox can no longer store anything (a write or sync error of a durable one):
    /// the process must exit rather than go on. None while it works.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// The in-memory outbox, bounded in events (`webhooks.outbox_max`). An empty outbox accepts
/// any one batch, so a bound below `batch_events_max` still delivers.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    queues: HashMap<TargetKey, VecDeque<Arc<Batch>>>,
    events: usize,
    capacity: usize,
}

impl MemoryOutbox {
    pub fn new(capacity: usize) -> MemoryOutbox {
        MemoryOutbox {
            queues: HashMap::new(),
            events: 0,
            capacity,
        }
    }
}

impl Outbox for MemoryOutbox {
    fn push(&mut self, batch: Arc<Batch>) -> Result<(), Arc<Batch>> {
        if self.events > 0 && self.events + batch.events > self.capacity {
            return Err(batch);
        }
        self.events += batch.events;
        self.queues
            .entry(batch.target.clone())
            .or_default()
            .push_back(batch);
        Ok(())
    }

    fn peek(&self, target: &TargetKey) -> Option<Arc<Batch>> {
        self.queues.get(target)?.front().cloned()
    }

    fn ack(&mut self, target: &TargetKey, _settled: Settled) -> Option<Arc<Batch>> {
        let queue = self.queues.get_mut(target)?;
        let batch = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(target);
        }
        self.events -= batch.events;
        Some(batch)
    }

    fn targets(&self) -> Vec<TargetKey> {
        self.queues.keys().cloned().collect()
    }

    fn events(&self) -> usize {
        self.events
    }

    fn set_capacity(&mut self, events: usize) {
        self.capacity = events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(url: &str, id: &str, events: usize) -> Arc<Batch> {
        Arc::new(Batch {
            id: id.into(),
            target: TargetKey {
                app: 0,
                url: Arc::from(url),
            },
            app_key: "k".into(),
            signature: "s".into(),
            headers: Arc::from(Vec::new()),
            body: "{}".into(),
            events,
            time_ms: 1,
        })
    }

    #[test]
    fn fifo_per_target_and_bounded_in_events() {
        let mut outbox = MemoryOutbox::new(5);
        outbox.push(batch("http://a/", "a1", 2)).unwrap();
        outbox.push(batch("http://b/", "b1", 2)).unwrap();
        outbox.push(batch("http://a/", "a2", 1)).unwrap();
        let refused = outbox.push(batch("http://a/", "a3", 1)).unwrap_err();
        assert_eq!(&*refused.id, "a3");
        assert_eq!(outbox.events(), 5);
        let a = batch("http://a/", "", 0).target.clone();
        assert_eq!(&*outbox.peek(&a).unwrap().id, "a1");
        assert_eq!(&*outbox.ack(&a, Settled::Delivered).unwrap().id, "a1");
        assert_eq!(&*outbox.peek(&a).unwrap().id, "a2");
        assert_eq!(outbox.events(), 3);
        let mut targets = outbox.targets();
        targets.sort();
        assert_eq!(targets.len(), 2);
        outbox.ack(&a, Settled::GaveUp);
        assert!(outbox.peek(&a).is_none());
        assert_eq!(outbox.targets().len(), 1);
    }

    #[test]
    fn an_empty_outbox_takes_one_oversized_batch() {
        let mut outbox = MemoryOutbox::new(1);
        outbox.push(batch("http://a/", "big", 10)).unwrap();
        assert!(outbox.push(batch("http://a/", "next", 1)).is_err());
    }
}
