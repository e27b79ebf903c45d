//! Unit tests of the failover state machines and the witness wire format, each a scenario with
//! explicit times: the witness's grants and refusals, the lease a primary can prove, the
//! standby's timer, a whole node's effects, and the frames on the wire.

use super::*;
use crate::limits;

const SECRET: &[u8] = b"witness secret 0123";

fn config() -> LeaseConfig {
    LeaseConfig::default()
}

fn lease_request(node: &str, epoch: u64, seq: u64) -> WitnessMessage {
    WitnessMessage::LeaseRequest {
        node: node.to_owned(),
        epoch,
        session: 7,
        seq,
    }
}

fn promote_request(node: &str, epoch: u64, seq: u64) -> WitnessMessage {
    WitnessMessage::PromoteRequest {
        node: node.to_owned(),
        epoch,
        session: 9,
        seq,
    }
}

fn release_request(node: &str, epoch: u64, seq: u64) -> WitnessMessage {
    WitnessMessage::LeaseRelease {
        node: node.to_owned(),
        epoch,
        session: 7,
        seq,
    }
}

fn handle(witness: &mut Witness, message: &WitnessMessage, now: u64) -> Vec<WitnessEffect> {
    let mut out = Vec::new();
    witness.handle(message, now, &mut out);
    out
}

/// The reply among the effects (there is always exactly one, last).
fn reply(effects: &[WitnessEffect]) -> &WitnessMessage {
    match effects.last() {
        Some(WitnessEffect::Reply(message)) => message,
        other => panic!("no reply: {other:?}"),
    }
}

fn refusal(effects: &[WitnessEffect]) -> Option<RefuseReason> {
    match reply(effects) {
        WitnessMessage::Refused { reason, .. } => Some(*reason),
        WitnessMessage::Granted { .. } => None,
        other => panic!("not an answer: {other:?}"),
    }
}

fn record(epoch: u64, primary: &str) -> WitnessRecord {
    WitnessRecord {
        epoch,
        primary: primary.to_owned(),
    }
}

/// A witness that started long ago at time 0 and knows `a` as the primary of epoch 3.
fn settled_witness() -> Witness {
    Witness::new(config(), Some(record(3, "a")), 0)
}

#[test]
fn the_witness_grants_and_renews_the_lease_of_the_current_primary_only() {
    let mut w = settled_witness();
    let effects = handle(&mut w, &lease_request("a", 3, 1), 10);
    assert_eq!(effects.len(), 1, "a renewal persists nothing");
    assert!(matches!(
        reply(&effects),
        WitnessMessage::Granted {
            kind: GrantKind::Lease,
            epoch: 3,
            seq: 1,
            lease_ms: 500,
            ..
        }
    ));
    let effects = handle(&mut w, &lease_request("b", 3, 1), 10);
    assert_eq!(refusal(&effects), Some(RefuseReason::NotHolder));
    let effects = handle(&mut w, &lease_request("a", 2, 2), 10);
    assert_eq!(refusal(&effects), Some(RefuseReason::StaleEpoch));
}

#[test]
fn promotion_waits_for_the_lease_to_expire_by_the_witness_clock_plus_the_margin() {
    let mut w = settled_witness();
    let start = 10_000;
    handle(&mut w, &lease_request("a", 3, 1), start);
    // The lease runs 500 ms from receipt; the margin is 10 % of it.
    for now in [start, start + 499, start + 500, start + 549] {
        let effects = handle(&mut w, &promote_request("b", 3, 1), now);
        assert_eq!(refusal(&effects), Some(RefuseReason::LeaseHeld), "at {now}");
    }
    let effects = handle(&mut w, &promote_request("b", 3, 2), start + 550);
    assert_eq!(effects[0], WitnessEffect::Persist(record(4, "b")));
    assert!(matches!(
        reply(&effects),
        WitnessMessage::Granted {
            kind: GrantKind::Promotion,
            epoch: 4,
            seq: 2,
            ..
        }
    ));
    // The old primary is refused from now on, and told the new epoch.
    let effects = handle(&mut w, &lease_request("a", 3, 2), start + 551);
    assert!(matches!(
        reply(&effects),
        WitnessMessage::Refused {
            reason: RefuseReason::StaleEpoch,
            epoch: 4,
            ..
        }
    ));
}

