//! Tests of the stream writer and recovery over `MemStorage` (a disk with a page cache) and
//! `FaultyStorage` (injected ENOSPC, EIO, torn writes). Each test states what it proves; the
//! seeded simulation at the end prints its seed on failure.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::wal::storage::{Fault, FaultRates, FaultyStorage, MemStorage};

const DIR: &str = "/data/wal/core-0";
const SEGMENT: u64 = limits::WAL_SEGMENT_BYTES_MIN;

fn options(fsync: FsyncPolicy) -> WalOptions {
    WalOptions {
        segment_bytes: SEGMENT,
        fsync,
        fsync_interval_ms: 10,
        zero_fill: false,
    }
}

fn at(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// The n-th test publish, `size` bytes of data.
fn data(n: u64, size: usize) -> String {
    let mut text = format!("{n}:");
    while text.len() < size {
        text.push((b'a' + (text.len() % 26) as u8) as char);
    }
    text
}

fn publish(data: &str, seq: u64) -> Record<&str> {
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

fn open(
    storage: &Arc<dyn Storage>,
    fsync: FsyncPolicy,
    mode: RecoveryMode,
) -> Result<(WalWriter, Recovery), RecoveryError> {
    WalWriter::open(
        Arc::clone(storage),
        Path::new(DIR),
        "core-0",
        1,
        options(fsync),
        mode,
        at(0),
    )
}

/// Every replayed record as (lsn, data).
fn replayed(recovery: &Recovery) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    recovery
        .replay(|header, record| {
            let Record::Publish { data, .. } = record else {
                panic!("only publishes here: {record:?}");
            };
            seen.push((header.lsn, data.to_string()));
        })
        .unwrap();
    seen
}

// A new stream starts at LSN 1; a reopened one replays what was written in order and goes on
// at the next LSN, across several segments.
#[test]
fn records_survive_a_reopen_across_segments_and_lsns_go_on() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert_eq!((recovery.last_lsn, writer.next_lsn()), (None, 1));
    let mut expected = Vec::new();
    for n in 1..=1000u64 {
        let text = data(n, 200);
        assert_eq!(writer.append(&publish(&text, n)).unwrap(), n);
        expected.push((n, text));
        if n % 16 == 0 {
            let result = writer.commit(at(n)).unwrap();
            assert_eq!((result.written_lsn, result.synced_lsn), (n, n));
        }
    }
    writer.commit(at(2000)).unwrap();
    assert!(writer.segments() >= 4, "{} segments", writer.segments());
    drop(writer);
    let (mut writer, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(1000));
    assert_eq!(recovery.torn, None);
    assert_eq!(replayed(&recovery), expected);
    assert_eq!(writer.append(&publish("next", 1001)).unwrap(), 1001);
    writer.commit(at(3000)).unwrap();
    // The directory holds segments named by their first LSN, contiguous, and no leftovers.
    let names = memory.list(Path::new(DIR)).unwrap();
    assert!(
        names
            .iter()
            .all(|name| segment::parse_file_name(name).is_some()),
        "{names:?}"
    );
}

// `zero_fill` (what `always` uses): segments are prepared by a helper thread, written with
// zeros and synced before a record goes in. Records still cross segments in order, the commit
// that finds the next segment unfinished does not wait for it, and the append that needs it
// does; a reopen finds every record and no leftover.
#[test]
fn zero_filled_segments_hold_every_record_across_rotations() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let zero_filled = WalOptions {
        zero_fill: true,
        ..options(FsyncPolicy::Always)
    };
    let open_zero_filled = || {
        let dir = Path::new(DIR);
        WalWriter::open(
            Arc::clone(&storage),
            dir,
            "core-0",
            1,
            zero_filled,
            RecoveryMode::Strict,
            at(0),
        )
    };
    let (mut writer, _) = open_zero_filled().unwrap();
    let mut expected = Vec::new();
    for n in 1..=1000u64 {
        let text = data(n, 200);
        assert_eq!(writer.append(&publish(&text, n)).unwrap(), n);
        expected.push((n, text));
        let result = writer.commit(at(n)).unwrap();
        assert_eq!(result.synced_lsn, n);
    }
    assert!(writer.segments() >= 4, "{} segments", writer.segments());
    drop(writer);
    let (_, recovery) = open_zero_filled().unwrap();
    assert_eq!(replayed(&recovery), expected);
    for name in memory.list(Path::new(DIR)).unwrap() {
        assert!(segment::parse_file_name(&name).is_some(), "{name}");
    }
}

