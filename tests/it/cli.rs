//! The binary's command line and config handling, run as a user would: unknown keys warn and
//! the server starts (the rollback incident), invalid values stop it naming the key,
//! `check-config` validates, `--version` names the build.

use std::process::Command;

use crate::support::{APP_ID, APP_KEY, APP_SECRET, Server, WAIT, free_port};

fn ringcast(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .output()
        .unwrap()
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const UNKNOWN_KEYS: &str = "version = 1\nfeature_from_the_future = true\n[server]\nbind = \"127.0.0.1:0\"\ncores = 1\nnew_knob = 5\n[[apps]]\nid = \"123456\"\nkey = \"app-key\"\nsecret = \"app-secret\"\nshiny = \"yes\"\n[brand_new_section]\nx = 1\n";

// The rollback drill (a config with keys this build does not know starts, serves and warns)
// is `operations::unknown_config_keys_are_warned_and_counted`, which also checks the metric.

// An invalid value stops the start with a non-zero exit and the key's path.
#[test]
fn invalid_values_stop_the_start_naming_the_key() {
    for (text, key) in [
        (
            "version = 1\n[server]\nbind = \"not an address\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
            "server.bind",
        ),
        (
            "version = 1\n[server]\ncores = \"many\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
            "cores",
        ),
        (
            "version = 1\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"\"\n",
            "apps[0].secret",
        ),
        ("version = 1\n", "apps"),
        ("[server\nbind=", "parse"),
    ] {
        let path = write_config("invalid.toml", text);
        let output = ringcast(&["serve", "--config", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

// `check-config` prints the effective config; `--strict` refuses unknown keys.
#[test]
fn check_config_validates_and_strict_refuses_unknown_keys() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/ringcast.toml");
    let output = ringcast(&["check-config", shipped, "--strict"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("activity_timeout_secs = 120"), "{printed}");

    let path = write_config("unknown.toml", UNKNOWN_KEYS);
    let lenient = ringcast(&["check-config", path.to_str().unwrap()]);
    assert!(lenient.status.success());
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("new_knob"));
    let strict = ringcast(&["check-config", path.to_str().unwrap(), "--strict"]);
    assert!(!strict.status.success());
}

// `--version` names the version and the git revision.
#[test]
fn version_names_the_build() {
    let output = ringcast(&["--version"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains('('),
        "{text}"
    );
}

// Regression: listeners use SO_REUSEPORT (one per core), which would let a second ringcast
// started on the same port join it silently and take part of the connections. The second one
// must refuse to start instead.
#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    let port = free_port();
    let text = format!(
        "version = 1\n[server]\nbind = \"127.0.0.1:{port}\"\ncores = 2\npin_threads = false\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
    );
    let first = Server::with_config_text(&text);
    assert_eq!(first.addr.port(), port);
    let path = write_config("same-port.toml", &text);
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
}

// Regression: the armed multishot accept held its own reference to each core's listener, and
// the kernel drops a ring's requests only after the process is gone, so the port stayed in
// LISTEN for a moment after exit (7 of 10 restarts here) and a restart at once failed with
// "Address already in use". Now each core shuts its listener down before it exits.
#[test]
fn the_port_is_free_the_moment_the_process_has_exited() {
    let port = free_port();
    let text = format!(
        "version = 1\n[server]\nbind = \"127.0.0.1:{port}\"\ncores = 2\npin_threads = false\n\
         drain_grace_ms = 0\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\n\
         secret = \"{APP_SECRET}\"\n"
    );
    for round in 0..8 {
        let mut server = Server::with_config_text(&text);
        assert_eq!(server.addr.port(), port);
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(WAIT).expect("exits after SIGTERM");
        assert!(status.success(), "round {round}: {status}");
        // A plain bind (what the next server's start does first) succeeds at once.
        if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!("round {round}: port {port} still held after exit: {error}");
        }
    }
}

// Regression: a killed process (SIGKILL, a crash) cannot shut its listeners down, so its port
// stays in LISTEN until the kernel's io_uring teardown after the process is gone (about 10 ms
// here); a restart at once, as a supervisor or a test does, failed with "Address already in
// use" in about a third of the tries. Now the start tries a port in use again for a moment.
#[test]
fn a_restart_at_once_after_sigkill_gets_the_same_port() {
    let port = free_port();
    let text = format!(
        "version = 1\n[server]\nbind = \"127.0.0.1:{port}\"\ncores = 2\npin_threads = false\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n"
    );
    let mut server = Server::with_config_text(&text);
    for round in 0..8 {
        assert_eq!(server.addr.port(), port, "round {round}");
        server.signal(libc::SIGKILL);
        server.wait_exit(WAIT).expect("SIGKILL ends the process");
        server = Server::with_config_text(&text);
    }
}
