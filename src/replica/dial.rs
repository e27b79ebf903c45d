//! The standby's side of the link: the dialer thread connects to the peer while this node is a
//! standby, says where each of its streams ends (`HELLO`), checks the primary's proof and
//! proves itself, carries out the plan per stream (a cut or a wipe, by the core that owns the
//! stream), then hands every batch of records to the owning core's inbound queue and acks what
//! the cores have written and synced. While this node is the primary the dialer instead pokes
//! the peer now and then with its epoch, so a stale primary on the other side steps down; and
//! a standby being promoted tells the primary it still follows (`Promoted`), which steps down
//! at once. A `Handover` (planned switchover) makes it take over (`switchover::take_handover`);
//! after a switchover of its own it follows only once its cores moved their clients.
//! Nothing here touches a core's WAL file: the cores append and apply; the `webhooks` stream,
//! which no core owns, is appended through `WebhookLog` on this thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::link::{self, Link};
use super::shared::{CoreInput, Role};
use super::wire::Wire;
use crate::limits;
use crate::replication::{self as proto, Message, StreamMode, StreamPlan, StreamPosition};
use crate::wal;

/// How often a primary pokes its peer (fencing a stale primary there).
const POKE_INTERVAL_MS: u64 = 1_000;

/// The dialer thread.
pub fn run(link: &Arc<Link>) {
    let mut next_poke_ms = 0;
    let mut refusals_logged = 0_u64;
    while !link.stopping() {
        if link.promoting.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(limits::REPL_REDIAL_MS));
            continue;
        }
        if link.shared.role() == Role::Primary {
            if link.now_ms() >= next_poke_ms {
                next_poke_ms = link.now_ms() + POKE_INTERVAL_MS;
                let _ = poke(link);
            }
            std::thread::sleep(Duration::from_millis(limits::REPL_REDIAL_MS));
            continue;
        }
        let hold = link.follow_after_ms.load(Ordering::Acquire);
        if hold != 0 {
            // Stepped down after a switchover: the cores are still moving their clients.
            if link.now_ms() < hold {
                std::thread::sleep(Duration::from_millis(limits::REPL_REDIAL_MS / 4));
                continue;
            }
            // What the cores wrote meanwhile (the closes' records) is ours to announce, and
            // the new primary's plan cuts it.
            link.follow_after_ms.store(0, Ordering::Release);
            link.positions_from_written();
        }
        match follow(link) {
            Ok(()) => {}
            Err(error) => {
                // A peer that is down or is a standby too is normal while waiting: log it
                // now and then, not at every redial.
                if refusals_logged.is_multiple_of(50) {
                    tracing::info!(peer = link.shared.config.peer, %error, "replication: not following");
                }
                refusals_logged += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(limits::REPL_REDIAL_MS));
    }
}

/// This node's streams as the peer must know them.
fn positions(link: &Link) -> Vec<StreamPosition> {
    (0..link.shared.streams.len())
        .map(|core| StreamPosition {
            name: link.shared.stream_name(core),
            last_lsn: link.queued_through[core].load(Ordering::Acquire),
            last_epoch: link.queued_epoch[core].load(Ordering::Acquire),
        })
        .collect()
}

fn hello(link: &Link, role: proto::Role, nonce: [u8; 16]) -> proto::Hello {
    let config = &link.shared.config;
    proto::Hello {
        cluster: config.cluster.clone(),
        node_id: config.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        wal_format_min: wal::record::FORMAT,
        wal_format_max: wal::record::FORMAT,
        epoch: link.shared.epoch(),
        role,
        streams: positions(link),
        nonce,
    }
}

