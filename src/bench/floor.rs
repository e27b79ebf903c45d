//! `ringcast bench floor`: what this machine's kernel charges for one small loopback TCP send
//! when no server is involved — the floor under any server's CPU per delivery, measured the way
//! a server's is (the sending thread's scheduler run time, which on loopback includes the
//! receiving socket's softirq work done in its context). It owns the floor's socket pairs, its
//! reader thread and three measured passes: one `send(2)` per message and the same sends as
//! io_uring operations submitted `--batch` at a time (as ringcast writes one event to a
//! channel's subscribers), both to a reader that polls every socket and never sleeps, so no
//! wake-up is charged to the sender (the lower bound); then the io_uring sends again to a reader
//! that sleeps and wakes as the bench's generator does (a multishot receive per socket, waits
//! of 32 completions or 20 µs), so the wake-ups a real client costs the sender are in it. It
//! must not talk to a server.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::engine::{BATCH_COMPLETIONS, BATCH_WAIT, RECV_BUFFER_BYTES, RECV_BUFFERS, RING_ENTRIES};
use super::measure::{round1, round3, thread_runtime_ns};
use super::sys::{self, Ring};
use super::{BenchError, FloorArgs, Outcome, reserve_descriptors, usage};

/// Most socket pairs of one floor run.
pub const FLOOR_CONNECTIONS_MAX: usize = 4096;
/// Most sends of one pass.
pub const FLOOR_SENDS_MAX: u64 = 20_000_000;
/// Most io_uring batches per second when paced.
pub const FLOOR_BATCH_RATE_MAX: f64 = 1_000_000.0;
/// Largest message of one send.
pub const FLOOR_PAYLOAD_MAX: usize = 65_536;
/// Longest wait for the reader to have every byte of a pass.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The polling reader's receive buffer.
const READ_BUFFER_BYTES: usize = 65_536;
/// The sleeping reader's longest wait when nothing arrives (how soon it notices the stop). Its
/// ring, buffer pool and batched waits are the generator's own (`engine`'s constants).
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// How the reader thread reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    /// Non-blocking reads over every socket in turn, never sleeping.
    Polling,
    /// One io_uring multishot receive per socket, batched waits (sleeps when idle).
    Sleeping,
}

/// One measured pass.
struct Pass {
    sends: u64,
    bytes_sent: u64,
    bytes_received: u64,
    runtime_ns: u64,
    wall_ns: u64,
}

impl Pass {
    fn json(&self) -> Value {
        let per_send = |ns: u64| round3(ns as f64 / 1e3 / self.sends.max(1) as f64);
        json!({
            "sends": self.sends,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "sender_runtime_secs": (self.runtime_ns as f64 / 1e3).round() / 1e6,
            "sender_cpu_us_per_send": per_send(self.runtime_ns),
            "sender_busy_percent": round1(self.runtime_ns as f64 * 100.0 / self.wall_ns.max(1) as f64),
            "wall_us_per_send": per_send(self.wall_ns),
        })
    }
}

/// The reader thread's side: its client sockets, the byte count, and how to stop it.
struct Reader {
    received: Arc<AtomicU64>,
    /// Why the reader stopped early, once it has.
    failed: Arc<OnceLock<String>>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<TcpStream>>,
}

impl Reader {
    fn spawn(clients: Vec<TcpStream>, cpu: usize, kind: ReaderKind) -> Result<Reader, BenchError> {
        let received = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f, s) = (received.clone(), failed.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("floor-reader".into())
            .spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                let mut clients = clients;
                let outcome = match kind {
                    ReaderKind::Polling => read_polling(&mut clients, &r, &s),
                    ReaderKind::Sleeping => read_sleeping(&clients, &r, &s),
                };
                if let Err(why) = outcome {
                    let _ = f.set(why);
                }
                clients
            })
            .map_err(|e| BenchError::Run(format!("cannot start the reader thread: {e}")))?;
        Ok(Reader {
            received,
            failed,
            stop,
            handle,
        })
    }

    /// Waits until the reader holds `total` bytes; the count it reached.
    fn wait_for(&self, total: u64) -> Result<u64, BenchError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let received = self.received.load(Ordering::Relaxed);
            if let Some(why) = self.failed.get() {
                return Err(BenchError::Run(format!(
                    "the floor's reader stopped: {why}"
                )));
            }
            if received >= total || Instant::now() >= deadline {
                return Ok(received);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the reader; its sockets, for the next one.
    fn stop(self) -> Result<Vec<TcpStream>, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| BenchError::Run("the reader thread panicked".into()))
    }
}

