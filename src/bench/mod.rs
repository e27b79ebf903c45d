//! `ringcast bench`: a load generator for any Pusher-Channels-compatible server (ringcast,
//! soketi, sockudo, hosted Pusher). This file owns the command line (the clap types `main.rs`
//! embeds), the checks and set-up shared by every scenario (descriptor limit, address
//! resolution, bounds on every count and duration) and the output (JSON on stdout, or Markdown,
//! plus an optional SVG). It must not drive sockets or measure anything itself: scenarios are in
//! `scenario.rs`, the event loop in `engine.rs`, wire formats in `wire.rs`, the reconnecting
//! fleet's decisions in `reconnect.rs`, `/proc` and histograms in `measure.rs`, rendering in `report.rs`, and every `unsafe` in `sys.rs`.
//!
//! The generator is built to add as little as it can to the kernel's own cost per message: a
//! few threads (`--threads`, default 1), each one io_uring instance with a multishot receive per
//! socket into a shared buffer pool and waits that take completions in batches while messages
//! flow (one system call per batch, not per socket), no allocation per delivered message, and the
//! sequence and send time found at a fixed layout in each event instead of parsing JSON. (On
//! loopback the kernel's receive path costs about as much as a server's send path, so its total
//! per delivery stays close to the server's: see docs/BENCHMARKS.md.) It reports its own CPU use
//! and flags a thread that was ≥ 90 % busy as the bottleneck.

