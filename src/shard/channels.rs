//! Channels on one core, from both sides. As **owner** (`ChannelKey::owner(cores) == core`) the
//! core counts subscribers per core, sequences publishes and forwards each frame once per
//! interested core. As **host** of connections it keeps the local subscriber index and writes
//! each delivered frame to its local subscribers. Owner state is touched only on the owner core:
//! other cores reach it only through mesh messages.

use std::sync::Arc;

use bytes::Bytes;

use super::conn::{SubState, Subscription};
use super::{Phase, Shard};
use crate::mesh::message::ChannelSummary;
use crate::mesh::{ChannelKey, ConnRef, ShardMessage};
use crate::protocol::close_code;
use crate::protocol::outbound;
use crate::protocol::socket_id::SocketId;
use crate::ws::frame;

/// What the owner knows about one channel.
#[derive(Debug)]
pub(super) struct OwnedChannel {
    /// Subscribers per core (index = core).
    per_core: Box<[u32]>,
    pub(super) total: u64,
}

impl Shard {
    /// Routes work for `channel` to its owner: run it here when we own it, else mail it.
    fn to_owner(&mut self, channel: &ChannelKey, message: ShardMessage) {
        let owner = channel.owner(self.cores);
        if owner == self.core {
            self.handle_message(self.core, message);
        } else {
            self.outbox.push(owner, message);
        }
    }

    pub(super) fn owner_subscribe(&mut self, channel: &ChannelKey, from: usize) {
        let cores = self.cores;
        let owned = self
            .owned
            .entry(channel.clone())
            .or_insert_with(|| OwnedChannel {
                per_core: vec![0; cores].into_boxed_slice(),
                total: 0,
            });
        owned.per_core[from] += 1;
        owned.total += 1;
    }

    pub(super) fn owner_unsubscribe(&mut self, channel: &ChannelKey, from: usize) {
        let owned = self
            .owned
            .get_mut(channel)
            .expect("unsubscribe from a channel the owner never counted");
        assert!(
            owned.per_core[from] > 0,
            "owner count underflow for {channel:?}"
        );
        owned.per_core[from] -= 1;
        owned.total -= 1;
        if owned.total == 0 {
            self.owned.remove(channel);
        }
    }

