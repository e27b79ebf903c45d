//! Configuration: the TOML text in, a validated `Config` out. Unknown keys never stop a start
//! (they are returned as warnings: the rollback incident in DESIGN.md); a file that does not
//! parse, or a value that is invalid, is an error naming the key. Owns parsing and validation
//! only: nothing here opens sockets or starts threads.

mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::limits;

pub use file::{
    AckMode, AdminConfig, AppConfig, FsyncPolicy, HistoryConfig, InitialRole, LogConfig, LogFormat,
    MetricsConfig, ReplicationConfig, ServerConfig, StandbyLoss, StorageConfig, TlsConfig,
    WebhookConfig, WebhooksConfig,
};

/// The embedded configuration used by `ringcast serve` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub webhooks: WebhooksConfig,
    pub history: HistoryConfig,
    pub storage: StorageConfig,
    pub replication: ReplicationConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub apps: Vec<AppConfig>,
}

/// The result of loading: the config plus the unknown keys that were ignored.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub unknown_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config does not parse: {0}")]
    Parse(String),
    #[error("invalid config value at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    let mut unknown_keys = Vec::new();
    let deserializer =
        toml::Deserializer::parse(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
    let raw: file::RawConfig =
        serde_ignored::deserialize(deserializer, |path| unknown_keys.push(path.to_string()))
            .map_err(|error| ConfigError::Parse(error.to_string()))?;
    let config = validate(raw).map_err(|error| with_line(error, text))?;
    Ok(Loaded {
        config,
        unknown_keys,
    })
}

fn validate(raw: file::RawConfig) -> Result<Config, ConfigError> {
    validate_version(raw.version)?;
    validate_server(&raw.server)?;
    if !raw.metrics.bind.is_empty() {
        check_address("metrics.bind", &raw.metrics.bind)?;
    }
    // Checked here, after `metrics.bind`, as it always was: of several invalid values, the
    // one reported stays the same.
    check_range(
        "server.channel_name_bytes_max",
        raw.server.channel_name_bytes_max,
        1,
        1024,
    )?;
    validate_webhooks(&raw.webhooks)?;
    validate_history(&raw.history)?;
    validate_storage(&raw.storage)?;
    validate_replication(&raw.replication, &raw.storage)?;
    validate_admin(&raw.admin)?;
    validate_tls(&raw.tls, &raw.server)?;
    validate_apps(&raw.apps)?;
    Ok(Config {
        server: raw.server,
        log: raw.log,
        metrics: raw.metrics,
        webhooks: raw.webhooks,
        history: raw.history,
        storage: raw.storage,
        replication: raw.replication,
        admin: raw.admin,
        tls: raw.tls,
        apps: raw.apps,
    })
}

/// `[tls]`: off unless `bind` is set; then `cert` and `key` are required (their contents are
/// checked when the server loads them, `tls::Identity::load`). With TLS on, the plain
/// `server.bind` may be empty.
fn validate_tls(tls: &TlsConfig, server: &ServerConfig) -> Result<(), ConfigError> {
    if tls.bind.is_empty() {
        if server.bind.is_empty() {
            return Err(invalid(
                "server.bind",
                "empty, and `[tls] bind` is not set either: nothing would listen",
            ));
        }
        return Ok(());
    }
    check_address("tls.bind", &tls.bind)?;
    if tls.bind == server.bind && !tls.bind.ends_with(":0") {
        return Err(invalid("tls.bind", "the same address as `server.bind`"));
    }
    for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        if path.is_empty() {
            return Err(invalid(key, "required when `tls.bind` is set (a PEM file)"));
        }
    }
    check_range_u64(
        "tls.handshake_timeout_ms",
        tls.handshake_timeout_ms,
        1,
        limits::TLS_HANDSHAKE_TIMEOUT_MS_MAX,
    )?;
    check_range(
        "tls.handshakes_per_core_max",
        tls.handshakes_per_core_max,
        1,
        limits::TLS_HANDSHAKES_PER_CORE_MAX,
    )
}

