//! The Pusher Channels protocol (version 7) as pure functions over text, sans-IO: channel names
//! and kinds, the client message envelope, outbound frame bodies, close codes and socket ids.
//! Nothing here touches a socket, reads the clock, or knows which core owns what.

pub mod channel;
pub mod close_code;
pub mod envelope;
pub mod outbound;
pub mod socket_id;
