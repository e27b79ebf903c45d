//! Rewriting a closed stream's history for replication (issue 13): `truncate_after` moves a
//! returning old primary's divergent suffix (the records after the LSN it shares with the new
//! primary) into a file of its own and cuts the stream there; `wipe` removes a whole stream
//! for a full resync (reopen it with `WalWriter::open_at`). It owns the order of those cuts so
//! that a crash leaves either the old stream or a prefix of it, and never loses the divergent
//! records (they are synced elsewhere before anything is cut). It must only run while no
//! writer has the stream open, must not read a clock, and goes through `Storage` only.

use std::io;
use std::path::Path;

use super::record;
use super::segment::{self, Expect, SegmentHeader};
use super::storage::Storage;
use super::stream::{
    NEXT_SEGMENT_NAME, RecoveryError, RecoveryMode, SegmentInfo, install_segment, io_error,
    list_names, scan_segments, sort_names,
};

/// Moves every record with an LSN above `after_lsn` out of the stream `stream` in `dir`: their
/// raw bytes go, in order, into `divergent_file` (created with its parent directories, synced),
/// then the segments after the one holding `after_lsn` are removed (the last first) and that
/// one is cut right after it. Returns how many records moved; 0 (and nothing changed) when the
/// stream ends at or before `after_lsn`. When `after_lsn` is below the stream's first record,
/// every segment goes and an empty segment named `after_lsn + 1` is left, so the next
/// `WalWriter::open` continues at `after_lsn + 1`. Afterwards `open` recovers the stream with
/// `after_lsn` as its last LSN (or none, as above). No writer may have the stream open.
///
/// # Errors
///
/// Damage in the stream (strict recovery rules; a torn tail is not damage: it is not moved),
/// an existing `divergent_file` (never overwritten: it may hold an earlier attempt's records),
/// and IO errors, each naming the operation and path.
pub fn truncate_after(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    after_lsn: u64,
    divergent_file: &Path,
) -> Result<u64, RecoveryError> {
    if !segment::valid_stream_name(stream) {
        return Err(RecoveryError::BadStreamName(stream.to_string()));
    }
    let (segments, _others) = sort_names(list_names(storage, dir)?);
    let scan = scan_segments(
        storage,
        dir,
        stream,
        &segments,
        u64::MAX,
        RecoveryMode::Strict,
        |_, _| {},
    )?;
    let Some(last_lsn) = scan.last_lsn else {
        return Ok(0);
    };
    if last_lsn <= after_lsn {
        return Ok(0);
    }
    let divergent: Vec<&SegmentInfo> = scan
        .segments
        .iter()
        .filter(|info| info.last_lsn.is_some_and(|last| last > after_lsn))
        .collect();
    let copied = copy_suffix(storage, dir, stream, &divergent, after_lsn, divergent_file)?;
    let first_lsn = scan
        .first_lsn
        .expect("a stream with a last record has a first");
    assert_eq!(copied.records, last_lsn - after_lsn.max(first_lsn - 1));
    assert_eq!(copied.cut.is_none(), after_lsn < first_lsn);
    // From the end backwards, so that a crash in between leaves a prefix of the stream.
    for (first_lsn, name) in segments.iter().rev() {
        if *first_lsn <= after_lsn {
            break;
        }
        let path = dir.join(name);
        storage.remove(&path).map_err(io_error("remove", &path))?;
        storage
            .sync_dir(dir)
            .map_err(io_error("sync directory", dir))?;
    }
    match copied.cut {
        Some((name, offset)) => {
            let path = dir.join(name);
            storage
                .truncate(&path, offset)
                .map_err(io_error("truncate", &path))?;
        }
        None => start_empty(storage, dir, stream, after_lsn + 1)?,
    }
    storage
        .sync_dir(dir)
        .map_err(io_error("sync directory", dir))?;
    Ok(copied.records)
}

