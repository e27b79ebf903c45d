//! WebSocket (RFC 6455) for the server side, sans-IO: the frame codec and the upgrade handshake.
//! Nothing here touches a socket or reads the clock.

pub mod frame;
pub mod handshake;
