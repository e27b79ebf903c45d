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

/// Messages a core's outbox holds for one destination at most. Admission keeps ordinary
/// traffic under `MESH_BACKLOG_MAX` (REST publishes are refused at the sender, fan-outs at the
/// owner); the rest (subscription and query answers) is bounded by requests in flight. A
/// destination that has not taken this many messages is a stuck core: the process stops (the
/// watchdog would too) rather than grow without bound.
pub const MESH_OUTBOX_MAX: usize = 16 * MESH_BACKLOG_MAX;

/// Mesh messages a core takes from one source core per loop iteration, so one busy peer cannot
/// starve the sockets.
pub const MESH_BATCH_MAX: usize = 4096;
/// Polls of the mesh before a core parks (each a few atomic loads, about 1-2 µs in all per 100):
/// waking a parked vCPU costs tens of µs.
pub const SPIN_BEFORE_PARK: u32 = 2048;
/// Idle send operations a core keeps for reuse (each holds `SEND_IOVECS_MAX` iovecs and room for
/// as many frames); a connect burst's extra ones are freed.
pub const SEND_POOL_MAX: usize = 256;

/// Webhook events waiting for the worker, per core (a full queue drops the event, counted).
pub const WEBHOOK_QUEUE_DEPTH: usize = 8 * 1024;
/// A webhook batch stops taking events once its body would pass this (a larger event alone
/// still goes, in a batch of its own).
pub const WEBHOOK_BATCH_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Webhook events the worker takes from one core's queue per loop iteration (so outcomes are
/// not starved).
pub const WEBHOOK_DRAIN_PER_CORE_MAX: usize = 16 * 1024;
/// The longest the webhook worker sleeps before looking at the core queues again.
pub const WEBHOOK_POLL_MAX_MS: u64 = 10;
/// Webhook response bodies are read (so the connection can be reused) up to this, then ignored.
pub const WEBHOOK_RESPONSE_BYTES_MAX: u64 = 64 * 1024;
/// How often the durable webhook outbox looks for WAL segments to remove.
pub const WEBHOOK_WAL_RETAIN_INTERVAL_MS: u64 = 1_000;
/// Ceiling for `apps[].webhook_removal_delay_ms`.
pub const WEBHOOK_REMOVAL_DELAY_MS_MAX: usize = 60_000;
/// Ceiling for `webhooks.outbox_max` (events held in memory).
pub const WEBHOOK_OUTBOX_MAX: usize = 10_000_000;

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
/// Ceiling for the configurable bytes held by unfinished WebSocket messages on one core.
pub const WS_PARTIAL_BYTES_PER_CORE_CEILING: usize = 4 * 1024 * 1024 * 1024;
/// Ceiling for the configurable HTTP request head size.
pub const HTTP_HEAD_BYTES_CEILING: usize = 1024 * 1024;
/// Ceiling for the configurable HTTP request body size.
pub const HTTP_BODY_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// Headers in one HTTP request.
pub const HTTP_HEADERS_MAX: usize = 64;
/// Longest chunk-size line (size plus extensions) accepted. Extensions are ignored, so a long
/// line can only be an attempt to make us buffer framing that is not body.
pub const HTTP_CHUNK_SIZE_LINE_BYTES_MAX: usize = 1024;
/// Ceiling for the configurable per-connection outbound queue.
pub const OUTBOUND_BYTES_CEILING: usize = 256 * 1024 * 1024;

/// Channels one connection may be subscribed to at once, pending ones and a signed-in
/// connection's `#server-to-user-{id}` included; one more gets `pusher:subscription_error`
/// (`LimitReached`, 4009) and the connection stays open. Hosted Pusher has no such limit.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;
/// REST queries (channel listings) one core may have waiting for other cores' answers.
pub const PENDING_QUERIES_PER_CORE_MAX: usize = 4096;

