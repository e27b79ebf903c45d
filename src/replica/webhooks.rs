//! The `webhooks` stream (the durable webhook outbox's write-ahead log) in a hot standby pair:
//! `WebhookLog` decides who holds it and keeps the standby's copy. While this node is the
//! primary the webhook worker's outbox (`webhook::WalOutbox`, opened through `OutboxGate`)
//! holds the stream, writes it and publishes its positions, which the link ships like a
//! core's; while it is a standby the link holds it, appends the primary's records verbatim
//! and cuts or wipes it per the primary's plan, and the worker holds no outbox (the primary
//! delivers). Promotion writes `EpochStart` on it and hands it to the worker, which restores
//! the pending batches the standby copied and delivers them. One mutex makes sure the two
//! never hold the stream at once. It must not deliver anything and never runs on a core.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::shared::{ReplicaShared, Role};
use crate::config::{Config, StorageConfig};
use crate::shard::Apps;
use crate::wal::{self, AppendError, Now, Record, RecoveryMode, Storage, WalOptions, WalWriter};
use crate::webhook::{Outbox, OutboxGate, WalOutbox};

/// Who holds the `webhooks` stream.
enum Holder {
    /// Nobody: the link may take it (a standby), and so may the worker (a primary).
    Free,
    /// The link (this node is a standby): the primary's records are appended here.
    Link(Box<WalWriter>),
    /// Promotion wrote `EpochStart`: only the worker may take it now.
    Promoted,
    /// The webhook worker's outbox.
    Outbox,
}

/// See the module documentation.
pub struct WebhookLog {
    shared: Arc<ReplicaShared>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    data_dir: PathBuf,
    config: StorageConfig,
    clock_base: Instant,
    holder: Mutex<Holder>,
}

