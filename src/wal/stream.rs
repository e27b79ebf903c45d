//! One write-ahead log stream: opening it (recovery), and `WalWriter`, its single writer. The
//! writer is used by one thread (a core loop calls it every tick; the webhook worker for the
//! `webhooks` stream): `append` encodes records into the tick's buffer, `commit` writes the
//! buffer with one call (group commit) and syncs per the fsync policy, `retain` removes old
//! segments. It owns segment rotation, space reservation, poisoning and the LSN positions; it
//! must not interpret records (that is the caller's replay) and must not read a clock (time is
//! passed in as `Now`). All file IO goes through `Storage`.
//!
//! For a hot standby (issue 13): `append_encoded` appends a record another writer encoded
//! (the primary's, read with `Tail`), byte for byte, keeping its LSN and epoch, so the copy
//! recovers exactly as the original; the writer's epoch rises to the highest epoch appended
//! and records never go below the highest epoch already in the stream. `open_at` opens a
//! stream that is empty (after `wipe`, a full resync) starting at a given LSN; the first LSN
//! of an empty stream lives in the name of its empty segment, which `open` keeps.
//!
//! Positions, in order: `appended_lsn() >= written_lsn() >= synced_lsn()`: appended (encoded in
//! the buffer, in memory only), written (handed to the kernel: survives a process crash),
//! synced (`fdatasync`ed: survives a power loss).
//!
//! Invariants:
//! * Nothing is reported written (or synced) before the write (or sync) of it succeeded, and
//!   nothing after a write or sync error: the first IO error poisons the writer and every later
//!   call returns `Poisoned` (an fsync error is not retryable: the kernel may have dropped the
//!   dirty pages). The caller exits the process.
//! * A full disk is a refusal, never a failed write: the next segment is created and
//!   preallocated when the current one is 3/4 full, so `append` refuses (`Full`, nothing
//!   appended) when a record fits neither in the current segment's reserved space nor in a
//!   next segment. `retry_space` tries again at most every `WAL_SPACE_RETRY_MS`.
//! * LSNs are contiguous within a stream (1 for the first record, or the LSN `open_at` started
//!   an empty stream at; +1 per record) and never go back: a stream restarted after a torn
//!   tail continues after the last valid record (`truncate_after` is the one deliberate cut,
//!   on a closed stream).
//! * Segments are named by their first LSN and created under a temporary name; the rename and
//!   the directory sync happen before any record is written into one, so after a crash a
//!   segment either has its name and header or is a leftover that recovery removes.
//! * A segment is synced when it is sealed, whatever the policy (`never` included: once per
//!   segment), before anything is written into the next one. So a power loss can only cost the
//!   unsynced tail of the last segment; within it, pages the kernel wrote back out of order
//!   leave a never-written (zero) page before valid records, which the scanner reads as a lost
//!   write (torn), not corruption.
//! * The writer's memory is bounded: the tick buffer by `WAL_TICK_BYTES_MAX` (a tick that
//!   appends more writes what it has early, without a sync, and goes on; one record larger
//!   than that is buffered alone), and one small entry per sealed segment on disk.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use super::record::{self, DecodeError, Header, Kind, Record};
use super::segment::{self, Damage, End, Expect, Salvaged, SegmentHeader, SegmentScan};
use super::storage::{Storage, StorageFile, is_no_space};
use crate::config::{FsyncPolicy, StorageConfig};
use crate::limits;

/// The name of a segment created ahead of need, before it is renamed to its first LSN.
pub(super) const NEXT_SEGMENT_NAME: &str = "next.wal.tmp";

/// The clocks, passed in: monotonic milliseconds (sync intervals, space retries) and wall-clock
/// Unix milliseconds (segment ages for retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

/// How a writer writes: segment size and fsync policy (`[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Write zeros over every new segment (and sync them) before a record goes into it. A
    /// preallocated but never-written range is an *unwritten extent*: the first `fdatasync`
    /// after writing into it also commits the extent change to the filesystem journal. On this
    /// machine's ext4 that took a group commit's sync from 0.11 to 0.17 ms
    /// (`cargo bench --bench fsync_floor`), so `always` zero-fills (as PostgreSQL does its WAL
    /// segments), off the writer's thread. The other policies do not pay the extra write.
    pub zero_fill: bool,
}

impl WalOptions {
    pub fn from_config(config: &StorageConfig) -> WalOptions {
        WalOptions {
            segment_bytes: config.segment_bytes,
            fsync: config.fsync,
            fsync_interval_ms: config.fsync_interval_ms,
            zero_fill: config.fsync == FsyncPolicy::Always,
        }
    }
}

/// What recovery does with damage before the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open (`RecoveryError::Corrupt` names the file and byte offset). The default:
    /// only a torn tail is repaired.
    Strict,
    /// Skip damaged ranges to the next valid record, report the LSN gaps, and open. The files
    /// are left as they are (only the tail is repaired), so a later strict open fails again
    /// until the damaged segment is out of retention.
    Salvage,
}

/// Why a stream could not be opened (or read).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt write-ahead log: {} at byte {offset}: {damage}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        damage: Damage,
    },
    #[error("`{0}` is not a stream name (1 to 32 of a-z, 0-9, '-', '_')")]
    BadStreamName(String),
    #[error("{} holds more than {} segments", dir.display(), limits::WAL_SEGMENTS_PER_STREAM_MAX)]
    TooManySegments { dir: PathBuf },
    #[error(
        "stream {stream} was written at epoch {found}; opening it at epoch {epoch} would go back"
    )]
    EpochBehind {
        stream: Box<str>,
        epoch: u64,
        found: u64,
    },
}

pub(super) fn io_error(
    context: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> RecoveryError {
    let path = path.to_path_buf();
    move |source| RecoveryError::Io {
        context,
        path,
        source,
    }
}

/// The writer saw a write or sync error: nothing more may be written or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write-ahead log stream {stream} is poisoned: failed to {context}: {message}")]
pub struct Poisoned {
    pub stream: Box<str>,
    /// What failed ("write segment", "sync segment", ...).
    pub context: &'static str,
    pub kind: io::ErrorKind,
    pub message: Box<str>,
}

/// Why `append` did not append (in every case nothing was appended).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The record fits neither in the current segment nor in a next one: the disk is full.
    /// Refuse the request (503) and call `retry_space` until it is back.
    #[error("write-ahead log disk full")]
    Full,
    /// Larger than `WAL_RECORD_BYTES_MAX` (callers bound their inputs far below it).
    #[error("write-ahead log record of {bytes} bytes is too large")]
    TooLarge { bytes: usize },
    /// `append_encoded` was given bytes that are not exactly one valid record.
    #[error("not one valid write-ahead log record: {0}")]
    BadRecord(DecodeError),
    /// `append_encoded` was given a record whose LSN is not the next one.
    #[error("write-ahead log record with LSN {got} where {expected} was expected")]
    OutOfOrder { expected: u64, got: u64 },
    /// `append_encoded` was given a record whose epoch is below one already in the stream.
    #[error("write-ahead log record of epoch {epoch} after epoch {last}")]
    EpochBehind { epoch: u64, last: u64 },
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

/// Where the log stands after a `commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitResult {
    pub written_lsn: u64,
    pub synced_lsn: u64,
}

