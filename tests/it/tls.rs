//! Native TLS, black-box: a test CA and server certificates made with the `openssl` command,
//! rustls clients. WebSocket, REST and health over TLS 1.2 and 1.3 (ALPN `http/1.1`), a
//! certificate reload (the old connection keeps working, a new one sees the new certificate),
//! a stalled handshake closed after the timeout, plaintext on the TLS port closed without
//! disturbing others, and a bad certificate or key at start refused with the file named.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::{
    APP_KEY, METRICS_ON, Options, Server, WAIT, config_text, metric, parse_response, scrape,
    signed_events_path, unix_now,
};

/// A certificate that expired on 2020-01-02 (self-signed, CN=localhost; `openssl ca -selfsign
/// -startdate 20200101000000Z -enddate 20200102000000Z`, which `openssl x509` cannot do).
const EXPIRED_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBDzCBtgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwHhcN
MjAwMTAxMDAwMDAwWhcNMjAwMTAyMDAwMDAwWjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARs5kSqGoWXWqEd4jjGFUeVS/Uw
b3jXT2WGjYLxinLvXa19GRlsQcnreWIdLPD9XyfnUcmSLLkMj6ddoNQKrpvpMAoG
CCqGSM49BAMCA0gAMEUCIAVSlN7ympaktHjRu4JEGVKMNSkp/HzWQEcnWkFCzPmL
AiEAprbvfYqCIOYzv1u0H5ZQ3GuEr2uPx7GcgqNookqH10I=
-----END CERTIFICATE-----
";

/// A test CA and certificates it signs, in a directory of their own.
pub struct TestCa {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (the TLS tests need the openssl command)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCa {
    /// A new CA (`ca.pem`) in a fresh directory named after `name`.
    pub fn new(name: &str) -> TestCa {
        let dir =
            std::env::temp_dir().join(format!("ringcast-it-{}-tls-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=ringcast test CA",
            ],
        );
        TestCa { dir }
    }