/// Connects and runs the handshake as `role`: the primary's `WELCOME`, checked, answered with
/// our proof. None when the peer refused.
fn handshake(link: &Link, role: proto::Role) -> std::io::Result<Option<(Wire, proto::Welcome)>> {
    let config = &link.shared.config;
    let stream = link::connect(&config.peer, link.timeout())?;
    let mut wire = link::wire(stream, link)?;
    let nonce = link::nonce();
    let hello = hello(link, role, nonce);
    wire.send(&Message::Hello(hello.clone()))?;
    let welcome = match wire.recv()? {
        Message::Welcome(welcome) => welcome,
        Message::Refuse { code, reason } => {
            return Err(std::io::Error::other(format!(
                "refused ({code:?}): {reason}"
            )));
        }
        _ => return Err(std::io::Error::other("expected WELCOME")),
    };
    let secret = config.secret.as_bytes();
    // A poke (we are primary) gets no plans: only the proof and the epoch matter.
    let checked = match role {
        proto::Role::Standby => proto::check_welcome(secret, &hello, &welcome),
        proto::Role::Primary => {
            let (cluster, epoch) = (&config.cluster, welcome.epoch);
            let mac = &welcome.mac;
            let genuine =
                proto::verify_welcome_mac(secret, &nonce, &welcome.nonce, cluster, epoch, mac);
            if genuine {
                Ok(())
            } else {
                Err(proto::RefuseCode::BadSecret)
            }
        }
    };
    match checked {
        Ok(()) => {}
        Err(code @ proto::RefuseCode::BadSecret) => {
            tracing::error!(
                peer = config.peer,
                "replication: the peer's proof is wrong (check [replication] secret); refused"
            );
            let reason = "authentication failed: check [replication] secret".to_string();
            let _ = wire.send(&Message::Refuse { code, reason });
            return Ok(None);
        }
        Err(code) => {
            let reason = format!("the primary's WELCOME does not fit: {code:?}");
            let _ = wire.send(&Message::Refuse {
                code,
                reason: reason.clone(),
            });
            return Err(std::io::Error::other(reason));
        }
    }
    let mac = proto::auth_mac(secret, &nonce, &welcome.nonce, &config.cluster);
    wire.send(&Message::Auth { mac })?;
    Ok(Some((wire, welcome)))
}

/// As primary: tells the peer our epoch. A stale primary there steps down; one with a higher
/// epoch makes us step down.
fn poke(link: &Link) -> std::io::Result<()> {
    if let Some((_, welcome)) = handshake(link, proto::Role::Primary)?
        && welcome.epoch > link.shared.epoch()
    {
        link.step_down(welcome.epoch);
    }
    Ok(())
}

/// One session as a standby: handshake, the plans carried out, then records until the link
/// ends.
fn follow(link: &Arc<Link>) -> std::io::Result<()> {
    // The webhooks stream is appended on this thread: where it ends is where its copy is.
    let (last_lsn, last_epoch) = link.webhooks.follow()?;
    let index = link.shared.webhooks_stream();
    link.queued_through[index].store(last_lsn, Ordering::Release);
    link.queued_epoch[index].store(last_epoch, Ordering::Release);
    let Some((wire, welcome)) = handshake(link, proto::Role::Standby)? else {
        return Ok(());
    };
    let shared = &link.shared;
    if welcome.epoch < shared.epoch() {
        return Err(std::io::Error::other(format!(
            "the peer's epoch {} is below ours ({}): not following it",
            welcome.epoch,
            shared.epoch()
        )));
    }
    if welcome.epoch > shared.epoch() {
        // Persisted before any record of that epoch is acknowledged.
        super::epoch::store(&link.data_dir, welcome.epoch)?;
        shared.raise_epoch(welcome.epoch);
    }
    carry_out(link, &welcome.streams)?;
    tracing::info!(
        primary = welcome.node_id,
        epoch = welcome.epoch,
        "replication: following"
    );
    link.end_session();
    let session = link.session.load(Ordering::Acquire);
    if let Ok(mut following) = link.following.lock() {
        *following = wire.split().ok().map(|split| split.into_stream());
    }
    shared.heard_ms.store(link.now_ms(), Ordering::Release);
    shared.set_link_up(true);
    let acks = wire.split()?;
    let acking = Arc::clone(link);
    let ack_thread = std::thread::Builder::new()
        .name("ringcast-repl-ack".into())
        .spawn(move || send_acks(&acking, acks, session))?;
    let result = receive(link, wire, session);
    if link.session.load(Ordering::Acquire) == session {
        link.end_session();
    }
    shared.set_link_up(false);
    let _ = ack_thread.join();
    result
}

