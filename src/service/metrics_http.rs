//! The metrics port: `/metrics` (Prometheus text), `/healthz` and `/readyz`, served one request
//! at a time by a plain blocking thread, off every core loop. Requests are small and bounded
//! (head only, 8 KiB, 2 s read timeout); this port is for scrapers and probes, not clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::limits;
use crate::metrics::Metrics;
use crate::replica::{ReplicaShared, Role};
use crate::runtime::Throttle;

use crate::limits::{
    CORE_LOOP_STALL_MS, METRICS_REQUEST_HEAD_BYTES_MAX, METRICS_REQUEST_READ_TIMEOUT_MS,
};

/// Binds the metrics address and serves it on a thread of its own; returns the bound address.
/// `replica` is the hot standby's shared state when `[replication]` is on: a standby is not
/// ready here either, as on the client port.
pub fn start(
    bind: SocketAddr,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    replica: Option<Arc<ReplicaShared>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringcast-metrics".to_string())
        .spawn(move || {
            // At the descriptor limit a pending scrape makes every accept fail at once: one
            // line per interval, not one per retry.
            let started = std::time::Instant::now();
            let mut failures = Throttle::default();
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let standby = replica
                            .as_ref()
                            .is_some_and(|shared| shared.role() == Role::Standby);
                        if let Err(error) = answer(stream, &control, &metrics, standby) {
                            tracing::debug!(%error, "metrics request failed");
                        }
                    }
                    Err(error) => {
                        let now_ms = started.elapsed().as_millis() as u64;
                        if let Some(suppressed) =
                            failures.admit(now_ms, limits::ACCEPT_ERROR_LOG_INTERVAL_MS)
                        {
                            tracing::warn!(%error, suppressed, "metrics accept failed");
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(addr)
}

/// One request. `standby`: this node is a hot standby, which serves no clients (not ready).
fn answer(
    mut stream: TcpStream,
    control: &Control,
    metrics: &Arc<Metrics>,
    standby: bool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(METRICS_REQUEST_READ_TIMEOUT_MS)))?;
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer)?;
        if n == 0 || head.len() + n > METRICS_REQUEST_HEAD_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let path = match request.parse(&head) {
        Ok(_) => request
            .path
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string(),
        Err(_) => return respond(&mut stream, 400, "text/plain", "bad request\n"),
    };
    match path.as_str() {
        "/metrics" => {
            let text = metrics.render();
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
            )
        }
        "/healthz" if control.all_cores_alive(CORE_LOOP_STALL_MS) => {
            respond(&mut stream, 200, "text/plain", "OK\n")
        }
        "/healthz" => respond(&mut stream, 503, "text/plain", "a core loop is stuck\n"),
        "/readyz" if standby => respond(
            &mut stream,
            503,
            "text/plain",
            "standby: serves no clients until promoted\n",
        ),
        "/readyz" if control.is_ready() => respond(&mut stream, 200, "text/plain", "ready\n"),
        "/readyz" if control.is_draining() => respond(&mut stream, 503, "text/plain", "draining\n"),
        "/readyz" => respond(&mut stream, 503, "text/plain", "starting\n"),
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::http::response::write(&mut out, status, content_type, body.as_bytes(), false, &[]);
    stream.write_all(&out)
}
