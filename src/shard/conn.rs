//! One connection's state on its home core: the HTTP phase (buffered request bytes) or the
//! WebSocket phase (frame decoder, Pusher state, subscriptions), the bounded outbound queue of
//! shared frames, and the few fields the io_uring driver keeps per socket. Holds no socket
//! handle it acts on: `fd` is only carried for the driver.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::mesh::ChannelKey;
use crate::protocol::socket_id::SocketId;
use crate::ws::frame::Decoder;

use super::frames::FrameQueue;
use super::tls::TlsSession;

/// What the io_uring driver tracks per socket. The shard never reads these except to know
/// whether a slot may be freed.
#[derive(Debug, Default)]
pub struct ConnIo {
    pub recv_armed: bool,
    pub send_in_flight: bool,
    pub write_shut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Sent to the owner, waiting for `SubscribeOk`.
    Pending,
    /// The client unsubscribed while pending: undo at the owner when `SubscribeOk` arrives.
    PendingCancelled,
    Active,
}

#[derive(Debug)]
pub struct Subscription {
    pub channel: ChannelKey,
    pub state: SubState,
    /// Position of this connection in the core's local subscriber list for the channel (Active only).
    pub index: u32,
    /// The presence member this connection joined as.
    pub user_id: Option<Arc<str>>,
    /// Send `subscription_succeeded` when confirmed (false for the server's own subscription
    /// to `#server-to-user-{id}` at signin, until the client asks for it too).
    pub announce: bool,
}

#[derive(Debug)]
pub struct WsState {
    pub app: u32,
    pub socket_id: SocketId,
    pub decoder: Decoder,
    pub subscriptions: Vec<Subscription>,
    /// Monotonic ms of the last frame received (any kind).
    pub last_seen_ms: u64,
    /// The decoder's unfinished unit (`Decoder::partial`) and the monotonic ms its first bytes
    /// arrived; the timer closes the connection when it stays unfinished too long.
    pub partial_since: Option<(u16, u64)>,
    /// Monotonic ms when we sent `pusher:ping` and are waiting for any answer.
    pub ping_sent_ms: Option<u64>,
    /// Counted against the app's connection limit (released when the connection goes).
    pub counted: bool,
    /// The user this connection signed in as (`pusher:signin`), and that user's `user_info`
    /// JSON (used for presence channels joined without `channel_data`).
    pub user_id: Option<Arc<str>>,
    pub user_info_json: Option<Box<str>>,
    /// The users this connection watches (signin `watchlist`).
    pub watchlist: Option<Box<super::users::Watchlist>>,
    /// Monotonic ms by which an app that requires user authentication wants this connection
    /// signed in or subscribed to an authorized channel; 0 when not required or done.
    pub auth_deadline_ms: u64,
    /// Client-event rate limit: the start of the current one-second window and its count.
    pub client_events_window_ms: u64,
    pub client_events_in_window: u32,
}

#[derive(Debug)]
pub enum Phase {
    Http {
        /// Bytes of requests not yet parsed; empty (no allocation) between requests.
        input: Vec<u8>,
        /// A REST request waiting for other cores; parsing pauses so responses stay in order.
        awaiting: Option<u32>,
    },
    WebSocket(Box<WsState>),
}

#[derive(Debug)]
pub struct Conn {
    pub fd: RawFd,
    pub generation: u32,
    pub phase: Phase,
    pub out: FrameQueue,
    pub out_bytes: usize,
    /// Set once: no more input is processed and no more output queued except the close.
    pub closing: bool,
    /// The peer's side is gone (EOF or error); shard state was already cleaned up.
    pub dead: bool,
    /// The shard gave up on a peer that stopped reading (slow consumer, a close past its
    /// linger): the driver resets the socket rather than closing it gracefully.
    pub aborted: bool,
    /// Taken on the driver's spare descriptor at the process's descriptor limit: its request is
    /// answered "over capacity" (a WebSocket upgrade with the 101, then 4100; anything else with
    /// 503 + Retry-After) and the connection closed, so the client learns at once instead of
    /// waiting in the listen backlog.
    pub over_capacity: bool,
    /// Monotonic ms by which the next complete HTTP request must have arrived, or by which a
    /// closing connection must be gone.
    pub deadline_ms: u64,
    /// Already in the shard's dirty list.
    pub dirty: bool,
    pub io: ConnIo,
    /// The TLS record layer of a connection accepted on the TLS listener (`shard::tls`): `out`
    /// holds plaintext frames, encrypted when the driver takes them for a send.
    pub tls: Option<Box<TlsSession>>,
}

impl Conn {
    pub fn ws(&self) -> Option<&WsState> {
        match &self.phase {
            Phase::WebSocket(ws) => Some(ws),
            Phase::Http { .. } => None,
        }
    }

    pub fn ws_mut(&mut self) -> Option<&mut WsState> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(ws),
            Phase::Http { .. } => None,
        }
    }

    /// Whether there is anything to send: queued frames, or TLS output (handshake messages, an
    /// alert, the unsent rest of a send, or the `close_notify` of a closing connection).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.has_output(self.closing))
    }

    /// May the driver free this slot? Only when the shard is done with it and no io_uring
    /// operation still refers to it.
    pub fn reclaimable(&self) -> bool {
        self.dead && !self.io.recv_armed && !self.io.send_in_flight
    }
}
