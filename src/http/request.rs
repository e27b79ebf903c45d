//! Incremental HTTP/1.1 request parsing for the public port: the head via `httparse`, the body
//! framed by `Content-Length` or `Transfer-Encoding: chunked`, with every size bounded by
//! [`Limits`]. This module owns framing and limit enforcement only; it does no IO, never reads
//! the clock, keeps no state between calls (the caller owns the buffer and re-calls [`parse`] as
//! bytes arrive) and does not interpret paths, queries or bodies beyond splitting them out.

use std::collections::TryReserveError;

/// Size bounds for one request. Each is checked as early as the bytes allow, so a peer can never
/// make the caller buffer much more than `head_bytes_max + body_bytes_max` for one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus header fields plus the blank line that ends them.
    pub head_bytes_max: usize,
    /// Decoded body bytes (after de-chunking).
    pub body_bytes_max: usize,
    /// Header fields in the head (and, separately, trailer fields of a chunked body).
    pub headers_max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Other,
}

impl Method {
    /// Maps the method token case-sensitively, as RFC 9110 §9.1 requires (`get` is not `GET`).
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The method token as sent, e.g. `GET`; needed for signatures and for `Method::Other`.
    pub method_text: String,
    /// The request target before `?`, as sent (not percent-decoded).
    pub path: String,
    /// The raw text after the first `?`, or `""` when there is none.
    pub query: String,
    /// Header fields in arrival order, names lowercased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked when it was sent chunked.
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
}

impl Request {
    /// The first header field with this name; `lowercase_name` must already be lowercase
    /// because names are stored lowercased.
    pub fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(name, _)| name == lowercase_name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Why a request was refused, with the status the caller should answer with before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 400 malformed, 413 body too large, 431 head too large, 501 unsupported
    /// transfer-encoding, 505 unsupported HTTP version.
    pub status: u16,
    pub message: &'static str,
}

pub enum Parsed {
    /// One whole request; the caller drains `consumed` bytes before parsing the next one.
    Complete { request: Request, consumed: usize },
    /// More bytes are needed; the caller keeps buffering and calls again.
    Partial,
}

use crate::limits::HTTP_CHUNK_SIZE_LINE_BYTES_MAX;

const fn error(status: u16, message: &'static str) -> ParseError {
    ParseError { status, message }
}

const MALFORMED_HEAD: ParseError = error(400, "Malformed request head");
const HEAD_TOO_LARGE: ParseError = error(431, "Request head too large");
const BODY_TOO_LARGE: ParseError = error(413, "Request body too large");
const OUT_OF_MEMORY: ParseError = error(413, "Request body could not be buffered");

/// Parses one request from the start of `buf`. `Partial` means more bytes are needed (the
/// caller keeps buffering). Pipelining: the caller drains `consumed` bytes and calls again.
///
/// Rejects as soon as the bytes allow: a head larger than `head_bytes_max` is refused with 431
/// once that many bytes are buffered without a complete head (instead of `Partial`); a
/// `Content-Length` over `body_bytes_max` is refused with 413 as soon as the head is complete,
/// before the body arrives; a chunked body is refused with 413 as soon as a chunk size would
/// take it past the limit.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    // Only the first `head_bytes_max` bytes can hold an acceptable head, so parsing no further
    // both bounds the work per call and turns "still incomplete at the limit" into a 431.
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let mut header_slots = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut head = httparse::Request::new(&mut header_slots);
    let head_len = match head.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.head_bytes_max {
                Err(HEAD_TOO_LARGE)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(error(431, "Too many request header fields"));
        }
        Err(httparse::Error::Version) => return Err(error(505, "HTTP version not supported")),
        Err(_) => return Err(MALFORMED_HEAD),
    };

    // httparse guarantees these are set on a complete parse; treating their absence as a
    // malformed head keeps this path panic-free should that ever change.
    let (Some(method_text), Some(target), Some(version_minor)) =
        (head.method, head.path, head.version)
    else {
        return Err(MALFORMED_HEAD);
    };
    let headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let keep_alive = keep_alive(&headers, version_minor);

    let rest = &buf[head_len..];
    let (body, body_consumed) = match framing(&headers, limits)? {
        Framing::None => (Vec::new(), 0),
        Framing::Length(length) => {
            if rest.len() < length {
                return Ok(Parsed::Partial);
            }
            (rest[..length].to_vec(), length)
        }
        Framing::Chunked => match dechunk(rest, limits)? {
            Some(done) => done,
            None => return Ok(Parsed::Partial),
        },
    };

    Ok(Parsed::Complete {
        request: Request {
            method: Method::from_token(method_text),
            method_text: method_text.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            body,
            keep_alive,
            version_minor,
        },
        consumed: head_len + body_consumed,
    })
}

