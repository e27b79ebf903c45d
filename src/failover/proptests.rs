//! Property tests of the witness wire format (proptest: a failure prints the minimal case and
//! its seed). What they prove: any message round-trips, also behind another frame; arbitrary
//! bytes never panic and never yield a message without the secret; any single flipped bit
//! makes a frame fail or wait for more bytes, never decode to a message.

use proptest::prelude::*;

use super::*;
use crate::limits;

const SECRET: &[u8] = b"property secret!";

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() <= limits::REPL_NAME_BYTES_MAX {
                text.push(c);
            }
        }
        text
    })
}

fn message() -> impl Strategy<Value = WitnessMessage> {
    let numbers = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    (name(), 0u8..5, numbers, 0usize..5).prop_map(
        |(node, shape, (epoch, session, seq, lease_ms), tag)| match shape {
            0 => WitnessMessage::LeaseRequest {
                node,
                epoch,
                session,
                seq,
            },
            1 => WitnessMessage::PromoteRequest {
                node,
                epoch,
                session,
                seq,
            },
            4 => WitnessMessage::LeaseRelease {
                node,
                epoch,
                session,
                seq,
            },
            2 => WitnessMessage::Granted {
                node,
                kind: [GrantKind::Lease, GrantKind::Promotion, GrantKind::Released][tag % 3],
                epoch,
                session,
                seq,
                lease_ms,
            },
            _ => WitnessMessage::Refused {
                node,
                reason: RefuseReason::ALL[tag],
                epoch,
                session,
                seq,
            },
        },
    )
}

proptest! {
    #[test]
    fn messages_round_trip(first in message(), second in message()) {
        let mut bytes = Vec::new();
        encode(SECRET, &first, &mut bytes);
        let first_len = bytes.len();
        encode(SECRET, &second, &mut bytes);
        let (decoded, used) = decode(SECRET, &bytes).unwrap().unwrap();
        prop_assert_eq!(decoded, first);
        prop_assert_eq!(used, first_len);
        let (decoded, used) = decode(SECRET, &bytes[first_len..]).unwrap().unwrap();
        prop_assert_eq!(decoded, second);
        prop_assert_eq!(first_len + used, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_pass(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(Some((message, used))) = decode(SECRET, &bytes) {
            // Only a frame with the right MAC passes, which random bytes do not forge.
            let mut again = Vec::new();
            encode(SECRET, &message, &mut again);
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
    }

    #[test]
    fn a_flipped_bit_never_decodes(message in message(), bit in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        encode(SECRET, &message, &mut bytes);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!matches!(decode(SECRET, &bytes), Ok(Some(_))));
    }
}

/// One step of a witness's life: a request from one of three nodes after `dt_ms`.
#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    node: usize,
    promote: bool,
    /// A `LeaseRelease` instead of the request (planned switchover).
    release: bool,
    epoch: u64,
    restart: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let epoch = prop_oneof![0u64..6, Just(u64::MAX - 1), Just(u64::MAX)];
    (
        0u64..400,
        0usize..3,
        any::<bool>(),
        epoch,
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(dt_ms, node, promote, epoch, restart, release)| Step {
            dt_ms,
            node,
            promote,
            release,
            epoch,
            restart,
        })
}

const NODES: [&str; 3] = ["a", "b", "c"];

proptest! {
    /// Whatever nodes ask and whenever, the witness never panics, never lowers its epoch,
    /// persists every change of its record before the answer that reveals it, grants only to
    /// the record's primary in the record's epoch, and hands the record to another node only
    /// once every lease it granted before (and any it may have granted before a restart) has
    /// expired by its clock plus the margin, or its holder released it (and then never grants
    /// that holder a lease of that epoch again).
    #[test]
    fn the_witness_keeps_its_rules(steps in prop::collection::vec(step(), 1..120)) {
        let config = LeaseConfig::default();
        let wait = config.lease_ms + config.margin_ms(config.lease_ms);
        let mut now = 1_000;
        let mut persisted: Option<WitnessRecord> = None;
        let mut witness = Witness::new(config, None, now);
        // No other node may take over before this (a restart, or the last grant plus lease).
        let mut busy_until = now + wait;
        // The epoch whose lease was released (forgotten by a restart, like the witness does).
        let mut released: Option<u64> = None;
        for step in steps {
            now += step.dt_ms;
            if step.restart {
                witness = Witness::new(config, persisted.clone(), now);
                busy_until = busy_until.max(now + wait);
                released = None;
            }
            let node = NODES[step.node].to_owned();
            let (session, seq) = (1, 1);
            let message = if step.release {
                WitnessMessage::LeaseRelease { node, epoch: step.epoch, session, seq }
            } else if step.promote {
                WitnessMessage::PromoteRequest { node, epoch: step.epoch, session, seq }
            } else {
                WitnessMessage::LeaseRequest { node, epoch: step.epoch, session, seq }
            };
            let before = witness.record().cloned();
            let mut out = Vec::new();
            witness.handle(&message, now, &mut out);
            let after = witness.record().cloned();
            prop_assert!(matches!(out.last(), Some(WitnessEffect::Reply(_))));
            if before != after {
                let after = after.clone().expect("a record is never removed");
                prop_assert!(before.as_ref().is_none_or(|b| after.epoch > b.epoch));
                prop_assert_eq!(&out[0], &WitnessEffect::Persist(after.clone()));
                persisted = Some(after.clone());
                let changed_hands = before.as_ref().is_none_or(|b| b.primary != after.primary);
                if changed_hands {
                    prop_assert!(now >= busy_until, "taken over at {} before {}", now, busy_until);
                }
            } else {
                prop_assert_eq!(out.len(), 1);
            }
            if let Some(WitnessEffect::Reply(WitnessMessage::Granted { node, epoch, kind, .. })) = out.last() {
                let record = after.expect("grants only with a record");
                prop_assert_eq!(node, &record.primary);
                prop_assert_eq!(*epoch, record.epoch);
                if *kind == GrantKind::Released {
                    // Given back by its holder: another node may take over at once.
                    released = Some(*epoch);
                    busy_until = now;
                } else {
                    prop_assert_ne!(released, Some(*epoch), "a released lease granted again");
                    busy_until = busy_until.max(now + wait);
                }
            }
        }
    }
}
