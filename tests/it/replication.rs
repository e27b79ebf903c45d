//! The hot standby with the real binary, two nodes on loopback: a standby follows the primary
//! and refuses clients; publishes with `ack = "replica"` are acknowledged once the standby has
//! them; kill -9 of the primary then promotion loses no acknowledged publish (seeded, many
//! runs: `RINGCAST_FAILOVER_RUNS`, `RINGCAST_FAILOVER_SEED`); a lost standby degrades or
//! rejects by policy and resyncs when it returns; the old primary rejoins as a standby with
//! its divergent suffix moved aside; a wrong secret is refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const SECRET: &str = "replication-test-secret";

/// One node's fixed ports and data directory.
#[derive(Clone)]
struct Node {
    name: &'static str,
    dir: PathBuf,
    repl: u16,
    admin: u16,
}

impl Node {
    fn new(test: &str, name: &'static str) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-repl-{}-{test}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            name,
            dir,
            repl: fixed_port(),
            admin: fixed_port(),
        }
    }

    fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    /// The config text: `role` is `initial_role`; `extra` goes into `[replication]`.
    fn config(&self, peer: &Node, role: &str, secret: &str, extra: &str) -> String {
        format!(
            "version = 1\n\n[server]\nbind = \"127.0.0.1:0\"\ncores = 2\npin_threads = false\n\n\
             [storage]\ndir = \"{}\"\n\n[history]\nevents_per_channel_max = 1000\n\n\
             [replication]\nnode_id = \"{}\"\nlisten = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n\
             initial_role = \"{role}\"\nsecret = \"{secret}\"\n{extra}\n\n\
             [admin]\nbind = \"127.0.0.1:{}\"\n\n\
             [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n",
            self.dir.display(),
            self.name,
            self.repl,
            peer.repl,
            self.admin,
        )
    }

    fn start(&self, peer: &Node, role: &str, extra: &str) -> Server {
        Server::with_config_text(&self.config(peer, role, SECRET, extra))
    }

    fn status(&self) -> Value {
        let (status, body) = http(self.admin_addr(), "GET", "/replication", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn promote(&self) -> (u16, Value) {
        let (status, body) = http(self.admin_addr(), "POST", "/replication/promote", "");
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

    fn wait_in_sync(&self) {
        wait_for(|| {
            let status = self.status();
            status["peer_connected"] == true && status["in_sync"] == true
        });
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), so that no connection's
/// source port or `127.0.0.1:0` listener of another test takes it between this check and the
/// node's bind.
fn fixed_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let offset = (std::process::id() % 400) as u16 * 30;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_for(mut condition: impl FnMut() -> bool) {
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
fn publish(addr: SocketAddr, channel: &str, data: &str) -> (u16, String, String) {
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
fn history(server: &Server, channel: &str) -> Vec<(u64, String)> {
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

fn kill(server: &mut Server) {
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

fn env_u64(name: &str, default: u64) -> u64 {
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
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
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