/// Splits a header value into its comma-separated list elements, trimmed, skipping empty
/// elements as RFC 9110 §5.6.1 asks recipients to do.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// HTTP/1.1 connections persist unless either side says `close`; HTTP/1.0 ones only when the
/// client asks for `keep-alive` (RFC 9112 §9.3).
fn keep_alive(headers: &[(String, Vec<u8>)], version_minor: u8) -> bool {
    let mut close = false;
    let mut keep = false;
    for (_, value) in headers.iter().filter(|(name, _)| name == "connection") {
        for option in list_elements(value) {
            close |= option.eq_ignore_ascii_case(b"close");
            keep |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if close {
        false
    } else {
        version_minor >= 1 || keep
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Decides how the body is delimited (RFC 9112 §6.3), rejecting every ambiguous combination
/// because disagreeing framing is how request smuggling through proxies works.
fn framing(headers: &[(String, Vec<u8>)], limits: &Limits) -> Result<Framing, ParseError> {
    let mut codings = 0usize;
    let mut chunked = 0usize;
    let mut other_coding = false;
    let mut transfer_encoding_present = false;
    let mut length: Option<u64> = None;
    let mut length_overflow = false;

    for (name, value) in headers {
        match name.as_str() {
            "transfer-encoding" => {
                transfer_encoding_present = true;
                for coding in list_elements(value) {
                    codings += 1;
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked += 1;
                    } else {
                        other_coding = true;
                    }
                }
            }
            "content-length" => {
                // A list of identical values ("42, 42") is tolerated per RFC 9110 §8.6; an
                // empty value or anything but digits is not a length.
                for element in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let value = parse_decimal(element)?;
                    match (value, length) {
                        (None, _) => length_overflow = true,
                        (Some(v), Some(previous)) if v != previous => {
                            return Err(error(400, "Conflicting Content-Length values"));
                        }
                        (Some(v), _) => length = Some(v),
                    }
                }
            }
            _ => {}
        }
    }

    if transfer_encoding_present && (length.is_some() || length_overflow) {
        return Err(error(
            400,
            "Both Content-Length and Transfer-Encoding are present",
        ));
    }
    if transfer_encoding_present {
        if other_coding {
            return Err(error(501, "Unsupported Transfer-Encoding"));
        }
        if codings == 0 || chunked > 1 {
            return Err(error(400, "Invalid Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    if length_overflow {
        // Two overflowing values could not be compared, but any of them is far over any limit.
        return Err(BODY_TOO_LARGE);
    }
    match length {
        None => Ok(Framing::None),
        Some(length) => match usize::try_from(length) {
            Ok(length) if length <= limits.body_bytes_max => Ok(Framing::Length(length)),
            _ => Err(BODY_TOO_LARGE),
        },
    }
}

/// Parses a non-empty run of ASCII digits. `Ok(None)` means the digits were valid but the number
/// does not fit in a `u64`, which the caller treats as "too large" rather than "malformed".
fn parse_decimal(text: &[u8]) -> Result<Option<u64>, ParseError> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(error(400, "Invalid Content-Length"));
    }
    let mut value: u64 = 0;
    for &digit in text {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit - b'0')))
        {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(value))
}

/// Decodes a chunked body from the start of `rest` (the bytes after the head). Returns the body
/// and the number of wire bytes it took, or `None` when the body is not complete yet.
///
/// Besides the decoded size, the framing overhead (size lines, extensions, CRLFs, trailers) is
/// bounded by `max(head_bytes_max, body_bytes_max)`: otherwise a peer sending one-byte chunks
/// with long extensions could make the caller buffer far more than the body limit.
fn dechunk(rest: &[u8], limits: &Limits) -> Result<Option<(Vec<u8>, usize)>, ParseError> {
    let overhead_max = limits.head_bytes_max.max(limits.body_bytes_max);
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        if pos - body.len() > overhead_max {
            return Err(BODY_TOO_LARGE);
        }
        let remaining = &rest[pos..];
        let line_window = &remaining[..remaining.len().min(HTTP_CHUNK_SIZE_LINE_BYTES_MAX)];
        // httparse reads an empty size line as zero; RFC 9112 §7.1 requires at least one digit.
        if line_window.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
            return Err(error(400, "Invalid chunk size"));
        }
        let (line_len, size) = match httparse::parse_chunk_size(line_window) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) if line_window.len() < HTTP_CHUNK_SIZE_LINE_BYTES_MAX => {
                return Ok(None);
            }
            Ok(httparse::Status::Partial) => return Err(error(400, "Chunk size line too long")),
            Err(_) => return Err(error(400, "Invalid chunk size")),
        };
        pos += line_len;

        if size == 0 {
            let budget = overhead_max.saturating_sub(pos - body.len());
            return match trailers(&rest[pos..], limits, budget)? {
                Some(trailer_len) => Ok(Some((body, pos + trailer_len))),
                None => Ok(None),
            };
        }

        // Reject on the announced size, before the chunk's data arrives.
        let size = match usize::try_from(size) {
            Ok(size) if size <= limits.body_bytes_max.saturating_sub(body.len()) => size,
            _ => return Err(BODY_TOO_LARGE),
        };
        let data = &rest[pos..];
        if data.len() < size.saturating_add(2) {
            // Not all of the data and its CRLF are here yet; the CRLF can still be checked early
            // when the data is complete, so a missing CRLF is reported without waiting.
            if data.len() > size && data[size] != b'\r' {
                return Err(error(400, "Chunk data not followed by CRLF"));
            }
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(error(400, "Chunk data not followed by CRLF"));
        }
        try_extend(&mut body, &data[..size]).map_err(|_| OUT_OF_MEMORY)?;
        pos += size + 2;
    }
}

