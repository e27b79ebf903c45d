//! The only file of `bench` with `unsafe`: thin, safe wrappers over the few Linux calls the load
//! generator needs that std and socket2 do not offer — an io_uring instance for readiness,
//! sends (for `bench floor`) and multishot receives (with a provided-buffer ring, so a thread reads every socket through one
//! pool and one system call per batch), thread ids, the clock-tick rate and
//! `IP_BIND_ADDRESS_NO_PORT`. (The descriptor limit and table are the runtime's helpers.) It must not hold any benchmark logic or state beyond the
//! descriptors and buffers it wraps; every block has a `// SAFETY:` line.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::runtime::buf_ring::BufRing;

/// A socket can be written to (or has failed): a one-shot poll.
pub const OP_WRITABLE: u8 = 1;
/// Data arrived (multishot receive into the thread's buffer pool).
pub const OP_RECV: u8 = 2;
/// Generations are kept to 24 bits in the operation's user data.
pub const GENERATION_MASK: u32 = 0x00FF_FFFF;
const BUFFER_GROUP: u16 = 0;

/// Packs an operation, the connection's generation (so completions for an earlier socket of a
/// re-used slot are recognised) and the connection's index.
pub fn user_data(op: u8, generation: u32, token: usize) -> u64 {
    (u64::from(op) << 56) | (u64::from(generation & GENERATION_MASK) << 32) | token as u64
}

/// The (op, generation, token) of [`user_data`].
pub fn split_user_data(data: u64) -> (u8, u32, usize) {
    (
        (data >> 56) as u8,
        (data >> 32) as u32 & GENERATION_MASK,
        (data & 0xFFFF_FFFF) as usize,
    )
}

/// One completion: user data, result, and (for receives) the buffer holding the bytes and
/// whether the multishot receive is still armed.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub data: u64,
    pub result: i32,
    pub buffer: Option<u16>,
    pub more: bool,
}

/// One generator thread's io_uring: created disabled, enabled by the thread that runs it
/// (`DEFER_TASKRUN` rings belong to one thread). Completions are produced only while that thread
/// waits, so the server's sends queue work here without waking the thread for each message.
pub struct Ring {
    // Declared before `buffers`: the ring must be dropped (unregistering the pool) first.
    ring: IoUring,
    buffers: BufRing,
}

impl Ring {
    pub fn new(entries: u32, buffer_count: u16, buffer_bytes: usize) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_cqsize(entries * 4)
            .build(entries)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("io_uring with deferred task work (Linux 6.1 or later): {error}"),
                )
            })?;
        let buffers = BufRing::new(&ring, buffer_count, buffer_bytes, BUFFER_GROUP)?;
        Ok(Ring { ring, buffers })
    }

    /// Makes the calling thread the ring's only submitter; call once, on the thread that runs it.
    pub fn enable(&self) -> io::Result<()> {
        self.ring.submitter().register_enable_rings()
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entries built here point at no memory of ours that could go away (a
            // poll, a receive into the registered buffer pool, which lives as long as the ring,
            // or a send of `'static` bytes).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// One completion when `fd` is writable or has failed (`result` is the poll mask or -errno).
    pub fn watch_writable(&mut self, fd: RawFd, data: u64) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(data);
        self.push(&entry)
    }

    /// A completion per arrival of data on `fd` (0 at end of stream, -errno on error) until a
    /// completion without `more`.
    pub fn receive(&mut self, fd: RawFd, data: u64) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(data);
        self.push(&entry)
    }

    /// One send of all of `bytes` on `fd` (`result` is the count sent, or -errno). The bytes are
    /// `'static` so they outlive the operation whatever happens to the caller.
    pub fn send(&mut self, fd: RawFd, bytes: &'static [u8], data: u64) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "send over 4 GiB"))?;
        let entry = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(data);
        self.push(&entry)
    }

    /// Submits what is queued and waits until `want` completions are ready or `timeout` passes.
    pub fn wait(&mut self, want: usize, timeout: Duration) -> io::Result<()> {
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(want.max(1), &args) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Moves the ready completions into `out` (cleared first).
    pub fn take_completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.extend(self.ring.completion().map(|cqe| Completion {
            data: cqe.user_data(),
            result: cqe.result(),
            buffer: cqueue::buffer_select(cqe.flags()),
            more: cqueue::more(cqe.flags()),
        }));
    }

    /// The `len` bytes a receive put in buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.buffers.data(bid, len)
    }

    /// Hands buffer `bid` back to the kernel (visible after [`Ring::publish_buffers`]).
    pub fn recycle(&mut self, bid: u16) {
        self.buffers.push(bid);
    }

    pub fn publish_buffers(&self) {
        self.buffers.publish();
    }
}

/// The kernel id of the calling thread (for `/proc/self/task/TID/stat`).
pub fn thread_id() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Clock ticks per second, the unit of utime/stime in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Lets `bind(ip, 0)` defer the choice of the local port to `connect`, so each source address
/// gets its own full ephemeral port range per destination.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int whose size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
