//! A TLS connection's record layer on its home core, sans-IO: rustls's
//! `UnbufferedServerConnection` is fed the bytes the driver received (copied into the core's
//! scratch buffer, where whole records are decrypted; only a partial record stays with the
//! connection, and only while partial) and yields the plaintext the HTTP and WebSocket code
//! reads as from any connection; frames queued for the connection stay
//! plaintext (`Bytes` shared by every subscriber, serialized once) and are encrypted only when
//! the driver takes them for a send, into one ciphertext buffer that the send then owns. Its
//! bytes count toward the connection's outbound bound like queued frames. This file also counts
//! handshakes (by outcome) against the core's limit of handshakes in flight. It must not touch
//! a socket or read a clock, and it never sees another connection's session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, WriteTraffic,
};

use super::{Now, Shard};
use crate::limits;
use crate::metrics::{CoreMetrics, TLS_CLOSED, TLS_FAILED, TLS_OK, TLS_REFUSED, TLS_TIMEOUT};

/// One connection's TLS state: rustls's unbuffered connection (record keys and handshake
/// state only; it holds no buffers of its own), plus the few bytes that must outlive one
/// receive or one send. An idle connection keeps no buffer at all.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Still handshaking: counted in the core's handshakes in flight until it ends, whatever way.
    pub handshaking: bool,
    /// Received ciphertext that is not a whole record yet (empty, unallocated, otherwise).
    partial: Vec<u8>,
    /// Records rustls encoded on its own (handshake messages, alerts, key updates) for the
    /// next send, ahead of anything encrypted after them.
    pending: Vec<u8>,
    /// The unsent rest of the last send's ciphertext; it goes out before anything else.
    unsent: Option<Bytes>,
    /// The session failed (an alert may be queued): no `close_notify` after it.
    failed: bool,
    close_notify_sent: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.handshaking)
            .field("partial", &self.partial.len())
            .field("pending", &self.pending.len())
            .field("unsent", &self.unsent.as_ref().map(Bytes::len))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What one step of the record layer left to do.
enum Step {
    /// Call `process_tls_records` again.
    Again,
    /// Nothing more until the peer sends more (or, established, the app writes).
    Wait,
}

