//! WebSocket framing and the Pusher connection protocol (spec §1, §2.1–2.2, §3): handshake
//! transcripts, in-band refusals and their close codes, ping/pong in both layers, the activity
//! ping, subscribe/unsubscribe, private-channel auth, bad messages, bad frames, fan-out.
//!
//! Ordering-based absence checks ("the next message is the pong, so nothing else came") run on
//! `cores = 1`, where every reply, subscription and delivery happens on the one event loop in
//! the order the inputs arrived; the tests that need two cores say so.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{APP_KEY, APP_SECRET, Client, Options, Server, WAIT};

const PONG: &str = r#"{"event":"pusher:pong","data":"{}"}"#;
const PING: &str = r#"{"event":"pusher:ping","data":"{}"}"#;
const INVALID_FORMAT: &str =
    r#"{"event":"pusher:error","data":{"code":null,"message":"Invalid message format"}}"#;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn server_with(cores: usize, extra_server: &str, extra_app: &str) -> Server {
    Server::with(Options {
        cores,
        extra_server: extra_server.to_string(),
        extra_app: extra_app.to_string(),
        ..Options::default()
    })
}

/// One event loop: replies and deliveries keep the order of the inputs (see module doc).
fn single_core() -> Server {
    server_with(1, "", "")
}

fn is_socket_id(id: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    id.split_once('.')
        .is_some_and(|(high, low)| digits(high) && digits(low))
}

fn established_text(socket_id: &str, activity_timeout: u64) -> String {
    format!(
        r#"{{"event":"pusher:connection_established","data":"{{\"socket_id\":\"{socket_id}\",\"activity_timeout\":{activity_timeout}}}"}}"#
    )
}

/// Reads `pusher:connection_established` as raw text and returns (text, socket_id).
fn read_established(client: &mut Client) -> (String, String) {
    let text = client.recv_text();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(value["event"], "pusher:connection_established", "{text}");
    let data: Value = serde_json::from_str(value["data"].as_str().expect("string data")).unwrap();
    let socket_id = data["socket_id"]
        .as_str()
        .expect("socket_id string")
        .to_string();
    (text, socket_id)
}

fn succeeded_text(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":"{{}}"}}"#,
        serde_json::to_string(channel).unwrap()
    )
}

fn private_auth(socket_id: &str, channel: &str) -> String {
    let signature =
        ringcast::http::signature::hmac_sha256_hex(APP_SECRET, &format!("{socket_id}:{channel}"));
    format!("{APP_KEY}:{signature}")
}

fn send_subscribe(client: &mut Client, channel: &str, auth: Option<&str>) {
    let data = match auth {
        Some(auth) => json!({"auth":auth,"channel":channel}),
        None => json!({"channel":channel}),
    };
    client.send(&json!({"event":"pusher:subscribe","data":data}));
}

/// Sends `pusher:ping` (pusher-js form) and asserts the very next text message is the pong.
fn assert_ping_pong(client: &mut Client) {
    client.send_text(r#"{"event":"pusher:ping","data":{}}"#);
    assert_eq!(client.recv_text(), PONG);
}

/// The next WebSocket message of any kind (control frames included).
fn next_message(client: &mut Client) -> Message {
    client
        .ws
        .read()
        .unwrap_or_else(|e| panic!("expected a message, got error {e}"))
}

/// The exact frame of a REST-published event: `data` is the string as triggered.
fn event_text(name: &str, channel: &str, data: &str) -> String {
    format!(
        r#"{{"event":{},"channel":{},"data":{}}}"#,
        Value::from(name),
        Value::from(channel),
        Value::from(data)
    )
}

fn trigger(server: &Server, name: &str, channel: &str, data: &str) {
    server.trigger(&json!({"name":name,"channel":channel,"data":data}));
}

/// After a protocol error the process must still run and accept new clients.
fn assert_server_healthy(server: &mut Server) {
    assert!(
        server.is_alive(),
        "server died; stderr:\n{}",
        server.stderr()
    );
    let mut client = server.client();
    assert!(is_socket_id(&client.socket_id));
    assert_ping_pong(&mut client);
}

// ---------------------------------------------------------------------------------------------
// A raw WebSocket client: hand-made upgrade, hand-encoded frames (masked or not, any bits)
// ---------------------------------------------------------------------------------------------

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: `first` is the first header byte (FIN, RSV bits, opcode) as sent.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(first, payload, true)
}

fn encode_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades by hand on `/app/{APP_KEY}?protocol=7` and reads `connection_established`.
    fn connect(addr: SocketAddr) -> RawWs {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let request = format!(
            "GET /app/{APP_KEY}?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n\
             Host: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        raw.send(request.as_bytes());
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            raw.fill().expect("reading the 101 response");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "Sec-WebSocket-Accept: {head}"
        );
        raw.buf.drain(..end);
        let text = raw.expect_text();
        assert!(
            text.starts_with(r#"{"event":"pusher:connection_established""#),
            "{text}"
        );
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Writes `bytes` one byte per write, so the server sees arbitrary read boundaries.
    fn send_trickle(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.stream.write_all(std::slice::from_ref(byte)).unwrap();
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("end of stream".to_string()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(error) => Err(format!("read error: {error}")),
        }
    }

    fn fill_to(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(())
    }

    /// The next server frame as (first header byte, payload). Server frames are never masked.
    fn read_frame(&mut self) -> Result<(u8, Vec<u8>), String> {
        self.fill_to(2)?;
        let first = self.buf[0];
        let second = self.buf[1];
        assert_eq!(second & 0x80, 0, "server frames must not be masked");
        let (header, len) = match second & 0x7F {
            126 => {
                self.fill_to(4)?;
                (
                    4,
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                )
            }
            127 => {
                self.fill_to(10)?;
                let mut eight = [0u8; 8];
                eight.copy_from_slice(&self.buf[2..10]);
                (10, u64::from_be_bytes(eight) as usize)
            }
            n => (2, usize::from(n)),
        };
        self.fill_to(header + len)?;
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok((first, payload))
    }

    fn expect_frame(&mut self) -> (u8, Vec<u8>) {
        self.read_frame()
            .unwrap_or_else(|e| panic!("expected a frame: {e}"))
    }

    /// The next frame must be a single final text frame.
    fn expect_text(&mut self) -> String {
        let (first, payload) = self.expect_frame();
        assert_eq!(
            first, 0x81,
            "expected a text frame, got {first:#x} {payload:?}"
        );
        String::from_utf8(payload).expect("server text is UTF-8")
    }

    /// Reads frames until a close frame arrives; returns its code (1005 if it has none).
    fn expect_close(&mut self) -> u16 {
        loop {
            let (first, payload) = self.read_frame().unwrap_or_else(|e| {
                panic!("expected a close frame, the connection ended first: {e}")
            });
            if first & 0x0F == 0x8 {
                assert_eq!(first, 0x88, "close frame header");
                return match payload.get(..2) {
                    Some(code) => u16::from_be_bytes([code[0], code[1]]),
                    None => 1005,
                };
            }
        }
    }

    /// After the close handshake the server ends the TCP stream (bounded by the WAIT read
    /// timeout). A reset counts as ended; a timeout or more data does not.
    fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes after close: {:?}",
            self.buf
        );
        let mut chunk = [0u8; 64];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("expected end of stream, got {:?}", &chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("expected end of stream, got {error}"),
        }
    }
}

