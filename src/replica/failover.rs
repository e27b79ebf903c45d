//! Automatic failover at run time (issue 14): one thread per node, started only with
//! `[replication] witness`, that drives the sans-IO `failover::NodeFailover` with the
//! process's monotonic clock (`Link::now_ms`, the cores' clock too, never the wall clock) and
//! a UDP socket to the witness. It feeds the state machine what the replication link observed
//! (`heard_ms`, `in_sync`, the epoch) and carries out its effects: epochs persisted with
//! `epoch::store`, promotion through `promote::promote_granted`, step-down through
//! `Link::step_down`, and the provable lease's end published in `ReplicaShared.lease_until_ms`,
//! which the cores check before every acknowledgement. It must not decide anything itself
//! (every rule is in `failover`), touch a core's state, or acknowledge on the cores' behalf.

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use super::link::Link;
use super::shared::Role;
use crate::failover::{self, NodeEffect, NodeFailover, NodeRole};
use crate::limits;

/// Starts the failover thread when a witness is configured.
///
/// # Errors
///
/// The witness address does not resolve, or the socket cannot be made.
pub fn start(link: &Arc<Link>) -> std::io::Result<Option<JoinHandle<()>>> {
    let config = &link.shared.config;
    if !config.has_witness() {
        return Ok(None);
    }
    let witness = config
        .witness
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{}: no address", config.witness)))?;
    let local = if witness.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(witness)?;
    socket.set_read_timeout(Some(Duration::from_millis(limits::FAILOVER_TICK_MS)))?;
    tracing::info!(%witness, lease_ms = config.lease_ms, failover_after_ms = config.failover_after_ms, "failover: automatic, with a witness");
    let link = Arc::clone(link);
    let thread = std::thread::Builder::new()
        .name("ringcast-failover".into())
        .spawn(move || Driver::new(link, socket).run())?;
    Ok(Some(thread))
}

struct Driver {
    link: Arc<Link>,
    socket: UdpSocket,
    node: NodeFailover,
    session: u64,
    /// The last `heard_ms` fed to the state machine.
    heard_ms: u64,
    /// The last switchover release (primary) and handover (standby) fed to the state machine.
    released: u64,
    handed_over: u64,
    effects: Vec<NodeEffect>,
    buffer: Vec<u8>,
}

impl Driver {
    fn new(link: Arc<Link>, socket: UdpSocket) -> Driver {
        let session = rand::random();
        let node = fresh(&link, session);
        Driver {
            link,
            socket,
            node,
            session,
            heard_ms: 0,
            released: 0,
            handed_over: 0,
            effects: Vec::new(),
            buffer: vec![0; limits::WITNESS_FRAME_BYTES_MAX + 4],
        }
    }

    fn run(mut self) {
        while !self.link.stopping() {
            let now = self.link.now_ms();
            self.observe(now);
            self.node.tick(now, &mut self.effects);
            self.carry_out();
            if let Some((message, now)) = self.receive() {
                self.count_refusal(&message);
                self.node.on_witness(&message, now, &mut self.effects);
                self.carry_out();
            }
        }
        self.link.shared.lease_until_ms.store(0, Ordering::Release);
    }

    /// A refusal addressed to this node while it is a standby answers a promotion request (a
    /// standby sends no other): counted by reason for the metrics.
    fn count_refusal(&self, message: &failover::WitnessMessage) {
        let shared = &self.link.shared;
        if let failover::WitnessMessage::Refused { node, reason, .. } = message
            && *node == shared.config.node_id
            && shared.role() == Role::Standby
        {
            shared.promotion_refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Feeds what the replication link observed, and follows a role changed outside the state
    /// machine (a manual promotion, a step-down seen on the link).
    fn observe(&mut self, now: u64) {
        let shared = &self.link.shared;
        let role = shared.role();
        match (role, self.node.role()) {
            (Role::Primary, NodeRole::Standby) => {
                tracing::info!(
                    epoch = shared.epoch(),
                    "failover: primary (promoted by hand): taking the lease"
                );
                self.node = fresh(&self.link, self.session);
            }
            (Role::Standby, NodeRole::Primary) => {
                self.node.saw_epoch(shared.epoch(), now, &mut self.effects);
                if self.node.role() == NodeRole::Primary {
                    self.node = fresh(&self.link, self.session);
                }
            }
            _ => {}
        }
        if role == Role::Standby {
            let heard = shared.heard_ms.load(Ordering::Acquire);
            if heard > self.heard_ms {
                self.heard_ms = heard;
                self.node.heard_primary(heard);
            }
            if shared.link_up() && shared.in_sync() {
                self.node.caught_up(shared.epoch());
            }
        }
        self.node.saw_epoch(shared.epoch(), now, &mut self.effects);
        self.observe_switchover(now);
    }

    /// A planned switchover: the primary gives its lease back once frozen and caught up; the
    /// standby that took the handover asks for promotion at once.
    fn observe_switchover(&mut self, now: u64) {
        let link = &self.link;
        let release = link.release_request.load(Ordering::Acquire);
        if release != 0 && release != self.released {
            self.released = release;
            if release == self.node.epoch() && self.node.release(now, &mut self.effects) {
                tracing::warn!(
                    epoch = release,
                    "failover: releasing the lease (switchover)"
                );
            }
        }
        let from = link.handover_from.load(Ordering::Acquire);
        if from != 0 && from != self.handed_over {
            self.handed_over = from;
            if !self.node.handover(from, now, &mut self.effects) {
                tracing::warn!(
                    epoch = from,
                    "failover: cannot ask for the handover's promotion (not caught up in that epoch)"
                );
            }
        }
    }

    /// One datagram from the witness within the tick, decoded, with the time it arrived.
    fn receive(&mut self) -> Option<(failover::WitnessMessage, u64)> {
        let len = match self.socket.recv(&mut self.buffer) {
            Ok(len) => len,
            // Timeouts, and refusals while the witness is down: nothing arrived.
            Err(_) => return None,
        };
        let now = self.link.now_ms();
        let secret = self.link.shared.config.secret.as_bytes();
        match failover::decode(secret, &self.buffer[..len]) {
            Ok(Some((message, used))) if used == len => Some((message, now)),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "failover: refused a datagram from the witness");
                None
            }
        }
    }

