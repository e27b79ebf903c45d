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
    let config = Arc::new(config);
    let mut server = runtime::start(Arc::clone(&config), recovery)?;
    let control = Arc::clone(&server.control);
    let metrics = Arc::clone(&server.metrics);
    // The webhook outbox before readiness: with `[storage] dir`, its write-ahead log is
    // recovered here and undelivered batches of the previous run are sent again.
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (outbox, gate) = open_webhook_outbox(&config, &server, unix_ms)?;
    let webhooks = WebhookWorker::start(
        &config,
        Arc::clone(&server.apps),
        Arc::clone(&server.webhooks),
        Arc::clone(&metrics.webhooks),
        outbox,
        gate,
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
            server.replica.as_ref().map(|link| Arc::clone(&link.shared)),
        )?)
    };
    let admin = if config.admin.bind.is_empty() {
        None
    } else {
        let backend = crate::replica::admin::ReplicationAdmin {
            link: server.replica.clone(),
        };
        let admin = crate::admin::start(&config.admin, Arc::new(backend)).map_err(|error| {
            anyhow::anyhow!(
                "cannot serve the admin endpoint on {}: {error}",
                config.admin.bind
            )
        })?;
        tracing::info!(bind = config.admin.bind, "admin endpoint on");
        Some(admin)
    };
    control.set_ready(true);
    tracing::info!(
        version = VERSION,
        cores = server.cores,
        bind = %server.local_addr,
        tls = %server.tls_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        metrics = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        apps = config.apps.len(),
        unknown_config_keys = unknown_keys.len(),
        "ringcast started"
    );
    println!("ringcast listening on {}", server.local_addr);
    if let Some(addr) = metrics_addr {
        println!("ringcast metrics on {addr}");
    }
    if let Some(addr) = server.tls_addr {
        println!("ringcast tls on {addr}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut control_loop = ControlLoop::new(control, config, config_path);
    control_loop.replica = server.replica.as_ref().map(|link| Arc::clone(&link.shared));
    control_loop.announce_ready();
    loop {
        for signal in signals.pending() {
            control_loop.on_signal(signal, &mut server, &webhooks);
        }
        control_loop.watchdog();
        control_loop.refresh_status();
        if control_loop.drained(&server) {
            break;
        }
        std::thread::sleep(Duration::from_millis(CONTROL_TICK_MS));
    }
    if let Some(admin) = admin {
        admin.stop();
    }
    server.stop();
    webhooks.stop(Duration::from_millis(WEBHOOK_FLUSH_MS));
    Ok(())
}

/// The webhook outbox and, in a hot standby pair, its gate: only the primary holds the
/// outbox; a standby's worker waits with a dormant one and opens it (with what the standby
/// copied) once promoted. Without replication it is `webhook::open_outbox`'s.
#[allow(clippy::type_complexity)]
fn open_webhook_outbox(
    config: &Config,
    server: &runtime::Server,
    unix_ms: u64,
) -> anyhow::Result<(
    Box<dyn crate::webhook::Outbox>,
    Option<(Arc<dyn crate::webhook::OutboxGate>, bool)>,
)> {
    let Some(link) = &server.replica else {
        let outbox = crate::webhook::open_outbox(config, &server.apps, Instant::now(), unix_ms)
            .map_err(|error| anyhow::anyhow!("failed to recover the webhook outbox: {error}"))?;
        return Ok((outbox, None));
    };
    let gate: Arc<dyn crate::webhook::OutboxGate> = Arc::clone(&link.webhooks) as _;
    match gate.open(config, &server.apps).transpose() {
        Ok(Some(outbox)) => Ok((outbox, Some((gate, true)))),
        Ok(None) => Ok((crate::webhook::dormant_outbox(config), Some((gate, false)))),
        Err(error) => anyhow::bail!("failed to recover the webhook outbox: {error}"),
    }
}

/// The control thread's state once the server runs: signals, the systemd watchdog and status,
/// and the drain's progress.
struct ControlLoop {
    control: Arc<crate::control::Control>,
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    /// The systemd watchdog interval, when systemd asked for pings.
    watchdog: Option<Duration>,
    /// A core whose loop has not run for this long withholds the watchdog ping.
    stall_ms: u64,
    last_watchdog: Instant,
    last_status: Instant,
    stalled_logged: bool,
    /// Set by the first SIGTERM/SIGINT: when the process exits even with connections open.
    drain_deadline_ms: Option<u64>,
    mesh_idle_since: Option<Instant>,
    /// The hot standby, for `STATUS=` (role, epoch, lag).
    replica: Option<Arc<crate::replica::ReplicaShared>>,
}

impl ControlLoop {
    fn new(
        control: Arc<crate::control::Control>,
        config: Arc<Config>,
        config_path: Option<PathBuf>,
    ) -> ControlLoop {
        let watchdog = sd_notify::watchdog_enabled();
        let stall_ms = watchdog.map_or(crate::limits::CORE_LOOP_STALL_MS, |interval| {
            crate::limits::CORE_LOOP_STALL_MS.min(interval.as_millis() as u64 / 2)
        });
        ControlLoop {
            control,
            config,
            config_path,
            watchdog,
            stall_ms,
            last_watchdog: Instant::now(),
            last_status: Instant::now(),
            stalled_logged: false,
            drain_deadline_ms: None,
            mesh_idle_since: None,
            replica: None,
        }
    }

    fn status(&self, text: &str) -> String {
        let connections = self.control.connections();
        let Some(shared) = &self.replica else {
            return format!("{text}; {connections} connections");
        };
        use std::sync::atomic::Ordering::Relaxed;
        let link = match (shared.role(), shared.link_up()) {
            (crate::replica::Role::Primary, false) => "no standby".to_string(),
            (crate::replica::Role::Primary, true) => "standby connected".to_string(),
            (crate::replica::Role::Standby, false) => "primary unreachable".to_string(),
            (crate::replica::Role::Standby, true) => "following".to_string(),
        };
        format!(
            "{text}; {} epoch {}, {link}, lag {} records / {} ms; {connections} connections",
            shared.role().name(),
            shared.epoch(),
            shared.lag_records.load(Relaxed),
            shared.lag_ms.load(Relaxed),
        )
    }

    fn announce_ready(&self) {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&self.status("ready")),
        ]);
    }

    /// SIGHUP reloads; the first SIGTERM/SIGINT starts the drain, a second one exits at once.
    fn on_signal(&mut self, signal: i32, server: &mut runtime::Server, webhooks: &WebhookWorker) {
        match signal {
            SIGHUP => {
                self.config = reload(&self.config, self.config_path.as_deref(), server, webhooks);
            }
            _ if self.drain_deadline_ms.is_some() => {
                tracing::warn!(signal, "second shutdown signal: exiting now");
                std::process::exit(1);
            }
            _ => {
                let control = &self.control;
                let grace = self.config.server.drain_grace_ms;
                let connections = control.connections();
                let rate = self.config.server.drain_rate_per_s.max(1);
                control.begin_drain(grace);
                let schedule_ms = grace + connections * 1000 / rate;
                self.drain_deadline_ms = Some(control.now_ms() + schedule_ms + DRAIN_SLACK_MS);
                tracing::info!(
                    signal,
                    connections,
                    grace_ms = grace,
                    rate_per_s = rate,
                    "draining"
                );
                notify(&[
                    sd_notify::NotifyState::Stopping,
                    sd_notify::NotifyState::Status(&self.status("draining")),
                ]);
            }
        }
    }

    /// `WATCHDOG=1` only while every core loop ticks.
    fn watchdog(&mut self) {
        let Some(interval) = self.watchdog else {
            return;
        };
        if self.last_watchdog.elapsed() < interval / 2 {
            return;
        }
        if self.control.all_cores_alive(self.stall_ms) {
            notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_watchdog = Instant::now();
            self.stalled_logged = false;
        } else if !self.stalled_logged {
            tracing::error!("a core loop stopped ticking: withholding the systemd watchdog ping");
            self.stalled_logged = true;
        }
    }

    fn refresh_status(&mut self) {
        if self.last_status.elapsed() < Duration::from_millis(STATUS_INTERVAL_MS) {
            return;
        }
        let state = if self.control.is_draining() {
            "draining"
        } else {
            "ready"
        };
        notify(&[sd_notify::NotifyState::Status(&self.status(state))]);
        self.last_status = Instant::now();
    }

    /// Whether the drain is over: every connection closed and the mesh settled, or the
    /// deadline passed.
    fn drained(&mut self, server: &runtime::Server) -> bool {
        let Some(deadline) = self.drain_deadline_ms else {
            return false;
        };
        let control = &self.control;
        let now = control.now_ms();
        let closing_started = control.drain_close_at_ms().is_some_and(|at| now >= at);
        // Connections are gone; the owners' last bookkeeping (unsubscribes, and the webhooks
        // they produce) may still be in flight between cores: wait until the mesh has been
        // empty for a settle period.
        if closing_started && control.connections() == 0 {
            if server.mesh_idle() {
                let since = *self.mesh_idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(DRAIN_MESH_SETTLE_MS) {
                    tracing::info!("drained: every connection is closed");
                    return true;
                }
            } else {
                self.mesh_idle_since = None;
            }
        }
        if now >= deadline {
            tracing::warn!(
                left = control.connections(),
                "drain deadline passed: exiting with connections open"
            );
            return true;
        }
        false
    }
}