// A disk that fills up: the next segment cannot be created, so `append` refuses (nothing
// appended, nothing failed to write) once the current segment is full, and accepts again after
// `retry_space` finds space. What was appended before is intact.
#[test]
fn a_full_disk_refuses_appends_before_anything_is_appended_and_recovers() {
    let memory = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    faulty.arm(Fault::NoSpace);
    let text = data(0, 500);
    let mut refused_at = None;
    for n in 1..=1000u64 {
        match writer.append(&publish(&text, n)) {
            Ok(lsn) => assert_eq!(lsn, n),
            Err(AppendError::Full) => {
                refused_at = Some(n);
                break;
            }
            Err(other) => panic!("{other}"),
        }
        writer.commit(at(n)).unwrap();
    }
    let refused_at = refused_at.expect("the segment filled up");
    assert!(writer.is_full());
    assert_eq!(
        writer.appended_lsn(),
        refused_at - 1,
        "nothing of the refused record"
    );
    assert_eq!(
        writer.synced_lsn(),
        refused_at - 1,
        "everything before it is durable"
    );
    assert!(writer.poisoned().is_none());
    // Still full: retries are paced and fail.
    assert!(!writer.retry_space(at(5_000)));
    assert!(
        !writer.retry_space(at(5_100)),
        "at most one try per WAL_SPACE_RETRY_MS"
    );
    assert_eq!(writer.append(&publish(&text, 0)), Err(AppendError::Full));
    faulty.clear_no_space();
    assert!(
        !writer.retry_space(at(5_500)),
        "too soon after the last try"
    );
    assert!(writer.retry_space(at(6_000)));
    assert_eq!(
        writer.append(&publish(&text, refused_at)).unwrap(),
        refused_at
    );
    writer.commit(at(6_001)).unwrap();
    drop(writer);
    let (_, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(refused_at));
    assert_eq!(replayed(&recovery).len() as u64, refused_at);
}

// ENOSPC on a write (a filesystem that could not preallocate) and EIO on a write both poison:
// the records of the failed write are never reported written, and every later call refuses.
#[test]
fn a_write_error_poisons_and_reports_nothing_written() {
    for fault in [Fault::WriteEio, Fault::NoSpaceOnWrite] {
        let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let (mut writer, _) = open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
        writer.append(&publish("a", 1)).unwrap();
        writer.commit(at(1)).unwrap();
        writer.append(&publish("b", 2)).unwrap();
        faulty.arm(fault);
        let poisoned = writer.commit(at(2)).unwrap_err();
        assert_eq!(poisoned.context, "write segment", "{fault:?}");
        assert_eq!(writer.written_lsn(), 1);
        assert_eq!(writer.synced_lsn(), 0);
        faulty.clear_no_space();
        assert!(matches!(
            writer.append(&publish("c", 3)),
            Err(AppendError::Poisoned(_))
        ));
        assert!(writer.commit(at(100)).is_err());
        assert!(writer.sync(at(100)).is_err());
        assert!(writer.retain(0, 0, 0, 0).is_err());
        assert!(!writer.retry_space(at(10_000)));
        assert_eq!(writer.written_lsn(), 1);
    }
}

