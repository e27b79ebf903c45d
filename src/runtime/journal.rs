//! The shard's `Journal` seam on a real WAL stream: `WalJournal` appends each owner record to
//! this core's stream (`core-N`) and commits it once per loop tick, and the start-up replay maps
//! the stream's records back to owner records. It owns the translation between the two (apps by
//! stable id on disk, by index in memory) and the policy of what a 200 means (`always`: synced;
//! otherwise: written). It must not decide anything about channels: that is the owner's.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, FsyncPolicy};
use crate::mesh::ChannelKey;
use crate::mesh::message::{Durability, PublishCommand};
use crate::protocol::socket_id::SocketId;
use crate::replica::ReplicaShared;
use crate::shard::{
    Apps, Durable, Journal, JournalFailed, JournalFull, JournalStats, Now, OwnerRecord, Replicated,
};
use crate::wal::record::{PUBLISH_CACHE, PUBLISH_CACHE_ONLY, PUBLISH_CLIENT};
use crate::wal::{self, AppendError, Record, RecoveryMode, Storage, WalOptions, WalWriter};

/// The node epoch stamped on records until replication persists one (epochs only grow).
pub const INITIAL_EPOCH: u64 = 1;

/// One core's WAL stream behind the shard's `Journal` trait.
#[derive(Debug)]
pub struct WalJournal {
    writer: WalWriter,
    apps: Arc<Apps>,
    fsync: FsyncPolicy,
    fsync_interval_ms: u64,
    retain_bytes_max: u64,
    retain_secs: u64,
    /// A write or sync failed inside `append` (rotation): reported by the next `commit`.
    failed: Option<JournalFailed>,
    /// The hot standby: positions published for the link, the standby's acknowledgements read.
    replica: Option<(Arc<ReplicaShared>, usize)>,
}

/// What replaying a stream found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: u64,
    /// Records of apps no longer in the config (skipped).
    pub unknown_apps: u64,
    pub truncated_bytes: u64,
    /// The stream's last record (0: none) and the epoch it carries.
    pub last_lsn: u64,
    pub last_epoch: u64,
}

impl WalJournal {
    /// Opens core `core`'s stream under `[storage] dir` (a stream with no record yet starts at
    /// `first_lsn_if_empty`: a standby's copy after a full resync), replays it into `apply`
    /// (owner records in LSN order, with their LSN), and returns the journal that continues it. Records it
    /// appends carry `epoch` (the node's persisted epoch: no record on disk has a higher one).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        storage: Arc<dyn Storage>,
        config: &Config,
        apps: Arc<Apps>,
        core: usize,
        epoch: u64,
        mode: RecoveryMode,
        first_lsn_if_empty: u64,
        now: Now,
        mut apply: impl FnMut(OwnerRecord, u64),
    ) -> anyhow::Result<(WalJournal, Replayed)> {
        let data_dir = Path::new(&config.storage.dir);
        let stream = wal::core_stream(core);
        let dir = wal::stream_dir(data_dir, &stream);
        let options = WalOptions::from_config(&config.storage);
        let (mut writer, recovery) = WalWriter::open_at(
            storage,
            &dir,
            &stream,
            epoch,
            options,
            mode,
            wal_now(now),
            first_lsn_if_empty,
        )?;
        // The core loop syncs with io_uring (never blocking on fdatasync): a tick goes on
        // serving while the previous ticks' records are synced (pipelined group commit).
        writer.use_external_sync();
        let mut replayed = Replayed {
            truncated_bytes: recovery.truncated_bytes,
            last_lsn: recovery.last_lsn.unwrap_or(0),
            last_epoch: recovery.last_epoch,
            ..Replayed::default()
        };
        recovery.replay(|header, record| match owner_record(&apps, &record) {
            Some(Ok(owner)) => {
                replayed.records += 1;
                apply(owner, header.lsn);
            }
            Some(Err(UnknownApp)) => replayed.unknown_apps += 1,
            None => {}
        })?;
        let journal = WalJournal {
            writer,
            apps,
            fsync: config.storage.fsync,
            fsync_interval_ms: config.storage.fsync_interval_ms,
            retain_bytes_max: config.storage.retain_bytes_max,
            retain_secs: config.storage.retain_secs,
            failed: None,
            replica: None,
        };
        Ok((journal, replayed))
    }

    fn durable(&self) -> Durable {
        let replica = self
            .replica
            .as_ref()
            .map(|(shared, core)| shared.replica_view(*core));
        match self.fsync {
            FsyncPolicy::Always => Durable {
                lsn: self.writer.synced_lsn(),
                durability: Durability::Fsynced,
                replica,
            },
            FsyncPolicy::Interval | FsyncPolicy::Never => Durable {
                lsn: self.writer.written_lsn(),
                durability: Durability::Written,
                replica,
            },
        }
    }

    /// Replication: this stream's positions go to the link after every commit and sync.
    pub fn attach_replica(&mut self, shared: Arc<ReplicaShared>, core: usize) {
        self.replica = Some((shared, core));
        self.publish_positions();
    }

    fn publish_positions(&self) {
        if let Some((shared, core)) = &self.replica {
            let written = self.writer.written_lsn();
            shared.publish_positions(*core, written, self.writer.synced_lsn());
        }
    }

    fn check(&self) -> Result<(), JournalFailed> {
        match &self.failed {
            Some(failed) => Err(failed.clone()),
            None => Ok(()),
        }
    }
}

