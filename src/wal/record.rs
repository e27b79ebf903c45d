//! The write-ahead log record codec, sans-IO: one `Record` to bytes and back, over byte slices.
//! It owns the record framing (length, CRC32C, kind, format, flags, epoch, LSN) and the payload
//! encoding of every kind. It must not do IO, read a clock, or trust what it decodes: every
//! length is checked against the bytes at hand and `WAL_RECORD_BYTES_MAX` before anything is
//! allocated, the checksum before the payload is parsed, and every string for UTF-8.
//!
//! Layout (little-endian), `HEADER_BYTES` = 28:
//!
//! ```text
//! len u32 | crc32c u32 | kind u8 | format u8 | flags u16 | epoch u64 | lsn u64 | payload
//! ```
//!
//! `len` is the whole record, header included; `crc32c` covers every byte after itself. A
//! `len` of 0 is not a record: it is preallocated space, the clean end of a segment. Payloads
//! use little-endian integers, strings as `u32 length + UTF-8`, options as a `u8` tag (0 or 1)
//! then the value. Encoding asserts (our own records must be right); decoding validates and
//! returns a `DecodeError` (bytes from disk are never trusted).
//!
//! `Record<S>` is generic over its string type so the hot paths copy nothing: the core loop
//! appends a `Record<&str>` borrowed from its own state, and replay decodes a `Record<&str>`
//! borrowed from the segment bytes (`decode_ref`); `decode` gives an owned `Record`.

use crate::limits;

/// Bytes of the fixed record header.
pub const HEADER_BYTES: usize = 28;
/// The payload format version every kind is written in.
pub const FORMAT: u8 = 1;
/// Header flag: a reader that does not know the kind (or its format) may skip the record.
pub const FLAG_SKIPPABLE: u16 = 1;
const FLAGS_KNOWN: u16 = FLAG_SKIPPABLE;

/// `Publish.flags`: the event sets the cache channel's slot.
pub const PUBLISH_CACHE: u8 = 1;
/// `Publish.flags`: a client event (sent by a connection, not the REST API).
pub const PUBLISH_CLIENT: u8 = 2;
/// `Publish.flags`: restores history and sequence state without delivering (a snapshot or a
/// carry-forward of an old segment's state).
pub const PUBLISH_HISTORY_ONLY: u8 = 4;
/// `Publish.flags`: sets the cache channel's slot only, neither its history nor its sequence (a
/// snapshot of a cached event that has left the history window).
pub const PUBLISH_CACHE_ONLY: u8 = 8;
const PUBLISH_FLAGS_KNOWN: u8 =
    PUBLISH_CACHE | PUBLISH_CLIENT | PUBLISH_HISTORY_ONLY | PUBLISH_CACHE_ONLY;

const _: () = assert!(HEADER_BYTES == 4 + 4 + 1 + 1 + 2 + 8 + 8);
const _: () = assert!(HEADER_BYTES < limits::WAL_RECORD_BYTES_MAX);

/// The record kinds (the `kind` byte). Numbers are on disk: never reuse or renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    EpochStart = 1,
    Publish = 2,
    PresenceJoin = 3,
    PresenceLeave = 4,
    ChannelState = 5,
    WebhookEnqueued = 6,
    WebhookDone = 7,
    Heartbeat = 8,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::EpochStart,
        Kind::Publish,
        Kind::PresenceJoin,
        Kind::PresenceLeave,
        Kind::ChannelState,
        Kind::WebhookEnqueued,
        Kind::WebhookDone,
        Kind::Heartbeat,
    ];

    pub fn from_u8(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// The name used by `ringcast wal inspect` and `dump`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::EpochStart => "epoch_start",
            Kind::Publish => "publish",
            Kind::PresenceJoin => "presence_join",
            Kind::PresenceLeave => "presence_leave",
            Kind::ChannelState => "channel_state",
            Kind::WebhookEnqueued => "webhook_enqueued",
            Kind::WebhookDone => "webhook_done",
            Kind::Heartbeat => "heartbeat",
        }
    }

    /// Whether records of this kind are written with `FLAG_SKIPPABLE`: losing them on an older
    /// reader changes no state (only heartbeats, which measure lag).
    pub fn skippable(self) -> bool {
        matches!(self, Kind::Heartbeat)
    }
}

