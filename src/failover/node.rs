//! A node's whole failover state machine, the one a driver thread talks to: as the primary it
//! holds the lease (`LeaseHolder`), as a standby it watches the primary (`FailoverTimer`) and
//! asks the witness for promotion. Inputs are the witness's messages, what the replication link
//! observed (heartbeats, higher epochs, catching up) and `now`; outputs are `NodeEffect`s, in
//! the order the caller carries them out. It must not do IO, read a clock, persist anything
//! itself or draw random numbers (the session number is passed in).

use super::lease::{FailoverTimer, LeaseConfig, LeaseEvent, LeaseHolder, Pending};
use super::message::{GrantKind, WitnessMessage};

/// What the node is, as far as failover is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Standby,
}

/// What the caller of `NodeFailover` does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEffect {
    /// Send this to the witness.
    Send(WitnessMessage),
    /// Persist this epoch durably before carrying out anything after it. If that fails, the
    /// process must stop (it restarts as a standby of its last persisted epoch).
    PersistEpoch(u64),
    /// Become the primary of `epoch` (after `PersistEpoch`): write `EpochStart`, accept
    /// publishes, acknowledge only while `may_acknowledge(now)`.
    Promote { epoch: u64 },
    /// The lease can no longer be proven: answer publishes 503 + `Retry-After` until it can.
    /// Informational: `may_acknowledge` is the authority, checked when acknowledging.
    StopAcknowledging,
    /// A lease can be proven again after `StopAcknowledging`.
    ResumeAcknowledging,
    /// Stop being the primary now: `epoch` is higher than ours, or ours was given to another
    /// node. Close client connections and rejoin as a standby.
    StepDown { epoch: u64 },
    /// Planned switchover: the witness confirmed the release of this primary's lease of
    /// `epoch`; the standby can be promoted at once.
    Released { epoch: u64 },
}

#[derive(Debug, Clone)]
enum State {
    Primary { lease: LeaseHolder, acking: bool },
    Standby { timer: FailoverTimer },
}

/// One node's failover state machine (see the module documentation of `failover`).
#[derive(Debug, Clone)]
pub struct NodeFailover {
    config: LeaseConfig,
    node: String,
    session: u64,
    /// The epoch this node's log is complete up to (what a promotion request claims).
    epoch: u64,
    next_seq: u64,
    /// Promotion requests sent and not yet answered.
    promote_pending: Pending,
    state: State,
}

impl NodeFailover {
    /// A node starting at `now` in `role`, with the epoch it persisted. `session` must be fresh
    /// random per process start. A node that was the primary before a restart should start as a
    /// standby (its lease may have been taken over while it was down); one started as the
    /// primary acknowledges nothing until the witness granted it a lease.
    pub fn new(
        config: LeaseConfig,
        node: String,
        role: NodeRole,
        epoch: u64,
        session: u64,
        now: u64,
    ) -> NodeFailover {
        let state = match role {
            NodeRole::Primary => State::Primary {
                lease: LeaseHolder::new(config, node.clone(), epoch, session, 1),
                acking: false,
            },
            NodeRole::Standby => State::Standby {
                timer: FailoverTimer::new(config, now),
            },
        };
        NodeFailover {
            config,
            node,
            session,
            epoch,
            next_seq: 1,
            promote_pending: Pending::default(),
            state,
        }
    }

