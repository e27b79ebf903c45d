//! The mesh: the only way cores talk. One bounded lock-free queue per ordered pair of cores
//! (crossbeam `ArrayQueue`), plus a doorbell per core (an eventfd the core keeps a read posted on)
//! so a parked core wakes when a message arrives. A full queue hands the message back to the
//! sender (backpressure); nothing here blocks, drops or reorders. The message set is the closed
//! enum in `message.rs`.

pub mod message;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::limits;
pub use message::{ChannelKey, ConnRef, ShardMessage};

/// Wakes a parked core. `parked` is set by the core itself just before it waits; a sender that
/// sees it set clears it and writes the eventfd.
struct Doorbell {
    parked: CachePadded<AtomicBool>,
    eventfd: RawFd,
}

pub struct Mesh {
    cores: usize,
    /// Index `from * cores + to`.
    queues: Box<[ArrayQueue<ShardMessage>]>,
    doorbells: Box<[Doorbell]>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    pub fn new(cores: usize) -> io::Result<Mesh> {
        assert!((1..=limits::CORES_MAX).contains(&cores));
        // Index `from * cores + to`; a core never mails itself, so the diagonal gets a token
        // queue (an ArrayQueue cannot have capacity 0) instead of a full one.
        let queues = (0..cores * cores)
            .map(|index| {
                let diagonal = index / cores == index % cores;
                ArrayQueue::new(if diagonal {
                    1
                } else {
                    limits::MESH_QUEUE_DEPTH
                })
            })
            .collect();
        let mut doorbells = Vec::with_capacity(cores);
        for _ in 0..cores {
            // SAFETY: eventfd takes no pointers; the result is checked below.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            doorbells.push(Doorbell {
                parked: CachePadded::new(AtomicBool::new(false)),
                eventfd: fd,
            });
        }
        Ok(Mesh {
            cores,
            queues,
            doorbells: doorbells.into_boxed_slice(),
        })
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    fn queue(&self, from: usize, to: usize) -> &ArrayQueue<ShardMessage> {
        assert!(from < self.cores && to < self.cores && from != to);
        &self.queues[from * self.cores + to]
    }

    /// Sends without blocking; a full queue hands the message back.
    pub fn try_send(
        &self,
        from: usize,
        to: usize,
        message: ShardMessage,
    ) -> Result<(), ShardMessage> {
        self.queue(from, to).push(message)
    }

    pub fn try_recv(&self, from: usize, to: usize) -> Option<ShardMessage> {
        self.queue(from, to).pop()
    }

    /// Messages waiting on the queue `from -> to` (for metrics).
    pub fn depth(&self, from: usize, to: usize) -> usize {
        self.queue(from, to).len()
    }

    /// Whether any message waits for core `me` (a few atomic loads; no syscall).
    pub fn has_inbound(&self, me: usize) -> bool {
        (0..self.cores).any(|from| from != me && !self.queue(from, me).is_empty())
    }

    /// Wakes core `to` if it is parked. Called after a batch of sends to `to`.
    pub fn ring(&self, to: usize) {
        let doorbell = &self.doorbells[to];
        if doorbell.parked.load(Ordering::SeqCst) && doorbell.parked.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd. EAGAIN (counter full)
            // still leaves the counter non-zero, which is all a wake-up needs, so the result is
            // deliberately ignored.
            let _ = unsafe { libc::write(doorbell.eventfd, (&raw const one).cast(), 8) };
        }
    }

    /// Marks core `me` parked. Returns false (and stays unparked) when messages are already
    /// waiting, so the caller must not sleep. The SeqCst store-then-check pairs with the
    /// SeqCst push-then-load in `ring`: either the sender sees `parked`, or we see its message.
    pub fn park(&self, me: usize) -> bool {
        self.doorbells[me].parked.store(true, Ordering::SeqCst);
        if self.has_inbound(me) {
            self.doorbells[me].parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn unpark(&self, me: usize) {
        self.doorbells[me].parked.store(false, Ordering::SeqCst);
    }

    pub fn eventfd(&self, core: usize) -> RawFd {
        self.doorbells[core].eventfd
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for doorbell in self.doorbells.iter() {
            // SAFETY: we own these descriptors and close each exactly once.
            unsafe { libc::close(doorbell.eventfd) };
        }
    }
}

/// One core's outgoing messages: a FIFO per destination that absorbs a full queue. Order per
/// destination is kept because nothing goes to the mesh while older messages wait here.
#[derive(Debug)]
pub struct Outbox {
    me: usize,
    pending: Vec<VecDeque<ShardMessage>>,
}

impl Outbox {
    pub fn new(me: usize, cores: usize) -> Outbox {
        Outbox {
            me,
            pending: (0..cores).map(|_| VecDeque::new()).collect(),
        }
    }

    pub fn push(&mut self, to: usize, message: ShardMessage) {
        assert_ne!(to, self.me, "local work never goes through the mesh");
        assert!(
            self.pending[to].len() < limits::MESH_OUTBOX_MAX,
            "core {to} has not taken {} messages from core {}: it is stuck",
            limits::MESH_OUTBOX_MAX,
            self.me
        );
        self.pending[to].push_back(message);
    }

    /// Messages still waiting for `to`.
    pub fn backlog(&self, to: usize) -> usize {
        self.pending[to].len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(VecDeque::is_empty)
    }

    /// Moves as much as fits into the mesh and rings each destination that got something.
    pub fn flush(&mut self, mesh: &Mesh) {
        for to in 0..self.pending.len() {
            let queue = &mut self.pending[to];
            if queue.is_empty() {
                continue;
            }
            let mut sent = false;
            while let Some(message) = queue.pop_front() {
                match mesh.try_send(self.me, to, message) {
                    Ok(()) => sent = true,
                    Err(message) => {
                        queue.push_front(message);
                        break;
                    }
                }
            }
            if sent {
                mesh.ring(to);
            }
            if queue.is_empty() && queue.capacity() > 1024 {
                queue.shrink_to(64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn deliver(n: u64) -> ShardMessage {
        ShardMessage::Deliver {
            channel: ChannelKey::new(0, "c"),
            frame: Bytes::from(n.to_string()),
            exclude: None,
            published_us: 0,
        }
    }

    #[test]
    fn full_queue_backs_up_in_order() {
        let mesh = Mesh::new(2).unwrap();
        let mut outbox = Outbox::new(0, 2);
        let total = limits::MESH_QUEUE_DEPTH as u64 + 100;
        for n in 0..total {
            outbox.push(1, deliver(n));
        }
        outbox.flush(&mesh);
        assert_eq!(outbox.backlog(1), 100);
        let mut next = 0;
        loop {
            while let Some(ShardMessage::Deliver { frame, .. }) = mesh.try_recv(0, 1) {
                assert_eq!(frame, Bytes::from(next.to_string()));
                next += 1;
            }
            if outbox.is_empty() {
                break;
            }
            outbox.flush(&mesh);
        }
        assert_eq!(next, total);
    }

    #[test]
    fn park_refuses_when_messages_wait() {
        let mesh = Mesh::new(2).unwrap();
        assert!(mesh.park(1));
        mesh.try_send(0, 1, deliver(1)).unwrap();
        mesh.ring(1);
        assert!(!mesh.park(1));
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our eventfd.
        let n = unsafe { libc::read(mesh.eventfd(1), (&raw mut counter).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(counter, 1);
    }

    #[test]
    fn two_threads_pass_every_message_in_order() {
        let mesh = std::sync::Arc::new(Mesh::new(2).unwrap());
        let total = 200_000u64;
        let sender = {
            let mesh = mesh.clone();
            std::thread::spawn(move || {
                let mut outbox = Outbox::new(0, 2);
                for n in 0..total {
                    outbox.push(1, deliver(n));
                    if n % 64 == 0 {
                        outbox.flush(&mesh);
                    }
                }
                while !outbox.is_empty() {
                    outbox.flush(&mesh);
                    std::thread::yield_now();
                }
            })
        };
        let mut next = 0;
        while next < total {
            match mesh.try_recv(0, 1) {
                Some(ShardMessage::Deliver { frame, .. }) => {
                    assert_eq!(frame, Bytes::from(next.to_string()));
                    next += 1;
                }
                Some(_) => unreachable!(),
                None => std::thread::yield_now(),
            }
        }
        sender.join().unwrap();
    }
}
