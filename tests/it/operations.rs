//! Operations, as an operator sees them: the systemd notify protocol read from a NOTIFY_SOCKET
//! the test owns, `/healthz` and `/readyz`, `/metrics` values moving with traffic (408 and 505
//! counted under their own statuses), the SIGTERM drain (readiness first, then closes spread at
//! the configured rate), SIGHUP reloads, admission limits (4100, 4004, 503 for REST reads over
//! `rest_in_flight_max`, 4100 and 503 at the process's descriptor limit), a slow reader closed
//! with 4101 while the others lose nothing, a reset while a send to a reader that stopped is
//! parked, and the two outage drills: unknown config keys, and a restart under a reconnect storm
//! with a publish load. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::{
    APP_ID, APP_KEY, APP_SECRET, Client, METRICS_ON, Options, Server, WAIT, config_text, get, http,
    metric, scrape, signed_events_path, signed_query, unix_now, vm_rss_kb,
};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Polls `probe` every 20 ms until it returns Some, failing after `within`.
fn poll<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One series from a scrape; panics (with the scrape) when it is absent.
fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// One series from a fresh scrape; absent counts as 0 (labelled series with value 0 are
/// left out of the exposition).
fn scraped(metrics: SocketAddr, series: &str) -> f64 {
    metric(&scrape(metrics), series).unwrap_or(0.0)
}

/// A signed POST of `body` to an app's `/events`, from any thread; returns (status, body).
fn publish(addr: SocketAddr, body: &Value) -> (u16, String) {
    let body = body.to_string();
    http(addr, "POST", &signed_events_path(&body), &body)
}

/// How one WebSocket connection attempt ended.
enum Attempt {
    /// `pusher:connection_established` was read.
    Connected(Box<WebSocket<TcpStream>>),
    /// Refused: the `pusher:error` code (if one came first) and the close code.
    Refused(Option<u64>, u16),
    /// Anything else (connect or handshake error, unexpected message, socket ended).
    Failed(String),
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Connected(_) => write!(f, "Connected"),
            Attempt::Refused(error, close) => {
                write!(f, "Refused(pusher:error {error:?}, close {close})")
            }
            Attempt::Failed(why) => write!(f, "Failed({why})"),
        }
    }
}

/// Opens a WebSocket to `/app/{key}` and reads until `connection_established` or a close.
fn attempt(addr: SocketAddr, key: &str) -> Attempt {
    let stream = match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(stream) => stream,
        Err(error) => return Attempt::Failed(format!("connect: {error}")),
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false");
    let mut ws = match tungstenite::client(url, stream) {
        Ok((ws, _)) => ws,
        Err(error) => return Attempt::Failed(format!("handshake: {error}")),
    };
    let mut error_code = None;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let event: Value = match serde_json::from_str(&text) {
                    Ok(event) => event,
                    Err(_) => return Attempt::Failed(format!("not JSON: {text}")),
                };
                match event["event"].as_str() {
                    Some("pusher:connection_established") if error_code.is_none() => {
                        return Attempt::Connected(Box::new(ws));
                    }
                    Some("pusher:error") if error_code.is_none() => {
                        error_code = event["data"]["code"].as_u64();
                    }
                    _ => return Attempt::Failed(format!("unexpected message {text}")),
                }
            }
            Ok(Message::Close(frame)) => {
                return Attempt::Refused(error_code, frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(_) => continue,
            Err(error) => {
                return Attempt::Failed(format!("read (after error {error_code:?}): {error}"));
            }
        }
    }
}

/// A NOTIFY_SOCKET owned by the test: every datagram the server sends, with its arrival time.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("ringcast-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "notify-{}.sock",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Reads one datagram if one arrives within the socket's short timeout.
    fn read_one(&mut self) -> bool {
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buffer[..n]).to_string();
                self.received.push((Instant::now(), text));
                true
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(error) => panic!("notify socket: {error}"),
        }
    }

    /// Reads every datagram until `until`.
    fn read_until(&mut self, until: Instant) {
        while Instant::now() < until {
            self.read_one();
        }
    }

    /// Index of the first datagram with the line `line`.
    fn find(&self, line: &str) -> Option<usize> {
        self.received
            .iter()
            .position(|(_, text)| text.lines().any(|l| l == line))
    }

    /// Reads until a datagram has the line `line` (bounded); returns its index.
    fn wait_for(&mut self, line: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(index) = self.find(line) {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} within {within:?}; datagrams: {:?}",
                self.texts()
            );
            self.read_one();
        }
    }

    /// Arrival times of the datagrams with the line `line`.
    fn arrivals(&self, line: &str) -> Vec<Instant> {
        self.received
            .iter()
            .filter(|(_, text)| text.lines().any(|l| l == line))
            .map(|(at, _)| *at)
            .collect()
    }

    fn texts(&self) -> Vec<&str> {
        self.received.iter().map(|(_, t)| t.as_str()).collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// systemd notify and health.

// READY=1 once the port accepts, WATCHDOG=1 pings while healthy, STATUS= with the connection
// count, STOPPING=1 on SIGTERM, then a drain and exit 0.
#[test]
fn systemd_notify_ready_watchdog_status_and_stopping() {
    let mut notify = NotifySocket::new();
    let config = config_text(&Options {
        cores: 2,
        extra_server: "drain_grace_ms = 100".to_string(),
        ..Options::default()
    });
    let (mut server, _) = Server::launch(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "400000"),
        ],
        false,
    );
    let ready = notify.wait_for("READY=1", WAIT);
    assert!(
        notify.received[ready]
            .1
            .lines()
            .any(|l| l == "STATUS=ready; 0 connections"),
        "{:?}",
        notify.received[ready].1
    );
    // READY=1 means the port accepts: a client completes the Pusher handshake at once.
    let mut client = server.client();
    client.subscribe("notified");
    notify.wait_for("STATUS=ready; 1 connections", WAIT);
    let deadline = Instant::now() + WAIT;
    while notify.arrivals("WATCHDOG=1").len() < 3 && Instant::now() < deadline {
        notify.read_one();
    }
    assert!(
        notify.arrivals("WATCHDOG=1").len() >= 3,
        "fewer than 3 WATCHDOG=1 pings: {:?}",
        notify.texts()
    );
    assert!(
        notify.find("WATCHDOG=1").unwrap() > ready,
        "a watchdog ping before READY=1: {:?}",
        notify.texts()
    );

    server.signal(libc::SIGTERM);
    let stopping = notify.wait_for("STOPPING=1", WAIT);
    assert!(
        notify.received[stopping]
            .1
            .lines()
            .any(|l| l.starts_with("STATUS=draining")),
        "{:?}",
        notify.received[stopping].1
    );
    let error = client.recv_event();
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert_eq!(error["data"]["code"], 4200, "{error}");
    assert_eq!(client.expect_close(), 4200);
    drop(client);
    let status = server.wait_exit(WAIT).expect("exits after draining");
    assert!(status.success(), "{status:?}\n{}", server.stderr());
}

