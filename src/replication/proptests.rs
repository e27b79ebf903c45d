//! Property tests of the replication protocol (proptest: every failure prints the minimal case
//! and its seed). What they prove: any valid message round-trips; a stream of messages fed to
//! the decoder in arbitrary pieces decodes to the same messages as fed at once; any truncation
//! of a stream yields exactly the whole messages before the cut and waits for the rest; a bit
//! flip or arbitrary bytes never panic and never make the decoder allocate past its limit (a
//! flipped length prefix is refused before anything is buffered for it); `split_records` accepts
//! exactly the record batches that were encoded and refuses any flipped or cut one.

use bytes::Bytes;
use proptest::prelude::*;

use super::tests::records;
use super::*;
use crate::limits;

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(move |chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() <= max {
                text.push(c);
            }
        }
        text
    })
}

fn stream_name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,32}"
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Primary), Just(Role::Standby)]
}

fn position() -> impl Strategy<Value = StreamPosition> {
    (stream_name(), any::<u64>(), any::<u64>()).prop_map(|(name, last_lsn, last_epoch)| {
        StreamPosition {
            name,
            last_lsn,
            last_epoch,
        }
    })
}

fn stream_plan() -> impl Strategy<Value = StreamPlan> {
    (stream_name(), 0u8..3, 1..u64::MAX).prop_map(|(name, shape, from_lsn)| {
        let (mode, truncate_after) = match shape {
            0 => (StreamMode::Full, None),
            1 => (StreamMode::Partial, None),
            _ => (StreamMode::Partial, Some(from_lsn - 1)),
        };
        StreamPlan {
            name,
            mode,
            truncate_after,
            from_lsn,
        }
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        (
            text(limits::REPL_NAME_BYTES_MAX),
            text(limits::REPL_NAME_BYTES_MAX),
            text(limits::REPL_NAME_BYTES_MAX),
        ),
        (any::<u8>(), any::<u8>(), any::<u64>(), role()),
        prop::collection::vec(position(), 0..6),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |((cluster, node_id, version), (a, b, epoch, role), streams, nonce)| Hello {
                cluster,
                node_id,
                version,
                wal_format_min: a.min(b),
                wal_format_max: a.max(b),
                epoch,
                role,
                streams,
                nonce,
            },
        )
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (
        text(limits::REPL_NAME_BYTES_MAX),
        any::<u64>(),
        any::<u8>(),
        prop::collection::vec(stream_plan(), 0..6),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(node_id, epoch, wal_format, streams, nonce, mac)| Welcome {
                node_id,
                epoch,
                wal_format,
                streams,
                nonce,
                mac,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        welcome().prop_map(Message::Welcome),
        any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
        (
            0..RefuseCode::ALL.len(),
            text(limits::REPL_REASON_BYTES_MAX)
        )
            .prop_map(|(i, reason)| {
                Message::Refuse {
                    code: RefuseCode::ALL[i],
                    reason,
                }
            }),
        (any::<u16>(), 1u64..1000, 1u64..4, 1u64..20).prop_map(|(stream, epoch, first, count)| {
            Message::Records {
                stream,
                bytes: Bytes::from(records(epoch, first..first + count)),
            }
        }),
        (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(stream, a, b)| Message::Ack {
            stream,
            received_lsn: a.max(b),
            durable_lsn: a.min(b),
        }),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u64>(), 0..8)
        )
            .prop_map(|(epoch, seq, written)| Message::Heartbeat {
                epoch,
                seq,
                written
            }),
        any::<u64>().prop_map(|epoch| Message::Promoted { epoch }),
        (any::<u64>(), prop::collection::vec(any::<u64>(), 0..8))
            .prop_map(|(epoch, written)| Message::Handover { epoch, written }),
    ]
}

fn encode_all(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        encode(message, &mut out);
    }
    out
}

