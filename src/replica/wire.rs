//! Framed messages over one blocking TCP stream: `Wire` sends and receives
//! `replication::proto::Message`s with timeouts, through the sans-IO codec. It owns the socket
//! and the decoder's buffer, nothing else: what to send and what a message means is the link's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::replication::proto::{self, Decoder, Message};

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct Wire {
    stream: TcpStream,
    decoder: Decoder,
    out: Vec<u8>,
    chunk: Box<[u8]>,
}

impl Wire {
    /// Wraps a connected stream: no Nagle delay, linear retransmission timeouts while few
    /// packets are in flight (a lost heartbeat or ack is resent every RTO, not after an
    /// exponential backoff that outlasts `standby_timeout_ms` and, after a cut link heals,
    /// kept the session silent a second longer), and reads and writes that give up after
    /// `timeout`.
    pub fn new(stream: TcpStream, timeout: Duration) -> io::Result<Wire> {
        stream.set_nodelay(true)?;
        socket2::SockRef::from(&stream).set_tcp_thin_linear_timeouts(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Wire {
            stream,
            decoder: Decoder::new(),
            out: Vec::new(),
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
        })
    }

    /// A second handle on the same socket (one thread reads, another writes).
    pub fn split(&self) -> io::Result<Wire> {
        Ok(Wire {
            stream: self.stream.try_clone()?,
            decoder: Decoder::new(),
            out: Vec::new(),
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        self.out.clear();
        proto::encode(message, &mut self.out);
        self.stream.write_all(&self.out)
    }

    /// The next whole message; an error on a timeout, a closed connection or a bad frame.
    pub fn recv(&mut self) -> io::Result<Message> {
        loop {
            match self.decoder.next() {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => {}
                Err(error) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad replication frame: {error}"),
                    ));
                }
            }
            let read = match self.stream.read(&mut self.chunk) {
                // A signal (SIGSTOP/SIGCONT of this process) interrupts a read with a timeout:
                // not the peer's doing, so read again (it used to end the session).
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                read => read?,
            };
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.decoder
                .push(&self.chunk[..read])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        }
    }

    /// Closes both directions (wakes a thread blocked reading the other handle).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn peer(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |addr| addr.to_string())
    }
}
