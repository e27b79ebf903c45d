//! Example-based tests of the replication protocol: one round trip per message, the decoder's
//! refusals (lengths, types, payloads, its buffer bound), `split_records` on good and bad
//! batches, the MACs both ways, `check_hello` and `check_welcome` code by code, and the table of
//! `plan_stream` cases (fresh, caught up, behind, behind retention, divergent old primary,
//! unknown epoch). The property tests are in `proptests.rs`.

use bytes::Bytes;

use super::*;
use crate::limits;
use crate::wal::record::{self, Record};

const SECRET: &[u8] = b"replication secret";
const NS: Nonce = [1; 16];
const NP: Nonce = [2; 16];

/// Encoded WAL heartbeat records with LSNs `lsns`, all in `epoch`.
pub(super) fn records(epoch: u64, lsns: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for lsn in lsns {
        record::encode(
            &Record::<&str>::Heartbeat { unix_ms: lsn * 7 },
            epoch,
            lsn,
            &mut out,
        );
    }
    out
}

fn position(name: &str, last_lsn: u64, last_epoch: u64) -> StreamPosition {
    StreamPosition {
        name: name.into(),
        last_lsn,
        last_epoch,
    }
}

fn hello() -> Hello {
    Hello {
        cluster: "prod".into(),
        node_id: "b".into(),
        version: "0.1.0".into(),
        wal_format_min: record::FORMAT,
        wal_format_max: record::FORMAT,
        epoch: 3,
        role: Role::Standby,
        streams: vec![position("core-0", 10, 3), position("webhooks", 4, 2)],
        nonce: NS,
    }
}

fn local() -> LocalNode {
    LocalNode {
        cluster: "prod".into(),
        node_id: "a".into(),
        role: Role::Primary,
        epoch: 3,
        streams: vec!["webhooks".into(), "core-0".into()],
    }
}

fn plan(name: &str, mode: StreamMode, truncate_after: Option<u64>, from_lsn: u64) -> StreamPlan {
    StreamPlan {
        name: name.into(),
        mode,
        truncate_after,
        from_lsn,
    }
}

fn welcome(epoch: u64) -> Welcome {
    Welcome {
        node_id: "a".into(),
        epoch,
        wal_format: record::FORMAT,
        streams: vec![
            plan("webhooks", StreamMode::Partial, None, 5),
            plan("core-0", StreamMode::Partial, None, 11),
        ],
        nonce: NP,
        mac: welcome_mac(SECRET, &NS, &NP, "prod", epoch),
    }
}

fn one_of_each() -> Vec<Message> {
    vec![
        Message::Hello(hello()),
        Message::Welcome(welcome(3)),
        Message::Auth {
            mac: auth_mac(SECRET, &NS, &NP, "prod"),
        },
        Message::Refuse {
            code: RefuseCode::HigherEpoch,
            reason: "epoch 4 > 3".into(),
        },
        Message::Records {
            stream: 1,
            bytes: Bytes::from(records(3, 11..14)),
        },
        Message::Ack {
            stream: 1,
            received_lsn: 13,
            durable_lsn: 12,
        },
        Message::Heartbeat {
            epoch: 3,
            seq: 77,
            written: vec![13, 4],
        },
        Message::Promoted { epoch: 4 },
        Message::Handover {
            epoch: 3,
            written: vec![13, 4],
        },
    ]
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, ProtoError> {
    let mut decoder = Decoder::new();
    decoder.push(bytes)?;
    let mut messages = Vec::new();
    while let Some(message) = decoder.next()? {
        messages.push(message);
    }
    assert_eq!(decoder.buffered(), 0, "left over");
    Ok(messages)
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, &mut out);
    out
}

#[test]
fn every_message_round_trips() {
    let messages = one_of_each();
    assert_eq!(messages.len(), MessageType::ALL.len());
    let mut out = Vec::new();
    for message in &messages {
        encode(message, &mut out);
    }
    assert_eq!(decode_all(&out).unwrap(), messages);
}