/// Sends `bytes` on a fresh raw connection and returns the code of the server's close frame.
fn close_code_for(server: &Server, bytes: &[u8]) -> u16 {
    let mut raw = RawWs::connect(server.addr);
    raw.send(bytes);
    raw.expect_close()
}

// ---------------------------------------------------------------------------------------------
// 1. Handshake
// ---------------------------------------------------------------------------------------------

// connection_established has the exact spec shape, a ^\d+\.\d+$ socket id and activity_timeout 120.
#[test]
fn connection_established_exact_default() {
    let server = Server::start();
    let mut client = server.ws();
    let (text, socket_id) = read_established(&mut client);
    assert!(is_socket_id(&socket_id), "socket id {socket_id:?}");
    assert_eq!(text, established_text(&socket_id, 120));
}

// activity_timeout in the handshake is the configured activity_timeout_secs.
#[test]
fn connection_established_configured_activity_timeout() {
    let server = server_with(2, "activity_timeout_secs = 42", "");
    let mut client = server.ws();
    let (text, socket_id) = read_established(&mut client);
    assert!(is_socket_id(&socket_id), "socket id {socket_id:?}");
    assert_eq!(text, established_text(&socket_id, 42));
}

// Every connection gets its own socket id, all of the form ^\d+\.\d+$.
#[test]
fn socket_ids_are_distinct() {
    let server = Server::start();
    let clients: Vec<Client> = (0..6).map(|_| server.client()).collect();
    let ids: HashSet<&str> = clients.iter().map(|c| c.socket_id.as_str()).collect();
    assert_eq!(ids.len(), clients.len(), "duplicate socket ids: {ids:?}");
    for id in ids {
        assert!(is_socket_id(id), "socket id {id:?}");
    }
}

// An upgrade request sent as HTTP/1.0 is refused with 400 and a JSON error (RFC 6455 §4.1: the
// opening handshake is HTTP/1.1 or later), and the connection is closed; the same request as
// HTTP/1.1 is upgraded.
#[test]
fn http_1_0_upgrade_is_refused_with_400() {
    let server = Server::start();
    let upgrade = |version: &str| {
        format!(
            "GET /app/{APP_KEY}?protocol=7 {version}\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
    };
    // `raw` reads until the server closes the connection, so a 400 that kept it open would fail
    // here by timing out.
    let response = crate::support::raw(server.addr, upgrade("HTTP/1.0").as_bytes());
    let text = String::from_utf8_lossy(&response).to_string();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    let (status, body) = crate::support::parse_response(&response);
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":"a WebSocket upgrade requires HTTP/1.1 or later","code":400}"#
    );

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(upgrade("HTTP/1.1").as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

// ---------------------------------------------------------------------------------------------
// 2. In-band refusals after the upgrade
// ---------------------------------------------------------------------------------------------

// Unknown app key: exact pusher:error 4001 naming the key, then close 4001.
#[test]
fn unknown_app_key_is_refused_with_4001() {
    let server = Server::start();
    let mut client = Client::connect(server.addr, "/app/nope?protocol=7&client=js&version=8.4.0");
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:error","data":{"code":4001,"message":"App key nope does not exist."}}"#
    );
    assert_eq!(client.expect_close(), 4001);
}

// Disabled app: pusher:error 4003 with the canonical message, then close 4003.
#[test]
fn disabled_app_is_refused_with_4003() {
    let server = server_with(2, "", "enabled = false");
    let mut client = server.ws();
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:error","data":{"code":4003,"message":"The app is not enabled."}}"#
    );
    assert_eq!(client.expect_close(), 4003);
}

// Protocol versions outside 4..7 or not integers: pusher:error 4007, then close 4007.
#[test]
fn unsupported_protocol_is_refused_with_4007() {
    let server = Server::start();
    for protocol in ["3", "abc", "1", "8", ""] {
        let path = format!("/app/{APP_KEY}?protocol={protocol}&client=js&version=8.4.0");
        let mut client = Client::connect(server.addr, &path);
        let error = client.recv_event();
        assert_eq!(
            error["event"], "pusher:error",
            "protocol={protocol}: {error}"
        );
        assert_eq!(error["data"]["code"], 4007, "protocol={protocol}: {error}");
        assert!(error["data"]["message"].is_string(), "{error}");
        assert_eq!(client.expect_close(), 4007, "protocol={protocol}");
    }
}

// No protocol parameter is accepted (as 7), and so are protocols 4, 5, 6 and 7.
#[test]
fn missing_or_supported_protocol_is_accepted() {
    let server = Server::start();
    let mut paths = vec![
        format!("/app/{APP_KEY}"),
        format!("/app/{APP_KEY}?client=js&version=8.4.0&flash=false"),
    ];
    for protocol in 4..=7 {
        paths.push(format!("/app/{APP_KEY}?protocol={protocol}&client=js"));
    }
    for path in paths {
        let mut client = Client::connect(server.addr, &path);
        let (text, socket_id) = read_established(&mut client);
        assert_eq!(text, established_text(&socket_id, 120), "{path}");
        assert_ping_pong(&mut client);
    }
}

// A WebSocket upgrade on a path other than /app/{key}: pusher:error 4005, then close 4005.
#[test]
fn wrong_path_is_refused_with_4005() {
    let server = Server::start();
    for path in [
        "/foo/bar",
        "/app",
        "/app/",
        "/apps/app-key",
        "/app/app-key/extra",
    ] {
        let mut client = Client::connect(server.addr, path);
        let error = client.recv_event();
        assert_eq!(error["event"], "pusher:error", "{path}: {error}");
        assert_eq!(error["data"]["code"], 4005, "{path}: {error}");
        assert_eq!(client.expect_close(), 4005, "{path}");
    }
}

