//! Moving the owner state to new WAL streams when the core count changed since the last run.
//! A channel's owner is `hash % cores`, so with another core count the channels of one old
//! stream belong to several new cores. At start-up, before any core runs, every old stream is
//! replayed into owners laid out for the new count, each new owner's state is written as a
//! snapshot into a fresh stream under `wal.next/`, and the directories are swapped:
//! `wal` → `wal.prev`, `wal.next` → `wal`, then the webhook stream moves back in and `wal.prev`
//! goes. Every step is a rename or a fresh directory, so a crash at any point is finished (or
//! undone and redone) by the next start (`finish_interrupted`). It must not run while cores
//! run: it owns the data directory until it returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::shard::{Apps, Now, Owner};
use crate::wal::{self, FsStorage, RecoveryMode, Storage, WalOptions, WalWriter};
use crate::webhook::WebhookQueues;

use super::journal::{INITIAL_EPOCH, owner_record};

fn sibling(wal_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = wal_dir.file_name().expect("wal/ has a name").to_os_string();
    name.push(suffix);
    wal_dir.with_file_name(name)
}

/// The core streams present (`core-N`), by N.
fn core_streams(wal_dir: &Path) -> anyhow::Result<Vec<usize>> {
    let mut cores = Vec::new();
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        return Ok(cores);
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(core) = name
            .to_str()
            .and_then(|name| name.strip_prefix("core-"))
            .and_then(|n| n.parse().ok())
        {
            cores.push(core);
        }
    }
    cores.sort_unstable();
    Ok(cores)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    Ok(FsStorage.sync_dir(dir)?)
}

/// Completes or undoes a reshard a crash interrupted (see the module docs).
fn finish_interrupted(wal_dir: &Path) -> anyhow::Result<()> {
    let (next, prev) = (sibling(wal_dir, ".next"), sibling(wal_dir, ".prev"));
    let parent = wal_dir.parent().expect("wal/ has a parent");
    if wal_dir.exists() && next.exists() {
        // Crashed while writing the new streams: the old ones are intact; start over.
        std::fs::remove_dir_all(&next)?;
    } else if prev.exists() && next.exists() {
        // Crashed between the two renames.
        std::fs::rename(&next, wal_dir)?;
        sync_dir(parent)?;
    }
    if prev.exists() {
        let webhooks = prev.join(wal::WEBHOOKS_STREAM);
        if webhooks.exists() && !wal_dir.join(wal::WEBHOOKS_STREAM).exists() {
            std::fs::rename(&webhooks, wal_dir.join(wal::WEBHOOKS_STREAM))?;
            sync_dir(wal_dir)?;
        }
        std::fs::remove_dir_all(&prev)?;
        sync_dir(parent)?;
    }
    Ok(())
}

/// Reshards `[storage] dir` to `cores` streams when it holds another number of them.
pub fn reshard_if_needed(
    config: &Arc<Config>,
    apps: &Arc<Apps>,
    cores: usize,
    recovery: RecoveryMode,
    now: Now,
) -> anyhow::Result<()> {
    if config.storage.dir.is_empty() {
        return Ok(());
    }
    let data_dir = Path::new(&config.storage.dir);
    let wal_dir = wal::wal_dir(data_dir);
    finish_interrupted(&wal_dir)?;
    let old = core_streams(&wal_dir)?;
    if old.is_empty() || old == (0..cores).collect::<Vec<_>>() {
        return Ok(());
    }
    tracing::warn!(
        from = old.len(),
        to = cores,
        "the core count changed: moving channel state to new write-ahead log streams"
    );
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let webhooks = Arc::new(WebhookQueues::new(cores));
    let mut owners: Vec<Owner> = (0..cores)
        .map(|core| {
            let (config, apps) = (Arc::clone(config), Arc::clone(apps));
            Owner::new(
                core,
                cores,
                config,
                apps,
                Arc::clone(&webhooks),
                now.unix_ms,
            )
        })
        .collect();
    let options = WalOptions::from_config(&config.storage);
    let wal_now = wal::Now {
        mono_ms: now.mono_ms,
        unix_ms: now.unix_ms,
    };
    for core in old {
        let stream = wal::core_stream(core);
        let dir = wal_dir.join(&stream);
        let storage = Arc::clone(&storage);
        let (_, recovered) = WalWriter::open(
            storage,
            &dir,
            &stream,
            INITIAL_EPOCH,
            options,
            recovery,
            wal_now,
        )?;
        recovered.replay(|header, record| {
            if let Some(Ok(record)) = owner_record(apps, &record) {
                let owner = record.channel().owner(cores);
                owners[owner].replay(record, header.lsn, now);
            }
        })?;
    }
    let next = sibling(&wal_dir, ".next");
    for (core, owner) in owners.iter().enumerate() {
        let stream = wal::core_stream(core);
        let dir = next.join(&stream);
        let storage = Arc::clone(&storage);
        let (mut writer, _) = WalWriter::open(
            storage,
            &dir,
            &stream,
            INITIAL_EPOCH,
            options,
            RecoveryMode::Strict,
            wal_now,
        )?;
        let records = owner.snapshot(now.unix_ms);
        for record in &records {
            super::journal::append_owner_record(&mut writer, apps, record)?;
        }
        writer.commit(wal_now)?;
        writer.sync(wal_now)?;
        tracing::info!(
            core,
            records = records.len(),
            "new write-ahead log stream written"
        );
    }
    let parent = data_dir;
    sync_dir(&next)?;
    std::fs::rename(&wal_dir, sibling(&wal_dir, ".prev"))?;
    std::fs::rename(&next, &wal_dir)?;
    sync_dir(parent)?;
    finish_interrupted(&wal_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringcast-reshard-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn make(dir: &Path, streams: &[&str]) {
        for stream in streams {
            std::fs::create_dir_all(dir.join(stream)).unwrap();
        }
    }

    #[test]
    fn a_crash_at_any_step_is_finished_or_undone_by_the_next_start() {
        // Crashed while writing the new streams: the old ones stay, the new ones go.
        let data = temp("a");
        make(&data.join("wal"), &["core-0", "core-1", "webhooks"]);
        make(&data.join("wal.next"), &["core-0"]);
        finish_interrupted(&data.join("wal")).unwrap();
        assert_eq!(core_streams(&data.join("wal")).unwrap(), [0, 1]);
        assert!(!data.join("wal.next").exists());

        // Crashed between the renames: the new streams take over, the webhooks move in.
        let data = temp("b");
        make(&data.join("wal.prev"), &["core-0", "core-1", "webhooks"]);
        make(&data.join("wal.next"), &["core-0"]);
        finish_interrupted(&data.join("wal")).unwrap();
        assert_eq!(core_streams(&data.join("wal")).unwrap(), [0]);
        assert!(data.join("wal").join("webhooks").exists());
        assert!(!data.join("wal.prev").exists() && !data.join("wal.next").exists());

        // Crashed after the renames: only the old directory is left to remove.
        let data = temp("c");
        make(&data.join("wal"), &["core-0", "webhooks"]);
        make(&data.join("wal.prev"), &["core-0", "core-1"]);
        finish_interrupted(&data.join("wal")).unwrap();
        assert_eq!(core_streams(&data.join("wal")).unwrap(), [0]);
        assert!(!data.join("wal.prev").exists());
        for data in [data, temp("a"), temp("b")] {
            let _ = std::fs::remove_dir_all(data);
        }
    }
}
