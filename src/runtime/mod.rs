//! The io_uring driver: one pinned thread per core, each with its own ring, its own
//! `SO_REUSEPORT` listener (multishot accept), a provided-buffer ring for multishot receives,
//! vectored sends of shared frames taken from each connection's queue (each send owns its frames
//! until the kernel completes it), an eventfd doorbell for the mesh, and a periodic timer sweep.
//! It feeds bytes, closes, mesh messages and the time into the core's `Shard` and carries out
//! what the shard queued. This module is where all socket IO and its `unsafe` live; it holds no
//! protocol logic and shares no connection or channel state.
//!
//! At the process's descriptor limit an accept fails (EMFILE, or ENFILE system-wide) and the
//! client would wait in the listen backlog. Each core therefore holds one spare descriptor from
//! the start (as nginx and haproxy hold `/dev/null`; ours is a duplicate of the listener, see
//! `open_spare`). An accept takes its descriptor before it looks at the backlog, so at the limit
//! a re-armed accept fails at once whether or not a client waits: after EMFILE/ENFILE the core
//! waits for a client with a poll on the listener instead. When it fires, a plain `accept4`
//! either succeeds (descriptors are free again: back to the multishot accept) or fails again,
//! and then the core closes the spare, accepts the client, and hands it to the shard flagged
//! `over_capacity`: the shard reads its request as usual (bounded by `request_timeout_ms`) and
//! answers a WebSocket upgrade with the 101, then `pusher:error` and close 4100, and anything
//! else with 503 + Retry-After, then closes. The spare comes back as soon as a descriptor is
//! free: the next socket this core closes becomes the spare in the same step (`dup3`), and
//! descriptors freed elsewhere are taken at the next sweep; the poll is re-armed with it, and
//! until then further clients wait. Failed accepts are counted by reason and logged at most
//! once per `ACCEPT_ERROR_LOG_INTERVAL_MS` per core.

pub(crate) mod buf_ring;
mod follow;
pub mod journal;
mod reshard;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::control::Control;
use crate::limits;
use crate::mesh::Mesh;
use crate::metrics::{CoreMetrics, Metrics};
use crate::replica::{ReplicaShared, Role};
use crate::shard::{Apps, ControlEvent, JournalFailed, Now, Shard};
use crate::wal::RecoveryMode;
use crate::webhook::WebhookQueues;
use buf_ring::BufRing;
use journal::WalJournal;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_DOORBELL: u64 = 4;
/// The poll on the listener that stands in for the accept at the descriptor limit.
const OP_LIMIT_POLL: u64 = 5;
/// An `fdatasync` of the core's WAL segment (`Shard::begin_journal_sync`).
const OP_WAL_SYNC: u64 = 6;
/// The multishot accept on the TLS listener, when there is a plain one too.
const OP_ACCEPT_TLS: u64 = 7;

fn user_data(op: u64, key: u32) -> u64 {
    (op << 56) | u64::from(key)
}

fn split_user_data(data: u64) -> (u64, u32) {
    (data >> 56, data as u32)
}

/// The exit status after a WAL write or sync error (EX_IOERR).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Provided-buffer group id used by every core (groups are per ring).
const BUFFER_GROUP: u16 = 0;
use crate::limits::{MESH_BATCH_MAX, SEND_POOL_MAX, SPIN_BEFORE_PARK};

/// Whether io_uring works here; the error explains why not (for a clear start-up message).
pub fn probe() -> Result<(), String> {
    match IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(error) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
            Err(unavailable_message(&error, disabled.as_deref()))
        }
    }
}

/// The start-up error when io_uring cannot be set up: what failed, and why when the system
/// says (`kernel.io_uring_disabled`, an old kernel, a seccomp or container policy).
fn unavailable_message(error: &io::Error, io_uring_disabled: Option<&str>) -> String {
    let hint = match io_uring_disabled.map(str::trim) {
        Some(value @ ("1" | "2")) => format!(
            " (kernel.io_uring_disabled = {value}; set it to 0 with `sysctl kernel.io_uring_disabled=0`)"
        ),
        _ if error.raw_os_error() == Some(libc::ENOSYS) => {
            " (this kernel has no io_uring)".to_string()
        }
        _ if error.raw_os_error() == Some(libc::EPERM) => {
            " (blocked by kernel.io_uring_disabled or a seccomp/container policy)".to_string()
        }
        _ => String::new(),
    };
    format!("io_uring is unavailable: {error}{hint}; ringcast needs io_uring (Linux 6.0 or later)")
}

/// A running server: its address and its core threads.
pub struct Server {
    /// The plain listener's address (the TLS one's when `server.bind` is empty).
    pub local_addr: SocketAddr,
    /// The TLS listener's address, when `[tls] bind` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The certificate and key the cores serve now (the base a rejected reload keeps).
    pub tls: Option<Arc<crate::tls::Identity>>,
    pub cores: usize,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    mesh: Arc<Mesh>,
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// Webhook events from the cores, for the delivery worker.
    pub webhooks: Arc<WebhookQueues>,
    /// The app table the cores run with (the base for reloads).
    pub apps: Arc<Apps>,
    /// The hot standby's link (`[replication]`): role, promotion, status.
    pub replica: Option<Arc<crate::replica::link::Link>>,
}

impl Server {
    /// Stops every core loop and waits for the threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for core in 0..self.cores {
            self.mesh.unpark(core);
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the core's eventfd, waking its loop; a
            // failure only means the loop is already awake.
            let _ = unsafe { libc::write(self.mesh.eventfd(core), (&raw const one).cast(), 8) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Whether every core-to-core queue is empty right now.
    pub fn mesh_idle(&self) -> bool {
        (0..self.cores).all(|core| !self.mesh.has_inbound(core))
    }
}

/// Fails when anything listens on `addr`: SO_REUSEPORT would let a second ringcast (same user)
/// join the port silently and take half the connections, so a plain bind (SO_REUSEADDR only)
/// comes first. EADDRINUSE is tried again for up to `limits::PORT_RELEASE_WAIT_MS`: a process
/// that was killed (SIGKILL, a crash) had no chance to shut its listeners down (`CoreLoop`'s
/// drop does that on a normal exit), and the kernel releases a listener that an armed multishot
/// accept still refers to only in the ring's teardown, after the process is gone (about 10 ms
/// here), so a supervisor's restart at once would fail.
fn probe_port(addr: SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_millis(limits::PORT_RELEASE_WAIT_MS);
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(error)
                if error.kind() == io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it, saving a setsockopt per connection. We coalesce frames per
    // connection per loop tick ourselves, so Nagle would only add latency.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Opts this process out of transparent huge pages before the cores allocate. The allocator
/// asks for huge pages on its arenas, and with them the resident size grows in 2 MB steps that
/// mostly hold nothing: 5,000 idle connections cost about 1.7 KB each instead of under 500 B.
/// Redis and most databases recommend the same for the latency spikes of page compaction too.
/// `main` calls it first thing, before any allocation it should cover.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "PR_SET_THP_DISABLE failed");
    }
}

