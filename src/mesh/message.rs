//! The closed set of messages that cross cores. Each variant says who sends it to whom. Frames
//! travel as shared `Bytes` (serialized once, written by every core); channel names as
//! `Arc<str>`. No variant carries a reference into another core's tables: connections are named
//! by `ConnRef` (core, slab key, generation) and resolved only on their home core.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::AckMode;
use crate::protocol::envelope::ResumeAfter;
use crate::protocol::socket_id::SocketId;

/// A channel of one app. Owned by `shard_of(key)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub app: u32,
    pub name: Arc<str>,
}

impl ChannelKey {
    pub fn new(app: u32, name: &str) -> ChannelKey {
        ChannelKey {
            app,
            name: Arc::from(name),
        }
    }

    /// The core that owns this channel: FNV-1a over app and name, modulo the core count.
    /// Stable across runs (not randomized) so a channel always lands on the same core.
    pub fn owner(&self, cores: usize) -> usize {
        ChannelKey::owner_of(self.app, &self.name, cores)
    }

    /// [`ChannelKey::owner`] of `(app, name)` without building the key (no allocation).
    pub fn owner_of(app: u32, name: &str, cores: usize) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in app.to_le_bytes().iter().chain(name.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % cores as u64) as usize
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// A connection somewhere in the process: valid only on `core`, and only while the slab entry
/// `key` still carries `generation` (keys are reused after a close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub core: u16,
    pub key: u32,
    pub generation: u32,
}

/// A pending REST request waiting for answers from other cores, named on its home core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRef {
    pub core: u16,
    pub slot: u32,
    pub generation: u32,
}

/// One occupied channel as reported by its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: Arc<str>,
    pub subscription_count: u64,
    /// Distinct presence members (0 for other channels).
    pub user_count: u64,
}

/// A presence member as declared in a verified `channel_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id as a string (numbers are converted to their decimal text).
    pub user_id: Arc<str>,
    /// The raw JSON text of `user_info` (`null` when absent).
    pub info_json: Box<str>,
}

/// What the owner says back to a subscription request.
#[derive(Debug)]
pub enum SubscribeReply {
    Joined {
        /// Presence channels: the `data` string of `subscription_succeeded`.
        presence_data: Option<String>,
        /// Cache channels: the last event's frame (`Some(None)` is a miss).
        cached: Option<Option<Bytes>>,
        /// Apps with `event_sequence`: the channel's (epoch, last seq) for
        /// `subscription_succeeded`.
        position: Option<(u64, u64)>,
        /// The answer to a `resume_after`: the missed events, or that they are not all here.
        replay: Option<Replay>,
    },
    /// The owner refused (presence channel full): a `pusher:subscription_error`.
    Refused {
        error_type: &'static str,
        message: String,
        status: u16,
    },
}

/// What a subscription that asked to resume gets right after `subscription_succeeded`.
#[derive(Debug)]
pub struct Replay {
    /// True when `frames` holds every missed event (possibly none); false replays nothing.
    pub recovered: bool,
    pub frames: Vec<Bytes>,
}

/// An event to sequence on one channel: everything its WAL record needs. It names the app by
/// its index and the excluded connection by socket id, nothing else of this process.
#[derive(Debug, Clone)]
pub struct PublishCommand {
    pub channel: ChannelKey,
    pub event: Arc<str>,
    /// The raw JSON text of `data` (a string literal for REST events).
    pub data: Arc<str>,
    pub exclude: Option<SocketId>,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<Arc<str>>,
    /// Wall-clock Unix ms when the receiving core accepted it.
    pub published_ms: u64,
    /// A REST event on a cache channel: it becomes the channel's cached event.
    pub cache: bool,
    /// A client event (relayed from a connection, not from REST).
    pub client: bool,
}

/// How durable an acknowledged publish is (the `X-Ringcast-Durability` header). Ordered from
/// weakest to strongest: a publish to several owners reports the weakest of their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// No WAL (`[storage] dir` empty): sequenced in memory only.
    Memory,
    /// The app asked for the standby, which is unavailable (`on_standby_loss = "degrade"`):
    /// written to the local WAL file only.
    DegradedWritten,
    /// As `DegradedWritten`, and fsynced locally.
    DegradedFsynced,
    /// Written to the WAL file: survives a crash of the process.
    Written,
    /// Written and fsynced: survives a power loss.
    Fsynced,
    /// Also received by the standby (in its WAL file): survives the loss of either host.
    ReplicaReceived,
    /// Also fsynced by the standby.
    ReplicaDurable,
}