fn validate_version(version: Option<u32>) -> Result<(), ConfigError> {
    match version {
        None => Err(invalid(
            "version",
            "missing; write `version = 1` at the top",
        )),
        Some(1) => Ok(()),
        Some(other) => Err(invalid(
            "version",
            format!("{other} is not supported (this build reads version 1)"),
        )),
    }
}

/// `server.bind` or `metrics.bind`: an IP address and port.
fn check_address(key: &str, bind: &str) -> Result<(), ConfigError> {
    bind.parse::<SocketAddr>()
        .map_err(|error| invalid(key, format!("`{bind}` is not an address: {error}")))?;
    Ok(())
}

/// `[server]`, but for `server.channel_name_bytes_max` (see `validate`).
fn validate_server(server: &ServerConfig) -> Result<(), ConfigError> {
    if !server.bind.is_empty() {
        check_address("server.bind", &server.bind)?;
    }
    if server.cores > limits::CORES_MAX {
        return Err(invalid(
            "server.cores",
            format!("at most {}", limits::CORES_MAX),
        ));
    }
    check_range(
        "server.activity_timeout_secs",
        server.activity_timeout_secs as usize,
        1,
        3600,
    )?;
    check_range(
        "server.pong_timeout_secs",
        server.pong_timeout_secs as usize,
        1,
        3600,
    )?;
    check_range(
        "server.request_timeout_ms",
        server.request_timeout_ms as usize,
        1,
        3_600_000,
    )?;
    check_range(
        "server.ws_message_bytes_max",
        server.ws_message_bytes_max,
        256,
        limits::WS_MESSAGE_BYTES_CEILING,
    )?;
    check_range(
        "server.ws_message_timeout_ms",
        server.ws_message_timeout_ms as usize,
        1,
        3_600_000,
    )?;
    // Twice the largest message: a fragmented one grows its buffer by doubling, so one message
    // of the largest size always fits on an otherwise idle core.
    check_range(
        "server.ws_partial_bytes_per_core_max",
        server.ws_partial_bytes_per_core_max,
        2 * server.ws_message_bytes_max,
        limits::WS_PARTIAL_BYTES_PER_CORE_CEILING,
    )?;
    check_range(
        "server.http_head_bytes_max",
        server.http_head_bytes_max,
        512,
        limits::HTTP_HEAD_BYTES_CEILING,
    )?;
    check_range(
        "server.http_body_bytes_max",
        server.http_body_bytes_max,
        1024,
        limits::HTTP_BODY_BYTES_CEILING,
    )?;
    check_range(
        "server.outbound_bytes_max",
        server.outbound_bytes_max,
        4096,
        limits::OUTBOUND_BYTES_CEILING,
    )?;
    check_range(
        "server.rest_in_flight_max",
        server.rest_in_flight_max,
        1,
        limits::PENDING_QUERIES_PER_CORE_MAX,
    )?;
    check_range(
        "server.drain_grace_ms",
        server.drain_grace_ms as usize,
        0,
        3_600_000,
    )?;
    check_range(
        "server.drain_rate_per_s",
        server.drain_rate_per_s as usize,
        1,
        10_000_000,
    )?;
    Ok(())
}

fn validate_apps(apps: &[AppConfig]) -> Result<(), ConfigError> {
    if apps.is_empty() {
        return Err(invalid("apps", "at least one [[apps]] entry is required"));
    }
    if apps.len() > limits::APPS_MAX {
        return Err(invalid(
            "apps",
            format!("at most {} apps", limits::APPS_MAX),
        ));
    }
    for (index, app) in apps.iter().enumerate() {
        validate_app(index, app, &apps[..index])?;
    }
    Ok(())
}

