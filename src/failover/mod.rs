//! Automatic failover with a witness (issue 14), the pure part: the witness's state machine
//! (`Witness`), a node's (`NodeFailover`, built from `LeaseHolder` for the primary and
//! `FailoverTimer` for the standby), their messages (`WitnessMessage`) and wire format with an
//! HMAC (`wire`), and a deterministic simulation that checks the safety properties over
//! thousands of seeded runs (`sim`, tests only). It must not do IO, read a clock, spawn threads
//! or draw random numbers: a driver thread owns the socket, the clock (monotonic milliseconds,
//! never the wall clock), the disk and the randomness, and passes messages and `now` in.
//!
//! # Using it from a driver thread
//!
//! ```text
//! witness thread:  Witness::new(config, persisted record, now)
//!                  on each datagram: wire::decode -> Witness::handle(msg, now, &mut effects)
//!                  effects in order: Persist(record) -> write + fsync; on failure stop
//!                                    Reply(msg)      -> wire::encode, send to the asker
//! node thread:     NodeFailover::new(config, node id, role, persisted epoch, random session, now)
//!                  every tick (<= renew_ms / 2):   tick(now, &mut effects)
//!                  on a witness datagram:          on_witness(msg, now, &mut effects)
//!                  on a heartbeat from the primary: heard_primary(now)
//!                  on any higher epoch:            saw_epoch(epoch, now, &mut effects)
//!                  standby reached lag 0 in epoch: caught_up(epoch)
//!                  before each acknowledgement:   may_acknowledge(now)
//!                  effects in order: Send, PersistEpoch (durable before the next one),
//!                                    Promote, StopAcknowledging, ResumeAcknowledging, StepDown
//! ```
//!
//! # Why it is safe
//!
//! * **One primary per epoch.** Only the witness creates epochs (a promotion), and it persists
//!   each one with its primary before it says so; a node that restarts learns nothing from
//!   its own memory of a lease.
//! * **No overlapping acknowledgements.** A primary acknowledges only while it can prove a
//!   lease: from the send time of a granted request, `lease_ms` less the drift margin, on its
//!   own clock. The witness counts the same lease from when it received the request and lets
//!   another node take over only after that plus the margin, on its own clock, and after a
//!   restart only after a whole lease and margin. If clock rates differ by less than the
//!   margin, the old primary's proof has ended in real time before the new one is granted.
//!   A partition between the two nodes alone therefore never promotes: the primary keeps
//!   renewing.
//! * **No acknowledged record lost.** A primary in `ack = "replica"` acknowledges a record
//!   only once the standby has it; a standby claims an epoch (and so can be promoted from it)
//!   only after its log reached the primary's end in that epoch (`caught_up`), so a promoted
//!   node holds every record acknowledged before. The witness promotes only from its current
//!   epoch (`StaleEpoch` otherwise).
//!
//! The simulation (`sim.rs`) checks these as invariants after every step, under crashes,
//! partitions, loss, delay and reordering, pauses, clock drift within the margin and disk
//! faults, and shows that each check fails when a rule is broken on purpose: a witness that
//! skips the wait for expiry, a primary acknowledging without its lease or before the standby
//! has the record, a standby claiming an epoch before it caught up.

mod lease;
mod message;
mod node;
pub mod wire;
mod witness;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use lease::{FailoverTimer, LeaseConfig, LeaseEvent, LeaseHolder, Pending};
pub use message::{GrantKind, RefuseReason, WitnessMessage};
pub use node::{NodeEffect, NodeFailover, NodeRole};
pub use wire::{WireError, decode, encode};
pub use witness::{Witness, WitnessEffect, WitnessRecord};