impl TlsSession {
    fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            handshaking: true,
            partial: Vec::new(),
            pending: Vec::new(),
            unsent: None,
            failed: false,
            close_notify_sent: false,
        })
    }

    /// Whether there is ciphertext to send (see `Conn::has_output`).
    pub fn has_output(&self, closing: bool) -> bool {
        self.unsent.is_some()
            || !self.pending.is_empty()
            || (closing && !self.failed && !self.handshaking && !self.close_notify_sent)
    }

    /// Decrypts `data` (received ciphertext), appending the plaintext to `plaintext`. Whole
    /// records are decrypted in `scratch` (the core's, reused); only the tail of a record not
    /// complete yet is kept in the session, and only until it is.
    fn receive(
        &mut self,
        data: &[u8],
        scratch: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        let mut incoming = std::mem::take(&mut self.partial);
        if incoming.is_empty() {
            incoming = std::mem::take(scratch);
            incoming.clear();
        }
        incoming.extend_from_slice(data);
        let processed = self.process(&mut incoming, plaintext);
        if processed.is_ok() && incoming.len() > limits::TLS_PARTIAL_RECORD_BYTES_MAX {
            self.failed = true;
            return Err(rustls::Error::General(
                "incomplete TLS data over its limit".into(),
            ));
        }
        if incoming.is_empty() || processed.is_err() {
            incoming.clear();
            *scratch = incoming;
        } else if self.partial.is_empty() {
            // Keep only the partial record, in a buffer of its size; the scratch stays the core's.
            self.partial = incoming.clone();
            incoming.clear();
            *scratch = incoming;
        }
        processed
    }

    /// Runs the record layer over `incoming` until it waits for the peer or the app; whole
    /// records leave `incoming` as they are processed. A failure flushes rustls's alert into
    /// `pending`.
    fn process(
        &mut self,
        incoming: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        loop {
            let step = self.step(incoming, plaintext);
            match step {
                Ok(Step::Again) => {}
                Ok(Step::Wait) => return Ok(()),
                Err(error) => {
                    self.failed = true;
                    self.encode_pending_alert(incoming);
                    return Err(error);
                }
            }
        }
    }

    /// One `process_tls_records`: decrypted application data goes to `plaintext`, records
    /// rustls has to send go to `pending`, and the bytes it consumed leave `incoming`.
    fn step(
        &mut self,
        incoming: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<Step, rustls::Error> {
        let status = self.conn.process_tls_records(&mut incoming[..]);
        let mut discard = status.discard;
        let step = match status.state {
            Err(error) => Err(error),
            Ok(ConnectionState::ReadTraffic(mut records)) => loop {
                match records.next_record() {
                    None => break Ok(Step::Again),
                    Some(Err(error)) => break Err(error),
                    Some(Ok(record)) => {
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
            },
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(&mut self.pending, HANDSHAKE_HINT, |out| encode.encode(out))
                    .map(|()| Step::Again)
            }
            // The encoded records wait in `pending`, in order, for the next send.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(Step::Again)
            }
            // The peer's `close_notify`: its end of the stream, which the socket's end follows.
            Ok(ConnectionState::PeerClosed) => Ok(Step::Again),
            Ok(_) => Ok(Step::Wait),
        };
        incoming.drain(..discard.min(incoming.len()));
        step
    }

    /// After a failure: the alert rustls queued, if any, into `pending`. `incoming` is what the
    /// failed step left (rustls's handshake reassembly refers to it by position). Only queued
    /// records are taken: processing `incoming` again would fail again.
    fn encode_pending_alert(&mut self, incoming: &mut [u8]) {
        for _ in 0..limits::TLS_ALERTS_AFTER_FAILURE_MAX {
            if !self.conn.wants_write() {
                return;
            }
            let status = self.conn.process_tls_records(incoming);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state else {
                return;
            };
            if encode_into(&mut self.pending, HANDSHAKE_HINT, |out| encode.encode(out)).is_err() {
                return;
            }
        }
    }

    /// Encrypts `frames` (application data) after `pending`, and a `close_notify` after them
    /// when `close` is set, into `out`. An error when the session cannot encrypt any more.
    fn encrypt(
        &mut self,
        frames: &[Bytes],
        close: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        for _ in 0..limits::TLS_STEPS_BEFORE_WRITE_MAX {
            // Always the bytes not consumed yet: rustls's handshake reassembly refers to them
            // by position, and a partial record at rest is never a whole one.
            let status = self.conn.process_tls_records(&mut self.partial[..]);
            let discard = status.discard;
            let outcome = match status.state {
                Err(error) => Err(error),
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.pending, HANDSHAKE_HINT, |out| encode.encode(out))
                        .map(|()| false)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed) => Ok(false),
                Ok(ConnectionState::WriteTraffic(mut write)) => {
                    flush_pending(&mut self.pending, out);
                    write_records(&mut write, frames, close, out).map(|()| true)
                }
                Ok(other) => Err(rustls::Error::General(format!(
                    "cannot encrypt in state {other:?}"
                ))),
            };
            self.partial.drain(..discard.min(self.partial.len()));
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    self.close_notify_sent |= close;
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        Err(rustls::Error::General("no write state in sight".into()))
    }

    /// The ciphertext of the next send: the unsent rest of the last one, or `pending`. None
    /// when there is none.
    fn take_ciphertext(&mut self) -> Option<Bytes> {
        if let Some(unsent) = self.unsent.take() {
            return Some(unsent);
        }
        (!self.pending.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.pending)))
    }
}

/// Why rustls could not write into a buffer: only ever "too small, needs this much".
trait TooSmall {
    fn required_size(&self) -> Option<usize>;
}

impl TooSmall for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl TooSmall for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

/// Encrypts `frames`, and a `close_notify` after them when `close` is set, at the end of `out`.
fn write_records(
    write: &mut WriteTraffic<'_, ServerConnectionData>,
    frames: &[Bytes],
    close: bool,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    for frame in frames {
        let hint = frame.len() + limits::TLS_RECORD_OVERHEAD_BYTES * records(frame);
        encode_into(out, hint, |buffer| write.encrypt(frame, buffer))?;
    }
    if close {
        let hint = limits::TLS_RECORD_OVERHEAD_BYTES;
        encode_into(out, hint, |buffer| write.queue_close_notify(buffer))?;
    }
    Ok(())
}

