//! Drill 8 of issue 14, planned switchover under load, with the real binary on loopback: a
//! primary and its in-sync standby (`ack = "replica"`), without and with a witness, several REST
//! publishers and WebSocket clients on the primary, then `ringcast switchover --admin`.
//! Properties asserted: every publish is eventually acknowledged (publishers retry a 503 on
//! either node), every acknowledged publish is in the new primary's history in each publisher's
//! order, the old primary is a standby that refuses publishes (and follows the new primary),
//! its WebSocket clients got close 4200 spread over time (not in one sweep). Figures printed:
//! `freeze_ms` from the answer and as the publishers saw it (the longest gap between two 200s),
//! over `RINGCAST_SWITCHOVER_RUNS` runs (default 3); only a 2 s sanity bound is asserted (the
//! issue's target is < 200 ms). Publishers retry after `min(Retry-After,
//! RINGCAST_SWITCHOVER_RETRY_MS)` (default 5 ms): a client that waits the whole `Retry-After:
//! 1` sees a gap of at least a second, whatever the freeze.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::failover::WitnessProcess;
use crate::replication::{Node, env_u64, history, publish, wait_for};
use crate::support::*;

/// What one publisher saw: the numbers acknowledged, in order, and the longest time between
/// two acknowledgements.
struct Published {
    acked: Vec<u64>,
    longest_gap: Duration,
    /// The attempts that made up the longest gap: (node 0 = a / 1 = b, status, sent and
    /// answered in ms after the previous acknowledgement).
    longest_trace: Vec<(usize, u16, u128, u128)>,
}

/// Publishes 0, 1, 2, ... on channel `sw{publisher}` until `stop`, each until acknowledged:
/// on a refusal it tries the other node at once, and when both refused it waits
/// `min(Retry-After, retry)`.
fn publisher(
    publisher: usize,
    nodes: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
    retry: Duration,
) -> Published {
    let channel = format!("sw{publisher}");
    let (mut acked, mut longest_gap) = (Vec::new(), Duration::ZERO);
    let (mut current, mut last_ack) = (0, Instant::now());
    let mut longest_trace = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    for n in 0..800_u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut refused_in_a_row = 0;
        let mut trace = Vec::new();
        loop {
            let sent = last_ack.elapsed().as_millis();
            let (status, _, body) = publish(nodes[current], &channel, &n.to_string());
            trace.push((current, status, sent, last_ack.elapsed().as_millis()));
            if status == 200 {
                break;
            }
            assert!(
                matches!(status, 0 | 503),
                "publish {n} on {channel}: {status} {body}"
            );
            assert!(
                Instant::now() < give_up,
                "publish {n} on {channel} never acknowledged: {status} {body}"
            );
            current = 1 - current;
            refused_in_a_row += 1;
            if refused_in_a_row % 2 == 0 {
                std::thread::sleep(retry.min(Duration::from_secs(1)));
            }
        }
        if last_ack.elapsed() > longest_gap {
            longest_gap = last_ack.elapsed();
            longest_trace = trace;
        }
        last_ack = Instant::now();
        acked.push(n);
        std::thread::sleep(Duration::from_millis(2));
    }
    Published {
        acked,
        longest_gap,
        longest_trace,
    }
}

/// Each acknowledged number is in `history` (data values), and their first appearances are in
/// the publisher's order (a retried publish may appear twice).
fn check_history(channel: &str, acked: &[u64], history: &[(u64, String)]) {
    let values: Vec<u64> = history.iter().map(|(_, d)| d.parse().unwrap()).collect();
    let mut last_position = None;
    for n in acked {
        let position = values.iter().position(|v| v == n);
        let position = position.unwrap_or_else(|| {
            panic!("{channel}: acknowledged publish {n} missing on the new primary")
        });
        assert!(
            last_position.is_none_or(|last| position > last),
            "{channel}: acknowledged publish {n} out of order"
        );
        last_position = Some(position);
    }
}

/// WebSocket clients of the old primary: each waits for its close, returns (code, when).
fn clients(server: &Server, count: usize) -> Vec<std::thread::JoinHandle<(u16, Instant)>> {
    (0..count)
        .map(|_| {
            let mut client = server.client();
            client.subscribe("switchover-clients");
            std::thread::spawn(move || {
                let code = client.expect_close();
                (code, Instant::now())
            })
        })
        .collect()
}

