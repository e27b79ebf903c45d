//! The client side of the admin endpoint, for `ringcast status` and `ringcast promote`: one
//! blocking HTTP/1.1 request over a std TCP or unix socket (ureq does not do unix sockets),
//! with a timeout and a bounded response. It owns nothing of the server and is never used by
//! the broker itself.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{ADMIN_CLIENT_RESPONSE_BYTES_MAX, ADMIN_CLIENT_TIMEOUT_MS};

/// Where to reach an admin endpoint: `host:port` (a name is resolved) or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTarget {
    Tcp(String),
    Unix(PathBuf),
}

impl AdminTarget {
    /// Parses the `--admin ADDR` argument.
    ///
    /// # Errors
    ///
    /// `AdminClientError::Address` for an empty path or a missing port.
    pub fn parse(text: &str) -> Result<AdminTarget, AdminClientError> {
        let bad = |why: &str| AdminClientError::Address(format!("`{text}`: {why}"));
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("no socket path after `unix:`"));
            }
            return Ok(AdminTarget::Unix(PathBuf::from(path)));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(AdminTarget::Tcp(text.to_string()))
            }
            _ => Err(bad("expected host:port or unix:/path")),
        }
    }
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTarget::Tcp(addr) => f.write_str(addr),
            AdminTarget::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why an admin command failed; the display is the message the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("bad admin address {0}")]
    Address(String),
    #[error("the token must be printable ASCII without spaces")]
    Token,
    #[error("cannot connect to the admin endpoint at {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("admin request to {target} failed: {source}")]
    Io { target: String, source: io::Error },
    #[error("bad response from the admin endpoint at {target}: {message}")]
    Response { target: String, message: String },
    /// A non-2xx answer, with the server's `error` message (or its body).
    #[error("admin endpoint answered {status}: {message}")]
    Status { status: u16, message: String },
}

/// An answer: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminReply {
    pub status: u16,
    pub body: String,
}

/// `ringcast status`: GET /replication; the backend's JSON, pretty-printed.
///
/// # Errors
///
/// See `AdminClientError`: a bad address or token, no connection, a timeout, a non-2xx status.
pub fn status(admin: &str, token: Option<&str>) -> Result<String, AdminClientError> {
    let target = AdminTarget::parse(admin)?;
    let reply = request(&target, "GET", "/replication", token)?;
    success(reply)
}

/// `ringcast promote`: POST /replication/promote (`?force=true` with `force`); the answer's
/// JSON, pretty-printed.
///
/// # Errors
///
/// As `status`; a refusal (409 and the like) carries the server's message.
pub fn promote(admin: &str, token: Option<&str>, force: bool) -> Result<String, AdminClientError> {
    let target = AdminTarget::parse(admin)?;
    let path = if force {
        "/replication/promote?force=true"
    } else {
        "/replication/promote"
    };
    let reply = request(&target, "POST", path, token)?;
    success(reply)
}

/// `ringcast switchover`: POST /replication/switchover on the primary; the answer's JSON
/// (`freeze_ms`, the new epoch and primary), pretty-printed.
///
/// # Errors
///
/// As `status`; a refusal (409: not a primary with an in-sync standby; 503: given up) carries
/// the server's message.
pub fn switchover(admin: &str, token: Option<&str>) -> Result<String, AdminClientError> {
    let target = AdminTarget::parse(admin)?;
    let reply = request(&target, "POST", "/replication/switchover", token)?;
    success(reply)
}

/// A 2xx body pretty-printed (when it is JSON); anything else as `AdminClientError::Status`.
fn success(reply: AdminReply) -> Result<String, AdminClientError> {
    let json = serde_json::from_str::<serde_json::Value>(&reply.body).ok();
    if (200..300).contains(&reply.status) {
        return Ok(match json {
            Some(value) => format!("{value:#}"),
            None => reply.body.trim_end().to_string(),
        });
    }
    let message = json
        .as_ref()
        .and_then(|value| value.get("error"))
        .and_then(|error| error.as_str())
        .map_or_else(|| reply.body.trim().to_string(), str::to_string);
    Err(AdminClientError::Status {
        status: reply.status,
        message,
    })
}

