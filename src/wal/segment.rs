//! Segment files, sans-IO: the fixed segment header, file naming, and the scanner that reads a
//! segment's bytes into records and classifies how the segment ends. It must not do IO (the
//! caller reads the file into a slice) and must not trust the bytes: it never panics and never
//! allocates per byte read, whatever they are.
//!
//! A stream is a directory of segments named `{first_lsn:020}.wal`. Each starts with a
//! `HEADER_BYTES` header, then records back to back, then zero bytes (preallocated space):
//!
//! ```text
//! magic "RINGWAL1" | version u16 | name_len u16 | stream name [32, zero padded]
//!   | first_lsn u64 | created_ms u64 | crc32c u32 (of the 60 bytes before it)
//! ```
//!
//! How a segment ends (`End`):
//! * **clean**: the end of the bytes, or nothing but zero bytes after the last record;
//! * **torn**: a record (or the header) that is incomplete or fails its checksum, and no valid
//!   record with a higher LSN anywhere after it: a write that did not finish. Or such damage
//!   with a never-written page between it and the next valid record (a page-aligned page of
//!   zeros, or zeros from the damage to a page boundary): unsynced pages written back out of
//!   order before a power loss (`Damage::LostWrite`; nothing from the damage on was ever
//!   synced, since a sync writes every page). Recovery truncates it: none of it was ever
//!   reported synced;
//! * **corrupt**: anything else: a damaged record with valid records after it, a checksummed
//!   record that does not parse, an LSN out of sequence, a header naming another stream. Never
//!   truncated silently: recovery stops (or, salvaging, skips to the next valid record and
//!   reports the LSN gap).

use std::fmt;

use super::record::{self, DecodeError, Header, Kind, Record};
use crate::limits;

/// The first bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"RINGWAL1";
/// The segment header's version.
pub const VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_BYTES: usize = 64;
/// Suffix of a segment created ahead of need and not yet in use (removed at recovery).
pub const TEMPORARY_SUFFIX: &str = ".tmp";
/// Suffix of segment files.
pub const SUFFIX: &str = ".wal";
/// The page size of lost writes: a page-aligned run of this many zero bytes inside damage is a
/// page the kernel never wrote (bit rot does not zero a whole page).
pub const PAGE_BYTES: usize = 4096;

const NAME_FIELD_BYTES: usize = limits::WAL_STREAM_NAME_BYTES_MAX;
const _: () = assert!(8 + 2 + 2 + NAME_FIELD_BYTES + 8 + 8 + 4 == HEADER_BYTES);
const _: () = assert!(HEADER_BYTES as u64 <= limits::WAL_SEGMENT_HEADER_BYTES_MAX);
const _: () = assert!(HEADER_BYTES as u64 + 16 * 1024 <= limits::WAL_SEGMENT_BYTES_MIN);

/// A segment's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u16,
    pub stream: Box<str>,
    /// The LSN of the segment's first record (also its file name).
    pub first_lsn: u64,
    /// Wall-clock Unix ms when the segment was started (for a sealed segment, when the
    /// previous one was sealed: retention ages segments by it).
    pub created_ms: u64,
}

impl SegmentHeader {
    /// The header of `stream`'s segment starting at `first_lsn`, in this build's format.
    pub fn new(stream: &str, first_lsn: u64, created_ms: u64) -> SegmentHeader {
        SegmentHeader {
            version: VERSION,
            stream: stream.into(),
            first_lsn,
            created_ms,
        }
    }

    /// Its encoding (`HEADER_BYTES`).
    ///
    /// # Panics
    ///
    /// As `encode_header`.
    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES);
        encode_header(self, &mut out);
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the segment is shorter than its header")]
    Short,
    #[error("the segment header is zero bytes (never written)")]
    Zero,
    #[error("not a ringcast segment (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    BadCrc,
    #[error("segment format version {0} is not supported")]
    Version(u16),
    #[error("bad stream name in the segment header")]
    BadName,
}

