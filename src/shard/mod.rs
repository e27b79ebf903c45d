//! The shard: everything one core owns, as a sans-IO state machine. It holds the core's
//! connections (HTTP and WebSocket), the local subscriber index (channel → this core's
//! subscribers), the channels this core owns (which cores have subscribers, and how many), and
//! the REST requests waiting on other cores. The io_uring driver feeds it bytes, closes, mesh
//! messages and the time; it answers with queued output per connection and mesh messages in its
//! outbox. It never touches a socket, never reads the clock, and never sees another core's state.

mod apps;
mod channels;
mod conn;
mod frames;
mod gate;
mod history;
mod owner;
mod rest;
mod tls;
mod users;
mod websocket;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use crate::config::Config;
use crate::control::Reload;
use crate::limits;
use crate::mesh::message::PublishRefusal;
use crate::mesh::{ChannelKey, ConnRef, Outbox, ShardMessage};
use crate::metrics::{CoreMetrics, Metrics};
use crate::protocol::socket_id::SocketIdGenerator;
use crate::webhook::{WebhookEvent, WebhookKind, WebhookQueues};

pub use apps::Apps;
pub use conn::{Conn, ConnIo, Phase};
pub use history::{HistoryEvent, HistoryPage};
pub use owner::{
    Durable, Journal, JournalFailed, JournalFull, JournalStats, NoJournal, Owner, OwnerRecord,
    ReplicaView, Replicated,
};
use rest::Query;
pub use tls::TlsSession;

/// The time, passed in by the driver (the shard never reads a clock).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic milliseconds since the process started.
    pub mono_ms: u64,
    /// The same clock in microseconds (latency measurements).
    pub mono_us: u64,
    /// Wall-clock Unix seconds (REST timestamps).
    pub unix_secs: u64,
    /// Wall-clock Unix milliseconds (webhook `time_ms`, publish times, cache expiry).
    pub unix_ms: u64,
}

impl Now {
    /// The time before the driver's first call.
    pub const ZERO: Now = Now {
        mono_ms: 0,
        mono_us: 0,
        unix_secs: 0,
        unix_ms: 0,
    };
}

/// From this many local subscribers on, a frame from another core is copied once per core.
const LOCAL_COPY_SUBSCRIBERS_MIN: usize = 8;

/// What the process's control plane tells a core. The driver reads `Control` and feeds every
/// change in as one of these; the shard itself never reads a process-wide atomic or a clock, so
/// the same inputs always give the same outputs.
#[derive(Debug, Clone)]
pub enum ControlEvent {
    /// Start-up is finished (or not): `/readyz` answers 200 while ready and not draining.
    Ready(bool),
    /// The drain began: readiness is false from now on, upgrades are refused with 4200,
    /// keep-alive ends, and connections are closed from monotonic `close_at_ms` on.
    Drain { close_at_ms: u64 },
    /// Whether every core loop ran within `limits::CORE_LOOP_STALL_MS` (`/healthz`).
    Liveness { all_cores_alive: bool },
    /// A reloaded configuration (SIGHUP): apps and limits change, connections stay.
    Reload(Arc<Reload>),
    /// The hot standby's view: whether this node is the primary (a standby refuses clients;
    /// a primary that becomes a standby closes its clients with 4200 so they reconnect to the
    /// new primary), and whether its standby is unavailable (`/readyz` says so).
    /// `frozen`: a planned switchover froze publishes (503 naming it; an owner sequences none).
    /// `move_clients_ms`: a step-down after a planned switchover closes the WebSocket clients
    /// with 4200 spread over that many ms (the drain's jittered pacer) instead of all at once.
    Replication {
        primary: bool,
        standby_lost: bool,
        frozen: bool,
        move_clients_ms: u64,
    },
}

/// The shard's view of the control plane, built only from `ControlEvent`s.
#[derive(Debug, Clone, Copy)]
struct ControlView {
    ready: bool,
    drain_close_at_ms: Option<u64>,
    cores_alive: bool,
    /// False on a standby (always true without replication).
    primary: bool,
    standby_lost: bool,
    /// A planned switchover froze publishes.
    frozen: bool,
}

impl ControlView {
    fn is_draining(&self) -> bool {
        self.drain_close_at_ms.is_some()
    }

    fn is_ready(&self) -> bool {
        self.ready && !self.is_draining()
    }
}

/// The staggered move of a core's WebSocket clients after a planned switchover.
#[derive(Debug, Clone, Copy)]
struct Moving {
    /// Closes per second (this core's), before the pacer's jitter.
    per_s: f64,
    /// Monotonic ms by which every client is closed.
    until_ms: u64,
}