// EIO on fsync poisons (fsyncgate: the pages may be gone; a retry would lie): the synced
// position stays where it was, and nothing is synced or written afterwards.
#[test]
fn a_sync_error_poisons_and_reports_nothing_synced() {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    writer.append(&publish("a", 1)).unwrap();
    assert_eq!(writer.commit(at(1)).unwrap().synced_lsn, 1);
    writer.append(&publish("b", 2)).unwrap();
    faulty.arm(Fault::SyncEio);
    let poisoned = writer.commit(at(2)).unwrap_err();
    assert_eq!(poisoned.context, "sync segment");
    assert_eq!(
        poisoned.kind,
        io::Error::from_raw_os_error(libc::EIO).kind()
    );
    assert_eq!((writer.written_lsn(), writer.synced_lsn()), (2, 1));
    assert!(
        writer.sync(at(3)).is_err(),
        "no second try after a failed fsync"
    );
    assert_eq!(writer.synced_lsn(), 1);
}

// A write torn by a crash (a prefix of the tick reached the disk): recovery keeps exactly the
// records that are whole, truncates the rest, says how many bytes, and appends go on after the
// last whole record.
#[test]
fn a_torn_write_recovers_the_valid_prefix() {
    let memory = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
    for n in 1..=3 {
        writer.append(&publish(&data(n, 100), n)).unwrap();
    }
    writer.commit(at(1)).unwrap();
    let tick: Vec<String> = (4..=7).map(|n| data(n, 100)).collect();
    for (n, text) in (4..).zip(&tick) {
        writer.append(&publish(text, n)).unwrap();
    }
    // Two whole records of the tick and half of the third reach the disk.
    let record_len = publish(&tick[0], 4).encoded_len();
    faulty.arm(Fault::TornWrite(2 * record_len + record_len / 2));
    assert!(writer.commit(at(2)).is_err());
    assert_eq!(
        writer.written_lsn(),
        3,
        "the torn tick was never reported written"
    );
    drop(writer);
    memory.process_crash();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, recovery) =
        open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(5));
    let torn = recovery.torn.clone().expect("a torn tail");
    assert!(torn.bytes >= (record_len / 2) as u64, "{torn:?}");
    assert!(recovery.truncated_bytes >= torn.bytes);
    let lsns: Vec<u64> = replayed(&recovery).iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(lsns, [1, 2, 3, 4, 5]);
    assert_eq!(writer.append(&publish("after", 6)).unwrap(), 6);
    writer.commit(at(3)).unwrap();
    drop(writer);
    let (_, recovery) = open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.torn, None, "the tail was repaired");
    assert_eq!(recovery.last_lsn, Some(6));
}

// Damage in the middle of the log is never truncated silently: a strict open names the file
// and byte offset; a salvaging open skips the damaged record, reports the LSN lost, and
// continues.
#[test]
fn damage_before_the_tail_is_an_error_unless_salvaging() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    for n in 1..=10 {
        writer.append(&publish(&data(n, 50), n)).unwrap();
    }
    writer.commit(at(1)).unwrap();
    drop(writer);
    let path = Path::new(DIR).join(segment::file_name(1));
    let mut bytes = memory.contents(&path).unwrap();
    let record_len = publish(&data(1, 50), 1).encoded_len();
    let fifth = segment::HEADER_BYTES + 4 * record_len;
    bytes[fifth + 40] ^= 0x10;
    memory.set_contents(&path, bytes);
    let error = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&segment::file_name(1)) && text.contains(&format!("byte {fifth}")),
        "{text}"
    );
    let (mut writer, recovery) =
        open(&storage, FsyncPolicy::Always, RecoveryMode::Salvage).unwrap();
    let lsns: Vec<u64> = replayed(&recovery).iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(lsns, [1, 2, 3, 4, 6, 7, 8, 9, 10]);
    let (file, salvaged) = &recovery.salvaged[0];
    assert_eq!(file, &segment::file_name(1));
    assert_eq!(
        (salvaged.offset, salvaged.lsn_first, salvaged.lsn_end),
        (fifth as u64, 5, 6)
    );
    assert_eq!(writer.append(&publish("x", 11)).unwrap(), 11);
}