/// One record's payload. `S` is the string type: `Box<str>` (owned, the default), `&str`
/// (borrowed from a buffer), or anything else that is `AsRef<str>` (for encoding) and
/// `From<&str>` (for decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<S = Box<str>> {
    /// The first record a node writes in a new epoch (on promotion).
    EpochStart {
        epoch: u64,
        node_id: S,
        /// The stream's last LSN of the previous epoch.
        previous_end_lsn: u64,
    },
    /// One event sequenced on one channel.
    Publish {
        app_id: S,
        channel: S,
        channel_epoch: u64,
        seq: u64,
        event: S,
        data: S,
        /// The socket id (high, low) the event is not delivered to.
        exclude: Option<(u64, u64)>,
        user_id: Option<S>,
        /// Wall-clock Unix milliseconds when it was published.
        published_ms: u64,
        /// `PUBLISH_CACHE | PUBLISH_CLIENT | PUBLISH_HISTORY_ONLY`.
        flags: u8,
    },
    PresenceJoin {
        app_id: S,
        channel: S,
        user_id: S,
        /// The member's `user_info` as raw JSON text.
        user_info: S,
    },
    PresenceLeave {
        app_id: S,
        channel: S,
        user_id: S,
    },
    /// Carries a channel's sequence position forward without an event.
    ChannelState {
        app_id: S,
        channel: S,
        channel_epoch: u64,
        seq: u64,
    },
    /// A sealed webhook batch (exactly what `webhook::Batch` holds; the app by its id).
    WebhookEnqueued {
        id: S,
        app_id: S,
        url: S,
        app_key: S,
        signature: S,
        headers: Vec<(S, S)>,
        body: S,
        events: u32,
        time_ms: u64,
    },
    /// The batch `id` is settled: delivered, or given up on (`delivered: false`).
    WebhookDone {
        id: S,
        delivered: bool,
    },
    Heartbeat {
        unix_ms: u64,
    },
}

/// A decoded, checksum-verified record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole record's length, header included.
    pub len: u32,
    pub crc: u32,
    pub kind: u8,
    pub format: u8,
    pub flags: u16,
    pub epoch: u64,
    pub lsn: u64,
}

impl Header {
    pub fn skippable(&self) -> bool {
        self.flags & FLAG_SKIPPABLE != 0
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the length says: a truncated record (or more to read).
    #[error("incomplete record")]
    Incomplete,
    /// A zero length: preallocated space, the clean end of a segment.
    #[error("zero length (preallocated space)")]
    Zero,
    /// A length below the header size or above `WAL_RECORD_BYTES_MAX`.
    #[error("bad record length {0}")]
    BadLength(u32),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadCrc,
    /// The checksum matches but the payload does not parse (or has bytes left over).
    #[error("bad payload")]
    BadPayload,
    /// A kind this build does not know; `skippable` says whether the writer allowed skipping.
    #[error("unknown record kind {kind} (skippable: {skippable})")]
    UnknownKind { kind: u8, skippable: bool },
    /// A known kind in a payload format this build does not know.
    #[error("unknown format {format} of record kind {kind} (skippable: {skippable})")]
    UnknownFormat {
        kind: u8,
        format: u8,
        skippable: bool,
    },
}

impl<S: AsRef<str>> Record<S> {
    pub fn kind(&self) -> Kind {
        match self {
            Record::EpochStart { .. } => Kind::EpochStart,
            Record::Publish { .. } => Kind::Publish,
            Record::PresenceJoin { .. } => Kind::PresenceJoin,
            Record::PresenceLeave { .. } => Kind::PresenceLeave,
            Record::ChannelState { .. } => Kind::ChannelState,
            Record::WebhookEnqueued { .. } => Kind::WebhookEnqueued,
            Record::WebhookDone { .. } => Kind::WebhookDone,
            Record::Heartbeat { .. } => Kind::Heartbeat,
        }
    }

