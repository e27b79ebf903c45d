//! Process-level plumbing around the core threads: logging set-up, the start-up line, and
//! signal handling. Owns nothing that is per connection or per channel.

use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, LogFormat};
use crate::runtime;

/// Installs the global tracing subscriber: `RUST_LOG` wins over the config's level.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RINGCAST_GIT_REVISION"),
    ")"
);

/// Runs the server until SIGTERM or SIGINT. Prints `ringcast listening on ADDR` on stdout once
/// every core accepts (tests and scripts read it to learn the port).
pub fn serve(config: Config, unknown_keys: &[String]) -> anyhow::Result<()> {
    for key in unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    let config = Arc::new(config);
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let server = runtime::start(Arc::clone(&config))?;
    tracing::info!(
        version = VERSION,
        cores = server.cores,
        bind = %server.local_addr,
        apps = config.apps.len(),
        unknown_config_keys = unknown_keys.len(),
        "ringcast started"
    );
    println!("ringcast listening on {}", server.local_addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    server.stop();
    Ok(())
}