/// Ceiling for `history.events_per_channel_max`.
pub const HISTORY_EVENTS_PER_CHANNEL_CEILING: usize = 100_000;
/// Ceiling for `history.age_secs_max` (one day).
pub const HISTORY_AGE_SECS_CEILING: usize = 24 * 3600;
/// Ceiling for `history.bytes_max` (all channels together).
pub const HISTORY_BYTES_CEILING: usize = 64 * 1024 * 1024 * 1024;
/// At start, how long a fixed port still in use is tried again before giving up: the listener of
/// a killed predecessor lingers until the kernel's teardown of its io_uring (about 10 ms).
pub const PORT_RELEASE_WAIT_MS: u64 = 1_000;
/// After a restart (or a promotion), presence members and channel positions restored from the
/// WAL are kept this long for their clients to come back: a member who re-subscribes is
/// reconfirmed silently, the others are removed when it ends.
pub const RESTORED_STATE_GRACE_MS: u64 = 30_000;
/// Publish acknowledgements one core holds waiting for the WAL: one per REST request in flight
/// on any core (each waits for at most one barrier per owner).
pub const PENDING_ACKS_PER_CORE_MAX: usize = CORES_MAX * PENDING_QUERIES_PER_CORE_MAX;
/// The owner's rarer housekeeping (cache and history expiry) runs every this many sweeps.
pub const OWNER_HOUSEKEEPING_SWEEPS: u64 = 10;

/// Events in one page of the REST history API (`limit`).
pub const HISTORY_PAGE_EVENTS_MAX: usize = 1000;

/// Apps in one process.
pub const APPS_MAX: usize = 10_000;

/// How often each core runs its timer sweep (activity timeouts, slow requests).
pub const TIMER_SWEEP_INTERVAL_MS: u64 = 100;

/// A core loop that has not run for this long is stuck: `/healthz` answers 503 and the systemd
/// watchdog ping is withheld (or half the watchdog interval, when that is shorter).
pub const CORE_LOOP_STALL_MS: u64 = 2_000;

/// How long a closing connection may linger for the peer's close before the socket is reset.
pub const CLOSE_LINGER_MS: u64 = 2_000;

/// Request line and headers of one request on the metrics port.
pub const METRICS_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client of the metrics port has to send its request.
pub const METRICS_REQUEST_READ_TIMEOUT_MS: u64 = 2_000;

/// Request line and headers of one request on the admin endpoint; more is answered 431.
pub const ADMIN_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Body of one admin request (no route reads one; it is read and dropped); more is 413.
pub const ADMIN_REQUEST_BODY_BYTES_MAX: usize = 4 * 1024;
/// Time a client of the admin endpoint has to send its whole request (not per read).
pub const ADMIN_REQUEST_READ_TIMEOUT_MS: u64 = 2_000;
/// Time the admin endpoint waits for a client to take its response.
pub const ADMIN_RESPONSE_WRITE_TIMEOUT_MS: u64 = 2_000;
/// How long the idle admin thread sleeps between accept attempts (and so how long `stop` may
/// wait for it).
pub const ADMIN_ACCEPT_POLL_MS: u64 = 50;
/// Bytes of `admin.token` (it travels in one header).
pub const ADMIN_TOKEN_BYTES_MAX: usize = 1024;
/// Bytes of a unix socket path for the admin endpoint (`sun_path` holds 108 with its NUL).
pub const ADMIN_UNIX_PATH_BYTES_MAX: usize = 107;
/// Response the `ringcast status|promote` client reads at most (head and body).
pub const ADMIN_CLIENT_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Time the `ringcast status|promote` client gives the connect, and then each read and write.
pub const ADMIN_CLIENT_TIMEOUT_MS: u64 = 30_000;

/// Reloads waiting for one core at most (a newer one supersedes the older ones).
pub const RELOADS_QUEUED_MAX: usize = 4;

/// How often the control thread wakes (signals, watchdog, status, drain progress).
pub const CONTROL_TICK_MS: u64 = 50;
/// How often systemd's `STATUS=` is refreshed.
pub const STATUS_INTERVAL_MS: u64 = 1_000;
/// After the last connection closed in a drain, the mesh must stay empty this long before the
/// cores stop (the owners' last unsubscribes and their webhooks may still be in flight).
pub const DRAIN_MESH_SETTLE_MS: u64 = 200;
/// Extra time a drain may take beyond its computed schedule before the process exits anyway.
pub const DRAIN_SLACK_MS: u64 = 5_000;
/// After the cores stop, the webhook worker sends what it still holds for at most this long.
pub const WEBHOOK_FLUSH_MS: u64 = 2_000;