    /// A server certificate for localhost and 127.0.0.1 signed by the CA: (`{name}.pem`,
    /// `{name}.key`).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        std::fs::write(
            self.dir.join("san.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "30",
                "-extfile",
                "san.cnf",
            ],
        );
        (self.dir.join(cert), self.dir.join(key))
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A rustls client trusting only this CA, for the given protocol versions.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(self.ca_path()).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS connection to `addr` as `localhost`.
fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// The DER of the certificate the server presented.
fn peer_certificate(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request over a fresh TLS connection (`Connection: close`): (status, body).
fn https(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = connect(addr, config);
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // rustls reports a peer that closes without close_notify as an error: the server sends one.
    stream
        .read_to_end(&mut response)
        .expect("a clean TLS close");
    parse_response(&response)
}

/// A Pusher WebSocket client over TLS that has read `connection_established`.
fn wss(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> WebSocket<TlsStream> {
    let stream = connect(addr, config);
    let url = format!("wss://localhost:{}/app/{APP_KEY}?protocol=7", addr.port());
    let (mut ws, _) = tungstenite::client(url, stream).expect("WebSocket handshake over TLS");
    let established = read_event(&mut ws);
    assert_eq!(established["event"], "pusher:connection_established");
    ws
}

fn read_event(ws: &mut WebSocket<TlsStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn subscribe(ws: &mut WebSocket<TlsStream>, channel: &str) {
    let subscribe = json!({"event":"pusher:subscribe","data":{"channel":channel}});
    ws.send(Message::text(subscribe.to_string())).unwrap();
    let reply = read_event(ws);
    assert_eq!(reply["event"], "pusher_internal:subscription_succeeded");
}

fn tls_toml(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[tls]\nbind = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// A server with TLS and metrics on: (server, metrics address, TLS address).
fn tls_server(cert: &Path, key: &Path, extra: &str) -> (Server, SocketAddr, SocketAddr) {
    let options = Options {
        extra_toml: tls_toml(cert, key, extra),
        ..Options::default()
    };
    let config = format!("{}{METRICS_ON}", config_text(&options));
    let (server, metrics) = Server::launch(&config, &[], true);
    let tls = server.tls_addr.expect("the TLS address");
    (server, metrics.unwrap(), tls)
}

#[test]
fn websocket_rest_and_health_work_over_tls_1_2_and_1_3() {
    let ca = TestCa::new("basic");
    let (cert, key) = ca.issue("server");
    let (server, metrics, tls) = tls_server(&cert, &key, "");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = ca.client_config(versions);
        let stream = connect(tls, &client);
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            stream.conn.protocol_version(),
            Some(versions[0].version),
            "the version asked for"
        );
        drop(stream);
        assert_eq!(https(tls, &client, "GET", "/healthz", "").0, 200);
        assert_eq!(https(tls, &client, "GET", "/readyz", "").0, 200);
        let mut ws = wss(tls, &client);
        subscribe(&mut ws, "news");
        // Published over https, delivered over wss.
        let body = json!({"name":"e","channel":"news","data":"over tls"}).to_string();
        let (status, text) = https(tls, &client, "POST", &signed_events_path(&body), &body);
        assert_eq!(status, 200, "{text}");
        let event = read_event(&mut ws);
        assert_eq!(event["data"], "over tls", "{event}");
        // Published over plain http, delivered over wss too.
        server.trigger(&json!({"name":"e","channel":"news","data":"plain"}));
        assert_eq!(read_event(&mut ws)["data"], "plain");
    }
    let text = scrape(metrics);
    assert!(
        metric(&text, "ringcast_tls_handshakes_total{outcome=\"ok\"}").unwrap() >= 8.0,
        "{text}"
    );
    assert!(metric(&text, "ringcast_tls_certificate_expiry_seconds").unwrap() > unix_now() as f64);
}

#[test]
fn certificate_reload_serves_new_connections_and_keeps_old_ones() {
    let ca = TestCa::new("reload");
    let (cert, key) = ca.issue("server");
    let (first_cert, _) = ca.issue("first");
    std::fs::copy(ca.dir.join("first.pem"), &cert).unwrap();
    std::fs::copy(ca.dir.join("first.key"), &key).unwrap();
    let (server, metrics, tls) = tls_server(&cert, &key, "");
    let client = ca.client_config(&[&rustls::version::TLS13]);
    let first_der = CertificateDer::from_pem_file(&first_cert).unwrap().to_vec();
    let mut old = wss(tls, &client);
    subscribe(&mut old, "news");
    assert_eq!(peer_certificate(old.get_ref()), first_der);

    // A mismatched pair (the new certificate, the old key) is refused; the old pair stays.
    let (second_cert, second_key) = ca.issue("second");
    let second_der = CertificateDer::from_pem_file(&second_cert)
        .unwrap()
        .to_vec();
    std::fs::copy(&second_cert, &cert).unwrap();
    server.signal(libc::SIGHUP);
    wait_for_metric(metrics, "ringcast_tls_reload_failures_total", 1.0);
    assert_eq!(peer_certificate(&connect(tls, &client)), first_der);
    assert!(server.stderr().contains("TLS certificate reload rejected"));

    std::fs::copy(&second_key, &key).unwrap();
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while peer_certificate(&connect(tls, &client)) != second_der {
        assert!(Instant::now() < deadline, "the new certificate is served");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection made before the reload still works, on its old session.
    server.trigger(&json!({"name":"e","channel":"news","data":"after reload"}));
    assert_eq!(read_event(&mut old)["data"], "after reload");
    assert_eq!(peer_certificate(old.get_ref()), first_der);
}

fn wait_for_metric(metrics: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(metrics);
        if metric(&text, series).is_some_and(|value| value >= at_least) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} >= {at_least}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes the socket (EOF or reset); panics if it stays open for `within`.
fn expect_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("still open after {:?}: {error}", started.elapsed()),
        }
    }
}

#[test]
fn a_stalled_handshake_is_closed_after_the_timeout() {
    let ca = TestCa::new("stall");
    let (cert, key) = ca.issue("server");
    let (_server, metrics, tls) = tls_server(&cert, &key, "handshake_timeout_ms = 300");
    let client = ca.client_config(&[&rustls::version::TLS13]);
    let mut silent = TcpStream::connect(tls).unwrap();
    // The first bytes of a ClientHello record, and then nothing.
    let mut partial = TcpStream::connect(tls).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    expect_closed(&mut silent, WAIT);
    expect_closed(&mut partial, WAIT);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "not before the timeout"
    );
    wait_for_metric(
        metrics,
        "ringcast_tls_handshakes_total{outcome=\"timeout\"}",
        2.0,
    );
    // A client that finishes in time is served.
    assert_eq!(https(tls, &client, "GET", "/healthz", "").0, 200);
}

#[test]
fn plaintext_on_the_tls_port_is_closed_without_disturbing_others() {
    let ca = TestCa::new("plaintext");
    let (cert, key) = ca.issue("server");
    let (server, metrics, tls) = tls_server(&cert, &key, "");
    let client = ca.client_config(&[&rustls::version::TLS13]);
    let mut ws = wss(tls, &client);
    subscribe(&mut ws, "news");
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
    ] {
        let mut plain = TcpStream::connect(tls).unwrap();
        plain.write_all(request).unwrap();
        let answer = expect_closed(&mut plain, WAIT);
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
            "no plaintext answer: {answer:?}"
        );
    }
    wait_for_metric(
        metrics,
        "ringcast_tls_handshakes_total{outcome=\"failed\"}",
        2.0,
    );
    server.trigger(&json!({"name":"e","channel":"news","data":"still here"}));
    assert_eq!(read_event(&mut ws)["data"], "still here");
}

