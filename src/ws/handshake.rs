//! The WebSocket upgrade handshake (RFC 6455 §4.2): decides whether an HTTP request asks to
//! become a WebSocket, validates it, and builds the `101 Switching Protocols` response or the
//! error response that refuses it. It owns only that decision and those bytes. It must not do
//! IO, read the clock or parse HTTP itself (the HTTP layer hands over the method and the
//! headers), and it must not negotiate subprotocols or extensions: ringcast speaks neither, so
//! `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` are never echoed.

use std::fmt;

use tungstenite::handshake::derive_accept_key;

/// The only protocol version this server speaks.
const VERSION: &[u8] = b"13";
/// Length of the base64 of 16 bytes: 22 data characters and `==`.
const KEY_LEN: usize = 24;
/// The minor version of HTTP/1.1, the oldest HTTP that can carry an upgrade.
const HTTP_1_1_MINOR: u8 = 1;

/// Why an upgrade request was refused, as the HTTP status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeError {
    /// 400 for a malformed upgrade, 426 for an unsupported `Sec-WebSocket-Version`.
    pub status: u16,
    /// A short explanation, sent as the response body and suitable for logs.
    pub message: &'static str,
}

impl HandshakeError {
    const fn bad_request(message: &'static str) -> HandshakeError {
        HandshakeError {
            status: 400,
            message,
        }
    }

    /// The complete HTTP response that refuses the upgrade. A 426 carries
    /// `Sec-WebSocket-Version: 13` (and `Upgrade: websocket`) so that the client can retry with
    /// a version the server speaks. The response asks for the connection to be closed, because
    /// a client that failed to upgrade has nothing else to say on it; the caller closes it after
    /// writing.
    pub fn response(&self) -> Vec<u8> {
        let (reason, extra) = match self.status {
            400 => ("Bad Request", ""),
            // RFC 9110 §15.5.22 requires an Upgrade header on a 426, and RFC 9110 §7.8 requires
            // `Connection: upgrade` next to any Upgrade header.
            426 => (
                "Upgrade Required",
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            ),
            _ => ("Error", ""),
        };
        let connection = if self.status == 426 {
            "Upgrade, close"
        } else {
            "close"
        };
        let body = self.message;
        format!(
            "HTTP/1.1 {} {reason}\r\n\
             Connection: {connection}\r\n\
             {extra}\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             \r\n\
             {body}",
            self.status,
            body.len(),
        )
        .into_bytes()
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for HandshakeError {}

/// Is this request an attempt to upgrade to WebSocket? (an `Upgrade` header whose value contains
/// the token `websocket`, case-insensitive). Header names are matched case-insensitively.
pub fn is_upgrade(headers: &[(&str, &[u8])]) -> bool {
    values(headers, "upgrade").any(|value| has_token(value, b"websocket"))
}

/// Validates a WebSocket upgrade request (method must be GET, the request HTTP/1.1 or later,
/// `Connection` must contain the
/// token `upgrade` among comma-separated tokens, case-insensitive; `Upgrade: websocket`;
/// `Sec-WebSocket-Version: 13`; `Sec-WebSocket-Key` present and the base64 of exactly 16
/// bytes). Header names in `headers` are matched case-insensitively, and a header that occurs
/// several times counts when any occurrence carries the token.
///
/// Returns the complete `HTTP/1.1 101 Switching Protocols` response bytes (with
/// `Upgrade: websocket`, `Connection: Upgrade` and `Sec-WebSocket-Accept`). A missing or
/// repeated `Sec-WebSocket-Version` is malformed (400); a single one with another value is a
/// version the server does not speak (426). `version_minor` is the request's HTTP/1.x minor
/// version (the HTTP parser accepts nothing but HTTP/1.0 and HTTP/1.1).
pub fn accept(
    method: &str,
    version_minor: u8,
    headers: &[(&str, &[u8])],
) -> Result<Vec<u8>, HandshakeError> {
    // HTTP methods are case-sensitive (RFC 9110 §9.1), so `get` is not GET.
    if method != "GET" {
        return Err(HandshakeError::bad_request(
            "a WebSocket upgrade must use the GET method",
        ));
    }
    // RFC 6455 §4.1 and §4.2.1: the opening handshake is an HTTP/1.1 (or later) request.
    // HTTP/1.0 has no Upgrade mechanism, so a 101 would answer a request that cannot ask for it.
    if version_minor < HTTP_1_1_MINOR {
        return Err(HandshakeError::bad_request(
            "a WebSocket upgrade requires HTTP/1.1 or later",
        ));
    }
    if !is_upgrade(headers) {
        return Err(HandshakeError::bad_request(
            "the Upgrade header must contain the websocket token",
        ));
    }
    if !values(headers, "connection").any(|value| has_token(value, b"upgrade")) {
        return Err(HandshakeError::bad_request(
            "the Connection header must contain the upgrade token",
        ));
    }

    // The version is checked before the key so that a client speaking another version learns
    // which one to use even if its key is in a format of its own.
    let version = single(headers, "sec-websocket-version").map_err(|count| {
        HandshakeError::bad_request(if count == 0 {
            "missing Sec-WebSocket-Version header"
        } else {
            "repeated Sec-WebSocket-Version header"
        })
    })?;
    if trim(version) != VERSION {
        return Err(HandshakeError {
            status: 426,
            message: "unsupported WebSocket version; this server speaks version 13",
        });
    }

    let key = single(headers, "sec-websocket-key").map_err(|count| {
        HandshakeError::bad_request(if count == 0 {
            "missing Sec-WebSocket-Key header"
        } else {
            "repeated Sec-WebSocket-Key header"
        })
    })?;
    let key = trim(key);
    if !is_valid_key(key) {
        return Err(HandshakeError::bad_request(
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        ));
    }

    let accept_key = derive_accept_key(key);
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\
         \r\n"
    )
    .into_bytes())
}

