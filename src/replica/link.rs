//! The replication link's threads and what they share: `Link` (the node's shared state, its
//! data directory, the mesh to wake cores, the clock), `start` (the listener, which serves the
//! WAL streams while this node is the primary and watches the standby's availability, and the
//! dialer, which follows the peer while this node is a standby), the handshake shared by both
//! sides, and stepping down. Sockets are blocking, on these threads only; the cores are reached
//! through `ReplicaShared` (positions, inbound queues) and the mesh's doorbells.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::sync::Parker;

use super::shared::{ReplicaShared, Role};
use super::wire::Wire;
use crate::control::Control;
use crate::limits;
use crate::mesh::Mesh;

/// Everything a link thread needs.
pub struct Link {
    pub shared: Arc<ReplicaShared>,
    pub data_dir: PathBuf,
    pub mesh: Arc<Mesh>,
    pub control: Arc<Control>,
    pub stop: Arc<AtomicBool>,
    /// Bumped whenever a session starts or must end: a session's threads exit once it moved.
    pub session: AtomicU64,
    /// A promotion is under way: the dialer does not reconnect.
    pub promoting: AtomicBool,
    /// The socket of the standby's current session (a promotion shuts it down).
    pub following: Mutex<Option<TcpStream>>,
    /// The writer of the current session waits here for positions to move.
    pub parker: Mutex<Parker>,
    /// Per stream: the LSN after the last record handed to this (standby) node's core.
    pub queued_through: Box<[AtomicU64]>,
    /// Per stream: the epoch of the last record handed to the core.
    pub queued_epoch: Box<[AtomicU64]>,
    /// The `webhooks` stream: held by the link while this node is a standby.
    pub webhooks: Arc<super::webhooks::WebhookLog>,
    /// A promotion's new epoch, for the ack thread to announce (`Promoted`) to the primary
    /// this standby is still connected to; 0: none.
    pub superseded: AtomicU64,
    /// The last epoch the ack thread announced.
    pub superseded_sent: AtomicU64,
    /// Planned switchover (`switchover.rs`), primary: one is running.
    pub switching: AtomicBool,
    /// Primary: the epoch whose `Handover` the session's writer is to send (0: none).
    pub handover_request: AtomicU64,
    /// Primary: the epoch whose `Handover` the writer sent.
    pub handover_sent: AtomicU64,
    /// Primary with a witness: the epoch whose lease the failover thread is to give back.
    pub release_request: AtomicU64,
    /// Primary with a witness: the epoch whose release the witness confirmed.
    pub released: AtomicU64,
    /// Standby with a witness: the epoch a primary handed over (the failover thread asks the
    /// witness for promotion at once); 0: none.
    pub handover_from: AtomicU64,
    /// After a switchover's step-down: the dialer does not follow the new primary before this
    /// (monotonic ms) while the cores move their clients (what they write meanwhile is a
    /// divergent suffix, cut at the handshake).
    pub follow_after_ms: AtomicU64,
    /// The node id of the standby of the current session (a switchover's new primary).
    pub peer_node: Mutex<String>,
    /// The origin of `now_us` (the lag histogram's times).
    started: Instant,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(
        shared: Arc<ReplicaShared>,
        data_dir: PathBuf,
        mesh: Arc<Mesh>,
        control: Arc<Control>,
        stop: Arc<AtomicBool>,
        storage: &crate::config::StorageConfig,
    ) -> Link {
        let webhooks = Arc::new(super::webhooks::WebhookLog::new(
            Arc::clone(&shared),
            Arc::new(crate::wal::FsStorage),
            &data_dir,
            storage,
        ));
        let parker = shared.take_parker().expect("one link per process");
        let streams = shared.streams.len();
        let queued_through = (0..streams)
            .map(|stream| AtomicU64::new(shared.streams[stream].written.load(Ordering::Acquire)))
            .collect();
        let queued_epoch = (0..streams)
            .map(|stream| AtomicU64::new(shared.streams[stream].last_epoch.load(Ordering::Acquire)))
            .collect();
        Link {
            shared,
            data_dir,
            mesh,
            control,
            stop,
            session: AtomicU64::new(0),
            promoting: AtomicBool::new(false),
            following: Mutex::new(None),
            parker: Mutex::new(parker),
            queued_through,
            queued_epoch,
            webhooks,
            superseded: AtomicU64::new(0),
            superseded_sent: AtomicU64::new(0),
            switching: AtomicBool::new(false),
            handover_request: AtomicU64::new(0),
            handover_sent: AtomicU64::new(0),
            release_request: AtomicU64::new(0),
            released: AtomicU64::new(0),
            handover_from: AtomicU64::new(0),
            follow_after_ms: AtomicU64::new(0),
            peer_node: Mutex::new(String::new()),
            started: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.control.now_ms()
    }

    /// Microseconds since the link was made, for the lag histogram (both link threads read it).
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the current session (its threads notice and exit).
    pub fn end_session(&self) {
        self.session.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut following) = self.following.lock()
            && let Some(stream) = following.take()
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.shared.wake_link();
    }

