//! The operator's admin endpoint (issue 13): replication status and promotion over a small
//! HTTP/1.1 endpoint on an address of its own (`[admin] bind`, TCP or a unix socket), planned
//! switchover, and the client that `ringcast status|promote|switchover` use. It owns the `AdminBackend` seam
//! (what the replication code implements), the sans-IO routing and authorization (`route.rs`),
//! the listener thread (`server.rs`) and the client (`client.rs`).
//!
//! This is operational plumbing, not the client data path: it runs on one plain blocking
//! thread (`ringcast-admin`), one request per connection, never on the io_uring cores, and it
//! must not touch shard state; whatever it reports or changes goes through the backend.

pub mod client;
pub mod route;
mod server;

pub use route::{AdminRequest, AdminResponse, Head, handle, parse_head};
pub use server::{AdminServer, start};

/// What the admin endpoint asks of the node: implemented by the replication code, and by fakes
/// in tests. Called from the admin thread only, one request at a time.
pub trait AdminBackend: Send + Sync + 'static {
    /// GET /replication
    fn replication(&self) -> serde_json::Value;
    /// POST /replication/promote (force from `?force=true`)
    fn promote(&self, force: bool) -> Result<serde_json::Value, AdminError>;
    /// POST /replication/switchover (planned switchover, on the primary). Refused by default.
    ///
    /// # Errors
    ///
    /// The refusal to answer (409: not a primary with an in-sync standby, or one is running;
    /// 503: given up, with why).
    fn switchover(&self) -> Result<serde_json::Value, AdminError> {
        Err(AdminError::new(409, "switchover is not supported here"))
    }
}

/// A refusal from the backend: the HTTP status to answer (a 4xx or 5xx; anything else is
/// answered 500) and the message, sent as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub status: u16,
    pub message: String,
}

impl AdminError {
    pub fn new(status: u16, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for AdminError {}