/// Stream names: 1 to `WAL_STREAM_NAME_BYTES_MAX` of `a-z`, `0-9`, `-`, `_`.
pub fn valid_stream_name(name: &str) -> bool {
    (1..=limits::WAL_STREAM_NAME_BYTES_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Appends the encoded header.
///
/// # Panics
///
/// When the stream name is not valid (names are ours, never from outside).
pub fn encode_header(header: &SegmentHeader, out: &mut Vec<u8>) {
    assert!(valid_stream_name(&header.stream), "{:?}", header.stream);
    assert!(header.first_lsn >= 1);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&(header.stream.len() as u16).to_le_bytes());
    let mut name = [0u8; NAME_FIELD_BYTES];
    name[..header.stream.len()].copy_from_slice(header.stream.as_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(&header.first_lsn.to_le_bytes());
    out.extend_from_slice(&header.created_ms.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(out.len() - start, HEADER_BYTES);
    debug_assert_eq!(decode_header(&out[start..]).as_ref(), Ok(header));
}

/// Decodes and validates the header at the start of a segment's bytes.
pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let Some(bytes) = bytes.get(..HEADER_BYTES) else {
        return Err(HeaderError::Short);
    };
    if bytes.iter().all(|&b| b == 0) {
        return Err(HeaderError::Zero);
    }
    if bytes[..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes(bytes[60..64].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..60]) != crc {
        return Err(HeaderError::BadCrc);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let name_len = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
    let name = bytes[12..12 + NAME_FIELD_BYTES]
        .get(..name_len)
        .and_then(|name| std::str::from_utf8(name).ok())
        .filter(|name| valid_stream_name(name))
        .ok_or(HeaderError::BadName)?;
    let first_lsn = u64::from_le_bytes(bytes[44..52].try_into().expect("8 bytes"));
    if first_lsn == 0 {
        return Err(HeaderError::BadName);
    }
    Ok(SegmentHeader {
        version,
        stream: name.into(),
        first_lsn,
        created_ms: u64::from_le_bytes(bytes[52..60].try_into().expect("8 bytes")),
    })
}

/// The file name of the segment starting at `first_lsn`.
pub fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

/// The first LSN named by a segment file name; None for any other name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&lsn| lsn >= 1)
}

/// What is wrong at a damaged offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    Header(HeaderError),
    Record(DecodeError),
    /// A valid record (or segment header) with an LSN other than the next one.
    Lsn {
        expected: u64,
        found: u64,
    },
    /// A valid header that names another stream or another first LSN than its file name.
    Misnamed {
        stream: Box<str>,
        first_lsn: u64,
    },
    /// The file is larger than any segment can be.
    TooLarge {
        bytes: u64,
    },
    /// Valid records follow a damaged one in a later segment file.
    Followed {
        file: Box<str>,
        offset: u64,
    },
    /// `damage`, then a whole page of zeros at `zero_page` that was never written, then valid
    /// records from `valid_at`: unsynced pages the kernel wrote back out of order before a
    /// power loss. A tear: nothing from `damage` on was ever synced (a sync would have written
    /// the zero page too), so it is truncated like any unfinished write.
    LostWrite {
        damage: Box<Damage>,
        zero_page: u64,
        valid_at: u64,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Header(error) => write!(f, "{error}"),
            Damage::Record(DecodeError::UnknownKind { kind, .. }) => write!(
                f,
                "record kind {kind} is unknown to this build and not skippable (written by a newer ringcast?)"
            ),
            Damage::Record(DecodeError::UnknownFormat { kind, format, .. }) => write!(
                f,
                "record kind {kind} in format {format} is unknown to this build (written by a newer ringcast?)"
            ),
            Damage::Record(error) => write!(f, "{error}"),
            Damage::Lsn { expected, found } => {
                write!(f, "LSN {found} where {expected} was expected")
            }
            Damage::Misnamed { stream, first_lsn } => write!(
                f,
                "the header names stream {stream:?} starting at LSN {first_lsn}, not this file"
            ),
            Damage::TooLarge { bytes } => write!(
                f,
                "{bytes} bytes is larger than any segment ({} at most)",
                limits::WAL_SEGMENT_FILE_BYTES_MAX
            ),
            Damage::Followed { file, offset } => write!(
                f,
                "a damaged record with valid records after it (in {file} at byte {offset})"
            ),
            Damage::LostWrite {
                damage,
                zero_page,
                valid_at,
            } => write!(
                f,
                "{damage}, then a page never written (zeros at byte {zero_page}) and unsynced records from byte {valid_at}: writes lost with the power"
            ),
        }
    }
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// End of the bytes, or only zero bytes after the last record.
    Clean,
    /// An unfinished write at `offset`: nothing valid after it.
    Torn { offset: u64, damage: Damage },
    /// Damage at `offset` that is not an unfinished write.
    Corrupt { offset: u64, damage: Damage },
}

