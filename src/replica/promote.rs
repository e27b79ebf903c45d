//! Promotion of a standby (`POST /replication/promote`, `ringcast promote`), and the JSON the
//! admin endpoint shows (`GET /replication`). A promotion stops following, persists epoch + 1,
//! has every core write `EpochStart` for it (after the records already queued), and only then
//! turns the node into the primary. It refuses (409) while a live primary is still connected,
//! unless forced: two primaries of one pair must never be made on purpose.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::link::Link;
use super::shared::{CoreInput, Role};
use crate::limits;

/// Why a promotion was refused: an HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

pub(super) fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// Promotes this standby. Returns the node's new state.
///
/// # Errors
///
/// 409 when it is the primary already, or still connected to a live primary and not
/// `force`d; 500 when the new epoch cannot be persisted or a core does not take it in time.
pub fn promote(link: &Arc<Link>, force: bool) -> Result<Value, Refused> {
    let shared = &link.shared;
    if shared.role() == Role::Primary {
        return Err(refused(409, "this node is the primary already"));
    }
    let heard = shared.heard_ms.load(Ordering::Acquire);
    let live =
        shared.link_up() && link.now_ms().saturating_sub(heard) < shared.config.standby_timeout_ms;
    if live && !force {
        return Err(refused(
            409,
            "this standby is connected to a live primary; promote with force=true only if that primary is fenced",
        ));
    }
    if link.promoting.swap(true, Ordering::AcqRel) {
        return Err(refused(409, "a promotion is under way"));
    }
    let result = carry_out(link, shared.epoch() + 1);
    link.promoting.store(false, Ordering::Release);
    result
}

/// Promotes this standby to `epoch`, which the witness granted it (automatic failover): no
/// check of the old primary's liveness, the witness proved its lease expired.
///
/// # Errors
///
/// 409 when it is the primary already, a promotion is under way, or `epoch` is not above
/// every epoch this node has seen; 500 as for `promote`.
pub fn promote_granted(link: &Arc<Link>, epoch: u64) -> Result<Value, Refused> {
    let shared = &link.shared;
    if shared.role() == Role::Primary {
        return Err(refused(409, "this node is the primary already"));
    }
    if epoch <= shared.epoch() {
        return Err(refused(
            409,
            format!(
                "granted epoch {epoch} is not above ours ({})",
                shared.epoch()
            ),
        ));
    }
    if link.promoting.swap(true, Ordering::AcqRel) {
        return Err(refused(409, "a promotion is under way"));
    }
    let result = carry_out(link, epoch);
    if result.is_ok() {
        shared.promotions_witness.fetch_add(1, Ordering::Relaxed);
    }
    link.promoting.store(false, Ordering::Release);
    result
}

/// A planned switchover without a witness: the primary of `epoch - 1` handed over (its
/// `Handover` checked by `switchover::take_handover`), so this standby becomes the primary of
/// `epoch` with no check of the primary's liveness: it froze and will step down on our
/// `Promoted`.
///
/// # Errors
///
/// As `promote_granted`.
pub fn promote_handover(link: &Arc<Link>, epoch: u64) -> Result<Value, Refused> {
    if link.shared.role() == Role::Primary {
        return Err(refused(409, "this node is the primary already"));
    }
    if link.promoting.swap(true, Ordering::AcqRel) {
        return Err(refused(409, "a promotion is under way"));
    }
    let result = carry_out(link, epoch);
    link.promoting.store(false, Ordering::Release);
    result
}

