//! The admin endpoint's listener: one thread (`ringcast-admin`) with a blocking std socket, TCP
//! or unix, serving one connection at a time, one request per connection. It reads a bounded
//! request within a deadline, routes it with `route::handle`, writes the response and closes.
//! It never runs on a core loop and never touches shard state; `stop` ends it within
//! `ADMIN_ACCEPT_POLL_MS` when idle.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::AdminBackend;
use super::route::{AdminResponse, Head, handle, parse_head};
use crate::config::{AdminAddress, AdminConfig};
use crate::limits::{
    ADMIN_ACCEPT_POLL_MS, ADMIN_REQUEST_BODY_BYTES_MAX, ADMIN_REQUEST_HEAD_BYTES_MAX,
    ADMIN_REQUEST_READ_TIMEOUT_MS, ADMIN_RESPONSE_WRITE_TIMEOUT_MS,
};

/// The running endpoint. Dropping it stops it too.
pub struct AdminServer {
    local_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// The bound TCP address (the port chosen for `:0`); `None` on a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stops the thread (after the request it is serving, if any), waits for it, and removes
    /// the unix socket file.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `config.bind` and serves it on the `ringcast-admin` thread.
///
/// # Errors
///
/// `InvalidInput` when `bind` is empty or not an address, or is a TCP address outside loopback
/// without a token (config validation refuses both first); `AddrInUse` when a live process
/// already listens on the unix socket path; any error of binding or spawning the thread.
pub fn start(config: &AdminConfig, backend: Arc<dyn AdminBackend>) -> io::Result<AdminServer> {
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let address = AdminAddress::parse(&config.bind).map_err(invalid)?;
    if !address.is_local() && config.token.is_empty() {
        return Err(invalid(format!(
            "admin.bind `{}` is not a loopback address and admin.token is empty",
            config.bind
        )));
    }
    let (listener, local_addr, unix_path) = match address {
        AdminAddress::Tcp(addr) => {
            let listener = TcpListener::bind(addr)?;
            let local = listener.local_addr()?;
            listener.set_nonblocking(true)?;
            (Listener::Tcp(listener), Some(local), None)
        }
        AdminAddress::Unix(path) => {
            remove_stale_socket(&path)?;
            let listener = UnixListener::bind(&path)?;
            listener.set_nonblocking(true)?;
            (Listener::Unix(listener), None, Some(path))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let token = config.token.clone();
    let thread = std::thread::Builder::new()
        .name("ringcast-admin".to_string())
        .spawn({
            let stop = Arc::clone(&stop);
            move || serve(&listener, &*backend, &token, &stop)
        })?;
    Ok(AdminServer {
        local_addr,
        unix_path,
        stop,
        thread: Some(thread),
    })
}

/// A socket file left by a process that is gone is removed; one a live process answers on is
/// not (`AddrInUse`), and neither is anything that is not a socket (bind then fails).
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

fn serve(listener: &Listener, backend: &dyn AdminBackend, token: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let served = match listener {
            Listener::Tcp(listener) => listener
                .accept()
                .and_then(|(stream, _)| answer(stream, backend, token)),
            Listener::Unix(listener) => listener
                .accept()
                .and_then(|(stream, _)| answer(stream, backend, token)),
        };
        match served {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(ADMIN_ACCEPT_POLL_MS));
            }
            Err(error) => {
                tracing::debug!(%error, "admin request failed");
                // An accept error (the descriptor limit) must not spin.
                std::thread::sleep(Duration::from_millis(ADMIN_ACCEPT_POLL_MS));
            }
        }
    }
}

/// A connected admin client, TCP or unix.
trait Connection: Read + Write {
    fn prepare(&self) -> io::Result<()>;
    fn set_read_timeout_to(&self, timeout: Duration) -> io::Result<()>;
}

impl Connection for TcpStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_write_timeout(Some(Duration::from_millis(ADMIN_RESPONSE_WRITE_TIMEOUT_MS)))
    }
    fn set_read_timeout_to(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl Connection for UnixStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_write_timeout(Some(Duration::from_millis(ADMIN_RESPONSE_WRITE_TIMEOUT_MS)))
    }
    fn set_read_timeout_to(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// Serves the one request of a connection and closes it.
fn answer<C: Connection>(mut stream: C, backend: &dyn AdminBackend, token: &str) -> io::Result<()> {
    stream.prepare()?;
    let deadline = Instant::now() + Duration::from_millis(ADMIN_REQUEST_READ_TIMEOUT_MS);
    let response = match read_request(&mut stream, deadline)? {
        Ok(request) => handle(&request, backend, token),
        Err(response) => response,
    };
    stream.write_all(&response.to_bytes())?;
    stream.flush()
}

/// Reads the head and the (bounded, dropped) body before `deadline`: the request, or the error
/// response for a bad one. A client that sends nothing in time or hangs up gets no response.
fn read_request<C: Connection>(
    stream: &mut C,
    deadline: Instant,
) -> io::Result<Result<super::AdminRequest, AdminResponse>> {
    let mut received = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = read_before(stream, deadline, &mut chunk)?;
        received.extend_from_slice(&chunk[..n]);
        match parse_head(&received) {
            Ok(Head::Partial) if received.len() < ADMIN_REQUEST_HEAD_BYTES_MAX => continue,
            Ok(Head::Partial) => {
                return Ok(Err(AdminResponse::error(431, "request head too large")));
            }
            Ok(Head::Complete {
                request,
                head_bytes,
                body_bytes,
            }) => {
                debug_assert!(body_bytes <= ADMIN_REQUEST_BODY_BYTES_MAX);
                let mut body_left = (head_bytes + body_bytes).saturating_sub(received.len());
                while body_left > 0 {
                    let n = read_before(stream, deadline, &mut chunk)?;
                    body_left = body_left.saturating_sub(n);
                }
                return Ok(Ok(request));
            }
            Err(response) => return Ok(Err(response)),
        }
    }
}

/// One read that must end before `deadline`; end of stream and timeouts are errors.
fn read_before<C: Connection>(
    stream: &mut C,
    deadline: Instant,
    into: &mut [u8],
) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout_to(left)?;
    match stream.read(into)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => Ok(n),
    }
}