#[test]
fn frames_have_the_documented_layout() {
    let bytes = encoded(&Message::Promoted { epoch: 0x0102 });
    assert_eq!(bytes, [9, 0, 0, 0, 8, 2, 1, 0, 0, 0, 0, 0, 0]);
    let bytes = encoded(&Message::Ack {
        stream: 2,
        received_lsn: 5,
        durable_lsn: 4,
    });
    assert_eq!(&bytes[..7], [19, 0, 0, 0, 6, 2, 0]);
    let records = records(1, 1..3);
    let bytes = encoded(&Message::Records {
        stream: 7,
        bytes: Bytes::from(records.clone()),
    });
    assert_eq!(
        bytes[..RECORDS_PREFIX_BYTES],
        records_prefix(7, records.len())
    );
    assert_eq!(bytes[RECORDS_PREFIX_BYTES..], records[..]);
}

#[test]
fn records_bytes_are_whole_and_checked() {
    let batch = records(3, 11..14);
    let messages = decode_all(&encoded(&Message::Records {
        stream: 0,
        bytes: Bytes::from(batch.clone()),
    }))
    .unwrap();
    let [Message::Records { bytes, .. }] = &messages[..] else {
        panic!("{messages:?}");
    };
    let split = split_records(bytes, 11).unwrap();
    assert_eq!(split.len(), 3);
    assert_eq!(
        split.iter().map(|(h, _)| h.lsn).collect::<Vec<_>>(),
        [11, 12, 13]
    );
    assert_eq!(split.last().unwrap().1.end, batch.len());
    assert_eq!(&bytes[split[1].1.clone()], &records(3, 12..13)[..]);
}

#[test]
fn bad_lengths_and_types_fail_before_the_frame_is_buffered() {
    let cases: [(&[u8], ProtoError); 5] = [
        (&[0, 0, 0, 0], ProtoError::BadLength { len: 0 }),
        (
            &[0xff, 0xff, 0xff, 0xff],
            ProtoError::BadLength { len: u32::MAX },
        ),
        (&[5, 0, 0, 0, 99], ProtoError::UnknownType(99)),
        (
            &[9, 0, 0, 0, MessageType::Auth as u8],
            ProtoError::BadLengthForType {
                message: "auth",
                len: 9,
            },
        ),
        (
            &[1, 0, 1, 0, MessageType::Heartbeat as u8],
            ProtoError::BadLengthForType {
                message: "heartbeat",
                len: 65537,
            },
        ),
    ];
    for (bytes, expected) in cases {
        let mut decoder = Decoder::new();
        decoder.push(bytes).unwrap();
        assert_eq!(decoder.next(), Err(expected.clone()), "{bytes:?}");
        // The error sticks: the connection is unusable.
        assert_eq!(decoder.push(&[1]), Err(expected.clone()));
        assert_eq!(decoder.next(), Err(expected));
    }
}

#[test]
fn bad_payloads_are_errors() {
    let bad = |mut bytes: Vec<u8>, edit: &dyn Fn(&mut Vec<u8>)| {
        edit(&mut bytes);
        let len = (bytes.len() - LENGTH_BYTES) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        match decode_all(&bytes) {
            Err(ProtoError::BadPayload { what, .. }) => what,
            other => panic!("{other:?}"),
        }
    };
    let hello = encoded(&Message::Hello(hello()));
    assert_eq!(
        bad(hello.clone(), &|b| b.push(0)),
        "bytes after the message"
    );
    assert_eq!(
        bad(hello.clone(), &|b| b.truncate(b.len() - 1)),
        "truncated"
    );
    // The cluster name "prod" made invalid UTF-8.
    assert_eq!(bad(hello.clone(), &|b| b[7] = 0xff), "string not UTF-8");
    // The cluster name's length over the limit.
    assert_eq!(
        bad(hello.clone(), &|b| b[5..7]
            .copy_from_slice(&u16::MAX.to_le_bytes())),
        "string too long"
    );
    let formats_at = 5 + 2 + 4 + 2 + 1 + 2 + 5;
    assert_eq!(
        bad(hello.clone(), &|b| b[formats_at] = 9),
        "empty WAL format range"
    );
    assert_eq!(bad(hello, &|b| b[formats_at + 10] = 9), "unknown role");
    let heartbeat = encoded(&Message::Heartbeat {
        epoch: 1,
        seq: 1,
        written: vec![],
    });
    assert_eq!(
        bad(heartbeat.clone(), &|b| b[21..23]
            .copy_from_slice(&1000u16.to_le_bytes())),
        "too many items"
    );
    assert_eq!(
        bad(heartbeat, &|b| b[21..23]
            .copy_from_slice(&3u16.to_le_bytes())),
        "truncated"
    );
    let ack = encoded(&Message::Ack {
        stream: 0,
        received_lsn: 5,
        durable_lsn: 5,
    });
    assert_eq!(bad(ack, &|b| b[15] = 6), "durable_lsn above received_lsn");
    let refuse = encoded(&Message::Refuse {
        code: RefuseCode::Busy,
        reason: String::new(),
    });
    assert_eq!(bad(refuse, &|b| b[5] = 0), "unknown refuse code");
    let welcome = encoded(&Message::Welcome(welcome(3)));
    // The first plan's truncate_after tag: Partial, Some(9), from 5 is inconsistent.
    let tag_at = 5 + 2 + 1 + 8 + 1 + 2 + 2 + 8 + 1;
    assert_eq!(welcome[tag_at], 0);
    let inconsistent = |b: &mut Vec<u8>| {
        b.splice(tag_at..tag_at + 1, [1, 9, 0, 0, 0, 0, 0, 0, 0]);
    };
    assert_eq!(
        bad(welcome.clone(), &inconsistent),
        "inconsistent stream plan"
    );
    assert_eq!(bad(welcome, &|b| b[tag_at] = 2), "bad option tag");
}

