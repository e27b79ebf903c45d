//! Channels on one core, from both sides. As **owner** (`ChannelKey::owner(cores) == core`) the
//! core counts subscribers per core, keeps presence members and the cache slot, sequences
//! publishes and forwards each frame once per interested core. As **host** of connections it
//! keeps the local subscriber index and writes each delivered frame to its local subscribers.
//! Owner state is touched only on the owner core: other cores reach it only through mesh messages.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::conn::{SubState, Subscription};
use super::{Phase, Shard};
use crate::mesh::message::{CacheEntry, ChannelInfo, ChannelSummary, Member, SubscribeReply};
use crate::mesh::{ChannelKey, ConnRef, ShardMessage};
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::close_code;
use crate::protocol::outbound;
use crate::protocol::socket_id::SocketId;
use crate::webhook::WebhookKind;
use crate::ws::frame;

/// Above this many subscribers, `subscription_count` events are sent at most every
/// `SUBSCRIPTION_COUNT_INTERVAL_MS` (Pusher's rule), so a join storm is not quadratic.
const SUBSCRIPTION_COUNT_EAGER_MAX: u64 = 100;
pub(super) const SUBSCRIPTION_COUNT_INTERVAL_MS: u64 = 5_000;
/// At most one `cache_miss` webhook per channel per this interval (Pusher de-duplicates).
pub(super) const CACHE_MISS_WEBHOOK_INTERVAL_MS: u64 = 5_000;

/// What the owner knows about one occupied channel.
#[derive(Debug)]
pub(super) struct OwnedChannel {
    /// Subscribers per core (index = core).
    per_core: Box<[u32]>,
    pub(super) total: u64,
    /// Presence channels: user id → member (per user, not per connection).
    members: Option<HashMap<Arc<str>, MemberState>>,
    /// When a `subscription_count` event was last sent, and whether a newer count is owed.
    count_sent_ms: u64,
    count_owed: bool,
}

#[derive(Debug)]
struct MemberState {
    info_json: Box<str>,
    connections: u32,
}

/// The last event of a cache channel.
#[derive(Debug)]
pub(super) struct CachedEvent {
    frame: Bytes,
    data_json: Box<str>,
    expires_ms: u64,
}

impl OwnedChannel {
    pub(super) fn user_count(&self) -> u64 {
        self.members
            .as_ref()
            .map_or(0, |members| members.len() as u64)
    }
}

impl Shard {
    /// Routes work for `channel` to its owner: run it here when we own it, else mail it.
    pub(super) fn to_owner(&mut self, channel: &ChannelKey, message: ShardMessage) {
        let owner = channel.owner(self.cores);
        if owner == self.core {
            self.handle_message(self.core, message);
        } else {
            self.outbox.push(owner, message);
        }
    }

    /// Answers core `to` (here when it is this core).
    fn reply_to(&mut self, to: usize, message: ShardMessage) {
        if to == self.core {
            self.handle_message(self.core, message);
        } else {
            self.outbox.push(to, message);
        }
    }