impl Durability {
    pub fn header_value(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::DegradedWritten => "local-written; standby=unavailable",
            Durability::DegradedFsynced => "local-fsynced; standby=unavailable",
            Durability::Written => "local-written",
            Durability::Fsynced => "local-fsynced",
            Durability::ReplicaReceived => "replica-received",
            Durability::ReplicaDurable => "replica-durable",
        }
    }

    /// The same local durability, marked as degraded (the standby did not confirm it).
    pub fn degraded(self) -> Durability {
        match self {
            Durability::Written | Durability::DegradedWritten => Durability::DegradedWritten,
            Durability::Fsynced | Durability::DegradedFsynced => Durability::DegradedFsynced,
            other => other,
        }
    }
}

/// Why an owner did not sequence a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// The WAL's disk is full: nothing could be persisted.
    StorageFull,
    /// A core with subscribers of the channel has `MESH_BACKLOG_MAX` messages waiting from the
    /// owner already: the fan-out would only add to it.
    Busy,
    /// The app's `ack` needs the standby, which is unavailable, and `on_standby_loss` is
    /// `reject` (or this node is not the primary any more).
    StandbyUnavailable,
    /// Automatic failover: this primary cannot prove its lease at the witness (it may have
    /// been replaced), so it acknowledges nothing until it can.
    NoLease,
    /// A planned switchover froze publishes on this primary (`ringcast switchover`): retry in
    /// a moment, on whichever node is then the primary. Also the answer to a publish still
    /// waiting when the node stepped down, the standby not having its record.
    Switchover,
}

/// An owner's answer to a `Barrier`: every publish the sender sent before it is durable at the
/// given level, or at least one was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Durable(Durability),
    Refused(PublishRefusal),
}

/// One channel as described by its owner for REST.
#[derive(Debug, Clone, Default)]
pub struct ChannelInfo {
    pub subscription_count: u64,
    pub user_count: u64,
    /// Presence member ids, when asked for.
    pub users: Option<Vec<Arc<str>>>,
    /// Cache channels: the cached `data` JSON text and the seconds it has left.
    pub cache: Option<(Box<str>, u64)>,
}

