//! The `ringcast` binary: command-line parsing, config loading and exit codes only. Everything
//! else is in the library (the admin commands' client is `admin::client`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ringcast::config;
use ringcast::service;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringcast", version = service::VERSION, about = "A Pusher-Channels-compatible real-time broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (on the embedded default config when no file is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Start even when the write-ahead log is damaged before its end: skip the damaged
        /// records (logged with their LSNs) instead of refusing to start.
        #[arg(long)]
        salvage: bool,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        file: PathBuf,
        /// Treat unknown keys as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Load-test any Pusher-compatible server (fanout, publish, idle, storm); JSON on stdout.
    Bench(Box<ringcast::bench::BenchArgs>),
    /// Look into a data directory's write-ahead log (`[storage] dir`); read-only.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Print a node's replication status (GET /replication on its admin endpoint) as JSON.
    Status {
        /// The node's `[admin] bind`: `host:port` or `unix:/path`.
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// The node's `[admin] token`, when it has one (default: $RINGCAST_ADMIN_TOKEN, which
        /// keeps it out of the process list).
        #[arg(long)]
        token: Option<String>,
    },
    /// Run the witness of a primary/standby pair (automatic failover; no client traffic).
    Witness {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Planned switchover (upgrades, rollbacks): the primary freezes publishes, waits until its
    /// standby has everything, hands it the epoch and moves its clients over
    /// (POST /replication/switchover on the primary's admin endpoint).
    Switchover {
        /// The primary's `[admin] bind`: `host:port` or `unix:/path`.
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// The node's `[admin] token`, when it has one (default: $RINGCAST_ADMIN_TOKEN, which
        /// keeps it out of the process list).
        #[arg(long)]
        token: Option<String>,
    },
    /// Promote a standby to primary (POST /replication/promote on its admin endpoint).
    Promote {
        /// The node's `[admin] bind`: `host:port` or `unix:/path`.
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// Promote even when the node refuses (for example, a standby that is behind).
        #[arg(long)]
        force: bool,
        /// The node's `[admin] token`, when it has one (default: $RINGCAST_ADMIN_TOKEN, which
        /// keeps it out of the process list).
        #[arg(long)]
        token: Option<String>,
    },
}

/// `--token`, else `RINGCAST_ADMIN_TOKEN` when set and not empty.
fn admin_token(token: Option<String>) -> Option<String> {
    token.or_else(|| {
        std::env::var("RINGCAST_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    })
}

/// `ringcast status|promote`: the JSON on stdout and 0, or the error on stderr and 1.
fn admin_command(result: Result<String, ringcast::admin::client::AdminClientError>) -> ExitCode {
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

#[derive(Subcommand)]
enum WalCommand {
    /// Per stream: segments, LSN range, records by kind, bytes, a torn tail.
    Inspect {
        /// The `[storage] dir` (the log is in DIR/wal/).
        dir: PathBuf,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Checks every record: exit 0 when all check out (a torn tail is reported and allowed:
    /// recovery truncates it), 1 naming the file and byte offset of the first damage.
    Verify { dir: PathBuf },
    /// Every record as one JSON object per line (kind, lsn, epoch, payload fields).
    Dump {
        dir: PathBuf,
        /// Only this stream (`core-0`, ..., `webhooks`).
        #[arg(long)]
        stream: Option<String>,
    },
}

/// `ringcast wal ...`: 0 when everything checks out, 1 when something is damaged, 2 when the
/// directory cannot be read.
fn wal_command(command: WalCommand) -> ExitCode {
    use ringcast::wal::{FsStorage, inspect};
    let storage = FsStorage;
    match command {
        WalCommand::Inspect { dir, json } => match inspect::inspect(&storage, &dir, None) {
            Ok(reports) => {
                if json {
                    println!("{:#}", inspect::render_json(&dir, &reports));
                } else {
                    print!("{}", inspect::render_text(&dir, &reports));
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        WalCommand::Verify { dir } => match inspect::inspect(&storage, &dir, None) {
            Ok(reports) => {
                let mut damaged = 0;
                for report in &reports {
                    let records = report.scan.as_ref().map_or(0, |scan| scan.records);
                    match &report.verdict {
                        Ok(()) => {
                            println!("{}: ok, {records} record(s)", report.stream);
                            if let Some(torn) = report.scan.as_ref().and_then(|s| s.torn.as_ref()) {
                                println!(
                                    "{}: torn tail in {} at byte {} ({} bytes: {}); recovery truncates it",
                                    report.stream, torn.file, torn.offset, torn.bytes, torn.damage
                                );
                            }
                        }
                        Err(error) => {
                            damaged += 1;
                            println!("{}: DAMAGED: {error}", report.stream);
                            eprintln!("error: stream {}: {error}", report.stream);
                        }
                    }
                }
                if damaged > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        WalCommand::Dump { dir, stream } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let result = inspect::dump(&storage, &dir, stream.as_deref(), &mut out);
            use std::io::Write;
            let flushed = out.flush();
            match result {
                Ok(damaged) if damaged.is_empty() => {
                    if let Err(error) = flushed {
                        eprintln!("error: write the dump: {error}");
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Ok(damaged) => {
                    for (stream, error) in damaged {
                        eprintln!("error: stream {stream}: {error}");
                    }
                    ExitCode::from(1)
                }
                Err(error) if error.source.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `ringcast witness`: 2 when the config is invalid, 1 when the witness stops on an error.
fn witness_command(path: &std::path::Path) -> ExitCode {
    use ringcast::witness;
    let loaded = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))
        .and_then(|text| witness::parse_config(&text));
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("ringcast witness: {error}");
            return ExitCode::from(2);
        }
    };
    service::init_logging("info", config::LogFormat::Text);
    for key in &loaded.unknown_keys {
        tracing::warn!("unknown config key `{key}` ignored");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    match witness::run(&loaded.config, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("ringcast witness: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config: path,
            salvage,
        } => {
            ringcast::runtime::disable_transparent_huge_pages();
            let loaded = match &path {
                Some(path) => config::load_file(path),
                None => config::parse(config::EMBEDDED_DEFAULT),
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(error) => {
                    service::init_logging("info", config::LogFormat::Text);
                    tracing::error!("{error}");
                    eprintln!("ringcast: {error}");
                    return ExitCode::from(2);
                }
            };
            service::init_logging(&loaded.config.log.level, loaded.config.log.format);
            if path.is_none() {
                tracing::warn!(
                    "no --config given: running the embedded default config (loopback only, demo app id 123456, key `app-key`, secret `app-secret`); do not use it in production"
                );
            }
            let recovery = if salvage {
                ringcast::wal::RecoveryMode::Salvage
            } else {
                ringcast::wal::RecoveryMode::Strict
            };
            match service::serve(loaded.config, &loaded.unknown_keys, path, recovery) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("ringcast: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { file, strict } => match config::load_file(&file) {
            Ok(loaded) => {
                for key in &loaded.unknown_keys {
                    eprintln!("warning: unknown config key `{key}`");
                }
                print!("{}", loaded.config.to_toml());
                if strict && !loaded.unknown_keys.is_empty() {
                    eprintln!(
                        "error: {} unknown key(s) with --strict",
                        loaded.unknown_keys.len()
                    );
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Witness { config: path } => witness_command(&path),
        Command::Bench(args) => ringcast::bench::run(*args),
        Command::Wal { command } => wal_command(command),
        Command::Status { admin, token } => {
            let token = admin_token(token);
            admin_command(ringcast::admin::client::status(&admin, token.as_deref()))
        }
        Command::Switchover { admin, token } => {
            let token = admin_token(token);
            admin_command(ringcast::admin::client::switchover(
                &admin,
                token.as_deref(),
            ))
        }
        Command::Promote {
            admin,
            force,
            token,
        } => {
            let token = admin_token(token);
            admin_command(ringcast::admin::client::promote(
                &admin,
                token.as_deref(),
                force,
            ))
        }
    }
}