/// A segment `retain` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Reading a stream (shared by recovery, replay and the `ringcast wal` tools; read-only).

/// One segment as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub name: String,
    /// The first LSN its name says.
    pub first_lsn: u64,
    /// File size.
    pub bytes: u64,
    pub records: u64,
    pub last_lsn: Option<u64>,
    /// From its header (None when the header is damaged).
    pub created_ms: Option<u64>,
    pub valid_end: u64,
    pub end: End,
}

/// The torn end of a stream: an unfinished write, truncated by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    pub offset: u64,
    /// Bytes from `offset` to the end of the file (including preallocated zeros).
    pub bytes: u64,
    pub damage: Damage,
}

/// A whole stream as a read-only scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamScan {
    pub stream: Box<str>,
    pub segments: Vec<SegmentInfo>,
    /// Other files in the directory (a leftover `next.wal.tmp` and anything unknown).
    pub others: Vec<String>,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    pub records: u64,
    pub skipped_unknown: u64,
    /// Records per kind (index = position in `Kind::ALL`).
    pub kinds: [u64; Kind::ALL.len()],
    pub last_epoch: u64,
    pub bytes: u64,
    pub torn: Option<TornTail>,
    /// Segments at the end holding no record (a header never written, or no record yet):
    /// recovery removes them.
    pub empty_tail: Vec<String>,
    /// With `RecoveryMode::Salvage`: what was skipped, per file.
    pub salvaged: Vec<(String, Salvaged)>,
    pub salvaged_unlisted: u64,
}

/// The segment file names in `names`, sorted by first LSN, and the other names.
pub(super) fn sort_names(names: Vec<String>) -> (Vec<(u64, String)>, Vec<String>) {
    let mut segments = Vec::new();
    let mut others = Vec::new();
    for name in names {
        match segment::parse_file_name(&name) {
            Some(lsn) => segments.push((lsn, name)),
            None => others.push(name),
        }
    }
    segments.sort();
    others.sort();
    (segments, others)
}

/// The names of the files in the stream directory `dir` (no more than a stream may hold).
pub(super) fn list_names(storage: &dyn Storage, dir: &Path) -> Result<Vec<String>, RecoveryError> {
    let names = storage.list(dir).map_err(io_error("list", dir))?;
    if names.len() > limits::WAL_SEGMENTS_PER_STREAM_MAX {
        return Err(RecoveryError::TooManySegments {
            dir: dir.to_path_buf(),
        });
    }
    Ok(names)
}

/// Scans every segment of the stream in `dir` read-only, calling `visit` for each valid record
/// of a known kind in LSN order. A torn tail is reported, not repaired. Damage before the end
/// is an error naming the file and byte offset (or, salvaging, listed and skipped).
pub fn scan_stream(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    mode: RecoveryMode,
    visit: impl FnMut(&Header, Record<&str>),
) -> Result<StreamScan, RecoveryError> {
    if !segment::valid_stream_name(stream) {
        return Err(RecoveryError::BadStreamName(stream.to_string()));
    }
    let (segments, others) = sort_names(list_names(storage, dir)?);
    let mut scan = scan_segments(storage, dir, stream, &segments, u64::MAX, mode, visit)?;
    scan.others = others;
    Ok(scan)
}

/// Scans the named segments in order, visiting records up to `lsn_last`.
pub(super) fn scan_segments(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    segments: &[(u64, String)],
    lsn_last: u64,
    mode: RecoveryMode,
    mut visit: impl FnMut(&Header, Record<&str>),
) -> Result<StreamScan, RecoveryError> {
    let salvage = mode == RecoveryMode::Salvage;
    let mut scan = StreamScan {
        stream: stream.into(),
        segments: Vec::with_capacity(segments.len()),
        others: Vec::new(),
        first_lsn: None,
        last_lsn: None,
        next_lsn: segments.first().map_or(1, |(lsn, _)| *lsn),
        records: 0,
        skipped_unknown: 0,
        kinds: [0; Kind::ALL.len()],
        last_epoch: 0,
        bytes: 0,
        torn: None,
        empty_tail: Vec::new(),
        salvaged: Vec::new(),
        salvaged_unlisted: 0,
    };
    let mut previous_next: Option<u64> = None;
    for (first_lsn, name) in segments {
        if *first_lsn > lsn_last {
            break;
        }
        let path = dir.join(name);
        let len = storage.len(&path).map_err(io_error("stat", &path))?;
        scan.bytes += len;
        if len > limits::WAL_SEGMENT_FILE_BYTES_MAX {
            return Err(RecoveryError::Corrupt {
                file: path,
                offset: 0,
                damage: Damage::TooLarge { bytes: len },
            });
        }
        let bytes = storage.read(&path).map_err(io_error("read", &path))?;
        if scan.tail_after_torn(dir, name, &bytes, salvage)? {
            continue;
        }
        let expect = Expect {
            stream,
            first_lsn: *first_lsn,
            next_lsn: previous_next,
        };
        let found = segment::scan(&bytes, expect, salvage, |_, header, record| {
            if let Some(record) = record
                && header.lsn <= lsn_last
            {
                visit(header, record);
            }
        });
        previous_next = Some(found.next_lsn);
        let file = SegmentFile {
            name,
            path,
            first_lsn: *first_lsn,
            bytes: len,
        };
        scan.add(file, found)?;
    }
    Ok(scan)
}

/// One segment file of a stream being scanned.
struct SegmentFile<'a> {
    name: &'a str,
    path: PathBuf,
    /// The first LSN its name says.
    first_lsn: u64,
    /// File size.
    bytes: u64,
}

