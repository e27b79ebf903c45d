//! The replication wire protocol between a primary and its hot standby, sans-IO: the messages,
//! their encoding, an incremental decoder for bytes as they arrive from a socket, and the check
//! of a `Records` batch. It must not do IO, read a clock, spawn threads or hold session state:
//! the replication threads own the sockets and the state machines, and `handshake.rs` holds the
//! decisions (checks, stream plans, MACs). Nothing from the peer is trusted: every length, count
//! and string is checked against a named limit in `limits.rs` before anything is allocated for
//! it, and bad bytes are a `ProtoError`, never a panic. Encoding asserts instead (our own
//! messages must be right).
//!
//! # Framing
//!
//! ```text
//! len u32 | type u8 | payload        len counts the type byte and the payload, not itself
//! ```
//!
//! Integers are little-endian; strings are `u16 length | UTF-8`; lists are `u16 count | items`;
//! options are a `u8` tag (0 or 1) then the value; enums are one `u8`. A frame of any type but
//! `Records` is at most `REPL_CONTROL_FRAME_BYTES_MAX` long; a `Records` frame at most
//! `REPL_FRAME_BYTES_MAX`, so one WAL record of `WAL_RECORD_BYTES_MAX` always fits. A longer (or
//! zero) length, or an unknown type, fails as soon as the first five bytes are in, before the
//! frame is buffered.
//!
//! # Messages
//!
//! ```text
//! type  message    sent by            payload, in order
//! 1     Hello      standby            cluster str, node_id str, version str, wal_format_min u8,
//!                                     wal_format_max u8, epoch u64, role u8,
//!                                     streams [name str, last_lsn u64, last_epoch u64],
//!                                     nonce [16]
//! 2     Welcome    primary            node_id str, epoch u64, wal_format u8,
//!                                     streams [name str, mode u8, truncate_after opt u64,
//!                                     from_lsn u64], nonce [16], mac [32]
//! 3     Auth       standby            mac [32]
//! 4     Refuse     either             code u8, reason str; then the sender closes
//! 5     Records    primary            stream u16 (an index into the Welcome's streams), then
//!                                     1..n whole WAL records with contiguous LSNs (the rest)
//! 6     Ack        standby            stream u16, received_lsn u64, durable_lsn u64 (at most
//!                                     received_lsn)
//! 7     Heartbeat  both, every 100ms  epoch u64, seq u64, written [u64] (the sender's written
//!                                     LSN per stream, in Welcome order; empty from a standby)
//! 8     Promoted   either             epoch u64
//! 9     Handover   primary            epoch u64, written [u64] (planned switchover: the frozen
//!                                     primary of `epoch` hands it over; every stream's end,
//!                                     in Welcome order, all sent before this message)
//! ```
//!
//! Type numbers, enum values (`Role`, `RefuseCode`, `StreamMode`) and field order are the wire
//! format: never renumber or reorder one; a new message gets a new type.
//!
//! # Handshake
//!
//! ```text
//! standby                                   primary
//!   --- Hello {epoch, streams, Ns} ------->   check_hello: cluster, role, epochs, WAL
//!                                             formats, stream names
//!   <-------------------- Refuse {code} ---   on failure, then close
//!   <-- Welcome {epoch, plans, Np, mac} ---   plan_streams; mac = welcome_mac(Ns, Np, ..)
//!   check_welcome: mac, epoch, format,
//!   plans (on failure Refuse, close)
//!   --- Auth {mac} ----------------------->   verify_auth_mac (on failure Refuse
//!   apply each plan: truncate or wipe         BadSecret, close)
//!   <---------------- Records, Heartbeat ---  from each plan's from_lsn
//!   --- Ack, Heartbeat ------------------->
//! ```
//!
//! What each side checks, and why:
//! * The primary answers a `Hello` only if the cluster names match, it is the primary, the
//!   standby's epoch (and every stream's last epoch) is not above its own (`HigherEpoch`: the
//!   primary is stale and steps down), the format ranges overlap, and the stream names are the
//!   same set (`StreamsMismatch`: a different core count). It sends no `Records` before a valid
//!   `Auth`, and never a record above what its own WAL has written.
//! * The standby acts on a `Welcome` (truncating or wiping a stream) only after its MAC proves
//!   the primary knows the secret and saw this connection's nonce, its epoch is at least the
//!   standby's, its format is one the standby reads, and each plan fits what the standby
//!   announced. It checks every `Records` batch with `split_records` (whole records,
//!   checksums, contiguous LSNs from what it holds) before writing it, and never acknowledges as
//!   durable what it has not synced.
//! * Either side that sees a higher epoch than its own in a `Heartbeat` or a `Promoted` and
//!   believes it is the primary steps down at once. `Promoted` is sent by a standby being promoted
//!   (its new epoch persisted, before its `EpochStart`s) to the primary it is still connected
//!   to (a forced promotion), on that authenticated session, so that primary stops acting as
//!   the primary now rather than at the new primary's first poke; a step-down
//!   needs no message of its own (the node closes the connection, after a `Refuse HigherEpoch`
//!   during a handshake).
//!
//! * `Handover` (planned switchover) comes from a primary that froze its publishes and saw
//!   the standby reach lag 0: the standby takes it only in the sender's epoch and only when
//!   it holds exactly the `written` positions (`check_handover`), reads nothing after it, and
//!   becomes the primary of the next epoch (through the witness when one is configured), then
//!   answers `Promoted`. The old primary acknowledges nothing from the freeze on unless the
//!   standby has it, and steps down on `Promoted`.
//!
//! The MACs authenticate the peer (the secret never crosses the wire; fresh nonces on both
//! sides stop the replay of an old handshake; each side's MAC has its own label, so one cannot
//! be reflected as the other). They do not protect the stream: later messages carry no MAC, so
//! replication must run on a trusted network or inside a tunnel until ringcast speaks TLS.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use crate::limits;
use crate::wal::record::{self, DecodeError, Header};