// max_connections = 1: the second connection gets 4004, the first keeps working, and the slot
// is free again once the first one has gone.
#[test]
fn app_over_connection_quota_is_refused_with_4004() {
    let server = server_with(2, "", "max_connections = 1");
    let mut first = server.client();
    let mut second = server.ws();
    assert_eq!(
        second.recv_text(),
        r#"{"event":"pusher:error","data":{"code":4004,"message":"Application is over connection quota"}}"#
    );
    assert_eq!(second.expect_close(), 4004);
    assert_ping_pong(&mut first);
    first.subscribe("still-here");

    first.close();
    // Bounded wait: the close is processed asynchronously; the quota must be released.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = server.ws();
        let event = again.recv_event();
        if event["event"] == "pusher:connection_established" {
            break;
        }
        assert_eq!(event["data"]["code"], 4004, "{event}");
        assert!(Instant::now() < deadline, "quota not released after close");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Ping / pong
// ---------------------------------------------------------------------------------------------

// pusher:ping (object or string data, or none) gets exactly {"event":"pusher:pong","data":"{}"}.
#[test]
fn pusher_ping_gets_exact_pong() {
    let server = Server::start();
    let mut client = server.client();
    for ping in [
        r#"{"event":"pusher:ping","data":{}}"#,
        r#"{"event":"pusher:ping","data":"{}"}"#,
        r#"{"event":"pusher:ping"}"#,
    ] {
        client.send_text(ping);
        assert_eq!(client.recv_text(), PONG, "after {ping}");
    }
}

// A WebSocket Ping frame gets a Pong frame with the same payload (empty included).
#[test]
fn websocket_ping_frame_gets_pong_with_same_payload() {
    let server = Server::start();
    let mut client = server.client();
    for payload in [&b"hello"[..], b"", &[0u8, 255, 1, 2][..], &[b'x'; 125][..]] {
        client
            .ws
            .send(Message::Ping(bytes::Bytes::copy_from_slice(payload)))
            .unwrap();
        match next_message(&mut client) {
            Message::Pong(got) => assert_eq!(&got[..], payload),
            other => panic!("expected a pong frame, got {other:?}"),
        }
    }
    assert_ping_pong(&mut client);
}

// A binary frame holding UTF-8 JSON is handled like text; non-UTF-8 binary is ignored.
#[test]
fn binary_frames_are_decoded_as_json_or_ignored() {
    let server = Server::start();
    let mut client = server.client();
    client
        .ws
        .send(Message::Binary(bytes::Bytes::from_static(
            br#"{"event":"pusher:ping","data":{}}"#,
        )))
        .unwrap();
    assert_eq!(client.recv_text(), PONG);
    client
        .ws
        .send(Message::Binary(bytes::Bytes::from_static(&[
            0xff, 0xfe, 0x00,
        ])))
        .unwrap();
    assert_ping_pong(&mut client);
}

// ---------------------------------------------------------------------------------------------
// 4. Server ping after inactivity
// ---------------------------------------------------------------------------------------------

const FAST_TIMEOUTS: &str = "activity_timeout_secs = 1\npong_timeout_secs = 1";

// After activity_timeout of silence the server sends pusher:ping; answering with pusher:pong
// keeps the connection (the next thing is another ping, not a 4201).
#[test]
fn server_ping_answered_keeps_connection() {
    let server = server_with(2, FAST_TIMEOUTS, "");
    let mut client = server.ws();
    let (text, socket_id) = read_established(&mut client);
    assert_eq!(text, established_text(&socket_id, 1));
    for _ in 0..2 {
        assert_eq!(client.recv_text(), PING);
        client.send_text(r#"{"event":"pusher:pong","data":{}}"#);
    }
    assert_ping_pong(&mut client);
}

// Any inbound frame counts as activity: a WebSocket Ping frame answers the server's pusher:ping.
#[test]
fn server_ping_answered_by_any_frame_keeps_connection() {
    let server = server_with(2, FAST_TIMEOUTS, "");
    let mut client = server.client();
    assert_eq!(client.recv_text(), PING);
    client
        .ws
        .send(Message::Ping(bytes::Bytes::from_static(b"alive")))
        .unwrap();
    match next_message(&mut client) {
        Message::Pong(payload) => assert_eq!(&payload[..], b"alive"),
        other => panic!("expected a pong frame, got {other:?}"),
    }
    // Not closed for a missing pong: the next text is a fresh activity ping.
    assert_eq!(client.recv_text(), PING);
    assert_ping_pong(&mut client);
}

// An unanswered server ping: pusher:error 4201 with the canonical message, then close 4201.
#[test]
fn server_ping_unanswered_closes_with_4201() {
    let server = server_with(2, FAST_TIMEOUTS, "");
    let mut client = server.client();
    assert_eq!(client.recv_text(), PING);
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:error","data":{"code":4201,"message":"Pong reply not received in time"}}"#
    );
    assert_eq!(client.expect_close(), 4201);
}

// ---------------------------------------------------------------------------------------------
// 5. Subscribe / unsubscribe
// ---------------------------------------------------------------------------------------------

// Public subscribe (pusher-js form) gets the exact subscription_succeeded, then events arrive.
#[test]
fn public_subscribe_exact_reply() {
    let server = Server::start();
    let mut client = server.client();
    client.send_text(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#);
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"}"#
    );
    // Old clients send data string-encoded; auth is ignored on public channels.
    client.send_text(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"other;channel\"}"}"#);
    assert_eq!(client.recv_text(), succeeded_text("other;channel"));
    trigger(&server, "my-event", "my-channel", "{\"message\":\"hello\"}");
    assert_eq!(
        client.recv_text(),
        r#"{"event":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#
    );
}

// Subscribing twice is idempotent: succeeded again, and each event is delivered once.
#[test]
fn double_subscribe_confirms_again_and_delivers_once() {
    let server = single_core();
    let mut client = server.client();
    client.subscribe("twice");
    send_subscribe(&mut client, "twice", Some(""));
    assert_eq!(client.recv_text(), succeeded_text("twice"));
    trigger(&server, "first", "twice", "1");
    trigger(&server, "marker", "twice", "2");
    assert_eq!(client.recv_text(), event_text("first", "twice", "1"));
    // A duplicate of "first" would come before the marker.
    assert_eq!(client.recv_text(), event_text("marker", "twice", "2"));
    assert_ping_pong(&mut client);
}

// subscribe, unsubscribe, subscribe sent back to back (pusher-js can do this while pending):
// the channel ends up subscribed, with one or two confirmations and no error.
#[test]
fn resubscribe_while_pending_ends_subscribed() {
    let server = Server::start();
    let mut client = server.client();
    // Several channels, so that some are owned by the other core.
    let channels: Vec<String> = (0..4).map(|i| format!("flip-{i}")).collect();
    for channel in &channels {
        send_subscribe(&mut client, channel, Some(""));
        client.send(&json!({"event":"pusher:unsubscribe","data":{"channel":channel}}));
        send_subscribe(&mut client, channel, Some(""));
    }
    client.send_text(r#"{"event":"pusher:ping","data":{}}"#);
    let mut confirmations: BTreeMap<String, usize> = BTreeMap::new();
    let mut pong = false;
    while !pong || confirmations.len() < channels.len() {
        let text = client.recv_text();
        if text == PONG {
            assert!(!pong, "two pongs");
            pong = true;
            continue;
        }
        let event: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            event["event"], "pusher_internal:subscription_succeeded",
            "{text}"
        );
        let channel = event["channel"].as_str().unwrap().to_string();
        assert_eq!(text, succeeded_text(&channel));
        *confirmations.entry(channel).or_default() += 1;
    }
    for channel in &channels {
        trigger(&server, "after", channel, channel);
        // A channel owned by the other core may be confirmed twice (the owner's answer to the
        // first subscribe can arrive between the client's messages); the second confirmation
        // may come after the loop above, so it is counted here.
        let mut text = client.recv_text();
        while text.contains("pusher_internal:subscription_succeeded") {
            let event: Value = serde_json::from_str(&text).unwrap();
            let confirmed = event["channel"].as_str().unwrap().to_string();
            assert_eq!(text, succeeded_text(&confirmed));
            *confirmations.entry(confirmed).or_default() += 1;
            text = client.recv_text();
        }
        assert_eq!(text, event_text("after", channel, channel));
    }
    for (channel, count) in &confirmations {
        assert!(*count <= 2, "{channel} confirmed {count} times");
    }
    assert_ping_pong(&mut client);
}

// Unsubscribe gets no reply and stops delivery on that channel only.
#[test]
fn unsubscribe_has_no_reply_and_stops_events() {
    let server = single_core();
    let mut client = server.client();
    client.subscribe("leave-me");
    client.subscribe("keep-me");
    client.send_text(r#"{"event":"pusher:unsubscribe","data":{"channel":"leave-me"}}"#);
    // No reply: the next message is the pong.
    assert_ping_pong(&mut client);
    trigger(&server, "gone", "leave-me", "x");
    trigger(&server, "kept", "keep-me", "y");
    assert_eq!(client.recv_text(), event_text("kept", "keep-me", "y"));
    assert_ping_pong(&mut client);
    // Subscribing again works.
    client.subscribe("leave-me");
    trigger(&server, "back", "leave-me", "z");
    assert_eq!(client.recv_text(), event_text("back", "leave-me", "z"));
}

// Unsubscribing a channel never subscribed is a silent no-op.
#[test]
fn unsubscribe_unknown_channel_is_a_no_op() {
    let server = single_core();
    let mut client = server.client();
    client.send_text(r#"{"event":"pusher:unsubscribe","data":{"channel":"never-subscribed"}}"#);
    client.send_text(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"never-either\"}"}"#);
    assert_ping_pong(&mut client);
    client.subscribe("fine");
    trigger(&server, "e", "fine", "d");
    assert_eq!(client.recv_text(), event_text("e", "fine", "d"));
}

// Invalid channel names get pusher:subscription_error naming the channel; nothing is joined.
#[test]
fn invalid_channel_names_get_subscription_error() {
    let server = single_core();
    let mut client = server.client();
    let too_long = "a".repeat(201);
    let cases: [(&str, &str); 7] = [
        ("bad channel", "InvalidChannel"),
        ("bad/channel", "InvalidChannel"),
        ("bad*chan", "InvalidChannel"),
        ("é-channel", "InvalidChannel"),
        ("#reserved", "InvalidChannel"),
        (&too_long, "LimitReached"),
        ("", "InvalidChannel"),
    ];
    for (name, error_type) in cases {
        send_subscribe(&mut client, name, Some(""));
        let reply = client.recv_event();
        assert_eq!(
            reply["event"], "pusher:subscription_error",
            "{name:?}: {reply}"
        );
        assert_eq!(reply["channel"], name, "{reply}");
        assert_eq!(reply["data"]["type"], error_type, "{name:?}: {reply}");
        assert_eq!(reply["data"]["status"], 4009, "{name:?}: {reply}");
        assert!(reply["data"]["error"].is_string(), "{reply}");
        // No subscription_succeeded follows.
        assert_ping_pong(&mut client);
    }
    // 200 bytes is the default limit and is fine.
    client.subscribe(&"a".repeat(200));
}

// #server-to-user-1 without pusher:signin: subscription_error AuthError 401, not joined.
#[test]
fn server_to_user_channel_without_signin_is_refused() {
    let server = single_core();
    let mut client = server.client();
    send_subscribe(&mut client, "#server-to-user-1", Some(""));
    let reply = client.recv_event();
    assert_eq!(reply["event"], "pusher:subscription_error", "{reply}");
    assert_eq!(reply["channel"], "#server-to-user-1");
    assert_eq!(reply["data"]["type"], "AuthError", "{reply}");
    assert_eq!(reply["data"]["status"], 401, "{reply}");
    assert_ping_pong(&mut client);
}

// ---------------------------------------------------------------------------------------------
// 6. Private channels
// ---------------------------------------------------------------------------------------------

// A correct private auth (app-key:HMAC(secret, "socket_id:channel")) subscribes.
#[test]
fn private_channel_with_correct_auth_subscribes() {
    let server = Server::start();
    let mut client = server.client();
    let auth = private_auth(&client.socket_id, "private-x");
    send_subscribe(&mut client, "private-x", Some(&auth));
    assert_eq!(client.recv_text(), succeeded_text("private-x"));
    trigger(&server, "secret", "private-x", "s");
    assert_eq!(client.recv_text(), event_text("secret", "private-x", "s"));
    // private-encrypted- and private-cache- are authorized the same way.
    for channel in ["private-encrypted-x", "private-cache-x"] {
        let auth = private_auth(&client.socket_id, channel);
        send_subscribe(&mut client, channel, Some(&auth));
        assert_eq!(client.recv_text(), succeeded_text(channel));
    }
}

// A wrong signature gets exactly the spec's subscription_error; the connection stays usable.
#[test]
fn private_channel_wrong_signature_is_auth_error() {
    let server = single_core();
    let mut client = server.client();
    send_subscribe(
        &mut client,
        "private-foobar",
        Some(&format!("{APP_KEY}:0000")),
    );
    let reply = client.recv_event();
    let expected = json!({
        "event": "pusher:subscription_error",
        "channel": "private-foobar",
        "data": {
            "type": "AuthError",
            "error": format!(
                "Invalid signature: Expected HMAC SHA256 hex digest of {}:private-foobar, but got 0000",
                client.socket_id
            ),
            "status": 401
        }
    });
    assert_eq!(reply, expected);
    assert_ping_pong(&mut client);
    // Not joined: an event on the channel does not arrive before the pong.
    trigger(&server, "nope", "private-foobar", "x");
    assert_ping_pong(&mut client);
    // And the same connection can still subscribe with the right auth.
    let auth = private_auth(&client.socket_id, "private-foobar");
    send_subscribe(&mut client, "private-foobar", Some(&auth));
    assert_eq!(client.recv_text(), succeeded_text("private-foobar"));
}

// Every other bad auth (wrong key, missing, empty, no colon, other socket, other channel,
// upper-case hex of a right signature from another secret) is AuthError 401, never joined.
#[test]
fn private_channel_bad_auth_variants_are_auth_errors() {
    let server = single_core();
    let mut client = server.client();
    let channel = "private-x";
    let good = private_auth(&client.socket_id, channel);
    let signature = good.split_once(':').unwrap().1.to_string();
    let other_secret = ringcast::http::signature::hmac_sha256_hex(
        "other-secret",
        &format!("{}:{channel}", client.socket_id),
    );
    let cases: Vec<Option<String>> = vec![
        Some(format!("wrong-key:{signature}")),
        None,
        Some(String::new()),
        Some(signature.clone()),
        Some(format!("{APP_KEY}:")),
        Some(private_auth("1.1", channel)),
        Some(private_auth(&client.socket_id, "private-y")),
        Some(format!("{APP_KEY}:{other_secret}")),
        Some(format!("{APP_KEY}:{signature}0")),
    ];
    for auth in &cases {
        send_subscribe(&mut client, channel, auth.as_deref());
        let reply = client.recv_event();
        assert_eq!(
            reply["event"], "pusher:subscription_error",
            "{auth:?}: {reply}"
        );
        assert_eq!(reply["channel"], channel, "{reply}");
        assert_eq!(reply["data"]["type"], "AuthError", "{auth:?}: {reply}");
        assert_eq!(reply["data"]["status"], 401, "{auth:?}: {reply}");
        assert!(reply["data"]["error"].is_string(), "{reply}");
        assert_ping_pong(&mut client);
    }
    trigger(&server, "nope", channel, "x");
    assert_ping_pong(&mut client);
    send_subscribe(&mut client, channel, Some(&good));
    assert_eq!(client.recv_text(), succeeded_text(channel));
}

// ---------------------------------------------------------------------------------------------
// 7. Bad messages
// ---------------------------------------------------------------------------------------------

// Malformed messages get {"code":null,"message":"Invalid message format"} and the connection
// stays open.
#[test]
fn invalid_messages_get_invalid_message_format() {
    let server = Server::start();
    let mut client = server.client();
    for bad in [
        "not json",
        "{",
        "",
        r#""pusher:ping""#,
        "42",
        "null",
        "{}",
        r#"{"data":{}}"#,
        r#"{"event":5}"#,
        r#"{"event":null}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":{}}"#,
        r#"{"event":"pusher:subscribe","data":{"auth":""}}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
        r#"{"event":"pusher:subscribe","data":"not an object"}"#,
        r#"{"event":"pusher:unsubscribe","data":{}}"#,
    ] {
        client.send_text(bad);
        assert_eq!(client.recv_text(), INVALID_FORMAT, "after {bad:?}");
    }
    assert_ping_pong(&mut client);
    client.subscribe("still-works");
}

// JSON arrays are not messages, neither as the envelope nor as `data` (spec §1.2: every message
// is a JSON object): each gets "Invalid message format" and has no other effect.
#[test]
fn json_arrays_are_invalid_message_format() {
    let server = single_core();
    let mut client = server.client();
    let mut wrong = Vec::new();
    for (i, bad) in [
        "[]",
        r#"["pusher:ping"]"#,
        r#"["pusher:subscribe",null,{"auth":"","channel":"arr-1"}]"#,
        r#"{"event":"pusher:subscribe","data":["arr-2"]}"#,
        r#"{"event":"pusher:subscribe","data":["arr-3",""]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        client.send_text(bad);
        // On one core any reply to `bad` comes before the confirmation of a sync channel.
        let sync = format!("sync-{i}");
        send_subscribe(&mut client, &sync, Some(""));
        let mut replies = Vec::new();
        loop {
            let text = client.recv_text();
            if text == succeeded_text(&sync) {
                break;
            }
            replies.push(text);
        }
        if replies != [INVALID_FORMAT] {
            wrong.push(format!("{bad} -> {replies:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong replies:\n{}", wrong.join("\n"));
}

// Unknown events (pusher:-prefixed or not) are ignored without a reply.
#[test]
fn unknown_events_are_ignored() {
    let server = Server::start();
    let mut client = server.client();
    for unknown in [
        r#"{"event":"foo"}"#,
        r#"{"event":"my-event","channel":"my-channel","data":"x"}"#,
        r#"{"event":"pusher:unknown","data":{}}"#,
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#,
        r#"{"event":"pusher:pong","data":{}}"#,
    ] {
        client.send_text(unknown);
    }
    assert_ping_pong(&mut client);
}

// ---------------------------------------------------------------------------------------------
// 8. WebSocket protocol errors → close codes
// ---------------------------------------------------------------------------------------------

// Frames that break RFC 6455 close the connection with 1002; the server survives.
#[test]
fn protocol_violations_close_with_1002() {
    let mut server = Server::start();
    let ping = br#"{"event":"pusher:ping","data":{}}"#;
    let mut fragmented_then_text = client_frame(0x01, b"{\"event\":");
    fragmented_then_text.extend(client_frame(0x81, ping));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked text frame", encode_frame(0x81, ping, false)),
        ("unmasked ping frame", encode_frame(0x89, b"", false)),
        ("reserved data opcode 0x3", client_frame(0x83, b"x")),
        ("reserved control opcode 0xB", client_frame(0x8B, b"")),
        ("RSV1 bit", client_frame(0xC1, ping)),
        ("RSV2 bit", client_frame(0xA1, ping)),
        ("RSV3 bit", client_frame(0x91, ping)),
        ("continuation without a message", client_frame(0x80, b"x")),
        ("fragmented ping", client_frame(0x09, b"")),
        (
            "ping payload of 126 bytes",
            client_frame(0x89, &[b'p'; 126]),
        ),
        ("new text inside a fragmented message", fragmented_then_text),
        ("close with a one-byte payload", client_frame(0x88, &[0x03])),
        (
            "close with reserved code 1005",
            client_frame(0x88, &1005u16.to_be_bytes()),
        ),
        (
            "close with code 999",
            client_frame(0x88, &999u16.to_be_bytes()),
        ),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_for(&server, &bytes), 1002, "{what}");
    }
    assert_server_healthy(&mut server);
}

// A message over ws_message_bytes_max closes with 1009; a message of exactly the limit passes.
#[test]
fn oversized_message_closes_with_1009() {
    let mut server = server_with(2, "ws_message_bytes_max = 1024", "");

    // Exactly 1024 bytes is accepted.
    let mut client = server.client();
    let prefix = r#"{"event":"pusher:ping","data":{"pad":""#;
    let suffix = r#""}}"#;
    let pad = "x".repeat(1024 - prefix.len() - suffix.len());
    let exact = format!("{prefix}{pad}{suffix}");
    assert_eq!(exact.len(), 1024);
    client.send_text(&exact);
    assert_eq!(client.recv_text(), PONG);

    // One frame announcing 2000 bytes is refused on its header.
    let mut header = vec![0x81, 0x80 | 126];
    header.extend_from_slice(&2000u16.to_be_bytes());
    header.extend_from_slice(&MASK);
    assert_eq!(close_code_for(&server, &header), 1009, "single frame");

    // 1025 bytes in one frame.
    let over = format!("{prefix}{pad}x{suffix}");
    assert_eq!(
        close_code_for(&server, &client_frame(0x81, over.as_bytes())),
        1009
    );

    // Fragments that are small alone but too big together.
    let mut raw = RawWs::connect(server.addr);
    raw.send(&client_frame(0x01, &[b' '; 600]));
    let mut second = vec![0x80, 0x80 | 126];
    second.extend_from_slice(&600u16.to_be_bytes());
    second.extend_from_slice(&MASK);
    raw.send(&second);
    assert_eq!(raw.expect_close(), 1009, "fragmented");

    assert_server_healthy(&mut server);
}

// A message left unfinished is closed with 1008 after ws_message_timeout_ms, whether it is a
// fragmented message missing its last fragment or a single frame missing payload bytes, and
// even though the client keeps the connection busy with pings; other clients are unaffected.
#[test]
fn unfinished_message_closes_with_1008_after_the_timeout() {
    let mut server = server_with(1, "ws_message_timeout_ms = 300", "");
    let mut fragmented = RawWs::connect(server.addr);
    fragmented.send(&client_frame(0x01, br#"{"event":"pusher:"#));
    let mut partial_frame = RawWs::connect(server.addr);
    let frame = client_frame(0x81, br#"{"event":"pusher:ping","data":{}}"#);
    partial_frame.send(&frame[..10]);
    // Pings between the fragments are answered (until the close, whenever it comes), and do
    // not extend the message's time.
    for _ in 0..3 {
        fragmented.send(&client_frame(0x89, b"alive"));
    }
    let close = loop {
        match fragmented.expect_frame() {
            (0x8A, payload) => assert_eq!(payload, b"alive"),
            (0x88, payload) => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(close, 1008);
    assert_eq!(partial_frame.expect_close(), 1008);
    assert_server_healthy(&mut server);
}

// The bytes unfinished messages hold on one core are bounded by ws_partial_bytes_per_core_max:
// the connection whose message would go over it is closed with 1009, and the connections whose
// messages fit keep them and finish them.
#[test]
fn unfinished_messages_over_the_core_budget_close_with_1009() {
    let mut server = server_with(
        1,
        "ws_message_bytes_max = 1024\nws_partial_bytes_per_core_max = 3500",
        "",
    );
    // A pusher:ping of exactly 1000 bytes, sent as a first fragment that holds all of it and an
    // empty last fragment (the first frame of a message is held at its announced size).
    let prefix = r#"{"event":"pusher:ping","data":{"pad":""#;
    let suffix = r#""}}"#;
    let ping = format!(
        "{prefix}{}{suffix}",
        "x".repeat(1000 - prefix.len() - suffix.len())
    );
    assert_eq!(ping.len(), 1000);
    let mut holders: Vec<RawWs> = (0..3).map(|_| RawWs::connect(server.addr)).collect();
    for holder in &mut holders {
        holder.send(&client_frame(0x01, ping.as_bytes()));
        // The pong proves the server has read the fragment before it.
        holder.send(&client_frame(0x89, b"held"));
        assert_eq!(holder.expect_frame(), (0x8A, b"held".to_vec()));
    }
    // 3 x 1000 bytes are held; 1000 more would make 4000 > 3500.
    let mut over = RawWs::connect(server.addr);
    over.send(&client_frame(0x01, ping.as_bytes()));
    assert_eq!(over.expect_close(), 1009);
    for holder in &mut holders {
        holder.send(&client_frame(0x80, b""));
        assert_eq!(holder.expect_text(), PONG);
    }
    assert_server_healthy(&mut server);
}

// A text message that is not valid UTF-8 closes with 1007 (also when split across fragments).
#[test]
fn invalid_utf8_text_closes_with_1007() {
    let mut server = Server::start();
    assert_eq!(
        close_code_for(&server, &client_frame(0x81, &[0xff, 0xfe])),
        1007
    );
    let mut bytes = b"{\"event\":\"pusher:ping\",\"data\":\"".to_vec();
    bytes.extend_from_slice(&[0xc3, 0x28]);
    bytes.extend_from_slice(b"\"}");
    assert_eq!(close_code_for(&server, &client_frame(0x81, &bytes)), 1007);
    // A truncated multi-byte sequence at the end of the last fragment.
    let mut split = client_frame(0x01, b"{\"event\":\"x\",\"data\":\"");
    split.extend(client_frame(0x80, &[0xe2, 0x82]));
    assert_eq!(close_code_for(&server, &split), 1007);
    assert_server_healthy(&mut server);
}

// A fragmented text message (with a ping between fragments, and a UTF-8 character split across
// fragments) is reassembled; a message trickled in one byte per write works too.
#[test]
fn fragmented_message_is_reassembled() {
    let mut server = Server::start();
    let mut raw = RawWs::connect(server.addr);
    let e_acute = "é".as_bytes();
    raw.send(&client_frame(0x01, b"{\"event\":\"pus"));
    raw.send(&client_frame(0x89, b"mid"));
    let mut middle = b"her:ping\",\"data\":{\"x\":\"".to_vec();
    middle.push(e_acute[0]);
    raw.send(&client_frame(0x00, &middle));
    raw.send(&client_frame(0x00, b""));
    let mut last = vec![e_acute[1]];
    last.extend_from_slice(b"\"}}");
    raw.send(&client_frame(0x80, &last));
    assert_eq!(
        raw.expect_frame(),
        (0x8A, b"mid".to_vec()),
        "pong frame first"
    );
    assert_eq!(raw.expect_text(), PONG);

    // The same message, unfragmented but written one byte at a time.
    raw.send_trickle(&client_frame(0x81, br#"{"event":"pusher:ping","data":{}}"#));
    assert_eq!(raw.expect_text(), PONG);

    // A 16-bit length frame split across writes.
    let long = format!(
        r#"{{"event":"pusher:ping","data":{{"pad":"{}"}}}}"#,
        "y".repeat(300)
    );
    let frame = client_frame(0x81, long.as_bytes());
    raw.send(&frame[..3]);
    raw.send(&frame[3..9]);
    raw.send(&frame[9..]);
    assert_eq!(raw.expect_text(), PONG);

    // Subscribing through a fragmented message works as well.
    let subscribe = br#"{"event":"pusher:subscribe","data":{"auth":"","channel":"frag"}}"#;
    raw.send(&client_frame(0x01, &subscribe[..20]));
    raw.send(&client_frame(0x80, &subscribe[20..]));
    assert_eq!(raw.expect_text(), succeeded_text("frag"));
    trigger(&server, "ev", "frag", "d");
    assert_eq!(raw.expect_text(), event_text("ev", "frag", "d"));
    assert_server_healthy(&mut server);
}

// A client Close 1000 is echoed with Close 1000 and the server then ends the stream.
#[test]
fn client_close_is_echoed() {
    let mut server = Server::start();
    let mut raw = RawWs::connect(server.addr);
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send(&client_frame(0x88, &payload));
    assert_eq!(raw.expect_close(), 1000);
    raw.expect_eof();

    // Another valid code (4000-4999 is the private range) is echoed too; an empty close
    // payload is answered with 1000.
    let mut raw = RawWs::connect(server.addr);
    raw.send(&client_frame(0x88, &4321u16.to_be_bytes()));
    assert_eq!(raw.expect_close(), 4321);
    raw.expect_eof();
    let mut raw = RawWs::connect(server.addr);
    raw.send(&client_frame(0x88, b""));
    let code = raw.expect_close();
    assert!(
        code == 1000 || code == 1005,
        "empty close answered with {code}"
    );
    raw.expect_eof();

    // Through tungstenite as well: the library sees a clean close.
    let mut client = server.client();
    client.subscribe("bye-channel");
    client
        .ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1000);
                break;
            }
            Ok(Message::Close(None)) => panic!("close echo without a code"),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("unclean close: {error}"),
        }
    }
    assert_server_healthy(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 9. Client events (disabled by default)
// ---------------------------------------------------------------------------------------------

// client-* events on a private or public channel get pusher:error 4301; nothing is relayed and
// the connection stays open.
#[test]
fn client_events_are_rejected_with_4301() {
    let server = single_core();
    let mut sender = server.client();
    let mut other = server.client();
    for client in [&mut sender, &mut other] {
        let auth = private_auth(&client.socket_id, "private-c");
        send_subscribe(client, "private-c", Some(&auth));
        assert_eq!(client.recv_text(), succeeded_text("private-c"));
        client.subscribe("public-c");
    }
    for channel in ["private-c", "public-c", "private-not-subscribed"] {
        sender.send(&json!({"event":"client-foo","channel":channel,"data":{"x":1}}));
        let error = sender.recv_event();
        assert_eq!(error["event"], "pusher:error", "{channel}: {error}");
        assert_eq!(error["data"]["code"], 4301, "{channel}: {error}");
        assert_eq!(
            error["data"]["message"], "The app does not have client messaging enabled.",
            "{error}"
        );
        assert_ping_pong(&mut sender);
    }
    // Nothing was relayed: the other subscriber's next event is a REST marker.
    trigger(&server, "marker", "private-c", "m");
    assert_eq!(other.recv_text(), event_text("marker", "private-c", "m"));
    assert_eq!(sender.recv_text(), event_text("marker", "private-c", "m"));
}

// The rejection of a disabled client event is exactly the spec §3 frame, naming the channel.
#[test]
fn client_event_rejection_names_the_channel() {
    let server = Server::start();
    let mut client = server.client();
    let auth = private_auth(&client.socket_id, "private-chat");
    send_subscribe(&mut client, "private-chat", Some(&auth));
    assert_eq!(client.recv_text(), succeeded_text("private-chat"));
    client.send_text(r#"{"event":"client-typing","data":{"x":1},"channel":"private-chat"}"#);
    let error = client.recv_event();
    assert_eq!(
        error,
        json!({"event":"pusher:error","channel":"private-chat","data":{"code":4301,"message":"The app does not have client messaging enabled."}})
    );
    assert_ping_pong(&mut client);
}

// ---------------------------------------------------------------------------------------------
// 10. Many channels, both cores
// ---------------------------------------------------------------------------------------------

// One connection on many channels gets each channel's events with the right `channel` field,
// from single-channel and multi-channel triggers.
// The channels-per-connection cap (limits::SUBSCRIPTIONS_PER_CONNECTION_MAX, 1024): all 1024
// are joined, the 1025th gets exactly one pusher:subscription_error frame and the connection
// stays open with its channels; after an unsubscribe there is room for one more.
#[test]
fn subscription_over_the_per_connection_cap_is_limit_reached() {
    const CAP: usize = 1024;
    let server = Server::start();
    let mut client = server.client();
    let channel = |n: usize| format!("cap-{n}");
    // Pipelined: every subscribe is in the server's list (pending or joined) before the next is
    // read, so the refusal of the last one does not depend on when the owners answer.
    for n in 0..=CAP {
        let subscribe = json!({"event":"pusher:subscribe","data":{"auth":"","channel":channel(n)}});
        client
            .ws
            .write(Message::text(subscribe.to_string()))
            .unwrap();
    }
    client.ws.flush().unwrap();
    let refused = format!(
        r#"{{"event":"pusher:subscription_error","channel":"cap-{CAP}","data":{{"type":"LimitReached","error":"Too many channels on one connection (at most {CAP})","status":4009}}}}"#
    );
    let mut joined = HashSet::new();
    let mut errors = Vec::new();
    // The replies of channels owned by another core may come after the refusal.
    for _ in 0..=CAP {
        let text = client.recv_text();
        if text.starts_with(r#"{"event":"pusher:subscription_error""#) {
            errors.push(text);
            continue;
        }
        let event: Value = serde_json::from_str(&text).unwrap();
        let name = event["channel"].as_str().unwrap().to_string();
        assert_eq!(text, succeeded_text(&name));
        assert!(joined.insert(name), "duplicate {text}");
    }
    assert_eq!(errors, [refused]);
    assert_eq!(joined.len(), CAP);
    assert!(!joined.contains(&channel(CAP)));

    // Still open and still subscribed; one unsubscribe makes room for one more.
    trigger(&server, "ev", &channel(0), "d");
    assert_eq!(client.recv_text(), event_text("ev", &channel(0), "d"));
    client.send(&json!({"event":"pusher:unsubscribe","data":{"channel":channel(0)}}));
    client.subscribe(&channel(CAP));
    assert_ping_pong(&mut client);
}

#[test]
fn many_subscriptions_route_per_channel() {
    let server = Server::start();
    let mut client = server.client();
    let channels: Vec<String> = (0..12).map(|i| format!("multi-{i}")).collect();
    for channel in &channels {
        client.subscribe(channel);
    }
    for channel in &channels {
        trigger(&server, "solo", channel, &format!("for {channel}"));
    }
    let mut seen = HashSet::new();
    for _ in &channels {
        let event = client.recv_event();
        assert_eq!(event["event"], "solo", "{event}");
        let channel = event["channel"].as_str().unwrap().to_string();
        assert_eq!(event["data"], format!("for {channel}"), "{event}");
        assert!(channels.contains(&channel), "{event}");
        assert!(seen.insert(channel), "duplicate {event}");
    }

    let targets = &channels[..5];
    server.trigger(&json!({"name":"multi","channels":targets,"data":"shared"}));
    let mut seen = HashSet::new();
    for _ in targets {
        let text = client.recv_text();
        let event: Value = serde_json::from_str(&text).unwrap();
        let channel = event["channel"].as_str().unwrap().to_string();
        assert_eq!(text, event_text("multi", &channel, "shared"));
        assert!(targets.contains(&channel), "{text}");
        assert!(seen.insert(channel), "duplicate {text}");
    }
    // An event on a channel the client never joined does not arrive.
    trigger(&server, "elsewhere", "not-joined", "x");
    trigger(&server, "last", "multi-0", "end");
    assert_eq!(client.recv_text(), event_text("last", "multi-0", "end"));
}

// Subscribers spread over both cores each receive a published event exactly once, in order.
#[test]
fn fan_out_over_both_cores_delivers_exactly_once() {
    let server = Server::start();
    // Open clients until both cores have some (the low part of a socket id carries the core,
    // see src/protocol/socket_id.rs); bounded, and at least 8 either way.
    let mut clients = Vec::new();
    let mut parities = HashSet::new();
    while clients.len() < 8 || (parities.len() < 2 && clients.len() < 40) {
        let client = server.client();
        let low: u64 = client.socket_id.split_once('.').unwrap().1.parse().unwrap();
        parities.insert(low % 2);
        clients.push(client);
    }
    for client in &mut clients {
        client.subscribe("fan-out");
    }
    trigger(&server, "one", "fan-out", "1");
    for client in &mut clients {
        assert_eq!(client.recv_text(), event_text("one", "fan-out", "1"));
    }
    trigger(&server, "two", "fan-out", "2");
    for client in &mut clients {
        // A duplicate of "one" would arrive before "two".
        assert_eq!(client.recv_text(), event_text("two", "fan-out", "2"));
    }
    for client in &mut clients {
        assert_ping_pong(client);
    }
}

// Regression: pongs bypass the fan-out bound (they must not be lost to it), but a client that
// floods pings and never reads the pongs is dropped once its queue passes twice
// `outbound_bytes_max`; the server stays up and serves others.
#[test]
fn ping_flood_without_reading_is_dropped() {
    let mut server = server_with(1, "outbound_bytes_max = 4096", "");
    let mut raw = RawWs::connect(server.addr);
    raw.stream.set_write_timeout(Some(WAIT)).unwrap();
    let ping = client_frame(0x89, &[b'p'; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    // Far more pongs than the kernel's socket buffers can hold (loopback buffers grow to a
    // few MB): the server's queue must pass its cap, and the server must drop us.
    let mut dropped = false;
    for _ in 0..1000 {
        if let Err(error) = raw.stream.write_all(&batch) {
            // A write that times out means the server stopped reading us without dropping us.
            assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the server stopped reading a flooding client instead of dropping it: {error}"
            );
            dropped = true;
            break;
        }
    }
    if !dropped {
        // Everything was written: the server may have closed after reading it all. Reading
        // what is buffered must end (EOF or reset), not block until the timeout.
        let mut sink = vec![0u8; 1 << 20];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match raw.stream.read(&mut sink) {
                Ok(0) | Err(_) => {
                    dropped = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
    }
    assert!(
        dropped,
        "a client that never reads its pongs was not dropped"
    );
    assert_server_healthy(&mut server);
}
