//! Planned switchover (`POST /replication/switchover`, `ringcast switchover`): how a primary
//! hands its epoch to its in-sync standby without losing or failing an acknowledged publish,
//! for upgrades and rollbacks. It owns the sequence on both nodes and nothing else: the
//! messages and the standby's check are sans-IO in `replication` (`Handover`,
//! `check_handover`), the witness's release in `failover` (`LeaseRelease`), promotion in
//! `promote`, the cores' freeze and staggered close in `shard`.
//!
//! On the primary (the admin thread, blocking, bounded by `limits::SWITCHOVER_*`):
//! 1. freeze: REST publishes answer 503 `Retry-After: 1` naming the switchover, owners refuse
//!    publishes that were on their way, and a publish already sequenced is acknowledged only
//!    once the standby has its record (`ReplicaView::frozen`), never degraded;
//! 2. wait until every core has seen the freeze and the standby has received every stream up
//!    to this node's written end (lag 0), then one more round of every core so the waiting
//!    publishes are answered; on timeout unfreeze and answer 503;
//! 3. with a witness, give the lease back (`LeaseRelease`, through the failover thread): from
//!    then on this node acknowledges nothing, and the witness grants the standby the next
//!    epoch at once instead of after the lease's expiry;
//! 4. `Handover` on the replication link (the session's writer sends it after every record it
//!    sent); the standby promotes itself (through the witness when there is one) and answers
//!    `Promoted` once it serves; this node then steps down with its WebSocket clients closed
//!    (4200) spread over `SWITCHOVER_MOVE_CLIENTS_MS`. If no `Promoted` comes in time it steps
//!    down anyway (the standby may have taken over: this node never serves that epoch again).
//!
//! On the standby (the dialer thread that reads the link): `take_handover`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::link::Link;
use super::promote::{Refused, refused};
use super::shared::Role;
use crate::limits;
use crate::replication as proto;

/// How often the waits below look again.
const POLL: Duration = Duration::from_micros(200);

/// Runs a planned switchover on this primary. Returns what the operator sees: the freeze's
/// length, the new epoch and primary.
///
/// # Errors
///
/// 409 when this node is not a primary with a connected, in-sync standby, or a switchover or
/// promotion is under way; 503 when it was given up (with why, and whether publishes resumed).
pub fn switchover(link: &Arc<Link>) -> Result<Value, Refused> {
    let shared = &link.shared;
    if shared.role() != Role::Primary {
        return Err(refused(409, "this node is not the primary"));
    }
    if !shared.link_up() || !shared.in_sync() || shared.standby_lost() {
        return Err(refused(
            409,
            "no connected standby in sync: nothing to hand over to (see GET /replication)",
        ));
    }
    if link.promoting.load(Ordering::Acquire) {
        return Err(refused(409, "a promotion is under way"));
    }
    if link.switching.swap(true, Ordering::AcqRel) {
        return Err(refused(409, "a switchover is already running"));
    }
    let result = run(link);
    link.switching.store(false, Ordering::Release);
    result
}

fn run(link: &Arc<Link>) -> Result<Value, Refused> {
    let shared = &link.shared;
    let epoch = shared.epoch();
    let started_ms = link.now_ms();
    let generation = shared.freeze();
    link.ring_cores();
    tracing::warn!(epoch, "switchover: publishes frozen");
    let deadline = started_ms + limits::SWITCHOVER_CATCH_UP_MS;
    let caught_up = wait_cores(link, generation, deadline)
        .and_then(|()| wait_lag_zero(link, deadline))
        // The waiting publishes are answered by each core's next commit: one more round.
        .and_then(|()| wait_cores(link, shared.freeze(), deadline))
        .and_then(|()| wait_cores(link, shared.freeze(), deadline));
    if let Err(why) = caught_up {
        shared.unfreeze();
        link.ring_cores();
        tracing::warn!(why, "switchover: given up; publishes resume");
        return Err(refused(
            503,
            format!("switchover given up, publishes resumed on this primary: {why}"),
        ));
    }
    let caught_up_ms = link.now_ms() - started_ms;
    let handover_deadline = link.now_ms() + limits::SWITCHOVER_HANDOVER_MS;
    if shared.config.has_witness() {
        link.release_request.store(epoch, Ordering::Release);
        let released = wait(link, handover_deadline, || {
            link.released.load(Ordering::Acquire) == epoch
        });
        if !released {
            return Err(give_up(
                link,
                epoch,
                "the witness did not confirm the lease release",
            ));
        }
    }
    let released_ms = link.now_ms() - started_ms;
    link.handover_request.store(epoch, Ordering::Release);
    shared.wake_link();
    let promoted = wait(link, handover_deadline, || {
        shared.role() == Role::Standby && shared.epoch() > epoch
    });
    link.handover_request.store(0, Ordering::Release);
    if !promoted {
        return Err(give_up(
            link,
            epoch,
            "the standby did not confirm its promotion",
        ));
    }
    let freeze_ms = link.now_ms() - started_ms;
    let new_primary = link.peer_node.lock().map(|n| n.clone()).unwrap_or_default();
    tracing::warn!(
        freeze_ms,
        caught_up_ms,
        epoch = shared.epoch(),
        new_primary,
        "switchover: handed over; moving the clients"
    );
    Ok(json!({
        "role": "standby",
        "previous_epoch": epoch,
        "epoch": shared.epoch(),
        "new_primary": new_primary,
        "freeze_ms": freeze_ms,
        "caught_up_ms": caught_up_ms,
        "released_ms": released_ms,
        "move_clients_ms": limits::SWITCHOVER_MOVE_CLIENTS_MS,
    }))
}