/// REST request timestamps are accepted within this many seconds of server time (spec §7.2).
pub const REST_TIMESTAMP_WINDOW_SECS: u64 = 600;
/// Largest write-ahead log record, header included. A reader treats a larger length as damage
/// and never allocates for it. Sized for the largest publish (its data is part of one REST
/// body) plus the record's own fields, and for a webhook batch of one escaped client event.
pub const WAL_RECORD_BYTES_MAX: usize = HTTP_BODY_BYTES_CEILING + WAL_RECORD_OVERHEAD_BYTES;
/// Room in `WAL_RECORD_BYTES_MAX` for everything in a record but the largest string: the
/// header, app id, channel and event names, user id, webhook URL, key, signature and headers.
pub const WAL_RECORD_OVERHEAD_BYTES: usize = 1024 * 1024;
/// Bytes a WAL writer buffers between two writes. One loop tick's records are written with one
/// call (group commit); a tick that appends more writes what it has early (no sync) and goes on.
pub const WAL_TICK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Smallest configurable segment (`storage.segment_bytes`).
pub const WAL_SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest configurable segment.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Largest segment file a reader accepts: a full segment, or a segment of its own holding one
/// record larger than the configured size, plus its header. Larger files are damage.
pub const WAL_SEGMENT_FILE_BYTES_MAX: u64 =
    WAL_SEGMENT_BYTES_MAX + WAL_RECORD_BYTES_MAX as u64 + WAL_SEGMENT_HEADER_BYTES_MAX;