/// The `[[apps]]` entry at `index`; `before` are the entries above it, whose ids and keys it
/// must not repeat.
fn validate_app(index: usize, app: &AppConfig, before: &[AppConfig]) -> Result<(), ConfigError> {
    let key = |field: &str| format!("apps[{index}].{field}");
    for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
        if value.is_empty() {
            return Err(invalid(key(field), "must not be empty"));
        }
    }
    if !app
        .id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            key("id"),
            "only letters, digits, '-' and '_' are allowed",
        ));
    }
    if !app
        .key
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b':' && b != b'/' && b != b'?')
    {
        return Err(invalid(
            key("key"),
            "must be printable ASCII without ':', '/' or '?'",
        ));
    }
    check_range(
        &key("payload_bytes_max"),
        app.payload_bytes_max,
        1,
        limits::HTTP_BODY_BYTES_CEILING,
    )?;
    check_range(
        &key("channels_per_trigger_max"),
        app.channels_per_trigger_max,
        1,
        10_000,
    )?;
    check_range(&key("batch_size_max"), app.batch_size_max, 1, 10_000)?;
    check_range(
        &key("event_name_bytes_max"),
        app.event_name_bytes_max,
        1,
        10_000,
    )?;
    check_range(
        &key("webhook_removal_delay_ms"),
        app.webhook_removal_delay_ms as usize,
        0,
        WEBHOOK_REMOVAL_DELAY_MS_MAX,
    )?;
    for (target, webhook) in app.webhooks.iter().enumerate() {
        validate_webhook_target(&key(&format!("webhooks[{target}]")), webhook)?;
        if let Some(first) = app.webhooks[..target]
            .iter()
            .position(|other| other.url == webhook.url)
        {
            return Err(invalid(
                key(&format!("webhooks[{target}].url")),
                format!("duplicates apps[{index}].webhooks[{first}].url"),
            ));
        }
    }
    for (other_index, other) in before.iter().enumerate() {
        if other.id == app.id {
            return Err(invalid(
                key("id"),
                format!("duplicates apps[{other_index}].id"),
            ));
        }
        if other.key == app.key {
            return Err(invalid(
                key("key"),
                format!("duplicates apps[{other_index}].key"),
            ));
        }
    }
    Ok(())
}

fn validate_history(history: &HistoryConfig) -> Result<(), ConfigError> {
    check_range(
        "history.events_per_channel_max",
        history.events_per_channel_max,
        0,
        limits::HISTORY_EVENTS_PER_CHANNEL_CEILING,
    )?;
    check_range(
        "history.age_secs_max",
        history.age_secs_max as usize,
        1,
        limits::HISTORY_AGE_SECS_CEILING,
    )?;
    check_range(
        "history.bytes_max",
        history.bytes_max,
        0,
        limits::HISTORY_BYTES_CEILING,
    )?;
    Ok(())
}

/// `[replication]`: off without `node_id`; on, it needs `[storage]`, a secret, and addresses.
fn validate_replication(
    replication: &ReplicationConfig,
    storage: &StorageConfig,
) -> Result<(), ConfigError> {
    if !replication.enabled() {
        return Ok(());
    }
    if storage.dir.is_empty() {
        return Err(invalid(
            "replication",
            "needs `[storage] dir`: the standby is fed from the write-ahead log",
        ));
    }
    if replication.secret.len() < limits::REPL_SECRET_BYTES_MIN {
        return Err(invalid(
            "replication.secret",
            format!(
                "required, at least {} bytes: it authenticates the link both ways",
                limits::REPL_SECRET_BYTES_MIN
            ),
        ));
    }
    check_name("replication.node_id", &replication.node_id)?;
    check_name("replication.cluster", &replication.cluster)?;
    check_host_port("replication.listen", &replication.listen)?;
    check_host_port("replication.peer", &replication.peer)?;
    check_range_u64(
        "replication.standby_timeout_ms",
        replication.standby_timeout_ms,
        limits::REPL_HEARTBEAT_MS * 2,
        limits::REPL_STANDBY_TIMEOUT_MS_MAX,
    )?;
    if !replication.witness.is_empty() {
        check_host_port("replication.witness", &replication.witness)?;
        replication
            .lease()
            .validate()
            .map_err(|message| invalid("replication.lease_ms", message))?;
    }
    Ok(())
}

/// A short printable name (node ids, cluster names).
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= limits::REPL_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "`{name}`: 1 to {} printable ASCII characters",
                limits::REPL_NAME_BYTES_MAX
            ),
        ))
    }
}

