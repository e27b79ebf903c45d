//! The replication handshake's decisions, as pure functions: whether a primary accepts a
//! standby's `Hello` (`check_hello`), where each of the standby's streams rejoins the primary's
//! (`plan_stream`, `plan_streams`), whether a standby accepts the `Welcome` (`check_welcome`),
//! and the HMACs that prove both sides know the shared secret. It must not do IO, read a clock
//! or draw random numbers (the caller passes the nonces in), and it changes nothing: the
//! replication threads carry out what it decides. The messages and the sequence are documented
//! in `proto.rs`.
//!
//! # Where a standby's stream rejoins
//!
//! A standby's records are trusted up to the end of its last epoch *as the primary knows it*:
//! the primary's end of epoch E on a stream is the first LSN of the next epoch it lists after E,
//! minus one, or its last LSN when it lists no later epoch. Every epoch has one primary, and a
//! node that holds records of epoch E copied (or wrote) that primary's history up to where E
//! began, so both nodes agree up to the primary's end of E; anything the standby holds past it
//! is a divergent suffix (an old primary's unacknowledged tail) and is truncated. If the
//! standby's last epoch lies between two epochs the primary lists (or above all it lists) the
//! primary never saw that epoch: the standby wrote it as a primary cut off from this one, and
//! without the standby's own epoch history nothing after their last common epoch can be
//! trusted, so the stream is resynced in full. When the first record the standby needs is no
//! longer retained, the stream is resynced in full too.

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::proto::{
    Hello, Mac, Nonce, RefuseCode, Role, StreamMode, StreamPlan, StreamPosition, Welcome,
};
use crate::wal::record;

/// The label of the primary's MAC (in `Welcome`).
const PRIMARY_LABEL: &[u8] = b"ringcast-repl primary";
/// The label of the standby's MAC (in `Auth`).
const STANDBY_LABEL: &[u8] = b"ringcast-repl standby";

/// What the primary knows of itself when a `Hello` arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub cluster: String,
    pub node_id: String,
    pub role: Role,
    /// The highest epoch this node has persisted.
    pub epoch: u64,
    /// The names of its WAL streams.
    pub streams: Vec<String>,
}

/// What the primary holds of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryStream {
    pub name: String,
    /// The first LSN still in the primary's WAL; `None` when it holds no record (then the next
    /// record is `last_lsn + 1`).
    pub first_retained_lsn: Option<u64>,
    /// The last LSN written; 0 for a stream that never had a record.
    pub last_lsn: u64,
    /// `(epoch, first LSN of that epoch)` for every epoch that began on this stream (its
    /// `EpochStart` records), sorted, epochs strictly increasing. The stream's first epoch may be
    /// left out (a cluster's epoch 1 writes no `EpochStart`): an epoch below the first listed
    /// one is taken as that shared base.
    pub epoch_starts: Vec<(u64, u64)>,
}

impl PrimaryStream {
    /// # Panics
    ///
    /// If the stream's own description is inconsistent (our own state must be right).
    fn assert_valid(&self) {
        if let Some(first) = self.first_retained_lsn {
            assert!(first >= 1 && first <= self.last_lsn + 1, "{self:?}");
        }
        for pair in self.epoch_starts.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1, "{self:?}");
        }
        for (_, first_lsn) in &self.epoch_starts {
            assert!(
                *first_lsn >= 1 && *first_lsn <= self.last_lsn + 1,
                "{self:?}"
            );
        }
    }

    /// The primary's last LSN of `epoch` on this stream, or `None` if the primary never had
    /// that epoch (see the module documentation).
    fn epoch_end(&self, epoch: u64) -> Option<u64> {
        let listed = self.epoch_starts.iter().any(|(e, _)| *e == epoch);
        let below_base = self.epoch_starts.first().is_none_or(|(e, _)| epoch < *e);
        if !listed && !below_base {
            return None;
        }
        let end = match self.epoch_starts.iter().find(|(e, _)| *e > epoch) {
            Some((_, next_first_lsn)) => next_first_lsn - 1,
            None => self.last_lsn,
        };
        Some(end.min(self.last_lsn))
    }
}

