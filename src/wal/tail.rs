//! `Tail`: the incremental reader of one stream directory while its writer (another thread)
//! keeps appending and rotating segments, for shipping a stream to a hot standby (issue 13).
//! It owns a cursor (segment, byte offset, LSN) and hands out the raw encoded records (header
//! and payload, exactly as on disk, each checked with `record::frame`) in LSN order, up to the
//! writer's published written LSN. It must not write, remove or repair anything (recovery and
//! retention are the writer's), must not read a whole segment at once (it reads
//! `WAL_TAIL_READ_BYTES` at a time), must not read a clock, and goes through `Storage` only.
//!
//! A record at or below the published written LSN is complete in the page cache, so damage
//! there (a bad checksum, an LSN out of sequence, a gap between segments) is reported as
//! `TailError::Damage`; zeros or an incomplete record are only "not visible yet" and end a
//! read quietly. The directory is listed when the tail starts, when it reaches the end of a
//! segment and the next one is not known yet, and when a segment it was reading is gone.
//! The newest segment (as last listed) stays open between reads, like a descriptor: if
//! retention removes it meanwhile the tail still finishes it, and reports what follows as not
//! retained. The first read of a call asks for about twice what the previous call took, so a
//! live tail does not copy the zeros past the written end of a preallocated segment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, DecodeError};
use super::segment;
use super::storage::{Storage, StorageRead};
use crate::limits;

/// The smallest first read of a call: a segment header and a record header fit.
const MIN_READ_BYTES: usize = 4096;

/// Why a tail could not read.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The next LSN is below the first segment present: retention removed it. The reader
    /// needs a full resync (`first_retained` is the first LSN of the first segment present;
    /// None when the directory holds no segment although records were published).
    #[error("write-ahead log records are no longer retained (first retained: {first_retained:?})")]
    NotRetained { first_retained: Option<u64> },
    /// A record at or below the published written LSN is damaged (or out of sequence, or a
    /// segment header is wrong): `file` is the segment's file name, `offset` the byte in it.
    #[error("damaged write-ahead log record in {file} at byte {offset}")]
    Damage { file: String, offset: u64 },
    #[error("failed to read write-ahead log: {0}")]
    Io(#[from] io::Error),
}

/// Where the tail stands in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    name: String,
    first_lsn: u64,
    /// The offset of the record with LSN `lsn`; 0 while the segment header is unchecked.
    offset: u64,
    /// The LSN of the record at `offset` (below the tail's `next_lsn` while positioning).
    lsn: u64,
}

/// What one read at the cursor ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Read again at the cursor, `read_bytes` at once (more than usual for a large record).
    More { read_bytes: usize },
    /// Done for this call: the budget or `upto_lsn` is reached, or nothing more is visible.
    Stop,
    /// Zeros (or the end of the file) at a record boundary: the next record, if any, is in
    /// the next segment.
    EndOfSegment,
    /// The segment file is gone (retention removed it).
    Gone,
}

/// The output of one `read` call and its bounds.
struct Batch<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    bytes_max: usize,
    upto_lsn: u64,
    records: usize,
}

impl Batch<'_> {
    /// Whether a record of `len` more bytes still fits (the first one always does).
    fn fits(&self, len: usize) -> bool {
        self.records == 0 || self.out.len() - self.start + len <= self.bytes_max
    }

    /// Whether another record may be taken at all.
    fn open(&self) -> bool {
        self.records == 0 || self.out.len() - self.start < self.bytes_max
    }
}

/// The incremental reader of one stream. See the module docs.
#[derive(Debug)]
pub struct Tail {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    stream: Box<str>,
    next_lsn: u64,
    cursor: Option<Cursor>,
    /// The segments as last listed, sorted by first LSN.
    segments: Vec<(u64, String)>,
    /// The newest segment as last listed, kept open: the tail of a live stream comes back to
    /// it at every batch, and opening it each time cost more than the read.
    reader: Option<(String, Box<dyn StorageRead>)>,
    /// The bytes of the last read (kept, so that a read does not allocate or zero memory; at
    /// most `WAL_TAIL_READ_BYTES` are kept between reads).
    buf: Vec<u8>,
    /// How much the first read of a call asks for: about twice what the last call took, at
    /// least 4 KiB, at most `WAL_TAIL_READ_BYTES` (a read past the written end copies zeros).
    first_read_bytes: usize,
}

