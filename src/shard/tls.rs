//! A TLS connection's record layer on its home core, sans-IO: the rustls `ServerConnection` is
//! fed the bytes the driver received (its provided buffers) and yields the plaintext the HTTP
//! and WebSocket code reads as from any connection; frames queued for the connection stay
//! plaintext (`Bytes` shared by every subscriber, serialized once) and are encrypted only when
//! the driver takes them for a send, into one ciphertext buffer that the send then owns. Its
//! bytes count toward the connection's outbound bound like queued frames. This file also counts
//! handshakes (by outcome) against the core's limit of handshakes in flight. It must not touch
//! a socket or read a clock, and it never sees another connection's session.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{Now, Shard};
use crate::limits;
use crate::metrics::{CoreMetrics, TLS_CLOSED, TLS_FAILED, TLS_OK, TLS_REFUSED, TLS_TIMEOUT};

/// One connection's TLS state.
pub struct TlsSession {
    conn: rustls::ServerConnection,
    /// Still handshaking: counted in the core's handshakes in flight until it ends, whatever way.
    pub handshaking: bool,
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
            .field("unsent", &self.unsent.as_ref().map(Bytes::len))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(config)?;
        // The shard bounds the connection's output itself (`server.outbound_bytes_max`), so
        // the writer must take every frame it is given.
        conn.set_buffer_limit(None);
        Ok(TlsSession {
            conn,
            handshaking: true,
            unsent: None,
            failed: false,
            close_notify_sent: false,
        })
    }

    /// Whether there is ciphertext to send (see `Conn::has_output`).
    pub fn has_output(&self, closing: bool) -> bool {
        self.unsent.is_some()
            || self.conn.wants_write()
            || (closing && !self.failed && !self.handshaking && !self.close_notify_sent)
    }

    /// Decrypts `data` (received ciphertext), appending the plaintext to `plaintext`. The
    /// plaintext is at most about the ciphertext's size (records are read out as they arrive).
    fn receive(&mut self, mut data: &[u8], plaintext: &mut Vec<u8>) -> Result<(), rustls::Error> {
        while !data.is_empty() {
            let read = self
                .conn
                .read_tls(&mut data)
                .map_err(|error| rustls::Error::General(error.to_string()));
            let state = read.and_then(|_| self.conn.process_new_packets());
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    self.failed = true;
                    return Err(error);
                }
            };
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plaintext.len();
                plaintext.resize(start + available, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plaintext[start..])
                    .map_err(|error| rustls::Error::General(error.to_string()))?;
            }
        }
        Ok(())
    }

    /// The ciphertext of the next send: the unsent rest of the last one, or everything rustls
    /// has ready (after `encrypt`). None when there is none.
    fn take_ciphertext(&mut self) -> Option<Bytes> {
        if let Some(unsent) = self.unsent.take() {
            return Some(unsent);
        }
        let mut ciphertext = Vec::new();
        while self.conn.wants_write() {
            // Writing into a `Vec` takes everything and cannot fail.
            if self.conn.write_tls(&mut ciphertext).is_err() {
                break;
            }
        }
        (!ciphertext.is_empty()).then(|| Bytes::from(ciphertext))
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
        let mut plaintext = std::mem::take(&mut self.tls_plaintext);
        plaintext.clear();
        let conn = &mut self.conns[key as usize];
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let received = tls.receive(data, &mut plaintext);
        let handshake_done = tls.handshaking && !tls.conn.is_handshaking();
        let wants_write = tls.conn.wants_write();
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
        if tls.unsent.is_none() && !tls.failed {
            let mut plaintext_bytes = 0;
            while plaintext_bytes < limits::TLS_SEND_PLAINTEXT_BYTES_MAX {
                let Some(frame) = conn.out.pop_front() else {
                    break;
                };
                plaintext_bytes += frame.len();
                conn.out_bytes -= frame.len();
                // The writer takes everything (no buffer limit); it cannot fail otherwise.
                let _ = tls.conn.writer().write_all(&frame);
            }
            if conn.closing && conn.out.is_empty() && !tls.handshaking && !tls.close_notify_sent {
                tls.conn.send_close_notify();
                tls.close_notify_sent = true;
            }
        }
        if let Some(ciphertext) = tls.take_ciphertext() {
            conn.out_bytes += ciphertext.len();
            into.push(ciphertext);
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