mod engine;
mod floor;
mod measure;
mod reconnect;
mod report;
mod scenario;
mod sys;
mod tls;
mod wire;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// The longest any scenario may be asked to run, in seconds.
pub const DURATION_CAP_SECS: f64 = 600.0;
/// Most generator threads.
pub const THREADS_MAX: usize = 64;
/// Descriptors kept free for the generator itself (io_uring, /proc reads, stdio).
const SPARE_DESCRIPTORS: u64 = 64;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// S subscribers over C channels and a signed-REST publisher at a fixed rate, or ramping
    /// until loss or latency breaks a bound (`--rate max`): loss, duplicates, order, latency.
    Fanout(FanoutArgs),
    /// REST publish throughput over K keep-alive connections (closed loop, or `--rate`).
    Publish(PublishArgs),
    /// N idle connections: connect rate, and with --server-pid the server's memory per
    /// connection.
    Idle(IdleArgs),
    /// N clients connecting at once: time until all are subscribed, errors by close code. With
    /// --hold-secs, a reconnecting fleet: after every drop, shed or refusal each client comes
    /// back as pusher-js would (by close code, Retry-After, or --fallback addresses), and the
    /// time from each drop to its re-subscribe is measured.
    Storm(StormArgs),
    /// No server: this machine's kernel cost of one small loopback TCP send, the floor under
    /// any server's CPU per delivery (send(2), then io_uring in batches).
    Floor(FloorArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// WebSocket port.
    #[arg(long, default_value_t = 6001)]
    pub port: u16,
    /// REST API port (default: the WebSocket port).
    #[arg(long)]
    pub rest_port: Option<u16>,
    #[arg(long, default_value = "123456")]
    pub app_id: String,
    #[arg(long, default_value = "app-key")]
    pub key: String,
    #[arg(long, default_value = "app-secret")]
    pub secret: String,
    /// The server's process id: adds its CPU seconds (and CPU µs per message) over the measured
    /// window, and its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Generator threads (each one io_uring loop).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Length of the measured phase in seconds (scenario default when absent; at most 600).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Longest wait for all connections to be ready, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Local addresses to connect from, round-robin (e.g. 127.0.0.1,127.0.0.2): each gets its
    /// own ephemeral port range, for more than ~28k connections to one server port. Default:
    /// for a loopback IPv4 server, one more 127.0.0.x per quarter of the range in use.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Print a Markdown table instead of JSON.
    #[arg(long)]
    pub markdown: bool,
    /// Also write an SVG chart to this file (latency percentiles for fanout, a time series
    /// otherwise).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Connect over TLS: `wss://` and `https://` on the same ports, the server name being
    /// `--host`.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: trust the CA certificates in this PEM file (default: the system bundle).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// WebSocket subscribers (subscriber j joins channel j % channels).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels.
    #[arg(long, default_value_t = 10)]
    pub channels: u32,
    /// Publishes per second, or `max` to ramp until loss, a refused publish or the p99 bound.
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// Size of each event's data string in bytes (at least 42, the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Stop after this many publishes (default: rate × duration).
    #[arg(long)]
    pub publishes: Option<u64>,
    /// REST keep-alive connections of the publisher (one request in flight each).
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// New connections per second while connecting (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connections between connect and subscribed at once.
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// Seconds to wait for outstanding deliveries after the last publish was answered.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// The latency bound of `--rate max`: a step whose p99 exceeds it ends the ramp.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// First rate of `--rate max`.
    #[arg(long, default_value_t = 500.0)]
    pub start_rate: f64,
    /// Rate multiplier between steps of `--rate max`.
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Seconds per step of `--rate max`.
    #[arg(long, default_value_t = 3.0)]
    pub step: f64,
    /// Most steps of `--rate max`.
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: Common,
    /// Keep-alive connections, one request in flight each.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Channels published to (round-robin; nobody subscribes).
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    /// Size of each event's data string in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Open loop at this many publishes per second (latency from the intended send time);
    /// default: closed loop, as fast as the server answers.
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold for --duration.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Subscribe each connection to one of this many channels (0: connect only).
    #[arg(long, default_value_t = 0)]
    pub channels: u32,
    /// New connections per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connections between connect and ready at once.
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that all connect at once.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Each client subscribes to one of this many channels.
    #[arg(long, default_value_t = 10)]
    pub channels: u32,
    /// Channel names are this prefix and the channel's index (default: `rcb-PID-`).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Once every client is subscribed (or --connect-timeout passed), stay connected this many
    /// seconds, the clients reconnecting whenever they are dropped, shed or refused (also while
    /// first connecting); 0: connect once, report, exit.
    #[arg(long, default_value_t = 0.0)]
    pub hold_secs: f64,
    /// With --hold-secs: further WebSocket addresses (host:port), tried in turn after
    /// --host:--port when a connect fails or an upgrade is answered 503/429 (a failover pair).
    #[arg(long, value_delimiter = ',')]
    pub fallback: Vec<String>,
    /// With --hold-secs: the first back-off after a 4100-4199 close (or a failed connect to
    /// every address); each further one in a row doubles, with jitter.
    #[arg(long, default_value_t = 1000)]
    pub backoff_base_ms: u64,
    /// With --hold-secs: the longest back-off.
    #[arg(long, default_value_t = 10_000)]
    pub backoff_max_ms: u64,
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Loopback socket pairs; send i goes to pair i % connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Bytes per send (the fan-out scenario's 100 B event is a WebSocket frame of about 150).
    #[arg(long, default_value_t = 150)]
    pub payload: usize,
    /// Sends per pass.
    #[arg(long, default_value_t = 200_000)]
    pub sends: u64,
    /// Sends per io_uring submission (a channel's subscribers in the fan-out scenario).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// io_uring submissions per second, the sender sleeping between them as a server does
    /// between events (500 is the fan-out scenario's publish rate); 0: back to back.
    #[arg(long, default_value_t = 0.0)]
    pub batch_rate: f64,
    /// CPU the sending thread is pinned to (the one a server under test would run on).
    #[arg(long, default_value_t = 0)]
    pub sender_cpu: usize,
    /// CPU the reader thread is pinned to; it polls without sleeping.
    #[arg(long, default_value_t = 1)]
    pub reader_cpu: usize,
    /// Print a Markdown table instead of JSON.
    #[arg(long)]
    pub markdown: bool,
    /// No summary line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs one scenario: progress on stderr, the result on stdout. Exit code 0 when the run
/// completed (whatever it measured), 1 when it could not run, 2 for invalid arguments.
pub fn run(args: BenchArgs) -> ExitCode {
    let (markdown, plot, result) = match &args.scenario {
        Scenario::Fanout(a) => (
            a.common.markdown,
            &a.common.plot,
            prepare(&a.common).and_then(|t| scenario::fanout(a, t)),
        ),
        Scenario::Publish(a) => (
            a.common.markdown,
            &a.common.plot,
            prepare(&a.common).and_then(|t| scenario::publish(a, t)),
        ),
        Scenario::Idle(a) => (
            a.common.markdown,
            &a.common.plot,
            prepare(&a.common).and_then(|t| scenario::idle(a, t)),
        ),
        Scenario::Storm(a) => (
            a.common.markdown,
            &a.common.plot,
            prepare(&a.common).and_then(|t| scenario::storm(a, t)),
        ),
        Scenario::Floor(a) => (
            a.markdown,
            &None,
            descriptor_limit().and_then(|nofile| floor::floor(a, nofile)),
        ),
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(BenchError::Usage(message)) => {
            eprintln!("ringcast bench: {message}");
            return ExitCode::from(2);
        }
        Err(BenchError::Run(message)) => {
            eprintln!("ringcast bench: {message}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = plot
        && let Err(error) = std::fs::write(path, &outcome.svg)
    {
        eprintln!("ringcast bench: cannot write {}: {error}", path.display());
        return ExitCode::from(1);
    }
    let text = if markdown {
        report::markdown(&outcome.json)
    } else {
        serde_json::to_string_pretty(&outcome.json).expect("JSON values serialize") + "\n"
    };
    // A closed stdout (`| head`) is not worth a panic; the run itself completed.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// A finished run: the JSON result and its chart.
pub struct Outcome {
    pub json: Value,
    pub svg: String,
}

#[derive(Debug)]
pub enum BenchError {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The run could not happen (exit 1).
    Run(String),
}

fn usage<T>(message: impl Into<String>) -> Result<T, BenchError> {
    Err(BenchError::Usage(message.into()))
}

/// What every scenario needs before it starts.
pub struct Setup {
    pub target: engine::Target,
    /// Soft descriptor limit after raising it to the hard limit.
    pub nofile: u64,
}

fn prepare(common: &Common) -> Result<Setup, BenchError> {
    if common.threads == 0 || common.threads > THREADS_MAX {
        return usage(format!("--threads must be 1..={THREADS_MAX}"));
    }
    if let Some(duration) = common.duration
        && !(duration > 0.0 && duration <= DURATION_CAP_SECS)
    {
        return usage(format!(
            "--duration must be > 0 and at most {DURATION_CAP_SECS} seconds"
        ));
    }
    if !(common.connect_timeout > 0.0 && common.connect_timeout <= DURATION_CAP_SECS) {
        return usage("--connect-timeout must be > 0 and at most 600 seconds");
    }
    let nofile = descriptor_limit()?;
    let rest_port = common.rest_port.unwrap_or(common.port);
    let resolve = |port: u16| -> Result<SocketAddr, BenchError> {
        (common.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| BenchError::Run(format!("cannot resolve {}: {e}", common.host)))?
            .next()
            .ok_or_else(|| BenchError::Run(format!("{} has no address", common.host)))
    };
    let ws_addr = resolve(common.port)?;
    let rest_addr = resolve(rest_port)?;
    let host_header = |port: u16| {
        if common.host.contains(':') {
            format!("[{}]:{port}", common.host)
        } else {
            format!("{}:{port}", common.host)
        }
    };
    Ok(Setup {
        target: engine::Target {
            ws_addr,
            rest_addr,
            ws_host: host_header(common.port),
            rest_host: host_header(rest_port),
            app_id: common.app_id.clone(),
            key: common.key.clone(),
            secret: common.secret.clone(),
            tls: if common.tls {
                let target = tls::TlsTarget::new(&common.host, common.ca.as_deref())
                    .map_err(BenchError::Run)?;
                Some(target)
            } else {
                None
            },
        },
        nofile,
    })
}

/// The soft descriptor limit, raised to the hard limit first.
fn descriptor_limit() -> Result<u64, BenchError> {
    crate::runtime::raise_descriptor_limit()
        .map(|(soft, _)| soft)
        .map_err(|e| BenchError::Run(format!("cannot read RLIMIT_NOFILE: {e}")))
}

/// Fails when `sockets` would not fit under the descriptor limit; otherwise sizes the
/// descriptor table for them now, so it does not grow (with a stall each time) while clients
/// connect.
fn reserve_descriptors(sockets: usize, nofile: u64) -> Result<(), BenchError> {
    let needed = sockets as u64 + SPARE_DESCRIPTORS;
    if needed > nofile {
        return usage(format!(
            "{sockets} sockets need more descriptors than this process may open ({nofile}, \
             already raised to the hard limit); run several generator processes, or raise the \
             hard limit (ulimit -Hn)"
        ));
    }
    crate::runtime::presize_descriptor_table(needed);
    Ok(())
}
