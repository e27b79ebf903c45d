//! `ringcast wal inspect|verify|dump DIR` run as an operator would, on write-ahead log
//! directories the test writes itself with the library (`ringcast::wal`): exit codes, what the
//! output says (streams, LSN ranges, kinds, a torn tail, the file and byte offset of damage),
//! and that the tools never change a byte of what they read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ringcast::config::FsyncPolicy;
use ringcast::wal::{
    self, FsStorage, Now, Record, RecoveryMode, Storage, WalOptions, WalWriter, segment,
};
use serde_json::Value;

fn ringcast(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-it-wal-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Writes `publishes` records (plus a presence join) to `stream`, in 64 KiB segments.
fn write_stream(data_dir: &Path, stream: &str, publishes: u64) {
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let (mut writer, _) = WalWriter::open(
        storage,
        &wal::stream_dir(data_dir, stream),
        stream,
        1,
        WalOptions {
            segment_bytes: 64 * 1024,
            fsync: FsyncPolicy::Never,
            fsync_interval_ms: 10,
            zero_fill: false,
        },
        RecoveryMode::Strict,
        Now::default(),
    )
    .unwrap();
    writer
        .append(&Record::PresenceJoin {
            app_id: "123456",
            channel: "presence-room",
            user_id: "u1",
            user_info: r#"{"name":"Ann"}"#,
        })
        .unwrap();
    for seq in 1..=publishes {
        let data = format!("{{\"n\":{seq},\"pad\":\"{}\"}}", "x".repeat(180));
        writer
            .append(&Record::Publish {
                app_id: "123456",
                channel: "prices",
                channel_epoch: 1,
                seq,
                event: "tick",
                data: &data,
                exclude: None,
                user_id: None,
                published_ms: 1_700_000_000_000 + seq,
                flags: 0,
            })
            .unwrap();
        if seq % 16 == 0 {
            writer.commit(Now::default()).unwrap();
        }
    }
    writer.commit(Now::default()).unwrap();
}

/// Every file under the log with its bytes (to prove the tools are read-only).
fn snapshot(data_dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for stream in std::fs::read_dir(wal::wal_dir(data_dir)).unwrap() {
        for file in std::fs::read_dir(stream.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

fn segments(data_dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(wal::stream_dir(data_dir, stream))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    names.sort();
    names
}

// A healthy log: inspect lists every stream with its segments, LSN range and records by kind
// (text and JSON); verify exits 0; dump prints one JSON object per record, in LSN order.
#[test]
fn inspect_verify_and_dump_a_healthy_log() {
    let dir = data_dir();
    write_stream(&dir, "core-0", 600);
    write_stream(&dir, "core-1", 3);
    write_stream(&dir, "webhooks", 0);
    let before = snapshot(&dir);

    let output = ringcast(&["wal", "inspect"], &dir);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("stream core-0:"), "{text}");
    assert!(text.contains("LSN 1..=601"), "{text}");
    assert!(
        text.contains("records by kind: publish 600, presence_join 1"),
        "{text}"
    );
    assert!(text.contains("stream webhooks:"), "{text}");
    let core0 = text.find("stream core-0").unwrap();
    assert!(core0 < text.find("stream core-1").unwrap(), "{text}");

    let output = ringcast(&["wal", "inspect", "--json"], &dir);
    assert!(output.status.success(), "{output:?}");
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let core0 = &json["streams"][0];
    assert_eq!(core0["stream"], "core-0");
    assert_eq!(core0["ok"], true);
    assert_eq!(core0["first_lsn"], 1);
    assert_eq!(core0["last_lsn"], 601);
    assert_eq!(core0["records_by_kind"]["publish"], 600);
    assert!(core0["segments"].as_array().unwrap().len() >= 2, "{core0}");
    assert_eq!(core0["torn"], Value::Null);
    assert_eq!(json["streams"][2]["records"], 1);

    let output = ringcast(&["wal", "verify"], &dir);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("core-0: ok, 601 record(s)"),
        "{output:?}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["wal", "dump"])
        .arg(&dir)
        .args(["--stream", "core-1"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let records: Vec<Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    assert_eq!(records[0]["kind"], "presence_join");
    assert_eq!(records[0]["user_info"], r#"{"name":"Ann"}"#);
    assert_eq!(records[3]["kind"], "publish");
    assert_eq!(records[3]["lsn"], 4);
    assert_eq!(records[3]["epoch"], 1);
    assert_eq!(records[3]["seq"], 3);
    assert_eq!(records[3]["stream"], "core-1");
    assert!(
        records[3]["data"]
            .as_str()
            .unwrap()
            .starts_with("{\"n\":3,")
    );
    let output = ringcast(&["wal", "dump"], &dir);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).lines().count(), 601 + 4 + 1);

    assert_eq!(snapshot(&dir), before, "the tools changed the log");
    let _ = std::fs::remove_dir_all(&dir);
}

// A torn tail (a record cut short by a crash) is reported by inspect and allowed by verify
// (recovery truncates it at start-up); the tools leave it in place.
#[test]
fn a_torn_tail_is_reported_and_allowed() {
    let dir = data_dir();
    write_stream(&dir, "core-0", 20);
    let last = segments(&dir, "core-0").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // Cut the file inside its last record (it was written without preallocated space left:
    // find the end of the records first).
    let end = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
    bytes.truncate(end - 30);
    std::fs::write(&last, &bytes).unwrap();
    let before = snapshot(&dir);

    let output = ringcast(&["wal", "verify"], &dir);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("core-0: ok, 20 record(s)"), "{text}");
    assert!(text.contains("torn tail in"), "{text}");
    let output = ringcast(&["wal", "inspect", "--json"], &dir);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let torn = &json["streams"][0]["torn"];
    assert!(torn["offset"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["streams"][0]["last_lsn"], 20);
    assert_eq!(snapshot(&dir), before, "verify and inspect never truncate");
    let _ = std::fs::remove_dir_all(&dir);
}

// Damage with valid records after it is corruption: verify exits 1 naming the segment file
// and the byte offset of the damaged record; inspect still reports what it can read.
#[test]
fn damage_in_the_middle_fails_verify_with_the_file_and_offset() {
    let dir = data_dir();
    write_stream(&dir, "core-0", 600);
    write_stream(&dir, "core-1", 5);
    let first = segments(&dir, "core-0").remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    // The third record of the first segment: header, presence join, one publish, then it.
    let join_len = {
        let len = u32::from_le_bytes(bytes[segment::HEADER_BYTES..][..4].try_into().unwrap());
        len as usize
    };
    let publish_at = segment::HEADER_BYTES + join_len;
    let publish_len = u32::from_le_bytes(bytes[publish_at..][..4].try_into().unwrap()) as usize;
    let damaged_at = publish_at + publish_len;
    bytes[damaged_at + 100] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();

    let output = ringcast(&["wal", "verify"], &dir);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stderr.contains(&name), "{stderr}");
    assert!(
        stderr.contains(&format!("at byte {damaged_at}")),
        "{stderr}"
    );
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(stdout(&output).contains("core-1: ok"), "{output:?}");

    let output = ringcast(&["wal", "inspect"], &dir);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(text.contains("LSNs 3..4 unreadable"), "{text}");

    let output = ringcast(&["wal", "dump"], &dir);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let core0: Vec<Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|record| record["stream"] == "core-0")
        .collect();
    assert_eq!(core0.len(), 2, "the records before the damage");
    let _ = std::fs::remove_dir_all(&dir);
}

// A directory without a log is a usage error (exit 2), not a verdict.
#[test]
fn a_directory_without_a_log_exits_2() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for command in ["inspect", "verify", "dump"] {
        let output = ringcast(&["wal", command], &dir);
        assert_eq!(output.status.code(), Some(2), "{command}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
