//! Server-side RFC 6455 frame codec. It owns framing and nothing else: it turns the bytes a
//! client sends into complete [`Message`]s (unmasking, reassembling fragments, enforcing the
//! message size limit, checking control frames, close codes and UTF-8) and turns outgoing
//! payloads into unmasked server frames. It must not do IO, read the clock or know anything
//! about Pusher events: the caller feeds it the bytes it received and writes the frames it
//! returns. Because one [`Decoder`] lives in every connection, it holds no heap memory while no
//! partial data is pending and stays a few machine words large.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Normal closure: the purpose of the connection has been fulfilled.
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away, for example because the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// The peer sent a kind of data this endpoint does not accept.
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// The peer sent data inconsistent with the message type (for example text that is not UTF-8).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// The peer sent a message that violates a policy of this endpoint.
pub const CLOSE_POLICY: u16 = 1008;
/// The peer sent a message larger than this endpoint accepts.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// RFC 6455 §5.5 caps every control frame payload at 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// A close payload spends two of its 125 bytes on the status code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Two fixed bytes, eight bytes of extended length and four bytes of mask.
const MAX_HEADER_LEN: usize = 14;

/// The FIN bit in the first header byte; `Decoder::frame` reuses the same bit.
const FIN_BIT: u8 = 0x80;
/// The RSV1, RSV2 and RSV3 bits, which must be zero because no extension is negotiated.
const RSV_BITS: u8 = 0x70;
/// The MASK bit in the second header byte.
const MASK_BIT: u8 = 0x80;

/// `Decoder::frame` value while the next bytes belong to a frame header.
const AT_HEADER: u8 = 0xFF;
/// `Decoder::frame` value after an error, so that misuse fails loudly instead of resyncing.
const POISONED: u8 = 0xFE;
/// `Decoder::message_op` value while no data message is in progress.
const NO_MESSAGE: u8 = 0xFF;

/// One complete message received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A complete (reassembled) text message whose bytes are valid UTF-8.
    Text(Vec<u8>),
    /// A complete (reassembled) binary message.
    Binary(Vec<u8>),
    /// A ping; the caller answers it with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong, usually the answer to a ping the server sent.
    Pong(Vec<u8>),
    /// A close frame; `code` is `None` when the frame carried no payload.
    Close { code: Option<u16>, reason: String },
}

/// Why the client's bytes were rejected; the connection is then closed with `close_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// [`CLOSE_PROTOCOL_ERROR`], [`CLOSE_INVALID_PAYLOAD`] or [`CLOSE_TOO_BIG`].
    pub close_code: u16,
    /// A short reason, suitable for logs and for the close frame's reason text.
    pub reason: &'static str,
}

impl DecodeError {
    const fn protocol(reason: &'static str) -> DecodeError {
        DecodeError {
            close_code: CLOSE_PROTOCOL_ERROR,
            reason,
        }
    }

    const fn invalid_payload(reason: &'static str) -> DecodeError {
        DecodeError {
            close_code: CLOSE_INVALID_PAYLOAD,
            reason,
        }
    }

    const fn too_big(reason: &'static str) -> DecodeError {
        DecodeError {
            close_code: CLOSE_TOO_BIG,
            reason,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.close_code)
    }
}

impl std::error::Error for DecodeError {}

/// Incremental decoder for the frames one client sends.
///
/// The decoder streams payload bytes straight into the message being assembled, unmasking them
/// as they arrive, so a frame split across many reads is copied once and never held twice.
pub struct Decoder {
    /// The largest reassembled data message accepted, in bytes.
    max_message_bytes: usize,
    /// Unmasked payload of the data message in progress; empty (no allocation) between messages.
    message: Vec<u8>,
    /// Either the bytes of a header that has not fully arrived, or the unmasked partial payload
    /// of a control frame; empty (no allocation) otherwise.
    pending: Vec<u8>,
    /// Payload bytes of the current frame that have not arrived yet.
    remaining: u64,
    /// The current frame's mask, rotated so that `mask[0]` applies to the next payload byte.
    mask: [u8; 4],
    /// `AT_HEADER`, `POISONED`, or the current frame's opcode with `FIN_BIT` when it is final.
    frame: u8,
    /// `NO_MESSAGE`, or `OP_TEXT`/`OP_BINARY` for the data message in progress.
    message_op: u8,
    /// Units started so far (a frame begun outside a data message, with the fragments and
    /// control frames inside that message counting as part of it), wrapping; names the
    /// unfinished one in [`Decoder::partial`]. Sixteen bits fit in the struct's padding, and a
    /// wrap back to the same number would need 65536 units started within one `feed`.
    units: u16,
}

impl fmt::Debug for Decoder {
    // Payload bytes are left out on purpose: they can be large and belong to users.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("message_len", &self.message.len())
            .field("pending_len", &self.pending.len())
            .field("remaining", &self.remaining)
            .field("frame", &self.frame)
            .field("message_op", &self.message_op)
            .field("units", &self.units)
            .finish()
    }
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
}

impl Decoder {
    /// Creates a decoder that rejects reassembled data messages larger than `max_message_bytes`
    /// with [`CLOSE_TOO_BIG`]. Control frames are bounded by the protocol (125 bytes) instead.
    pub fn new(max_message_bytes: usize) -> Decoder {
        Decoder {
            max_message_bytes,
            message: Vec::new(),
            pending: Vec::new(),
            remaining: 0,
            mask: [0; 4],
            frame: AT_HEADER,
            message_op: NO_MESSAGE,
            units: 0,
        }
    }

