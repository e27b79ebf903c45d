//! The node's side of the lease, as two small state machines over a caller's monotonic clock:
//! `LeaseHolder` (the primary: which lease it can prove, and when to renew) and
//! `FailoverTimer` (the standby: when the primary has been silent long enough to ask for
//! promotion), plus `LeaseConfig`, the timings both sides and the witness share. It must not do
//! IO, read a clock or draw random numbers: `now` (milliseconds of a monotonic clock, never the
//! wall clock) and the session number are passed in.
//!
//! A lease is counted from the *send* time of the request the witness granted, on the node's
//! own clock, minus the drift margin: the witness counts the same lease from when it *received*
//! the request, which is later in real time, and waits the margin more before it lets another
//! node take over. So as long as the two clocks' rates differ by less than the margin, the
//! node's proof ends in real time before the witness lets anyone else acknowledge.

use std::collections::VecDeque;

use super::message::{GrantKind, RefuseReason, WitnessMessage};
use crate::limits;

/// The timings of the lease and of failover. Both nodes and the witness must use the same
/// `lease_ms` and `drift_margin_pct` (a grant carries its `lease_ms`, and a node takes the
/// shorter of the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a granted lease lasts (default 500).
    pub lease_ms: u64,
    /// How often the primary renews it (default 100), and how often a standby repeats a
    /// refused promotion request.
    pub renew_ms: u64,
    /// The drift margin, in percent of `lease_ms` (default 10): the node proves its lease this
    /// much shorter, and the witness waits this much longer before it lets another node take
    /// over. Clock rates must differ by less than this.
    pub drift_margin_pct: u64,
    /// How long a standby hears nothing from the primary before it asks for promotion (default
    /// 500).
    pub failover_after_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease_ms: 500,
            renew_ms: 100,
            drift_margin_pct: 10,
            failover_after_ms: 500,
        }
    }
}

impl LeaseConfig {
    /// # Errors
    ///
    /// A message naming the setting that is out of range: `lease_ms` within
    /// `[FAILOVER_LEASE_MS_MIN, FAILOVER_LEASE_MS_MAX]`, `drift_margin_pct` at most
    /// `FAILOVER_DRIFT_MARGIN_PCT_MAX`, at least two renewals within a proven lease, and
    /// `failover_after_ms` within `[renew_ms, FAILOVER_LEASE_MS_MAX]`.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(limits::FAILOVER_LEASE_MS_MIN..=limits::FAILOVER_LEASE_MS_MAX).contains(&self.lease_ms)
        {
            return Err("lease_ms out of range");
        }
        if self.drift_margin_pct > limits::FAILOVER_DRIFT_MARGIN_PCT_MAX {
            return Err("drift_margin_pct out of range");
        }
        if self.renew_ms == 0 || self.renew_ms.saturating_mul(2) > self.proven_ms(self.lease_ms) {
            return Err("renew_ms must fit twice in the lease less its margin");
        }
        if !(self.renew_ms..=limits::FAILOVER_LEASE_MS_MAX).contains(&self.failover_after_ms) {
            return Err("failover_after_ms out of range");
        }
        Ok(())
    }

    /// The drift margin of a lease of `lease_ms`.
    pub fn margin_ms(&self, lease_ms: u64) -> u64 {
        lease_ms.saturating_mul(self.drift_margin_pct) / 100
    }

    /// How long after its request's send time a node may count on a lease of `lease_ms`.
    pub fn proven_ms(&self, lease_ms: u64) -> u64 {
        lease_ms - self.margin_ms(lease_ms)
    }
}

/// The send times of the last requests, so that an answer is counted from the send time of the
/// request it answers. Holds at most `FAILOVER_PENDING_MAX`; the oldest is forgotten first (its
/// answer is then ignored, which only shortens what the node can prove).
#[derive(Debug, Clone, Default)]
pub struct Pending {
    sent: VecDeque<(u64, u64)>,
}

impl Pending {
    /// Notes that request `seq` was sent at `now`.
    pub fn sent(&mut self, seq: u64, now: u64) {
        if self.sent.len() == limits::FAILOVER_PENDING_MAX {
            self.sent.pop_front();
        }
        debug_assert!(self.sent.back().is_none_or(|(last, _)| *last < seq));
        self.sent.push_back((seq, now));
    }

