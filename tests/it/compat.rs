//! The real-client suite: the official `pusher-js` client and the `pusher` REST library (node,
//! `tests/compat/`) run against the real binary. This test installs the pinned npm packages when
//! they are missing, starts a two-core broker and runs `node --test` on the suite with the
//! broker's address and app credentials in the environment. Node and npm are required: without
//! them the test fails, it never skips.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{APP_ID, APP_KEY, APP_SECRET, Options, Server};

const NEEDS_NODE: &str =
    "the real-client suite needs node and npm (Debian: apt-get install nodejs npm)";

/// The whole node run; it takes a few seconds when all is well.
const NODE_RUN_LIMIT: Duration = Duration::from_secs(120);
/// `npm ci` of two small packages from the registry.
const NPM_CI_LIMIT: Duration = Duration::from_secs(300);
/// One node test; a stuck test fails on its own before the whole run is killed.
const NODE_TEST_TIMEOUT_MS: u32 = 60_000;

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("compat")
}

/// `TOOL --version`, or a failure naming what to install.
fn tool_version(tool: &str) -> String {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        }
        Ok(output) => panic!(
            "{NEEDS_NODE}: `{tool} --version` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("{NEEDS_NODE}: `{tool}` is not runnable from PATH ({error})"),
    }
}

/// Runs `command` in its own process group with stdout and stderr going to one log file; kills
/// the whole group (node --test runs each file in a child process) after `limit`.
/// Returns the exit status (None when it was killed) and everything it printed.
fn run_bounded(
    mut command: Command,
    limit: Duration,
    log_name: &str,
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
        .unwrap_or_else(|error| panic!("{NEEDS_NODE}: cannot start {command:?}: {error}"));
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
fn install_packages(dir: &Path) {
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
    let (status, output) = run_bounded(npm, NPM_CI_LIMIT, "npm-ci");
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
    let node_version = tool_version("node");
    let npm_version = tool_version("npm");
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

    let mut server = Server::with(Options {
        cores: 2,
        ..Default::default()
    });
    node.env("RINGCAST_HOST", server.addr.ip().to_string())
        .env("RINGCAST_PORT", server.addr.port().to_string())
        .env("RINGCAST_APP_ID", APP_ID)
        .env("RINGCAST_APP_KEY", APP_KEY)
        .env("RINGCAST_APP_SECRET", APP_SECRET)
        .env("NO_COLOR", "1");

    let started = Instant::now();
    let (status, output) = run_bounded(node, NODE_RUN_LIMIT, "node-test");
    let elapsed = started.elapsed();
    println!(
        "---- node --test {} ({elapsed:.1?}) ----\n{output}\n---- end of node output ----",
        files.join(" ")
    );

    let alive = server.is_alive();
    let stderr_tail = |server: &Server| {
        let stderr = server.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        alive,
        "ringcast died during the real-client suite; stderr tail:\n{}",
        stderr_tail(&server)
    );
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "the real-client suite failed ({status}); node's output is above; ringcast stderr tail:\n{}",
            stderr_tail(&server)
        ),
        None => panic!(
            "the real-client suite did not finish within {NODE_RUN_LIMIT:?} and was killed; node's output is above; \
             ringcast stderr tail:\n{}",
            stderr_tail(&server)
        ),
    }
}
