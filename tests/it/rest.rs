//! The REST API and HTTP handling on the public port (spec §7, §9): publish (`/events`,
//! `/batch_events`), limits, request signatures, routing errors, channel listing and
//! description across cores, and HTTP robustness (keep-alive, pipelining, bad requests).
//!
//! "Nothing was delivered" is checked with a sentinel: after the request under test, a valid
//! event is published on the same channel and must be the next frame the subscriber reads (one
//! core sequences each channel, so anything published earlier would be read first).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringcast::http::signature::{hmac_sha256_hex, md5_hex, parse_query, string_to_sign};
use serde_json::{Value, json};

use crate::support::{
    APP_KEY, APP_SECRET, Client, Options, Server, WAIT, http, parse_response, raw, signed_query,
    unix_now,
};

const EVENTS: &str = "/apps/123456/events";
const BATCH: &str = "/apps/123456/batch_events";
const CHANNELS: &str = "/apps/123456/channels";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The frame a subscriber receives for a published event (`data_json` is raw JSON text).
fn frame(event: &str, channel: &str, data_json: &str) -> String {
    format!(
        r#"{{"event":{},"channel":{},"data":{data_json}}}"#,
        Value::from(event),
        Value::from(channel)
    )
}

/// Asserts a REST error response: the status and a JSON body `{"error":"...","code":status}`.
fn assert_error(response: &(u16, String), status: u16) {
    let (got, body) = response;
    assert_eq!(*got, status, "body: {body}");
    let value: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    assert_eq!(value["code"], json!(status), "body: {body}");
    assert!(
        value["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error message missing: {body}"
    );
}

/// Asserts a 200 response whose body is the JSON `expected` (key order is not significant).
fn assert_ok_json(response: &(u16, String), expected: &Value) {
    let (status, body) = response;
    assert_eq!(*status, 200, "body: {body}");
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
    assert_eq!(&value, expected, "body: {body}");
}

/// Publishes a sentinel event on `channel` and asserts it is the next frame `client` reads, i.e.
/// nothing else was delivered to it on that channel before.
fn assert_next_is_sentinel(server: &Server, client: &mut Client, channel: &str) {
    server.trigger(&json!({"name":"sentinel","channel":channel,"data":"end"}));
    assert_eq!(client.recv_text(), frame("sentinel", channel, r#""end""#));
}

/// The core a connection lives on: socket ids carry the core number in the low bits of their
/// second part (`low = n * cores + core`); every server here runs 2 cores.
fn core_of(client: &Client) -> u64 {
    let (_, low) = client.socket_id.split_once('.').expect("socket id");
    low.parse::<u64>().expect("socket id low part") % 2
}

/// Opens clients until there are at least `count` and both cores have one (bounded); the
/// first two returned are on different cores.
fn clients_on_both_cores(server: &Server, count: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..64 {
        let both = (0..2).all(|core| clients.iter().any(|c| core_of(c) == core));
        if both && clients.len() >= count {
            break;
        }
        clients.push(server.client());
    }
    let first = clients
        .iter()
        .position(|c| core_of(c) == 0)
        .expect("no client landed on core 0 in 64 connections");
    let client = clients.remove(first);
    clients.insert(0, client);
    let second = clients
        .iter()
        .position(|c| core_of(c) == 1)
        .expect("no client landed on core 1 in 64 connections");
    let client = clients.remove(second);
    clients.insert(1, client);
    clients
}

/// Signs a raw query (as a client writes it, without `auth_signature`) the way the SDKs do:
/// over the percent-decoded values. Returns the full target with the signature appended.
fn sign_raw(method: &str, path: &str, raw_query: &str) -> String {
    let params = parse_query(raw_query);
    let signature = hmac_sha256_hex(APP_SECRET, &string_to_sign(method, path, &params));
    format!("{path}?{raw_query}&auth_signature={signature}")
}

/// A signed GET returning (status, body).
fn get_json(server: &Server, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    server.rest("GET", path, params, "")
}

/// Polls `GET path` until the body equals `expected` (bounded: at most 5 s).
fn poll_json(server: &Server, path: &str, params: &[(&str, &str)], expected: &Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get_json(server, path, params);
        let value: Option<Value> = serde_json::from_str(&body).ok();
        if status == 200 && value.as_ref() == Some(expected) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("GET {path} never returned {expected} within 5 s; last: {status} {body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A signed REST call with an explicit `auth_timestamp`. Retries (bounded) when the wall clock
/// crossed a second boundary during the call, so the server's second is known to equal `now`.
fn rest_at_offset(server: &Server, offset: i64) -> (u16, String) {
    for _ in 0..10 {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let timestamp = before.checked_add_signed(offset).unwrap();
        let query = signed_query("GET", CHANNELS, &[], b"", APP_KEY, APP_SECRET, timestamp);
        let response = http(server.addr, "GET", &format!("{CHANNELS}?{query}"), "");
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if before == after {
            return response;
        }
    }
    panic!("the clock crossed a second boundary during 10 calls in a row");
}

/// A parsed HTTP response read from a persistent connection.
struct Response {
    status: u16,
    head: String,
    body: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads exactly one `Content-Length`-framed response from `stream`; `buf` keeps the bytes of
/// any following response.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| {
                    value.trim().parse::<usize>().expect("Content-Length")
                });
            let total = end + 4 + length;
            if buf.len() >= total {
                let body = String::from_utf8_lossy(&buf[end + 4..total]).to_string();
                buf.drain(..total);
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no status in {head:?}"));
                return Response { status, head, body };
            }
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).unwrap_or_else(|e| {
            panic!(
                "reading a response: {e}; have {:?}",
                String::from_utf8_lossy(buf)
            )
        });
        assert!(
            n > 0,
            "connection closed before a complete response; have {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// A signed request as raw bytes for a persistent connection (no `Connection` header).
fn signed_request(method: &str, path: &str, params: &[(&str, &str)], body: &str) -> String {
    let query = signed_query(
        method,
        path,
        params,
        body.as_bytes(),
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    format!(
        "{method} {path}?{query} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the peer closes; `None` if it did not close within `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(out),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("read error: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. POST /events
// ---------------------------------------------------------------------------------------------

// `channel` publishes the exact spec frame and answers 200 `{}`.
#[test]
fn trigger_single_channel_delivers_exact_frame() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("my-channel");
    let body = json!({"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"});
    let response = server.rest("POST", EVENTS, &[], &body.to_string());
    assert_eq!(response, (200, "{}".to_string()));
    assert_eq!(
        client.recv_text(),
        r#"{"event":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#
    );
    assert_next_is_sentinel(&server, &mut client, "my-channel");
}

// `channels` publishes one frame per channel, each with its own `channel` field.
#[test]
fn trigger_several_channels_one_frame_each() {
    let server = Server::start();
    let names = ["multi-a", "multi-b", "multi-c"];
    let mut single: Vec<Client> = names
        .iter()
        .map(|name| {
            let mut client = server.client();
            client.subscribe(name);
            client
        })
        .collect();
    let mut all = server.client();
    for name in names {
        all.subscribe(name);
    }
    let response = server.rest(
        "POST",
        EVENTS,
        &[],
        &json!({"name":"fan","channels":names,"data":"x"}).to_string(),
    );
    assert_eq!(response, (200, "{}".to_string()));
    for (client, name) in single.iter_mut().zip(names) {
        assert_eq!(client.recv_text(), frame("fan", name, r#""x""#));
    }
    // One frame per channel for a socket on all of them; order across channels is not defined.
    let mut got: Vec<String> = (0..names.len()).map(|_| all.recv_text()).collect();
    got.sort();
    let mut expected: Vec<String> = names.iter().map(|n| frame("fan", n, r#""x""#)).collect();
    expected.sort();
    assert_eq!(got, expected);
    for (client, name) in single.iter_mut().zip(names) {
        assert_next_is_sentinel(&server, client, name);
    }
    for name in names {
        assert_next_is_sentinel(&server, &mut all, name);
    }
}

// `channel` and `channels` together publish to their union, each channel once.
#[test]
fn trigger_channel_and_channels_union() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("union-a");
    client.subscribe("union-b");
    client.subscribe("union-c");
    let body = json!({"name":"u","channel":"union-a","channels":["union-b","union-a"],"data":"d"});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &body.to_string()),
        (200, "{}".to_string())
    );
    let mut got = vec![client.recv_text(), client.recv_text()];
    got.sort();
    assert_eq!(
        got,
        vec![
            frame("u", "union-a", r#""d""#),
            frame("u", "union-b", r#""d""#)
        ]
    );
    // No duplicate on union-a and nothing on union-c.
    for name in ["union-a", "union-b", "union-c"] {
        assert_next_is_sentinel(&server, &mut client, name);
    }
}

// Non-string `data` (an object) is forwarded as the raw JSON text received.
#[test]
fn trigger_object_data_forwarded_raw() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("raw-data");
    let body = r#"{"name":"obj","channel":"raw-data","data":{"x":[1,2.50],"y":"z"}}"#;
    assert_eq!(
        server.rest("POST", EVENTS, &[], body),
        (200, "{}".to_string())
    );
    assert_eq!(
        client.recv_text(),
        r#"{"event":"obj","channel":"raw-data","data":{"x":[1,2.50],"y":"z"}}"#
    );
}

// ---------------------------------------------------------------------------------------------
// 2. socket_id exclusion
// ---------------------------------------------------------------------------------------------

// `socket_id` excludes that connection; other subscribers still receive the event.
#[test]
fn trigger_excludes_socket_id() {
    let server = Server::start();
    let mut clients = clients_on_both_cores(&server, 2);
    let mut second = clients.remove(1);
    let mut first = clients.remove(0);
    first.subscribe("exclude");
    second.subscribe("exclude");
    let body = json!({"name":"ex","channel":"exclude","data":"1","socket_id":first.socket_id});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &body.to_string()),
        (200, "{}".to_string())
    );
    assert_eq!(second.recv_text(), frame("ex", "exclude", r#""1""#));
    first.expect_silence(Duration::from_millis(300));
    assert_next_is_sentinel(&server, &mut first, "exclude");
    assert_next_is_sentinel(&server, &mut second, "exclude");
}

// ---------------------------------------------------------------------------------------------
// 3. POST /batch_events
// ---------------------------------------------------------------------------------------------

// Ten events on ten channels are all delivered, each to its channel's subscribers.
#[test]
fn batch_of_ten_on_different_channels_delivered() {
    let server = Server::start();
    let names: Vec<String> = (0..10).map(|i| format!("batch-{i}")).collect();
    let mut each: Vec<Client> = names
        .iter()
        .map(|name| {
            let mut client = server.client();
            client.subscribe(name);
            client
        })
        .collect();
    let mut all = server.client();
    for name in &names {
        all.subscribe(name);
    }
    let batch: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"name":format!("e{i}"),"channel":name,"data":format!("d{i}")}))
        .collect();
    let response = server.rest("POST", BATCH, &[], &json!({ "batch": batch }).to_string());
    assert_eq!(response, (200, "{}".to_string()));
    let expected: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| frame(&format!("e{i}"), name, &format!("\"d{i}\"")))
        .collect();
    for (client, expected) in each.iter_mut().zip(&expected) {
        assert_eq!(&client.recv_text(), expected);
    }
    let mut got: Vec<String> = (0..10).map(|_| all.recv_text()).collect();
    got.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(got, sorted);
    for name in &names {
        assert_next_is_sentinel(&server, &mut all, name);
    }
}

// Within a batch, events on the same channel arrive in batch order.
#[test]
fn batch_keeps_order_per_channel() {
    let server = Server::start();
    let mut clients = clients_on_both_cores(&server, 2);
    for client in &mut clients {
        client.subscribe("seq-a");
        client.subscribe("seq-b");
    }
    let batch: Vec<Value> = (0..10)
        .map(|i| {
            let channel = if i % 3 == 0 { "seq-a" } else { "seq-b" };
            json!({"name":format!("e{i}"),"channel":channel,"data":i.to_string()})
        })
        .collect();
    let response = server.rest("POST", BATCH, &[], &json!({ "batch": batch }).to_string());
    assert_eq!(response, (200, "{}".to_string()));
    for client in &mut clients {
        let got: Vec<Value> = (0..10).map(|_| client.recv_event()).collect();
        for channel in ["seq-a", "seq-b"] {
            let names: Vec<&str> = got
                .iter()
                .filter(|e| e["channel"] == channel)
                .map(|e| e["event"].as_str().unwrap())
                .collect();
            let expected: Vec<String> = (0..10)
                .filter(|i| (i % 3 == 0) == (channel == "seq-a"))
                .map(|i| format!("e{i}"))
                .collect();
            assert_eq!(names, expected, "order on {channel}");
        }
    }
}

// Eleven events are refused with 400 and none is delivered.
#[test]
fn batch_of_eleven_rejected_nothing_delivered() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("big-batch");
    let batch: Vec<Value> = (0..11)
        .map(|i| json!({"name":"e","channel":"big-batch","data":i.to_string()}))
        .collect();
    let response = server.rest("POST", BATCH, &[], &json!({ "batch": batch }).to_string());
    assert_error(&response, 400);
    assert_next_is_sentinel(&server, &mut client, "big-batch");
}

// One invalid event (bad channel name, or no name) fails the whole batch: 400, none delivered.
#[test]
fn batch_with_one_invalid_event_rejected_nothing_delivered() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("valid-a");
    client.subscribe("valid-b");
    let invalid_events = [
        json!({"name":"bad","channel":"not a valid name","data":"x"}),
        json!({"channel":"valid-b","data":"x"}),
        json!({"name":"bad","channels":["valid-a","valid-b"],"data":"x"}),
    ];
    for invalid in invalid_events {
        let batch = vec![
            json!({"name":"ok","channel":"valid-a","data":"1"}),
            invalid.clone(),
            json!({"name":"ok","channel":"valid-b","data":"2"}),
        ];
        let response = server.rest("POST", BATCH, &[], &json!({ "batch": batch }).to_string());
        assert_error(&response, 400);
        assert_next_is_sentinel(&server, &mut client, "valid-a");
        assert_next_is_sentinel(&server, &mut client, "valid-b");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Limits
// ---------------------------------------------------------------------------------------------

// Data over 10 KB (10 240 bytes) is 413; exactly 10 240 bytes is accepted.
#[test]
fn data_over_ten_kilobytes_is_413() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("big-data");
    let over = json!({"name":"e","channel":"big-data","data":"a".repeat(10_241)});
    assert_error(&server.rest("POST", EVENTS, &[], &over.to_string()), 413);
    let batch = json!({"batch":[{"name":"e","channel":"big-data","data":"a".repeat(10_241)}]});
    assert_error(&server.rest("POST", BATCH, &[], &batch.to_string()), 413);
    assert_next_is_sentinel(&server, &mut client, "big-data");
    let at = json!({"name":"e","channel":"big-data","data":"a".repeat(10_240)});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &at.to_string()),
        (200, "{}".to_string())
    );
    assert_eq!(
        client.recv_text().len(),
        frame("e", "big-data", "\"\"").len() + 10_240
    );
}

// The per-app `payload_bytes_max` is honoured: 101 bytes is 413 with a limit of 100.
#[test]
fn configured_payload_limit_is_413() {
    let server = Server::with(Options {
        extra_app: "payload_bytes_max = 100".into(),
        ..Options::default()
    });
    let over = json!({"name":"e","channel":"c","data":"a".repeat(101)});
    assert_error(&server.rest("POST", EVENTS, &[], &over.to_string()), 413);
    let at = json!({"name":"e","channel":"c","data":"a".repeat(100)});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &at.to_string()),
        (200, "{}".to_string())
    );
}