#[test]
fn handshakes_past_the_per_core_limit_are_refused_and_counted() {
    let ca = TestCa::new("limit");
    let (cert, key) = ca.issue("server");
    let options = Options {
        cores: 1,
        extra_toml: tls_toml(&cert, &key, "handshakes_per_core_max = 1"),
        ..Options::default()
    };
    let config = format!("{}{METRICS_ON}", config_text(&options));
    let (server, metrics) = Server::launch(&config, &[], true);
    let metrics = metrics.unwrap();
    let tls = server.tls_addr.unwrap();
    let client = ca.client_config(&[&rustls::version::TLS13]);
    // One handshake in flight (a client that says nothing) takes the core's only slot.
    let stalled = TcpStream::connect(tls).unwrap();
    wait_for_metric(metrics, "ringcast_tls_connected", 1.0);
    let mut refused = TcpStream::connect(tls).unwrap();
    expect_closed(&mut refused, WAIT);
    wait_for_metric(
        metrics,
        "ringcast_tls_handshakes_total{outcome=\"refused\"}",
        1.0,
    );
    // The slot is free again once that client leaves.
    drop(stalled);
    wait_for_metric(
        metrics,
        "ringcast_tls_handshakes_total{outcome=\"closed\"}",
        1.0,
    );
    assert_eq!(https(tls, &client, "GET", "/healthz", "").0, 200);
}

#[test]
fn a_tls_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let ca = TestCa::new("slow");
    let (cert, key) = ca.issue("server");
    let options = Options {
        extra_server: "outbound_bytes_max = 65536".to_string(),
        extra_toml: tls_toml(&cert, &key, ""),
        ..Options::default()
    };
    let config = format!("{}{METRICS_ON}", config_text(&options));
    let (server, metrics) = Server::launch(&config, &[], true);
    let metrics = metrics.unwrap();
    let client = ca.client_config(&[&rustls::version::TLS13]);
    let mut slow = wss(server.tls_addr.unwrap(), &client);
    subscribe(&mut slow, "firehose");
    let mut reader = wss(server.tls_addr.unwrap(), &client);
    subscribe(&mut reader, "firehose");
    // The slow client reads nothing from here on; the kernel's buffers fill, then the bound.
    let filler = "x".repeat(9 * 1024);
    let mut closed = false;
    for n in 0..4000 {
        server.trigger(&json!({"name":"big","channel":"firehose","data":format!("{n}-{filler}")}));
        let event = read_event(&mut reader);
        assert!(
            event["data"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{n}-")),
            "the reader keeps up in order"
        );
        if n % 50 == 49
            && metric(&scrape(metrics), "ringcast_slow_consumer_closes_total") == Some(1.0)
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow TLS client was closed as a slow consumer");
    server.trigger(&json!({"name":"after","channel":"firehose","data":"after"}));
    assert_eq!(read_event(&mut reader)["data"], "after");
}

/// `ringcast serve` on a config with TLS on `cert` and `key`: the exit failure's stderr.
fn start_failure(cert: &Path, key: &Path) -> String {
    let dir = std::env::temp_dir().join(format!("ringcast-it-{}-tls-start", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!(
        "config-{}.toml",
        cert.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &config,
        format!(
            "{}{}",
            config_text(&Options::default()),
            tls_toml(cert, key, "")
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success(), "started on a bad pair");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_certificate_or_key_at_start_is_an_error_naming_the_file() {
    let ca = TestCa::new("start");
    let (cert, key) = ca.issue("server");
    let (_, other_key) = ca.issue("other");
    let expired = ca.dir.join("expired.pem");
    std::fs::write(&expired, EXPIRED_CERT).unwrap();
    let stderr = start_failure(&expired, &key);
    assert!(
        stderr.contains(&expired.display().to_string()) && stderr.contains("expired at 2020-01-02"),
        "{stderr}"
    );
    let stderr = start_failure(&cert, &other_key);
    assert!(
        stderr.contains(&other_key.display().to_string()) && stderr.contains("does not match"),
        "{stderr}"
    );
    let missing = ca.dir.join("missing.pem");
    let stderr = start_failure(&missing, &key);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    let stderr = start_failure(&cert, &cert);
    assert!(
        stderr.contains("tls.key") && stderr.contains("no private key"),
        "{stderr}"
    );
}