#[test]
fn a_restarted_witness_lets_nobody_take_over_for_a_whole_lease() {
    let mut w = Witness::new(config(), Some(record(3, "a")), 1_000);
    let effects = handle(&mut w, &promote_request("b", 3, 1), 1_549);
    assert_eq!(refusal(&effects), Some(RefuseReason::LeaseHeld));
    // The known primary may renew at once.
    let effects = handle(&mut w, &lease_request("a", 3, 1), 1_001);
    assert_eq!(refusal(&effects), None);
    let mut w = Witness::new(config(), Some(record(3, "a")), 1_000);
    let effects = handle(&mut w, &promote_request("b", 3, 2), 1_550);
    assert_eq!(refusal(&effects), None);
}

#[test]
fn promotion_eligibility() {
    let mut w = settled_witness();
    let at = 100_000;
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 2, 1), at)),
        Some(RefuseReason::StaleEpoch)
    );
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 4, 1), at)),
        Some(RefuseReason::NotEligible)
    );
    let mut fresh = Witness::new(config(), None, 0);
    assert_eq!(
        refusal(&handle(&mut fresh, &promote_request("b", 1, 1), at)),
        Some(RefuseReason::NotEligible)
    );
    // A node that holds no complete epoch is never promoted, even by the lost-answer rule.
    let mut w = Witness::new(config(), Some(record(1, "b")), 0);
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 0, 1), at)),
        Some(RefuseReason::NotEligible)
    );
}

#[test]
fn a_lost_promotion_answer_is_granted_again_without_a_new_epoch() {
    let mut w = settled_witness();
    let first = handle(&mut w, &promote_request("b", 3, 1), 100_000);
    assert_eq!(first[0], WitnessEffect::Persist(record(4, "b")));
    let again = handle(&mut w, &promote_request("b", 3, 2), 100_010);
    assert_eq!(again.len(), 1, "nothing new to persist");
    assert!(matches!(
        reply(&again),
        WitnessMessage::Granted {
            kind: GrantKind::Promotion,
            epoch: 4,
            seq: 2,
            ..
        }
    ));
    // But not to the other node.
    let other = handle(&mut w, &promote_request("a", 3, 1), 100_010);
    assert_eq!(refusal(&other), Some(RefuseReason::StaleEpoch));
}

#[test]
fn the_first_lease_of_a_cluster_waits_for_the_quiet_period_and_is_persisted() {
    let mut w = Witness::new(config(), None, 0);
    assert_eq!(
        refusal(&handle(&mut w, &lease_request("a", 1, 1), 100)),
        Some(RefuseReason::LeaseHeld)
    );
    let effects = handle(&mut w, &lease_request("a", 1, 2), 550);
    assert_eq!(effects[0], WitnessEffect::Persist(record(1, "a")));
    assert_eq!(refusal(&effects), None);
    assert_eq!(
        refusal(&handle(&mut w, &lease_request("b", 1, 1), 560)),
        Some(RefuseReason::NotHolder)
    );
}

fn granted(node: &str, epoch: u64, session: u64, seq: u64) -> WitnessMessage {
    WitnessMessage::Granted {
        node: node.to_owned(),
        kind: GrantKind::Lease,
        epoch,
        session,
        seq,
        lease_ms: 500,
    }
}

#[test]
fn a_lease_is_proven_from_the_send_time_less_the_margin() {
    let mut holder = LeaseHolder::new(config(), "a".to_owned(), 3, 7, 1);
    let Some(WitnessMessage::LeaseRequest { seq, .. }) = holder.poll(1_000) else {
        panic!("a first request is due at once");
    };
    assert!(!holder.may_acknowledge(1_000), "nothing granted yet");
    assert!(holder.poll(1_099).is_none(), "renewals every 100 ms");
    // Answered late: still counted from the send time.
    let event = holder.on_message(&granted("a", 3, 7, seq));
    assert_eq!(event, LeaseEvent::Extended { valid_until: 1_450 });
    assert!(holder.may_acknowledge(1_449));
    assert!(!holder.may_acknowledge(1_450));
    // A repeated or unknown answer changes nothing.
    assert_eq!(
        holder.on_message(&granted("a", 3, 7, seq)),
        LeaseEvent::Ignored
    );
    assert_eq!(
        holder.on_message(&granted("a", 3, 8, 2)),
        LeaseEvent::Ignored
    );
    assert_eq!(
        holder.on_message(&granted("b", 3, 7, 2)),
        LeaseEvent::Ignored
    );
    assert_eq!(
        holder.on_message(&granted("a", 4, 7, 2)),
        LeaseEvent::Ignored
    );
}

