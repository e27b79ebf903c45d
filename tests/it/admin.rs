//! The admin endpoint and the operator commands, black-box: `admin::start` with a fake backend
//! on 127.0.0.1:0 and on a unix socket, and the real binary's `status` and `promote` against
//! it (output and exit codes for 200, 409, 401, 404, 405), plus the `[admin]` config checks as
//! `check-config` runs them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ringcast::admin::{self, AdminBackend, AdminError, AdminServer};
use ringcast::config::AdminConfig;
use serde_json::{Value, json};

use crate::support::{WAIT, parse_response, raw};

/// A standby 12 bytes behind: promotion is refused unless forced; counts promotions.
#[derive(Default)]
struct FakeBackend {
    promotions: AtomicU32,
}

impl AdminBackend for FakeBackend {
    fn replication(&self) -> Value {
        json!({"role": "standby", "primary": "10.0.0.1:6191", "lag_bytes": 12})
    }

    fn promote(&self, force: bool) -> Result<Value, AdminError> {
        if !force {
            return Err(AdminError::new(
                409,
                "standby is 12 bytes behind the primary; use --force",
            ));
        }
        self.promotions.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"role": "primary", "forced": true}))
    }
}

fn start(bind: &str, token: &str) -> (AdminServer, Arc<FakeBackend>) {
    let backend = Arc::new(FakeBackend::default());
    let config = AdminConfig {
        bind: bind.to_string(),
        token: token.to_string(),
    };
    let server = admin::start(&config, backend.clone()).unwrap();
    (server, backend)
}

fn tcp(bind_token: &str) -> (AdminServer, Arc<FakeBackend>, String) {
    let (server, backend) = start("127.0.0.1:0", bind_token);
    let addr = server.local_addr().unwrap().to_string();
    (server, backend, addr)
}