pub struct Shard {
    /// The process's random epoch (socket ids, channel epochs of new channels).
    process_epoch: u64,
    core: usize,
    cores: usize,
    config: Arc<Config>,
    apps: Arc<Apps>,
    conns: Slab<Conn>,
    generation: u32,
    /// Channel → this core's Active subscribers (slab keys).
    local: HashMap<ChannelKey, Vec<u32>>,
    /// The state of the channels and users this core owns (the WAL's state machine).
    owner: Owner,
    /// Where the owner appends its records (the WAL's group-commit buffer, or nothing).
    journal: Box<dyn Journal + Send>,
    /// The owner's effects being carried out (kept to reuse its allocation).
    effects: Vec<(usize, ShardMessage)>,
    /// Owner messages held until the standby has what they reveal (`gate.rs`).
    gate: gate::ReplicaGate,
    /// Timer sweeps done, to run rarer housekeeping every so many sweeps.
    sweeps: u64,
    queries: Slab<Query>,
    query_generation: u32,
    outbox: Outbox,
    dirty: Vec<u32>,
    socket_ids: SocketIdGenerator,
    connections_max: usize,
    /// The time of the current driver call; internal code reads this, never a clock.
    now: Now,
    /// Readiness, drain and liveness as last reported by the driver.
    control: ControlView,
    metrics: Arc<Metrics>,
    webhooks: Arc<WebhookQueues>,
    /// The endpoint of the HTTP request being answered (for metrics).
    endpoint: crate::metrics::Endpoint,
    /// Accept-rate token bucket: tokens available and when it was last refilled.
    accept_tokens: f64,
    accept_refilled_ms: u64,
    /// Drain pacing: closes owed to the rate but not yet done, and a jitter state.
    drain_credit: f64,
    jitter: u64,
    /// After a planned switchover: this node's WebSocket clients being moved to the new
    /// primary (closed with 4200 at a pace that ends by `until_ms`).
    moving: Option<Moving>,
    /// Heap bytes the frame decoders of this core's WebSocket connections hold for unfinished
    /// messages, bounded by `server.ws_partial_bytes_per_core_max`.
    ws_partial_bytes: usize,
    /// A reload may have disabled or removed apps whose clients are still connected: the timer
    /// closes them at the drain's pace until a sweep finds none.
    evicting: bool,
    /// The certificate and key for new TLS connections (None: no TLS listener).
    tls_config: Option<Arc<rustls::ServerConfig>>,
    /// TLS handshakes in flight, bounded by `tls.handshakes_per_core_max`.
    tls_handshaking: usize,
    /// Plaintext decrypted from one receive (kept to reuse its allocation).
    tls_plaintext: Vec<u8>,
    /// Received TLS ciphertext being decrypted (reused; a connection keeps only a partial
    /// record of its own).
    tls_incoming: Vec<u8>,
    /// The frames of one TLS send, taken from the connection's queue to be encrypted (reused).
    tls_frames: Vec<Bytes>,
}

impl Shard {
    pub fn new(
        core: usize,
        cores: usize,
        config: Arc<Config>,
        apps: Arc<Apps>,
        epoch: u64,
        metrics: Arc<Metrics>,
        webhooks: Arc<WebhookQueues>,
    ) -> Shard {
        assert!(core < cores);
        let owner = Owner::new(
            core,
            cores,
            Arc::clone(&config),
            Arc::clone(&apps),
            Arc::clone(&webhooks),
            epoch,
        );
        let gate = gate::ReplicaGate::new(acks_need_the_standby(&config));
        Shard {
            process_epoch: epoch,
            core,
            cores,
            config,
            apps,
            conns: Slab::new(),
            generation: 0,
            local: HashMap::new(),
            owner,
            journal: Box::new(NoJournal),
            effects: Vec::new(),
            gate,
            sweeps: 0,
            queries: Slab::new(),
            query_generation: 0,
            outbox: Outbox::new(core, cores),
            dirty: Vec::new(),
            socket_ids: SocketIdGenerator::new(epoch, core, cores),
            connections_max: limits::CONNECTIONS_PER_CORE_MAX,
            now: Now::ZERO,
            control: ControlView {
                ready: false,
                drain_close_at_ms: None,
                cores_alive: true,
                primary: true,
                standby_lost: false,
                frozen: false,
            },
            metrics,
            webhooks,
            endpoint: crate::metrics::Endpoint::Other,
            accept_tokens: 0.0,
            accept_refilled_ms: 0,
            drain_credit: 0.0,
            moving: None,
            jitter: epoch ^ (core as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ws_partial_bytes: 0,
            evicting: false,
            tls_config: None,
            tls_handshaking: 0,
            tls_plaintext: Vec::new(),
            tls_incoming: Vec::new(),
            tls_frames: Vec::new(),
        }
    }

    /// The configuration and app table the shard runs with now (reloads replace them).
    pub fn config_and_apps(&self) -> (Arc<Config>, Arc<Apps>) {
        (Arc::clone(&self.config), Arc::clone(&self.apps))
    }

    pub fn core(&self) -> usize {
        self.core
    }

    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn has_conn(&self, key: u32) -> bool {
        self.conns.contains(key as usize)
    }

    pub fn conn(&self, key: u32) -> &Conn {
        &self.conns[key as usize]
    }

    pub fn conn_mut(&mut self, key: u32) -> &mut Conn {
        &mut self.conns[key as usize]
    }

    /// A new socket. None when this core is full: the driver closes the socket.
    pub fn accept(&mut self, fd: RawFd, now: Now) -> Option<u32> {
        self.now = now;
        if self.conns.len() >= self.connections_max {
            return None;
        }
        self.generation = self.generation.wrapping_add(1);
        let key = self.conns.insert(Conn {
            fd,
            generation: self.generation,
            phase: Phase::Http {
                input: Vec::new(),
                awaiting: None,
            },
            out: Default::default(),
            out_bytes: 0,
            closing: false,
            dead: false,
            aborted: false,
            over_capacity: false,
            deadline_ms: now.mono_ms + self.config.server.request_timeout_ms,
            dirty: false,
            io: ConnIo::default(),
            tls: None,
        });
        Some(key as u32)
    }

    /// A socket the driver accepted on its spare descriptor at the descriptor limit: it is
    /// served only to be refused (`Conn::over_capacity`), within the usual request timeout.
    /// None when this core is full: the driver closes the socket.
    /// `tls`: it came from the TLS listener (it is answered after its handshake).
    pub fn accept_over_capacity(&mut self, fd: RawFd, tls: bool, now: Now) -> Option<u32> {
        let key = if tls {
            self.accept_tls(fd, now)?
        } else {
            self.accept(fd, now)?
        };
        self.conns[key as usize].over_capacity = true;
        Some(key)
    }

    /// Bytes from the peer.
    pub fn on_recv(&mut self, key: u32, data: &[u8], now: Now) {
        self.now = now;
        let conn = &mut self.conns[key as usize];
        if conn.closing || conn.dead {
            return;
        }
        if conn.tls.is_some() {
            self.on_tls_recv(key, data);
        } else {
            self.on_plaintext(key, data);
        }
    }

    /// Bytes from the peer, decrypted when the connection is TLS.
    fn on_plaintext(&mut self, key: u32, data: &[u8]) {
        let conn = &mut self.conns[key as usize];
        if conn.closing || conn.dead {
            return;
        }
        match &mut conn.phase {
            Phase::Http { input, .. } => {
                input.extend_from_slice(data);
                self.process_http(key);
            }
            Phase::WebSocket(_) => self.process_ws(key, data),
        }
    }

    /// The peer is gone (EOF or a socket error): drop all shard state of the connection. The
    /// driver frees the slot once no operation refers to it.
    pub fn on_peer_closed(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return;
        }
        conn.dead = true;
        // Frames a send has in flight are not in the queue (`take_for_send`): the send owns them
        // until its completion, so clearing the queue frees nothing the kernel may still read.
        conn.out.clear();
        conn.out_bytes = 0;
        self.tls_gone(key);
        self.release_connection_state(key);
    }

