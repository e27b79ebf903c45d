//! The admin endpoint's requests and responses, sans-IO: parsing a request head (bounded,
//! every malformed input an error response, never a panic), authorization with a constant-time
//! token compare, and routing to the `AdminBackend`. Nothing here reads a socket or the clock;
//! `server.rs` does the IO.

use serde_json::json;

use super::{AdminBackend, AdminError};
use crate::http::signature::constant_time_eq;
use crate::limits::{ADMIN_REQUEST_BODY_BYTES_MAX, ADMIN_REQUEST_HEAD_BYTES_MAX};

/// Headers one admin request may carry; more is answered 431.
const HEADERS_MAX: usize = 32;

/// One request as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    pub method: String,
    /// The request target: path and query (`/replication/promote?force=true`).
    pub target: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<String>,
}

impl AdminRequest {
    pub fn new(method: &str, target: &str, authorization: Option<&str>) -> AdminRequest {
        AdminRequest {
            method: method.to_string(),
            target: target.to_string(),
            authorization: authorization.map(str::to_string),
        }
    }
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet: read more.
    Partial,
    /// The head ends at `head_bytes`; `body_bytes` (at most `ADMIN_REQUEST_BODY_BYTES_MAX`)
    /// follow it.
    Complete {
        request: AdminRequest,
        head_bytes: usize,
        body_bytes: usize,
    },
}

/// Parses a request head from the first bytes of a connection.
///
/// # Errors
///
/// The response to send instead: 400 for a malformed head, 431 for one over
/// `ADMIN_REQUEST_HEAD_BYTES_MAX` or with too many headers, 413 for a body over
/// `ADMIN_REQUEST_BODY_BYTES_MAX`, 501 for a chunked body.
pub fn parse_head(bytes: &[u8]) -> Result<Head, AdminResponse> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() >= ADMIN_REQUEST_HEAD_BYTES_MAX => {
            return Err(AdminResponse::error(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(AdminResponse::error(431, "too many headers"));
        }
        Err(_) => return Err(AdminResponse::error(400, "malformed request")),
    };
    if head_bytes > ADMIN_REQUEST_HEAD_BYTES_MAX {
        return Err(AdminResponse::error(431, "request head too large"));
    }
    let mut authorization = None;
    let mut body_bytes = 0;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| AdminResponse::error(400, "header values must be ASCII"))?;
        if header.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if header.name.eq_ignore_ascii_case("content-length") {
            body_bytes = value
                .trim()
                .parse::<usize>()
                .map_err(|_| AdminResponse::error(400, "bad Content-Length"))?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AdminResponse::error(501, "chunked bodies are not accepted"));
        }
    }
    if body_bytes > ADMIN_REQUEST_BODY_BYTES_MAX {
        return Err(AdminResponse::error(413, "request body too large"));
    }
    Ok(Head::Complete {
        request: AdminRequest {
            // A complete parse always has both.
            method: request.method.unwrap_or_default().to_string(),
            target: request.path.unwrap_or_default().to_string(),
            authorization,
        },
        head_bytes,
        body_bytes,
    })
}

/// One response: status, body and the few headers the endpoint sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `Allow` for a 405.
    pub allow: Option<&'static str>,
}

impl AdminResponse {
    /// 200 (or `status`) with a JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
            allow: None,
        }
    }

    /// `status` with `{"error": message}`.
    pub fn error(status: u16, message: &str) -> AdminResponse {
        AdminResponse::json(status, &json!({ "error": message }))
    }

    fn method_not_allowed(allow: &'static str) -> AdminResponse {
        AdminResponse {
            allow: Some(allow),
            ..AdminResponse::error(405, &format!("method not allowed; use {allow}"))
        }
    }

    /// The response as bytes on the wire, with `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut extra: Vec<(&str, &str)> = Vec::with_capacity(2);
        if let Some(allow) = self.allow {
            extra.push(("Allow", allow));
        }
        if self.status == 401 {
            extra.push(("WWW-Authenticate", "Bearer"));
        }
        let mut out = Vec::with_capacity(self.body.len() + 160);
        crate::http::response::write(
            &mut out,
            self.status,
            self.content_type,
            self.body.as_bytes(),
            false,
            &extra,
        );
        out
    }
}