/// The primary's check of a standby's `Hello`, in this order: the cluster (`ClusterMismatch`),
/// this node being the primary (`NotPrimary`), the standby's epoch or any of its streams' last
/// epochs above ours (`HigherEpoch`: we are stale and must step down), the standby believing it
/// is the primary of our own epoch (`RoleConflict`), the WAL format ranges overlapping
/// (`FormatMismatch`: this build reads and writes only `record::FORMAT`), and the stream names
/// being the same set, without repeats (`StreamsMismatch`).
///
/// # Errors
///
/// The first code that applies, for the `Refuse` the caller sends.
pub fn check_hello(hello: &Hello, local: &LocalNode) -> Result<(), RefuseCode> {
    if hello.cluster != local.cluster {
        return Err(RefuseCode::ClusterMismatch);
    }
    if local.role != Role::Primary {
        return Err(RefuseCode::NotPrimary);
    }
    let highest = hello.streams.iter().map(|s| s.last_epoch).max();
    if hello.epoch > local.epoch || highest.is_some_and(|epoch| epoch > local.epoch) {
        return Err(RefuseCode::HigherEpoch);
    }
    if hello.role == Role::Primary && hello.epoch == local.epoch {
        return Err(RefuseCode::RoleConflict);
    }
    if !(hello.wal_format_min..=hello.wal_format_max).contains(&record::FORMAT) {
        return Err(RefuseCode::FormatMismatch);
    }
    let names = hello.streams.iter().map(|s| s.name.as_str());
    if !same_names(names, local.streams.iter().map(String::as_str)) {
        return Err(RefuseCode::StreamsMismatch);
    }
    Ok(())
}

/// Whether two lists of names hold the same set, each without repeats.
fn same_names<'a>(a: impl Iterator<Item = &'a str>, b: impl Iterator<Item = &'a str>) -> bool {
    let (mut a, mut b): (Vec<&str>, Vec<&str>) = (a.collect(), b.collect());
    a.sort_unstable();
    b.sort_unstable();
    let unique = |names: &[&str]| names.windows(2).all(|pair| pair[0] != pair[1]);
    a == b && unique(&a)
}

/// Where the standby's stream rejoins the primary's (the rules are in the module
/// documentation): `Partial` from the standby's next LSN when its records are all trusted;
/// `Partial` with `truncate_after` when it holds a divergent suffix; `Full` from the first
/// retained LSN when the records it needs are gone or its last epoch is one the primary never
/// had.
///
/// # Errors
///
/// `StreamsMismatch` if the two describe different streams.
///
/// # Panics
///
/// If `primary` is inconsistent (see `PrimaryStream`).
pub fn plan_stream(
    standby: &StreamPosition,
    primary: &PrimaryStream,
) -> Result<StreamPlan, RefuseCode> {
    if standby.name != primary.name {
        return Err(RefuseCode::StreamsMismatch);
    }
    primary.assert_valid();
    let available_from = primary.first_retained_lsn.unwrap_or(primary.last_lsn + 1);
    let full = StreamPlan {
        name: primary.name.clone(),
        mode: StreamMode::Full,
        truncate_after: None,
        from_lsn: available_from,
    };
    let (truncate_after, from_lsn) = if standby.last_lsn == 0 {
        (None, 1)
    } else {
        let Some(end) = primary.epoch_end(standby.last_epoch) else {
            return Ok(full);
        };
        if standby.last_lsn > end {
            (Some(end), end + 1)
        } else {
            (None, standby.last_lsn + 1)
        }
    };
    if from_lsn < available_from {
        return Ok(full);
    }
    Ok(StreamPlan {
        name: primary.name.clone(),
        mode: StreamMode::Partial,
        truncate_after,
        from_lsn,
    })
}

/// One plan per primary stream, in the primary's order (the order `Records.stream` indexes).
///
/// # Errors
///
/// `StreamsMismatch` unless the standby announced each of the primary's streams exactly once
/// and no other.
///
/// # Panics
///
/// If a `PrimaryStream` is inconsistent.
pub fn plan_streams(
    standby: &[StreamPosition],
    primary: &[PrimaryStream],
) -> Result<Vec<StreamPlan>, RefuseCode> {
    let names = standby.iter().map(|s| s.name.as_str());
    if !same_names(names, primary.iter().map(|p| p.name.as_str())) {
        return Err(RefuseCode::StreamsMismatch);
    }
    primary
        .iter()
        .map(|p| {
            let position = standby.iter().find(|s| s.name == p.name);
            plan_stream(position.ok_or(RefuseCode::StreamsMismatch)?, p)
        })
        .collect()
}

/// The standby's check of the primary's `Welcome` to its `hello`, in this order: the MAC
/// (`BadSecret`), the primary's epoch not below the standby's (`HigherEpoch`: that primary is
/// stale), the WAL format being one the standby announced (`FormatMismatch`), and one plan per
/// announced stream that fits it (`StreamsMismatch`): a `Partial` plan continues right after the
/// standby's last record, or truncates records it holds.
///
/// # Errors
///
/// The first code that applies, for the `Refuse` the caller sends.
pub fn check_welcome(secret: &[u8], hello: &Hello, welcome: &Welcome) -> Result<(), RefuseCode> {
    let mac = &welcome.mac;
    if !verify_welcome_mac(
        secret,
        &hello.nonce,
        &welcome.nonce,
        &hello.cluster,
        welcome.epoch,
        mac,
    ) {
        return Err(RefuseCode::BadSecret);
    }
    if welcome.epoch < hello.epoch {
        return Err(RefuseCode::HigherEpoch);
    }
    if !(hello.wal_format_min..=hello.wal_format_max).contains(&welcome.wal_format) {
        return Err(RefuseCode::FormatMismatch);
    }
    let names = welcome.streams.iter().map(|p| p.name.as_str());
    if !same_names(names, hello.streams.iter().map(|s| s.name.as_str())) {
        return Err(RefuseCode::StreamsMismatch);
    }
    let fits = |plan: &StreamPlan| {
        let Some(position) = hello.streams.iter().find(|s| s.name == plan.name) else {
            return false;
        };
        match (plan.mode, plan.truncate_after) {
            (StreamMode::Full, _) => plan.from_lsn >= 1,
            (StreamMode::Partial, None) => plan.from_lsn == position.last_lsn + 1,
            (StreamMode::Partial, Some(end)) => end < position.last_lsn && plan.from_lsn == end + 1,
        }
    };
    if !welcome.streams.iter().all(fits) {
        return Err(RefuseCode::StreamsMismatch);
    }
    Ok(())
}

