//! `ReplicaShared`: what the cores and the replication link threads share, all atomics and
//! bounded queues (no lock on a core's path). Per stream (one per core, then the `webhooks`
//! stream of the webhook outbox) its writer publishes its
//! written and synced LSNs after every commit, and the link publishes what the standby
//! acknowledged; a standby core's inputs (records to append and apply, rewinds, promotion)
//! come through its bounded `inbound` queue. It owns no thread and makes no decision: the role
//! and link state are set by the link threads and the promotion; cores only read them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::{Parker, Unparker};

use crate::config::ReplicationConfig;
use crate::limits;
use crate::shard::ReplicaView;

/// What this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves clients; ships its WAL to the standby.
    Primary,
    /// Refuses clients (503 naming the role); follows the primary's WAL.
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// What the link hands a standby core.
#[derive(Debug)]
pub enum CoreInput {
    /// Whole encoded WAL records with contiguous LSNs, next after the core's last: appended
    /// verbatim to its stream, then applied to the owner state.
    Records(bytes::Bytes),
    /// Before records flow: make the stream end at `keep_through` (records after it are
    /// divergent: moved to `divergent_file`), or, when `wipe`, discard the stream and start
    /// it at `keep_through + 1`; then rebuild the owner state from what is left.
    Rewind {
        keep_through: u64,
        wipe: bool,
        divergent_file: std::path::PathBuf,
    },
    /// Become the primary of `epoch` (write `EpochStart`, start serving).
    Promote { epoch: u64 },
}

/// One stream's positions.
#[derive(Debug)]
pub struct StreamSlot {
    /// This node's written LSN in the stream (published by its core after each commit).
    pub written: AtomicU64,
    /// This node's synced LSN.
    pub synced: AtomicU64,
    /// The epoch of the stream's last record.
    pub last_epoch: AtomicU64,
    /// Primary: the standby acknowledged receipt (in its WAL file) up to here.
    pub peer_received: AtomicU64,
    /// Primary: the standby acknowledged fsync up to here.
    pub peer_durable: AtomicU64,
    /// Standby: the link's inputs for the core.
    pub inbound: ArrayQueue<CoreInput>,
    /// Standby: the core carried out the last `Rewind` or `Promote` (a counter the link waits
    /// on).
    pub done: AtomicU64,
    /// The last `freeze_generation` the core fed its shard (a switchover waits for every core:
    /// from then on none sequences a publish).
    pub freeze_seen: AtomicU64,
}

/// Link and role state shared by the cores, the link threads and the admin endpoint.
pub struct ReplicaShared {
    pub config: ReplicationConfig,
    /// The node's core count: `streams[core]` for each core, then `streams[cores]` for the
    /// `webhooks` stream.
    pub cores: usize,
    role: AtomicU8,
    epoch: AtomicU64,
    pub streams: Box<[StreamSlot]>,
    /// The peer is connected and authenticated.
    link_up: AtomicBool,
    /// Primary: the standby has been unreachable for longer than `standby_timeout_ms`.
    standby_lost: AtomicBool,
    /// The standby reached lag 0 once on this connection.
    in_sync: AtomicBool,
    /// Monotonic ms of the last message from the peer.
    pub heard_ms: AtomicU64,
    /// With a witness: the monotonic ms until which this node can prove its lease (0: none),
    /// set by the failover thread, read by the cores before acknowledging.
    pub lease_until_ms: AtomicU64,
    /// With a witness: whether the failover thread could prove the lease at its last step
    /// (the metric; the cores go by `lease_until_ms`).
    pub lease_valid: AtomicBool,
    /// A planned switchover froze publishes (see `ReplicaView::frozen`).
    frozen: AtomicBool,
    /// Bumped at each freeze, so the switchover can tell when every core has seen it.
    freeze_generation: AtomicU64,
    /// When this node steps down after a planned switchover: over how many ms its cores spread
    /// the close of their WebSocket clients (0: all at once, the step-down of a failover).
    pub move_clients_ms: AtomicU64,
    /// Promotions the witness granted (the rest of `promotions` were manual).
    pub promotions_witness: AtomicU64,
    /// Promotion requests of this standby the witness refused, by `RefuseReason::index` (a
    /// standby silent on its primary asks every `renew_ms`: `lease_held` counts a partition
    /// the witness kept from becoming a failover).
    pub promotion_refusals: [AtomicU64; crate::failover::RefuseReason::ALL.len()],
    pub lag_records: AtomicU64,
    pub lag_ms: AtomicU64,
    pub promotions: AtomicU64,
    pub resyncs_partial: AtomicU64,
    pub resyncs_full: AtomicU64,
    /// Primary: per-record lag from the link writer's read to the standby's ack of receipt.
    pub lag: super::lag::LagTracker,
    /// Wakes the link's writer (new records written, acks to send).
    waker: Unparker,
    parker: Mutex<Option<Parker>>,
}