fn wal_now(now: Now) -> wal::Now {
    wal::Now {
        mono_ms: now.mono_ms,
        unix_ms: now.unix_ms,
    }
}

fn failed(error: impl std::fmt::Display) -> JournalFailed {
    JournalFailed(error.to_string())
}

impl Journal for WalJournal {
    fn append(&mut self, record: &OwnerRecord) -> Result<u64, JournalFull> {
        if self.failed.is_some() {
            return Err(JournalFull);
        }
        let appended = with_wal_record(&self.apps, record, |wal_record| {
            self.writer.append(wal_record)
        });
        match appended {
            Ok(lsn) => Ok(lsn),
            Err(AppendError::Full) => Err(JournalFull),
            Err(AppendError::TooLarge { bytes }) => {
                // Inputs are bounded far below the record limit; refuse rather than crash.
                tracing::error!(bytes, "write-ahead log record too large: refused");
                Err(JournalFull)
            }
            Err(AppendError::Poisoned(poisoned)) => {
                self.failed = Some(failed(poisoned));
                Err(JournalFull)
            }
            Err(
                error @ (AppendError::BadRecord(_)
                | AppendError::OutOfOrder { .. }
                | AppendError::EpochBehind { .. }),
            ) => unreachable!("only append_encoded refuses with {error}"),
        }
    }

    fn appended_lsn(&self) -> u64 {
        self.writer.appended_lsn()
    }

    fn enabled(&self) -> bool {
        true
    }

    fn commit(&mut self, now: Now) -> Result<Durable, JournalFailed> {
        self.check()?;
        self.writer.commit(wal_now(now)).map_err(failed)?;
        self.publish_positions();
        Ok(self.durable())
    }

    fn maintain(&mut self, now: Now, needed_lsn: u64) -> Result<Durable, JournalFailed> {
        self.check()?;
        let now = wal_now(now);
        if self.writer.is_full() && self.writer.retry_space(now) {
            tracing::info!(
                stream = self.writer.stream(),
                "write-ahead log: publishing resumes"
            );
        }
        let removed = self
            .writer
            .retain(
                now.unix_ms,
                needed_lsn,
                self.retain_bytes_max,
                self.retain_secs,
            )
            .map_err(failed)?;
        for segment in removed {
            tracing::debug!(
                stream = self.writer.stream(),
                segment = segment.name,
                "write-ahead log segment removed by retention"
            );
        }
        Ok(self.durable())
    }

    fn storage_full(&self) -> bool {
        self.writer.is_full()
    }

    fn retention_cut(&self, now: Now) -> u64 {
        self.writer
            .retention_cut(now.unix_ms, self.retain_bytes_max, self.retain_secs)
    }

    fn has_pending(&self) -> bool {
        self.writer.appended_lsn() > self.writer.written_lsn()
    }

    fn sync_due_in_ms(&self, now: Now) -> Option<u64> {
        let unsynced = self.writer.synced_lsn() < self.writer.written_lsn();
        match self.fsync {
            FsyncPolicy::Never => None,
            _ if !unsynced => None,
            _ if self.writer.sync_due(now.mono_ms) => Some(0),
            // At most one interval away (the writer knows exactly; waking early is harmless).
            _ => Some(self.fsync_interval_ms),
        }
    }

    fn reload(&mut self, apps: Arc<Apps>) {
        self.apps = apps;
    }

    fn begin_sync(&mut self, now: Now) -> Option<std::os::fd::RawFd> {
        self.writer
            .begin_external_sync(wal_now(now))
            .map(|(fd, _)| fd)
    }