    /// The owner sequences one event: every interested core receives the same frame, in the
    /// order the owner saw publishes, because each owner→core queue is FIFO.
    pub(super) fn owner_publish(
        &mut self,
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
    ) {
        let Some(owned) = self.owned.get(&channel) else {
            return;
        };
        let mut deliver_here = false;
        for (core, &count) in owned.per_core.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if core == self.core {
                deliver_here = true;
            } else {
                self.outbox.push(
                    core,
                    ShardMessage::Deliver {
                        channel: channel.clone(),
                        frame: frame.clone(),
                        exclude,
                    },
                );
            }
        }
        if deliver_here {
            self.deliver_local(&channel, &frame, exclude);
        }
    }

    /// Writes `frame` to this core's subscribers of `channel`, except the excluded socket.
    pub(super) fn deliver_local(
        &mut self,
        channel: &ChannelKey,
        frame: &Bytes,
        exclude: Option<SocketId>,
    ) {
        let Some(subscribers) = self.local.get(channel) else {
            return;
        };
        let limit = self.config.server.outbound_bytes_max;
        let mut slow = Vec::new();
        for &key in subscribers {
            let conn = &mut self.conns[key as usize];
            if let (Some(excluded), Phase::WebSocket(ws)) = (exclude, &conn.phase) {
                if ws.socket_id == excluded {
                    continue;
                }
            }
            if conn.out_bytes + frame.len() > limit && !conn.out.is_empty() {
                slow.push(key);
                continue;
            }
            conn.out_bytes += frame.len();
            conn.out.push_back(frame.clone());
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        self.stats.frames_queued += (subscribers.len() - slow.len()) as u64;
        for key in slow {
            self.close_slow_consumer(key);
        }
    }

    /// A subscriber whose queue is over its bound: closed with 4101 so it reconnects with
    /// back-off, counted, and nothing else is affected.
    pub(super) fn close_slow_consumer(&mut self, key: u32) {
        self.stats.slow_consumer_closes += 1;
        self.close_ws(key, close_code::SLOW_CONSUMER_CLOSE, false);
    }

    /// Starts a subscription for an authorized connection: ask the owner to count it.
    pub(super) fn start_subscription(&mut self, key: u32, channel: ChannelKey) {
        let conn_ref = self.conn_ref(key);
        let ws = self.conns[key as usize]
            .ws_mut()
            .expect("subscribing a WebSocket connection");
        ws.subscriptions.push(Subscription {
            channel: channel.clone(),
            state: SubState::Pending,
            index: 0,
        });
        self.to_owner(
            &channel.clone(),
            ShardMessage::Subscribe {
                channel,
                conn: conn_ref,
            },
        );
    }

    /// The owner counted the connection in: make it Active and tell the client.
    pub(super) fn subscription_confirmed(&mut self, channel: ChannelKey, conn_ref: ConnRef) {
        assert_eq!(usize::from(conn_ref.core), self.core);
        let key = conn_ref.key;
        let live = self.conns.get(key as usize).is_some_and(|conn| {
            conn.generation == conn_ref.generation && !conn.closing && !conn.dead
        });
        let position = live
            .then(|| {
                let ws = self.conns[key as usize].ws()?;
                ws.subscriptions.iter().position(|s| s.channel == channel)
            })
            .flatten();
        let Some(position) = position else {
            // The connection went away while the owner was counting it: undo the count.
            self.to_owner(&channel.clone(), ShardMessage::Unsubscribe { channel });
            return;
        };
        let ws = self.conns[key as usize].ws_mut().expect("checked above");
        match ws.subscriptions[position].state {
            SubState::Active => unreachable!("a channel is confirmed once per subscription"),
            SubState::PendingCancelled => {
                ws.subscriptions.swap_remove(position);
                self.to_owner(&channel.clone(), ShardMessage::Unsubscribe { channel });
            }
            SubState::Pending => {
                let subscribers = self.local.entry(channel.clone()).or_default();
                let index = subscribers.len() as u32;
                subscribers.push(key);
                let subscription = &mut ws.subscriptions[position];
                subscription.state = SubState::Active;
                subscription.index = index;
                let reply =
                    frame::encode_text(outbound::subscription_succeeded(&channel.name).as_bytes());
                self.queue(key, reply);
            }
        }
    }

    /// Ends one subscription of connection `key` (already removed from its list).
    pub(super) fn drop_subscription(&mut self, key: u32, subscription: Subscription) {
        match subscription.state {
            SubState::Pending => {
                // Keep a record so the coming SubscribeOk is undone: the connection's list no
                // longer has it, which `subscription_confirmed` treats as "gone".
            }
            SubState::PendingCancelled => {}
            SubState::Active => {
                self.remove_local(&subscription.channel, key, subscription.index);
                let channel = subscription.channel;
                self.to_owner(&channel.clone(), ShardMessage::Unsubscribe { channel });
            }
        }
    }

    /// Removes `key` at `index` from the local list of `channel`, fixing the index of the
    /// subscriber that moves into its place.
    fn remove_local(&mut self, channel: &ChannelKey, key: u32, index: u32) {
        let subscribers = self
            .local
            .get_mut(channel)
            .expect("active subscription is indexed");
        assert_eq!(subscribers[index as usize], key, "local index out of sync");
        subscribers.swap_remove(index as usize);
        if let Some(&moved) = subscribers.get(index as usize) {
            let ws = self.conns[moved as usize]
                .ws_mut()
                .expect("subscribers are WebSocket connections");
            let entry = ws
                .subscriptions
                .iter_mut()
                .find(|s| s.channel == *channel)
                .expect("moved subscriber has the subscription");
            entry.index = index;
        }
        if subscribers.is_empty() {
            self.local.remove(channel);
        }
    }

    /// Client unsubscribe: idempotent, no reply (spec §2.2).
    pub(super) fn unsubscribe(&mut self, key: u32, name: &str) {
        let ws = self.conns[key as usize]
            .ws_mut()
            .expect("WebSocket connection");
        let Some(position) = ws
            .subscriptions
            .iter()
            .position(|s| &*s.channel.name == name)
        else {
            return;
        };
        match ws.subscriptions[position].state {
            SubState::Pending => ws.subscriptions[position].state = SubState::PendingCancelled,
            SubState::PendingCancelled => {}
            SubState::Active => {
                let subscription = ws.subscriptions.swap_remove(position);
                self.drop_subscription(key, subscription);
            }
        }
    }

    /// Occupied channels this core owns for `app` whose name starts with `prefix`.
    pub(super) fn owned_channels(&self, app: u32, prefix: &str) -> Vec<ChannelSummary> {
        self.owned
            .iter()
            .filter(|(key, owned)| {
                key.app == app && owned.total > 0 && key.name.starts_with(prefix)
            })
            .map(|(key, owned)| ChannelSummary {
                name: Arc::clone(&key.name),
                subscription_count: owned.total,
            })
            .collect()
    }

    /// Publishes a pre-framed event on `channel` (from REST, or later from a client event).
    pub(super) fn publish(&mut self, channel: ChannelKey, frame: Bytes, exclude: Option<SocketId>) {
        self.to_owner(
            &channel.clone(),
            ShardMessage::Publish {
                channel,
                frame,
                exclude,
            },
        );
    }
}