/// Makes the coming close send a reset and drop whatever is still queued both ways, instead of
/// a FIN queued behind data a peer will not read: a client the shard gave up on (a slow consumer,
/// a close handshake that never finished) gets a prompt error, and its socket does not linger
/// in the kernel holding its unsent data.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct whose size is passed; the kernel only reads it. An error
    // (the socket already reset) leaves an ordinary close, which is harmless.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Takes a spare descriptor (`CoreLoop::spare`), held only so that it can be given up at the
/// descriptor limit (the habit of nginx, haproxy and libuv, which hold `/dev/null`). It is a
/// duplicate of the core's listening socket, so that a connection's socket can be turned into
/// the spare in one step when it closes (`CoreLoop::close_socket`); it is never used as a
/// socket. None when no descriptor is free; the sweep tries again.
fn open_spare(listener: RawFd) -> Option<RawFd> {
    // SAFETY: duplicates our own listening descriptor to the lowest free number; the duplicate
    // is ours alone and changes nothing about the socket.
    let fd = unsafe { libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 0) };
    (fd >= 0).then_some(fd)
}

/// Raises the soft descriptor limit to the hard one, then grows the process's descriptor table
/// once, now, to cover min(limit, `limits::DESCRIPTOR_TABLE_PRESIZE`) descriptors. Growing it
/// later, while connections arrive, waits for an RCU grace period each time the table doubles
/// (the process has several threads): a stall of 5-30 ms of the accepting core, seen as the
/// 99th percentile of connection set-up time.
fn reserve_descriptors() {
    if let Ok((soft, _)) = raise_descriptor_limit() {
        presize_descriptor_table(soft.min(limits::DESCRIPTOR_TABLE_PRESIZE));
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the (soft, hard) limits in force.
pub(crate) fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit read by the kernel during the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Grows the process's descriptor table to hold `count` descriptors. The kernel grows it on
/// demand by doubling, and in a process with several threads each growth waits for an RCU grace
/// period (milliseconds): done once up front, no connect stalls on it.
pub(crate) fn presize_descriptor_table(count: u64) {
    let Ok(highest) = libc::c_int::try_from(count.saturating_sub(1)) else {
        return;
    };
    if highest <= 2 {
        return;
    }
    // SAFETY: duplicates stdin to the lowest free descriptor at or above `highest` (F_DUPFD
    // never replaces one in use) and closes the duplicate at once; only the table's size stays.
    unsafe {
        let duplicate = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, highest);
        if duplicate >= 0 {
            libc::close(duplicate);
        }
    }
}

/// The time for the shard: the process's monotonic clock and the wall clock, read once.
fn clock(control: &Control) -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Now {
        mono_ms: control.now_ms(),
        mono_us: control.now_us(),
        unix_secs: unix_ms / 1000,
        unix_ms,
    }
}

/// Opens core `core`'s WAL stream (when `[storage] dir` is set), replays it into the shard, and
/// installs it as the shard's journal. Runs on the core's own thread, so cores replay in
/// parallel; the process reports ready only after every core has.
fn recover(
    shard: &mut Shard,
    config: &Config,
    apps: &Arc<Apps>,
    control: &Control,
    recovery: RecoveryMode,
    replica: Option<&Arc<ReplicaShared>>,
    first_lsn_if_empty: u64,
) -> anyhow::Result<()> {
    if config.storage.dir.is_empty() {
        return Ok(());
    }
    let epoch = replica.map_or(journal::INITIAL_EPOCH, |shared| shared.epoch());
    let core = shard.core();
    let started = std::time::Instant::now();
    let now = clock(control);
    let storage: Arc<dyn crate::wal::Storage> = Arc::new(crate::wal::FsStorage);
    #[cfg(debug_assertions)]
    let storage = test_fault(storage);
    let (mut journal, replayed) = WalJournal::open(
        storage,
        config,
        Arc::clone(apps),
        core,
        epoch,
        recovery,
        first_lsn_if_empty,
        now,
        |record, lsn| shard.replay(record, lsn, now),
    )?;
    shard.replayed(clock(control));
    if let Some(shared) = replica {
        shared.streams[core]
            .last_epoch
            .store(replayed.last_epoch, Ordering::Release);
        journal.attach_replica(Arc::clone(shared), core);
    }
    shard.set_journal(Box::new(journal));
    tracing::info!(
        core,
        records = replayed.records,
        skipped_unknown_apps = replayed.unknown_apps,
        truncated_bytes = replayed.truncated_bytes,
        ms = started.elapsed().as_millis() as u64,
        "write-ahead log replayed"
    );
    Ok(())
}

/// Waits until every core thread reported it is ready (or why it could not start).
fn wait_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), String>>,
    cores: usize,
) -> anyhow::Result<()> {
    for _ in 0..cores {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => anyhow::bail!("cannot start: {error}"),
            Err(_) => anyhow::bail!("a core thread died while starting"),
        }
    }
    Ok(())
}

/// Starts the replication link's threads (after every core published its positions).
fn start_link(
    config: &Config,
    shared: Arc<ReplicaShared>,
    mesh: &Arc<Mesh>,
    control: &Arc<Control>,
    stop: &Arc<AtomicBool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Arc<crate::replica::link::Link>> {
    let link = Arc::new(crate::replica::link::Link::new(
        shared,
        std::path::PathBuf::from(&config.storage.dir),
        Arc::clone(mesh),
        Arc::clone(control),
        Arc::clone(stop),
        &config.storage,
    ));
    let link_threads = crate::replica::link::start(Arc::clone(&link)).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen for replication on {}: {error}",
            config.replication.listen
        )
    })?;
    threads.extend(link_threads);
    if let Some(thread) = crate::replica::failover::start(&link).map_err(|error| {
        anyhow::anyhow!(
            "cannot reach the witness {}: {error}",
            config.replication.witness
        )
    })? {
        threads.push(thread);
    }
    Ok(link)
}

/// With `[replication]`: the node's epoch and the role it starts in. A node whose data directory
/// has no persisted epoch is new to the pair and takes `initial_role` (a new primary persists
/// epoch 1 at once); a node with one never makes itself primary on its own: it starts as a
/// standby, follows a primary of an equal or higher epoch, or waits to be promoted.
fn replica_role(config: &Config, cores: usize) -> anyhow::Result<Option<ReplicaShared>> {
    let replication = &config.replication;
    if !replication.enabled() {
        return Ok(None);
    }
    let data_dir = std::path::Path::new(&config.storage.dir);
    let persisted = crate::replica::epoch::load(data_dir)?;
    let (role, epoch) = match persisted {
        Some(epoch) => (Role::Standby, epoch),
        None => match replication.initial_role {
            crate::config::InitialRole::Primary => {
                crate::replica::epoch::store(data_dir, journal::INITIAL_EPOCH)?;
                (Role::Primary, journal::INITIAL_EPOCH)
            }
            crate::config::InitialRole::Standby => (Role::Standby, journal::INITIAL_EPOCH),
        },
    };
    tracing::info!(
        node_id = replication.node_id,
        role = role.name(),
        epoch,
        new_node = persisted.is_none(),
        "replication: starting"
    );
    Ok(Some(ReplicaShared::new(
        replication.clone(),
        cores,
        role,
        epoch,
    )))
}