impl Tail {
    /// A tail of the stream `stream` in `dir` whose first record read will be `next_lsn`. Does
    /// no IO: the directory is listed at the first `read`.
    ///
    /// # Panics
    ///
    /// When `next_lsn` is 0 (LSNs start at 1).
    pub fn new(storage: Arc<dyn Storage>, dir: &Path, stream: &str, next_lsn: u64) -> Tail {
        assert!(next_lsn >= 1, "LSNs start at 1");
        Tail {
            storage,
            dir: dir.to_path_buf(),
            stream: stream.into(),
            next_lsn,
            cursor: None,
            segments: Vec::new(),
            reader: None,
            buf: Vec::new(),
            first_read_bytes: limits::WAL_TAIL_READ_BYTES,
        }
    }

    /// The LSN of the next record `read` returns.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Appends to `out` the raw bytes of consecutive records from `next_lsn()` up to
    /// `upto_lsn` (the writer's published written LSN), at most `max_bytes` of them but always
    /// at least one whole record when one is visible; returns how many were appended and
    /// advances `next_lsn()`. Ends quietly where nothing more is visible yet.
    ///
    /// # Errors
    ///
    /// `NotRetained` when `next_lsn()` is below the first segment present; `Damage` for a bad
    /// record at or below `upto_lsn`; `Io`. Nothing is appended to `out` by a failed call
    /// beyond the records already counted before the error (they stay: `next_lsn()` moved
    /// past them).
    pub fn read(
        &mut self,
        upto_lsn: u64,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, TailError> {
        let start = out.len();
        let mut batch = Batch {
            out,
            start,
            bytes_max: max_bytes,
            upto_lsn,
            records: 0,
        };
        let mut read_bytes = self.first_read_bytes;
        // A segment that disappears between listing and reading (retention) is looked up
        // again, a bounded number of times per call.
        let mut gone = 0;
        while self.next_lsn <= upto_lsn && batch.open() {
            let mut cursor = match self.cursor.take() {
                Some(cursor) => cursor,
                None => match self.locate(upto_lsn)? {
                    Some(cursor) => cursor,
                    None => break,
                },
            };
            let step = self.read_at(&mut cursor, read_bytes, &mut batch)?;
            read_bytes = limits::WAL_TAIL_READ_BYTES;
            match step {
                Step::More { read_bytes: bytes } => read_bytes = bytes,
                Step::Stop => {
                    self.cursor = Some(cursor);
                    break;
                }
                Step::EndOfSegment => match self.advance(&cursor)? {
                    Some(next) => cursor = next,
                    None => {
                        self.cursor = Some(cursor);
                        break;
                    }
                },
                Step::Gone if gone < 2 => {
                    gone += 1;
                    continue;
                }
                Step::Gone => return Err(io::Error::from(io::ErrorKind::NotFound).into()),
            }
            self.cursor = Some(cursor);
        }
        assert!(batch.records == 0 || batch.out.len() > batch.start);
        let taken = batch.out.len() - batch.start;
        self.first_read_bytes = taken
            .saturating_mul(2)
            .next_multiple_of(MIN_READ_BYTES)
            .clamp(MIN_READ_BYTES, limits::WAL_TAIL_READ_BYTES);
        Ok(batch.records)
    }

    /// Lists the directory and finds the segment holding `next_lsn` (the last one starting at
    /// or before it). None when nothing is there to read yet.
    fn locate(&mut self, upto_lsn: u64) -> Result<Option<Cursor>, TailError> {
        self.segments = list_segments(&*self.storage, &self.dir)?;
        let Some((first_retained, _)) = self.segments.first() else {
            return if self.next_lsn <= upto_lsn {
                Err(TailError::NotRetained {
                    first_retained: None,
                })
            } else {
                Ok(None)
            };
        };
        if self.next_lsn < *first_retained {
            return Err(TailError::NotRetained {
                first_retained: Some(*first_retained),
            });
        }
        let index = self
            .segments
            .partition_point(|(first_lsn, _)| *first_lsn <= self.next_lsn);
        assert!(index >= 1);
        let (first_lsn, name) = &self.segments[index - 1];
        Ok(Some(Cursor {
            name: name.clone(),
            first_lsn: *first_lsn,
            offset: 0,
            lsn: *first_lsn,
        }))
    }

    /// The segment after the one `cursor` reached the end of, when it exists (listing the
    /// directory again if the last listing does not have it).
    fn advance(&mut self, cursor: &Cursor) -> Result<Option<Cursor>, TailError> {
        let after = |segments: &[(u64, String)]| {
            segments
                .iter()
                .find(|(first_lsn, _)| *first_lsn > cursor.first_lsn)
                .cloned()
        };
        let next = match after(&self.segments) {
            Some(next) => Some(next),
            None => {
                self.segments = list_segments(&*self.storage, &self.dir)?;
                after(&self.segments)
            }
        };
        let Some((first_lsn, name)) = next else {
            return Ok(None);
        };
        // This segment was read through a descriptor kept open while retention removed it and
        // the segments after it: what follows it is no longer retained.
        if first_lsn > cursor.lsn && !self.segments.iter().any(|(_, name)| *name == cursor.name) {
            return Err(TailError::NotRetained {
                first_retained: self.segments.first().map(|(first_lsn, _)| *first_lsn),
            });
        }
        // The next segment starts right after the last record of this one: anything else is
        // a gap (or an overlap) in records the writer reported written.
        if first_lsn != cursor.lsn {
            return Err(TailError::Damage {
                file: cursor.name.clone(),
                offset: cursor.offset,
            });
        }
        Ok(Some(Cursor {
            name,
            first_lsn,
            offset: 0,
            lsn: first_lsn,
        }))
    }

    /// Reads `read_bytes` at the cursor and takes the records in them into `batch` (skipping
    /// those below `next_lsn` while positioning). Moves the cursor past what it took.
    fn read_at(
        &mut self,
        cursor: &mut Cursor,
        read_bytes: usize,
        batch: &mut Batch<'_>,
    ) -> Result<Step, TailError> {
        let mut buf = std::mem::take(&mut self.buf);
        let filled = self.fill(cursor, read_bytes, &mut buf);
        let step = match filled {
            Ok(Some(len)) => self.take_records(cursor, &buf[..len], read_bytes, batch),
            Ok(None) => Ok(Step::Gone),
            Err(error) => Err(error.into()),
        };
        // A record larger than a read grew the buffer: it is not kept at that size.
        if buf.len() > limits::WAL_TAIL_READ_BYTES {
            buf = Vec::new();
        }
        self.buf = buf;
        step
    }

    /// Reads `read_bytes` at the cursor into `buf` (grown when needed, never shrunk); returns
    /// how many bytes were read, or None when the segment is gone. The newest segment is read
    /// through the kept descriptor; an older one (catching up) is opened for the read.
    fn fill(
        &mut self,
        cursor: &Cursor,
        read_bytes: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        let path = self.dir.join(&cursor.name);
        let newest = self
            .segments
            .last()
            .is_some_and(|(_, name)| *name == cursor.name);
        let gone = |error: io::Error| {
            if error.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(error)
            }
        };
        if !newest {
            self.reader = None;
            return match self.storage.read_range(&path, cursor.offset, read_bytes) {
                Ok(bytes) => {
                    let len = bytes.len();
                    *buf = bytes;
                    Ok(Some(len))
                }
                Err(error) => gone(error),
            };
        }
        if self
            .reader
            .as_ref()
            .is_none_or(|(name, _)| *name != cursor.name)
        {
            self.reader = None;
            match self.storage.open_read(&path) {
                Ok(reader) => self.reader = Some((cursor.name.clone(), reader)),
                Err(error) => return gone(error),
            }
        }
        let (_, reader) = self.reader.as_ref().expect("opened above");
        if buf.len() < read_bytes {
            buf.resize(read_bytes, 0);
        }
        reader
            .read_at(cursor.offset, &mut buf[..read_bytes])
            .map(Some)
    }

