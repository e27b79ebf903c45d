//! Native TLS's process-wide part: loading `[tls] cert` and `key` (PEM) into the rustls
//! `ServerConfig` every core's connections share (TLS 1.2 and 1.3, ALPN `http/1.1`, no session
//! cache: its lock would be shared by every core), and checking the pair first (a missing,
//! unreadable, expired or mismatched file is an error naming it). The control thread loads it at
//! start and again on SIGHUP. It must not run on a core (it reads files) and knows nothing of
//! connections: the per-connection record layer is `shard::tls`.

pub mod x509;

use std::io::Read;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::limits;

/// The ALPN protocol offered: the only one served.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// A loaded certificate chain and key, ready for handshakes.
#[derive(Debug)]
pub struct Identity {
    pub server_config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's `notAfter`, in Unix seconds.
    pub not_after_unix: i64,
}

/// Why a certificate or key could not be used; always names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read `{key}` file {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("`{key}` file {path}: {message}")]
    Invalid {
        key: &'static str,
        path: String,
        message: String,
    },
}

impl Identity {
    /// Reads and checks `tls.cert` and `tls.key` as of `now_unix` (Unix seconds).
    ///
    /// # Errors
    /// A file that cannot be read or is larger than `limits::TLS_PEM_FILE_BYTES_MAX`, no
    /// certificate or key in it, a chain longer than `limits::TLS_CHAIN_CERTS_MAX`, a leaf
    /// that is expired or not yet valid, or a key that does not match the leaf.
    pub fn load(tls: &TlsConfig, now_unix: i64) -> Result<Identity, IdentityError> {
        let cert_pem = read_pem("tls.cert", &tls.cert)?;
        let key_pem = read_pem("tls.key", &tls.key)?;
        Identity::from_pem(tls, &cert_pem, &key_pem, now_unix)
    }

    /// `load` on PEM bytes already read (`tls` names the files in errors).
    ///
    /// # Errors
    /// As `load`, but for reading.
    pub fn from_pem(
        tls: &TlsConfig,
        cert_pem: &[u8],
        key_pem: &[u8],
        now_unix: i64,
    ) -> Result<Identity, IdentityError> {
        let cert_error = |message: String| IdentityError::Invalid {
            key: "tls.cert",
            path: tls.cert.clone(),
            message,
        };
        let key_error = |message: String| IdentityError::Invalid {
            key: "tls.key",
            path: tls.key.clone(),
            message,
        };
        let chain = read_chain(cert_pem).map_err(cert_error)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|error| key_error(format!("no private key found ({error})")))?;
        let validity = x509::validity(&chain[0]).map_err(|error| cert_error(error.to_string()))?;
        if validity.not_after <= now_unix {
            return Err(cert_error(format!(
                "the certificate expired at {}",
                x509::format_utc(validity.not_after)
            )));
        }
        if validity.not_before > now_unix {
            return Err(cert_error(format!(
                "the certificate is not valid before {}",
                x509::format_utc(validity.not_before)
            )));
        }
        let server_config = server_config(chain, key).map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => key_error(format!(
                "the key does not match the certificate in `tls.cert` {}",
                tls.cert
            )),
            other => key_error(other.to_string()),
        })?;
        Ok(Identity {
            server_config: Arc::new(server_config),
            not_after_unix: validity.not_after,
        })
    }
}

/// Reads a PEM file, refusing one larger than `limits::TLS_PEM_FILE_BYTES_MAX` before reading it.
fn read_pem(key: &'static str, path: &str) -> Result<Vec<u8>, IdentityError> {
    let read_error = |source| IdentityError::Read {
        key,
        path: path.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(limits::TLS_PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limits::TLS_PEM_FILE_BYTES_MAX {
        return Err(IdentityError::Invalid {
            key,
            path: path.to_string(),
            message: format!("larger than {} bytes", limits::TLS_PEM_FILE_BYTES_MAX),
        });
    }
    Ok(bytes)
}

/// The certificates of a PEM file, leaf first (at least one, at most `TLS_CHAIN_CERTS_MAX`).
fn read_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut chain = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|error| format!("bad PEM: {error}"))?;
        if chain.len() == limits::TLS_CHAIN_CERTS_MAX {
            return Err(format!(
                "more than {} certificates",
                limits::TLS_CHAIN_CERTS_MAX
            ));
        }
        chain.push(certificate);
    }
    if chain.is_empty() {
        return Err("no certificate (a PEM `CERTIFICATE` block) found".to_string());
    }
    Ok(chain)
}

/// The rustls server configuration: ring, TLS 1.3 and 1.2, ALPN `http/1.1`, no client
/// certificates, and no session resumption (the stateful cache is one `Mutex` for every core,
/// and each core's handshakes must not wait on another's).
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}