/// Binds one listener per core on the configured address (the first picks the port when it is
/// 0) and starts the core threads. Returns once every core is ready to accept.
pub fn start(config: Arc<Config>, recovery: RecoveryMode) -> anyhow::Result<Server> {
    probe().map_err(anyhow::Error::msg)?;
    let tls = load_tls(&config)?;
    reserve_descriptors();
    let cores = config.cores();
    let (local_addr, tls_addr, listeners, primary_tls) = bind_all(&config, cores)?;
    let mesh = Arc::new(Mesh::new(cores)?);
    let apps = Arc::new(Apps::new(&config));
    let stop = Arc::new(AtomicBool::new(false));
    let control = Arc::new(Control::new(cores));
    let metrics = Arc::new(Metrics::new(Arc::clone(&control), Arc::clone(&mesh)));
    let webhooks = Arc::new(WebhookQueues::new(cores));
    if let Some(identity) = &tls {
        metrics
            .tls_certificate_not_after
            .store(identity.not_after_unix.max(0) as u64, Ordering::Relaxed);
    }
    reshard::reshard_if_needed(&config, &apps, cores, recovery, clock(&control))?;
    let replica = replica_role(&config, cores)?.map(Arc::new);
    if let Some(shared) = &replica {
        let _ = metrics.replica.set(Arc::clone(shared));
    }
    let epoch = rand::random::<u64>() % 9_000_000_000 + 1_000_000_000;
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_sender, ready_receiver) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(cores);
    for (core, (listener, tls_listener)) in listeners.into_iter().enumerate() {
        let mut shard = Shard::new(
            core,
            cores,
            Arc::clone(&config),
            Arc::clone(&apps),
            epoch,
            Arc::clone(&metrics),
            Arc::clone(&webhooks),
        );
        shard.set_tls_config(tls.as_ref().map(|tls| Arc::clone(&tls.server_config)));
        let mesh = Arc::clone(&mesh);
        let stop = Arc::clone(&stop);
        let control = Arc::clone(&control);
        let metrics = Arc::clone(&metrics);
        let ready = ready_sender.clone();
        let (config, apps) = (Arc::clone(&config), Arc::clone(&apps));
        let replica = replica.clone();
        let cpu = (config.server.pin_threads && !cpus.is_empty()).then(|| cpus[core % cpus.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("ringcast-core-{core}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                run_core(CoreStart {
                    core,
                    listener,
                    tls_listener,
                    primary_tls,
                    shard,
                    config,
                    apps,
                    mesh,
                    control,
                    metrics,
                    stop,
                    replica,
                    recovery,
                    ready,
                });
            })?;
        threads.push(thread);
    }
    drop(ready_sender);
    wait_ready(&ready_receiver, cores)?;
    // Every core has published where its stream ends: the link can say so to the peer.
    let replica = match replica {
        Some(shared) => Some(start_link(
            &config,
            shared,
            &mesh,
            &control,
            &stop,
            &mut threads,
        )?),
        None => None,
    };
    Ok(Server {
        local_addr,
        tls_addr,
        tls: tls.map(Arc::new),
        cores,
        threads,
        stop,
        mesh,
        control,
        metrics,
        webhooks,
        apps,
        replica,
    })
}

/// What one core thread is started with.
struct CoreStart {
    core: usize,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    primary_tls: bool,
    shard: Shard,
    config: Arc<Config>,
    apps: Arc<Apps>,
    mesh: Arc<Mesh>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    replica: Option<Arc<ReplicaShared>>,
    recovery: RecoveryMode,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// One core thread: recovers the core's state, then runs its loop until stopped; says on `ready`
/// whether it could start.
fn run_core(start: CoreStart) {
    let CoreStart {
        core,
        listener,
        tls_listener,
        primary_tls,
        mut shard,
        config,
        apps,
        mesh,
        control,
        metrics,
        stop,
        replica,
        recovery,
        ready,
    } = start;
    let fd = listener.into_raw_fd();
    let tls_fd = tls_listener.map(IntoRawFd::into_raw_fd);
    let recovered = recover(
        &mut shard,
        &config,
        &apps,
        &control,
        recovery,
        replica.as_ref(),
        1,
    );
    if let Err(error) = recovered {
        // SAFETY: the listeners are ours and no operation refers to them yet.
        unsafe {
            libc::close(fd);
            tls_fd.map(|fd| libc::close(fd));
        };
        let _ = ready.send(Err(format!("core {core}: {error:#}")));
        return;
    }
    let listeners = Listeners {
        primary: fd,
        primary_tls,
        tls: tls_fd,
    };
    match CoreLoop::new(
        core, listeners, shard, mesh, control, metrics, stop, replica,
    ) {
        Ok(mut core_loop) => {
            let _ = ready.send(Ok(()));
            core_loop.run();
        }
        Err(error) => {
            let _ = ready.send(Err(format!("core {core}: {error}")));
        }
    }
}

/// Reads `[tls] cert` and `key` when TLS is on: a missing, unreadable, expired or mismatched
/// file stops the start with an error naming it.
fn load_tls(config: &Config) -> anyhow::Result<Option<crate::tls::Identity>> {
    if config.tls_bind_addr().is_none() {
        return Ok(None);
    }
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let identity = crate::tls::Identity::load(&config.tls, now_unix)?;
    Ok(Some(identity))
}

/// The listeners of every core: the primary and, beside a plain primary, the TLS one. The
/// primary is the plain listener, or the TLS one when TLS is all there is (then the flag is
/// true); the spare descriptor and the limit poll belong to it. Returns the primary's address
/// and the TLS listener's.
#[allow(clippy::type_complexity)]
fn bind_all(
    config: &Config,
    cores: usize,
) -> anyhow::Result<(
    SocketAddr,
    Option<SocketAddr>,
    Vec<(TcpListener, Option<TcpListener>)>,
    bool,
)> {
    let plain = match config.bind_addr() {
        Some(bind) => Some(bind_listeners(bind, &config.server.bind, cores)?),
        None => None,
    };
    let secure = match config.tls_bind_addr() {
        Some(bind) => Some(bind_listeners(bind, &config.tls.bind, cores)?),
        None => None,
    };
    let tls_addr = secure.as_ref().map(|(addr, _)| *addr);
    // The first listener of a core is its primary (the spare descriptor and the limit poll
    // belong to it): the plain one, or the TLS one when TLS is all there is.
    let (local_addr, listeners, tls_listeners, primary_tls) = match (plain, secure) {
        (Some((addr, plain)), Some((_, secure))) => (
            addr,
            plain,
            secure.into_iter().map(Some).collect::<Vec<_>>(),
            false,
        ),
        (Some((addr, plain)), None) => (addr, plain, (0..cores).map(|_| None).collect(), false),
        (None, Some((addr, secure))) => (addr, secure, (0..cores).map(|_| None).collect(), true),
        (None, None) => anyhow::bail!("nothing to listen on: set `server.bind` or `tls.bind`"),
    };
    let listeners = listeners.into_iter().zip(tls_listeners).collect();
    Ok((local_addr, tls_addr, listeners, primary_tls))
}

/// Binds one `SO_REUSEPORT` listener per core on `bind` (`key` is its config text, for errors);
/// the first picks the port when it is 0. Returns the bound address and the listeners.
fn bind_listeners(
    bind: SocketAddr,
    key: &str,
    cores: usize,
) -> anyhow::Result<(SocketAddr, Vec<TcpListener>)> {
    if bind.port() != 0 {
        probe_port(bind).map_err(|error| {
            anyhow::anyhow!("cannot listen on {key}: {error} (is another server running there?)")
        })?;
    }
    let first =
        bind_listener(bind).map_err(|error| anyhow::anyhow!("cannot listen on {key}: {error}"))?;
    let local_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cores {
        listeners.push(bind_listener(local_addr)?);
    }
    Ok((local_addr, listeners))
}

/// A core's listening sockets: the primary (plain, or TLS when TLS is all there is; the spare
/// descriptor and the limit poll belong to it) and the TLS one beside a plain primary.
struct Listeners {
    primary: RawFd,
    primary_tls: bool,
    tls: Option<RawFd>,
}

/// One in-flight vectored send: its header, its iovecs, and the frames they point at. Boxed so
/// its address is stable while the kernel may read it; pooled so steady-state sends do not
/// allocate (`frames` keeps its capacity across uses).
struct SendOp {
    iovecs: [libc::iovec; limits::SEND_IOVECS_MAX],
    header: libc::msghdr,
    /// The frames being sent, moved out of the connection's queue by `Shard::take_for_send` and
    /// owned here until the completion: a frame handed to the kernel is owned by its send, so a
    /// reset or a dead peer that clears the queue meanwhile cannot free memory the kernel may
    /// still read. The completion hands the unsent rest back (`Shard::on_sent`).
    frames: Vec<Bytes>,
}

impl SendOp {
    fn new() -> Box<SendOp> {
        Box::new(SendOp {
            iovecs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; limits::SEND_IOVECS_MAX],
            // SAFETY: msghdr is a plain C struct for which all-zero bytes are valid (no name, no
            // control data, no iovecs yet).
            header: unsafe { std::mem::zeroed::<libc::msghdr>() },
            frames: Vec::with_capacity(limits::SEND_IOVECS_MAX),
        })
    }