    /// Feeds bytes received from the client. Complete messages are appended to `out`.
    /// Incomplete frame bytes are kept internally until the next call. After an error the
    /// decoder must not be fed again (the connection is closed with `close_code`); it releases
    /// its buffers and answers any further call with a protocol error.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Message>) -> Result<(), DecodeError> {
        if self.frame == POISONED {
            return Err(DecodeError::protocol("decoder fed again after an error"));
        }
        let result = self.feed_inner(input, out);
        if result.is_err() {
            // The connection is about to close, so the buffers are dead weight from here on.
            self.message = Vec::new();
            self.pending = Vec::new();
            self.frame = POISONED;
        }
        result
    }

    /// Heap bytes currently held for a partial frame and a partial fragmented message. This is
    /// the allocated capacity, which is what memory accounting needs; it is zero whenever no
    /// partial data is pending. The first frame of a message reserves its announced length
    /// when its header is read, so from then on it counts whole, however its bytes trickle in.
    pub fn buffered_bytes(&self) -> usize {
        self.message.capacity() + self.pending.capacity()
    }

    /// The number of the unit (a frame, or a fragmented message with the control frames sent
    /// inside it) that has begun but not finished, or `None` between units. The number changes
    /// when a new unit begins, so a caller that remembers when it first saw a number knows how
    /// long that unit has been unfinished (the decoder itself never reads a clock).
    pub fn partial(&self) -> Option<u16> {
        let idle =
            self.frame == AT_HEADER && self.pending.is_empty() && self.message_op == NO_MESSAGE;
        (!idle && self.frame != POISONED).then_some(self.units)
    }

    /// Drops whatever partial data is held (the connection is closing and will not be fed
    /// again); like an error, it leaves the decoder refusing any further input.
    pub fn discard(&mut self) {
        self.message = Vec::new();
        self.pending = Vec::new();
        self.frame = POISONED;
    }

    fn feed_inner(&mut self, mut input: &[u8], out: &mut Vec<Message>) -> Result<(), DecodeError> {
        loop {
            if self.frame == AT_HEADER {
                if input.is_empty() {
                    return Ok(());
                }
                match self.read_header(input)? {
                    Some(consumed) => input = input.get(consumed..).unwrap_or_default(),
                    None => return Ok(()),
                }
            }
            // A zero-length payload still passes through here, so that frames without payload
            // complete even when the header used up the whole input.
            let available = usize::try_from(self.remaining)
                .map_or(input.len(), |remaining| remaining.min(input.len()));
            let (chunk, rest) = input.split_at(available);
            input = rest;
            self.take_payload(chunk, out)?;
            if self.frame != AT_HEADER {
                // The frame still misses payload bytes, so the input is exhausted.
                return Ok(());
            }
        }
    }

    /// Parses the next header from `pending` plus `input`. Returns how many bytes of `input` the
    /// header used, or `None` when the header is still incomplete (its bytes are then kept).
    fn read_header(&mut self, input: &[u8]) -> Result<Option<usize>, DecodeError> {
        if self.pending.is_empty() && self.message_op == NO_MESSAGE {
            // The first byte of a new unit (a frame inside a data message belongs to it).
            self.units = self.units.wrapping_add(1);
        }
        if self.pending.is_empty() {
            // Fast path: the header starts in this input, so it is parsed in place.
            return match self.parse_header(input)? {
                Some((header, len)) => {
                    self.start_frame(header);
                    Ok(Some(len))
                }
                None => {
                    self.pending.extend_from_slice(input);
                    Ok(None)
                }
            };
        }
        // Slow path: the header was split across reads, so join the pieces on the stack.
        let have = self.pending.len().min(MAX_HEADER_LEN);
        let take = (MAX_HEADER_LEN - have).min(input.len());
        let mut joined = [0u8; MAX_HEADER_LEN];
        joined[..have].copy_from_slice(&self.pending[..have]);
        joined[have..have + take].copy_from_slice(&input[..take]);
        match self.parse_header(&joined[..have + take])? {
            Some((header, len)) => {
                self.pending = Vec::new();
                self.start_frame(header);
                Ok(Some(len.saturating_sub(have)))
            }
            None => {
                self.pending.extend_from_slice(&input[..take]);
                Ok(None)
            }
        }
    }

    /// Validates as much of a header as `bytes` holds, so that a bad frame is refused as soon as
    /// the byte that proves it arrives, whatever the read boundaries were. The checks run in a
    /// fixed order, which keeps the reported error the same for every split of the input.
    fn parse_header(&self, bytes: &[u8]) -> Result<Option<(Header, usize)>, DecodeError> {
        let Some(&first) = bytes.first() else {
            return Ok(None);
        };
        if first & RSV_BITS != 0 {
            return Err(DecodeError::protocol(
                "reserved bits set without a negotiated extension",
            ));
        }
        let fin = first & FIN_BIT != 0;
        let opcode = first & 0x0F;
        match opcode {
            OP_CONTINUATION if self.message_op == NO_MESSAGE => {
                return Err(DecodeError::protocol(
                    "continuation frame without a message in progress",
                ));
            }
            OP_TEXT | OP_BINARY if self.message_op != NO_MESSAGE => {
                return Err(DecodeError::protocol(
                    "new data frame while a fragmented message is in progress",
                ));
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG if !fin => {
                return Err(DecodeError::protocol("fragmented control frame"));
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(DecodeError::protocol("reserved opcode")),
        }
        let control = is_control(opcode);

        let Some(&second) = bytes.get(1) else {
            return Ok(None);
        };
        if second & MASK_BIT == 0 {
            return Err(DecodeError::protocol("client frame is not masked"));
        }
        let short_len = second & 0x7F;
        if control && usize::from(short_len) > MAX_CONTROL_PAYLOAD {
            return Err(DecodeError::protocol(
                "control frame payload longer than 125 bytes",
            ));
        }
        let extra = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let Some(extended) = bytes.get(2..2 + extra) else {
            return Ok(None);
        };
        let len = if extra == 0 {
            u64::from(short_len)
        } else {
            // Non-minimal encodings are accepted: refusing them protects nothing.
            extended
                .iter()
                .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
        };
        if len >> 63 != 0 {
            return Err(DecodeError::protocol(
                "64-bit payload length has its most significant bit set",
            ));
        }
        if !control {
            // Refuse an oversized message on its header, before buffering any of it.
            let room = self.max_message_bytes.saturating_sub(self.message.len());
            if u64::try_from(room).is_ok_and(|room| len > room) {
                return Err(DecodeError::too_big("message exceeds the size limit"));
            }
        }

        let mask_at = 2 + extra;
        let Some(mask) = bytes.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        let mut mask_bytes = [0u8; 4];
        mask_bytes.copy_from_slice(mask);
        Ok(Some((
            Header {
                fin,
                opcode,
                mask: mask_bytes,
                len,
            },
            mask_at + 4,
        )))
    }

    fn start_frame(&mut self, header: Header) {
        self.remaining = header.len;
        self.mask = header.mask;
        self.frame = header.opcode | if header.fin { FIN_BIT } else { 0 };
        if header.opcode == OP_TEXT || header.opcode == OP_BINARY {
            self.message_op = header.opcode;
            // The header already passed the size limit, so the length fits. Reserving it now
            // makes the buffer exactly one allocation of the announced size, whatever the read
            // boundaries, and lets the caller account for it from the header on. Continuation
            // frames grow the buffer as their bytes come (amortized), since many tiny fragments
            // must not each cost a reallocation.
            let len = usize::try_from(header.len).expect("checked against the size limit");
            self.message.reserve_exact(len);
        }
    }

    /// Consumes `chunk`, the next payload bytes of the current frame (at most `remaining`), and
    /// finishes the frame when they complete it.
    fn take_payload(&mut self, chunk: &[u8], out: &mut Vec<Message>) -> Result<(), DecodeError> {
        let opcode = self.frame & 0x0F;
        let fin = self.frame & FIN_BIT != 0;
        let complete = u64::try_from(chunk.len()).is_ok_and(|len| len == self.remaining);

        if is_control(opcode) {
            if !complete {
                if chunk.is_empty() {
                    // Nothing to keep yet; reserving now would leave a buffer behind if the
                    // whole payload then arrives at once and takes the fast path.
                    return Ok(());
                }
                if self.pending.is_empty() {
                    // Control payloads are at most 125 bytes, so reserving all of it is cheap
                    // and avoids regrowing while the rest trickles in.
                    let total = usize::try_from(self.remaining).unwrap_or(MAX_CONTROL_PAYLOAD);
                    self.pending.reserve_exact(total);
                }
                append_unmasked(&mut self.pending, chunk, &mut self.mask);
                self.remaining -= chunk.len() as u64;
                return Ok(());
            }
            let payload = if self.pending.is_empty() {
                // Fast path: the whole payload is here, so unmask it straight into its own Vec.
                let mut payload = chunk.to_vec();
                unmask(&mut payload, self.mask);
                payload
            } else {
                append_unmasked(&mut self.pending, chunk, &mut self.mask);
                std::mem::take(&mut self.pending)
            };
            self.remaining = 0;
            self.frame = AT_HEADER;
            out.push(control_message(opcode, payload)?);
            return Ok(());
        }

        // Data frames append to the message in progress. When the message is a single frame that
        // arrived whole, `message` is empty and this is one exact allocation that is then moved
        // into the output, with no intermediate buffer.
        append_unmasked(&mut self.message, chunk, &mut self.mask);
        self.remaining -= chunk.len() as u64;
        if self.remaining > 0 {
            return Ok(());
        }
        self.frame = AT_HEADER;
        if !fin {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.message);
        let op = std::mem::replace(&mut self.message_op, NO_MESSAGE);
        if op == OP_TEXT {
            if std::str::from_utf8(&payload).is_err() {
                return Err(DecodeError::invalid_payload(
                    "text message is not valid UTF-8",
                ));
            }
            out.push(Message::Text(payload));
        } else {
            out.push(Message::Binary(payload));
        }
        Ok(())
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// Appends `chunk` to `dst` unmasked, then rotates `mask` so that it lines up with the byte
/// that follows the chunk.
fn append_unmasked(dst: &mut Vec<u8>, chunk: &[u8], mask: &mut [u8; 4]) {
    let start = dst.len();
    dst.extend_from_slice(chunk);
    unmask(&mut dst[start..], *mask);
    mask.rotate_left(chunk.len() % 4);
}

/// XORs `data` with the repeating 4-byte `mask`, eight bytes at a time where possible.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of eight, hence of four, so the mask restarts at index 0.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

fn control_message(opcode: u8, payload: Vec<u8>) -> Result<Message, DecodeError> {
    match opcode {
        OP_PING => Ok(Message::Ping(payload)),
        OP_PONG => Ok(Message::Pong(payload)),
        _ => parse_close(&payload),
    }
}

fn parse_close(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.is_empty() {
        return Ok(Message::Close {
            code: None,
            reason: String::new(),
        });
    }
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return Err(DecodeError::protocol("close frame payload of one byte"));
    };
    let code = u16::from_be_bytes(*code);
    if !is_valid_close_code(code) {
        return Err(DecodeError::protocol("invalid close code"));
    }
    let Ok(reason) = std::str::from_utf8(reason) else {
        return Err(DecodeError::invalid_payload(
            "close reason is not valid UTF-8",
        ));
    };
    Ok(Message::Close {
        code: Some(code),
        reason: reason.to_owned(),
    })
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4): the defined codes
/// 1000-1003 and 1007-1011, and the registered and private ranges 3000-4999. 1004, 1005, 1006
/// and 1015 are reserved and must never appear on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Length of the header [`write_header`] writes for a payload of `payload_len` bytes, so that a
/// caller can reserve the whole frame at once.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Writes a frame header for a FIN frame of `opcode` and `payload_len` into `out` (for callers
/// that build the payload in place). Server frames are never masked.
pub fn write_header(out: &mut BytesMut, opcode: u8, payload_len: usize) {
    let first = FIN_BIT | (opcode & 0x0F);
    if let Ok(short @ 0..=125) = u8::try_from(payload_len) {
        out.extend_from_slice(&[first, short]);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.extend_from_slice(&[first, 126]);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&[first, 127]);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
}

/// Builds one complete unmasked FIN frame in a single exact allocation.
fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    write_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Control payloads longer than the protocol allows are cut rather than refused, because the
/// caller echoes peer data (pings) and the truncated frame is still valid.
fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// One unmasked text frame. The caller guarantees that `payload` is UTF-8.
pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// One unmasked binary frame.
pub fn encode_binary(payload: &[u8]) -> Bytes {
    encode(OP_BINARY, payload)
}

/// One unmasked ping frame; a payload over 125 bytes is truncated.
pub fn encode_ping(payload: &[u8]) -> Bytes {
    encode(OP_PING, control_payload(payload))
}

/// One unmasked pong frame; a payload over 125 bytes is truncated.
pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, control_payload(payload))
}