    pub fn role(&self) -> NodeRole {
        match self.state {
            State::Primary { .. } => NodeRole::Primary,
            State::Standby { .. } => NodeRole::Standby,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this node may acknowledge a publish at `now`: it is the primary and can prove a
    /// valid lease.
    pub fn may_acknowledge(&self, now: u64) -> bool {
        match &self.state {
            State::Primary { lease, .. } => lease.may_acknowledge(now),
            State::Standby { .. } => false,
        }
    }

    /// The end of the lease this node can prove (its clock), while it is the primary and has
    /// one; the driver publishes it to whatever checks before acknowledging.
    pub fn lease_valid_until(&self) -> Option<u64> {
        match &self.state {
            State::Primary { lease, .. } if !lease.is_fenced() && !lease.is_released() => {
                lease.valid_until()
            }
            _ => None,
        }
    }

    /// Planned switchover, on the primary: it gives its lease back at the witness. The caller
    /// has frozen publishes and seen the standby reach lag 0; `StopAcknowledging` comes first
    /// (carry it out before the `Send` after it), and nothing is acknowledged in this epoch
    /// again. `Released` follows once the witness confirms. Returns false (and does nothing)
    /// on a standby or when released already.
    pub fn release(&mut self, now: u64, out: &mut Vec<NodeEffect>) -> bool {
        let State::Primary { lease, acking } = &mut self.state else {
            return false;
        };
        if !lease.release() {
            return false;
        }
        *acking = false;
        out.push(NodeEffect::StopAcknowledging);
        self.tick(now, out);
        true
    }

    /// Planned switchover, on the standby: the primary of `epoch` handed over (it released its
    /// lease and the standby holds its whole log), so the promotion request goes now rather
    /// than after `failover_after_ms` of silence. Returns false (and does nothing) unless this
    /// node is a standby whose log is complete up to `epoch`.
    pub fn handover(&mut self, epoch: u64, now: u64, out: &mut Vec<NodeEffect>) -> bool {
        let State::Standby { timer } = &mut self.state else {
            return false;
        };
        if epoch == 0 || epoch != self.epoch {
            return false;
        }
        timer.hurry();
        self.tick(now, out);
        true
    }

    /// Time passes: renew the lease or ask for promotion when due; say when acknowledging
    /// stops or resumes. Call at least every `renew_ms / 2`.
    pub fn tick(&mut self, now: u64, out: &mut Vec<NodeEffect>) {
        match &mut self.state {
            State::Primary { lease, acking } => {
                if let Some(request) = lease.poll(now) {
                    out.push(NodeEffect::Send(request));
                }
                let may = lease.may_acknowledge(now);
                if may != *acking {
                    *acking = may;
                    out.push(if may {
                        NodeEffect::ResumeAcknowledging
                    } else {
                        NodeEffect::StopAcknowledging
                    });
                }
            }
            State::Standby { timer } => {
                if timer.poll(now) {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.promote_pending.sent(seq, now);
                    out.push(NodeEffect::Send(WitnessMessage::PromoteRequest {
                        node: self.node.clone(),
                        epoch: self.epoch,
                        session: self.session,
                        seq,
                    }));
                }
            }
        }
    }

    /// An answer from the witness, received at `now`.
    pub fn on_witness(&mut self, message: &WitnessMessage, now: u64, out: &mut Vec<NodeEffect>) {
        if message.node() != self.node {
            return;
        }
        match &mut self.state {
            State::Primary { lease, .. } => match lease.on_message(message) {
                LeaseEvent::Fenced { epoch } => self.step_down(epoch, now, out),
                LeaseEvent::Released { epoch } => out.push(NodeEffect::Released { epoch }),
                LeaseEvent::Ignored | LeaseEvent::Extended { .. } => self.tick(now, out),
            },
            State::Standby { .. } => {
                let WitnessMessage::Granted {
                    kind: GrantKind::Promotion,
                    epoch,
                    session,
                    seq,
                    lease_ms,
                    ..
                } = *message
                else {
                    return;
                };
                if session != self.session || epoch <= self.epoch {
                    return;
                }
                if let Some(sent_at) = self.promote_pending.answered(seq) {
                    self.promote(epoch, sent_at, lease_ms, now, out);
                }
            }
        }
    }

    fn promote(
        &mut self,
        epoch: u64,
        sent_at: u64,
        lease_ms: u64,
        now: u64,
        out: &mut Vec<NodeEffect>,
    ) {
        self.epoch = epoch;
        self.promote_pending.clear();
        out.push(NodeEffect::PersistEpoch(epoch));
        out.push(NodeEffect::Promote { epoch });
        let lease = LeaseHolder::new(
            self.config,
            self.node.clone(),
            epoch,
            self.session,
            self.next_seq,
        )
        .with_lease(sent_at, lease_ms);
        self.state = State::Primary {
            lease,
            acking: false,
        };
        self.tick(now, out);
    }

    /// The standby heard the primary (a heartbeat or records on the replication link): the
    /// failover timer starts again. Ignored on the primary.
    pub fn heard_primary(&mut self, now: u64) {
        if let State::Standby { timer } = &mut self.state {
            timer.heard(now);
        }
    }

    /// The standby's log is now complete up to the primary's end in `epoch` (it reached lag 0
    /// once in that epoch, and persisted the epoch): from now on it may ask to be promoted from
    /// it. Never call this before, or a promotion could lose acknowledged records.
    pub fn caught_up(&mut self, epoch: u64) {
        if matches!(self.state, State::Standby { .. }) && epoch > self.epoch {
            self.epoch = epoch;
            self.promote_pending.clear();
        }
    }

    /// A higher epoch was seen anywhere (a replication message, a refusal): a primary steps
    /// down at once.
    pub fn saw_epoch(&mut self, epoch: u64, now: u64, out: &mut Vec<NodeEffect>) {
        if epoch > self.epoch && matches!(self.state, State::Primary { .. }) {
            self.step_down(epoch, now, out);
        }
    }

    fn step_down(&mut self, epoch: u64, now: u64, out: &mut Vec<NodeEffect>) {
        if let State::Primary { lease, .. } = &self.state {
            // Never reuse a sequence number within a session: a late answer to an old request
            // must not be counted from a newer request's send time.
            self.next_seq = self.next_seq.max(lease.next_seq());
        }
        out.push(NodeEffect::StepDown { epoch });
        self.state = State::Standby {
            timer: FailoverTimer::new(self.config, now),
        };
    }
}