// 101 channels is 400 (100 is fine).
#[test]
fn too_many_channels_is_400() {
    let server = Server::start();
    let names: Vec<String> = (0..101).map(|i| format!("ch-{i}")).collect();
    let over = json!({"name":"e","channels":names,"data":"x"});
    assert_error(&server.rest("POST", EVENTS, &[], &over.to_string()), 400);
    let at = json!({"name":"e","channels":names[..100],"data":"x"});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &at.to_string()),
        (200, "{}".to_string())
    );
}

// An event name over 200 bytes is 400 (200 is fine).
#[test]
fn event_name_too_long_is_400() {
    let server = Server::start();
    let over = json!({"name":"n".repeat(201),"channel":"c","data":"x"});
    assert_error(&server.rest("POST", EVENTS, &[], &over.to_string()), 400);
    let at = json!({"name":"n".repeat(200),"channel":"c","data":"x"});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &at.to_string()),
        (200, "{}".to_string())
    );
}

// Invalid channel names are 400 and nothing is published on the valid ones.
#[test]
fn invalid_channel_name_is_400() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("fine");
    for body in [
        json!({"name":"e","channel":"has space","data":"x"}),
        json!({"name":"e","channels":["fine","bad!name"],"data":"x"}),
        json!({"name":"e","channel":"c".repeat(201),"data":"x"}),
        json!({"name":"e","channel":"","data":"x"}),
    ] {
        assert_error(&server.rest("POST", EVENTS, &[], &body.to_string()), 400);
    }
    assert_next_is_sentinel(&server, &mut client, "fine");
}