impl StreamScan {
    /// Whether the segment `name` (its bytes) comes after a torn tail and holds nothing valid:
    /// then it is part of the empty tail, and not scanned.
    fn tail_after_torn(
        &mut self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        salvage: bool,
    ) -> Result<bool, RecoveryError> {
        let Some(torn) = &self.torn else {
            return Ok(false);
        };
        // After an unfinished write nothing valid may follow: if something does, the
        // "tear" was damage in the middle of the log.
        match segment::find_record(bytes, 0, self.next_lsn) {
            None => {
                self.empty_tail.push(name.to_string());
                Ok(true)
            }
            Some(offset) if !salvage => Err(RecoveryError::Corrupt {
                file: dir.join(&torn.file),
                offset: torn.offset,
                damage: Damage::Followed {
                    file: name.into(),
                    offset: offset as u64,
                },
            }),
            Some(_) => {
                let torn = self.torn.take().expect("matched above");
                let damage = torn.damage.clone();
                self.salvaged.push((
                    torn.file,
                    Salvaged {
                        offset: torn.offset,
                        bytes: torn.bytes,
                        damage,
                        lsn_first: self.next_lsn,
                        lsn_end: self.next_lsn,
                    },
                ));
                self.empty_tail.clear();
                Ok(false)
            }
        }
    }

