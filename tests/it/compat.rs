//! The real-client suites run against the real binary:
//! - the official `pusher-js` client and the `pusher` REST library (node, `tests/compat/`): this
//!   test installs the pinned npm packages when they are missing, starts a two-core broker (client
//!   events enabled) and runs `node --test` on the suite with the broker's address and app
//!   credentials in the environment;
//! - the official Python server SDK (PyPI `pusher`, `tests/compat/python/`): WebSocket clients
//!   opened here subscribe, join a presence channel and sign in, `sdk_check.py` makes REST calls
//!   with the SDK, and then this test checks what those clients received.
//!
//! It also runs the test suite of the history-resume plugin for pusher-js (`clients/js/`, its own
//! `npm test`: real pusher-js against a fake server in node, no broker), and the plugin with real
//! pusher-js and the REST library against the real binary with a WAL, across a SIGKILL and a
//! restart on the same port (`tests/compat/resume_plugin.mjs`, driven from here).
//!
//! Node and npm, and python3 with the pinned SDK, are required: without them the tests fail, they
//! never skip.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringcast::http::signature::hmac_sha256_hex;
use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{APP_ID, APP_KEY, APP_SECRET, Client, Options, Server, WAIT, free_port};

pub(crate) const NEEDS_NODE: &str =
    "the real-client suite needs node and npm (Debian: apt-get install nodejs npm)";
const NEEDS_PYTHON: &str = "the Python SDK check needs python3 and `pip install -r tests/compat/python/requirements.txt` \
     (Debian: apt-get install python3 python3-pip)";

/// The app config of the broker the suites run against: the features they exercise enabled.
const COMPAT_APP: &str = "enable_client_events = true";
/// The broker's cores; the suites spread clients over them.
const COMPAT_CORES: usize = 2;
/// The Python SDK script; it takes a few seconds.
const PYTHON_RUN_LIMIT: Duration = Duration::from_secs(60);

/// The whole node run; it takes a few seconds when all is well.
const NODE_RUN_LIMIT: Duration = Duration::from_secs(120);
/// `npm ci` of two small packages from the registry.
const NPM_CI_LIMIT: Duration = Duration::from_secs(300);
/// One node test; a stuck test fails on its own before the whole run is killed.
const NODE_TEST_TIMEOUT_MS: u32 = 60_000;

/// The plugin's whole `npm test`; it takes about 5 s (its tests run concurrently and each one
/// bounds its own waits).
const PLUGIN_RUN_LIMIT: Duration = Duration::from_secs(120);

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("js")
}

pub(crate) fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("compat")
}

/// `TOOL --version`, or a failure naming what to install (`needs`).
pub(crate) fn tool_version(tool: &str, needs: &str) -> String {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => {
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if stdout.is_empty() {
                // Some tools print their version on stderr.
                String::from_utf8_lossy(&output.stderr).trim().to_string()
            } else {
                stdout
            }
        }
        Ok(output) => panic!(
            "{needs}: `{tool} --version` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("{needs}: `{tool}` is not runnable from PATH ({error})"),
    }
}

/// Runs `command` in its own process group with stdout and stderr going to one log file; kills
/// the whole group (node --test runs each file in a child process) after `limit`.
/// Returns the exit status (None when it was killed) and everything it printed.
fn run_bounded(
    mut command: Command,
    limit: Duration,
    log_name: &str,
    needs: &str,
) -> (Option<ExitStatus>, String) {
    let log_path = std::env::temp_dir().join(format!(
        "ringcast-compat-{}-{log_name}.log",
        std::process::id()
    ));
    let log = File::create(&log_path).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{needs}: cannot start {command:?}: {error}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let group = child.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group this test created for the child; no memory
            // is involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A leftover grandchild of a killed group may still hold the file; that is fine for reading.
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    (status, output)
}