/// `host:port` (a name or an IP address).
fn check_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let port = value
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port)?.parse::<u16>().ok());
    match port {
        Some(_) => Ok(()),
        None => Err(invalid(key, format!("`{value}` is not host:port"))),
    }
}

fn validate_storage(storage: &StorageConfig) -> Result<(), ConfigError> {
    if storage.dir.bytes().any(|b| b == 0) {
        return Err(invalid("storage.dir", "must not contain NUL bytes"));
    }
    check_range_u64(
        "storage.fsync_interval_ms",
        storage.fsync_interval_ms,
        1,
        limits::WAL_FSYNC_INTERVAL_MS_MAX,
    )?;
    check_range_u64(
        "storage.segment_bytes",
        storage.segment_bytes,
        limits::WAL_SEGMENT_BYTES_MIN,
        limits::WAL_SEGMENT_BYTES_MAX,
    )?;
    check_range_u64(
        "storage.retain_bytes_max",
        storage.retain_bytes_max,
        storage.segment_bytes,
        u64::MAX,
    )?;
    check_range_u64(
        "storage.retain_secs",
        storage.retain_secs,
        0,
        limits::WAL_RETAIN_SECS_MAX,
    )?;
    Ok(())
}

/// Where the admin endpoint listens (`admin.bind`, parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A unix socket path (`unix:/path`).
    Unix(PathBuf),
}

impl AdminAddress {
    /// Parses `"127.0.0.1:6190"` or `"unix:/path/to.sock"`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with `text` (not an address, an empty or NUL-holding
    /// path).
    pub fn parse(text: &str) -> Result<AdminAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || path.bytes().any(|b| b == 0) {
                return Err(format!("`{text}` needs a socket path without NUL bytes"));
            }
            if path.len() > limits::ADMIN_UNIX_PATH_BYTES_MAX {
                return Err(format!(
                    "the socket path is longer than {} bytes",
                    limits::ADMIN_UNIX_PATH_BYTES_MAX
                ));
            }
            return Ok(AdminAddress::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>()
            .map(AdminAddress::Tcp)
            .map_err(|error| {
                format!("`{text}` is not an IP address and port or `unix:/path`: {error}")
            })
    }

    /// Whether only this host can reach it: a unix socket, or a TCP address in 127.0.0.0/8 or
    /// `::1`.
    pub fn is_local(&self) -> bool {
        match self {
            AdminAddress::Tcp(addr) => addr.ip().is_loopback(),
            AdminAddress::Unix(_) => true,
        }
    }
}

/// `[admin]`: a bind that others can reach needs a token; a token is something a header can
/// carry.
fn validate_admin(admin: &AdminConfig) -> Result<(), ConfigError> {
    if !admin.token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "admin.token",
            "must be printable ASCII without spaces",
        ));
    }
    if admin.token.len() > limits::ADMIN_TOKEN_BYTES_MAX {
        return Err(invalid(
            "admin.token",
            format!("at most {} bytes", limits::ADMIN_TOKEN_BYTES_MAX),
        ));
    }
    if admin.bind.is_empty() {
        return Ok(());
    }
    let address =
        AdminAddress::parse(&admin.bind).map_err(|message| invalid("admin.bind", message))?;
    if !address.is_local() && admin.token.is_empty() {
        return Err(invalid(
            "admin.token",
            format!(
                "required: admin.bind `{}` is not a loopback address, so anyone who can reach it \
                 could promote this node; set a token or bind to 127.0.0.1, ::1 or a unix socket",
                admin.bind
            ),
        ));
    }
    Ok(())
}

use crate::limits::{WEBHOOK_OUTBOX_MAX, WEBHOOK_REMOVAL_DELAY_MS_MAX};

