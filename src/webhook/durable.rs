//! `WalOutbox`: the webhook outbox on the write-ahead log (stream `webhooks`), used when
//! `[storage] dir` is set. `push` appends a `WebhookEnqueued` record and commits it (written,
//! and synced per the fsync policy) before it returns, so a batch the router sends is on disk
//! first; `ack` appends a `WebhookDone`. Opening replays the stream and rebuilds the pending
//! batches in their original order per target, with the same ids and bodies, so the router
//! re-sends what was not acknowledged before a crash. It owns that stream and nothing else; it
//! runs on the webhook router thread (never a core), which may block on disk IO.
//!
//! A write or sync error poisons the stream: from then on `push` refuses every batch and
//! `failure()` says why, and the worker exits the process (nothing is acknowledged that was not
//! persisted). A full disk refuses new batches (dropped and counted like a full outbox) until
//! space is back; a `WebhookDone` that cannot be written only means the batch is sent again
//! after a restart (receivers de-duplicate by id).
//!
//! Retention keeps every segment holding a pending batch: `needed_lsn` is the LSN of the
//! oldest one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::outbox::{Batch, Outbox, Settled, TargetKey};
use crate::config::StorageConfig;
use crate::limits;
use crate::wal::{
    self, AppendError, Now, Poisoned, Record, RecoveryError, RecoveryMode, Storage, WalOptions,
    WalWriter,
};

use crate::limits::WEBHOOK_WAL_RETAIN_INTERVAL_MS;

#[derive(Debug)]
struct Pending {
    lsn: u64,
    batch: Arc<Batch>,
}

/// The durable outbox. See the module docs.
pub struct WalOutbox {
    writer: WalWriter,
    queues: HashMap<TargetKey, VecDeque<Pending>>,
    events: usize,
    capacity: usize,
    /// App index → id. Ids of apps a reload removed stay (their batches still go out).
    app_ids: HashMap<u32, Arc<str>>,
    /// Apps named by restored batches that the app table does not have: a stand-in index each,
    /// from `u32::MAX` down (never a real index: those are below `APPS_MAX`).
    strangers: HashMap<Arc<str>, u32>,
    retain_bytes_max: u64,
    retain_secs: u64,
    clock_base: Instant,
    last_retain_ms: u64,
    failure: Option<Poisoned>,
    full_drops: u64,
    /// Told the stream's (written, synced) LSNs after each change (a hot standby's link ships
    /// the stream up to them).
    positions: Option<PositionSink>,
}

/// Where a `WalOutbox` publishes its stream's (written, synced) LSNs.
pub type PositionSink = Box<dyn Fn(u64, u64) + Send>;