/// `HMAC-SHA256(secret, "ringcast-repl primary" || Ns || Np || cluster || epoch LE)`, the
/// primary's proof in `Welcome`.
pub fn welcome_mac(
    secret: &[u8],
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
    cluster: &str,
    epoch: u64,
) -> Mac {
    hmac(
        secret,
        &[
            PRIMARY_LABEL,
            standby_nonce,
            primary_nonce,
            cluster.as_bytes(),
            &epoch.to_le_bytes(),
        ],
    )
}

/// `HMAC-SHA256(secret, "ringcast-repl standby" || Np || Ns || cluster)`, the standby's proof in
/// `Auth`.
pub fn auth_mac(secret: &[u8], standby_nonce: &Nonce, primary_nonce: &Nonce, cluster: &str) -> Mac {
    hmac(
        secret,
        &[
            STANDBY_LABEL,
            primary_nonce,
            standby_nonce,
            cluster.as_bytes(),
        ],
    )
}

/// Whether `mac` is `welcome_mac` of these inputs (compared in constant time).
pub fn verify_welcome_mac(
    secret: &[u8],
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
    cluster: &str,
    epoch: u64,
    mac: &Mac,
) -> bool {
    let expected = welcome_mac(secret, standby_nonce, primary_nonce, cluster, epoch);
    bool::from(expected.ct_eq(mac))
}

/// Whether `mac` is `auth_mac` of these inputs (compared in constant time).
pub fn verify_auth_mac(
    secret: &[u8],
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
    cluster: &str,
    mac: &Mac,
) -> bool {
    let expected = auth_mac(secret, standby_nonce, primary_nonce, cluster);
    bool::from(expected.ct_eq(mac))
}

/// `HMAC-SHA256(secret, parts concatenated)`; the witness's frames use it too
/// (`failover::wire`), with their own label.
pub(crate) fn hmac(secret: &[u8], parts: &[&[u8]]) -> Mac {
    // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Why a standby does not take a planned switchover's `Handover`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverRefusal {
    /// The handover is not of the epoch the standby follows (or there is no next epoch).
    #[error("handover of epoch {offered}, but this standby follows epoch {ours}")]
    WrongEpoch { offered: u64, ours: u64 },
    /// The handover does not list one position per stream the standby holds.
    #[error("handover lists {offered} streams, this standby has {ours}")]
    StreamCount { offered: usize, ours: usize },
    /// The standby does not hold exactly what the primary wrote in a stream.
    #[error("stream {stream}: the primary wrote up to {written}, this standby holds {held}")]
    NotCaughtUp {
        stream: usize,
        written: u64,
        held: u64,
    },
}

/// The standby's check of a `Handover { epoch, written }`: it follows `our_epoch` and holds
/// `held` (per stream, the LSN after the last record it queued for writing). It takes over only
/// the epoch it follows, and only when it holds every stream exactly up to where the primary
/// wrote it (nothing acknowledged can be missing, nothing of its own is extra). Returns the
/// epoch it then becomes the primary of.
///
/// # Errors
///
/// The first refusal that applies; the standby then does not promote itself.
pub fn check_handover(
    epoch: u64,
    written: &[u64],
    our_epoch: u64,
    held: &[u64],
) -> Result<u64, HandoverRefusal> {
    let next = epoch.checked_add(1);
    let Some(next) = next.filter(|_| epoch == our_epoch && epoch > 0) else {
        return Err(HandoverRefusal::WrongEpoch {
            offered: epoch,
            ours: our_epoch,
        });
    };
    if written.len() != held.len() {
        return Err(HandoverRefusal::StreamCount {
            offered: written.len(),
            ours: held.len(),
        });
    }
    for (stream, (&written, &held)) in written.iter().zip(held).enumerate() {
        if written != held {
            return Err(HandoverRefusal::NotCaughtUp {
                stream,
                written,
                held,
            });
        }
    }
    Ok(next)
}
