//! Tests of `truncate_after` and `wipe` over `MemStorage`: what moves, what stays, that the
//! stream reopens where it should (also after a power loss), and the empty-stream starts.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::wal::record::Record;
use crate::wal::storage::MemStorage;
use crate::wal::stream::WalWriter;
use crate::wal::tail::tests::{at, data, open_dir, options, publish, replayed, split};
use crate::wal::tail::{Tail, first_retained_lsn};

const DIR: &str = "/data/wal/core-0";
const STREAM: &str = "core-0";
const DIVERGENT: &str = "/data/divergent/core-0-epoch-1.wal";

/// A stream of `total` publishes of assorted sizes at epoch 1 (over many segments), then
/// `divergent` more at epoch 2; committed, synced and closed.
fn stream_with_suffix(storage: &Arc<dyn Storage>, total: u64, divergent: u64) {
    let (mut writer, _) = open_dir(storage, DIR, 1);
    for n in 1..=total {
        writer
            .append(&publish(&data(n, (n as usize * 71) % 1_500), n))
            .unwrap();
        writer.commit(at(n)).unwrap();
    }
    writer.set_epoch(2);
    for n in 1..=divergent {
        writer.append(&publish(&data(n, 900), n)).unwrap();
        writer.commit(at(total + n)).unwrap();
    }
    writer.sync(at(total + divergent)).unwrap();
}

/// Goal: `truncate_after` moves exactly the records above the LSN (their raw bytes, in order)
/// into the divergent file, and the stream reopens (also after a power loss) with that LSN
/// last and its epoch back to what the kept records carry; appends continue after it. The cut
/// falls inside a segment, and later segments are removed.
#[test]
fn truncate_after_moves_the_divergent_suffix_and_the_stream_reopens_before_it() {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    stream_with_suffix(&storage, 300, 150);
    let before = replayed(&open_dir(&storage, DIR, 2).1);
    let after_lsn = 237;
    let divergent = Path::new(DIVERGENT);
    let moved = truncate_after(&*storage, Path::new(DIR), STREAM, after_lsn, divergent).unwrap();
    assert_eq!(moved, 450 - after_lsn);
    let file = mem.contents(divergent).unwrap();
    let records = split(&file);
    assert_eq!(records.len() as u64, moved);
    for (lsn, bytes) in (after_lsn + 1..).zip(&records) {
        let (header, record, _) = record::decode(bytes).unwrap();
        assert_eq!((header, record), before[lsn as usize - 1].clone());
    }
    mem.power_loss();
    let (mut writer, recovery) = open_dir(&storage, DIR, 1);
    assert_eq!(recovery.last_lsn, Some(after_lsn));
    assert_eq!(recovery.last_epoch, 1);
    assert_eq!(replayed(&recovery), before[..after_lsn as usize].to_vec());
    assert_eq!(writer.append(&publish("again", 1)).unwrap(), after_lsn + 1);
    // Nothing above the LSN: nothing to do, and no file.
    drop(writer);
    let elsewhere = Path::new("/data/divergent/none.wal");
    let moved = truncate_after(&*storage, Path::new(DIR), STREAM, 900, elsewhere).unwrap();
    assert_eq!(moved, 0);
    assert!(mem.contents(elsewhere).is_none());
    // An existing divergent file is never overwritten.
    let error = truncate_after(&*storage, Path::new(DIR), STREAM, 10, divergent).unwrap_err();
    assert!(matches!(error, RecoveryError::Io { .. }), "{error}");
    assert_eq!(open_dir(&storage, DIR, 1).1.last_lsn, Some(after_lsn));
}