/// `npm ci` when `node_modules` is missing or older than `package-lock.json`.
pub(crate) fn install_packages(dir: &Path) {
    // The tests here run concurrently and two of them use `tests/compat`: one install at a time.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let fresh = matches!((mtime(&installed), mtime(&lock)), (Some(i), Some(l)) if i >= l);
    if fresh {
        return;
    }
    eprintln!(
        "compat: running `npm ci --no-audit --no-fund` in {}",
        dir.display()
    );
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
    // One log per directory: the suites install concurrently.
    let dir_name = dir.file_name().unwrap_or_default().to_string_lossy();
    let (status, output) =
        run_bounded(npm, NPM_CI_LIMIT, &format!("npm-ci-{dir_name}"), NEEDS_NODE);
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "`npm ci` in {} exited with {status}:\n{output}",
            dir.display()
        ),
        None => panic!(
            "`npm ci` in {} did not finish within {NPM_CI_LIMIT:?}:\n{output}",
            dir.display()
        ),
    }
}

/// The broker both suites run against: two cores, the features they exercise enabled.
fn compat_server() -> Server {
    Server::with(Options {
        cores: COMPAT_CORES,
        extra_app: COMPAT_APP.to_string(),
        ..Default::default()
    })
}

/// The broker's address, app credentials and cores, as the suites read them.
fn set_broker_env(command: &mut Command, server: &Server) {
    command
        .env("RINGCAST_HOST", server.addr.ip().to_string())
        .env("RINGCAST_PORT", server.addr.port().to_string())
        .env("RINGCAST_APP_ID", APP_ID)
        .env("RINGCAST_APP_KEY", APP_KEY)
        .env("RINGCAST_APP_SECRET", APP_SECRET)
        .env("RINGCAST_CORES", COMPAT_CORES.to_string());
}

/// The last 40 lines of the broker's stderr.
pub(crate) fn stderr_tail(server: &Server) -> String {
    let stderr = server.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The suite's files, `*.test.mjs`, sorted (explicit paths work with node 18 to 22+ alike).
fn test_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.test.mjs files in {}",
        dir.display()
    );
    files
}

#[test]
fn pusher_js_and_pusher_rest_library_against_the_binary() {
    let mut server = compat_server();
    run_node_suite(&mut server, &[]);
}

/// The same suite over TLS: pusher-js with `forceTLS: true`, the REST library with
/// `useTLS: true`, against a broker with only a TLS listener (`server.bind = ""`) and a
/// certificate from a test CA that node trusts through `NODE_EXTRA_CA_CERTS`.
#[test]
fn pusher_js_and_pusher_rest_library_over_tls() {
    let ca = crate::tls::TestCa::new("compat-node");
    let mut server = tls_compat_server(&ca);
    let ca_path = ca.ca_path().display().to_string();
    let port = server.tls_addr.expect("TLS address").port().to_string();
    run_node_suite(
        &mut server,
        &[
            ("RINGCAST_TLS", "1"),
            ("RINGCAST_PORT", &port),
            ("NODE_EXTRA_CA_CERTS", &ca_path),
        ],
    );
}

/// The compat broker with only a TLS listener, its certificate issued by `ca`.
fn tls_compat_server(ca: &crate::tls::TestCa) -> Server {
    let (cert, key) = ca.issue("server");
    Server::with_config_text(&format!(
        "version = 1\n\n[server]\nbind = \"\"\ncores = {COMPAT_CORES}\npin_threads = false\n\n\
         [tls]\nbind = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{COMPAT_APP}\n",
        cert.display(),
        key.display()
    ))
}

/// Runs the node suite against `server`; `env` overrides the broker's environment (TLS).
fn run_node_suite(server: &mut Server, env: &[(&str, &str)]) {
    let node_version = tool_version("node", NEEDS_NODE);
    let npm_version = tool_version("npm", NEEDS_NODE);
    eprintln!("compat: node {node_version}, npm {npm_version}");

    let dir = compat_dir();
    install_packages(&dir);

    // node 18 (Debian bookworm's) has no --test-concurrency; each flag is used where it exists.
    let help = Command::new("node")
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let help = String::from_utf8_lossy(&help);
    let mut node = Command::new("node");
    node.arg("--test");
    if help.contains("--test-concurrency") {
        node.arg("--test-concurrency=1");
    }
    if help.contains("--test-timeout") {
        node.arg(format!("--test-timeout={NODE_TEST_TIMEOUT_MS}"));
    }
    if help.contains("--test-reporter") {
        node.arg("--test-reporter=spec");
    }
    let files = test_files(&dir);
    node.args(&files).current_dir(&dir);

    set_broker_env(&mut node, server);
    node.env("NO_COLOR", "1");
    for (name, value) in env {
        node.env(name, value);
    }

    let started = Instant::now();
    let (status, output) = run_bounded(node, NODE_RUN_LIMIT, "node-test", NEEDS_NODE);
    let elapsed = started.elapsed();
    println!(
        "---- node --test {} ({elapsed:.1?}) ----\n{output}\n---- end of node output ----",
        files.join(" ")
    );

    let alive = server.is_alive();
    assert!(
        alive,
        "ringcast died during the real-client suite; stderr tail:\n{}",
        stderr_tail(server)
    );
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "the real-client suite failed ({status}); node's output is above; ringcast stderr tail:\n{}",
            stderr_tail(server)
        ),
        None => panic!(
            "the real-client suite did not finish within {NODE_RUN_LIMIT:?} and was killed; node's output is above; \
             ringcast stderr tail:\n{}",
            stderr_tail(server)
        ),
    }
}