/// Bytes of the length prefix of every frame.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 16;
/// Bytes of an HMAC-SHA256.
pub const MAC_BYTES: usize = 32;
/// Bytes before the records in an encoded `Records` message: length, type and stream.
pub const RECORDS_PREFIX_BYTES: usize = LENGTH_BYTES + 1 + 2;

/// A handshake nonce: 16 fresh random bytes per connection, chosen by the caller.
pub type Nonce = [u8; NONCE_BYTES];
/// An HMAC-SHA256 tag.
pub type Mac = [u8; MAC_BYTES];

/// Encoded size of the largest `Hello`: every string and list at its limit.
const HELLO_BYTES_MAX: usize = 1
    + 3 * (2 + limits::REPL_NAME_BYTES_MAX)
    + 2
    + 8
    + 1
    + 2
    + limits::REPL_STREAMS_MAX * (2 + limits::WAL_STREAM_NAME_BYTES_MAX + 8 + 8)
    + NONCE_BYTES;
/// Encoded size of the largest `Welcome`.
const WELCOME_BYTES_MAX: usize = 1
    + (2 + limits::REPL_NAME_BYTES_MAX)
    + 8
    + 1
    + 2
    + limits::REPL_STREAMS_MAX * (2 + limits::WAL_STREAM_NAME_BYTES_MAX + 1 + 9 + 8)
    + NONCE_BYTES
    + MAC_BYTES;
const _: () = assert!(HELLO_BYTES_MAX <= limits::REPL_CONTROL_FRAME_BYTES_MAX);
const _: () = assert!(WELCOME_BYTES_MAX <= limits::REPL_CONTROL_FRAME_BYTES_MAX);
const _: () =
    assert!(1 + 1 + 2 + limits::REPL_REASON_BYTES_MAX <= limits::REPL_CONTROL_FRAME_BYTES_MAX);
const _: () =
    assert!(1 + 16 + 2 + 8 * limits::REPL_STREAMS_MAX <= limits::REPL_CONTROL_FRAME_BYTES_MAX);
const _: () = assert!(3 + limits::REPL_BATCH_BYTES_MAX <= limits::REPL_FRAME_BYTES_MAX);
const _: () = assert!(3 + limits::WAL_RECORD_BYTES_MAX <= limits::REPL_FRAME_BYTES_MAX);

/// The message types (the type byte). Numbers are on the wire: never reuse or renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Hello = 1,
    Welcome = 2,
    Auth = 3,
    Refuse = 4,
    Records = 5,
    Ack = 6,
    Heartbeat = 7,
    Promoted = 8,
    Handover = 9,
}

impl MessageType {
    pub const ALL: [MessageType; 9] = [
        MessageType::Hello,
        MessageType::Welcome,
        MessageType::Auth,
        MessageType::Refuse,
        MessageType::Records,
        MessageType::Ack,
        MessageType::Heartbeat,
        MessageType::Promoted,
        MessageType::Handover,
    ];