    /// Takes the records in `bytes` (a read of `read_bytes` at the cursor) into `batch`.
    fn take_records(
        &mut self,
        cursor: &mut Cursor,
        bytes: &[u8],
        read_bytes: usize,
        batch: &mut Batch<'_>,
    ) -> Result<Step, TailError> {
        let mut at = 0;
        if cursor.offset == 0 {
            if !self.header_valid(bytes, cursor)? {
                return Ok(Step::Stop);
            }
            at = segment::HEADER_BYTES;
        }
        let first = at;
        let step = loop {
            if cursor.lsn > batch.upto_lsn {
                break Step::Stop;
            }
            match record::frame(&bytes[at..]) {
                Ok((header, _)) => {
                    if header.lsn != cursor.lsn {
                        return Err(self.damage(cursor, at));
                    }
                    let len = header.len as usize;
                    if cursor.lsn >= self.next_lsn {
                        if !batch.fits(len) {
                            break Step::Stop;
                        }
                        batch.out.extend_from_slice(&bytes[at..at + len]);
                        batch.records += 1;
                        self.next_lsn += 1;
                    }
                    cursor.lsn += 1;
                    at += len;
                }
                Err(DecodeError::Zero) => break Step::EndOfSegment,
                Err(DecodeError::Incomplete) => break incomplete(bytes, at, first, read_bytes),
                Err(_) => return Err(self.damage(cursor, at)),
            }
        };
        cursor.offset += at as u64;
        Ok(step)
    }

