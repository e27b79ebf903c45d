//! The operator's view of a data directory's write-ahead log: `ringcast wal inspect` (per
//! stream: segments, LSN range, records by kind, bytes, a torn tail), `verify` (every record
//! checks out, or the file and byte offset where one does not) and `dump` (one JSON object per
//! record per line). Everything here is read-only: it never truncates, removes or repairs
//! (that is recovery's job, at start-up), so it is safe on the directory of a running broker.
//! `main.rs` only parses the command line and calls these.

use std::io::{self, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::record::{Header, Kind, Record};
use super::segment::{Damage, End};
use super::storage::Storage;
use super::stream::{RecoveryError, RecoveryMode, StreamScan, scan_stream};
use super::{stream_dir, wal_dir};

/// One stream as inspected: the strict scan's verdict, and what a salvaging scan could read
/// (for the statistics of a damaged stream).
#[derive(Debug)]
pub struct StreamReport {
    pub stream: String,
    /// `Ok` when every record checks out (a torn tail is allowed: recovery repairs it).
    pub verdict: Result<(), RecoveryError>,
    /// What could be read (the strict scan, or a salvaging one when the strict one failed).
    pub scan: Option<StreamScan>,
}

/// Why a directory could not be inspected at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct InspectError {
    pub path: std::path::PathBuf,
    pub source: io::Error,
}

/// The stream names under `{data_dir}/wal`, cores in numeric order, then the others.
pub fn streams(storage: &dyn Storage, data_dir: &Path) -> Result<Vec<String>, InspectError> {
    let dir = wal_dir(data_dir);
    let mut names = storage.list_dirs(&dir).map_err(|source| InspectError {
        path: dir.clone(),
        source,
    })?;
    names.sort_by_key(
        |name| match name.strip_prefix("core-").map(str::parse::<u64>) {
            Some(Ok(core)) => (0, core, String::new()),
            _ => (1, 0, name.clone()),
        },
    );
    Ok(names)
}