fn validate_webhooks(webhooks: &WebhooksConfig) -> Result<(), ConfigError> {
    check_range(
        "webhooks.batch_window_ms",
        webhooks.batch_window_ms as usize,
        0,
        10_000,
    )?;
    check_range(
        "webhooks.batch_events_max",
        webhooks.batch_events_max,
        1,
        10_000,
    )?;
    check_range(
        "webhooks.timeout_ms",
        webhooks.timeout_ms as usize,
        1,
        600_000,
    )?;
    check_range(
        "webhooks.retry_for_secs",
        webhooks.retry_for_secs as usize,
        0,
        7 * 24 * 3600,
    )?;
    check_range(
        "webhooks.retry_initial_ms",
        webhooks.retry_initial_ms as usize,
        1,
        3_600_000,
    )?;
    check_range(
        "webhooks.retry_max_ms",
        webhooks.retry_max_ms as usize,
        webhooks.retry_initial_ms as usize,
        3_600_000,
    )?;
    check_range(
        "webhooks.outbox_max",
        webhooks.outbox_max,
        1,
        WEBHOOK_OUTBOX_MAX,
    )?;
    check_range("webhooks.concurrency", webhooks.concurrency, 1, 64)?;
    Ok(())
}

/// Header names a target's `headers` may not set: the webhook's own and the framing ones.
const RESERVED_WEBHOOK_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "x-pusher-key",
    "x-pusher-signature",
];

fn validate_webhook_target(key: &str, webhook: &WebhookConfig) -> Result<(), ConfigError> {
    let url = webhook.url.as_str();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                format!("{key}.url"),
                format!("`{url}` is not an http:// or https:// URL"),
            )
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || !url.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            format!("{key}.url"),
            format!("`{url}` needs a host, no user info, and no spaces or control characters"),
        ));
    }
    for name in &webhook.event_types {
        if crate::webhook::WebhookKind::from_name(name).is_none() {
            return Err(invalid(
                format!("{key}.event_types"),
                format!(
                    "`{name}` is not a webhook event (channel_occupied, channel_vacated, member_added, \
                     member_removed, client_event, cache_miss, subscription_count)"
                ),
            ));
        }
    }
    for (name, value) in &webhook.headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(invalid(
                format!("{key}.headers"),
                format!("`{name}` is not a valid header name"),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_WEBHOOK_HEADERS.contains(&lower.as_str())
            || lower == crate::webhook::WEBHOOK_ID_HEADER.to_ascii_lowercase()
        {
            return Err(invalid(
                format!("{key}.headers"),
                format!("`{name}` is set by ringcast and cannot be overridden"),
            ));
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(invalid(
                format!("{key}.headers.{name}"),
                "header values are printable ASCII",
            ));
        }
    }
    Ok(())
}

/// Adds "(line N)" to an invalid-value error when the key can be found in the text: the
/// table header (`[server]`, the n-th `[[apps]]`) and then the key's own line in that table.
fn with_line(error: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Invalid { key, message } = error else {
        return error;
    };
    match key_line(&key, text) {
        Some(line) => ConfigError::Invalid {
            key,
            message: format!("{message} (line {line})"),
        },
        None => ConfigError::Invalid { key, message },
    }
}

fn key_line(key: &str, text: &str) -> Option<usize> {
    let (table, field) = match key.rsplit_once('.') {
        Some((table, field)) => (Some(table), field),
        None => (None, key),
    };
    let lines: Vec<&str> = text.lines().collect();
    let (start, end) = match table {
        None => (
            0,
            lines
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .unwrap_or(lines.len()),
        ),
        Some(table) => {
            let (name, index) = match table.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()?),
                None => (table, 0),
            };
            let headers = [format!("[{name}]"), format!("[[{name}]]")];
            let start = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| headers.iter().any(|h| l.trim() == h))
                .nth(index)?
                .0
                + 1;
            let end = lines[start..]
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .map_or(lines.len(), |offset| start + offset);
            (start, end)
        }
    };
    (start..end)
        .find(|&n| {
            let line = lines[n].trim_start();
            line.strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|n| n + 1)
}

fn check_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    check_range_u64(key, value as u64, min as u64, max as u64)
}

