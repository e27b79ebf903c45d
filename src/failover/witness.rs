//! The witness, the third voter of a primary/standby pair, as a state machine over its own
//! monotonic clock: it holds at most one lease, grants and renews it to the primary of the
//! current epoch, and grants promotion (epoch + 1) to the other node only once that lease has
//! expired by its own clock plus the drift margin. It must not do IO or read a clock: the
//! caller passes `now` (milliseconds, monotonic) and carries out the effects in order, writing
//! each `Persist` durably before it sends any `Reply` that follows it.
//!
//! # Rules
//!
//! * The persisted `WitnessRecord` (the highest epoch granted and its primary) is the only state
//!   that survives a restart. A witness that starts knows nothing of the lease it may have
//!   granted before, so it lets nobody take over until a whole lease (plus margin) has passed on
//!   its clock since it started.
//! * `LeaseRequest` from the record's primary in the record's epoch: granted, the lease running
//!   `lease_ms` from now. From another node in that epoch: `NotHolder`; in a lower epoch:
//!   `StaleEpoch`. In a higher epoch (a manual promotion the witness never saw, or the first
//!   lease of a new cluster): taken over like a promotion, once no lease may be valid.
//! * `PromoteRequest` in the record's epoch: `LeaseHeld` while a lease may be valid, else the
//!   next epoch is persisted, then granted with its first lease. A request one epoch behind from
//!   the node that was granted the current epoch gets that grant again (its answer was lost).
//!   Below: `StaleEpoch`; above, at epoch 0 (a node that never caught up with a primary, or
//!   lost its disk), or with no record: `NotEligible`.
//! * `LeaseRelease` (planned switchover) from the record's primary in the record's epoch: no
//!   lease is valid from now on (nor the quiet period after a restart: any lease it may cover
//!   was that node's), so a `PromoteRequest` is granted at once; a `LeaseRequest` in that
//!   epoch is refused (`Released`) from then on. Answered `Granted { kind: Released }`, again
//!   for a repeat. The release is not persisted: a witness that restarts forgets it and falls
//!   back to the wait above, which is only slower.

use super::lease::LeaseConfig;
use super::message::{GrantKind, RefuseReason, WitnessMessage};

/// What the witness persists: the highest epoch it granted, and to which node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessRecord {
    pub epoch: u64,
    pub primary: String,
}

/// What the caller of `Witness::handle` does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessEffect {
    /// Write this record durably (replacing the last one) before sending anything after it. If
    /// the write fails, stop: send nothing, and restart from the last record written.
    Persist(WitnessRecord),
    /// Send this answer to the node that asked.
    Reply(WitnessMessage),
}

/// The witness's state: the record, and the lease of the record's primary.
#[derive(Debug, Clone)]
pub struct Witness {
    config: LeaseConfig,
    record: Option<WitnessRecord>,
    /// When the current lease expires by this witness's clock (0: no lease granted since
    /// start).
    lease_expires: u64,
    /// Nobody takes over before this: a lease granted before the last start may run until then.
    quiet_until: u64,
    /// The epoch whose lease its primary released (a planned switchover), if any.
    released: Option<u64>,
    /// Test-only: grant promotions without waiting for the lease to expire (the broken rule the
    /// simulation must catch).
    #[cfg(test)]
    pub(crate) skip_expiry_wait: bool,
}

impl Witness {
    /// A witness starting at `now` from its persisted record (`None` on first start).
    pub fn new(config: LeaseConfig, record: Option<WitnessRecord>, now: u64) -> Witness {
        Witness {
            config,
            record,
            lease_expires: 0,
            quiet_until: now.saturating_add(config.lease_ms + config.margin_ms(config.lease_ms)),
            released: None,
            #[cfg(test)]
            skip_expiry_wait: false,
        }
    }

    pub fn record(&self) -> Option<&WitnessRecord> {
        self.record.as_ref()
    }

    /// Whether a lease this witness granted may still be valid at `now` (so nobody else may
    /// take over).
    pub fn lease_may_be_valid(&self, now: u64) -> bool {
        #[cfg(test)]
        if self.skip_expiry_wait {
            return false;
        }
        if self.released.is_some() && self.released == self.record.as_ref().map(|r| r.epoch) {
            return false;
        }
        let margin = self.config.margin_ms(self.config.lease_ms);
        now < self.quiet_until || now < self.lease_expires.saturating_add(margin)
    }