/// Scans every stream (or only `only`) read-only.
pub fn inspect(
    storage: &dyn Storage,
    data_dir: &Path,
    only: Option<&str>,
) -> Result<Vec<StreamReport>, InspectError> {
    let mut names = streams(storage, data_dir)?;
    if let Some(only) = only {
        names.retain(|name| name == only);
        if names.is_empty() {
            return Err(InspectError {
                path: stream_dir(data_dir, only),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
    }
    Ok(names
        .into_iter()
        .map(|stream| {
            let dir = stream_dir(data_dir, &stream);
            match scan_stream(storage, &dir, &stream, RecoveryMode::Strict, |_, _| {}) {
                Ok(scan) => StreamReport {
                    stream,
                    verdict: Ok(()),
                    scan: Some(scan),
                },
                Err(error) => StreamReport {
                    scan: scan_stream(storage, &dir, &stream, RecoveryMode::Salvage, |_, _| {})
                        .ok(),
                    stream,
                    verdict: Err(error),
                },
            }
        })
        .collect())
}

fn kind_counts(scan: &StreamScan) -> Vec<(&'static str, u64)> {
    Kind::ALL
        .iter()
        .zip(scan.kinds)
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| (kind.name(), count))
        .collect()
}

fn lsn_range(first: Option<u64>, last: Option<u64>) -> String {
    match (first, last) {
        (Some(first), Some(last)) => format!("LSN {first}..={last}"),
        _ => "no records".to_string(),
    }
}

fn end_text(end: &End) -> String {
    match end {
        End::Clean => "clean".to_string(),
        End::Torn { offset, damage } => format!("torn at byte {offset} ({damage})"),
        End::Corrupt { offset, damage } => format!("CORRUPT at byte {offset} ({damage})"),
    }
}

/// The human-readable report.
pub fn render_text(data_dir: &Path, reports: &[StreamReport]) -> String {
    let mut out = format!("write-ahead log in {}\n", wal_dir(data_dir).display());
    if reports.is_empty() {
        out.push_str("  no streams\n");
    }
    for report in reports {
        out.push_str(&format!("\nstream {}", report.stream));
        let Some(scan) = &report.scan else {
            out.push_str(": unreadable\n");
            if let Err(error) = &report.verdict {
                out.push_str(&format!("  ERROR: {error}\n"));
            }
            continue;
        };
        out.push_str(&format!(
            ": {} segment(s), {} bytes, {}, {} record(s), next LSN {}, last epoch {}\n",
            scan.segments.len(),
            scan.bytes,
            lsn_range(scan.first_lsn, scan.last_lsn),
            scan.records,
            scan.next_lsn,
            scan.last_epoch,
        ));
        for segment in &scan.segments {
            out.push_str(&format!(
                "  {}  {:>12} bytes  {:<24} {:>8} record(s)  {}\n",
                segment.name,
                segment.bytes,
                match segment.last_lsn {
                    Some(last) => format!("LSN {}..={last}", segment.first_lsn),
                    None => "no records".to_string(),
                },
                segment.records,
                end_text(&segment.end),
            ));
        }
        let kinds = kind_counts(scan);
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out.push_str(&format!("  records by kind: {}\n", list.join(", ")));
        }
        if scan.skipped_unknown > 0 {
            out.push_str(&format!(
                "  records of unknown skippable kinds: {}\n",
                scan.skipped_unknown
            ));
        }
        if let Some(torn) = &scan.torn {
            out.push_str(&format!(
                "  torn tail: {} at byte {} ({} bytes: {}); recovery truncates it at start-up\n",
                torn.file, torn.offset, torn.bytes, torn.damage
            ));
        }
        if !scan.empty_tail.is_empty() {
            out.push_str(&format!(
                "  segments without records at the end (recovery removes them): {}\n",
                scan.empty_tail.join(", ")
            ));
        }
        if !scan.others.is_empty() {
            out.push_str(&format!("  other files: {}\n", scan.others.join(", ")));
        }
        if let Err(error) = &report.verdict {
            out.push_str(&format!("  CORRUPT: {error}\n"));
            for (file, salvaged) in &scan.salvaged {
                out.push_str(&format!(
                    "  damaged: {file} at byte {}: {} bytes, LSNs {}..{} unreadable ({})\n",
                    salvaged.offset,
                    salvaged.bytes,
                    salvaged.lsn_first,
                    salvaged.lsn_end,
                    salvaged.damage
                ));
            }
        }
    }
    out
}

fn damage_json(file: &str, offset: u64, damage: &Damage) -> Value {
    json!({"file": file, "offset": offset, "reason": damage.to_string()})
}

/// The JSON report (`--json`).
pub fn render_json(data_dir: &Path, reports: &[StreamReport]) -> Value {
    let streams: Vec<Value> = reports
        .iter()
        .map(|report| {
            let error = match &report.verdict {
                Ok(()) => Value::Null,
                Err(RecoveryError::Corrupt {
                    file,
                    offset,
                    damage,
                }) => damage_json(&file.display().to_string(), *offset, damage),
                Err(other) => json!({"reason": other.to_string()}),
            };
            let Some(scan) = &report.scan else {
                return json!({"stream": report.stream, "ok": false, "error": error});
            };
            let segments: Vec<Value> = scan
                .segments
                .iter()
                .map(|segment| {
                    json!({
                        "name": segment.name,
                        "bytes": segment.bytes,
                        "first_lsn": segment.first_lsn,
                        "last_lsn": segment.last_lsn,
                        "records": segment.records,
                        "created_ms": segment.created_ms,
                        "end": end_text(&segment.end),
                    })
                })
                .collect();
            let kinds: serde_json::Map<String, Value> = kind_counts(scan)
                .into_iter()
                .map(|(kind, count)| (kind.to_string(), json!(count)))
                .collect();
            json!({
                "stream": report.stream,
                "ok": report.verdict.is_ok(),
                "segments": segments,
                "first_lsn": scan.first_lsn,
                "last_lsn": scan.last_lsn,
                "next_lsn": scan.next_lsn,
                "records": scan.records,
                "records_by_kind": kinds,
                "skipped_unknown": scan.skipped_unknown,
                "last_epoch": scan.last_epoch,
                "bytes": scan.bytes,
                "torn": scan.torn.as_ref().map(|torn| json!({
                    "file": torn.file,
                    "offset": torn.offset,
                    "bytes": torn.bytes,
                    "reason": torn.damage.to_string(),
                })),
                "empty_tail": scan.empty_tail,
                "other_files": scan.others,
                "error": error,
            })
        })
        .collect();
    json!({"dir": wal_dir(data_dir).display().to_string(), "streams": streams})
}

/// One record as a JSON object: stream, kind, LSN, epoch and every payload field.
pub fn record_json(stream: &str, header: &Header, record: &Record<&str>) -> Value {
    let mut value = match record {
        Record::EpochStart {
            epoch,
            node_id,
            previous_end_lsn,
        } => json!({"new_epoch": epoch, "node_id": node_id, "previous_end_lsn": previous_end_lsn}),
        Record::Publish {
            app_id,
            channel,
            channel_epoch,
            seq,
            event,
            data,
            exclude,
            user_id,
            published_ms,
            flags,
        } => json!({
            "app_id": app_id,
            "channel": channel,
            "channel_epoch": channel_epoch,
            "seq": seq,
            "event": event,
            "data": data,
            "exclude": exclude.map(|(high, low)| format!("{high}.{low}")),
            "user_id": user_id,
            "published_ms": published_ms,
            "flags": flags,
            "cache": flags & super::record::PUBLISH_CACHE != 0,
            "client": flags & super::record::PUBLISH_CLIENT != 0,
            "history_only": flags & super::record::PUBLISH_HISTORY_ONLY != 0,
        }),
        Record::PresenceJoin {
            app_id,
            channel,
            user_id,
            user_info,
        } => {
            json!({"app_id": app_id, "channel": channel, "user_id": user_id, "user_info": user_info})
        }
        Record::PresenceLeave {
            app_id,
            channel,
            user_id,
        } => json!({"app_id": app_id, "channel": channel, "user_id": user_id}),
        Record::ChannelState {
            app_id,
            channel,
            channel_epoch,
            seq,
        } => {
            json!({"app_id": app_id, "channel": channel, "channel_epoch": channel_epoch, "seq": seq})
        }
        Record::WebhookEnqueued {
            id,
            app_id,
            url,
            app_key,
            signature,
            headers,
            body,
            events,
            time_ms,
        } => json!({
            "id": id,
            "app_id": app_id,
            "url": url,
            "app_key": app_key,
            "signature": signature,
            "headers": headers.iter().map(|(name, value)| json!([name, value])).collect::<Vec<_>>(),
            "body": body,
            "events": events,
            "time_ms": time_ms,
        }),
        Record::WebhookDone { id, delivered } => json!({"id": id, "delivered": delivered}),
        Record::Heartbeat { unix_ms } => json!({"unix_ms": unix_ms}),
    };
    let object = value.as_object_mut().expect("an object");
    object.insert("stream".into(), json!(stream));
    object.insert("kind".into(), json!(record.kind().name()));
    object.insert("lsn".into(), json!(header.lsn));
    object.insert("epoch".into(), json!(header.epoch));
    value
}

/// Writes every valid record of every stream (or only `only`), one JSON object per line, in
/// LSN order per stream. Returns the streams that are damaged (their records up to the damage
/// are written); an error writing `out` (a closed pipe) stops the dump.
pub fn dump(
    storage: &dyn Storage,
    data_dir: &Path,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<Vec<(String, RecoveryError)>, InspectError> {
    let mut names = streams(storage, data_dir)?;
    if let Some(only) = only {
        names.retain(|name| name == only);
        if names.is_empty() {
            return Err(InspectError {
                path: stream_dir(data_dir, only),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
    }
    let mut damaged = Vec::new();
    for stream in names {
        let dir = stream_dir(data_dir, &stream);
        let mut failed: Option<io::Error> = None;
        let result = scan_stream(
            storage,
            &dir,
            &stream,
            RecoveryMode::Strict,
            |header, record| {
                if failed.is_some() {
                    return;
                }
                let line = record_json(&stream, header, &record);
                if let Err(error) = writeln!(out, "{line}") {
                    failed = Some(error);
                }
            },
        );
        if let Some(source) = failed {
            return Err(InspectError { path: dir, source });
        }
        if let Err(error) = result {
            damaged.push((stream, error));
        }
    }
    Ok(damaged)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::FsyncPolicy;
    use crate::wal::storage::MemStorage;
    use crate::wal::stream::{Now, WalOptions, WalWriter};

    fn write(storage: &Arc<dyn Storage>, data_dir: &Path, stream: &str, records: u64) {
        let (mut writer, _) = WalWriter::open(
            Arc::clone(storage),
            &stream_dir(data_dir, stream),
            stream,
            1,
            WalOptions {
                segment_bytes: crate::limits::WAL_SEGMENT_BYTES_MIN,
                fsync: FsyncPolicy::Always,
                fsync_interval_ms: 10,
                zero_fill: false,
            },
            RecoveryMode::Strict,
            Now::default(),
        )
        .unwrap();
        for n in 0..records {
            let data = format!("{n}");
            writer
                .append(&Record::Publish {
                    app_id: "1",
                    channel: "c",
                    channel_epoch: 1,
                    seq: n + 1,
                    event: "e",
                    data: data.as_str(),
                    exclude: Some((1, 2)),
                    user_id: None,
                    published_ms: 5,
                    flags: 1,
                })
                .unwrap();
        }
        writer.commit(Now::default()).unwrap();
    }

    #[test]
    fn reports_and_dumps_streams_in_order() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let data_dir = Path::new("/data");
        write(&storage, data_dir, "core-10", 1);
        write(&storage, data_dir, "core-2", 3);
        write(&storage, data_dir, "webhooks", 0);
        assert_eq!(
            streams(&*storage, data_dir).unwrap(),
            ["core-2", "core-10", "webhooks"]
        );
        let reports = inspect(&*storage, data_dir, None).unwrap();
        let text = render_text(data_dir, &reports);
        assert!(text.contains("stream core-2: 1 segment(s)"), "{text}");
        assert!(text.contains("LSN 1..=3"), "{text}");
        assert!(text.contains("records by kind: publish 3"), "{text}");
        let json = render_json(data_dir, &reports);
        assert_eq!(json["streams"][0]["records_by_kind"]["publish"], 3);
        assert_eq!(json["streams"][2]["records"], 0);
        let mut out = Vec::new();
        let damaged = dump(&*storage, data_dir, Some("core-2"), &mut out).unwrap();
        assert!(damaged.is_empty());
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["lsn"], 3);
        assert_eq!(lines[2]["kind"], "publish");
        assert_eq!(lines[2]["data"], "2");
        assert_eq!(lines[2]["exclude"], "1.2");
        assert_eq!(lines[2]["cache"], true);
    }
}
