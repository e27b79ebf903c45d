//! Test support: starts the real `ringcast` binary on 127.0.0.1:0 with a config written for the
//! test, WebSocket clients (tungstenite over a blocking TcpStream with timeouts), raw TCP, and
//! signed REST calls. Every wait is bounded; a test that waits too long fails, it never hangs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const APP_ID: &str = "123456";
pub const APP_KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret";

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

static NEXT_CONFIG: AtomicUsize = AtomicUsize::new(0);

/// Options for a test server; `extra_server` and `extra_apps` are TOML appended to the
/// `[server]` table and after the first `[[apps]]` table respectively.
pub struct Options {
    pub cores: usize,
    pub extra_server: String,
    pub extra_app: String,
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cores: 2,
            extra_server: String::new(),
            extra_app: String::new(),
            extra_toml: String::new(),
        }
    }
}

/// A running broker process; killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// The TLS listener (`ringcast tls on ADDR`), when the config has a `[tls]` table.
    pub tls_addr: Option<SocketAddr>,
    child: Child,
    config_path: PathBuf,
    stderr_path: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::with(Options::default())
    }

    pub fn with(options: Options) -> Server {
        let config = format!(
            "version = 1\n\n[server]\nbind = \"127.0.0.1:0\"\ncores = {}\npin_threads = false\n{}\n\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{}\n{}\n",
            options.cores, options.extra_server, options.extra_app, options.extra_toml
        );
        Server::with_config_text(&config)
    }

    /// Starts the binary on a complete config text. It binds 127.0.0.1:0, or a fixed port from
    /// `free_port` when a test restarts the server where its clients were.
    pub fn with_config_text(config: &str) -> Server {
        Server::launch(config, &[], false).0
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process is still running (it must survive every bad input).
    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws(&self) -> Client {
        Client::connect(
            self.addr,
            &format!("/app/{APP_KEY}?protocol=7&client=js&version=8.4.0&flash=false"),
        )
    }

    /// A connected client that has read `pusher:connection_established`.
    pub fn client(&self) -> Client {
        let mut client = self.ws();
        let established = client.recv_event();
        assert_eq!(
            established["event"], "pusher:connection_established",
            "{established}"
        );
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    /// A signed REST call; returns (status, body).
    pub fn rest(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        self.rest_as((APP_KEY, APP_SECRET), method, path, params, body)
    }

    /// A REST call signed with the given app credentials (another app, or wrong ones).
    pub fn rest_as(
        &self,
        (key, secret): (&str, &str),
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let query = signed_query(
            method,
            path,
            params,
            body.as_bytes(),
            key,
            secret,
            unix_now(),
        );
        http(self.addr, method, &format!("{path}?{query}"), body)
    }

    /// POST /apps/{id}/events with a JSON body; asserts 200.
    pub fn trigger(&self, body: &Value) {
        let (status, text) = self.rest(
            "POST",
            &format!("/apps/{APP_ID}/events"),
            &[],
            &body.to_string(),
        );
        assert_eq!(status, 200, "{text}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A loopback port that was free a moment ago (bound on 127.0.0.1:0, then released), for a
/// server that must come back on the same port after a restart.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port below the kernel's ephemeral range (32768 and up), so that no connection's
/// source port or `127.0.0.1:0` listener of another test takes it between this check and the
/// node's bind.
pub fn fixed_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let offset = (std::process::id() % 400) as u16 * 30;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn signed_query(
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    key: &str,
    secret: &str,
    timestamp: u64,
) -> String {
    ringcast::http::signature::sign_query(method, path, params, body, key, secret, timestamp)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns (status, body).
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw(addr, request.as_bytes());
    parse_response(&response)
}

/// The app's `/events` path with the signed query for POSTing `body` now.
pub fn signed_events_path(body: &str) -> String {
    let path = format!("/apps/{APP_ID}/events");
    let query = signed_query(
        "POST",
        &path,
        &[],
        body.as_bytes(),
        APP_KEY,
        APP_SECRET,
        unix_now(),
    );
    format!("{path}?{query}")
}

/// A signed POST of `body` to the app's `/events` on a fresh connection: the raw response,
/// headers included ("" when the server is gone or resets the connection).
pub fn post_events_raw(addr: SocketAddr, body: &Value) -> String {
    let body = body.to_string();
    let path = signed_events_path(&body);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).to_string()
}

/// Sends raw bytes and reads until the server closes (bounded by WAIT).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// Splits a response into (status, body).
pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in response {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket client over a blocking socket with a read timeout.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub socket_id: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tungstenite::client(url, stream).expect("WebSocket handshake");
        Client {
            ws,
            socket_id: String::new(),
        }
    }

    pub fn send(&mut self, value: &Value) {
        self.ws.send(Message::text(value.to_string())).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).unwrap();
    }

    /// The next text message as raw text (skips control frames).
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return text.to_string(),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(other) => panic!("expected a text message, got {other:?}"),
                Err(error) => panic!("expected a text message, got error {error}"),
            }
        }
    }

    pub fn recv_event(&mut self) -> Value {
        let text = self.recv_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Subscribes to a public channel and waits for `subscription_succeeded`.
    pub fn subscribe(&mut self, channel: &str) {
        self.send(
            &serde_json::json!({"event":"pusher:subscribe","data":{"auth":"","channel":channel}}),
        );
        let reply = self.recv_event();
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
        assert_eq!(reply["channel"], channel);
    }

    /// Reads until the server closes; returns the close code (panics on timeout).
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    return frame.map_or(1005, |f: CloseFrame| u16::from(f.code));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return 1006;
                }
                Err(error) => panic!("expected a close, got error {error}"),
            }
        }
        panic!("no close within {WAIT:?}");
    }

    /// Asserts nothing arrives for `quiet` (used only to check absence, never for timing).
    pub fn expect_silence(&mut self, quiet: Duration) {
        self.ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
        match self.ws.read() {
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// Operations helpers: extra environment variables, the metrics port, signals, the exit status,
// the process's memory.

/// Turns the metrics port on at an ephemeral loopback port.
pub const METRICS_ON: &str = "[metrics]\nbind = \"127.0.0.1:0\"\n";

/// The config text `Server::with` writes for `options`.
pub fn config_text(options: &Options) -> String {
    format!(
        "version = 1\n\n[server]\nbind = \"127.0.0.1:0\"\ncores = {}\npin_threads = false\n{}\n\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{}\n{}\n",
        options.cores, options.extra_server, options.extra_app, options.extra_toml
    )
}

impl Server {
    /// Like `Server::with`, with the metrics port on; returns the metrics address too.
    pub fn with_metrics(options: Options) -> (Server, SocketAddr) {
        let config = format!("{}{METRICS_ON}", config_text(&options));
        let (server, metrics) = Server::launch(&config, &[], true);
        (server, metrics.expect("metrics address"))
    }

    /// Starts the binary on a complete config text with extra environment variables (the
    /// systemd ones are removed unless given). Reads `ringcast listening on ADDR` and, when
    /// `metrics`, the `ringcast metrics on ADDR` line that follows it.
    pub fn launch(
        config: &str,
        env: &[(&str, &str)],
        metrics: bool,
    ) -> (Server, Option<SocketAddr>) {
        Server::launch_prepared(config, env, metrics, None, |_| {})
    }

    /// Like `launch` (no extra environment), with the process started inside the network
    /// namespace `netns` (`ip netns exec`, which execs the binary: the child's pid is the
    /// broker's). The config's addresses must be ones the namespace has.
    pub fn launch_in_netns(
        config: &str,
        metrics: bool,
        netns: &str,
    ) -> (Server, Option<SocketAddr>) {
        Server::launch_prepared(config, &[], metrics, Some(netns), |_| {})
    }

    /// Like `launch`, with the process's descriptor limit (RLIMIT_NOFILE) set to `descriptors`
    /// before it starts. Soft and hard are both set: the server raises its soft limit to the hard
    /// one at start.
    pub fn launch_with_descriptor_limit(
        config: &str,
        metrics: bool,
        descriptors: u64,
    ) -> (Server, Option<SocketAddr>) {
        Server::launch_prepared(config, &[], metrics, None, |command| {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: descriptors,
                rlim_max: descriptors,
            };
            // SAFETY: the hook runs in the child between fork and exec and calls only
            // setrlimit, which is async-signal-safe, on a struct copied into the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        })
    }

    /// `launch`, in the network namespace `netns` when given, with `prepare` adjusting the
    /// command before it is spawned.
    fn launch_prepared(
        config: &str,
        env: &[(&str, &str)],
        metrics: bool,
        netns: Option<&str>,
        prepare: impl FnOnce(&mut Command),
    ) -> (Server, Option<SocketAddr>) {
        let n = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringcast-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join(format!("config-{n}.toml"));
        let stderr_path = dir.join(format!("stderr-{n}.log"));
        std::fs::write(&config_path, config).unwrap();
        let mut command = ringcast_command(netns);
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RINGCAST_TEST_STALL_CORE")
            .env_remove("RINGCAST_TEST_WAL_FAULT");
        for (name, value) in env {
            command.env(name, value);
        }
        prepare(&mut command);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start ringcast");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let tls = config.contains("\n[tls]");
        let lines = 1 + usize::from(metrics) + usize::from(tls);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            for _ in 0..lines {
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let _ = sender.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let fail = |child: &mut Child, line: &str| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("ringcast did not start; stdout {line:?}; stderr:\n{stderr}");
        };
        let line = receiver.recv_timeout(WAIT).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("ringcast listening on ") else {
            fail(&mut child, &line)
        };
        let addr: SocketAddr = addr.parse().unwrap();
        let metrics_addr = if metrics {
            let line = receiver.recv_timeout(WAIT).unwrap_or_default();
            let Some(metrics_addr) = line.trim().strip_prefix("ringcast metrics on ") else {
                fail(&mut child, &line)
            };
            Some(metrics_addr.parse().unwrap())
        } else {
            None
        };
        let tls_addr = if tls {
            let line = receiver.recv_timeout(WAIT).unwrap_or_default();
            let Some(tls_addr) = line.trim().strip_prefix("ringcast tls on ") else {
                fail(&mut child, &line)
            };
            Some(tls_addr.parse().unwrap())
        } else {
            None
        };
        let server = Server {
            addr,
            tls_addr,
            child,
            config_path,
            stderr_path,
        };
        (server, metrics_addr)
    }

    /// The config file the server was started on (SIGHUP re-reads it).
    pub fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own child process; no memory is involved.
        let result = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits (bounded) for the process to exit, noticing it within a millisecond; None when it
    /// is still running at the end.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Short: a test may look at what the process left behind the moment it is gone.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A system tool by name: the first on `PATH`, else in /usr/sbin or /sbin (where Debian puts
/// `ip`, `nft` and `haproxy`, which a normal user's `PATH` may lack); the bare name otherwise.
pub fn system_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| name.into())
}

/// A command running the `ringcast` binary, inside the network namespace `netns` when given
/// (`ip netns exec NS ringcast ...`: `ip` execs the binary, so the child's pid is ringcast's).
pub fn ringcast_command(netns: Option<&str>) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new(system_tool("ip"));
            command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_ringcast")]);
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_ringcast")),
    }
}

/// The resident set size of a process, in KiB, from `/proc/PID/status`.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// GET on the metrics port (or any address); returns (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// Scrapes `/metrics` (asserts 200) and returns the Prometheus text.
pub fn scrape(metrics: SocketAddr) -> String {
    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series in Prometheus text, e.g. `ringcast_connected` or
/// `ringcast_closes_total{code="4100"}`; None when the series is absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            let value = rest.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
}
