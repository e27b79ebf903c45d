//! Sans-IO client-side wire formats of the load generator: the WebSocket upgrade request and
//! its answer, masked client frames and a decoder for the (unmasked) frames a server sends, the
//! Pusher messages a subscriber sends, the HTTP/1.1 response parser of the publisher, a REST
//! signer that writes into reused buffers, and the fixed-layout stamp (`seq`, intended send
//! time, ramp step) carried in each published event's data and found again without JSON parsing.
//! It must not do IO, read the clock or keep per-connection state: the engine owns all of that.
//! Nothing here allocates per message once the caller's buffers have grown.

use std::io::Write;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use memchr::memmem;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// Opcodes of RFC 6455 frames.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The largest server message the generator accepts (a bound on a connection's buffer).
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The largest HTTP response head (upgrade answer or REST response) accepted.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;

/// The stamp at the start of every published event's data string:
/// `rcb:` + 12-digit sequence + `:` + 20-digit intended send time (ns on the generator's
/// monotonic clock) + `:` + 3-digit ramp step + `:`. Padding (`x`) follows up to the payload size.
pub const STAMP_MARKER: &[u8] = b"rcb:";
const SEQ_DIGITS: usize = 12;
const TIME_DIGITS: usize = 20;
const STEP_DIGITS: usize = 3;
const SEQ_AT: usize = STAMP_MARKER.len();
const TIME_AT: usize = SEQ_AT + SEQ_DIGITS + 1;
const STEP_AT: usize = TIME_AT + TIME_DIGITS + 1;
/// Length of the stamp; the smallest payload the generator sends.
pub const STAMP_LEN: usize = STEP_AT + STEP_DIGITS + 1;
/// Largest sequence number the stamp can carry.
pub const SEQ_MAX: u64 = 999_999_999_999;

/// What the stamp of one delivered event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publish's global sequence number (publish `seq` goes to channel `seq % channels`).
    pub seq: u64,
    /// The intended send time, ns since the generator's clock origin.
    pub sent_ns: u64,
    /// The ramp step the publish belongs to (0 outside `--rate max`).
    pub step: u32,
}

/// A data string of `size` bytes (at least [`STAMP_LEN`]): a zeroed stamp and `x` padding.
pub fn payload_template(size: usize) -> Vec<u8> {
    let mut data = vec![b'x'; size.max(STAMP_LEN)];
    data[..STAMP_LEN].fill(b'0');
    data[..SEQ_AT].copy_from_slice(STAMP_MARKER);
    data[TIME_AT - 1] = b':';
    data[STEP_AT - 1] = b':';
    data[STAMP_LEN - 1] = b':';
    data
}