    fn end_sync(&mut self, result: std::io::Result<()>) -> Result<Durable, JournalFailed> {
        self.writer.end_external_sync(result).map_err(failed)?;
        self.publish_positions();
        Ok(self.durable())
    }

    fn flush(&mut self, now: Now) -> Result<(), JournalFailed> {
        self.check()?;
        self.writer.commit(wal_now(now)).map_err(failed)?;
        self.writer.sync(wal_now(now)).map_err(failed)?;
        Ok(())
    }

    fn append_replicated(&mut self, raw: &[u8]) -> Result<Replicated, JournalFailed> {
        self.check()?;
        let lsn = match self.writer.append_encoded(raw) {
            Ok(lsn) => lsn,
            Err(AppendError::Poisoned(poisoned)) => return Err(failed(poisoned)),
            // ENOSPC is no loss of data: the standby stops taking records (and so acking
            // them) until `maintain` finds space again. Any other IO error poisoned the
            // writer above (the PostgreSQL fsync rule).
            Err(AppendError::Full) => return Ok(Replicated::Full),
            // The primary checked the record; a standby that cannot keep it must not
            // acknowledge anything after it (the link is cut when the core exits).
            Err(error) => return Err(failed(format!("replicated record refused: {error}"))),
        };
        let (header, record, _) = wal::record::decode_ref(raw)
            .map_err(|error| failed(format!("replicated record {lsn}: {error}")))?;
        if let Some((shared, core)) = &self.replica {
            shared.streams[*core]
                .last_epoch
                .fetch_max(header.epoch, std::sync::atomic::Ordering::AcqRel);
        }
        match owner_record(&self.apps, &record) {
            Some(Ok(owner)) => Ok(Replicated::Apply(owner, lsn)),
            Some(Err(UnknownApp)) | None => Ok(Replicated::Kept),
        }
    }

    fn start_epoch(&mut self, epoch: u64, node_id: &str, now: Now) -> Result<(), JournalFailed> {
        self.check()?;
        let previous_end_lsn = self.writer.appended_lsn();
        self.writer.set_epoch(epoch);
        let record: Record<&str> = Record::EpochStart {
            epoch,
            node_id,
            previous_end_lsn,
        };
        self.writer
            .append(&record)
            .map_err(|error| failed(format!("cannot write EpochStart({epoch}): {error}")))?;
        self.flush(now)?;
        if let Some((shared, core)) = &self.replica {
            shared.streams[*core]
                .last_epoch
                .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
        }
        self.publish_positions();
        Ok(())
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            appended_lsn: self.writer.appended_lsn(),
            written_lsn: self.writer.written_lsn(),
            synced_lsn: self.writer.synced_lsn(),
            bytes: self.writer.bytes(),
            segments: self.writer.segments() as u64,
            storage_full: self.writer.is_full(),
        }
    }
}

/// A record of an app the config no longer has.
pub(super) struct UnknownApp;

/// Appends `record` to `writer` (the reshard's fresh streams).
pub(super) fn append_owner_record(
    writer: &mut WalWriter,
    apps: &Apps,
    record: &OwnerRecord,
) -> Result<u64, AppendError> {
    with_wal_record(apps, record, |wal_record| writer.append(wal_record))
}