impl WalOutbox {
    /// Opens the `webhooks` stream under `data_dir` and rebuilds the pending batches.
    ///
    /// # Errors
    ///
    /// Damage in the stream (or an IO error) that recovery cannot repair.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        config: &StorageConfig,
        capacity: usize,
        app_ids: &[(u32, Arc<str>)],
        epoch: u64,
        now: Instant,
        now_unix_ms: u64,
    ) -> Result<WalOutbox, RecoveryError> {
        let dir = wal::stream_dir(data_dir, wal::WEBHOOKS_STREAM);
        let (writer, recovery) = WalWriter::open(
            storage,
            &dir,
            wal::WEBHOOKS_STREAM,
            epoch,
            WalOptions::from_config(config),
            RecoveryMode::Strict,
            Now {
                mono_ms: 0,
                unix_ms: now_unix_ms,
            },
        )?;
        let mut outbox = WalOutbox {
            writer,
            queues: HashMap::new(),
            events: 0,
            capacity,
            app_ids: HashMap::new(),
            strangers: HashMap::new(),
            retain_bytes_max: config.retain_bytes_max,
            retain_secs: config.retain_secs,
            clock_base: now,
            last_retain_ms: 0,
            failure: None,
            full_drops: 0,
            positions: None,
        };
        outbox.set_app_ids(app_ids);
        let by_id: HashMap<&str, u32> = app_ids.iter().map(|(index, id)| (&**id, *index)).collect();
        // Pending batches by LSN (their order), and which LSN each id is at.
        let mut pending: BTreeMap<u64, Record> = BTreeMap::new();
        let mut lsn_of: HashMap<Box<str>, u64> = HashMap::new();
        recovery.replay(|header, record| match record {
            Record::WebhookEnqueued { id, .. } => {
                lsn_of.insert(id.into(), header.lsn);
                pending.insert(header.lsn, record.owned());
            }
            Record::WebhookDone { id, .. } => {
                if let Some(lsn) = lsn_of.remove(id) {
                    pending.remove(&lsn);
                }
            }
            _ => {}
        })?;
        for (lsn, record) in pending {
            let batch = outbox.restore(record, &by_id);
            outbox.events += batch.events;
            outbox
                .queues
                .entry(batch.target.clone())
                .or_default()
                .push_back(Pending { lsn, batch });
        }
        if !outbox.queues.is_empty() {
            tracing::info!(
                batches = outbox.queues.values().map(VecDeque::len).sum::<usize>(),
                events = outbox.events,
                targets = outbox.queues.len(),
                "webhook outbox restored from the write-ahead log: undelivered batches are sent again"
            );
        }
        Ok(outbox)
    }

    /// A batch from its record.
    fn restore(&mut self, record: Record, by_id: &HashMap<&str, u32>) -> Arc<Batch> {
        let Record::WebhookEnqueued {
            id,
            app_id,
            url,
            app_key,
            signature,
            headers,
            body,
            events,
            time_ms,
        } = record
        else {
            unreachable!("only WebhookEnqueued records are pending");
        };
        let app = match by_id.get(&*app_id) {
            Some(&index) => index,
            None => {
                let next = u32::MAX - self.strangers.len() as u32;
                let app_id: Arc<str> = Arc::from(app_id);
                let index = *self.strangers.entry(Arc::clone(&app_id)).or_insert(next);
                self.app_ids.insert(index, app_id);
                index
            }
        };
        Arc::new(Batch {
            id,
            target: TargetKey {
                app,
                url: Arc::from(url),
            },
            app_key,
            signature,
            headers: headers.into(),
            body,
            events: events as usize,
            time_ms,
        })
    }

    fn now(&self, now: Instant, now_unix_ms: u64) -> Now {
        Now {
            mono_ms: now.saturating_duration_since(self.clock_base).as_millis() as u64,
            unix_ms: now_unix_ms,
        }
    }

    fn poisoned(&mut self, poisoned: Poisoned) {
        if self.failure.is_none() {
            self.failure = Some(poisoned);
        }
    }

    /// Appends and commits one record; false when it could not be stored.
    fn store(&mut self, record: &Record<&str>) -> Result<u64, AppendError> {
        let lsn = self.writer.append(record)?;
        let now = self.now(Instant::now(), unix_ms());
        self.writer.commit(now)?;
        self.publish_positions();
        Ok(lsn)
    }

    /// From now on, `sink` is told the stream's (written, synced) LSNs after every change
    /// (and once now).
    pub fn set_positions(&mut self, sink: PositionSink) {
        self.positions = Some(sink);
        self.publish_positions();
    }

    fn publish_positions(&self) {
        if let Some(sink) = &self.positions {
            sink(self.writer.written_lsn(), self.writer.synced_lsn());
        }
    }

    /// The LSN of the oldest pending batch (retention keeps it and everything after it).
    fn needed_lsn(&self) -> u64 {
        self.queues
            .values()
            .filter_map(|queue| queue.front().map(|pending| pending.lsn))
            .min()
            .unwrap_or(self.writer.next_lsn())
    }

    /// Write-ahead log positions (for tests and diagnostics): (written, synced).
    pub fn lsns(&self) -> (u64, u64) {
        (self.writer.written_lsn(), self.writer.synced_lsn())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outbox for WalOutbox {
    fn push(&mut self, batch: Arc<Batch>) -> Result<(), Arc<Batch>> {
        if self.failure.is_some() {
            return Err(batch);
        }
        if self.events > 0 && self.events + batch.events > self.capacity {
            return Err(batch);
        }
        let Some(app_id) = self.app_ids.get(&batch.target.app).cloned() else {
            tracing::error!(
                app = batch.target.app,
                "webhook batch of an app the outbox does not know: dropped"
            );
            return Err(batch);
        };
        let headers: Vec<(&str, &str)> = batch
            .headers
            .iter()
            .map(|(name, value)| (&**name, &**value))
            .collect();
        if headers.len() > limits::WAL_WEBHOOK_HEADERS_MAX {
            return Err(batch);
        }
        let record = Record::WebhookEnqueued {
            id: &*batch.id,
            app_id: &*app_id,
            url: &*batch.target.url,
            app_key: &*batch.app_key,
            signature: &*batch.signature,
            headers,
            body: &*batch.body,
            events: u32::try_from(batch.events).unwrap_or(u32::MAX),
            time_ms: batch.time_ms,
        };
        let lsn = match self.store(&record) {
            Ok(lsn) => lsn,
            Err(AppendError::Poisoned(poisoned)) => {
                self.poisoned(poisoned);
                return Err(batch);
            }
            Err(error @ (AppendError::Full | AppendError::TooLarge { .. })) => {
                self.full_drops += 1;
                if self.full_drops.is_power_of_two() {
                    tracing::warn!(%error, dropped = self.full_drops, "webhook batch not stored in the write-ahead log: dropped");
                }
                return Err(batch);
            }
            Err(
                error @ (AppendError::BadRecord(_)
                | AppendError::OutOfOrder { .. }
                | AppendError::EpochBehind { .. }),
            ) => unreachable!("only append_encoded refuses with {error}"),
        };
        self.events += batch.events;
        self.queues
            .entry(batch.target.clone())
            .or_default()
            .push_back(Pending { lsn, batch });
        Ok(())
    }

    fn peek(&self, target: &TargetKey) -> Option<Arc<Batch>> {
        self.queues
            .get(target)?
            .front()
            .map(|pending| Arc::clone(&pending.batch))
    }

    fn ack(&mut self, target: &TargetKey, settled: Settled) -> Option<Arc<Batch>> {
        let queue = self.queues.get_mut(target)?;
        let pending = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(target);
        }
        self.events -= pending.batch.events;
        if self.failure.is_none() {
            let record = Record::WebhookDone {
                id: &*pending.batch.id,
                delivered: settled == Settled::Delivered,
            };
            match self.store(&record) {
                Ok(_) => {}
                Err(AppendError::Poisoned(poisoned)) => self.poisoned(poisoned),
                Err(error) => {
                    tracing::debug!(%error, id = %pending.batch.id, "webhook settlement not stored: the batch is sent again after a restart");
                }
            }
        }
        Some(pending.batch)
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

    fn set_app_ids(&mut self, ids: &[(u32, Arc<str>)]) {
        for (index, id) in ids {
            self.app_ids.insert(*index, Arc::clone(id));
        }
    }

    fn maintain(&mut self, now: Instant, now_unix_ms: u64) {
        if self.failure.is_some() {
            return;
        }
        let now = self.now(now, now_unix_ms);
        if self.writer.is_full() {
            self.writer.retry_space(now);
        }
        if self.writer.sync_due(now.mono_ms) {
            if let Err(poisoned) = self.writer.sync(now) {
                self.poisoned(poisoned);
                return;
            }
            self.publish_positions();
        }
        if now.mono_ms.saturating_sub(self.last_retain_ms) >= WEBHOOK_WAL_RETAIN_INTERVAL_MS {
            self.last_retain_ms = now.mono_ms;
            let needed = self.needed_lsn();
            match self
                .writer
                .retain(now.unix_ms, needed, self.retain_bytes_max, self.retain_secs)
            {
                Ok(removed) => {
                    for segment in removed {
                        tracing::debug!(segment = %segment.name, bytes = segment.bytes, "webhook log segment removed");
                    }
                }
                Err(poisoned) => self.poisoned(poisoned),
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.as_ref().map(ToString::to_string)
    }
}

impl Drop for WalOutbox {
    /// On the way out (the worker stopped), whatever was written is synced.
    fn drop(&mut self) {
        if self.failure.is_none() {
            let now = self.now(Instant::now(), unix_ms());
            let _ = self.writer.sync(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::shard::Apps;
    use crate::wal::{Fault, FaultyStorage, MemStorage};
    use crate::webhook::{Job, Outcome, Router, WebhookEvent, WebhookKind, WebhookStats};

    const CONFIG: &str = "version = 1\n[webhooks]\nbatch_window_ms = 0\nretry_for_secs = 300\n[storage]\ndir = \"/data\"\nfsync = \"always\"\nsegment_bytes = 65536\nretain_bytes_max = 65536\n[[apps]]\nid = \"app-1\"\nkey = \"k\"\nsecret = \"s\"\n[[apps.webhooks]]\nurl = \"http://a/\"\n[[apps.webhooks]]\nurl = \"http://b/\"\n";

    fn config() -> crate::config::Config {
        crate::config::parse(CONFIG).unwrap().config
    }

    fn open(storage: &Arc<dyn Storage>, now: Instant, unix: u64) -> WalOutbox {
        let config = config();
        WalOutbox::open(
            Arc::clone(storage),
            Path::new("/data"),
            &config.storage,
            100,
            &crate::webhook::app_ids(&config, &Apps::new(&config)),
            1,
            now,
            unix,
        )
        .unwrap()
    }

    fn router(outbox: WalOutbox, now: Instant, unix: u64) -> Router {
        let config = config();
        Router::new(
            &config,
            &Apps::new(&config),
            Box::new(outbox),
            Arc::new(WebhookStats::default()),
            now,
            unix,
        )
    }

    fn occupied(channel: &str, created_ms: u64) -> WebhookEvent {
        WebhookEvent::new(
            0,
            WebhookKind::ChannelOccupied,
            Arc::from(channel),
            created_ms,
        )
    }

    // Batches pushed before a crash come back after it, in order per target, with the same ids
    // and bodies; the delivered ones do not; a restored head keeps its retry deadline (counted
    // from its time_ms) instead of starting a new one.
    #[test]
    fn pending_batches_survive_a_crash_with_their_ids_and_deadline() {
        let memory = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(memory.clone());
        let t0 = Instant::now();
        let unix0 = 1_700_000_000_000;
        let mut first = router(open(&storage, t0, unix0), t0, unix0);
        for n in 0..3 {
            first.accept(occupied(&format!("c{n}"), unix0), t0).unwrap();
        }
        let sent = first.due_jobs(t0, 8);
        assert_eq!(sent.len(), 2, "one per target");
        // Target a delivered its first batch; b failed.
        let a = sent
            .iter()
            .find(|job| &*job.batch.target.url == "http://a/")
            .unwrap();
        let b = sent
            .iter()
            .find(|job| &*job.batch.target.url == "http://b/")
            .unwrap();
        first.completed(&a.batch.target.clone(), Outcome::Delivered, t0, unix0);
        first.completed(
            &b.batch.target.clone(),
            Outcome::Failed("500".into()),
            t0,
            unix0,
        );
        // kill -9: the process's memory is gone, the kernel kept what was written.
        std::mem::forget(first);
        memory.process_crash();
        // Twenty seconds later (wall clock; the monotonic clock must reach back that far), a new process.
        let t1 = t0 + Duration::from_secs(1);
        let unix1 = unix0 + 20_000;
        let outbox = open(&storage, t1, unix1);
        assert_eq!(outbox.events(), 5, "3 batches to b, 2 left for a");
        let mut second = router(outbox, t1, unix1);
        let jobs = second.due_jobs(t1, 8);
        assert_eq!(jobs.len(), 2);
        let b_again = jobs
            .iter()
            .find(|job| &*job.batch.target.url == "http://b/")
            .unwrap();
        assert_eq!(
            b_again.batch.id, b.batch.id,
            "the same id after the restart"
        );
        assert_eq!(b_again.batch.body, b.batch.body);
        assert_eq!(b_again.batch.signature, b.batch.signature);
        let a_next = jobs
            .iter()
            .find(|job| &*job.batch.target.url == "http://a/")
            .unwrap();
        assert_ne!(
            a_next.batch.id, a.batch.id,
            "the delivered batch is not sent again"
        );
        // b's head has 280 of its 300 seconds left: failing after them gives up.
        let target = b_again.batch.target.clone();
        second.completed(&target, Outcome::Failed("500".into()), t1, unix1);
        let deadline = t1 + Duration::from_secs(280);
        let now = loop {
            let now = second.next_deadline(true).unwrap();
            assert!(
                now <= deadline + Duration::from_millis(1),
                "retried past the deadline"
            );
            let due: Vec<Job> = second
                .due_jobs(now, 8)
                .into_iter()
                .filter(|job| job.batch.target == target)
                .collect();
            if due.is_empty() {
                continue;
            }
            assert_eq!(due[0].batch.id, b.batch.id);
            second.completed(&target, Outcome::Failed("500".into()), now, unix1);
            if now >= deadline {
                break now;
            }
        };
        let jobs = second.due_jobs(now, 8);
        let b_next = jobs.iter().find(|job| job.batch.target == target).unwrap();
        assert_ne!(b_next.batch.id, b.batch.id, "given up at the old deadline");
    }

    // Settled batches are recorded: a clean restart after everything was delivered restores
    // nothing, and retention removes the segments nothing needs.
    #[test]
    fn delivered_batches_stay_delivered_and_old_segments_go() {
        let memory = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(memory.clone());
        let t0 = Instant::now();
        let unix0 = 1_700_000_000_000;
        let mut first = router(open(&storage, t0, unix0), t0, unix0);
        let mut now = t0;
        for n in 0..400 {
            first
                .accept(
                    occupied(&format!("channel-{n:04}-{}", "x".repeat(200)), unix0),
                    now,
                )
                .unwrap();
            for job in first.due_jobs(now, 8) {
                first.completed(&job.batch.target.clone(), Outcome::Delivered, now, unix0);
            }
            now += Duration::from_millis(20);
            first.maintain_outbox(now, unix0 + 20 * n);
        }
        assert!(first.is_idle());
        drop(first);
        let segments = memory
            .list(&wal::stream_dir(Path::new("/data"), "webhooks"))
            .unwrap();
        assert!(segments.len() <= 3, "retention kept {segments:?}");
        let outbox = open(&storage, t0, unix0);
        assert_eq!(outbox.events(), 0);
    }

    // An fsync error poisons the outbox: the batch is refused, `failure` says why (the worker
    // exits the process on it), and nothing is stored afterwards.
    #[test]
    fn a_sync_error_refuses_the_batch_and_reports_the_failure() {
        let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let t0 = Instant::now();
        let mut outbox = open(&storage, t0, 1);
        let batch = |id: &str| {
            Arc::new(Batch {
                id: id.into(),
                target: TargetKey {
                    app: 0,
                    url: Arc::from("http://a/"),
                },
                app_key: "k".into(),
                signature: "sig".into(),
                headers: Arc::from(vec![(Box::from("X-Env"), Box::from("prod"))]),
                body: "{}".into(),
                events: 1,
                time_ms: 1,
            })
        };
        outbox.push(batch("one")).unwrap();
        assert_eq!(
            outbox.lsns(),
            (1, 1),
            "written and synced before push returns (always)"
        );
        faulty.arm(Fault::SyncEio);
        assert!(outbox.push(batch("two")).is_err());
        let failure = outbox.failure().expect("poisoned");
        assert!(failure.contains("sync"), "{failure}");
        assert!(outbox.push(batch("three")).is_err());
        assert_eq!(outbox.events(), 1);
    }
}