    pub fn from_u8(byte: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Hello => "hello",
            MessageType::Welcome => "welcome",
            MessageType::Auth => "auth",
            MessageType::Refuse => "refuse",
            MessageType::Records => "records",
            MessageType::Ack => "ack",
            MessageType::Heartbeat => "heartbeat",
            MessageType::Promoted => "promoted",
            MessageType::Handover => "handover",
        }
    }

    /// The shortest and longest frame (type byte and payload) of this type.
    fn frame_len_range(self) -> (usize, usize) {
        match self {
            MessageType::Records => (1 + 2 + 1, limits::REPL_FRAME_BYTES_MAX),
            MessageType::Auth => (1 + MAC_BYTES, 1 + MAC_BYTES),
            MessageType::Ack => (1 + 2 + 8 + 8, 1 + 2 + 8 + 8),
            MessageType::Promoted => (1 + 8, 1 + 8),
            _ => (2, limits::REPL_CONTROL_FRAME_BYTES_MAX),
        }
    }
}

/// What a node believes it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Primary = 1,
    Standby = 2,
}

impl Role {
    pub fn from_u8(byte: u8) -> Option<Role> {
        [Role::Primary, Role::Standby]
            .into_iter()
            .find(|r| *r as u8 == byte)
    }
}

/// Why a node refuses its peer (then closes the connection). Numbers are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum RefuseCode {
    /// A MAC did not verify: the peer does not know the shared secret (or answered another
    /// connection's nonce).
    #[error("bad secret")]
    BadSecret = 1,
    /// The peer belongs to another cluster.
    #[error("cluster mismatch")]
    ClusterMismatch = 2,
    /// No WAL format both nodes read and write.
    #[error("WAL format mismatch")]
    FormatMismatch = 3,
    /// The stream sets differ (a different core count), or a plan does not fit the streams the
    /// standby announced.
    #[error("streams mismatch")]
    StreamsMismatch = 4,
    /// The dialed node is not the primary.
    #[error("not the primary")]
    NotPrimary = 5,
    /// The standby holds an epoch above the primary's: the primary is stale and steps down,
    /// whether it sent this refusal (from `check_hello`) or received it (from `check_welcome`).
    #[error("higher epoch")]
    HigherEpoch = 6,
    /// The primary already serves a standby.
    #[error("busy")]
    Busy = 7,
    /// Both nodes believe they are the primary of the same epoch, which a correct run never
    /// produces: neither side's history can be trusted over the other's, so an operator decides.
    #[error("both nodes are primary in the same epoch")]
    RoleConflict = 8,
}

impl RefuseCode {
    pub const ALL: [RefuseCode; 8] = [
        RefuseCode::BadSecret,
        RefuseCode::ClusterMismatch,
        RefuseCode::FormatMismatch,
        RefuseCode::StreamsMismatch,
        RefuseCode::NotPrimary,
        RefuseCode::HigherEpoch,
        RefuseCode::Busy,
        RefuseCode::RoleConflict,
    ];

    pub fn from_u8(byte: u8) -> Option<RefuseCode> {
        RefuseCode::ALL.into_iter().find(|c| *c as u8 == byte)
    }
}

/// How a standby's stream joins the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamMode {
    /// Keep the records up to `from_lsn - 1` (after truncating after `truncate_after`, if set);
    /// records flow from `from_lsn`.
    Partial = 1,
    /// Wipe the stream; records flow from `from_lsn` (the primary's first retained record).
    Full = 2,
}

impl StreamMode {
    pub fn from_u8(byte: u8) -> Option<StreamMode> {
        [StreamMode::Partial, StreamMode::Full]
            .into_iter()
            .find(|m| *m as u8 == byte)
    }
}

/// Where one of the standby's streams ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The WAL stream's name (`core-0`.., `webhooks`).
    pub name: String,
    /// The last record's LSN; 0 for an empty stream.
    pub last_lsn: u64,
    /// The epoch of the last record (0 for an empty stream).
    pub last_epoch: u64,
}

/// What the standby does with one stream before records flow (see `StreamMode`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPlan {
    pub name: String,
    pub mode: StreamMode,
    /// `Partial` only: the standby's records after this LSN are a divergent suffix (another
    /// history than the primary's): it removes them (keeping them aside for audit).
    pub truncate_after: Option<u64>,
    /// The first LSN the primary sends on this stream (at least 1).
    pub from_lsn: u64,
}