/// Reads every socket in turn without blocking until `stop`; fails on a failed or closed socket.
fn read_polling(
    clients: &mut [TcpStream],
    received: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    while !stop.load(Ordering::Relaxed) {
        for client in clients.iter_mut() {
            match client.read(&mut buffer) {
                Ok(0) => return Err("a socket was closed".into()),
                Ok(n) => {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => return Err(format!("read: {error}")),
            }
        }
    }
    Ok(())
}

/// Reads with a multishot receive per socket into a buffer pool, sleeping in batched waits,
/// until `stop`; fails on a failed or closed socket or ring. Run last: the ring's receives are
/// cancelled only once the ring is gone, so no reader may follow it on the same sockets.
fn read_sleeping(
    clients: &[TcpStream],
    received: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let ring_error = |e: std::io::Error| format!("io_uring: {e}");
    let mut ring = Ring::new(RING_ENTRIES, RECV_BUFFERS, RECV_BUFFER_BYTES).map_err(ring_error)?;
    ring.enable().map_err(ring_error)?;
    let fds: Vec<RawFd> = clients.iter().map(AsRawFd::as_raw_fd).collect();
    let mut rearm: Vec<usize> = (0..fds.len()).collect();
    let mut completions = Vec::new();
    let mut batching = false;
    while !stop.load(Ordering::Relaxed) {
        for token in rearm.drain(..) {
            ring.receive(fds[token], token as u64).map_err(ring_error)?;
        }
        let (want, timeout) = if batching {
            (BATCH_COMPLETIONS, BATCH_WAIT)
        } else {
            (1, IDLE_WAIT)
        };
        ring.wait(want, timeout).map_err(ring_error)?;
        ring.take_completions(&mut completions);
        batching = !completions.is_empty();
        let mut bytes = 0u64;
        for completion in &completions {
            let token = completion.data as usize;
            match (completion.buffer, completion.result) {
                (Some(bid), len) => {
                    bytes += len.max(0) as u64;
                    ring.recycle(bid);
                    if !completion.more {
                        rearm.push(token);
                    }
                }
                (None, error) if error == -libc::ENOBUFS => rearm.push(token),
                (None, 0) => return Err("a socket was closed".into()),
                (None, error) => {
                    let error = std::io::Error::from_raw_os_error(-error);
                    return Err(format!("receive: {error}"));
                }
            }
        }
        ring.publish_buffers();
        received.fetch_add(bytes, Ordering::Relaxed);
    }
    Ok(())
}

pub fn floor(args: &FloorArgs, nofile: u64) -> Result<Outcome, BenchError> {
    if args.connections == 0 || args.connections > FLOOR_CONNECTIONS_MAX {
        return usage(format!("--connections must be 1..={FLOOR_CONNECTIONS_MAX}"));
    }
    if args.payload == 0 || args.payload > FLOOR_PAYLOAD_MAX {
        return usage(format!("--payload must be 1..={FLOOR_PAYLOAD_MAX}"));
    }
    if args.sends == 0 || args.sends > FLOOR_SENDS_MAX {
        return usage(format!("--sends must be 1..={FLOOR_SENDS_MAX}"));
    }
    if args.batch == 0 || args.batch > args.connections {
        return usage("--batch must be 1..=--connections");
    }
    if !(args.batch_rate >= 0.0 && args.batch_rate <= FLOOR_BATCH_RATE_MAX) {
        return usage(format!("--batch-rate must be 0..={FLOOR_BATCH_RATE_MAX}"));
    }
    let cpus = core_affinity::get_core_ids().unwrap_or_default().len();
    if args.sender_cpu == args.reader_cpu || args.sender_cpu.max(args.reader_cpu) >= cpus.max(1) {
        return usage(format!(
            "--sender-cpu and --reader-cpu must be two different CPUs below {cpus} (the first \
             reader polls without sleeping)"
        ));
    }
    reserve_descriptors(2 * args.connections, nofile)?;
    let (servers, clients) = socket_pairs(args.connections)
        .map_err(|e| BenchError::Run(format!("cannot open loopback socket pairs: {e}")))?;
    core_affinity::set_for_current(core_affinity::CoreId {
        id: args.sender_cpu,
    });
    // One message for the whole run, kept for as long as any send may read it.
    let message: &'static [u8] = Box::leak(vec![b'x'; args.payload].into_boxed_slice());
    let uring = |count| send_io_uring(&servers, message, count, args.batch, args.batch_rate);
    let reader = Reader::spawn(clients, args.reader_cpu, ReaderKind::Polling)?;
    let polled = (|| {
        let syscall = pass(args, &reader, 0, |count| {
            send_syscalls(&servers, message, count)
        })?;
        let expected = syscall.bytes_received;
        Ok((syscall, pass(args, &reader, expected, uring)?))
    })();
    let clients = reader.stop()?;
    let (syscall, polled_uring) = polled?;
    let reader = Reader::spawn(clients, args.reader_cpu, ReaderKind::Sleeping)?;
    let sleeping = pass(args, &reader, 0, uring);
    reader.stop()?;
    let sleeping = sleeping?;
    let mut warnings = Vec::new();
    let passes = [
        ("send_syscall", &syscall),
        ("io_uring", &polled_uring),
        ("io_uring_sleeping_reader", &sleeping),
    ];
    for (name, pass) in passes {
        if pass.bytes_received != pass.bytes_sent {
            warnings.push(format!(
                "{name}: the reader got {} of {} bytes",
                pass.bytes_received, pass.bytes_sent
            ));
        }
    }
    let json = json!({
        "scenario": "floor",
        "params": {
            "connections": args.connections,
            "payload_bytes": args.payload,
            "sends": args.sends,
            "batch": args.batch,
            "batch_rate": args.batch_rate,
            "sender_cpu": args.sender_cpu,
            "reader_cpu": args.reader_cpu,
        },
        "results": {
            "send_syscall": syscall.json(),
            "io_uring": polled_uring.json(),
            "io_uring_sleeping_reader": sleeping.json(),
        },
        "warnings": warnings,
    });
    if !args.quiet {
        let per_send = |pass: &Pass| pass.runtime_ns as f64 / 1e3 / pass.sends as f64;
        eprintln!(
            "floor: {:.2} µs per send(2), {:.2} µs per io_uring send, {:.2} µs to a sleeping \
             reader ({} B to one of {} sockets)",
            per_send(&syscall),
            per_send(&polled_uring),
            per_send(&sleeping),
            args.payload,
            args.connections
        );
    }
    Ok(Outcome {
        json,
        svg: String::new(),
    })
}

/// `count` connected pairs over 127.0.0.1: (accepted side, the sender's with Nagle off as a
/// server's; connecting side, non-blocking, the reader's).
fn socket_pairs(count: usize) -> std::io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = listener.local_addr()?;
    let mut servers = Vec::with_capacity(count);
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        servers.push(server);
        clients.push(client);
    }
    Ok((servers, clients))
}