#[test]
fn only_the_last_requests_are_remembered() {
    let mut holder = LeaseHolder::new(config(), "a".to_owned(), 3, 7, 1);
    let sent = limits::FAILOVER_PENDING_MAX as u64 + 1;
    for n in 0..sent {
        assert!(holder.poll(n * 100).is_some());
    }
    assert_eq!(
        holder.on_message(&granted("a", 3, 7, 1)),
        LeaseEvent::Ignored
    );
    assert!(matches!(
        holder.on_message(&granted("a", 3, 7, sent)),
        LeaseEvent::Extended { .. }
    ));
}

#[test]
fn a_stale_epoch_fences_the_holder_for_good() {
    let mut holder = LeaseHolder::new(config(), "a".to_owned(), 3, 7, 1);
    holder.poll(0);
    holder.on_message(&granted("a", 3, 7, 1));
    assert!(holder.may_acknowledge(100));
    let refused = WitnessMessage::Refused {
        node: "a".to_owned(),
        reason: RefuseReason::StaleEpoch,
        epoch: 4,
        session: 7,
        seq: 2,
    };
    assert_eq!(holder.on_message(&refused), LeaseEvent::Fenced { epoch: 4 });
    assert!(!holder.may_acknowledge(100));
    assert!(holder.poll(1_000).is_none());
}

#[test]
fn the_failover_timer_asks_after_silence_and_repeats() {
    let mut timer = FailoverTimer::new(config(), 1_000);
    assert!(!timer.poll(1_499));
    assert!(timer.poll(1_500));
    assert!(!timer.poll(1_599));
    assert!(timer.poll(1_600));
    timer.heard(1_650);
    assert!(!timer.poll(2_149));
    assert!(timer.poll(2_150));
}

