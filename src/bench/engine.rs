//! The generator's per-thread event loop: one io_uring instance driving many non-blocking sockets —
//! WebSocket clients (connect, upgrade, `connection_established`, subscribe, then count every
//! delivered event: sequence, duplicate/reorder window, publish→deliver latency) and, on one
//! thread, the REST publisher (HTTP/1.1 keep-alive connections, one request in flight each,
//! publishes scheduled at fixed intervals from the run's start so latency is measured from the
//! intended send time). In a reconnecting fleet (`storm --hold-secs`) a client that ends comes
//! back when `reconnect::Policy` says, from one heap of due times per thread (no timer per
//! client). Threads share nothing but the atomics in [`Shared`], written once per
//! loop iteration. It must not print, read `/proc` or decide when a scenario ends (the scenario
//! does, through the phase), and it must not allocate per delivered message: every socket is read
//! by a multishot receive into the thread's provided-buffer pool, and only a partial frame is
//! copied into the connection. Writes are plain non-blocking writes (a few per connection); a
//! write that would block, and a connect in progress, wait on a one-shot poll. While messages
//! flow, a wait asks for a batch of completions (or a short timeout), so the thread is not woken
//! — and the server not charged for waking it — once per message.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use memchr::memmem;
use socket2::{Domain, Socket, Type};

use super::measure::{new_histogram, now_ns};
use super::reconnect::{Attempts, Ended, Next, Policy};
use super::sys::{self, Completion, OP_RECV, OP_WRITABLE, Ring};
use super::wire::{self, FrameError, Response, Signer, Stamp, Upgrade};

/// Clients connect; the publisher waits.
pub const PHASE_CONNECT: u8 = 0;
/// The publisher runs from `Shared::run_start_ns`.
pub const PHASE_RUN: u8 = 1;
/// Every thread returns its results.
pub const PHASE_STOP: u8 = 2;

/// Submission queue entries of a thread's ring (the completion queue is 4 times larger).
pub(super) const RING_ENTRIES: u32 = 4096;
/// Receive buffers in a thread's pool, and the size of each (one receive fills at most one).
pub(super) const RECV_BUFFERS: u16 = 2048;
pub(super) const RECV_BUFFER_BYTES: usize = 4096;
/// While completions keep coming, a wait returns after this many or after `BATCH_WAIT`. The wait
/// adds to the latency measured for the last messages of a burst: 20 µs instead of 50 lowered
/// the fan-out p50 by about 30 µs in alternating runs, at no clear cost in generator CPU.
pub(super) const BATCH_COMPLETIONS: usize = 32;
pub(super) const BATCH_WAIT: Duration = Duration::from_micros(20);
/// The publisher's wait for its next scheduled send ends this much early, and the rest is spun:
/// a timed wait on an idle vCPU ended about 50 µs late here, and that lateness counted in the
/// measured latency (it is reported as `publish_send_lag_us`).
const SEND_LEAD: Duration = Duration::from_micros(80);
/// Longest sleep of a loop iteration (how quickly a thread notices a phase change).
const TICK: Duration = Duration::from_millis(5);
/// Times the publisher re-opens a REST connection before giving up on it.
const PUBLISHER_RECONNECTS_MAX: u64 = 1000;
/// Ramp steps whose latency histograms are kept (the stamp carries up to 999).
pub const STEPS_MAX: u32 = 64;
const NO_FRAGMENT: u8 = 0xFF;

/// Where and as whom to connect.
pub struct Target {
    pub ws_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    /// `Host` header values.
    pub ws_host: String,
    pub rest_host: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// `--tls`: every connection (WebSocket and REST) speaks TLS.
    pub tls: Option<super::tls::TlsTarget>,
}

/// Live counters of one thread, written only by that thread (relaxed stores once per loop
/// iteration) and read by the scenario for progress and by the publisher to judge a step.
#[derive(Default)]
pub struct Counters {
    pub tid: AtomicU64,
    pub started: AtomicU64,
    pub established: AtomicU64,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub closed: AtomicU64,
    pub received: AtomicU64,
    pub over_bound: AtomicU64,
    pub last_ready_ns: AtomicU64,
    /// Reconnecting fleet: subscribed sessions that ended, and clients subscribed again after.
    pub drops: AtomicU64,
    pub resubscribed: AtomicU64,
}

/// Live counters of the publisher.
#[derive(Default)]
pub struct PublisherCounters {
    pub connections_ready: AtomicU64,
    pub published: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub expected: AtomicU64,
    pub step: AtomicU64,
    /// The current step's rate, publishes per second (f64 bits).
    pub rate_bits: AtomicU64,
    pub done: AtomicBool,
}

/// Everything the threads of one run share.
pub struct Shared {
    pub phase: AtomicU8,
    /// When the publisher starts (ns on the generator clock); 0 until the run phase.
    pub run_start_ns: AtomicU64,
    pub workers: Vec<CachePadded<Counters>>,
    /// Subscribers that saw `subscription_succeeded`, per channel index.
    pub subscribed_per_channel: Vec<AtomicU64>,
    pub publisher: CachePadded<PublisherCounters>,
}

impl Shared {
    pub fn new(threads: usize, channels: u32) -> Shared {
        Shared {
            phase: AtomicU8::new(PHASE_CONNECT),
            run_start_ns: AtomicU64::new(0),
            workers: (0..threads).map(|_| CachePadded::default()).collect(),
            subscribed_per_channel: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            publisher: CachePadded::default(),
        }
    }

    pub fn sum(&self, field: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|counters| field(counters).load(Ordering::Relaxed))
            .sum()
    }
}

/// How the publisher schedules its publishes.
#[derive(Debug, Clone)]
pub enum PublishMode {
    /// `count` publishes at `rate` per second, scheduled from the run start.
    Fixed { rate: f64, count: u64 },
    /// Each connection sends its next request as soon as the previous one is answered.
    ClosedLoop { duration_ns: u64 },
    /// Steps of `step_ns` at `start_rate * factor^k`, until a step loses a delivery, has a
    /// publish refused, misses the latency bound, or the step/time budget is spent.
    Ramp {
        start_rate: f64,
        factor: f64,
        step_ns: u64,
        max_steps: u32,
        duration_ns: u64,
    },
}

#[derive(Debug, Clone)]
pub struct PublisherPlan {
    pub connections: usize,
    pub payload_bytes: usize,
    pub mode: PublishMode,
    /// How long a step waits for its deliveries after its last publish was answered.
    pub drain_ns: u64,
}

/// What one thread does.
pub struct WorkerPlan {
    pub index: usize,
    pub target: Arc<Target>,
    /// One entry per WebSocket client: the channel index it subscribes to, or none (idle).
    pub clients: Vec<Option<u32>>,
    /// Channel names are `{channel_prefix}{index}`; publish `seq` goes to `seq % channels`.
    pub channel_prefix: String,
    pub channels: u32,
    /// New connections per second for this thread (0: no pacing).
    pub connect_rate: f64,
    /// Connections of this thread between connect and ready at once (0: no cap).
    pub connect_inflight_max: usize,
    pub source_ips: Vec<IpAddr>,
    /// Deliveries slower than this count as over the bound (the ramp's p99 criterion).
    pub latency_bound_us: u64,
    /// Largest publish sequence expected (deliveries past it are counted as misrouted).
    pub seq_limit: u64,
    pub publisher: Option<PublisherPlan>,
    /// A reconnecting fleet (`storm --hold-secs`): clients come back after every end, by
    /// `reconnect::Policy`; none: an ended client stays closed.
    pub reconnect: Option<ReconnectPlan>,
}