/// Feeds `bytes` in pieces of the given sizes (cycled), taking messages after each push.
/// Returns the messages and the first error; checks the buffer bound all along.
fn feed(bytes: &[u8], pieces: &[usize]) -> (Vec<Message>, Option<ProtoError>) {
    let mut decoder = Decoder::new();
    let mut messages = Vec::new();
    let mut rest = bytes;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (piece, after) = rest.split_at(size);
        rest = after;
        if let Err(error) = decoder.push(piece) {
            return (messages, Some(error));
        }
        loop {
            assert!(decoder.capacity() <= limits::REPL_DECODER_BUFFER_BYTES_MAX);
            match decoder.next() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => return (messages, Some(error)),
            }
        }
    }
    (messages, None)
}

/// An allocation this small means nothing was reserved for a length read from the bytes.
const SMALL_CAPACITY: usize = 256 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_message_round_trips(messages in prop::collection::vec(message(), 1..6)) {
        let bytes = encode_all(&messages);
        let (decoded, error) = feed(&bytes, &[bytes.len()]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn any_split_decodes_like_one_push(
        messages in prop::collection::vec(message(), 1..6),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        let bytes = encode_all(&messages);
        let (decoded, error) = feed(&bytes, &pieces);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn a_cut_stream_yields_the_whole_messages_before_the_cut(
        messages in prop::collection::vec(message(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_all(&messages);
        let cut = cut.index(bytes.len());
        let mut whole = 0;
        let mut end = 0;
        for message in &messages {
            end += encode_all(std::slice::from_ref(message)).len();
            if end <= cut {
                whole += 1;
            }
        }
        let (decoded, error) = feed(&bytes[..cut], &[7]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&decoded[..], &messages[..whole]);
    }

    #[test]
    fn a_bit_flip_never_panics_or_allocates_by_a_read_length(
        messages in prop::collection::vec(message(), 1..4),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        pieces in prop::collection::vec(1usize..64, 1..4),
    ) {
        let mut bytes = encode_all(&messages);
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let mut decoder = Decoder::new();
        // Whatever it decodes to, the decoder stays within what was pushed.
        let (decoded, _error) = feed(&bytes, &pieces);
        prop_assert!(decoded.len() <= messages.len() + 1);
        decoder.push(&bytes).unwrap();
        while let Ok(Some(_)) = decoder.next() {}
        prop_assert!(decoder.capacity() <= SMALL_CAPACITY);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = Decoder::new();
        decoder.push(&bytes).unwrap();
        while let Ok(Some(message)) = decoder.next() {
            // Whatever was decoded encodes again (it passed every check the encoder asserts).
            let mut out = Vec::new();
            encode(&message, &mut out);
        }
        prop_assert!(decoder.capacity() <= SMALL_CAPACITY);
    }

    #[test]
    fn split_records_accepts_exactly_what_was_encoded(
        epoch in 1u64..100,
        first in 1u64..1_000_000,
        count in 1u64..30,
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let batch = records(epoch, first..first + count);
        let split = split_records(&batch, first).unwrap();
        prop_assert_eq!(split.len() as u64, count);
        prop_assert_eq!(split[0].1.start, 0);
        prop_assert_eq!(split.last().unwrap().1.end, batch.len());
        for (pair, lsn) in split.windows(2).zip(first..) {
            prop_assert_eq!(pair[0].1.end, pair[1].1.start);
            prop_assert_eq!(pair[0].0.lsn, lsn);
        }
        prop_assert!(split_records(&batch, first + 1).is_err());
        let mut flipped = batch.clone();
        flipped[at.index(batch.len())] ^= 1 << bit;
        prop_assert!(split_records(&flipped, first).is_err());
        // A cut between records leaves a shorter valid batch; anywhere else it is refused.
        let cut = cut.index(batch.len());
        match split.iter().position(|(_, range)| range.end == cut) {
            Some(last) => {
                let shorter = split_records(&batch[..cut], first).unwrap();
                prop_assert_eq!(shorter.len(), last + 1);
            }
            None => prop_assert!(split_records(&batch[..cut], first).is_err()),
        }
    }
}