impl std::fmt::Debug for ReplicaShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaShared")
            .field("role", &self.role())
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl ReplicaShared {
    pub fn new(config: ReplicationConfig, cores: usize, role: Role, epoch: u64) -> ReplicaShared {
        let parker = Parker::new();
        let waker = parker.unparker().clone();
        let shared = ReplicaShared {
            config,
            cores,
            role: AtomicU8::new(0),
            epoch: AtomicU64::new(epoch),
            streams: (0..=cores)
                .map(|_| StreamSlot {
                    written: AtomicU64::new(0),
                    synced: AtomicU64::new(0),
                    last_epoch: AtomicU64::new(0),
                    peer_received: AtomicU64::new(0),
                    peer_durable: AtomicU64::new(0),
                    inbound: ArrayQueue::new(limits::REPL_CORE_QUEUE_DEPTH),
                    done: AtomicU64::new(0),
                    freeze_seen: AtomicU64::new(0),
                })
                .collect(),
            link_up: AtomicBool::new(false),
            standby_lost: AtomicBool::new(false),
            in_sync: AtomicBool::new(false),
            heard_ms: AtomicU64::new(0),
            lease_until_ms: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
            freeze_generation: AtomicU64::new(0),
            move_clients_ms: AtomicU64::new(0),
            promotions_witness: AtomicU64::new(0),
            promotion_refusals: Default::default(),
            lease_valid: AtomicBool::new(false),
            lag_records: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            promotions: AtomicU64::new(0),
            resyncs_partial: AtomicU64::new(0),
            resyncs_full: AtomicU64::new(0),
            lag: super::lag::LagTracker::new(cores),
            waker,
            parker: Mutex::new(Some(parker)),
        };
        shared.set_role(role);
        shared
    }

    /// The index of the `webhooks` stream (after the cores' streams).
    pub fn webhooks_stream(&self) -> usize {
        self.cores
    }

    /// The name of stream `index`, as the handshake lists it.
    pub fn stream_name(&self, index: usize) -> String {
        if index == self.cores {
            crate::wal::WEBHOOKS_STREAM.to_string()
        } else {
            crate::wal::core_stream(index)
        }
    }

    /// Every stream's name, in index order (the order `Records.stream` indexes).
    pub fn stream_names(&self) -> Vec<String> {
        (0..self.streams.len())
            .map(|index| self.stream_name(index))
            .collect()
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Primary,
            _ => Role::Standby,
        }
    }

    pub fn set_role(&self, role: Role) {
        let value = match role {
            Role::Primary => 1,
            Role::Standby => 2,
        };
        self.role.store(value, Ordering::Release);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Epochs only grow.
    pub fn raise_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    pub fn set_link_up(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
        if !up {
            self.in_sync.store(false, Ordering::Release);
        }
    }

    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Acquire)
    }

    pub fn set_in_sync(&self) {
        self.in_sync.store(true, Ordering::Release);
    }

    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Freezes publishes (a planned switchover); returns the generation every core must reach
    /// in `freeze_seen` before none sequences a publish any more.
    pub fn freeze(&self) -> u64 {
        self.frozen.store(true, Ordering::Release);
        self.freeze_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Ends a freeze (a switchover given up before the handover, or this node promoted).
    pub fn unfreeze(&self) {
        self.frozen.store(false, Ordering::Release);
    }

    pub fn freeze_generation(&self) -> u64 {
        self.freeze_generation.load(Ordering::Acquire)
    }

    pub fn standby_lost(&self) -> bool {
        self.standby_lost.load(Ordering::Acquire)
    }

    /// A lost standby is not in sync either, even while its session lasts (a session outlives
    /// a silence of `standby_timeout_ms`): it is again once its acks reach lag 0.
    pub fn set_standby_lost(&self, lost: bool) {
        self.standby_lost.store(lost, Ordering::Release);
        if lost {
            self.in_sync.store(false, Ordering::Release);
        }
    }

    /// Core `core`'s stream as the standby has acknowledged it (`lost` also when this node is
    /// not the primary: nothing it holds can reach a standby).
    pub fn replica_view(&self, core: usize) -> ReplicaView {
        let slot = &self.streams[core];
        ReplicaView {
            received_lsn: slot.peer_received.load(Ordering::Acquire),
            durable_lsn: slot.peer_durable.load(Ordering::Acquire),
            lost: self.standby_lost() || self.role() != Role::Primary,
            lease_until_ms: self
                .config
                .has_witness()
                .then(|| self.lease_until_ms.load(Ordering::Acquire)),
            frozen: self.frozen(),
            primary: self.role() == Role::Primary,
        }
    }

    /// A core committed: publishes its positions and wakes the link when they moved.
    pub fn publish_positions(&self, core: usize, written: u64, synced: u64) {
        let slot = &self.streams[core];
        let written_moved = slot.written.swap(written, Ordering::AcqRel) != written;
        let synced_moved = slot.synced.swap(synced, Ordering::AcqRel) != synced;
        let moved = written_moved || synced_moved;
        if moved {
            self.waker.unpark();
        }
    }

    /// Wakes the link's writer.
    pub fn wake_link(&self) {
        self.waker.unpark();
    }

    /// The link writer's parker (one writer at a time takes it and gives it back).
    pub fn take_parker(&self) -> Option<Parker> {
        self.parker.lock().ok()?.take()
    }

    pub fn return_parker(&self, parker: Parker) {
        if let Ok(mut slot) = self.parker.lock() {
            *slot = Some(parker);
        }
    }
}
