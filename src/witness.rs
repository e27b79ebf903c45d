//! `ringcast witness --config FILE`: the third voter of a primary/standby pair (issue 14) as a
//! process. It owns the witness's configuration (`[witness] bind`, `secret`, optional `dir` and
//! lease timings), the persisted `WitnessRecord` file, and one thread with a UDP socket that
//! drives the sans-IO `failover::Witness` with a monotonic clock (`Instant`, never the wall
//! clock). It must not serve clients, decide anything itself (every rule is in
//! `failover::witness`), or reply before the record a reply depends on is durable: a record
//! that cannot be written stops the witness.

use std::fs;
use std::io::{self, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::failover::{self, LeaseConfig, Witness, WitnessEffect, WitnessRecord};
use crate::limits;

/// The witness's configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawWitnessFile {
    witness: WitnessConfig,
}

/// `[witness]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WitnessConfig {
    /// `host:port` of the UDP socket the nodes send to.
    pub bind: String,
    /// Shared with the nodes' `[replication] secret`; authenticates every message both ways.
    pub secret: String,
    /// Where the record (highest epoch granted and its primary) is kept. Empty: in memory
    /// only, so a restarted witness forgets which epoch it granted (tests, demos).
    pub dir: String,
    /// Must equal the nodes' `[replication] lease_ms` (the drift margin is the default 10%
    /// on every side).
    pub lease_ms: u64,
}

impl Default for WitnessConfig {
    fn default() -> WitnessConfig {
        let lease = LeaseConfig::default();
        WitnessConfig {
            bind: String::new(),
            secret: String::new(),
            dir: String::new(),
            lease_ms: lease.lease_ms,
        }
    }
}

impl WitnessConfig {
    /// The lease timings the witness runs with (renewal and failover timings are the nodes').
    pub fn lease(&self) -> LeaseConfig {
        LeaseConfig {
            lease_ms: self.lease_ms,
            drift_margin_pct: LeaseConfig::default().drift_margin_pct,
            renew_ms: (self.lease_ms / 5).max(1),
            failover_after_ms: self.lease_ms,
        }
    }
}

/// A loaded witness configuration and the unknown keys it ignored (warned about, never
/// refused).
#[derive(Debug)]
pub struct LoadedWitness {
    pub config: WitnessConfig,
    pub unknown_keys: Vec<String>,
}

/// Parses and validates a witness configuration.
///
/// # Errors
///
/// A message naming the key: the file does not parse, `bind` is missing, `secret` is shorter
/// than `REPL_SECRET_BYTES_MIN`, or the lease timings are out of range.
pub fn parse_config(text: &str) -> Result<LoadedWitness, String> {
    let mut unknown_keys = Vec::new();
    let deserializer = toml::Deserializer::parse(text).map_err(|error| error.to_string())?;
    let raw: RawWitnessFile =
        serde_ignored::deserialize(deserializer, |path| unknown_keys.push(path.to_string()))
            .map_err(|error| error.to_string())?;
    let config = raw.witness;
    if config.bind.is_empty() {
        return Err("`witness.bind` is required (host:port)".into());
    }
    if config.secret.len() < limits::REPL_SECRET_BYTES_MIN {
        return Err(format!(
            "`witness.secret`: required, at least {} bytes (the nodes' [replication] secret)",
            limits::REPL_SECRET_BYTES_MIN
        ));
    }
    config
        .lease()
        .validate()
        .map_err(|message| format!("`witness`: {message}"))?;
    Ok(LoadedWitness {
        config,
        unknown_keys,
    })
}

const RECORD_FILE: &str = "witness-record";

/// The record persisted in `dir`, if any.
///
/// # Errors
///
/// The file exists but cannot be read or does not parse: the witness must not guess.
pub fn load_record(dir: &Path) -> io::Result<Option<WitnessRecord>> {
    let path = dir.join(RECORD_FILE);
    let text = match fs::read(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
        Ok(bytes) if bytes.len() > limits::WITNESS_RECORD_BYTES_MAX => {
            return Err(io::Error::other(format!("{}: too long", path.display())));
        }
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|_| io::Error::other(format!("{}: not UTF-8", path.display())))?,
    };
    let bad = || io::Error::other(format!("{}: not a witness record", path.display()));
    let (epoch, primary) = text.trim_end().split_once(' ').ok_or_else(bad)?;
    let epoch = epoch.parse::<u64>().map_err(|_| bad())?;
    if primary.is_empty() || primary.len() > limits::REPL_NAME_BYTES_MAX {
        return Err(bad());
    }
    Ok(Some(WitnessRecord {
        epoch,
        primary: primary.to_owned(),
    }))
}