// With `always`, every LSN reported synced survives a power loss (only synced bytes and names
// remain), whatever was written after it.
#[test]
fn with_always_every_synced_lsn_survives_a_power_loss() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    let mut texts = Vec::new();
    for n in 1..=700u64 {
        texts.push(data(n, 100 + (n as usize * 37) % 400));
        writer.append(&publish(&texts[n as usize - 1], n)).unwrap();
        if n % 7 == 0 {
            writer.commit(at(n)).unwrap();
        }
    }
    let synced = writer.synced_lsn();
    assert_eq!(synced, 700);
    // A last tick appended but not committed: lost, and never reported.
    writer.append(&publish("lost", 701)).unwrap();
    drop(writer);
    memory.power_loss();
    let (_, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(synced));
    let replay = replayed(&recovery);
    assert_eq!(replay.len() as u64, synced);
    for (lsn, text) in replay {
        assert_eq!(text, texts[lsn as usize - 1]);
    }
}

// With `interval`, every LSN reported written survives a process crash (the kernel keeps
// written bytes), synced or not.
#[test]
fn with_interval_every_written_lsn_survives_a_process_crash() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
    for n in 1..=505u64 {
        writer.append(&publish(&data(n, 300), n)).unwrap();
        // Ticks 1 ms apart: a sync every 10 ms at most.
        writer.commit(at(n)).unwrap();
    }
    assert_eq!(writer.written_lsn(), 505);
    assert!(
        writer.synced_lsn() < 505,
        "the last ticks are not synced yet"
    );
    assert!(writer.sync_due(600));
    drop(writer);
    memory.process_crash();
    let (_, recovery) = open(&storage, FsyncPolicy::Interval, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(505));
}

// Retention removes sealed segments oldest first: only those wholly below `needed_lsn`, only
// when over the size budget or older than `retain_secs`, never the current one; the stream
// still opens afterwards.
#[test]
fn retention_removes_old_segments_it_does_not_need() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Never, RecoveryMode::Strict).unwrap();
    for n in 1..=2000u64 {
        writer.append(&publish(&data(n, 200), n)).unwrap();
        if n % 10 == 0 {
            writer.commit(at(n)).unwrap();
        }
    }
    writer.commit(at(3000)).unwrap();
    let segments = writer.segments();
    assert!(segments >= 6, "{segments}");
    let now_unix = at(3000).unix_ms;
    // Within budget and young: nothing goes.
    assert!(
        writer
            .retain(now_unix, 2001, u64::MAX, 600)
            .unwrap()
            .is_empty()
    );
    // Over budget, but everything is still needed: nothing goes.
    assert!(writer.retain(now_unix, 1, 0, 600).unwrap().is_empty());
    // Over budget: segments wholly below LSN 1000 go, oldest first.
    let removed = writer.retain(now_unix, 1000, 0, 600).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(removed[0].first_lsn, 1);
    assert!(
        removed
            .windows(2)
            .all(|pair| pair[0].last_lsn + 1 == pair[1].first_lsn)
    );
    assert!(removed.iter().all(|segment| segment.last_lsn < 1000));
    // Old enough: everything but the current segment goes.
    let removed = writer
        .retain(now_unix + 601_000, u64::MAX, u64::MAX, 600)
        .unwrap();
    assert!(!removed.is_empty());
    assert_eq!(writer.segments(), 1);
    writer.commit(at(3001)).unwrap();
    drop(writer);
    let (_, recovery) = open(&storage, FsyncPolicy::Never, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(2000));
    assert!(recovery.first_lsn.unwrap() > 1000);
}