#[test]
fn an_empty_records_frame_is_refused() {
    let mut bytes = records_prefix(0, 1).to_vec();
    bytes[..4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        decode_all(&bytes),
        Err(ProtoError::BadLengthForType {
            message: "records",
            len: 3
        })
    );
}

#[test]
fn the_decoder_buffer_is_bounded() {
    let mut decoder = Decoder::new();
    // A frame announcing the largest length: accepted, and nothing is allocated for it.
    let len = limits::REPL_FRAME_BYTES_MAX as u32;
    let mut head = len.to_le_bytes().to_vec();
    head.extend_from_slice(&[MessageType::Records as u8, 0, 0]);
    decoder.push(&head).unwrap();
    assert_eq!(decoder.next(), Ok(None));
    assert!(decoder.capacity() <= 64 * 1024, "{}", decoder.capacity());
    // Pushing more than the room is refused, and the refusal sticks.
    let room = decoder.room();
    assert_eq!(room, limits::REPL_DECODER_BUFFER_BYTES_MAX - head.len());
    let too_much = vec![0; room + 1];
    assert!(matches!(
        decoder.push(&too_much),
        Err(ProtoError::BufferFull { .. })
    ));
    assert!(matches!(decoder.next(), Err(ProtoError::BufferFull { .. })));
}

#[test]
fn a_drained_decoder_has_room_for_a_read() {
    let mut decoder = Decoder::new();
    let mut bytes = encoded(&Message::Promoted { epoch: 1 });
    bytes.extend_from_slice(&records_prefix(0, limits::REPL_FRAME_BYTES_MAX - 3)[..6]);
    decoder.push(&bytes).unwrap();
    assert_eq!(decoder.next(), Ok(Some(Message::Promoted { epoch: 1 })));
    assert_eq!(decoder.next(), Ok(None));
    assert!(decoder.room() >= limits::REPL_READ_BYTES_MAX);
}

#[test]
fn split_records_refuses_bad_batches() {
    let batch = records(2, 5..8);
    assert_eq!(split_records(&batch, 5).unwrap().len(), 3);
    assert_eq!(split_records(&[], 5), Err(ProtoError::EmptyBatch));
    assert_eq!(
        split_records(&batch, 4),
        Err(ProtoError::LsnGap {
            expected: 4,
            found: 5
        })
    );
    let mut gap = records(2, 5..6);
    gap.extend(records(2, 7..8));
    assert_eq!(
        split_records(&gap, 5),
        Err(ProtoError::LsnGap {
            expected: 6,
            found: 7
        })
    );
    let truncated = &batch[..batch.len() - 1];
    assert!(matches!(
        split_records(truncated, 5),
        Err(ProtoError::BadRecord {
            lsn: 7,
            error: record::DecodeError::Incomplete
        })
    ));
    let mut trailing = batch.clone();
    trailing.extend_from_slice(&[0; 4]);
    assert!(matches!(
        split_records(&trailing, 5),
        Err(ProtoError::BadRecord {
            lsn: 8,
            error: record::DecodeError::Zero
        })
    ));
    let mut flipped = batch.clone();
    flipped[20] ^= 1;
    assert!(matches!(
        split_records(&flipped, 5),
        Err(ProtoError::BadRecord { lsn: 5, .. })
    ));
    let mut regress = records(3, 5..6);
    regress.extend(records(2, 6..7));
    assert_eq!(
        split_records(&regress, 5),
        Err(ProtoError::EpochRegress {
            lsn: 6,
            epoch: 2,
            previous: 3
        })
    );
}