    /// The encoded size, header included (what `encode` appends).
    pub fn encoded_len(&self) -> usize {
        let text = |s: &S| 4 + s.as_ref().len();
        let payload = match self {
            Record::EpochStart { node_id, .. } => 8 + text(node_id) + 8,
            Record::Publish {
                app_id,
                channel,
                event,
                data,
                exclude,
                user_id,
                ..
            } => {
                text(app_id)
                    + text(channel)
                    + 8
                    + 8
                    + text(event)
                    + text(data)
                    + 1
                    + exclude.map_or(0, |_| 16)
                    + 1
                    + user_id.as_ref().map_or(0, text)
                    + 8
                    + 1
            }
            Record::PresenceJoin {
                app_id,
                channel,
                user_id,
                user_info,
            } => text(app_id) + text(channel) + text(user_id) + text(user_info),
            Record::PresenceLeave {
                app_id,
                channel,
                user_id,
            } => text(app_id) + text(channel) + text(user_id),
            Record::ChannelState {
                app_id, channel, ..
            } => text(app_id) + text(channel) + 8 + 8,
            Record::WebhookEnqueued {
                id,
                app_id,
                url,
                app_key,
                signature,
                headers,
                body,
                ..
            } => {
                text(id)
                    + text(app_id)
                    + text(url)
                    + text(app_key)
                    + text(signature)
                    + 4
                    + headers
                        .iter()
                        .map(|(name, value)| text(name) + text(value))
                        .sum::<usize>()
                    + text(body)
                    + 4
                    + 8
            }
            Record::WebhookDone { id, .. } => text(id) + 1,
            Record::Heartbeat { .. } => 8,
        };
        HEADER_BYTES + payload
    }

    /// Borrows every string (to encode an owned record without copying, or compare).
    pub fn borrowed(&self) -> Record<&str> {
        self.map(|text| text)
    }

    /// Copies every string into an owned record.
    pub fn owned(&self) -> Record {
        self.map(Box::from)
    }

