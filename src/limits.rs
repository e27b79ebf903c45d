//! Every compile-time bound of the process in one place (the TigerBeetle/nats habit): queue
//! depths, buffer sizes, table sizes and ceilings for configurable limits. Each has one line on
//! what it bounds; relations between them are checked at compile time at the bottom. Nothing here
//! allocates or decides policy; config values are validated against these ceilings.

/// Most cores (event-loop threads) one process runs.
pub const CORES_MAX: usize = 256;

/// Messages in flight on one directed core-to-core queue before the sender backs off.
pub const MESH_QUEUE_DEPTH: usize = 4 * 1024;
/// Messages a core keeps for one destination core while that destination's queue is full. Past
/// this, new work that would add to it (REST publishes) is refused with 503 + Retry-After.
pub const MESH_BACKLOG_MAX: usize = 64 * 1024;

/// Connections one core holds at most (also bounded by config and the file limit).
pub const CONNECTIONS_PER_CORE_MAX: usize = 1 << 20;

/// Provided receive buffers per core (shared by all of the core's connections).
pub const RECV_BUFFERS_PER_CORE: u16 = 512;
/// Size of one provided receive buffer.
pub const RECV_BUFFER_BYTES: usize = 4 * 1024;

/// Frames handed to the kernel in one send call for one connection.
pub const SEND_IOVECS_MAX: usize = 32;

/// Submission queue entries of each core's ring.
pub const RING_ENTRIES: u32 = 4096;

/// Descriptors the process's table is sized for at start (at most the descriptor limit); past
/// it the kernel grows the table as usual, doubling, with a short stall each time.
pub const DESCRIPTOR_TABLE_PRESIZE: u64 = 65_536;

/// Ceiling for the configurable WebSocket message size.
pub const WS_MESSAGE_BYTES_CEILING: usize = 16 * 1024 * 1024;
/// Ceiling for the configurable HTTP request head size.
pub const HTTP_HEAD_BYTES_CEILING: usize = 1024 * 1024;
/// Ceiling for the configurable HTTP request body size.
pub const HTTP_BODY_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// Headers in one HTTP request.
pub const HTTP_HEADERS_MAX: usize = 64;
/// Ceiling for the configurable per-connection outbound queue.
pub const OUTBOUND_BYTES_CEILING: usize = 256 * 1024 * 1024;

/// Channels one connection may be subscribed to at once.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;
/// REST queries (channel listings) one core may have waiting for other cores' answers.
pub const PENDING_QUERIES_PER_CORE_MAX: usize = 4096;

/// Apps in one process.
pub const APPS_MAX: usize = 10_000;

/// How often each core runs its timer sweep (activity timeouts, slow requests).
pub const TIMER_SWEEP_INTERVAL_MS: u64 = 100;

/// Accept failures (at the descriptor limit they repeat at every sweep) are logged at most once
/// per this long per core; the ones in between are counted, and the next line says how many.
pub const ACCEPT_ERROR_LOG_INTERVAL_MS: u64 = 10_000;

const _: () = assert!(RECV_BUFFERS_PER_CORE.is_power_of_two());
const _: () = assert!(MESH_QUEUE_DEPTH.is_power_of_two());
const _: () = assert!(MESH_BACKLOG_MAX >= MESH_QUEUE_DEPTH);
const _: () = assert!(SEND_IOVECS_MAX <= 1024, "IOV_MAX on Linux");
const _: () = assert!(RECV_BUFFER_BYTES >= 4096);
