//! Channels on the **host** side: the core that holds connections keeps its local subscriber
//! index (channel → this core's subscribers), asks each channel's owner to count a subscription
//! in or out, answers the client when the owner confirms (with the resume replay when asked),
//! and writes each delivered frame to its local subscribers. The owner side (counts, presence,
//! history, cache, sequencing) is `owner.rs`; this file never touches it except through
//! messages.

use std::sync::Arc;

use bytes::Bytes;

use super::conn::{SubState, Subscription};
use super::{Phase, Shard};
use crate::mesh::message::{Member, PublishCommand, Replay, SubscribeReply};
use crate::mesh::{ChannelKey, ConnRef, ShardMessage};
use crate::protocol::close_code;
use crate::protocol::envelope::ResumeAfter;
use crate::protocol::outbound;
use crate::protocol::socket_id::SocketId;

/// What the owner's `SubscribeReply::Joined` said, for the announcement.
struct Joined {
    presence_data: Option<String>,
    cached: Option<Option<Bytes>>,
    position: Option<(u64, u64)>,
    replay: Option<Replay>,
}

impl Shard {
    /// Routes work for `channel` to its owner: run it here when we own it, else mail it.
    pub(super) fn route_to_owner(&mut self, channel: &ChannelKey, message: ShardMessage) {
        self.send_to_core(channel.owner(self.cores), message);
    }