/// A damaged range a salvaging scan skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub offset: u64,
    pub bytes: u64,
    pub damage: Damage,
    /// The LSNs missing: from `lsn_first` up to (not including) `lsn_end`; empty when the
    /// skipped bytes held no record of the sequence.
    pub lsn_first: u64,
    pub lsn_end: u64,
}

/// What the segment expects to find.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub stream: &'a str,
    /// The first LSN its file name says.
    pub first_lsn: u64,
    /// The LSN after the previous segment's last record (None for the oldest segment).
    pub next_lsn: Option<u64>,
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub header: Option<SegmentHeader>,
    /// Valid records visited (known kinds).
    pub records: u64,
    /// Valid records of unknown, skippable kinds (skipped).
    pub skipped_unknown: u64,
    /// Records per `Kind` (index = position in `Kind::ALL`).
    pub kinds: [u64; Kind::ALL.len()],
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// The highest epoch of any valid record.
    pub last_epoch: u64,
    /// The LSN the next record must have (the last valid one + 1).
    pub next_lsn: u64,
    /// The offset after the last valid record (or after the header): a torn or clean tail is
    /// truncated here.
    pub valid_end: u64,
    pub end: End,
    /// Ranges a salvaging scan skipped (at most `WAL_SALVAGE_REPORTS_MAX` listed).
    pub salvaged: Vec<Salvaged>,
    /// Ranges skipped beyond those listed.
    pub salvaged_unlisted: u64,
}

/// Scans one segment's bytes: validates the header, visits every valid record in order
/// (`visit(offset, header, record)`, with `None` for an unknown skippable kind), and
/// classifies the end. With `salvage`, damage before the end is skipped (to the next valid
/// record with a higher LSN) and listed in `salvaged` instead of ending the scan.
pub fn scan<'b>(
    bytes: &'b [u8],
    expect: Expect<'_>,
    salvage: bool,
    visit: impl FnMut(u64, &Header, Option<Record<&'b str>>),
) -> SegmentScan {
    let first = expect.next_lsn.unwrap_or(expect.first_lsn);
    let mut scanner = Scanner {
        bytes,
        salvage,
        visit,
        scan: SegmentScan {
            header: None,
            records: 0,
            skipped_unknown: 0,
            kinds: [0; Kind::ALL.len()],
            first_lsn: None,
            last_lsn: None,
            last_epoch: 0,
            next_lsn: first,
            valid_end: 0,
            end: End::Clean,
            salvaged: Vec::new(),
            salvaged_unlisted: 0,
        },
    };
    if bytes.len() as u64 > limits::WAL_SEGMENT_FILE_BYTES_MAX {
        scanner.stop(End::Corrupt {
            offset: 0,
            damage: Damage::TooLarge {
                bytes: bytes.len() as u64,
            },
        });
        return scanner.scan;
    }
    let Some(mut at) = scanner.header(expect) else {
        return scanner.scan;
    };
    scanner.scan.valid_end = at as u64;
    while let Some(next) = scanner.record(at) {
        at = next;
    }
    scanner.scan
}

/// One segment's scan in progress: its bytes, whether damage is skipped, whom the records are
/// shown to, and what was found so far. Each step returns the offset to go on at, or None when
/// the scan has ended (`scan.end` says how).
struct Scanner<'b, V> {
    bytes: &'b [u8],
    salvage: bool,
    visit: V,
    scan: SegmentScan,
}