/// Room kept for a segment's own header in `WAL_SEGMENT_FILE_BYTES_MAX`.
pub const WAL_SEGMENT_HEADER_BYTES_MAX: u64 = 4096;
/// Segment files one stream directory may hold (a reader refuses a directory with more).
pub const WAL_SEGMENTS_PER_STREAM_MAX: usize = 100_000;
/// Longest stream name (`core-255`, `webhooks`); it is stored in every segment header.
pub const WAL_STREAM_NAME_BYTES_MAX: usize = 32;
// Replication (the hot standby).
/// Shortest `[replication] secret`.
pub const REPL_SECRET_BYTES_MIN: usize = 16;
/// Heartbeats on the replication link, both ways.
pub const REPL_HEARTBEAT_MS: u64 = 100;
/// Longest `standby_timeout_ms`.
pub const REPL_STANDBY_TIMEOUT_MS_MAX: u64 = 60_000;
/// Record batches waiting on a standby core's inbound queue (the receiver waits when full).
pub const REPL_CORE_QUEUE_DEPTH: usize = 256;
/// Bytes of WAL records the primary reads and sends per batch.
pub const REPL_SEND_BATCH_BYTES: usize = 256 * 1024;
/// A replication session ends after this much silence, or after `standby_timeout_ms` when that
/// is longer. The standby counts as lost after `standby_timeout_ms` whatever the session does
/// (`heard_ms`); keeping the TCP connection through a shorter silence lets it go on where it
/// was once packets flow again. Ending it sooner, under packet loss, meant a new connection
/// whose handshake (a fresh 1 s TCP retransmission timeout) failed again and again.
pub const REPL_SESSION_SILENCE_MS_MIN: u64 = 5_000;
/// Connect, handshake and write timeout on the replication link.
pub const REPL_IO_TIMEOUT_MS: u64 = 2_000;
/// A standby redials the primary this often while disconnected.
pub const REPL_REDIAL_MS: u64 = 200;
/// How long a standby waits for its cores to carry out a promotion.
pub const REPL_PROMOTE_WAIT_MS: u64 = 5_000;
/// Planned switchover (`ringcast switchover`): how long the frozen primary waits for every
/// core to see the freeze and the standby to reach lag 0 (then it unfreezes and gives up).
pub const SWITCHOVER_CATCH_UP_MS: u64 = 2_000;
/// Planned switchover: how long the old primary waits, after its lease release (with a
/// witness) or its `Handover`, for the standby's `Promoted` (then it steps down anyway,
/// refusing publishes, and reports it).
pub const SWITCHOVER_HANDOVER_MS: u64 = 2_000;
/// Planned switchover: the old primary's WebSocket clients are closed (4200) spread over this
/// many ms, so they do not all reconnect to the new primary in one instant.
pub const SWITCHOVER_MOVE_CLIENTS_MS: u64 = 1_000;
/// Planned switchover: after the move, how long the old primary waits more before it follows
/// the new primary (the closes' own records are written by then).
pub const SWITCHOVER_FOLLOW_SLACK_MS: u64 = 300;
/// Batches per stream the primary keeps a send time for until the standby acknowledges them
/// (the lag histogram); a batch sent while this many wait is not measured.
pub const REPL_LAG_BATCHES_MAX: usize = 4_096;
/// The zeros written per call when a segment is zero-filled (`fsync = "always"`).
pub const WAL_ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;
/// While the disk is full, a writer tries to create its next segment at most this often.
pub const WAL_SPACE_RETRY_MS: u64 = 1_000;
/// Longest configurable `storage.fsync_interval_ms`.
pub const WAL_FSYNC_INTERVAL_MS_MAX: u64 = 1_000;
/// Longest configurable `storage.retain_secs` (30 days).
pub const WAL_RETAIN_SECS_MAX: u64 = 30 * 24 * 3600;
/// Extra headers one `WebhookEnqueued` record may carry (a reader refuses more).
pub const WAL_WEBHOOK_HEADERS_MAX: usize = 256;
/// Damaged ranges one salvaging scan lists individually (more are only counted).
pub const WAL_SALVAGE_REPORTS_MAX: usize = 1024;
/// Bytes a WAL tail (the replication reader of a stream being written) reads per call from a
/// segment. A record larger than this is read alone, with one read of its own length.
pub const WAL_TAIL_READ_BYTES: usize = 64 * 1024;
/// Accept failures (at the descriptor limit they repeat at every sweep) are logged at most once
/// per this long per core; the ones in between are counted, and the next line says how many.
pub const ACCEPT_ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// Owner messages one core holds for the standby at most (`shard::gate`): a standby this far
/// behind while still counted present lets the oldest go early.
pub const REPLICA_HELD_MESSAGES_MAX: usize = 64 * 1024;
// Automatic failover with a witness (`failover`).
/// Shortest `lease_ms` a `failover::LeaseConfig` accepts.
pub const FAILOVER_LEASE_MS_MIN: u64 = 10;
/// Longest `lease_ms` (and `failover_after_ms`) a `failover::LeaseConfig` accepts.
pub const FAILOVER_LEASE_MS_MAX: u64 = 60_000;
/// Largest drift margin, in percent of the lease.
pub const FAILOVER_DRIFT_MARGIN_PCT_MAX: u64 = 50;
/// Unanswered witness requests whose send times a node remembers (older answers are ignored).
pub const FAILOVER_PENDING_MAX: usize = 16;
/// Longest node↔witness frame (after its length prefix): type, node name, tag, four integers,
/// MAC.
pub const WITNESS_FRAME_BYTES_MAX: usize = 256;
/// A node's failover thread steps its state machine at least this often (well under the
/// renewal interval, so a lost lease or a silent primary is noticed within it).
pub const FAILOVER_TICK_MS: u64 = 10;
/// The witness process wakes at least this often to notice it should stop.
pub const WITNESS_POLL_MS: u64 = 200;
/// Longest witness record file (`epoch node\n`); a longer one is refused, not guessed at.
pub const WITNESS_RECORD_BYTES_MAX: usize = 20 + 1 + REPL_NAME_BYTES_MAX + 1;

