//! The hot standby at run time: this node's role and epoch, the positions each core publishes
//! for the replication link, the link's threads (the primary serving its WAL streams, the
//! standby following them), the `webhooks` stream's hand-over between the webhook worker and
//! the link, the persisted epoch, and automatic failover's thread (`failover`, the witness's
//! client). The wire format and the decisions it
//! needs (handshake, resync plans) are sans-IO in `crate::replication`; the cores never touch
//! a replication socket: they publish positions and read inputs through `shared`. Like the
//! webhook worker, the link runs on its own threads with blocking sockets, off every core.

pub mod admin;
mod dial;
pub mod epoch;
pub mod failover;
pub mod lag;
pub mod link;
pub mod promote;
mod serve;
pub mod shared;
pub mod switchover;
pub mod webhooks;
mod wire;

pub use shared::{CoreInput, ReplicaShared, Role};
