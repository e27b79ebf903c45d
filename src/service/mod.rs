//! The control (main) thread around the core threads: logging set-up, the start-up line,
//! systemd notification (READY, WATCHDOG, STATUS, STOPPING), signals (SIGTERM/SIGINT drain then
//! exit, a second one exits at once; SIGHUP reloads apps and limits), and the metrics/health
//! endpoint. It never touches a client connection: it talks to the cores only through
//! `Control`. Its own IO (the metrics port, the notify socket) is plain blocking IO on this
//! thread, off every core.

mod metrics_http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{self, Config, LogFormat};
use crate::control::Reload;
use crate::runtime;
use crate::webhook::WebhookWorker;

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

use crate::limits::{
    CONTROL_TICK_MS, DRAIN_MESH_SETTLE_MS, DRAIN_SLACK_MS, STATUS_INTERVAL_MS, WEBHOOK_FLUSH_MS,
};

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "systemd notification failed");
    }
}

/// Runs the server until it has drained after SIGTERM/SIGINT (or exits at once on a second
/// one). Prints `ringcast listening on ADDR` on stdout once every core accepts (tests and
/// scripts read it), then `ringcast metrics on ADDR` when the metrics endpoint is on.
pub fn serve(
    config: Config,
    unknown_keys: &[String],
    config_path: Option<PathBuf>,
    recovery: crate::wal::RecoveryMode,
) -> anyhow::Result<()> {
    for key in unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let mut config = Arc::new(config);
    let mut server = runtime::start(Arc::clone(&config), recovery)?;
    let control = Arc::clone(&server.control);
    let metrics = Arc::clone(&server.metrics);
    // The webhook outbox before readiness: with `[storage] dir`, its write-ahead log is
    // recovered here and undelivered batches of the previous run are sent again.
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let outbox = crate::webhook::open_outbox(&config, &server.apps, Instant::now(), unix_ms)
        .map_err(|error| anyhow::anyhow!("failed to recover the webhook outbox: {error}"))?;
    let webhooks = WebhookWorker::start(
        &config,
        Arc::clone(&server.apps),
        Arc::clone(&server.webhooks),
        Arc::clone(&metrics.webhooks),
        outbox,
    )?;
    metrics.config_unknown_keys.store(
        unknown_keys.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let metrics_addr = if config.metrics.bind.is_empty() {
        None
    } else {
        let bind = config.metrics.bind.parse().expect("validated");
        Some(metrics_http::start(
            bind,
            Arc::clone(&control),
            Arc::clone(&metrics),
        )?)
    };
    control.set_ready(true);
    tracing::info!(
        version = VERSION,
        cores = server.cores,
        bind = %server.local_addr,
        metrics = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        apps = config.apps.len(),
        unknown_config_keys = unknown_keys.len(),
        "ringcast started"
    );
    println!("ringcast listening on {}", server.local_addr);
    if let Some(addr) = metrics_addr {
        println!("ringcast metrics on {addr}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let status = |text: &str| format!("{text}; {} connections", control.connections());
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status("ready")),
    ]);
    let watchdog = sd_notify::watchdog_enabled();
    let stall_ms = watchdog.map_or(crate::limits::CORE_LOOP_STALL_MS, |interval| {
        crate::limits::CORE_LOOP_STALL_MS.min(interval.as_millis() as u64 / 2)
    });
    let mut last_watchdog = Instant::now();
    let mut last_status = Instant::now();
    let mut drain_deadline_ms: Option<u64> = None;
    let mut stalled_logged = false;
    let mut mesh_idle_since: Option<Instant> = None;
    loop {
        for signal in signals.pending() {
            match signal {
                SIGHUP => {
                    config = reload(&config, config_path.as_deref(), &mut server, &webhooks);
                }
                _ if drain_deadline_ms.is_some() => {
                    tracing::warn!(signal, "second shutdown signal: exiting now");
                    std::process::exit(1);
                }
                _ => {
                    let grace = config.server.drain_grace_ms;
                    let connections = control.connections();
                    let rate = config.server.drain_rate_per_s.max(1);
                    control.begin_drain(grace);
                    let schedule_ms = grace + connections * 1000 / rate;
                    drain_deadline_ms = Some(control.now_ms() + schedule_ms + DRAIN_SLACK_MS);
                    tracing::info!(
                        signal,
                        connections,
                        grace_ms = grace,
                        rate_per_s = rate,
                        "draining"
                    );
                    notify(&[
                        sd_notify::NotifyState::Stopping,
                        sd_notify::NotifyState::Status(&status("draining")),
                    ]);
                }
            }
        }
        if let Some(interval) = watchdog
            && last_watchdog.elapsed() >= interval / 2
        {
            if control.all_cores_alive(stall_ms) {
                notify(&[sd_notify::NotifyState::Watchdog]);
                last_watchdog = Instant::now();
                stalled_logged = false;
            } else if !stalled_logged {
                tracing::error!(
                    "a core loop stopped ticking: withholding the systemd watchdog ping"
                );
                stalled_logged = true;
            }
        }
        if last_status.elapsed() >= Duration::from_millis(STATUS_INTERVAL_MS) {
            let state = if control.is_draining() {
                "draining"
            } else {
                "ready"
            };
            notify(&[sd_notify::NotifyState::Status(&status(state))]);
            last_status = Instant::now();
        }
        if let Some(deadline) = drain_deadline_ms {
            let now = control.now_ms();
            let closing_started = control.drain_close_at_ms().is_some_and(|at| now >= at);
            // Connections are gone; the owners' last bookkeeping (unsubscribes, and the
            // webhooks they produce) may still be in flight between cores: wait until the
            // mesh has been empty for a settle period.
            if closing_started && control.connections() == 0 {
                if server.mesh_idle() {
                    let since = *mesh_idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(DRAIN_MESH_SETTLE_MS) {
                        tracing::info!("drained: every connection is closed");
                        break;
                    }
                } else {
                    mesh_idle_since = None;
                }
            }
            if now >= deadline {
                tracing::warn!(
                    left = control.connections(),
                    "drain deadline passed: exiting with connections open"
                );
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(CONTROL_TICK_MS));
    }
    server.stop();
    webhooks.stop(Duration::from_millis(WEBHOOK_FLUSH_MS));
    Ok(())
}

/// SIGHUP: re-reads the config file; applies apps and limits to every core without dropping
/// connections, or keeps the running config when the file is invalid.
fn reload(
    current: &Arc<Config>,
    path: Option<&std::path::Path>,
    server: &mut runtime::Server,
    webhooks: &WebhookWorker,
) -> Arc<Config> {
    let metrics = &server.metrics;
    let loaded = match path {
        Some(path) => config::load_file(path),
        None => config::parse(config::EMBEDDED_DEFAULT),
    };
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            metrics
                .config_reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(%error, "config reload rejected: keeping the running config");
            return Arc::clone(current);
        }
    };
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    let mut next = loaded.config;
    if next.server.bind != current.server.bind || next.server.cores != current.server.cores {
        tracing::warn!(
            "server.bind and server.cores change only with a restart; keeping the running values"
        );
        next.server.bind = current.server.bind.clone();
        next.server.cores = current.server.cores;
    }
    if next.storage != current.storage {
        tracing::warn!("[storage] changes only with a restart; keeping the running values");
        next.storage = current.storage.clone();
    }
    let apps = match server.apps.reloaded(&next) {
        Ok(apps) => Arc::new(apps),
        Err(error) => {
            metrics
                .config_reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(%error, "config reload rejected: keeping the running config");
            return Arc::clone(current);
        }
    };
    let next = Arc::new(next);
    server.apps = Arc::clone(&apps);
    // The worker first: an event a core makes under the new table must find its app there.
    webhooks.reload(Arc::clone(&next), Arc::clone(&apps));
    server.control.send_reload(Arc::new(Reload {
        config: Arc::clone(&next),
        apps,
    }));
    metrics.config_unknown_keys.store(
        loaded.unknown_keys.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    metrics
        .config_reloads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(apps = next.apps.len(), "config reloaded");
    next
}