/// The primary's plan per stream: a stream to cut or wipe is handed to its core, and the
/// dialer waits until the core carried it out.
fn carry_out(link: &Link, plans: &[StreamPlan]) -> std::io::Result<()> {
    if plans.len() != link.shared.streams.len() {
        return Err(std::io::Error::other(
            "the primary's plan does not cover our streams",
        ));
    }
    for (core, plan) in plans.iter().enumerate() {
        let queued = link.queued_through[core].load(Ordering::Acquire);
        let rewind = match (plan.mode, plan.truncate_after) {
            (StreamMode::Full, _) => Some((plan.from_lsn.saturating_sub(1), true)),
            (StreamMode::Partial, Some(keep)) if keep < queued => Some((keep, false)),
            (StreamMode::Partial, _) if plan.from_lsn != queued + 1 => {
                return Err(std::io::Error::other(format!(
                    "stream {core}: the primary starts at {} but we hold {queued}",
                    plan.from_lsn
                )));
            }
            _ => None,
        };
        let Some((keep_through, wipe)) = rewind else {
            continue;
        };
        let divergent_file = super::epoch::dir(&link.data_dir)
            .join("divergent")
            .join(format!(
                "{}-after-{keep_through}-epoch-{}.wal",
                link.shared.stream_name(core),
                link.shared.epoch()
            ));
        if core == link.shared.webhooks_stream() {
            link.webhooks.rewind(keep_through, wipe, &divergent_file)?;
            link.queued_through[core].store(keep_through, Ordering::Release);
            continue;
        }
        let input = CoreInput::Rewind {
            keep_through,
            wipe,
            divergent_file,
        };
        hand_to_core(link, core, input, u64::MAX)?;
        wait_done(link, core)?;
        link.queued_through[core].store(keep_through, Ordering::Release);
    }
    Ok(())
}