#[test]
fn only_a_single_record_may_pass_the_batch_limit() {
    let data = "x".repeat(limits::REPL_BATCH_BYTES_MAX);
    let big = Record::<&str>::WebhookDone {
        id: &data,
        delivered: true,
    };
    let mut one = Vec::new();
    record::encode(&big, 1, 1, &mut one);
    assert!(one.len() > limits::REPL_BATCH_BYTES_MAX);
    assert_eq!(split_records(&one, 1).unwrap().len(), 1);
    let mut two = one.clone();
    two.extend(records(1, 2..3));
    assert_eq!(
        split_records(&two, 1),
        Err(ProtoError::BatchTooLarge { len: two.len() })
    );
    // Within the limit, many small records are fine.
    let many = records(1, 1..2000);
    assert!(many.len() <= limits::REPL_BATCH_BYTES_MAX);
    assert_eq!(split_records(&many, 1).unwrap().len(), 1999);
}

#[test]
fn skippable_records_of_unknown_kinds_pass() {
    let mut batch = records(1, 1..2);
    // A record of kind 200 with the skippable flag, checksum recomputed.
    let mut unknown = records(1, 2..3);
    unknown[8] = 200;
    unknown[10..12].copy_from_slice(&record::FLAG_SKIPPABLE.to_le_bytes());
    let crc = crc32c::crc32c(&unknown[8..]);
    unknown[4..8].copy_from_slice(&crc.to_le_bytes());
    batch.extend_from_slice(&unknown);
    let split = split_records(&batch, 1).unwrap();
    assert_eq!(split[1].0.kind, 200);
    assert_eq!(split[1].0.lsn, 2);
    // Without the flag it is refused.
    unknown[10..12].copy_from_slice(&0u16.to_le_bytes());
    let crc = crc32c::crc32c(&unknown[8..]);
    unknown[4..8].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        split_records(&unknown, 2),
        Err(ProtoError::BadRecord {
            lsn: 2,
            error: record::DecodeError::UnknownKind { .. }
        })
    ));
}

#[test]
fn macs_verify_both_ways_and_only_with_the_same_inputs() {
    let w = welcome_mac(SECRET, &NS, &NP, "prod", 3);
    assert!(verify_welcome_mac(SECRET, &NS, &NP, "prod", 3, &w));
    assert!(!verify_welcome_mac(
        b"other secret",
        &NS,
        &NP,
        "prod",
        3,
        &w
    ));
    assert!(
        !verify_welcome_mac(SECRET, &NP, &NS, "prod", 3, &w),
        "nonces swapped"
    );
    assert!(
        !verify_welcome_mac(SECRET, &[9; 16], &NP, "prod", 3, &w),
        "another connection"
    );
    assert!(!verify_welcome_mac(SECRET, &NS, &NP, "test", 3, &w));
    assert!(!verify_welcome_mac(SECRET, &NS, &NP, "prod", 4, &w));
    let a = auth_mac(SECRET, &NS, &NP, "prod");
    assert!(verify_auth_mac(SECRET, &NS, &NP, "prod", &a));
    assert!(!verify_auth_mac(b"other secret", &NS, &NP, "prod", &a));
    assert!(!verify_auth_mac(SECRET, &NS, &[9; 16], "prod", &a));
    assert!(!verify_auth_mac(SECRET, &NS, &NP, "prodx", &a));
    // Neither proof can stand in for the other (a reflected MAC).
    assert_ne!(a, welcome_mac(SECRET, &NP, &NS, "prod", 3));
    assert!(!verify_auth_mac(SECRET, &NS, &NP, "prod", &w));
    // An empty secret still gives a MAC, one that a real secret does not verify.
    assert!(!verify_auth_mac(
        SECRET,
        &NS,
        &NP,
        "prod",
        &auth_mac(b"", &NS, &NP, "prod")
    ));
}

