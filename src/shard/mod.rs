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
mod rest;
mod users;
mod websocket;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use crate::config::Config;
use crate::control::{Control, Reload};
use crate::limits;
use crate::mesh::{ChannelKey, ConnRef, Outbox, ShardMessage};
use crate::metrics::{CoreMetrics, Metrics};
use crate::protocol::socket_id::SocketIdGenerator;
use crate::webhook::{WebhookEvent, WebhookKind, WebhookQueues};

pub use apps::Apps;
use channels::{CachedEvent, OwnedChannel};
pub use conn::{Conn, ConnIo, Phase};
use rest::Query;

/// The time, passed in by the driver (the shard never reads a clock).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic milliseconds since the process started.
    pub mono_ms: u64,
    /// The same clock in microseconds (latency measurements).
    pub mono_us: u64,
    /// Wall-clock Unix seconds (REST timestamps).
    pub unix_secs: u64,
    /// Wall-clock Unix milliseconds (webhook `time_ms`).
    pub unix_ms: u64,
}

/// From this many local subscribers on, a frame from another core is copied once per core.
const LOCAL_COPY_SUBSCRIBERS_MIN: usize = 8;

/// How long a closing connection may linger for the peer's close before the socket is dropped.
const CLOSE_LINGER_MS: u64 = 2_000;

pub struct Shard {
    core: usize,
    cores: usize,
    config: Arc<Config>,
    apps: Arc<Apps>,
    conns: Slab<Conn>,
    generation: u32,
    /// Channel → this core's Active subscribers (slab keys).
    local: HashMap<ChannelKey, Vec<u32>>,
    /// Channels owned by this core that have subscribers somewhere.
    owned: HashMap<ChannelKey, OwnedChannel>,
    /// Last events of cache channels owned by this core (kept with or without subscribers).
    caches: HashMap<ChannelKey, CachedEvent>,
    /// Owned channels whose `subscription_count` event is waiting for its interval.
    counts_owed: Vec<ChannelKey>,
    /// Signed-in users owned by this core: connection counts and watchers.
    users: HashMap<(u32, Arc<str>), users::UserEntry>,
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
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    webhooks: Arc<WebhookQueues>,
    /// Cache channels that recently sent a `cache_miss` webhook, and when (de-duplication).
    cache_misses: HashMap<ChannelKey, u64>,
    /// The endpoint of the HTTP request being answered (for metrics).
    endpoint: crate::metrics::Endpoint,
    /// Accept-rate token bucket: tokens available and when it was last refilled.
    accept_tokens: f64,
    accept_refilled_ms: u64,
    /// Drain pacing: closes owed to the rate but not yet done, and a jitter state.
    drain_credit: f64,
    jitter: u64,
}

impl Shard {
    pub fn new(
        core: usize,
        cores: usize,
        config: Arc<Config>,
        apps: Arc<Apps>,
        epoch: u64,
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        webhooks: Arc<WebhookQueues>,
    ) -> Shard {
        assert!(core < cores);
        Shard {
            core,
            cores,
            config,
            apps,
            conns: Slab::new(),
            generation: 0,
            local: HashMap::new(),
            owned: HashMap::new(),
            caches: HashMap::new(),
            counts_owed: Vec::new(),
            sweeps: 0,
            users: HashMap::new(),
            queries: Slab::new(),
            query_generation: 0,
            outbox: Outbox::new(core, cores),
            dirty: Vec::new(),
            socket_ids: SocketIdGenerator::new(epoch, core, cores),
            connections_max: limits::CONNECTIONS_PER_CORE_MAX,
            now: Now {
                mono_ms: 0,
                mono_us: 0,
                unix_secs: 0,
                unix_ms: 0,
            },
            control,
            metrics,
            webhooks,
            cache_misses: HashMap::new(),
            endpoint: crate::metrics::Endpoint::Other,
            accept_tokens: 0.0,
            accept_refilled_ms: 0,
            drain_credit: 0.0,
            jitter: epoch ^ (core as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
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
        });
        Some(key as u32)
    }

    /// A socket the driver accepted on its spare descriptor at the descriptor limit: it is
    /// served only to be refused (`Conn::over_capacity`), within the usual request timeout.
    /// None when this core is full: the driver closes the socket.
    pub fn accept_over_capacity(&mut self, fd: RawFd, now: Now) -> Option<u32> {
        let key = self.accept(fd, now)?;
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
            && conn.out.is_empty()
            && !conn.io.write_shut
            && !conn.io.send_in_flight
    }

    pub fn on_mesh(&mut self, from: usize, message: ShardMessage, now: Now) {
        self.now = now;
        self.handle_message(from, message);
    }

