//! Metrics: per-core counters written only by their own core (relaxed atomics, no contention),
//! and a Prometheus collector that reads them on scrape. Names follow soketi's where they
//! overlap (`*_connected`, `*_new_connections_total`, `*_ws_messages_sent_total`, ...) with a
//! `ringcast_` prefix. This file lists every metric name; nothing here does IO.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::control::Control;
use crate::mesh::Mesh;
use crate::webhook::{DELIVERY_LATENCY_BUCKETS, WebhookStats};

/// Close codes counted individually; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 16] = [
    1000, 1001, 1002, 1006, 1007, 1009, 4001, 4003, 4004, 4005, 4007, 4009, 4100, 4101, 4200, 4201,
];

/// REST endpoints counted individually.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Events,
    BatchEvents,
    Channels,
    Channel,
    Users,
    History,
    TerminateConnections,
    Health,
    Upgrade,
    Other,
}

pub const ENDPOINTS: [(Endpoint, &str); 10] = [
    (Endpoint::Events, "events"),
    (Endpoint::BatchEvents, "batch_events"),
    (Endpoint::Channels, "channels"),
    (Endpoint::Channel, "channel"),
    (Endpoint::Users, "users"),
    (Endpoint::History, "history"),
    (Endpoint::TerminateConnections, "terminate_connections"),
    (Endpoint::Health, "health"),
    (Endpoint::Upgrade, "upgrade"),
    (Endpoint::Other, "other"),
];

/// Statuses counted individually: every status the server answers with (the request parser,
/// the upgrade, the REST API, the request timeout). "other" is only a safety net.
pub const STATUSES: [u16; 14] = [
    101, 200, 400, 401, 403, 404, 405, 408, 413, 426, 431, 501, 503, 505,
];

/// Why a connection or request was turned away.
pub const REJECTIONS: [&str; 14] = [
    "over_capacity",
    "accept_rate",
    "app_quota",
    "origin",
    "draining",
    "rest_in_flight",
    "mesh_backlog",
    "storage_full",
    "request_timeout",
    "descriptor_limit",
    "standby_unavailable",
    "standby_role",
    "no_lease",
    "switchover",
];
pub const REJECT_OVER_CAPACITY: usize = 0;
pub const REJECT_ACCEPT_RATE: usize = 1;
pub const REJECT_APP_QUOTA: usize = 2;
pub const REJECT_ORIGIN: usize = 3;
pub const REJECT_DRAINING: usize = 4;
pub const REJECT_REST_IN_FLIGHT: usize = 5;
pub const REJECT_MESH_BACKLOG: usize = 6;
/// A publish refused because the WAL's disk is full.
pub const REJECT_STORAGE_FULL: usize = 7;
/// A request not complete within `request_timeout_ms` (a slow or stalled client: slowloris).
pub const REJECT_REQUEST_TIMEOUT: usize = 8;
/// A connection accepted on the spare descriptor at the process's descriptor limit.
pub const REJECT_DESCRIPTOR_LIMIT: usize = 9;
/// A publish refused because its app needs the standby, which is unavailable
/// (`on_standby_loss = "reject"`).
pub const REJECT_STANDBY_UNAVAILABLE: usize = 10;
/// A client request or upgrade refused because this node is a standby.
pub const REJECT_STANDBY_ROLE: usize = 11;
/// A publish refused because this primary cannot prove its lease at the witness.
pub const REJECT_NO_LEASE: usize = 12;
/// A publish refused because a planned switchover froze publishes on this node.
pub const REJECT_SWITCHOVER: usize = 13;

/// Why an accept failed: the process's descriptor limit, the system's, memory, anything else.
pub const ACCEPT_ERRORS: [&str; 4] = ["emfile", "enfile", "enomem", "other"];