    /// Writes `frame` to this core's subscribers of `channel`, except the excluded socket.
    pub(super) fn deliver_local(
        &mut self,
        channel: &ChannelKey,
        frame: &Bytes,
        exclude: Option<SocketId>,
        published_us: u64,
    ) {
        let Some(subscribers) = self.local.get(channel) else {
            return;
        };
        let limit = self.config.server.outbound_bytes_max;
        let mut slow = Vec::new();
        let mut delivered = 0u64;
        for &key in subscribers {
            let conn = &mut self.conns[key as usize];
            if let (Some(excluded), Phase::WebSocket(ws)) = (exclude, &conn.phase)
                && ws.socket_id == excluded
            {
                continue;
            }
            // `out_bytes`, not the queue: the frames of a send in flight have left the queue
            // but are still unread, and count toward the bound.
            if conn.out_bytes + frame.len() > limit && conn.out_bytes != 0 {
                slow.push(key);
                continue;
            }
            conn.out_bytes += frame.len();
            conn.out.push_back(frame.clone());
            delivered += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        let core_metrics = &self.metrics.cores[self.core];
        crate::metrics::CoreMetrics::add(&core_metrics.ws_messages_sent, delivered);
        core_metrics.latency(self.now.mono_us.saturating_sub(published_us), delivered);
        for key in slow {
            self.close_slow_consumer(key);
        }
    }

    /// A subscriber whose queue is over its bound: closed with 4101 so it reconnects with
    /// back-off, counted, and nothing else is affected.
    pub(super) fn close_slow_consumer(&mut self, key: u32) {
        crate::metrics::CoreMetrics::add(&self.core_metrics().slow_consumer_closes, 1);
        self.close_ws(key, close_code::SLOW_CONSUMER_CLOSE, false);
    }

    /// Starts a subscription for an authorized connection: ask the owner to count it.
    pub(super) fn start_subscription(
        &mut self,
        key: u32,
        channel: ChannelKey,
        member: Option<Member>,
        announce: bool,
        resume: Option<ResumeAfter>,
    ) {
        let conn_ref = self.conn_ref(key);
        let ws = self.conns[key as usize]
            .ws_mut()
            .expect("subscribing a WebSocket connection");
        ws.subscriptions.push(Subscription {
            channel: channel.clone(),
            state: SubState::Pending,
            index: 0,
            user_id: member.as_ref().map(|m| Arc::clone(&m.user_id)),
            announce,
        });
        let socket_id = ws.socket_id;
        self.route_to_owner(
            &channel.clone(),
            ShardMessage::Subscribe {
                channel,
                conn: conn_ref,
                socket_id,
                member,
                resume: resume.map(Box::new),
            },
        );
    }

    /// The owner answered a subscription: make it Active and tell the client, or report the
    /// refusal; undo the owner's count when the connection no longer wants it.
    pub(super) fn subscription_answered(
        &mut self,
        channel: ChannelKey,
        conn_ref: ConnRef,
        user_id: Option<Arc<str>>,
        reply: SubscribeReply,
    ) {
        assert_eq!(usize::from(conn_ref.core), self.core);
        let key = conn_ref.key;
        let live = self.conns.get(key as usize).is_some_and(|conn| {
            conn.generation == conn_ref.generation && !conn.closing && !conn.dead
        });
        let position = live
            .then(|| {
                let ws = self.conns[key as usize].ws()?;
                ws.subscriptions
                    .iter()
                    .position(|s| s.channel == channel && s.state != SubState::Active)
            })
            .flatten();
        let joined = matches!(reply, SubscribeReply::Joined { .. });
        let Some(position) = position else {
            // The connection went away while the owner was counting it: undo the count.
            if joined {
                self.route_to_owner(
                    &channel.clone(),
                    ShardMessage::Unsubscribe {
                        channel,
                        user_id,
                        socket_id: None,
                    },
                );
            }
            return;
        };
        let ws = self.conns[key as usize].ws_mut().expect("checked above");
        let socket_id = ws.socket_id;
        let (presence_data, cached, channel_position, replay) = match reply {
            SubscribeReply::Refused {
                error_type,
                message,
                status,
            } => {
                let subscription = ws.subscriptions.swap_remove(position);
                if subscription.state == SubState::Pending {
                    let text =
                        outbound::subscription_error(&channel.name, error_type, &message, status);
                    self.send_text(key, &text);
                }
                return;
            }
            SubscribeReply::Joined {
                presence_data,
                cached,
                position,
                replay,
            } => (presence_data, cached, position, replay),
        };
        if ws.subscriptions[position].state == SubState::PendingCancelled {
            ws.subscriptions.swap_remove(position);
            self.route_to_owner(
                &channel.clone(),
                ShardMessage::Unsubscribe {
                    channel,
                    user_id,
                    socket_id: Some(socket_id),
                },
            );
            return;
        }
        let subscribers = self.local.entry(channel.clone()).or_default();
        let index = subscribers.len() as u32;
        subscribers.push(key);
        let subscription = &mut ws.subscriptions[position];
        subscription.state = SubState::Active;
        subscription.index = index;
        if subscription.announce {
            let joined = Joined {
                presence_data,
                cached,
                position: channel_position,
                replay,
            };
            self.announce_subscription(key, &channel, joined);
        }
    }

    /// Tells the client its subscription succeeded: `subscription_succeeded` (with the member
    /// list and the channel's position when there are), then the cached event or the resume
    /// replay.
    fn announce_subscription(&mut self, key: u32, channel: &ChannelKey, joined: Joined) {
        let reply = match joined.presence_data {
            Some(data) => outbound::presence_subscription_succeeded(&channel.name, &data),
            None => outbound::subscription_succeeded(&channel.name),
        };
        let reply = match joined.position {
            Some((epoch, seq)) => outbound::with_position(reply, epoch, seq),
            None => reply,
        };
        self.send_text(key, &reply);
        // A complete replay already holds the cached (last) event; anything else gets it.
        let replayed = joined
            .replay
            .as_ref()
            .is_some_and(|replay| replay.recovered);
        match joined.cached {
            Some(Some(frame)) if !replayed => {
                self.send_frame(key, frame);
            }
            Some(None) if !replayed => {
                self.send_text(key, &outbound::cache_miss(&channel.name));
            }
            _ => {}
        }
        if let (Some(replay), Some((epoch, seq))) = (joined.replay, joined.position) {
            self.send_replay(key, channel, replay, epoch, seq);
        }
    }

    /// A resumed subscription: the missed events, then `ringcast:resume` saying whether they
    /// were all there.
    fn send_replay(
        &mut self,
        key: u32,
        channel: &ChannelKey,
        replay: Replay,
        epoch: u64,
        seq: u64,
    ) {
        for frame in replay.frames {
            if !self.send_frame(key, frame) {
                return;
            }
        }
        let text = outbound::resume(&channel.name, replay.recovered, epoch, seq);
        self.send_text(key, &text);
    }

    /// Queues a frame under the outbound bound; false (and the connection closed as a slow
    /// consumer) when it is over.
    fn send_frame(&mut self, key: u32, frame: Bytes) -> bool {
        let queued = self.queue(key, frame);
        if !queued {
            self.close_slow_consumer(key);
        }
        queued
    }

    /// The owner answered a repeated presence subscribe: confirm it with the member list, as
    /// the first subscribe was. Dropped when the subscription is no longer the Active one it
    /// answers (the client unsubscribed meanwhile, or subscribed afresh and that subscription's
    /// own answer will announce it).
    pub(super) fn resubscribe_answered(
        &mut self,
        channel: ChannelKey,
        conn_ref: ConnRef,
        presence_data: String,
    ) {
        assert_eq!(usize::from(conn_ref.core), self.core);
        let key = conn_ref.key;
        let active = self.conns.get(key as usize).is_some_and(|conn| {
            conn.generation == conn_ref.generation
                && !conn.closing
                && !conn.dead
                && conn.ws().is_some_and(|ws| {
                    ws.subscriptions
                        .iter()
                        .any(|s| s.channel == channel && s.state == SubState::Active)
                })
        });
        if active {
            let reply = outbound::presence_subscription_succeeded(&channel.name, &presence_data);
            self.send_text(key, &reply);
        }
    }

    /// Ends one subscription of connection `key` (already removed from its list).
    pub(super) fn drop_subscription(&mut self, key: u32, subscription: Subscription) {
        // Pending ones need nothing here: the coming answer finds no matching entry in the
        // connection's list and undoes the owner's count.
        if subscription.state != SubState::Active {
            return;
        }
        self.remove_local(&subscription.channel, key, subscription.index);
        let socket_id = self.conns[key as usize].ws().map(|ws| ws.socket_id);
        let channel = subscription.channel;
        self.route_to_owner(
            &channel.clone(),
            ShardMessage::Unsubscribe {
                channel,
                user_id: subscription.user_id,
                socket_id,
            },
        );
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
                .find(|s| s.channel == *channel && s.state == SubState::Active)
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

    /// Sends an event (from REST, or a client event) to its channel's owner to be sequenced.
    pub(super) fn publish(&mut self, publish: PublishCommand) {
        let channel = publish.channel.clone();
        self.route_to_owner(
            &channel,
            ShardMessage::Publish {
                publish: Box::new(publish),
                published_us: self.now.mono_us,
            },
        );
    }
}
