//! Property tests of the record codec and the segment scanner (proptest: every failure prints
//! the minimal case and its seed). What they prove: any record round-trips; any truncation of
//! a segment keeps exactly the records wholly before the cut and reports a torn (or clean)
//! end; any single bit flip never panics, never yields a record that was not written, and is
//! reported as corruption when valid records follow the damaged one; arbitrary bytes (huge
//! lengths included) never panic and never allocate by a length read from them.

use proptest::prelude::*;

use super::record::{self, DecodeError, Record};
use super::segment::{self, End, Expect, SegmentHeader};

fn text() -> impl Strategy<Value = Box<str>> {
    prop::collection::vec(any::<char>(), 0..24).prop_map(|chars| String::from_iter(chars).into())
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (any::<u64>(), text(), any::<u64>()).prop_map(|(epoch, node_id, previous_end_lsn)| {
            Record::EpochStart {
                epoch,
                node_id,
                previous_end_lsn,
            }
        }),
        (
            (text(), text(), any::<u64>(), any::<u64>(), text()),
            (
                prop::collection::vec(any::<char>(), 0..300),
                any::<Option<(u64, u64)>>(),
                prop::option::of(text()),
                any::<u64>(),
                0u8..8,
            ),
        )
            .prop_map(
                |(
                    (app_id, channel, channel_epoch, seq, event),
                    (data, exclude, user_id, published_ms, flags),
                )| Record::Publish {
                    app_id,
                    channel,
                    channel_epoch,
                    seq,
                    event,
                    data: String::from_iter(data).into(),
                    exclude,
                    user_id,
                    published_ms,
                    flags,
                }
            ),
        (text(), text(), text(), text()).prop_map(|(app_id, channel, user_id, user_info)| {
            Record::PresenceJoin {
                app_id,
                channel,
                user_id,
                user_info,
            }
        }),
        (text(), text(), text()).prop_map(|(app_id, channel, user_id)| Record::PresenceLeave {
            app_id,
            channel,
            user_id
        }),
        (text(), text(), any::<u64>(), any::<u64>()).prop_map(
            |(app_id, channel, channel_epoch, seq)| Record::ChannelState {
                app_id,
                channel,
                channel_epoch,
                seq,
            }
        ),
        (
            (text(), text(), text(), text(), text()),
            (
                prop::collection::vec((text(), text()), 0..4),
                text(),
                any::<u32>(),
                any::<u64>()
            ),
        )
            .prop_map(
                |((id, app_id, url, app_key, signature), (headers, body, events, time_ms))| {
                    Record::WebhookEnqueued {
                        id,
                        app_id,
                        url,
                        app_key,
                        signature,
                        headers,
                        body,
                        events,
                        time_ms,
                    }
                }
            ),
        (text(), any::<bool>()).prop_map(|(id, delivered)| Record::WebhookDone { id, delivered }),
        any::<u64>().prop_map(|unix_ms| Record::Heartbeat { unix_ms }),
    ]
}

/// A segment of `records` starting at LSN `first`, then `padding` zero bytes; returns the bytes
/// and each record's [start, end) offsets.
fn segment_of(records: &[Record], first: u64, padding: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut bytes = Vec::new();
    segment::encode_header(
        &SegmentHeader {
            version: segment::VERSION,
            stream: "core-0".into(),
            first_lsn: first,
            created_ms: 7,
        },
        &mut bytes,
    );
    let mut spans = Vec::new();
    for (n, record) in records.iter().enumerate() {
        let start = bytes.len();
        record::encode(record, 1, first + n as u64, &mut bytes);
        spans.push((start, bytes.len()));
    }
    bytes.resize(bytes.len() + padding, 0);
    (bytes, spans)
}

/// Scans `bytes` strictly; returns the records visited (with their LSNs) and the scan.
fn visited(bytes: &[u8], first: u64) -> (Vec<(u64, Record)>, segment::SegmentScan) {
    let mut seen = Vec::new();
    let expect = Expect {
        stream: "core-0",
        first_lsn: first,
        next_lsn: None,
    };
    let scan = segment::scan(bytes, expect, false, |_, header, record| {
        if let Some(record) = record {
            seen.push((header.lsn, record.owned()));
        }
    });
    (seen, scan)
}