/// The standby's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster: String,
    pub node_id: String,
    /// The binary's version (informational: compatibility is the WAL format range).
    pub version: String,
    /// The WAL formats this node reads and writes (`wal_format_min <= wal_format_max`).
    pub wal_format_min: u8,
    pub wal_format_max: u8,
    /// The highest epoch this node has persisted.
    pub epoch: u64,
    /// What the node believes it is (an old primary rejoining says `Primary`).
    pub role: Role,
    pub streams: Vec<StreamPosition>,
    /// Ns: fresh random bytes, answered by the primary's MAC.
    pub nonce: Nonce,
}

/// The primary's answer to a valid `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub node_id: String,
    /// The primary's epoch.
    pub epoch: u64,
    /// The WAL format the records are written in.
    pub wal_format: u8,
    /// One plan per stream; `Records.stream` indexes this list.
    pub streams: Vec<StreamPlan>,
    /// Np: fresh random bytes, answered by the standby's `Auth`.
    pub nonce: Nonce,
    /// `welcome_mac(secret, Ns, Np, cluster, epoch)`.
    pub mac: Mac,
}

/// One replication message (see the table in the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    /// The standby's proof: `auth_mac(secret, Ns, Np, cluster)`.
    Auth {
        mac: Mac,
    },
    Refuse {
        code: RefuseCode,
        reason: String,
    },
    /// Whole encoded WAL records with contiguous LSNs (check them with `split_records`). More
    /// than one record only within `REPL_BATCH_BYTES_MAX`; a larger record goes alone.
    Records {
        stream: u16,
        bytes: Bytes,
    },
    Ack {
        stream: u16,
        received_lsn: u64,
        durable_lsn: u64,
    },
    Heartbeat {
        epoch: u64,
        seq: u64,
        written: Vec<u64>,
    },
    /// The sender has just been promoted to `epoch` (see the module documentation).
    Promoted {
        epoch: u64,
    },
    /// Planned switchover: the sender, primary of `epoch`, is frozen and has sent every record
    /// up to `written` (per stream, in Welcome order); the standby is to take over.
    Handover {
        epoch: u64,
        written: Vec<u64>,
    },
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Welcome(_) => MessageType::Welcome,
            Message::Auth { .. } => MessageType::Auth,
            Message::Refuse { .. } => MessageType::Refuse,
            Message::Records { .. } => MessageType::Records,
            Message::Ack { .. } => MessageType::Ack,
            Message::Heartbeat { .. } => MessageType::Heartbeat,
            Message::Promoted { .. } => MessageType::Promoted,
            Message::Handover { .. } => MessageType::Handover,
        }
    }
}

/// Why bytes from the peer are not a valid message (or batch). After one, the connection is
/// unusable: the caller closes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A length prefix of 0 or above `REPL_FRAME_BYTES_MAX`.
    #[error("bad frame length {len}")]
    BadLength { len: u32 },
    /// A length outside what the message type allows.
    #[error("bad frame length {len} for a {message} message")]
    BadLengthForType { message: &'static str, len: u32 },
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The payload does not parse, breaks a limit, or has bytes left over.
    #[error("bad {message} message: {what}")]
    BadPayload {
        message: &'static str,
        what: &'static str,
    },
    /// More bytes were pushed than the decoder may hold (`Decoder::room`).
    #[error("decoder buffer full: {buffered} bytes held, {pushed} pushed")]
    BufferFull { buffered: usize, pushed: usize },
    /// A `Records` message without records.
    #[error("empty records batch")]
    EmptyBatch,
    /// Several records adding up to more than `REPL_BATCH_BYTES_MAX`.
    #[error("records batch of {len} bytes over the batch limit")]
    BatchTooLarge { len: usize },
    /// The record expected at `lsn` is not a valid record.
    #[error("record at LSN {lsn}: {error}")]
    BadRecord { lsn: u64, error: DecodeError },
    /// A record with another LSN than the next one.
    #[error("record LSN {found} where {expected} was expected")]
    LsnGap { expected: u64, found: u64 },
    /// A record whose epoch is below the previous record's.
    #[error("record {lsn} has epoch {epoch}, below the previous record's {previous}")]
    EpochRegress { lsn: u64, epoch: u64, previous: u64 },
}

