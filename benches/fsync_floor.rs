//! The disk's floor for `fsync = "always"`: how many acknowledged appends per second N
//! closed-loop writers can get from this disk with no server in the way.
//!
//! Two shapes, both with zero protocol work per append: `group` is ideal group commit (every
//! writer appends 256 bytes under a lock and waits; one syncer thread runs one `fdatasync` at a
//! time, covering everything appended before it started: the shape of ringcast's WAL), and
//! `dsync` is every writer issuing its own `O_DSYNC` write at its own offset (what parallel
//! durable writes through the ring would get). Run with
//! `cargo bench --bench fsync_floor -- DIR [SECONDS]`; DIR must be on the disk under test. Group
//! commit runs on a file that is only `fallocate`d (unwritten extents) and on one written with
//! zeros first, to show what zero-filling segments buys. A third argument, a comma-separated
//! list of writer counts (`16` or `1,16`), runs only group commit on a zero-filled file with
//! those writers: the row `benches/always_floor.sh` sets beside ringcast in the same run.
//! This is a measurement tool only: it owns no ringcast code and asserts nothing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const RECORD: [u8; 256] = [b'x'; 256];
const FILE_BYTES: u64 = 1 << 30;

#[derive(Default)]
struct Log {
    written: u64,
    synced: u64,
    offset: u64,
}

fn group_commit(path: &Path, writers: usize, run: Duration, fill: bool) -> (f64, f64) {
    let file = Arc::new(prepared(path, false, fill));
    let log = Arc::new((Mutex::new(Log::default()), Condvar::new(), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (acks, syncs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let syncer = {
        let (file, log, stop, syncs) = (file.clone(), log.clone(), stop.clone(), syncs.clone());
        std::thread::spawn(move || {
            let (lock, synced_cv, work_cv) = &*log;
            while !stop.load(Ordering::Relaxed) {
                let mut state = lock.lock().unwrap();
                while state.written == state.synced && !stop.load(Ordering::Relaxed) {
                    state = work_cv
                        .wait_timeout(state, Duration::from_millis(10))
                        .unwrap()
                        .0;
                }
                let target = state.written;
                drop(state);
                file.sync_data().expect("fdatasync");
                syncs.fetch_add(1, Ordering::Relaxed);
                lock.lock().unwrap().synced = target;
                synced_cv.notify_all();
            }
        })
    };
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (file, log, stop, acks) = (file.clone(), log.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let (lock, synced_cv, work_cv) = &*log;
                while !stop.load(Ordering::Relaxed) {
                    let mut state = lock.lock().unwrap();
                    file.write_all_at(&RECORD, state.offset).expect("write");
                    state.offset = (state.offset + 256) % FILE_BYTES;
                    state.written += 1;
                    let mine = state.written;
                    work_cv.notify_one();
                    while state.synced < mine && !stop.load(Ordering::Relaxed) {
                        state = synced_cv
                            .wait_timeout(state, Duration::from_millis(10))
                            .unwrap()
                            .0;
                    }
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    finish(run, &stop, handles, Some(syncer), &acks, &syncs)
}

fn parallel_dsync(path: &Path, writers: usize, run: Duration) -> (f64, f64) {
    let file = Arc::new(prepared(path, true, true));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..writers as u64)
        .map(|writer| {
            let (file, stop, acks) = (file.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let slice = FILE_BYTES / 64;
                let mut offset = writer * slice;
                while !stop.load(Ordering::Relaxed) {
                    file.write_all_at(&RECORD, offset).expect("dsync write");
                    offset = writer * slice + (offset + 256) % slice;
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let syncs = acks.clone();
    finish(run, &stop, handles, None, &acks, &syncs)
}

/// The probe file, 1 GiB preallocated; with `fill`, written once with zeros (as ringcast
/// zero-fills its segments with `always`), else left as unwritten extents; then synced.
fn prepared(path: &Path, dsync: bool, fill: bool) -> File {
    let mut options = OpenOptions::new();
    options.create(true).read(true).write(true).truncate(true);
    if dsync {
        options.custom_flags(libc::O_DSYNC);
    }
    let file = options.open(path).expect("open the probe file");
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, FILE_BYTES)
        .expect("fallocate");
    if fill {
        let chunk = vec![0u8; 1 << 20];
        for index in 0..FILE_BYTES / chunk.len() as u64 {
            file.write_all_at(&chunk, index * chunk.len() as u64)
                .expect("fill");
        }
    }
    file.sync_all().expect("fsync");
    file
}

fn finish(
    run: Duration,
    stop: &AtomicBool,
    writers: Vec<std::thread::JoinHandle<()>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    acks: &AtomicU64,
    syncs: &AtomicU64,
) -> (f64, f64) {
    let started = Instant::now();
    let base = (acks.load(Ordering::Relaxed), syncs.load(Ordering::Relaxed));
    std::thread::sleep(run);
    let elapsed = started.elapsed().as_secs_f64();
    let counts = (acks.load(Ordering::Relaxed), syncs.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    writers
        .into_iter()
        .chain(syncer)
        .for_each(|handle| handle.join().unwrap());
    (
        (counts.0 - base.0) as f64 / elapsed,
        (counts.1 - base.1) as f64 / elapsed,
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let dir = args.first().map_or_else(std::env::temp_dir, Into::into);
    let seconds = args
        .get(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(seconds);
    let only: Option<Vec<usize>> = args.get(2).map(|list| {
        list.split(',')
            .map(|count| count.trim().parse().expect("writer counts are numbers"))
            .collect()
    });
    let path = dir.join("ringcast-fsync-floor.probe");
    println!(
        "disk floor for acknowledged appends, {} s per row, file {}",
        seconds,
        path.display()
    );
    println!("| shape | writers | acknowledged appends/s | syncs/s | appends per sync |");
    println!("|---|---|---|---|---|");
    let rows: Vec<(usize, bool)> = match &only {
        Some(counts) => counts.iter().map(|&writers| (writers, true)).collect(),
        None => vec![
            (1, false),
            (16, false),
            (1, true),
            (16, true),
            (32, true),
            (64, true),
        ],
    };
    for (writers, fill) in rows {
        let (acks, syncs) = group_commit(&path, writers, run, fill);
        let shape = if fill {
            "zero-filled"
        } else {
            "fallocated only"
        };
        println!(
            "| group commit, {shape} | {writers} | {acks:.0} | {syncs:.0} | {:.1} |",
            acks / syncs
        );
    }
    let dsync_rows: &[usize] = if only.is_some() { &[] } else { &[1, 16] };
    for &writers in dsync_rows {
        let (acks, _) = parallel_dsync(&path, writers, run);
        println!("| parallel O_DSYNC writes | {writers} | {acks:.0} | {acks:.0} | 1.0 |");
    }
    let _ = std::fs::remove_file(&path);
}
