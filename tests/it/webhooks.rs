//! Webhooks (spec §8) against the real binary: small receivers on 127.0.0.1 (std TcpListener,
//! one thread per connection) record every POST, check its key, content type and signature,
//! and answer as each test scripts (2xx, 5xx, a response that never comes, a closed connection,
//! or no listener at all). Every wait is bounded and pass/fail is decided by what arrived
//! (counts, order, bodies), never by how long it took.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcast::http::signature::hmac_sha256_hex;
use serde_json::{Value, json};

use crate::support::{APP_ID, APP_KEY, APP_SECRET, Client, Options, Server, WAIT, metric, scrape};

/// The id header (documented in configs/ringcast.toml).
const ID_HEADER: &str = "x-ringcast-webhook-id";

// ---------------------------------------------------------------------------------------------
// The receiver.

/// How the receiver answers one POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(u16),
    /// Reads the request (the application "stored" it) and never answers: the broker times out.
    Hang,
    /// Reads the request and closes the connection without a response.
    Close,
}

impl Reply {
    /// Whether an application that stores before answering has processed the POST.
    fn processed(self) -> bool {
        matches!(self, Reply::Status(200..=299) | Reply::Hang)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Post {
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    pub(crate) body: String,
    reply: Reply,
    /// Key, content type and signature as the spec requires.
    valid: bool,
}

impl Post {
    pub(crate) fn id(&self) -> &str {
        self.headers.get(ID_HEADER).map_or("", String::as_str)
    }

    fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_str(&self.body).unwrap();
        body["events"].as_array().unwrap().clone()
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A webhook receiver on 127.0.0.1; stops accepting when dropped.
pub(crate) struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Answers every POST with 200.
    pub(crate) fn ok() -> Receiver {
        Receiver::scripted(|_| Reply::Status(200))
    }

    /// Answers POST number `n` (from 0, counting every attempt) with `script(n)`.
    pub(crate) fn scripted(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(script))
    }

    fn on(listener: TcpListener, script: Script) -> Receiver {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_posts, thread_stop) = (Arc::clone(&posts), Arc::clone(&stop));
        std::thread::spawn(move || {
            let counter = Arc::new(Mutex::new(0usize));
            while !thread_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (posts, script, counter, stop) = (
                            Arc::clone(&thread_posts),
                            Arc::clone(&script),
                            Arc::clone(&counter),
                            Arc::clone(&thread_stop),
                        );
                        std::thread::spawn(move || {
                            serve(stream, &posts, &*script, &counter, &stop)
                        });
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Receiver { addr, posts, stop }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/pusher/webhook", self.addr)
    }

    pub(crate) fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The processed POSTs, de-duplicated by id (first arrival kept), in arrival order.
    pub(crate) fn unique(&self) -> Vec<Post> {
        let mut seen = HashSet::new();
        self.posts()
            .into_iter()
            .filter(|post| post.reply.processed() && seen.insert(post.id().to_string()))
            .collect()
    }

    /// Every event of the processed, de-duplicated POSTs, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.unique().iter().flat_map(Post::events).collect()
    }

    /// Waits (bounded) until `done` holds for the received events; returns them.
    fn wait_events(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; received: {}",
                summary(&events)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until an event with these fields has arrived.
    fn wait_for(&self, wanted: &Value) -> Vec<Value> {
        self.wait_events(WAIT, &wanted.to_string(), |events| {
            events.iter().any(|event| matches(event, wanted))
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request from the connection, records it, answers per the script.
fn serve(
    mut stream: TcpStream,
    posts: &Mutex<Vec<Post>>,
    script: &(dyn Fn(usize) -> Reply + Send + Sync),
    counter: &Mutex<usize>,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let Some((head, body)) = read_request(&mut stream) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    assert!(
        request_line.starts_with("POST /pusher/webhook "),
        "{request_line}"
    );
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let valid = headers.get("x-pusher-key").map(String::as_str) == Some(APP_KEY)
        && headers.get("content-type").map(String::as_str) == Some("application/json")
        && headers.get("x-pusher-signature").map(String::as_str)
            == Some(hmac_sha256_hex(APP_SECRET, &body).as_str());
    let reply = {
        let mut counter = counter.lock().unwrap();
        let reply = script(*counter);
        *counter += 1;
        posts.lock().unwrap().push(Post {
            headers,
            body,
            reply,
            valid,
        });
        reply
    };
    match reply {
        Reply::Status(status) => {
            let response =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = stream.write_all(response.as_bytes());
        }
        Reply::Hang => {
            // Hold the connection until the broker gives up on it (or the test ends).
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buffer = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        Reply::Close => {}
    }
}

/// The head (without the blank line) and the body (by Content-Length) of one request.
fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    Some((head, String::from_utf8(body).unwrap()))
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Whether `event` has every field of `wanted`.
fn matches(event: &Value, wanted: &Value) -> bool {
    wanted
        .as_object()
        .unwrap()
        .iter()
        .all(|(key, value)| &event[key] == value)
}

/// `name[:user_id][:count]` per event, for messages and sequence comparisons.
fn label(event: &Value) -> String {
    let mut label = event["name"].as_str().unwrap_or("?").to_string();
    if let Some(user) = event["user_id"].as_str() {
        label.push_str(&format!(":{user}"));
    }
    if let Some(count) = event["subscription_count"].as_u64() {
        label.push_str(&format!(":{count}"));
    }
    label
}

fn summary(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("{}@{}", label(e), e["channel"].as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The labels of `channel`'s events, in order.
fn sequence(events: &[Value], channel: &str) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["channel"] == channel)
        .map(label)
        .collect()
}

fn webhook_app(receivers: &[&str], extra: &str) -> String {
    let mut app = format!("enable_client_events = true\n{extra}\n");
    for url in receivers {
        app.push_str(&format!("[[apps.webhooks]]\nurl = \"{url}\"\n"));
    }
    app
}

fn core_of(client: &Client) -> u64 {
    let (_, low) = client.socket_id.split_once('.').expect("socket id");
    low.parse::<u64>().expect("socket id low part") % 2
}

/// `count` clients, the first on core 0 and the second on core 1 (bounded attempts).
fn clients_on_both_cores(server: &Server, count: usize) -> Vec<Client> {
    let mut pools: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..64 {
        if !pools[0].is_empty() && !pools[1].is_empty() && pools[0].len() + pools[1].len() >= count
        {
            break;
        }
        let client = server.client();
        pools[core_of(&client) as usize].push(client);
    }
    let first = pools[0]
        .pop()
        .expect("no client on core 0 in 64 connections");
    let second = pools[1]
        .pop()
        .expect("no client on core 1 in 64 connections");
    let mut clients = vec![first, second];
    clients.extend(pools.into_iter().flatten());
    clients.truncate(count);
    clients
}

fn auth(string_to_sign: &str) -> String {
    format!("{APP_KEY}:{}", hmac_sha256_hex(APP_SECRET, string_to_sign))
}

/// Reads until an event named `name` arrives (skipping member events and the like).
fn recv_named(client: &mut Client, name: &str) -> Value {
    loop {
        let event = client.recv_event();
        if event["event"] == name {
            return event;
        }
    }
}

fn subscribe_private(client: &mut Client, channel: &str) {
    let auth = auth(&format!("{}:{channel}", client.socket_id));
    client.send(&json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}));
    let reply = recv_named(client, "pusher_internal:subscription_succeeded");
    assert_eq!(reply["channel"], channel);
}

fn join_presence(client: &mut Client, channel: &str, user_id: &str) {
    let channel_data = json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
    let auth = auth(&format!("{}:{channel}:{channel_data}", client.socket_id));
    client.send(&json!({"event":"pusher:subscribe","data":{
        "auth":auth,"channel":channel,"channel_data":channel_data}}));
    let reply = recv_named(client, "pusher_internal:subscription_succeeded");
    assert_eq!(reply["channel"], channel);
}

fn unsubscribe(client: &mut Client, channel: &str) {
    client.send(&json!({"event":"pusher:unsubscribe","data":{"channel":channel}}));
}

/// Polls the metrics endpoint until `series` reaches `at_least`; returns its value.
fn wait_metric(metrics: SocketAddr, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(&scrape(metrics), series).unwrap_or(0.0);
        if value >= at_least {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {value} (< {at_least}) for {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

// Every event kind, with clients on both cores: occupancy and membership are reported once per
// transition (not once per core), client events carry the sender, cache misses are reported;
// every POST is signed, typed and keyed as the spec says, ids are unique, and the `pusher` npm
// library's own verification accepts what was sent.
#[test]
fn events_from_both_cores_are_signed_and_reported_once_per_transition() {
    let receiver = Receiver::ok();
    let server = Server::with(Options {
        cores: 2,
        extra_app: webhook_app(&[&receiver.url()], ""),
        extra_toml: "[webhooks]\nbatch_window_ms = 20\n".to_string(),
        ..Options::default()
    });
    let mut clients = clients_on_both_cores(&server, 3);
    let mut c = clients.pop().unwrap();
    let mut b = clients.pop().unwrap();
    let mut a = clients.pop().unwrap();

    // A public channel: two subscribers on two cores.
    let public = "wh-public";
    a.subscribe(public);
    b.subscribe(public);
    receiver
        .wait_for(&json!({"name":"subscription_count","channel":public,"subscription_count":2}));
    unsubscribe(&mut b, public);
    receiver.wait_events(WAIT, "the count back to 1", |events| {
        sequence(events, public).len() >= 3
    });
    unsubscribe(&mut a, public);
    receiver.wait_for(&json!({"name":"channel_vacated","channel":public}));

    // A presence channel: u1 on two connections (two cores), u2 on a third.
    let presence = "presence-wh";
    join_presence(&mut a, presence, "u1");
    join_presence(&mut b, presence, "u1");
    join_presence(&mut c, presence, "u2");
    receiver.wait_for(&json!({"name":"member_added","channel":presence,"user_id":"u2"}));
    a.send(&json!({"event":"client-hello","channel":presence,"data":{"from":"u1"}}));
    recv_named(&mut c, "client-hello");
    receiver.wait_for(&json!({"name":"client_event","channel":presence}));
    unsubscribe(&mut b, presence);
    unsubscribe(&mut a, presence);
    receiver.wait_for(&json!({"name":"member_removed","channel":presence,"user_id":"u1"}));
    unsubscribe(&mut c, presence);
    receiver.wait_for(&json!({"name":"channel_vacated","channel":presence}));

    // A private channel with a client event.
    let private = "private-wh";
    subscribe_private(&mut a, private);
    subscribe_private(&mut b, private);
    a.send(&json!({"event":"client-typing","channel":private,"data":{"x":1}}));
    recv_named(&mut b, "client-typing");
    receiver.wait_for(&json!({"name":"client_event","channel":private}));

    // A cache channel with nothing cached.
    let cache = "cache-wh";
    a.subscribe(cache);
    receiver.wait_for(&json!({"name":"cache_miss","channel":cache}));
    unsubscribe(&mut a, cache);
    let events = receiver.wait_for(&json!({"name":"channel_vacated","channel":cache}));

    assert_eq!(
        sequence(&events, public),
        [
            "channel_occupied",
            "subscription_count:1",
            "subscription_count:2",
            "subscription_count:1",
            "channel_vacated"
        ],
        "{}",
        summary(&events)
    );
    assert_eq!(
        sequence(&events, presence),
        [
            "channel_occupied",
            "member_added:u1",
            "member_added:u2",
            "client_event:u1",
            "member_removed:u1",
            "member_removed:u2",
            "channel_vacated"
        ],
        "{}",
        summary(&events)
    );
    assert_eq!(
        sequence(&events, cache),
        [
            "channel_occupied",
            "cache_miss",
            "subscription_count:1",
            "channel_vacated"
        ],
        "{}",
        summary(&events)
    );
    let client_event = events
        .iter()
        .find(|e| e["name"] == "client_event" && e["channel"] == private)
        .unwrap();
    assert_eq!(
        client_event,
        &json!({"name":"client_event","channel":private,"event":"client-typing",
                "data":"{\"x\":1}","socket_id":a.socket_id})
    );
    let presence_event = events
        .iter()
        .find(|e| e["name"] == "client_event" && e["channel"] == presence)
        .unwrap();
    assert_eq!(presence_event["socket_id"], a.socket_id.as_str());
    assert_eq!(presence_event["user_id"], "u1");
    assert_eq!(presence_event["event"], "client-hello");

    // Every POST: valid key, exact content type, signature of the exact body, a unique id, a
    // body of exactly {time_ms, events}, answered once (nothing failed, so nothing repeats).
    let posts = receiver.posts();
    assert!(!posts.is_empty());
    let mut ids = HashSet::new();
    for post in &posts {
        assert!(post.valid, "bad key, content type or signature: {post:?}");
        assert!(ids.insert(post.id().to_string()), "id reused: {post:?}");
        assert!(!post.id().is_empty(), "no {ID_HEADER}: {post:?}");
        let body: Value = serde_json::from_str(&post.body).unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["events", "time_ms"], "{}", post.body);
        assert!(post.body.starts_with(r#"{"time_ms":"#), "{}", post.body);
        let time_ms = body["time_ms"].as_u64().unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(time_ms <= now_ms && now_ms - time_ms < 600_000, "{time_ms}");
    }

    verify_with_pusher_library(&posts);
}

// A receiver that refuses connections, then answers 500, times out, drops the connection and
// answers 503 before it starts answering 200 (and later keeps losing some responses after
// storing the POST) still gets every webhook exactly once after de-duplication by id, with
// each channel's events in order and each retry identical to its first attempt.
#[test]
fn a_failing_receiver_gets_every_webhook_once_and_in_order() {
    // Reserve a port with nothing listening on it: the first attempts are refused.
    let port_holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let url = format!("http://{addr}/pusher/webhook");
    let (server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_app: format!(
            "[[apps.webhooks]]\nurl = \"{url}\"\nevent_types = [\"channel_occupied\", \"channel_vacated\"]\n"
        ),
        extra_toml: "[webhooks]\nbatch_window_ms = 10\nbatch_events_max = 4\ntimeout_ms = 300\nretry_initial_ms = 20\nretry_max_ms = 200\n".to_string(),
        ..Options::default()
    });
    let channels = ["retry-a", "retry-b", "retry-c", "retry-d"];
    let rounds = 3;
    let mut client = server.client();
    for _ in 0..rounds {
        for channel in channels {
            client.subscribe(channel);
        }
        for channel in channels {
            unsubscribe(&mut client, channel);
        }
    }
    // The refused attempts happen (and are retried) before the receiver exists.
    wait_metric(metrics, "ringcast_webhooks_retried_total", 2.0);

    let listener = TcpListener::bind(addr).expect("rebind the reserved port");
    let receiver = Receiver::on(
        listener,
        Arc::new(|n| match n {
            0 => Reply::Status(500),
            1 => Reply::Hang,
            2 => Reply::Close,
            3 => Reply::Status(503),
            n if n % 3 == 0 => Reply::Hang,
            _ => Reply::Status(200),
        }),
    );
    let expected_total = channels.len() * rounds * 2;
    let events = receiver.wait_events(WAIT * 3, "every webhook", |events| {
        events.len() >= expected_total
    });
    assert_eq!(events.len(), expected_total, "{}", summary(&events));
    for channel in channels {
        let expected: Vec<&str> = (0..rounds)
            .flat_map(|_| ["channel_occupied", "channel_vacated"])
            .collect();
        assert_eq!(
            sequence(&events, channel),
            expected,
            "{channel}: {}",
            summary(&events)
        );
    }
    // Retries repeat the first attempt byte for byte, signature and id included.
    let posts = receiver.posts();
    let mut first: HashMap<String, &Post> = HashMap::new();
    for post in &posts {
        assert!(post.valid, "{post:?}");
        let original = *first.entry(post.id().to_string()).or_insert(post);
        assert_eq!(original.body, post.body);
        assert_eq!(
            original.headers.get("x-pusher-signature"),
            post.headers.get("x-pusher-signature")
        );
    }
    assert!(
        posts.len() > first.len(),
        "some POSTs were retries ({} POSTs, {} ids)",
        posts.len(),
        first.len()
    );
    let delivered = wait_metric(
        metrics,
        "ringcast_webhooks_delivered_total",
        expected_total as f64,
    );
    assert_eq!(delivered, expected_total as f64);
    let text = scrape(metrics);
    assert_eq!(
        metric(&text, "ringcast_webhooks_queued_total"),
        Some(expected_total as f64)
    );
    assert_eq!(metric(&text, "ringcast_webhooks_dropped_total"), Some(0.0));
    assert!(
        metric(&text, "ringcast_webhooks_retried_total").unwrap() >= 6.0,
        "{text}"
    );
    assert_eq!(metric(&text, "ringcast_webhooks_pending"), Some(0.0));
    assert_eq!(
        metric(&text, "ringcast_webhooks_delivery_seconds_count"),
        Some(first.len() as f64)
    );
}

// A receiver that is down for the whole test (one target refuses connections, another accepts
// and never answers) does not slow the broker: every publish reaches the subscriber and every
// subscription succeeds; the bounded outbox drops (and counts) what does not fit.
#[test]
fn a_receiver_that_is_down_does_not_slow_the_broker() {
    let refused = {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        holder.local_addr().unwrap()
    };
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole_addr = blackhole.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_blackhole = Arc::clone(&stop);
    std::thread::spawn(move || {
        blackhole.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        while !stop_blackhole.load(Ordering::Relaxed) {
            match blackhole.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let (mut server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_app: webhook_app(
            &[
                &format!("http://{refused}/hook"),
                &format!("http://{blackhole_addr}/hook"),
            ],
            "",
        ),
        extra_toml: "[webhooks]\nbatch_window_ms = 0\ntimeout_ms = 5000\noutbox_max = 50\n"
            .to_string(),
        ..Options::default()
    });

    let mut subscriber = server.client();
    subscriber.subscribe("steady");
    let mut churner = server.client();
    let cycles = 200;
    for n in 0..cycles {
        let channel = format!("churn-{n}");
        churner.subscribe(&channel);
        unsubscribe(&mut churner, &channel);
    }
    let publishes = 300;
    for n in 0..publishes {
        server.trigger(&json!({"name":"tick","channel":"steady","data":n.to_string()}));
    }
    let mut received = 0;
    for n in 0..publishes {
        let event = subscriber.recv_event();
        assert_eq!(event["event"], "tick", "{event}");
        assert_eq!(event["data"], n.to_string());
        received += 1;
    }
    assert_eq!(received, publishes);
    // Subscriptions still answer at once after all that.
    churner.subscribe("after-churn");

    let dropped = wait_metric(metrics, "ringcast_webhooks_dropped_total", 1.0);
    let text = scrape(metrics);
    assert_eq!(
        metric(&text, "ringcast_webhooks_delivered_total"),
        Some(0.0)
    );
    let queued = metric(&text, "ringcast_webhooks_queued_total").unwrap();
    let pending = metric(&text, "ringcast_webhooks_pending").unwrap();
    assert!(queued >= 1.0 && dropped >= 1.0, "{text}");
    assert!(pending <= 50.0 + 1.0, "the outbox is bounded: {pending}");
    assert!(server.is_alive());
    let stderr = server.stderr();
    assert!(stderr.contains("webhook outbox full"), "{stderr}");
    stop.store(true, Ordering::Relaxed);
}

// `webhook_removal_delay_ms`: a member who leaves and comes back within the delay produces
// neither the removal nor the re-add (nor vacated/occupied); a final leave is reported after
// the delay, in order.
#[test]
fn the_removal_delay_cancels_a_leave_and_rejoin() {
    let receiver = Receiver::ok();
    let (server, metrics) = Server::with_metrics(Options {
        cores: 2,
        extra_app: webhook_app(&[&receiver.url()], "webhook_removal_delay_ms = 5000"),
        extra_toml: "[webhooks]\nbatch_window_ms = 10\n".to_string(),
        ..Options::default()
    });
    let channel = "presence-delay";
    let mut client = server.client();
    join_presence(&mut client, channel, "u1");
    receiver.wait_for(&json!({"name":"member_added","channel":channel,"user_id":"u1"}));
    unsubscribe(&mut client, channel);
    join_presence(&mut client, channel, "u1");
    wait_metric(metrics, "ringcast_webhooks_cancelled_total", 2.0);
    unsubscribe(&mut client, channel);
    let events = receiver.wait_events(WAIT * 2, "the delayed vacate", |events| {
        events
            .iter()
            .any(|e| e["name"] == "channel_vacated" && e["channel"] == channel)
    });
    assert_eq!(
        sequence(&events, channel),
        [
            "channel_occupied",
            "member_added:u1",
            "member_removed:u1",
            "channel_vacated"
        ],
        "{}",
        summary(&events)
    );
    assert_eq!(
        metric(&scrape(metrics), "ringcast_webhooks_cancelled_total"),
        Some(2.0)
    );
}

// SIGTERM: what the drain causes (the last subscriber's connection closed: channel_vacated,
// here also held by the removal delay) is delivered before the process exits. With two cores
// the client subscribes to one channel owned by each core, so at least one unsubscribe crosses
// the mesh during the drain. (The control thread also waits for the mesh to be empty before it
// stops the cores; the window that guards against is too narrow for this test to hit on its
// own, so this is coverage of the two-core path, not a reproduction.)
#[test]
fn a_drain_delivers_held_webhooks_before_exit() {
    for cores in [1usize, 2] {
        let receiver = Receiver::ok();
        let mut server = Server::with(Options {
            cores,
            extra_server: "drain_grace_ms = 0\n".to_string(),
            extra_app: webhook_app(&[&receiver.url()], "webhook_removal_delay_ms = 30000"),
            extra_toml: "[webhooks]\nbatch_window_ms = 50\n".to_string(),
        });
        let channels: Vec<String> = (0..cores)
            .map(|owner| {
                (0..)
                    .map(|n| format!("drained-{n}"))
                    .find(|name| ringcast::mesh::ChannelKey::new(0, name).owner(cores) == owner)
                    .unwrap()
            })
            .collect();
        let mut client = server.client();
        for channel in &channels {
            client.subscribe(channel);
            receiver.wait_for(&json!({"name":"channel_occupied","channel":channel}));
        }
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(WAIT).expect("exit after the drain");
        assert!(status.success(), "{status:?}");
        let events = receiver.events();
        for channel in &channels {
            assert_eq!(
                sequence(&events, channel),
                [
                    "channel_occupied",
                    "subscription_count:1",
                    "channel_vacated"
                ],
                "cores {cores}: {}",
                summary(&events)
            );
        }
    }
}

// Targets filter by event type and channel prefix, send their custom headers, and a SIGHUP
// reload that moves the target applies to the next events.
#[test]
fn filters_headers_and_reload() {
    let presence_only = Receiver::ok();
    let everything = Receiver::ok();
    let moved_to = Receiver::ok();
    let app = |targets: &str| {
        format!(
            "[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{targets}"
        )
    };
    let head = "version = 1\n[server]\nbind = \"127.0.0.1:0\"\ncores = 2\npin_threads = false\n[metrics]\nbind = \"127.0.0.1:0\"\n[webhooks]\nbatch_window_ms = 10\n";
    let first_targets = format!(
        "[[apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"member_added\", \"channel_occupied\"]\nchannel_prefix = \"presence-\"\nheaders = {{ \"X-Env\" = \"test\" }}\n[[apps.webhooks]]\nurl = \"{}\"\n",
        presence_only.url(),
        everything.url()
    );
    let (server, metrics) = Server::launch(&format!("{head}{}", app(&first_targets)), &[], true);
    let metrics = metrics.unwrap();
    let mut client = server.client();
    client.subscribe("public-filter");
    join_presence(&mut client, "presence-filter", "u9");
    everything.wait_for(&json!({"name":"member_added","channel":"presence-filter"}));
    let events =
        presence_only.wait_for(&json!({"name":"member_added","channel":"presence-filter"}));
    assert_eq!(
        summary(&events),
        "channel_occupied@presence-filter, member_added:u9@presence-filter"
    );
    for post in presence_only.posts() {
        assert_eq!(post.headers.get("x-env").map(String::as_str), Some("test"));
        assert!(post.valid);
    }
    assert!(
        everything
            .posts()
            .iter()
            .all(|p| !p.headers.contains_key("x-env"))
    );

    // Reload: the only target is now `moved_to`.
    std::fs::write(
        server.config_path(),
        format!(
            "{head}{}",
            app(&format!(
                "[[apps.webhooks]]\nurl = \"{}\"\n",
                moved_to.url()
            ))
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    wait_metric(metrics, "ringcast_config_reloads_total", 1.0);
    client.subscribe("after-reload");
    moved_to.wait_for(&json!({"name":"channel_occupied","channel":"after-reload"}));
    assert!(
        !everything
            .events()
            .iter()
            .any(|e| e["channel"] == "after-reload"),
        "the removed target got an event after the reload"
    );
}

// ---------------------------------------------------------------------------------------------
// The `pusher` npm library's webhook verification.

const NEEDS_NODE: &str =
    "the webhook check needs node and npm (Debian: apt-get install nodejs npm)";

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("compat")
}

/// `npm ci` in tests/compat when node_modules is missing or older than the lock file (the same
/// rule as the real-client suite in compat.rs).
fn install_packages(dir: &Path) {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if matches!((mtime(&installed), mtime(&lock)), (Some(i), Some(l)) if i >= l) {
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{NEEDS_NODE}: cannot run npm ({error})"));
    assert!(
        output.status.success(),
        "`npm ci` in {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `pusher.webhook({headers, rawBody}).isValid()` from the `pusher` npm library on every
/// received POST, plus one with a tampered body that must be refused.
fn verify_with_pusher_library(posts: &[Post]) {
    let dir = compat_dir();
    install_packages(&dir);
    let mut requests: Vec<Value> = posts
        .iter()
        .map(|post| json!({"headers": post.headers, "rawBody": post.body}))
        .collect();
    let mut tampered = requests[0].clone();
    tampered["rawBody"] = Value::String(posts[0].body.replacen("time_ms", "time_mz", 1));
    requests.push(tampered);
    let input = std::env::temp_dir().join(format!(
        "ringcast-webhooks-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&input, serde_json::to_string(&requests).unwrap()).unwrap();
    let script = r#"
const Pusher = require("pusher");
const fs = require("fs");
const pusher = new Pusher({ appId: process.env.APP_ID, key: process.env.APP_KEY, secret: process.env.APP_SECRET });
const requests = JSON.parse(fs.readFileSync(process.env.INPUT, "utf8"));
const results = requests.map((request) => {
  const webhook = pusher.webhook(request);
  const valid = webhook.isValid();
  return { valid, events: valid ? webhook.getEvents().length : 0, time: valid ? webhook.getTime().getTime() : 0 };
});
console.log(JSON.stringify(results));
"#;
    let mut child = Command::new("node")
        .args(["-e", script])
        .current_dir(&dir)
        .env("APP_ID", APP_ID)
        .env("APP_KEY", APP_KEY)
        .env("APP_SECRET", APP_SECRET)
        .env("INPUT", &input)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{NEEDS_NODE}: cannot run node ({error})"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("node did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&input);
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "node printed no JSON ({error}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(results.len(), posts.len() + 1);
    for (post, result) in posts.iter().zip(&results) {
        assert_eq!(result["valid"], true, "pusher's WebHook refused {post:?}");
        assert_eq!(result["events"], post.events().len());
        let body: Value = serde_json::from_str(&post.body).unwrap();
        assert_eq!(result["time"], body["time_ms"]);
    }
    assert_eq!(
        results.last().unwrap()["valid"],
        false,
        "a tampered body must fail verification"
    );
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// The durable outbox (`[storage] dir`): a webhook whose receiver failed is in the write-ahead
// log before it is sent, so after kill -9 and a restart on the same directory it arrives with
// the same id, body and signature (the receiver de-duplicates on the id), and the log records
// that it was delivered.
#[test]
fn a_webhook_pending_at_kill_9_is_sent_again_after_a_restart_with_the_same_id() {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-it-wal-webhooks-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let receiver = Receiver::scripted(|n| {
        if n == 0 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    let options = || Options {
        cores: 2,
        extra_app: format!(
            "[[apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\"]\n",
            receiver.url()
        ),
        // No retry before the kill: the next attempt is the restarted process's.
        extra_toml: format!(
            "[webhooks]\nbatch_window_ms = 0\nretry_initial_ms = 600000\nretry_max_ms = 600000\n\
             [storage]\ndir = \"{}\"\nsegment_bytes = 1048576\n",
            dir.display()
        ),
        ..Options::default()
    };
    let server = Server::with(options());
    let mut client = server.client();
    client.subscribe("durable-channel");
    let deadline = Instant::now() + WAIT;
    while receiver.posts().is_empty() {
        assert!(Instant::now() < deadline, "no webhook POST within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = receiver.posts()[0].clone();
    assert_eq!(first.reply, Reply::Status(500));
    assert!(first.valid, "{first:?}");
    // kill -9 (Server's drop sends SIGKILL), then the same directory again.
    drop(client);
    drop(server);
    let server = Server::with(options());
    let events =
        receiver.wait_for(&json!({"name": "channel_occupied", "channel": "durable-channel"}));
    assert_eq!(events.len(), 1, "{}", summary(&events));
    let posts = receiver.posts();
    let again = posts
        .iter()
        .find(|post| post.reply == Reply::Status(200))
        .expect("a delivered POST");
    assert_eq!(
        again.id(),
        first.id(),
        "the same webhook id after the restart"
    );
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers.get("x-pusher-signature"),
        first.headers.get("x-pusher-signature")
    );
    // The write-ahead log says it was delivered (the record follows the 2xx).
    let deadline = Instant::now() + WAIT;
    loop {
        let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["wal", "dump"])
            .arg(&dir)
            .args(["--stream", "webhooks"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let enqueued = records
            .iter()
            .filter(|record| record["kind"] == "webhook_enqueued" && record["id"] == first.id())
            .count();
        assert_eq!(enqueued, 1, "{records:?}");
        let done = records.iter().any(|record| {
            record["kind"] == "webhook_done"
                && record["id"] == first.id()
                && record["delivered"] == true
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook_done record: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