/// Writes `record` durably (temporary file, fsync, rename, directory fsync).
///
/// # Errors
///
/// Any IO error: the witness must not send the reply that depends on it.
pub fn store_record(dir: &Path, record: &WitnessRecord) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let temporary = dir.join("witness-record.tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(format!("{} {}\n", record.epoch, record.primary).as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(RECORD_FILE))?;
    fs::File::open(dir)?.sync_all()
}

/// Runs the witness until `stop` is set.
///
/// # Errors
///
/// The socket cannot be bound, the record cannot be read, or a record cannot be persisted.
pub fn run(config: &WitnessConfig, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let dir = (!config.dir.is_empty()).then(|| PathBuf::from(&config.dir));
    let record = match &dir {
        Some(dir) => load_record(dir)?,
        None => None,
    };
    let socket = UdpSocket::bind(&config.bind)
        .map_err(|error| anyhow::anyhow!("cannot bind {}: {error}", config.bind))?;
    socket.set_read_timeout(Some(Duration::from_millis(limits::WITNESS_POLL_MS)))?;
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64 + 1;
    tracing::info!(
        bind = %socket.local_addr()?,
        epoch = record.as_ref().map(|r| r.epoch),
        primary = record.as_ref().map(|r| r.primary.as_str()),
        lease_ms = config.lease_ms,
        "witness: listening"
    );
    let mut witness = Witness::new(config.lease(), record, now());
    let mut buffer = vec![0u8; limits::WITNESS_FRAME_BYTES_MAX + 4];
    let mut effects = Vec::new();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "witness: receive failed");
                continue;
            }
        };
        let message = match failover::decode(config.secret.as_bytes(), &buffer[..len]) {
            Ok(Some((message, used))) if used == len => message,
            Ok(_) => {
                tracing::debug!(%from, len, "witness: a datagram that is not one whole frame");
                continue;
            }
            Err(error) => {
                tracing::warn!(%from, %error, "witness: refused a datagram");
                continue;
            }
        };
        effects.clear();
        witness.handle(&message, now(), &mut effects);
        for effect in effects.drain(..) {
            match effect {
                WitnessEffect::Persist(record) => persist(dir.as_deref(), &record)?,
                WitnessEffect::Reply(reply) => {
                    tracing::debug!(%from, ?reply, "witness: reply");
                    out.clear();
                    failover::encode(config.secret.as_bytes(), &reply, &mut out);
                    if let Err(error) = socket.send_to(&out, from) {
                        tracing::debug!(%from, %error, "witness: send failed");
                    }
                }
            }
        }
    }
    Ok(())
}

fn persist(dir: Option<&Path>, record: &WitnessRecord) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        store_record(dir, record).map_err(|error| {
            anyhow::anyhow!(
                "cannot persist the witness record in {}: {error}",
                dir.display()
            )
        })?;
    }
    tracing::warn!(
        epoch = record.epoch,
        primary = record.primary,
        "witness: granted an epoch"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_config_is_validated_and_unknown_keys_warn() {
        let ok =
            "[witness]\nbind = \"127.0.0.1:7000\"\nsecret = \"0123456789abcdef\"\ncolour = 1\n";
        let loaded = parse_config(ok).unwrap();
        assert_eq!(loaded.unknown_keys, ["witness.colour"]);
        assert_eq!(loaded.config.lease_ms, 500);
        let short = "[witness]\nbind = \"127.0.0.1:7000\"\nsecret = \"short\"\n";
        assert!(parse_config(short).unwrap_err().contains("secret"));
        assert!(parse_config("[witness]\nsecret = \"0123456789abcdef\"\n").is_err());
        let bad_lease = format!("{ok}lease_ms = 1\n");
        assert!(parse_config(&bad_lease).unwrap_err().contains("lease_ms"));
    }

    #[test]
    fn witness_record_round_trips_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("ringcast-witness-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(load_record(&dir).unwrap(), None);
        let record = WitnessRecord {
            epoch: 7,
            primary: "node-b".into(),
        };
        store_record(&dir, &record).unwrap();
        assert_eq!(load_record(&dir).unwrap(), Some(record));
        fs::write(dir.join(RECORD_FILE), "seven node-b\n").unwrap();
        assert!(load_record(&dir).is_err());
        fs::write(dir.join(RECORD_FILE), "7\n").unwrap();
        assert!(load_record(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