    /// Adds what the scan of one segment file found: its counts and salvaged ranges, and how
    /// it ends (corruption is an error naming the file).
    fn add(&mut self, file: SegmentFile<'_>, found: SegmentScan) -> Result<(), RecoveryError> {
        let name = file.name;
        self.records += found.records;
        self.skipped_unknown += found.skipped_unknown;
        for (total, count) in self.kinds.iter_mut().zip(found.kinds) {
            *total += count;
        }
        self.last_epoch = self.last_epoch.max(found.last_epoch);
        if self.first_lsn.is_none() {
            self.first_lsn = found.first_lsn;
        }
        if found.last_lsn.is_some() {
            self.last_lsn = found.last_lsn;
        }
        self.next_lsn = found.next_lsn;
        for salvaged in found.salvaged {
            self.salvaged.push((name.to_string(), salvaged));
        }
        self.salvaged_unlisted += found.salvaged_unlisted;
        match &found.end {
            End::Clean => {}
            End::Torn { offset, damage } => {
                self.torn = Some(TornTail {
                    file: name.to_string(),
                    offset: *offset,
                    bytes: file.bytes - offset,
                    damage: damage.clone(),
                });
            }
            End::Corrupt { offset, damage } => {
                return Err(RecoveryError::Corrupt {
                    file: file.path,
                    offset: *offset,
                    damage: damage.clone(),
                });
            }
        }
        if found.records == 0 && found.skipped_unknown == 0 {
            self.empty_tail.push(name.to_string());
        } else {
            self.empty_tail.clear();
        }
        self.segments.push(SegmentInfo {
            name: name.to_string(),
            first_lsn: file.first_lsn,
            bytes: file.bytes,
            records: found.records + found.skipped_unknown,
            last_lsn: found.last_lsn,
            created_ms: found.header.as_ref().map(|header| header.created_ms),
            valid_end: found.valid_end,
            end: found.end,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery.

/// What opening a stream found and repaired; `replay` visits its records.
#[derive(Debug)]
pub struct Recovery {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    mode: RecoveryMode,
    /// The segments holding the recovered records, in order.
    segments: Vec<(u64, String)>,
    pub stream: Box<str>,
    pub first_lsn: Option<u64>,
    /// The last valid record (None: the stream has none). Appends continue after it.
    pub last_lsn: Option<u64>,
    pub records: u64,
    pub last_epoch: u64,
    /// An unfinished write at the end, truncated.
    pub torn: Option<TornTail>,
    /// Bytes cut from the last segment: the torn tail plus the preallocated space after it.
    pub truncated_bytes: u64,
    /// Files removed: leftovers of a segment created ahead of need, and segments at the end
    /// holding no record.
    pub removed: Vec<String>,
    /// With `RecoveryMode::Salvage`: the damaged ranges skipped, per file, with the LSNs lost.
    pub salvaged: Vec<(String, Salvaged)>,
    pub salvaged_unlisted: u64,
}

impl Recovery {
    /// Visits every recovered record of a known kind in LSN order (unknown skippable kinds are
    /// skipped), strings borrowed from the segment being read. Call it before `retain`; the
    /// records the writer appended since opening are not visited.
    pub fn replay(&self, visit: impl FnMut(&Header, Record<&str>)) -> Result<u64, RecoveryError> {
        let Some(last) = self.last_lsn else {
            return Ok(0);
        };
        let scan = scan_segments(
            &*self.storage,
            &self.dir,
            &self.stream,
            &self.segments,
            last,
            self.mode,
            visit,
        )?;
        Ok(scan.records)
    }
}

/// Creates the stream directory and makes its entry durable.
fn create_stream_dir(storage: &dyn Storage, dir: &Path) -> Result<(), RecoveryError> {
    storage
        .create_dir_all(dir)
        .map_err(io_error("create directory", dir))?;
    // The stream directory's own entry (and `wal/`'s) must survive a power loss too.
    for ancestor in dir.ancestors().skip(1).take(2) {
        if !ancestor.as_os_str().is_empty() {
            storage
                .sync_dir(ancestor)
                .map_err(io_error("sync directory", ancestor))?;
        }
    }
    Ok(())
}

/// Removes the leftovers of segments created ahead of need (among `others`, the directory's
/// other files) and the segments at the end holding no record; returns the names removed.
fn remove_leftovers(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    others: &[String],
    empty_tail: &[String],
) -> Result<Vec<String>, RecoveryError> {
    let mut removed = Vec::new();
    for name in others {
        if name.ends_with(segment::TEMPORARY_SUFFIX) {
            let path = dir.join(name);
            storage.remove(&path).map_err(io_error("remove", &path))?;
            removed.push(name.clone());
        } else {
            tracing::warn!(stream, file = %name, "unknown file in a write-ahead log directory left alone");
        }
    }
    for name in empty_tail {
        let path = dir.join(name);
        storage.remove(&path).map_err(io_error("remove", &path))?;
        removed.push(name.clone());
    }
    Ok(removed)
}

/// Cuts the last segment at its last valid record; returns the bytes cut.
fn truncate_to_valid_end(
    storage: &dyn Storage,
    dir: &Path,
    last: Option<&SegmentInfo>,
) -> Result<u64, RecoveryError> {
    let Some(last) = last.filter(|last| last.bytes > last.valid_end) else {
        return Ok(0);
    };
    let path = dir.join(&last.name);
    storage
        .truncate(&path, last.valid_end)
        .map_err(io_error("truncate", &path))?;
    Ok(last.bytes - last.valid_end)
}

/// Logs what recovery repaired (a torn tail) and skipped (salvaged ranges).
fn log_repairs(stream: &str, scan: &StreamScan) {
    if let Some(torn) = &scan.torn {
        tracing::warn!(
            stream,
            file = %torn.file,
            offset = torn.offset,
            torn_bytes = torn.bytes,
            reason = %torn.damage,
            last_lsn = scan.last_lsn.unwrap_or(0),
            "write-ahead log: torn tail truncated at the last valid record"
        );
    }
    for (file, salvaged) in &scan.salvaged {
        tracing::error!(
            stream,
            file = %file,
            offset = salvaged.offset,
            bytes = salvaged.bytes,
            lost_lsns = %format!("{}..{}", salvaged.lsn_first, salvaged.lsn_end),
            reason = %salvaged.damage,
            "write-ahead log: damaged range skipped (salvage)"
        );
    }
}

/// Syncs the recovered segments `kept`: what was only in the page cache before a crash
/// becomes durable before anything new is acknowledged on top of it. Returns them as the
/// writer's sealed segments.
fn sync_recovered(
    storage: &dyn Storage,
    dir: &Path,
    kept: &[&SegmentInfo],
    now: Now,
) -> Result<VecDeque<Sealed>, RecoveryError> {
    let mut sealed = VecDeque::with_capacity(kept.len());
    for (index, info) in kept.iter().enumerate() {
        let path = dir.join(&info.name);
        storage
            .open(&path)
            .and_then(|mut file| file.sync_data())
            .map_err(io_error("sync", &path))?;
        let sealed_ms = kept
            .get(index + 1)
            .and_then(|next| next.created_ms)
            .unwrap_or(now.unix_ms);
        sealed.push_back(Sealed {
            name: info.name.clone(),
            first_lsn: info.first_lsn,
            last_lsn: info.last_lsn.unwrap_or(info.first_lsn.saturating_sub(1)),
            bytes: info.valid_end,
            sealed_ms,
        });
    }
    Ok(sealed)
}

// ---------------------------------------------------------------------------------------------
// The writer.

#[derive(Debug)]
struct Current {
    name: String,
    first_lsn: u64,
    file: Box<dyn StorageFile>,
    /// Bytes written to the file (the offset of the next write).
    written: u64,
    /// Bytes reserved for it (preallocated or not, records go up to here).
    capacity: u64,
}

#[derive(Debug)]
struct Prepared {
    file: Box<dyn StorageFile>,
    capacity: u64,
    /// Whether the filesystem reserved the space.
    preallocated: bool,
}

/// Whether `prepare_next` may return before the next segment is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

fn helper_gone() -> io::Error {
    io::Error::other("the segment preparing thread ended without an answer")
}

/// Creates `path` with `bytes` reserved; with `zero_fill`, writes zeros over all of it and
/// syncs them (see `WalOptions::zero_fill`). A half-made file is removed: it never held a
/// record.
fn prepare_segment(
    storage: &dyn Storage,
    path: &Path,
    bytes: u64,
    zero_fill: bool,
) -> io::Result<Prepared> {
    let made = storage
        .create(path, bytes)
        .and_then(|(mut file, preallocated)| {
            if zero_fill {
                fill_zeros(&mut *file, bytes)?;
            }
            Ok(Prepared {
                file,
                capacity: bytes,
                preallocated,
            })
        });
    if made.is_err() {
        let _ = storage.remove(path);
    }
    made
}

/// Writes zeros over `[0, bytes)` of `file` and syncs them.
fn fill_zeros(file: &mut dyn StorageFile, bytes: u64) -> io::Result<()> {
    let zeros = vec![0u8; limits::WAL_ZERO_FILL_CHUNK_BYTES.min(bytes as usize)];
    let mut offset = 0;
    while offset < bytes {
        let len = zeros.len().min((bytes - offset) as usize);
        file.write_at(offset, &zeros[..len])?;
        offset += len as u64;
    }
    file.sync_data()
}

#[derive(Debug, Clone)]
struct Sealed {
    name: String,
    first_lsn: u64,
    last_lsn: u64,
    bytes: u64,
    /// Wall-clock ms when it was sealed: no record in it is newer.
    sealed_ms: u64,
}

#[derive(Debug, Default)]
struct Space {
    /// The next segment could not be created (or grown): appends that need it are refused.
    short: bool,
    tried_ms: u64,
    error: Option<String>,
}

/// The single writer of one stream. See the module docs.
#[derive(Debug)]
pub struct WalWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    stream: Box<str>,
    options: WalOptions,
    /// The epoch `append` stamps on records: the caller's, raised to the highest epoch
    /// `append_encoded` has seen (a standby's copy carries the primary's epochs, and records
    /// appended after a promotion must not go below them).
    epoch: u64,
    /// The highest epoch of any record in the stream (recovered or appended): records given
    /// to `append_encoded` must not go below it.
    records_epoch: u64,
    current: Current,
    next: Option<Prepared>,
    /// The next segment while a helper thread zero-fills it (`WalOptions::zero_fill`).
    preparing: Option<mpsc::Receiver<io::Result<Prepared>>>,
    sealed: VecDeque<Sealed>,
    buffer: Vec<u8>,
    next_lsn: u64,
    written_lsn: u64,
    synced_lsn: u64,
    last_sync_ms: u64,
    /// The latest wall clock passed in (stamps segment headers).
    unix_ms: u64,
    space: Space,
    poisoned: Option<Poisoned>,
    /// Syncs are started by the caller (`begin_external_sync`, e.g. an io_uring fsync) instead
    /// of blocking in `commit`; the LSN an external sync in flight will make durable.
    external_sync: bool,
    sync_in_flight: Option<u64>,
}

/// What `open_at` hands to the new writer.
struct Opened<'a> {
    storage: Arc<dyn Storage>,
    dir: &'a Path,
    stream: &'a str,
    epoch: u64,
    options: WalOptions,
    now: Now,
}

impl Opened<'_> {
    /// The writer of a stream recovered up to `next_lsn - 1`, appending into `current`.
    fn writer(
        self,
        current: Current,
        sealed: VecDeque<Sealed>,
        next_lsn: u64,
        records_epoch: u64,
    ) -> WalWriter {
        assert_eq!(current.first_lsn, next_lsn);
        assert!(records_epoch <= self.epoch);
        let written = next_lsn - 1;
        WalWriter {
            storage: self.storage,
            dir: self.dir.to_path_buf(),
            stream: self.stream.into(),
            options: self.options,
            epoch: self.epoch,
            records_epoch,
            current,
            next: None,
            preparing: None,
            sealed,
            buffer: Vec::new(),
            next_lsn,
            written_lsn: written,
            synced_lsn: written,
            last_sync_ms: self.now.mono_ms,
            unix_ms: self.now.unix_ms,
            space: Space::default(),
            poisoned: None,
            external_sync: false,
            sync_in_flight: None,
        }
    }
}

impl WalWriter {
    /// Opens (or creates) the stream `stream` in `dir`: scans it, repairs the tail (truncates
    /// a torn tail at the last valid record, removes leftovers and segments holding no
    /// record), makes what is recovered durable, and starts a new segment for appends at the
    /// last LSN + 1 (1 for a new stream, or the first LSN of an empty segment left by
    /// `open_at` or `truncate_after`). Records are written stamped with `epoch`.
    ///
    /// # Errors
    ///
    /// Damage before the tail (strict mode) names the file and byte offset; IO errors name
    /// the operation and path (a disk too full for the first segment is one of them); an
    /// `epoch` below the stream's last is refused.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        stream: &str,
        epoch: u64,
        options: WalOptions,
        mode: RecoveryMode,
        now: Now,
    ) -> Result<(WalWriter, Recovery), RecoveryError> {
        WalWriter::open_at(storage, dir, stream, epoch, options, mode, now, 1)
    }