// More than one channel when one of them is `private-encrypted-` is 400.
#[test]
fn encrypted_multi_channel_trigger_is_400() {
    let server = Server::start();
    let body = json!({"name":"e","channels":["private-encrypted-a","plain"],"data":"x"});
    assert_error(&server.rest("POST", EVENTS, &[], &body.to_string()), 400);
    let body = json!({"name":"e","channel":"plain","channels":["private-encrypted-a"],"data":"x"});
    assert_error(&server.rest("POST", EVENTS, &[], &body.to_string()), 400);
    let single = json!({"name":"e","channel":"private-encrypted-a","data":"x"});
    assert_eq!(
        server.rest("POST", EVENTS, &[], &single.to_string()),
        (200, "{}".to_string())
    );
}

// A request body larger than `http_body_bytes_max` is 413.
#[test]
fn body_over_http_limit_is_413() {
    let mut server = Server::with(Options {
        extra_server: "http_body_bytes_max = 4096".into(),
        ..Options::default()
    });
    let body = json!({"name":"e","channel":"c","data":"a".repeat(5_000)}).to_string();
    assert_error(&server.rest("POST", EVENTS, &[], &body), 413);
    let small = json!({"name":"e","channel":"c","data":"a".repeat(3_000)}).to_string();
    assert_eq!(
        server.rest("POST", EVENTS, &[], &small),
        (200, "{}".to_string())
    );
    assert!(server.is_alive());
}