/// SIGHUP: re-reads the config file; applies apps and limits to every core without dropping
/// connections, or keeps the running config when the file is invalid.
fn reload(
    current: &Arc<Config>,
    path: Option<&std::path::Path>,
    server: &mut runtime::Server,
    webhooks: &WebhookWorker,
) -> Arc<Config> {
    let metrics = Arc::clone(&server.metrics);
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
    if next.tls.bind != current.tls.bind {
        tracing::warn!("tls.bind changes only with a restart; keeping the running value");
        next.tls.bind = current.tls.bind.clone();
    }
    if next.storage != current.storage {
        tracing::warn!("[storage] changes only with a restart; keeping the running values");
        next.storage = current.storage.clone();
    }
    // The link, the failover thread and the cores share one view of the pair: only the ack
    // modes (here and per app) change at once; the rest waits for a restart.
    let mut replication = current.replication.clone();
    replication.ack = next.replication.ack;
    if next.replication != replication {
        tracing::warn!(
            "[replication] changes only with a restart, except ack; keeping the running values"
        );
        next.replication = replication;
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
    let tls = reload_tls(&next, server);
    let next = Arc::new(next);
    server.apps = Arc::clone(&apps);
    // The worker first: an event a core makes under the new table must find its app there.
    webhooks.reload(Arc::clone(&next), Arc::clone(&apps));
    server.control.send_reload(Arc::new(Reload {
        config: Arc::clone(&next),
        apps,
        tls,
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

/// SIGHUP with TLS on: reads `tls.cert` and `tls.key` again. A good pair becomes the one new
/// connections get (connections already open keep theirs); an unreadable, expired or
/// mismatched one is logged and counted, and the running pair is kept (None).
fn reload_tls(next: &Config, server: &mut runtime::Server) -> Option<Arc<rustls::ServerConfig>> {
    server.tls.as_ref()?;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match crate::tls::Identity::load(&next.tls, now_unix) {
        Ok(identity) => {
            server.metrics.tls_certificate_not_after.store(
                identity.not_after_unix.max(0) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::info!(
                cert = %next.tls.cert,
                not_after = %crate::tls::x509::format_utc(identity.not_after_unix),
                "TLS certificate reloaded"
            );
            let config = Arc::clone(&identity.server_config);
            server.tls = Some(Arc::new(identity));
            Some(config)
        }
        Err(error) => {
            server
                .metrics
                .tls_reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(%error, "TLS certificate reload rejected: keeping the running one");
            None
        }
    }
}