/// Appends `msg` as one frame to `out`.
///
/// # Panics
///
/// If `msg` breaks a limit of the protocol (a string, list or batch too long, an empty batch,
/// `durable_lsn > received_lsn`, a plan that is not self-consistent): our own messages must be
/// valid, and a peer would refuse them.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.push(msg.message_type() as u8);
    let mut w = Writer { out };
    match msg {
        Message::Hello(hello) => w.hello(hello),
        Message::Welcome(welcome) => w.welcome(welcome),
        Message::Auth { mac } => w.out.extend_from_slice(mac),
        Message::Refuse { code, reason } => {
            w.u8(*code as u8);
            w.str(reason, limits::REPL_REASON_BYTES_MAX);
        }
        Message::Records { stream, bytes } => {
            assert!(!bytes.is_empty(), "empty records batch");
            w.u16(*stream);
            w.out.extend_from_slice(bytes);
        }
        Message::Ack {
            stream,
            received_lsn,
            durable_lsn,
        } => {
            assert!(durable_lsn <= received_lsn, "durable past received");
            w.u16(*stream);
            w.u64(*received_lsn);
            w.u64(*durable_lsn);
        }
        Message::Heartbeat {
            epoch,
            seq,
            written,
        } => {
            w.u64(*epoch);
            w.u64(*seq);
            w.count(written.len(), limits::REPL_STREAMS_MAX);
            written.iter().for_each(|lsn| w.u64(*lsn));
        }
        Message::Promoted { epoch } => w.u64(*epoch),
        Message::Handover { epoch, written } => {
            w.u64(*epoch);
            w.count(written.len(), limits::REPL_STREAMS_MAX);
            written.iter().for_each(|lsn| w.u64(*lsn));
        }
    }
    let len = out.len() - start - LENGTH_BYTES;
    let (min, max) = msg.message_type().frame_len_range();
    assert!((min..=max).contains(&len), "frame length {len}");
    // Fits: at most REPL_FRAME_BYTES_MAX, asserted in limits.rs to fit a u32.
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
}

/// The bytes that precede `records_len` bytes of records in a `Records` message, so a sender
/// can write the records from where they already are (a vectored write) instead of copying them
/// into `encode`'s buffer.
///
/// # Panics
///
/// If `records_len` is 0 or the frame would be longer than `REPL_FRAME_BYTES_MAX`.
pub fn records_prefix(stream: u16, records_len: usize) -> [u8; RECORDS_PREFIX_BYTES] {
    let len = 1 + 2 + records_len;
    assert!(records_len > 0 && len <= limits::REPL_FRAME_BYTES_MAX);
    let mut prefix = [0; RECORDS_PREFIX_BYTES];
    // Fits: at most REPL_FRAME_BYTES_MAX.
    prefix[..4].copy_from_slice(&(len as u32).to_le_bytes());
    prefix[4] = MessageType::Records as u8;
    prefix[5..].copy_from_slice(&stream.to_le_bytes());
    prefix
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn count(&mut self, count: usize, max: usize) {
        assert!(count <= max, "list of {count} over {max}");
        // Fits: every list limit is at most u16::MAX (limits.rs).
        self.u16(count as u16);
    }

    fn str(&mut self, text: &str, max: usize) {
        assert!(
            text.len() <= max,
            "string of {} bytes over {max}",
            text.len()
        );
        // Fits: every string limit is at most u16::MAX (limits.rs).
        self.u16(text.len() as u16);
        self.out.extend_from_slice(text.as_bytes());
    }

    fn hello(&mut self, hello: &Hello) {
        assert!(hello.wal_format_min <= hello.wal_format_max);
        self.str(&hello.cluster, limits::REPL_NAME_BYTES_MAX);
        self.str(&hello.node_id, limits::REPL_NAME_BYTES_MAX);
        self.str(&hello.version, limits::REPL_NAME_BYTES_MAX);
        self.u8(hello.wal_format_min);
        self.u8(hello.wal_format_max);
        self.u64(hello.epoch);
        self.u8(hello.role as u8);
        self.count(hello.streams.len(), limits::REPL_STREAMS_MAX);
        for stream in &hello.streams {
            self.str(&stream.name, limits::WAL_STREAM_NAME_BYTES_MAX);
            self.u64(stream.last_lsn);
            self.u64(stream.last_epoch);
        }
        self.out.extend_from_slice(&hello.nonce);
    }

    fn welcome(&mut self, welcome: &Welcome) {
        self.str(&welcome.node_id, limits::REPL_NAME_BYTES_MAX);
        self.u64(welcome.epoch);
        self.u8(welcome.wal_format);
        self.count(welcome.streams.len(), limits::REPL_STREAMS_MAX);
        for plan in &welcome.streams {
            assert!(plan_consistent(plan), "inconsistent plan {plan:?}");
            self.str(&plan.name, limits::WAL_STREAM_NAME_BYTES_MAX);
            self.u8(plan.mode as u8);
            match plan.truncate_after {
                None => self.u8(0),
                Some(lsn) => {
                    self.u8(1);
                    self.u64(lsn);
                }
            }
            self.u64(plan.from_lsn);
        }
        self.out.extend_from_slice(&welcome.nonce);
        self.out.extend_from_slice(&welcome.mac);
    }
}