/// Moves `pending` to the end of `out`, leaving no buffer behind.
fn flush_pending(pending: &mut Vec<u8>, out: &mut Vec<u8>) {
    if out.is_empty() {
        *out = std::mem::take(pending);
    } else {
        out.extend_from_slice(&std::mem::take(pending));
    }
}

/// Room first offered for a handshake message rustls encodes (it asks for more when needed).
const HANDSHAKE_HINT: usize = 2048;

/// TLS records a frame is split into (16 KB of plaintext each).
fn records(frame: &[u8]) -> usize {
    frame.len() / limits::TLS_RECORD_PLAINTEXT_BYTES + 1
}

/// Appends what `write` produces to `out`: it is offered `hint` bytes of room at the end,
/// grown to the size rustls asks for when that was too small.
fn encode_into<E: TooSmall + std::fmt::Display>(
    out: &mut Vec<u8>,
    hint: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = hint;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(error) => match error.required_size() {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(rustls::Error::General(error.to_string()));
                }
            },
        }
    }
}

impl Shard {
    /// Sets the certificate and key new TLS connections get (at start and on reload);
    /// connections already open keep theirs.
    pub fn set_tls_config(&mut self, config: Option<Arc<rustls::ServerConfig>>) {
        self.tls_config = config;
    }

    /// A new socket from the TLS listener. None when this core is full or already runs
    /// `tls.handshakes_per_core_max` handshakes (counted as `refused`): the driver closes it.
    pub fn accept_tls(&mut self, fd: std::os::fd::RawFd, now: Now) -> Option<u32> {
        let config = self.tls_config.clone()?;
        if self.tls_handshaking >= self.config.tls.handshakes_per_core_max {
            CoreMetrics::add(&self.core_metrics().tls_handshakes[TLS_REFUSED], 1);
            return None;
        }
        let session = match TlsSession::new(config) {
            Ok(session) => session,
            Err(error) => {
                tracing::error!(%error, "failed to start a TLS session");
                return None;
            }
        };
        let key = self.accept(fd, now)?;
        let handshake_timeout_ms = self.config.tls.handshake_timeout_ms;
        let conn = &mut self.conns[key as usize];
        conn.tls = Some(Box::new(session));
        conn.deadline_ms = now.mono_ms + handshake_timeout_ms;
        self.tls_handshaking += 1;
        assert!(self.tls_handshaking <= limits::TLS_HANDSHAKES_PER_CORE_MAX);
        let metrics = self.core_metrics();
        metrics.tls_connected.fetch_add(1, Ordering::Relaxed);
        Some(key)
    }

    /// Ciphertext from a TLS connection: the handshake advances, and the plaintext goes to the
    /// HTTP or WebSocket code. A session error (garbage instead of a ClientHello, a bad record)
    /// flushes rustls's alert and closes this connection only.
    pub(super) fn on_tls_recv(&mut self, key: u32, data: &[u8]) {
        let conn = &mut self.conns[key as usize];
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let mut plaintext = std::mem::take(&mut self.tls_plaintext);
        plaintext.clear();
        let received = tls.receive(data, &mut self.tls_incoming, &mut plaintext);
        let handshake_done = tls.handshaking && !tls.conn.is_handshaking();
        let wants_write = !tls.pending.is_empty();
        match received {
            Err(error) => {
                tracing::debug!(core = self.core, %error, "TLS session failed: closing");
                self.end_handshake(key, TLS_FAILED);
                self.begin_close(key);
            }
            Ok(()) => {
                if handshake_done {
                    self.end_handshake(key, TLS_OK);
                    let conn = &mut self.conns[key as usize];
                    conn.deadline_ms = self.now.mono_ms + self.config.server.request_timeout_ms;
                }
                if wants_write {
                    self.mark_dirty(key);
                }
                if !plaintext.is_empty() {
                    self.on_plaintext(key, &plaintext);
                }
            }
        }
        plaintext.clear();
        if plaintext.capacity() > limits::RECV_BUFFER_BYTES * 4 {
            plaintext = Vec::new();
        }
        self.tls_plaintext = plaintext;
        if self.tls_incoming.capacity() > limits::RECV_BUFFER_BYTES * 4 {
            self.tls_incoming = Vec::new();
        }
    }