/// Writes `stamp` over the stamp area of a [`payload_template`].
pub fn write_stamp(data: &mut [u8], stamp: Stamp) {
    write_digits(&mut data[SEQ_AT..SEQ_AT + SEQ_DIGITS], stamp.seq);
    write_digits(&mut data[TIME_AT..TIME_AT + TIME_DIGITS], stamp.sent_ns);
    write_digits(
        &mut data[STEP_AT..STEP_AT + STEP_DIGITS],
        u64::from(stamp.step),
    );
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn read_digits(digits: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some(value)
}

/// Finds the stamp in a delivered message without parsing its JSON (`finder` searches for
/// [`STAMP_MARKER`]). `None` when the message carries no well-formed stamp.
pub fn find_stamp(message: &[u8], finder: &memmem::Finder<'_>) -> Option<Stamp> {
    let at = finder.find(message)?;
    let stamp = message.get(at..at + STAMP_LEN)?;
    if stamp[TIME_AT - 1] != b':' || stamp[STEP_AT - 1] != b':' || stamp[STAMP_LEN - 1] != b':' {
        return None;
    }
    Some(Stamp {
        seq: read_digits(&stamp[SEQ_AT..SEQ_AT + SEQ_DIGITS])?,
        sent_ns: read_digits(&stamp[TIME_AT..TIME_AT + TIME_DIGITS])?,
        step: read_digits(&stamp[STEP_AT..STEP_AT + STEP_DIGITS])? as u32,
    })
}

/// The WebSocket upgrade request for `/app/{key}` (protocol 7), as pusher-js sends it.
pub fn upgrade_request(host_header: &str, key: &str) -> Vec<u8> {
    format!(
        "GET /app/{key}?protocol=7&client=ringcast-bench&version={}&flash=false HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// The outcome of looking at the start of an upgrade answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The head has not fully arrived.
    Partial,
    /// `101 Switching Protocols`; frames start at this offset.
    Switched(usize),
    /// Any other status (0 when the head is not HTTP), and its `Retry-After` in seconds.
    Refused(u16, Option<u32>),
}

/// Looks for a complete upgrade answer at the start of `input`.
pub fn parse_upgrade(input: &[u8]) -> Upgrade {
    let Some(end) = memmem::find(input, b"\r\n\r\n") else {
        return if input.len() > HEAD_BYTES_MAX {
            Upgrade::Refused(0, None)
        } else {
            Upgrade::Partial
        };
    };
    let status = status_of(&input[..end]);
    if status == 101 {
        Upgrade::Switched(end + 4)
    } else {
        Upgrade::Refused(status, retry_after(&input[..end]))
    }
}

/// The `Retry-After` header of a response head, when it is a number of seconds.
fn retry_after(head: &[u8]) -> Option<u32> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"retry-after") {
            return None;
        }
        let value = line[colon + 1..].trim_ascii();
        (!value.is_empty() && value.len() <= 9)
            .then(|| read_digits(value))
            .flatten()
            .map(|secs| secs as u32)
    })
}

/// The status code of an HTTP/1.x status line at the start of `head` (0 if malformed).
fn status_of(head: &[u8]) -> u16 {
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return 0;
    }
    read_digits(&head[9..12]).map_or(0, |status| status as u16)
}

/// A parsed server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of header (the payload starts here).
    pub header_len: usize,
    pub payload_len: usize,
}

/// Why the server's bytes are not a frame this client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A masked frame (servers must not mask), reserved bits, or an unknown opcode.
    Protocol,
    /// A message over [`MESSAGE_BYTES_MAX`].
    TooBig,
}

/// Parses the frame header at the start of `input`; `Ok(None)` when it has not fully arrived.
pub fn parse_frame_header(input: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let [first, second, ..] = *input else {
        return Ok(None);
    };
    if first & 0x70 != 0 || second & 0x80 != 0 {
        return Err(FrameError::Protocol);
    }
    let opcode = first & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::Protocol);
    }
    let (header_len, payload_len) = match second & 0x7F {
        126 => match input.get(2..4) {
            Some(len) => (4, usize::from(u16::from_be_bytes([len[0], len[1]]))),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(len) => {
                let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
                (10, usize::try_from(len).unwrap_or(usize::MAX))
            }
            None => return Ok(None),
        },
        short => (2, usize::from(short)),
    };
    if payload_len > MESSAGE_BYTES_MAX {
        return Err(FrameError::TooBig);
    }
    Ok(Some(FrameHeader {
        fin: first & 0x80 != 0,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Appends one masked FIN client frame of `opcode` with `payload` to `out`.
pub fn write_masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4]),
    );
}

/// The `pusher:subscribe` message for a public channel.
pub fn subscribe_message(out: &mut Vec<u8>, channel: &str) {
    out.clear();
    out.extend_from_slice(br#"{"event":"pusher:subscribe","data":{"auth":"","channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#""}}"#);
}

/// The answer to a server's `pusher:ping`.
pub const PUSHER_PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// The code of a close frame's payload (1005 when it carries none).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 1005,
    }
}

