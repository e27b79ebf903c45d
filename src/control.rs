//! The process-wide control plane, shared by the core threads and the control (main) thread:
//! readiness, the drain schedule, per-core heartbeats and connection counts, and the per-core
//! mailboxes that carry a reloaded config. Everything here is an atomic or a bounded queue,
//! written by one side and read by the other; it is never touched per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::config::Config;
use crate::shard::Apps;

/// A new configuration for the cores (SIGHUP).
#[derive(Debug)]
pub struct Reload {
    pub config: Arc<Config>,
    pub apps: Arc<Apps>,
    /// A reloaded certificate and key for new TLS connections; None keeps the running pair.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

use crate::limits::RELOADS_QUEUED_MAX;

#[derive(Debug)]
pub struct Control {
    started: Instant,
    /// Accepting clients: false while starting and while draining.
    ready: AtomicBool,
    /// Monotonic ms at which cores start closing connections (0 = not draining).
    drain_close_at_ms: AtomicU64,
    /// Per core: monotonic ms of the loop's last iteration.
    heartbeats: Box<[AtomicU64]>,
    /// Per core: connections it holds (published each timer sweep).
    connections: Box<[AtomicU64]>,
    reloads: Box<[ArrayQueue<Arc<Reload>>]>,
}

impl Control {
    pub fn new(cores: usize) -> Control {
        Control {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            drain_close_at_ms: AtomicU64::new(0),
            heartbeats: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            connections: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            reloads: (0..cores)
                .map(|_| ArrayQueue::new(RELOADS_QUEUED_MAX))
                .collect(),
        }
    }

    /// Monotonic milliseconds since start (the process's one time origin). Starts at 1 so that
    /// 0 can mean "never".
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// The same clock in microseconds.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64 + 1
    }

    pub fn cores(&self) -> usize {
        self.heartbeats.len()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Starts the drain: readiness is false from now; cores begin closing after `grace_ms`.
    pub fn begin_drain(&self, grace_ms: u64) {
        self.ready.store(false, Ordering::SeqCst);
        let at = self.now_ms() + grace_ms;
        let _ = self
            .drain_close_at_ms
            .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.drain_close_at_ms.load(Ordering::SeqCst) != 0
    }

    /// When draining, the monotonic ms at which connections may be closed.
    pub fn drain_close_at_ms(&self) -> Option<u64> {
        match self.drain_close_at_ms.load(Ordering::SeqCst) {
            0 => None,
            at => Some(at),
        }
    }

    pub fn beat(&self, core: usize, now_ms: u64) {
        self.heartbeats[core].store(now_ms, Ordering::Relaxed);
    }

    /// Whether every core loop has run within `within_ms`.
    pub fn all_cores_alive(&self, within_ms: u64) -> bool {
        let now = self.now_ms();
        self.heartbeats
            .iter()
            .all(|beat| now.saturating_sub(beat.load(Ordering::Relaxed)) <= within_ms)
    }

    /// The oldest heartbeat's age, in ms (loop lag of the slowest core).
    pub fn heartbeat_age_ms(&self, core: usize) -> u64 {
        self.now_ms()
            .saturating_sub(self.heartbeats[core].load(Ordering::Relaxed))
    }

    pub fn publish_connections(&self, core: usize, connections: usize) {
        self.connections[core].store(connections as u64, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Queues a reload for every core; a core that has several waiting applies the newest.
    pub fn send_reload(&self, reload: Arc<Reload>) {
        for queue in self.reloads.iter() {
            let _ = queue.force_push(Arc::clone(&reload));
        }
    }

    pub fn take_reload(&self, core: usize) -> Option<Arc<Reload>> {
        let mut newest = None;
        while let Some(reload) = self.reloads[core].pop() {
            newest = Some(reload);
        }
        newest
    }
}