/// Streams one replication session carries at most: one per core (`core-0`..) plus `webhooks`.
pub const REPL_STREAMS_MAX: usize = CORES_MAX + 1;
/// Longest cluster name, node id or binary version string in a replication message.
pub const REPL_NAME_BYTES_MAX: usize = 128;
/// Longest human-readable reason in a replication `Refuse`.
pub const REPL_REASON_BYTES_MAX: usize = 1024;
/// Longest frame (type byte and payload, not the length prefix) of any replication message but
/// `Records`: the handshake messages with `REPL_STREAMS_MAX` streams, with room to spare.
pub const REPL_CONTROL_FRAME_BYTES_MAX: usize = 64 * 1024;
/// Encoded WAL records a primary puts in one `Records` message when it holds more than one: it
/// adds records while the batch stays within this; a single larger record goes alone.
pub const REPL_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Room in `REPL_FRAME_BYTES_MAX` for the type byte and the `Records` fields around the records.
pub const REPL_FRAME_OVERHEAD_BYTES: usize = 64;
/// Longest replication frame (type byte and payload, not the length prefix): a `Records`
/// message holding one record of `WAL_RECORD_BYTES_MAX`. A longer length is refused before
/// anything is buffered for it.
pub const REPL_FRAME_BYTES_MAX: usize = WAL_RECORD_BYTES_MAX + REPL_FRAME_OVERHEAD_BYTES;
/// Bytes a replication reader pushes into the decoder at once at most: with that, a decoder
/// drained of whole messages always has room for one more read.
pub const REPL_READ_BYTES_MAX: usize = 64 * 1024;
/// Bytes one replication decoder buffers at most: one unfinished frame with its length prefix,
/// plus one read.
pub const REPL_DECODER_BUFFER_BYTES_MAX: usize = 4 + REPL_FRAME_BYTES_MAX + REPL_READ_BYTES_MAX;

// A request head carries the token in one header, with room to spare.
const _: () = assert!(ADMIN_REQUEST_HEAD_BYTES_MAX >= 2 * ADMIN_TOKEN_BYTES_MAX);
// `stop` stays prompt: the thread looks at its stop flag many times per request timeout.
const _: () = assert!(ADMIN_ACCEPT_POLL_MS * 10 <= ADMIN_REQUEST_READ_TIMEOUT_MS);
/// Default `tls.handshake_timeout_ms`: a client that has not finished its TLS handshake this
/// long after its connection was accepted is closed (counted as a `timeout` handshake).
pub const TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest configurable `tls.handshake_timeout_ms`.
pub const TLS_HANDSHAKE_TIMEOUT_MS_MAX: u64 = 60_000;
/// TLS handshakes in flight on one core (the default and the ceiling of
/// `tls.handshakes_per_core_max`): a handshake costs a key exchange and a signature, and a
/// flood of new clients must not starve the established ones; past it, new TLS clients are
/// closed at once (counted as `refused`).
pub const TLS_HANDSHAKES_PER_CORE_MAX: usize = 1024;
/// Plaintext bytes encrypted into one send of a TLS connection (a few 16 KB records); the rest
/// of its queue waits for the next send, so one connection's backlog is not encrypted at once.
pub const TLS_SEND_PLAINTEXT_BYTES_MAX: usize = 64 * 1024;
/// Plaintext bytes in one TLS record at most (the protocol's limit).
pub const TLS_RECORD_PLAINTEXT_BYTES: usize = 16 * 1024;
/// Bytes a TLS record adds to its plaintext at most, with room to spare (TLS 1.3: header 5,
/// content type 1, AEAD tag 16; TLS 1.2 AES-GCM: header 5, explicit nonce 8, tag 16).
pub const TLS_RECORD_OVERHEAD_BYTES: usize = 64;
/// Received TLS bytes kept for one connection while they are not a whole record yet (or a
/// handshake message spanning records, which rustls caps at 64 KB): past it the session fails.
pub const TLS_PARTIAL_RECORD_BYTES_MAX: usize = 64 * 1024 + TLS_RECORD_PLAINTEXT_BYTES + 2048;
/// Records rustls may queue before it lets a connection write (a key update answer, tickets):
/// more means something is wrong and the connection is closed.
pub const TLS_STEPS_BEFORE_WRITE_MAX: usize = 16;
/// Alert records flushed after a session failed, at most.
pub const TLS_ALERTS_AFTER_FAILURE_MAX: usize = 4;
/// Certificates one `tls.cert` file may hold (a leaf and its intermediates).
pub const TLS_CHAIN_CERTS_MAX: usize = 16;
/// Largest `tls.cert` or `tls.key` file read (PEM text).
pub const TLS_PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