    /// Whether the iovecs handed to the kernel point exactly at the frames this op owns (debug
    /// builds check it at every completion: the ownership the `push` SAFETY relies on).
    fn owns_its_iovecs(&self) -> bool {
        self.header.msg_iovlen == self.frames.len()
            && self.frames.iter().zip(&self.iovecs).all(|(frame, iovec)| {
                iovec.iov_base.cast_const().cast::<u8>() == frame.as_ptr()
                    && iovec.iov_len == frame.len()
            })
    }
}

struct CoreLoop {
    // Field order matters: `ring` must drop before `buffers` (the kernel may use them until
    // the ring is gone).
    ring: IoUring,
    buffers: BufRing,
    core: usize,
    listener: RawFd,
    /// The primary listener is the TLS one (`server.bind` is empty).
    listener_tls: bool,
    /// The TLS listener beside a plain primary, and whether its multishot accept is armed (a
    /// failed accept on it is re-armed at the next sweep; the descriptor-limit handling is
    /// the primary's).
    tls_listener: Option<RawFd>,
    tls_accept_armed: bool,
    shard: Shard,
    mesh: Arc<Mesh>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    /// Send operations in flight, by connection key (one at most per connection).
    sends: Vec<Option<Box<SendOp>>>,
    // Boxed on purpose: an op's address must not move while the kernel reads its header and
    // iovecs, and a pooled op moves into `sends` without a new allocation.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendOp>>,
    doorbell_value: Box<u64>,
    dirty: Vec<u32>,
    /// Connections to look at after this batch of completions (sends done, receives ended).
    settle: Vec<u32>,
    /// Connections whose receive must be re-armed once buffers are back (ENOBUFS).
    rearm: Vec<u32>,
    accept_armed: bool,
    next_sweep_ms: u64,
    /// An fdatasync of the WAL segment is in flight (`OP_WAL_SYNC`).
    wal_sync_in_flight: bool,
    /// The control plane as last fed to the shard (changes are fed as `ControlEvent`s).
    fed_ready: bool,
    fed_drain_close_at_ms: Option<u64>,
    fed_cores_alive: bool,
    /// A descriptor held in reserve (`open_spare`): at the descriptor limit it is closed to accept
    /// one pending connection that the shard answers "over capacity", and taken again once a
    /// descriptor is free. None while spent (or while even it could not be taken).
    spare: Option<RawFd>,
    /// The last accept failed with EMFILE/ENFILE: the limit poll stands in for the multishot
    /// accept until an accept succeeds again.
    at_limit: bool,
    limit_poll_armed: bool,
    /// Accept failures repeat at every sweep while the process is at its descriptor limit: they
    /// are all counted (`ringcast_accept_errors_total`), but logged at most once per
    /// `ACCEPT_ERROR_LOG_INTERVAL_MS`.
    accept_error_log: Throttle,
    /// The hot standby (`[replication]`): role changes fed to the shard, a standby's inputs.
    replica: Option<follow::ReplicaCore>,
}

/// At most one log line per interval for a failure that repeats; the ones held back in between
/// are counted so that the next line can say how many there were.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// When the next line may be written (monotonic ms).
    next_ms: u64,
    /// Occurrences held back since the last line.
    held: u64,
}

impl Throttle {
    /// One more occurrence: Some(how many were held back before it) when it may be logged now.
    pub(crate) fn admit(&mut self, now_ms: u64, interval_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.held += 1;
            return None;
        }
        self.next_ms = now_ms + interval_ms;
        Some(std::mem::take(&mut self.held))
    }

    /// Some(count) when occurrences were held back and a line may be written now, so that the
    /// last ones of a burst are reported even when no new one comes to carry them.
    fn overdue(&mut self, now_ms: u64, interval_ms: u64) -> Option<u64> {
        if self.held == 0 || now_ms < self.next_ms {
            return None;
        }
        self.next_ms = now_ms + interval_ms;
        Some(std::mem::take(&mut self.held))
    }
}