/// A plan's own fields agree: records start at 1 or later, a full resync truncates nothing,
/// and a truncation is followed by the record right after it.
fn plan_consistent(plan: &StreamPlan) -> bool {
    plan.from_lsn >= 1
        && match (plan.mode, plan.truncate_after) {
            (StreamMode::Full, truncate) => truncate.is_none(),
            (StreamMode::Partial, None) => true,
            (StreamMode::Partial, Some(lsn)) => lsn.checked_add(1) == Some(plan.from_lsn),
        }
}

/// Splits bytes as they arrive from the socket into messages. It holds at most
/// `REPL_DECODER_BUFFER_BYTES_MAX` bytes (`push` refuses more) and grows its buffer only by
/// bytes actually pushed, never by a length read from them. A `Records` message's bytes are
/// handed out without a copy (they share the decoder's buffer until dropped).
///
/// After the first error every later call returns it again: the connection is unusable.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    failed: Option<ProtoError>,
}

/// The buffer's first allocation (grown by doubling as needed, up to the limit).
const DECODER_INITIAL_BYTES: usize = 16 * 1024;

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Bytes held: an unfinished frame, or frames not yet taken with `next`.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffer's allocation (at most `REPL_DECODER_BUFFER_BYTES_MAX`).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// How many bytes `push` accepts now. After `next` returned `Ok(None)` this is at least
    /// `REPL_READ_BYTES_MAX`.
    pub fn room(&self) -> usize {
        limits::REPL_DECODER_BUFFER_BYTES_MAX - self.buf.len()
    }

    /// Appends bytes received from the peer.
    ///
    /// # Errors
    ///
    /// `BufferFull` past `room()`, or the error that already made the stream unusable. A
    /// bad frame header is reported by `next`.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if bytes.len() > self.room() {
            let error = ProtoError::BufferFull {
                buffered: self.buf.len(),
                pushed: bytes.len(),
            };
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.reserve(bytes.len());
        self.buf.extend_from_slice(bytes);
        debug_assert!(self.buf.capacity() <= limits::REPL_DECODER_BUFFER_BYTES_MAX);
        Ok(())
    }

    /// Room for `extra` more bytes: reclaimed in place when the buffer is no longer shared,
    /// otherwise a new allocation of at most the limit (so the limit holds for the allocation,
    /// not only for the bytes held).
    fn reserve(&mut self, extra: usize) {
        if self.buf.capacity() - self.buf.len() >= extra || self.buf.try_reclaim(extra) {
            return;
        }
        let need = self.buf.len() + extra;
        debug_assert!(
            need <= limits::REPL_DECODER_BUFFER_BYTES_MAX,
            "checked by push"
        );
        let doubled = self.buf.capacity().saturating_mul(2);
        let target =
            need.max(doubled.clamp(DECODER_INITIAL_BYTES, limits::REPL_DECODER_BUFFER_BYTES_MAX));
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
    }

    /// The next whole message, or `None` until more bytes are pushed.
    ///
    /// # Errors
    ///
    /// A bad length, type or payload (as soon as the frame's first five bytes show it, before
    /// the rest is buffered), or the error that already made the stream unusable.
    #[allow(clippy::should_implement_trait)] // Fallible, so not an `Iterator`.
    pub fn next(&mut self) -> Result<Option<Message>, ProtoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.take();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn take(&mut self) -> Result<Option<Message>, ProtoError> {
        let Some(len) = self.buf.first_chunk::<LENGTH_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*len);
        if len == 0 || len as usize > limits::REPL_FRAME_BYTES_MAX {
            return Err(ProtoError::BadLength { len });
        }
        let Some(&type_byte) = self.buf.get(LENGTH_BYTES) else {
            return Ok(None);
        };
        let message_type =
            MessageType::from_u8(type_byte).ok_or(ProtoError::UnknownType(type_byte))?;
        let (min, max) = message_type.frame_len_range();
        if !(min..=max).contains(&(len as usize)) {
            return Err(ProtoError::BadLengthForType {
                message: message_type.name(),
                len,
            });
        }
        let frame_end = LENGTH_BYTES + len as usize;
        if self.buf.len() < frame_end {
            return Ok(None);
        }
        if message_type == MessageType::Records {
            let mut frame = self.buf.split_to(frame_end);
            frame.advance(LENGTH_BYTES + 1);
            let stream = frame.get_u16_le();
            let bytes = frame.freeze();
            return Ok(Some(Message::Records { stream, bytes }));
        }
        let message = parse(message_type, &self.buf[LENGTH_BYTES + 1..frame_end])?;
        self.buf.advance(frame_end);
        Ok(Some(message))
    }
}