/// One unmasked close frame with `code` and `reason`; the reason is truncated to 123 bytes on a
/// UTF-8 character boundary so that the frame stays a valid control frame with a valid reason.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = &reason[..reason.floor_char_boundary(MAX_CLOSE_REASON)];
    let mut out = BytesMut::with_capacity(2 + 2 + reason.len());
    write_header(&mut out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    const LIMIT: usize = 1 << 20;

    /// Builds a masked client frame with the minimal length encoding; `first` is the whole
    /// first header byte (FIN, RSV and opcode).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(MASK_BIT | len as u8);
        } else if len <= 0xFFFF {
            out.push(MASK_BIT | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(MASK_BIT | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn fin(opcode: u8) -> u8 {
        FIN_BIT | opcode
    }

    fn decode_all(bytes: &[u8], limit: usize) -> (Vec<Message>, Result<(), DecodeError>) {
        let mut decoder = Decoder::new(limit);
        let mut out = Vec::new();
        let result = decoder.feed(bytes, &mut out);
        (out, result)
    }

    /// Decodes `bytes` whole, one byte at a time, split at every point, and (for short inputs)
    /// split at every pair of points, and checks that every way gives the same result and leaves
    /// nothing buffered.
    fn decode_every_split(bytes: &[u8], limit: usize) -> (Vec<Message>, Result<(), DecodeError>) {
        let expected = decode_all(bytes, limit);
        let check = |pieces: &[&[u8]]| {
            let mut decoder = Decoder::new(limit);
            let mut out = Vec::new();
            let mut result = Ok(());
            for piece in pieces {
                result = decoder.feed(piece, &mut out);
                if result.is_err() {
                    break;
                }
            }
            let split: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            // Every test stream ends on a frame boundary or in an error, and in both cases the
            // decoder must hold no memory afterwards.
            assert_eq!(decoder.buffered_bytes(), 0, "split {split:?}");
            assert_eq!((out, result), expected, "split {split:?}");
        };
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        check(&singles);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            check(&[a, b]);
        }
        if bytes.len() <= 64 {
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    check(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                }
            }
        }
        expected
    }

    fn decode_ok(bytes: &[u8]) -> Vec<Message> {
        let (out, result) = decode_every_split(bytes, LIMIT);
        assert_eq!(result, Ok(()));
        out
    }

    fn decode_err(bytes: &[u8], limit: usize) -> DecodeError {
        match decode_every_split(bytes, limit).1 {
            Err(err) => err,
            Ok(()) => panic!("expected a decode error"),
        }
    }

    /// Parses a server frame produced by the encoders: (first byte, payload).
    fn parse_server_frame(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[1] & MASK_BIT, 0, "server frames are never masked");
        let (len, at) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), at + len, "exactly one frame");
        (frame[0], frame[at..].to_vec())
    }

    #[test]
    fn partial_names_the_unfinished_unit() {
        let mut decoder = Decoder::new(LIMIT);
        let mut out = Vec::new();
        assert_eq!(decoder.partial(), None);

        // A fragmented message with a ping inside is one unit until its last fragment.
        decoder
            .feed(&client_frame(OP_TEXT, b"{\"a\":"), &mut out)
            .expect("valid");
        let unit = decoder.partial().expect("a message in progress");
        decoder
            .feed(&client_frame(fin(OP_PING), b"p"), &mut out)
            .expect("valid");
        let half = client_frame(OP_CONTINUATION, b"1");
        decoder.feed(&half[..3], &mut out).expect("valid");
        assert_eq!(decoder.partial(), Some(unit));
        decoder.feed(&half[3..], &mut out).expect("valid");
        assert_eq!(decoder.partial(), Some(unit));
        decoder
            .feed(&client_frame(fin(OP_CONTINUATION), b"}"), &mut out)
            .expect("valid");
        assert_eq!(decoder.partial(), None);

        // The next unit gets another number, also when it starts in the same input that
        // finished the previous one.
        let mut input = client_frame(fin(OP_TEXT), b"{}");
        input.extend_from_slice(&client_frame(fin(OP_TEXT), b"{}")[..3]);
        decoder.feed(&input, &mut out).expect("valid");
        let next = decoder.partial().expect("a frame in progress");
        assert_ne!(next, unit);

        // The first frame of a message is held at its announced size from its header on.
        let mut decoder = Decoder::new(LIMIT);
        decoder
            .feed(&client_frame(OP_BINARY, &[7; 900])[..8], &mut out)
            .expect("valid");
        assert_eq!(decoder.buffered_bytes(), 900);
        decoder.discard();
        assert_eq!((decoder.buffered_bytes(), decoder.partial()), (0, None));
        assert!(decoder.feed(b"x", &mut out).is_err(), "discarded for good");
    }

    #[test]
    fn decoder_is_small() {
        assert!(std::mem::size_of::<Decoder>() <= 80);
        assert_eq!(std::mem::size_of::<Decoder>(), 72);
    }

    #[test]
    fn round_trips_every_length_class() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (out, result) = decode_all(&client_frame(fin(OP_BINARY), &payload), LIMIT);
            assert_eq!(result, Ok(()));
            assert_eq!(out, vec![Message::Binary(payload.clone())], "len {len}");

            let encoded = encode_binary(&payload);
            assert_eq!(encoded.len(), header_len(len) + len);
            let (first, body) = parse_server_frame(&encoded);
            assert_eq!(first, fin(OP_BINARY));
            assert_eq!(body, payload);
        }
        // The length classes switch encoding exactly at the RFC boundaries.
        assert_eq!(encode_binary(&[0; 125])[1], 125);
        assert_eq!(encode_binary(&[0; 126])[1], 126);
        assert_eq!(encode_binary(&[0; 65535])[1], 126);
        assert_eq!(encode_binary(&[0; 65536])[1], 127);
    }

    #[test]
    fn text_round_trip_and_masking() {
        let frame = client_frame(fin(OP_TEXT), "héllo wörld".as_bytes());
        // The masked bytes on the wire differ from the payload.
        assert_ne!(&frame[6..], "héllo wörld".as_bytes());
        assert_eq!(
            decode_ok(&frame),
            vec![Message::Text("héllo wörld".as_bytes().to_vec())]
        );
        let (first, body) = parse_server_frame(&encode_text(b"hi"));
        assert_eq!((first, body), (0x81, b"hi".to_vec()));
    }

    #[test]
    fn rfc_masked_hello_example() {
        // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(decode_ok(&frame), vec![Message::Text(b"Hello".to_vec())]);
        assert_eq!(
            &encode_text(b"Hello")[..],
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn unmask_handles_every_alignment() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut masked = data.clone();
            unmask(&mut masked, MASK);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(masked, expected);
        }
    }

    #[test]
    fn control_frames_round_trip() {
        let mut bytes = client_frame(fin(OP_PING), b"are you there");
        bytes.extend(client_frame(fin(OP_PONG), b""));
        bytes.extend(client_frame(fin(OP_PING), &[7; 125]));
        bytes.extend(client_frame(fin(OP_CLOSE), &[0x03, 0xE8, b'b', b'y', b'e']));
        assert_eq!(
            decode_ok(&bytes),
            vec![
                Message::Ping(b"are you there".to_vec()),
                Message::Pong(Vec::new()),
                Message::Ping(vec![7; 125]),
                Message::Close {
                    code: Some(CLOSE_NORMAL),
                    reason: "bye".to_owned()
                },
            ]
        );
        assert_eq!(
            decode_ok(&client_frame(fin(OP_CLOSE), b"")),
            vec![Message::Close {
                code: None,
                reason: String::new()
            }]
        );
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut bytes = client_frame(OP_TEXT, "frag".as_bytes());
        bytes.extend(client_frame(fin(OP_PING), b"p"));
        bytes.extend(client_frame(OP_CONTINUATION, "mén".as_bytes()));
        bytes.extend(client_frame(OP_CONTINUATION, b""));
        bytes.extend(client_frame(fin(OP_PONG), b""));
        bytes.extend(client_frame(fin(OP_CONTINUATION), b"ted"));
        bytes.extend(client_frame(OP_BINARY, &[1, 2]));
        bytes.extend(client_frame(fin(OP_CONTINUATION), &[3]));
        assert_eq!(
            decode_ok(&bytes),
            vec![
                Message::Ping(b"p".to_vec()),
                Message::Pong(Vec::new()),
                Message::Text("fragménted".as_bytes().to_vec()),
                Message::Binary(vec![1, 2, 3]),
            ]
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        // "é" is two bytes; each fragment alone is invalid UTF-8 but the message is fine.
        let e = "é".as_bytes();
        let mut bytes = client_frame(OP_TEXT, &e[..1]);
        bytes.extend(client_frame(fin(OP_CONTINUATION), &e[1..]));
        assert_eq!(decode_ok(&bytes), vec![Message::Text(e.to_vec())]);
    }

    #[test]
    fn split_everywhere_mixed_stream() {
        let mut bytes = client_frame(fin(OP_TEXT), b"{\"event\":\"pusher:ping\"}");
        bytes.extend(client_frame(OP_BINARY, &[9; 130]));
        bytes.extend(client_frame(fin(OP_PING), b"x"));
        bytes.extend(client_frame(fin(OP_CONTINUATION), &[8; 3]));
        bytes.extend(client_frame(fin(OP_TEXT), b""));
        bytes.extend(client_frame(fin(OP_CLOSE), &[0x0F, 0xA0]));
        let mut expected_binary = vec![9; 130];
        expected_binary.extend([8; 3]);
        assert_eq!(
            decode_ok(&bytes),
            vec![
                Message::Text(b"{\"event\":\"pusher:ping\"}".to_vec()),
                Message::Ping(b"x".to_vec()),
                Message::Binary(expected_binary),
                Message::Text(Vec::new()),
                Message::Close {
                    code: Some(4000),
                    reason: String::new()
                },
            ]
        );
    }

    #[test]
    fn split_everywhere_short_stream_three_ways() {
        let mut bytes = client_frame(OP_TEXT, b"ab");
        bytes.extend(client_frame(fin(OP_PING), b"c"));
        bytes.extend(client_frame(fin(OP_CONTINUATION), b"d"));
        bytes.extend(client_frame(fin(OP_BINARY), b"e"));
        assert!(bytes.len() <= 64);
        assert_eq!(
            decode_ok(&bytes),
            vec![
                Message::Ping(b"c".to_vec()),
                Message::Text(b"abd".to_vec()),
                Message::Binary(b"e".to_vec()),
            ]
        );
    }

    #[test]
    fn split_everywhere_large_lengths() {
        let mut bytes = client_frame(fin(OP_BINARY), &[1; 300]);
        bytes.extend(client_frame(fin(OP_BINARY), &[2; 65536]));
        let (out, result) = {
            // Every split of a 65 KiB stream is too slow for a unit test, so split at every
            // point of the headers and at a stride through the payload.
            let expected = decode_all(&bytes, LIMIT);
            for i in (0..bytes.len()).filter(|i| *i < 320 || i % 997 == 0 || *i > bytes.len() - 20)
            {
                let mut decoder = Decoder::new(LIMIT);
                let mut out = Vec::new();
                decoder.feed(&bytes[..i], &mut out).expect("first part");
                decoder.feed(&bytes[i..], &mut out).expect("second part");
                assert_eq!(out, expected.0, "split at {i}");
            }
            expected
        };
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            vec![
                Message::Binary(vec![1; 300]),
                Message::Binary(vec![2; 65536])
            ]
        );
    }

    #[test]
    fn memory_is_released_after_each_message() {
        let mut decoder = Decoder::new(LIMIT);
        let mut out = Vec::new();
        assert_eq!(decoder.buffered_bytes(), 0);

        // Half a frame is held, then released when the frame completes.
        let frame = client_frame(fin(OP_TEXT), &[b'a'; 1000]);
        decoder.feed(&frame[..500], &mut out).expect("valid");
        assert!(decoder.buffered_bytes() >= 500 - 8);
        decoder.feed(&frame[500..], &mut out).expect("valid");
        assert_eq!(out.len(), 1);
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.message.capacity(), 0);
        assert_eq!(decoder.pending.capacity(), 0);

        // A header split in two is held only until it completes.
        let frame = client_frame(fin(OP_BINARY), &[1; 200]);
        decoder.feed(&frame[..2], &mut out).expect("valid");
        assert!(decoder.buffered_bytes() > 0);
        decoder.feed(&frame[2..], &mut out).expect("valid");
        assert_eq!(decoder.buffered_bytes(), 0);

        // A fragmented message is held between fragments, then released.
        decoder
            .feed(&client_frame(OP_BINARY, &[1; 10]), &mut out)
            .expect("valid");
        assert!(decoder.buffered_bytes() >= 10);
        decoder
            .feed(&client_frame(fin(OP_CONTINUATION), &[2; 10]), &mut out)
            .expect("valid");
        assert_eq!(decoder.buffered_bytes(), 0);

        // A control frame split mid-payload is held, then released.
        let frame = client_frame(fin(OP_PING), &[3; 50]);
        decoder.feed(&frame[..20], &mut out).expect("valid");
        assert!(decoder.buffered_bytes() > 0);
        decoder.feed(&frame[20..], &mut out).expect("valid");
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.message.capacity() + decoder.pending.capacity(), 0);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn control_payload_after_a_header_boundary_leaves_no_buffer() {
        // The header ends exactly at the end of a read, and the payload then arrives whole.
        let frame = client_frame(fin(OP_PING), b"ping");
        let mut decoder = Decoder::new(LIMIT);
        let mut out = Vec::new();
        decoder.feed(&frame[..6], &mut out).expect("valid");
        assert_eq!(decoder.buffered_bytes(), 0);
        decoder.feed(&frame[6..], &mut out).expect("valid");
        assert_eq!(out, vec![Message::Ping(b"ping".to_vec())]);
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn whole_frame_output_is_exactly_sized() {
        // The fast path copies the payload once into a Vec of exactly its size.
        let (out, _) = decode_all(&client_frame(fin(OP_BINARY), &[5; 1000]), LIMIT);
        match &out[0] {
            Message::Binary(payload) => assert_eq!(payload.capacity(), 1000),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unmasked_frames() {
        let err = decode_err(&[0x81, 0x02, b'h', b'i'], LIMIT);
        assert_eq!(err, DecodeError::protocol("client frame is not masked"));
    }

    #[test]
    fn rejects_reserved_bits() {
        for rsv in [0x40, 0x20, 0x10] {
            let err = decode_err(&client_frame(fin(OP_TEXT) | rsv, b"x"), LIMIT);
            assert_eq!(err.close_code, CLOSE_PROTOCOL_ERROR);
            assert_eq!(
                err.reason,
                "reserved bits set without a negotiated extension"
            );
        }
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let err = decode_err(&client_frame(fin(opcode), b""), LIMIT);
            assert_eq!(
                err,
                DecodeError::protocol("reserved opcode"),
                "opcode {opcode}"
            );
        }
    }

    #[test]
    fn rejects_bad_control_frames() {
        for opcode in [OP_CLOSE, OP_PING, OP_PONG] {
            let err = decode_err(&client_frame(opcode, b""), LIMIT);
            assert_eq!(err, DecodeError::protocol("fragmented control frame"));
            let err = decode_err(&client_frame(fin(opcode), &[0x03; 126]), LIMIT);
            assert_eq!(
                err,
                DecodeError::protocol("control frame payload longer than 125 bytes")
            );
        }
    }

    #[test]
    fn rejects_bad_fragmentation() {
        let err = decode_err(&client_frame(fin(OP_CONTINUATION), b"x"), LIMIT);
        assert_eq!(
            err,
            DecodeError::protocol("continuation frame without a message in progress")
        );
        let mut bytes = client_frame(OP_TEXT, b"a");
        bytes.extend(client_frame(fin(OP_BINARY), b"b"));
        let err = decode_err(&bytes, LIMIT);
        assert_eq!(
            err,
            DecodeError::protocol("new data frame while a fragmented message is in progress")
        );
        // A continuation after a completed message is just as wrong.
        let mut bytes = client_frame(fin(OP_TEXT), b"a");
        bytes.extend(client_frame(fin(OP_CONTINUATION), b"b"));
        let (out, result) = decode_every_split(&bytes, LIMIT);
        assert_eq!(out, vec![Message::Text(b"a".to_vec())]);
        assert_eq!(result.map_err(|e| e.close_code), Err(CLOSE_PROTOCOL_ERROR));
    }

    #[test]
    fn rejects_oversized_messages_on_the_header() {
        let too_big = DecodeError::too_big("message exceeds the size limit");
        assert_eq!(
            decode_err(&client_frame(fin(OP_TEXT), &[b'a'; 11]), 10),
            too_big
        );
        // Exactly at the limit is fine.
        assert_eq!(
            decode_all(&client_frame(fin(OP_TEXT), &[b'a'; 10]), 10).1,
            Ok(())
        );
        // The reassembled size counts, not the frame size.
        let mut bytes = client_frame(OP_BINARY, &[0; 6]);
        bytes.extend(client_frame(fin(OP_CONTINUATION), &[0; 5]));
        assert_eq!(decode_err(&bytes, 10), too_big);

        // Only the header of a huge frame is needed to refuse it; nothing is buffered.
        let mut decoder = Decoder::new(1024);
        let mut out = Vec::new();
        let header = [0x82, MASK_BIT | 127, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(decoder.feed(&header, &mut out), Err(too_big));
        assert_eq!(decoder.buffered_bytes(), 0);
        let header16 = [0x82, MASK_BIT | 126, 0x10, 0x00];
        assert_eq!(decode_err(&header16, 1024).close_code, CLOSE_TOO_BIG);
    }

    #[test]
    fn rejects_64_bit_length_with_msb_set() {
        let header = [0x82, MASK_BIT | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4];
        assert_eq!(
            decode_err(&header, usize::MAX),
            DecodeError::protocol("64-bit payload length has its most significant bit set")
        );
    }

    #[test]
    fn accepts_non_minimal_lengths() {
        // A 3-byte payload announced with the 16-bit and with the 64-bit length forms.
        let payload = [b'a' ^ MASK[0], b'b' ^ MASK[1], b'c' ^ MASK[2]];
        let mut bytes = vec![0x81, MASK_BIT | 126, 0, 3];
        bytes.extend(MASK);
        bytes.extend(payload);
        bytes.extend([0x81, MASK_BIT | 127, 0, 0, 0, 0, 0, 0, 0, 3]);
        bytes.extend(MASK);
        bytes.extend(payload);
        assert_eq!(
            decode_ok(&bytes),
            vec![
                Message::Text(b"abc".to_vec()),
                Message::Text(b"abc".to_vec())
            ]
        );
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        let err = decode_err(&client_frame(fin(OP_TEXT), &[0xC3, 0x28]), LIMIT);
        assert_eq!(
            err,
            DecodeError::invalid_payload("text message is not valid UTF-8")
        );
        // A message that ends in the middle of a character is invalid too.
        let mut bytes = client_frame(OP_TEXT, b"ok");
        bytes.extend(client_frame(fin(OP_CONTINUATION), &[0xE2, 0x82]));
        assert_eq!(decode_err(&bytes, LIMIT).close_code, CLOSE_INVALID_PAYLOAD);
        // Binary messages are not checked.
        assert_eq!(
            decode_ok(&client_frame(fin(OP_BINARY), &[0xC3, 0x28])),
            vec![Message::Binary(vec![0xC3, 0x28])]
        );
    }

    #[test]
    fn close_payload_rules() {
        let err = decode_err(&client_frame(fin(OP_CLOSE), &[0x03]), LIMIT);
        assert_eq!(
            err,
            DecodeError::protocol("close frame payload of one byte")
        );
        for code in [
            0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let err = decode_err(&client_frame(fin(OP_CLOSE), &code.to_be_bytes()), LIMIT);
            assert_eq!(
                err,
                DecodeError::protocol("invalid close code"),
                "code {code}"
            );
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(
                decode_ok(&client_frame(fin(OP_CLOSE), &code.to_be_bytes())),
                vec![Message::Close {
                    code: Some(code),
                    reason: String::new()
                }]
            );
        }
        let err = decode_err(&client_frame(fin(OP_CLOSE), &[0x03, 0xE8, 0xFF]), LIMIT);
        assert_eq!(
            err,
            DecodeError::invalid_payload("close reason is not valid UTF-8")
        );
    }

    #[test]
    fn errors_are_reported_as_soon_as_possible() {
        // The unmasked bit is refused on the second byte, with no need for the rest.
        let mut decoder = Decoder::new(LIMIT);
        let mut out = Vec::new();
        assert_eq!(decoder.feed(&[0x81], &mut out), Ok(()));
        assert_eq!(
            decoder.feed(&[0x05], &mut out),
            Err(DecodeError::protocol("client frame is not masked"))
        );
        // A reserved opcode is refused on the first byte.
        let mut decoder = Decoder::new(LIMIT);
        assert_eq!(
            decoder.feed(&[0x83], &mut out),
            Err(DecodeError::protocol("reserved opcode"))
        );
    }

    #[test]
    fn decoder_is_poisoned_after_an_error() {
        let mut decoder = Decoder::new(4);
        let mut out = Vec::new();
        decoder
            .feed(&client_frame(OP_BINARY, &[1, 2, 3]), &mut out)
            .expect("valid");
        assert!(decoder.buffered_bytes() > 0);
        let err = decoder.feed(&client_frame(fin(OP_CONTINUATION), &[4, 5]), &mut out);
        assert_eq!(err.map_err(|e| e.close_code), Err(CLOSE_TOO_BIG));
        assert_eq!(decoder.buffered_bytes(), 0);
        let again = decoder.feed(&client_frame(fin(OP_BINARY), &[1]), &mut out);
        assert_eq!(again.map_err(|e| e.close_code), Err(CLOSE_PROTOCOL_ERROR));
        assert!(out.is_empty());
    }

    #[test]
    fn encode_control_frames() {
        let (first, body) = parse_server_frame(&encode_ping(b"abc"));
        assert_eq!((first, body), (fin(OP_PING), b"abc".to_vec()));
        let (first, body) = parse_server_frame(&encode_pong(&[1; 200]));
        assert_eq!((first, body.len()), (fin(OP_PONG), 125));
        let (_, body) = parse_server_frame(&encode_ping(&[1; 200]));
        assert_eq!(body.len(), 125);
        let (first, body) = parse_server_frame(&encode_close(CLOSE_GOING_AWAY, "bye"));
        assert_eq!(first, fin(OP_CLOSE));
        assert_eq!(body, &[0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn encode_close_truncates_reason_on_char_boundary() {
        let ascii = "a".repeat(200);
        let (_, body) = parse_server_frame(&encode_close(CLOSE_POLICY, &ascii));
        assert_eq!(body.len(), 125);
        assert_eq!(&body[2..], "a".repeat(123).as_bytes());

        // Two-byte characters: the one at bytes 122..124 straddles the limit and is dropped.
        let reason = "é".repeat(70);
        let (_, body) = parse_server_frame(&encode_close(CLOSE_POLICY, &reason));
        assert_eq!(body.len(), 2 + 122);
        let kept = std::str::from_utf8(&body[2..]).expect("truncated on a boundary");
        assert_eq!(kept, "é".repeat(61));

        // Shifted by one byte, the limit falls on a boundary and all 123 bytes are kept.
        let reason = format!("a{}", "é".repeat(70));
        let (_, body) = parse_server_frame(&encode_close(CLOSE_POLICY, &reason));
        assert_eq!(body.len(), 2 + 123);
        let kept = std::str::from_utf8(&body[2..]).expect("truncated on a boundary");
        assert_eq!(kept, format!("a{}", "é".repeat(61)));

        // A four-byte character straddling the limit is dropped too.
        let reason = format!("{}😀", "a".repeat(121));
        let (_, body) = parse_server_frame(&encode_close(CLOSE_NORMAL, &reason));
        assert_eq!(&body[2..], "a".repeat(121).as_bytes());
    }

    #[test]
    fn write_header_matches_header_len() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 33] {
            let mut out = BytesMut::new();
            write_header(&mut out, OP_TEXT, len);
            assert_eq!(out.len(), header_len(len), "len {len}");
            assert_eq!(out[0], 0x81);
        }
        let mut out = BytesMut::new();
        write_header(&mut out, OP_BINARY, 1 << 33);
        assert_eq!(&out[..], &[0x82, 127, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn our_frames_decode_back() {
        // Masking our own server frames turns them into client frames the decoder accepts.
        for frame in [
            encode_text(b"hello"),
            encode_binary(&[0; 300]),
            encode_close(1000, "x"),
        ] {
            let (first, body) = parse_server_frame(&frame);
            let (out, result) = decode_all(&client_frame(first, &body), LIMIT);
            assert_eq!(result, Ok(()));
            assert_eq!(out.len(), 1);
        }
    }

    mod tungstenite_interop {
        use super::*;
        use std::io::Cursor;
        use tungstenite::Message as TMessage;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::{Frame, Utf8Bytes};
        use tungstenite::protocol::{CloseFrame, Role, WebSocket};

        /// Everything a tungstenite client writes for `messages`.
        fn client_bytes(messages: Vec<TMessage>) -> Vec<u8> {
            let mut ws = WebSocket::from_raw_socket(Cursor::new(Vec::new()), Role::Client, None);
            for message in messages {
                ws.send(message).expect("write to a Vec");
            }
            ws.get_ref().get_ref().clone()
        }

        #[test]
        fn decodes_tungstenite_client_messages() {
            let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
            let bytes = client_bytes(vec![
                TMessage::text("hello from tungstenite"),
                TMessage::binary(big.clone()),
                TMessage::Ping(b"ping".to_vec().into()),
                TMessage::Pong(Vec::new().into()),
                TMessage::text("x".repeat(300)),
                TMessage::Close(Some(CloseFrame {
                    code: 4001.into(),
                    reason: Utf8Bytes::from_static("done"),
                })),
            ]);
            let expected = vec![
                Message::Text(b"hello from tungstenite".to_vec()),
                Message::Binary(big),
                Message::Ping(b"ping".to_vec()),
                Message::Pong(Vec::new()),
                Message::Text(vec![b'x'; 300]),
                Message::Close {
                    code: Some(4001),
                    reason: "done".to_owned(),
                },
            ];
            assert_eq!(decode_all(&bytes, LIMIT), (expected.clone(), Ok(())));
            // The same bytes in small uneven reads decode the same.
            let mut decoder = Decoder::new(LIMIT);
            let mut out = Vec::new();
            for piece in bytes.chunks(1013) {
                decoder.feed(piece, &mut out).expect("valid");
            }
            assert_eq!(out, expected);
        }

        #[test]
        fn decodes_tungstenite_fragments() {
            let mut bytes = Vec::new();
            let frames = [
                Frame::message(b"Hel".to_vec(), OpCode::Data(Data::Text), false),
                Frame::ping(b"between".to_vec()),
                Frame::message(b"lo".to_vec(), OpCode::Data(Data::Continue), true),
            ];
            for (i, mut frame) in frames.into_iter().enumerate() {
                frame.header_mut().mask = Some([i as u8 + 1, 0xA5, 0x5A, 0xFF]);
                frame.format(&mut bytes).expect("write to a Vec");
            }
            assert_eq!(
                decode_every_split(&bytes, LIMIT),
                (
                    vec![
                        Message::Ping(b"between".to_vec()),
                        Message::Text(b"Hello".to_vec())
                    ],
                    Ok(())
                )
            );
        }

        #[test]
        fn tungstenite_client_reads_our_frames() {
            let mut stream = Vec::new();
            stream.extend_from_slice(&encode_text(b"hi"));
            stream.extend_from_slice(&encode_binary(&[7; 70_000]));
            stream.extend_from_slice(&encode_ping(b"p"));
            stream.extend_from_slice(&encode_close(CLOSE_GOING_AWAY, "shutting down"));
            let mut ws = WebSocket::from_raw_socket(Cursor::new(stream), Role::Client, None);
            assert_eq!(ws.read().expect("text"), TMessage::text("hi"));
            assert_eq!(
                ws.read().expect("binary"),
                TMessage::binary(vec![7; 70_000])
            );
            assert_eq!(
                ws.read().expect("ping"),
                TMessage::Ping(b"p".to_vec().into())
            );
            match ws.read().expect("close") {
                TMessage::Close(Some(frame)) => {
                    assert_eq!(u16::from(frame.code), CLOSE_GOING_AWAY);
                    assert_eq!(frame.reason.as_str(), "shutting down");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