impl CoreLoop {
    #[allow(clippy::too_many_arguments)]
    fn new(
        core: usize,
        listeners: Listeners,
        shard: Shard,
        mesh: Arc<Mesh>,
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        replica: Option<Arc<ReplicaShared>>,
    ) -> io::Result<CoreLoop> {
        // Deferred task work (`DEFER_TASKRUN`) measured no cheaper here, and with it
        // `websocket::ping_flood_without_reading_is_dropped` often ran into its 10 s write
        // timeout instead of being dropped at once (cause not found): cooperative task work.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(limits::RING_ENTRIES)
            .or_else(|_| IoUring::new(limits::RING_ENTRIES))?;
        let buffers = BufRing::new(
            &ring,
            limits::RECV_BUFFERS_PER_CORE,
            limits::RECV_BUFFER_BYTES,
            BUFFER_GROUP,
        )?;
        let mut core_loop = CoreLoop {
            ring,
            buffers,
            core,
            listener: listeners.primary,
            listener_tls: listeners.primary_tls,
            tls_listener: listeners.tls,
            tls_accept_armed: false,
            shard,
            mesh,
            control,
            metrics,
            stop,
            sends: Vec::new(),
            send_pool: Vec::new(),
            doorbell_value: Box::new(0),
            dirty: Vec::new(),
            settle: Vec::new(),
            rearm: Vec::new(),
            accept_armed: false,
            next_sweep_ms: 0,
            wal_sync_in_flight: false,
            fed_ready: false,
            fed_drain_close_at_ms: None,
            fed_cores_alive: true,
            spare: open_spare(listeners.primary),
            at_limit: false,
            limit_poll_armed: false,
            accept_error_log: Throttle::default(),
            replica: replica.map(follow::ReplicaCore::new),
        };
        core_loop.arm_accept();
        core_loop.arm_tls_accept();
        core_loop.arm_doorbell();
        core_loop.ring.submit()?;
        Ok(core_loop)
    }