    /// Wakes every core (positions moved, or the standby's availability changed).
    pub fn ring_cores(&self) {
        for core in 0..self.mesh.cores() {
            self.mesh.ring(core);
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(limits::REPL_IO_TIMEOUT_MS)
    }

    /// How long a session may be silent before it ends (both ends read with this timeout).
    pub fn session_silence(&self) -> Duration {
        let timeout_ms = self.shared.config.standby_timeout_ms;
        Duration::from_millis(timeout_ms.max(limits::REPL_SESSION_SILENCE_MS_MIN))
    }

    /// This node saw a higher epoch while primary: it stops serving clients at once (cores
    /// close them with 4200), persists the epoch, and follows the peer as a standby.
    /// During a planned switchover of this node (whoever tells it first: `Promoted`, the
    /// witness, a poke), the clients move over staggered (`step_down_after_switchover`).
    pub fn step_down(&self, epoch: u64) {
        if self.switching.load(Ordering::Acquire) {
            self.step_down_after_switchover(epoch);
        } else {
            self.step_down_moving(epoch, 0);
        }
    }

    /// `step_down`, the cores closing their WebSocket clients over `move_clients_ms`.
    fn step_down_moving(&self, epoch: u64, move_clients_ms: u64) {
        if self.shared.role() != Role::Primary {
            return;
        }
        self.shared
            .move_clients_ms
            .store(move_clients_ms, Ordering::Release);
        tracing::warn!(
            epoch,
            own = self.shared.epoch(),
            "replication: a peer holds a higher epoch; stepping down to standby"
        );
        self.shared.set_role(Role::Standby);
        self.shared.set_standby_lost(true);
        self.positions_from_written();
        if let Err(error) = super::epoch::store(&self.data_dir, epoch) {
            tracing::error!(%error, "replication: cannot persist the higher epoch");
        }
        self.shared.raise_epoch(epoch);
        self.end_session();
        self.ring_cores();
    }
}

impl Link {
    /// As a standby this node says where its streams end: where it wrote them up to, not where
    /// it last followed (after a step-down).
    pub fn positions_from_written(&self) {
        for core in 0..self.shared.cores {
            let slot = &self.shared.streams[core];
            let written = slot.written.load(Ordering::Acquire);
            self.queued_through[core].store(written, Ordering::Release);
            let last_epoch = slot.last_epoch.load(Ordering::Acquire);
            self.queued_epoch[core].store(last_epoch, Ordering::Release);
        }
    }

    /// The end of a planned switchover on the old primary: it steps down to `epoch` like
    /// `step_down`, but its cores move their WebSocket clients over
    /// `SWITCHOVER_MOVE_CLIENTS_MS` (staggered 4200s) and the dialer follows the new primary
    /// only once they are done.
    pub fn step_down_after_switchover(&self, epoch: u64) {
        if self.shared.role() != Role::Primary {
            return;
        }
        let follow_after =
            self.now_ms() + limits::SWITCHOVER_MOVE_CLIENTS_MS + limits::SWITCHOVER_FOLLOW_SLACK_MS;
        self.follow_after_ms.store(follow_after, Ordering::Release);
        self.step_down_moving(epoch, limits::SWITCHOVER_MOVE_CLIENTS_MS);
    }
}

/// Starts the listener and the dialer.
///
/// # Errors
///
/// `[replication] listen` cannot be bound.
pub fn start(link: Arc<Link>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let listener = TcpListener::bind(&link.shared.config.listen)?;
    listener.set_nonblocking(true)?;
    tracing::info!(listen = %listener.local_addr()?, "replication: listening");
    let serving = Arc::clone(&link);
    let listen = std::thread::Builder::new()
        .name("ringcast-repl-listen".into())
        .spawn(move || super::serve::listen(&serving, &listener))?;
    let dialing = Arc::clone(&link);
    let dial = std::thread::Builder::new()
        .name("ringcast-repl-dial".into())
        .spawn(move || super::dial::run(&dialing))?;
    Ok(vec![listen, dial])
}

/// Connects to `address` (`host:port`) within the link's timeout.
pub fn connect(address: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other(format!("{address}: no address"));
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// A fresh nonce for the handshake.
pub fn nonce() -> [u8; 16] {
    rand::random()
}

/// Makes a `Wire` for a new connection.
pub fn wire(stream: TcpStream, link: &Link) -> std::io::Result<Wire> {
    Wire::new(stream, link.timeout())
}