/// After the release or the handover went out, the standby may be (or become) the primary:
/// this node must never serve `epoch` again, so it steps down, frozen, whatever happened.
fn give_up(link: &Link, epoch: u64, why: &str) -> Refused {
    link.step_down_after_switchover(epoch);
    tracing::error!(
        why,
        "switchover: not confirmed; stepped down, publishes refused"
    );
    refused(
        503,
        format!(
            "switchover not confirmed: {why}; this node stepped down and refuses publishes: \
             check the peer (GET /replication) and promote it by hand if it did not take over"
        ),
    )
}

/// Polls `done` until it holds or `deadline` (the link's monotonic ms) passed.
fn wait(link: &Link, deadline: u64, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if link.now_ms() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Every core has fed its shard freeze generation `generation` (its loop started again after
/// it): none sequences a publish any more, and what it sequenced is in its written position.
fn wait_cores(link: &Link, generation: u64, deadline: u64) -> Result<(), String> {
    let shared = &link.shared;
    let mut rung_ms = link.now_ms();
    loop {
        let seen = (0..shared.cores)
            .all(|core| shared.streams[core].freeze_seen.load(Ordering::Acquire) >= generation);
        if seen {
            return Ok(());
        }
        let now = link.now_ms();
        if now > deadline {
            return Err("a core did not see the freeze in time".into());
        }
        if now >= rung_ms + 5 {
            // An idle core sleeps until its next timer: wake it.
            link.ring_cores();
            rung_ms = now;
        }
        std::thread::sleep(POLL);
    }
}

/// The standby has received every stream up to this node's written end.
fn wait_lag_zero(link: &Link, deadline: u64) -> Result<(), String> {
    let shared = &link.shared;
    loop {
        let lag: u64 = shared
            .streams
            .iter()
            .map(|slot| {
                let written = slot.written.load(Ordering::Acquire);
                written.saturating_sub(slot.peer_received.load(Ordering::Acquire))
            })
            .sum();
        if lag == 0 {
            return Ok(());
        }
        if !shared.link_up() || shared.role() != Role::Primary {
            return Err("the standby's connection ended".into());
        }
        if link.now_ms() > deadline {
            return Err(format!(
                "the standby did not reach lag 0 within {} ms ({lag} records behind)",
                limits::SWITCHOVER_CATCH_UP_MS
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The standby's side: the primary of `epoch` handed over, having sent every record up to
/// `written`. Called on the thread that reads the link, which reads nothing after it (no
/// record may reach a core after its `EpochStart`); the session ends when it returns.
///
/// # Errors
///
/// The handover does not fit what this standby holds (`check_handover`; it stays a standby),
/// or the promotion failed or was not granted in time.
pub(super) fn take_handover(link: &Arc<Link>, epoch: u64, written: &[u64]) -> std::io::Result<()> {
    let shared = &link.shared;
    let held: Vec<u64> = (0..shared.streams.len())
        .map(|stream| link.queued_through[stream].load(Ordering::Acquire))
        .collect();
    let next = proto::check_handover(epoch, written, shared.epoch(), &held).map_err(|error| {
        tracing::error!(%error, "switchover: refusing the primary's handover");
        std::io::Error::other(format!("handover refused: {error}"))
    })?;
    tracing::warn!(
        epoch,
        next,
        "switchover: the primary hands over; taking over"
    );
    link.handover_from.store(epoch, Ordering::Release);
    let result = if shared.config.has_witness() {
        // The failover thread asks the witness now (the old primary released its lease) and
        // promotes this node with the epoch it grants. Wait for the whole promotion, not just
        // the role: it tells the old primary `Promoted` on this session after the role changes,
        // and returning earlier ends the session first (the old primary then stepped down only
        // at the next poke, and the promotion waited out `announce`'s 200 ms).
        let deadline = link.now_ms() + limits::SWITCHOVER_HANDOVER_MS;
        let granted = wait(link, deadline, || {
            (shared.role() == Role::Primary && !link.promoting.load(Ordering::Acquire))
                || link.stopping()
        });
        if granted && shared.role() == Role::Primary {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "handover: the witness did not grant the promotion in time",
            ))
        }
    } else {
        super::promote::promote_handover(link, next)
            .map(|_| ())
            .map_err(|refused| std::io::Error::other(refused.message))
    };
    link.handover_from.store(0, Ordering::Release);
    result
}
