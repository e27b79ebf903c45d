//! The primary's side of the link: the listener thread (accepts a standby, and every few tens
//! of milliseconds decides whether the standby counts as lost), and one session per
//! authenticated standby: a writer that tails this node's WAL streams up to what each core has
//! written and sends the records, with heartbeats, and a reader that takes the standby's acks
//! into `ReplicaShared` and wakes the cores whose publishes wait for them. A newer session
//! replaces an older one. It never blocks a core: the cores only see atomics move.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::link::{self, Link};
use super::shared::Role;
use super::wire::Wire;
use crate::limits;
use crate::replication::{
    self as proto, LocalNode, Message, PrimaryStream, RefuseCode, StreamPlan, StreamPosition,
};
use crate::wal::{self, FsStorage, RecoveryMode, Storage, Tail, TailError};

/// How often the listener looks for a connection and at the standby's availability.
const LISTEN_POLL_MS: u64 = 20;

/// The listener thread: accepts standbys (each handshake on its own thread) and keeps
/// `standby_lost` true while no standby was heard from within `standby_timeout_ms`.
pub fn listen(link: &Arc<Link>, listener: &TcpListener) {
    while !link.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let session_link = Arc::clone(link);
                let spawned = std::thread::Builder::new()
                    .name("ringcast-repl-serve".into())
                    .spawn(move || serve(&session_link, stream));
                if let Err(error) = spawned {
                    tracing::error!(%error, "replication: cannot start a session thread");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(LISTEN_POLL_MS));
            }
            Err(error) => {
                tracing::warn!(%error, "replication: accept failed");
                std::thread::sleep(Duration::from_millis(LISTEN_POLL_MS));
            }
        }
        watch_standby(link);
    }
}

/// The standby is lost when it was never heard from since this node became primary, or not
/// for `standby_timeout_ms`. Cores are woken when that changes, so waiting publishes follow
/// `on_standby_loss` at once.
fn watch_standby(link: &Link) {
    let shared = &link.shared;
    if shared.role() != Role::Primary {
        return;
    }
    let heard = shared.heard_ms.load(Ordering::Acquire);
    let lost =
        heard == 0 || link.now_ms().saturating_sub(heard) >= shared.config.standby_timeout_ms;
    if lost != shared.standby_lost() {
        shared.set_standby_lost(lost);
        if lost {
            tracing::warn!("replication: the standby is unavailable");
        } else {
            tracing::info!("replication: the standby is back");
        }
        link.ring_cores();
    }
}