/// The owner record a WAL record holds: None for kinds that are not owner state (epochs,
/// heartbeats, webhooks), an error for an app that is gone.
pub(super) fn owner_record(
    apps: &Apps,
    record: &Record<&str>,
) -> Option<Result<OwnerRecord, UnknownApp>> {
    let key = |app_id: &str, channel: &str| {
        apps.by_id(app_id)
            .map(|app| ChannelKey::new(app, channel))
            .ok_or(UnknownApp)
    };
    let record = match *record {
        Record::Publish {
            app_id,
            channel,
            channel_epoch,
            seq,
            event,
            data,
            exclude,
            user_id,
            published_ms,
            flags,
        } => key(app_id, channel).map(|channel| {
            let publish = Arc::new(PublishCommand {
                channel,
                event: Arc::from(event),
                data: Arc::from(data),
                exclude: exclude.map(|(high, low)| SocketId { high, low }),
                user_id: user_id.map(Arc::from),
                published_ms,
                cache: flags & PUBLISH_CACHE != 0,
                client: flags & PUBLISH_CLIENT != 0,
            });
            if flags & PUBLISH_CACHE_ONLY != 0 {
                OwnerRecord::Cache {
                    epoch: channel_epoch,
                    seq,
                    publish,
                }
            } else {
                OwnerRecord::Publish {
                    epoch: channel_epoch,
                    seq,
                    publish,
                }
            }
        }),
        Record::PresenceJoin {
            app_id,
            channel,
            user_id,
            user_info,
        } => key(app_id, channel).map(|channel| OwnerRecord::PresenceJoin {
            channel,
            user_id: Arc::from(user_id),
            info_json: user_info.into(),
        }),
        Record::PresenceLeave {
            app_id,
            channel,
            user_id,
        } => key(app_id, channel).map(|channel| OwnerRecord::PresenceLeave {
            channel,
            user_id: Arc::from(user_id),
        }),
        Record::ChannelState {
            app_id,
            channel,
            channel_epoch,
            seq,
        } => key(app_id, channel).map(|channel| OwnerRecord::ChannelState {
            channel,
            epoch: channel_epoch,
            seq,
        }),
        Record::EpochStart { .. }
        | Record::Heartbeat { .. }
        | Record::WebhookEnqueued { .. }
        | Record::WebhookDone { .. } => return None,
    };
    Some(record)
}

/// The WAL form of an event (strings borrowed); `only_cache` marks a cached event that sets
/// the slot alone.
fn publish_record<'a>(
    app_id: &'a str,
    publish: &'a PublishCommand,
    epoch: u64,
    seq: u64,
    only_cache: bool,
) -> Record<&'a str> {
    let mut flags = 0;
    if publish.cache || only_cache {
        flags |= PUBLISH_CACHE;
    }
    if publish.client {
        flags |= PUBLISH_CLIENT;
    }
    if only_cache {
        flags |= PUBLISH_CACHE_ONLY;
    }
    Record::Publish {
        app_id,
        channel: &publish.channel.name,
        channel_epoch: epoch,
        seq,
        event: &publish.event,
        data: &publish.data,
        exclude: publish.exclude.map(|id| (id.high, id.low)),
        user_id: publish.user_id.as_deref(),
        published_ms: publish.published_ms,
        flags,
    }
}