    /// Ends the handshake of a connection still handshaking, counting it by `outcome`.
    pub(super) fn end_handshake(&mut self, key: u32, outcome: usize) {
        let Some(tls) = self.conns[key as usize].tls.as_mut() else {
            return;
        };
        if !std::mem::replace(&mut tls.handshaking, false) {
            return;
        }
        assert!(self.tls_handshaking > 0, "a handshake in flight is counted");
        self.tls_handshaking -= 1;
        CoreMetrics::add(&self.core_metrics().tls_handshakes[outcome], 1);
    }

    /// A connection's handshake deadline passed (`Shard::expire`): closed, counted as
    /// `timeout`. Returns false when it is not handshaking.
    pub(super) fn expire_handshake(&mut self, key: u32) -> bool {
        let handshaking = self.conns[key as usize]
            .tls
            .as_ref()
            .is_some_and(|tls| tls.handshaking);
        if handshaking {
            self.end_handshake(key, TLS_TIMEOUT);
            self.reset(key);
        }
        handshaking
    }

    /// A TLS connection is gone (`on_peer_closed`): a handshake it had in flight ends as
    /// `closed`, and it leaves the TLS connection count.
    pub(super) fn tls_gone(&mut self, key: u32) {
        if self.conns[key as usize].tls.is_none() {
            return;
        }
        self.end_handshake(key, TLS_CLOSED);
        let metrics = self.core_metrics();
        metrics.tls_connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// `take_for_send` for a TLS connection: the unsent rest of the last send, or the queued
    /// frames (up to `limits::TLS_SEND_PLAINTEXT_BYTES_MAX` of them) encrypted into one buffer
    /// together with whatever rustls has to send (handshake messages, alerts, `close_notify`
    /// once a closing connection's frames are all out). Plaintext leaves `out_bytes` as its
    /// ciphertext enters it, so the bound counts what is really waiting for the peer.
    pub(super) fn take_tls_for_send(&mut self, key: u32, into: &mut Vec<Bytes>) {
        let conn = &mut self.conns[key as usize];
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let established = !tls.failed && !tls.conn.is_handshaking();
        if tls.unsent.is_none() && established {
            let mut frames = std::mem::take(&mut self.tls_frames);
            let mut plaintext_bytes = 0;
            while plaintext_bytes < limits::TLS_SEND_PLAINTEXT_BYTES_MAX {
                let Some(frame) = conn.out.pop_front() else {
                    break;
                };
                plaintext_bytes += frame.len();
                conn.out_bytes -= frame.len();
                frames.push(frame);
            }
            let close = conn.closing && conn.out.is_empty() && !tls.close_notify_sent;
            let mut ciphertext = Vec::new();
            let encrypted = tls.encrypt(&frames, close, &mut ciphertext);
            frames.clear();
            self.tls_frames = frames;
            match encrypted {
                Ok(()) if !ciphertext.is_empty() => tls.unsent = Some(Bytes::from(ciphertext)),
                Ok(()) => {}
                Err(error) => {
                    // What was encrypted before the failure still goes; then the connection ends.
                    tracing::debug!(core = self.core, %error, "TLS encryption failed: closing");
                    tls.failed = true;
                    if !ciphertext.is_empty() {
                        tls.unsent = Some(Bytes::from(ciphertext));
                    }
                }
            }
        }
        let failed = tls.failed;
        if let Some(ciphertext) = tls.take_ciphertext() {
            conn.out_bytes += ciphertext.len();
            into.push(ciphertext);
        }
        if failed && !conn.closing {
            self.begin_close(key);
        }
    }

    /// `on_sent` for a TLS connection: the one ciphertext buffer of the send, `written` bytes
    /// of it taken; the rest goes out first next time.
    pub(super) fn tls_sent(&mut self, key: u32, written: usize, frames: &mut Vec<Bytes>) {
        let conn = &mut self.conns[key as usize];
        assert!(frames.len() <= 1, "a TLS send is one ciphertext buffer");
        assert!(written <= conn.out_bytes, "more written than queued");
        conn.out_bytes -= written;
        if let (Some(mut ciphertext), Some(tls)) = (frames.pop(), conn.tls.as_mut()) {
            assert!(written <= ciphertext.len(), "more written than sent");
            let _ = ciphertext.split_to(written);
            if !ciphertext.is_empty() {
                tls.unsent = Some(ciphertext);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The record layer against a real rustls client over an in-memory transport: bytes cut
    //! at every size, garbage, and what an idle session keeps.

    use std::io::{Read, Write};

    use proptest::prelude::*;

    use super::*;

    /// A test CA and a server certificate for `localhost` it issued (valid until 2125).
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCAT2gAwIBAgIULlBaLxLM4zLXAk4pM1DmjvBU/F4wCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVcmluZ2Nhc3QtdW5pdC10ZXN0LWNhMCAXDTI2MTIwNTE4MDgz
OVoYDzIxMjYxMTExMTgwODM5WjAgMR4wHAYDVQQDDBVyaW5nY2FzdC11bml0LXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASF5Gy+HDWLFZW48bwNDU5w
ONO+uKOxRWTyKwcM9YNLH7151FgcWUW9BXZw2lx3KhuQ2JzgyKptLV7MZ98pJPiH
o1MwUTAdBgNVHQ4EFgQUx/BZV+hCX6ElaimR/EpYbJMsPPMwHwYDVR0jBBgwFoAU
x/BZV+hCX6ElaimR/EpYbJMsPPMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNHADBEAiAthUvpol0qLi3nOSb4C56B8tRDpqzMT+6NFDmjbuxN/gIgK4QHAPKy
oRCaG2lBLIgwuw1gYI+4A+eQQWljIHGSa50=
-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUYFapFkKdB9m9y2Xv+xjemhLdtCwwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVcmluZ2Nhc3QtdW5pdC10ZXN0LWNhMCAXDTI2MTIwNTE4MDgz
OVoYDzIxMjYxMTExMTgwODM5WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASUHnJcMi/Yt55CEEJZKyy1X9iOAv47AcCPs1ys
gkVSLiHI/qA/lkguH8UZd9724wQgU7Nwkxe4/TQ0G2DAf7pro2MwYTAUBgNVHREE
DTALgglsb2NhbGhvc3QwCQYDVR0TBAIwADAdBgNVHQ4EFgQUGkvTqJzqwbOR6E5s
sPF7clc1x90wHwYDVR0jBBgwFoAUx/BZV+hCX6ElaimR/EpYbJMsPPMwCgYIKoZI
zj0EAwIDRwAwRAIgCoyS2pOizR8mhZEnLstscvCQVermQucgFparh1P8+xUCIDYx
/cmd+ALf0WVyh58akNFbFm9yuVrFiMgrNyZSOkQu
-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSe+jghxxJuEgsx9H
UjYUYmRtAgZFZI4JTlz0dC+pxwShRANCAASUHnJcMi/Yt55CEEJZKyy1X9iOAv47
AcCPs1ysgkVSLiHI/qA/lkguH8UZd9724wQgU7Nwkxe4/TQ0G2DAf7pr
-----END PRIVATE KEY-----\n";

    fn server_config() -> Arc<rustls::ServerConfig> {
        let tls = crate::config::TlsConfig::default();
        let identity =
            crate::tls::Identity::from_pem(&tls, CERT.as_bytes(), KEY.as_bytes(), 1_900_000_000)
                .expect("the test identity loads");
        identity.server_config
    }

    fn client(version: &'static rustls::SupportedProtocolVersion) -> rustls::ClientConnection {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(CA.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        rustls::ClientConnection::new(Arc::new(config), name).unwrap()
    }

    /// Moves the client's output into the session `chunk` bytes at a time and the session's
    /// output (with `frames` encrypted) back; returns the plaintext the session read and the
    /// plaintext the client read.
    fn exchange(
        client: &mut rustls::ClientConnection,
        session: &mut TlsSession,
        chunk: usize,
        frames: &[Bytes],
    ) -> (Vec<u8>, Vec<u8>) {
        let (mut scratch, mut plaintext, mut received) = (Vec::new(), Vec::new(), Vec::new());
        let mut frames = frames;
        for _ in 0..8 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            for piece in wire.chunks(chunk) {
                session
                    .receive(piece, &mut scratch, &mut plaintext)
                    .unwrap();
            }
            let mut out = Vec::new();
            if !session.conn.is_handshaking() {
                session.encrypt(frames, false, &mut out).unwrap();
                frames = &[];
            }
            out.extend_from_slice(&session.take_ciphertext().unwrap_or_default());
            let mut reader = &out[..];
            while !reader.is_empty() {
                client.read_tls(&mut reader).unwrap();
                client.process_new_packets().unwrap();
                let mut buffer = [0u8; 4096];
                while let Ok(read @ 1..) = client.reader().read(&mut buffer) {
                    received.extend_from_slice(&buffer[..read]);
                }
            }
        }
        (plaintext, received)
    }

    #[test]
    fn records_cut_anywhere_decrypt_and_an_idle_session_keeps_no_buffer() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            for chunk in [1, 7, 100, 5000] {
                let mut session = TlsSession::new(server_config()).unwrap();
                let mut client = client(version);
                exchange(&mut client, &mut session, chunk, &[]);
                assert!(!session.conn.is_handshaking() && !client.is_handshaking());
                let big = vec![b'x'; 40_000];
                client
                    .writer()
                    .write_all(b"GET / HTTP/1.1\r\n\r\n")
                    .unwrap();
                client.writer().write_all(&big).unwrap();
                let frames = [Bytes::from_static(b"hello"), Bytes::from(big.clone())];
                let (read, received) = exchange(&mut client, &mut session, chunk, &frames);
                assert_eq!(read.len(), 18 + big.len(), "{version:?} chunk {chunk}");
                assert_eq!(received.len(), 5 + big.len());
                assert!(received.starts_with(b"hello"));
                assert_eq!(session.partial.capacity(), 0, "no partial record kept");
                assert_eq!(session.pending.capacity(), 0, "no pending output kept");
                assert!(session.unsent.is_none());
            }
        }
    }

    #[test]
    fn close_notify_follows_the_last_frame() {
        let mut session = TlsSession::new(server_config()).unwrap();
        let mut client = client(&rustls::version::TLS13);
        exchange(&mut client, &mut session, 1000, &[]);
        let mut out = Vec::new();
        session
            .encrypt(&[Bytes::from_static(b"bye")], true, &mut out)
            .unwrap();
        assert!(session.close_notify_sent);
        let mut reader = &out[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).unwrap();
        }
        let state = client.process_new_packets().unwrap();
        assert!(state.peer_has_closed());
        let mut received = Vec::new();
        let _ = client.reader().read_to_end(&mut received);
        assert_eq!(received, b"bye");
    }