#[test]
fn mac_matches_an_independent_computation() {
    use hmac::{Hmac, KeyInit, Mac as _};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(b"ringcast-repl standby");
    mac.update(&NP);
    mac.update(&NS);
    mac.update(b"prod");
    let expected: [u8; 32] = mac.finalize().into_bytes().into();
    assert_eq!(auth_mac(SECRET, &NS, &NP, "prod"), expected);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(b"ringcast-repl primary");
    mac.update(&NS);
    mac.update(&NP);
    mac.update(b"prod");
    mac.update(&7u64.to_le_bytes());
    let expected: [u8; 32] = mac.finalize().into_bytes().into();
    assert_eq!(welcome_mac(SECRET, &NS, &NP, "prod", 7), expected);
}

#[test]
fn check_hello_codes() {
    assert_eq!(check_hello(&hello(), &local()), Ok(()));
    let with = |edit: &dyn Fn(&mut Hello, &mut LocalNode)| {
        let (mut hello, mut local) = (hello(), local());
        edit(&mut hello, &mut local);
        check_hello(&hello, &local)
    };
    use RefuseCode::*;
    assert_eq!(
        with(&|h, _| h.cluster = "other".into()),
        Err(ClusterMismatch)
    );
    assert_eq!(with(&|_, l| l.role = Role::Standby), Err(NotPrimary));
    assert_eq!(with(&|h, _| h.epoch = 4), Err(HigherEpoch));
    assert_eq!(with(&|h, _| h.streams[1].last_epoch = 4), Err(HigherEpoch));
    // An old primary rejoining at a lower epoch is welcome; at the same epoch it conflicts.
    assert_eq!(with(&|h, _| (h.role, h.epoch) = (Role::Primary, 2)), Ok(()));
    assert_eq!(with(&|h, _| h.role = Role::Primary), Err(RoleConflict));
    let format = record::FORMAT;
    assert_eq!(
        with(&|h, _| (h.wal_format_min, h.wal_format_max) = (format + 1, format + 2)),
        Err(FormatMismatch)
    );
    assert_eq!(
        with(&|h, _| (h.wal_format_min, h.wal_format_max) = (0, format + 2)),
        Ok(())
    );
    assert_eq!(
        with(&|h, _| h.streams.pop().map(drop).unwrap_or(())),
        Err(StreamsMismatch)
    );
    assert_eq!(
        with(&|h, _| h.streams[1].name = "core-1".into()),
        Err(StreamsMismatch)
    );
    assert_eq!(
        with(&|h, _| h.streams[1].name = "core-0".into()),
        Err(StreamsMismatch)
    );
    assert_eq!(
        with(&|h, _| h.streams.push(position("core-1", 0, 0))),
        Err(StreamsMismatch)
    );
}

#[test]
fn check_welcome_codes() {
    let hello = hello();
    assert_eq!(check_welcome(SECRET, &hello, &welcome(3)), Ok(()));
    assert_eq!(check_welcome(SECRET, &hello, &welcome(4)), Ok(()));
    let with = |edit: &dyn Fn(&mut Welcome)| {
        let mut welcome = welcome(3);
        edit(&mut welcome);
        check_welcome(SECRET, &hello, &welcome)
    };
    use RefuseCode::*;
    assert_eq!(check_welcome(b"wrong", &hello, &welcome(3)), Err(BadSecret));
    assert_eq!(with(&|w| w.mac[0] ^= 1), Err(BadSecret));
    assert_eq!(with(&|w| w.nonce = NS), Err(BadSecret));
    assert_eq!(
        with(&|w| w.epoch = 4),
        Err(BadSecret),
        "the epoch is covered by the MAC"
    );
    let mut stale = welcome(2);
    stale.mac = welcome_mac(SECRET, &NS, &NP, "prod", 2);
    assert_eq!(check_welcome(SECRET, &hello, &stale), Err(HigherEpoch));
    assert_eq!(
        with(&|w| w.wal_format = record::FORMAT + 1),
        Err(FormatMismatch)
    );
    assert_eq!(with(&|w| drop(w.streams.pop())), Err(StreamsMismatch));
    assert_eq!(
        with(&|w| w.streams[1].from_lsn = 12),
        Err(StreamsMismatch),
        "a gap"
    );
    assert_eq!(
        with(&|w| w.streams[1].from_lsn = 10),
        Err(StreamsMismatch),
        "an overlap"
    );
    let truncate = |end: u64| {
        move |w: &mut Welcome| {
            w.streams[1] = plan("core-0", StreamMode::Partial, Some(end), end + 1)
        }
    };
    assert_eq!(with(&truncate(7)), Ok(()));
    assert_eq!(
        with(&truncate(10)),
        Err(StreamsMismatch),
        "truncates nothing"
    );
    assert_eq!(
        with(&|w| w.streams[1] = plan("core-0", StreamMode::Full, None, 500)),
        Ok(())
    );
}