/// Calls `write` with the WAL form of `record` (strings borrowed, no allocation).
fn with_wal_record<T>(
    apps: &Apps,
    record: &OwnerRecord,
    write: impl FnOnce(&Record<&str>) -> T,
) -> T {
    let app_id = |channel: &ChannelKey| apps.get(channel.app).id.as_str();
    let wal_record = match record {
        OwnerRecord::Publish {
            epoch,
            seq,
            publish: command,
        } => publish_record(app_id(&command.channel), command, *epoch, *seq, false),
        OwnerRecord::Cache {
            epoch,
            seq,
            publish: command,
        } => publish_record(app_id(&command.channel), command, *epoch, *seq, true),
        OwnerRecord::PresenceJoin {
            channel,
            user_id,
            info_json,
        } => Record::PresenceJoin {
            app_id: app_id(channel),
            channel: &channel.name,
            user_id,
            user_info: info_json,
        },
        OwnerRecord::PresenceLeave { channel, user_id } => Record::PresenceLeave {
            app_id: app_id(channel),
            channel: &channel.name,
            user_id,
        },
        OwnerRecord::ChannelState {
            channel,
            epoch,
            seq,
        } => Record::ChannelState {
            app_id: app_id(channel),
            channel: &channel.name,
            channel_epoch: *epoch,
            seq: *seq,
        },
    };
    write(&wal_record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::wal::record;

    /// Every owner record survives the trip through the WAL codec unchanged.
    #[test]
    fn owner_records_round_trip_through_the_codec() {
        let loaded = config::parse(config::EMBEDDED_DEFAULT).unwrap();
        let apps = Apps::new(&loaded.config);
        let channel = ChannelKey::new(0, "cache-room");
        let command = Arc::new(PublishCommand {
            channel: channel.clone(),
            event: Arc::from("e"),
            data: Arc::from(r#""d""#),
            exclude: Some(SocketId { high: 12, low: 34 }),
            user_id: Some(Arc::from("u")),
            published_ms: 1_700_000_000_000,
            cache: true,
            client: true,
        });
        let records = [
            OwnerRecord::Publish {
                epoch: 9,
                seq: 3,
                publish: Arc::clone(&command),
            },
            OwnerRecord::Cache {
                epoch: 9,
                seq: 3,
                publish: command,
            },
            OwnerRecord::PresenceJoin {
                channel: channel.clone(),
                user_id: Arc::from("u"),
                info_json: r#"{"a":1}"#.into(),
            },
            OwnerRecord::PresenceLeave {
                channel: channel.clone(),
                user_id: Arc::from("u"),
            },
            OwnerRecord::ChannelState {
                channel,
                epoch: 9,
                seq: 4,
            },
        ];
        for original in records {
            let mut bytes = Vec::new();
            with_wal_record(&apps, &original, |wal_record| {
                record::encode(wal_record, 1, 5, &mut bytes)
            });
            let (header, decoded, _) = record::decode_ref(&bytes).unwrap();
            assert_eq!(header.lsn, 5);
            let back = match owner_record(&apps, &decoded) {
                Some(Ok(back)) => back,
                _ => panic!("{original:?} did not come back"),
            };
            assert_eq!(back, original);
        }
        let unknown = Record::PresenceLeave {
            app_id: "gone",
            channel: "c",
            user_id: "u",
        };
        assert!(matches!(
            owner_record(&apps, &unknown),
            Some(Err(UnknownApp))
        ));
    }

    /// A standby's journal on a disk that fills: ENOSPC refuses the primary's record with
    /// `Full` (nothing appended, the caller waits), and once space is back (`maintain` after
    /// the retry interval) the same record is taken; an EIO still fails the journal.
    #[test]
    fn a_full_disk_stalls_replicated_records_and_eio_fails() {
        let text = "version = 1\n[storage]\ndir = \"/data\"\nfsync = \"always\"\nsegment_bytes = 65536\n[[apps]]\nid = \"app-1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let config = config::parse(text).unwrap().config;
        let apps = Arc::new(Apps::new(&config));
        let faulty = Arc::new(crate::wal::FaultyStorage::new(Arc::new(
            crate::wal::MemStorage::new(),
        )));
        let storage: Arc<dyn Storage> = Arc::clone(&faulty) as _;
        let at = |mono_ms: u64| Now {
            mono_ms,
            mono_us: mono_ms * 1000,
            unix_secs: 1_700_000_000,
            unix_ms: 1_700_000_000_000,
        };
        let (mut journal, _) = WalJournal::open(
            storage,
            &config,
            apps,
            0,
            1,
            RecoveryMode::Strict,
            1,
            at(0),
            |_, _| {},
        )
        .unwrap();
        let user = "u".repeat(1000);
        let raw = |lsn: u64| {
            let record: Record<&str> = Record::PresenceLeave {
                app_id: "app-1",
                channel: "presence-room",
                user_id: &user,
            };
            let mut bytes = Vec::new();
            record::encode(&record, 1, lsn, &mut bytes);
            bytes
        };
        faulty.arm(crate::wal::Fault::NoSpace);
        let mut lsn = 1;
        let full_at = loop {
            assert!(lsn < 1_000, "the disk never filled");
            match journal.append_replicated(&raw(lsn)).unwrap() {
                Replicated::Apply(..) | Replicated::Kept => {
                    journal.commit(at(0)).unwrap();
                    lsn += 1;
                }
                Replicated::Full => break lsn,
            }
        };
        assert!(journal.storage_full());
        assert_eq!(
            journal.writer.appended_lsn(),
            full_at - 1,
            "nothing appended"
        );
        // Still full: the same record is refused again, not lost and not skipped.
        assert!(matches!(
            journal.append_replicated(&raw(full_at)).unwrap(),
            Replicated::Full
        ));
        faulty.clear_no_space();
        // The next segment is made ahead by a helper thread: a few retries may pass first.
        let mut later = at(0);
        for attempt in 1..=200 {
            later = at(attempt * (limits_retry_ms() + 1));
            journal.maintain(later, 1).unwrap();
            if !journal.storage_full() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!journal.storage_full(), "space came back");
        assert!(matches!(
            journal.append_replicated(&raw(full_at)).unwrap(),
            Replicated::Apply(..) | Replicated::Kept
        ));
        journal.commit(later).unwrap();
        faulty.arm(crate::wal::Fault::WriteEio);
        let _ = journal.append_replicated(&raw(full_at + 1));
        assert!(journal.commit(later).is_err(), "EIO fails the journal");
        assert!(journal.append_replicated(&raw(full_at + 2)).is_err());
    }

    fn limits_retry_ms() -> u64 {
        crate::limits::WAL_SPACE_RETRY_MS
    }
}