/// Parses the payload of a message of any type but `Records`.
fn parse(message_type: MessageType, payload: &[u8]) -> Result<Message, ProtoError> {
    let mut r = Reader {
        bytes: payload,
        message: message_type.name(),
    };
    let message = match message_type {
        MessageType::Hello => Message::Hello(r.hello()?),
        MessageType::Welcome => Message::Welcome(r.welcome()?),
        MessageType::Auth => Message::Auth { mac: r.array()? },
        MessageType::Refuse => Message::Refuse {
            code: RefuseCode::from_u8(r.u8()?).ok_or(r.bad("unknown refuse code"))?,
            reason: r.str(limits::REPL_REASON_BYTES_MAX)?,
        },
        MessageType::Ack => {
            let (stream, received_lsn, durable_lsn) = (r.u16()?, r.u64()?, r.u64()?);
            if durable_lsn > received_lsn {
                return Err(r.bad("durable_lsn above received_lsn"));
            }
            Message::Ack {
                stream,
                received_lsn,
                durable_lsn,
            }
        }
        MessageType::Heartbeat => {
            let (epoch, seq) = (r.u64()?, r.u64()?);
            let count = r.count(limits::REPL_STREAMS_MAX, 8)?;
            let mut written = Vec::with_capacity(count);
            for _ in 0..count {
                written.push(r.u64()?);
            }
            Message::Heartbeat {
                epoch,
                seq,
                written,
            }
        }
        MessageType::Promoted => Message::Promoted { epoch: r.u64()? },
        MessageType::Handover => {
            let epoch = r.u64()?;
            let count = r.count(limits::REPL_STREAMS_MAX, 8)?;
            let mut written = Vec::with_capacity(count);
            for _ in 0..count {
                written.push(r.u64()?);
            }
            Message::Handover { epoch, written }
        }
        MessageType::Records => unreachable!("records frames are split by the decoder"),
    };
    if !r.bytes.is_empty() {
        return Err(r.bad("bytes after the message"));
    }
    Ok(message)
}

struct Reader<'a> {
    bytes: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &'static str) -> ProtoError {
        ProtoError::BadPayload {
            message: self.message,
            what,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ProtoError> {
        if self.bytes.len() < len {
            return Err(self.bad("truncated"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A list's count, checked against its limit and against the bytes left (each item takes
    /// at least `item_bytes_min`) before anything is allocated for it.
    fn count(&mut self, max: usize, item_bytes_min: usize) -> Result<usize, ProtoError> {
        let count = usize::from(self.u16()?);
        if count > max {
            return Err(self.bad("too many items"));
        }
        if count * item_bytes_min > self.bytes.len() {
            return Err(self.bad("truncated"));
        }
        Ok(count)
    }

    fn str(&mut self, max: usize) -> Result<String, ProtoError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(self.bad("string too long"));
        }
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(self.bad("string not UTF-8")),
        }
    }

    fn hello(&mut self) -> Result<Hello, ProtoError> {
        let cluster = self.str(limits::REPL_NAME_BYTES_MAX)?;
        let node_id = self.str(limits::REPL_NAME_BYTES_MAX)?;
        let version = self.str(limits::REPL_NAME_BYTES_MAX)?;
        let (wal_format_min, wal_format_max) = (self.u8()?, self.u8()?);
        if wal_format_min > wal_format_max {
            return Err(self.bad("empty WAL format range"));
        }
        let epoch = self.u64()?;
        let role = Role::from_u8(self.u8()?).ok_or(self.bad("unknown role"))?;
        let count = self.count(limits::REPL_STREAMS_MAX, 2 + 8 + 8)?;
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            streams.push(StreamPosition {
                name: self.str(limits::WAL_STREAM_NAME_BYTES_MAX)?,
                last_lsn: self.u64()?,
                last_epoch: self.u64()?,
            });
        }
        Ok(Hello {
            cluster,
            node_id,
            version,
            wal_format_min,
            wal_format_max,
            epoch,
            role,
            streams,
            nonce: self.array()?,
        })
    }

    fn welcome(&mut self) -> Result<Welcome, ProtoError> {
        let node_id = self.str(limits::REPL_NAME_BYTES_MAX)?;
        let (epoch, wal_format) = (self.u64()?, self.u8()?);
        let count = self.count(limits::REPL_STREAMS_MAX, 2 + 1 + 1 + 8)?;
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.str(limits::WAL_STREAM_NAME_BYTES_MAX)?;
            let mode = StreamMode::from_u8(self.u8()?).ok_or(self.bad("unknown stream mode"))?;
            let truncate_after = match self.u8()? {
                0 => None,
                1 => Some(self.u64()?),
                _ => return Err(self.bad("bad option tag")),
            };
            let plan = StreamPlan {
                name,
                mode,
                truncate_after,
                from_lsn: self.u64()?,
            };
            if !plan_consistent(&plan) {
                return Err(self.bad("inconsistent stream plan"));
            }
            streams.push(plan);
        }
        Ok(Welcome {
            node_id,
            epoch,
            wal_format,
            streams,
            nonce: self.array()?,
            mac: self.array()?,
        })
    }
}