    /// Frees the slot; returns the socket for the driver to close.
    pub fn remove(&mut self, key: u32) -> RawFd {
        let conn = self.conns.remove(key as usize);
        assert!(conn.reclaimable(), "removing a connection still in use");
        conn.fd
    }

    /// Connections with new output since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.dirty);
        for &key in into.iter() {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                conn.dirty = false;
            }
        }
    }

    /// Moves up to `max` frames from the front of the connection's queue into `into` (empty),
    /// for one send. From here until `on_sent` the send owns them, so nothing that happens to the
    /// connection meanwhile (a reset clears its queue) can free memory the kernel may still read.
    /// They stay counted in `out_bytes`: bytes in flight are bytes the peer has not taken yet,
    /// and a peer that stops reading must still reach its bound.
    pub fn take_for_send(&mut self, key: u32, into: &mut Vec<Bytes>, max: usize) {
        assert!(into.is_empty(), "one send at a time per connection");
        if self.conns[key as usize].tls.is_some() {
            self.take_tls_for_send(key, into);
            return;
        }
        let conn = &mut self.conns[key as usize];
        while into.len() < max {
            let Some(frame) = conn.out.pop_front() else {
                break;
            };
            into.push(frame);
        }
    }

    /// The send of `frames` (taken by `take_for_send`, in order) is over and wrote `written`
    /// bytes of them: those leave `out_bytes`, and the unsent rest goes back to the front of the
    /// queue, in order, ahead of anything queued meanwhile. A dead connection's frames are just
    /// dropped (the kernel is done with them now). Leaves `frames` empty.
    pub fn on_sent(&mut self, key: u32, mut written: usize, frames: &mut Vec<Bytes>) {
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            frames.clear();
            return;
        }
        if conn.tls.is_some() {
            self.tls_sent(key, written, frames);
            return;
        }
        assert!(written <= conn.out_bytes, "more written than queued");
        conn.out_bytes -= written;
        let mut unsent = frames.len();
        for (index, frame) in frames.iter_mut().enumerate() {
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            let _ = frame.split_to(written);
            written = 0;
            unsent = index;
            break;
        }
        assert_eq!(written, 0, "more written than sent");
        for frame in frames.drain(unsent..).rev() {
            conn.out.push_front(frame);
        }
        frames.clear();
    }

    /// Whether the driver should now half-close the socket (a closing connection whose output
    /// is fully written).
    pub fn wants_write_shutdown(&self, key: u32) -> bool {
        let conn = &self.conns[key as usize];
        conn.closing
            && !conn.dead
            && !conn.has_output()
            && !conn.io.write_shut
            && !conn.io.send_in_flight
    }

    pub fn on_mesh(&mut self, from: usize, message: ShardMessage, now: Now) {
        self.now = now;
        self.handle_message(from, message);
    }

    /// Handles one message from core `from` (which may be this core, for work it owns itself).
    fn handle_message(&mut self, from: usize, message: ShardMessage) {
        if Owner::is_owner_bound(&message) {
            if let ShardMessage::Publish { publish, .. } = &message
                && self.control.frozen
            {
                // Sent before the sender saw the freeze: refused here, so nothing is
                // sequenced once every core has seen it.
                self.owner
                    .refuse(from, publish.client, PublishRefusal::Switchover);
                self.core_metrics()
                    .reject(crate::metrics::REJECT_SWITCHOVER);
                return;
            }
            if let ShardMessage::Publish { publish, .. } = &message
                && self.fan_out_backed_up(&publish.channel)
            {
                self.owner
                    .refuse(from, publish.client, PublishRefusal::Busy);
                self.core_metrics()
                    .reject(crate::metrics::REJECT_MESH_BACKLOG);
                return;
            }
            self.owner
                .apply(from, message, self.now, &mut *self.journal);
            let refused = self.owner.take_refused_client_events();
            let core_metrics = &self.metrics.cores[self.core];
            CoreMetrics::add(
                &core_metrics.rejected[crate::metrics::REJECT_STORAGE_FULL],
                refused,
            );
            self.run_owner_effects();
            return;
        }
        match message {
            ShardMessage::SubscribeOk {
                channel,
                conn,
                user_id,
                reply,
            } => self.subscription_answered(channel, conn, user_id, *reply),
            ShardMessage::Resubscribed {
                channel,
                conn,
                presence_data,
            } => self.resubscribe_answered(channel, conn, presence_data),
            ShardMessage::Deliver {
                channel,
                frame,
                exclude,
                published_us,
            } => {
                // Every subscriber's queue entry bumps the frame's reference count. For a frame
                // made on another core, that count's cache line would bounce between cores on
                // every clone and drop; one private copy per core keeps the traffic local.
                let local_subscribers = self.local.get(&channel).map_or(0, Vec::len);
                let frame = if from != self.core && local_subscribers >= LOCAL_COPY_SUBSCRIBERS_MIN
                {
                    Bytes::copy_from_slice(&frame)
                } else {
                    frame
                };
                self.deliver_local(&channel, &frame, exclude, published_us);
            }
            ShardMessage::ChannelList { query, channels } => self.query_list_reply(query, channels),
            ShardMessage::ChannelDescription { query, index, info } => {
                self.query_describe_reply(query, index, info)
            }
            ShardMessage::HistoryPage { query, page } => self.query_history_reply(query, *page),
            ShardMessage::TerminateUser { app, user_id } => self.terminate_user(app, &user_id),
            ShardMessage::BarrierAck { query, outcome } => self.query_barrier_reply(query, outcome),
            ShardMessage::WatchStatus {
                conn,
                watched,
                online,
            } => self.watch_status(conn, watched, online),
            other => unreachable!("owner-bound messages are handled above: {other:?}"),
        }
    }

    /// Whether the fan-out of a publish on `channel` would add to a backlog already at
    /// `MESH_BACKLOG_MAX` toward some core (the owner refuses it: 503 for REST).
    fn fan_out_backed_up(&self, channel: &ChannelKey) -> bool {
        let outbox = &self.outbox;
        self.owner.fan_out_backed_up(
            channel,
            |core| outbox.backlog(core),
            limits::MESH_BACKLOG_MAX,
        )
    }

    /// Sends `message` to core `core`, handling it here at once when that is this core.
    fn send_to_core(&mut self, core: usize, message: ShardMessage) {
        if core == self.core {
            self.handle_message(core, message);
        } else {
            self.outbox.push(core, message);
        }
    }

    /// Carries out what the owner produced: messages for this core are handled here at once,
    /// in order; the others go to the outbox.
    /// With an ack mode that needs the standby, a message waits in the replica gate until the
    /// standby has the records it can reveal.
    fn run_owner_effects(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        self.owner.take_effects(&mut effects);
        let lsn = self.journal.appended_lsn();
        let primary = self.control.primary;
        for (to, message) in effects.drain(..) {
            let admitted = self.gate.admit(lsn, self.now.mono_ms, primary, to, message);
            if let Some((to, message)) = admitted {
                self.send_to_core(to, message);
            }
        }
        self.effects = effects;
    }

    /// The messages the standby's position (or its loss, or the timeout) now releases.
    fn release_gated(&mut self, durable: &Durable) {
        if self.gate.len() == 0 && durable.replica.is_none() {
            return;
        }
        let mut released = std::mem::take(&mut self.effects);
        self.gate.release(
            durable.replica,
            self.control.primary,
            self.now.mono_ms,
            self.config.replication.standby_timeout_ms,
            &mut released,
        );
        for (to, message) in released.drain(..) {
            self.send_to_core(to, message);
        }
        self.effects = released;
    }

    /// Ends a loop tick: the journal writes (and by policy syncs) what this tick appended, and
    /// publishes waiting for it are acknowledged. The driver calls it before it sends anything
    /// (mesh messages, socket writes), so nothing leaves the core before its record is written;
    /// acknowledging can let pipelined requests publish more, which this commits as well.
    pub fn commit(&mut self, now: Now) -> Result<(), JournalFailed> {
        self.now = now;
        loop {
            let durable = self.journal.commit(now)?;
            self.acknowledge(durable);
            if !self.journal.has_pending() {
                return Ok(());
            }
        }
    }

    /// A sync the driver should start without blocking (see `Journal::begin_sync`).
    pub fn begin_journal_sync(&mut self, now: Now) -> Option<std::os::fd::RawFd> {
        self.journal.begin_sync(now)
    }

    /// The journal sync the driver started finished: publishes waiting for it are acknowledged.
    pub fn journal_synced(
        &mut self,
        result: std::io::Result<()>,
        now: Now,
    ) -> Result<(), JournalFailed> {
        self.now = now;
        let durable = self.journal.end_sync(result)?;
        self.acknowledge(durable);
        Ok(())
    }

    /// Shutdown: everything appended is written and synced.
    pub fn flush_journal(&mut self, now: Now) -> Result<(), JournalFailed> {
        self.journal.flush(now)
    }

    /// Journal timers (every sweep): state that would hold old segments back is written again
    /// (and committed), then an idle stream is synced, space retried, and segments no longer
    /// needed are removed.
    pub fn maintain_journal(&mut self, now: Now) -> Result<(), JournalFailed> {
        self.now = now;
        let cut = self.journal.retention_cut(now);
        // A standby's stream is the primary's copy: it never appends records of its own (the
        // primary carries its state forward, and that arrives as records too).
        if self.control.primary {
            self.owner.carry_forward(cut, now, &mut *self.journal);
        }
        self.commit(now)?;
        let durable = self.journal.maintain(now, self.owner.needed_lsn())?;
        self.acknowledge(durable);
        let stats = self.journal.stats();
        let values = [
            stats.appended_lsn,
            stats.written_lsn,
            stats.synced_lsn,
            stats.bytes,
            stats.segments,
            u64::from(stats.storage_full),
        ];
        for (gauge, value) in self.core_metrics().wal.iter().zip(values) {
            gauge.store(value, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Milliseconds until the journal wants the loop awake (an idle stream's sync).
    pub fn journal_wake_in_ms(&self, now: Now) -> Option<u64> {
        self.journal.sync_due_in_ms(now)
    }

    fn acknowledge(&mut self, durable: Durable) {
        self.release_gated(&durable);
        self.owner.committed(durable, self.now);
        self.run_owner_effects();
    }

    /// Installs the WAL's group-commit buffer (before the first connection).
    pub fn set_journal(&mut self, journal: Box<dyn Journal + Send>) {
        self.journal = journal;
    }

    /// A standby whose stream is cut or wiped (a resync): the journal is flushed and handed
    /// back, and the owner state starts empty, to be rebuilt by replaying what is left. Only on
    /// a standby: it has no clients, so nothing is waiting on the owner.
    ///
    /// # Errors
    ///
    /// The journal could not be flushed.
    pub fn reset_for_resync(&mut self, now: Now) -> Result<(), JournalFailed> {
        assert!(!self.control.primary, "only a standby resyncs");
        self.journal.flush(now)?;
        self.journal = Box::new(NoJournal);
        self.owner = Owner::new(
            self.core,
            self.cores,
            Arc::clone(&self.config),
            Arc::clone(&self.apps),
            Arc::clone(&self.webhooks),
            self.process_epoch,
        );
        Ok(())
    }

    /// Start-up: one WAL record of this core's stream, applied without effects.
    pub fn replay(&mut self, record: OwnerRecord, lsn: u64, now: Now) {
        self.owner.replay(record, lsn, now);
    }

    /// Start-up: the replay is over (restored presence and positions get their grace).
    pub fn replayed(&mut self, now: Now) {
        self.owner.replayed(now);
    }

    /// Standby: records the primary wrote (whole encoded records, contiguous LSNs) are
    /// appended to this core's stream verbatim and applied to the owner state without effects,
    /// as a replay does. The tick's commit writes (and syncs) them like any other records.
    ///
    /// # Errors
    ///
    /// Returns how many bytes of `bytes` were taken: fewer than all when the disk is full
    /// (the rest is to be given again once space is back, `storage_full` says when).
    ///
    /// # Errors
    ///
    /// The journal refused or failed: the standby must not acknowledge anything after it.
    pub fn apply_replicated(&mut self, bytes: &[u8], now: Now) -> Result<usize, JournalFailed> {
        self.now = now;
        let mut taken = 0;
        while taken < bytes.len() {
            let rest = &bytes[taken..];
            let len = match crate::wal::record::frame(rest) {
                Ok((header, _)) => header.len as usize,
                Err(error) => {
                    return Err(JournalFailed(format!("bad replicated record: {error}")));
                }
            };
            match self.journal.append_replicated(&rest[..len])? {
                Replicated::Apply(record, lsn) => self.owner.replay(record, lsn, now),
                Replicated::Kept => {}
                Replicated::Full => break,
            }
            taken += len;
        }
        Ok(taken)
    }

    /// Promotion: this core's stream enters `epoch` (its `EpochStart` written and synced), and
    /// the state the standby applied gets the grace a restart gives (presence members are
    /// tentative until they reconnect or the grace ends).
    ///
    /// # Errors
    ///
    /// The `EpochStart` could not be persisted.
    pub fn promote(&mut self, epoch: u64, node_id: &str, now: Now) -> Result<(), JournalFailed> {
        self.now = now;
        self.journal.start_epoch(epoch, node_id, now)?;
        self.owner.replayed(now);
        Ok(())
    }

    /// Periodic sweep: request deadlines, activity pings, pong timeouts, close lingers.
    pub fn on_timer(&mut self, now: Now) {
        self.now = now;
        let activity_ms = u64::from(self.config.server.activity_timeout_secs) * 1000;
        let pong_ms = u64::from(self.config.server.pong_timeout_secs) * 1000;
        let message_ms = self.config.server.ws_message_timeout_ms;
        let mut expired = Vec::new();
        let mut stalled = Vec::new();
        let mut ping = Vec::new();
        let mut pong_missing = Vec::new();
        let mut unauthorized = Vec::new();
        for (key, conn) in self.conns.iter() {
            if conn.dead {
                continue;
            }
            if conn.closing {
                if now.mono_ms >= conn.deadline_ms {
                    expired.push(key as u32);
                }
                continue;
            }
            match &conn.phase {
                Phase::Http { awaiting: None, .. } if now.mono_ms >= conn.deadline_ms => {
                    expired.push(key as u32)
                }
                Phase::Http { .. } => {}
                Phase::WebSocket(ws) => {
                    if ws.auth_deadline_ms != 0 && now.mono_ms >= ws.auth_deadline_ms {
                        unauthorized.push(key as u32);
                        continue;
                    }
                    // Sending a byte now and then resets the activity timer, but not this
                    // one: a message must finish within its own deadline.
                    if ws
                        .partial_since
                        .is_some_and(|(_, since)| now.mono_ms.saturating_sub(since) >= message_ms)
                    {
                        stalled.push(key as u32);
                        continue;
                    }
                    match ws.ping_sent_ms {
                        None if now.mono_ms.saturating_sub(ws.last_seen_ms) >= activity_ms => {
                            ping.push(key as u32)
                        }
                        Some(sent) if now.mono_ms.saturating_sub(sent) >= pong_ms => {
                            pong_missing.push(key as u32)
                        }
                        _ => {}
                    }
                }
            }
        }
        for key in expired {
            self.expire(key);
        }
        for key in ping {
            self.send_ping(key);
        }
        for key in stalled {
            self.close_ws(
                key,
                crate::protocol::close_code::MESSAGE_TIMEOUT_CLOSE,
                false,
            );
        }
        for key in pong_missing {
            self.close_ws(key, crate::protocol::close_code::PONG_NOT_RECEIVED, true);
        }
        for key in unauthorized {
            self.close_ws_with(
                key,
                crate::protocol::close_code::UNAUTHORIZED,
                "Connection not authorized within timeout.",
                true,
            );
        }
        // One pace for both: while the drain closes everything, evictions would only double it.
        if !self.drain_some(limits::TIMER_SWEEP_INTERVAL_MS)
            && !self.move_some(limits::TIMER_SWEEP_INTERVAL_MS)
        {
            self.evict_some(limits::TIMER_SWEEP_INTERVAL_MS);
        }
        self.sweeps += 1;
        if self.control.primary {
            self.owner.tick(now, self.sweeps, &mut *self.journal);
        }
        self.run_owner_effects();
    }

    /// A deadline passed: a slow HTTP request gets 408, an idle keep-alive connection or a
    /// lingering close is simply dropped.
    fn expire(&mut self, key: u32) {
        if self.expire_handshake(key) {
            return;
        }
        let conn = &mut self.conns[key as usize];
        let pending_input = matches!(&conn.phase, Phase::Http { input, .. } if !input.is_empty());
        if conn.closing {
            // A close the peer did not complete in time (its output may be stuck behind a
            // reader that stopped): reset it.
            self.reset(key);
            return;
        }
        if !pending_input {
            // An idle keep-alive connection: an orderly close (the driver sees `dead` with
            // nothing in flight after it cancels the socket).
            self.abort(key);
            return;
        }
        // A request begun and not finished in time (a slow client, or slowloris): 408, counted
        // as an HTTP call (no endpoint is known before the request is) and as a rejection.
        self.endpoint = crate::metrics::Endpoint::Other;
        self.core_metrics()
            .reject(crate::metrics::REJECT_REQUEST_TIMEOUT);
        self.respond_error(key, 408, "Request timeout", false, &[]);
    }

    /// Drops a connection at once, without a goodbye (the driver shuts the socket down).
    pub(crate) fn abort(&mut self, key: u32) {
        // `closing` too, so every handler loop that stops on a closing connection stops here.
        self.conns[key as usize].closing = true;
        self.on_peer_closed(key);
        self.mark_dirty(key);
    }

    /// Drops a connection at once and has the driver reset it (`Conn::aborted`), for a peer that
    /// stopped reading: nothing queued for it will be delivered anyway.
    pub(crate) fn reset(&mut self, key: u32) {
        self.conns[key as usize].aborted = true;
        self.abort(key);
    }

    /// Stop processing input; flush what is queued; the driver half-closes after the flush and
    /// drops the socket when the peer closes or the linger expires.
    fn begin_close(&mut self, key: u32) {
        let now = self.now;
        let conn = &mut self.conns[key as usize];
        if conn.closing {
            return;
        }
        conn.closing = true;
        conn.deadline_ms = now.mono_ms + limits::CLOSE_LINGER_MS;
        if let Phase::Http { input, .. } = &mut conn.phase {
            *input = Vec::new();
        }
        self.release_connection_state(key);
        self.mark_dirty(key);
    }

    /// Queues one frame or response for the connection, enforcing the outbound bound. Returns
    /// false when the connection is over its bound (the caller closes it as a slow consumer).
    fn queue(&mut self, key: u32, bytes: Bytes) -> bool {
        let limit = self.config.server.outbound_bytes_max;
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return true;
        }
        // Something still unwritten (queued, or in flight in a send): one frame alone may pass
        // the bound, so a frame larger than it can still go to a reader that keeps up.
        if conn.out_bytes + bytes.len() > limit && conn.out_bytes != 0 {
            return false;
        }
        conn.out_bytes += bytes.len();
        conn.out.push_back(bytes);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        true
    }

    fn mark_dirty(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn conn_ref(&self, key: u32) -> ConnRef {
        ConnRef {
            core: self.core as u16,
            key,
            generation: self.conns[key as usize].generation,
        }
    }

    /// Releases what a connection holds outside its own struct: subscriptions (local index and
    /// owner counts), the app's connection count, pending queries.
    fn release_connection_state(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        let Phase::WebSocket(ws) = &mut conn.phase else {
            if let Phase::Http { awaiting, .. } = &mut conn.phase
                && let Some(slot) = awaiting.take()
            {
                self.queries.remove(slot as usize);
            }
            return;
        };
        // The connection reads no more input: what its decoder holds is dead weight.
        self.ws_partial_bytes -= ws.decoder.buffered_bytes();
        ws.decoder.discard();
        ws.partial_since = None;
        let subscriptions = std::mem::take(&mut ws.subscriptions);
        let app = ws.app;
        let counted = std::mem::replace(&mut ws.counted, false);
        let signed_in = ws.user_id.take();
        let watchlist = ws.watchlist.take();
        for subscription in subscriptions {
            self.drop_subscription(key, subscription);
        }
        if let Some(user_id) = signed_in {
            self.user_signed_out(app, user_id, watchlist);
        }
        if counted {
            self.apps.disconnect(app);
            let core_metrics = self.core_metrics();
            core_metrics
                .connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            CoreMetrics::add(&core_metrics.new_disconnections, 1);
        }
    }

    pub(crate) fn core_metrics(&self) -> &CoreMetrics {
        &self.metrics.cores[self.core]
    }

    /// A change of the control plane (see `ControlEvent`).
    pub fn on_control(&mut self, event: ControlEvent, now: Now) {
        self.now = now;
        match event {
            ControlEvent::Ready(ready) => self.control.ready = ready,
            ControlEvent::Drain { close_at_ms } => {
                self.control.drain_close_at_ms = Some(close_at_ms);
            }
            ControlEvent::Liveness { all_cores_alive } => {
                self.control.cores_alive = all_cores_alive;
            }
            ControlEvent::Reload(reload) => self.apply_reload(&reload),
            ControlEvent::Replication {
                primary,
                standby_lost,
                frozen,
                move_clients_ms,
            } => {
                let stepped_down = self.control.primary && !primary;
                self.control.primary = primary;
                self.control.standby_lost = standby_lost;
                self.control.frozen = frozen;
                if stepped_down {
                    self.close_clients_for_new_primary(move_clients_ms);
                }
            }
        }
    }

    /// This node stopped being the primary: every WebSocket client is closed with 4200 (they
    /// reconnect, through the load balancer, to the new primary), at once or, after a planned
    /// switchover, spread over `move_clients_ms` (`move_some`); idle HTTP connections are
    /// closed at once.
    fn close_clients_for_new_primary(&mut self, move_clients_ms: u64) {
        let keys: Vec<u32> = self.conns.iter().map(|(key, _)| key as u32).collect();
        let websockets = keys
            .iter()
            .filter(|key| {
                let conn = &self.conns[**key as usize];
                !conn.dead && !conn.closing && matches!(conn.phase, Phase::WebSocket(_))
            })
            .count();
        let staggered = move_clients_ms > 0 && websockets > 0;
        if staggered {
            // A pace that closes them all within the spread (the pacer's jitter averages out;
            // whatever is left when the spread is over goes then).
            let per_s = (websockets as f64 * 1000.0 / move_clients_ms as f64).max(1.0);
            self.moving = Some(Moving {
                per_s,
                until_ms: self.now.mono_ms + move_clients_ms,
            });
        }
        for key in keys {
            if self.conns[key as usize].dead {
                continue;
            }
            match self.conns[key as usize].phase {
                Phase::WebSocket(_) if staggered => {}
                Phase::WebSocket(_) => {
                    self.close_ws(key, crate::protocol::close_code::SERVER_CLOSING, true)
                }
                Phase::Http { awaiting: None, .. } => self.begin_close(key),
                Phase::Http { .. } => {}
            }
        }
    }

    /// Whether this node serves clients (false on a standby).
    pub fn is_primary(&self) -> bool {
        self.control.primary
    }

    /// Applies a reloaded configuration: apps and limits change, connections stay, except the
    /// clients of apps the reload disabled or removed, which the timer then closes
    /// (`evict_some`).
    fn apply_reload(&mut self, reload: &Reload) {
        self.config = Arc::clone(&reload.config);
        self.apps = Arc::clone(&reload.apps);
        self.owner
            .reload(Arc::clone(&reload.config), Arc::clone(&reload.apps));
        self.journal.reload(Arc::clone(&reload.apps));
        self.gate.set_enabled(acks_need_the_standby(&reload.config));
        if let Some(tls) = &reload.tls {
            self.tls_config = Some(Arc::clone(tls));
        }
        self.evicting = true;
    }

    /// One token of this core's share of `server.accepts_per_sec_max` (always true when
    /// unlimited). The bucket holds at most one second's worth.
    fn take_accept_token(&mut self) -> bool {
        let per_second = self.config.server.accepts_per_sec_max;
        if per_second == 0 {
            return true;
        }
        let share = (per_second as f64 / self.cores as f64).max(1.0);
        let elapsed_ms = self.now.mono_ms.saturating_sub(self.accept_refilled_ms);
        self.accept_refilled_ms = self.now.mono_ms;
        self.accept_tokens = (self.accept_tokens + share * elapsed_ms as f64 / 1000.0).min(share);
        if self.accept_tokens < 1.0 {
            return false;
        }
        self.accept_tokens -= 1.0;
        true
    }

    /// Drain: once the grace period is over, closes this core's share of `drain_rate_per_s`
    /// connections per sweep, in a jittered order and amount, WebSocket clients with 4200.
    /// Returns whether the drain is closing connections.
    fn drain_some(&mut self, elapsed_ms: u64) -> bool {
        let Some(close_at) = self.control.drain_close_at_ms else {
            return false;
        };
        if self.now.mono_ms < close_at {
            return false;
        }
        let per_s = self.config.server.drain_rate_per_s as f64;
        let chosen = self
            .paced_closes(elapsed_ms, per_s, |_| true)
            .unwrap_or_default();
        for key in chosen {
            match self.conns[key as usize].phase {
                Phase::WebSocket(_) => {
                    self.close_ws(key, crate::protocol::close_code::SERVER_CLOSING, true)
                }
                // Idle or between requests: flush what is queued, then close. A request waiting
                // for other cores finishes first (its connection is picked again later).
                Phase::Http { awaiting: None, .. } => self.begin_close(key),
                Phase::Http { .. } => {}
            }
        }
        true
    }

    /// After a reload: closes the WebSocket clients of apps that are now disabled (4003, as a
    /// new connection would get) or removed (4001), at the drain's pace (`drain_rate_per_s`,
    /// jittered), so a reload that turns off a large app does not close every client in one
    /// sweep. Both codes are in pusher-js's "do not reconnect" range. Stops once a sweep finds
    /// no such client.
    fn evict_some(&mut self, elapsed_ms: u64) {
        if !self.evicting {
            return;
        }
        let apps = Arc::clone(&self.apps);
        let turned_off = |conn: &Conn| {
            conn.ws()
                .is_some_and(|ws| ws.counted && !apps.get(ws.app).enabled)
        };
        let per_s = self.config.server.drain_rate_per_s as f64;
        let Some(chosen) = self.paced_closes(elapsed_ms, per_s, turned_off) else {
            return;
        };
        if chosen.is_empty() {
            self.evicting = false;
            return;
        }
        for key in chosen {
            let app = self.conns[key as usize]
                .ws()
                .expect("chosen as WebSocket")
                .app;
            // A removed app keeps its slot with an empty id (`Apps::reloaded`).
            let close = if apps.get(app).id.is_empty() {
                crate::protocol::close_code::APP_REMOVED_CLOSE
            } else {
                crate::protocol::close_code::APP_DISABLED_CLOSE
            };
            self.close_ws(key, close, true);
        }
    }

    /// After a planned switchover: closes this sweep's jittered share of the WebSocket clients
    /// with 4200 (they reconnect to the new primary), every one left once the spread is over.
    /// Returns whether the move is under way.
    fn move_some(&mut self, elapsed_ms: u64) -> bool {
        let Some(moving) = self.moving else {
            return false;
        };
        let websocket = |conn: &Conn| matches!(conn.phase, Phase::WebSocket(_));
        let chosen = if self.now.mono_ms >= moving.until_ms {
            self.conns
                .iter()
                .filter(|(_, conn)| !conn.closing && !conn.dead && websocket(conn))
                .map(|(key, _)| key as u32)
                .collect()
        } else {
            // The rate is this core's own: the pacer divides by the core count.
            let per_s = moving.per_s * self.cores as f64;
            match self.paced_closes(elapsed_ms, per_s, websocket) {
                Some(chosen) => chosen,
                None => return true,
            }
        };
        if chosen.is_empty() {
            self.moving = None;
            return false;
        }
        for key in chosen {
            self.close_ws(key, crate::protocol::close_code::SERVER_CLOSING, true);
        }
        true
    }

    /// The pacer shared by the drain, evictions and a switchover's move: adds this sweep's
    /// jittered share of `per_s` (50%..150% of the steady rate) to the credit and picks that many
    /// open connections for which `eligible` holds, starting at a jittered place. None when the
    /// credit is not yet worth one close (nothing was looked at); an empty list when no open
    /// connection is eligible (the credit is then dropped, so none builds up for later).
    fn paced_closes(
        &mut self,
        elapsed_ms: u64,
        per_s: f64,
        eligible: impl Fn(&Conn) -> bool,
    ) -> Option<Vec<u32>> {
        let share = (per_s / self.cores as f64).max(1.0);
        // Jitter: this sweep's budget is 50%..150% of the steady rate.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let factor = 0.5 + (self.jitter % 1000) as f64 / 1000.0;
        self.drain_credit += share * elapsed_ms as f64 / 1000.0 * factor;
        let budget = self.drain_credit.floor() as usize;
        if budget == 0 {
            return None;
        }
        let open: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, conn)| !conn.closing && !conn.dead && eligible(conn))
            .map(|(key, _)| key as u32)
            .collect();
        if open.is_empty() {
            self.drain_credit = 0.0;
            return Some(Vec::new());
        }
        let start = (self.jitter as usize) % open.len();
        let chosen: Vec<u32> = open
            .iter()
            .cycle()
            .skip(start)
            .take(budget.min(open.len()))
            .copied()
            .collect();
        self.drain_credit -= chosen.len() as f64;
        Some(chosen)
    }
}

/// Queues a webhook event for the worker when the app has webhook targets (free otherwise).
/// Internal channels (`#server-to-user-`, user registry keys) never produce webhooks.
pub(super) fn queue_webhook(
    apps: &Apps,
    (queues, core): (&WebhookQueues, usize),
    unix_ms: u64,
    app: u32,
    kind: WebhookKind,
    channel: &Arc<str>,
    fill: impl FnOnce(&mut WebhookEvent),
) {
    if apps.get(app).webhooks.is_empty() || channel.starts_with('#') {
        return;
    }
    let mut event = WebhookEvent::new(app, kind, Arc::clone(channel), unix_ms);
    fill(&mut event);
    queues.push(core, event);
}

/// Whether any app's publishes are acknowledged only once the standby has them (`[replication]
/// ack` or an app's own `ack`): only then does the replica gate hold the owner's messages.
fn acks_need_the_standby(config: &Config) -> bool {
    use crate::config::AckMode;
    config.replication.enabled()
        && std::iter::once(config.replication.ack)
            .chain(config.apps.iter().filter_map(|app| app.ack))
            .any(|ack| ack != AckMode::Local)
}

#[cfg(test)]
mod tests;