/// Skips the trailer section after the last chunk (trailer fields are ignored, but must be well
/// formed and bounded). Returns its length including the final CRLF, or `None` if incomplete.
fn trailers(rest: &[u8], limits: &Limits, budget: usize) -> Result<Option<usize>, ParseError> {
    let window = &rest[..rest.len().min(budget)];
    let mut slots = vec![httparse::EMPTY_HEADER; limits.headers_max];
    match httparse::parse_headers(window, &mut slots) {
        Ok(httparse::Status::Complete((len, _))) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if rest.len() < budget => Ok(None),
        Ok(httparse::Status::Partial) => Err(BODY_TOO_LARGE),
        Err(httparse::Error::TooManyHeaders) => Err(error(431, "Too many trailer fields")),
        Err(_) => Err(error(400, "Malformed chunked trailer section")),
    }
}

/// Appends without aborting the process when memory is short: the size was already checked
/// against the limit, so a failure here is resource exhaustion, answered as 413.
fn try_extend(body: &mut Vec<u8>, data: &[u8]) -> Result<(), TryReserveError> {
    body.try_reserve(data.len())?;
    body.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head_bytes_max: 1024,
        body_bytes_max: 64,
        headers_max: 16,
    };

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf, &LIMITS) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            Ok(Parsed::Partial) => {
                panic!("unexpected Partial for {:?}", String::from_utf8_lossy(buf))
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    fn status(buf: &[u8], limits: &Limits) -> u16 {
        match parse(buf, limits) {
            Err(e) => e.status,
            Ok(Parsed::Partial) => 0,
            Ok(Parsed::Complete { .. }) => 200,
        }
    }

    fn is_partial(buf: &[u8]) -> bool {
        matches!(parse(buf, &LIMITS), Ok(Parsed::Partial))
    }

    #[test]
    fn simple_get_with_query() {
        let buf =
            b"GET /apps/3/channels?info=user_count&x=%2C HTTP/1.1\r\nHost: a\r\nX-Thing: V\r\n\r\n";
        let (req, consumed) = complete(buf);
        assert_eq!(consumed, buf.len());
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.method_text, "GET");
        assert_eq!(req.path, "/apps/3/channels");
        assert_eq!(req.query, "info=user_count&x=%2C");
        assert_eq!(req.header("x-thing"), Some(&b"V"[..]));
        assert_eq!(req.header("host"), Some(&b"a"[..]));
        assert_eq!(req.header("missing"), None);
        assert!(req.body.is_empty());
        assert!(req.keep_alive);
        assert_eq!(req.version_minor, 1);
    }

    #[test]
    fn methods_are_case_sensitive() {
        let (req, _) = complete(b"get / HTTP/1.1\r\n\r\n");
        assert_eq!(req.method, Method::Other);
        assert_eq!(req.method_text, "get");
        for (text, method) in [
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Other),
        ] {
            let buf = format!("{text} / HTTP/1.1\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).0.method, method);
        }
    }

    #[test]
    fn no_query_means_empty_query() {
        let (req, _) = complete(b"GET /x HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/x");
        assert_eq!(req.query, "");
        let (req, _) = complete(b"GET /x? HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/x");
        assert_eq!(req.query, "");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(complete(b"GET / HTTP/1.1\r\n\r\n").0.keep_alive);
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        let (req, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(req.keep_alive);
        assert_eq!(req.version_minor, 0);
    }

    #[test]
    fn content_length_body() {
        let buf = b"POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let (req, consumed) = complete(buf);
        assert_eq!(req.body, b"hello");
        assert_eq!(consumed, buf.len() - 5);
    }

    #[test]
    fn content_length_waits_for_body() {
        assert!(is_partial(
            b"POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"
        ));
    }

    #[test]
    fn content_length_duplicates() {
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(complete(same).0.body, b"ok");
        let list = b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(complete(list).0.body, b"ok");
        let differ = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!";
        assert_eq!(status(differ, &LIMITS), 400);
    }

    #[test]
    fn content_length_must_be_digits() {
        for value in ["abc", "-1", "+5", "", "1 2", "0x10", "5,"] {
            let buf = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(status(buf.as_bytes(), &LIMITS), 400, "value {value:?}");
        }
    }

    #[test]
    fn content_length_over_limit_rejected_before_body() {
        let buf = b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(status(buf, &LIMITS), 413);
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert_eq!(status(huge, &LIMITS), 413);
        let exact = b"POST / HTTP/1.1\r\nContent-Length: 64\r\n\r\n";
        assert_eq!(status(exact, &LIMITS), 0);
    }

    #[test]
    fn head_limit() {
        let limits = Limits {
            head_bytes_max: 32,
            ..LIMITS
        };
        // Incomplete and already at the limit: refuse without waiting for more.
        assert_eq!(status(&[b'G'; 32][..], &limits), 431);
        let long = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(status(long, &limits), 431);
        // Incomplete but below the limit: keep waiting.
        assert_eq!(status(b"GET /aaaaa", &limits), 0);
        // A complete head of exactly the limit is fine.
        let exact = b"GET /aaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
        assert_eq!(exact.len(), 32);
        assert_eq!(status(exact, &limits), 200);
        let over = b"GET /aaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
        assert_eq!(status(over, &limits), 431);
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            headers_max: 2,
            ..LIMITS
        };
        let buf = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(status(buf, &limits), 431);
        let ok = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(status(ok, &limits), 200);
    }

    #[test]
    fn malformed_and_bad_version() {
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n", &LIMITS), 505);
        assert_eq!(status(b"GET / FTP/1.1\r\n\r\n", &LIMITS), 505);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", &LIMITS),
            400
        );
        assert_eq!(status(b"GET\0 / HTTP/1.1\r\n\r\n", &LIMITS), 400);
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let buf: &[u8] = b"GET /a HTTP/1.1\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut rest = buf;
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (req, consumed) = complete(rest);
            seen.push((req.path.clone(), req.body.clone(), req.keep_alive));
            rest = &rest[consumed..];
        }
        assert_eq!(
            seen,
            vec![
                ("/a".to_owned(), vec![], true),
                ("/b".to_owned(), b"xyz".to_vec(), true),
                ("/c".to_owned(), b"hi".to_vec(), true),
                ("/d".to_owned(), vec![], false),
            ]
        );
    }

    /// Feeds `wire` one byte at a time the way a connection would, checking that every prefix
    /// is `Partial` and that the whole stream yields the expected paths and bodies.
    fn feed_bytewise(wire: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut buffer = Vec::new();
        let mut out = Vec::new();
        for &byte in wire {
            buffer.push(byte);
            loop {
                match parse(&buffer, &LIMITS) {
                    Ok(Parsed::Complete { request, consumed }) => {
                        out.push((request.path, request.body));
                        buffer.drain(..consumed);
                    }
                    Ok(Parsed::Partial) => break,
                    Err(e) => panic!("error {e:?} at {:?}", String::from_utf8_lossy(&buffer)),
                }
            }
        }
        assert!(buffer.is_empty());
        out
    }

    #[test]
    fn byte_by_byte_feeding() {
        let wire = b"POST /one HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd\
POST /two HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-T: y\r\n\r\n\
GET /three HTTP/1.1\r\n\r\n";
        assert_eq!(
            feed_bytewise(wire),
            vec![
                ("/one".to_owned(), b"abcd".to_vec()),
                ("/two".to_owned(), b"abcd".to_vec()),
                ("/three".to_owned(), vec![]),
            ]
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\nA\r\n, world!!!\r\n0;last\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\nNEXT";
        let (req, consumed) = complete(buf);
        assert_eq!(req.body, b"hello, world!!!");
        assert_eq!(consumed, buf.len() - 4);
    }

    #[test]
    fn chunked_is_case_insensitive_and_partial_until_terminated() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nhi\r\n0\r\n";
        assert!(is_partial(head));
        let mut full = head.to_vec();
        full.extend_from_slice(b"\r\n");
        assert_eq!(complete(&full).0.body, b"hi");
    }

    #[test]
    fn chunked_over_limit_rejected_on_announced_size() {
        // 0x41 = 65 bytes announced, limit 64: refused before any data arrives.
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
        assert_eq!(status(buf, &LIMITS), 413);
        // Cumulative: 0x20 + 0x21 = 65.
        let mut buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n".to_vec();
        buf.extend_from_slice(&[b'a'; 0x20]);
        buf.extend_from_slice(b"\r\n21\r\n");
        assert_eq!(status(&buf, &LIMITS), 413);
        let huge = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        assert_eq!(status(huge, &LIMITS), 413);
        // More hex digits than fit in 64 bits is not a size at all.
        let overflow =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n";
        assert_eq!(status(overflow, &LIMITS), 400);
    }

    #[test]
    fn chunked_framing_overhead_is_bounded() {
        let limits = Limits {
            head_bytes_max: 64,
            body_bytes_max: 64,
            headers_max: 4,
        };
        let mut buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..40 {
            buf.extend_from_slice(b"1;x=yy\r\na\r\n");
        }
        assert_eq!(status(&buf, &limits), 413);
        let mut long_line = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        long_line.extend_from_slice(&[b'x'; HTTP_CHUNK_SIZE_LINE_BYTES_MAX]);
        assert_eq!(status(&long_line, &LIMITS), 400);
    }

    #[test]
    fn chunked_malformed() {
        let base = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            "zz\r\n",
            "\r\n",
            "2\r\nhiX\r\n",
            "2\r\nhi\rX",
            "-1\r\n",
            "2\nhi\r\n",
        ] {
            let buf = format!("{base}{body}");
            assert_eq!(status(buf.as_bytes(), &LIMITS), 400, "body {body:?}");
        }
        let bad_trailer = format!("{base}0\r\nnot a header\r\n\r\n");
        assert_eq!(status(bad_trailer.as_bytes(), &LIMITS), 400);
    }

    #[test]
    fn transfer_encoding_rules() {
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(both, &LIMITS), 400);
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(status(gzip, &LIMITS), 501);
        let identity = b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n";
        assert_eq!(status(identity, &LIMITS), 501);
        let twice =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(twice, &LIMITS), 400);
        let empty = b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n";
        assert_eq!(status(empty, &LIMITS), 400);
    }

    #[test]
    fn no_framing_headers_means_no_body() {
        let buf = b"POST /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n";
        let (req, consumed) = complete(buf);
        assert!(req.body.is_empty());
        assert_eq!(&buf[consumed..], b"GET /y HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn header_names_lowercased_values_kept() {
        let (req, _) = complete(b"GET / HTTP/1.1\r\nX-MiXeD: Keep Case\r\n\r\n");
        assert_eq!(
            req.headers,
            vec![("x-mixed".to_owned(), b"Keep Case".to_vec())]
        );
    }
}