/// The binary with `args`, its token only from `args`.
fn ringcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .env_remove("RINGCAST_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-admin-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// `status` prints the backend's JSON (pretty) and exits 0.
#[test]
fn status_prints_the_replication_json() {
    let (_server, _, addr) = tcp("");
    let output = ringcast(&["status", "--admin", &addr]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["role"], "standby");
    assert_eq!(printed["lag_bytes"], 12);
    assert!(
        stdout(&output).contains("\n  \"role\""),
        "pretty: {}",
        stdout(&output)
    );
}

// A refused promotion exits 1 with the server's message; `--force` promotes.
#[test]
fn promote_refused_then_forced() {
    let (_server, backend, addr) = tcp("");
    let refused = ringcast(&["promote", "--admin", &addr]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("409") && message.contains("12 bytes behind the primary; use --force"),
        "{message}"
    );
    assert_eq!(backend.promotions.load(Ordering::SeqCst), 0);

    let forced = ringcast(&["promote", "--admin", &addr, "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    let printed: Value = serde_json::from_str(&stdout(&forced)).unwrap();
    assert_eq!(printed, json!({"role": "primary", "forced": true}));
    assert_eq!(backend.promotions.load(Ordering::SeqCst), 1);
}

// With a token, requests without it or with a wrong one get 401 (exit 1); the right one works.
#[test]
fn a_configured_token_is_required() {
    let (_server, backend, addr) = tcp("s3cret-token");
    for args in [
        vec!["status", "--admin", &addr],
        vec!["status", "--admin", &addr, "--token", "wrong"],
        vec![
            "promote",
            "--admin",
            &addr,
            "--force",
            "--token",
            "s3cret-tokeN",
        ],
    ] {
        let output = ringcast(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains("401"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert_eq!(backend.promotions.load(Ordering::SeqCst), 0);
    let output = ringcast(&["status", "--admin", &addr, "--token", "s3cret-token"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("standby"));
    // The token may come from the environment instead of the command line.
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["status", "--admin", &addr])
        .env("RINGCAST_ADMIN_TOKEN", "s3cret-token")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = ringcast(&[
        "promote",
        "--admin",
        &addr,
        "--token",
        "s3cret-token",
        "--force",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(backend.promotions.load(Ordering::SeqCst), 1);
    // Health checks need no token.
    let addr: SocketAddr = addr.parse().unwrap();
    let response = raw(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(parse_response(&response), (200, "ok\n".to_string()));
}

// Unknown paths are 404 JSON, wrong methods 405 with `Allow`; every answer closes.
#[test]
fn unknown_paths_and_wrong_methods() {
    let (_server, _, addr) = tcp("t");
    let addr: SocketAddr = addr.parse().unwrap();
    let auth = "Authorization: Bearer t\r\n";
    let response = raw(addr, format!("GET /nope HTTP/1.1\r\n{auth}\r\n").as_bytes());
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(
        text.contains("Content-Type: application/json\r\n"),
        "{text}"
    );
    let (_, body) = parse_response(&response);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "no such endpoint: /nope"
    );

    let response = raw(
        addr,
        format!("GET /replication/promote HTTP/1.1\r\n{auth}\r\n").as_bytes(),
    );
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 405 ") && text.contains("Allow: POST\r\n"),
        "{text}"
    );
    let request = format!("POST /replication HTTP/1.1\r\n{auth}Content-Length: 2\r\n\r\n{{}}");
    let response = raw(addr, request.as_bytes());
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 405 ") && text.contains("Allow: GET\r\n"),
        "{text}"
    );
    assert!(text.contains("Connection: close\r\n"), "{text}");
    // Garbage gets a 400, and the endpoint keeps serving.
    let (status, _) = parse_response(&raw(addr, b"\x00\x01 nonsense\r\n\r\n"));
    assert_eq!(status, 400);
    let response = raw(
        addr,
        format!("GET /replication HTTP/1.1\r\n{auth}\r\n").as_bytes(),
    );
    assert_eq!(parse_response(&response).0, 200);
}

// A client that never finishes its request is cut off, and the next one is served.
#[test]
fn a_silent_client_does_not_hold_the_endpoint() {
    let (_server, _, addr) = tcp("");
    let silent = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let output = ringcast(&["status", "--admin", &addr]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(started.elapsed() < WAIT);
    drop(silent);
}

// Over a unix socket: a stale socket file is replaced, both commands work, stop removes it.
#[test]
fn status_and_promote_over_a_unix_socket() {
    let dir = temp_dir("unix");
    let path = dir.join("admin.sock");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists(), "a stale socket file is left behind");
    let target = format!("unix:{}", path.display());
    let (server, backend) = start(&target, "");
    let output = ringcast(&["status", "--admin", &target]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&output)).unwrap()["role"],
        "standby"
    );
    let refused = ringcast(&["promote", "--admin", &target]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("use --force"),
        "{}",
        stderr(&refused)
    );
    let forced = ringcast(&["promote", "--admin", &target, "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert_eq!(backend.promotions.load(Ordering::SeqCst), 1);
    // A second endpoint on the same live path is refused, not stolen.
    let config = AdminConfig {
        bind: target.clone(),
        token: String::new(),
    };
    let error = admin::start(&config, backend.clone()).err().unwrap();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    assert_eq!(parse_response(&response).0, 200);
    server.stop();
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

// `stop` ends the thread promptly and the port stops answering.
#[test]
fn stop_is_prompt() {
    let (server, _, addr) = tcp("");
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(TcpStream::connect(&addr).is_err());
}

// No endpoint: exit 1 naming the address; a bad address is refused before connecting.
#[test]
fn connection_failures_exit_1_with_a_clear_message() {
    let (server, _, addr) = tcp("");
    server.stop();
    let output = ringcast(&["status", "--admin", &addr]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("cannot connect") && message.contains(&addr),
        "{message}"
    );
    let dir = temp_dir("missing");
    let missing = format!("unix:{}", dir.join("none.sock").display());
    let output = ringcast(&["promote", "--admin", &missing]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );
    let output = ringcast(&["status", "--admin", "no-port"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("bad admin address"),
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// A non-loopback bind without a token is refused at start, naming the key; an unknown `[admin]`
// key warns and the config loads.
#[test]
fn admin_config_is_checked() {
    let dir = temp_dir("config");
    let base = "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    let path = dir.join("open.toml");
    std::fs::write(&path, format!("{base}[admin]\nbind = \"0.0.0.0:6190\"\n")).unwrap();
    for command in ["check-config", "serve"] {
        let args = match command {
            "serve" => vec!["serve", "--config", path.to_str().unwrap()],
            _ => vec!["check-config", path.to_str().unwrap()],
        };
        let output = ringcast(&args);
        assert_eq!(output.status.code(), Some(2), "{command}");
        let message = stderr(&output);
        assert!(
            message.contains("admin.token") && message.contains("not a loopback"),
            "{command}: {message}"
        );
    }
    let path = dir.join("unknown.toml");
    std::fs::write(
        &path,
        format!("{base}[admin]\nbind = \"0.0.0.0:6190\"\ntoken = \"t\"\nport = 1\n"),
    )
    .unwrap();
    let output = ringcast(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("admin.port"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).contains("[admin]"), "{}", stdout(&output));
    let _ = std::fs::remove_dir_all(&dir);
}