    fn carry_out(&mut self) {
        let effects = std::mem::take(&mut self.effects);
        for effect in &effects {
            self.carry_out_one(effect);
        }
        self.effects = effects;
        self.effects.clear();
        self.publish_lease();
    }

    fn carry_out_one(&mut self, effect: &NodeEffect) {
        let link = &self.link;
        match effect {
            NodeEffect::Send(message) => {
                let mut frame = Vec::new();
                failover::encode(link.shared.config.secret.as_bytes(), message, &mut frame);
                // A witness that is down refuses: the lease runs out, which is the point.
                let _ = self.socket.send(&frame);
            }
            NodeEffect::PersistEpoch(epoch) => {
                if let Err(error) = super::epoch::store(&link.data_dir, *epoch) {
                    // The contract of `NodeEffect::PersistEpoch`: stop, restart as a standby.
                    tracing::error!(%error, epoch, "failover: cannot persist the granted epoch; exiting");
                    std::process::exit(1);
                }
            }
            NodeEffect::Promote { epoch } => self.promote(*epoch),
            NodeEffect::StopAcknowledging => {
                self.publish_lease();
                tracing::warn!("failover: no lease at the witness: publishes answer 503");
                link.ring_cores();
            }
            NodeEffect::ResumeAcknowledging => {
                tracing::info!("failover: the lease is proven again: acknowledging");
            }
            NodeEffect::Released { epoch } => {
                tracing::warn!(epoch, "failover: the witness confirmed the lease release");
                link.released.store(*epoch, Ordering::Release);
            }
            NodeEffect::StepDown { epoch } => {
                self.publish_lease();
                tracing::warn!(epoch, "failover: the witness fenced this primary");
                link.step_down(*epoch);
            }
        }
    }

    fn promote(&mut self, epoch: u64) {
        tracing::warn!(epoch, "failover: the witness granted promotion");
        match super::promote::promote_granted(&self.link, epoch) {
            Ok(_) => {}
            Err(refused) if refused.status == 409 => {
                // The role check of the next tick brings the state machine back in line.
                tracing::warn!(
                    epoch,
                    reason = refused.message,
                    "failover: promotion not carried out"
                );
            }
            Err(refused) => {
                // Half promoted (the epoch persisted, some cores in it): restart as a standby
                // of the persisted epoch rather than serve in an unknown state.
                tracing::error!(
                    epoch,
                    reason = refused.message,
                    "failover: promotion failed; exiting"
                );
                std::process::exit(1);
            }
        }
    }

    /// Publishes the end of the provable lease for the cores (0: none).
    fn publish_lease(&self) {
        let shared = &self.link.shared;
        let until = self.node.lease_valid_until().unwrap_or(0);
        shared.lease_until_ms.store(until, Ordering::Release);
        let valid = self.node.may_acknowledge(self.link.now_ms());
        shared.lease_valid.store(valid, Ordering::Relaxed);
    }
}

/// A state machine for the node as it is now. A standby claims no epoch (0, never eligible)
/// until it has caught up with a primary: its log may be behind the persisted epoch's end.
fn fresh(link: &Link, session: u64) -> NodeFailover {
    let shared = &link.shared;
    let (role, epoch) = match shared.role() {
        Role::Primary => (NodeRole::Primary, shared.epoch()),
        Role::Standby => (NodeRole::Standby, 0),
    };
    NodeFailover::new(
        shared.config.lease(),
        shared.config.node_id.clone(),
        role,
        epoch,
        session,
        link.now_ms(),
    )
}
