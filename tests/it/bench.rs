//! `ringcast bench` checked against the real broker: with a known load the fan-out scenario
//! must report zero loss and the exact delivery count (the generator's own correctness test),
//! and the other scenarios' counters must add up. Counts decide, never timings.

use std::process::Command;

use serde_json::Value;

use crate::support::{Options, Server};

/// Runs `ringcast bench SCENARIO ARGS...` against `server`; returns stdout (asserts exit 0).
fn bench_output(server: &Server, scenario: &str, args: &[&str]) -> String {
    let port = server.addr.port().to_string();
    let pid = server.pid().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["bench", scenario, "--host", "127.0.0.1", "--port", &port])
        .args(["--server-pid", &pid, "--quiet", "--connect-timeout", "10"])
        .args(args)
        .output()
        .expect("run ringcast bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "bench {scenario} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn bench(server: &Server, scenario: &str, args: &[&str]) -> Value {
    let stdout = bench_output(server, scenario, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn server() -> Server {
    Server::with(Options {
        cores: 2,
        ..Options::default()
    })
}

/// 200 subscribers over 4 channels (50 each), 50 publishes round-robin over the channels:
/// every publish reaches the 50 subscribers of its channel, so 2,500 deliveries exactly.
#[test]
fn fanout_reports_zero_loss_and_the_exact_delivery_count() {
    let server = server();
    for threads in ["1", "2"] {
        let report = bench(
            &server,
            "fanout",
            &[
                "--subscribers",
                "200",
                "--channels",
                "4",
                "--rate",
                "200",
                "--publishes",
                "50",
                "--payload",
                "120",
                "--threads",
                threads,
                // One publisher connection, one request in flight: each publish is sent after
                // the one before it was answered, so the server must deliver them in order.
                // With several connections, two publishes 20 ms apart can cross on a loaded
                // machine and reach the server in the other order (counted as reordered).
                "--publishers",
                "1",
            ],
        );
        let results = &report["results"];
        assert_eq!(report["scenario"], "fanout");
        assert_eq!(report["connections"]["subscribers_ready"], 200, "{report}");
        assert_eq!(results["publishes_attempted"], 50, "{report}");
        assert_eq!(results["publishes_accepted"], 50, "{report}");
        assert_eq!(results["deliveries_expected"], 50 * 50, "{report}");
        assert_eq!(results["deliveries_received"], 50 * 50, "{report}");
        assert_eq!(results["deliveries_lost"], 0, "{report}");
        assert_eq!(results["deliveries_duplicated"], 0, "{report}");
        assert_eq!(results["deliveries_reordered"], 0, "{report}");
        assert_eq!(results["deliveries_unexpected"], 0, "{report}");
        assert_eq!(results["latency_us"]["count"], 50 * 50, "{report}");
        assert_eq!(results["publish_statuses"]["200"], 50, "{report}");
        assert_eq!(results["publish_send_lag_us"]["count"], 50, "{report}");
        assert!(report["server"]["cpu_secs"].is_number(), "{report}");
        // The exact run time: the server did work in the window, so it is above zero.
        assert!(
            report["server"]["runtime_secs"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert!(
            report["server"]["runtime_us_per_delivery"].is_number(),
            "{report}"
        );
        assert!(report["generator"]["cpu_secs"].is_number(), "{report}");
        assert_eq!(
            report["generator"]["thread_cpu_percent"]
                .as_array()
                .unwrap()
                .len(),
            threads.parse::<usize>().unwrap()
        );
        assert_eq!(report["steps"].as_array().unwrap().len(), 1);
        assert_eq!(report["steps"][0]["verdict"], "ok", "{report}");
    }
}

/// `--rate max` ramps in steps and says why it stopped; each step's counts are consistent.
#[test]
fn fanout_ramp_runs_steps_and_reports_a_maximum() {
    let server = server();
    let report = bench(
        &server,
        "fanout",
        &[
            "--subscribers",
            "40",
            "--channels",
            "2",
            "--rate",
            "max",
            "--start-rate",
            "50",
            "--ramp-factor",
            "2",
            "--step",
            "0.3",
            "--max-steps",
            "3",
            "--drain",
            "2",
        ],
    );
    let steps = report["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 3, "{report}");
    for step in steps {
        assert_eq!(
            step["deliveries_received"].as_u64().unwrap()
                + step["deliveries_lost"].as_u64().unwrap(),
            step["deliveries_expected"].as_u64().unwrap(),
            "{step}"
        );
        assert_eq!(
            step["deliveries_expected"].as_u64().unwrap(),
            step["publishes_accepted"].as_u64().unwrap() * 20,
            "{step}"
        );
    }
    let stopped_by = report["max"]["stopped_by"].as_str().unwrap();
    assert!(
        [
            "max_steps",
            "duration",
            "loss",
            "publish_errors",
            "p99_over_bound",
            "publisher_behind"
        ]
        .contains(&stopped_by),
        "{report}"
    );
}

/// Closed-loop REST publishing: every request is answered, and the statuses add up.
#[test]
fn publish_counts_add_up_and_the_plot_is_svg() {
    let server = server();
    let plot = std::env::temp_dir().join(format!("ringcast-bench-{}.svg", std::process::id()));
    let plot_arg = plot.to_str().unwrap().to_string();
    let report = bench(
        &server,
        "publish",
        &["--connections", "4", "--duration", "1", "--plot", &plot_arg],
    );
    let results = &report["results"];
    let sent = results["requests_sent"].as_u64().unwrap();
    let statuses: u64 = results["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(sent > 0, "{report}");
    assert_eq!(results["responses"].as_u64().unwrap(), statuses, "{report}");
    assert_eq!(sent, statuses, "every request answered: {report}");
    assert_eq!(results["accepted"], results["statuses"]["200"], "{report}");
    assert_eq!(results["errors"], serde_json::json!({}), "{report}");
    assert!(
        report["server"]["cpu_us_per_publish"].is_number(),
        "{report}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_file(&plot);
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

/// Many clients at once: all subscribe (or are counted as failed), and Markdown works.
#[test]
fn storm_and_idle_counters_are_consistent() {
    let server = server();
    let report = bench(&server, "storm", &["--clients", "300", "--channels", "5"]);
    let results = &report["results"];
    assert_eq!(
        results["subscribed"].as_u64().unwrap() + results["failed_total"].as_u64().unwrap(),
        300,
        "{report}"
    );
    assert_eq!(results["subscribed"], 300, "{report}");
    assert_eq!(results["all_subscribed"], true, "{report}");
    assert_eq!(results["subscribe_latency_us"]["count"], 300, "{report}");

    let report = bench(
        &server,
        "idle",
        &["--connections", "100", "--duration", "0.5"],
    );
    let results = &report["results"];
    assert_eq!(results["connections_ready"], 100, "{report}");
    assert_eq!(results["still_open"], 100, "{report}");
    assert!(
        report["server"]["rss_connected_bytes"].is_number(),
        "{report}"
    );

    let table = bench_output(&server, "storm", &["--clients", "20", "--markdown"]);
    assert!(table.contains("| results.subscribed | 20 |"), "{table}");
}

/// Runs `ringcast bench floor ARGS...` (no server); returns (exit success, stdout, stderr).
fn floor(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["bench", "floor", "--quiet"])
        .args(args)
        .output()
        .expect("run ringcast bench floor");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// The kernel floor: every pass (to the polling reader, then to the sleeping one) moves every
/// byte it sent, counted by the reader, and each reports a run time for its sends.
#[test]
fn floor_counts_every_byte_of_every_pass() {
    let (ok, stdout, stderr) = floor(&[
        "--connections",
        "50",
        "--payload",
        "64",
        "--sends",
        "3001",
        "--batch",
        "7",
        "--batch-rate",
        "20000",
    ]);
    assert!(
        ok,
        "bench floor failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(report["scenario"], "floor", "{report}");
    assert_eq!(report["params"]["batch_rate"], 20000.0, "{report}");
    for pass in ["send_syscall", "io_uring", "io_uring_sleeping_reader"] {
        let result = &report["results"][pass];
        assert_eq!(result["sends"], 3001, "{pass}: {report}");
        assert_eq!(result["bytes_sent"], 3001 * 64, "{pass}: {report}");
        assert_eq!(result["bytes_received"], 3001 * 64, "{pass}: {report}");
        assert!(
            result["sender_cpu_us_per_send"].as_f64().unwrap() > 0.0,
            "{pass}: {report}"
        );
    }
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

/// Bad floor arguments are refused with exit 2 and say which flag.
#[test]
fn floor_refuses_bad_arguments() {
    for (args, flag) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--connections", "10", "--batch", "11"][..], "--batch"),
        (
            &["--sender-cpu", "1", "--reader-cpu", "1"][..],
            "--sender-cpu",
        ),
        (&["--payload", "0"][..], "--payload"),
        (&["--batch-rate", "2000000"][..], "--batch-rate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["bench", "floor", "--quiet"])
            .args(args)
            .output()
            .expect("run ringcast bench floor");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// `--tls --ca FILE`: the same fan-out over wss (subscribers) and https (the publisher), with
/// the same exact counts, against a broker with only a TLS listener.
#[test]
fn fanout_over_tls_reports_zero_loss_and_the_exact_delivery_count() {
    let ca = crate::tls::TestCa::new("bench");
    let (cert, key) = ca.issue("server");
    let server = Server::with_config_text(&format!(
        "version = 1\n\n[server]\nbind = \"\"\ncores = 2\npin_threads = false\n\n\
         [tls]\nbind = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
        cert.display(),
        key.display(),
        crate::support::APP_ID,
        crate::support::APP_KEY,
        crate::support::APP_SECRET,
    ));
    assert_eq!(
        server.tls_addr,
        Some(server.addr),
        "TLS is the only listener"
    );
    let ca_path = ca.ca_path().display().to_string();
    let report = bench(
        &server,
        "fanout",
        &[
            "--tls",
            "--ca",
            &ca_path,
            "--subscribers",
            "100",
            "--channels",
            "4",
            "--rate",
            "200",
            "--publishes",
            "40",
            "--payload",
            "120",
            "--threads",
            "2",
        ],
    );
    let results = &report["results"];
    assert_eq!(report["connections"]["subscribers_ready"], 100, "{report}");
    assert_eq!(results["publishes_accepted"], 40, "{report}");
    assert_eq!(results["deliveries_expected"], 40 * 25, "{report}");
    assert_eq!(results["deliveries_received"], 40 * 25, "{report}");
    assert_eq!(results["deliveries_lost"], 0, "{report}");
    assert_eq!(results["deliveries_duplicated"], 0, "{report}");
    assert_eq!(results["deliveries_reordered"], 0, "{report}");
}