const _: () = assert!(RECV_BUFFERS_PER_CORE.is_power_of_two());
const _: () = assert!(MESH_QUEUE_DEPTH.is_power_of_two());
const _: () = assert!(MESH_BACKLOG_MAX >= MESH_QUEUE_DEPTH);
const _: () = assert!(MESH_OUTBOX_MAX >= 4 * MESH_BACKLOG_MAX);
// One iteration takes at most what one queue holds; taking more would only spin.
const _: () = assert!(MESH_BATCH_MAX <= MESH_QUEUE_DEPTH);
// The worker drains a core's whole queue in at most a couple of iterations.
const _: () = assert!(WEBHOOK_DRAIN_PER_CORE_MAX >= WEBHOOK_QUEUE_DEPTH);
const _: () = assert!(SEND_IOVECS_MAX <= 1024, "IOV_MAX on Linux");
const _: () = assert!(RECV_BUFFER_BYTES >= 4096);
// Liveness is judged from heartbeats written once per loop iteration, and an idle loop wakes at
// least once per sweep: a healthy idle core must never look stuck.
// The control thread must look at the cores several times per stall period.
const _: () = assert!(CONTROL_TICK_MS * 4 <= CORE_LOOP_STALL_MS);
const _: () = assert!(CORE_LOOP_STALL_MS >= 10 * TIMER_SWEEP_INTERVAL_MS);
const _: () = assert!(WS_PARTIAL_BYTES_PER_CORE_CEILING >= 2 * WS_MESSAGE_BYTES_CEILING);
// A record's length is a u32 on disk.
const _: () = assert!(WAL_RECORD_BYTES_MAX <= u32::MAX as usize);
// The largest publish: a REST body's data plus names that config validation caps far below
// the overhead (channel names 1 KiB, event names 10 KB, one socket id, one user id).
const _: () = assert!(WAL_RECORD_BYTES_MAX >= HTTP_BODY_BYTES_CEILING + 64 * 1024);
// A webhook batch holding one client event: its data JSON-escaped (at most twice as long).
const _: () = assert!(WAL_RECORD_BYTES_MAX >= 2 * WS_MESSAGE_BYTES_CEILING + 64 * 1024);
const _: () = assert!(WAL_SEGMENT_BYTES_MIN < WAL_SEGMENT_BYTES_MAX);
// A tail's read holds at least a segment header and a record header.
const _: () = assert!(WAL_TAIL_READ_BYTES >= 4096 && WAL_TAIL_READ_BYTES <= WAL_RECORD_BYTES_MAX);
// A segment file is read whole into memory on a 64-bit host.
const _: () = assert!(WAL_SEGMENT_FILE_BYTES_MAX <= isize::MAX as u64);
// One tick's buffer is written into a segment; a tick never needs a segment of its own.
const _: () = assert!(WAL_TICK_BYTES_MAX as u64 <= WAL_SEGMENT_BYTES_MAX);
// Replication: one WAL record always fits in one `Records` frame, and so does a whole batch.
const _: () = assert!(REPL_FRAME_BYTES_MAX >= WAL_RECORD_BYTES_MAX + REPL_FRAME_OVERHEAD_BYTES);
const _: () = assert!(REPL_FRAME_BYTES_MAX >= REPL_BATCH_BYTES_MAX + REPL_FRAME_OVERHEAD_BYTES);
// A frame's length is a u32 on the wire, and the decoder's buffer is addressable.
const _: () = assert!(REPL_DECODER_BUFFER_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(REPL_CONTROL_FRAME_BYTES_MAX < REPL_FRAME_BYTES_MAX);
// Counts and string lengths are u16 on the wire.
const _: () = assert!(REPL_STREAMS_MAX <= u16::MAX as usize);
const _: () = assert!(REPL_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(REPL_REASON_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(WAL_STREAM_NAME_BYTES_MAX <= u16::MAX as usize);
// A TLS record holds at most 16 KB of plaintext: one send carries at least a full record.
const _: () = assert!(TLS_SEND_PLAINTEXT_BYTES_MAX >= 16 * 1024);
const _: () = assert!(TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT <= TLS_HANDSHAKE_TIMEOUT_MS_MAX);