#[test]
fn config_validation() {
    assert_eq!(config().validate(), Ok(()));
    let bad = [
        LeaseConfig {
            lease_ms: 1,
            ..config()
        },
        LeaseConfig {
            renew_ms: 300,
            ..config()
        },
        LeaseConfig {
            drift_margin_pct: 80,
            ..config()
        },
        LeaseConfig {
            failover_after_ms: 0,
            ..config()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
}

/// Delivers every `Send` of `effects` from a node to the witness at `now`, and the answers
/// back; returns the node's effects from the answers.
fn exchange(
    node: &mut NodeFailover,
    witness: &mut Witness,
    effects: Vec<NodeEffect>,
    now: u64,
) -> Vec<NodeEffect> {
    let mut back = Vec::new();
    for effect in effects {
        if let NodeEffect::Send(message) = effect {
            for answer in handle(witness, &message, now) {
                if let WitnessEffect::Reply(answer) = answer {
                    node.on_witness(&answer, now, &mut back);
                }
            }
        }
    }
    back
}

#[test]
fn a_partition_between_the_nodes_alone_never_promotes() {
    let mut witness = Witness::new(config(), Some(record(3, "a")), 0);
    let mut a = NodeFailover::new(config(), "a".to_owned(), NodeRole::Primary, 3, 1, 0);
    let mut b = NodeFailover::new(config(), "b".to_owned(), NodeRole::Standby, 3, 2, 0);
    // The link between them is cut from the start: b never hears a; both reach the witness.
    let mut asked = 0;
    for now in (0..10_000).step_by(10) {
        let mut out = Vec::new();
        a.tick(now, &mut out);
        exchange(&mut a, &mut witness, out, now);
        let mut out = Vec::new();
        b.tick(now, &mut out);
        asked += out.len();
        let back = exchange(&mut b, &mut witness, out, now);
        assert!(back.is_empty(), "{back:?}");
        assert_eq!(b.role(), NodeRole::Standby);
        assert!(
            now < 600 || a.may_acknowledge(now),
            "a lost its lease at {now}"
        );
    }
    assert!(asked > 50, "b asked {asked} times");
}

#[test]
fn a_silent_primary_is_replaced_after_its_lease_and_stops_acknowledging_first() {
    let mut witness = Witness::new(config(), Some(record(3, "a")), 0);
    let mut a = NodeFailover::new(config(), "a".to_owned(), NodeRole::Primary, 3, 1, 0);
    let mut b = NodeFailover::new(config(), "b".to_owned(), NodeRole::Standby, 3, 2, 0);
    let mut out = Vec::new();
    a.tick(1_000, &mut out);
    let back = exchange(&mut a, &mut witness, out, 1_000);
    assert!(back.contains(&NodeEffect::ResumeAcknowledging));
    // a is cut off from everyone after 1000; b stops hearing it.
    b.heard_primary(1_000);
    let mut promoted_at = None;
    for now in (1_010..3_000).step_by(10) {
        let mut out = Vec::new();
        b.tick(now, &mut out);
        let back = exchange(&mut b, &mut witness, out, now);
        if back.contains(&NodeEffect::Promote { epoch: 4 }) {
            assert_eq!(back[0], NodeEffect::PersistEpoch(4));
            promoted_at = Some(now);
            break;
        }
    }
    let promoted_at = promoted_at.expect("b was promoted");
    assert!((1_550..=1_700).contains(&promoted_at), "{promoted_at}");
    assert!(!a.may_acknowledge(1_450), "a's proof ends before");
    assert!(b.may_acknowledge(promoted_at));
    assert_eq!((b.role(), b.epoch()), (NodeRole::Primary, 4));
    // a comes back: it learns the new epoch and steps down.
    let mut out = Vec::new();
    a.tick(3_000, &mut out);
    assert!(out.contains(&NodeEffect::StopAcknowledging));
    let back = exchange(&mut a, &mut witness, out, 3_000);
    assert_eq!(back, vec![NodeEffect::StepDown { epoch: 4 }]);
    assert_eq!(a.role(), NodeRole::Standby);
}

#[test]
fn a_standby_claims_an_epoch_only_once_caught_up() {
    let mut b = NodeFailover::new(config(), "b".to_owned(), NodeRole::Standby, 0, 2, 0);
    let mut out = Vec::new();
    b.tick(600, &mut out);
    assert!(matches!(
        &out[..],
        [NodeEffect::Send(WitnessMessage::PromoteRequest {
            epoch: 0,
            ..
        })]
    ));
    b.caught_up(5);
    assert_eq!(b.epoch(), 5);
    let mut out = Vec::new();
    b.tick(700, &mut out);
    assert!(matches!(
        &out[..],
        [NodeEffect::Send(WitnessMessage::PromoteRequest {
            epoch: 5,
            ..
        })]
    ));
}

fn every_message() -> Vec<WitnessMessage> {
    vec![
        lease_request("node-a", 3, 1),
        promote_request("", u64::MAX, 0),
        WitnessMessage::Granted {
            node: "é".repeat(limits::REPL_NAME_BYTES_MAX / 2),
            kind: GrantKind::Promotion,
            epoch: 4,
            session: 5,
            seq: 6,
            lease_ms: 500,
        },
        WitnessMessage::Refused {
            node: "b".to_owned(),
            reason: RefuseReason::LeaseHeld,
            epoch: 4,
            session: 5,
            seq: 6,
        },
        release_request("a", 4, 9),
    ]
}

#[test]
fn every_message_round_trips_and_frames_follow_each_other() {
    let mut bytes = Vec::new();
    for message in every_message() {
        encode(SECRET, &message, &mut bytes);
    }
    let mut rest = &bytes[..];
    for message in every_message() {
        let (decoded, used) = decode(SECRET, rest).unwrap().unwrap();
        assert_eq!(decoded, message);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
}

#[test]
fn frames_have_the_documented_layout() {
    let mut bytes = Vec::new();
    encode(SECRET, &lease_request("ab", 3, 1), &mut bytes);
    let len = 1 + 2 + 2 + 3 * 8 + 32;
    assert_eq!(bytes.len(), 4 + len);
    assert_eq!(bytes[..4], (len as u32).to_le_bytes());
    assert_eq!(bytes[4..9], [1, 2, 0, b'a', b'b']);
    assert_eq!(bytes[9..17], 3u64.to_le_bytes());
    let mac = crate::replication::handshake::hmac(SECRET, &[b"ringcast-witness", &bytes[4..33]]);
    assert_eq!(bytes[33..], mac);
}

#[test]
fn a_frame_with_a_wrong_secret_or_a_bad_length_is_refused() {
    let mut bytes = Vec::new();
    encode(SECRET, &lease_request("a", 3, 1), &mut bytes);
    assert_eq!(decode(b"another secret!!", &bytes), Err(WireError::BadMac));
    for n in 0..bytes.len() {
        assert_eq!(decode(SECRET, &bytes[..n]), Ok(None), "a cut at {n} waits");
    }
    let mut long = bytes.clone();
    long[..4].copy_from_slice(&(limits::WITNESS_FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
    assert!(matches!(
        decode(SECRET, &long[..4]),
        Err(WireError::BadLength(_))
    ));
    assert!(matches!(
        decode(SECRET, &[0; 4]),
        Err(WireError::BadLength(0))
    ));
}

#[test]
fn a_valid_mac_over_a_bad_payload_is_still_an_error() {
    let body = [9u8, 0, 0];
    let mut frame = body.to_vec();
    frame.extend_from_slice(&[0; 24]);
    frame.extend_from_slice(&crate::replication::handshake::hmac(
        SECRET,
        &[b"ringcast-witness", &frame],
    ));
    let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&frame);
    assert_eq!(decode(SECRET, &bytes), Err(WireError::UnknownType(9)));
}

#[test]
fn a_node_never_reuses_a_sequence_number_after_stepping_down() {
    let mut a = NodeFailover::new(config(), "a".to_owned(), NodeRole::Primary, 3, 1, 0);
    for now in [0, 100, 200] {
        a.tick(now, &mut Vec::new());
    }
    let mut out = Vec::new();
    a.saw_epoch(4, 250, &mut out);
    assert_eq!(out, vec![NodeEffect::StepDown { epoch: 4 }]);
    assert_eq!(a.role(), NodeRole::Standby);
    let mut out = Vec::new();
    a.tick(800, &mut out);
    assert!(
        matches!(
            &out[..],
            [NodeEffect::Send(WitnessMessage::PromoteRequest {
                seq: 4,
                ..
            })]
        ),
        "{out:?}"
    );
}

#[test]
fn a_standby_ignores_grants_that_are_not_its_promotion() {
    let mut b = NodeFailover::new(config(), "b".to_owned(), NodeRole::Standby, 3, 2, 0);
    let mut out = Vec::new();
    b.tick(600, &mut out);
    let promotion = |session, seq, epoch| WitnessMessage::Granted {
        node: "b".to_owned(),
        kind: GrantKind::Promotion,
        epoch,
        session,
        seq,
        lease_ms: 500,
    };
    let mut back = Vec::new();
    b.on_witness(&promotion(99, 1, 4), 610, &mut back);
    b.on_witness(&promotion(2, 7, 4), 610, &mut back);
    b.on_witness(&promotion(2, 1, 3), 610, &mut back);
    b.on_witness(&granted("b", 4, 2, 1), 610, &mut back);
    assert!(back.is_empty(), "{back:?}");
    b.on_witness(&promotion(2, 1, 4), 610, &mut back);
    assert_eq!(
        back[..2],
        [
            NodeEffect::PersistEpoch(4),
            NodeEffect::Promote { epoch: 4 }
        ]
    );
    // The lease counts from the request's send time (600): 450 ms.
    assert!(b.may_acknowledge(1_049));
    assert!(!b.may_acknowledge(1_050));
}

#[test]
fn a_node_publishes_the_end_of_its_proven_lease_and_none_once_fenced() {
    let mut node = NodeFailover::new(config(), "a".into(), NodeRole::Primary, 1, 7, 1_000);
    assert_eq!(node.lease_valid_until(), None, "no grant yet");
    let mut out = Vec::new();
    node.tick(1_000, &mut out);
    assert!(matches!(
        out[0],
        NodeEffect::Send(WitnessMessage::LeaseRequest { seq: 1, .. })
    ));
    out.clear();
    node.on_witness(&granted("a", 1, 7, 1), 1_010, &mut out);
    let proven = 1_000 + config().proven_ms(config().lease_ms);
    assert_eq!(
        node.lease_valid_until(),
        Some(proven),
        "from the send time, less the margin"
    );
    assert!(node.may_acknowledge(proven - 1) && !node.may_acknowledge(proven));
    node.saw_epoch(2, 1_020, &mut out);
    assert_eq!(node.lease_valid_until(), None, "stepped down");
    let standby = NodeFailover::new(config(), "b".into(), NodeRole::Standby, 0, 9, 1_000);
    assert_eq!(standby.lease_valid_until(), None);
}

/// Planned switchover at the witness: only the holder releases, and only its own epoch; once
/// released, the standby is promoted at once (no wait for the lease's expiry), the holder
/// gets no lease of that epoch again, and a repeat is answered the same.
#[test]
fn a_released_lease_lets_the_standby_take_over_at_once() {
    let mut w = settled_witness();
    assert_eq!(
        refusal(&handle(&mut w, &lease_request("a", 3, 1), 1_000)),
        None
    );
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 3, 1), 1_010)),
        Some(RefuseReason::LeaseHeld)
    );
    assert_eq!(
        refusal(&handle(&mut w, &release_request("b", 3, 2), 1_020)),
        Some(RefuseReason::NotHolder),
        "only the holder gives the lease back"
    );
    assert_eq!(
        refusal(&handle(&mut w, &release_request("a", 2, 2), 1_020)),
        Some(RefuseReason::StaleEpoch)
    );
    assert_eq!(
        refusal(&handle(&mut w, &release_request("a", 4, 2), 1_020)),
        Some(RefuseReason::NotEligible)
    );
    let effects = handle(&mut w, &release_request("a", 3, 3), 1_030);
    assert_eq!(effects.len(), 1, "a release persists nothing");
    assert!(matches!(
        reply(&effects),
        WitnessMessage::Granted {
            kind: GrantKind::Released,
            epoch: 3,
            seq: 3,
            lease_ms: 0,
            ..
        }
    ));
    assert_eq!(
        refusal(&handle(&mut w, &release_request("a", 3, 4), 1_031)),
        None
    );
    // A renewal sent before the release and delivered after it: refused, never granted.
    assert_eq!(
        refusal(&handle(&mut w, &lease_request("a", 3, 2), 1_032)),
        Some(RefuseReason::Released)
    );
    let effects = handle(&mut w, &promote_request("b", 3, 2), 1_040);
    assert_eq!(effects[0], WitnessEffect::Persist(record(4, "b")));
    assert!(matches!(
        reply(&effects),
        WitnessMessage::Granted {
            kind: GrantKind::Promotion,
            epoch: 4,
            ..
        }
    ));
    // The new primary's lease is a normal one: a takeover back waits for it again.
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("a", 4, 5), 1_050)),
        Some(RefuseReason::LeaseHeld)
    );
}