/// Routes one request. `token` empty means no authorization is required; otherwise every
/// route but `GET /healthz` needs `Authorization: Bearer <token>` (checked before routing, so
/// an unauthorized caller learns nothing about the routes).
pub fn handle(request: &AdminRequest, backend: &dyn AdminBackend, token: &str) -> AdminResponse {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    let method = request.method.as_str();
    if path == "/healthz" {
        return match method {
            "GET" => AdminResponse {
                status: 200,
                content_type: "text/plain",
                body: "ok\n".to_string(),
                allow: None,
            },
            _ => AdminResponse::method_not_allowed("GET"),
        };
    }
    if !authorized(request.authorization.as_deref(), token) {
        return AdminResponse::error(401, "missing or wrong bearer token");
    }
    match (path, method) {
        ("/replication", "GET") => AdminResponse::json(200, &backend.replication()),
        ("/replication", _) => AdminResponse::method_not_allowed("GET"),
        ("/replication/promote", "POST") => match force_parameter(query) {
            Ok(force) => match backend.promote(force) {
                Ok(value) => AdminResponse::json(200, &value),
                Err(error) => refusal(&error),
            },
            Err(response) => response,
        },
        ("/replication/promote", _) => AdminResponse::method_not_allowed("POST"),
        ("/replication/switchover", "POST") => match backend.switchover() {
            Ok(value) => AdminResponse::json(200, &value),
            Err(error) => refusal(&error),
        },
        ("/replication/switchover", _) => AdminResponse::method_not_allowed("POST"),
        _ => AdminResponse::error(404, &format!("no such endpoint: {path}")),
    }
}