/// The `"code":N` of a `pusher:error` message, if any.
pub fn pusher_error_code(message: &[u8]) -> Option<u16> {
    let at = memmem::find(message, b"\"code\":")? + 7;
    let digits: Vec<u8> = message[at..]
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    read_digits(&digits).and_then(|code| u16::try_from(code).ok())
}

/// The outcome of looking at the start of an HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Partial,
    /// A complete response of `len` bytes; `close` when the server will close the connection.
    Complete {
        status: u16,
        len: usize,
        close: bool,
    },
    Malformed,
}

/// Parses one complete HTTP/1.1 response (Content-Length or chunked body) at the start of `input`.
pub fn parse_response(input: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > HEAD_BYTES_MAX => {
            return Response::Malformed;
        }
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(_) => return Response::Malformed,
    };
    let status = response.code.unwrap_or(0);
    let mut content_length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            if content_length.is_none() {
                return Response::Malformed;
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header.value.eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = &input[head_len..];
    let body_len = if chunked {
        match chunked_len(body) {
            Some(Some(len)) => len,
            Some(None) => return Response::Partial,
            None => return Response::Malformed,
        }
    } else {
        let len = content_length.unwrap_or(0);
        if len > MESSAGE_BYTES_MAX {
            return Response::Malformed;
        }
        if body.len() < len {
            return Response::Partial;
        }
        len
    };
    Response::Complete {
        status,
        len: head_len + body_len,
        close,
    }
}

/// Length of a complete chunked body (`Some(None)`: not complete yet; `None`: malformed).
fn chunked_len(body: &[u8]) -> Option<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(line_end) = memmem::find(&body[at..], b"\r\n") else {
            return Some(None);
        };
        let line = &body[at..at + line_end];
        let size_text = line.split(|b| *b == b';').next().unwrap_or(line);
        let size = usize::from_str_radix(std::str::from_utf8(size_text).ok()?.trim(), 16).ok()?;
        if size > MESSAGE_BYTES_MAX {
            return None;
        }
        at += line_end + 2;
        if size == 0 {
            // No trailers are expected; the body ends with an empty line.
            return Some(if body.len() >= at + 2 {
                Some(at + 2)
            } else {
                None
            });
        }
        if body.len() < at + size + 2 {
            return Some(None);
        }
        at += size + 2;
    }
}

/// Characters left unescaped in query values: RFC 3986 unreserved, as `sign_query` does.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Signs `POST /apps/{id}/events` requests exactly as
/// [`crate::http::signature::sign_query`] does (same parameters, same order, same encoding),
/// but into reused buffers and with the HMAC key schedule computed once, so that a publish
/// costs two hashes and no allocation.
pub struct Signer {
    mac: Hmac<Sha256>,
    /// `POST\n{path}\nauth_key={key}&auth_timestamp=`.
    to_sign_prefix: Vec<u8>,
    /// `auth_key={percent-encoded key}&auth_timestamp=`.
    query_prefix: Vec<u8>,
    scratch: Vec<u8>,
}

impl Signer {
    pub fn new(path: &str, key: &str, secret: &str) -> Signer {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        Signer {
            mac,
            to_sign_prefix: format!("POST\n{path}\nauth_key={key}&auth_timestamp=").into_bytes(),
            query_prefix: format!(
                "auth_key={}&auth_timestamp=",
                utf8_percent_encode(key, QUERY_VALUE)
            )
            .into_bytes(),
            scratch: Vec::new(),
        }
    }

    /// Appends the signed query string (without `?`) for a POST of `body` at `timestamp`.
    pub fn write_query(&mut self, body: &[u8], timestamp: u64, out: &mut Vec<u8>) {
        let mut md5_hex = [0u8; 32];
        hex::encode_to_slice(Md5::digest(body), &mut md5_hex).expect("32 hex digits");
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.extend_from_slice(&self.to_sign_prefix);
        let _ = write!(scratch, "{timestamp}&auth_version=1.0");
        if !body.is_empty() {
            scratch.extend_from_slice(b"&body_md5=");
            scratch.extend_from_slice(&md5_hex);
        }
        let mut mac = self.mac.clone();
        mac.update(scratch);
        let mut signature = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut signature).expect("64 hex digits");