    pub(super) fn owner_subscribe(
        &mut self,
        from: usize,
        channel: ChannelKey,
        conn: ConnRef,
        socket_id: SocketId,
        member: Option<Member>,
    ) {
        let app = self.apps.get(channel.app);
        let members_max = app.presence_members_max;
        let count_enabled = app.enable_subscription_count;
        let cores = self.cores;
        let presence = channel::kind_of(&channel.name) == ChannelKind::Presence;
        let owned = self
            .owned
            .entry(channel.clone())
            .or_insert_with(|| OwnedChannel {
                per_core: vec![0; cores].into_boxed_slice(),
                total: 0,
                members: presence.then(HashMap::new),
                count_sent_ms: 0,
                count_owed: false,
            });
        let mut added: Option<Member> = None;
        if let (Some(member), Some(members)) = (&member, owned.members.as_mut()) {
            let full = members.len() >= members_max;
            match members.get_mut(&member.user_id) {
                Some(state) => {
                    // Another connection of a known user: last writer wins, no member_added.
                    state.connections += 1;
                    state.info_json = member.info_json.clone();
                }
                None if full => {
                    if owned.total == 0 {
                        self.owned.remove(&channel);
                    }
                    let reply = SubscribeReply::Refused {
                        error_type: "LimitReached",
                        message: format!(
                            "Presence channel {} is full ({members_max} members)",
                            channel.name
                        ),
                        status: 4100,
                    };
                    let user_id = Some(Arc::clone(&member.user_id));
                    self.reply_to(
                        from,
                        ShardMessage::SubscribeOk {
                            channel,
                            conn,
                            user_id,
                            reply,
                        },
                    );
                    return;
                }
                None => {
                    members.insert(
                        Arc::clone(&member.user_id),
                        MemberState {
                            info_json: member.info_json.clone(),
                            connections: 1,
                        },
                    );
                    added = Some(member.clone());
                }
            }
        }
        owned.per_core[from] += 1;
        owned.total += 1;
        let occupied = owned.total == 1;
        let presence_data = owned.members.as_ref().map(|members| {
            outbound::presence_data(members.iter().map(|(id, m)| (&**id, &*m.info_json)))
        });
        let cached = channel::is_cache(&channel.name).then(|| self.cached_frame(&channel));
        if occupied {
            self.webhook(
                channel.app,
                WebhookKind::ChannelOccupied,
                &channel.name,
                |_| {},
            );
        }
        if matches!(cached, Some(None)) {
            self.cache_miss_webhook(&channel);
        }
        let user_id = member.map(|m| m.user_id);
        let reply = SubscribeReply::Joined {
            presence_data,
            cached,
        };
        self.reply_to(
            from,
            ShardMessage::SubscribeOk {
                channel: channel.clone(),
                conn,
                user_id,
                reply,
            },
        );
        if let Some(member) = added {
            self.webhook(
                channel.app,
                WebhookKind::MemberAdded,
                &channel.name,
                |event| {
                    event.user_id = Some(Arc::clone(&member.user_id));
                },
            );
            let text = outbound::member_added(&channel.name, &member.user_id, &member.info_json);
            self.owner_publish(
                channel.clone(),
                frame::encode_text(text.as_bytes()),
                Some(socket_id),
                None,
            );
        }
        if (count_enabled || self.has_webhooks(channel.app)) && !presence {
            self.owe_subscription_count(&channel);
        }
    }

    fn has_webhooks(&self, app: u32) -> bool {
        !self.apps.get(app).webhooks.is_empty()
    }

    /// A subscribe found an empty cache slot: one `cache_miss` webhook per channel per interval.
    fn cache_miss_webhook(&mut self, channel: &ChannelKey) {
        if !self.has_webhooks(channel.app) {
            return;
        }
        let now_ms = self.now.mono_ms;
        let recent = self
            .cache_misses
            .get(channel)
            .is_some_and(|&sent| now_ms < sent + CACHE_MISS_WEBHOOK_INTERVAL_MS);
        if recent {
            return;
        }
        self.cache_misses.insert(channel.clone(), now_ms);
        self.webhook(channel.app, WebhookKind::CacheMiss, &channel.name, |_| {});
    }

