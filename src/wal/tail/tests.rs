//! Tests of `Tail` (and of `WalWriter::append_encoded`, its consumer on a standby) over
//! `MemStorage`: a writer thread rotating through minimum-size segments while a tail reads in
//! small steps, a verbatim copy of one stream into another, retention under a tail, damage,
//! and a property test that damaged bytes never panic the tail nor yield an unframed record.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::config::FsyncPolicy;
use crate::wal::record::{Header, Record};
use crate::wal::storage::MemStorage;
use crate::wal::stream::{AppendError, Now, Recovery, RecoveryMode, WalOptions, WalWriter};

const DIR: &str = "/data/wal/core-0";
const COPY: &str = "/standby/wal/core-0";
const STREAM: &str = "core-0";

pub(crate) fn options() -> WalOptions {
    WalOptions {
        segment_bytes: limits::WAL_SEGMENT_BYTES_MIN,
        fsync: FsyncPolicy::Never,
        fsync_interval_ms: 10,
        zero_fill: false,
    }
}

pub(crate) fn at(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// The n-th test publish's data, `size` bytes.
pub(crate) fn data(n: u64, size: usize) -> String {
    let mut text = format!("{n}:");
    while text.len() < size {
        text.push((b'a' + (text.len() % 26) as u8) as char);
    }
    text
}

pub(crate) fn publish(data: &str, seq: u64) -> Record<&str> {
    Record::Publish {
        app_id: "app",
        channel: "chan",
        channel_epoch: 1,
        seq,
        event: "ev",
        data,
        exclude: None,
        user_id: None,
        published_ms: 1,
        flags: 0,
    }
}

pub(crate) fn open_dir(storage: &Arc<dyn Storage>, dir: &str, epoch: u64) -> (WalWriter, Recovery) {
    WalWriter::open(
        Arc::clone(storage),
        Path::new(dir),
        STREAM,
        epoch,
        options(),
        RecoveryMode::Strict,
        at(0),
    )
    .unwrap()
}

/// Every record `recovery` replays, owned, with its header.
pub(crate) fn replayed(recovery: &Recovery) -> Vec<(Header, Record)> {
    let mut seen = Vec::new();
    recovery
        .replay(|header, record| seen.push((*header, record.owned())))
        .unwrap();
    seen
}

/// The records in `bytes` (back to back, as a tail returns them), each checked by `frame`.
pub(crate) fn split(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (header, _) = record::frame(bytes).unwrap();
        let (one, rest) = bytes.split_at(header.len as usize);
        records.push(one);
        bytes = rest;
    }
    records
}

/// Record sizes that cross segment ends at many offsets, with a few larger than one tail read
/// (and than a segment).
fn size_of(n: u64) -> usize {
    if n.is_multiple_of(97) {
        limits::WAL_TAIL_READ_BYTES + 5_000
    } else {
        (n * 37 % 900) as usize + 1
    }
}

/// Reads the whole stream in `dir` through a tail, in steps of at most `max_bytes`.
fn tail_all(storage: &Arc<dyn Storage>, dir: &str, upto_lsn: u64, max_bytes: usize) -> Vec<u8> {
    let mut tail = Tail::new(Arc::clone(storage), Path::new(dir), STREAM, 1);
    let mut out = Vec::new();
    while tail.read(upto_lsn, max_bytes, &mut out).unwrap() > 0 {}
    assert_eq!(tail.next_lsn(), upto_lsn + 1);
    out
}

