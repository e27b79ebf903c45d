//! The failover drills of issue 14 with the real binary started three times on loopback: a
//! witness (`ringcast witness`) and two nodes naming it in `[replication] witness`. Each drill
//! states its property and prints its figure: (1) kill -9 of the primary under publish load
//! with `ack = "replica"`: no acknowledged publish lost, the standby promotes itself; the time
//! from the kill to the first acknowledged publish on the new primary over
//! `RINGCAST_DRILL_RUNS` runs (default 20, the minimum), p99 printed, only a 10 s
//! sanity bound asserted;
//! (2) SIGSTOP of the primary (`RINGCAST_DRILL_STOP_MS`, default 5000, the figure)
//! then SIGCONT: the old primary acknowledges nothing once resumed and steps down; (3) the witness down: the primary
//! answers 503 "no lease" within the lease, resumes when the witness is back, and nobody is
//! promoted; (6) the primary's disk full (a small tmpfs, root only): nothing acknowledged that
//! was not persisted, and the standby takes over with every acknowledged publish. The drills
//! needing network namespaces (a cut link, an isolated primary, packet loss) are in
//! `partition.rs`, drill 7 (the reconnect storm) is `storm.rs` and drill 8 (planned
//! switchover) is `switchover.rs`.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::replication::{Node, env_u64, history, kill, publish, wait_for};
use crate::support::fixed_port;
use crate::support::*;

/// The witness's secret: the nodes' `[replication] secret` (see `replication::SECRET`).
pub(crate) const SECRET: &str = "replication-test-secret";

/// The witness process; killed on drop.
pub(crate) struct WitnessProcess {
    child: Child,
    config_path: std::path::PathBuf,
}

impl WitnessProcess {
    pub(crate) fn start(port: u16, dir: Option<&std::path::Path>) -> WitnessProcess {
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        WitnessProcess::start_in(bind, dir, None)
    }