// A core that stops running its loop (debug hook RINGCAST_TEST_STALL_CORE) stops the watchdog
// pings and turns /healthz to 503; SIGTERM still sends STOPPING=1.
#[test]
fn a_stuck_core_stops_the_watchdog_and_fails_healthz() {
    let mut notify = NotifySocket::new();
    let config = format!("{}{METRICS_ON}", config_text(&Options::default()));
    let (server, metrics) = Server::launch(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "400000"),
            ("RINGCAST_TEST_STALL_CORE", "1:1500"),
        ],
        true,
    );
    let metrics = metrics.unwrap();
    let (status, body) = get(metrics, "/healthz");
    assert_eq!(status, 200, "healthy before the stall: {body}");
    let ready = notify.wait_for("READY=1", WAIT);
    let ready_at = notify.received[ready].0;
    notify.read_until(ready_at + Duration::from_millis(4500));
    let pings = notify.arrivals("WATCHDOG=1");
    let before_stall = pings
        .iter()
        .filter(|&&at| at < ready_at + Duration::from_millis(2000))
        .count();
    assert!(
        before_stall >= 1,
        "no watchdog ping before the stall: {:?}",
        notify.texts()
    );
    // The core stops at 1.5 s after start; pings stop within 200 ms (+ a 50 ms tick). None may
    // arrive in a 2 s window starting 2.5 s after READY=1.
    let late: Vec<Duration> = pings
        .iter()
        .filter(|&&at| at >= ready_at + Duration::from_millis(2500))
        .map(|&at| at - ready_at)
        .collect();
    assert!(
        late.is_empty(),
        "watchdog pings continued after the core stalled (at {late:?} after READY=1)"
    );
    let body = poll(WAIT, "/healthz 503", || {
        let (status, body) = get(metrics, "/healthz");
        (status == 503).then_some(body)
    });
    assert!(body.contains("stuck"), "{body}");
    let text = scrape(metrics);
    let age = value(&text, "ringcast_loop_heartbeat_age_seconds{core=\"1\"}");
    assert!(age > 1.0, "heartbeat age of the stuck core: {age}");
    assert!(server.stderr().contains("RINGCAST_TEST_STALL_CORE"));

    server.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", WAIT);
}

