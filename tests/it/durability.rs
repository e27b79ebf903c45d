//! Durability of the real binary with a WAL (`[storage] dir`): history, sequences, cache
//! channels and resume positions survive a restart (clean or SIGKILL); a publish says how
//! durable it is; a full disk refuses publishes with 503 while subscribers are served, and
//! publishing resumes by itself when space returns (on a small tmpfs, when the test runs as
//! root); an fsync error stops the process before it acknowledges anything it could not
//! persist. The crash harness (`crash.rs`) does the same under load at random kill points.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-dur-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, storage_extra: &str, app_extra: &str, cores: usize) -> String {
    format!(
        "version = 1\n\n[server]\nbind = \"127.0.0.1:0\"\ncores = {cores}\npin_threads = false\n\n\
         [storage]\ndir = \"{}\"\n{storage_extra}\n\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{app_extra}\n",
        dir.display()
    )
}

/// A signed POST /events; returns (status, the X-Ringcast-Durability value, body).
fn publish(server: &Server, channel: &str, data: &str) -> (u16, Option<String>, String) {
    let body = json!({"name": "e", "channels": [channel], "data": data});
    let response = post_events_raw(server.addr, &body);
    if response.is_empty() {
        return (0, None, String::new()); // The process is gone.
    }
    let (status, body) = parse_response(response.as_bytes());
    let durability = response
        .lines()
        .find_map(|line| line.strip_prefix("X-Ringcast-Durability: "))
        .map(str::to_string);
    (status, durability, body)
}