// A record larger than a segment gets a segment of its own (grown to fit); a tick larger than
// `WAL_TICK_BYTES_MAX` is written early, without waiting for the commit.
#[test]
fn oversized_records_and_ticks_are_bounded() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    let big = data(0, SEGMENT as usize * 2);
    assert_eq!(writer.append(&publish(&big, 1)).unwrap(), 1);
    assert_eq!(writer.append(&publish(&big, 2)).unwrap(), 2);
    writer.commit(at(1)).unwrap();
    drop(writer);
    let (_, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    let replay = replayed(&recovery);
    assert_eq!(replay.len(), 2);
    assert_eq!(replay[1].1, big);
    // Segments large enough for a whole tick: the early write stays unsynced until the commit.
    let (mut writer, _) = WalWriter::open(
        Arc::clone(&storage),
        Path::new("/data/wal/core-1"),
        "core-1",
        1,
        WalOptions {
            segment_bytes: 4 * limits::WAL_TICK_BYTES_MAX as u64,
            ..options(FsyncPolicy::Always)
        },
        RecoveryMode::Strict,
        at(0),
    )
    .unwrap();
    let chunk = data(3, limits::WAL_TICK_BYTES_MAX / 3);
    for n in 1..=4 {
        writer.append(&publish(&chunk, n)).unwrap();
    }
    assert_eq!(writer.written_lsn(), 2, "written early, before the commit");
    assert_eq!(writer.synced_lsn(), 0, "but not synced before it");
    assert_eq!(writer.commit(at(2)).unwrap().synced_lsn, 4);
    let too_large = "x".repeat(limits::WAL_RECORD_BYTES_MAX);
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert!(matches!(
        writer.append(&publish(&too_large, 7)),
        Err(AppendError::TooLarge { .. })
    ));
}

// Epochs never go back: a stream written at epoch 3 does not open at epoch 2.
#[test]
fn opening_at_an_older_epoch_is_refused() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let dir = Path::new(DIR);
    let (mut writer, _) = WalWriter::open(
        Arc::clone(&storage),
        dir,
        "core-0",
        3,
        options(FsyncPolicy::Always),
        RecoveryMode::Strict,
        at(0),
    )
    .unwrap();
    writer.append(&publish("x", 1)).unwrap();
    writer.commit(at(1)).unwrap();
    drop(writer);
    let error = WalWriter::open(
        Arc::clone(&storage),
        dir,
        "core-0",
        2,
        options(FsyncPolicy::Always),
        RecoveryMode::Strict,
        at(0),
    )
    .unwrap_err();
    assert!(
        matches!(error, RecoveryError::EpochBehind { found: 3, .. }),
        "{error}"
    );
}

// Leftovers of a crash between creating and using a segment (a `next.wal.tmp`, a renamed
// segment whose header never reached the disk) are removed at recovery, and the stream goes on
// at the right LSN.
#[test]
fn crash_leftovers_around_rotation_are_removed() {
    let memory = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(memory.clone());
    let (mut writer, _) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    writer.append(&publish("a", 1)).unwrap();
    writer.commit(at(1)).unwrap();
    drop(writer);
    let dir = Path::new(DIR);
    let (mut tmp, _) = memory.create(&dir.join(NEXT_SEGMENT_NAME), 4096).unwrap();
    tmp.write_at(0, b"garbage").unwrap();
    // A segment renamed into place whose header never reached the disk.
    memory
        .create(&dir.join(segment::file_name(2)), 4096)
        .unwrap();
    let (_, recovery) = open(&storage, FsyncPolicy::Always, RecoveryMode::Strict).unwrap();
    assert_eq!(recovery.last_lsn, Some(1));
    assert!(
        recovery.removed.contains(&NEXT_SEGMENT_NAME.to_string()),
        "{:?}",
        recovery.removed
    );
    let names = memory.list(dir).unwrap();
    assert!(!names.contains(&NEXT_SEGMENT_NAME.to_string()));
}