/// Goal: a tail reading while its writer appends, commits and rotates through many
/// minimum-size segments (on another thread) gets every record exactly once, in LSN order,
/// within its byte budget, and byte-identical to what recovery replays afterwards. Method: the
/// writer publishes its written LSN after each commit; the tail reads up to it in steps of at
/// most 300 bytes, yielding when nothing is new.
#[test]
fn a_tail_gets_every_record_once_while_the_writer_rotates() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    let total = 1_200;
    let published = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let published = Arc::clone(&published);
        std::thread::spawn(move || {
            for n in 1..=total {
                writer.append(&publish(&data(n, size_of(n)), n)).unwrap();
                if n.is_multiple_of(7) || n == total {
                    let result = writer.commit(at(n)).unwrap();
                    published.store(result.written_lsn, Ordering::Release);
                }
            }
            writer.segments()
        })
    };
    let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tail.next_lsn() <= total {
        let before = out.len();
        let upto_lsn = published.load(Ordering::Acquire);
        let records = tail.read(upto_lsn, 300, &mut out).unwrap();
        assert!(records <= 1 || out.len() - before <= 300, "over budget");
        assert!(tail.next_lsn() <= upto_lsn + 1, "read past the written LSN");
        if records == 0 {
            assert!(
                Instant::now() < deadline,
                "the tail stalled at {}",
                tail.next_lsn()
            );
            std::thread::yield_now();
        }
    }
    let segments = writer_thread.join().unwrap();
    assert!(
        segments > 20,
        "only {segments} segments: no rotation tested"
    );
    let (_, recovery) = open_dir(&storage, DIR, 1);
    let replay = replayed(&recovery);
    let tailed = split(&out);
    assert_eq!(tailed.len(), replay.len());
    for (lsn, (bytes, (header, record))) in (1..).zip(tailed.iter().zip(&replay)) {
        let (tailed_header, tailed_record, _) = record::decode_ref(bytes).unwrap();
        assert_eq!(tailed_header.lsn, lsn);
        assert_eq!(tailed_header, *header);
        assert_eq!(tailed_record, record.borrowed());
        let mut encoded = Vec::new();
        record::encode(record, header.epoch, header.lsn, &mut encoded);
        assert_eq!(&encoded[..], *bytes, "LSN {lsn} is not byte-identical");
    }
}

/// Writes `total` publishes at `epoch` (committing every 5), then an epoch start and `total`
/// more at `epoch + 1`; returns the writer.
fn two_epochs(storage: &Arc<dyn Storage>, total: u64) -> WalWriter {
    let (mut writer, _) = open_dir(storage, DIR, 1);
    for n in 1..=2 * total {
        if n == total + 1 {
            writer.set_epoch(2);
            let start = Record::EpochStart {
                epoch: 2,
                node_id: "node-b",
                previous_end_lsn: n - 1,
            };
            writer.append(&start).unwrap();
        }
        writer.append(&publish(&data(n, size_of(n)), n)).unwrap();
        if n.is_multiple_of(5) {
            writer.commit(at(n)).unwrap();
        }
    }
    writer.commit(at(0)).unwrap();
    writer
}

