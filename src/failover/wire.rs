//! The node↔witness wire format, sans-IO: `encode` appends one authenticated frame, `decode`
//! takes one from the front of a buffer (a datagram, or bytes read from a stream). It must not
//! do IO, read a clock or keep state. Nothing received is trusted: the length is checked against
//! `WITNESS_FRAME_BYTES_MAX` before anything else, the HMAC before the payload is parsed, and
//! bad bytes are a `WireError`, never a panic. Encoding asserts instead (our own messages must
//! be valid).
//!
//! ```text
//! len u32 | type u8 | payload | mac [32]     len counts type, payload and mac
//! mac = HMAC-SHA256(secret, "ringcast-witness" || type || payload)
//!
//! type  message          payload
//! 1     LeaseRequest     node str, epoch u64, session u64, seq u64
//! 2     PromoteRequest   node str, epoch u64, session u64, seq u64
//! 3     Granted          node str, kind u8, epoch u64, session u64, seq u64, lease_ms u64
//! 4     Refused          node str, reason u8, epoch u64, session u64, seq u64
//! 5     LeaseRelease     node str, epoch u64, session u64, seq u64
//! ```
//!
//! Integers are little-endian; a string is `u16 length | UTF-8` of at most
//! `REPL_NAME_BYTES_MAX` bytes. Type numbers and enum values are the wire format: never
//! renumber one. The MAC proves the sender knows the shared secret; an answer is bound to its
//! request by the node's `session` (fresh per process start) and `seq`, so a replayed answer is
//! ignored. A replayed request can only renew a lease the witness already granted (delaying a
//! failover, never causing one).

use subtle::ConstantTimeEq;

use super::message::{GrantKind, RefuseReason, WitnessMessage};
use crate::limits;
use crate::replication::{LENGTH_BYTES, MAC_BYTES, Mac, handshake};

/// The label the MAC starts with, so a witness frame's MAC is never valid as a replication one.
const LABEL: &[u8] = b"ringcast-witness";

/// The shortest frame (`len` not counted): a type, an empty node name, three integers, a MAC.
const FRAME_BYTES_MIN: usize = 1 + 2 + 3 * 8 + MAC_BYTES;

const _: () = assert!(
    1 + 2 + limits::REPL_NAME_BYTES_MAX + 1 + 4 * 8 + MAC_BYTES <= limits::WITNESS_FRAME_BYTES_MAX
);

/// Why bytes are not a valid witness message. After one on a stream, the caller closes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A length outside `[FRAME_BYTES_MIN, WITNESS_FRAME_BYTES_MAX]`.
    #[error("bad witness frame length {0}")]
    BadLength(u32),
    #[error("unknown witness message type {0}")]
    UnknownType(u8),
    /// The MAC does not verify: the sender does not know the secret, or the frame was altered.
    #[error("bad witness MAC")]
    BadMac,
    /// The payload does not parse, or has bytes left over.
    #[error("bad witness payload: {0}")]
    BadPayload(&'static str),
}

/// Appends `message` as one frame to `out`.
///
/// # Panics
///
/// If the node name is longer than `REPL_NAME_BYTES_MAX`.
pub fn encode(secret: &[u8], message: &WitnessMessage, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    let body = out.len();
    let (type_byte, node, tag, numbers) = match *message {
        WitnessMessage::LeaseRequest {
            ref node,
            epoch,
            session,
            seq,
        } => (1, node, None, [epoch, session, seq, 0]),
        WitnessMessage::PromoteRequest {
            ref node,
            epoch,
            session,
            seq,
        } => (2, node, None, [epoch, session, seq, 0]),
        WitnessMessage::Granted {
            ref node,
            kind,
            epoch,
            session,
            seq,
            lease_ms,
        } => (3, node, Some(kind as u8), [epoch, session, seq, lease_ms]),
        WitnessMessage::Refused {
            ref node,
            reason,
            epoch,
            session,
            seq,
        } => (4, node, Some(reason as u8), [epoch, session, seq, 0]),
        WitnessMessage::LeaseRelease {
            ref node,
            epoch,
            session,
            seq,
        } => (5, node, None, [epoch, session, seq, 0]),
    };
    assert!(
        node.len() <= limits::REPL_NAME_BYTES_MAX,
        "node name too long"
    );
    out.push(type_byte);
    // Fits: REPL_NAME_BYTES_MAX is at most u16::MAX (limits.rs).
    out.extend_from_slice(&(node.len() as u16).to_le_bytes());
    out.extend_from_slice(node.as_bytes());
    out.extend(tag);
    let count = if type_byte == 3 { 4 } else { 3 };
    for number in &numbers[..count] {
        out.extend_from_slice(&number.to_le_bytes());
    }
    let mac = mac(secret, &out[body..]);
    out.extend_from_slice(&mac);
    let len = out.len() - body;
    assert!((FRAME_BYTES_MIN..=limits::WITNESS_FRAME_BYTES_MAX).contains(&len));
    // Fits: at most WITNESS_FRAME_BYTES_MAX.
    out[start..body].copy_from_slice(&(len as u32).to_le_bytes());
}