/// One connection from a peer: the handshake, then (for a standby of ours) the stream.
fn serve(link: &Arc<Link>, stream: TcpStream) {
    let mut wire = match link::wire(stream, link) {
        Ok(wire) => wire,
        Err(error) => return tracing::warn!(%error, "replication: cannot set up a connection"),
    };
    let peer = wire.peer();
    match handshake(link, &mut wire) {
        Ok(Some(plans)) => {
            if let Err(error) = stream_to(link, wire, &plans) {
                tracing::info!(%peer, %error, "replication: standby session ended");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%peer, %error, "replication: handshake failed"),
    }
}

/// Answers a `Hello`: refuses, fences itself (the peer holds a higher epoch), or agrees on a
/// plan per stream. Returns the plans when records are to flow.
fn handshake(link: &Link, wire: &mut Wire) -> std::io::Result<Option<Vec<StreamPlan>>> {
    let shared = &link.shared;
    let Message::Hello(hello) = wire.recv()? else {
        return Err(std::io::Error::other("the first message was not HELLO"));
    };
    let role = match shared.role() {
        Role::Primary => proto::Role::Primary,
        Role::Standby => proto::Role::Standby,
    };
    let local = LocalNode {
        cluster: shared.config.cluster.clone(),
        node_id: shared.config.node_id.clone(),
        role,
        epoch: shared.epoch(),
        streams: shared.stream_names(),
    };
    let fence = match proto::check_hello(&hello, &local) {
        Ok(()) => false,
        Err(RefuseCode::HigherEpoch) => true,
        Err(code) => {
            tracing::warn!(?code, node = hello.node_id, "replication: refusing a peer");
            let reason = format!("refused: {code:?}");
            wire.send(&Message::Refuse { code, reason })?;
            return Ok(None);
        }
    };
    if !fence && shared.role() != Role::Primary {
        let reason = "this node is not the primary".to_string();
        let code = RefuseCode::NotPrimary;
        wire.send(&Message::Refuse { code, reason })?;
        return Ok(None);
    }
    let plans = if fence || hello.role == proto::Role::Primary {
        Vec::new()
    } else {
        plan_streams(link, &hello.streams)?
    };
    let nonce = link::nonce();
    let secret = shared.config.secret.as_bytes();
    let epoch = shared.epoch();
    let mac = proto::welcome_mac(secret, &hello.nonce, &nonce, &shared.config.cluster, epoch);
    wire.send(&Message::Welcome(proto::Welcome {
        node_id: shared.config.node_id.clone(),
        epoch,
        wal_format: wal::record::FORMAT,
        streams: plans.clone(),
        nonce,
        mac,
    }))?;
    let mac = match wire.recv()? {
        Message::Auth { mac } => mac,
        Message::Refuse { code, reason } => {
            if code == RefuseCode::BadSecret {
                tracing::error!(
                    node = hello.node_id,
                    "replication: the standby refused our proof: check [replication] secret on both nodes"
                );
            } else {
                tracing::warn!(
                    node = hello.node_id,
                    ?code,
                    reason,
                    "replication: the standby refused our plan"
                );
            }
            return Ok(None);
        }
        _ => return Err(std::io::Error::other("expected AUTH")),
    };
    if !proto::verify_auth_mac(secret, &hello.nonce, &nonce, &shared.config.cluster, &mac) {
        tracing::error!(
            node = hello.node_id,
            "replication: the peer's secret is wrong; refused"
        );
        let reason = "authentication failed: check [replication] secret".to_string();
        wire.send(&Message::Refuse {
            code: RefuseCode::BadSecret,
            reason,
        })?;
        return Ok(None);
    }
    if fence {
        link.step_down(hello.epoch);
        return Ok(None);
    }
    if hello.role == proto::Role::Primary {
        // A peer that believes it is primary in an epoch not above ours: our WELCOME told it
        // our epoch; it steps down by itself.
        return Ok(None);
    }
    tracing::info!(node = hello.node_id, "replication: standby connected");
    if let Ok(mut peer) = link.peer_node.lock() {
        peer.clone_from(&hello.node_id);
    }
    Ok(Some(plans))
}

/// Per stream: where the standby's copy continues (or restarts).
fn plan_streams(link: &Link, positions: &[StreamPosition]) -> std::io::Result<Vec<StreamPlan>> {
    let mut plans = Vec::with_capacity(positions.len());
    for (core, name) in link.shared.stream_names().iter().enumerate() {
        let standby = positions
            .iter()
            .find(|position| &position.name == name)
            .ok_or_else(|| std::io::Error::other(format!("the standby has no stream {name}")))?;
        let primary = primary_stream(link, core, name)?;
        let plan = proto::plan_stream(standby, &primary)
            .map_err(|code| std::io::Error::other(format!("stream {name}: {code:?}")))?;
        let counter = match plan.mode {
            proto::StreamMode::Full => &link.shared.resyncs_full,
            proto::StreamMode::Partial => &link.shared.resyncs_partial,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        plans.push(plan);
    }
    Ok(plans)
}

/// What this node's stream `name` holds: retained range and epoch history.
fn primary_stream(link: &Link, core: usize, name: &str) -> std::io::Result<PrimaryStream> {
    let dir = wal::stream_dir(&link.data_dir, name);
    let first_retained_lsn = wal::first_retained_lsn(&FsStorage, &dir)?;
    let mut epoch_starts = Vec::new();
    wal::scan_stream(
        &FsStorage,
        &dir,
        name,
        RecoveryMode::Salvage,
        |header, record| {
            if let wal::Record::EpochStart { epoch, .. } = record {
                epoch_starts.push((epoch, header.lsn));
            }
        },
    )
    .map_err(|error| std::io::Error::other(error.to_string()))?;
    Ok(PrimaryStream {
        name: name.to_string(),
        first_retained_lsn,
        last_lsn: link.shared.streams[core].written.load(Ordering::Acquire),
        epoch_starts,
    })
}

/// The session's writer (this thread) and reader (a second thread).
fn stream_to(link: &Arc<Link>, wire: Wire, plans: &[StreamPlan]) -> std::io::Result<()> {
    let shared = &link.shared;
    link.end_session();
    let session = link.session.load(Ordering::Acquire);
    // The standby's copy restarts where the plan says: acknowledgements of an earlier session
    // (or of a stream it had to cut) count no more.
    for (index, (slot, plan)) in shared.streams.iter().zip(plans).enumerate() {
        shared.lag.restart(index, plan.from_lsn);
        let held = plan.from_lsn.saturating_sub(1);
        slot.peer_received.store(held, Ordering::Release);
        // Its first ack says how much of that it has synced.
        slot.peer_durable.store(0, Ordering::Release);
    }
    shared.heard_ms.store(link.now_ms(), Ordering::Release);
    shared.set_link_up(true);
    // Available from now on: publishes wait for it (up to the timeout) instead of degrading.
    watch_standby(link);
    let reader = wire.split()?;
    reader.set_read_timeout(link.session_silence())?;
    let reading = Arc::clone(link);
    std::thread::Builder::new()
        .name("ringcast-repl-acks".into())
        .spawn(move || read_acks(&reading, reader, session))?;
    let result = send_streams(link, wire, plans, session);
    if link.session.load(Ordering::Acquire) == session {
        shared.set_link_up(false);
    }
    result
}

/// Sends records as the cores write them, and heartbeats, until the session ends.
fn send_streams(
    link: &Link,
    mut wire: Wire,
    plans: &[StreamPlan],
    session: u64,
) -> std::io::Result<()> {
    let shared = &link.shared;
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let mut tails: Vec<Tail> = plans
        .iter()
        .enumerate()
        .map(|(index, plan)| {
            let name = shared.stream_name(index);
            let dir = wal::stream_dir(&link.data_dir, &name);
            Tail::new(Arc::clone(&storage), &dir, &name, plan.from_lsn)
        })
        .collect();
    let parker = link
        .parker
        .lock()
        .map_err(|_| std::io::Error::other("parker poisoned"))?;
    let mut batch = Vec::with_capacity(limits::REPL_SEND_BATCH_BYTES);
    let (mut next_heartbeat_ms, mut seq) = (0, 0);
    let mut behind_since_ms = 0;
    loop {
        if link.stopping()
            || link.session.load(Ordering::Acquire) != session
            || shared.role() != Role::Primary
        {
            wire.shutdown();
            return Ok(());
        }
        let mut sent = false;
        for (index, tail) in tails.iter_mut().enumerate() {
            let upto = shared.streams[index].written.load(Ordering::Acquire);
            if tail.next_lsn() > upto {
                continue;
            }
            batch.clear();
            let read_at_us = link.now_us();
            match tail.read(upto, limits::REPL_SEND_BATCH_BYTES, &mut batch) {
                Ok(0) => {}
                Ok(_) => {
                    let stream = u16::try_from(index).expect("cores fit u16");
                    let bytes = bytes::Bytes::copy_from_slice(&batch);
                    shared
                        .lag
                        .sent(index, tail.next_lsn().saturating_sub(1), read_at_us);
                    wire.send(&Message::Records { stream, bytes })?;
                    sent = true;
                }
                Err(TailError::NotRetained { .. }) => {
                    return Err(std::io::Error::other("the standby fell behind retention"));
                }
                Err(error) => return Err(std::io::Error::other(error.to_string())),
            }
        }
        send_handover(link, &mut wire, &tails)?;
        let now = link.now_ms();
        update_lag(link, now, &mut behind_since_ms);
        if now >= next_heartbeat_ms {
            seq += 1;
            next_heartbeat_ms = now + limits::REPL_HEARTBEAT_MS;
            let written = (0..shared.streams.len())
                .map(|index| shared.streams[index].written.load(Ordering::Acquire))
                .collect();
            wire.send(&Message::Heartbeat {
                epoch: shared.epoch(),
                seq,
                written,
            })?;
        }
        if !sent {
            parker.park_timeout(Duration::from_millis(
                next_heartbeat_ms.saturating_sub(now).max(1),
            ));
        }
    }
}

/// A planned switchover asked for the `Handover`: sent once, after every record this session
/// sent, with where each stream's sending stands (the standby must hold exactly that).
fn send_handover(link: &Link, wire: &mut Wire, tails: &[Tail]) -> std::io::Result<()> {
    let epoch = link.handover_request.load(Ordering::Acquire);
    if epoch == 0
        || epoch != link.shared.epoch()
        || link.handover_sent.load(Ordering::Acquire) == epoch
    {
        return Ok(());
    }
    let written = tails
        .iter()
        .map(|tail| tail.next_lsn().saturating_sub(1))
        .collect();
    wire.send(&Message::Handover { epoch, written })?;
    link.handover_sent.store(epoch, Ordering::Release);
    tracing::info!(epoch, "switchover: handover sent");
    Ok(())
}

/// Lag in records (written here, not yet acknowledged received) and in time (how long the
/// standby has been behind); in sync once it reached lag 0 while heard from.
fn update_lag(link: &Link, now: u64, behind_since_ms: &mut u64) {
    let shared = &link.shared;
    let lag: u64 = shared
        .streams
        .iter()
        .map(|slot| {
            slot.written
                .load(Ordering::Acquire)
                .saturating_sub(slot.peer_received.load(Ordering::Acquire))
        })
        .sum();
    shared.lag_records.store(lag, Ordering::Relaxed);
    if lag == 0 {
        *behind_since_ms = 0;
        // Not while it counts as lost: lag 0 then only means nothing was written meanwhile.
        if !shared.standby_lost() {
            shared.set_in_sync();
        }
    } else if *behind_since_ms == 0 {
        *behind_since_ms = now;
    }
    let lag_ms = if lag == 0 { 0 } else { now - *behind_since_ms };
    shared.lag_ms.store(lag_ms, Ordering::Relaxed);
}

/// The standby's acks and heartbeats, until the connection ends or goes silent for
/// `Link::session_silence` (then the session ends; `watch_standby` counts the standby lost
/// after `standby_timeout_ms` of silence, session or not).
fn read_acks(link: &Link, mut wire: Wire, session: u64) {
    let shared = &link.shared;
    loop {
        let message = match wire.recv() {
            Ok(message) => message,
            Err(error) => {
                if link.session.load(Ordering::Acquire) == session {
                    tracing::info!(%error, "replication: the standby's connection ended");
                    link.end_session();
                }
                return;
            }
        };
        shared.heard_ms.store(link.now_ms(), Ordering::Release);
        match message {
            Message::Ack {
                stream,
                received_lsn,
                durable_lsn,
            } => {
                let Some(slot) = shared.streams.get(usize::from(stream)) else {
                    continue;
                };
                shared
                    .lag
                    .acked(usize::from(stream), received_lsn, link.now_us());
                let before = slot.peer_received.fetch_max(received_lsn, Ordering::AcqRel);
                let before_durable = slot.peer_durable.fetch_max(durable_lsn, Ordering::AcqRel);
                let core = usize::from(stream);
                let moved = before < received_lsn || before_durable < durable_lsn;
                // The webhooks stream has no core waiting on its acks.
                if moved && core < shared.cores {
                    link.mesh.ring(core);
                }
            }
            Message::Heartbeat { .. } => {}
            // Authenticated by this session's handshake: the standby was promoted (forced,
            // while still connected), so this node is superseded and stops serving now.
            Message::Promoted { epoch } if epoch > shared.epoch() => {
                tracing::warn!(
                    epoch,
                    "replication: the standby was promoted; this node was superseded"
                );
                // During a switchover, the answer to our `Handover` (clients move staggered).
                link.step_down(epoch);
                return;
            }
            other => {
                tracing::warn!(?other, "replication: unexpected message from the standby");
            }
        }
    }
}