/// The values of every header called `name` (which must be lowercase).
fn values<'a>(
    headers: &'a [(&'a str, &'a [u8])],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// The value of the header called `name` when it occurs exactly once; otherwise how many times
/// it occurs. RFC 6455 §11.3 forbids repeating the key and the version in a request.
fn single<'a>(headers: &'a [(&'a str, &'a [u8])], name: &'static str) -> Result<&'a [u8], usize> {
    let mut found = values(headers, name);
    match (found.next(), found.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2),
    }
}

/// Whether the comma-separated list `value` contains `token`, ignoring ASCII case and the
/// optional whitespace around list elements.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|item| trim(item).eq_ignore_ascii_case(token))
}

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
fn trim(value: &[u8]) -> &[u8] {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Whether `key` is the base64 of exactly 16 bytes: 22 characters of the standard alphabet
/// followed by `==`. The unused low bits of the last character are not required to be zero,
/// because a lenient check costs nothing here: the key is only hashed, never decoded.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == KEY_LEN
        && key.ends_with(b"==")
        && key[..KEY_LEN - 2]
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
    /// The value RFC 6455 §1.3 gives for `RFC_KEY` (independently recomputed with SHA-1).
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request_with(key: &'static [u8]) -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("Host", b"localhost:6001"),
            ("Upgrade", b"websocket"),
            ("Connection", b"Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", b"13"),
        ]
    }

    fn request() -> Vec<(&'static str, &'static [u8])> {
        request_with(RFC_KEY)
    }

    /// Replaces (or, with `None`, removes) every header called `name`.
    fn with(
        mut headers: Vec<(&'static str, &'static [u8])>,
        name: &'static str,
        value: Option<&'static [u8]>,
    ) -> Vec<(&'static str, &'static [u8])> {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            headers.push((name, value));
        }
        headers
    }

    fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, String)>, usize) {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut storage);
        let status = response.parse(bytes).expect("well-formed response");
        let httparse::Status::Complete(head_len) = status else {
            panic!("incomplete response head");
        };
        let headers = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).expect("ASCII header"),
                )
            })
            .collect();
        (response.code.expect("status code"), headers, head_len)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn rfc_example_key() {
        let response = accept("GET", 1, &request()).expect("valid upgrade");
        let text = String::from_utf8(response.clone()).expect("ASCII response");
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n"
            )
        );
        let (status, headers, head_len) = parse_response(&response);
        assert_eq!(status, 101);
        assert_eq!(head_len, response.len());
        assert_eq!(header(&headers, "sec-websocket-accept"), Some(RFC_ACCEPT));
        assert_eq!(header(&headers, "upgrade"), Some("websocket"));
        assert_eq!(header(&headers, "connection"), Some("Upgrade"));
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("UPGRADE", b"WebSocket"),
            ("connection", b"keep-alive, UPGRADE"),
            ("sec-websocket-key", b"  dGhlIHNhbXBsZSBub25jZQ==\t"),
            ("SEC-WEBSOCKET-VERSION", b" 13 "),
        ];
        let response = accept("GET", 1, &headers).expect("valid upgrade");
        let (_, parsed, _) = parse_response(&response);
        assert_eq!(header(&parsed, "sec-websocket-accept"), Some(RFC_ACCEPT));
    }

    #[test]
    fn connection_token_may_be_in_any_occurrence() {
        let mut headers = with(request(), "Connection", Some(b"keep-alive"));
        assert_eq!(
            accept("GET", 1, &headers).map_err(|e| e.status),
            Err(400),
            "keep-alive alone is not an upgrade"
        );
        headers.push(("Connection", b"Upgrade"));
        assert!(accept("GET", 1, &headers).is_ok());
    }

    #[test]
    fn does_not_echo_protocols_or_extensions() {
        let mut headers = request();
        headers.push(("Sec-WebSocket-Protocol", b"chat, superchat"));
        headers.push(("Sec-WebSocket-Extensions", b"permessage-deflate"));
        let response = accept("GET", 1, &headers).expect("valid upgrade");
        let (_, parsed, _) = parse_response(&response);
        assert_eq!(parsed.len(), 3);
        assert_eq!(header(&parsed, "sec-websocket-protocol"), None);
        assert_eq!(header(&parsed, "sec-websocket-extensions"), None);
    }

    #[test]
    fn is_upgrade_detection() {
        assert!(is_upgrade(&request()));
        assert!(is_upgrade(&[("upgrade", b"h2c, WEBSOCKET")]));
        assert!(!is_upgrade(&[("Upgrade", b"h2c")]));
        assert!(!is_upgrade(&[("Upgrade", b"websockets")]));
        assert!(!is_upgrade(&[("Connection", b"websocket")]));
        assert!(!is_upgrade(&[]));
    }

    #[test]
    fn rejects_http_1_0() {
        assert_eq!(
            accept("GET", 0, &request()),
            Err(HandshakeError::bad_request(
                "a WebSocket upgrade requires HTTP/1.1 or later"
            ))
        );
    }

    #[test]
    fn rejects_wrong_method() {
        for method in ["POST", "get", "HEAD"] {
            assert_eq!(
                accept(method, 1, &request()),
                Err(HandshakeError::bad_request(
                    "a WebSocket upgrade must use the GET method"
                ))
            );
        }
    }

    #[test]
    fn rejects_missing_upgrade_or_connection() {
        let cases: [(&str, Option<&'static [u8]>); 5] = [
            ("Upgrade", None),
            ("Upgrade", Some(b"h2c")),
            ("Connection", None),
            ("Connection", Some(b"keep-alive")),
            ("Connection", Some(b"upgrades")),
        ];
        for (name, value) in cases {
            let err = accept("GET", 1, &with(request(), name, value)).expect_err("refused");
            assert_eq!(err.status, 400, "{name}: {value:?}");
        }
    }

    #[test]
    fn wrong_version_is_426_with_supported_version() {
        for version in [&b"8"[..], b"14", b"13, 8", b""] {
            let headers = with(request(), "Sec-WebSocket-Version", Some(version));
            let err = accept("GET", 1, &headers).expect_err("refused");
            assert_eq!(err.status, 426, "version {version:?}");
            let response = err.response();
            let (status, parsed, head_len) = parse_response(&response);
            assert_eq!(status, 426);
            assert_eq!(header(&parsed, "sec-websocket-version"), Some("13"));
            assert_eq!(header(&parsed, "upgrade"), Some("websocket"));
            assert_eq!(&response[head_len..], err.message.as_bytes());
        }
    }

    #[test]
    fn missing_or_repeated_version_is_400() {
        let err = accept("GET", 1, &with(request(), "Sec-WebSocket-Version", None));
        assert_eq!(
            err,
            Err(HandshakeError::bad_request(
                "missing Sec-WebSocket-Version header"
            ))
        );
        let mut headers = request();
        headers.push(("sec-websocket-version", b"13"));
        assert_eq!(accept("GET", 1, &headers).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn rejects_bad_keys() {
        let bad: [&'static [u8]; 9] = [
            b"",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQAA",
            b"dGhlIHNhbXBsZSBub25jZ===",
            b"dGhlIHNhbXBsZSBub25j-Q==",
            b"dGhlIHNhbXBsZSBub25j Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
        ];
        for key in bad {
            let err = accept("GET", 1, &request_with(key)).expect_err("refused");
            assert_eq!(
                err,
                HandshakeError::bad_request("Sec-WebSocket-Key must be the base64 of 16 bytes"),
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
        let missing = accept("GET", 1, &with(request(), "Sec-WebSocket-Key", None));
        assert_eq!(
            missing,
            Err(HandshakeError::bad_request(
                "missing Sec-WebSocket-Key header"
            ))
        );
        let mut repeated = request();
        repeated.push(("Sec-WebSocket-Key", RFC_KEY));
        assert_eq!(
            accept("GET", 1, &repeated),
            Err(HandshakeError::bad_request(
                "repeated Sec-WebSocket-Key header"
            ))
        );
    }

    #[test]
    fn accepts_keys_from_tungstenite_clients() {
        // Keys generated by a real client implementation pass the base64 check.
        for _ in 0..200 {
            let key = tungstenite::handshake::client::generate_key();
            let headers: Vec<(&str, &[u8])> = vec![
                ("Upgrade", b"websocket"),
                ("Connection", b"Upgrade"),
                ("Sec-WebSocket-Key", key.as_bytes()),
                ("Sec-WebSocket-Version", b"13"),
            ];
            let response = accept("GET", 1, &headers).expect("valid upgrade");
            let (_, parsed, _) = parse_response(&response);
            let expected = derive_accept_key(key.as_bytes());
            assert_eq!(
                header(&parsed, "sec-websocket-accept"),
                Some(expected.as_str())
            );
        }
    }

    #[test]
    fn bad_request_response_is_well_formed() {
        let err = HandshakeError::bad_request("missing Sec-WebSocket-Key header");
        let response = err.response();
        let (status, parsed, head_len) = parse_response(&response);
        assert_eq!(status, 400);
        assert_eq!(header(&parsed, "connection"), Some("close"));
        assert_eq!(header(&parsed, "sec-websocket-version"), None);
        assert_eq!(
            header(&parsed, "content-length"),
            Some(err.message.len().to_string().as_str())
        );
        assert_eq!(&response[head_len..], err.message.as_bytes());
        assert_eq!(
            err.to_string(),
            "missing Sec-WebSocket-Key header (HTTP 400)"
        );
    }
}