    /// Checks the segment header at the start of `bytes`: false when it is not written yet
    /// (zeros or short), damage when it is wrong.
    fn header_valid(&self, bytes: &[u8], cursor: &Cursor) -> Result<bool, TailError> {
        let Some(header) = bytes.get(..segment::HEADER_BYTES) else {
            return Ok(false);
        };
        if segment::all_zero(header) {
            return Ok(false);
        }
        match segment::decode_header(header) {
            Ok(header)
                if *header.stream == *self.stream && header.first_lsn == cursor.first_lsn =>
            {
                Ok(true)
            }
            _ => Err(self.damage(cursor, 0)),
        }
    }

    fn damage(&self, cursor: &Cursor, at: usize) -> TailError {
        TailError::Damage {
            file: cursor.name.clone(),
            offset: cursor.offset + at as u64,
        }
    }
}

/// What an incomplete record at `at` in `bytes` (a read of `read_bytes`, records from `first`)
/// means: the end of this read (read again from it), a record larger than the read (read it
/// whole), or the end of what is visible in the file.
fn incomplete(bytes: &[u8], at: usize, first: usize, read_bytes: usize) -> Step {
    if bytes.len() < read_bytes {
        // The end of the file: the rest of the record is not there (yet).
        return Step::Stop;
    }
    if at > first {
        return Step::More {
            read_bytes: limits::WAL_TAIL_READ_BYTES,
        };
    }
    // Nothing taken from this read: the record is larger than it. `frame` checked its length
    // against `WAL_RECORD_BYTES_MAX` before calling it incomplete.
    let Some(len) = bytes.get(at..at + 4) else {
        return Step::Stop;
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    assert!(len <= limits::WAL_RECORD_BYTES_MAX);
    if at + len <= read_bytes {
        return Step::Stop;
    }
    Step::More {
        read_bytes: at + len,
    }
}

/// The segments in `dir`, sorted by first LSN (other files, such as the next segment under its
/// temporary name, are left out). A missing directory holds none.
fn list_segments(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<(u64, String)>> {
    let names = match storage.list(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    if names.len() > limits::WAL_SEGMENTS_PER_STREAM_MAX {
        return Err(io::Error::other(format!(
            "{} holds more than {} files",
            dir.display(),
            limits::WAL_SEGMENTS_PER_STREAM_MAX
        )));
    }
    let mut segments: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|name| segment::parse_file_name(&name).map(|lsn| (lsn, name)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// The first LSN of the first segment of the stream in `dir` that holds a record (its first
/// record is read and checked); None when no segment does (or there is no directory).
///
/// # Errors
///
/// IO errors of listing and reading.
pub fn first_retained_lsn(storage: &dyn Storage, dir: &Path) -> io::Result<Option<u64>> {
    for (first_lsn, name) in list_segments(storage, dir)? {
        let path = dir.join(&name);
        let offset = segment::HEADER_BYTES as u64;
        let len_bytes = match storage.read_range(&path, offset, 4) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let Some(len_bytes) = len_bytes.first_chunk::<4>() else {
            continue;
        };
        let len = u32::from_le_bytes(*len_bytes) as usize;
        if !(record::HEADER_BYTES..=limits::WAL_RECORD_BYTES_MAX).contains(&len) {
            continue;
        }
        let bytes = match storage.read_range(&path, offset, len) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if record::frame(&bytes).is_ok_and(|(header, _)| header.lsn == first_lsn) {
            return Ok(Some(first_lsn));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(super) mod tests;