    /// A witness bound on `bind`, keeping its record in `dir` when given, inside the network
    /// namespace `netns` when given (`ip netns exec`).
    pub(crate) fn start_in(
        bind: std::net::SocketAddr,
        dir: Option<&std::path::Path>,
        netns: Option<&str>,
    ) -> WitnessProcess {
        let dir_line = dir.map_or(String::new(), |dir| {
            format!("dir = \"{}\"\n", dir.display())
        });
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = STARTS.fetch_add(1, Ordering::Relaxed);
        let config_path = std::env::temp_dir().join(format!(
            "ringcast-witness-{}-{}-{start}.toml",
            std::process::id(),
            bind.port()
        ));
        let text = format!("[witness]\nbind = \"{bind}\"\nsecret = \"{SECRET}\"\n{dir_line}");
        std::fs::write(&config_path, text).unwrap();
        let mut command = ringcast_command(netns);
        let child = command
            .args(["witness", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        WitnessProcess { child, config_path }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A witness and a pair: `a` the primary (holding its lease: a publish was acknowledged), `b`
/// its standby, in sync.
struct Trio {
    witness: WitnessProcess,
    witness_port: u16,
    a: Node,
    b: Node,
    primary: Server,
    standby: Server,
    primary_metrics: std::net::SocketAddr,
    standby_metrics: std::net::SocketAddr,
}

/// Starts `node` with the metrics port on; returns the server and its metrics address.
fn start_node(node: &Node, peer: &Node, role: &str, extra: &str) -> (Server, std::net::SocketAddr) {
    let config = format!("{}{METRICS_ON}", node.config(peer, role, SECRET, extra));
    let (server, metrics) = Server::launch(&config, &[], true);
    (server, metrics.expect("metrics address"))
}

fn start_trio(test: &str, witness_dir: Option<&std::path::Path>) -> Trio {
    let witness_port = fixed_port();
    let witness = WitnessProcess::start(witness_port, witness_dir);
    let (a, b) = (Node::new(test, "a"), Node::new(test, "b"));
    let extra = format!("witness = \"127.0.0.1:{witness_port}\"\nstandby_timeout_ms = 300");
    let (primary, primary_metrics) = start_node(&a, &b, "primary", &extra);
    let (standby, standby_metrics) = start_node(&b, &a, "standby", &extra);
    b.wait_in_sync();
    wait_for(|| publish(primary.addr, "warmup", "x").0 == 200);
    Trio {
        witness,
        witness_port,
        a,
        b,
        primary,
        standby,
        primary_metrics,
        standby_metrics,
    }
}

impl Trio {
    fn clean(self) {
        let Trio { a, b, .. } = self;
        let _ = std::fs::remove_dir_all(&a.dir);
        let _ = std::fs::remove_dir_all(&b.dir);
    }
}

/// Publishes to `addr` in a loop on `channels` threads until `stop`; returns per channel the
/// data of every acknowledged publish, in order.
fn publish_load(
    addr: std::net::SocketAddr,
    channels: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u64>>> {
    (0..channels)
        .map(|publisher| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                // Within the history window (1000), so every acknowledged one can be checked.
                for n in 0..900 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, durability, body) =
                        publish(addr, &format!("p{publisher}"), &format!("{n}"));
                    match status {
                        200 => {
                            assert_eq!(durability, "replica-received", "{body}");
                            acked.push(n);
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect()
}

// Drill 1. Property: with `ack = "replica"`, kill -9 of the primary under publish load loses no
// acknowledged publish, and the standby promotes itself through the witness. Figure: kill ->
// first acknowledged publish on the new primary, p99 over the runs (printed; only a sanity
// bound is asserted, timing on a shared test machine is not a measurement).
#[test]
fn drill_kill_9_the_primary_the_standby_promotes_itself_and_loses_nothing() {
    let runs = env_u64("RINGCAST_DRILL_RUNS", 20).max(1);
    let mut took_ms = Vec::new();
    for run in 0..runs {
        took_ms.push(kill_run(run));
    }
    took_ms.sort_unstable();
    let p99 = took_ms[((took_ms.len() * 99).div_ceil(100)).saturating_sub(1)];
    println!(
        "drill kill -9: kill -> first acknowledged publish on the new primary over {runs} runs: \
         p50 {} ms, p99 {p99} ms, max {} ms (issue 14 target: p99 < 1000 ms over >= 20 runs)",
        took_ms[took_ms.len() / 2],
        took_ms[took_ms.len() - 1],
    );
}

fn kill_run(run: u64) -> u64 {
    let mut trio = start_trio(&format!("drill-kill-{run}"), None);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers = publish_load(trio.primary.addr, 3, &stop);
    std::thread::sleep(Duration::from_millis(100 + run * 37 % 200));
    kill(&mut trio.primary);
    let killed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Vec<u64>> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    let took = loop {
        let (status, _, body) = publish(trio.standby.addr, "after", "first");
        if status == 200 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "run {run}: no acknowledged publish on the standby 10 s after the kill: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = trio.b.status();
    assert_eq!(
        (status["role"].clone(), status["epoch"].clone()),
        (json!("primary"), json!(2))
    );
    let metrics = scrape(trio.standby_metrics);
    let promoted_by = |cause: &str| {
        let series = format!("ringcast_failover_promotions_total{{cause=\"{cause}\"}}");
        metric(&metrics, &series)
    };
    assert_eq!(
        (promoted_by("witness"), promoted_by("manual")),
        (Some(1.0), Some(0.0)),
        "{metrics}"
    );
    for (publisher, acked) in acked.iter().enumerate() {
        let channel = format!("p{publisher}");
        let held: Vec<u64> = history(&trio.standby, &channel)
            .iter()
            .map(|(_, data)| data.parse().unwrap())
            .collect();
        assert!(
            held.len() >= acked.len() && held[..acked.len()] == acked[..],
            "run {run}: {channel} lost an acknowledged publish: acked {} held {}",
            acked.len(),
            held.len()
        );
    }
    trio.clean();
    took.as_millis() as u64
}

// Drill 2. Property: a primary paused (SIGSTOP) long enough to be replaced acknowledges nothing
// once it resumes (SIGCONT), and steps down to standby (publishes to it answer 503). Figure:
// how long after SIGCONT it was a standby.
#[test]
fn drill_sigstop_the_primary_it_acknowledges_nothing_after_and_steps_down() {
    let stop_ms = env_u64("RINGCAST_DRILL_STOP_MS", 5_000).max(1_500);
    let trio = start_trio("drill-stop", None);
    // One publisher, one request in flight, its outcome and when it was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, flag) = (trio.primary.addr, Arc::clone(&stop));
    let publisher = std::thread::spawn(move || {
        let mut answers = Vec::new();
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let (status, _, body) = publish(addr, "paused", &format!("{n}"));
            answers.push((sent, Instant::now(), status, body, n));
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        answers
    });
    std::thread::sleep(Duration::from_millis(200));
    trio.primary.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_for(|| publish(trio.standby.addr, "new", "x").0 == 200);
    let promoted_after = stopped.elapsed();
    std::thread::sleep(Duration::from_millis(stop_ms).saturating_sub(stopped.elapsed()));
    trio.primary.signal(libc::SIGCONT);
    let resumed = Instant::now();
    wait_for(|| trio.a.status()["role"] == "standby");
    let stepped_down_after = resumed.elapsed();
    let (status, _, body) = publish(trio.primary.addr, "paused", "late");
    assert_eq!(
        status, 503,
        "the old primary refuses once it stepped down: {body}"
    );
    stop.store(true, Ordering::Relaxed);
    let answers = publisher.join().unwrap();
    // Nothing sent after the pause is acknowledged. A request taken before the pause may be
    // answered after it only when it was decided before (a process paused between deciding
    // and sending): then it was on the standby already (ack = replica), so nothing is lost.
    let sent_late: Vec<_> = answers
        .iter()
        .filter(|(sent, _, status, _, _)| *sent >= resumed && *status == 200)
        .collect();
    assert!(
        sent_late.is_empty(),
        "acknowledged after the pause: {sent_late:?}"
    );
    let held: Vec<u64> = history(&trio.standby, "paused")
        .iter()
        .map(|(_, data)| data.parse().unwrap())
        .collect();
    for (_, answered, status, _, n) in &answers {
        if *status == 200 && *answered >= stopped {
            assert!(
                held.contains(n),
                "publish {n} was acknowledged across the pause but the new primary lacks it"
            );
        }
    }
    assert_eq!(trio.b.status()["epoch"], 2);
    println!(
        "drill SIGSTOP {stop_ms} ms: the standby acknowledged {} ms after the stop; the old \
         primary was a standby {} ms after SIGCONT and acknowledged nothing after it",
        promoted_after.as_millis(),
        stepped_down_after.as_millis()
    );
    trio.clean();
}

// Drill 3. Property: with the witness down the primary stops acknowledging within the lease
// (503 naming "no lease"), acknowledges again once the witness is back, and no promotion
// happens (the standby still hears the primary). Figure: witness kill -> first 503.
#[test]
fn drill_the_witness_down_the_primary_stops_acknowledging_and_nobody_is_promoted() {
    let witness_dir =
        std::env::temp_dir().join(format!("ringcast-drill-witness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&witness_dir);
    let mut trio = start_trio("drill-witness", Some(&witness_dir));
    trio.witness.kill();
    let killed = Instant::now();
    let body = loop {
        let (status, _, body) = publish(trio.primary.addr, "c", "during");
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "still acknowledging 10 s after the witness died"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let refused_after = killed.elapsed();
    assert!(body.contains("no lease"), "{body}");
    let lease_valid = |trio: &Trio| {
        metric(
            &scrape(trio.primary_metrics),
            "ringcast_failover_lease_valid",
        )
    };
    // The gauge follows the failover thread's last step (at most `FAILOVER_TICK_MS` behind).
    wait_for(|| lease_valid(&trio) == Some(0.0));
    // Well past `failover_after_ms`: the standby must not have asked or been promoted.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(publish(trio.primary.addr, "c", "still").0, 503);
    assert_eq!(trio.b.status()["role"], "standby");
    trio.witness = WitnessProcess::start(trio.witness_port, Some(&witness_dir));
    let back = Instant::now();
    wait_for(|| publish(trio.primary.addr, "c", "after").0 == 200);
    let resumed_after = back.elapsed();
    wait_for(|| lease_valid(&trio) == Some(1.0));
    let (a, b) = (trio.a.status(), trio.b.status());
    assert_eq!(
        (a["role"].clone(), a["epoch"].clone()),
        (json!("primary"), json!(1))
    );
    assert_eq!(
        (b["role"].clone(), b["epoch"].clone()),
        (json!("standby"), json!(1))
    );
    println!(
        "drill witness down: the primary refused ('no lease') {} ms after the witness died \
         (lease 500 ms), and acknowledged again {} ms after it was back",
        refused_after.as_millis(),
        resumed_after.as_millis()
    );
    trio.clean();
    let _ = std::fs::remove_dir_all(&witness_dir);
}

// Drill 6. Property: a primary whose disk is full acknowledges nothing it could not persist
// (503 "Storage is full"), every publish it did acknowledge is on the standby, and the standby
// takes over when the primary is killed (the witness promotes it) with all of them. Figure: how
// many were acknowledged before the disk filled. Needs root for the tmpfs; without it the test
// says so and the disk-full path is covered by the journal's fault-injecting storage tests.
#[test]
fn drill_a_full_disk_on_the_primary_acknowledges_nothing_unpersisted_and_the_standby_takes_over() {
    use crate::durability::{Tmpfs, fill};
    let witness_port = fixed_port();
    let _witness = WitnessProcess::start(witness_port, None);
    let (a, b) = (Node::new("drill-full", "a"), Node::new("drill-full", "b"));
    let Some(tmpfs) = Tmpfs::mount_at(a.dir.clone(), "2m") else {
        eprintln!("not root (or no tmpfs): the full-disk drill needs a small tmpfs; skipped");
        return;
    };
    let extra = format!("witness = \"127.0.0.1:{witness_port}\"\nstandby_timeout_ms = 300");
    // Small segments, so that the primary's log fits the small tmpfs until it is filled.
    let small = |text: String| {
        text.replace(
            "[storage]\n",
            "[storage]\nsegment_bytes = 65536\nretain_bytes_max = 1048576\n",
        )
    };
    let (mut primary, _) =
        Server::launch(&small(a.config(&b, "primary", SECRET, &extra)), &[], false);
    let (standby, _) = Server::launch(&small(b.config(&a, "standby", SECRET, &extra)), &[], false);
    b.wait_in_sync();
    wait_for(|| publish(primary.addr, "warmup", "x").0 == 200);
    let filler = fill(&tmpfs.0);
    let mut acked = Vec::new();
    let refused = (0..5_000).find_map(|n| {
        let (status, durability, body) =
            publish(primary.addr, "full", &format!("{n:04}-{}", "x".repeat(200)));
        if status == 200 {
            assert_eq!(durability, "replica-received", "{body}");
            acked.push(n);
            return None;
        }
        Some((status, body))
    });
    let (status, body) = refused.expect("the primary's disk filled up");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Storage is full"), "{body}");
    kill(&mut primary);
    wait_for(|| publish(standby.addr, "after", "x").0 == 200);
    let held: Vec<u64> = history(&standby, "full")
        .iter()
        .map(|(_, data)| data[..4].parse().unwrap())
        .collect();
    assert_eq!(
        held, acked,
        "the standby holds exactly what was acknowledged"
    );
    println!(
        "drill full disk: {} publishes acknowledged before the primary's disk filled, all on \
         the standby, which the witness promoted",
        acked.len()
    );
    drop(filler);
    drop(tmpfs);
}