#[test]
fn handshake_end_to_end() {
    let hello = hello();
    check_hello(&hello, &local()).unwrap();
    let primary = [
        PrimaryStream {
            name: "webhooks".into(),
            first_retained_lsn: Some(1),
            last_lsn: 9,
            epoch_starts: vec![],
        },
        PrimaryStream {
            name: "core-0".into(),
            first_retained_lsn: Some(3),
            last_lsn: 20,
            epoch_starts: vec![(2, 3), (3, 8)],
        },
    ];
    let plans = plan_streams(&hello.streams, &primary).unwrap();
    assert_eq!(
        plans,
        [
            plan("webhooks", StreamMode::Partial, None, 5),
            plan("core-0", StreamMode::Partial, None, 11)
        ]
    );
    let welcome = Welcome {
        node_id: "a".into(),
        epoch: 3,
        wal_format: record::FORMAT,
        streams: plans,
        nonce: NP,
        mac: welcome_mac(SECRET, &hello.nonce, &NP, &hello.cluster, 3),
    };
    let messages = decode_all(&encoded(&Message::Welcome(welcome))).unwrap();
    let [Message::Welcome(received)] = &messages[..] else {
        panic!("{messages:?}");
    };
    check_welcome(SECRET, &hello, received).unwrap();
    let proof = auth_mac(SECRET, &hello.nonce, &received.nonce, &hello.cluster);
    assert!(verify_auth_mac(SECRET, &NS, &NP, "prod", &proof));
    assert_eq!(
        plan_streams(&hello.streams[..1], &primary),
        Err(RefuseCode::StreamsMismatch)
    );
}

/// One `plan_stream` case: the standby's (last_lsn, last_epoch), the primary's stream, and the
/// expected plan as (mode, truncate_after, from_lsn).
struct Case {
    what: &'static str,
    standby: (u64, u64),
    first_retained_lsn: Option<u64>,
    last_lsn: u64,
    epoch_starts: &'static [(u64, u64)],
    expect: (StreamMode, Option<u64>, u64),
}