/// One request with `Connection: close`; reads the response to the end (at most
/// `ADMIN_CLIENT_RESPONSE_BYTES_MAX`), each step within `ADMIN_CLIENT_TIMEOUT_MS`.
///
/// # Errors
///
/// A bad token, no connection, an IO error or timeout, a response that does not parse.
pub fn request(
    target: &AdminTarget,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<AdminReply, AdminClientError> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    match target {
        AdminTarget::Tcp(addr) => head.push_str(&format!("Host: {addr}\r\n")),
        AdminTarget::Unix(_) => head.push_str("Host: localhost\r\n"),
    }
    if let Some(token) = token {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminClientError::Token);
        }
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let timeout = Duration::from_millis(ADMIN_CLIENT_TIMEOUT_MS);
    let io = |source| AdminClientError::Io {
        target: target.to_string(),
        source,
    };
    let response = match target {
        AdminTarget::Tcp(addr) => {
            let mut stream =
                connect_tcp(addr, timeout).map_err(|source| AdminClientError::Connect {
                    target: target.to_string(),
                    source,
                })?;
            exchange(&mut stream, &head, timeout, |s, t| {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            })
            .map_err(io)?
        }
        AdminTarget::Unix(path) => {
            let mut stream =
                UnixStream::connect(path).map_err(|source| AdminClientError::Connect {
                    target: target.to_string(),
                    source,
                })?;
            exchange(&mut stream, &head, timeout, |s, t| {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            })
            .map_err(io)?
        }
    };
    parse_reply(&response).map_err(|message| AdminClientError::Response {
        target: target.to_string(),
        message,
    })
}

fn connect_tcp(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for candidate in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

fn exchange<S: Read + Write>(
    stream: &mut S,
    head: &str,
    timeout: Duration,
    set_timeouts: impl Fn(&S, Duration) -> io::Result<()>,
) -> io::Result<Vec<u8>> {
    set_timeouts(stream, timeout)?;
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut response = Vec::with_capacity(4096);
    stream
        .take(ADMIN_CLIENT_RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut response)?;
    Ok(response)
}

/// Status and body of a complete response (the body cut to its `Content-Length`).
fn parse_reply(bytes: &[u8]) -> Result<AdminReply, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.is_empty() => {
            return Err("the connection closed without a response".to_string());
        }
        Ok(httparse::Status::Partial) => return Err("the response ends in its head".to_string()),
        Err(error) => return Err(error.to_string()),
    };
    let status = response.code.unwrap_or_default();
    let mut body = &bytes[head..];
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    if let Some(length) = length {
        if body.len() < length {
            return Err(format!(
                "the body ends after {} of {length} bytes",
                body.len()
            ));
        }
        body = &body[..length];
    }
    Ok(AdminReply {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            AdminTarget::parse("127.0.0.1:6190").unwrap(),
            AdminTarget::Tcp("127.0.0.1:6190".to_string())
        );
        assert_eq!(
            AdminTarget::parse("localhost:6190").unwrap(),
            AdminTarget::Tcp("localhost:6190".to_string())
        );
        assert_eq!(
            AdminTarget::parse("unix:/run/a.sock").unwrap(),
            AdminTarget::Unix(PathBuf::from("/run/a.sock"))
        );
        for bad in ["", "unix:", "127.0.0.1", ":6190", "host:port", "host:70000"] {
            assert!(AdminTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_parse() {
        let reply =
            parse_reply(b"HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}")
                .unwrap();
        assert_eq!(reply.status, 409);
        let error = success(reply).unwrap_err().to_string();
        assert_eq!(error, "admin endpoint answered 409: x");
        let ok = parse_reply(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(success(ok).unwrap(), "{\n  \"a\": 1\n}");
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_reply(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn tokens_cannot_inject_headers() {
        let target = AdminTarget::Unix(PathBuf::from("/nonexistent"));
        let error = request(&target, "GET", "/replication", Some("a\r\nX: y")).unwrap_err();
        assert!(matches!(error, AdminClientError::Token), "{error}");
    }
}