/// Runs one pass of `args.sends` sends, measuring the calling thread's run time, then waits for
/// the reader to have every byte (`already` is what it had before the pass).
fn pass(
    args: &FloorArgs,
    reader: &Reader,
    already: u64,
    send: impl FnOnce(u64) -> Result<(), BenchError>,
) -> Result<Pass, BenchError> {
    let tid = sys::thread_id();
    let runtime = || {
        thread_runtime_ns(tid)
            .ok_or_else(|| BenchError::Run("cannot read this thread's run time".into()))
    };
    let start = Instant::now();
    let before = runtime()?;
    send(args.sends)?;
    let runtime_ns = runtime()? - before;
    let wall_ns = start.elapsed().as_nanos() as u64;
    let bytes_sent = args.sends * args.payload as u64;
    let received = reader.wait_for(already + bytes_sent)?;
    Ok(Pass {
        sends: args.sends,
        bytes_sent,
        bytes_received: received - already,
        runtime_ns,
        wall_ns,
    })
}

/// One blocking `send(2)` per message, socket after socket.
fn send_syscalls(servers: &[TcpStream], message: &[u8], count: u64) -> Result<(), BenchError> {
    for i in 0..count {
        let mut socket = &servers[(i % servers.len() as u64) as usize];
        socket
            .write_all(message)
            .map_err(|e| BenchError::Run(format!("floor send failed: {e}")))?;
    }
    Ok(())
}

/// The same sends as io_uring operations, `batch` sockets per submission, waiting for the
/// batch's completions before the next (one `io_uring_enter` per batch).
fn send_io_uring(
    servers: &[TcpStream],
    message: &'static [u8],
    count: u64,
    batch: usize,
    batch_rate: f64,
) -> Result<(), BenchError> {
    let entries = (batch as u32).next_power_of_two().max(8);
    let run = |e: std::io::Error| BenchError::Run(format!("floor io_uring: {e}"));
    let mut ring = Ring::new(entries, 1, 64).map_err(run)?;
    ring.enable().map_err(run)?;
    let mut completions = Vec::with_capacity(batch);
    let mut sent = 0u64;
    let start = Instant::now();
    let mut batches = 0u64;
    while sent < count {
        if batch_rate > 0.0 {
            // Paced like a server's bursts: sleep (not spin) until the batch is due.
            let due = start + Duration::from_secs_f64(batches as f64 / batch_rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            batches += 1;
        }
        let this_batch = (count - sent).min(batch as u64) as usize;
        for j in 0..this_batch {
            let socket = &servers[((sent + j as u64) % servers.len() as u64) as usize];
            ring.send(socket.as_raw_fd(), message, j as u64)
                .map_err(run)?;
        }
        let mut done = 0;
        while done < this_batch {
            ring.wait(this_batch - done, READ_TIMEOUT).map_err(run)?;
            ring.take_completions(&mut completions);
            if completions.is_empty() {
                return Err(BenchError::Run(
                    "floor io_uring: sends did not complete".into(),
                ));
            }
            for completion in &completions {
                if completion.result != message.len() as i32 {
                    return Err(BenchError::Run(format!(
                        "floor io_uring: a send returned {} (of {} bytes)",
                        completion.result,
                        message.len()
                    )));
                }
            }
            done += completions.len();
        }
        sent += this_batch as u64;
    }
    Ok(())
}