    /// `open`, except that a stream holding no record starts at `first_lsn_if_empty` (or at
    /// the first LSN of an empty segment already there, whichever is larger): a standby's copy
    /// of a primary stream whose early segments retention removed (a full resync). The empty
    /// segment it creates carries that LSN in its name, so a later `open` (even after a crash)
    /// starts there too. A stream holding records continues after its last one, whatever
    /// `first_lsn_if_empty` says.
    ///
    /// # Errors
    ///
    /// As `open`.
    ///
    /// # Panics
    ///
    /// When `first_lsn_if_empty` is 0 (LSNs start at 1).
    #[allow(clippy::too_many_arguments)]
    pub fn open_at(
        storage: Arc<dyn Storage>,
        dir: &Path,
        stream: &str,
        epoch: u64,
        options: WalOptions,
        mode: RecoveryMode,
        now: Now,
        first_lsn_if_empty: u64,
    ) -> Result<(WalWriter, Recovery), RecoveryError> {
        assert!(options.segment_bytes >= limits::WAL_SEGMENT_BYTES_MIN);
        assert!(options.segment_bytes <= limits::WAL_SEGMENT_BYTES_MAX);
        assert!(first_lsn_if_empty >= 1, "LSNs start at 1");
        if !segment::valid_stream_name(stream) {
            return Err(RecoveryError::BadStreamName(stream.to_string()));
        }
        create_stream_dir(&*storage, dir)?;
        let (segments, others) = sort_names(list_names(&*storage, dir)?);
        let scan = scan_segments(&*storage, dir, stream, &segments, u64::MAX, mode, |_, _| {})?;
        if epoch < scan.last_epoch {
            return Err(RecoveryError::EpochBehind {
                stream: stream.into(),
                epoch,
                found: scan.last_epoch,
            });
        }
        let next_lsn = match scan.last_lsn {
            Some(_) => scan.next_lsn,
            None => scan.next_lsn.max(first_lsn_if_empty),
        };
        // An empty segment already named for `next_lsn` is replaced by the new one in a single
        // rename, so no crash can lose the LSN an empty stream starts at.
        let current_name = segment::file_name(next_lsn);
        let empty_tail: Vec<String> = scan
            .empty_tail
            .iter()
            .filter(|name| **name != current_name)
            .cloned()
            .collect();
        let removed = remove_leftovers(&*storage, dir, stream, &others, &empty_tail)?;
        // The segments that hold the log now; the last one is cut at its last valid record.
        let kept: Vec<&SegmentInfo> = scan
            .segments
            .iter()
            .filter(|info| !scan.empty_tail.contains(&info.name))
            .collect();
        let truncated_bytes = truncate_to_valid_end(&*storage, dir, kept.last().copied())?;
        log_repairs(stream, &scan);
        let sealed = sync_recovered(&*storage, dir, &kept, now)?;
        let current = create_segment(&*storage, dir, stream, next_lsn, options, now)?;
        storage
            .sync_dir(dir)
            .map_err(io_error("sync directory", dir))?;
        let recovery = Recovery {
            storage: Arc::clone(&storage),
            dir: dir.to_path_buf(),
            mode,
            segments: kept
                .iter()
                .map(|info| (info.first_lsn, info.name.clone()))
                .collect(),
            stream: stream.into(),
            first_lsn: scan.first_lsn,
            last_lsn: scan.last_lsn,
            records: scan.records,
            last_epoch: scan.last_epoch,
            torn: scan.torn.clone(),
            truncated_bytes,
            removed,
            salvaged: scan.salvaged.clone(),
            salvaged_unlisted: scan.salvaged_unlisted,
        };
        let opened = Opened {
            storage,
            dir,
            stream,
            epoch,
            options,
            now,
        };
        let writer = opened.writer(current, sealed, next_lsn, scan.last_epoch);
        Ok((writer, recovery))
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The epoch `append` stamps: the one opened with or set, raised to the highest epoch of
    /// a record given to `append_encoded`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records appended from now on carry `epoch` (a promotion). Epochs never go back: the
    /// writer's epoch is already at least the highest epoch `append_encoded` has appended.
    ///
    /// # Panics
    ///
    /// When `epoch` is below the current one.
    pub fn set_epoch(&mut self, epoch: u64) {
        assert!(epoch >= self.epoch, "epoch {epoch} < {}", self.epoch);
        self.epoch = epoch;
    }

    /// The LSN the next appended record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The last LSN appended (in the buffer or beyond); 0 when none.
    pub fn appended_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// The last LSN handed to the kernel (survives a process crash); 0 when none.
    pub fn written_lsn(&self) -> u64 {
        self.written_lsn
    }

    /// The last LSN synced (survives a power loss); 0 when none.
    pub fn synced_lsn(&self) -> u64 {
        self.synced_lsn
    }

    /// Whether appends that need a new segment are refused for lack of space.
    pub fn is_full(&self) -> bool {
        self.space.short
    }

    /// The last error that made the disk count as full.
    pub fn space_error(&self) -> Option<&str> {
        self.space.error.as_deref()
    }

    pub fn poisoned(&self) -> Option<&Poisoned> {
        self.poisoned.as_ref()
    }

    /// Bytes of the stream on disk: sealed segments plus what the current one holds.
    pub fn bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.end()
    }