/// The release is not persisted: a restarted witness forgets it and falls back to its quiet
/// period (only slower), and a lost-answer re-grant never hands the releaser a second lease.
#[test]
fn a_forgotten_release_only_slows_the_takeover() {
    let mut w = settled_witness();
    handle(&mut w, &release_request("a", 3, 1), 1_000);
    let mut w = Witness::new(config(), w.record().cloned(), 1_100);
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 3, 1), 1_110)),
        Some(RefuseReason::LeaseHeld)
    );
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 3, 2), 1_660)),
        None
    );
    // b, granted epoch 4, releases it; its promotion request repeated is no second lease.
    handle(&mut w, &release_request("b", 4, 3), 1_700);
    assert_eq!(
        refusal(&handle(&mut w, &promote_request("b", 3, 4), 1_710)),
        Some(RefuseReason::Released)
    );
}

/// Planned switchover across the two nodes: the primary stops acknowledging before its
/// release goes out, keeps repeating it until confirmed, ignores late grants, and the
/// standby that took the handover is promoted at once.
#[test]
fn a_switchover_releases_then_promotes_the_standby_at_once() {
    let mut witness = Witness::new(config(), Some(record(3, "a")), 0);
    let mut a = NodeFailover::new(config(), "a".to_owned(), NodeRole::Primary, 3, 1, 0);
    let mut b = NodeFailover::new(config(), "b".to_owned(), NodeRole::Standby, 3, 2, 0);
    b.caught_up(3);
    let mut out = Vec::new();
    a.tick(1_000, &mut out);
    let late_grant = match &out[..] {
        [NodeEffect::Send(request)] => handle(&mut witness, request, 1_000),
        other => panic!("{other:?}"),
    };
    exchange(&mut a, &mut witness, out, 1_000);
    assert!(a.may_acknowledge(1_010));
    b.heard_primary(1_010);
    let mut out = Vec::new();
    assert!(a.release(1_020, &mut out));
    assert_eq!(
        out[0],
        NodeEffect::StopAcknowledging,
        "before the release is sent"
    );
    assert!(matches!(
        &out[1..],
        [NodeEffect::Send(WitnessMessage::LeaseRelease {
            epoch: 3,
            ..
        })]
    ));
    assert!(!a.may_acknowledge(1_020));
    assert_eq!(a.lease_valid_until(), None);
    assert!(!a.release(1_021, &mut Vec::new()), "once");
    // The release is lost: it is repeated after renew_ms, not before.
    let mut again = Vec::new();
    a.tick(1_050, &mut again);
    assert!(again.is_empty(), "{again:?}");
    a.tick(1_120, &mut again);
    assert!(matches!(
        &again[..],
        [NodeEffect::Send(WitnessMessage::LeaseRelease { .. })]
    ));
    // A grant of a renewal sent before the release proves nothing now.
    for effect in late_grant {
        if let WitnessEffect::Reply(answer) = effect {
            a.on_witness(&answer, 1_121, &mut Vec::new());
        }
    }
    assert!(!a.may_acknowledge(1_121));
    let back = exchange(&mut a, &mut witness, again, 1_125);
    assert_eq!(back, vec![NodeEffect::Released { epoch: 3 }]);
    // b took the handover: it asks now, although it heard a 115 ms ago.
    let mut out = Vec::new();
    assert!(
        !b.handover(2, 1_130, &mut Vec::new()),
        "not the epoch it holds"
    );
    assert!(b.handover(3, 1_130, &mut out));
    let back = exchange(&mut b, &mut witness, out, 1_130);
    assert_eq!(
        back[..2],
        [
            NodeEffect::PersistEpoch(4),
            NodeEffect::Promote { epoch: 4 }
        ]
    );
    assert!(b.may_acknowledge(1_131));
    // a learns the new epoch and steps down.
    let mut out = Vec::new();
    a.saw_epoch(4, 1_140, &mut out);
    assert_eq!(out, vec![NodeEffect::StepDown { epoch: 4 }]);
}