/// Goal: when the LSN to keep is below the stream's first record (retention removed the
/// shared part), every record moves, and the stream reopens empty at that LSN + 1 with plain
/// `open`; a tail starts there.
#[test]
fn truncate_after_below_the_first_record_starts_the_stream_after_it() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut writer, _) = open_dir(&storage, DIR, 1);
    for n in 1..=300 {
        writer.append(&publish(&data(n, 800), n)).unwrap();
        writer.commit(at(n)).unwrap();
    }
    let removed = writer.retain(at(0).unix_ms, u64::MAX, 0, 3600).unwrap();
    let first = removed.last().unwrap().last_lsn + 1;
    drop(writer);
    let after_lsn = first - 10;
    let divergent = Path::new(DIVERGENT);
    let moved = truncate_after(&*storage, Path::new(DIR), STREAM, after_lsn, divergent).unwrap();
    assert_eq!(moved, 300 - first + 1);
    assert_eq!(first_retained_lsn(&*storage, Path::new(DIR)).unwrap(), None);
    let (mut writer, recovery) = open_dir(&storage, DIR, 1);
    assert_eq!(
        (recovery.last_lsn, writer.next_lsn()),
        (None, after_lsn + 1)
    );
    writer.append(&publish("first", 1)).unwrap();
    writer.commit(at(1)).unwrap();
    let mut tail = Tail::new(Arc::clone(&storage), Path::new(DIR), STREAM, after_lsn + 1);
    let mut out = Vec::new();
    assert_eq!(tail.read(after_lsn + 1, 1_000, &mut out).unwrap(), 1);
}

/// Goal: `wipe` leaves nothing of a stream (leftovers included), and `open_at` then starts it
/// at the requested LSN; a reopen with `open` (also after a power loss, before any record)
/// keeps that start, and replay sees the records from there.
#[test]
fn wipe_then_open_at_starts_a_stream_again() {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    stream_with_suffix(&storage, 200, 0);
    wipe(&*storage, Path::new(DIR)).unwrap();
    assert_eq!(storage.list(Path::new(DIR)).unwrap(), Vec::<String>::new());
    wipe(&*storage, Path::new("/data/wal/never")).unwrap();
    let open_at = |first_lsn| {
        WalWriter::open_at(
            Arc::clone(&storage),
            Path::new(DIR),
            STREAM,
            3,
            options(),
            crate::wal::RecoveryMode::Strict,
            at(5),
            first_lsn,
        )
        .unwrap()
    };
    let (writer, recovery) = open_at(7_000);
    assert_eq!((recovery.last_lsn, writer.next_lsn()), (None, 7_000));
    drop(writer);
    mem.power_loss();
    let (mut writer, _) = open_dir(&storage, DIR, 3);
    assert_eq!(writer.next_lsn(), 7_000);
    for n in 0..50 {
        writer.append(&publish(&data(n, 1_700), n)).unwrap();
        writer.commit(at(n)).unwrap();
    }
    drop(writer);
    // A stream holding records ignores the start asked for.
    let (writer, recovery) = open_at(2);
    assert_eq!(
        (recovery.first_lsn, recovery.last_lsn),
        (Some(7_000), Some(7_049))
    );
    assert_eq!(writer.next_lsn(), 7_050);
    let lsns: Vec<u64> = replayed(&recovery).iter().map(|(h, _)| h.lsn).collect();
    assert_eq!(lsns, (7_000..7_050).collect::<Vec<_>>());
    assert!(matches!(
        replayed(&recovery)[0].1,
        Record::Publish { seq: 0, .. }
    ));
}

/// Goal: the divergent records are safe elsewhere before anything is cut: when writing the
/// divergent file fails (a full disk, or a torn write that "kills the process"), the stream
/// is left whole and reopens with every record.
#[test]
fn a_failed_divergent_copy_cuts_nothing() {
    use crate::wal::storage::{Fault, FaultyStorage};
    for fault in [Fault::NoSpaceOnWrite, Fault::TornWrite(100)] {
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        stream_with_suffix(&storage, 150, 30);
        let faulty = FaultyStorage::new(Arc::clone(&storage));
        faulty.arm(fault);
        let divergent = Path::new(DIVERGENT);
        let result = truncate_after(&faulty, Path::new(DIR), STREAM, 100, divergent);
        assert!(result.is_err(), "{fault:?}");
        mem.power_loss();
        let (_, recovery) = open_dir(&storage, DIR, 2);
        assert_eq!(recovery.last_lsn, Some(180), "{fault:?}");
    }
}
