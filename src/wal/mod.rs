//! The write-ahead log (DESIGN.md, "Write-ahead log and hot standby"): durable owner state and
//! the durable webhook outbox. One stream per core (`core-0`, `core-1`, ...) and one for the
//! webhook outbox (`webhooks`), each a directory of segment files under `{storage.dir}/wal/`.
//! This module owns the bytes on disk and the rules for writing and recovering them; it must
//! not know what the records mean to the shard (replay is the caller's) and must not read a
//! clock (time is passed in).
//!
//! Reading order: `record.rs` (the record codec, sans-IO), `segment.rs` (segment header,
//! naming, and the scanner that classifies a segment's end, sans-IO), `storage.rs` (the
//! `Storage` seam: real files, an in-memory disk with a page cache, fault injection),
//! `stream.rs` (`WalWriter`: append, group commit, fsync policy, rotation with space reserved
//! ahead, retention, poisoning; opening is recovery; `append_encoded` and `open_at` for a
//! standby's copy), `tail.rs` (`Tail`: reads a stream's raw records while its writer appends,
//! for shipping them to a standby), `resync.rs` (`truncate_after` and `wipe`: cutting a closed
//! stream for replication), `inspect.rs` (`ringcast wal inspect`, `verify`, `dump`:
//! read-only).
//!
//! On disk:
//!
//! ```text
//! {storage.dir}/wal/<stream>/{first_lsn:020}.wal    segment files (64-byte header, records)
//! {storage.dir}/wal/<stream>/next.wal.tmp            the next segment, created ahead of need
//! ```
//!
//! There is no other metadata file: every segment header carries its format version, stream
//! name and first LSN, and every record its own format version (so a build that does not know
//! a record kind skips it when the writer marked it skippable, and stops otherwise).

pub mod inspect;
pub mod record;
pub mod resync;
pub mod segment;
pub mod storage;
pub mod stream;
pub mod tail;

#[cfg(test)]
mod proptests;

use std::path::{Path, PathBuf};

pub use record::{DecodeError, Header, Kind, Record};
pub use resync::{truncate_after, wipe};
pub use storage::{Fault, FaultRates, FaultyStorage, FsStorage, MemStorage, Storage, StorageFile};
pub use stream::{
    AppendError, CommitResult, Now, Poisoned, Recovery, RecoveryError, RecoveryMode, Removed,
    StreamScan, WalOptions, WalWriter, scan_stream,
};
pub use tail::{Tail, TailError, first_retained_lsn};

/// The stream of the webhook outbox.
pub const WEBHOOKS_STREAM: &str = "webhooks";

/// The stream of core `core`.
pub fn core_stream(core: usize) -> String {
    format!("core-{core}")
}

/// `{data_dir}/wal`: the directory holding every stream.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// `{data_dir}/wal/{stream}`: one stream's segments.
pub fn stream_dir(data_dir: &Path, stream: &str) -> PathBuf {
    wal_dir(data_dir).join(stream)
}
