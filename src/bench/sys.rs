//! The only file of `bench` with `unsafe`: thin, safe wrappers over the few Linux calls the load
//! generator needs that std and socket2 do not offer — epoll (with a nanosecond timeout), the
//! descriptor limit, thread ids, the clock-tick rate and `IP_BIND_ADDRESS_NO_PORT`. It must not
//! hold any benchmark logic or state beyond the descriptors it wraps; every block has a
//! `// SAFETY:` line.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub use libc::{EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};

/// An epoll instance; closed on drop.
pub struct Epoll {
    fd: OwnedFd,
}

/// One ready descriptor: the token given to [`Epoll::add`] and the ready flags.
pub type Event = libc::epoll_event;

/// An empty event slot, to size the buffer handed to [`Epoll::wait`].
pub fn empty_event() -> Event {
    libc::epoll_event { events: 0, u64: 0 }
}

/// The (token, flags) of a ready event; copies out of the packed struct.
pub fn event_parts(event: &Event) -> (u64, u32) {
    let Event { events, u64 } = *event;
    (u64, events)
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a fresh descriptor
        // that nothing else owns, so OwnedFd may take it.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Registers `fd` with `token` for `interest` (EPOLLIN | EPOLLOUT | EPOLLET ...). The
    /// registration ends when `fd` is closed.
    pub fn add(&self, fd: RawFd, token: u64, interest: i32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event that outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut event)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for ready descriptors; fills `events` from the start and returns
    /// how many are ready (0 on timeout or signal).
    pub fn wait(&self, events: &mut [Event], timeout: Duration) -> io::Result<usize> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a writable buffer of at least `max` epoll_event slots and
        // `timeout` a valid timespec, both alive for the call; a null sigmask means "unchanged".
        let rc = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                max,
                &raw const timeout,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(error);
        }
        Ok(rc as usize)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the (soft, hard) limits in force.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
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
