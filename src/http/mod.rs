//! HTTP/1.1 for the public port, sans-IO: request parsing with limits, response writing, Pusher
//! REST request signatures and REST body decoding. Nothing here touches a socket or reads the clock.

pub mod request;
pub mod response;
pub mod rest;
pub mod signature;