    /// Segments on disk, the current one included.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    fn check(&self) -> Result<(), Poisoned> {
        match &self.poisoned {
            Some(poisoned) => Err(poisoned.clone()),
            None => Ok(()),
        }
    }

    fn poison(&mut self, context: &'static str, error: &io::Error) -> Poisoned {
        let poisoned = Poisoned {
            stream: self.stream.clone(),
            context,
            kind: error.kind(),
            message: error.to_string().into(),
        };
        tracing::error!(%poisoned, "write-ahead log poisoned: nothing more is written or acknowledged");
        self.poisoned = Some(poisoned.clone());
        poisoned
    }

    /// The offset after everything appended to the current segment.
    fn end(&self) -> u64 {
        self.current.written + self.buffer.len() as u64
    }

    /// Appends `record` to the tick's buffer and returns its LSN. Nothing is written until
    /// `commit` (unless the buffer passes `WAL_TICK_BYTES_MAX`: then what it holds is written
    /// first, without a sync).
    ///
    /// # Errors
    ///
    /// `Full` when the record fits neither in the current segment nor in a next one (the disk
    /// is full; nothing was appended), `TooLarge`, or `Poisoned`.
    pub fn append<S: AsRef<str>>(&mut self, record: &Record<S>) -> Result<u64, AppendError> {
        self.check()?;
        let len = record.encoded_len();
        if len > limits::WAL_RECORD_BYTES_MAX {
            return Err(AppendError::TooLarge { bytes: len });
        }
        self.reserve(len)?;
        let lsn = self.next_lsn;
        let written = record::encode(record, self.epoch, lsn, &mut self.buffer);
        assert_eq!(written, len);
        assert!(self.end() <= self.current.capacity);
        assert!(self.records_epoch <= self.epoch);
        self.records_epoch = self.epoch;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Appends one record already encoded (by another writer: a standby copies its primary's
    /// stream) to the tick's buffer, verbatim: it keeps the epoch and LSN it carries, and its
    /// bytes on disk are these bytes. Its LSN must be `next_lsn()`. The writer's epoch rises to
    /// the record's (see `epoch`), so records appended later never go below it. Otherwise as
    /// `append`: same room, rotation and LSN bookkeeping. Returns its LSN.
    ///
    /// # Errors
    ///
    /// `BadRecord` when `bytes` is not exactly one valid record (`record::frame`),
    /// `OutOfOrder` when its LSN is not `next_lsn()`, `EpochBehind` when its epoch is below
    /// one already in the stream, and as `append`: `Full`, `TooLarge`, `Poisoned`. In every
    /// case nothing was appended and nothing changed.
    pub fn append_encoded(&mut self, bytes: &[u8]) -> Result<u64, AppendError> {
        self.check()?;
        if bytes.len() > limits::WAL_RECORD_BYTES_MAX {
            return Err(AppendError::TooLarge { bytes: bytes.len() });
        }
        let (header, _) = record::frame(bytes).map_err(AppendError::BadRecord)?;
        if header.len as usize != bytes.len() {
            // Bytes after the record: not exactly one record.
            return Err(AppendError::BadRecord(DecodeError::BadLength(header.len)));
        }
        if header.lsn != self.next_lsn {
            return Err(AppendError::OutOfOrder {
                expected: self.next_lsn,
                got: header.lsn,
            });
        }
        if header.epoch < self.records_epoch {
            return Err(AppendError::EpochBehind {
                epoch: header.epoch,
                last: self.records_epoch,
            });
        }
        self.reserve(bytes.len())?;
        self.buffer.extend_from_slice(bytes);
        assert!(self.end() <= self.current.capacity);
        self.records_epoch = header.epoch;
        self.epoch = self.epoch.max(header.epoch);
        self.next_lsn += 1;
        Ok(header.lsn)
    }

    /// Makes room for a record of `len` bytes: writes a full tick buffer early, and moves to
    /// (or grows) a segment the record fits in.
    fn reserve(&mut self, len: usize) -> Result<(), AppendError> {
        if !self.buffer.is_empty() && self.buffer.len() + len > limits::WAL_TICK_BYTES_MAX {
            self.write_buffer()?;
        }
        if self.end() + len as u64 > self.current.capacity {
            self.make_room(len)?;
        }
        Ok(())
    }

    /// Makes room for a record of `len` bytes: grows an empty current segment, or moves to the
    /// next segment (created now if it was not ready). Refuses with `Full` before changing
    /// anything when the space cannot be had.
    fn make_room(&mut self, len: usize) -> Result<(), AppendError> {
        let needed = segment::HEADER_BYTES as u64 + len as u64;
        if self.current.first_lsn == self.next_lsn {
            // No record yet: this segment grows (two segments must never share a first LSN).
            let capacity = self.end() + len as u64;
            return match self.current.file.allocate(capacity) {
                Ok(_) => {
                    self.current.capacity = capacity;
                    Ok(())
                }
                Err(error) => Err(self.space_refusal("grow segment", error)?),
            };
        }
        if self.next.is_none() {
            if self.space.short {
                return Err(AppendError::Full);
            }
            if let Err(error) = self.prepare_next(Wait::Yes) {
                return Err(self.space_refusal("create segment", error)?);
            }
        }
        let next = self.next.as_mut().expect("prepared above");
        if next.capacity < needed {
            match next.file.allocate(needed) {
                Ok(_) => next.capacity = needed,
                Err(error) => return Err(self.space_refusal("grow segment", error)?),
            }
        }
        self.rotate()?;
        Ok(())
    }

    /// A failure to reserve space: the disk counts as full (any error: no record is at stake
    /// in a file that holds none yet). Returns the refusal.
    fn space_refusal(&mut self, context: &str, error: io::Error) -> Result<AppendError, Poisoned> {
        self.check()?;
        if !self.space.short {
            tracing::error!(
                stream = %self.stream,
                %error,
                no_space = is_no_space(&error),
                "write-ahead log: failed to {context}; refusing writes until space is back"
            );
        }
        self.space.short = true;
        self.space.error = Some(format!("{context}: {error}"));
        Ok(AppendError::Full)
    }

    /// Creates and preallocates the next segment under its temporary name. With
    /// `zero_fill`, a helper thread prepares it and `Wait::No` returns at once (a later call
    /// collects it); `Wait::Yes` returns once the segment is there (or failed).
    fn prepare_next(&mut self, wait: Wait) -> io::Result<()> {
        assert!(self.next.is_none());
        let path = self.dir.join(NEXT_SEGMENT_NAME);
        let (bytes, zero_fill) = (self.options.segment_bytes, self.options.zero_fill);
        let prepared = match self.preparing.take() {
            Some(receiver) => match wait {
                Wait::Yes => receiver.recv().unwrap_or_else(|_| Err(helper_gone())),
                Wait::No => match receiver.try_recv() {
                    Ok(prepared) => prepared,
                    Err(mpsc::TryRecvError::Empty) => {
                        self.preparing = Some(receiver);
                        return Ok(());
                    }
                    Err(mpsc::TryRecvError::Disconnected) => Err(helper_gone()),
                },
            },
            None if zero_fill && wait == Wait::No => {
                let (sender, receiver) = mpsc::sync_channel(1);
                let storage = Arc::clone(&self.storage);
                std::thread::Builder::new()
                    .name("wal-prepare".into())
                    .spawn(move || {
                        let _ = sender.send(prepare_segment(&*storage, &path, bytes, true));
                    })?;
                self.preparing = Some(receiver);
                return Ok(());
            }
            None => prepare_segment(&*self.storage, &path, bytes, zero_fill),
        }?;
        if !prepared.preallocated {
            tracing::warn!(
                stream = %self.stream,
                "the filesystem cannot preallocate: a full disk will poison the write-ahead log instead of refusing writes"
            );
        }
        self.next = Some(prepared);
        Ok(())
    }

    /// Seals the current segment and starts the prepared one: the buffer goes to the current
    /// segment, the prepared one is renamed to its first LSN and the name made durable before
    /// anything is written into it.
    fn rotate(&mut self) -> Result<(), Poisoned> {
        self.write_buffer()?;
        // Sealed means durable, whatever the policy: nothing reaches the next segment while
        // this one may still lose a page, so a power loss can only cost the last segment's
        // tail (never leave valid records after a hole, which would read as corruption).
        if self.synced_lsn < self.written_lsn {
            if let Err(error) = self.current.file.sync_data() {
                return Err(self.poison("sync sealed segment", &error));
            }
            self.synced_lsn = self.written_lsn;
        }
        let prepared = self.next.take().expect("prepared before rotating");
        let name = segment::file_name(self.next_lsn);
        let from = self.dir.join(NEXT_SEGMENT_NAME);
        if let Err(error) = self.storage.rename(&from, &self.dir.join(&name)) {
            return Err(self.poison("rename segment", &error));
        }
        if let Err(error) = self.storage.sync_dir(&self.dir) {
            return Err(self.poison("sync directory", &error));
        }
        let old = std::mem::replace(
            &mut self.current,
            Current {
                name,
                first_lsn: self.next_lsn,
                file: prepared.file,
                written: 0,
                capacity: prepared.capacity,
            },
        );
        assert!(
            old.first_lsn < self.next_lsn,
            "a sealed segment holds a record"
        );
        self.sealed.push_back(Sealed {
            name: old.name,
            first_lsn: old.first_lsn,
            last_lsn: self.next_lsn - 1,
            bytes: old.written,
            sealed_ms: self.unix_ms,
        });
        let header = SegmentHeader::new(&self.stream, self.next_lsn, self.unix_ms);
        segment::encode_header(&header, &mut self.buffer);
        Ok(())
    }

    /// Writes the buffer to the current segment with one call.
    fn write_buffer(&mut self) -> Result<(), Poisoned> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(error) = self
            .current
            .file
            .write_at(self.current.written, &self.buffer)
        {
            return Err(self.poison("write segment", &error));
        }
        self.current.written += self.buffer.len() as u64;
        assert!(self.current.written <= self.current.capacity);
        self.buffer.clear();
        if self.buffer.capacity() > limits::WAL_TICK_BYTES_MAX {
            self.buffer.shrink_to(limits::WAL_TICK_BYTES_MAX);
        }
        assert!(self.written_lsn < self.next_lsn);
        self.written_lsn = self.next_lsn - 1;
        Ok(())
    }

    /// Ends a tick: writes what was appended with one call, then syncs per the fsync policy
    /// (`always`: whenever something is unsynced; `interval`: when `fsync_interval_ms` passed
    /// since the last sync), and creates the next segment once the current one is 3/4 full.
    ///
    /// # Errors
    ///
    /// `Poisoned` on a write or sync error (now or earlier).
    pub fn commit(&mut self, now: Now) -> Result<CommitResult, Poisoned> {
        self.check()?;
        self.unix_ms = self.unix_ms.max(now.unix_ms);
        self.write_buffer()?;
        let sync = !self.external_sync
            && match self.options.fsync {
                FsyncPolicy::Always => self.synced_lsn < self.written_lsn,
                FsyncPolicy::Interval | FsyncPolicy::Never => self.sync_due(now.mono_ms),
            };
        if sync {
            self.sync(now)?;
        }
        if self.next.is_none()
            && !self.space.short
            && self.end() >= self.current.capacity / 4 * 3
            && let Err(error) = self.prepare_next(Wait::No)
        {
            let _ = self.space_refusal("create segment", error)?;
            self.space.tried_ms = now.mono_ms;
        }
        Ok(CommitResult {
            written_lsn: self.written_lsn,
            synced_lsn: self.synced_lsn,
        })
    }

    /// Whether an `interval` sync is due: something written is unsynced and
    /// `fsync_interval_ms` passed since the last sync (the loop calls `sync` for an idle
    /// stream). Always false with `never`.
    pub fn sync_due(&self, now_mono_ms: u64) -> bool {
        match self.options.fsync {
            FsyncPolicy::Never => false,
            FsyncPolicy::Always => self.synced_lsn < self.written_lsn,
            FsyncPolicy::Interval => {
                self.synced_lsn < self.written_lsn
                    && now_mono_ms.saturating_sub(self.last_sync_ms)
                        >= self.options.fsync_interval_ms
            }
        }
    }

    /// Syncs everything written (whatever the policy: shutdown and tests use it). Appended
    /// records still in the buffer are not written: `commit` first.
    ///
    /// # Errors
    ///
    /// `Poisoned` on a sync error (now or earlier).
    pub fn sync(&mut self, now: Now) -> Result<u64, Poisoned> {
        self.check()?;
        let target = self.written_lsn;
        if let Err(error) = self.current.file.sync_data() {
            return Err(self.poison("sync segment", &error));
        }
        assert!(self.synced_lsn <= target);
        self.synced_lsn = target;
        self.last_sync_ms = now.mono_ms;
        Ok(self.synced_lsn)
    }

    /// From now on `commit` never syncs: the caller starts syncs with `begin_external_sync`
    /// (without blocking: an io_uring fsync) and reports them with `end_external_sync`. Only
    /// for storage with real files (`StorageFile::raw_fd`); otherwise `commit` keeps syncing.
    pub fn use_external_sync(&mut self) {
        self.external_sync = self.current.file.raw_fd().is_some();
    }

    /// When a sync is due by the policy and none is in flight: the descriptor to sync
    /// (`fdatasync`) and the LSN it will make durable. Everything written before the call is
    /// covered; a segment sealed meanwhile is synced when it is sealed.
    pub fn begin_external_sync(&mut self, now: Now) -> Option<(std::os::fd::RawFd, u64)> {
        if !self.external_sync || self.sync_in_flight.is_some() || self.poisoned.is_some() {
            return None;
        }
        if !self.sync_due(now.mono_ms) {
            return None;
        }
        let fd = self.current.file.raw_fd()?;
        self.sync_in_flight = Some(self.written_lsn);
        self.last_sync_ms = now.mono_ms;
        Some((fd, self.written_lsn))
    }

    /// The external sync started by `begin_external_sync` finished with `result`.
    ///
    /// # Errors
    ///
    /// `Poisoned` when it failed (or earlier).
    pub fn end_external_sync(&mut self, result: io::Result<()>) -> Result<u64, Poisoned> {
        let target = self
            .sync_in_flight
            .take()
            .expect("an external sync was started");
        if let Err(error) = result {
            return Err(self.poison("sync segment", &error));
        }
        self.check()?;
        self.synced_lsn = self.synced_lsn.max(target);
        Ok(self.synced_lsn)
    }

    /// While the disk is full: tries to create the next segment again, at most every
    /// `WAL_SPACE_RETRY_MS`. Returns whether appends are accepted again.
    pub fn retry_space(&mut self, now: Now) -> bool {
        if self.poisoned.is_some() {
            return false;
        }
        if !self.space.short {
            return true;
        }
        if now.mono_ms.saturating_sub(self.space.tried_ms) < limits::WAL_SPACE_RETRY_MS {
            return false;
        }
        self.space.tried_ms = now.mono_ms;
        if self.next.is_none() && (self.prepare_next(Wait::No).is_err() || self.next.is_none()) {
            return false;
        }
        tracing::info!(stream = %self.stream, "write-ahead log: space is back; accepting writes");
        self.space.short = false;
        self.space.error = None;
        true
    }

    /// The first LSN retention would keep if nothing were still needed: the records below it
    /// sit in sealed segments that are beyond the size budget or older than `retain_secs`. A
    /// caller that still needs state recorded below it writes that state again (carries it
    /// forward) so the segments can go.
    pub fn retention_cut(&self, now_unix_ms: u64, retain_bytes_max: u64, retain_secs: u64) -> u64 {
        let mut total = self.bytes();
        let mut cut = self
            .sealed
            .front()
            .map_or(self.current.first_lsn, |s| s.first_lsn);
        for segment in &self.sealed {
            let over_budget = total > retain_bytes_max;
            let expired = now_unix_ms.saturating_sub(segment.sealed_ms) > retain_secs * 1000;
            if !(over_budget || expired) {
                break;
            }
            total -= segment.bytes;
            cut = segment.last_lsn + 1;
        }
        cut
    }

    /// Removes sealed segments, oldest first, whose records are all below `needed_lsn` and
    /// that are beyond the size budget (`retain_bytes_max` for the whole stream) or sealed
    /// more than `retain_secs` ago. Never the current segment. Each removal is made durable
    /// before the next (so a crash never leaves a gap in the middle).
    ///
    /// # Errors
    ///
    /// `Poisoned` when a removal or directory sync fails (now or earlier).
    pub fn retain(
        &mut self,
        now_unix_ms: u64,
        needed_lsn: u64,
        retain_bytes_max: u64,
        retain_secs: u64,
    ) -> Result<Vec<Removed>, Poisoned> {
        self.check()?;
        let mut total = self.bytes();
        let mut removed = Vec::new();
        while let Some(oldest) = self.sealed.front() {
            let over_budget = total > retain_bytes_max;
            let expired = now_unix_ms.saturating_sub(oldest.sealed_ms) > retain_secs * 1000;
            if oldest.last_lsn >= needed_lsn || !(over_budget || expired) {
                break;
            }
            let oldest = oldest.clone();
            match self.storage.remove(&self.dir.join(&oldest.name)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(self.poison("remove segment", &error)),
            }
            if let Err(error) = self.storage.sync_dir(&self.dir) {
                return Err(self.poison("sync directory", &error));
            }
            self.sealed.pop_front();
            total -= oldest.bytes;
            removed.push(Removed {
                name: oldest.name,
                first_lsn: oldest.first_lsn,
                last_lsn: oldest.last_lsn,
                bytes: oldest.bytes,
            });
        }
        Ok(removed)
    }
}

