//! The `ringcast` binary: command-line parsing, config loading and exit codes only. Everything
//! else is in the library.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config: path } => {
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
            match service::serve(loaded.config, &loaded.unknown_keys, path) {
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
        Command::Bench(args) => ringcast::bench::run(*args),
    }
}