fn history(server: &Server, channel: &str) -> Value {
    let path = format!("/apps/{APP_ID}/channels/{channel}/history");
    let (status, body) = server.rest("GET", &path, &[("limit", "1000")], "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn datas(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["data"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn history_sequences_and_the_cache_survive_restarts() {
    let dir = data_dir("restart");
    let config = config(&dir, "", "", 2);
    let mut server = Server::with_config_text(&config);
    for n in 0..5 {
        let (status, durability, body) = publish(&server, "room", &format!("m{n}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            durability.as_deref(),
            Some("local-written"),
            "fsync = interval"
        );
    }
    assert_eq!(publish(&server, "cache-room", "cached").0, 200);
    let before = history(&server, "room");
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(WAIT).is_some(),
        "the drain ends the process"
    );
    drop(server);

    let mut server = Server::with_config_text(&config);
    let after = history(&server, "room");
    assert_eq!(
        after, before,
        "the same epoch, sequences and events after a clean restart"
    );
    assert_eq!(publish(&server, "room", "m5").0, 200);
    server.signal(libc::SIGKILL);
    assert!(server.wait_exit(WAIT).is_some());
    drop(server);

    let server = Server::with_config_text(&config);
    let page = history(&server, "room");
    assert_eq!(page["epoch"], before["epoch"]);
    assert_eq!(datas(&page), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(
        page["last_seq"], 6,
        "sequences continue across restarts, never reused"
    );
    let path = format!("/apps/{APP_ID}/channels/cache-room");
    let (status, body) = server.rest("GET", &path, &[("info", "cache")], "");
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["cache"]["data"], "cached", "{info}");
    let mut client = server.client();
    client.subscribe("cache-room");
    let cached = client.recv_event();
    assert_eq!(
        (&cached["event"], &cached["data"]),
        (&json!("e"), &json!("cached"))
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn always_acknowledges_fsynced_publishes() {
    let dir = data_dir("always");
    let server = Server::with_config_text(&config(&dir, "fsync = \"always\"", "", 2));
    for channel in ["a", "b", "c", "d"] {
        let (status, durability, body) = publish(&server, channel, "x");
        assert_eq!(status, 200, "{body}");
        assert_eq!(durability.as_deref(), Some("local-fsynced"));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_resumes_across_a_restart() {
    let dir = data_dir("resume");
    let config = config(&dir, "", "event_sequence = true", 2);
    let server = Server::with_config_text(&config);
    let mut client = server.client();
    client.send(&json!({"event": "pusher:subscribe", "data": {"channel": "room"}}));
    let reply = client.recv_event();
    let epoch = reply["epoch"].clone();
    publish(&server, "room", "seen");
    assert_eq!(client.recv_event()["seq"], 1);
    drop(client);
    publish(&server, "room", "missed-1");
    publish(&server, "room", "missed-2");
    drop(server);

    let server = Server::with_config_text(&config);
    let mut client = server.client();
    client.send(
        &json!({"event": "pusher:subscribe", "data": {"channel": "room",
        "resume_after": {"epoch": epoch, "seq": 1}}}),
    );
    let reply = client.recv_event();
    assert_eq!(
        (&reply["epoch"], &reply["seq"]),
        (&epoch, &json!(3)),
        "{reply}"
    );
    assert_eq!(client.recv_event()["data"], "missed-1");
    assert_eq!(client.recv_event()["data"], "missed-2");
    let resume = client.recv_event();
    assert_eq!(resume["event"], "ringcast:resume");
    assert!(
        resume["data"]
            .as_str()
            .unwrap()
            .contains(r#""recovered":true"#)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_fsync_error_stops_the_process_before_it_acknowledges() {
    let dir = data_dir("eio");
    let storage = "fsync = \"always\"\n\n[history]\nevents_per_channel_max = 100000";
    let config = config(&dir, storage, "", 1);
    let (mut server, _) = Server::launch(
        &config,
        &[("RINGCAST_TEST_WAL_FAULT", "sync-eio-after-ms:300")],
        false,
    );
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    while Instant::now() < deadline {
        let (status, _, _) = publish(&server, "room", &format!("m{n}"));
        if status == 200 {
            acknowledged.push(format!("m{n}"));
        } else if server.wait_exit(Duration::from_millis(1)).is_some() {
            break;
        }
        n += 1;
    }
    let status = server
        .wait_exit(WAIT)
        .expect("the process exits on an fsync error");
    assert_eq!(status.code(), Some(74), "EX_IOERR: {}", server.stderr());
    assert!(
        server.stderr().contains("write-ahead log failed"),
        "{}",
        server.stderr()
    );
    assert!(
        !acknowledged.is_empty(),
        "publishes were acknowledged before the fault"
    );
    drop(server);

    let server = Server::with_config_text(&config);
    let kept = datas(&history(&server, "room"));
    for data in &acknowledged {
        assert!(
            kept.contains(data),
            "acknowledged {data} was lost: {kept:?}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
pub(crate) struct Tmpfs(pub(crate) PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        Tmpfs::mount_at(data_dir(name), size)
    }

    /// Mounts one on the existing directory `dir`; None when not root or the mount fails.
    pub(crate) fn mount_at(dir: PathBuf, size: &str) -> Option<Tmpfs> {
        // SAFETY: getuid(2) has no arguments and cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?;
        status.success().then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills the filesystem of `dir` with one file, as far as it goes.
pub(crate) fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_refuses_publishes_and_recovers_by_itself() {
    let Some(tmpfs) = Tmpfs::mount("full", "2m") else {
        eprintln!(
            "not root (or no tmpfs): the disk-full path is covered by the fault-injecting \
             storage's unit tests instead"
        );
        return;
    };
    let storage = "segment_bytes = 65536\n\n[history]\nevents_per_channel_max = 100000";
    let config = config(&tmpfs.0, storage, "", 1) + METRICS_ON;
    let (server, metrics) = Server::launch(&config, &[], true);
    let metrics = metrics.unwrap();
    let mut subscriber = server.client();
    subscriber.subscribe("room");
    let filler = fill(&tmpfs.0);
    let mut refused = None;
    for n in 0..5_000 {
        let (status, durability, body) =
            publish(&server, "room", &format!("m{n:04}-{}", "x".repeat(200)));
        if status == 200 {
            assert_eq!(durability.as_deref(), Some("local-written"));
            let event = subscriber.recv_event();
            assert_eq!(event["data"].as_str().unwrap()[..5], format!("m{n:04}"));
            continue;
        }
        refused = Some((n, status, body));
        break;
    }
    let (refused_at, status, body) = refused.expect("the disk filled up");
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("Storage is full"),
        "{error}"
    );
    let (status, text) = get(server.addr, "/readyz");
    assert_eq!(status, 503);
    assert!(text.contains("storage full"), "{text}");
    // Subscribers are still served: a new client connects and subscribes.
    let mut late = server.client();
    late.subscribe("other");
    let scraped = scrape(metrics);
    assert!(
        metric(
            &scraped,
            r#"ringcast_rejected_total{reason="storage_full"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scraped}"
    );
    // The WAL gauges follow at the core's next upkeep (every sweep).
    let deadline = Instant::now() + WAIT;
    while metric(&scrape(metrics), r#"ringcast_wal_storage_full{core="0"}"#) != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", scrape(metrics));
        std::thread::sleep(Duration::from_millis(50));
    }
    let scraped = scrape(metrics);
    assert!(metric(&scraped, r#"ringcast_wal_bytes{core="0"}"#).unwrap_or(0.0) > 0.0);

    std::fs::remove_file(&filler).unwrap();
    // The server retries the space by itself (at most once a second) and says so.
    let deadline = Instant::now() + WAIT;
    while get(server.addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "readiness did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = format!("after-{}", "x".repeat(200));
    let (status, _, body) = publish(&server, "room", &after);
    assert_eq!(status, 200, "publishing resumed: {body}");
    let page = history(&server, "room");
    let kept = datas(&page);
    assert_eq!(
        kept.len(),
        refused_at + 1,
        "every acknowledged event and nothing refused"
    );
    assert_eq!(kept.last().unwrap(), &after);
    drop(server);
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["wal", "verify"])
        .arg(&tmpfs.0)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn changing_the_core_count_keeps_every_channel() {
    let dir = data_dir("reshard");
    let channels: Vec<String> = (0..8).map(|n| format!("room-{n}")).collect();
    let server = Server::with_config_text(&config(&dir, "", "", 2));
    for channel in &channels {
        for n in 0..3 {
            assert_eq!(publish(&server, channel, &format!("{channel}-{n}")).0, 200);
        }
    }
    assert_eq!(publish(&server, "cache-room", "cached").0, 200);
    let before: Vec<Value> = channels.iter().map(|c| history(&server, c)).collect();
    drop(server);
    for cores in [1, 3] {
        let server = Server::with_config_text(&config(&dir, "", "", cores));
        let after: Vec<Value> = channels.iter().map(|c| history(&server, c)).collect();
        assert_eq!(
            after, before,
            "{cores} cores: the same histories and epochs"
        );
        let path = format!("/apps/{APP_ID}/channels/cache-room");
        let (_, body) = server.rest("GET", &path, &[("info", "cache")], "");
        assert!(body.contains("cached"), "{cores} cores: {body}");
        drop(server);
        let streams: Vec<String> = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        for core in 0..cores {
            assert!(streams.contains(&format!("core-{core}")), "{streams:?}");
        }
        assert!(!streams.contains(&format!("core-{cores}")), "{streams:?}");
        assert!(streams.contains(&"webhooks".to_string()), "{streams:?}");
        assert!(!dir.join("wal.prev").exists() && !dir.join("wal.next").exists());
    }
    let server = Server::with_config_text(&config(&dir, "", "", 3));
    assert_eq!(publish(&server, "room-0", "next").0, 200);
    assert_eq!(
        history(&server, "room-0")["last_seq"],
        4,
        "sequences continue"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `ringcast serve` with `args` on `config` until it prints its listening line (Some(the
/// child and address)) or exits (None, with its stderr).
fn serve_with(
    config: &str,
    dir: &Path,
    args: &[&str],
) -> Result<(std::process::Child, String), String> {
    use std::io::BufRead;
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let stderr_path = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    match line.trim().strip_prefix("ringcast listening on ") {
        Some(addr) => Ok((child, addr.to_string())),
        None => {
            let _ = child.wait();
            Err(std::fs::read_to_string(&stderr_path).unwrap_or_default())
        }
    }
}

#[test]
fn damage_before_the_tail_stops_the_start_unless_salvaging() {
    let dir = data_dir("damage");
    let config = config(&dir, "", "", 1);
    let server = Server::with_config_text(&config);
    for n in 0..20 {
        assert_eq!(publish(&server, "room", &format!("m{n}")).0, 200);
    }
    drop(server);
    let stream = dir.join("wal").join("core-0");
    let segment = std::fs::read_dir(&stream)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte inside the first record (after the 64-byte segment header): valid records follow.
    bytes[64 + 40] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();

    let stderr = serve_with(&config, &dir, &[]).expect_err("a damaged log must stop the start");
    let name = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        stderr.contains(&name) && stderr.contains("byte"),
        "the error names the file and offset: {stderr}"
    );
    let (mut child, addr) = serve_with(&config, &dir, &["--salvage"]).expect("--salvage starts");
    let path = format!("/apps/{APP_ID}/channels/room/history");
    let query = signed_query("GET", &path, &[], b"", APP_KEY, APP_SECRET, unix_now());
    let (status, body) = http(addr.parse().unwrap(), "GET", &format!("{path}?{query}"), "");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let kept = datas(&page);
    assert!(
        kept.len() >= 15 && kept.last().map(String::as_str) == Some("m19"),
        "the records after the damage are kept: {kept:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