    fn now(&self) -> Now {
        clock(&self.control)
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry we build points only at memory that outlives the operation:
            // the listener and sockets stay open until their operations complete; a send's
            // iovecs and the frames they point at are owned by its boxed `SendOp`, kept in
            // `sends` until the completion (the frames were moved out of the connection's queue,
            // so nothing the shard does to the connection can free them); the doorbell value is
            // boxed in `self`; receive buffers belong to the registered buffer ring; a WAL
            // fsync names only a descriptor (the ring takes its own reference to the file at
            // submission, and a segment sealed meanwhile was synced when it was sealed).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            if let Err(error) = self.ring.submit() {
                tracing::error!(core = self.core, %error, "io_uring submit failed");
            }
        }
    }

    fn arm_accept(&mut self) {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT, 0));
        self.push(entry);
        self.accept_armed = true;
    }

    fn arm_tls_accept(&mut self) {
        let Some(listener) = self.tls_listener else {
            return;
        };
        if self.tls_accept_armed || self.stop.load(Ordering::Relaxed) {
            return;
        }
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT_TLS, 0));
        self.push(entry);
        self.tls_accept_armed = true;
    }

    /// A completion of the TLS listener's accept: the socket goes to the shard as a TLS
    /// connection. Failures are counted like the primary's; the sweep re-arms.
    fn accepted_tls(&mut self, result: i32, flags: u32, now: Now) {
        if !cqueue::more(flags) {
            self.tls_accept_armed = false;
        }
        if result < 0 {
            self.accept_failed(-result, now);
            return;
        }
        match self.shard.accept_tls(result, now) {
            Some(key) => self.arm_recv(key),
            // The socket was just accepted and is known to nobody else.
            None => self.close_socket(result),
        }
        if !self.tls_accept_armed {
            self.arm_tls_accept();
        }
    }

    fn arm_doorbell(&mut self) {
        let fd = self.mesh.eventfd(self.core);
        let pointer: *mut u64 = &mut *self.doorbell_value;
        let entry = opcode::Read::new(types::Fd(fd), pointer.cast(), 8)
            .build()
            .user_data(user_data(OP_DOORBELL, 0));
        self.push(entry);
    }

    fn arm_recv(&mut self, key: u32) {
        let fd = self.shard.conn(key).fd;
        let entry = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(user_data(OP_RECV, key));
        self.push(entry);
        self.shard.conn_mut(key).io.recv_armed = true;
    }

    fn run(&mut self) {
        let mut completions = Vec::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.now();
            self.control.beat(self.core, now.mono_ms);
            self.feed_control(now);
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            let mut busy = !completions.is_empty();
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags, now);
            }
            self.buffers.publish();
            busy |= self.drain_mesh(now);
            busy |= self.follow(now);
            if now.mono_ms >= self.next_sweep_ms {
                self.sweep(now);
            }
            for key in std::mem::take(&mut self.rearm) {
                if self.shard_has(key)
                    && !self.shard.conn(key).dead
                    && !self.shard.conn(key).io.recv_armed
                {
                    self.arm_recv(key);
                }
            }
            // Group commit: this tick's WAL records are written (and synced by policy) before
            // anything of the tick leaves the core, and the publishes they made durable are
            // acknowledged. Only then do mesh messages and socket writes go out.
            let committed = self.shard.commit(now);
            self.exit_if_failed(committed);
            self.start_wal_sync(now);
            self.shard.outbox().flush(&self.mesh);
            self.flush_connections();
            let iteration_us = self.control.now_us().saturating_sub(now.mono_us);
            self.metrics.cores[self.core].loop_iteration(iteration_us);
            if busy || !self.shard.outbox().is_empty() {
                if let Err(error) = self.ring.submit() {
                    tracing::error!(core = self.core, %error, "io_uring submit failed");
                }
                continue;
            }
            // Idle: poll the mesh without syscalls for a moment (waking a parked vCPU costs tens
            // of µs), then park in the kernel until a completion, a doorbell or the next sweep.
            if !self.ring.submission().is_empty()
                && let Err(error) = self.ring.submit()
            {
                tracing::error!(core = self.core, %error, "io_uring submit failed");
            }
            // With one core there is no peer to wait for: park at once.
            let spin_max = if self.mesh.cores() > 1 {
                SPIN_BEFORE_PARK
            } else {
                0
            };
            let mut spins = 0;
            while spins < spin_max && !self.mesh.has_inbound(self.core) {
                std::hint::spin_loop();
                spins += 1;
            }
            if spins < spin_max {
                continue;
            }
            if self.mesh.park(self.core) {
                self.park();
                self.mesh.unpark(self.core);
            }
        }
        // Stopping (after the drain): whatever the fsync policy, the log is synced on the way
        // out, so a clean shutdown never depends on the kernel's writeback.
        let flushed = self.shard.flush_journal(self.now());
        self.exit_if_failed(flushed);
    }

    /// Starts an fdatasync of the WAL segment through the ring when one is due: the loop goes on
    /// serving while it runs, and its completion acknowledges what it made durable (a tick's
    /// records are written before this, so the sync covers them). One at a time.
    fn start_wal_sync(&mut self, now: Now) {
        if self.wal_sync_in_flight {
            return;
        }
        let Some(fd) = self.shard.begin_journal_sync(now) else {
            return;
        };
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data(OP_WAL_SYNC, 0));
        self.push(entry);
        self.wal_sync_in_flight = true;
    }

    /// Waits in the kernel for a completion, a doorbell, the next sweep, or the WAL's next
    /// sync of an idle stream, whichever comes first.
    fn park(&mut self) {
        let now = self.now();
        let sweep_in_ms = self.next_sweep_ms.saturating_sub(now.mono_ms);
        let sync_in_ms = self.shard.journal_wake_in_ms(now).unwrap_or(u64::MAX);
        let wait_ms = sweep_in_ms.min(sync_in_ms).max(1);
        let timeout = types::Timespec::from(Duration::from_millis(wait_ms));
        let args = types::SubmitArgs::new().timespec(&timeout);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(error) => tracing::error!(core = self.core, %error, "io_uring wait failed"),
        }
    }

    /// The timer sweep: control-plane changes, the shard's timers, the WAL's upkeep, accept
    /// errors held back from the log, and the spare descriptor.
    fn sweep(&mut self, now: Now) {
        self.next_sweep_ms = now.mono_ms + limits::TIMER_SWEEP_INTERVAL_MS;
        self.feed_sweep_control(now);
        #[cfg(debug_assertions)]
        self.test_stall(now);
        self.shard.on_timer(now);
        let maintained = self.shard.maintain_journal(now);
        self.exit_if_failed(maintained);
        if let Some(count) = self
            .accept_error_log
            .overdue(now.mono_ms, limits::ACCEPT_ERROR_LOG_INTERVAL_MS)
        {
            tracing::warn!(
                core = self.core,
                suppressed = count,
                "accept failed; `suppressed` more failures since the last line"
            );
        }
        // A descriptor may have been freed off this core's connections (another core, the
        // metrics thread): the spare comes back as soon as there is one.
        self.restore_spare();
        self.resume_accepting();
        self.arm_tls_accept();
    }

    /// A WAL write or sync failed: nothing more may be acknowledged, so the process exits now,
    /// before this tick sends anything (the PostgreSQL fsync rule; a restart recovers from
    /// what is on disk).
    fn exit_if_failed(&self, result: Result<(), JournalFailed>) {
        if let Err(error) = result {
            tracing::error!(core = self.core, %error, "write-ahead log failed: exiting");
            eprintln!(
                "ringcast: write-ahead log failed on core {}: {error}",
                self.core
            );
            std::process::exit(EXIT_STORAGE_FAILED);
        }
    }

    /// Feeds readiness and drain changes to the shard (two atomic loads per iteration, so a
    /// request right after start-up or a signal already sees the new state).
    fn feed_control(&mut self, now: Now) {
        self.feed_replication(now);
        let ready = self.control.is_ready();
        if ready != self.fed_ready {
            self.fed_ready = ready;
            self.shard.on_control(ControlEvent::Ready(ready), now);
        }
        let drain_close_at_ms = self.control.drain_close_at_ms();
        if drain_close_at_ms != self.fed_drain_close_at_ms {
            self.fed_drain_close_at_ms = drain_close_at_ms;
            if let Some(close_at_ms) = drain_close_at_ms {
                self.shard
                    .on_control(ControlEvent::Drain { close_at_ms }, now);
            }
        }
    }

    /// Once per sweep: liveness of every core, a reload, and this core's connection count for
    /// the control thread.
    fn feed_sweep_control(&mut self, now: Now) {
        let all_cores_alive = self.control.all_cores_alive(limits::CORE_LOOP_STALL_MS);
        if all_cores_alive != self.fed_cores_alive {
            self.fed_cores_alive = all_cores_alive;
            self.shard
                .on_control(ControlEvent::Liveness { all_cores_alive }, now);
        }
        if let Some(reload) = self.control.take_reload(self.core) {
            self.shard.on_control(ControlEvent::Reload(reload), now);
        }
        self.control
            .publish_connections(self.core, self.shard.connection_count());
    }

    fn shard_has(&self, key: u32) -> bool {
        self.shard.has_conn(key)
    }

    fn drain_mesh(&mut self, now: Now) -> bool {
        let mut any = false;
        for from in 0..self.mesh.cores() {
            if from == self.core {
                continue;
            }
            for _ in 0..MESH_BATCH_MAX {
                let Some(message) = self.mesh.try_recv(from, self.core) else {
                    break;
                };
                any = true;
                self.shard.on_mesh(from, message, now);
            }
        }
        any
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32, now: Now) {
        let (op, key) = split_user_data(data);
        match op {
            OP_ACCEPT => self.accepted(result, flags, now),
            OP_ACCEPT_TLS => self.accepted_tls(result, flags, now),
            OP_RECV => self.received(key, result, flags, now),
            OP_SEND => self.sent(key, result),
            OP_DOORBELL => self.arm_doorbell(),
            OP_LIMIT_POLL => self.client_at_limit(result, now),
            OP_WAL_SYNC => {
                self.wal_sync_in_flight = false;
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(())
                };
                let synced = self.shard.journal_synced(result, now);
                self.exit_if_failed(synced);
            }
            _ => unreachable!("unknown operation {op}"),
        }
    }

    fn accepted(&mut self, result: i32, flags: u32, now: Now) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result < 0 {
            self.accept_failed(-result, now);
            if matches!(-result, libc::EMFILE | libc::ENFILE) && !self.accept_armed {
                // At the descriptor limit. An accept takes its descriptor before it looks at
                // the backlog, so a re-armed accept would fail at once, client or not: wait for
                // a client with a poll on the listener instead (`client_at_limit`).
                self.at_limit = true;
                self.arm_limit_poll();
            }
            // Otherwise (out of memory): the next sweep re-arms, rather than spinning.
            return;
        }
        // TCP_NODELAY is inherited from the listener (set in `bind_listener`): no syscall here.
        self.admit_socket(result, now);
        if !self.accept_armed && !self.stop.load(Ordering::Relaxed) {
            self.arm_accept();
        }
    }

    /// Counts a failed accept (`errno`, positive) and logs it, at most one line per interval.
    fn accept_failed(&mut self, errno: i32, now: Now) {
        self.metrics.cores[self.core].accept_error(errno);
        if let Some(held) = self
            .accept_error_log
            .admit(now.mono_ms, limits::ACCEPT_ERROR_LOG_INTERVAL_MS)
        {
            let error = io::Error::from_raw_os_error(errno);
            tracing::warn!(
                core = self.core,
                %error,
                suppressed = held,
                "accept failed (one line per {} s per core at most: `suppressed` failures came since the last; all are counted in ringcast_accept_errors_total)",
                limits::ACCEPT_ERROR_LOG_INTERVAL_MS / 1000
            );
        }
    }

    /// Hands a newly accepted socket to the shard (closed at once when this core is full).
    fn admit_socket(&mut self, fd: RawFd, now: Now) {
        let admitted = if self.listener_tls {
            self.shard.accept_tls(fd, now)
        } else {
            self.shard.accept(fd, now)
        };
        match admitted {
            Some(key) => self.arm_recv(key),
            // The socket was just accepted and is known to nobody else.
            None => self.close_socket(fd),
        }
    }

    /// A plain accept on the listener, for the exceptional paths at the descriptor limit (the
    /// multishot accept is not armed then); the errno when it fails.
    fn accept_one(&self) -> Result<RawFd, i32> {
        // SAFETY: accept4 on our listening socket; the null address pointers ask for no peer
        // address, so the kernel writes no memory of ours.
        let fd = unsafe {
            libc::accept4(
                self.listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            Ok(fd)
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        }
    }

    /// At the descriptor limit, waits for a client: a one-shot poll on the listener, armed only
    /// while the spare is held (without it, a waiting client could not be answered anyway, and
    /// the poll would fire again and again; the spare's return re-arms it).
    fn arm_limit_poll(&mut self) {
        if self.limit_poll_armed || self.spare.is_none() || self.stop.load(Ordering::Relaxed) {
            return;
        }
        let entry = opcode::PollAdd::new(types::Fd(self.listener), libc::POLLIN as u32)
            .build()
            .user_data(user_data(OP_LIMIT_POLL, 0));
        self.push(entry);
        self.limit_poll_armed = true;
    }

    /// The limit poll fired: a client is waiting. If a descriptor is free again it is simply
    /// accepted and the multishot accept resumes; if the process is still at its limit, the
    /// spare is spent on it (`refuse_one_over_capacity`).
    fn client_at_limit(&mut self, result: i32, now: Now) {
        self.limit_poll_armed = false;
        if result < 0 {
            // Cancelled or failed: the next sweep arms it again.
            return;
        }
        match self.accept_one() {
            Ok(fd) => {
                self.at_limit = false;
                self.admit_socket(fd, now);
                self.resume_accepting();
            }
            Err(errno @ (libc::EMFILE | libc::ENFILE)) => {
                self.accept_failed(errno, now);
                self.refuse_one_over_capacity(now);
            }
            Err(errno) => {
                // Nothing pending any more (the client left), or the connection failed first.
                if errno != libc::EAGAIN {
                    self.accept_failed(errno, now);
                }
                self.arm_limit_poll();
            }
        }
    }

    /// At the descriptor limit, spends the spare descriptor on the waiting client, which the
    /// shard answers "over capacity" and closes (`Conn::over_capacity`): the client learns at
    /// once instead of waiting in the listen backlog for a descriptor. The spare comes back when
    /// a descriptor is free (`close_socket`, `restore_spare`), and with it the limit poll; until
    /// then the next clients wait.
    fn refuse_one_over_capacity(&mut self, now: Now) {
        let Some(spare) = self.spare.take() else {
            return;
        };
        // SAFETY: the spare is our own descriptor, which no operation refers to; closed once.
        unsafe { libc::close(spare) };
        match self.accept_one() {
            Ok(fd) => match self.shard.accept_over_capacity(fd, self.listener_tls, now) {
                Some(key) => self.arm_recv(key),
                // This core is full: the socket was just accepted and is known to nobody else.
                None => self.close_socket(fd),
            },
            // The client left, or another thread took the descriptor first.
            Err(_) => self.restore_spare(),
        }
    }

    /// Takes the spare descriptor again if it is spent and a descriptor is free, and resumes
    /// waiting for clients.
    fn restore_spare(&mut self) {
        if self.spare.is_some() {
            return;
        }
        self.spare = open_spare(self.listener);
        if self.spare.is_some() {
            self.resume_accepting();
        }
    }

    /// Accepts again: with the multishot accept normally, with the limit poll at the limit.
    fn resume_accepting(&mut self) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        if self.at_limit {
            self.arm_limit_poll();
        } else if !self.accept_armed {
            self.arm_accept();
        }
    }

    /// Closes a connection's socket. While the spare is spent, the socket's descriptor becomes
    /// the spare in the same step: `dup3` of the listener onto it closes the socket (as `close`
    /// would, a reset included) and reuses the number, so no accept running meanwhile, on this
    /// ring or another thread, can take the freed descriptor first and leave the core without
    /// its spare at the limit.
    fn close_socket(&mut self, fd: RawFd) {
        if self.spare.is_none() {
            // SAFETY: `fd` is a socket we own that no operation refers to any more; dup3
            // releases it and makes the number a duplicate of our listener, which we own next.
            let spare = unsafe { libc::dup3(self.listener, fd, libc::O_CLOEXEC) };
            if spare == fd {
                self.spare = Some(spare);
                self.resume_accepting();
                return;
            }
        }
        // SAFETY: no operation refers to the socket any more, and we own it.
        unsafe { libc::close(fd) };
    }

    fn received(&mut self, key: u32, result: i32, flags: u32, now: Now) {
        let more = cqueue::more(flags);
        if !more {
            self.shard.conn_mut(key).io.recv_armed = false;
        }
        if result > 0 {
            let bid =
                cqueue::buffer_select(flags).expect("a multishot receive always selects a buffer");
            let data = self.buffers.data(bid, result as usize);
            CoreMetrics::add(
                &self.metrics.cores[self.core].socket_received_bytes,
                result as u64,
            );
            self.shard.on_recv(key, data, now);
            self.buffers.push(bid);
            if !more {
                // The kernel ended the multishot receive (e.g. CQ pressure): ask again.
                self.rearm.push(key);
            }
        } else if result == -libc::ENOBUFS {
            // Every buffer is in use: re-arm once this batch has returned some.
            self.rearm.push(key);
        } else {
            // 0 is an orderly close from the peer; anything else is a socket error.
            self.shard.on_peer_closed(key);
        }
        self.settle.push(key);
    }

    fn sent(&mut self, key: u32, result: i32) {
        let mut op = self.sends[key as usize]
            .take()
            .expect("a send completion has its operation");
        debug_assert!(
            op.owns_its_iovecs(),
            "send completion (result {result}): the frames the kernel read are no longer the op's"
        );
        self.shard.conn_mut(key).io.send_in_flight = false;
        if result >= 0 {
            CoreMetrics::add(
                &self.metrics.cores[self.core].socket_transmitted_bytes,
                result as u64,
            );
            // Puts the unsent rest back at the front of the queue (or drops the frames of a
            // connection that died meanwhile): the kernel is done with them.
            self.shard.on_sent(key, result as usize, &mut op.frames);
        } else {
            op.frames.clear();
            self.shard.on_peer_closed(key);
        }
        // A connect burst has every handshake in flight at once; keep only a small pool so
        // that burst's operations are not held for the life of the process.
        if self.send_pool.len() < SEND_POOL_MAX {
            self.send_pool.push(op);
        }
        self.settle.push(key);
    }

    /// Starts sends for connections with output, half-closes connections that are done, and
    /// frees connections the shard and the kernel are both done with.
    fn flush_connections(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.shard.take_dirty(&mut dirty);
        dirty.append(&mut self.settle);
        for &key in &dirty {
            if self.shard_has(key) {
                self.settle_connection(key);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn settle_connection(&mut self, key: u32) {
        let conn = self.shard.conn(key);
        let fd = conn.fd;
        if conn.dead {
            if conn.reclaimable() {
                let aborted = conn.aborted;
                let fd = self.shard.remove(key);
                if aborted {
                    reset_on_close(fd);
                }
                // If the spare was spent at the limit, it takes this descriptor.
                self.close_socket(fd);
            } else if (conn.io.recv_armed || conn.io.send_in_flight) && !conn.io.write_shut {
                // Wake the pending receive so it completes and releases the socket, and fail a
                // send stuck on a peer that does not read (a dropped slow consumer whose receive
                // was not armed at that moment would otherwise keep its socket forever).
                // SAFETY: shutdown on a socket we own; errors (already disconnected) are harmless.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                self.shard.conn_mut(key).io.write_shut = true;
            } else if conn.io.recv_armed && conn.io.write_shut {
                // SAFETY: as above; a second shutdown of the read side ends the receive.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
            return;
        }
        if !conn.io.send_in_flight && conn.has_output() {
            self.start_send(key);
        } else if self.shard.wants_write_shutdown(key) {
            // Output is flushed: send FIN and wait for the peer's close (or the linger deadline).
            // SAFETY: shutdown on a socket we own.
            unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            self.shard.conn_mut(key).io.write_shut = true;
        }
    }

    fn start_send(&mut self, key: u32) {
        let mut op = self.send_pool.pop().unwrap_or_else(SendOp::new);
        // The frames leave the connection's queue for the op, which owns them until the
        // completion; moving a `Bytes` does not move the bytes it points at.
        self.shard
            .take_for_send(key, &mut op.frames, limits::SEND_IOVECS_MAX);
        let op_ref = &mut *op;
        for (iovec, frame) in op_ref.iovecs.iter_mut().zip(&op_ref.frames) {
            *iovec = libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            };
        }
        let count = op.frames.len();
        if count == 0 {
            // A TLS connection whose output was only a state change (nothing to write).
            self.send_pool.push(op);
            return;
        }
        op.header.msg_iov = op.iovecs.as_mut_ptr();
        op.header.msg_iovlen = count;
        let fd = self.shard.conn(key).fd;
        let entry = opcode::SendMsg::new(types::Fd(fd), &raw const op.header)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(OP_SEND, key));
        let slot = key as usize;
        if self.sends.len() <= slot {
            self.sends.resize_with(slot + 1, || None);
        }
        assert!(
            self.sends[slot].is_none(),
            "one send in flight per connection"
        );
        // The boxed op, kept in `sends` until the completion, owns the iovecs and the frames
        // they point at.
        self.sends[slot] = Some(op);
        self.shard.conn_mut(key).io.send_in_flight = true;
        self.push(entry);
    }
}

/// Test hook (debug builds only): `RINGCAST_TEST_WAL_FAULT=sync-eio-after-ms:MS` makes the
/// WAL's syncs fail with EIO from MS milliseconds after start, so tests can see the process stop
/// before it acknowledges anything it could not persist. Release builds do not contain it.
#[cfg(debug_assertions)]
fn test_fault(storage: Arc<dyn crate::wal::Storage>) -> Arc<dyn crate::wal::Storage> {
    let Some(after_ms) = std::env::var("RINGCAST_TEST_WAL_FAULT")
        .ok()
        .and_then(|spec| spec.strip_prefix("sync-eio-after-ms:")?.parse::<u64>().ok())
    else {
        return storage;
    };
    let faulty = Arc::new(crate::wal::FaultyStorage::new(storage));
    let armed = Arc::clone(&faulty);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(after_ms));
        tracing::warn!("RINGCAST_TEST_WAL_FAULT: WAL syncs fail with EIO from now on");
        armed.arm(crate::wal::Fault::SyncEio);
    });
    faulty
}