#[test]
fn plan_stream_table() {
    use StreamMode::{Full, Partial};
    let cases = [
        Case {
            what: "fresh standby, fresh primary",
            standby: (0, 0),
            first_retained_lsn: None,
            last_lsn: 0,
            epoch_starts: &[],
            expect: (Partial, None, 1),
        },
        Case {
            what: "fresh standby",
            standby: (0, 0),
            first_retained_lsn: Some(1),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Partial, None, 1),
        },
        Case {
            what: "fresh standby, history trimmed",
            standby: (0, 0),
            first_retained_lsn: Some(40),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Full, None, 40),
        },
        Case {
            what: "caught up",
            standby: (50, 1),
            first_retained_lsn: Some(1),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Partial, None, 51),
        },
        Case {
            what: "caught up, after failovers",
            standby: (50, 3),
            first_retained_lsn: Some(1),
            last_lsn: 50,
            epoch_starts: &[(2, 10), (3, 30)],
            expect: (Partial, None, 51),
        },
        Case {
            what: "behind, retained",
            standby: (20, 1),
            first_retained_lsn: Some(10),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Partial, None, 21),
        },
        Case {
            what: "behind, exactly at retention",
            standby: (9, 1),
            first_retained_lsn: Some(10),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Partial, None, 10),
        },
        Case {
            what: "behind retention",
            standby: (8, 1),
            first_retained_lsn: Some(10),
            last_lsn: 50,
            epoch_starts: &[],
            expect: (Full, None, 10),
        },
        Case {
            what: "behind, an older epoch, retained",
            standby: (25, 2),
            first_retained_lsn: Some(1),
            last_lsn: 50,
            epoch_starts: &[(2, 10), (3, 30)],
            expect: (Partial, None, 26),
        },
        Case {
            what: "old primary, divergent suffix",
            standby: (45, 3),
            first_retained_lsn: Some(1),
            last_lsn: 60,
            epoch_starts: &[(3, 20), (4, 41)],
            expect: (Partial, Some(40), 41),
        },
        Case {
            what: "old primary, divergent suffix, its epoch unlisted (base)",
            standby: (45, 3),
            first_retained_lsn: Some(1),
            last_lsn: 60,
            epoch_starts: &[(4, 41)],
            expect: (Partial, Some(40), 41),
        },
        Case {
            what: "old primary, divergent suffix past retention",
            standby: (45, 3),
            first_retained_lsn: Some(42),
            last_lsn: 60,
            epoch_starts: &[(3, 20), (4, 41)],
            expect: (Full, None, 42),
        },
        Case {
            what: "old primary, everything divergent",
            standby: (5, 2),
            first_retained_lsn: Some(1),
            last_lsn: 9,
            epoch_starts: &[(2, 1), (3, 1)],
            expect: (Partial, Some(0), 1),
        },
        Case {
            what: "old primary, behind the new epoch's start",
            standby: (38, 3),
            first_retained_lsn: Some(1),
            last_lsn: 60,
            epoch_starts: &[(3, 20), (4, 41)],
            expect: (Partial, None, 39),
        },
        Case {
            what: "ahead of the primary in the same epoch",
            standby: (70, 4),
            first_retained_lsn: Some(1),
            last_lsn: 60,
            epoch_starts: &[(3, 20), (4, 41)],
            expect: (Partial, Some(60), 61),
        },
        Case {
            what: "ahead of an empty primary",
            standby: (7, 1),
            first_retained_lsn: None,
            last_lsn: 0,
            epoch_starts: &[],
            expect: (Partial, Some(0), 1),
        },
        Case {
            what: "an epoch the primary never had",
            standby: (45, 3),
            first_retained_lsn: Some(5),
            last_lsn: 60,
            epoch_starts: &[(2, 20), (4, 41)],
            expect: (Full, None, 5),
        },
        Case {
            what: "an epoch above all the primary lists",
            standby: (45, 5),
            first_retained_lsn: Some(5),
            last_lsn: 60,
            epoch_starts: &[(2, 20), (4, 41)],
            expect: (Full, None, 5),
        },
        Case {
            what: "primary holds no record, standby behind",
            standby: (3, 1),
            first_retained_lsn: None,
            last_lsn: 9,
            epoch_starts: &[],
            expect: (Full, None, 10),
        },
    ];
    for case in cases {
        let standby = position("core-0", case.standby.0, case.standby.1);
        let primary = PrimaryStream {
            name: "core-0".into(),
            first_retained_lsn: case.first_retained_lsn,
            last_lsn: case.last_lsn,
            epoch_starts: case.epoch_starts.to_vec(),
        };
        let (mode, truncate_after, from_lsn) = case.expect;
        let expected = plan("core-0", mode, truncate_after, from_lsn);
        assert_eq!(
            plan_stream(&standby, &primary),
            Ok(expected.clone()),
            "{}",
            case.what
        );
        // Every plan is one the standby accepts and the wire carries.
        let mut hello = hello();
        hello.streams = vec![standby];
        let welcome = Welcome {
            node_id: "a".into(),
            epoch: 9,
            wal_format: record::FORMAT,
            streams: vec![expected.clone()],
            nonce: NP,
            mac: welcome_mac(SECRET, &NS, &NP, "prod", 9),
        };
        assert_eq!(
            check_welcome(SECRET, &hello, &welcome),
            Ok(()),
            "{}",
            case.what
        );
        assert_eq!(
            decode_all(&encoded(&Message::Welcome(welcome.clone()))).unwrap(),
            [Message::Welcome(welcome)]
        );
    }
}

#[test]
fn plan_stream_refuses_another_stream() {
    let primary = PrimaryStream {
        name: "core-1".into(),
        first_retained_lsn: None,
        last_lsn: 0,
        epoch_starts: vec![],
    };
    assert_eq!(
        plan_stream(&position("core-0", 0, 0), &primary),
        Err(RefuseCode::StreamsMismatch)
    );
}