/// Promotes this node to `epoch`. In a planned switchover (`Link::handover_from` is the epoch
/// before) the thread that reads the link waits meanwhile, so the session stays up until the
/// node serves, and `Promoted` (the handover's answer) goes out only then; otherwise
/// `Promoted` goes first (a forced promotion) and the session ends before the cores start the
/// epoch.
fn carry_out(link: &Arc<Link>, epoch: u64) -> Result<Value, Refused> {
    let shared = &link.shared;
    let started_ms = link.now_ms();
    let handover = link.handover_from.load(Ordering::Acquire).checked_add(1) == Some(epoch);
    if epoch <= shared.epoch() {
        // The link raised the epoch meanwhile (a heartbeat of a newer primary).
        return Err(refused(
            409,
            format!("epoch {epoch} is not above ours ({})", shared.epoch()),
        ));
    }
    super::epoch::store(&link.data_dir, epoch)
        .map_err(|error| refused(500, format!("cannot persist epoch {epoch}: {error}")))?;
    // The epoch file's two syncs (file, directory) are most of a promotion on a busy disk.
    let stored_ms = link.now_ms();
    shared.raise_epoch(epoch);
    if !handover {
        announce(link, epoch);
        link.end_session();
    }
    let before: Vec<u64> = shared
        .streams
        .iter()
        .map(|slot| slot.done.load(Ordering::Acquire))
        .collect();
    for core in 0..shared.cores {
        super::dial::hand_to_core(link, core, CoreInput::Promote { epoch }, u64::MAX)
            .map_err(|error| refused(500, format!("core {core}: {error}")))?;
    }
    let deadline = started_ms + limits::REPL_PROMOTE_WAIT_MS;
    for (core, before) in before.into_iter().enumerate().take(shared.cores) {
        while shared.streams[core].done.load(Ordering::Acquire) == before {
            if link.now_ms() > deadline {
                return Err(refused(
                    500,
                    format!("core {core} did not enter epoch {epoch}"),
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // The copied webhook outbox enters the epoch too; the worker opens it (and delivers what
    // is pending) once this node is the primary.
    link.webhooks
        .start_epoch(epoch, &shared.config.node_id)
        .map_err(|error| refused(500, format!("webhooks stream: {error}")))?;
    for slot in shared.streams.iter() {
        slot.peer_received.store(0, Ordering::Release);
        slot.peer_durable.store(0, Ordering::Release);
    }
    // No standby yet: publishes that want one follow `on_standby_loss` at once.
    shared.heard_ms.store(0, Ordering::Release);
    shared.set_standby_lost(true);
    if !handover {
        shared.set_link_up(false);
    }
    // Frozen by a switchover of its own earlier (then stepped down): it serves again.
    shared.unfreeze();
    shared.set_role(Role::Primary);
    shared.promotions.fetch_add(1, Ordering::Relaxed);
    link.ring_cores();
    if handover {
        // The old primary steps down on this, and its publishers come here.
        announce(link, epoch);
        link.end_session();
        shared.set_link_up(false);
    }
    let took_ms = link.now_ms() - started_ms;
    let epoch_store_ms = stored_ms - started_ms;
    tracing::warn!(
        epoch,
        took_ms,
        epoch_store_ms,
        "replication: promoted to primary"
    );
    Ok(json!({
        "role": "primary",
        "epoch": epoch,
        "took_ms": took_ms,
        "epoch_store_ms": epoch_store_ms,
    }))
}

/// How long a promotion waits for `Promoted` to be sent to a still-connected primary.
const ANNOUNCE_WAIT_MS: u64 = 200;

/// A forced promotion while still connected: the ack thread tells the primary `Promoted`
/// (the new epoch is persisted already), so it steps down at once rather than at the first
/// poke. Best effort: the poke fences it anyway.
fn announce(link: &Link, epoch: u64) {
    if !link.shared.link_up() {
        return;
    }
    link.superseded.store(epoch, Ordering::Release);
    link.shared.wake_link();
    let deadline = link.now_ms() + ANNOUNCE_WAIT_MS;
    while link.superseded_sent.load(Ordering::Acquire) < epoch && link.now_ms() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `GET /replication`.
pub fn status(link: &Link) -> Value {
    let shared = &link.shared;
    let heard = shared.heard_ms.load(Ordering::Acquire);
    let since_heard_ms = (heard != 0).then(|| link.now_ms().saturating_sub(heard));
    let streams: Vec<Value> = shared
        .streams
        .iter()
        .enumerate()
        .map(|(core, slot)| {
            json!({
                "stream": shared.stream_name(core),
                "written_lsn": slot.written.load(Ordering::Acquire),
                "synced_lsn": slot.synced.load(Ordering::Acquire),
                "standby_received_lsn": slot.peer_received.load(Ordering::Acquire),
                "standby_durable_lsn": slot.peer_durable.load(Ordering::Acquire),
            })
        })
        .collect();
    json!({
        "role": shared.role().name(),
        "node_id": shared.config.node_id,
        "cluster": shared.config.cluster,
        "epoch": shared.epoch(),
        "peer": shared.config.peer,
        "peer_connected": shared.link_up(),
        // Not while the peer has been silent for `standby_timeout_ms` (a session outlives that).
        "in_sync": shared.in_sync()
            && since_heard_ms.is_some_and(|ms| ms < shared.config.standby_timeout_ms),
        "lag_records": shared.lag_records.load(Ordering::Relaxed),
        "lag_ms": shared.lag_ms.load(Ordering::Relaxed),
        "lag_measured": lag_measured(&shared.lag.snapshot()),
        "standby_lost": shared.role() == Role::Primary && shared.standby_lost(),
        "on_standby_loss": shared.config.on_standby_loss,
        "ack": shared.config.ack,
        "ms_since_peer_heard": since_heard_ms,
        "promotions": shared.promotions.load(Ordering::Relaxed),
        "resyncs": {
            "partial": shared.resyncs_partial.load(Ordering::Relaxed),
            "full": shared.resyncs_full.load(Ordering::Relaxed),
        },
        "streams": streams,
    })
}

/// The lag histogram since start, summarized: records measured, the bucket bounds (µs) under
/// which half and 99% of them fall, the largest lag seen, batches not measured.
fn lag_measured(lag: &super::lag::LagSnapshot) -> Value {
    json!({
        "records": lag.records,
        "p50_us_at_most": lag.quantile_bound_us(0.5),
        "p99_us_at_most": lag.quantile_bound_us(0.99),
        "max_us": lag.max_us,
        "unmeasured_batches": lag.unmeasured,
    })
}