/// Goal: a standby that appends its primary's encoded records with `append_encoded` ends up
/// with a stream recovery cannot tell from the primary's (same LSNs, epochs and records), and
/// its writer's epoch follows the records'. Refusals (a gap, a repeat, garbage, two records at
/// once, an epoch going back) change nothing.
#[test]
fn append_encoded_copies_a_stream_and_refuses_what_does_not_follow() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let source = two_epochs(&storage, 150);
    let upto_lsn = source.written_lsn();
    drop(source);
    let bytes = tail_all(&storage, DIR, upto_lsn, 4096);
    let records = split(&bytes);
    let (mut copy, _) = open_dir(&storage, COPY, 1);
    let refuse = |copy: &mut WalWriter, bytes: &[u8]| {
        let before = (copy.appended_lsn(), copy.epoch(), copy.bytes());
        let error = copy.append_encoded(bytes).unwrap_err();
        assert_eq!(before, (copy.appended_lsn(), copy.epoch(), copy.bytes()));
        error
    };
    for (index, one) in records.iter().enumerate() {
        let lsn = index as u64 + 1;
        if lsn == 40 {
            let error = refuse(&mut copy, records[index + 1]);
            assert_eq!(
                error,
                AppendError::OutOfOrder {
                    expected: 40,
                    got: 41
                }
            );
            let error = refuse(&mut copy, records[index - 1]);
            assert_eq!(
                error,
                AppendError::OutOfOrder {
                    expected: 40,
                    got: 39
                }
            );
            let mut flipped = one.to_vec();
            flipped[30] ^= 1;
            assert!(matches!(
                refuse(&mut copy, &flipped),
                AppendError::BadRecord(_)
            ));
            let two = [*one, records[index + 1]].concat();
            assert!(matches!(refuse(&mut copy, &two), AppendError::BadRecord(_)));
            assert!(matches!(refuse(&mut copy, &[]), AppendError::BadRecord(_)));
        }
        assert_eq!(copy.append_encoded(one).unwrap(), lsn);
        if lsn.is_multiple_of(11) {
            copy.commit(at(lsn)).unwrap();
        }
    }
    assert_eq!(copy.epoch(), 2, "the writer's epoch follows the records'");
    // A record of epoch 1 after records of epoch 2 would make the stream's epochs go back.
    let mut stale = Vec::new();
    record::encode(&publish("x", 1), 1, copy.next_lsn(), &mut stale);
    let error = refuse(&mut copy, &stale);
    assert_eq!(error, AppendError::EpochBehind { epoch: 1, last: 2 });
    copy.commit(at(1_000)).unwrap();
    drop(copy);
    let (_, source) = open_dir(&storage, DIR, 2);
    let (_, copied) = open_dir(&storage, COPY, 2);
    assert_eq!(copied.last_epoch, 2);
    assert_eq!(replayed(&copied), replayed(&source));
    assert_eq!(tail_all(&storage, COPY, upto_lsn, 100_000), bytes);
}

/// Goal: a tail that is behind retention is told so (with the first LSN still there), both
/// when it starts and when its segment is removed under it; `first_retained_lsn` agrees.
#[test]
fn a_tail_behind_retention_is_not_retained() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    for n in 1..=400 {
        writer.append(&publish(&data(n, 500), n)).unwrap();
        writer.commit(at(n)).unwrap();
    }
    let mut behind = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    let mut out = Vec::new();
    assert_eq!(behind.read(400, 1_000, &mut out).unwrap(), 1);
    assert_eq!(
        first_retained_lsn(&*storage, Path::new(DIR)).unwrap(),
        Some(1)
    );
    let removed = writer.retain(at(0).unix_ms, 300, 0, 3600).unwrap();
    assert!(!removed.is_empty());
    let first = removed.last().unwrap().last_lsn + 1;
    assert_eq!(
        first_retained_lsn(&*storage, Path::new(DIR)).unwrap(),
        Some(first)
    );
    let expected = TailError::NotRetained {
        first_retained: Some(first),
    };
    let error = behind.read(400, 1_000, &mut out).unwrap_err();
    assert_eq!(error.to_string(), expected.to_string());
    let mut fresh = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, first - 1);
    let error = fresh.read(400, 1_000, &mut out).unwrap_err();
    assert!(matches!(error, TailError::NotRetained { first_retained: Some(lsn) } if lsn == first));
    let mut kept = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, first + 3);
    out.clear();
    assert_eq!(
        kept.read(400, usize::MAX, &mut out).unwrap(),
        400 - first as usize - 2
    );
    assert_eq!(record::frame(&out).unwrap().0.lsn, first + 3);
}