impl<'b, V: FnMut(u64, &Header, Option<Record<&'b str>>)> Scanner<'b, V> {
    /// Ends the scan with `end` (None: there is no offset to go on at).
    fn stop(&mut self, end: End) -> Option<usize> {
        self.scan.end = end;
        None
    }

    /// Checks the segment header against the file and the previous segment; returns the offset
    /// of the first record.
    fn header(&mut self, expect: Expect<'_>) -> Option<usize> {
        let header = match header_of(self.bytes, expect) {
            Ok(header) => header,
            Err(damage) => return self.damaged_header(damage),
        };
        self.scan.next_lsn = match expect.next_lsn {
            Some(next) if header.first_lsn != next => {
                let damage = Damage::Lsn {
                    expected: next,
                    found: header.first_lsn,
                };
                if !self.salvage {
                    self.scan.header = Some(header);
                    return self.stop(End::Corrupt { offset: 0, damage });
                }
                self.scan
                    .note_salvaged(0, 0, damage, next, header.first_lsn);
                // Never back: older LSNs in this segment are skipped as repeats.
                header.first_lsn.max(next)
            }
            _ => header.first_lsn,
        };
        self.scan.header = Some(header);
        Some(HEADER_BYTES)
    }

    /// A segment header that is damaged or does not belong here: a tear, corruption, or (with
    /// salvage) skipped to the first valid record.
    fn damaged_header(&mut self, damage: Damage) -> Option<usize> {
        // A header that passed its checksum but does not belong here was written whole:
        // never a tear. Otherwise nothing of this segment can be trusted before a valid
        // record is found.
        let whole = matches!(
            damage,
            Damage::Header(HeaderError::Version(_) | HeaderError::BadName)
                | Damage::Misnamed { .. }
        );
        let found = find_record(self.bytes, 0, self.scan.next_lsn);
        let damage = if whole {
            damage
        } else {
            self.end_if_lost_write(0, found, damage)?
        };
        match found {
            None if !whole => self.stop(End::Torn { offset: 0, damage }),
            Some(found) if self.salvage => Some(self.skip_to(0, found, damage)),
            _ => self.stop(End::Corrupt { offset: 0, damage }),
        }
    }

    /// Reads the record at `at`: visits it and returns the offset after it (None at a clean
    /// end: the end of the bytes, or only zeros after it), or hands damage to `damaged`.
    fn record(&mut self, at: usize) -> Option<usize> {
        let rest = &self.bytes[at..];
        if rest.is_empty() {
            return None;
        }
        let (damage, checksummed) = match record::frame(rest) {
            Ok((header, _)) if header.lsn != self.scan.next_lsn => {
                return self.out_of_sequence(at, &header);
            }
            Ok((header, _)) => match record::decode_ref(rest) {
                Ok((header, record, used)) => {
                    let kind = record.kind();
                    (self.visit)(at as u64, &header, Some(record));
                    let index = Kind::ALL.iter().position(|k| *k == kind).expect("listed");
                    self.scan.kinds[index] += 1;
                    self.scan.records += 1;
                    self.scan.accept(&header, at + used);
                    return Some(at + used);
                }
                Err(error) => Damage::Record(error).with_header(header),
            },
            Err(
                DecodeError::UnknownKind {
                    skippable: true, ..
                }
                | DecodeError::UnknownFormat {
                    skippable: true, ..
                },
            ) => {
                let header = frame_unchecked(rest);
                if header.lsn != self.scan.next_lsn {
                    // Handled like any record out of sequence on the next pass.
                    Damage::Lsn {
                        expected: self.scan.next_lsn,
                        found: header.lsn,
                    }
                    .with_header(header)
                } else {
                    (self.visit)(at as u64, &header, None);
                    self.scan.skipped_unknown += 1;
                    let end = at + header.len as usize;
                    self.scan.accept(&header, end);
                    return Some(end);
                }
            }
            Err(DecodeError::Zero) if all_zero(rest) => return None,
            Err(
                error @ (DecodeError::UnknownKind { .. }
                | DecodeError::UnknownFormat { .. }
                | DecodeError::BadPayload),
            ) => Damage::Record(error).with_header(frame_unchecked(rest)),
            Err(error) => (Damage::Record(error), None),
        };
        self.damaged(at, damage, checksummed)
    }

    /// A whole, checksummed record out of sequence at `at`: never an unfinished write.
    fn out_of_sequence(&mut self, at: usize, header: &Header) -> Option<usize> {
        let damage = Damage::Lsn {
            expected: self.scan.next_lsn,
            found: header.lsn,
        };
        if !self.salvage {
            return self.stop(End::Corrupt {
                offset: at as u64,
                damage,
            });
        }
        let next = self.scan.next_lsn;
        if header.lsn > next {
            self.scan
                .note_salvaged(at as u64, 0, damage, next, header.lsn);
            self.scan.next_lsn = header.lsn;
            return Some(at);
        }
        // An old LSN again: skip the record itself.
        self.scan
            .note_salvaged(at as u64, header.len as u64, damage, next, next);
        Some(at + header.len as usize)
    }

    /// Damage at `at` (`checksummed`: the length of the whole record it is in, if any): a
    /// tear, corruption, or (with salvage) skipped.
    fn damaged(&mut self, at: usize, damage: Damage, checksummed: Option<u64>) -> Option<usize> {
        // A checksummed record that cannot be used was written whole: it is never a tear.
        let found = find_record(self.bytes, at + 1, self.scan.next_lsn);
        let damage = if checksummed.is_some() {
            damage
        } else {
            self.end_if_lost_write(at, found, damage)?
        };
        let offset = at as u64;
        match (found, checksummed) {
            (None, None) => self.stop(End::Torn { offset, damage }),
            (Some(found), _) if self.salvage => Some(self.skip_to(at, found, damage)),
            (None, Some(len)) if self.salvage => {
                let next = self.scan.next_lsn;
                self.scan.note_salvaged(offset, len, damage, next, next);
                Some(at + len as usize)
            }
            _ => self.stop(End::Corrupt { offset, damage }),
        }
    }

    /// Ends the scan torn at `at` when the damage there is a lost write: a page never written
    /// between it and the valid record at `found`. Otherwise gives the damage back.
    fn end_if_lost_write(
        &mut self,
        at: usize,
        found: Option<usize>,
        damage: Damage,
    ) -> Option<Damage> {
        if let Some(valid_at) = found
            && let Some(page) = lost_write(self.bytes, at, valid_at)
        {
            self.stop(End::Torn {
                offset: at as u64,
                damage: Damage::LostWrite {
                    damage: Box::new(damage),
                    zero_page: page as u64,
                    valid_at: valid_at as u64,
                },
            });
            return None;
        }
        Some(damage)
    }

    /// Salvaging: skips the damage at `at` to the valid record at `found`, noting the LSNs
    /// lost; returns `found`.
    fn skip_to(&mut self, at: usize, found: usize, damage: Damage) -> usize {
        let lsn = record_lsn(self.bytes, found);
        let next = self.scan.next_lsn;
        self.scan
            .note_salvaged(at as u64, (found - at) as u64, damage, next, lsn);
        self.scan.next_lsn = lsn;
        found
    }
}