#[test]
fn higher_epoch_standby_is_refused_before_any_plan() {
    // The standby was promoted to epoch 5 while this node still thinks it leads epoch 4.
    let mut hello = hello();
    hello.epoch = 5;
    hello.streams = vec![position("core-0", 80, 5), position("webhooks", 3, 5)];
    let mut local = local();
    local.epoch = 4;
    assert_eq!(check_hello(&hello, &local), Err(RefuseCode::HigherEpoch));
}

#[test]
fn the_largest_handshake_messages_fit_a_control_frame() {
    let name = |i: usize| format!("{i:0>width$}", width = limits::WAL_STREAM_NAME_BYTES_MAX);
    let long = "n".repeat(limits::REPL_NAME_BYTES_MAX);
    let hello = Hello {
        cluster: long.clone(),
        node_id: long.clone(),
        version: long.clone(),
        streams: (0..limits::REPL_STREAMS_MAX)
            .map(|i| position(&name(i), u64::MAX, u64::MAX))
            .collect(),
        ..hello()
    };
    let welcome = Welcome {
        node_id: long,
        streams: (0..limits::REPL_STREAMS_MAX)
            .map(|i| plan(&name(i), StreamMode::Partial, Some(u64::MAX - 1), u64::MAX))
            .collect(),
        ..welcome(3)
    };
    let messages = vec![
        Message::Hello(hello),
        Message::Welcome(welcome),
        Message::Refuse {
            code: RefuseCode::Busy,
            reason: "r".repeat(limits::REPL_REASON_BYTES_MAX),
        },
        Message::Heartbeat {
            epoch: 1,
            seq: 2,
            written: vec![u64::MAX; limits::REPL_STREAMS_MAX],
        },
    ];
    let mut out = Vec::new();
    for message in &messages {
        encode(message, &mut out);
    }
    assert_eq!(decode_all(&out).unwrap(), messages);
}

#[test]
fn a_handover_frame_has_the_documented_layout() {
    let bytes = encoded(&Message::Handover {
        epoch: 3,
        written: vec![5],
    });
    // len, type 9, epoch, count u16?, one LSN
    assert_eq!(bytes[4], 9);
    assert_eq!(&bytes[5..13], &3u64.to_le_bytes());
    assert_eq!(&bytes[bytes.len() - 8..], &5u64.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&bytes).unwrap();
    let decoded = decoder.next().unwrap().unwrap();
    assert_eq!(
        decoded,
        Message::Handover {
            epoch: 3,
            written: vec![5]
        }
    );
    // A truncated list is a bad payload, not a panic.
    let mut cut = bytes.clone();
    cut.truncate(cut.len() - 1);
    let len = u32::try_from(cut.len() - LENGTH_BYTES).unwrap();
    cut[..4].copy_from_slice(&len.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&cut).unwrap();
    assert!(decoder.next().is_err());
}

#[test]
fn a_standby_takes_a_handover_only_of_its_epoch_and_caught_up() {
    assert_eq!(check_handover(3, &[10, 4], 3, &[10, 4]), Ok(4));
    assert_eq!(
        check_handover(2, &[10, 4], 3, &[10, 4]),
        Err(HandoverRefusal::WrongEpoch {
            offered: 2,
            ours: 3
        })
    );
    assert!(matches!(
        check_handover(0, &[], 0, &[]),
        Err(HandoverRefusal::WrongEpoch { .. })
    ));
    assert!(matches!(
        check_handover(u64::MAX, &[], u64::MAX, &[]),
        Err(HandoverRefusal::WrongEpoch { .. })
    ));
    assert_eq!(
        check_handover(3, &[10], 3, &[10, 4]),
        Err(HandoverRefusal::StreamCount {
            offered: 1,
            ours: 2
        })
    );
    assert_eq!(
        check_handover(3, &[10, 5], 3, &[10, 4]),
        Err(HandoverRefusal::NotCaughtUp {
            stream: 1,
            written: 5,
            held: 4
        })
    );
    // More than the primary wrote is no better: it is not the primary's log.
    assert!(check_handover(3, &[10, 4], 3, &[11, 4]).is_err());
}