impl std::fmt::Debug for WebhookLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WebhookLog {
    pub fn new(
        shared: Arc<ReplicaShared>,
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        config: &StorageConfig,
    ) -> WebhookLog {
        WebhookLog {
            shared,
            storage,
            dir: wal::stream_dir(data_dir, wal::WEBHOOKS_STREAM),
            data_dir: data_dir.to_path_buf(),
            config: config.clone(),
            clock_base: Instant::now(),
            holder: Mutex::new(Holder::Free),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.clock_base.elapsed().as_millis() as u64,
            unix_ms: unix_ms(),
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Holder>> {
        self.holder
            .lock()
            .map_err(|_| io::Error::other("webhook log lock poisoned"))
    }

    fn slot(&self) -> &super::shared::StreamSlot {
        &self.shared.streams[self.shared.webhooks_stream()]
    }

    /// Publishes the stream's positions for the link (acks, lag, shipping).
    fn publish(&self, written: u64, synced: u64, last_epoch: u64) {
        let slot = self.slot();
        slot.last_epoch.fetch_max(last_epoch, Ordering::AcqRel);
        self.shared
            .publish_positions(self.shared.webhooks_stream(), written, synced);
    }

    fn open_writer(&self, first_lsn_if_empty: u64) -> io::Result<WalWriter> {
        let (writer, recovery) = WalWriter::open_at(
            Arc::clone(&self.storage),
            &self.dir,
            wal::WEBHOOKS_STREAM,
            self.shared.epoch(),
            WalOptions::from_config(&self.config),
            RecoveryMode::Strict,
            self.now(),
            first_lsn_if_empty,
        )
        .map_err(io_error)?;
        let last = writer.written_lsn();
        self.slot()
            .last_epoch
            .store(recovery.last_epoch, Ordering::Release);
        self.publish(last, writer.synced_lsn(), recovery.last_epoch);
        Ok(writer)
    }

    /// The link takes the stream to follow a primary (opening it when nobody holds it).
    /// Returns its last LSN and that record's epoch.
    ///
    /// # Errors
    ///
    /// The worker's outbox still holds it (this node stepped down a moment ago: it is let go
    /// within the worker's poll), a promotion took it, or it cannot be opened.
    pub fn follow(&self) -> io::Result<(u64, u64)> {
        let mut holder = self.lock()?;
        if let Holder::Free = *holder {
            if self.shared.role() == Role::Primary {
                return Err(io::Error::other("this node is the primary"));
            }
            *holder = Holder::Link(Box::new(self.open_writer(1)?));
        }
        match &*holder {
            Holder::Link(writer) => Ok((
                writer.written_lsn(),
                self.slot().last_epoch.load(Ordering::Acquire),
            )),
            _ => Err(io::Error::other(
                "the webhook outbox still holds the webhooks stream",
            )),
        }
    }

    /// Appends the primary's records (whole, contiguous, next after ours) verbatim, writes
    /// and syncs them, and publishes the new positions.
    ///
    /// # Errors
    ///
    /// The link does not hold the stream, a record does not follow, or the disk failed.
    pub fn append(&self, mut bytes: &[u8]) -> io::Result<()> {
        let mut holder = self.lock()?;
        let Holder::Link(writer) = &mut *holder else {
            return Err(io::Error::other(
                "the link does not hold the webhooks stream",
            ));
        };
        let mut last_epoch = 0;
        while !bytes.is_empty() {
            let (header, _) = wal::record::frame(bytes).map_err(io_error)?;
            let (raw, rest) = bytes.split_at(header.len as usize);
            writer.append_encoded(raw).map_err(io_error)?;
            last_epoch = header.epoch;
            bytes = rest;
        }
        let now = self.now();
        writer.commit(now).map_err(io_error)?;
        let synced = writer.sync(now).map_err(io_error)?;
        self.publish(writer.written_lsn(), synced, last_epoch);
        Ok(())
    }

    /// The primary's plan for this stream: cut it after `keep_through` (the suffix goes to
    /// `divergent_file`) or, when `wipe`, start it over at `keep_through + 1`.
    ///
    /// # Errors
    ///
    /// The link does not hold the stream, or the cut failed.
    pub fn rewind(&self, keep_through: u64, wipe: bool, divergent_file: &Path) -> io::Result<()> {
        let mut holder = self.lock()?;
        if !matches!(*holder, Holder::Link(_)) {
            return Err(io::Error::other(
                "the link does not hold the webhooks stream",
            ));
        }
        // The writer is closed before the stream is cut.
        *holder = Holder::Free;
        if wipe {
            wal::wipe(&*self.storage, &self.dir)?;
        } else {
            wal::truncate_after(
                &*self.storage,
                &self.dir,
                wal::WEBHOOKS_STREAM,
                keep_through,
                divergent_file,
            )
            .map_err(io_error)?;
        }
        tracing::warn!(
            keep_through,
            wipe,
            "replication: the webhooks stream rejoins the primary's"
        );
        let slot = self.slot();
        slot.written.store(0, Ordering::Release);
        slot.last_epoch.store(0, Ordering::Release);
        *holder = Holder::Link(Box::new(self.open_writer(keep_through + 1)?));
        Ok(())
    }

    /// Promotion: the stream enters `epoch` (`EpochStart` written and synced), then only the
    /// worker may take it.
    ///
    /// # Errors
    ///
    /// The worker holds it already, or the record cannot be persisted.
    pub fn start_epoch(&self, epoch: u64, node_id: &str) -> io::Result<()> {
        let mut holder = self.lock()?;
        let mut writer = match std::mem::replace(&mut *holder, Holder::Free) {
            Holder::Link(writer) => *writer,
            Holder::Free | Holder::Promoted => self.open_writer(1)?,
            Holder::Outbox => {
                *holder = Holder::Outbox;
                return Err(io::Error::other("the webhook outbox holds the stream"));
            }
        };
        let previous_end_lsn = writer.appended_lsn();
        writer.set_epoch(epoch);
        let record: Record<&str> = Record::EpochStart {
            epoch,
            node_id,
            previous_end_lsn,
        };
        writer.append(&record).map_err(|error| match error {
            AppendError::Poisoned(poisoned) => io_error(poisoned),
            other => io_error(other),
        })?;
        let now = self.now();
        writer.commit(now).map_err(io_error)?;
        let synced = writer.sync(now).map_err(io_error)?;
        self.publish(writer.written_lsn(), synced, epoch);
        drop(writer);
        *holder = Holder::Promoted;
        Ok(())
    }
}

impl OutboxGate for WebhookLog {
    fn open(&self, config: &Config, apps: &Apps) -> Option<Result<Box<dyn Outbox>, String>> {
        if self.shared.role() != Role::Primary {
            return None;
        }
        let mut holder = self.lock().ok()?;
        if !matches!(*holder, Holder::Free | Holder::Promoted) {
            return None;
        }
        let opened = WalOutbox::open(
            Arc::clone(&self.storage),
            &self.data_dir,
            &config.storage,
            config.webhooks.outbox_max,
            &crate::webhook::app_ids(config, apps),
            self.shared.epoch(),
            Instant::now(),
            unix_ms(),
        );
        let mut outbox = match opened {
            Ok(outbox) => outbox,
            Err(error) => return Some(Err(error.to_string())),
        };
        let shared = Arc::clone(&self.shared);
        let epoch = self.shared.epoch();
        outbox.set_positions(Box::new(move |written, synced| {
            let index = shared.webhooks_stream();
            shared.streams[index]
                .last_epoch
                .fetch_max(epoch, Ordering::AcqRel);
            shared.publish_positions(index, written, synced);
        }));
        *holder = Holder::Outbox;
        Some(Ok(Box::new(outbox)))
    }

    fn must_close(&self) -> bool {
        self.shared.role() != Role::Primary
    }

    fn closed(&self) {
        if let Ok(mut holder) = self.lock() {
            *holder = Holder::Free;
        }
    }
}