impl Damage {
    /// Pairs the damage with the length of the checksummed record it was found in.
    fn with_header(self, header: Header) -> (Damage, Option<u64>) {
        (self, Some(header.len as u64))
    }
}

impl SegmentScan {
    fn accept(&mut self, header: &Header, end: usize) {
        self.first_lsn.get_or_insert(header.lsn);
        self.last_lsn = Some(header.lsn);
        self.last_epoch = self.last_epoch.max(header.epoch);
        self.next_lsn = header.lsn + 1;
        self.valid_end = end as u64;
    }

    fn note_salvaged(&mut self, offset: u64, bytes: u64, damage: Damage, first: u64, end: u64) {
        if self.salvaged.len() < limits::WAL_SALVAGE_REPORTS_MAX {
            self.salvaged.push(Salvaged {
                offset,
                bytes,
                damage,
                lsn_first: first,
                lsn_end: end.max(first),
            });
        } else {
            self.salvaged_unlisted += 1;
        }
    }
}

/// The segment header, checked against the file it came from.
fn header_of(bytes: &[u8], expect: Expect<'_>) -> Result<SegmentHeader, Damage> {
    let header = decode_header(bytes).map_err(Damage::Header)?;
    if &*header.stream != expect.stream || header.first_lsn != expect.first_lsn {
        return Err(Damage::Misnamed {
            stream: header.stream,
            first_lsn: header.first_lsn,
        });
    }
    Ok(header)
}