/// Goal: the tail keeps the newest segment open between reads. When retention removes that
/// segment and the next one under it, the tail still returns the rest of the segment it
/// holds (its bytes are intact, as through an open descriptor), then says that what follows
/// is not retained, never that the stream is damaged. (Before the kept descriptor, a removed
/// segment was "gone" at once; with it and no check, the gap to the next segment read as
/// damage.)
#[test]
fn a_tail_holding_a_removed_segment_finishes_it_then_is_not_retained() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    let mut n = 1;
    writer.append(&publish(&data(n, 500), n)).unwrap();
    writer.commit(at(n)).unwrap();
    let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    let mut out = Vec::new();
    assert_eq!(tail.read(n, usize::MAX, &mut out).unwrap(), 1);
    assert_eq!(
        writer.segments(),
        1,
        "the tail holds the only (newest) segment"
    );
    while writer.segments() < 3 {
        n += 1;
        writer.append(&publish(&data(n, 500), n)).unwrap();
        writer.commit(at(n)).unwrap();
    }
    let removed = writer.retain(at(n).unix_ms, u64::MAX, 0, 3600).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    let held_last_lsn = removed[0].last_lsn;
    let first_retained = removed[1].last_lsn + 1;
    out.clear();
    let error = loop {
        match tail.read(n, usize::MAX, &mut out) {
            Ok(0) => panic!("the tail stopped at {} without an error", tail.next_lsn()),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, TailError::NotRetained { first_retained: Some(lsn) } if lsn == first_retained),
        "{error}"
    );
    let lsns: Vec<u64> = split(&out)
        .iter()
        .map(|bytes| record::frame(bytes).unwrap().0.lsn)
        .collect();
    assert_eq!(lsns, (2..=held_last_lsn).collect::<Vec<_>>());
}

/// Goal: damage at or below the written LSN is an error naming the file and offset, while
/// what is not written yet (zeros past the end, a published LSN ahead of the disk) ends a
/// read quietly. Also: nothing but `*.wal` files is read (`next.wal.tmp`).
#[test]
fn damage_is_reported_and_what_is_not_written_yet_is_not() {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    for n in 1..=200 {
        writer.append(&publish(&data(n, 700), n)).unwrap();
        writer.commit(at(n)).unwrap();
    }
    // The published LSN may be ahead of what this tail sees: it stops at the end, quietly.
    let all = tail_all(&storage, DIR, 200, 10_000);
    let mut ahead = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    let mut out = Vec::new();
    while ahead.read(250, 10_000, &mut out).unwrap() > 0 {}
    assert_eq!((ahead.next_lsn(), &out), (201, &all));
    // A flipped bit in the second segment's third record.
    let second = list_segments(&*storage, Path::new(DIR)).unwrap()[1].clone();
    let path = Path::new(DIR).join(&second.1);
    let mut bytes = mem.contents(&path).unwrap();
    let records = split(&all);
    let skip: usize = (second.0 - 1 + 2) as usize;
    let offset = segment::HEADER_BYTES
        + records[second.0 as usize - 1..skip]
            .iter()
            .map(|r| r.len())
            .sum::<usize>();
    bytes[offset + 40] ^= 0x10;
    mem.set_contents(&path, bytes);
    let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    out.clear();
    let error = loop {
        match tail.read(200, 10_000, &mut out) {
            Ok(records) => assert!(records > 0),
            Err(error) => break error,
        }
    };
    let TailError::Damage { file, offset: at } = error else {
        panic!("{error}");
    };
    assert_eq!((file, at), (second.1.clone(), offset as u64));
    assert_eq!(tail.next_lsn(), second.0 + 2);
    // Below the damage the tail gives every record; up to it, nothing is damaged.
    out.clear();
    let mut below = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    while below.read(second.0 + 1, 10_000, &mut out).unwrap() > 0 {}
    assert_eq!(below.next_lsn(), second.0 + 2);
}

/// Goal: an empty stream started past LSN 1 (`open_at`) is tailed from its first LSN;
/// `first_retained_lsn` is None until a record is there.
#[test]
fn a_stream_started_past_one_is_tailed_from_its_first_lsn() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut writer, recovery) = WalWriter::open_at(
        Arc::clone(&storage),
        Path::new(DIR),
        STREAM,
        1,
        options(),
        RecoveryMode::Strict,
        at(0),
        500,
    )
    .unwrap();
    assert_eq!((recovery.last_lsn, writer.next_lsn()), (None, 500));
    assert_eq!(first_retained_lsn(&*storage, Path::new(DIR)).unwrap(), None);
    let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 500);
    let mut out = Vec::new();
    assert_eq!(tail.read(499, 1_000, &mut out).unwrap(), 0);
    assert_eq!(writer.append(&publish("a", 1)).unwrap(), 500);
    writer.commit(at(1)).unwrap();
    assert_eq!(tail.read(500, 1_000, &mut out).unwrap(), 1);
    assert_eq!(
        first_retained_lsn(&*storage, Path::new(DIR)).unwrap(),
        Some(500)
    );
    let mut early = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    assert!(matches!(
        early.read(500, 1_000, &mut out),
        Err(TailError::NotRetained {
            first_retained: Some(500)
        })
    ));
}