    pub(super) fn owner_unsubscribe(
        &mut self,
        from: usize,
        channel: &ChannelKey,
        user_id: Option<Arc<str>>,
        socket_id: Option<SocketId>,
    ) {
        let count_enabled = self.apps.get(channel.app).enable_subscription_count;
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
        let mut removed = None;
        if let (Some(user_id), Some(members)) = (user_id, owned.members.as_mut()) {
            let state = members
                .get_mut(&user_id)
                .expect("presence member of a counted subscription");
            state.connections -= 1;
            if state.connections == 0 {
                members.remove(&user_id);
                removed = Some(user_id);
            }
        }
        let presence = owned.members.is_some();
        let vacated = owned.total == 0;
        if let Some(user_id) = &removed {
            self.webhook(
                channel.app,
                WebhookKind::MemberRemoved,
                &channel.name,
                |event| {
                    event.user_id = Some(Arc::clone(user_id));
                },
            );
        }
        if vacated {
            self.owned.remove(channel);
            self.webhook(
                channel.app,
                WebhookKind::ChannelVacated,
                &channel.name,
                |_| {},
            );
            return;
        }
        if let Some(user_id) = removed {
            let text = outbound::member_removed(&channel.name, &user_id);
            self.owner_publish(
                channel.clone(),
                frame::encode_text(text.as_bytes()),
                socket_id,
                None,
            );
        }
        if (count_enabled || self.has_webhooks(channel.app)) && !presence {
            self.owe_subscription_count(channel);
        }
    }

    /// Sends the channel's subscription count now, or marks it owed when the channel is large
    /// and one was sent recently (the timer pays the debt).
    fn owe_subscription_count(&mut self, channel: &ChannelKey) {
        let now_ms = self.now.mono_ms;
        let Some(owned) = self.owned.get_mut(channel) else {
            return;
        };
        if owned.total > SUBSCRIPTION_COUNT_EAGER_MAX
            && now_ms < owned.count_sent_ms + SUBSCRIPTION_COUNT_INTERVAL_MS
        {
            if !owned.count_owed {
                owned.count_owed = true;
                self.counts_owed.push(channel.clone());
            }
            return;
        }
        owned.count_sent_ms = now_ms;
        owned.count_owed = false;
        let total = owned.total;
        self.send_subscription_count(channel.clone(), total);
    }

    /// The count event to subscribers (when the app enables it) and the webhook (when the app
    /// has webhook targets).
    fn send_subscription_count(&mut self, channel: ChannelKey, total: u64) {
        self.webhook(
            channel.app,
            WebhookKind::SubscriptionCount,
            &channel.name,
            |event| {
                event.subscription_count = Some(total);
            },
        );
        if self.apps.get(channel.app).enable_subscription_count {
            let text = outbound::subscription_count(&channel.name, total);
            self.owner_publish(channel, frame::encode_text(text.as_bytes()), None, None);
        }
    }

    /// Timer: sends owed subscription counts whose interval has passed.
    pub(super) fn pay_owed_counts(&mut self) {
        let now_ms = self.now.mono_ms;
        let owed = std::mem::take(&mut self.counts_owed);
        for channel in owed {
            let Some(owned) = self.owned.get_mut(&channel) else {
                continue;
            };
            if !owned.count_owed {
                continue;
            }
            if now_ms < owned.count_sent_ms + SUBSCRIPTION_COUNT_INTERVAL_MS {
                self.counts_owed.push(channel);
                continue;
            }
            owned.count_owed = false;
            owned.count_sent_ms = now_ms;
            let total = owned.total;
            self.send_subscription_count(channel, total);
        }
    }

    fn cached_frame(&mut self, channel: &ChannelKey) -> Option<Bytes> {
        let now_ms = self.now.mono_ms;
        match self.caches.get(channel) {
            Some(cached) if cached.expires_ms > now_ms => Some(cached.frame.clone()),
            Some(_) => {
                self.caches.remove(channel);
                None
            }
            None => None,
        }
    }

    /// Timer: forgets expired cache entries (they are also checked on every read).
    pub(super) fn expire_caches(&mut self) {
        let now_ms = self.now.mono_ms;
        self.caches.retain(|_, cached| cached.expires_ms > now_ms);
    }

    /// The owner sequences one event: every interested core receives the same frame, in the
    /// order the owner saw publishes, because each owner→core queue is FIFO.
    pub(super) fn owner_publish(
        &mut self,
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
        cache: Option<CacheEntry>,
    ) {
        let published_us = self.now.mono_us;
        self.owner_publish_at(channel, frame, exclude, cache, published_us);
    }