/// The header of a record whose framing `record::frame` accepted up to its kind or format.
fn frame_unchecked(bytes: &[u8]) -> Header {
    Header {
        len: u32::from_le_bytes(bytes[0..4].try_into().expect("framed")),
        crc: u32::from_le_bytes(bytes[4..8].try_into().expect("framed")),
        kind: bytes[8],
        format: bytes[9],
        flags: u16::from_le_bytes([bytes[10], bytes[11]]),
        epoch: u64::from_le_bytes(bytes[12..20].try_into().expect("framed")),
        lsn: u64::from_le_bytes(bytes[20..28].try_into().expect("framed")),
    }
}

fn record_lsn(bytes: &[u8], at: usize) -> u64 {
    frame_unchecked(&bytes[at..]).lsn
}

/// Where damage at `from`, followed by a valid record at `to`, shows a page the kernel never
/// wrote back: a page-aligned `PAGE_BYTES` run of zeros within `[from, to)`, or zeros from
/// `from` up to the next page boundary (the old version of a page whose synced part ends
/// there). Bit rot does neither: a record never starts with a zero length, and one flipped bit
/// cannot zero a record's length and checksum.
fn lost_write(bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    let to = to.min(bytes.len());
    let boundary = (from + 1).next_multiple_of(PAGE_BYTES);
    if boundary <= to && all_zero(&bytes[from..boundary]) {
        return Some(from);
    }
    let mut page = from.next_multiple_of(PAGE_BYTES);
    while page + PAGE_BYTES <= to {
        if all_zero(&bytes[page..page + PAGE_BYTES]) {
            return Some(page);
        }
        page += PAGE_BYTES;
    }
    None
}

pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The first offset at or after `from` holding a checksummed record (of any kind) with an LSN
/// of at least `lsn_min`: proof that what comes before it is not the end of the log. LSNs in
/// the bytes can be at most one per `HEADER_BYTES` past `lsn_min`, which keeps random bytes
/// from ever reaching the checksum. Runs of zero bytes are skipped (a record's length has a
/// non-zero byte among its first four).
pub fn find_record(bytes: &[u8], from: usize, lsn_min: u64) -> Option<usize> {
    let lsn_max = lsn_min.saturating_add((bytes.len() / record::HEADER_BYTES) as u64 + 1);
    let mut at = from;
    while at + record::HEADER_BYTES <= bytes.len() {
        if bytes[at..at + 4] == [0; 4] {
            let next = bytes[at + 4..].iter().position(|&b| b != 0)?;
            at = (at + 4 + next).saturating_sub(3).max(at + 1);
            continue;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let lsn = u64::from_le_bytes(bytes[at + 20..at + 28].try_into().expect("8 bytes"));
        let plausible = (record::HEADER_BYTES..=limits::WAL_RECORD_BYTES_MAX).contains(&len)
            && at + len <= bytes.len()
            && (lsn_min..=lsn_max).contains(&lsn);
        if plausible {
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            if crc32c::crc32c(&bytes[at + 8..at + len]) == crc {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(stream: &str, first_lsn: u64, records: &[Record<&str>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(
            &SegmentHeader {
                version: VERSION,
                stream: stream.into(),
                first_lsn,
                created_ms: 1,
            },
            &mut out,
        );
        for (n, record) in records.iter().enumerate() {
            record::encode(record, 1, first_lsn + n as u64, &mut out);
        }
        out
    }

    fn beats(n: u64) -> Vec<Record<&'static str>> {
        (0..n)
            .map(|unix_ms| Record::WebhookDone {
                id: if unix_ms % 2 == 0 { "even" } else { "odd" },
                delivered: true,
            })
            .collect()
    }

    fn expect(first_lsn: u64) -> Expect<'static> {
        Expect {
            stream: "core-0",
            first_lsn,
            next_lsn: None,
        }
    }

    fn lsns(bytes: &[u8], first: u64, salvage: bool) -> (Vec<u64>, SegmentScan) {
        let mut seen = Vec::new();
        let scan = scan(bytes, expect(first), salvage, |_, header, _| {
            seen.push(header.lsn)
        });
        (seen, scan)
    }

    #[test]
    fn names_round_trip_and_others_are_refused() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for name in [
            "42.wal",
            "00000000000000000000.wal",
            "0000000000000000004x.wal",
            "x",
        ] {
            assert_eq!(parse_file_name(name), None, "{name}");
        }
        assert!(valid_stream_name("core-12") && valid_stream_name("webhooks"));
        assert!(!valid_stream_name("") && !valid_stream_name("../x") && !valid_stream_name("A"));
    }

    #[test]
    fn preallocated_zeros_are_a_clean_end() {
        let mut bytes = segment("core-0", 5, &beats(3));
        let end = bytes.len() as u64;
        bytes.resize(4096, 0);
        let (seen, scan) = lsns(&bytes, 5, false);
        assert_eq!(seen, [5, 6, 7]);
        assert_eq!(scan.end, End::Clean);
        assert_eq!(scan.valid_end, end);
        assert_eq!(scan.next_lsn, 8);
    }

    #[test]
    fn a_partial_last_record_is_torn_and_an_earlier_damage_is_corrupt() {
        let bytes = segment("core-0", 1, &beats(3));
        let mut torn = bytes[..bytes.len() - 3].to_vec();
        torn.resize(torn.len() + 100, 0);
        let (seen, scan) = lsns(&torn, 1, false);
        assert_eq!(seen, [1, 2]);
        assert!(matches!(scan.end, End::Torn { .. }), "{:?}", scan.end);
        // Damage in the second record: the third is valid, so it is corruption.
        let second = HEADER_BYTES + beats(1)[0].encoded_len();
        let mut damaged = bytes.clone();
        damaged[second + 30] ^= 1;
        let (seen, scan) = lsns(&damaged, 1, false);
        assert_eq!(seen, [1]);
        assert_eq!(
            scan.end,
            End::Corrupt {
                offset: second as u64,
                damage: Damage::Record(DecodeError::BadCrc)
            }
        );
        // Salvaging skips it and reports the missing LSN.
        let (seen, scan) = lsns(&damaged, 1, true);
        assert_eq!(seen, [1, 3]);
        assert_eq!(scan.end, End::Clean);
        assert_eq!(
            (scan.salvaged[0].lsn_first, scan.salvaged[0].lsn_end),
            (2, 3)
        );
    }

    #[test]
    fn lsns_must_follow_on_and_headers_must_match_their_file() {
        let bytes = segment("core-0", 1, &beats(2));
        let scan = scan(
            &bytes,
            Expect {
                stream: "core-0",
                first_lsn: 1,
                next_lsn: Some(3),
            },
            false,
            |_, _, _| {},
        );
        assert!(matches!(
            scan.end,
            End::Corrupt {
                offset: 0,
                damage: Damage::Lsn {
                    expected: 3,
                    found: 1
                }
            }
        ));
        let (_, scan) = lsns(&bytes, 2, false);
        assert!(matches!(
            scan.end,
            End::Corrupt {
                offset: 0,
                damage: Damage::Misnamed { .. }
            }
        ));
        let mut other = segment("core-1", 1, &beats(2));
        other.truncate(HEADER_BYTES);
        let (_, scan) = lsns(&other, 1, false);
        assert!(matches!(
            scan.end,
            End::Corrupt {
                offset: 0,
                damage: Damage::Misnamed { .. }
            }
        ));
    }

    #[test]
    fn a_header_never_written_with_nothing_after_it_is_torn() {
        let (seen, scan) = lsns(&vec![0u8; 4096], 1, false);
        assert!(seen.is_empty());
        assert_eq!(
            scan.end,
            End::Torn {
                offset: 0,
                damage: Damage::Header(HeaderError::Zero)
            }
        );
        let (_, scan) = lsns(&[], 1, false);
        assert!(matches!(
            scan.end,
            End::Torn {
                offset: 0,
                damage: Damage::Header(HeaderError::Short)
            }
        ));
    }

    // Out-of-order writeback before a power loss: a page in the middle never reached the disk
    // (zeros, or its old version: data up to the last sync, then zeros) but later ones did. That is a lost write (torn: truncated), while the same
    // records with one flipped bit are corruption.
    #[test]
    fn a_never_written_page_before_valid_records_is_a_lost_write() {
        let big: Vec<String> = (0..8).map(|n| format!("{n}{}", "x".repeat(1500))).collect();
        let records: Vec<Record<&str>> = big
            .iter()
            .map(|id| Record::WebhookDone {
                id: id.as_str(),
                delivered: true,
            })
            .collect();
        let bytes = segment("core-0", 1, &records);
        assert!(bytes.len() > 3 * PAGE_BYTES);
        let mut lost = bytes.clone();
        lost[PAGE_BYTES..2 * PAGE_BYTES].fill(0);
        let (seen, scan) = lsns(&lost, 1, false);
        let record_len = records[0].encoded_len();
        let damaged = (PAGE_BYTES - HEADER_BYTES) / record_len;
        assert_eq!(seen.len(), damaged);
        match &scan.end {
            End::Torn {
                offset,
                damage: Damage::LostWrite { zero_page, .. },
            } => {
                assert_eq!(*offset as usize, HEADER_BYTES + damaged * record_len);
                assert_eq!(*zero_page as usize, PAGE_BYTES);
            }
            other => panic!("{other:?}"),
        }
        let mut flipped = bytes.clone();
        flipped[PAGE_BYTES + 100] ^= 4;
        let (_, scan) = lsns(&flipped, 1, false);
        assert!(matches!(scan.end, End::Corrupt { .. }), "{:?}", scan.end);
        // The first page lost (header included), later ones written: torn at 0.
        let mut old_page = bytes.clone();
        let sync_point = HEADER_BYTES + record_len;
        old_page[sync_point..PAGE_BYTES].fill(0);
        let (seen, scan) = lsns(&old_page, 1, false);
        assert_eq!(seen, [1], "the records synced before the lost page");
        assert!(matches!(
            scan.end,
            End::Torn {
                damage: Damage::LostWrite { .. },
                ..
            }
        ));
        let mut headless = bytes;
        headless[..PAGE_BYTES].fill(0);
        let (seen, scan) = lsns(&headless, 1, false);
        assert!(seen.is_empty());
        assert!(matches!(
            scan.end,
            End::Torn {
                offset: 0,
                damage: Damage::LostWrite { .. }
            }
        ));
    }

    #[test]
    fn find_record_skips_zeros_and_noise() {
        let bytes = segment("core-0", 9, &beats(2));
        let second = HEADER_BYTES + beats(1)[0].encoded_len();
        let mut padded = vec![0u8; 1000];
        padded.extend_from_slice(&bytes[second..]);
        assert_eq!(find_record(&padded, 0, 10), Some(1000));
        assert_eq!(find_record(&padded, 0, 11), None);
        assert_eq!(find_record(&padded, 1001, 10), None);
    }

    /// The one header constructor gives what `decode_header` reads back, in this build's
    /// format, and `encoded` is `encode_header`'s bytes.
    #[test]
    fn the_shared_header_helper_round_trips() {
        let header = SegmentHeader::new("webhooks", 42, 1_700_000_000_000);
        assert_eq!(header.version, VERSION);
        let bytes = header.encoded();
        assert_eq!(bytes.len(), HEADER_BYTES);
        let mut direct = Vec::new();
        encode_header(&header, &mut direct);
        assert_eq!(bytes, direct);
        assert_eq!(decode_header(&bytes), Ok(header));
    }
}
