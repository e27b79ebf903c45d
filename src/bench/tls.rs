//! `ringcast bench --tls`: the generator's TLS client side, so every scenario runs against any
//! server over `wss://` and `https://`. It owns the rustls client configuration (the roots from
//! `--ca FILE`, else the system bundle; ALPN `http/1.1`) and the record layer of one generator
//! connection: plaintext the engine queues goes through rustls, ciphertext from the receive
//! buffers comes out as plaintext for the engine's parsers. It must not touch the ring or decide
//! anything about the protocol above it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The system's CA bundle (Debian), used when `--tls` comes without `--ca`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What every TLS connection of a run shares.
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    /// Trusts the certificates in `ca` (PEM), or the system bundle, and expects `host`.
    pub fn new(host: &str, ca: Option<&Path>) -> Result<TlsTarget, String> {
        let ca = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(ca)
            .map_err(|error| format!("cannot read --ca {}: {error}", ca.display()))?;
        for certificate in certificates {
            let certificate =
                certificate.map_err(|error| format!("bad PEM in {}: {error}", ca.display()))?;
            roots
                .add(certificate)
                .map_err(|error| format!("bad certificate in {}: {error}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("no certificate in {}", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|error| format!("--host {host} is not a TLS server name: {error}"))?;
        Ok(TlsTarget {
            config: Arc::new(config),
            server_name,
        })
    }

    pub fn connect(&self) -> io::Result<Box<rustls::ClientConnection>> {
        rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map(Box::new)
            .map_err(io::Error::other)
    }
}

/// Decrypts `input` (ciphertext from the socket), appending the plaintext to `plaintext`.
pub fn receive(
    tls: &mut rustls::ClientConnection,
    mut input: &[u8],
    plaintext: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    while !input.is_empty() {
        tls.read_tls(&mut input)
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        let state = tls.process_new_packets()?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = plaintext.len();
            plaintext.resize(start + available, 0);
            tls.reader()
                .read_exact(&mut plaintext[start..])
                .map_err(|error| rustls::Error::General(error.to_string()))?;
        }
    }
    Ok(())
}

/// Encrypts `plaintext` (rustls holds it until the handshake is done) and writes what rustls
/// has to send, as far as the non-blocking socket takes it (the rest stays in rustls: see
/// `wants_write`). Returns false when the socket reported end of file.
pub fn flush(
    tls: &mut rustls::ClientConnection,
    plaintext: &[u8],
    socket: &socket2::Socket,
) -> io::Result<bool> {
    if !plaintext.is_empty() {
        tls.writer().write_all(plaintext)?;
    }
    let mut socket = socket;
    while tls.wants_write() {
        match tls.write_tls(&mut socket) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