// ---------------------------------------------------------------------------------------------
// 5. Signatures (spec §7.2)
// ---------------------------------------------------------------------------------------------

// A tampered signature is 401 with a JSON error body.
#[test]
fn bad_signature_is_401() {
    let server = Server::start();
    let query = signed_query("GET", CHANNELS, &[], b"", APP_KEY, APP_SECRET, unix_now());
    let (rest, signature) = query.rsplit_once("auth_signature=").unwrap();
    let last = signature.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &signature[..signature.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let response = http(
        server.addr,
        "GET",
        &format!("{CHANNELS}?{rest}auth_signature={flipped}"),
        "",
    );
    assert_error(&response, 401);
    // Signed with another secret.
    let query = signed_query(
        "GET",
        CHANNELS,
        &[],
        b"",
        APP_KEY,
        "not-the-secret",
        unix_now(),
    );
    assert_error(
        &http(server.addr, "GET", &format!("{CHANNELS}?{query}"), ""),
        401,
    );
    // Signed for another path.
    let query = signed_query(
        "GET",
        "/apps/123456/channels/x",
        &[],
        b"",
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    assert_error(
        &http(server.addr, "GET", &format!("{CHANNELS}?{query}"), ""),
        401,
    );
    // No signature at all.
    assert_error(&http(server.addr, "GET", CHANNELS, ""), 401);
    // And a correct one is fine.
    assert_ok_json(&get_json(&server, CHANNELS, &[]), &json!({"channels":{}}));
}

// An auth_key that is not the app's key is 401 even when signed with the right secret.
#[test]
fn wrong_auth_key_is_401() {
    let server = Server::start();
    let query = signed_query(
        "GET",
        CHANNELS,
        &[],
        b"",
        "other-key",
        APP_SECRET,
        unix_now(),
    );
    assert_error(
        &http(server.addr, "GET", &format!("{CHANNELS}?{query}"), ""),
        401,
    );
}

// Timestamps more than 600 s away in either direction are 401; 590 s is accepted.
#[test]
fn timestamp_window_is_600_seconds() {
    let server = Server::start();
    assert_error(&rest_at_offset(&server, -601), 401);
    assert_error(&rest_at_offset(&server, 601), 401);
    assert_error(&rest_at_offset(&server, -3600), 401);
    assert_ok_json(&rest_at_offset(&server, -590), &json!({"channels":{}}));
    assert_ok_json(&rest_at_offset(&server, 590), &json!({"channels":{}}));
    assert_ok_json(&rest_at_offset(&server, 0), &json!({"channels":{}}));
}

// A body_md5 that does not match the body is 401, as is a body without body_md5.
#[test]
fn body_md5_mismatch_or_missing_is_401() {
    let server = Server::start();
    let body = json!({"name":"e","channel":"c","data":"x"}).to_string();
    // Correctly signed over a body_md5 of some other body.
    let wrong = md5_hex(b"something else");
    let query = signed_query(
        "POST",
        EVENTS,
        &[("body_md5", &wrong)],
        b"",
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    assert_error(
        &http(server.addr, "POST", &format!("{EVENTS}?{query}"), &body),
        401,
    );
    // Signed without body_md5 but sent with a body.
    let query = signed_query("POST", EVENTS, &[], b"", APP_KEY, APP_SECRET, unix_now());
    assert_error(
        &http(server.addr, "POST", &format!("{EVENTS}?{query}"), &body),
        401,
    );
    // The body changed after signing.
    let query = signed_query(
        "POST",
        EVENTS,
        &[],
        body.as_bytes(),
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    let tampered = body.replace("\"x\"", "\"y\"");
    assert_error(
        &http(server.addr, "POST", &format!("{EVENTS}?{query}"), &tampered),
        401,
    );
    // Correct.
    assert_eq!(
        http(server.addr, "POST", &format!("{EVENTS}?{query}"), &body),
        (200, "{}".to_string())
    );
}

// pusher-http-python sends body_md5 of the empty body on GET: it must verify.
#[test]
fn get_with_empty_body_md5_is_accepted() {
    let server = Server::start();
    let empty = md5_hex(b"");
    assert_eq!(empty, "d41d8cd98f00b204e9800998ecf8427e");
    assert_ok_json(
        &get_json(&server, CHANNELS, &[("body_md5", &empty)]),
        &json!({"channels":{}}),
    );
    assert_ok_json(
        &get_json(
            &server,
            "/apps/123456/channels/some-channel",
            &[("body_md5", &empty)],
        ),
        &json!({"occupied":false}),
    );
    // A body_md5 of a non-empty body on a bodiless GET is 401.
    let wrong = md5_hex(b"{}");
    assert_error(&get_json(&server, CHANNELS, &[("body_md5", &wrong)]), 401);
}

// Query values are percent-decoded before signing: `info=user_count%2Csubscription_count` (PHP)
// and a literal comma (node, python) both verify.
#[test]
fn percent_encoded_info_verifies() {
    let server = Server::start();
    let path = "/apps/123456/channels/presence-room";
    let auth = format!(
        "auth_key={APP_KEY}&auth_timestamp={}&auth_version=1.0",
        unix_now()
    );
    for info in [
        "user_count%2Csubscription_count",
        "user_count,subscription_count",
        "user_count%2csubscription_count",
    ] {
        let target = sign_raw("GET", path, &format!("{auth}&info={info}"));
        let (status, body) = http(server.addr, "GET", &target, "");
        assert_eq!(status, 200, "info={info}: {body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["occupied"], json!(false), "{body}");
    }
    // The listing endpoint too.
    let target = sign_raw(
        "GET",
        CHANNELS,
        &format!("{auth}&filter_by_prefix=presence-&info=user_count"),
    );
    assert_ok_json(
        &http(server.addr, "GET", &target, ""),
        &json!({"channels":{}}),
    );
    // Signing the encoded text instead of the decoded value is wrong.
    let query = format!("{auth}&info=user_count%2Csubscription_count");
    let mut params = parse_query(&query);
    params.last_mut().unwrap().1 = "user_count%2Csubscription_count".into();
    let signature = hmac_sha256_hex(APP_SECRET, &string_to_sign("GET", path, &params));
    let target = format!("{path}?{query}&auth_signature={signature}");
    assert_error(&http(server.addr, "GET", &target, ""), 401);
}

// ---------------------------------------------------------------------------------------------
// 6. Routing errors
// ---------------------------------------------------------------------------------------------

// An unknown app id is 404 (before the signature is looked at).
#[test]
fn unknown_app_is_404() {
    let server = Server::start();
    let body = json!({"name":"e","channel":"c","data":"x"}).to_string();
    assert_error(&server.rest("POST", "/apps/999999/events", &[], &body), 404);
    assert_error(&http(server.addr, "GET", "/apps/999999/channels", ""), 404);
}

// A disabled app is 403.
#[test]
fn disabled_app_is_403() {
    let server = Server::with(Options {
        extra_app: "enabled = false".into(),
        ..Options::default()
    });
    let body = json!({"name":"e","channel":"c","data":"x"}).to_string();
    assert_error(&server.rest("POST", EVENTS, &[], &body), 403);
    assert_error(&server.rest("GET", CHANNELS, &[], ""), 403);
}

// Unknown paths are 404 with a JSON error body, inside and outside `/apps/{id}`.
#[test]
fn unknown_path_is_404_json() {
    let server = Server::start();
    assert_error(&http(server.addr, "GET", "/nope", ""), 404);
    assert_error(&http(server.addr, "POST", "/apps", "{}"), 404);
    assert_error(&server.rest("GET", "/apps/123456/nope", &[], ""), 404);
    assert_error(
        &server.rest("GET", "/apps/123456/channels/a/b/c", &[], ""),
        404,
    );
}

// The wrong method on a known route is 405.
#[test]
fn wrong_method_is_405() {
    let server = Server::start();
    assert_error(&server.rest("GET", EVENTS, &[], ""), 405);
    assert_error(&server.rest("GET", BATCH, &[], ""), 405);
    assert_error(&server.rest("POST", CHANNELS, &[], "{}"), 405);
}

// ---------------------------------------------------------------------------------------------
// 7. GET /channels
// ---------------------------------------------------------------------------------------------

// The listing has exactly the occupied channels across both cores, filters by prefix, refuses
// user_count without a presence prefix, and drops channels whose last subscriber left.
#[test]
fn channel_listing_across_cores() {
    let server = Server::start();
    assert_ok_json(&get_json(&server, CHANNELS, &[]), &json!({"channels":{}}));
    let mut clients = clients_on_both_cores(&server, 8);
    let names = ["alpha", "beta", "room-1", "room-2", "room-3", "gamma"];
    // Client i subscribes to names[i % 6]; clients 0 and 1 (one per core) also to "shared".
    for (i, client) in clients.iter_mut().enumerate() {
        client.subscribe(names[i % names.len()]);
        if i < 2 {
            client.subscribe("shared");
        }
    }
    let occupied: Vec<&str> = names
        .iter()
        .take(clients.len())
        .copied()
        .chain(["shared"])
        .collect();
    let listing = |names: &[&str]| {
        let map: serde_json::Map<String, Value> =
            names.iter().map(|n| (n.to_string(), json!({}))).collect();
        json!({ "channels": map })
    };
    assert_ok_json(&get_json(&server, CHANNELS, &[]), &listing(&occupied));
    let rooms: Vec<&str> = occupied
        .iter()
        .copied()
        .filter(|n| n.starts_with("room-"))
        .collect();
    assert_ok_json(
        &get_json(&server, CHANNELS, &[("filter_by_prefix", "room-")]),
        &listing(&rooms),
    );
    assert_ok_json(
        &get_json(&server, CHANNELS, &[("filter_by_prefix", "zzz")]),
        &json!({"channels":{}}),
    );
    assert_error(&get_json(&server, CHANNELS, &[("info", "user_count")]), 400);
    assert_error(
        &get_json(
            &server,
            CHANNELS,
            &[("filter_by_prefix", "room-"), ("info", "user_count")],
        ),
        400,
    );

    // "alpha" is held by clients 0 and 6.
    let alpha_holders: Vec<usize> = (0..clients.len())
        .filter(|i| i % names.len() == 0)
        .collect();
    for &i in &alpha_holders {
        clients[i].send(&json!({"event":"pusher:unsubscribe","data":{"channel":"alpha"}}));
    }
    let remaining: Vec<&str> = occupied.iter().copied().filter(|n| *n != "alpha").collect();
    poll_json(&server, CHANNELS, &[], &listing(&remaining));

    // "shared" is left by one client unsubscribing and the other disconnecting.
    clients[0].send(&json!({"event":"pusher:unsubscribe","data":{"channel":"shared"}}));
    let second = clients.remove(1);
    drop(second);
    let remaining: Vec<&str> = remaining
        .iter()
        .copied()
        .filter(|n| *n != "shared")
        .collect();
    poll_json(&server, CHANNELS, &[], &listing(&remaining));

    // Disconnecting everyone empties the listing.
    for client in clients {
        client.close();
    }
    poll_json(&server, CHANNELS, &[], &json!({"channels":{}}));
}

// ---------------------------------------------------------------------------------------------
// 8. GET /channels/{name}
// ---------------------------------------------------------------------------------------------

// Channel description: unoccupied, then 3 subscribers over both cores with subscription_count,
// and user_count refused on a non-presence channel.
#[test]
fn channel_description_across_cores() {
    let server = Server::start();
    let path = "/apps/123456/channels/described";
    assert_ok_json(&get_json(&server, path, &[]), &json!({"occupied":false}));
    let mut clients = clients_on_both_cores(&server, 3);
    for client in clients.iter_mut().take(3) {
        client.subscribe("described");
    }
    assert_ok_json(&get_json(&server, path, &[]), &json!({"occupied":true}));
    assert_ok_json(
        &get_json(&server, path, &[("info", "subscription_count")]),
        &json!({"occupied":true,"subscription_count":3}),
    );
    assert_error(&get_json(&server, path, &[("info", "user_count")]), 400);
    assert_error(
        &get_json(&server, path, &[("info", "subscription_count,user_count")]),
        400,
    );
    assert_ok_json(
        &get_json(
            &server,
            "/apps/123456/channels/empty",
            &[("info", "subscription_count")],
        ),
        &json!({"occupied":false,"subscription_count":0}),
    );
    // An invalid channel name is 400.
    assert_error(
        &get_json(&server, "/apps/123456/channels/bad%20name", &[]),
        400,
    );
}

// ---------------------------------------------------------------------------------------------
// 9. HTTP robustness
// ---------------------------------------------------------------------------------------------

// Two requests on one keep-alive connection are both answered.
#[test]
fn keep_alive_serves_several_requests() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("ka");
    let mut stream = connect(&server);
    let mut buf = Vec::new();
    let body = json!({"name":"e1","channel":"ka","data":"1"}).to_string();
    stream
        .write_all(signed_request("POST", EVENTS, &[], &body).as_bytes())
        .unwrap();
    let first = read_response(&mut stream, &mut buf);
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "{}"),
        "{}",
        first.head
    );
    assert!(
        first
            .head
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{}",
        first.head
    );
    stream
        .write_all(signed_request("GET", CHANNELS, &[], "").as_bytes())
        .unwrap();
    let second = read_response(&mut stream, &mut buf);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        serde_json::from_str::<Value>(&second.body).unwrap(),
        json!({"channels":{"ka":{}}})
    );
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream, &mut buf).status, 200);
    assert_eq!(client.recv_text(), frame("e1", "ka", r#""1""#));
}

// Pipelined requests (one of them waiting for the other core) are answered in request order.
#[test]
fn pipelined_requests_answered_in_order() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("pipe");
    let mut stream = connect(&server);
    let mut buf = Vec::new();
    let body = json!({"name":"piped","channel":"pipe","data":"p"}).to_string();
    let mut requests = String::new();
    requests += &signed_request("GET", CHANNELS, &[], "");
    requests += &signed_request("POST", EVENTS, &[], &body);
    requests += &signed_request(
        "GET",
        "/apps/123456/channels/pipe",
        &[("info", "subscription_count")],
        "",
    );
    requests += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    requests += &signed_request("GET", CHANNELS, &[("filter_by_prefix", "nothing-")], "");
    stream.write_all(requests.as_bytes()).unwrap();
    let responses: Vec<Response> = (0..5)
        .map(|_| read_response(&mut stream, &mut buf))
        .collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    let bodies: Vec<&str> = responses.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(statuses, vec![200; 5], "{bodies:?}");
    assert_eq!(
        serde_json::from_str::<Value>(bodies[0]).unwrap(),
        json!({"channels":{"pipe":{}}})
    );
    assert_eq!(bodies[1], "{}");
    assert_eq!(
        serde_json::from_str::<Value>(bodies[2]).unwrap(),
        json!({"occupied":true,"subscription_count":1})
    );
    assert_eq!(bodies[3], "OK");
    assert_eq!(
        serde_json::from_str::<Value>(bodies[4]).unwrap(),
        json!({"channels":{}})
    );
    assert_eq!(client.recv_text(), frame("piped", "pipe", r#""p""#));
}

// A head over `http_head_bytes_max` is 431; a malformed request line is 400; the server lives.
#[test]
fn oversized_head_and_malformed_request_line() {
    let mut server = Server::with(Options {
        extra_server: "http_head_bytes_max = 1024".into(),
        ..Options::default()
    });
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2_000)
    );
    let (status, body) = parse_response(&raw(server.addr, big.as_bytes()));
    assert_eq!(status, 431, "{body}");
    // Many small headers adding up over the limit.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..60 {
        many += &format!("X-H{i}: {}\r\n", "b".repeat(20));
    }
    many += "\r\n";
    assert_eq!(parse_response(&raw(server.addr, many.as_bytes())).0, 431);
    // A head just under the limit is fine.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(800)
    );
    assert_eq!(parse_response(&raw(server.addr, fits.as_bytes())).0, 200);
    for garbage in [
        &b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x00\x01\x02\x03 garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"POST /apps/123456/events HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ] {
        let response = raw(server.addr, garbage);
        let (status, body) = parse_response(&response);
        assert_eq!(
            status,
            400,
            "{:?} -> {body}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert!(server.is_alive());
    assert_eq!(http(server.addr, "GET", "/healthz", "").0, 200);
}

// A request sent halfway gets 408 or is closed once `request_timeout_ms` has passed.
#[test]
fn slow_request_times_out() {
    let mut server = Server::with(Options {
        extra_server: "request_timeout_ms = 500".into(),
        ..Options::default()
    });
    let partial_head = "POST /apps/123456/events HTTP/1.1\r\nHost: x\r\nContent-Le";
    let partial_body =
        "POST /apps/123456/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"na";
    for partial in [partial_head, partial_body] {
        let mut stream = connect(&server);
        stream.write_all(partial.as_bytes()).unwrap();
        // Generous bound (10x the configured timeout): the point is that it closes at all.
        let received = read_until_closed(&mut stream, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("connection still open 5 s after {partial:?}"));
        if !received.is_empty() {
            let (status, body) = parse_response(&received);
            assert_eq!(status, 408, "{body}");
        }
    }
    // An idle keep-alive connection is closed too.
    let mut stream = connect(&server);
    let mut buf = Vec::new();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream, &mut buf).status, 200);
    assert!(read_until_closed(&mut stream, Duration::from_secs(5)).is_some());
    assert!(server.is_alive());
    assert_eq!(http(server.addr, "GET", "/healthz", "").0, 200);
}