/// Checks a `Records` batch before the standby writes it: `bytes` must be whole WAL records
/// (length, checksum, kind and format checked by `record::frame`), with LSNs `expect_lsn`,
/// `expect_lsn + 1`, .. covering `bytes` exactly, epochs never going down, and more than one
/// record only within `REPL_BATCH_BYTES_MAX`. Returns each record's header and byte range.
///
/// A record of a kind or format this build does not know passes if its writer marked it
/// skippable (its length and checksum are still checked): the standby stores it as it is and
/// replay skips it, as on the primary.
///
/// # Errors
///
/// The first problem found; nothing of the batch may be written then.
pub fn split_records(
    bytes: &[u8],
    expect_lsn: u64,
) -> Result<Vec<(Header, Range<usize>)>, ProtoError> {
    if bytes.is_empty() {
        return Err(ProtoError::EmptyBatch);
    }
    let mut records = Vec::new();
    let (mut offset, mut expect, mut previous_epoch) = (0, expect_lsn, 0);
    while offset < bytes.len() {
        let header = frame_header(&bytes[offset..])
            .map_err(|error| ProtoError::BadRecord { lsn: expect, error })?;
        if header.lsn != expect {
            return Err(ProtoError::LsnGap {
                expected: expect,
                found: header.lsn,
            });
        }
        if header.epoch < previous_epoch {
            return Err(ProtoError::EpochRegress {
                lsn: header.lsn,
                epoch: header.epoch,
                previous: previous_epoch,
            });
        }
        let end = offset + header.len as usize;
        if end < bytes.len() && bytes.len() > limits::REPL_BATCH_BYTES_MAX {
            return Err(ProtoError::BatchTooLarge { len: bytes.len() });
        }
        records.push((header, offset..end));
        (offset, previous_epoch) = (end, header.epoch);
        expect = expect.checked_add(1).ok_or(ProtoError::LsnGap {
            expected: expect,
            found: header.lsn,
        })?;
    }
    Ok(records)
}

/// `record::frame`'s header, also for a skippable record of an unknown kind or format (whose
/// length and checksum `frame` verified before it looked at the kind).
fn frame_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    match record::frame(bytes) {
        Ok((header, _)) => Ok(header),
        Err(
            DecodeError::UnknownKind {
                skippable: true, ..
            }
            | DecodeError::UnknownFormat {
                skippable: true, ..
            },
        ) => {
            let field = |at: usize| -> [u8; 8] {
                let mut raw = [0; 8];
                raw.copy_from_slice(&bytes[at..at + 8]);
                raw
            };
            let header = Header {
                len: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                kind: bytes[8],
                format: bytes[9],
                flags: u16::from_le_bytes([bytes[10], bytes[11]]),
                epoch: u64::from_le_bytes(field(12)),
                lsn: u64::from_le_bytes(field(20)),
            };
            if header.lsn == 0 {
                return Err(DecodeError::BadPayload);
            }
            Ok(header)
        }
        Err(error) => Err(error),
    }
}