// ---- The resume plugin for pusher-js ----

#[test]
fn pusher_js_resume_plugin_suite() {
    let node_version = tool_version("node", NEEDS_NODE);
    let npm_version = tool_version("npm", NEEDS_NODE);
    eprintln!("compat: node {node_version}, npm {npm_version}");

    let dir = plugin_dir();
    install_packages(&dir);

    let mut npm = Command::new("npm");
    npm.args(["test"]).current_dir(&dir).env("NO_COLOR", "1");
    let started = Instant::now();
    let (status, output) = run_bounded(npm, PLUGIN_RUN_LIMIT, "plugin-npm-test", NEEDS_NODE);
    let elapsed = started.elapsed();
    println!(
        "---- npm test in clients/js ({elapsed:.1?}) ----\n{output}\n---- end of npm test output ----"
    );
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "the pusher-js resume plugin's tests (`npm test` in {}) failed ({status}); their output is above",
            dir.display()
        ),
        None => panic!(
            "the pusher-js resume plugin's tests (`npm test` in {}) did not finish within {PLUGIN_RUN_LIMIT:?} \
             and were killed; their output is above",
            dir.display()
        ),
    }
}

// ---- The resume plugin with real pusher-js against the binary, across a crash ----

/// The app of the resume scenario: sequence numbers on, so the plugin has something to resume.
const RESUME_APP: &str = "event_sequence = true";
/// Retention of the resume scenario: more than the public and presence channels miss while the
/// client is away (at most 6 events), fewer than the lossy channel misses (10).
const RESUME_HISTORY: &str = "[history]\nevents_per_channel_max = 8\n";
/// The scenario's node script, in `tests/compat/` (it uses that directory's pinned pusher-js and
/// REST library, and imports the plugin from `clients/js/`).
const RESUME_SCRIPT: &str = "resume_plugin.mjs";
/// Each step of the scenario (node's start, connects and first events; its reconnect, resume
/// and checks; the broker's restart); a few seconds in all when all is well.
const RESUME_STEP_LIMIT: Duration = Duration::from_secs(30);
/// The prefix of the lines the script prints for this test.
const RESUME_LINE: &str = "resume-plugin: ";

fn resume_config(port: u16, data: &Path) -> String {
    format!(
        "version = 1\n\n[server]\nbind = \"127.0.0.1:{port}\"\ncores = {COMPAT_CORES}\npin_threads = false\n\n\
         [storage]\ndir = \"{}\"\n\n{RESUME_HISTORY}\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{RESUME_APP}\n",
        data.display()
    )
}

/// A node scenario script driven by a test (`resume_plugin.mjs` here, `failover_haproxy.mjs` in
/// `haproxy.rs`), in its own process group; killed (even while stopped) on drop. Its lines
/// that start with `{name}: ` arrive on `lines`; stdout and stderr also go to `log`.
pub(crate) struct Script {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
}