    /// The send time of request `seq`, forgetting it and every earlier request.
    pub fn answered(&mut self, seq: u64) -> Option<u64> {
        let index = self.sent.iter().position(|(s, _)| *s == seq)?;
        let sent_at = self.sent[index].1;
        self.sent.drain(..=index);
        Some(sent_at)
    }

    pub fn clear(&mut self) {
        self.sent.clear();
    }
}

/// What an answer from the witness meant to a `LeaseHolder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Nothing changed (an answer to another node, session or forgotten request, or a refusal
    /// that only means "not yet").
    Ignored,
    /// The lease now lasts until `valid_until` (the holder's clock).
    Extended { valid_until: u64 },
    /// The witness knows a higher epoch, or gave ours to another node: this node must stop
    /// acting as the primary for good.
    Fenced { epoch: u64 },
    /// The witness confirmed the release of the lease of `epoch` (planned switchover).
    Released { epoch: u64 },
}

/// The primary's lease: when to renew it, and whether it can prove a valid one at `now`.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    config: LeaseConfig,
    node: String,
    epoch: u64,
    session: u64,
    next_seq: u64,
    pending: Pending,
    /// The end of the lease it can prove (its clock); 0 before the first grant.
    valid_until: u64,
    last_sent: Option<u64>,
    fenced: bool,
    /// The lease was given back (planned switchover): nothing is proven or renewed any more.
    released: bool,
    /// The witness confirmed the release.
    release_confirmed: bool,
}

impl LeaseHolder {
    /// A primary of `epoch` that holds no lease yet. `session` must be fresh per process start
    /// (random), and `first_seq` above any sequence number this session used before.
    pub fn new(
        config: LeaseConfig,
        node: String,
        epoch: u64,
        session: u64,
        first_seq: u64,
    ) -> LeaseHolder {
        LeaseHolder {
            config,
            node,
            epoch,
            session,
            next_seq: first_seq,
            pending: Pending::default(),
            valid_until: 0,
            last_sent: None,
            fenced: false,
            released: false,
            release_confirmed: false,
        }
    }