#[derive(Debug)]
pub enum ShardMessage {
    /// Connection core → owner: `conn` (socket `socket_id`) wants to join `channel`, as
    /// `member` on presence channels. Answered by `SubscribeOk`.
    Subscribe {
        channel: ChannelKey,
        conn: ConnRef,
        socket_id: SocketId,
        member: Option<Member>,
        /// `resume_after` from the client (boxed: rare, and the mesh slots stay small).
        resume: Option<Box<ResumeAfter>>,
    },
    /// Owner → connection core: the answer to `Subscribe`. When joined, the owner has counted
    /// `conn` in and forwards the channel's events to the connection's core from here on.
    SubscribeOk {
        channel: ChannelKey,
        conn: ConnRef,
        user_id: Option<Arc<str>>,
        /// Boxed: most messages on the mesh are deliveries, which should not pay for its size.
        reply: Box<SubscribeReply>,
    },
    /// Connection core → owner: `conn`, already counted in the presence channel `channel`,
    /// subscribed to it again. Answered by `Resubscribed`; counts nothing and announces nothing
    /// (no `member_added`), because the connection is a member already.
    Resubscribe {
        channel: ChannelKey,
        conn: ConnRef,
    },
    /// Owner → connection core: the answer to `Resubscribe`, the `data` of presence
    /// `subscription_succeeded` as the owner knows it now. It travels behind every member event
    /// the owner sequenced before it (queues are FIFO), so the list agrees with the events the
    /// connection has seen.
    Resubscribed {
        channel: ChannelKey,
        conn: ConnRef,
        presence_data: String,
    },
    /// Connection core → owner: one subscriber on the sender's core left (as presence member
    /// `user_id`, with socket `socket_id`).
    Unsubscribe {
        channel: ChannelKey,
        user_id: Option<Arc<str>>,
        socket_id: Option<SocketId>,
    },
    /// Any core → owner: sequence an event (REST or client event): log it, keep it in the
    /// history, fan it out.
    Publish {
        publish: Box<PublishCommand>,
        /// When the publish arrived (process monotonic µs), for the latency histogram.
        published_us: u64,
    },
    /// Any core → owner: fan out an internal frame (watchlist events) without sequencing or
    /// logging it.
    Relay {
        channel: ChannelKey,
        frame: Bytes,
        published_us: u64,
    },
    /// Owner → every core with subscribers: write `frame` to local subscribers of `channel`.
    Deliver {
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
        published_us: u64,
    },
    /// REST core → every core: list the occupied channels you own for `app`.
    ListChannels {
        query: QueryRef,
        app: u32,
        prefix: Arc<str>,
    },
    /// Core → REST core: the answer to `ListChannels`.
    ChannelList {
        query: QueryRef,
        channels: Vec<ChannelSummary>,
    },
    /// REST core → owner: describe one channel (`index` names it within the request).
    DescribeChannel {
        query: QueryRef,
        index: u32,
        channel: ChannelKey,
        with_users: bool,
    },
    /// Owner → REST core: the answer to `DescribeChannel`.
    ChannelDescription {
        query: QueryRef,
        index: u32,
        info: ChannelInfo,
    },
    /// REST core → owner (this core included), after the request's `Publish` messages:
    /// answered by `BarrierAck` once everything the REST core sent before it has been handled
    /// (queues are FIFO) and its WAL records are durable, so the REST answer means "sequenced
    /// and persisted by the owner".
    Barrier {
        query: QueryRef,
        /// What the publisher's app waits for (`Local` without a standby configured).
        ack: AckMode,
    },
    BarrierAck {
        query: QueryRef,
        outcome: AckOutcome,
    },
    /// REST core → owner: up to `limit` retained events of `channel` after `after`.
    History {
        query: QueryRef,
        channel: ChannelKey,
        after: u64,
        limit: usize,
    },
    /// Owner → REST core: the answer to `History`.
    HistoryPage {
        query: QueryRef,
        page: Box<crate::shard::HistoryPage>,
    },
    /// REST core → every core: close every connection signed in as `user_id` (4009).
    TerminateUser {
        app: u32,
        user_id: Arc<str>,
    },
    /// Connection core → user's owner: one more (or one fewer) connection signed in as `user_id`.
    UserOnline {
        app: u32,
        user_id: Arc<str>,
    },
    UserOffline {
        app: u32,
        user_id: Arc<str>,
    },
    /// Connection core → watched user's owner: `watcher` (on `conn`) watches `watched`;
    /// answered by `WatchStatus`.
    Watch {
        app: u32,
        watcher: Arc<str>,
        watched: Arc<str>,
        conn: ConnRef,
    },
    /// Connection core → watched user's owner: one watching connection of `watcher` is gone.
    Unwatch {
        app: u32,
        watcher: Arc<str>,
        watched: Arc<str>,
    },
    /// Watched user's owner → connection core: whether `watched` is online now.
    WatchStatus {
        conn: ConnRef,
        watched: Arc<str>,
        online: bool,
    },
}

// Every mesh queue slot holds one message: keep the large, rare variants boxed so the slots
// (and the deliveries that fill them) stay small.
const _: () = assert!(size_of::<ShardMessage>() <= 112);

/// The key that routes a user's registry entry to its owner core (never a real channel: `#` is
/// reserved, and this prefix is not `#server-to-user-`).
pub fn user_key(app: u32, user_id: &str) -> ChannelKey {
    ChannelKey::new(app, &format!("#user:{user_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spread() {
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            let key = ChannelKey::new(1, &format!("channel-{n}"));
            assert_eq!(key.owner(4), key.owner(4));
            counts[key.owner(4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(ChannelKey::new(1, "x").owner(1), 0);
        for cores in [1, 2, 3, 8] {
            assert_eq!(
                ChannelKey::owner_of(7, "presence-room", cores),
                ChannelKey::new(7, "presence-room").owner(cores)
            );
        }
    }
}