    /// Takes in one message received at `now`, appending what to do to `out`. Answers from
    /// another witness (`Granted`, `Refused`) are ignored.
    pub fn handle(&mut self, message: &WitnessMessage, now: u64, out: &mut Vec<WitnessEffect>) {
        match message {
            WitnessMessage::LeaseRequest {
                node,
                epoch,
                session,
                seq,
            } => {
                let answer = self.lease(node, *epoch, now, out);
                out.push(WitnessEffect::Reply(
                    self.answer(node, *session, *seq, answer),
                ));
            }
            WitnessMessage::PromoteRequest {
                node,
                epoch,
                session,
                seq,
            } => {
                let answer = self.promote(node, *epoch, now, out);
                out.push(WitnessEffect::Reply(
                    self.answer(node, *session, *seq, answer),
                ));
            }
            WitnessMessage::LeaseRelease {
                node,
                epoch,
                session,
                seq,
            } => {
                let answer = self.release(node, *epoch);
                out.push(WitnessEffect::Reply(
                    self.answer(node, *session, *seq, answer),
                ));
            }
            WitnessMessage::Granted { .. } | WitnessMessage::Refused { .. } => {}
        }
    }

    /// The record's primary gives its lease back: nobody holds one from now on.
    fn release(&mut self, node: &str, epoch: u64) -> Result<GrantKind, RefuseReason> {
        let Some(record) = &self.record else {
            return Err(RefuseReason::NotEligible);
        };
        if epoch < record.epoch {
            return Err(RefuseReason::StaleEpoch);
        }
        if epoch > record.epoch {
            return Err(RefuseReason::NotEligible);
        }
        if record.primary != node {
            return Err(RefuseReason::NotHolder);
        }
        self.released = Some(epoch);
        self.lease_expires = 0;
        Ok(GrantKind::Released)
    }

    fn lease(
        &mut self,
        node: &str,
        epoch: u64,
        now: u64,
        out: &mut Vec<WitnessEffect>,
    ) -> Result<GrantKind, RefuseReason> {
        let current = self.record.as_ref().map(|r| (r.epoch, r.primary.as_str()));
        match current {
            Some((current, _)) if epoch < current => Err(RefuseReason::StaleEpoch),
            Some((current, primary)) if epoch == current => {
                if primary != node {
                    return Err(RefuseReason::NotHolder);
                }
                if self.released == Some(current) {
                    return Err(RefuseReason::Released);
                }
                self.lease_expires = self
                    .lease_expires
                    .max(now.saturating_add(self.config.lease_ms));
                Ok(GrantKind::Lease)
            }
            _ if self.lease_may_be_valid(now) => Err(RefuseReason::LeaseHeld),
            _ => {
                self.take_over(node, epoch, now, out);
                Ok(GrantKind::Lease)
            }
        }
    }

    fn promote(
        &mut self,
        node: &str,
        epoch: u64,
        now: u64,
        out: &mut Vec<WitnessEffect>,
    ) -> Result<GrantKind, RefuseReason> {
        let Some(record) = &self.record else {
            return Err(RefuseReason::NotEligible);
        };
        if epoch == 0 {
            // A node that holds no complete epoch (new, or its disk replaced) has nothing to
            // serve: it must follow a primary first.
            return Err(RefuseReason::NotEligible);
        }
        if epoch.checked_add(1) == Some(record.epoch) && record.primary == node {
            if self.released == Some(record.epoch) {
                // It gave that lease back since: no second one in the same epoch.
                return Err(RefuseReason::Released);
            }
            // Granted before; the answer was lost. The lease runs from now again.
            self.lease_expires = self
                .lease_expires
                .max(now.saturating_add(self.config.lease_ms));
            return Ok(GrantKind::Promotion);
        }
        if epoch < record.epoch {
            return Err(RefuseReason::StaleEpoch);
        }
        if epoch > record.epoch || epoch == u64::MAX {
            return Err(RefuseReason::NotEligible);
        }
        if self.lease_may_be_valid(now) {
            return Err(RefuseReason::LeaseHeld);
        }
        self.take_over(node, epoch + 1, now, out);
        Ok(GrantKind::Promotion)
    }

    /// Makes `node` the primary of `epoch`, with a lease from now.
    fn take_over(&mut self, node: &str, epoch: u64, now: u64, out: &mut Vec<WitnessEffect>) {
        assert!(self.record.as_ref().is_none_or(|r| epoch > r.epoch));
        let record = WitnessRecord {
            epoch,
            primary: node.to_owned(),
        };
        out.push(WitnessEffect::Persist(record.clone()));
        self.record = Some(record);
        self.lease_expires = now.saturating_add(self.config.lease_ms);
    }

    fn answer(
        &self,
        node: &str,
        session: u64,
        seq: u64,
        answer: Result<GrantKind, RefuseReason>,
    ) -> WitnessMessage {
        let epoch = self.record.as_ref().map_or(0, |r| r.epoch);
        match answer {
            Ok(kind) => WitnessMessage::Granted {
                node: node.to_owned(),
                kind,
                epoch,
                session,
                seq,
                lease_ms: if kind == GrantKind::Released {
                    0
                } else {
                    self.config.lease_ms
                },
            },
            Err(reason) => WitnessMessage::Refused {
                node: node.to_owned(),
                reason,
                epoch,
                session,
                seq,
            },
        }
    }
}