// 256 cases per property; PROPTEST_CASES=N runs more.
proptest! {
    #[test]
    fn records_round_trip(record in record(), epoch in any::<u64>(), lsn in 1..u64::MAX) {
        let mut bytes = vec![0xAA; 3];
        let len = record::encode(&record, epoch, lsn, &mut bytes);
        prop_assert_eq!(len, bytes.len() - 3);
        prop_assert_eq!(len, record.encoded_len());
        let (header, decoded, used) = record::decode(&bytes[3..]).unwrap();
        prop_assert_eq!((header.epoch, header.lsn, used), (epoch, lsn, len));
        prop_assert_eq!(decoded, record);
    }

    #[test]
    fn a_truncated_segment_keeps_exactly_the_whole_records(
        records in prop::collection::vec(record(), 1..16),
        padding in 0usize..64,
        cut in any::<prop::sample::Index>(),
        first in 1u64..1_000_000,
    ) {
        let (bytes, spans) = segment_of(&records, first, padding);
        let cut = cut.index(bytes.len() + 1);
        let (seen, scan) = visited(&bytes[..cut], first);
        let whole = spans.iter().take_while(|(_, end)| *end <= cut).count();
        prop_assert_eq!(seen.len(), whole);
        for (n, (lsn, record)) in seen.iter().enumerate() {
            prop_assert_eq!(*lsn, first + n as u64);
            prop_assert_eq!(record, &records[n]);
        }
        let at_boundary = cut >= segment::HEADER_BYTES
            && (cut == segment::HEADER_BYTES || spans.iter().any(|(_, end)| *end == cut)
                || cut >= spans.last().unwrap().1);
        // A cut inside a record's zero length bytes leaves only zeros after the last record:
        // as clean as preallocated space.
        let zeros_after = bytes[(scan.valid_end as usize).min(cut)..cut].iter().all(|&b| b == 0)
            && cut >= segment::HEADER_BYTES;
        if at_boundary {
            prop_assert_eq!(&scan.end, &End::Clean);
        } else {
            let torn = matches!(scan.end, End::Torn { .. })
                || (zeros_after && scan.end == End::Clean);
            prop_assert!(torn, "{:?}", scan.end);
        }
        prop_assert_eq!(scan.valid_end as usize, spans[..whole].last().map_or(
            if cut >= segment::HEADER_BYTES { segment::HEADER_BYTES } else { 0 },
            |(_, end)| *end,
        ));
    }

    #[test]
    fn a_bit_flip_is_found_and_never_invents_a_record(
        records in prop::collection::vec(record(), 1..12),
        padding in 0usize..64,
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut bytes, spans) = segment_of(&records, 1, padding);
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let (seen, scan) = visited(&bytes, 1);
        // Nothing that was not written, in order, from LSN 1.
        for (n, (lsn, record)) in seen.iter().enumerate() {
            prop_assert_eq!(*lsn, 1 + n as u64);
            prop_assert_eq!(record, &records[n]);
        }
        match spans.iter().position(|(start, end)| (*start..*end).contains(&at)) {
            Some(hit) => {
                // Everything before the damaged record, nothing from it on.
                prop_assert_eq!(seen.len(), hit);
                let end_offset = match &scan.end {
                    End::Corrupt { offset, .. } | End::Torn { offset, .. } => *offset as usize,
                    End::Clean => usize::MAX,
                };
                prop_assert_eq!(end_offset, spans[hit].0);
                if hit + 1 < spans.len() {
                    // Valid records follow: never a silent truncation.
                    let corrupt = matches!(scan.end, End::Corrupt { .. });
                    prop_assert!(corrupt, "{:?}", scan.end);
                }
            }
            None if at < segment::HEADER_BYTES => {
                prop_assert!(seen.is_empty());
                let corrupt = matches!(scan.end, End::Corrupt { offset: 0, .. });
                prop_assert!(corrupt, "{:?}", scan.end);
            }
            None => {
                // In the zero padding: every record is there, the noise after them is a tear.
                prop_assert_eq!(seen.len(), records.len());
                let torn = matches!(scan.end, End::Torn { .. });
                prop_assert!(torn, "{:?}", scan.end);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = record::decode(&bytes);
        let _ = segment::find_record(&bytes, 0, 1);
        let _ = visited(&bytes, 1);
        let expect = Expect { stream: "core-0", first_lsn: 1, next_lsn: Some(1) };
        let _ = segment::scan(&bytes, expect, true, |_, _, _| {});
    }

    #[test]
    fn lengths_above_the_limit_are_refused_before_anything_is_read(
        len in (crate::limits::WAL_RECORD_BYTES_MAX as u64 + 1)..=u32::MAX as u64,
        rest in prop::collection::vec(any::<u8>(), 24..64),
    ) {
        let mut bytes = (len as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&rest);
        prop_assert_eq!(record::frame(&bytes).unwrap_err(), DecodeError::BadLength(len as u32));
    }
}
