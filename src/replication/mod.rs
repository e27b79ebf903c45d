//! Replication to a hot standby (issue 13), the pure part: the wire protocol (`proto`: messages,
//! framing, the incremental decoder, the check of a records batch) and the handshake's
//! decisions (`handshake`: the checks on both sides, where each stream rejoins, the HMACs). It
//! must not do IO, read a clock, spawn threads or keep session state: the replication threads
//! own the sockets, the timers and the WAL, and call in here. Everything public is re-exported
//! here, so callers write `replication::Decoder` or `replication::plan_stream`.

pub mod handshake;
pub mod proto;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use handshake::{
    HandoverRefusal, LocalNode, PrimaryStream, auth_mac, check_handover, check_hello,
    check_welcome, plan_stream, plan_streams, verify_auth_mac, verify_welcome_mac, welcome_mac,
};
pub use proto::{
    Decoder, Hello, LENGTH_BYTES, MAC_BYTES, Mac, Message, MessageType, NONCE_BYTES, Nonce,
    ProtoError, RECORDS_PREFIX_BYTES, RefuseCode, Role, StreamMode, StreamPlan, StreamPosition,
    Welcome, encode, records_prefix, split_records,
};
