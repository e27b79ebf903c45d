//! The replica gate: with an ack mode that needs the standby, nothing the owner sends (an event
//! for subscribers, a subscribe answer naming a position, a history read) leaves the core
//! before the standby has received the records it reveals. Otherwise a client could see an
//! event, and its sequence number, that a promoted standby never had, and the new primary
//! would give that number to another event (Kafka's high watermark, for the same reason).
//! Held messages wait in order behind the log position appended when they were made, and go
//! when the standby's received position passes it, when the standby is lost, or when one has
//! waited `standby_timeout_ms` (the same bound a publish's acknowledgement has). This file
//! decides only; it must not send anything or read a clock.

use std::collections::VecDeque;

use crate::limits;
use crate::mesh::message::ShardMessage;

use super::owner::ReplicaView;

/// One owner message held for the standby.
#[derive(Debug)]
struct Held {
    /// The log position appended when it was made: everything it can reveal is at or below it.
    lsn: u64,
    since_ms: u64,
    to: usize,
    message: ShardMessage,
}

/// Owner messages waiting for the standby, in the order the owner made them.
#[derive(Debug, Default)]
pub struct ReplicaGate {
    /// Whether any app's acknowledgements need the standby (only then is anything held).
    enabled: bool,
    held: VecDeque<Held>,
    /// The standby's position as the last commit reported it (None: no standby to wait for).
    view: Option<ReplicaView>,
}

impl ReplicaGate {
    pub fn new(enabled: bool) -> ReplicaGate {
        ReplicaGate {
            enabled,
            ..ReplicaGate::default()
        }
    }

    /// A reload changed the ack modes: from now on messages are held only if some ack needs
    /// the standby. Messages already held stay in order; when disabled, the next release lets
    /// them all go.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// A message the owner made while `lsn` was appended: Some to send now, None when held.
    /// `primary` is false on a standby or a node stepping down (nothing to wait for).
    pub fn admit(
        &mut self,
        lsn: u64,
        now_ms: u64,
        primary: bool,
        to: usize,
        message: ShardMessage,
    ) -> Option<(usize, ShardMessage)> {
        let waiting_for_standby = self.enabled
            && primary
            && self
                .view
                .is_some_and(|view| !view.lost && lsn > view.received_lsn);
        if !waiting_for_standby && self.held.is_empty() {
            return Some((to, message));
        }
        self.held.push_back(Held {
            lsn,
            since_ms: now_ms,
            to,
            message,
        });
        // A standby that falls this far behind while still counted present releases the oldest
        // early rather than let the queue grow without bound.
        if self.held.len() > limits::REPLICA_HELD_MESSAGES_MAX {
            let oldest = self.held.pop_front().expect("not empty");
            return Some((oldest.to, oldest.message));
        }
        None
    }

