//! The closed set of messages that cross cores. Each variant says who sends it to whom. Frames
//! travel as shared `Bytes` (serialized once, written by every core); channel names as
//! `Arc<str>`. No variant carries a reference into another core's tables: connections are named
//! by `ConnRef` (core, slab key, generation) and resolved only on their home core.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

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
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.app.to_le_bytes().iter().chain(self.name.as_bytes()) {
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
}

#[derive(Debug)]
pub enum ShardMessage {
    /// Connection core → owner: `conn` wants to join `channel`. Answered by `SubscribeOk`.
    Subscribe { channel: ChannelKey, conn: ConnRef },
    /// Owner → connection core: the owner counted `conn` in; from here on the owner forwards the
    /// channel's events to the connection's core.
    SubscribeOk { channel: ChannelKey, conn: ConnRef },
    /// Connection core → owner: one subscriber on the sender's core left.
    Unsubscribe { channel: ChannelKey },
    /// Any core → owner: sequence `frame` on `channel` and fan it out.
    Publish {
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
    },
    /// Owner → every core with subscribers: write `frame` to local subscribers of `channel`.
    Deliver {
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
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
    /// REST core → owner: describe one channel.
    DescribeChannel {
        query: QueryRef,
        channel: ChannelKey,
    },
    /// Owner → REST core: the answer to `DescribeChannel`.
    ChannelDescription {
        query: QueryRef,
        subscription_count: u64,
    },
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
    }
}