    /// `owner_publish` for an event that arrived at `published_us`.
    pub(super) fn owner_publish_at(
        &mut self,
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
        cache: Option<CacheEntry>,
        published_us: u64,
    ) {
        if let Some(entry) = cache {
            let ttl_ms = self.apps.get(channel.app).cache_ttl_secs * 1000;
            let cached = CachedEvent {
                frame: frame.clone(),
                data_json: entry.data_json,
                expires_ms: self.now.mono_ms + ttl_ms,
            };
            self.caches.insert(channel.clone(), cached);
        }
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
                        published_us,
                    },
                );
            }
        }
        if deliver_here {
            self.deliver_local(&channel, &frame, exclude, published_us);
        }
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
            if let (Some(excluded), Phase::WebSocket(ws)) = (exclude, &conn.phase) {
                if ws.socket_id == excluded {
                    continue;
                }
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
        self.to_owner(
            &channel.clone(),
            ShardMessage::Subscribe {
                channel,
                conn: conn_ref,
                socket_id,
                member,
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
                self.to_owner(
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
        let (presence_data, cached) = match reply {
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
            } => (presence_data, cached),
        };
        if ws.subscriptions[position].state == SubState::PendingCancelled {
            ws.subscriptions.swap_remove(position);
            self.to_owner(
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
        if !subscription.announce {
            return;
        }
        let reply = match presence_data {
            Some(data) => outbound::presence_subscription_succeeded(&channel.name, &data),
            None => outbound::subscription_succeeded(&channel.name),
        };
        self.send_text(key, &reply);
        match cached {
            Some(Some(frame)) => {
                if !self.queue(key, frame) {
                    self.close_slow_consumer(key);
                }
            }
            Some(None) => self.send_text(key, &outbound::cache_miss(&channel.name)),
            None => {}
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
        self.to_owner(
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

    /// Occupied channels this core owns for `app` whose name starts with `prefix` (the
    /// server-to-user channels are internal and never listed).
    pub(super) fn owned_channels(&self, app: u32, prefix: &str) -> Vec<ChannelSummary> {
        self.owned
            .iter()
            .filter(|(key, owned)| {
                key.app == app
                    && owned.total > 0
                    && key.name.starts_with(prefix)
                    && !key.name.starts_with(channel::SERVER_TO_USER_PREFIX)
            })
            .map(|(key, owned)| ChannelSummary {
                name: Arc::clone(&key.name),
                subscription_count: owned.total,
                user_count: owned.user_count(),
            })
            .collect()
    }

    /// What the owner knows about one channel, for REST.
    pub(super) fn owned_channel_info(
        &mut self,
        channel: &ChannelKey,
        with_users: bool,
    ) -> ChannelInfo {
        let now_ms = self.now.mono_ms;
        let cache = channel::is_cache(&channel.name)
            .then(|| {
                self.caches
                    .get(channel)
                    .filter(|cached| cached.expires_ms > now_ms)
            })
            .flatten()
            .map(|cached| {
                (
                    cached.data_json.clone(),
                    (cached.expires_ms - now_ms).div_ceil(1000),
                )
            });
        let Some(owned) = self.owned.get(channel) else {
            return ChannelInfo {
                users: with_users.then(Vec::new),
                cache,
                ..ChannelInfo::default()
            };
        };
        ChannelInfo {
            subscription_count: owned.total,
            user_count: owned.user_count(),
            users: with_users.then(|| {
                let mut ids: Vec<Arc<str>> = owned
                    .members
                    .iter()
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                ids.sort();
                ids
            }),
            cache,
        }
    }

    /// Publishes a pre-framed event on `channel` (from REST, or from a client event).
    pub(super) fn publish(
        &mut self,
        channel: ChannelKey,
        frame: Bytes,
        exclude: Option<SocketId>,
        cache: Option<CacheEntry>,
    ) {
        self.to_owner(
            &channel.clone(),
            ShardMessage::Publish {
                channel,
                frame,
                exclude,
                cache,
                published_us: self.now.mono_us,
            },
        );
    }
}