    /// A commit reported the standby at `view`: the messages it now covers go into `out`, in
    /// order, with those that waited `timeout_ms` and everything when the standby is lost, gone
    /// or this node is no longer primary.
    pub fn release(
        &mut self,
        view: Option<ReplicaView>,
        primary: bool,
        now_ms: u64,
        timeout_ms: u64,
        out: &mut Vec<(usize, ShardMessage)>,
    ) {
        self.view = view;
        while let Some(front) = self.held.front() {
            let covered = match view {
                Some(view) => {
                    view.lost
                        || front.lsn <= view.received_lsn
                        || now_ms.saturating_sub(front.since_ms) >= timeout_ms
                }
                None => true,
            };
            if !(covered || !primary || !self.enabled) {
                return;
            }
            let held = self.held.pop_front().expect("front exists");
            out.push((held.to, held.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::message::{AckOutcome, Durability, QueryRef};

    fn view(received_lsn: u64, lost: bool) -> Option<ReplicaView> {
        Some(ReplicaView {
            received_lsn,
            durable_lsn: received_lsn,
            lost,
            lease_until_ms: None,
            frozen: false,
            primary: true,
        })
    }

    /// A message told apart by `n` (any kind does: the gate never looks inside).
    fn message(n: u32) -> ShardMessage {
        ShardMessage::BarrierAck {
            query: QueryRef {
                core: 0,
                slot: n,
                generation: 0,
            },
            outcome: AckOutcome::Durable(Durability::Memory),
        }
    }

    fn marker(message: &ShardMessage) -> u32 {
        match message {
            ShardMessage::BarrierAck { query, .. } => query.slot,
            other => panic!("not a test message: {other:?}"),
        }
    }

    fn markers(out: &[(usize, ShardMessage)]) -> Vec<u32> {
        out.iter().map(|(_, m)| marker(m)).collect()
    }

    #[test]
    fn messages_wait_for_the_standby_and_keep_their_order() {
        let mut gate = ReplicaGate::new(true);
        let mut out = Vec::new();
        gate.release(view(10, false), true, 0, 1000, &mut out);
        // Covered already: goes at once.
        assert!(gate.admit(10, 0, true, 1, message(1)).is_some());
        assert!(gate.admit(12, 0, true, 1, message(2)).is_none());
        // Covered, but behind a held one: waits its turn.
        assert!(gate.admit(10, 0, true, 0, message(3)).is_none());
        assert!(gate.admit(15, 0, true, 0, message(4)).is_none());
        gate.release(view(11, false), true, 5, 1000, &mut out);
        assert!(out.is_empty());
        gate.release(view(12, false), true, 6, 1000, &mut out);
        assert_eq!(markers(&out), [2, 3]);
        out.clear();
        gate.release(view(20, false), true, 7, 1000, &mut out);
        assert_eq!(markers(&out), [4]);
        assert_eq!(gate.len(), 0);
    }

    #[test]
    fn a_lost_slow_or_absent_standby_releases_everything() {
        let mut out = Vec::new();
        for (release_view, now_ms) in [(view(0, true), 1), (view(0, false), 1000), (None, 1)] {
            let mut gate = ReplicaGate::new(true);
            gate.release(view(0, false), true, 0, 1000, &mut out);
            assert!(gate.admit(5, 0, true, 0, message(1)).is_none());
            out.clear();
            gate.release(release_view, true, now_ms, 1000, &mut out);
            assert_eq!(markers(&out), [1], "{release_view:?} at {now_ms}");
        }
        // Disabled (no app needs the standby), or not primary: nothing is held.
        let mut gate = ReplicaGate::new(false);
        gate.release(view(0, false), true, 0, 1000, &mut out);
        assert!(gate.admit(5, 0, true, 0, message(1)).is_some());
        let mut gate = ReplicaGate::new(true);
        gate.release(view(0, false), true, 0, 1000, &mut out);
        assert!(gate.admit(5, 0, false, 0, message(1)).is_some());
    }

    #[test]
    fn a_reload_turns_the_gate_on_and_off() {
        let mut out = Vec::new();
        let mut gate = ReplicaGate::new(false);
        gate.release(view(0, false), true, 0, 1000, &mut out);
        assert!(gate.admit(5, 0, true, 0, message(1)).is_some());
        gate.set_enabled(true);
        assert!(gate.admit(6, 0, true, 0, message(2)).is_none());
        gate.release(view(5, false), true, 1, 1000, &mut out);
        assert!(out.is_empty(), "released before the standby had it");
        // Turned off again: what waits goes with the next release, in order.
        assert!(gate.admit(7, 0, true, 0, message(3)).is_none());
        gate.set_enabled(false);
        gate.release(view(5, false), true, 2, 1000, &mut out);
        assert_eq!(markers(&out), [2, 3]);
        assert_eq!(gate.len(), 0);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut gate = ReplicaGate::new(true);
        let mut out = Vec::new();
        gate.release(view(0, false), true, 0, 1000, &mut out);
        for n in 0..limits::REPLICA_HELD_MESSAGES_MAX as u32 {
            assert!(
                gate.admit(u64::from(n) + 1, 0, true, 0, message(n))
                    .is_none()
            );
        }
        let released = gate.admit(u64::MAX, 0, true, 0, message(u32::MAX));
        assert_eq!(released.map(|(_, m)| marker(&m)), Some(0));
        assert_eq!(gate.len(), limits::REPLICA_HELD_MESSAGES_MAX);
    }
}