/// How the clients of a reconnecting fleet come back.
#[derive(Clone)]
pub struct ReconnectPlan {
    /// `targets` counts the target's address and the fallbacks.
    pub policy: Policy,
    /// Further WebSocket addresses after the target's, with their `Host` header values.
    pub fallbacks: Vec<(SocketAddr, String)>,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    Connect(io::ErrorKind),
    Io(io::ErrorKind),
    Eof,
    /// The upgrade's status and `Retry-After` (seconds).
    Handshake(u16, Option<u32>),
    Closed(u16),
    PusherError(Option<u16>),
    SubscriptionError,
    Protocol(&'static str),
    /// The server answered with `Connection: close` (the publisher reconnects).
    KeepAliveEnded,
}

impl Fail {
    pub fn label(&self) -> String {
        match self {
            Fail::Connect(kind) => format!("connect_{kind:?}"),
            Fail::Io(kind) => format!("io_{kind:?}"),
            Fail::Eof => "eof".to_string(),
            Fail::Handshake(status, _) => format!("handshake_{status}"),
            Fail::Closed(code) => format!("close_{code}"),
            Fail::PusherError(Some(code)) => format!("pusher_error_{code}"),
            Fail::PusherError(None) => "pusher_error".to_string(),
            Fail::SubscriptionError => "subscription_error".to_string(),
            Fail::Protocol(what) => format!("protocol_{what}"),
            Fail::KeepAliveEnded => "keepalive_ended".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    Handshake,
    WaitEstablished,
    WaitSubscribed,
    Ready,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ws { channel: Option<u32> },
    Http,
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    seq: u64,
    intended_ns: u64,
}

struct Conn {
    sock: Option<Socket>,
    /// Bumped for every new socket in this slot, so late completions for an old one are ignored.
    generation: u32,
    recv_armed: bool,
    write_armed: bool,
    state: State,
    kind: Kind,
    started_ns: u64,
    /// Unconsumed input (a partial frame or response); empty most of the time.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    /// A fragmented message being reassembled (servers rarely fragment).
    fragment: Vec<u8>,
    fragment_op: u8,
    /// One more than the highest per-channel sequence seen (0: none yet).
    next_channel_seq: u64,
    /// Bit i: per-channel sequence `next_channel_seq - 1 - i` was seen.
    window: u64,
    inflight: Option<Inflight>,
    /// `--tls`: the connection's record layer (`out` is plaintext, encrypted on flush).
    tls: Option<Box<rustls::ClientConnection>>,
    /// Reconnecting fleet: where it connects and its back-offs in a row.
    attempts: Attempts,
    /// When its subscribed session ended (0: subscribed, or never was).
    dropped_ns: u64,
}

impl Conn {
    fn new(kind: Kind) -> Conn {
        Conn {
            sock: None,
            generation: 0,
            recv_armed: false,
            write_armed: false,
            state: State::NotStarted,
            kind,
            started_ns: 0,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            fragment: Vec::new(),
            fragment_op: NO_FRAGMENT,
            next_channel_seq: 0,
            window: 0,
            inflight: None,
            tls: None,
            attempts: Attempts::default(),
            dropped_ns: 0,
        }
    }

    fn has_pending_output(&self) -> bool {
        self.out_at < self.out.len() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    fn connecting(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Handshake | State::WaitEstablished | State::WaitSubscribed
        )
    }

    /// Writes as much of the pending output as the socket takes.
    fn flush(&mut self) -> Result<(), Fail> {
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        if let Some(tls) = self.tls.as_mut() {
            let open = super::tls::flush(tls, &self.out[self.out_at..], sock)
                .map_err(|e| Fail::Io(e.kind()))?;
            self.out.clear();
            self.out_at = 0;
            return if open { Ok(()) } else { Err(Fail::Eof) };
        }
        while self.out_at < self.out.len() {
            match (&*sock).write(&self.out[self.out_at..]) {
                Ok(0) => return Err(Fail::Eof),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::Io(e.kind())),
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(())
    }
}

/// What one thread measured.
pub struct Stats {
    pub established: u64,
    pub ready: u64,
    /// Connections that never became ready, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Ready connections that ended before the run did, by reason.
    pub closes: BTreeMap<String, u64>,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Stamped events for a channel the subscriber is not on, or past the sequence limit.
    pub misrouted: u64,
    pub pings_answered: u64,
    pub pusher_errors: u64,
    pub other_messages: u64,
    pub over_bound: u64,
    pub bytes_in: u64,
    /// Publish→deliver latency (µs) per ramp step.
    pub latency: Vec<Histogram<u64>>,
    /// Connect start → ready (subscribed, or established for idle clients), µs.
    pub ready_latency: Histogram<u64>,
    pub last_ready_ns: u64,
    /// Unique deliveries per publish sequence.
    pub counts: Vec<u32>,
    /// Reconnecting fleet: subscribed sessions that ended, clients subscribed again after one
    /// (and how long after its end, µs), the first end and the last re-subscribe, connects
    /// scheduled again, and clients that stopped (by the reason that stopped them).
    pub drops: u64,
    pub resubscribed: u64,
    pub resubscribe_latency: Histogram<u64>,
    pub first_drop_ns: u64,
    pub last_resubscribed_ns: u64,
    pub retries: u64,
    pub gave_up: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new(seq_hint: u64) -> Stats {
        Stats {
            established: 0,
            ready: 0,
            failures: BTreeMap::new(),
            closes: BTreeMap::new(),
            received: 0,
            duplicates: 0,
            reordered: 0,
            misrouted: 0,
            pings_answered: 0,
            pusher_errors: 0,
            other_messages: 0,
            over_bound: 0,
            bytes_in: 0,
            latency: Vec::new(),
            ready_latency: new_histogram(),
            last_ready_ns: 0,
            counts: Vec::with_capacity(seq_hint.min(1 << 24) as usize),
            drops: 0,
            resubscribed: 0,
            resubscribe_latency: new_histogram(),
            first_drop_ns: 0,
            last_resubscribed_ns: 0,
            retries: 0,
            gave_up: BTreeMap::new(),
        }
    }

    /// Adds another thread's measurements to these.
    pub fn absorb(&mut self, other: Stats) {
        self.established += other.established;
        self.ready += other.ready;
        for (key, n) in other.failures {
            *self.failures.entry(key).or_default() += n;
        }
        for (key, n) in other.closes {
            *self.closes.entry(key).or_default() += n;
        }
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.misrouted += other.misrouted;
        self.pings_answered += other.pings_answered;
        self.pusher_errors += other.pusher_errors;
        self.other_messages += other.other_messages;
        self.over_bound += other.over_bound;
        self.bytes_in += other.bytes_in;
        for (step, histogram) in other.latency.iter().enumerate() {
            while self.latency.len() <= step {
                self.latency.push(new_histogram());
            }
            let _ = self.latency[step].add(histogram);
        }
        let _ = self.ready_latency.add(&other.ready_latency);
        self.last_ready_ns = self.last_ready_ns.max(other.last_ready_ns);
        self.drops += other.drops;
        self.resubscribed += other.resubscribed;
        let _ = self.resubscribe_latency.add(&other.resubscribe_latency);
        if other.first_drop_ns != 0 {
            self.first_drop_ns = match self.first_drop_ns {
                0 => other.first_drop_ns,
                mine => mine.min(other.first_drop_ns),
            };
        }
        self.last_resubscribed_ns = self.last_resubscribed_ns.max(other.last_resubscribed_ns);
        self.retries += other.retries;
        for (key, n) in other.gave_up {
            *self.gave_up.entry(key).or_default() += n;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        // A publish is delivered at most once per subscriber: far below u32::MAX in total.
        for (total, n) in self.counts.iter_mut().zip(&other.counts) {
            *total = total.saturating_add(*n);
        }
    }
}

/// One ramp step (the whole run for a fixed rate).
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: u32,
    pub rate: f64,
    pub first_seq: u64,
    pub end_seq: u64,
    pub start_ns: u64,
    pub sent_end_ns: u64,
    pub drained_ns: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub over_bound: u64,
    /// The schedule ran more than a second (or a step) behind and was cut short.
    pub behind: bool,
    pub verdict: &'static str,
}

/// What the publisher measured.
pub struct PublisherResult {
    pub published: u64,
    pub accepted_count: u64,
    /// Whether publish `seq` was answered 200.
    pub accepted: Vec<bool>,
    pub statuses: BTreeMap<u16, u64>,
    /// Publishes whose connection failed before an answer, by reason.
    pub errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Intended send → response, µs.
    pub rest_latency: Histogram<u64>,
    /// Intended send → the loop iteration that sent it, µs: the generator's own lateness, which
    /// the latency figures (measured from the intended time) include.
    pub send_lag: Histogram<u64>,
    pub steps: Vec<StepRecord>,
}

pub struct WorkerResult {
    pub stats: Stats,
    pub publisher: Option<PublisherResult>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PubState {
    Waiting,
    Running,
    Draining { deadline_ns: u64 },
    Done,
}

struct Publisher {
    plan: PublisherPlan,
    path: String,
    rest_host: String,
    signer: Signer,
    channel_names: Vec<String>,
    data: Vec<u8>,
    body: Vec<u8>,
    idle: Vec<usize>,
    inflight: u64,
    state: PubState,
    step: u32,
    rate: f64,
    interval_ns: f64,
    step_first_seq: u64,
    step_end_seq: u64,
    step_start_ns: u64,
    step_end_ns: u64,
    behind: bool,
    next_seq: u64,
    run_start_ns: u64,
    sent_end_ns: u64,
    result: PublisherResult,
    rejected: u64,
    error_count: u64,
    expected_total: u64,
    at_step_start: (u64, u64, u64, u64, u64, u64),
    /// Connections that failed inside a publisher call, handled by the worker afterwards.
    failed: Vec<(usize, Fail)>,
}

impl Publisher {
    fn new(plan: PublisherPlan, target: &Target, prefix: &str, channels: u32) -> Publisher {
        let path = format!("/apps/{}/events", target.app_id);
        Publisher {
            signer: Signer::new(&path, &target.key, &target.secret),
            path,
            rest_host: target.rest_host.clone(),
            channel_names: (0..channels.max(1))
                .map(|c| format!("{prefix}{c}"))
                .collect(),
            data: wire::payload_template(plan.payload_bytes),
            body: Vec::new(),
            idle: Vec::new(),
            inflight: 0,
            state: PubState::Waiting,
            step: 0,
            rate: 0.0,
            interval_ns: 0.0,
            step_first_seq: 0,
            step_end_seq: 0,
            step_start_ns: 0,
            step_end_ns: u64::MAX,
            behind: false,
            next_seq: 0,
            run_start_ns: 0,
            sent_end_ns: 0,
            result: PublisherResult {
                published: 0,
                accepted_count: 0,
                accepted: Vec::new(),
                statuses: BTreeMap::new(),
                errors: BTreeMap::new(),
                reconnects: 0,
                rest_latency: new_histogram(),
                send_lag: new_histogram(),
                steps: Vec::new(),
            },
            rejected: 0,
            error_count: 0,
            expected_total: 0,
            at_step_start: (0, 0, 0, 0, 0, 0),
            failed: Vec::new(),
            plan,
        }
    }

    /// When the next scheduled publish is due, if one is waiting for its time (open loop only).
    fn next_due(&self) -> Option<u64> {
        let scheduled = !matches!(self.plan.mode, PublishMode::ClosedLoop { .. });
        (scheduled
            && self.state == PubState::Running
            && !self.idle.is_empty()
            && self.next_seq < self.step_end_seq)
            .then(|| self.intended(self.next_seq))
    }

    fn intended(&self, seq: u64) -> u64 {
        match self.plan.mode {
            PublishMode::ClosedLoop { .. } => 0,
            _ => {
                self.step_start_ns + ((seq - self.step_first_seq) as f64 * self.interval_ns) as u64
            }
        }
    }

    fn begin_step(&mut self, step: u32, start_ns: u64, shared: &Shared) {
        let seq_room = wire::SEQ_MAX - self.next_seq;
        let (rate, count, end_ns) = match self.plan.mode {
            PublishMode::Fixed { rate, count } => (rate, count, u64::MAX),
            PublishMode::ClosedLoop { duration_ns } => {
                (f64::INFINITY, seq_room, start_ns + duration_ns)
            }
            PublishMode::Ramp {
                start_rate,
                factor,
                step_ns,
                ..
            } => {
                let rate = start_rate * factor.powi(step as i32);
                let count = (rate * step_ns as f64 / 1e9).ceil().max(1.0) as u64;
                (rate, count, u64::MAX)
            }
        };
        self.step = step;
        self.rate = rate;
        self.interval_ns = if rate.is_finite() && rate > 0.0 {
            1e9 / rate
        } else {
            0.0
        };
        self.step_first_seq = self.next_seq;
        self.step_end_seq = self.next_seq + count.min(seq_room);
        self.step_start_ns = start_ns;
        self.step_end_ns = end_ns;
        self.behind = false;
        self.at_step_start = (
            self.result.accepted_count,
            self.rejected,
            self.error_count,
            self.expected_total,
            shared.sum(|c| &c.received),
            shared.sum(|c| &c.over_bound),
        );
        self.state = PubState::Running;
        shared
            .publisher
            .step
            .store(u64::from(step), Ordering::Relaxed);
        shared
            .publisher
            .rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Sends every publish that is due and has a free connection; moves between steps.
    fn tick(&mut self, now: u64, conns: &mut [Conn], shared: &Shared) {
        match self.state {
            PubState::Waiting => {
                let start = shared.run_start_ns.load(Ordering::Acquire);
                if start != 0 && now >= start {
                    self.run_start_ns = start;
                    self.begin_step(0, start, shared);
                }
            }
            PubState::Running => {}
            PubState::Draining { deadline_ns } => {
                let received = shared.sum(|c| &c.received);
                if received >= self.expected_total || now >= deadline_ns {
                    self.finish_step(now, shared);
                }
                return;
            }
            PubState::Done => return,
        }
        if self.state != PubState::Running {
            return;
        }
        let closed_loop = matches!(self.plan.mode, PublishMode::ClosedLoop { .. });
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        while self.next_seq < self.step_end_seq {
            if now >= self.step_end_ns {
                self.step_end_seq = self.next_seq;
                break;
            }
            let intended = if closed_loop {
                now
            } else {
                self.intended(self.next_seq)
            };
            if intended > now {
                break;
            }
            // A schedule more than a second (and more than a step) behind cannot be met:
            // cut the step short instead of queueing without bound.
            let slack = match self.plan.mode {
                PublishMode::Ramp { step_ns, .. } => step_ns.max(1_000_000_000),
                _ => u64::MAX,
            };
            if now - intended > slack {
                self.behind = true;
                self.step_end_seq = self.next_seq;
                break;
            }
            let Some(token) = self.idle.pop() else {
                break;
            };
            self.result
                .send_lag
                .saturating_record((now - intended) / 1000);
            self.send(token, self.next_seq, intended, unix_secs, &mut conns[token]);
            self.next_seq += 1;
        }
        if self.next_seq >= self.step_end_seq && self.inflight == 0 {
            self.sent_end_ns = now;
            self.state = PubState::Draining {
                deadline_ns: now + self.plan.drain_ns,
            };
        }
        let counters = &shared.publisher;
        counters
            .published
            .store(self.result.published, Ordering::Relaxed);
        counters
            .accepted
            .store(self.result.accepted_count, Ordering::Relaxed);
        counters.rejected.store(self.rejected, Ordering::Relaxed);
        counters.errors.store(self.error_count, Ordering::Relaxed);
        counters
            .expected
            .store(self.expected_total, Ordering::Relaxed);
    }

    fn send(&mut self, token: usize, seq: u64, intended: u64, unix_secs: u64, conn: &mut Conn) {
        let channel = (seq % self.channel_names.len() as u64) as usize;
        wire::write_stamp(
            &mut self.data,
            Stamp {
                seq,
                sent_ns: intended,
                step: self.step,
            },
        );
        let body = &mut self.body;
        body.clear();
        body.extend_from_slice(br#"{"name":"bench","channels":[""#);
        body.extend_from_slice(self.channel_names[channel].as_bytes());
        body.extend_from_slice(br#""],"data":""#);
        body.extend_from_slice(&self.data);
        body.extend_from_slice(br#""}"#);
        let out = &mut conn.out;
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.push(b'?');
        self.signer.write_query(body, unix_secs, out);
        let _ = write!(
            out,
            " HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.rest_host,
            body.len()
        );
        out.extend_from_slice(body);
        conn.inflight = Some(Inflight {
            seq,
            intended_ns: intended,
        });
        self.inflight += 1;
        self.result.published += 1;
        if let Err(fail) = conn.flush() {
            self.failed.push((token, fail));
        }
    }

    fn on_response(
        &mut self,
        token: usize,
        status: u16,
        now: u64,
        conn: &mut Conn,
        shared: &Shared,
    ) {
        let Some(inflight) = conn.inflight.take() else {
            *self
                .result
                .errors
                .entry("unsolicited_response".to_string())
                .or_default() += 1;
            return;
        };
        self.inflight -= 1;
        self.result
            .rest_latency
            .saturating_record(now.saturating_sub(inflight.intended_ns) / 1000);
        *self.result.statuses.entry(status).or_default() += 1;
        if status == 200 {
            let seq = inflight.seq as usize;
            if self.result.accepted.len() <= seq {
                self.result.accepted.resize(seq + 1, false);
            }
            self.result.accepted[seq] = true;
            self.result.accepted_count += 1;
            let channel = (inflight.seq % self.channel_names.len() as u64) as usize;
            if let Some(subscribed) = shared.subscribed_per_channel.get(channel) {
                self.expected_total += subscribed.load(Ordering::Relaxed);
            }
        } else {
            self.rejected += 1;
        }
        self.idle.push(token);
    }

    /// A REST connection ended; a request on it has an unknown outcome (counted as an error,
    /// never as accepted).
    fn on_connection_lost(&mut self, token: usize, fail: &Fail, conn: &mut Conn) {
        if conn.inflight.take().is_some() {
            self.inflight -= 1;
            self.error_count += 1;
            *self.result.errors.entry(fail.label()).or_default() += 1;
        }
        self.idle.retain(|&t| t != token);
    }

    fn finish_step(&mut self, now: u64, shared: &Shared) {
        let (accepted0, rejected0, errors0, expected0, received0, over0) = self.at_step_start;
        let received = shared.sum(|c| &c.received) - received0;
        let over_bound = shared.sum(|c| &c.over_bound) - over0;
        let expected = self.expected_total - expected0;
        let rejected = self.rejected - rejected0;
        let errors = self.error_count - errors0;
        let verdict = if received < expected {
            "loss"
        } else if rejected + errors > 0 {
            "publish_errors"
        } else if self.behind {
            "publisher_behind"
        } else if over_bound * 100 > received {
            "p99_over_bound"
        } else {
            "ok"
        };
        self.result.steps.push(StepRecord {
            step: self.step,
            rate: self.rate,
            first_seq: self.step_first_seq,
            end_seq: self.next_seq,
            start_ns: self.step_start_ns,
            sent_end_ns: self.sent_end_ns,
            drained_ns: now,
            accepted: self.result.accepted_count - accepted0,
            rejected,
            errors,
            over_bound,
            behind: self.behind,
            verdict,
        });
        let next = match self.plan.mode {
            PublishMode::Ramp {
                max_steps,
                duration_ns,
                step_ns,
                ..
            } => {
                verdict == "ok"
                    && self.step + 1 < max_steps.min(STEPS_MAX)
                    && now + step_ns <= self.run_start_ns + duration_ns
            }
            _ => false,
        };
        if next {
            self.begin_step(self.step + 1, now, shared);
        } else {
            self.state = PubState::Done;
            shared.publisher.done.store(true, Ordering::Release);
        }
    }
}

/// Finders for the few messages a client must recognise; built once per thread.
struct Finders {
    stamp: memmem::Finder<'static>,
    ping: memmem::Finder<'static>,
    established: memmem::Finder<'static>,
    succeeded: memmem::Finder<'static>,
    subscription_error: memmem::Finder<'static>,
    error: memmem::Finder<'static>,
}

/// Per-thread state a message handler may touch (kept apart from the connection table so both
/// can be borrowed at once).
struct Ctx {
    finders: Finders,
    stats: Stats,
    shared: Arc<Shared>,
    channels: u32,
    channel_names: Vec<String>,
    latency_bound_us: u64,
    seq_limit: u64,
    mask_state: u64,
    scratch: Vec<u8>,
    inflight_connects: usize,
}

impl Ctx {
    fn mask(&mut self) -> [u8; 4] {
        (self.random() as u32).to_le_bytes()
    }

    /// xorshift64: masks and reconnect jitter only need to vary, not to be secret.
    fn random(&mut self) -> u64 {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        x
    }

    fn ready(&mut self, conn: &mut Conn, now: u64) {
        conn.state = State::Ready;
        self.stats.ready += 1;
        self.stats
            .ready_latency
            .saturating_record(now.saturating_sub(conn.started_ns) / 1000);
        self.stats.last_ready_ns = now;
        self.inflight_connects = self.inflight_connects.saturating_sub(1);
        conn.attempts.subscribed();
        if conn.dropped_ns != 0 {
            self.stats.resubscribed += 1;
            self.stats
                .resubscribe_latency
                .saturating_record(now.saturating_sub(conn.dropped_ns) / 1000);
            self.stats.last_resubscribed_ns = now;
            conn.dropped_ns = 0;
        }
        if let Kind::Ws {
            channel: Some(channel),
        } = conn.kind
        {
            self.shared.subscribed_per_channel[channel as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn deliver(&mut self, conn: &mut Conn, stamp: Stamp, now: u64) {
        let stats = &mut self.stats;
        let Kind::Ws {
            channel: Some(channel),
        } = conn.kind
        else {
            stats.misrouted += 1;
            return;
        };
        let channels = u64::from(self.channels.max(1));
        if stamp.seq % channels != u64::from(channel) || stamp.seq >= self.seq_limit {
            stats.misrouted += 1;
            return;
        }
        let channel_seq = stamp.seq / channels;
        if conn.next_channel_seq == 0 || channel_seq >= conn.next_channel_seq {
            let shift = channel_seq + 1 - conn.next_channel_seq;
            conn.window = if conn.next_channel_seq == 0 || shift >= 64 {
                1
            } else {
                (conn.window << shift) | 1
            };
            conn.next_channel_seq = channel_seq + 1;
        } else {
            let back = conn.next_channel_seq - 1 - channel_seq;
            if back < 64 {
                let bit = 1u64 << back;
                if conn.window & bit != 0 {
                    stats.duplicates += 1;
                    return;
                }
                conn.window |= bit;
            }
            // Older than the window: cannot tell a duplicate from a late event; late it is.
            stats.reordered += 1;
        }
        let seq = stamp.seq as usize;
        if seq >= stats.counts.len() {
            stats
                .counts
                .resize((seq + 1).next_power_of_two().max(1024), 0);
        }
        stats.counts[seq] += 1;
        stats.received += 1;
        let latency_us = now.saturating_sub(stamp.sent_ns) / 1000;
        if latency_us > self.latency_bound_us {
            stats.over_bound += 1;
        }
        let step = (stamp.step.min(STEPS_MAX - 1)) as usize;
        while stats.latency.len() <= step {
            stats.latency.push(new_histogram());
        }
        stats.latency[step].saturating_record(latency_us);
    }

    fn on_message(&mut self, conn: &mut Conn, message: &[u8], now: u64) -> Result<(), Fail> {
        if matches!(conn.state, State::Ready | State::WaitSubscribed)
            && let Some(stamp) = wire::find_stamp(message, &self.finders.stamp)
        {
            self.deliver(conn, stamp, now);
            return Ok(());
        }
        if self.finders.ping.find(message).is_some() {
            let mask = self.mask();
            wire::write_masked_frame(&mut conn.out, wire::OP_TEXT, wire::PUSHER_PONG, mask);
            self.stats.pings_answered += 1;
            return Ok(());
        }
        match conn.state {
            State::WaitEstablished => {
                if self.finders.established.find(message).is_some() {
                    self.stats.established += 1;
                    match conn.kind {
                        Kind::Ws {
                            channel: Some(channel),
                        } => {
                            wire::subscribe_message(
                                &mut self.scratch,
                                &self.channel_names[channel as usize],
                            );
                            let mask = self.mask();
                            wire::write_masked_frame(
                                &mut conn.out,
                                wire::OP_TEXT,
                                &self.scratch,
                                mask,
                            );
                            conn.state = State::WaitSubscribed;
                        }
                        _ => self.ready(conn, now),
                    }
                } else if self.finders.error.find(message).is_some() {
                    return Err(Fail::PusherError(wire::pusher_error_code(message)));
                } else {
                    self.stats.other_messages += 1;
                }
            }
            State::WaitSubscribed => {
                if self.finders.succeeded.find(message).is_some() {
                    self.ready(conn, now);
                } else if self.finders.subscription_error.find(message).is_some() {
                    return Err(Fail::SubscriptionError);
                } else if self.finders.error.find(message).is_some() {
                    return Err(Fail::PusherError(wire::pusher_error_code(message)));
                } else {
                    self.stats.other_messages += 1;
                }
            }
            _ => {
                if self.finders.error.find(message).is_some() {
                    self.stats.pusher_errors += 1;
                } else {
                    self.stats.other_messages += 1;
                }
            }
        }
        Ok(())
    }

    /// Consumes complete frames (after the upgrade answer) from `data`; returns bytes used.
    fn consume_ws(&mut self, conn: &mut Conn, data: &[u8], now: u64) -> Result<usize, Fail> {
        let mut at = 0;
        if conn.state == State::Handshake {
            match wire::parse_upgrade(data) {
                Upgrade::Partial => return Ok(0),
                Upgrade::Refused(status, retry_after) => {
                    return Err(Fail::Handshake(status, retry_after));
                }
                Upgrade::Switched(len) => {
                    at = len;
                    conn.state = State::WaitEstablished;
                }
            }
        }
        loop {
            let rest = &data[at..];
            let header = match wire::parse_frame_header(rest) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(FrameError::Protocol) => return Err(Fail::Protocol("frame")),
                Err(FrameError::TooBig) => return Err(Fail::Protocol("too_big")),
            };
            let total = header.header_len + header.payload_len;
            if rest.len() < total {
                break;
            }
            let payload = &rest[header.header_len..total];
            at += total;
            match header.opcode {
                wire::OP_TEXT | wire::OP_BINARY => {
                    if conn.fragment_op != NO_FRAGMENT {
                        return Err(Fail::Protocol("interleaved_fragments"));
                    }
                    if header.fin {
                        self.on_message(conn, payload, now)?;
                    } else {
                        conn.fragment_op = header.opcode;
                        conn.fragment.clear();
                        conn.fragment.extend_from_slice(payload);
                    }
                }
                wire::OP_CONTINUATION => {
                    if conn.fragment_op == NO_FRAGMENT {
                        return Err(Fail::Protocol("continuation"));
                    }
                    conn.fragment.extend_from_slice(payload);
                    if conn.fragment.len() > wire::MESSAGE_BYTES_MAX {
                        return Err(Fail::Protocol("too_big"));
                    }
                    if header.fin {
                        let message = std::mem::take(&mut conn.fragment);
                        conn.fragment_op = NO_FRAGMENT;
                        let result = self.on_message(conn, &message, now);
                        conn.fragment = message;
                        conn.fragment.clear();
                        result?;
                    }
                }
                wire::OP_PING => {
                    let mask = self.mask();
                    wire::write_masked_frame(&mut conn.out, wire::OP_PONG, payload, mask);
                }
                wire::OP_PONG => {}
                _ => return Err(Fail::Closed(wire::close_code(payload))),
            }
        }
        Ok(at)
    }
}

/// One generator thread.
pub struct Worker {
    index: usize,
    target: Arc<Target>,
    ring: Ring,
    completions: Vec<Completion>,
    /// Connections whose receive ended for want of buffers: re-armed once buffers are back.
    rearm: Vec<usize>,
    conns: Vec<Conn>,
    ws_count: usize,
    next_connect: usize,
    connects_started: u64,
    connect_rate: f64,
    connect_inflight_max: usize,
    source_ips: Vec<IpAddr>,
    /// WebSocket addresses and their upgrade requests: the target's, then the fallbacks.
    ws_targets: Vec<(SocketAddr, Vec<u8>)>,
    /// Reconnecting fleet: the policy, and the clients waiting for their next connect by due
    /// time (at most one entry per client).
    policy: Option<Policy>,
    retries: BinaryHeap<Reverse<(u64, usize)>>,
    ctx: Ctx,
    publisher: Option<Publisher>,
    /// `--tls`: the plaintext of one receive (kept to reuse its allocation).
    tls_plaintext: Vec<u8>,
}

impl Worker {
    pub fn new(plan: WorkerPlan, shared: Arc<Shared>) -> io::Result<Worker> {
        let channel_names: Vec<String> = (0..plan.channels)
            .map(|c| format!("{}{c}", plan.channel_prefix))
            .collect();
        let mut conns: Vec<Conn> = plan
            .clients
            .iter()
            .map(|channel| Conn::new(Kind::Ws { channel: *channel }))
            .collect();
        let ws_count = conns.len();
        let publisher = plan.publisher.map(|publisher_plan| {
            conns.extend((0..publisher_plan.connections).map(|_| Conn::new(Kind::Http)));
            Publisher::new(
                publisher_plan,
                &plan.target,
                &plan.channel_prefix,
                plan.channels,
            )
        });
        let seq_hint = match publisher.as_ref().map(|p| &p.plan.mode) {
            Some(PublishMode::Fixed { count, .. }) => *count,
            _ => 0,
        };
        let mut ws_targets = vec![(
            plan.target.ws_addr,
            wire::upgrade_request(&plan.target.ws_host, &plan.target.key),
        )];
        let policy = plan.reconnect.map(|reconnect| {
            for (addr, host) in &reconnect.fallbacks {
                ws_targets.push((*addr, wire::upgrade_request(host, &plan.target.key)));
            }
            reconnect.policy
        });
        let retries = BinaryHeap::with_capacity(if policy.is_some() { ws_count } else { 0 });
        Ok(Worker {
            index: plan.index,
            ws_targets,
            policy,
            retries,
            target: plan.target,
            ring: Ring::new(RING_ENTRIES, RECV_BUFFERS, RECV_BUFFER_BYTES)?,
            completions: Vec::new(),
            rearm: Vec::new(),
            conns,
            ws_count,
            next_connect: 0,
            connects_started: 0,
            connect_rate: plan.connect_rate,
            connect_inflight_max: plan.connect_inflight_max,
            source_ips: plan.source_ips,
            ctx: Ctx {
                finders: Finders {
                    stamp: memmem::Finder::new(wire::STAMP_MARKER),
                    ping: memmem::Finder::new(b"\"pusher:ping\""),
                    established: memmem::Finder::new(b"pusher:connection_established"),
                    succeeded: memmem::Finder::new(b"pusher_internal:subscription_succeeded"),
                    subscription_error: memmem::Finder::new(b"pusher:subscription_error"),
                    error: memmem::Finder::new(b"\"pusher:error\""),
                },
                stats: Stats::new(seq_hint),
                shared,
                channels: plan.channels,
                channel_names,
                latency_bound_us: plan.latency_bound_us,
                seq_limit: plan.seq_limit,
                mask_state: 0x9E37_79B9_7F4A_7C15 ^ (plan.index as u64 + 1),
                scratch: Vec::new(),
                inflight_connects: 0,
            },
            publisher,
            tls_plaintext: Vec::new(),
        })
    }

    /// Runs the loop until the phase is [`PHASE_STOP`]; closes every socket on return.
    pub fn run(mut self) -> WorkerResult {
        let shared = Arc::clone(&self.ctx.shared);
        let counters = &shared.workers[self.index];
        counters
            .tid
            .store(sys::thread_id() as u64, Ordering::Relaxed);
        if let Err(error) = self.ring.enable() {
            *self
                .ctx
                .stats
                .failures
                .entry(format!("io_uring_{:?}", error.kind()))
                .or_default() += 1;
            return WorkerResult {
                stats: self.ctx.stats,
                publisher: self.publisher.map(|publisher| publisher.result),
            };
        }
        let loop_start = now_ns();
        for token in self.ws_count..self.conns.len() {
            self.start_connect(token, loop_start);
        }
        let mut batching = false;
        loop {
            let now = now_ns();
            let phase = shared.phase.load(Ordering::Acquire);
            if phase == PHASE_STOP {
                break;
            }
            self.start_connects(now, loop_start);
            self.start_due_retries(now);
            self.flush_counters();
            if phase == PHASE_RUN
                && let Some(publisher) = self.publisher.as_mut()
            {
                // The wait ended up to `SEND_LEAD` early (a timed wait on an idle vCPU ends tens
                // of µs late): spin to the scheduled time, so the publish leaves on time.
                let mut now = now;
                if let Some(due) = publisher.next_due()
                    && due > now
                    && due - now <= SEND_LEAD.as_nanos() as u64
                {
                    while now < due {
                        std::hint::spin_loop();
                        now = now_ns();
                    }
                }
                publisher.tick(now, &mut self.conns, &shared);
                self.handle_publisher_failures(now);
                for token in self.ws_count..self.conns.len() {
                    self.watch_pending_output(token, now);
                }
            }
            let timeout = self.timeout(now_ns(), loop_start);
            // Messages flowing: take them in batches. Quiet: wake on the first one.
            let (want, timeout) = if batching {
                (BATCH_COMPLETIONS, timeout.min(BATCH_WAIT))
            } else {
                (1, timeout)
            };
            if let Err(error) = self.ring.wait(want, timeout) {
                *self
                    .ctx
                    .stats
                    .failures
                    .entry(format!("io_uring_{:?}", error.kind()))
                    .or_default() += 1;
                break;
            }
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.take_completions(&mut completions);
            // Batch only once every client has been started: while connects are paced by the
            // handshakes in flight, each answer should start the next connect at once.
            batching = !completions.is_empty() && self.next_connect >= self.ws_count;
            let now = now_ns();
            for completion in &completions {
                self.on_completion(*completion, now);
            }
            self.completions = completions;
            self.ring.publish_buffers();
            for token in std::mem::take(&mut self.rearm) {
                self.arm_receive(token, now);
            }
        }
        self.flush_counters();
        WorkerResult {
            stats: self.ctx.stats,
            publisher: self.publisher.map(|publisher| publisher.result),
        }
    }

    fn flush_counters(&self) {
        let counters = &self.ctx.shared.workers[self.index];
        let stats = &self.ctx.stats;
        let relaxed = Ordering::Relaxed;
        counters.started.store(self.connects_started, relaxed);
        counters.established.store(stats.established, relaxed);
        counters.ready.store(stats.ready, relaxed);
        counters
            .failed
            .store(stats.failures.values().sum(), relaxed);
        counters.closed.store(stats.closes.values().sum(), relaxed);
        counters.received.store(stats.received, relaxed);
        counters.over_bound.store(stats.over_bound, relaxed);
        counters.last_ready_ns.store(stats.last_ready_ns, relaxed);
        counters.drops.store(stats.drops, relaxed);
        counters.resubscribed.store(stats.resubscribed, relaxed);
    }

    fn timeout(&self, now: u64, loop_start: u64) -> Duration {
        let mut wake = now + TICK.as_nanos() as u64;
        if self.next_connect < self.ws_count
            && self.connect_rate > 0.0
            && (self.connect_inflight_max == 0
                || self.ctx.inflight_connects < self.connect_inflight_max)
        {
            let slot = loop_start + (self.connects_started as f64 * 1e9 / self.connect_rate) as u64;
            wake = wake.min(slot);
        }
        if let Some(Reverse((due, _))) = self.retries.peek() {
            wake = wake.min(*due);
        }
        if let Some(publisher) = &self.publisher
            && publisher.state == PubState::Running
            && !publisher.idle.is_empty()
            && publisher.next_seq < publisher.step_end_seq
        {
            let closed_loop = matches!(publisher.plan.mode, PublishMode::ClosedLoop { .. });
            wake = if closed_loop {
                now
            } else {
                let due = publisher.intended(publisher.next_seq);
                wake.min(due.saturating_sub(SEND_LEAD.as_nanos() as u64))
            };
        }
        Duration::from_nanos(wake.saturating_sub(now))
    }

    fn start_connects(&mut self, now: u64, loop_start: u64) {
        while self.next_connect < self.ws_count {
            if self.connect_inflight_max > 0
                && self.ctx.inflight_connects >= self.connect_inflight_max
            {
                break;
            }
            if self.connect_rate > 0.0 {
                let allowed =
                    (now.saturating_sub(loop_start) as f64 * self.connect_rate / 1e9) as u64 + 1;
                if self.connects_started >= allowed {
                    break;
                }
            }
            let token = self.next_connect;
            self.next_connect += 1;
            self.connects_started += 1;
            self.ctx.inflight_connects += 1;
            self.start_connect(token, now);
        }
    }

    fn start_connect(&mut self, token: usize, now: u64) {
        let conn = &mut self.conns[token];
        let (addr, source) = match conn.kind {
            Kind::Ws { .. } => (
                self.ws_targets[conn.attempts.target % self.ws_targets.len()].0,
                (!self.source_ips.is_empty())
                    .then(|| self.source_ips[token % self.source_ips.len()]),
            ),
            Kind::Http => (self.target.rest_addr, None),
        };
        let opened = (|| -> io::Result<Socket> {
            let sock = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.nonblocking().cloexec(),
                None,
            )?;
            sock.set_tcp_nodelay(true)?;
            if let Some(ip) = source {
                sys::set_bind_address_no_port(sock.as_raw_fd())?;
                sock.bind(&SocketAddr::new(ip, 0).into())?;
            }
            match sock.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(sock)
        })();
        let tls = self
            .target
            .tls
            .as_ref()
            .map(super::tls::TlsTarget::connect)
            .transpose();
        let opened = opened.and_then(|sock| Ok((sock, tls?)));
        let conn = &mut self.conns[token];
        conn.started_ns = now;
        conn.inbuf.clear();
        conn.out.clear();
        conn.out_at = 0;
        conn.generation = conn.generation.wrapping_add(1) & sys::GENERATION_MASK;
        conn.recv_armed = false;
        conn.write_armed = false;
        match opened {
            Ok((sock, tls)) => {
                let fd = sock.as_raw_fd();
                conn.sock = Some(sock);
                conn.tls = tls;
                conn.state = State::Connecting;
                // Writable once connected (or failed).
                conn.write_armed = true;
                let data = sys::user_data(OP_WRITABLE, conn.generation, token);
                if let Err(error) = self.ring.watch_writable(fd, data) {
                    self.conns[token].write_armed = false;
                    self.fail(token, Fail::Connect(error.kind()), now);
                }
            }
            Err(error) => {
                conn.state = State::Connecting;
                self.fail(token, Fail::Connect(error.kind()), now);
            }
        }
    }

    fn on_completion(&mut self, completion: Completion, now: u64) {
        let (op, generation, token) = sys::split_user_data(completion.data);
        let live = self
            .conns
            .get(token)
            .is_some_and(|conn| conn.generation == generation && conn.sock.is_some());
        match op {
            OP_RECV => {
                if live && !completion.more {
                    self.conns[token].recv_armed = false;
                }
                match (live, completion.buffer) {
                    (true, Some(bid)) if completion.result > 0 => {
                        let len = completion.result as usize;
                        self.ctx.stats.bytes_in += len as u64;
                        let result = self.process(token, bid, len, now);
                        self.ring.recycle(bid);
                        if let Err(fail) = result.and_then(|()| self.conns[token].flush()) {
                            self.fail(token, fail, now);
                            return;
                        }
                        self.handle_publisher_failures(now);
                        self.watch_pending_output(token, now);
                        if !completion.more {
                            // The kernel ended the multishot receive (e.g. a full queue).
                            self.rearm.push(token);
                        }
                    }
                    (_, Some(bid)) => self.ring.recycle(bid),
                    (false, None) => {}
                    (true, None) if completion.result == 0 => self.fail(token, Fail::Eof, now),
                    (true, None) if completion.result == -libc::ENOBUFS => self.rearm.push(token),
                    (true, None) => {
                        let error = io::Error::from_raw_os_error(-completion.result);
                        self.fail(token, Fail::Io(error.kind()), now);
                    }
                }
            }
            OP_WRITABLE if live => {
                self.conns[token].write_armed = false;
                self.on_writable(token, completion.result, now);
            }
            _ => {}
        }
    }

    /// A connect finished, or a socket that had refused a write can take more.
    fn on_writable(&mut self, token: usize, result: i32, now: u64) {
        let conn = &mut self.conns[token];
        if conn.state == State::Connecting {
            let error = if result < 0 {
                Some(io::Error::from_raw_os_error(-result))
            } else {
                match conn.sock.as_ref().map(Socket::take_error) {
                    Some(Ok(None)) => None,
                    Some(Ok(Some(error)) | Err(error)) => Some(error),
                    None => return,
                }
            };
            if let Some(error) = error {
                self.fail(token, Fail::Connect(error.kind()), now);
                return;
            }
            match conn.kind {
                Kind::Ws { .. } => {
                    conn.state = State::Handshake;
                    let target = conn.attempts.target % self.ws_targets.len();
                    conn.out.extend_from_slice(&self.ws_targets[target].1);
                }
                Kind::Http => {
                    conn.state = State::Ready;
                    if let Some(publisher) = self.publisher.as_mut() {
                        publisher.idle.push(token);
                        self.ctx
                            .shared
                            .publisher
                            .connections_ready
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.arm_receive(token, now);
        }
        if let Err(fail) = self.conns[token].flush() {
            self.fail(token, fail, now);
            return;
        }
        self.watch_pending_output(token, now);
    }

    /// Starts the multishot receive of a live connection that has none.
    fn arm_receive(&mut self, token: usize, now: u64) {
        let conn = &mut self.conns[token];
        let Some(fd) = conn.sock.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        if conn.recv_armed || conn.state == State::Connecting {
            return;
        }
        conn.recv_armed = true;
        let data = sys::user_data(OP_RECV, conn.generation, token);
        if let Err(error) = self.ring.receive(fd, data) {
            self.conns[token].recv_armed = false;
            self.fail(token, Fail::Io(error.kind()), now);
        }
    }

    /// Waits for writability when a write left output behind.
    fn watch_pending_output(&mut self, token: usize, now: u64) {
        let conn = &mut self.conns[token];
        let Some(fd) = conn.sock.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        if conn.write_armed || !conn.has_pending_output() {
            return;
        }
        conn.write_armed = true;
        let data = sys::user_data(OP_WRITABLE, conn.generation, token);
        if let Err(error) = self.ring.watch_writable(fd, data) {
            self.conns[token].write_armed = false;
            self.fail(token, Fail::Io(error.kind()), now);
        }
    }

    /// Feeds `len` bytes of receive buffer `bid` (after any buffered partial input) to the
    /// connection's protocol.
    fn process(&mut self, token: usize, bid: u16, len: usize, now: u64) -> Result<(), Fail> {
        let Worker {
            conns,
            ring,
            ctx,
            publisher,
            tls_plaintext,
            ..
        } = self;
        let conn = &mut conns[token];
        let mut plaintext = std::mem::take(tls_plaintext);
        let input = match conn.tls.as_mut() {
            Some(tls) => {
                plaintext.clear();
                super::tls::receive(tls, ring.buffer(bid, len), &mut plaintext)
                    .map_err(|_| Fail::Protocol("tls"))?;
                &plaintext[..]
            }
            None => ring.buffer(bid, len),
        };
        if conn.inbuf.is_empty() {
            let used = consume(conn, input, ctx, publisher.as_mut(), token, now)?;
            if used < input.len() && conn.state != State::Closed {
                conn.inbuf.extend_from_slice(&input[used..]);
            }
        } else {
            let mut buffered = std::mem::take(&mut conn.inbuf);
            buffered.extend_from_slice(input);
            let used = consume(conn, &buffered, ctx, publisher.as_mut(), token, now)?;
            buffered.drain(..used);
            conn.inbuf = buffered;
        }
        *tls_plaintext = plaintext;
        if conn.inbuf.len() > wire::MESSAGE_BYTES_MAX + wire::HEAD_BYTES_MAX {
            return Err(Fail::Protocol("too_big"));
        }
        Ok(())
    }

    fn handle_publisher_failures(&mut self, now: u64) {
        while let Some((token, fail)) = self
            .publisher
            .as_mut()
            .and_then(|publisher| publisher.failed.pop())
        {
            self.fail(token, fail, now);
        }
    }

    /// Ends a connection: counts why, releases its buffers, and re-opens publisher connections.
    fn fail(&mut self, token: usize, fail: Fail, now: u64) {
        let conn = &mut self.conns[token];
        if conn.state == State::Closed || conn.state == State::NotStarted {
            return;
        }
        let was_connecting = conn.connecting();
        let was_ready = conn.state == State::Ready;
        if let Some(sock) = conn.sock.take()
            && (conn.recv_armed || conn.write_armed)
        {
            // The ring holds the socket open while an operation waits on it: end them first.
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        conn.generation = conn.generation.wrapping_add(1) & sys::GENERATION_MASK;
        conn.recv_armed = false;
        conn.write_armed = false;
        conn.state = State::Closed;
        conn.inbuf = Vec::new();
        conn.out = Vec::new();
        conn.out_at = 0;
        conn.fragment = Vec::new();
        conn.fragment_op = NO_FRAGMENT;
        match conn.kind {
            Kind::Ws { .. } => {
                let stats = &mut self.ctx.stats;
                if was_connecting {
                    self.ctx.inflight_connects = self.ctx.inflight_connects.saturating_sub(1);
                    *stats.failures.entry(fail.label()).or_default() += 1;
                } else {
                    *stats.closes.entry(fail.label()).or_default() += 1;
                }
                if self.policy.is_some() {
                    self.come_back(token, &fail, was_ready, now);
                }
            }
            Kind::Http => {
                let Some(publisher) = self.publisher.as_mut() else {
                    return;
                };
                publisher.on_connection_lost(token, &fail, conn);
                if !was_connecting {
                    self.ctx
                        .shared
                        .publisher
                        .connections_ready
                        .fetch_sub(1, Ordering::Relaxed);
                }
                // A server that ends keep-alive after each answer (`Connection: close`, e.g.
                // sockudo's REST API) is served by reconnecting every time: that cost is the
                // server's behaviour, not a failure. Only real failures use up the budget.
                let graceful = matches!(fail, Fail::KeepAliveEnded);
                let reconnect = (graceful
                    || publisher.result.reconnects < PUBLISHER_RECONNECTS_MAX)
                    && self.ctx.shared.phase.load(Ordering::Relaxed) != PHASE_STOP;
                if reconnect {
                    publisher.result.reconnects += 1;
                } else {
                    *publisher
                        .result
                        .errors
                        .entry(format!("gave_up_{}", fail.label()))
                        .or_default() += 1;
                }
                if reconnect {
                    self.start_connect(token, now);
                }
            }
        }
    }
}

impl Worker {
    /// Reconnecting fleet: a client's attempt or session ended; schedules its next connect by
    /// the policy (or lets it go), and notes when a subscribed session ended.
    fn come_back(&mut self, token: usize, fail: &Fail, was_ready: bool, now: u64) {
        let Some(policy) = self.policy else {
            return;
        };
        let conn = &mut self.conns[token];
        let stats = &mut self.ctx.stats;
        if was_ready {
            stats.drops += 1;
            if conn.dropped_ns == 0 {
                conn.dropped_ns = now;
            }
            if stats.first_drop_ns == 0 {
                stats.first_drop_ns = now;
            }
            if let Kind::Ws {
                channel: Some(channel),
            } = conn.kind
            {
                self.ctx.shared.subscribed_per_channel[channel as usize]
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.ctx.shared.phase.load(Ordering::Relaxed) == PHASE_STOP {
            return;
        }
        let random = self.ctx.random();
        let conn = &mut self.conns[token];
        match policy.next(&mut conn.attempts, ended(fail, was_ready), random) {
            Next::Retry { delay_ms } => {
                self.ctx.stats.retries += 1;
                self.retries
                    .push(Reverse((now + delay_ms * 1_000_000, token)));
            }
            Next::GiveUp => {
                *self.ctx.stats.gave_up.entry(fail.label()).or_default() += 1;
            }
        }
    }

    /// Starts the connects of the clients whose back-off is over.
    fn start_due_retries(&mut self, now: u64) {
        while let Some(&Reverse((due, token))) = self.retries.peek() {
            if due > now {
                break;
            }
            self.retries.pop();
            if self.conns[token].state == State::Closed {
                self.ctx.inflight_connects += 1;
                self.start_connect(token, now);
            }
        }
    }
}

/// How a client's connection ended, in the reconnect policy's terms.
fn ended(fail: &Fail, was_ready: bool) -> Ended {
    match *fail {
        Fail::Connect(_) => Ended::ConnectFailed,
        Fail::Io(_) | Fail::Eof | Fail::KeepAliveEnded => Ended::Lost {
            subscribed: was_ready,
        },
        Fail::Handshake(status, retry_after_secs) => Ended::Refused {
            status,
            retry_after_secs,
        },
        Fail::Closed(code) | Fail::PusherError(Some(code)) => Ended::Code(code),
        Fail::PusherError(None) | Fail::SubscriptionError | Fail::Protocol(_) => Ended::Protocol,
    }
}

/// Dispatches input to the WebSocket or HTTP side; returns bytes consumed.
fn consume(
    conn: &mut Conn,
    data: &[u8],
    ctx: &mut Ctx,
    publisher: Option<&mut Publisher>,
    token: usize,
    now: u64,
) -> Result<usize, Fail> {
    match conn.kind {
        Kind::Ws { .. } => ctx.consume_ws(conn, data, now),
        Kind::Http => {
            let Some(publisher) = publisher else {
                return Err(Fail::Protocol("no_publisher"));
            };
            let mut at = 0;
            loop {
                match wire::parse_response(&data[at..]) {
                    Response::Partial => return Ok(at),
                    Response::Malformed => return Err(Fail::Protocol("http_response")),
                    Response::Complete { status, len, close } => {
                        at += len;
                        publisher.on_response(token, status, now, conn, &ctx.shared);
                        if close {
                            return Err(Fail::KeepAliveEnded);
                        }
                    }
                }
            }
        }
    }
}
