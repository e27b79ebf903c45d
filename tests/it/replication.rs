//! The hot standby with the real binary, two nodes on loopback: a standby follows the primary
//! and refuses clients; publishes with `ack = "replica"` are acknowledged once the standby has
//! them; kill -9 of the primary then promotion loses no acknowledged publish (seeded, many
//! runs: `RINGCAST_FAILOVER_RUNS`, `RINGCAST_FAILOVER_SEED`); a lost standby degrades or
//! rejects by policy and resyncs when it returns; the old primary rejoins as a standby with
//! its divergent suffix moved aside; a standby behind retention gets a full resync; a wrong
//! secret and an incompatible WAL format are refused; pending webhooks survive a failover; the
//! metrics port's `/readyz` follows the role. The same failover through HAProxy with real
//! clients is `haproxy.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

pub(crate) const SECRET: &str = "replication-test-secret";

/// The admin token of nodes bound outside loopback (the binary requires one there); every admin
/// request of `Node` carries it (a node without a token ignores it).
const ADMIN_TOKEN: &str = "partition-admin-token";

/// One node's address, fixed ports and data directory (removed on drop: its preallocated WAL
/// segments are large).
pub(crate) struct Node {
    pub(crate) name: &'static str,
    /// Where the node binds its client, replication and admin ports (127.0.0.1, or its address
    /// in a network namespace for `partition.rs`).
    pub(crate) ip: std::net::IpAddr,
    pub(crate) dir: PathBuf,
    pub(crate) repl: u16,
    pub(crate) admin: u16,
}

impl Node {
    pub(crate) fn new(test: &str, name: &'static str) -> Node {
        Node::at(test, name, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// A node binding its ports on `ip`. `test` names the test, and the pair (`test`, `name`)
    /// the node's data directory: one use per process, asserted (two tests once shared "loss",
    /// and one wiped the other's WAL while it ran).
    pub(crate) fn at(test: &str, name: &'static str, ip: std::net::IpAddr) -> Node {
        static TAKEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let key = format!("{test}-{name}");
        {
            let mut taken = TAKEN.lock().unwrap();
            assert!(
                !taken.contains(&key),
                "two nodes of this test process named {key:?}: give each test its own name"
            );
            taken.push(key.clone());
        }
        let dir = std::env::temp_dir().join(format!("ringcast-repl-{}-{key}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            name,
            ip,
            dir,
            repl: fixed_port(),
            admin: fixed_port(),
        }
    }

    pub(crate) fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.admin)
    }

    /// The config text: `role` is `initial_role`; `extra` goes into `[replication]`.
    pub(crate) fn config(&self, peer: &Node, role: &str, secret: &str, extra: &str) -> String {
        format!(
            "version = 1\n\n[server]\nbind = \"{ip}:0\"\ncores = 2\npin_threads = false\n\n\
             [storage]\ndir = \"{}\"\n\n[history]\nevents_per_channel_max = 1000\n\n\
             [replication]\nnode_id = \"{}\"\nlisten = \"{ip}:{}\"\npeer = \"{}:{}\"\n\
             initial_role = \"{role}\"\nsecret = \"{secret}\"\n{extra}\n\n\
             [admin]\nbind = \"{ip}:{}\"\n{token}\n\
             [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n",
            self.dir.display(),
            self.name,
            self.repl,
            peer.ip,
            peer.repl,
            self.admin,
            ip = self.ip,
            token = if self.ip.is_loopback() {
                String::new()
            } else {
                format!("token = \"{ADMIN_TOKEN}\"\n")
            },
        )
    }

    pub(crate) fn start(&self, peer: &Node, role: &str, extra: &str) -> Server {
        Server::with_config_text(&self.config(peer, role, SECRET, extra))
    }

    /// One request to the admin endpoint, with the bearer token.
    fn admin_request(&self, method: &str, target: &str) -> (u16, String) {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.admin_addr()
        );
        parse_response(&raw(self.admin_addr(), request.as_bytes()))
    }