impl Script {
    /// Starts `command`; `name` is the prefix of the script's lines for the test (without the
    /// `: `) and names its log file.
    pub(crate) fn start(mut command: Command, name: &str) -> Script {
        use std::io::{BufRead, BufReader};
        let log =
            std::env::temp_dir().join(format!("ringcast-compat-{}-{name}.log", std::process::id()));
        let prefix = format!("{name}: ");
        let file = File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file.try_clone().unwrap())
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{NEEDS_NODE}: cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = file;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = sender.send(rest.to_string());
                }
            }
        });
        Script { child, lines, log }
    }

    /// The next `{name}: KIND PAYLOAD` line as (KIND, PAYLOAD); None when the script printed
    /// none within `limit` (or ended).
    pub(crate) fn next(&self, limit: Duration) -> Option<(String, String)> {
        let line = self.lines.recv_timeout(limit).ok()?;
        let (kind, payload) = line.split_once(' ').unwrap_or((&line, ""));
        Some((kind.to_string(), payload.to_string()))
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the process group this test created for the script.
        let result = unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
        assert_eq!(result, 0, "kill(-{}, {signal})", self.child.id());
    }

    /// Waits (bounded) until the kernel reports the script stopped (state `T` in /proc).
    fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            if state == Some("T") {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, waiting at most `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the script printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; SIGKILL also ends a stopped process.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Real pusher-js 8.6.0 with `@ringcast/pusher-resume`, against the real binary with a WAL,
/// across a SIGKILL and a restart on the same port and data directory (`resume_plugin.mjs` says
/// what it checks). This test owns the broker: when the script is `ready` it stops the script
/// (SIGSTOP: its clients cannot reconnect early, so the events published next are certainly
/// missed), kills the broker, restarts it, publishes what the script asked for, and continues the
/// script, whose pusher-js clients then reconnect by themselves. The script must print `ok` with
/// the plugin's final positions, which must match the REST history of each channel.
#[test]
fn pusher_js_resume_plugin_against_the_binary() {
    let node_version = tool_version("node", NEEDS_NODE);
    eprintln!("compat: node {node_version}");
    let dir = compat_dir();
    install_packages(&dir);

    let data = std::env::temp_dir().join(format!("ringcast-compat-{}-resume", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let config = resume_config(port, &data);
    let mut server = Server::with_config_text(&config);
    assert_eq!(server.addr.port(), port);

    let mut node = Command::new("node");
    node.arg(RESUME_SCRIPT)
        .current_dir(&dir)
        .env("NO_COLOR", "1");
    set_broker_env(&mut node, &server);
    let started = Instant::now();
    let mut script = Script::start(node, "resume-plugin");
    let fail = |script: &Script, server: &Server, what: String| -> ! {
        panic!(
            "{what}\n---- {RESUME_SCRIPT} output ----\n{}\n---- ringcast stderr tail ----\n{}",
            script.output(),
            stderr_tail(server)
        )
    };

    let ready = match script.next(RESUME_STEP_LIMIT) {
        Some((kind, payload)) if kind == "ready" => payload,
        other => fail(
            &script,
            &server,
            format!("expected `{RESUME_LINE}ready`, got {other:?}"),
        ),
    };
    let ready: Value = serde_json::from_str(&ready).unwrap();

    // The clients are away; the broker crashes and comes back where it was.
    script.signal(libc::SIGSTOP);
    if !script.wait_stopped(WAIT) {
        fail(&script, &server, "the script did not stop".into());
    }
    server.signal(libc::SIGKILL);
    assert!(server.wait_exit(WAIT).is_some(), "SIGKILL ends the broker");
    let restart = Instant::now();
    server = Server::with_config_text(&config);
    assert_eq!(server.addr.port(), port, "the same port after the restart");
    eprintln!("compat: the broker restarted in {:.1?}", restart.elapsed());
    for batch in ready["publish"].as_array().unwrap() {
        for data in batch["data"].as_array().unwrap() {
            server.trigger(&json!({
                "name": batch["event"],
                "channels": batch["channels"],
                "data": data,
            }));
        }
    }
    script.signal(libc::SIGCONT);

    let outcome = match script.next(RESUME_STEP_LIMIT) {
        Some((kind, payload)) if kind == "ok" => payload,
        other => fail(
            &script,
            &server,
            format!("expected `{RESUME_LINE}ok` after the restart, got {other:?}"),
        ),
    };
    let status = script.wait_exit(WAIT);
    println!(
        "---- node {RESUME_SCRIPT} ({:.1?}) ----\n{}\n---- end of node output ----",
        started.elapsed(),
        script.output()
    );
    assert!(
        status.is_some_and(|status| status.success()),
        "the script said ok, then exited with {status:?}"
    );

    // The plugin ends where the broker's history says each channel is.
    let outcome: Value = serde_json::from_str(&outcome).unwrap();
    let positions = &outcome["positions"];
    for channel in ready["channels"].as_object().unwrap().values() {
        let channel = channel.as_str().unwrap();
        let path = format!("/apps/{APP_ID}/channels/{channel}/history");
        let (status, body) = server.rest("GET", &path, &[("limit", "1")], "");
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&positions[channel]["epoch"], &positions[channel]["seq"]),
            (&page["epoch"], &page["last_seq"]),
            "the plugin's position on {channel} is the broker's: {positions} vs {page}"
        );
    }
    assert!(server.is_alive(), "{}", stderr_tail(&server));
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

// ---- The Python SDK ----

/// The version pinned in `tests/compat/python/requirements.txt` (`pusher==X`).
fn pinned_python_sdk() -> String {
    let path = compat_dir().join("python").join("requirements.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    text.lines()
        .find_map(|line| line.trim().strip_prefix("pusher=="))
        .map(|version| version.trim().to_string())
        .unwrap_or_else(|| panic!("no `pusher==VERSION` line in {}", path.display()))
}

/// The installed SDK's version, or a failure saying how to install it.
fn python_sdk_version() -> String {
    let output = Command::new("python3")
        .args(["-c", "from pusher.version import VERSION; print(VERSION)"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{NEEDS_PYTHON}: cannot run python3 ({error})"));
    assert!(
        output.status.success(),
        "{NEEDS_PYTHON}: `import pusher` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A client that has subscribed to each public channel in `channels`.
fn subscriber(server: &Server, channels: &[&str]) -> Client {
    let mut client = server.client();
    for channel in channels {
        client.subscribe(channel);
    }
    client
}

/// A client that has joined the presence `channel` as `user_id` (reads its own
/// `subscription_succeeded`; member events for others stay queued).
fn presence_member(server: &Server, channel: &str, user_id: &str) -> Client {
    let mut client = server.client();
    let channel_data = json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
    let signature = hmac_sha256_hex(
        APP_SECRET,
        &format!("{}:{channel}:{channel_data}", client.socket_id),
    );
    client.send(&json!({"event": "pusher:subscribe", "data": {
        "channel": channel,
        "auth": format!("{APP_KEY}:{signature}"),
        "channel_data": channel_data,
    }}));
    loop {
        let reply = client.recv_event();
        if reply["event"] == "pusher_internal:member_added" {
            continue;
        }
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "joining {channel} as {user_id}: {reply}"
        );
        return client;
    }
}

/// A client signed in (`pusher:signin`) as `user_id`.
fn signed_in(server: &Server, user_id: &str) -> Client {
    let mut client = server.client();
    let user_data = json!({"id": user_id}).to_string();
    let signature = hmac_sha256_hex(
        APP_SECRET,
        &format!("{}::user::{user_data}", client.socket_id),
    );
    client.send(&json!({"event": "pusher:signin", "data": {
        "auth": format!("{APP_KEY}:{signature}"),
        "user_data": user_data,
    }}));
    let reply = client.recv_event();
    assert_eq!(
        reply["event"], "pusher:signin_success",
        "signin as {user_id}: {reply}"
    );
    client
}

/// What a client read: an event (`channel`, `event`, `data` parsed as JSON when it is JSON text,
/// else the text), the close code, or nothing within the wait.
enum Received {
    Event(String, String, Value),
    Closed(u16),
    Nothing(String),
}

/// The next frame, without panicking (the checks below report every problem at once).
fn receive(client: &mut Client, wait: Duration) -> Received {
    client.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let received = loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = match serde_json::from_str(text.as_str()) {
                    Ok(frame) => frame,
                    Err(error) => break Received::Nothing(format!("not JSON ({error}): {text}")),
                };
                let field = |name: &str| frame[name].as_str().unwrap_or_default().to_string();
                let data = match &frame["data"] {
                    Value::String(text) => {
                        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                    }
                    other => other.clone(),
                };
                break Received::Event(field("channel"), field("event"), data);
            }
            Ok(Message::Close(frame)) => {
                break Received::Closed(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                break Received::Closed(1006);
            }
            Err(error) => break Received::Nothing(error.to_string()),
        }
    };
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    received
}

type Events = BTreeMap<(String, String), Vec<Value>>;

/// Groups `(channel, event, data)` by channel and event, keeping the order within each group.
fn grouped(events: impl IntoIterator<Item = (String, String, Value)>) -> Events {
    let mut groups = Events::new();
    for (channel, event, data) in events {
        groups.entry((channel, event)).or_default().push(data);
    }
    groups
}

/// Reads `expected.len()` events (bounded), then 300 ms of silence, and compares them with
/// `expected` per channel and event name (in order within each). Problems go to `problems`.
fn check_events(
    who: &str,
    client: &mut Client,
    expected: Vec<(&str, &str, Value)>,
    problems: &mut Vec<String>,
) {
    let mut received = Vec::new();
    let mut trouble = None;
    while received.len() < expected.len() {
        match receive(client, WAIT) {
            Received::Event(channel, event, data) => received.push((channel, event, data)),
            Received::Closed(code) => {
                trouble = Some(format!("closed with {code}"));
                break;
            }
            Received::Nothing(why) => {
                trouble = Some(format!("nothing more within {WAIT:?} ({why})"));
                break;
            }
        }
    }
    if trouble.is_none() {
        match receive(client, Duration::from_millis(300)) {
            Received::Event(channel, event, data) => {
                trouble = Some(format!("an extra event: {event} on {channel}: {data}"));
                received.push((channel, event, data));
            }
            Received::Closed(code) => trouble = Some(format!("closed with {code}")),
            Received::Nothing(_) => {}
        }
    }
    let expected = grouped(
        expected
            .into_iter()
            .map(|(channel, event, data)| (channel.to_string(), event.to_string(), data)),
    );
    let got = grouped(received);
    if got != expected || trouble.is_some() {
        problems.push(format!(
            "{who}: {}\n  expected (per channel and event) {expected:?}\n  received {got:?}",
            trouble.unwrap_or_else(|| "different events".into())
        ));
    }
}

#[test]
fn pusher_python_sdk_against_the_binary() {
    let python_version = tool_version("python3", NEEDS_PYTHON);
    let sdk_version = python_sdk_version();
    let pinned = pinned_python_sdk();
    eprintln!("compat: {python_version}, pusher (PyPI) {sdk_version}");
    if sdk_version != pinned {
        eprintln!(
            "compat: warning: pusher {sdk_version} is installed but requirements.txt pins {pinned}; \
             run `python3 -m pip install -r tests/compat/python/requirements.txt`"
        );
    }

    let mut server = compat_server();
    run_python_check(&mut server, &[]);
}

/// The Python check with the SDK's REST calls over https (`ssl=True`, the test CA trusted):
/// the broker has both listeners, the WebSocket clients opened here use the plain one.
#[test]
fn pusher_python_sdk_over_tls() {
    tool_version("python3", NEEDS_PYTHON);
    python_sdk_version();
    let ca = crate::tls::TestCa::new("compat-python");
    let (cert, key) = ca.issue("server");
    let mut server = Server::with(Options {
        cores: COMPAT_CORES,
        extra_app: COMPAT_APP.to_string(),
        extra_toml: format!(
            "[tls]\nbind = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let port = server.tls_addr.expect("TLS address").port().to_string();
    let ca_path = ca.ca_path().display().to_string();
    run_python_check(
        &mut server,
        &[
            ("RINGCAST_TLS", "1"),
            ("RINGCAST_PORT", &port),
            ("RINGCAST_CA", &ca_path),
        ],
    );
}

/// Opens the WebSocket fixtures, runs `sdk_check.py` (its broker environment overridden by
/// `env`) and checks what the fixtures received.
fn run_python_check(server: &mut Server, env: &[(&str, &str)]) {
    let public = "py-public-channel";
    let batch = "py-batch-channel";
    let presence = "presence-py-room";
    let user = "py-user-terminated";
    let other_user = "py-user-kept";

    // Fixtures: 2 subscribers of `public` (one also of `batch`), presence users "1" and "2" (on
    // two connections), and two signed-in users.
    let mut sub_both = subscriber(server, &[public, batch]);
    let mut sub_public = subscriber(server, &[public]);
    let _members = [
        presence_member(server, presence, "1"),
        presence_member(server, presence, "2"),
        presence_member(server, presence, "2"),
    ];
    let mut terminated = signed_in(server, user);
    let mut kept = signed_in(server, other_user);

    let script = compat_dir().join("python").join("sdk_check.py");
    let mut python = Command::new("python3");
    python.arg(&script).current_dir(compat_dir());
    set_broker_env(&mut python, server);
    python
        .env("RINGCAST_PY_PUBLIC", public)
        .env("RINGCAST_PY_BATCH", batch)
        .env("RINGCAST_PY_PRESENCE", presence)
        .env("RINGCAST_PY_USER", user)
        .env("RINGCAST_PY_OTHER_USER", other_user)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for (name, value) in env {
        python.env(name, value);
    }
    let started = Instant::now();
    let (status, output) = run_bounded(python, PYTHON_RUN_LIMIT, "python-sdk", NEEDS_PYTHON);
    println!(
        "---- python3 {} ({:.1?}) ----\n{output}\n---- end of python output ----",
        script.display(),
        started.elapsed()
    );

    // What the WebSocket clients received, whatever the script's outcome.
    let mut problems = Vec::new();
    let message = json!({"message": "hello from python", "n": 1});
    let text = Value::String("plain text, ünïcode ✓".into());
    check_events(
        "the subscriber of both channels",
        &mut sub_both,
        vec![
            (public, "py-event", message.clone()),
            (public, "py-multi", json!({"to": "both"})),
            (batch, "py-multi", json!({"to": "both"})),
            (public, "py-text", text.clone()),
            (public, "py-batch", json!({"i": 0})),
            (batch, "py-batch", json!({"i": 1})),
            (public, "py-batch", json!({"i": 2})),
        ],
        &mut problems,
    );
    check_events(
        "the subscriber of the public channel",
        &mut sub_public,
        vec![
            (public, "py-event", message),
            (public, "py-multi", json!({"to": "both"})),
            (public, "py-text", text),
            (public, "py-batch", json!({"i": 0})),
            (public, "py-batch", json!({"i": 2})),
        ],
        &mut problems,
    );
    let user_channel = format!("#server-to-user-{other_user}");
    check_events(
        "the signed-in user that is kept",
        &mut kept,
        vec![(&user_channel, "py-notice", json!({"hello": other_user}))],
        &mut problems,
    );
    // Still connected: it answers a ping.
    kept.send(&json!({"event": "pusher:ping", "data": {}}));
    match receive(&mut kept, WAIT) {
        Received::Event(_, event, _) if event == "pusher:pong" => {}
        Received::Event(channel, event, data) => problems.push(format!(
            "the kept user answered a ping with {event} on {channel:?}: {data}"
        )),
        Received::Closed(code) => problems.push(format!("the kept user was closed with {code}")),
        Received::Nothing(why) => {
            problems.push(format!("the kept user did not answer a ping: {why}"))
        }
    }
    // The terminated user: pusher:error 4009, then close 4009.
    let mut seen = Vec::new();
    let close = loop {
        match receive(&mut terminated, WAIT) {
            Received::Event(channel, event, data) => {
                seen.push(format!("{event} {channel:?} {data}"))
            }
            Received::Closed(code) => break Some(code),
            Received::Nothing(_) => break None,
        }
    };
    let error_4009 = seen
        .iter()
        .any(|frame| frame.starts_with("pusher:error") && frame.contains("4009"));
    if close != Some(4009) || !error_4009 {
        problems.push(format!(
            "the terminated user: expected pusher:error 4009 and close 4009; got frames {seen:?}, close {close:?}"
        ));
    }

    let alive = server.is_alive();
    assert!(
        alive,
        "ringcast died during the Python SDK check; stderr tail:\n{}",
        stderr_tail(server)
    );
    let script_problem = match status {
        Some(status) if status.success() => None,
        Some(status) => Some(format!(
            "sdk_check.py failed ({status}); its output is above"
        )),
        None => Some(format!(
            "sdk_check.py did not finish within {PYTHON_RUN_LIMIT:?} and was killed; its output is above"
        )),
    };
    problems.extend(script_problem);
    assert!(
        problems.is_empty(),
        "the Python SDK check failed:\n- {}\nringcast stderr tail:\n{}",
        problems.join("\n- "),
        stderr_tail(server)
    );
}
