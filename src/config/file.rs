//! The serde mirror of the TOML file (ripgrep's "low args"): field names, types and defaults, and
//! nothing derived. Validation of values lives in `config/mod.rs`. Defaults follow spec §9.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawConfig {
    pub version: Option<u32>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// What a REST publish waits for before it is answered 200 (`[replication] ack`, per app
/// `ack`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// The primary's own WAL (per `[storage] fsync`).
    Local,
    /// The standby has received the records (in its memory and written to its WAL file).
    Replica,
    /// The standby has fsynced the records.
    ReplicaDurable,
}

/// What the primary does with publishes waiting for a standby that is gone.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StandbyLoss {
    /// Answer from the local WAL and say so (header, `/readyz` body, metrics, logs).
    Degrade,
    /// Answer 503 + `Retry-After`.
    Reject,
}

/// The role a node takes when its data directory is empty (a new pair).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitialRole {
    Primary,
    Standby,
}

/// The hot standby (`[replication]`): the WAL streamed to a second node. Empty `node_id`: off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ReplicationConfig {
    /// This node's name, unique in the pair. Empty: no replication.
    pub node_id: String,
    /// The pair's name: both nodes must agree (a node never follows another cluster).
    pub cluster: String,
    /// Where this node serves the stream (when primary).
    pub listen: String,
    /// The other node's `listen` address (dialed when standby).
    pub peer: String,
    /// Used only when the data directory is empty.
    pub initial_role: InitialRole,
    /// Authenticates the link both ways (never sent).
    pub secret: String,
    /// Default for apps without their own `ack`.
    pub ack: AckMode,
    /// How long the primary waits for the standby before `on_standby_loss` applies.
    pub standby_timeout_ms: u64,
    pub on_standby_loss: StandbyLoss,
    /// The witness's `host:port` (UDP). Empty: no automatic failover (promotion is manual).
    pub witness: String,
    /// The primary's lease at the witness (must equal the witness's `lease_ms`).
    pub lease_ms: u64,
    /// How long a standby hears nothing from the primary before it asks the witness for
    /// promotion.
    pub failover_after_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            node_id: String::new(),
            cluster: "ringcast".into(),
            listen: String::new(),
            peer: String::new(),
            initial_role: InitialRole::Standby,
            secret: String::new(),
            ack: AckMode::Replica,
            standby_timeout_ms: 1000,
            on_standby_loss: StandbyLoss::Degrade,
            witness: String::new(),
            lease_ms: 500,
            failover_after_ms: 500,
        }
    }
}

impl ReplicationConfig {
    pub fn enabled(&self) -> bool {
        !self.node_id.is_empty()
    }

    /// Whether failover is automatic (a witness is named).
    pub fn has_witness(&self) -> bool {
        self.enabled() && !self.witness.is_empty()
    }

    /// The lease and failover timings (renewal every fifth of the lease, the default 10%
    /// drift margin).
    pub fn lease(&self) -> crate::failover::LeaseConfig {
        crate::failover::LeaseConfig {
            lease_ms: self.lease_ms,
            renew_ms: (self.lease_ms / 5).max(1),
            failover_after_ms: self.failover_after_ms,
            ..crate::failover::LeaseConfig::default()
        }
    }
}

/// Channel history (kept in memory, rebuilt from the WAL at start): the window each channel
/// keeps for the REST history API and for clients that resume after a reconnect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HistoryConfig {
    /// Events kept per channel; 0 keeps none (sequence numbers still count).
    pub events_per_channel_max: usize,
    /// Events older than this are dropped.
    pub age_secs_max: u64,
    /// Bytes of retained events across every channel (oldest evicted first).
    pub bytes_max: usize,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            events_per_channel_max: 100,
            age_secs_max: 300,
            bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// When the write-ahead log forces written records to the disk.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every write (group commit: once per loop tick that wrote anything).
    Always,
    /// At most every `fsync_interval_ms` while something is unsynced.
    Interval,
    /// Never (the kernel writes back when it likes): survives a process crash, not a power loss.
    Never,
}

/// The write-ahead log (`[storage]`): durable owner state and webhook outbox. Changes with a
/// restart only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct StorageConfig {
    /// Data directory; the WAL lives in `{dir}/wal/`. Empty: no WAL, state is in memory only.
    pub dir: String,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Size of one segment file (preallocated when it is created).
    pub segment_bytes: u64,
    /// Sealed segments beyond this many bytes per stream are removed, oldest first, once
    /// nothing in them is still needed.
    pub retain_bytes_max: u64,
    /// Sealed segments older than this are removed once nothing in them is still needed.
    pub retain_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            dir: String::new(),
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 10,
            segment_bytes: 64 * 1024 * 1024,
            retain_bytes_max: 1024 * 1024 * 1024,
            retain_secs: 600,
        }
    }
}