    #[test]
    fn garbage_fails_the_session_with_an_alert_and_no_panic() {
        for garbage in [
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
            &[0x16, 0x03, 0x01, 0x48, 0x01][..],
        ] {
            let mut session = TlsSession::new(server_config()).unwrap();
            let (mut scratch, mut plaintext) = (Vec::new(), Vec::new());
            let result = session.receive(garbage, &mut scratch, &mut plaintext);
            assert!(result.is_err(), "{garbage:?}");
            assert!(session.failed && plaintext.is_empty());
            // The driver then sends what is pending (an alert, when rustls made one) and closes.
            let _ = session.take_ciphertext();
            assert!(!session.has_output(true));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a peer sends, in whatever pieces, the session never panics and never keeps
        /// more than its limit.
        #[test]
        fn any_bytes_in_any_pieces_never_panic(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..12),
            handshake_first in any::<bool>(),
        ) {
            let mut session = TlsSession::new(server_config()).unwrap();
            let (mut scratch, mut plaintext) = (Vec::new(), Vec::new());
            if handshake_first {
                exchange(&mut client(&rustls::version::TLS13), &mut session, 333, &[]);
            }
            for piece in &pieces {
                if session.receive(piece, &mut scratch, &mut plaintext).is_err() {
                    break;
                }
                prop_assert!(session.partial.len() <= limits::TLS_PARTIAL_RECORD_BYTES_MAX);
                let mut out = Vec::new();
                if !session.conn.is_handshaking() && session.encrypt(&[], false, &mut out).is_err() {
                    break;
                }
                let _ = session.take_ciphertext();
            }
        }
    }
}
