//! The messages between a node and the witness, as values: what each asks and what the witness
//! answers. It owns only the types; `wire.rs` encodes them (with an HMAC) and `witness.rs` and
//! `node.rs` act on them. It must not do IO or hold state.

/// What a node asks, or the witness answers. Every message names the node it concerns and the
/// node's `session` (random per process start, so an answer to an earlier run is never taken
/// for an answer to this one) and `seq` (per request, so an answer is matched to the send time
/// of the request it answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessMessage {
    /// The primary of `epoch` asks for (or renews) its lease.
    LeaseRequest {
        node: String,
        epoch: u64,
        session: u64,
        seq: u64,
    },
    /// A standby whose log is complete up to `epoch` (it reached the primary's end once in that
    /// epoch) asks to become the primary of the next one.
    PromoteRequest {
        node: String,
        epoch: u64,
        session: u64,
        seq: u64,
    },
    /// Planned switchover: the primary of `epoch`, frozen and with its standby caught up, gives
    /// its lease back. It acknowledges nothing in `epoch` from before it sends this, and the
    /// witness may then promote the standby at once instead of waiting for the lease to expire.
    LeaseRelease {
        node: String,
        epoch: u64,
        session: u64,
        seq: u64,
    },
    /// The witness grants `node` a lease of `lease_ms` in `epoch` (for a `Promotion`, the new
    /// epoch, which it has persisted before sending this).
    Granted {
        node: String,
        kind: GrantKind,
        epoch: u64,
        session: u64,
        seq: u64,
        lease_ms: u64,
    },
    /// The witness refuses; `epoch` is the highest epoch it has granted.
    Refused {
        node: String,
        reason: RefuseReason,
        epoch: u64,
        session: u64,
        seq: u64,
    },
}

impl WitnessMessage {
    /// The node the message concerns (the sender of a request, the addressee of an answer).
    pub fn node(&self) -> &str {
        match self {
            WitnessMessage::LeaseRequest { node, .. }
            | WitnessMessage::PromoteRequest { node, .. }
            | WitnessMessage::LeaseRelease { node, .. }
            | WitnessMessage::Granted { node, .. }
            | WitnessMessage::Refused { node, .. } => node,
        }
    }
}

/// What a `Granted` answers. Numbers are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GrantKind {
    /// A lease (or its renewal) in the node's current epoch.
    Lease = 1,
    /// A promotion to a new epoch, with the first lease of that epoch.
    Promotion = 2,
    /// The lease of `epoch` was given back (`LeaseRelease`): nobody holds it now (`lease_ms`
    /// 0).
    Released = 3,
}

impl GrantKind {
    pub fn from_u8(byte: u8) -> Option<GrantKind> {
        [GrantKind::Lease, GrantKind::Promotion, GrantKind::Released]
            .into_iter()
            .find(|k| *k as u8 == byte)
    }
}

/// Why the witness refuses. Numbers are on the wire: never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum RefuseReason {
    /// The node's epoch is below the witness's: another node has been promoted since, and the
    /// node steps down (a primary) or has to catch up first (a standby).
    #[error("a higher epoch exists")]
    StaleEpoch = 1,
    /// The epoch's lease belongs to another node.
    #[error("another node holds this epoch")]
    NotHolder = 2,
    /// A lease is (or may still be) valid: promotion waits until it has expired by the
    /// witness's clock, plus the drift margin.
    #[error("the current lease has not expired")]
    LeaseHeld = 3,
    /// The witness has no record the node could be promoted from (it never saw a primary), or
    /// the node claims an epoch above any it granted.
    #[error("not eligible for promotion")]
    NotEligible = 4,
    /// The node gave this epoch's lease back (a planned switchover): it cannot take it again.
    #[error("the lease of this epoch was released")]
    Released = 5,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 5] = [
        RefuseReason::StaleEpoch,
        RefuseReason::NotHolder,
        RefuseReason::LeaseHeld,
        RefuseReason::NotEligible,
        RefuseReason::Released,
    ];

    pub fn from_u8(byte: u8) -> Option<RefuseReason> {
        RefuseReason::ALL.into_iter().find(|r| *r as u8 == byte)
    }

    /// Its position in `ALL` (a table index, as for the refusal counters).
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::StaleEpoch => "stale_epoch",
            RefuseReason::NotHolder => "not_holder",
            RefuseReason::LeaseHeld => "lease_held",
            RefuseReason::NotEligible => "not_eligible",
            RefuseReason::Released => "released",
        }
    }
}
