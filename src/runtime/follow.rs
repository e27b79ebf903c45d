//! A core's side of the hot standby: the role and standby state fed to the shard as
//! `ControlEvent::Replication` when they change, and, on a standby, the link's inputs carried
//! out on the core that owns the stream (records appended verbatim and applied, promotion).
//! A full disk stalls the records (no ack moves, the link stops reading) until space is back;
//! any other storage error exits.
//! It reads `ReplicaShared` (atomics and the core's bounded inbound queue) and never touches a
//! replication socket or another core's stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::CoreLoop;
use crate::replica::{CoreInput, ReplicaShared, Role};
use crate::shard::{ControlEvent, Now};
use crate::wal::{self, FsStorage, RecoveryMode};

/// Inputs a standby core carries out per loop iteration at most (the rest wait in its queue).
const INPUTS_PER_ITERATION: usize = 16;

/// What the core last fed the shard about replication.
#[derive(Debug)]
pub(super) struct ReplicaCore {
    shared: Arc<ReplicaShared>,
    fed_primary: bool,
    fed_standby_lost: bool,
    fed_frozen: bool,
    /// A rewind that waits for the WAL sync in flight (it replaces the stream's writer), or
    /// records that wait for disk space.
    deferred: Option<CoreInput>,
    /// The disk is full: records wait in `deferred`.
    stalled: bool,
}

impl ReplicaCore {
    pub(super) fn new(shared: Arc<ReplicaShared>) -> ReplicaCore {
        ReplicaCore {
            shared,
            // The shard starts as a primary: the first feed tells a standby otherwise.
            fed_primary: true,
            fed_standby_lost: false,
            fed_frozen: false,
            deferred: None,
            stalled: false,
        }
    }
}

impl CoreLoop {
    /// Feeds a change of role, of the standby's availability or of a switchover's freeze to
    /// the shard. Called at the start of each loop iteration, so when it reports the freeze
    /// generation it has fed (`freeze_seen`), every publish this core sequenced before is in
    /// its published written position, and it sequences none after.
    pub(super) fn feed_replication(&mut self, now: Now) {
        let Some(replica) = &mut self.replica else {
            return;
        };
        let generation = replica.shared.freeze_generation();
        let primary = replica.shared.role() == Role::Primary;
        let standby_lost = primary && replica.shared.standby_lost();
        let frozen = replica.shared.frozen();
        let fed = (
            replica.fed_primary,
            replica.fed_standby_lost,
            replica.fed_frozen,
        );
        if (primary, standby_lost, frozen) == fed {
            replica.shared.streams[self.core]
                .freeze_seen
                .store(generation, Ordering::Release);
            return;
        }
        let stepped_down = replica.fed_primary && !primary;
        replica.fed_primary = primary;
        replica.fed_standby_lost = standby_lost;
        replica.fed_frozen = frozen;
        let move_clients_ms = if stepped_down {
            replica.shared.move_clients_ms.load(Ordering::Acquire)
        } else {
            0
        };
        let shared = Arc::clone(&replica.shared);
        if standby_lost {
            tracing::warn!(
                core = self.core,
                "the standby is unavailable: publishes follow `on_standby_loss`"
            );
        }
        self.shard.on_control(
            ControlEvent::Replication {
                primary,
                standby_lost,
                frozen,
                move_clients_ms,
            },
            now,
        );
        shared.streams[self.core]
            .freeze_seen
            .store(generation, Ordering::Release);
    }

    /// Standby: carries out what the link queued for this core. Returns whether it did
    /// anything.
    pub(super) fn follow(&mut self, now: Now) -> bool {
        let Some(replica) = &self.replica else {
            return false;
        };
        let shared = Arc::clone(&replica.shared);
        let slot = &shared.streams[self.core];
        let mut any = false;
        for _ in 0..INPUTS_PER_ITERATION {
            let deferred = self
                .replica
                .as_mut()
                .and_then(|replica| replica.deferred.take());
            let Some(input) = deferred.or_else(|| slot.inbound.pop()) else {
                break;
            };
            any = true;
            match input {
                CoreInput::Records(bytes) => {
                    if !self.apply_records(bytes, now) {
                        break;
                    }
                }
                CoreInput::Promote { epoch } => {
                    let promoted = self.shard.promote(epoch, &shared.config.node_id, now);
                    self.exit_if_failed(promoted);
                    tracing::info!(
                        core = self.core,
                        epoch,
                        "promoted: this core's stream entered the new epoch"
                    );
                    slot.done.fetch_add(1, Ordering::AcqRel);
                }
                input @ CoreInput::Rewind { .. } if self.wal_sync_in_flight => {
                    if let Some(replica) = &mut self.replica {
                        replica.deferred = Some(input);
                    }
                    break;
                }
                CoreInput::Rewind {
                    keep_through,
                    wipe,
                    divergent_file,
                } => {
                    let rewound = self
                        .rewind(&shared, keep_through, wipe, &divergent_file, now)
                        .map_err(|error| crate::shard::JournalFailed(format!("{error:#}")));
                    self.exit_if_failed(rewound);
                    slot.done.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        any
    }

    /// Appends and applies the primary's records; false when the disk is full: the rest waits
    /// (ahead of the queue, which then fills and stops the link from reading and acking) and
    /// is tried again on a later iteration, after `maintain` found space. Other failures exit.
    fn apply_records(&mut self, bytes: bytes::Bytes, now: Now) -> bool {
        let taken = match self.shard.apply_replicated(&bytes, now) {
            Ok(taken) => taken,
            Err(error) => {
                self.exit_if_failed(Err(error));
                return false;
            }
        };
        let Some(replica) = &mut self.replica else {
            return true;
        };
        if taken == bytes.len() {
            if replica.stalled {
                replica.stalled = false;
                tracing::info!(
                    core = self.core,
                    "replication: disk space is back; following again"
                );
            }
            return true;
        }
        if !replica.stalled {
            replica.stalled = true;
            tracing::warn!(
                core = self.core,
                "replication: the disk is full; not taking the primary's records until space is back"
            );
        }
        replica.deferred = Some(CoreInput::Records(bytes.slice(taken..)));
        false
    }

    /// The primary's plan for this standby's stream: cut it after `keep_through` (the suffix
    /// goes to `divergent_file`) or wipe it, then rebuild the owner state from what is left.
    fn rewind(
        &mut self,
        shared: &Arc<ReplicaShared>,
        keep_through: u64,
        wipe: bool,
        divergent_file: &std::path::Path,
        now: Now,
    ) -> anyhow::Result<()> {
        self.shard.reset_for_resync(now)?;
        let (config, apps) = self.shard.config_and_apps();
        let stream = wal::core_stream(self.core);
        let dir = wal::stream_dir(std::path::Path::new(&config.storage.dir), &stream);
        if wipe {
            wal::wipe(&FsStorage, &dir)?;
            tracing::warn!(
                core = self.core,
                next_lsn = keep_through + 1,
                "replication: full resync; the stream starts over"
            );
        } else {
            let moved =
                wal::truncate_after(&FsStorage, &dir, &stream, keep_through, divergent_file)?;
            tracing::warn!(
                core = self.core,
                keep_through,
                moved,
                file = %divergent_file.display(),
                "replication: divergent records moved aside; following the new primary"
            );
        }
        let mode = RecoveryMode::Strict;
        super::recover(
            &mut self.shard,
            &config,
            &apps,
            &self.control,
            mode,
            Some(shared),
            keep_through + 1,
        )
    }
}