    /// Starts with the lease a promotion granted: `lease_ms` from `sent_at`, the send time of
    /// the promotion request.
    pub fn with_lease(mut self, sent_at: u64, lease_ms: u64) -> LeaseHolder {
        self.extend(sent_at, lease_ms);
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next sequence number this holder would use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lease request to send now, if one is due: at once when none was sent, then every
    /// `renew_ms`; never after the holder was fenced. Once released, the release instead, at
    /// once and then every `renew_ms` until the witness confirms it.
    pub fn poll(&mut self, now: u64) -> Option<WitnessMessage> {
        if self.fenced
            || self.release_confirmed
            || self
                .last_sent
                .is_some_and(|t| now < t.saturating_add(self.config.renew_ms))
        {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.sent(seq, now);
        self.last_sent = Some(now);
        let (node, epoch, session) = (self.node.clone(), self.epoch, self.session);
        Some(if self.released {
            WitnessMessage::LeaseRelease {
                node,
                epoch,
                session,
                seq,
            }
        } else {
            WitnessMessage::LeaseRequest {
                node,
                epoch,
                session,
                seq,
            }
        })
    }

    /// Planned switchover: gives the lease back. From now on the holder proves no lease (so
    /// the caller must stop acknowledging before it sends the release `poll` now returns),
    /// ignores grants and renews nothing. Returns whether it was not released before.
    pub fn release(&mut self) -> bool {
        if self.fenced || self.released {
            return false;
        }
        self.released = true;
        self.valid_until = 0;
        self.last_sent = None;
        true
    }

    pub fn is_released(&self) -> bool {
        self.released
    }

    /// Takes in an answer from the witness.
    pub fn on_message(&mut self, message: &WitnessMessage) -> LeaseEvent {
        if self.fenced || message.node() != self.node {
            return LeaseEvent::Ignored;
        }
        match *message {
            WitnessMessage::Granted {
                kind: GrantKind::Released,
                epoch,
                session,
                ..
            } if self.released && session == self.session && epoch == self.epoch => {
                self.confirm_release(epoch)
            }
            // A renewal sent before the release, answered after it: the witness has the
            // release, which is all this says.
            WitnessMessage::Refused {
                reason: RefuseReason::Released,
                epoch,
                session,
                ..
            } if self.released && session == self.session && epoch == self.epoch => {
                self.confirm_release(epoch)
            }
            WitnessMessage::Granted {
                kind: GrantKind::Released,
                ..
            } => LeaseEvent::Ignored,
            WitnessMessage::Granted {
                kind: GrantKind::Lease,
                epoch,
                session,
                seq,
                lease_ms,
                ..
            } if !self.released && session == self.session && epoch == self.epoch => {
                match self.pending.answered(seq) {
                    Some(sent_at) => {
                        self.extend(sent_at, lease_ms);
                        LeaseEvent::Extended {
                            valid_until: self.valid_until,
                        }
                    }
                    None => LeaseEvent::Ignored,
                }
            }
            WitnessMessage::Refused {
                reason,
                epoch,
                session,
                ..
            } if session == self.session => match reason {
                RefuseReason::StaleEpoch if epoch > self.epoch => self.fence(epoch),
                RefuseReason::NotHolder | RefuseReason::Released => self.fence(self.epoch),
                _ => LeaseEvent::Ignored,
            },
            _ => LeaseEvent::Ignored,
        }
    }

    /// The witness has the release: said once.
    fn confirm_release(&mut self, epoch: u64) -> LeaseEvent {
        let first = !self.release_confirmed;
        self.release_confirmed = true;
        self.pending.clear();
        if first {
            LeaseEvent::Released { epoch }
        } else {
            LeaseEvent::Ignored
        }
    }

    /// Stops for good: a higher epoch exists (seen here or anywhere else).
    pub fn fence(&mut self, epoch: u64) -> LeaseEvent {
        self.fenced = true;
        self.pending.clear();
        LeaseEvent::Fenced { epoch }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Whether the holder can prove a valid lease at `now`: a publish may be acknowledged only
    /// while this is true, checked at the moment of acknowledging.
    pub fn may_acknowledge(&self, now: u64) -> bool {
        !self.fenced && !self.released && now < self.valid_until
    }

    /// The end of the provable lease (the holder's clock), if it ever had one.
    pub fn valid_until(&self) -> Option<u64> {
        (self.valid_until > 0).then_some(self.valid_until)
    }

    fn extend(&mut self, sent_at: u64, lease_ms: u64) {
        let lease_ms = lease_ms.min(self.config.lease_ms);
        let until = sent_at.saturating_add(self.config.proven_ms(lease_ms));
        self.valid_until = self.valid_until.max(until);
    }
}

/// The standby's failure detector: it asks for promotion once the primary has been silent for
/// `failover_after_ms`, then again every `renew_ms` while it stays silent.
#[derive(Debug, Clone)]
pub struct FailoverTimer {
    config: LeaseConfig,
    heard_at: u64,
    asked_at: Option<u64>,
    /// The primary handed its epoch over (planned switchover): ask now, without waiting for
    /// the silence.
    hurried: bool,
}

impl FailoverTimer {
    /// A timer that counts the silence from `now` (a node that just started waits the full
    /// period before asking).
    pub fn new(config: LeaseConfig, now: u64) -> FailoverTimer {
        FailoverTimer {
            config,
            heard_at: now,
            asked_at: None,
            hurried: false,
        }
    }

    /// The primary handed over (its lease released): the next `poll` asks at once, and the
    /// timer keeps asking every `renew_ms` whatever it hears.
    pub fn hurry(&mut self) {
        self.hurried = true;
        self.asked_at = None;
    }

    /// The primary was heard from (a heartbeat or records on the replication link).
    pub fn heard(&mut self, now: u64) {
        self.heard_at = self.heard_at.max(now);
        self.asked_at = None;
    }

    /// How long the primary has been silent.
    pub fn silent_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.heard_at)
    }

    /// Whether a promotion request is due now; if so, notes that it is being sent.
    pub fn poll(&mut self, now: u64) -> bool {
        if !self.hurried && self.silent_ms(now) < self.config.failover_after_ms {
            return false;
        }
        if self
            .asked_at
            .is_some_and(|t| now < t.saturating_add(self.config.renew_ms))
        {
            return false;
        }
        self.asked_at = Some(now);
        true
    }
}