/// The first message in `bytes` and how many bytes it took, or `None` while the frame is
/// incomplete.
///
/// # Errors
///
/// A bad length (as soon as the first four bytes are in), a bad MAC, an unknown type or a bad
/// payload.
pub fn decode(secret: &[u8], bytes: &[u8]) -> Result<Option<(WitnessMessage, usize)>, WireError> {
    let Some(len) = bytes.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*len);
    let frame_len = len as usize;
    if !(FRAME_BYTES_MIN..=limits::WITNESS_FRAME_BYTES_MAX).contains(&frame_len) {
        return Err(WireError::BadLength(len));
    }
    let Some(frame) = bytes.get(LENGTH_BYTES..LENGTH_BYTES + frame_len) else {
        return Ok(None);
    };
    let (body, tag) = frame.split_at(frame_len - MAC_BYTES);
    if !bool::from(mac(secret, body).ct_eq(tag)) {
        return Err(WireError::BadMac);
    }
    let message = parse(body)?;
    Ok(Some((message, LENGTH_BYTES + frame_len)))
}

fn mac(secret: &[u8], body: &[u8]) -> Mac {
    handshake::hmac(secret, &[LABEL, body])
}

fn parse(body: &[u8]) -> Result<WitnessMessage, WireError> {
    let mut r = Reader { rest: body };
    let type_byte = r.u8()?;
    if !(1..=5).contains(&type_byte) {
        return Err(WireError::UnknownType(type_byte));
    }
    let node = r.str()?;
    let tag = if matches!(type_byte, 3 | 4) {
        Some(r.u8()?)
    } else {
        None
    };
    let (epoch, session, seq) = (r.u64()?, r.u64()?, r.u64()?);
    let message = match (type_byte, tag) {
        (1, _) => WitnessMessage::LeaseRequest {
            node,
            epoch,
            session,
            seq,
        },
        (2, _) => WitnessMessage::PromoteRequest {
            node,
            epoch,
            session,
            seq,
        },
        (5, _) => WitnessMessage::LeaseRelease {
            node,
            epoch,
            session,
            seq,
        },
        (3, Some(kind)) => WitnessMessage::Granted {
            node,
            kind: GrantKind::from_u8(kind).ok_or(WireError::BadPayload("grant kind"))?,
            epoch,
            session,
            seq,
            lease_ms: r.u64()?,
        },
        (_, Some(reason)) => WitnessMessage::Refused {
            node,
            reason: RefuseReason::from_u8(reason).ok_or(WireError::BadPayload("reason"))?,
            epoch,
            session,
            seq,
        },
        _ => return Err(WireError::BadPayload("tag")),
    };
    if !r.rest.is_empty() {
        return Err(WireError::BadPayload("bytes left over"));
    }
    Ok(message)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::BadPayload("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn str(&mut self) -> Result<String, WireError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len > limits::REPL_NAME_BYTES_MAX {
            return Err(WireError::BadPayload("node name too long"));
        }
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| WireError::BadPayload("node name"))?;
        Ok(text.to_owned())
    }
}