/// How a TLS handshake ended: finished, failed (garbage instead of a ClientHello, no common
/// version or cipher, a bad record), timed out (`tls.handshake_timeout_ms`), refused at accept
/// (`tls.handshakes_per_core_max` in flight), or closed by the peer before it finished.
pub const TLS_OUTCOMES: [&str; 5] = ["ok", "failed", "timeout", "refused", "closed"];
pub const TLS_OK: usize = 0;
pub const TLS_FAILED: usize = 1;
pub const TLS_TIMEOUT: usize = 2;
pub const TLS_REFUSED: usize = 3;
pub const TLS_CLOSED: usize = 4;

/// Upper bounds (seconds) of the publish→write latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One core's metrics. Only that core writes them.
#[derive(Debug)]
pub struct CoreMetrics {
    pub connected: AtomicU64,
    pub new_connections: AtomicU64,
    pub new_disconnections: AtomicU64,
    /// Index = position in `CLOSE_CODES`, last = other.
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
    pub ws_messages_received: AtomicU64,
    pub ws_messages_sent: AtomicU64,
    pub socket_received_bytes: AtomicU64,
    pub socket_transmitted_bytes: AtomicU64,
    /// Index = endpoint * (STATUSES + 1) + status position (last = other).
    pub http_calls: [AtomicU64; ENDPOINTS.len() * (STATUSES.len() + 1)],
    pub slow_consumer_closes: AtomicU64,
    pub rejected: [AtomicU64; REJECTIONS.len()],
    /// Failed accepts, by `ACCEPT_ERRORS` reason (written by the core's driver).
    pub accept_errors: [AtomicU64; ACCEPT_ERRORS.len()],
    /// Cumulative bucket counts are computed on scrape; these are per-bucket (last = +Inf).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub latency_sum_us: AtomicU64,
    pub latency_count: AtomicU64,
    /// Longest loop iteration since the last scrape, in µs.
    pub loop_iteration_max_us: AtomicU64,
    /// This core's WAL stream, as of its last upkeep: `WAL_GAUGES` order.
    pub wal: [AtomicU64; WAL_GAUGES.len()],
    /// TLS handshakes by `TLS_OUTCOMES` outcome.
    pub tls_handshakes: [AtomicU64; TLS_OUTCOMES.len()],
    /// TLS connections open on this core (handshaking or not).
    pub tls_connected: AtomicU64,
}

/// The WAL gauges each core publishes (`CoreMetrics::wal`), with their help text.
pub const WAL_GAUGES: [(&str, &str); 6] = [
    (
        "ringcast_wal_appended_lsn",
        "Last WAL record appended, per core stream",
    ),
    (
        "ringcast_wal_written_lsn",
        "Last WAL record written to the file, per core stream",
    ),
    (
        "ringcast_wal_synced_lsn",
        "Last WAL record fsynced, per core stream",
    ),
    (
        "ringcast_wal_bytes",
        "Bytes of WAL segments on disk, per core stream",
    ),
    (
        "ringcast_wal_segments",
        "WAL segment files on disk, per core stream",
    ),
    (
        "ringcast_wal_storage_full",
        "1 while the WAL disk is full and publishes are refused, per core stream",
    ),
];