// The public port answers /healthz and /readyz, as does the metrics port.
#[test]
fn healthz_and_readyz_answer_on_the_public_and_metrics_ports() {
    let (server, metrics) = Server::with_metrics(Options::default());
    for addr in [server.addr, metrics] {
        let (status, body) = get(addr, "/healthz");
        assert_eq!((status, body.trim()), (200, "OK"), "{addr}");
        let (status, body) = get(addr, "/readyz");
        assert_eq!((status, body.trim()), (200, "ready"), "{addr}");
    }
    let plain = Server::start();
    let (status, body) = get(plain.addr, "/healthz");
    assert_eq!((status, body.trim()), (200, "OK"));
    let (status, body) = get(plain.addr, "/readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
}

// ---------------------------------------------------------------------------------------------
// Metrics.

// /metrics values move with traffic: connections, messages, REST calls by status, latency;
// the connection gauge returns to 0 when the clients leave.
#[test]
fn metrics_move_with_connections_messages_and_rest_calls() {
    const N: usize = 8;
    const K: usize = 5;
    let (server, metrics) = Server::with_metrics(Options::default());
    let before = scrape(metrics);
    assert_eq!(value(&before, "ringcast_connected"), 0.0);
    assert_eq!(value(&before, "ringcast_ready"), 1.0);
    assert_eq!(value(&before, "ringcast_draining"), 0.0);
    let events_200 = "ringcast_http_calls_received_total{endpoint=\"events\",status=\"200\"}";
    let events_401 = "ringcast_http_calls_received_total{endpoint=\"events\",status=\"401\"}";

    let mut clients: Vec<Client> = (0..N).map(|_| server.client()).collect();
    for client in &mut clients {
        client.subscribe("metered");
    }
    for k in 0..K {
        server.trigger(&json!({"name":"tick","channel":"metered","data":k.to_string()}));
    }
    for client in &mut clients {
        for k in 0..K {
            assert_eq!(client.recv_event()["data"], k.to_string());
        }
    }
    let after = scrape(metrics);
    let delta = |series: &str| {
        metric(&after, series).unwrap_or(0.0) - metric(&before, series).unwrap_or(0.0)
    };
    assert_eq!(value(&after, "ringcast_connected"), N as f64);
    assert_eq!(delta("ringcast_new_connections_total"), N as f64);
    assert!(delta("ringcast_ws_messages_sent_total") >= (N * K) as f64);
    assert!(delta("ringcast_ws_messages_received_total") >= N as f64);
    assert!(delta("ringcast_socket_transmitted_bytes_total") > 0.0);
    assert!(delta("ringcast_socket_received_bytes_total") > 0.0);
    assert_eq!(delta(events_200), K as f64, "{after}");
    assert!(delta("ringcast_publish_to_write_seconds_count") > 0.0);
    assert!(
        delta("ringcast_publish_to_write_seconds_bucket{le=\"+Inf\"}") > 0.0,
        "{after}"
    );

    // A wrongly signed call is counted under status 401.
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name":"x","channel":"metered","data":"x"}).to_string();
    let query = signed_query(
        "POST",
        &path,
        &[],
        body.as_bytes(),
        APP_KEY,
        "not-the-secret",
        unix_now(),
    );
    let (status, text) = http(server.addr, "POST", &format!("{path}?{query}"), &body);
    assert_eq!(status, 401, "{text}");
    let text = scrape(metrics);
    assert_eq!(metric(&text, events_401), Some(1.0), "{text}");
    assert_eq!(metric(&text, events_200), metric(&after, events_200));

    for client in clients {
        client.close();
    }
    poll(WAIT, "ringcast_connected back to 0", || {
        (scraped(metrics, "ringcast_connected") == 0.0).then_some(())
    });
    let text = scrape(metrics);
    assert_eq!(
        metric(&text, "ringcast_new_disconnections_total").unwrap_or(0.0)
            - metric(&before, "ringcast_new_disconnections_total").unwrap_or(0.0),
        N as f64
    );
}

// Rejections the metrics used to miss: a request left unfinished (slowloris) gets 408 and is
// counted as an HTTP call with status 408 and as a `request_timeout` rejection; a request in an
// unsupported HTTP version gets 505, counted under its own status (not "other").
#[test]
fn request_timeouts_and_505_are_counted_by_status() {
    let (server, metrics) = Server::with_metrics(Options {
        extra_server: "request_timeout_ms = 300".to_string(),
        ..Options::default()
    });
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    stalled
        .write_all(b"POST /apps/123456/events HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let mut response = Vec::new();
    let _ = stalled.read_to_end(&mut response);
    let (status, body) = crate::support::parse_response(&response);
    assert_eq!(status, 408, "{body}");
    let response = crate::support::raw(server.addr, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n");
    let (status, body) = crate::support::parse_response(&response);
    assert_eq!(status, 505, "{body}");
    let text = scrape(metrics);
    let calls = |status: &str| {
        metric(
            &text,
            &format!(
                "ringcast_http_calls_received_total{{endpoint=\"other\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(calls("408"), Some(1.0), "{text}");
    assert_eq!(calls("505"), Some(1.0), "{text}");
    assert_eq!(calls("other"), None, "{text}");
    assert_eq!(
        value(&text, "ringcast_rejected_total{reason=\"request_timeout\"}"),
        1.0
    );
}

// Drill (a): a config with keys this build does not know starts, serves, warns, and
// ringcast_config_unknown_keys holds their number.
#[test]
fn unknown_config_keys_are_warned_and_counted() {
    let config = format!(
        "version = 1\nfeature_from_the_future = true\n[server]\nbind = \"127.0.0.1:0\"\ncores = 1\npin_threads = false\nnew_knob = 5\n{METRICS_ON}[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\nshiny = \"yes\"\n[brand_new_section]\nx = 1\n"
    );
    let (server, metrics) = Server::launch(&config, &[], true);
    let metrics = metrics.unwrap();
    let mut client = server.client();
    client.subscribe("after-rollback");
    server.trigger(&json!({"name":"e","channel":"after-rollback","data":"ok"}));
    assert_eq!(client.recv_event()["data"], "ok");
    let stderr = server.stderr();
    for key in [
        "feature_from_the_future",
        "server.new_knob",
        "apps.0.shiny",
        "brand_new_section",
    ] {
        assert!(stderr.contains(key), "no warning for {key}:\n{stderr}");
    }
    let text = scrape(metrics);
    let unknown = metric(&text, "ringcast_config_unknown_keys_total")
        .or_else(|| metric(&text, "ringcast_config_unknown_keys"))
        .unwrap_or_else(|| panic!("no ringcast_config_unknown_keys in:\n{text}"));
    assert_eq!(unknown, 4.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// Drill (b): a restart under load.

const STORM_CLIENTS: usize = 2000;
const STORM_THREADS: usize = 8;
const STORM_CHANNELS: usize = 10;
const STORM_DEADLINE: Duration = Duration::from_secs(60);
const RSS_MAX_KB: u64 = 512 * 1024;

/// What the storm threads share with the test.
struct Storm {
    addr: SocketAddr,
    deadline: Instant,
    connected: AtomicUsize,
    shed: AtomicUsize,
    connect_phase_done: AtomicUsize,
    final_sent: AtomicBool,
}

/// One thread's clients: connect all of them (retrying 4100 with jittered exponential back-off),
/// subscribe, then wait for the final marker and read each until it. Returns the problems seen.
fn storm_thread(storm: Arc<Storm>, ids: std::ops::Range<usize>) -> Vec<String> {
    struct Pending {
        id: usize,
        due: Instant,
        failures: u32,
    }
    let mut problems = Vec::new();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ (ids.start as u64 + 1);
    let mut backoff = |failures: u32| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let base = 100 + rng % 201;
        Duration::from_millis(base << failures.min(3))
    };
    let start = Instant::now();
    let mut pending: Vec<Pending> = ids
        .map(|id| Pending {
            id,
            due: start,
            failures: 0,
        })
        .collect();
    let mut connected: Vec<(usize, WebSocket<TcpStream>)> = Vec::new();
    while !pending.is_empty() && Instant::now() < storm.deadline {
        let now = Instant::now();
        let mut attempted = false;
        let mut waiting = Vec::with_capacity(pending.len());
        for mut client in pending.drain(..) {
            if client.due > now || Instant::now() >= storm.deadline {
                waiting.push(client);
                continue;
            }
            attempted = true;
            match attempt(storm.addr, APP_KEY) {
                Attempt::Connected(mut ws) => {
                    let channel = format!("storm-{}", client.id % STORM_CHANNELS);
                    let subscribe = json!({"event":"pusher:subscribe","data":{"channel":channel}});
                    match ws.send(Message::text(subscribe.to_string())) {
                        Ok(()) => {
                            storm.connected.fetch_add(1, Ordering::SeqCst);
                            connected.push((client.id, *ws));
                        }
                        Err(error) => {
                            problems.push(format!("client {}: subscribe: {error}", client.id));
                            client.failures += 1;
                            client.due = Instant::now() + backoff(client.failures);
                            waiting.push(client);
                        }
                    }
                }
                Attempt::Refused(Some(4100), 4100) => {
                    storm.shed.fetch_add(1, Ordering::SeqCst);
                    client.failures += 1;
                    client.due = Instant::now() + backoff(client.failures);
                    waiting.push(client);
                }
                other => {
                    problems.push(format!("client {}: {other:?}", client.id));
                    client.failures += 1;
                    client.due = Instant::now() + backoff(client.failures);
                    waiting.push(client);
                }
            }
        }
        pending = waiting;
        if !attempted {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !pending.is_empty() {
        problems.push(format!(
            "{} clients never connected before the deadline",
            pending.len()
        ));
    }
    storm.connect_phase_done.fetch_add(1, Ordering::SeqCst);
    while !storm.final_sent.load(Ordering::SeqCst) && Instant::now() < storm.deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (id, mut ws) in connected {
        let mut subscribed = false;
        let mut last_tick: Option<u64> = None;
        loop {
            if Instant::now() >= storm.deadline + WAIT {
                problems.push(format!("client {id}: out of time before the final marker"));
                break;
            }
            let text = match ws.read() {
                Ok(Message::Text(text)) => text.to_string(),
                Ok(Message::Close(frame)) => {
                    problems.push(format!("client {id}: closed while receiving: {frame:?}"));
                    break;
                }
                Ok(_) => continue,
                Err(error) => {
                    problems.push(format!("client {id}: read: {error}"));
                    break;
                }
            };
            let event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match event["event"].as_str() {
                Some("pusher_internal:subscription_succeeded") if !subscribed => subscribed = true,
                Some("tick") if subscribed => {
                    let seq: u64 = event["data"].as_str().unwrap_or("").parse().unwrap_or(0);
                    if last_tick.is_some_and(|last| seq <= last) {
                        problems.push(format!(
                            "client {id}: tick {seq} after {last_tick:?} (reordered)"
                        ));
                    }
                    last_tick = Some(seq);
                }
                Some("final") if subscribed => break,
                _ => {
                    problems.push(format!("client {id}: unexpected {text}"));
                    break;
                }
            }
        }
    }
    problems
}

// Drill (b): thousands of clients reconnect at once (a restart) while events are published:
// the server stays up with bounded memory, sheds the excess with 4100 only, and every client
// ends up connected, subscribed and receiving.
#[test]
fn restart_under_load_sheds_with_4100_and_everyone_gets_in() {
    let (mut server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_server: "accepts_per_sec_max = 400".to_string(),
        ..Options::default()
    });
    let pid = server.pid();
    let started = Instant::now();
    let storm = Arc::new(Storm {
        addr: server.addr,
        deadline: started + STORM_DEADLINE,
        connected: AtomicUsize::new(0),
        shed: AtomicUsize::new(0),
        connect_phase_done: AtomicUsize::new(0),
        final_sent: AtomicBool::new(false),
    });
    let per_thread = STORM_CLIENTS / STORM_THREADS;
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let storm = Arc::clone(&storm);
            std::thread::spawn(move || storm_thread(storm, t * per_thread..(t + 1) * per_thread))
        })
        .collect();

    // The publish load, plus the memory probe.
    let stop = Arc::new(AtomicBool::new(false));
    let channels: Vec<String> = (0..STORM_CHANNELS).map(|c| format!("storm-{c}")).collect();
    let publisher = {
        let stop = Arc::clone(&stop);
        let channels = channels.clone();
        let addr = server.addr;
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut rss_max_kb = 0;
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = publish(
                    addr,
                    &json!({"name":"tick","channels":channels,"data":seq.to_string()}),
                );
                if status != 200 {
                    failures.push(format!("publish {seq}: {status} {body}"));
                }
                seq += 1;
                rss_max_kb = rss_max_kb.max(vm_rss_kb(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(200));
            }
            (seq, rss_max_kb, failures)
        })
    };

    while storm.connected.load(Ordering::SeqCst) < STORM_CLIENTS
        && storm.connect_phase_done.load(Ordering::SeqCst) < STORM_THREADS
        && Instant::now() < storm.deadline
    {
        assert!(server.is_alive(), "the server died:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let connect_time = started.elapsed();
    assert!(server.is_alive(), "the server died:\n{}", server.stderr());
    let connected_gauge = scraped(metrics, "ringcast_connected");
    stop.store(true, Ordering::SeqCst);
    let (ticks, rss_max_kb, publish_failures) = publisher.join().unwrap();
    let (status, body) = publish(
        server.addr,
        &json!({"name":"final","channels":channels,"data":"end"}),
    );
    assert_eq!(status, 200, "{body}");
    storm.final_sent.store(true, Ordering::SeqCst);
    let mut problems = Vec::new();
    for thread in threads {
        problems.extend(thread.join().unwrap());
    }
    assert!(server.is_alive(), "the server died:\n{}", server.stderr());
    let rss_now_kb = vm_rss_kb(pid).unwrap_or(0);
    let text = scrape(metrics);
    let shed = storm.shed.load(Ordering::SeqCst);
    eprintln!(
        "restart drill: {STORM_CLIENTS} clients connected in {connect_time:?}, {shed} refusals, {ticks} ticks published, RSS max {rss_max_kb} KiB, total {:?}",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problems, first ones: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert_eq!(storm.connected.load(Ordering::SeqCst), STORM_CLIENTS);
    assert_eq!(connected_gauge, STORM_CLIENTS as f64);
    assert!(publish_failures.is_empty(), "{publish_failures:?}");
    assert!(shed > 0, "nothing was shed at accepts_per_sec_max = 400");
    let rejected = value(&text, "ringcast_rejected_total{reason=\"accept_rate\"}");
    assert!(
        rejected >= shed as f64,
        "rejected {rejected} < refusals seen {shed}"
    );
    assert!(value(&text, "ringcast_closes_total{code=\"4100\"}") >= shed as f64);
    assert!(
        rss_max_kb.max(rss_now_kb) < RSS_MAX_KB,
        "RSS {rss_max_kb} KiB / {rss_now_kb} KiB"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow reader.

/// A client whose socket has a tiny receive buffer, so its kernel buffers fill quickly.
fn small_buffer_client(addr: SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/app/{APP_KEY}?protocol=7&client=js&version=8.4.0&flash=false");
    let (ws, _) = tungstenite::client(url, stream).expect("WebSocket handshake");
    let mut client = Client {
        ws,
        socket_id: String::new(),
    };
    let established = client.recv_event();
    assert_eq!(established["event"], "pusher:connection_established");
    client
}

// A client that stops reading is closed (4101, or its socket ends) once over
// outbound_bytes_max, and counted; the other subscribers receive every event in order.
#[test]
fn a_slow_reader_is_closed_and_the_others_lose_nothing() {
    const EVENTS: usize = 1500;
    const PAYLOAD: usize = 8 * 1024;
    const NORMAL: usize = 2;
    let (server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_server: "outbound_bytes_max = 65536".to_string(),
        extra_app: "payload_bytes_max = 16384".to_string(),
        ..Options::default()
    });
    let mut slow = small_buffer_client(server.addr);
    slow.subscribe("firehose");
    // From here on the slow client is not read until every event is published.
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..NORMAL).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = (0..NORMAL)
        .map(|n| {
            let mut client = server.client();
            client.subscribe("firehose");
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || {
                for k in 0..EVENTS {
                    let text = client.recv_text();
                    let prefix = format!("\"data\":\"seq-{k:05}-");
                    assert!(
                        text.contains(&prefix),
                        "normal client {n}: expected event {k}, got {}",
                        &text[..text.len().min(120)]
                    );
                    progress[n].store(k + 1, Ordering::SeqCst);
                }
                client
            })
        })
        .collect();
    let filler = "x".repeat(PAYLOAD - 11);
    for k in 0..EVENTS {
        // Pace the publisher on the normal readers (at most 4 events ahead of the slowest),
        // so only the client that does not read at all can fall behind.
        poll(WAIT, "the normal readers to keep up", || {
            progress
                .iter()
                .all(|p| p.load(Ordering::SeqCst) + 4 >= k)
                .then_some(())
        });
        server.trigger(
            &json!({"name":"big","channel":"firehose","data":format!("seq-{k:05}-{filler}")}),
        );
    }
    let mut normal: Vec<Client> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    // Nothing extra follows: one more event is the very next frame for the normal clients.
    server.trigger(&json!({"name":"after","channel":"firehose","data":"after"}));
    for client in &mut normal {
        assert_eq!(client.recv_event()["event"], "after");
    }

    // The slow client: what is buffered, then a 4101 close or the socket ending.
    slow.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    let mut received = 0;
    let ending = loop {
        match slow.ws.read() {
            Ok(Message::Text(_)) => received += 1,
            Ok(Message::Close(frame)) => {
                break format!("close {:?}", frame.map(|f| u16::from(f.code)));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the slow client was never closed ({received} events read)")
            }
            Err(error) => break format!("ended: {error}"),
        }
    };
    assert!(
        received < EVENTS,
        "the slow client received all {EVENTS} events ({ending})"
    );
    assert!(
        !ending.starts_with("close") || ending == "close Some(4101)",
        "slow client ended with {ending}"
    );
    poll(WAIT, "a 4101 close counted", || {
        (scraped(metrics, "ringcast_closes_total{code=\"4101\"}") >= 1.0).then_some(())
    });
    let text = scrape(metrics);
    assert_eq!(value(&text, "ringcast_closes_total{code=\"4101\"}"), 1.0);
    assert_eq!(
        value(&text, "ringcast_slow_consumer_closes_total"),
        1.0,
        "slow consumer closes (received {received}, {ending})"
    );
}

/// The kernel's largest TCP send buffer (`net.ipv4.tcp_wmem`, third field): how much a socket
/// can take from the server before a send to a peer that does not read has to wait.
fn tcp_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 * 1024 * 1024)
}

/// Blocks (bounded by `within`) until the socket has an error or is hung up, without reading
/// it: reading would open the peer's window and let a parked send move again.
fn wait_for_hangup(stream: &TcpStream, within: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut entry = libc::pollfd {
        fd: stream.as_raw_fd(),
        // No events asked for: poll reports only POLLERR and POLLHUP, which it always does.
        events: 0,
        revents: 0,
    };
    let timeout = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `entry` is one valid pollfd for the duration of the call, and the count is 1.
    let ready = unsafe { libc::poll(&raw mut entry, 1, timeout) };
    ready == 1 && entry.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

// Regression (issue 11): a send parked on a client that stopped reading, then the close-linger
// expiry resets the connection while that send is still in flight. The reset clears the
// connection's queue; the frames the kernel may still read belong to the send until its
// completion, so nothing is freed under it. The server survives and serves everyone else
// exactly, and nothing but the client's own close is counted against it.
#[test]
fn a_reset_while_a_send_is_parked_leaves_the_server_serving() {
    const EVENT_BYTES: usize = 1024 * 1024;
    // More than the kernel's buffers on both sides can hold, so most of it waits on the server.
    let events = 2 * tcp_send_buffer_max() / EVENT_BYTES + 4;
    let queued = events * (EVENT_BYTES + 64);
    let (mut server, metrics) = Server::with_metrics(Options {
        cores: 1,
        extra_server: format!(
            "outbound_bytes_max = {}\nhttp_body_bytes_max = {}",
            2 * queued,
            2 * EVENT_BYTES
        ),
        extra_app: format!("payload_bytes_max = {}", 2 * EVENT_BYTES),
        ..Options::default()
    });
    let mut victim = small_buffer_client(server.addr);
    victim.subscribe("parked");
    let mut other = server.client();
    other.subscribe("others");
    // From here on the victim is not read: the server's send to it parks once the kernel's
    // buffers are full.
    let filler = "x".repeat(EVENT_BYTES);
    for k in 0..events {
        server.trigger(&json!({"name":"big","channel":"parked","data":format!("{k:04}-{filler}")}));
    }
    let written = scraped(metrics, "ringcast_socket_transmitted_bytes_total");
    assert!(
        written < (events * EVENT_BYTES) as f64,
        "the kernel took all {events} MB ({written} bytes written): no send was left parked"
    );
    // A masked close frame (code 1000): the server echoes it behind the queued events and
    // begins its close; the victim reads nothing, so the close lingers until it expires and
    // the server resets the connection with its send still parked.
    let mask = [1u8, 2, 3, 4];
    let close: Vec<u8> = [0x88, 0x82]
        .into_iter()
        .chain(mask)
        .chain([0x03 ^ mask[0], 0xe8 ^ mask[1]])
        .collect();
    victim.ws.get_mut().write_all(&close).unwrap();
    assert!(
        wait_for_hangup(victim.ws.get_ref(), WAIT),
        "the victim was not reset after its close lingered; stderr:\n{}",
        server.stderr()
    );
    assert!(
        server.is_alive(),
        "the server died; stderr:\n{}",
        server.stderr()
    );
    // The same core keeps serving: the other client gets the exact next event, and a new
    // client connects, subscribes and receives one too.
    server.trigger(&json!({"name":"after","channel":"others","data":"one"}));
    assert_eq!(
        other.recv_text(),
        r#"{"event":"after","channel":"others","data":"one"}"#
    );
    let mut late = server.client();
    late.subscribe("parked");
    server.trigger(&json!({"name":"after","channel":"parked","data":"two"}));
    assert_eq!(
        late.recv_text(),
        r#"{"event":"after","channel":"parked","data":"two"}"#
    );
    let text = scrape(metrics);
    assert_eq!(value(&text, "ringcast_closes_total{code=\"1000\"}"), 1.0);
    assert_eq!(value(&text, "ringcast_slow_consumer_closes_total"), 0.0);
    assert_eq!(value(&text, "ringcast_connected"), 2.0);
}

// ---------------------------------------------------------------------------------------------
// Drain.

// SIGTERM: /readyz turns 503 before any connection is closed; then every client gets
// pusher:error 4200 + close 4200, spread over time at drain_rate_per_s; a new connection during
// the drain gets 4200; the process exits 0 once all are closed.
#[test]
fn sigterm_drains_readiness_first_then_closes_spread_at_the_rate() {
    const CLIENTS: usize = 20;
    let (mut server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_server: "drain_grace_ms = 300\ndrain_rate_per_s = 20".to_string(),
        ..Options::default()
    });
    let (status, body) = get(metrics, "/readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
    let messages = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let mut client = server.client();
            client.subscribe("draining");
            let messages = Arc::clone(&messages);
            std::thread::spawn(move || {
                let mut error_code = None;
                loop {
                    match client.ws.read() {
                        Ok(Message::Text(text)) => {
                            messages.fetch_add(1, Ordering::SeqCst);
                            let event: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(event["event"], "pusher:error", "client {n}: {text}");
                            error_code = event["data"]["code"].as_u64();
                        }
                        Ok(Message::Close(frame)) => {
                            messages.fetch_add(1, Ordering::SeqCst);
                            let reason = frame.as_ref().map(|f| f.reason.to_string());
                            let code = frame.map_or(1005, |f| u16::from(f.code));
                            return (error_code, code, reason, Instant::now());
                        }
                        Ok(_) => {}
                        Err(error) => panic!("client {n}: no close, {error}"),
                    }
                }
            })
        })
        .collect();
    assert_eq!(scraped(metrics, "ringcast_connected"), CLIENTS as f64);

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let body = poll(WAIT, "/readyz 503", || {
        let (status, body) = get(metrics, "/readyz");
        (status == 503).then_some(body)
    });
    let seen_at_flip = messages.load(Ordering::SeqCst);
    let flipped_after = signalled.elapsed();
    assert_eq!(body.trim(), "draining");
    assert_eq!(
        seen_at_flip, 0,
        "a client was closed before readiness flipped ({flipped_after:?} after SIGTERM)"
    );
    // A new connection during the drain is turned away with 4200.
    match attempt(server.addr, APP_KEY) {
        Attempt::Refused(Some(4200), 4200) => {}
        other => panic!("a connection during the drain: {other:?}"),
    }
    let (status, body) = get(server.addr, "/readyz");
    assert_eq!((status, body.trim()), (503, "draining"));

    let closes: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    for (n, (error_code, code, reason, _)) in closes.iter().enumerate() {
        assert_eq!(*error_code, Some(4200), "client {n}");
        assert_eq!(*code, 4200, "client {n}");
        assert_eq!(
            reason.as_deref(),
            Some("Server is closing. Please reconnect shortly."),
            "client {n}"
        );
    }
    let first = closes.iter().map(|c| c.3).min().unwrap();
    let last = closes.iter().map(|c| c.3).max().unwrap();
    assert!(
        first - signalled >= Duration::from_millis(290),
        "the first close came {:?} after SIGTERM, inside the 300 ms grace",
        first - signalled
    );
    assert!(
        last - first >= Duration::from_millis(500),
        "{CLIENTS} closes at 20/s took only {:?}",
        last - first
    );
    let status = server.wait_exit(WAIT).expect("exits after draining");
    assert!(status.success(), "{status:?}\n{}", server.stderr());
}

// ---------------------------------------------------------------------------------------------
// Reload.

// SIGHUP re-reads the file: a new app and a changed limit apply without dropping connections;
// an invalid file is rejected, counted, and the running config kept.
#[test]
fn sighup_reloads_apps_and_limits_and_rejects_an_invalid_file() {
    let head = format!(
        "version = 1\n[server]\nbind = \"127.0.0.1:0\"\ncores = 2\npin_threads = false\n{METRICS_ON}"
    );
    let app_a = |extra: &str| {
        format!(
            "[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{extra}\n"
        )
    };
    let (mut server, metrics) = Server::launch(&format!("{head}{}", app_a("")), &[], true);
    let metrics = metrics.unwrap();
    let mut first = server.client();
    first.subscribe("reloaded");
    match attempt(server.addr, "key-b") {
        Attempt::Refused(Some(4001), 4001) => {}
        other => panic!("key-b before the reload: {other:?}"),
    }

    std::fs::write(
        server.config_path(),
        format!(
            "{head}{}[[apps]]\nid = \"777\"\nkey = \"key-b\"\nsecret = \"secret-b\"\n",
            app_a("max_connections = 1")
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let _b = poll(WAIT, "app key-b after SIGHUP", || {
        match attempt(server.addr, "key-b") {
            Attempt::Connected(ws) => Some(ws),
            Attempt::Refused(Some(4001), 4001) => None,
            other => panic!("key-b after the reload: {other:?}"),
        }
    });
    assert_eq!(scraped(metrics, "ringcast_config_reloads_total"), 1.0);
    // A's new limit holds: `first` has its only slot. Each core applies a reload at its next
    // timer sweep, so the core this attempt lands on may not have it yet: poll (a connection
    // admitted under the old limit is dropped again).
    poll(
        WAIT,
        "app A over its reloaded max_connections",
        || match attempt(server.addr, APP_KEY) {
            Attempt::Refused(Some(4004), 4004) => Some(()),
            Attempt::Connected(ws) => {
                drop(ws);
                None
            }
            other => panic!("app A over its reloaded max_connections: {other:?}"),
        },
    );
    server.trigger(&json!({"name":"e","channel":"reloaded","data":"after reload"}));
    assert_eq!(first.recv_event()["data"], "after reload");

    std::fs::write(server.config_path(), "version = 1\n[server\nbind =").unwrap();
    server.signal(libc::SIGHUP);
    poll(WAIT, "the reload failure counted", || {
        (scraped(metrics, "ringcast_config_reload_failures_total") == 1.0).then_some(())
    });
    assert!(server.is_alive());
    assert_eq!(scraped(metrics, "ringcast_config_reloads_total"), 1.0);
    // Every core keeps the first reload (a core may still be applying it: poll).
    poll(WAIT, "key-b after a rejected reload", || {
        match attempt(server.addr, "key-b") {
            Attempt::Connected(_) => Some(()),
            Attempt::Refused(Some(4001), 4001) => None,
            other => panic!("key-b after a rejected reload: {other:?}"),
        }
    });
    server.trigger(&json!({"name":"e","channel":"reloaded","data":"after rejected reload"}));
    assert_eq!(first.recv_event()["data"], "after rejected reload");
    assert!(
        server.stderr().contains("config reload rejected"),
        "{}",
        server.stderr()
    );
}

// SIGHUP that disables one app and removes another: their connected clients get pusher:error +
// close 4003 (disabled) and 4001 (removed), spread over time at drain_rate_per_s like the
// drain; a third app's client stays connected and keeps receiving; new connections to the two
// apps are refused as before, and REST for them is 403 (disabled) and 404 (removed).
#[test]
fn sighup_closes_the_clients_of_disabled_and_removed_apps_paced() {
    const PER_APP: usize = 8;
    let head = format!(
        "version = 1\n[server]\nbind = \"127.0.0.1:0\"\ncores = 2\npin_threads = false\n\
         drain_rate_per_s = 20\n{METRICS_ON}"
    );
    let app = |id: &str, key: &str, extra: &str| {
        format!("[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"secret-{id}\"\n{extra}\n")
    };
    let kept = app("888", "key-kept", "");
    let (server, metrics) = Server::launch(
        &format!(
            "{head}{}{}{kept}",
            app("111", "key-disabled", ""),
            app("222", "key-removed", "")
        ),
        &[],
        true,
    );
    let metrics = metrics.unwrap();
    let connect = |key: &str| {
        let mut client = Client::connect(
            server.addr,
            &format!("/app/{key}?protocol=7&client=js&version=8.4.0&flash=false"),
        );
        let established = client.recv_event();
        assert_eq!(
            established["event"], "pusher:connection_established",
            "{established}"
        );
        client
    };
    let readers: Vec<_> = ["key-disabled", "key-removed"]
        .into_iter()
        .flat_map(|key| (0..PER_APP).map(move |n| (key, n)))
        .map(|(key, n)| {
            let mut client = connect(key);
            client.subscribe("evicted");
            std::thread::spawn(move || {
                let mut error = None;
                loop {
                    match client.ws.read() {
                        Ok(Message::Text(text)) => {
                            let event: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(event["event"], "pusher:error", "{key} {n}: {text}");
                            error = Some(event["data"].clone());
                        }
                        Ok(Message::Close(frame)) => {
                            let code = frame.map_or(1005, |f| u16::from(f.code));
                            return (key, error, code, Instant::now());
                        }
                        Ok(_) => {}
                        Err(error) => panic!("{key} {n}: no close, {error}"),
                    }
                }
            })
        })
        .collect();
    let mut stays = connect("key-kept");
    stays.subscribe("kept");
    assert_eq!(
        scraped(metrics, "ringcast_connected"),
        (2 * PER_APP + 1) as f64
    );

    std::fs::write(
        server.config_path(),
        format!(
            "{head}{}{kept}",
            app("111", "key-disabled", "enabled = false")
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let closes: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    for (key, error, code, _) in &closes {
        let (expected_code, message) = if *key == "key-disabled" {
            (4003, "The app is not enabled.")
        } else {
            (4001, "The app no longer exists.")
        };
        assert_eq!(
            error.as_ref(),
            Some(&json!({"code":expected_code,"message":message})),
            "{key}"
        );
        assert_eq!(*code, expected_code, "{key}");
    }
    // 16 closes at 20/s: each core closes at most two per 100 ms sweep (its jittered share is
    // at most 1.5 per sweep), so they cannot all come at once. A slow machine only spreads
    // them more.
    let first = closes.iter().map(|c| c.3).min().unwrap();
    let last = closes.iter().map(|c| c.3).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(200),
        "{} closes at 20/s took only {:?}",
        closes.len(),
        last - first
    );

    // Every evicted connection was released before its close was sent.
    assert_eq!(scraped(metrics, "ringcast_connected"), 1.0);

    // The kept app's client is untouched and still receives.
    let path = "/apps/888/events";
    let body = json!({"name":"e","channel":"kept","data":"still here"}).to_string();
    let query = signed_query(
        "POST",
        path,
        &[],
        body.as_bytes(),
        "key-kept",
        "secret-888",
        unix_now(),
    );
    let (status, text) = http(server.addr, "POST", &format!("{path}?{query}"), &body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(stays.recv_event()["data"], "still here");
    // Each core applies a reload at its next timer sweep, so the core an attempt lands on may
    // not have it yet: poll (a connection admitted under the old table is dropped again).
    for (key, code) in [("key-disabled", 4003), ("key-removed", 4001)] {
        poll(
            WAIT,
            &format!("{key} refused after the reload"),
            || match attempt(server.addr, key) {
                Attempt::Refused(Some(error), close)
                    if error == code && u64::from(close) == code =>
                {
                    Some(())
                }
                Attempt::Connected(_) => None,
                other => panic!("{key} after the reload: {other:?}"),
            },
        );
    }
    for (id, key, status) in [("111", "key-disabled", 403), ("222", "key-removed", 404)] {
        let path = format!("/apps/{id}/channels");
        let secret = format!("secret-{id}");
        poll(WAIT, &format!("REST {status} for app {id}"), || {
            let query = signed_query("GET", &path, &[], b"", key, &secret, unix_now());
            let (got, text) = http(server.addr, "GET", &format!("{path}?{query}"), "");
            match got {
                got if got == status => Some(()),
                200 => None,
                other => panic!("app {id}: {other} {text}"),
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Admission.

// server.max_connections: the connection over the limit gets pusher:error 4100 + close 4100;
// a freed slot admits a new one.
#[test]
fn max_connections_refuses_with_4100_until_a_slot_frees() {
    let (server, metrics) = Server::with_metrics(Options {
        extra_server: "max_connections = 2".to_string(),
        ..Options::default()
    });
    let a = server.client();
    let _b = server.client();
    let mut third = server.ws();
    let error = third.recv_event();
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert_eq!(error["data"]["code"], 4100, "{error}");
    assert_eq!(third.expect_close(), 4100);
    assert_eq!(
        scraped(metrics, "ringcast_rejected_total{reason=\"over_capacity\"}"),
        1.0
    );
    a.close();
    let _c = poll(WAIT, "a slot after one client left", || {
        match attempt(server.addr, APP_KEY) {
            Attempt::Connected(ws) => Some(ws),
            Attempt::Refused(Some(4100), 4100) => None,
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(scraped(metrics, "ringcast_connected"), 2.0);
}

// server.rest_in_flight_max: a REST read waiting for another core holds one of the core's
// slots; with the limit at 1 and that core stalled (debug hook), the next such read on the same
// core is shed at once with 503 + Retry-After and a JSON error, and counted. Nothing crashes.
#[test]
fn rest_in_flight_max_sheds_with_503_and_retry_after() {
    let config = format!(
        "{}{METRICS_ON}",
        config_text(&Options {
            cores: 2,
            extra_server: "rest_in_flight_max = 1".to_string(),
            ..Options::default()
        })
    );
    let (server, metrics) = Server::launch(&config, &[("RINGCAST_TEST_STALL_CORE", "1:200")], true);
    let metrics = metrics.unwrap();
    poll(WAIT, "core 1 stalled", || {
        server
            .stderr()
            .contains("RINGCAST_TEST_STALL_CORE")
            .then_some(())
    });
    // Connections the kernel gave to core 0 answer; those on the stalled core 1 never do.
    let on_core_0 = || {
        poll(WAIT, "a connection served by core 0", || {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut response = [0u8; 512];
            match stream.read(&mut response) {
                Ok(n) if n > 0 => Some(stream),
                _ => None,
            }
        })
    };
    let mut first = on_core_0();
    let mut second = on_core_0();
    let path = format!("/apps/{APP_ID}/channels");
    let request = || {
        let query = signed_query("GET", &path, &[], b"", APP_KEY, APP_SECRET, unix_now());
        format!("GET {path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n")
    };
    // Listing channels asks every core: this one waits for core 1, in the only slot.
    first.write_all(request().as_bytes()).unwrap();
    let mut response = [0u8; 512];
    assert!(
        first.read(&mut response).is_err(),
        "the parked request was answered"
    );
    second.set_read_timeout(Some(WAIT)).unwrap();
    second.write_all(request().as_bytes()).unwrap();
    let mut shed = Vec::new();
    let mut buffer = [0u8; 1024];
    while !shed.windows(4).any(|w| w == b"\r\n\r\n") || !shed.ends_with(b"}") {
        let n = second
            .read(&mut buffer)
            .expect("the shed request is answered");
        assert!(n > 0, "closed without an answer");
        shed.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&shed).to_string();
    let (status, body) = crate::support::parse_response(&shed);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(error["error"].is_string(), "{body}");
    assert_eq!(
        scraped(
            metrics,
            "ringcast_rejected_total{reason=\"rest_in_flight\"}"
        ),
        1.0
    );
}

/// Reads one `Content-Length`-framed HTTP response (bounded by the stream's read timeout).
fn read_one_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse::<usize>().unwrap());
            if response.len() >= end + 4 + length {
                return response;
            }
        }
        let n = stream.read(&mut chunk).unwrap_or_else(|e| {
            panic!(
                "reading a response: {e}; have {:?}",
                String::from_utf8_lossy(&response)
            )
        });
        assert!(n > 0, "closed before a whole response: {response:?}");
        response.extend_from_slice(&chunk[..n]);
    }
}

// At the process's descriptor limit the next client is not left waiting in the listen backlog:
// the core spends its spare descriptor on it, so a WebSocket gets the 101 then pusher:error +
// close 4100, and a REST call 503 + Retry-After with a JSON error. The failed accepts are
// counted by reason, the log holds a few lines rather than one per failure, and once clients
// leave, new ones get in again.
#[test]
fn at_the_descriptor_limit_the_next_client_is_refused_at_once() {
    const DESCRIPTORS: u64 = 64;
    let config = format!("{}{METRICS_ON}", config_text(&Options::default()));
    let (server, metrics) = Server::launch_with_descriptor_limit(&config, true, DESCRIPTORS);
    let metrics = metrics.unwrap();
    let mut clients = Vec::new();
    let refused = loop {
        assert!(
            clients.len() < DESCRIPTORS as usize,
            "{} clients admitted under a limit of {DESCRIPTORS} descriptors",
            clients.len()
        );
        match attempt(server.addr, APP_KEY) {
            Attempt::Connected(ws) => clients.push(ws),
            Attempt::Refused(error, close) => break (error, close),
            Attempt::Failed(why) => panic!("client {}: {why}", clients.len() + 1),
        }
    };
    assert_eq!(
        refused,
        (Some(4100), 4100),
        "after {} clients",
        clients.len()
    );
    // A REST call at the limit gets 503 on a spare descriptor. A descriptor freed meanwhile (the
    // refused client's) may go to a plain accept first: that call is served normally, and its
    // connection is kept open, so the next call meets the limit again.
    let path = format!("/apps/{APP_ID}/channels");
    let mut served = Vec::new();
    let response = loop {
        assert!(
            served.len() < DESCRIPTORS as usize,
            "{} REST calls served at the descriptor limit",
            served.len()
        );
        let query = signed_query("GET", &path, &[], b"", APP_KEY, APP_SECRET, unix_now());
        let request = format!("GET {path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let response = read_one_response(&mut stream);
        if !response.starts_with(b"HTTP/1.1 200 ") {
            break response;
        }
        served.push(stream);
    };
    let text = String::from_utf8_lossy(&response).to_string();
    let (status, body) = crate::support::parse_response(&response);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(error["error"].is_string(), "{body}");

    // The clients leave: descriptors are free again and a new client gets in.
    let admitted = clients.len();
    drop(clients);
    drop(served);
    let _late = poll(
        WAIT,
        "a client admitted after the others left",
        || match attempt(server.addr, APP_KEY) {
            Attempt::Connected(ws) => Some(ws),
            Attempt::Refused(Some(4100), 4100) => None,
            other => panic!("{other:?}"),
        },
    );
    let text = scrape(metrics);
    assert!(
        value(&text, "ringcast_accept_errors_total{reason=\"emfile\"}") >= 2.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "ringcast_rejected_total{reason=\"descriptor_limit\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(
        value(&text, "ringcast_closes_total{code=\"4100\"}") >= 1.0,
        "{text}"
    );
    let stderr = server.stderr();
    let lines = stderr.matches("accept failed").count();
    assert!(
        (1..=8).contains(&lines),
        "{lines} accept-failure lines for {admitted} clients:\n{stderr}"
    );
}

// An app's max_connections: the connection over it gets pusher:error 4004 + close 4004.
#[test]
fn app_max_connections_refuses_with_4004() {
    let server = Server::with(Options {
        extra_app: "max_connections = 1".to_string(),
        ..Options::default()
    });
    let _a = server.client();
    match attempt(server.addr, APP_KEY) {
        Attempt::Refused(Some(4004), 4004) => {}
        other => panic!("over the app quota: {other:?}"),
    }
}
