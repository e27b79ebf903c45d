//! HTTP/1.1 response serialization for the public port: status line, framing headers and body
//! appended to a caller-owned buffer. This module only formats bytes; it does no IO, never reads
//! the clock (so it writes no `Date` header) and decides nothing about which status to send.

/// Writes a complete HTTP/1.1 response: status line with the standard reason phrase,
/// `Content-Type`, `Content-Length`, `Connection: keep-alive` or `Connection: close`, any
/// `extra_headers`, then the body.
///
/// Statuses that must not carry content (1xx, 204, 304; RFC 9110 §8.6, §15) get neither
/// `Content-Length` nor the body, so a caller mistake cannot desynchronize the client's framing.
/// CR and LF inside header names or values are written as spaces: a header line must never be
/// ended early, whatever text a caller passes through (response splitting).
pub fn write(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    let no_content = (100..200).contains(&status) || status == 204 || status == 304;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !no_content {
        header(out, "Content-Type", content_type);
        header(out, "Content-Length", &body.len().to_string());
    }
    header(
        out,
        "Connection",
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in extra_headers {
        header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    if !no_content {
        out.extend_from_slice(body);
    }
}

/// Writes an error response with the JSON body of spec §7.1 (its \[REC\] choice),
/// `{"error":"<message>","code":<status>}` (the message JSON-escaped), as `application/json`.
pub fn write_json_error(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    let mut body = String::with_capacity(message.len() + 32);
    body.push_str("{\"error\":");
    push_json_string(&mut body, message);
    body.push_str(",\"code\":");
    body.push_str(&status.to_string());
    body.push('}');
    write(
        out,
        status,
        "application/json",
        body.as_bytes(),
        keep_alive,
        extra_headers,
    );
}

/// The standard reason phrase (RFC 9110 §15 and the IANA registry), or `Unknown` for codes
/// without one; clients ignore the phrase, but a non-empty one reads better in logs.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends `Name: value\r\n`, replacing CR and LF so the line cannot be split.
fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_header_text(out, name);
    out.extend_from_slice(b": ");
    push_header_text(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_header_text(out: &mut Vec<u8>, text: &str) {
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

/// Appends `text` as a JSON string literal (RFC 8259 §7): quotes, backslashes and control
/// characters are escaped; everything else, including non-ASCII, is copied as UTF-8.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("responses in these tests are UTF-8")
    }

    #[test]
    fn ok_response_keep_alive() {
        let mut out = Vec::new();
        write(&mut out, 200, "application/json", b"{}", true, &[]);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
Connection: keep-alive\r\n\r\n{}"
        );
    }

    #[test]
    fn close_and_extra_headers_appended() {
        let mut out = b"previous".to_vec();
        write(
            &mut out,
            404,
            "text/plain",
            b"nope",
            false,
            &[("Access-Control-Allow-Origin", "*"), ("Retry-After", "1")],
        );
        assert_eq!(
            text(&out),
            "previousHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\
Connection: close\r\nAccess-Control-Allow-Origin: *\r\nRetry-After: 1\r\n\r\nnope"
        );
    }

    #[test]
    fn no_content_statuses_have_no_body() {
        let mut out = Vec::new();
        write(&mut out, 204, "text/plain", b"ignored", true, &[]);
        assert_eq!(
            text(&out),
            "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn header_injection_is_neutralized() {
        let mut out = Vec::new();
        write(
            &mut out,
            200,
            "text/plain\r\nX-Evil: 1",
            b"",
            true,
            &[("X-A", "b\r\n\r\nbody")],
        );
        let response = text(&out);
        assert!(response.contains("Content-Type: text/plain  X-Evil: 1\r\n"));
        assert!(response.contains("X-A: b    body\r\n\r\n"));
        assert!(!response.contains("\r\nX-Evil"));
    }

    #[test]
    fn json_error_body_and_escaping() {
        let mut out = Vec::new();
        write_json_error(
            &mut out,
            401,
            "Invalid signature: you should have sent HmacSHA256Hex(\"GET\\n/x\", your_secret)\u{1}é",
            true,
            &[],
        );
        let response = text(&out);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .expect("a head terminator is always written");
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(
            body,
            r#"{"error":"Invalid signature: you should have sent HmacSHA256Hex(\"GET\\n/x\", your_secret)\u0001é","code":401}"#
        );
        let parsed: serde_json::Value =
            serde_json::from_str(body).expect("the error body is valid JSON");
        assert_eq!(parsed["code"], 401);
        assert_eq!(
            parsed["error"],
            "Invalid signature: you should have sent HmacSHA256Hex(\"GET\\n/x\", your_secret)\u{1}é"
        );
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(400), "Bad Request");
        assert_eq!(reason_phrase(413), "Content Too Large");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(501), "Not Implemented");
        assert_eq!(reason_phrase(505), "HTTP Version Not Supported");
        assert_eq!(reason_phrase(299), "Unknown");
    }

    #[test]
    fn unknown_status_still_has_a_reason() {
        let mut out = Vec::new();
        write(&mut out, 599, "text/plain", b"", false, &[]);
        assert!(text(&out).starts_with("HTTP/1.1 599 Unknown\r\n"));
    }
}