/// Webhook delivery (spec §8), for every app; the targets are per app (`[[apps.webhooks]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Events for one target are collected this long before one POST carries them all; 0 sends
    /// one event per POST.
    pub batch_window_ms: u64,
    /// Events in one POST at most (a full batch is sent before its window ends).
    pub batch_events_max: usize,
    /// Time for one POST: connect, send, and the response.
    pub timeout_ms: u64,
    /// A batch is retried (any non-2xx, timeout or connection error) for this long after its
    /// first attempt, then dropped and counted; 0 makes a single attempt.
    pub retry_for_secs: u64,
    /// Back-off before the first retry; it doubles (with jitter) up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Events waiting for delivery, across every app and target; when full, new batches are
    /// dropped, counted and logged.
    pub outbox_max: usize,
    /// POSTs in flight at once (each to a different target; one at a time per target keeps
    /// per-channel order). Changes with a restart.
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> WebhooksConfig {
        WebhooksConfig {
            batch_window_ms: 50,
            batch_events_max: 100,
            timeout_ms: 5_000,
            retry_for_secs: 300,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            outbox_max: 100_000,
            concurrency: 4,
        }
    }
}

/// The operator's admin endpoint (`[admin]`): replication status and promotion, on an address
/// of its own (never the client port). Changes with a restart only.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct AdminConfig {
    /// `"127.0.0.1:6190"` (an IP address and port) or `"unix:/run/ringcast/admin.sock"`; empty
    /// disables the endpoint.
    pub bind: String,
    /// When set, every request but `GET /healthz` needs `Authorization: Bearer <token>`.
    /// Required when `bind` is a TCP address outside loopback.
    pub token: String,
}