        out.extend_from_slice(&self.query_prefix);
        let _ = write!(out, "{timestamp}&auth_version=1.0");
        if !body.is_empty() {
            out.extend_from_slice(b"&body_md5=");
            out.extend_from_slice(&md5_hex);
        }
        out.extend_from_slice(b"&auth_signature=");
        out.extend_from_slice(&signature);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_is_found_inside_an_event() {
        let mut data = payload_template(100);
        assert_eq!(data.len(), 100);
        let stamp = Stamp {
            seq: 123_456,
            sent_ns: 98_765_432_101_234,
            step: 7,
        };
        write_stamp(&mut data, stamp);
        let text = std::str::from_utf8(&data).unwrap();
        let event = crate::protocol::outbound::channel_event(
            "bench",
            "rcb-1-0",
            &crate::protocol::outbound::json_string(text),
        );
        let finder = memmem::Finder::new(STAMP_MARKER);
        assert_eq!(find_stamp(event.as_bytes(), &finder), Some(stamp));
        assert_eq!(find_stamp(b"{\"event\":\"x\"}", &finder), None);
        assert_eq!(payload_template(1).len(), STAMP_LEN);
    }

    #[test]
    fn signer_matches_sign_query() {
        for body in [&b"{\"name\":\"e\"}"[..], b""] {
            let expected = crate::http::signature::sign_query(
                "POST",
                "/apps/123456/events",
                &[],
                body,
                "app key+/",
                "app-secret",
                1_700_000_000,
            );
            let mut signer = Signer::new("/apps/123456/events", "app key+/", "app-secret");
            let mut out = Vec::new();
            signer.write_query(body, 1_700_000_000, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn server_frames_decode_and_client_frames_are_masked() {
        let frame = crate::ws::frame::encode_text(&[b'a'; 300]);
        let header = parse_frame_header(&frame).unwrap().unwrap();
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                opcode: OP_TEXT,
                header_len: 4,
                payload_len: 300
            }
        );
        assert_eq!(parse_frame_header(&frame[..3]), Ok(None));
        let mut out = Vec::new();
        write_masked_frame(&mut out, OP_TEXT, b"hello", [1, 2, 3, 4]);
        let mut decoder = crate::ws::frame::Decoder::new(1024);
        let mut messages = Vec::new();
        decoder.feed(&out, &mut messages).unwrap();
        assert_eq!(
            messages,
            vec![crate::ws::frame::Message::Text(b"hello".to_vec())]
        );
        assert_eq!(
            parse_frame_header(&out),
            Err(FrameError::Protocol),
            "a masked frame from a server is refused"
        );
    }

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(
            parse_response(ok),
            Response::Complete {
                status: 200,
                len: ok.len() - 5,
                close: false
            }
        );
        assert_eq!(parse_response(&ok[..20]), Response::Partial);
        let chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked),
            Response::Complete {
                status: 503,
                len: chunked.len(),
                close: true
            }
        );
        assert_eq!(
            parse_upgrade(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81"),
            Upgrade::Switched(36)
        );
        assert_eq!(
            parse_upgrade(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Upgrade::Refused(503, None)
        );
        assert_eq!(
            parse_upgrade(b"HTTP/1.1 503 Service Unavailable\r\nretry-after:  2 \r\n\r\n"),
            Upgrade::Refused(503, Some(2))
        );
        assert_eq!(
            parse_upgrade(b"HTTP/1.1 503 Busy\r\nRetry-After: Wed, 21 Oct\r\n\r\n"),
            Upgrade::Refused(503, None)
        );
        assert_eq!(
            pusher_error_code(br#"{"event":"pusher:error","data":{"code":4100,"message":"x"}}"#),
            Some(4100)
        );
    }
}