    /// Handles one message from core `from` (which may be this core, for work it owns itself).
    fn handle_message(&mut self, from: usize, message: ShardMessage) {
        match message {
            ShardMessage::Subscribe {
                channel,
                conn,
                socket_id,
                member,
            } => self.owner_subscribe(from, channel, conn, socket_id, member),
            ShardMessage::SubscribeOk {
                channel,
                conn,
                user_id,
                reply,
            } => self.subscription_answered(channel, conn, user_id, reply),
            ShardMessage::Unsubscribe {
                channel,
                user_id,
                socket_id,
            } => self.owner_unsubscribe(from, &channel, user_id, socket_id),
            ShardMessage::Publish {
                channel,
                frame,
                exclude,
                cache,
                published_us,
            } => self.owner_publish_at(channel, frame, exclude, cache, published_us),
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
            ShardMessage::ListChannels { query, app, prefix } => {
                let channels = self.owned_channels(app, &prefix);
                self.outbox
                    .push(from, ShardMessage::ChannelList { query, channels });
            }
            ShardMessage::ChannelList { query, channels } => self.query_list_reply(query, channels),
            ShardMessage::DescribeChannel {
                query,
                index,
                channel,
                with_users,
            } => {
                let info = self.owned_channel_info(&channel, with_users);
                let reply = ShardMessage::ChannelDescription { query, index, info };
                if from == self.core {
                    self.handle_message(from, reply);
                } else {
                    self.outbox.push(from, reply);
                }
            }
            ShardMessage::ChannelDescription { query, index, info } => {
                self.query_describe_reply(query, index, info)
            }
            ShardMessage::TerminateUser { app, user_id } => self.terminate_user(app, &user_id),
            ShardMessage::Barrier { query } => {
                assert_ne!(from, self.core, "barriers are only sent to other cores");
                self.outbox.push(from, ShardMessage::BarrierAck { query });
            }
            ShardMessage::BarrierAck { query } => self.query_barrier_reply(query),
            ShardMessage::UserOnline { app, user_id } => {
                self.owner_user_presence(app, user_id, true)
            }
            ShardMessage::UserOffline { app, user_id } => {
                self.owner_user_presence(app, user_id, false)
            }
            ShardMessage::Watch {
                app,
                watcher,
                watched,
                conn,
            } => self.owner_watch(from, app, watcher, watched, conn),
            ShardMessage::Unwatch {
                app,
                watcher,
                watched,
            } => self.owner_unwatch(app, watcher, watched),
            ShardMessage::WatchStatus {
                conn,
                watched,
                online,
            } => self.watch_status(conn, watched, online),
        }
    }

    /// Periodic sweep: request deadlines, activity pings, pong timeouts, close lingers.
    pub fn on_timer(&mut self, now: Now) {
        self.now = now;
        let activity_ms = u64::from(self.config.server.activity_timeout_secs) * 1000;
        let pong_ms = u64::from(self.config.server.pong_timeout_secs) * 1000;
        let mut expired = Vec::new();
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
        self.pay_owed_counts();
        self.drain_some(limits::TIMER_SWEEP_INTERVAL_MS);
        self.control
            .publish_connections(self.core, self.conns.len());
        self.sweeps += 1;
        if self.sweeps % 64 == 0 {
            self.expire_caches();
            let now_ms = self.now.mono_ms;
            self.cache_misses
                .retain(|_, sent| now_ms < *sent + channels::CACHE_MISS_WEBHOOK_INTERVAL_MS);
        }
    }

    /// A deadline passed: a slow HTTP request gets 408, an idle keep-alive connection or a
    /// lingering close is simply dropped.
    fn expire(&mut self, key: u32) {
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

    /// Whether the driver must tear the socket down now (the shard gave up on it).
    pub fn wants_abort(&self, key: u32) -> bool {
        let conn = &self.conns[key as usize];
        conn.dead && conn.io.recv_armed
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
        conn.deadline_ms = now.mono_ms + CLOSE_LINGER_MS;
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
            if let Phase::Http { awaiting, .. } = &mut conn.phase {
                if let Some(slot) = awaiting.take() {
                    self.queries.remove(slot as usize);
                }
            }
            return;
        };
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

    /// Queues a webhook event for the worker when the app has webhook targets (free otherwise).
    /// Internal channels (`#server-to-user-`, user registry keys) never produce webhooks.
    fn webhook(
        &self,
        app: u32,
        kind: WebhookKind,
        channel: &Arc<str>,
        fill: impl FnOnce(&mut WebhookEvent),
    ) {
        if self.apps.get(app).webhooks.is_empty() || channel.starts_with('#') {
            return;
        }
        let mut event = WebhookEvent::new(app, kind, Arc::clone(channel), self.now.unix_ms);
        fill(&mut event);
        self.webhooks.push(self.core, event);
    }

    pub(crate) fn core_metrics(&self) -> &CoreMetrics {
        &self.metrics.cores[self.core]
    }

    /// Applies a reloaded configuration: apps and limits change, connections stay.
    pub fn apply_reload(&mut self, reload: &Reload) {
        self.config = Arc::clone(&reload.config);
        self.apps = Arc::clone(&reload.apps);
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
    fn drain_some(&mut self, elapsed_ms: u64) {
        let Some(close_at) = self.control.drain_close_at_ms() else {
            return;
        };
        if self.now.mono_ms < close_at {
            return;
        }
        let share = (self.config.server.drain_rate_per_s as f64 / self.cores as f64).max(1.0);
        // Jitter: this sweep's budget is 50%..150% of the steady rate.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let factor = 0.5 + (self.jitter % 1000) as f64 / 1000.0;
        self.drain_credit += share * elapsed_ms as f64 / 1000.0 * factor;
        let budget = self.drain_credit.floor() as usize;
        if budget == 0 {
            return;
        }
        let open: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, conn)| !conn.closing && !conn.dead)
            .map(|(key, _)| key as u32)
            .collect();
        if open.is_empty() {
            self.drain_credit = 0.0;
            return;
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
    }
}

#[cfg(test)]
mod tests;