    /// The same record with `f` applied to each of its strings.
    fn map<'s, T>(&'s self, mut f: impl FnMut(&'s str) -> T) -> Record<T> {
        let mut s = |text: &'s S| f(text.as_ref());
        match self {
            Record::EpochStart {
                epoch,
                node_id,
                previous_end_lsn,
            } => Record::EpochStart {
                epoch: *epoch,
                node_id: s(node_id),
                previous_end_lsn: *previous_end_lsn,
            },
            Record::Publish {
                app_id,
                channel,
                channel_epoch,
                seq,
                event,
                data,
                exclude,
                user_id,
                published_ms,
                flags,
            } => Record::Publish {
                app_id: s(app_id),
                channel: s(channel),
                channel_epoch: *channel_epoch,
                seq: *seq,
                event: s(event),
                data: s(data),
                exclude: *exclude,
                user_id: user_id.as_ref().map(&mut s),
                published_ms: *published_ms,
                flags: *flags,
            },
            Record::PresenceJoin {
                app_id,
                channel,
                user_id,
                user_info,
            } => Record::PresenceJoin {
                app_id: s(app_id),
                channel: s(channel),
                user_id: s(user_id),
                user_info: s(user_info),
            },
            Record::PresenceLeave {
                app_id,
                channel,
                user_id,
            } => Record::PresenceLeave {
                app_id: s(app_id),
                channel: s(channel),
                user_id: s(user_id),
            },
            Record::ChannelState {
                app_id,
                channel,
                channel_epoch,
                seq,
            } => Record::ChannelState {
                app_id: s(app_id),
                channel: s(channel),
                channel_epoch: *channel_epoch,
                seq: *seq,
            },
            Record::WebhookEnqueued {
                id,
                app_id,
                url,
                app_key,
                signature,
                headers,
                body,
                events,
                time_ms,
            } => Record::WebhookEnqueued {
                id: s(id),
                app_id: s(app_id),
                url: s(url),
                app_key: s(app_key),
                signature: s(signature),
                headers: headers
                    .iter()
                    .map(|(name, value)| (s(name), s(value)))
                    .collect(),
                body: s(body),
                events: *events,
                time_ms: *time_ms,
            },
            Record::WebhookDone { id, delivered } => Record::WebhookDone {
                id: s(id),
                delivered: *delivered,
            },
            Record::Heartbeat { unix_ms } => Record::Heartbeat { unix_ms: *unix_ms },
        }
    }
}

/// Appends `record` as one framed record stamped with `epoch` and `lsn`; returns its length.
///
/// # Panics
///
/// When `lsn` is 0, the record is larger than `WAL_RECORD_BYTES_MAX` (callers check
/// `encoded_len` first), a Publish carries unknown flags, or a webhook batch more than
/// `WAL_WEBHOOK_HEADERS_MAX` headers: all are bugs in the caller, and a record that could not
/// be read back must never reach the disk.
pub fn encode<S: AsRef<str>>(record: &Record<S>, epoch: u64, lsn: u64, out: &mut Vec<u8>) -> usize {
    assert!(lsn >= 1, "LSNs start at 1");
    let len = record.encoded_len();
    assert!(len <= limits::WAL_RECORD_BYTES_MAX, "record of {len} bytes");
    let kind = record.kind();
    let flags = if kind.skippable() { FLAG_SKIPPABLE } else { 0 };
    let start = out.len();
    out.reserve(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.push(FORMAT);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    encode_payload(record, &mut Writer(out));
    assert_eq!(out.len() - start, len, "encoded_len disagrees with encode");
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // The way back: what goes to disk must read back as the same record.
    debug_assert!(
        decode_ref(&out[start..]).is_ok_and(|(header, decoded, used)| {
            used == len && header.lsn == lsn && decoded == record.borrowed()
        }),
        "a record that does not decode"
    );
    len
}

/// Appends the payload of `record`, the part after its header (the mirror of `payload_of`).
fn encode_payload<S: AsRef<str>>(record: &Record<S>, w: &mut Writer<'_>) {
    match record {
        Record::EpochStart {
            epoch,
            node_id,
            previous_end_lsn,
        } => {
            w.u64(*epoch);
            w.str(node_id);
            w.u64(*previous_end_lsn);
        }
        Record::Publish {
            app_id,
            channel,
            channel_epoch,
            seq,
            event,
            data,
            exclude,
            user_id,
            published_ms,
            flags,
        } => {
            assert_eq!(flags & !PUBLISH_FLAGS_KNOWN, 0, "publish flags {flags:#x}");
            w.str(app_id);
            w.str(channel);
            w.u64(*channel_epoch);
            w.u64(*seq);
            w.str(event);
            w.str(data);
            w.option(*exclude, |w, (high, low)| {
                w.u64(high);
                w.u64(low);
            });
            w.option(user_id.as_ref(), |w, user_id| w.str(user_id));
            w.u64(*published_ms);
            w.u8(*flags);
        }
        Record::PresenceJoin {
            app_id,
            channel,
            user_id,
            user_info,
        } => {
            w.str(app_id);
            w.str(channel);
            w.str(user_id);
            w.str(user_info);
        }
        Record::PresenceLeave {
            app_id,
            channel,
            user_id,
        } => {
            w.str(app_id);
            w.str(channel);
            w.str(user_id);
        }
        Record::ChannelState {
            app_id,
            channel,
            channel_epoch,
            seq,
        } => {
            w.str(app_id);
            w.str(channel);
            w.u64(*channel_epoch);
            w.u64(*seq);
        }
        Record::WebhookEnqueued {
            id,
            app_id,
            url,
            app_key,
            signature,
            headers,
            body,
            events,
            time_ms,
        } => {
            assert!(headers.len() <= limits::WAL_WEBHOOK_HEADERS_MAX);
            w.str(id);
            w.str(app_id);
            w.str(url);
            w.str(app_key);
            w.str(signature);
            w.pairs(headers);
            w.str(body);
            w.u32(*events);
            w.u64(*time_ms);
        }
        Record::WebhookDone { id, delivered } => {
            w.str(id);
            w.u8(u8::from(*delivered));
        }
        Record::Heartbeat { unix_ms } => w.u64(*unix_ms),
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn str(&mut self, value: &impl AsRef<str>) {
        let value = value.as_ref();
        // Fits: the whole record is at most WAL_RECORD_BYTES_MAX, asserted by the caller.
        self.u32(value.len() as u32);
        self.0.extend_from_slice(value.as_bytes());
    }
    /// An option: a `u8` tag (0 or 1), then the value when there is one.
    fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
        }
    }
    /// String pairs: a `u32` count, then each pair's two strings.
    fn pairs<S: AsRef<str>>(&mut self, pairs: &[(S, S)]) {
        // Fits: the caller asserted the count against WAL_WEBHOOK_HEADERS_MAX.
        self.u32(pairs.len() as u32);
        for (name, value) in pairs {
            self.str(name);
            self.str(value);
        }
    }
}

/// Validates the framing of the record at the start of `bytes`: length, checksum, known kind,
/// format and flags. Returns the header and the payload bytes; nothing is allocated.
pub fn frame(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let Some(len_bytes) = bytes.first_chunk::<4>() else {
        return Err(if bytes.iter().all(|&b| b == 0) {
            DecodeError::Zero
        } else {
            DecodeError::Incomplete
        });
    };
    let len = u32::from_le_bytes(*len_bytes);
    if len == 0 {
        return Err(DecodeError::Zero);
    }
    if (len as usize) < HEADER_BYTES || len as usize > limits::WAL_RECORD_BYTES_MAX {
        return Err(DecodeError::BadLength(len));
    }
    let Some(record) = bytes.get(..len as usize) else {
        return Err(DecodeError::Incomplete);
    };
    let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    if crc32c::crc32c(&record[8..]) != crc {
        return Err(DecodeError::BadCrc);
    }
    let header = Header {
        len,
        crc,
        kind: record[8],
        format: record[9],
        flags: u16::from_le_bytes([record[10], record[11]]),
        epoch: u64::from_le_bytes(record[12..20].try_into().expect("8 bytes")),
        lsn: u64::from_le_bytes(record[20..28].try_into().expect("8 bytes")),
    };
    let skippable = header.skippable();
    if Kind::from_u8(header.kind).is_none() {
        return Err(DecodeError::UnknownKind {
            kind: header.kind,
            skippable,
        });
    }
    if header.format != FORMAT {
        return Err(DecodeError::UnknownFormat {
            kind: header.kind,
            format: header.format,
            skippable,
        });
    }
    if header.flags & !FLAGS_KNOWN != 0 || header.lsn == 0 {
        return Err(DecodeError::BadPayload);
    }
    Ok((header, &record[HEADER_BYTES..]))
}

/// Decodes the record at the start of `bytes` into an owned `Record`; returns it with its
/// header and the bytes it used.
pub fn decode(bytes: &[u8]) -> Result<(Header, Record, usize), DecodeError> {
    let (header, record, used) = decode_ref(bytes)?;
    Ok((header, record.owned(), used))
}

/// Decodes the record at the start of `bytes`, borrowing every string from `bytes` (replay
/// copies only what its state keeps).
pub fn decode_ref(bytes: &[u8]) -> Result<(Header, Record<&str>, usize), DecodeError> {
    let (header, payload) = frame(bytes)?;
    let kind = Kind::from_u8(header.kind).expect("checked by frame");
    let record = payload_of(kind, payload)?;
    Ok((header, record, header.len as usize))
}

fn payload_of(kind: Kind, payload: &[u8]) -> Result<Record<&str>, DecodeError> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let record = match kind {
        Kind::EpochStart => Record::EpochStart {
            epoch: r.u64()?,
            node_id: r.str()?,
            previous_end_lsn: r.u64()?,
        },
        Kind::Publish => {
            let app_id = r.str()?;
            let channel = r.str()?;
            let channel_epoch = r.u64()?;
            let seq = r.u64()?;
            let event = r.str()?;
            let data = r.str()?;
            let exclude = match r.tag()? {
                false => None,
                true => Some((r.u64()?, r.u64()?)),
            };
            let user_id = match r.tag()? {
                false => None,
                true => Some(r.str()?),
            };
            let published_ms = r.u64()?;
            let flags = r.u8()?;
            if flags & !PUBLISH_FLAGS_KNOWN != 0 {
                return Err(DecodeError::BadPayload);
            }
            Record::Publish {
                app_id,
                channel,
                channel_epoch,
                seq,
                event,
                data,
                exclude,
                user_id,
                published_ms,
                flags,
            }
        }
        Kind::PresenceJoin => Record::PresenceJoin {
            app_id: r.str()?,
            channel: r.str()?,
            user_id: r.str()?,
            user_info: r.str()?,
        },
        Kind::PresenceLeave => Record::PresenceLeave {
            app_id: r.str()?,
            channel: r.str()?,
            user_id: r.str()?,
        },
        Kind::ChannelState => Record::ChannelState {
            app_id: r.str()?,
            channel: r.str()?,
            channel_epoch: r.u64()?,
            seq: r.u64()?,
        },
        Kind::WebhookEnqueued => {
            let id = r.str()?;
            let app_id = r.str()?;
            let url = r.str()?;
            let app_key = r.str()?;
            let signature = r.str()?;
            let count = r.u32()? as usize;
            // Each header takes at least 8 bytes: a count the bytes cannot hold is damage.
            if count > limits::WAL_WEBHOOK_HEADERS_MAX || count > r.remaining() / 8 {
                return Err(DecodeError::BadPayload);
            }
            let mut headers = Vec::with_capacity(count);
            for _ in 0..count {
                headers.push((r.str()?, r.str()?));
            }
            Record::WebhookEnqueued {
                id,
                app_id,
                url,
                app_key,
                signature,
                headers,
                body: r.str()?,
                events: r.u32()?,
                time_ms: r.u64()?,
            }
        }
        Kind::WebhookDone => Record::WebhookDone {
            id: r.str()?,
            delivered: r.tag()?,
        },
        Kind::Heartbeat => Record::Heartbeat { unix_ms: r.u64()? },
    };
    if r.remaining() != 0 {
        return Err(DecodeError::BadPayload);
    }
    Ok(record)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::BadPayload)?;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError::BadPayload)?;
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// An option tag: 0 or 1, anything else is damage.
    fn tag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadPayload),
        }
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadPayload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Record<&'static str> {
        Record::Publish {
            app_id: "123456",
            channel: "cache-prices",
            channel_epoch: 7,
            seq: 42,
            event: "tick",
            data: r#"{"price":1}"#,
            exclude: Some((12, 34)),
            user_id: None,
            published_ms: 1_700_000_000_000,
            flags: PUBLISH_CACHE,
        }
    }

    #[test]
    fn the_header_layout_is_as_documented() {
        let mut out = Vec::new();
        let len = encode(&publish(), 3, 9, &mut out);
        assert_eq!(len, out.len());
        assert_eq!(
            u32::from_le_bytes(out[0..4].try_into().unwrap()) as usize,
            len
        );
        assert_eq!(
            u32::from_le_bytes(out[4..8].try_into().unwrap()),
            crc32c::crc32c(&out[8..])
        );
        assert_eq!(out[8], Kind::Publish as u8);
        assert_eq!(out[9], FORMAT);
        assert_eq!(u16::from_le_bytes([out[10], out[11]]), 0);
        assert_eq!(u64::from_le_bytes(out[12..20].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(out[20..28].try_into().unwrap()), 9);
        // The payload starts with the app id as u32 length + bytes.
        assert_eq!(&out[28..32], &6u32.to_le_bytes());
        assert_eq!(&out[32..38], b"123456");
        let (header, record, used) = decode(&out).unwrap();
        assert_eq!((header.epoch, header.lsn, used), (3, 9, len));
        assert_eq!(record.borrowed(), publish());
    }

    #[test]
    fn heartbeats_are_skippable_and_unknown_kinds_are_reported() {
        let mut out = Vec::new();
        encode(&Record::<&str>::Heartbeat { unix_ms: 5 }, 1, 1, &mut out);
        let (header, _, _) = decode_ref(&out).unwrap();
        assert!(header.skippable());
        // A kind from a newer build, written skippable: re-sign it with kind 200.
        out[8] = 200;
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_ref(&out).unwrap_err(),
            DecodeError::UnknownKind {
                kind: 200,
                skippable: true
            }
        );
        out[8] = Kind::Heartbeat as u8;
        out[9] = 2;
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_ref(&out).unwrap_err(),
            DecodeError::UnknownFormat { format: 2, .. }
        ));
    }

    #[test]
    fn zero_short_and_oversized_lengths_are_told_apart() {
        assert_eq!(frame(&[]).unwrap_err(), DecodeError::Zero);
        assert_eq!(frame(&[0, 0]).unwrap_err(), DecodeError::Zero);
        assert_eq!(frame(&[0; 64]).unwrap_err(), DecodeError::Zero);
        assert_eq!(frame(&[1, 0]).unwrap_err(), DecodeError::Incomplete);
        assert_eq!(
            frame(&5u32.to_le_bytes()).unwrap_err(),
            DecodeError::BadLength(5)
        );
        let huge = (limits::WAL_RECORD_BYTES_MAX as u32 + 1).to_le_bytes();
        assert!(matches!(
            frame(&huge).unwrap_err(),
            DecodeError::BadLength(_)
        ));
        let mut out = Vec::new();
        encode(&publish(), 1, 1, &mut out);
        assert_eq!(
            frame(&out[..out.len() - 1]).unwrap_err(),
            DecodeError::Incomplete
        );
    }

    #[test]
    fn a_checksummed_payload_that_does_not_parse_is_bad_payload() {
        let mut out = Vec::new();
        encode(
            &Record::<&str>::WebhookDone {
                id: "x",
                delivered: true,
            },
            1,
            1,
            &mut out,
        );
        // The option tag of `delivered` becomes 2.
        let last = out.len() - 1;
        out[last] = 2;
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_ref(&out).unwrap_err(), DecodeError::BadPayload);
        // Invalid UTF-8 in the id.
        out[last] = 1;
        out[HEADER_BYTES + 4] = 0xff;
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_ref(&out).unwrap_err(), DecodeError::BadPayload);
    }
}