fn check_range_u64(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(key, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

impl Config {
    /// The plain listener's address; None when `server.bind` is empty (TLS only).
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        (!self.server.bind.is_empty()).then(|| {
            self.server
                .bind
                .parse()
                .expect("validated in config::validate")
        })
    }

    /// The TLS listener's address; None when TLS is off.
    pub fn tls_bind_addr(&self) -> Option<SocketAddr> {
        (!self.tls.bind.is_empty()).then(|| {
            self.tls
                .bind
                .parse()
                .expect("validated in config::validate")
        })
    }

    /// The number of core threads: `server.cores`, or every available CPU when 0.
    pub fn cores(&self) -> usize {
        if self.server.cores > 0 {
            return self.server.cores;
        }
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(limits::CORES_MAX)
    }

    /// Renders the effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        let raw = file::RawConfig {
            version: Some(1),
            server: self.server.clone(),
            log: self.log.clone(),
            metrics: self.metrics.clone(),
            webhooks: self.webhooks.clone(),
            history: self.history.clone(),
            storage: self.storage.clone(),
            replication: self.replication.clone(),
            admin: self.admin.clone(),
            tls: self.tls.clone(),
            apps: self.apps.clone(),
        };
        toml::to_string_pretty(&raw).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let loaded = parse(EMBEDDED_DEFAULT).unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        assert_eq!(
            loaded.config.bind_addr().unwrap().ip().to_string(),
            "127.0.0.1"
        );
        assert!(loaded.config.apps[0].id.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn shipped_example_is_valid_and_complete() {
        let loaded = parse(include_str!("../../configs/ringcast.toml")).unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let text = "version = 1\nfuture_key = 3\n[server]\nbind = \"127.0.0.1:0\"\nshiny = true\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nnew_flag = 1\n";
        let mut unknown = parse(text).unwrap().unknown_keys;
        unknown.sort();
        assert_eq!(
            unknown,
            vec!["apps.0.new_flag", "future_key", "server.shiny"]
        );
    }

    #[test]
    fn invalid_values_name_the_line() {
        let text = "version = 1\n[server]\ncores = 1\nbind = \"nope\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"\"\n";
        let error = parse(text).unwrap_err().to_string();
        assert!(
            error.contains("server.bind") && error.contains("(line 4)"),
            "{error}"
        );
        let text = text.replace("bind = \"nope\"", "bind = \"127.0.0.1:1\"");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("apps[1].secret") && error.contains("(line 12)"),
            "{error}"
        );
    }

    #[test]
    fn webhook_config_is_validated() {
        let app = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let loaded = parse(&format!(
            "{app}webhook_removal_delay_ms = 3000\n[[apps.webhooks]]\nurl = \"https://example.test/hook\"\nevent_types = [\"channel_occupied\", \"member_added\"]\nchannel_prefix = \"presence-\"\nheaders = {{ \"X-Env\" = \"prod\" }}\n"
        ))
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let config = loaded.config;
        assert_eq!(config.webhooks.batch_window_ms, 50);
        assert_eq!(config.webhooks.timeout_ms, 5_000);
        assert!(config.webhooks.retry_for_secs >= 300);
        assert_eq!(config.apps[0].webhook_removal_delay_ms, 3000);
        assert_eq!(config.apps[0].webhooks[0].headers["X-Env"], "prod");
        let error_for = |text: &str| parse(&format!("{app}{text}")).unwrap_err().to_string();
        let error = error_for("[[apps.webhooks]]\nurl = \"ftp://example.test/\"\n");
        assert!(error.contains("apps[0].webhooks[0].url"), "{error}");
        let error = error_for("[[apps.webhooks]]\nurl = \"http://\"\n");
        assert!(error.contains("apps[0].webhooks[0].url"), "{error}");
        let error = error_for("[[apps.webhooks]]\nurl = \"http://a/\"\nevent_types = [\"nope\"]\n");
        assert!(error.contains("apps[0].webhooks[0].event_types"), "{error}");
        let error = error_for(
            "[[apps.webhooks]]\nurl = \"http://a/\"\nheaders = { \"x-pusher-signature\" = \"forged\" }\n",
        );
        assert!(error.contains("apps[0].webhooks[0].headers"), "{error}");
        let error = error_for(
            "[[apps.webhooks]]\nurl = \"http://a/\"\n[[apps.webhooks]]\nurl = \"http://a/\"\n",
        );
        assert!(error.contains("apps[0].webhooks[1].url"), "{error}");
        let error = parse(&format!("{app}[webhooks]\nretry_max_ms = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("webhooks.retry_max_ms"), "{error}");
        let error = parse(&format!("{app}[webhooks]\noutbox_max = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("webhooks.outbox_max"), "{error}");
    }

    #[test]
    fn storage_config_is_validated() {
        let app = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let storage = parse(app).unwrap().config.storage;
        assert!(storage.dir.is_empty(), "no WAL unless asked for");
        assert_eq!(storage.fsync, FsyncPolicy::Interval);
        assert_eq!(storage.fsync_interval_ms, 10);
        assert_eq!(storage.segment_bytes, 64 * 1024 * 1024);
        let loaded = parse(&format!(
            "{app}[storage]\ndir = \"/var/lib/ringcast\"\nfsync = \"always\"\nsegment_bytes = 1048576\n"
        ))
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        assert_eq!(loaded.config.storage.fsync, FsyncPolicy::Always);
        let error_for = |text: &str| {
            parse(&format!("{app}[storage]\n{text}"))
                .unwrap_err()
                .to_string()
        };
        let error = error_for("segment_bytes = 1024\n");
        assert!(
            error.contains("storage.segment_bytes") && error.contains("(line 7)"),
            "{error}"
        );
        let error = error_for("fsync_interval_ms = 0\n");
        assert!(error.contains("storage.fsync_interval_ms"), "{error}");
        let error = error_for("retain_bytes_max = 65536\n");
        assert!(error.contains("storage.retain_bytes_max"), "{error}");
        let error = error_for("fsync = \"sometimes\"\n");
        assert!(error.contains("sometimes"), "{error}");
        let unknown = parse(&format!("{app}[storage]\nmirror = true\n"))
            .unwrap()
            .unknown_keys;
        assert_eq!(unknown, ["storage.mirror"]);
    }

    #[test]
    fn admin_config_is_validated() {
        let app = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let admin = parse(app).unwrap().config.admin;
        assert_eq!(admin, AdminConfig::default(), "off unless asked for");
        for bind in [
            "127.0.0.1:6190",
            "127.1.2.3:0",
            "[::1]:6190",
            "unix:/run/ringcast/a.sock",
        ] {
            let loaded = parse(&format!("{app}[admin]\nbind = \"{bind}\"\n")).unwrap();
            assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
            assert_eq!(loaded.config.admin.bind, bind);
            assert!(AdminAddress::parse(bind).unwrap().is_local(), "{bind}");
        }
        let error_for = |text: &str| {
            parse(&format!("{app}[admin]\n{text}"))
                .unwrap_err()
                .to_string()
        };
        for bind in ["0.0.0.0:6190", "10.0.0.5:6190", "[::]:6190"] {
            let error = error_for(&format!("bind = \"{bind}\"\n"));
            assert!(
                error.contains("admin.token") && error.contains("not a loopback"),
                "{error}"
            );
        }
        let loaded = parse(&format!(
            "{app}[admin]\nbind = \"0.0.0.0:6190\"\ntoken = \"s3cret\"\n"
        ))
        .unwrap();
        assert_eq!(loaded.config.admin.token, "s3cret");
        assert!(loaded.config.to_toml().contains("[admin]"));
        let error = error_for("bind = \"nope\"\n");
        assert!(
            error.contains("admin.bind") && error.contains("(line 7)"),
            "{error}"
        );
        let error = error_for("bind = \"unix:\"\n");
        assert!(error.contains("admin.bind"), "{error}");
        let error = error_for("bind = \"127.0.0.1:6190\"\ntoken = \"two words\"\n");
        assert!(error.contains("admin.token"), "{error}");
        let unknown = parse(&format!(
            "{app}[admin]\nbind = \"127.0.0.1:1\"\nport = 6190\n"
        ))
        .unwrap()
        .unknown_keys;
        assert_eq!(unknown, ["admin.port"]);
    }

    #[test]
    fn tls_config_is_validated() {
        let app = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let error_for = |text: &str| parse(&format!("{app}{text}")).unwrap_err().to_string();
        let tls = "[tls]\nbind = \"127.0.0.1:6002\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let loaded = parse(&format!("{app}{tls}")).unwrap().config;
        assert_eq!(loaded.tls_bind_addr().unwrap().port(), 6002);
        assert_eq!(
            loaded.bind_addr().unwrap().port(),
            6001,
            "the plain listener stays"
        );
        assert_eq!(
            loaded.tls.handshake_timeout_ms,
            limits::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT
        );
        let tls_only = parse(&format!("{app}[server]\nbind = \"\"\n{tls}")).unwrap();
        assert_eq!(tls_only.config.bind_addr(), None);
        assert!(
            error_for("[server]\nbind = \"\"\n").contains("nothing would listen"),
            "no listener at all"
        );
        let error = error_for("[tls]\nbind = \"127.0.0.1:6002\"\nkey = \"k.pem\"\n");
        assert!(error.contains("tls.cert"), "{error}");
        let error = error_for("[tls]\nbind = \"127.0.0.1:6002\"\ncert = \"c.pem\"\n");
        assert!(error.contains("tls.key"), "{error}");
        let error = error_for("[tls]\nbind = \"127.0.0.1:6001\"\ncert = \"c\"\nkey = \"k\"\n");
        assert!(error.contains("same address"), "{error}");
        let error = error_for("[tls]\nbind = \"localhost\"\ncert = \"c\"\nkey = \"k\"\n");
        assert!(error.contains("tls.bind"), "{error}");
        let error = error_for(&format!("{tls}handshake_timeout_ms = 0\n"));
        assert!(error.contains("tls.handshake_timeout_ms"), "{error}");
        let error = error_for(&format!("{tls}handshakes_per_core_max = 100000\n"));
        assert!(error.contains("tls.handshakes_per_core_max"), "{error}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let base = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let error = parse(&format!("{base}[server]\nbind = \"nope\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.bind"), "{error}");
        let error = parse(&format!("{base}[server]\ncores = \"two\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cores"), "{error}");
        let error = parse("version = 1\n[[apps]]\nid = \"1\"\nkey = \"\"\nsecret = \"s\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("apps[0].key"), "{error}");
        // Room for one message of the largest size, twice over (a fragmented one grows by
        // doubling).
        let error = parse(&format!(
            "{base}[server]\nws_message_bytes_max = 1024\nws_partial_bytes_per_core_max = 2047\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("server.ws_partial_bytes_per_core_max"),
            "{error}"
        );
        let error = parse(&format!("{base}[server]\nws_message_timeout_ms = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.ws_message_timeout_ms"), "{error}");
        let error = parse("version = 2\n").unwrap_err().to_string();
        assert!(error.contains("version"), "{error}");
        let error = parse("version = 1\n[server\n").unwrap_err().to_string();
        assert!(error.contains("parse"), "{error}");
    }

    #[test]
    fn witness_config_is_validated() {
        let base = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
                    [storage]\ndir = \"/tmp/x\"\n[replication]\nnode_id = \"a\"\n\
                    listen = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n\
                    secret = \"0123456789abcdef\"\n";
        let off = parse(base).unwrap().config.replication;
        assert!(!off.has_witness(), "no witness: manual failover");
        let on = parse(&format!("{base}witness = \"127.0.0.1:7500\"\n"))
            .unwrap()
            .config
            .replication;
        assert!(on.has_witness());
        assert_eq!(on.lease(), crate::failover::LeaseConfig::default());
        let error_for = |text: &str| parse(&format!("{base}{text}")).unwrap_err().to_string();
        let error = error_for("witness = \"nowhere\"\n");
        assert!(error.contains("replication.witness"), "{error}");
        let error = error_for("witness = \"127.0.0.1:7500\"\nlease_ms = 5\n");
        assert!(error.contains("lease_ms"), "{error}");
        let error = error_for("witness = \"127.0.0.1:7500\"\nfailover_after_ms = 1\n");
        assert!(error.contains("failover_after_ms"), "{error}");
    }
}