/// Native TLS (`wss://`, `https://`) on a second listener of every core.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Address of the TLS listener; empty (the default) turns TLS off.
    pub bind: String,
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Milliseconds a client may take to finish its TLS handshake before it is closed.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes one core runs at once; more new clients are closed at once (counted).
    pub handshakes_per_core_max: usize,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            bind: String::new(),
            cert: String::new(),
            key: String::new(),
            handshake_timeout_ms: crate::limits::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT,
            handshakes_per_core_max: crate::limits::TLS_HANDSHAKES_PER_CORE_MAX,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Address of the metrics and health endpoint (`/metrics`, `/healthz`, `/readyz`); empty
    /// disables it.
    pub bind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    /// WebSocket and REST on one address (plain TCP); empty turns it off when `[tls] bind` is
    /// set.
    pub bind: String,
    /// Core threads; 0 means every available CPU.
    pub cores: usize,
    /// Pin each core thread to a CPU.
    pub pin_threads: bool,
    /// Seconds of client silence before the server pings (also advertised to clients).
    pub activity_timeout_secs: u32,
    /// Seconds to wait for any message after a server ping before closing with 4201.
    pub pong_timeout_secs: u32,
    /// Milliseconds a connection may take to send a complete HTTP request (slowloris bound);
    /// also the idle keep-alive timeout between REST requests.
    pub request_timeout_ms: u64,
    pub http_head_bytes_max: usize,
    pub http_body_bytes_max: usize,
    /// Largest WebSocket message from a client; larger closes with 1009.
    pub ws_message_bytes_max: usize,
    /// Milliseconds a client's WebSocket message (or frame) may stay unfinished, from its first
    /// byte to its last; longer closes with 1008, and its buffer is freed.
    pub ws_message_timeout_ms: u64,
    /// Bytes all unfinished WebSocket messages on one core may hold together; the connection
    /// whose message would take the core over it is closed with 1009.
    pub ws_partial_bytes_per_core_max: usize,
    /// Bytes queued to one connection before it is closed as a slow consumer (4101).
    pub outbound_bytes_max: usize,
    pub channel_name_bytes_max: usize,
    /// WebSocket connections across all cores; 0 = unlimited. Over it: close 4100.
    pub max_connections: u64,
    /// New connections admitted per second across all cores (split evenly per core); 0 =
    /// unlimited. The excess is closed with 4100 (reconnect with back-off).
    pub accepts_per_sec_max: u64,
    /// REST requests one core may hold waiting for other cores; more get 503 + Retry-After.
    pub rest_in_flight_max: usize,
    /// On SIGTERM: readiness goes false, then this long passes before connections are closed.
    pub drain_grace_ms: u64,
    /// Connections closed per second (with 4200) while draining, across all cores; also the
    /// pace of closing the clients of apps a reload disabled (4003) or removed (4001).
    pub drain_rate_per_s: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:6001".to_string(),
            cores: 0,
            pin_threads: true,
            activity_timeout_secs: 120,
            pong_timeout_secs: 30,
            request_timeout_ms: 10_000,
            http_head_bytes_max: 16 * 1024,
            http_body_bytes_max: 1024 * 1024,
            ws_message_bytes_max: 100 * 1024,
            ws_message_timeout_ms: 10_000,
            ws_partial_bytes_per_core_max: 64 * 1024 * 1024,
            outbound_bytes_max: 4 * 1024 * 1024,
            channel_name_bytes_max: 200,
            max_connections: 0,
            accepts_per_sec_max: 0,
            rest_in_flight_max: 1024,
            drain_grace_ms: 2_000,
            drain_rate_per_s: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "ringcast=debug"; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_payload_bytes_max() -> usize {
    10 * 1024
}
fn default_channels_per_trigger_max() -> usize {
    100
}
fn default_batch_size_max() -> usize {
    10
}
fn default_event_name_bytes_max() -> usize {
    200
}
fn default_user_authentication_timeout_ms() -> u64 {
    30_000
}
fn default_client_events_per_sec() -> u32 {
    10
}
fn default_presence_members_max() -> usize {
    100
}
fn default_presence_user_info_bytes_max() -> usize {
    1024
}
fn default_presence_user_id_bytes_max() -> usize {
    128
}
fn default_watchlist_max() -> usize {
    100
}
fn default_cache_ttl_secs() -> u64 {
    1800
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Connections for this app across all cores; 0 means unlimited.
    #[serde(default)]
    pub max_connections: u64,
    #[serde(default = "default_payload_bytes_max")]
    pub payload_bytes_max: usize,
    #[serde(default = "default_channels_per_trigger_max")]
    pub channels_per_trigger_max: usize,
    #[serde(default = "default_batch_size_max")]
    pub batch_size_max: usize,
    #[serde(default = "default_event_name_bytes_max")]
    pub event_name_bytes_max: usize,
    /// Relay `client-*` events between subscribers of private and presence channels.
    #[serde(default)]
    pub enable_client_events: bool,
    /// Client events one connection may send per second; more get `pusher:error` 4301.
    #[serde(default = "default_client_events_per_sec")]
    pub client_events_per_sec_max: u32,
    /// Require every connection to sign in (or join a private/presence channel) within
    /// `user_authentication_timeout_ms`, else close it with 4009.
    #[serde(default)]
    pub enable_user_authentication: bool,
    #[serde(default = "default_user_authentication_timeout_ms")]
    pub user_authentication_timeout_ms: u64,
    /// Send `pusher_internal:subscription_count` on subscribe/unsubscribe (not for presence).
    #[serde(default)]
    pub enable_subscription_count: bool,
    /// Send `pusher_internal:watchlist_events` to signed-in users with a watchlist.
    #[serde(default = "default_true")]
    pub enable_watchlist_events: bool,
    #[serde(default = "default_watchlist_max")]
    pub watchlist_max: usize,
    #[serde(default = "default_presence_members_max")]
    pub presence_members_max: usize,
    #[serde(default = "default_presence_user_info_bytes_max")]
    pub presence_user_info_bytes_max: usize,
    #[serde(default = "default_presence_user_id_bytes_max")]
    pub presence_user_id_bytes_max: usize,
    /// How long a cache channel keeps its last event.
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Origins allowed to open WebSocket connections (`Origin` header, exact match, or "*");
    /// empty allows every origin. Others are closed with 4009.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Webhook targets (`[[apps.webhooks]]`), spec §8.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Hold `channel_vacated` and `member_removed` webhooks this long; a `channel_occupied` (same
    /// channel) or `member_added` (same channel and user) meanwhile cancels both. 0 = send at
    /// once; Pusher waits up to 3000.
    #[serde(default)]
    pub webhook_removal_delay_ms: u64,
    /// Event frames carry `"seq"`, `subscription_succeeded` carries the channel's `"epoch"`
    /// and last `"seq"`, and a subscribe may carry `resume_after` (off: frames are exactly
    /// Pusher's).
    #[serde(default)]
    pub event_sequence: bool,
    /// What a REST publish of this app waits for with a standby (default: `[replication] ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckMode>,
}

/// One webhook target of an app.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebhookConfig {
    pub url: String,
    /// Event names to send (`channel_occupied`, `member_added`, ...); empty sends all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only events of channels whose name starts with this.
    #[serde(default)]
    pub channel_prefix: Option<String>,
    /// Extra request headers (they cannot replace the X-Pusher-* headers).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}
