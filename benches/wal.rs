//! The write-ahead log's hot paths: append + group commit of 200-byte publishes (16 records per
//! commit, fsync never, real files on tmpfs when there is one), decoding one record, and
//! replaying 1,000,000 publishes with a small state rebuild (last sequence and a 100-event
//! history per channel), which bounds how long a restart takes. Numbers go to
//! docs/BENCHMARKS.md.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringcast::config::FsyncPolicy;
use ringcast::wal::{FsStorage, Now, Record, RecoveryMode, Storage, WalOptions, WalWriter, record};

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const CHANNELS: usize = 100;

fn bench_dir(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("ringcast-bench-wal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &Path) -> (WalWriter, ringcast::wal::Recovery) {
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    WalWriter::open(
        storage,
        dir,
        "core-0",
        1,
        WalOptions {
            segment_bytes: SEGMENT_BYTES,
            fsync: FsyncPolicy::Never,
            fsync_interval_ms: 10,
            zero_fill: false,
        },
        RecoveryMode::Strict,
        Now::default(),
    )
    .unwrap()
}

fn channel_names() -> Vec<String> {
    (0..CHANNELS)
        .map(|n| format!("private-channel-{n}"))
        .collect()
}

fn publish<'a>(channel: &'a str, data: &'a str, seq: u64) -> Record<&'a str> {
    Record::Publish {
        app_id: "123456",
        channel,
        channel_epoch: 1,
        seq,
        event: "price-update",
        data,
        exclude: Some((1234, 5678)),
        user_id: None,
        published_ms: 1_700_000_000_000 + seq,
        flags: 0,
    }
}

fn append_commit(c: &mut Criterion) {
    let dir = bench_dir("append");
    let (mut writer, _) = open(&dir);
    let channels = channel_names();
    let data = "d".repeat(200);
    let mut seq = 0u64;
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(16));
    group.bench_function("append_16x200B_publishes_and_commit", |b| {
        b.iter(|| {
            for _ in 0..16 {
                seq += 1;
                let channel = &channels[seq as usize % CHANNELS];
                writer.append(&publish(channel, &data, seq)).unwrap();
            }
            writer.commit(Now::default()).unwrap();
            if writer.bytes() > 8 * SEGMENT_BYTES {
                writer.retain(u64::MAX, u64::MAX, 0, 0).unwrap();
            }
        })
    });
    let mut encoded = Vec::new();
    record::encode(&publish(&channels[0], &data, 1), 1, 1, &mut encoded);
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_ref_200B_publish", |b| {
        b.iter(|| record::decode_ref(black_box(&encoded)).unwrap().2)
    });
    group.finish();
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a restart rebuilds per channel in this bench: the last sequence and a bounded history.
#[derive(Default)]
struct Channel {
    seq: u64,
    history: VecDeque<Box<str>>,
}

fn replay(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let dir = bench_dir("replay");
    {
        let (mut writer, _) = open(&dir);
        let channels = channel_names();
        let data = "d".repeat(200);
        for seq in 1..=RECORDS {
            let channel = &channels[seq as usize % CHANNELS];
            writer.append(&publish(channel, &data, seq)).unwrap();
            if seq % 16 == 0 {
                writer.commit(Now::default()).unwrap();
            }
        }
        writer.commit(Now::default()).unwrap();
    }
    let mut group = c.benchmark_group("wal");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    // Opening scans every segment (checksums, LSNs, the tail) and creates the next segment;
    // replay then reads and decodes every record again and rebuilds the state.
    group.bench_function("open_and_replay_1M_publishes_with_state", |b| {
        b.iter(|| {
            let (writer, recovery) = open(&dir);
            let mut state: HashMap<Box<str>, Channel> = HashMap::with_capacity(CHANNELS);
            let replayed = recovery
                .replay(|_, record| {
                    if let Record::Publish {
                        channel, seq, data, ..
                    } = record
                    {
                        let entry = match state.get_mut(channel) {
                            Some(entry) => entry,
                            None => state.entry(channel.into()).or_default(),
                        };
                        entry.seq = seq;
                        if entry.history.len() == 100 {
                            entry.history.pop_front();
                        }
                        entry.history.push_back(data.into());
                    }
                })
                .unwrap();
            assert_eq!(replayed, RECORDS);
            // Each open starts an empty segment: remove it so the next open sees the same log.
            drop(writer);
            for name in std::fs::read_dir(&dir).unwrap() {
                let path = name.unwrap().path();
                let first = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .and_then(ringcast::wal::segment::parse_file_name);
                if first.is_some_and(|lsn| lsn > RECORDS) {
                    std::fs::remove_file(path).unwrap();
                }
            }
            black_box(state.len())
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, append_commit, replay);
criterion_main!(benches);