/// Creates the segment starting at `first_lsn` with its header written and synced (used at
/// open, when the first LSN is known): under the temporary name, then renamed to its own
/// (replacing an empty segment of that name). The caller syncs the directory.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    first_lsn: u64,
    options: WalOptions,
    now: Now,
) -> Result<Current, RecoveryError> {
    let name = segment::file_name(first_lsn);
    let path = dir.join(&name);
    let temporary = dir.join(NEXT_SEGMENT_NAME);
    let Prepared { mut file, .. } = prepare_segment(
        storage,
        &temporary,
        options.segment_bytes,
        options.zero_fill,
    )
    .map_err(io_error("create segment", &temporary))?;
    let header = SegmentHeader::new(stream, first_lsn, now.unix_ms);
    let written = install_segment(storage, &mut *file, &temporary, &path, &header)?;
    Ok(Current {
        name,
        first_lsn,
        file,
        written,
        capacity: options.segment_bytes,
    })
}

/// Writes `header` at the start of `file` (just created under the name `temporary`), syncs
/// it, and renames the file to `path` (its own name, replacing an empty segment of that
/// name). Returns the header's length. The caller syncs the directory. Every segment made
/// outside the writer's rotation (at open, and the empty one a resync leaves) is made here.
///
/// # Errors
///
/// IO errors of the write, the sync and the rename, naming the path.
pub(super) fn install_segment(
    storage: &dyn Storage,
    file: &mut dyn StorageFile,
    temporary: &Path,
    path: &Path,
    header: &SegmentHeader,
) -> Result<u64, RecoveryError> {
    let bytes = header.encoded();
    file.write_at(0, &bytes)
        .and_then(|()| file.sync_data())
        .map_err(io_error("write segment header", temporary))?;
    storage
        .rename(temporary, path)
        .map_err(io_error("rename segment", path))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests;