    pub(crate) fn status(&self) -> Value {
        let (status, body) = self.admin_request("GET", "/replication");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) fn promote(&self) -> (u16, Value) {
        let (status, body) = self.admin_request("POST", "/replication/promote");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Promotes, retrying while the standby still counts its primary as connected (it notices
    /// a killed primary when the connection breaks).
    fn promote_after_kill(&self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.promote();
            if status == 200 {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "promotion refused: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn wait_in_sync(&self) {
        wait_for(|| {
            let status = self.status();
            status["peer_connected"] == true && status["in_sync"] == true
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A signed publish: (status, durability header, body); (0, ..) when the node is gone.
pub(crate) fn publish(addr: SocketAddr, channel: &str, data: &str) -> (u16, String, String) {
    let response = post_events_raw(
        addr,
        &json!({"name": "e", "channels": [channel], "data": data}),
    );
    if response.is_empty() {
        return (0, String::new(), String::new());
    }
    let (status, body) = parse_response(response.as_bytes());
    let durability = response
        .lines()
        .find_map(|line| line.strip_prefix("X-Ringcast-Durability: "))
        .unwrap_or_default()
        .to_string();
    (status, durability, body)
}

/// The channel's history on `server`: (seq, data) in order.
pub(crate) fn history(server: &Server, channel: &str) -> Vec<(u64, String)> {
    let path = format!("/apps/{APP_ID}/channels/{channel}/history");
    let (status, body) = server.rest("GET", &path, &[("limit", "1000")], "");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            let seq = event["seq"].as_u64().unwrap();
            (seq, event["data"].as_str().unwrap().to_string())
        })
        .collect()
}

pub(crate) fn kill(server: &mut Server) {
    server.signal(libc::SIGKILL);
    server.wait_exit(WAIT).expect("killed");
}

// A standby follows, answers every client request with 503 naming its role (health stays
// 200), and after the primary is killed and it is promoted it serves the history with the same
// sequences, continues them, and says its publishes are degraded (no standby behind it).
#[test]
fn a_standby_follows_refuses_clients_and_takes_over() {
    let (a, b) = (Node::new("basic", "a"), Node::new("basic", "b"));
    let mut primary = a.start(&b, "primary", "");
    let standby = b.start(&a, "standby", "");
    b.wait_in_sync();
    for n in 1..=20 {
        let (status, durability, body) = publish(primary.addr, "room", &format!("m{n}"));
        assert_eq!(
            (status, durability.as_str()),
            (200, "replica-received"),
            "{body}"
        );
    }
    let (status, body) = get(standby.addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(standby.addr, "/healthz").0, 200);
    let (status, _, body) = publish(standby.addr, "room", "refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "standby"
    );
    let upgrade = raw(
        standby.addr,
        b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(parse_response(&upgrade).0, 503);
    assert_eq!(b.status()["role"], "standby");
    assert_eq!(
        b.promote().0,
        409,
        "a standby of a live primary is not promoted by default"
    );
    // Each acknowledged publish's record was measured on its way to the standby before its
    // acknowledgement released the publish.
    let lag = &a.status()["lag_measured"];
    assert!(lag["records"].as_u64().unwrap() >= 20, "{lag}");
    assert!(lag["p99_us_at_most"].as_u64().is_some(), "{lag}");
    kill(&mut primary);
    let promoted = b.promote_after_kill();
    assert_eq!(
        (promoted["role"].clone(), promoted["epoch"].clone()),
        (json!("primary"), json!(2))
    );
    let (took, stored) = (&promoted["took_ms"], &promoted["epoch_store_ms"]);
    assert!(
        took.as_u64().unwrap() >= stored.as_u64().unwrap(),
        "{promoted}"
    );
    let expected: Vec<(u64, String)> = (1..=20).map(|n| (n, format!("m{n}"))).collect();
    assert_eq!(history(&standby, "room"), expected);
    let (status, durability, _) = publish(standby.addr, "room", "after");
    assert_eq!(
        (status, durability.as_str()),
        (200, "local-written; standby=unavailable")
    );
    assert_eq!(
        history(&standby, "room").last().unwrap().0,
        21,
        "sequences continue"
    );
    let (status, body) = get(standby.addr, "/readyz");
    assert_eq!(status, 200);
    assert!(body.contains("degraded"), "{body}");
}

/// A tiny seeded generator (xorshift): the same seed gives the same kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

// Several publishers with `ack = "replica"`, the primary killed at a seeded point, the standby
// promoted: every publish the old primary acknowledged is in the new primary's history, in
// each publisher's order, with gapless sequences, and the sequences continue after it.
#[test]
fn failover_loses_no_acknowledged_publish() {
    let runs = env_u64("RINGCAST_FAILOVER_RUNS", 20);
    let seed = env_u64("RINGCAST_FAILOVER_SEED", 0x5eed_f00d) | 1;
    let mut rng = Rng(seed);
    for run in 0..runs {
        let kill_after_ms = 50 + rng.next() % 300;
        let context =
            format!("RINGCAST_FAILOVER_SEED={seed} run {run} (kill after {kill_after_ms} ms)");
        failover_run(run, kill_after_ms, &context);
    }
}

fn failover_run(run: u64, kill_after_ms: u64, context: &str) {
    const PUBLISHERS: usize = 3;
    let test = format!("failover-{run}");
    let (a, b) = (Node::new(&test, "a"), Node::new(&test, "b"));
    let mut primary = a.start(&b, "primary", "");
    let standby = b.start(&a, "standby", "");
    b.wait_in_sync();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|publisher| {
            let (addr, stop) = (primary.addr, Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                // Within the history window (1000), so every acknowledged one can be checked.
                for n in 0..900 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, durability, _) =
                        publish(addr, &format!("p{publisher}"), &format!("{n}"));
                    match status {
                        200 => {
                            assert_eq!(durability, "replica-received");
                            acked.push(n);
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(kill_after_ms));
    kill(&mut primary);
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Vec<u64>> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    b.promote_after_kill();
    for (publisher, acked) in acked.iter().enumerate() {
        let channel = format!("p{publisher}");
        let held = history(&standby, &channel);
        let seqs: Vec<u64> = held.iter().map(|(seq, _)| *seq).collect();
        let gapless: Vec<u64> = (1..=held.len() as u64).collect();
        assert_eq!(seqs, gapless, "{context}: sequences of {channel}");
        let datas: Vec<u64> = held.iter().map(|(_, data)| data.parse().unwrap()).collect();
        assert!(
            datas.len() >= acked.len() && datas[..acked.len()] == acked[..],
            "{context}: {channel} lost an acknowledged publish: acked {} held {}",
            acked.len(),
            datas.len()
        );
        let (status, _, body) = publish(standby.addr, &channel, "after");
        assert_eq!(status, 200, "{context}: {body}");
        assert_eq!(
            history(&standby, &channel).last().unwrap().0,
            held.len() as u64 + 1,
            "{context}: sequences continue on the new primary"
        );
    }
}

// `on_standby_loss = "reject"`: with the standby gone, a publish that needs it gets 503 within
// the timeout and `/readyz` says why; when the standby returns it resyncs from where it was
// (partial) and publishes are replicated again.
#[test]
fn a_lost_standby_rejects_by_policy_and_resyncs_when_back() {
    let (a, b) = (Node::new("loss", "a"), Node::new("loss", "b"));
    let extra = "standby_timeout_ms = 300\non_standby_loss = \"reject\"";
    let primary = a.start(&b, "primary", extra);
    let mut standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    assert_eq!(publish(primary.addr, "c", "1").0, 200);
    kill(&mut standby);
    let started = Instant::now();
    let (status, _, body) = publish(primary.addr, "c", "2");
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (_, ready) = get(primary.addr, "/readyz");
    assert!(ready.contains("degraded"), "{ready}");
    let partial_before = a.status()["resyncs"]["partial"].as_u64().unwrap();
    let _standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    wait_for(|| a.status()["standby_lost"] == false);
    assert!(a.status()["resyncs"]["partial"].as_u64().unwrap() > partial_before);
    let (status, durability, body) = publish(primary.addr, "c", "3");
    assert_eq!(
        (status, durability.as_str()),
        (200, "replica-received"),
        "{body}"
    );
}

// `on_standby_loss = "degrade"` under load: publishers keep publishing while the standby is
// killed and comes back. Not one publish fails: those in flight when it died wait at most the
// timeout, later ones say `standby=unavailable`, and once the standby has resynced (partial)
// they are replicated again. Every acknowledged publish is in the history, in order per
// publisher, and the standby ends with the primary's streams.
#[test]
fn a_lost_standby_under_load_degrades_with_no_failed_publish() {
    // Publishes per publisher at most (the test stops them sooner).
    const PUBLISHES_MAX: u64 = 20_000;
    let (a, b) = (Node::new("degrade", "a"), Node::new("degrade", "b"));
    let extra = "standby_timeout_ms = 300\non_standby_loss = \"degrade\"";
    let primary = a.start(&b, "primary", extra);
    let mut standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = primary.addr;
    let publishers: Vec<_> = (0..4)
        .map(|publisher| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for n in 0..PUBLISHES_MAX {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, durability, body) =
                        publish(addr, &format!("load-{publisher}"), &n.to_string());
                    answers.push((n, status, durability, body));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut standby);
    wait_for(|| a.status()["standby_lost"] == true);
    std::thread::sleep(Duration::from_millis(300));
    let partial_before = a.status()["resyncs"]["partial"].as_u64().unwrap();
    let _standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    wait_for(|| a.status()["standby_lost"] == false);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut levels = std::collections::BTreeMap::new();
    for (publisher, handle) in publishers.into_iter().enumerate() {
        let answers = handle.join().unwrap();
        for (n, status, durability, body) in &answers {
            assert_eq!(*status, 200, "publisher {publisher} event {n}: {body}");
            *levels.entry(durability.clone()).or_insert(0) += 1;
        }
        let datas: Vec<String> = history(&primary, &format!("load-{publisher}"))
            .into_iter()
            .map(|(_, data)| data)
            .collect();
        // The history keeps the last `events_per_channel_max` (1000) of them.
        let published: Vec<String> = answers.iter().map(|(n, ..)| n.to_string()).collect();
        let kept = &published[published.len().saturating_sub(1000)..];
        assert!(
            datas == kept,
            "publisher {publisher}: history {}..{} ({} events), acknowledged {}..{} ({})",
            datas.first().map_or("", String::as_str),
            datas.last().map_or("", String::as_str),
            datas.len(),
            kept.first().map_or("", String::as_str),
            kept.last().map_or("", String::as_str),
            kept.len()
        );
    }
    assert!(levels.contains_key("replica-received"), "{levels:?}");
    assert!(
        levels.contains_key("local-written; standby=unavailable"),
        "{levels:?}"
    );
    assert!(a.status()["resyncs"]["partial"].as_u64().unwrap() > partial_before);
    let (status, durability, body) = publish(primary.addr, "after", "x");
    assert_eq!(
        (status, durability.as_str()),
        (200, "replica-received"),
        "{body}"
    );
    b.wait_in_sync();
    for core in ["core-0", "core-1"] {
        wait_for(|| written_lsn(&b, core) == written_lsn(&a, core));
    }
}

// With `ack = "replica"` no subscriber sees an event before the standby has it: otherwise a
// failover right then would leave the client holding an event, and its sequence number, that
// the new primary never had. With the standby stopped (SIGSTOP: connected but silent), the
// event waits with the publish; both go when the standby is declared lost after
// `standby_timeout_ms` (degraded), and events flow at once again when it is back.
#[test]
fn subscribers_see_an_event_only_once_the_standby_has_it() {
    let (a, b) = (Node::new("gate", "a"), Node::new("gate", "b"));
    // Long enough that a loaded machine does not declare the standby lost by itself.
    let extra = "standby_timeout_ms = 3000\non_standby_loss = \"degrade\"";
    let primary = a.start(&b, "primary", extra);
    let standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    let mut client = primary.client();
    client.subscribe("gated");
    assert_eq!(publish(primary.addr, "gated", "1").0, 200);
    assert_eq!(client.recv_event()["data"], "1");
    assert_eq!(a.status()["standby_lost"], false);
    standby.signal(libc::SIGSTOP);
    let addr = primary.addr;
    let publisher = std::thread::spawn(move || publish(addr, "gated", "2"));
    // The event the standby does not have is not delivered.
    client.expect_silence(Duration::from_millis(700));
    assert_eq!(client.recv_event()["data"], "2");
    let (status, durability, body) = publisher.join().unwrap();
    assert_eq!(
        (status, durability.as_str()),
        (200, "local-written; standby=unavailable"),
        "{body}"
    );
    standby.signal(libc::SIGCONT);
    let deadline = Instant::now() + WAIT;
    while a.status()["standby_lost"] != false || b.status()["in_sync"] != true {
        assert!(
            Instant::now() < deadline,
            "the standby did not come back: primary {} standby {}",
            a.status(),
            b.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, durability, _) = publish(primary.addr, "gated", "3");
    assert_eq!((status, durability.as_str()), (200, "replica-received"));
    assert_eq!(client.recv_event()["data"], "3");
}

// A reload (SIGHUP) from `ack = "local"` to `ack = "replica"` holds deliveries for the standby
// from then on, like a start with it (the gate was switched only at start: regression).
#[test]
fn a_reload_to_an_ack_that_needs_the_standby_gates_deliveries() {
    let (a, b) = (Node::new("gate-reload", "a"), Node::new("gate-reload", "b"));
    let extra = "standby_timeout_ms = 3000\non_standby_loss = \"degrade\"";
    let primary = a.start(&b, "primary", &format!("{extra}\nack = \"local\""));
    let standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    let mut client = primary.client();
    client.subscribe("gated");
    let (status, durability, _) = publish(primary.addr, "gated", "1");
    assert_eq!((status, durability.as_str()), (200, "local-written"));
    assert_eq!(client.recv_event()["data"], "1");
    let path = primary.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("ack = \"local\"", "ack = \"replica\"")).unwrap();
    primary.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    for n in 2.. {
        let (status, durability, _) = publish(primary.addr, "gated", &n.to_string());
        assert_eq!(status, 200);
        assert_eq!(client.recv_event()["data"], n.to_string());
        if durability == "replica-received" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload did not apply: {durability}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    standby.signal(libc::SIGSTOP);
    let addr = primary.addr;
    let publisher = std::thread::spawn(move || publish(addr, "gated", "held"));
    // The event the standby does not have is not delivered.
    client.expect_silence(Duration::from_millis(700));
    assert_eq!(client.recv_event()["data"], "held");
    assert_eq!(publisher.join().unwrap().0, 200);
    standby.signal(libc::SIGCONT);
}

// The old primary, restarted after a failover, comes back as a standby of the new epoch: the
// records it wrote alone (acknowledged degraded, never replicated) are moved to `divergent/`,
// it follows the new primary, and it serves no client.
#[test]
fn the_old_primary_rejoins_as_a_standby_and_moves_its_divergent_suffix() {
    let (a, b) = (Node::new("rejoin", "a"), Node::new("rejoin", "b"));
    let extra = "standby_timeout_ms = 300";
    let mut primary = a.start(&b, "primary", extra);
    let mut standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    for n in 1..=5 {
        assert_eq!(publish(primary.addr, "c", &format!("shared{n}")).0, 200);
    }
    kill(&mut standby);
    for n in 1..=3 {
        let (status, durability, _) = publish(primary.addr, "c", &format!("alone{n}"));
        assert_eq!(
            (status, durability.as_str()),
            (200, "local-written; standby=unavailable")
        );
    }
    kill(&mut primary);
    let new_primary = b.start(&a, "standby", extra);
    assert_eq!(
        b.status()["role"],
        "standby",
        "a node with data never promotes itself"
    );
    b.promote_after_kill();
    assert_eq!(publish(new_primary.addr, "c", "new1").0, 200);
    let old = a.start(&b, "primary", extra);
    b.wait_in_sync();
    assert_eq!(a.status()["role"], "standby");
    assert_eq!(a.status()["epoch"], 2);
    assert_eq!(get(old.addr, "/readyz").0, 503);
    let divergent = a.dir.join("replication").join("divergent");
    let files: Vec<_> = std::fs::read_dir(&divergent)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        !files.is_empty(),
        "the divergent suffix is kept in {}",
        divergent.display()
    );
    let datas: Vec<String> = history(&new_primary, "c")
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    assert_eq!(
        datas,
        [
            "shared1", "shared2", "shared3", "shared4", "shared5", "new1"
        ]
    );
}

// A standby with the wrong secret is refused, and says so in its log; it never follows.
#[test]
fn a_wrong_secret_is_refused() {
    let (a, b) = (Node::new("secret", "a"), Node::new("secret", "b"));
    let primary = a.start(&b, "primary", "");
    let standby = Server::with_config_text(&b.config(&a, "standby", "not-the-right-secret", ""));
    wait_for(|| standby.stderr().contains("secret") && primary.stderr().contains("secret"));
    assert_eq!(a.status()["peer_connected"], false);
    assert_eq!(b.status()["in_sync"], false);
}

/// The stream `name`'s written LSN as `node`'s `GET /replication` shows it.
fn written_lsn(node: &Node, name: &str) -> u64 {
    node.status()["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stream| stream["stream"] == name)
        .unwrap_or_else(|| panic!("no stream {name}"))["written_lsn"]
        .as_u64()
        .unwrap()
}

// The webhook outbox is replicated: webhooks the primary enqueued while their receiver was
// refusing them are delivered, with the same ids, by the standby it promoted after the primary
// was killed; the standby itself delivered nothing while it followed.
#[test]
fn pending_webhooks_are_delivered_by_the_promoted_standby() {
    use crate::webhooks::{Receiver, Reply};
    let up = Arc::new(AtomicBool::new(false));
    let receiver_up = Arc::clone(&up);
    let receiver = Receiver::scripted(move |_| {
        if receiver_up.load(Ordering::Relaxed) {
            Reply::Status(200)
        } else {
            Reply::Status(503)
        }
    });
    let (a, b) = (Node::new("webhooks", "a"), Node::new("webhooks", "b"));
    // Retries far apart: after its first refused attempt, the old primary never retries.
    let webhooks = format!(
        "[[apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\"]\n\n\
         [webhooks]\nbatch_window_ms = 0\nretry_initial_ms = 600000\nretry_max_ms = 600000\n",
        receiver.url()
    );
    let config =
        |node: &Node, peer: &Node, role: &str| node.config(peer, role, SECRET, "") + &webhooks;
    let mut primary = Server::with_config_text(&config(&a, &b, "primary"));
    let standby = Server::with_config_text(&config(&b, &a, "standby"));
    b.wait_in_sync();
    let channels = ["hook-1", "hook-2", "hook-3"];
    let mut client = primary.client();
    for channel in channels {
        client.subscribe(channel);
    }
    // The first webhook was attempted and refused; the others wait behind it (one target's
    // batches go out in order); all three are in the outbox, and the standby has them.
    wait_for(|| !receiver.posts().is_empty() && written_lsn(&a, "webhooks") >= 3);
    let refused = receiver.posts()[0].id().to_string();
    wait_for(|| written_lsn(&b, "webhooks") >= written_lsn(&a, "webhooks"));
    drop(client);
    kill(&mut primary);
    b.promote_after_kill();
    up.store(true, Ordering::Relaxed);
    wait_for(|| receiver.unique().len() >= channels.len());
    let delivered = receiver.unique();
    assert_eq!(
        delivered[0].id(),
        refused,
        "the promoted standby sends the same webhook, first"
    );
    let bodies: String = delivered.iter().map(|post| post.body.clone()).collect();
    for channel in channels {
        assert!(bodies.contains(channel), "{channel} missing: {bodies}");
    }
    drop(standby);
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
}

/// The lowest first LSN among `node`'s segments of the stream `name`.
fn first_segment_lsn(node: &Node, name: &str) -> u64 {
    std::fs::read_dir(node.dir.join("wal").join(name))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".wal")?.parse::<u64>().ok()
        })
        .min()
        .unwrap_or(0)
}

// A standby that returns after the primary's retention removed the records it needs gets a
// full resync: its stream is wiped and copied again from the primary's first retained record,
// it reaches lag 0, and once promoted it serves the same history as the primary did.
#[test]
fn a_standby_behind_retention_gets_a_full_resync() {
    let (a, b) = (Node::new("retention", "a"), Node::new("retention", "b"));
    let small = |text: String| {
        text.replace(
            "events_per_channel_max = 1000",
            "events_per_channel_max = 5",
        )
        .replace(
            "\n\n[history]",
            "\nsegment_bytes = 65536\nretain_bytes_max = 65536\nretain_secs = 0\n\n[history]",
        )
    };
    let config = |node: &Node, peer: &Node, role: &str| small(node.config(peer, role, SECRET, ""));
    let mut primary = Server::with_config_text(&config(&a, &b, "primary"));
    let mut standby = Server::with_config_text(&config(&b, &a, "standby"));
    b.wait_in_sync();
    for n in 0..5 {
        assert_eq!(publish(primary.addr, "c", &format!("early{n}")).0, 200);
    }
    kill(&mut standby);
    // Enough 2 KB events for several segments: retention removes the early ones.
    let filler = "x".repeat(2048);
    let streams = ["core-0", "core-1"];
    let mut n = 0;
    while streams.iter().all(|s| first_segment_lsn(&a, s) <= 1) {
        assert!(n < 2_000, "retention removed nothing");
        assert_eq!(publish(primary.addr, "c", &format!("{n}{filler}")).0, 200);
        n += 1;
    }
    let full_before = a.status()["resyncs"]["full"].as_u64().unwrap();
    let expected = history(&primary, "c");
    let returned = Server::with_config_text(&config(&b, &a, "standby"));
    b.wait_in_sync();
    assert!(a.status()["resyncs"]["full"].as_u64().unwrap() > full_before);
    let copied = streams.iter().any(|s| first_segment_lsn(&b, s) > 1);
    assert!(
        copied,
        "the standby's copy starts at the primary's first retained record"
    );
    kill(&mut primary);
    b.promote_after_kill();
    assert_eq!(history(&returned, "c"), expected, "the same history");
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
}

/// Sends `hello` to `node`'s replication port as a raw client and returns the answer.
fn answer_to_hello(
    node: &Node,
    hello: ringcast::replication::Hello,
) -> ringcast::replication::Message {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", node.repl)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    ringcast::replication::encode(&ringcast::replication::Message::Hello(hello), &mut out);
    stream.write_all(&out).unwrap();
    let mut decoder = ringcast::replication::Decoder::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(message) = decoder.next().unwrap() {
            return message;
        }
        let read = stream.read(&mut chunk).unwrap();
        assert!(
            read > 0,
            "the primary closed the connection without an answer"
        );
        decoder.push(&chunk[..read]).unwrap();
    }
}

// A standby whose WAL format range does not include the primary's is refused with
// `FormatMismatch` (a raw client speaking the protocol), and the primary says so in its log.
#[test]
fn a_hello_with_an_incompatible_wal_format_is_refused() {
    use ringcast::replication::{Hello, Message, RefuseCode, Role, StreamPosition};
    let (a, b) = (Node::new("format", "a"), Node::new("format", "b"));
    let primary = a.start(&b, "primary", "");
    let cluster = a.status()["cluster"].as_str().unwrap().to_string();
    let format = ringcast::wal::record::FORMAT;
    let streams = ["core-0", "core-1", "webhooks"]
        .iter()
        .map(|name| StreamPosition {
            name: (*name).to_string(),
            last_lsn: 0,
            last_epoch: 0,
        })
        .collect();
    let hello = Hello {
        cluster,
        node_id: "b".to_string(),
        version: "99.0.0".to_string(),
        wal_format_min: format + 1,
        wal_format_max: format + 3,
        epoch: 1,
        role: Role::Standby,
        streams,
        nonce: [7; 16],
    };
    match answer_to_hello(&a, hello.clone()) {
        Message::Refuse { code, .. } => assert_eq!(code, RefuseCode::FormatMismatch),
        other => panic!("expected REFUSE, got {other:?}"),
    }
    wait_for(|| primary.stderr().contains("FormatMismatch"));
    // The same HELLO with the primary's format gets a WELCOME: only the format was wrong.
    let compatible = Hello {
        wal_format_min: format,
        wal_format_max: format,
        ..hello
    };
    assert!(matches!(
        answer_to_hello(&a, compatible),
        Message::Welcome(_)
    ));
    assert_eq!(a.status()["peer_connected"], false);
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
}

// A forced promotion of a standby still connected to a live primary: the standby tells that
// primary `Promoted` on their session, so it steps down at once (it says why in its log),
// then follows the new primary and refuses clients.
#[test]
fn a_forced_promotion_makes_the_connected_primary_step_down_at_once() {
    let (a, b) = (Node::new("forced", "a"), Node::new("forced", "b"));
    let old = a.start(&b, "primary", "");
    let new = b.start(&a, "standby", "");
    b.wait_in_sync();
    for n in 1..=3 {
        assert_eq!(publish(old.addr, "c", &format!("m{n}")).0, 200);
    }
    let (status, body) = http(
        b.admin_addr(),
        "POST",
        "/replication/promote?force=true",
        "",
    );
    assert_eq!(status, 200, "{body}");
    wait_for(|| old.stderr().contains("this node was superseded"));
    assert_eq!(a.status()["role"], "standby");
    assert_eq!(a.status()["epoch"], 2);
    assert_eq!(get(old.addr, "/readyz").0, 503);
    assert_eq!(publish(new.addr, "c", "m4").0, 200);
    a.wait_in_sync();
    let datas: Vec<String> = history(&new, "c").into_iter().map(|(_, d)| d).collect();
    assert_eq!(datas, ["m1", "m2", "m3", "m4"]);
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
}

// Regression (found by the HAProxy failover test's review of `/readyz`): the metrics port's
// `/readyz` said "ready" on a standby, so a load balancer probing that port would have sent
// clients to a node that refuses them. It follows the role there too, before and after a
// promotion.
#[test]
fn r13_the_metrics_port_readyz_follows_the_role() {
    let (a, b) = (
        Node::new("metrics-readyz", "a"),
        Node::new("metrics-readyz", "b"),
    );
    let with_metrics = |node: &Node, peer: &Node, role: &str| {
        let config = format!("{}{METRICS_ON}", node.config(peer, role, SECRET, ""));
        let (server, metrics) = Server::launch(&config, &[], true);
        (server, metrics.expect("metrics address"))
    };
    let (mut primary, primary_metrics) = with_metrics(&a, &b, "primary");
    let (_standby, standby_metrics) = with_metrics(&b, &a, "standby");
    b.wait_in_sync();
    assert_eq!(get(primary_metrics, "/readyz").0, 200);
    let (status, body) = get(standby_metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(standby_metrics, "/healthz").0, 200);
    kill(&mut primary);
    b.promote_after_kill();
    let (status, body) = get(standby_metrics, "/readyz");
    assert_eq!(status, 200, "{body}");
}

// A silence longer than `standby_timeout_ms` but shorter than the session's silence limit
// (`limits::REPL_SESSION_SILENCE_MS_MIN`, 5 s): the standby is paused (SIGSTOP) for 1.5 s. The
// primary counts it lost and degrades, and once it resumes the same session carries on — the
// standby is back, publishes are replicated again, and no new session (resync) was needed.
// Regression: a session used to end after `standby_timeout_ms` of silence, so every such
// silence cost a new connection and handshake, which under packet loss failed again and again
// (drill 5: the standby silent for up to 23 s, 93 % of publishes degraded).
#[test]
fn a_silence_longer_than_the_standby_timeout_keeps_the_session() {
    let (a, b) = (Node::new("silence", "a"), Node::new("silence", "b"));
    let extra = "standby_timeout_ms = 300\non_standby_loss = \"degrade\"";
    let primary = a.start(&b, "primary", extra);
    let standby = b.start(&a, "standby", extra);
    b.wait_in_sync();
    wait_for(|| publish(primary.addr, "s", "warm").1 == "replica-received");
    let resyncs = |status: &Value| {
        let resyncs = &status["resyncs"];
        resyncs["partial"].as_u64().unwrap() + resyncs["full"].as_u64().unwrap()
    };
    let before = resyncs(&a.status());
    standby.signal(libc::SIGSTOP);
    wait_for(|| a.status()["standby_lost"] == true);
    let status = a.status();
    assert_eq!(status["in_sync"], false, "in sync while lost: {status}");
    let (code, durability, body) = publish(primary.addr, "s", "while-stopped");
    assert_eq!(
        (code, durability.as_str()),
        (200, "local-written; standby=unavailable"),
        "{body}"
    );
    std::thread::sleep(Duration::from_millis(1_500));
    standby.signal(libc::SIGCONT);
    wait_for(|| a.status()["standby_lost"] == false && a.status()["in_sync"] == true);
    let (code, durability, body) = publish(primary.addr, "s", "after");
    assert_eq!(
        (code, durability.as_str()),
        (200, "replica-received"),
        "{body}"
    );
    assert_eq!(
        resyncs(&a.status()),
        before,
        "a new session: {}",
        a.status()
    );
    // "after" was received by the standby, and a session's records arrive in order: it holds
    // what it missed while stopped, through the same session.
}