// A seeded simulation of crashes: random ticks of random records over a disk that fails at
// random (EIO on write or sync, torn writes, full disk), with a process crash or a power loss
// (keeping only synced bytes, or those plus unsynced pages written back in any order)
// whenever the writer is poisoned or "dies". After every restart: each LSN ever reported
// written (process crash) or synced (power loss) is there with its bytes, no record that was
// never appended shows up, and appends go on after the last recovered LSN.
#[test]
fn seeded_crash_simulation_keeps_every_reported_lsn() {
    // RINGCAST_WAL_SIMULATIONS=N runs more seeds (a failure names its seed).
    let seeds: u64 = std::env::var("RINGCAST_WAL_SIMULATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut injected = 0;
    for seed in 1..=seeds {
        injected += simulate(seed);
    }
    assert!(
        injected >= 40,
        "the schedule injected only {injected} faults"
    );
}

/// One simulated run; returns how many faults were injected.
fn simulate(seed: u64) -> u64 {
    let mut injected = 0;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound.max(1)
    };
    let memory = MemStorage::new();
    let rates = FaultRates {
        no_space_per_million: 20_000,
        write_eio_per_million: 5_000,
        sync_eio_per_million: 5_000,
        torn_write_per_million: 10_000,
    };
    let fsync = [FsyncPolicy::Always, FsyncPolicy::Interval][seed as usize % 2];
    // What each LSN holds (as appended), and the positions reported.
    let mut appended: Vec<String> = Vec::new();
    let mut mono = 0;
    for restart in 0..6 {
        let faulty = FaultyStorage::seeded(Arc::new(memory.clone()), seed * 100 + restart, rates);
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let Ok((mut writer, recovery)) = open(&storage, fsync, RecoveryMode::Strict) else {
            // The open itself met a fault (a full disk for the first segment, say): try again.
            continue;
        };
        let recovered = recovery.last_lsn.unwrap_or(0);
        let replay = replayed(&recovery);
        assert_eq!(replay.len() as u64, recovered, "seed {seed}");
        for (lsn, text) in &replay {
            assert_eq!(
                Some(text),
                appended.get(*lsn as usize - 1),
                "seed {seed} lsn {lsn}"
            );
        }
        appended.truncate(recovered as usize);
        let (mut written, mut synced) = (recovered, recovered);
        loop {
            mono += 1 + next(5);
            let now = at(mono);
            writer.retry_space(now);
            let mut stop = false;
            for _ in 0..=next(8) {
                let text = data(appended.len() as u64 + 1, 20 + next(600) as usize);
                match writer.append(&publish(&text, 0)) {
                    Ok(lsn) => {
                        assert_eq!(lsn, appended.len() as u64 + 1, "seed {seed}");
                        appended.push(text);
                    }
                    Err(AppendError::Full) => break,
                    Err(_) => {
                        stop = true;
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            match writer.commit(now) {
                Ok(result) => {
                    assert!(result.written_lsn >= written && result.synced_lsn >= synced);
                    written = result.written_lsn;
                    synced = result.synced_lsn;
                }
                Err(_) => break,
            }
            if next(50) == 0 {
                break; // A crash for no reason at all.
            }
        }
        drop(writer);
        injected += faulty.injected();
        let power_loss = next(2) == 0;
        let survives = if power_loss {
            if next(2) == 0 {
                memory.power_loss();
            } else {
                memory.power_loss_reordered(next(u64::MAX));
            }
            if fsync == FsyncPolicy::Always {
                synced
            } else {
                synced.min(written)
            }
        } else {
            memory.process_crash();
            written
        };
        let storage: Arc<dyn Storage> = Arc::new(memory.clone());
        let (_, recovery) = open(&storage, fsync, RecoveryMode::Strict)
            .unwrap_or_else(|error| panic!("seed {seed} restart {restart}: {error}"));
        let recovered = recovery.last_lsn.unwrap_or(0);
        assert!(
            recovered >= survives,
            "seed {seed} restart {restart}: recovered {recovered} < reported {survives} (power loss {power_loss})"
        );
        assert!(
            recovered <= appended.len() as u64,
            "seed {seed}: never appended"
        );
    }
    injected
}