impl CoreLoop {
    /// Test hook (debug builds only): `RINGCAST_TEST_STALL_CORE=CORE:MS` makes core CORE stop
    /// running its loop MS milliseconds after start, so tests can see the watchdog and
    /// `/healthz` notice a stuck core. Release builds do not contain it.
    #[cfg(debug_assertions)]
    fn test_stall(&self, now: Now) {
        let Ok(spec) = std::env::var("RINGCAST_TEST_STALL_CORE") else {
            return;
        };
        let Some((core, after_ms)) = spec.split_once(':') else {
            return;
        };
        if core.parse::<usize>().ok() == Some(self.core)
            && after_ms.parse::<u64>().is_ok_and(|ms| now.mono_ms >= ms)
        {
            tracing::warn!(
                core = self.core,
                "RINGCAST_TEST_STALL_CORE: this core stops running its loop"
            );
            while !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for CoreLoop {
    fn drop(&mut self) {
        // The armed multishot accept holds its own reference to the listening socket, and the
        // kernel drops the ring's requests only in its asynchronous teardown after the process
        // is gone: closing our descriptor alone left the port in LISTEN for a moment after
        // exit, and a restart at once failed with EADDRINUSE. Shutting the socket down stops
        // the listening now, whoever still holds it; the port is free for the next process.
        // SAFETY: we own the listener descriptor; shut down, then closed exactly once.
        unsafe {
            libc::shutdown(self.listener, libc::SHUT_RDWR);
            libc::close(self.listener);
        }
        if let Some(listener) = self.tls_listener {
            // SAFETY: as above, for the TLS listener.
            unsafe {
                libc::shutdown(listener, libc::SHUT_RDWR);
                libc::close(listener);
            }
        }
        if let Some(spare) = self.spare.take() {
            // SAFETY: the spare is our own descriptor, referred to by nothing; closed once.
            unsafe { libc::close(spare) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_message_says_why() {
        let denied = io::Error::from_raw_os_error(libc::EPERM);
        let message = unavailable_message(&denied, Some("2\n"));
        assert!(
            message.contains("kernel.io_uring_disabled = 2"),
            "{message}"
        );
        assert!(
            message.contains("sysctl kernel.io_uring_disabled=0"),
            "{message}"
        );
        let message = unavailable_message(&denied, Some("0"));
        assert!(message.contains("seccomp"), "{message}");
        let missing = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(unavailable_message(&missing, None).contains("no io_uring"));
    }

    #[test]
    fn throttle_logs_once_per_interval_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.admit(0, 1000), Some(0), "the first is logged");
        for ms in [1, 100, 999] {
            assert_eq!(throttle.admit(ms, 1000), None);
        }
        assert_eq!(throttle.overdue(999, 1000), None, "not before the interval");
        assert_eq!(
            throttle.admit(1000, 1000),
            Some(3),
            "says how many were held"
        );
        assert_eq!(throttle.admit(1500, 1000), None);
        assert_eq!(throttle.overdue(2000, 1000), Some(1), "the last of a burst");
        assert_eq!(throttle.overdue(3000, 1000), None, "nothing held");
        assert_eq!(throttle.admit(3000, 1000), Some(0));
    }

    #[test]
    fn probe_succeeds_here() {
        // The test machines run io_uring; if this fails, every integration test fails too,
        // and this line says why.
        probe().unwrap();
    }
}