impl CoreMetrics {
    fn new() -> CoreMetrics {
        CoreMetrics {
            connected: AtomicU64::new(0),
            new_connections: AtomicU64::new(0),
            new_disconnections: AtomicU64::new(0),
            closes: counters(),
            ws_messages_received: AtomicU64::new(0),
            ws_messages_sent: AtomicU64::new(0),
            socket_received_bytes: AtomicU64::new(0),
            socket_transmitted_bytes: AtomicU64::new(0),
            http_calls: counters(),
            slow_consumer_closes: AtomicU64::new(0),
            rejected: counters(),
            accept_errors: counters(),
            latency_buckets: counters(),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            loop_iteration_max_us: AtomicU64::new(0),
            wal: counters(),
            tls_handshakes: counters(),
            tls_connected: AtomicU64::new(0),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn close(&self, code: u16) {
        let index = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        Self::add(&self.closes[index], 1);
    }

    pub fn http_call(&self, endpoint: Endpoint, status: u16) {
        let endpoint = ENDPOINTS
            .iter()
            .position(|(e, _)| *e == endpoint)
            .expect("listed");
        let status = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        Self::add(
            &self.http_calls[endpoint * (STATUSES.len() + 1) + status],
            1,
        );
    }

    pub fn reject(&self, reason: usize) {
        Self::add(&self.rejected[reason], 1);
    }

    /// Counts one failed accept by its errno (positive, e.g. `libc::EMFILE`).
    pub fn accept_error(&self, errno: i32) {
        let reason = match errno {
            libc::EMFILE => 0,
            libc::ENFILE => 1,
            libc::ENOMEM | libc::ENOBUFS => 2,
            _ => 3,
        };
        Self::add(&self.accept_errors[reason], 1);
    }

    /// Records `count` deliveries that waited `latency_us` from publish to write.
    pub fn latency(&self, latency_us: u64, count: u64) {
        let seconds = latency_us as f64 / 1e6;
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        Self::add(&self.latency_buckets[index], count);
        Self::add(&self.latency_sum_us, latency_us * count);
        Self::add(&self.latency_count, count);
    }

    pub fn loop_iteration(&self, micros: u64) {
        self.loop_iteration_max_us
            .fetch_max(micros, Ordering::Relaxed);
    }
}

/// Process-wide metrics: every core's, plus the few the control thread keeps.
#[derive(Debug)]
pub struct Metrics {
    pub cores: Box<[CoreMetrics]>,
    pub config_unknown_keys: AtomicU64,
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// The TLS certificate's `notAfter` (Unix seconds; 0 without TLS), written by the control
    /// thread at start and at each reload that changed the certificate.
    pub tls_certificate_not_after: AtomicU64,
    /// Certificate reloads (SIGHUP) that were rejected, the running pair being kept.
    pub tls_reload_failures: AtomicU64,
    /// Webhook delivery, written by the webhook worker (`webhook::WebhookWorker`).
    pub webhooks: Arc<WebhookStats>,
    control: Arc<Control>,
    mesh: Arc<Mesh>,
    /// The hot standby's state, when `[replication]` is on (set once at start).
    pub replica: std::sync::OnceLock<Arc<crate::replica::ReplicaShared>>,
}

impl Metrics {
    pub fn new(control: Arc<Control>, mesh: Arc<Mesh>) -> Metrics {
        Metrics {
            cores: (0..control.cores()).map(|_| CoreMetrics::new()).collect(),
            config_unknown_keys: AtomicU64::new(0),
            config_reloads: AtomicU64::new(0),
            config_reload_failures: AtomicU64::new(0),
            tls_certificate_not_after: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
            webhooks: Arc::new(WebhookStats::default()),
            control,
            mesh,
            replica: std::sync::OnceLock::new(),
        }
    }

    /// Renders the Prometheus text exposition.
    pub fn render(self: &Arc<Metrics>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String");
        text
    }

    fn sum(&self, pick: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|core| pick(core).load(Ordering::Relaxed))
            .sum()
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        self.encode_connections(e)?;
        self.encode_requests(e)?;
        self.encode_loops(e)?;
        self.encode_process(e)?;
        self.encode_wal(e)?;
        self.encode_webhooks(e)?;
        self.encode_replication(e)?;
        self.encode_tls(e)?;
        Ok(())
    }
}

impl Metrics {
    /// The hot standby: role, epoch, the link, lag, resyncs by kind, promotions.
    fn encode_replication(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.replica.get() else {
            return Ok(());
        };
        let primary = shared.role() == crate::replica::Role::Primary;
        {
            let mut family = e.encode_descriptor(
                "ringcast_replication_role",
                "1 for the role this node has now (primary or standby)",
                None,
                MetricType::Gauge,
            )?;
            for (role, value) in [("primary", primary), ("standby", !primary)] {
                ConstGauge::new(i64::from(value))
                    .encode(family.encode_family(&[("role", role)])?)?;
            }
        }
        let gauges = [
            (
                "ringcast_replication_epoch",
                "The highest epoch this node has persisted",
                shared.epoch(),
            ),
            (
                "ringcast_replication_peer_connected",
                "1 while the replication link is up",
                u64::from(shared.link_up()),
            ),
            (
                "ringcast_replication_in_sync",
                "1 once the standby reached lag 0 on this link",
                u64::from(shared.in_sync()),
            ),
            (
                "ringcast_replication_standby_lost",
                "1 while the primary counts its standby as unavailable (publishes follow on_standby_loss)",
                u64::from(primary && shared.standby_lost()),
            ),
            (
                "ringcast_replication_lag_records",
                "Records written on the primary not yet received by the standby",
                shared.lag_records.load(Ordering::Relaxed),
            ),
            (
                "ringcast_replication_lag_ms",
                "How long the standby has been behind (0 when caught up)",
                shared.lag_ms.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            gauge(e, name, help, i64::try_from(value).unwrap_or(i64::MAX))?;
        }
        {
            let mut family = e.encode_descriptor(
                "ringcast_replication_resyncs",
                "Standby sessions started, by kind (partial: from its position; full: from scratch)",
                None,
                MetricType::Counter,
            )?;
            for (kind, value) in [
                ("partial", &shared.resyncs_partial),
                ("full", &shared.resyncs_full),
            ] {
                ConstCounter::new(load(value)).encode(family.encode_family(&[("kind", kind)])?)?;
            }
        }
        counter(
            e,
            "ringcast_replication_promotions",
            "Promotions of this node to primary",
            load(&shared.promotions),
        )?;
        encode_replication_lag(e, &shared.lag.snapshot())?;
        encode_failover(e, shared)
    }
}

/// Automatic failover (only with `[replication] witness`): whether the lease is proven, and
/// promotions by cause.
fn encode_failover(
    e: &mut DescriptorEncoder,
    shared: &crate::replica::ReplicaShared,
) -> Result<(), std::fmt::Error> {
    if !shared.config.has_witness() {
        return Ok(());
    }
    let primary = shared.role() == crate::replica::Role::Primary;
    let valid = primary && shared.lease_valid.load(Ordering::Relaxed);
    gauge(
        e,
        "ringcast_failover_lease_valid",
        "1 while this primary can prove its lease at the witness (publishes are acknowledged)",
        i64::from(valid),
    )?;
    let mut family = e.encode_descriptor(
        "ringcast_failover_promotions",
        "Promotions of this node to primary, by cause (witness: automatic; manual: ringcast promote)",
        None,
        MetricType::Counter,
    )?;
    let all = load(&shared.promotions);
    let witness = load(&shared.promotions_witness);
    for (cause, value) in [
        ("witness", witness),
        ("manual", all.saturating_sub(witness)),
    ] {
        ConstCounter::new(value).encode(family.encode_family(&[("cause", cause)])?)?;
    }
    let mut family = e.encode_descriptor(
        "ringcast_failover_promotion_refusals",
        "Promotion requests of this standby the witness refused, by reason (lease_held: the primary still renews its lease, e.g. a partition of the replication link alone)",
        None,
        MetricType::Counter,
    )?;
    for reason in crate::failover::RefuseReason::ALL {
        let value = load(&shared.promotion_refusals[reason.index()]);
        ConstCounter::new(value).encode(family.encode_family(&[("reason", reason.label())])?)?;
    }
    Ok(())
}

/// The primary's per-record replication lag (`replica::lag`) as a Prometheus histogram.
fn encode_replication_lag(
    e: &mut DescriptorEncoder,
    lag: &crate::replica::lag::LagSnapshot,
) -> Result<(), std::fmt::Error> {
    // Per-bucket counts: the encoder makes them cumulative.
    let buckets: Vec<(f64, u64)> = lag
        .buckets
        .iter()
        .enumerate()
        .map(|(index, &count)| {
            let bound = crate::replica::lag::LAG_BUCKETS_US
                .get(index)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            (bound, count)
        })
        .collect();
    let mut metric = e.encode_descriptor(
        "ringcast_replication_lag_seconds",
        "Primary: per record, the time from the link reading it for the standby to the standby's ack that it is in its WAL file",
        None,
        MetricType::Histogram,
    )?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        lag.sum_us as f64 / 1e6,
        lag.records,
        &buckets,
        None,
    )?;
    counter(
        e,
        "ringcast_replication_lag_unmeasured_batches",
        "Primary: batches sent while too many waited for an ack, left out of the lag histogram",
        lag.unmeasured,
    )
}

impl Metrics {
    /// Connections, closes, messages and socket bytes.
    fn encode_connections(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            e,
            "ringcast_connected",
            "WebSocket connections open",
            self.sum(|c| &c.connected) as i64,
        )?;
        counter(
            e,
            "ringcast_new_connections",
            "WebSocket connections established",
            self.sum(|c| &c.new_connections),
        )?;
        counter(
            e,
            "ringcast_new_disconnections",
            "WebSocket connections closed",
            self.sum(|c| &c.new_disconnections),
        )?;
        {
            let mut family = e.encode_descriptor(
                "ringcast_closes",
                "Connections closed, by close code",
                None,
                MetricType::Counter,
            )?;
            for (index, code) in CLOSE_CODES
                .iter()
                .map(u16::to_string)
                .chain(["other".to_string()])
                .enumerate()
            {
                let value = self.sum(|c| &c.closes[index]);
                let labels = [("code", code.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "ringcast_ws_messages_received",
            "WebSocket messages received",
            self.sum(|c| &c.ws_messages_received),
        )?;
        counter(
            e,
            "ringcast_ws_messages_sent",
            "WebSocket messages queued to clients",
            self.sum(|c| &c.ws_messages_sent),
        )?;
        counter(
            e,
            "ringcast_socket_received_bytes",
            "Bytes received on client sockets",
            self.sum(|c| &c.socket_received_bytes),
        )?;
        counter(
            e,
            "ringcast_socket_transmitted_bytes",
            "Bytes written to client sockets",
            self.sum(|c| &c.socket_transmitted_bytes),
        )?;
        Ok(())
    }

    /// HTTP calls, slow consumers, rejections and accept failures.
    fn encode_requests(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = e.encode_descriptor(
                "ringcast_http_calls_received",
                "HTTP requests, by endpoint and status",
                None,
                MetricType::Counter,
            )?;
            for (endpoint_index, (_, endpoint)) in ENDPOINTS.iter().enumerate() {
                for (status_index, status) in STATUSES
                    .iter()
                    .map(u16::to_string)
                    .chain(["other".to_string()])
                    .enumerate()
                {
                    let value = self.sum(|c| {
                        &c.http_calls[endpoint_index * (STATUSES.len() + 1) + status_index]
                    });
                    if value == 0 {
                        continue;
                    }
                    let labels = [("endpoint", *endpoint), ("status", status.as_str())];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            e,
            "ringcast_slow_consumer_closes",
            "Connections closed with 4101 for not reading",
            self.sum(|c| &c.slow_consumer_closes),
        )?;
        {
            let mut family = e.encode_descriptor(
                "ringcast_rejected",
                "Connections or requests turned away, by reason",
                None,
                MetricType::Counter,
            )?;
            for (index, reason) in REJECTIONS.iter().enumerate() {
                let labels = [("reason", *reason)];
                ConstCounter::new(self.sum(|c| &c.rejected[index]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ringcast_accept_errors",
                "Failed accepts of new connections, by reason (emfile: the process's descriptor limit)",
                None,
                MetricType::Counter,
            )?;
            for (index, reason) in ACCEPT_ERRORS.iter().enumerate() {
                let labels = [("reason", *reason)];
                ConstCounter::new(self.sum(|c| &c.accept_errors[index]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// Publish latency, loop iterations and heartbeats, mesh queues.
    fn encode_loops(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
            // Per-bucket counts: the encoder makes them cumulative.
            for (index, bound) in LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .enumerate()
            {
                buckets.push((bound, self.sum(|c| &c.latency_buckets[index])));
            }
            let sum = self.sum(|c| &c.latency_sum_us) as f64 / 1e6;
            let count = self.sum(|c| &c.latency_count);
            let mut metric = e.encode_descriptor(
                "ringcast_publish_to_write_seconds",
                "Time from a publish arriving to the loop iteration that hands its frame to the kernel, per core that delivered it",
                None,
                MetricType::Histogram,
            )?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
        {
            let mut family = e.encode_descriptor(
                "ringcast_loop_iteration_max_seconds",
                "Longest event-loop iteration since the last scrape, per core",
                None,
                MetricType::Gauge,
            )?;
            for (core, metrics) in self.cores.iter().enumerate() {
                let micros = metrics.loop_iteration_max_us.swap(0, Ordering::Relaxed);
                let labels = [("core", core.to_string())];
                ConstGauge::new(micros as f64 / 1e6).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ringcast_loop_heartbeat_age_seconds",
                "Time since each core's loop last ran",
                None,
                MetricType::Gauge,
            )?;
            for core in 0..self.cores.len() {
                let labels = [("core", core.to_string())];
                let age = self.control.heartbeat_age_ms(core) as f64 / 1e3;
                ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ringcast_mesh_queue_depth",
                "Messages waiting on each core-to-core queue",
                None,
                MetricType::Gauge,
            )?;
            for from in 0..self.mesh.cores() {
                for to in (0..self.mesh.cores()).filter(|&to| to != from) {
                    let labels = [("from", from.to_string()), ("to", to.to_string())];
                    ConstGauge::new(self.mesh.depth(from, to) as i64)
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    /// Readiness, drain and config state.
    fn encode_process(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            e,
            "ringcast_ready",
            "1 while accepting clients (not starting, not draining)",
            i64::from(self.control.is_ready()),
        )?;
        gauge(
            e,
            "ringcast_draining",
            "1 while draining",
            i64::from(self.control.is_draining()),
        )?;
        gauge(
            e,
            "ringcast_config_unknown_keys",
            "Unknown config keys ignored at the last (re)load",
            load(&self.config_unknown_keys) as i64,
        )?;
        counter(
            e,
            "ringcast_config_reloads",
            "Successful config reloads (SIGHUP)",
            load(&self.config_reloads),
        )?;
        counter(
            e,
            "ringcast_config_reload_failures",
            "Rejected config reloads (the running config was kept)",
            load(&self.config_reload_failures),
        )?;
        Ok(())
    }

    /// Native TLS: handshakes by outcome, open TLS connections, the certificate's expiry.
    fn encode_tls(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = e.encode_descriptor(
                "ringcast_tls_handshakes",
                "TLS handshakes, by outcome (ok, failed, timeout, refused, closed)",
                None,
                MetricType::Counter,
            )?;
            for (index, outcome) in TLS_OUTCOMES.iter().enumerate() {
                let labels = [("outcome", *outcome)];
                ConstCounter::new(self.sum(|c| &c.tls_handshakes[index]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "ringcast_tls_connected",
            "Open TLS connections (handshaking or not)",
            self.sum(|c| &c.tls_connected) as i64,
        )?;
        gauge(
            e,
            "ringcast_tls_certificate_expiry_seconds",
            "The served TLS certificate's notAfter as Unix seconds (0 without TLS)",
            load(&self.tls_certificate_not_after) as i64,
        )?;
        counter(
            e,
            "ringcast_tls_reload_failures",
            "Certificate reloads (SIGHUP) rejected, the running certificate kept",
            load(&self.tls_reload_failures),
        )
    }

    /// The per-core WAL gauges (all 0 without a WAL).
    fn encode_wal(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (index, (name, help)) in WAL_GAUGES.iter().enumerate() {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (core, metrics) in self.cores.iter().enumerate() {
                let labels = [("core", core.to_string())];
                let value = metrics.wal[index].load(Ordering::Relaxed) as i64;
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_webhooks(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.webhooks;
        counter(
            e,
            "ringcast_webhooks_queued",
            "Webhook events placed in the outbox, once per target",
            load(&stats.queued),
        )?;
        counter(
            e,
            "ringcast_webhooks_delivered",
            "Webhook events in POSTs answered with 2xx",
            load(&stats.delivered),
        )?;
        counter(
            e,
            "ringcast_webhooks_retried",
            "Failed webhook POSTs (non-2xx, timeout, connection error) scheduled again",
            load(&stats.retried),
        )?;
        counter(
            e,
            "ringcast_webhooks_dropped",
            "Webhook events dropped: a queue or the outbox was full, or retries ran out",
            load(&stats.dropped),
        )?;
        counter(
            e,
            "ringcast_webhooks_cancelled",
            "Removal/re-add webhook pairs cancelled by the removal delay (neither sent)",
            load(&stats.cancelled),
        )?;
        gauge(
            e,
            "ringcast_webhooks_pending",
            "Webhook events in the outbox waiting for a 2xx",
            load(&stats.pending) as i64,
        )?;
        let mut buckets = Vec::with_capacity(DELIVERY_LATENCY_BUCKETS.len() + 1);
        // Per-bucket counts: the encoder makes them cumulative.
        for (index, bound) in DELIVERY_LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
        {
            buckets.push((bound, load(&stats.latency_buckets[index])));
        }
        let sum = load(&stats.latency_sum_ms) as f64 / 1e3;
        let count = load(&stats.latency_count);
        let mut metric = e.encode_descriptor(
            "ringcast_webhooks_delivery_seconds",
            "Time from a webhook batch's first event to the 2xx that delivered it, per POST",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum, count, &buckets, None,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::replica::{ReplicaShared, Role};

    /// The value of the sample line `name` in `text`.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    // Every histogram's buckets are cumulative once, so the +Inf bucket is its count (the
    // encoder adds them up itself: counts handed to it already cumulative would be summed
    // twice).
    #[test]
    fn histogram_buckets_end_at_their_count() {
        let control = Arc::new(Control::new(2));
        let mesh = Arc::new(Mesh::new(2).unwrap());
        let metrics = Arc::new(Metrics::new(control, mesh));
        for (core, index) in [(0, 0), (0, 3), (1, 3), (1, LATENCY_BUCKETS.len())] {
            metrics.cores[core].latency_buckets[index].fetch_add(1, Ordering::Relaxed);
            metrics.cores[core]
                .latency_count
                .fetch_add(1, Ordering::Relaxed);
        }
        metrics.webhooks.latency(3);
        metrics.webhooks.latency(40);
        let shared = Arc::new(ReplicaShared::new(
            crate::config::ReplicationConfig::default(),
            2,
            Role::Primary,
            1,
        ));
        shared.lag.restart(1, 1);
        shared.lag.sent(1, 3, 0);
        shared.lag.sent(1, 4, 100);
        shared.lag.acked(1, 4, 700);
        metrics.replica.set(shared).unwrap();
        let text = metrics.render();
        for (name, count) in [
            ("ringcast_publish_to_write_seconds", 4.0),
            ("ringcast_webhooks_delivery_seconds", 2.0),
            ("ringcast_replication_lag_seconds", 4.0),
        ] {
            assert_eq!(sample(&text, &format!("{name}_count")), count, "{text}");
            let inf = format!("{name}_bucket{{le=\"+Inf\"}}");
            assert_eq!(sample(&text, &inf), count, "{text}");
        }
        // Three records waited 700 µs, one 600 µs: all in (500 µs, 750 µs].
        let lag = "ringcast_replication_lag_seconds_bucket";
        assert_eq!(sample(&text, &format!("{lag}{{le=\"0.0005\"}}")), 0.0);
        assert_eq!(sample(&text, &format!("{lag}{{le=\"0.00075\"}}")), 4.0);
        assert_eq!(
            sample(&text, "ringcast_replication_lag_seconds_sum"),
            0.0027
        );
        // The publish latency: one record in the first bucket, two in the fourth.
        let publish = "ringcast_publish_to_write_seconds_bucket";
        assert_eq!(sample(&text, &format!("{publish}{{le=\"0.00005\"}}")), 1.0);
        assert_eq!(sample(&text, &format!("{publish}{{le=\"0.0005\"}}")), 3.0);
    }
}