/// A renewal sent before the release and refused after it (`Released`) confirms the release;
/// it does not fence the node (which would step it down before the switchover's handover).
#[test]
fn a_late_refusal_as_released_confirms_the_release() {
    let mut holder = LeaseHolder::new(config(), "a".to_owned(), 3, 7, 1);
    let _renewal = holder.poll(1_000);
    assert!(holder.release());
    assert!(matches!(
        holder.poll(1_001),
        Some(WitnessMessage::LeaseRelease { seq: 2, .. })
    ));
    let refused = WitnessMessage::Refused {
        node: "a".to_owned(),
        reason: RefuseReason::Released,
        epoch: 3,
        session: 7,
        seq: 1,
    };
    assert_eq!(
        holder.on_message(&refused),
        LeaseEvent::Released { epoch: 3 }
    );
    assert!(!holder.is_fenced());
    assert_eq!(
        holder.on_message(&refused),
        LeaseEvent::Ignored,
        "said once"
    );
    assert_eq!(holder.poll(5_000), None, "nothing more to send");
}

#[test]
fn each_refuse_reason_has_its_own_counter_slot_and_label() {
    let mut labels = std::collections::HashSet::new();
    for (position, reason) in RefuseReason::ALL.into_iter().enumerate() {
        assert_eq!(reason.index(), position, "{reason:?}");
        assert_eq!(RefuseReason::from_u8(reason as u8), Some(reason));
        assert!(
            labels.insert(reason.label()),
            "{reason:?}: label used twice"
        );
    }
}