/// A stream of a few minimum-size segments, its files' names and bytes, and its last LSN.
fn small_stream() -> (Vec<(String, Vec<u8>)>, u64) {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    for n in 1..=120 {
        writer
            .append(&publish(&data(n, (n as usize * 53) % 2_000), n))
            .unwrap();
        writer.commit(at(n)).unwrap();
    }
    let files = storage.list(Path::new(DIR)).unwrap();
    let files = files
        .into_iter()
        .map(|name| {
            let bytes = mem.contents(&Path::new(DIR).join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    (files, writer.written_lsn())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Goal: whatever happens to a tailed segment's bytes (bit flips, a cut), the tail never
    /// panics and every record it yields passes `frame`, with consecutive LSNs from 1.
    #[test]
    fn damaged_segments_never_panic_nor_yield_unframed_records(
        target in 0usize..8,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        max_bytes in 1usize..5_000,
    ) {
        let (files, last_lsn) = small_stream();
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        storage.create_dir_all(Path::new(DIR)).unwrap();
        let segments: Vec<&String> = files.iter().map(|(name, _)| name).filter(|name| name.ends_with(".wal")).collect();
        let target = segments[target % segments.len()];
        for (name, bytes) in &files {
            let mut bytes = bytes.clone();
            if name == target {
                for (index, bit) in &flips {
                    let at = index.index(bytes.len());
                    bytes[at] ^= 1 << bit;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
            }
            let path = Path::new(DIR).join(name);
            storage.create(&path, 0).unwrap();
            mem.set_contents(&path, bytes);
        }
        let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match tail.read(last_lsn, max_bytes, &mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut rest = &out[..];
        let mut lsn = 1;
        while !rest.is_empty() {
            let (header, _) = record::frame(rest).expect("every record yielded is framed");
            prop_assert_eq!(header.lsn, lsn);
            lsn += 1;
            rest = &rest[header.len as usize..];
        }
        prop_assert_eq!(lsn, tail.next_lsn());
    }
}

/// Goal: a writer torn mid-write (`FaultyStorage`: the process dies) leaves a stream whose
/// tail gives every record up to the last written LSN it reported, and nothing of the torn
/// one; a tail whose storage fails reports `Io`.
#[test]
fn a_torn_writer_leaves_every_reported_record_to_the_tail() {
    use crate::wal::storage::{Fault, FaultyStorage};
    let mem = MemStorage::new();
    let inner: Arc<dyn Storage> = Arc::new(mem.clone());
    let faulty = FaultyStorage::new(Arc::clone(&inner));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    let mut written = 0;
    for n in 1..=300 {
        if n == 250 {
            faulty.arm(Fault::TornWrite(400));
        }
        writer.append(&publish(&data(n, 600), n)).unwrap();
        match writer.commit(at(n)) {
            Ok(result) => written = result.written_lsn,
            Err(_) => break,
        }
    }
    assert_eq!(written, 249);
    let mut dead = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, 1);
    let error = dead.read(written, 1_000, &mut Vec::new()).unwrap_err();
    assert!(matches!(error, TailError::Io(_)), "{error}");
    let bytes = tail_all(&inner, DIR, written, 2_000);
    assert_eq!(split(&bytes).len(), 249);
    let mut beyond = Tail::new(Arc::clone(&inner), Path::new(DIR), STREAM, written + 1);
    let mut out = Vec::new();
    let _ = beyond.read(written + 1, 1_000, &mut out);
    assert!(out.is_empty(), "nothing of the torn record");
}