fn authorized(authorization: Option<&str>, token: &str) -> bool {
    if token.is_empty() {
        return true;
    }
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is compared in constant time.
    let Some((scheme, given)) = authorization.and_then(|value| value.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// `force=true|false` from the query (absent: false); other parameters are ignored.
fn force_parameter(query: &str) -> Result<bool, AdminResponse> {
    let mut force = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "force" {
            force = match value {
                "true" => true,
                "false" => false,
                _ => return Err(AdminResponse::error(400, "force must be true or false")),
            };
        }
    }
    Ok(force)
}

/// The backend's refusal; a status that is not an error status is answered 500.
fn refusal(error: &AdminError) -> AdminResponse {
    let status = if (400..=599).contains(&error.status) {
        error.status
    } else {
        500
    };
    AdminResponse::error(status, &error.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    struct Fake;

    impl AdminBackend for Fake {
        fn replication(&self) -> Value {
            json!({"role": "standby", "lag_bytes": 12})
        }
        fn promote(&self, force: bool) -> Result<Value, AdminError> {
            if force {
                Ok(json!({"role": "primary", "forced": true}))
            } else {
                Err(AdminError::new(
                    409,
                    "standby is 12 bytes behind; use --force",
                ))
            }
        }
    }

    struct Odd;

    impl AdminBackend for Odd {
        fn replication(&self) -> Value {
            Value::Null
        }
        fn promote(&self, _: bool) -> Result<Value, AdminError> {
            Err(AdminError::new(200, "not an error status"))
        }
    }

    fn call(method: &str, target: &str, auth: Option<&str>, token: &str) -> AdminResponse {
        handle(&AdminRequest::new(method, target, auth), &Fake, token)
    }

    fn body(response: &AdminResponse) -> Value {
        serde_json::from_str(&response.body).unwrap()
    }

    #[test]
    fn routes_to_the_backend() {
        let response = call("GET", "/replication", None, "");
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(body(&response)["role"], "standby");
        let response = call("POST", "/replication/promote", None, "");
        assert_eq!(response.status, 409);
        assert_eq!(
            body(&response),
            json!({"error": "standby is 12 bytes behind; use --force"})
        );
        let response = call("POST", "/replication/promote?force=true", None, "");
        assert_eq!(response.status, 200);
        assert_eq!(body(&response)["forced"], true);
        let response = call("POST", "/replication/promote?x=1&force=false", None, "");
        assert_eq!(response.status, 409);
        let response = call("POST", "/replication/promote?force=yes", None, "");
        assert_eq!(response.status, 400);
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        let response = call("GET", "/nope", None, "");
        assert_eq!(response.status, 404);
        assert!(body(&response)["error"].as_str().unwrap().contains("/nope"));
        let response = call("GET", "/replication/promote", None, "");
        assert_eq!((response.status, response.allow), (405, Some("POST")));
        let response = call("DELETE", "/replication", None, "");
        assert_eq!((response.status, response.allow), (405, Some("GET")));
        let bytes = String::from_utf8(response.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 405 "), "{bytes}");
        assert!(bytes.contains("Allow: GET\r\n"), "{bytes}");
        assert!(bytes.contains("Connection: close\r\n"), "{bytes}");
        assert!(
            bytes.contains("Content-Type: application/json\r\n"),
            "{bytes}"
        );
    }

    #[test]
    fn a_token_is_required_when_configured() {
        let token = "s3cret";
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("Bearer s3crets"),
            Some("Bearer "),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let response = call("GET", "/replication", auth, token);
            assert_eq!(response.status, 401, "{auth:?}");
            assert!(
                String::from_utf8(response.to_bytes())
                    .unwrap()
                    .contains("WWW-Authenticate")
            );
            // Nothing about the routes leaks before authorization.
            assert_eq!(call("GET", "/nope", auth, token).status, 401);
            assert_eq!(
                call("POST", "/replication/promote", auth, token).status,
                401
            );
        }
        assert_eq!(
            call("GET", "/replication", Some("Bearer s3cret"), token).status,
            200
        );
        assert_eq!(
            call("GET", "/replication", Some("bearer s3cret"), token).status,
            200
        );
        assert_eq!(
            call("GET", "/nope", Some("Bearer s3cret"), token).status,
            404
        );
        // Health checks need no token.
        let health = call("GET", "/healthz", None, token);
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        assert_eq!(call("POST", "/healthz", None, token).status, 405);
    }

    #[test]
    fn backend_statuses_are_error_statuses() {
        let request = AdminRequest::new("POST", "/replication/promote", None);
        assert_eq!(handle(&request, &Odd, "").status, 500);
    }

    #[test]
    fn heads_are_parsed_and_bounded() {
        let text = b"POST /replication/promote?force=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n{}";
        let Ok(Head::Complete {
            request,
            head_bytes,
            body_bytes,
        }) = parse_head(text)
        else {
            panic!("complete head expected");
        };
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/replication/promote?force=true");
        assert_eq!(request.authorization.as_deref(), Some("Bearer t"));
        assert_eq!((head_bytes, body_bytes), (text.len() - 2, 2));
        assert_eq!(
            parse_head(b"GET /replication HTTP/1.1\r\nHo"),
            Ok(Head::Partial)
        );
        let status = |bytes: &[u8]| parse_head(bytes).unwrap_err().status;
        assert_eq!(status(b"GET /\x01 HTTP/1.1\r\n\r\n"), 400);
        let long = format!(
            "GET / HTTP/1.1\r\nX: {}",
            "a".repeat(ADMIN_REQUEST_HEAD_BYTES_MAX)
        );
        assert_eq!(status(long.as_bytes()), 431);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(HEADERS_MAX + 1)
        );
        assert_eq!(status(many.as_bytes()), 431);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            ADMIN_REQUEST_BODY_BYTES_MAX + 1
        );
        assert_eq!(status(big.as_bytes()), 413);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
    }

    proptest! {
        // Any bytes: a head, a partial head or an error response, never a panic; a complete
        // head is within the limits.
        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Head::Complete { head_bytes, body_bytes, .. }) = parse_head(&bytes) {
                prop_assert!(head_bytes <= bytes.len());
                prop_assert!(body_bytes <= ADMIN_REQUEST_BODY_BYTES_MAX);
            }
        }

        // A valid request split anywhere is partial before its end and the same request after.
        #[test]
        fn parse_head_is_incremental(cut in 0usize..80) {
            let text = b"GET /replication HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n";
            let cut = cut.min(text.len());
            let head = parse_head(&text[..cut]);
            if cut < text.len() {
                prop_assert_eq!(head, Ok(Head::Partial));
            } else {
                let complete = matches!(head, Ok(Head::Complete { .. }));
                prop_assert!(complete);
            }
        }
    }
}