/// What `copy_suffix` copied, and where the stream is to be cut.
struct Copied<'a> {
    records: u64,
    /// The segment holding `after_lsn` and the offset right after that record (None: no
    /// segment holds it, the whole stream is divergent).
    cut: Option<(&'a str, u64)>,
}

/// Copies the raw records above `after_lsn` in the `divergent` segments (in order) into the
/// new file `divergent_file`, one write per segment, and makes the file and its name durable.
fn copy_suffix<'a>(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    divergent: &[&'a SegmentInfo],
    after_lsn: u64,
    divergent_file: &Path,
) -> Result<Copied<'a>, RecoveryError> {
    let parent = divergent_file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    storage
        .create_dir_all(parent)
        .map_err(io_error("create directory", parent))?;
    let (mut file, _) = storage
        .create(divergent_file, 0)
        .map_err(io_error("create", divergent_file))?;
    let mut copied = Copied {
        records: 0,
        cut: None,
    };
    let mut written = 0;
    let mut suffix = Vec::new();
    for info in divergent {
        let path = dir.join(&info.name);
        let bytes = storage.read(&path).map_err(io_error("read", &path))?;
        let expect = Expect {
            stream,
            first_lsn: info.first_lsn,
            next_lsn: None,
        };
        let mut ranges = Vec::new();
        let mut cut = None;
        segment::scan(&bytes, expect, false, |offset, header, _| {
            let end = offset + u64::from(header.len);
            if header.lsn == after_lsn {
                cut = Some(end);
            }
            if header.lsn > after_lsn {
                ranges.push((offset as usize, end as usize));
            }
        });
        if let Some(end) = cut {
            copied.cut = Some((&info.name, end));
        }
        suffix.clear();
        for (start, end) in ranges {
            assert!(record::frame(&bytes[start..end]).is_ok());
            suffix.extend_from_slice(&bytes[start..end]);
            copied.records += 1;
        }
        file.write_at(written, &suffix)
            .map_err(io_error("write", divergent_file))?;
        written += suffix.len() as u64;
    }
    file.sync_data().map_err(io_error("sync", divergent_file))?;
    storage
        .sync_dir(parent)
        .map_err(io_error("sync directory", parent))?;
    Ok(copied)
}

/// Leaves an empty segment (a header, no record) named `first_lsn` in `dir`, so the stream's
/// next open starts there. Created under the temporary name and renamed once synced; the
/// caller syncs the directory.
fn start_empty(
    storage: &dyn Storage,
    dir: &Path,
    stream: &str,
    first_lsn: u64,
) -> Result<(), RecoveryError> {
    let temporary = dir.join(NEXT_SEGMENT_NAME);
    match storage.remove(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("remove", &temporary)(error)),
    }
    // No clock here: the writer that opens the stream replaces this segment (it holds no
    // record) with one stamped with its own time.
    let header = SegmentHeader::new(stream, first_lsn, 0);
    let (mut file, _) = storage
        .create(&temporary, 0)
        .map_err(io_error("create segment", &temporary))?;
    let path = dir.join(segment::file_name(first_lsn));
    install_segment(storage, &mut *file, &temporary, &path, &header).map(|_| ())
}

/// Removes every segment of the stream in `dir` (the last first) and every leftover segment
/// under a temporary name, then syncs the directory: a full resync starts the stream again
/// with `WalWriter::open_at`. Unknown files are left alone. A missing directory is already
/// wiped. No writer may have the stream open.
///
/// # Errors
///
/// IO errors of listing, removing and syncing.
pub fn wipe(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let names = match storage.list(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let (segments, others) = sort_names(names);
    for name in others
        .iter()
        .filter(|name| name.ends_with(segment::TEMPORARY_SUFFIX))
    {
        storage.remove(&dir.join(name))?;
    }
    for (_, name) in segments.iter().rev() {
        storage.remove(&dir.join(name))?;
    }
    storage.sync_dir(dir)
}

#[cfg(test)]
mod tests;