/// Waits until core `core` carried out its last rewind or promotion.
fn wait_done(link: &Link, core: usize) -> std::io::Result<()> {
    let slot = &link.shared.streams[core];
    let before = slot.done.load(Ordering::Acquire);
    let deadline = link.now_ms() + limits::REPL_PROMOTE_WAIT_MS;
    while slot.done.load(Ordering::Acquire) == before {
        if link.now_ms() > deadline || link.stopping() {
            return Err(std::io::Error::other(format!(
                "core {core} did not carry out the rewind"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Queues `input` for core `core` (waiting while its queue is full: backpressure onto the
/// TCP stream) and rings its doorbell. `session` `u64::MAX`: not tied to a session (a
/// rewind, a promotion); it gives up only when the process stops.
pub(super) fn hand_to_core(
    link: &Link,
    core: usize,
    mut input: CoreInput,
    session: u64,
) -> std::io::Result<()> {
    let slot = &link.shared.streams[core];
    loop {
        match slot.inbound.push(input) {
            Ok(()) => {
                link.mesh.ring(core);
                return Ok(());
            }
            Err(back) => input = back,
        }
        let ended = session != u64::MAX && link.session.load(Ordering::Acquire) != session;
        if link.stopping() || ended {
            return Err(std::io::Error::other("the session ended"));
        }
        link.mesh.ring(core);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Records and heartbeats from the primary, until the link ends or goes silent for
/// `Link::session_silence` (the failover timer counts the silence on its own).
fn receive(link: &Arc<Link>, mut wire: Wire, session: u64) -> std::io::Result<()> {
    let shared = &link.shared;
    wire.set_read_timeout(link.session_silence())?;
    loop {
        if link.session.load(Ordering::Acquire) != session || link.stopping() {
            return Ok(());
        }
        let message = wire.recv()?;
        shared.heard_ms.store(link.now_ms(), Ordering::Release);
        match message {
            Message::Records { stream, bytes } => {
                let core = usize::from(stream);
                if core >= shared.streams.len() {
                    return Err(std::io::Error::other(format!(
                        "records for unknown stream {stream}"
                    )));
                }
                let expect = link.queued_through[core].load(Ordering::Acquire) + 1;
                let records = proto::split_records(&bytes, expect)
                    .map_err(|error| std::io::Error::other(format!("stream {stream}: {error}")))?;
                let Some((last, _)) = records.last() else {
                    continue;
                };
                let (last_lsn, last_epoch) = (last.lsn, last.epoch);
                if core == shared.webhooks_stream() {
                    link.webhooks.append(&bytes)?;
                } else {
                    hand_to_core(link, core, CoreInput::Records(bytes), session)?;
                }
                link.queued_through[core].store(last_lsn, Ordering::Release);
                link.queued_epoch[core].store(last_epoch, Ordering::Release);
            }
            Message::Heartbeat { epoch, written, .. } => {
                if epoch > shared.epoch() {
                    super::epoch::store(&link.data_dir, epoch)?;
                    shared.raise_epoch(epoch);
                }
                let lag: u64 = written
                    .iter()
                    .zip(shared.streams.iter())
                    .map(|(theirs, slot)| {
                        theirs.saturating_sub(slot.written.load(Ordering::Acquire))
                    })
                    .sum();
                shared.lag_records.store(lag, Ordering::Relaxed);
                if lag == 0 {
                    shared.set_in_sync();
                }
            }
            // A planned switchover: nothing after it is read; the session ends either way.
            Message::Handover { epoch, written } => {
                return super::switchover::take_handover(link, epoch, &written);
            }
            other => return Err(std::io::Error::other(format!("unexpected {other:?}"))),
        }
    }
}

/// Acks what the cores have written and synced when it moves (the cores wake this thread
/// after each commit) and with every heartbeat.
fn send_acks(link: &Link, mut wire: Wire, session: u64) {
    let shared = &link.shared;
    let Ok(parker) = link.parker.lock() else {
        return;
    };
    let streams = shared.streams.len();
    let mut sent = vec![(0_u64, 0_u64); streams];
    let (mut next_heartbeat_ms, mut seq) = (0, 0);
    while link.session.load(Ordering::Acquire) == session && !link.stopping() {
        let now = link.now_ms();
        let mut result = Ok(());
        // This standby is being promoted: the primary learns it was superseded (this thread
        // owns the writing half, so the message cannot interleave with an ack).
        let epoch = link.superseded.load(Ordering::Acquire);
        if epoch > link.superseded_sent.load(Ordering::Acquire) {
            result = wire.send(&Message::Promoted { epoch });
            link.superseded_sent.store(epoch, Ordering::Release);
        }
        for (core, last) in sent.iter_mut().enumerate() {
            let slot = &shared.streams[core];
            let position = (
                slot.written.load(Ordering::Acquire),
                slot.synced.load(Ordering::Acquire),
            );
            if position != *last || now >= next_heartbeat_ms {
                *last = position;
                let stream = u16::try_from(core).expect("cores fit u16");
                let ack = Message::Ack {
                    stream,
                    received_lsn: position.0,
                    durable_lsn: position.1,
                };
                result = result.and_then(|()| wire.send(&ack));
            }
        }
        if now >= next_heartbeat_ms {
            seq += 1;
            next_heartbeat_ms = now + limits::REPL_HEARTBEAT_MS;
            let heartbeat = Message::Heartbeat {
                epoch: shared.epoch(),
                seq,
                written: Vec::new(),
            };
            result = result.and_then(|()| wire.send(&heartbeat));
        }
        if result.is_err() {
            link.end_session();
            return;
        }
        parker.park_timeout(Duration::from_millis(
            next_heartbeat_ms.saturating_sub(now).max(1),
        ));
    }
}
