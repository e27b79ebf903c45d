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
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    /// WebSocket and REST on one address.
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
    /// Bytes queued to one connection before it is closed as a slow consumer (4101).
    pub outbound_bytes_max: usize,
    pub channel_name_bytes_max: usize,
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
            outbound_bytes_max: 4 * 1024 * 1024,
            channel_name_bytes_max: 200,
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
}