/// `ringcast switchover --admin ADDR`: its JSON answer.
fn run_switchover(admin: SocketAddr) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["switchover", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "switchover failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// One run: returns (freeze_ms answered, longest publisher gap in ms).
fn switchover_run(test: &str, witness: bool) -> (u64, u64) {
    let witness_port = fixed_port();
    let _witness = witness.then(|| WitnessProcess::start(witness_port, None));
    let (a, b) = (Node::new(test, "a"), Node::new(test, "b"));
    let mut extra = "ack = \"replica\"".to_string();
    if witness {
        extra.push_str(&format!("\nwitness = \"127.0.0.1:{witness_port}\""));
    }
    let primary = a.start(&b, "primary", &extra);
    let standby = b.start(&a, "standby", &extra);
    b.wait_in_sync();
    wait_for(|| publish(primary.addr, "warmup", "x").0 == 200);
    let watchers = clients(
        &primary,
        env_u64("RINGCAST_SWITCHOVER_CLIENTS", 40) as usize,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let retry = Duration::from_millis(env_u64("RINGCAST_SWITCHOVER_RETRY_MS", 5));
    let publishers: Vec<_> = (0..env_u64("RINGCAST_SWITCHOVER_PUBLISHERS", 4) as usize)
        .map(|p| {
            let (stop, nodes) = (Arc::clone(&stop), [primary.addr, standby.addr]);
            std::thread::spawn(move || publisher(p, nodes, stop, retry))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let answer = run_switchover(a.admin_addr());
    let switched = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let published: Vec<Published> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    assert_eq!(answer["new_primary"], "b", "{answer}");
    assert_eq!(answer["epoch"], 2, "{answer}");
    let freeze_ms = answer["freeze_ms"].as_u64().expect("freeze_ms");
    // The old primary is a standby that refuses publishes; the new one serves them.
    assert_eq!(a.status()["role"], "standby");
    assert_eq!(b.status()["role"], "primary");
    assert_eq!(publish(primary.addr, "late", "x").0, 503);
    // The old primary stepped down on the new one's `Promoted`, sent on the replication link
    // once it served, not later at a poke (with a witness the standby's link reader once ended
    // the session as soon as the role changed, before `Promoted` went out: the promotion then
    // waited 200 ms for nothing and the freeze lasted ~225 ms).
    assert!(
        primary.stderr().contains("this node was superseded"),
        "the old primary never heard Promoted:\n{}",
        primary.stderr()
    );
    for (p, published) in published.iter().enumerate() {
        assert!(published.acked.len() > 10, "publisher {p} barely ran");
        let channel = format!("sw{p}");
        check_history(&channel, &published.acked, &history(&standby, &channel));
    }
    let longest = published.iter().max_by_key(|p| p.longest_gap).unwrap();
    let gap_ms = longest.longest_gap.as_millis() as u64;
    // What the longest gap was made of, attempt by attempt (shortened when long).
    let trace: Vec<String> = longest
        .longest_trace
        .iter()
        .map(|(node, status, sent, answered)| {
            format!("{}:{status}@{sent}-{answered}", ["a", "b"][*node])
        })
        .collect();
    let trace = if trace.len() > 12 {
        format!(
            "{} ... {}",
            trace[..6].join(" "),
            trace[trace.len() - 6..].join(" ")
        )
    } else {
        trace.join(" ")
    };
    // The clients were moved with 4200, spread over time (several sweeps), within bounds.
    let closes: Vec<(u16, Instant)> = watchers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        closes.iter().all(|(code, _)| *code == 4200),
        "{:?}",
        closes.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    let first = closes.iter().map(|c| c.1).min().unwrap();
    let last = closes.iter().map(|c| c.1).max().unwrap();
    let spread_ms = (last - first).as_millis() as u64;
    eprintln!(
        "switchover ({}): freeze_ms {freeze_ms} (answer), longest gap between 200s {gap_ms} ms \
         (attempts node:status@sent-answered ms: {trace}), {} clients closed 4200 over \
         {spread_ms} ms (first {} ms after the answer), {:?}",
        if witness { "witness" } else { "no witness" },
        closes.len(),
        first.saturating_duration_since(switched).as_millis(),
        published.iter().map(|p| p.acked.len()).collect::<Vec<_>>()
    );
    assert!(
        spread_ms >= 150,
        "all closes within {spread_ms} ms: not staggered"
    );
    assert!(spread_ms < 5_000, "closes spread over {spread_ms} ms");
    assert!(
        freeze_ms < 2_000 && gap_ms < 2_000,
        "freeze {freeze_ms} ms, gap {gap_ms} ms"
    );
    // The old primary follows the new one.
    wait_for(|| {
        let status = a.status();
        status["peer_connected"] == true && status["in_sync"] == true
    });
    (freeze_ms, gap_ms)
}

fn drill(name: &str, witness: bool) {
    let runs = env_u64("RINGCAST_SWITCHOVER_RUNS", 3).max(1);
    let (mut answered, mut gaps): (Vec<u64>, Vec<u64>) = (0..runs)
        .map(|run| switchover_run(&format!("{name}-{run}"), witness))
        .unzip();
    answered.sort_unstable();
    gaps.sort_unstable();
    println!(
        "drill 8 switchover ({}), {runs} runs: freeze_ms (answer) p50 {} max {}; longest gap \
         between acknowledged publishes p50 {} ms max {} ms (issue 14 target: freeze < 200 ms)",
        if witness {
            "with a witness"
        } else {
            "no witness"
        },
        answered[answered.len() / 2],
        answered[answered.len() - 1],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
    );
}

// Drill 8 without a witness. Property: zero failed publishes beyond the freeze, every
// acknowledged publish on the new primary in order, the old primary a standby that refuses
// publishes, its clients moved with staggered 4200s. Figure: freeze_ms.
#[test]
fn drill_switchover_under_load_loses_nothing_and_moves_clients() {
    drill("switchover", false);
}

// Drill 8 with a witness: the old primary releases its lease, so the standby is promoted at
// once (not after the lease's expiry). Same properties and figure.
#[test]
fn drill_switchover_with_a_witness_releases_the_lease() {
    drill("switchover-witness", true);
}

// Refusals: a standby, and a primary without a connected standby, answer 409.
#[test]
fn switchover_is_refused_without_an_in_sync_standby() {
    let (a, b) = (
        Node::new("switchover-refused", "a"),
        Node::new("switchover-refused", "b"),
    );
    let _primary = a.start(&b, "primary", "");
    let (status, body) = http(a.admin_addr(), "POST", "/replication/switchover", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no connected standby"), "{body}");
    let _standby = b.start(&a, "standby", "");
    b.wait_in_sync();
    let (status, body) = http(b.admin_addr(), "POST", "/replication/switchover", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not the primary"), "{body}");
}