// `Connection: close` closes the connection after the response.
#[test]
fn connection_close_closes_after_response() {
    let server = Server::start();
    let mut stream = connect(&server);
    let mut buf = Vec::new();
    let query = signed_query("GET", CHANNELS, &[], b"", APP_KEY, APP_SECRET, unix_now());
    let request =
        format!("GET {CHANNELS}?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let response = read_response(&mut stream, &mut buf);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        response.head
    );
    let rest =
        read_until_closed(&mut stream, WAIT).expect("the server did not close the connection");
    assert!(
        buf.is_empty() && rest.is_empty(),
        "bytes after the response: {rest:?}"
    );
}

// A chunked request body is de-chunked, verified against body_md5 and published.
#[test]
fn chunked_request_body_works() {
    let server = Server::start();
    let mut client = server.client();
    client.subscribe("chunky");
    let body = json!({"name":"chunked","channel":"chunky","data":"c".repeat(300)}).to_string();
    let query = signed_query(
        "POST",
        EVENTS,
        &[],
        body.as_bytes(),
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    let (a, b) = body.split_at(100);
    let request = format!(
        "POST {EVENTS}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    assert_eq!(
        parse_response(&raw(server.addr, request.as_bytes())),
        (200, "{}".to_string())
    );
    assert_eq!(
        client.recv_text(),
        frame("chunked", "chunky", &format!("\"{}\"", "c".repeat(300)))
    );
}

// After a run of bad inputs on one server, it is still alive and serving.
#[test]
fn server_survives_bad_inputs() {
    // A short request timeout so inputs that never complete a request are closed quickly.
    let mut server = Server::with(Options {
        extra_server: "request_timeout_ms = 500".into(),
        ..Options::default()
    });
    let inputs: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /apps/123456/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST /apps/123456/events HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        format!("POST {EVENTS}?auth_key={APP_KEY} HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{{{{{{{{{").into_bytes(),
        vec![0xff; 3000],
    ];
    for input in inputs {
        let _ = raw(server.addr, &input);
    }
    // Signed but nonsensical bodies.
    for body in ["", "[]", "null", "{", "{\"name\":1}", "{\"batch\":{}}"] {
        let (status, _) = server.rest("POST", EVENTS, &[], body);
        assert_eq!(status, 400, "{body:?}");
        let (status, _) = server.rest("POST", BATCH, &[], body);
        assert_eq!(status, 400, "{body:?}");
    }
    assert!(server.is_alive());
    assert_eq!(http(server.addr, "GET", "/healthz", "").0, 200);
}

// ---------------------------------------------------------------------------------------------
// 10. Health
// ---------------------------------------------------------------------------------------------

// GET /healthz is 200.
#[test]
fn healthz_is_200() {
    let server = Server::start();
    let (status, _) = http(server.addr, "GET", "/healthz", "");
    assert_eq!(status, 200);
}
