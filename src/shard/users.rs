//! Signed-in users across cores: the online registry and watchlists (spec §4.3). Each user's
//! entry lives on the owner of `user_key(app, id)`: how many connections are signed in as the
//! user, and which users watch them. Online/offline changes go to each watcher's
//! `#server-to-user-{id}` channel, so they reach every signed-in connection of the watcher.

use std::collections::HashMap;
use std::sync::Arc;

use super::Shard;
use crate::mesh::message::user_key;
use crate::mesh::{ChannelKey, ConnRef, ShardMessage};
use crate::protocol::channel::SERVER_TO_USER_PREFIX;
use crate::protocol::outbound;
use crate::ws::frame;

/// One user's entry on its owner core.
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    connections: u32,
    /// Watcher user id → how many of the watcher's connections declared this user.
    watchers: HashMap<Arc<str>, u32>,
}

/// A connection's watchlist while its initial status is being gathered, and afterwards.
#[derive(Debug, Default)]
pub struct Watchlist {
    pub watched: Vec<Arc<str>>,
    pending: usize,
    online: Vec<Arc<str>>,
    offline: Vec<Arc<str>>,
}

impl Shard {
    fn route_to_user_owner(&mut self, app: u32, user_id: &str, message: ShardMessage) {
        let key = user_key(app, user_id);
        self.route_to_owner(&key, message);
    }

    /// A connection signed in as `user_id` with `watched` users.
    pub(super) fn user_signed_in(
        &mut self,
        key: u32,
        app: u32,
        user_id: Arc<str>,
        watched: Vec<Arc<str>>,
    ) {
        self.route_to_user_owner(
            app,
            &user_id.clone(),
            ShardMessage::UserOnline {
                app,
                user_id: Arc::clone(&user_id),
            },
        );
        if watched.is_empty() {
            return;
        }
        let conn = self.conn_ref(key);
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        ws.watchlist = Some(Box::new(Watchlist {
            watched: watched.clone(),
            pending: watched.len(),
            ..Watchlist::default()
        }));
        for target in watched {
            let message = ShardMessage::Watch {
                app,
                watcher: Arc::clone(&user_id),
                watched: Arc::clone(&target),
                conn,
            };
            self.route_to_user_owner(app, &target, message);
        }
    }

    /// A signed-in connection is gone: the user may go offline, and its watches end.
    pub(super) fn user_signed_out(
        &mut self,
        app: u32,
        user_id: Arc<str>,
        watchlist: Option<Box<Watchlist>>,
    ) {
        for watched in watchlist.map(|w| w.watched).unwrap_or_default() {
            let message = ShardMessage::Unwatch {
                app,
                watcher: Arc::clone(&user_id),
                watched: Arc::clone(&watched),
            };
            self.route_to_user_owner(app, &watched, message);
        }
        let message = ShardMessage::UserOffline {
            app,
            user_id: Arc::clone(&user_id),
        };
        self.route_to_user_owner(app, &user_id, message);
    }

    /// Owner side: counts a connection in or out, and tells watchers about 0↔1 transitions.
    pub(super) fn owner_user_presence(&mut self, app: u32, user_id: Arc<str>, online: bool) {
        let key = (app, Arc::clone(&user_id));
        let entry = self.users.entry(key.clone()).or_default();
        let changed = if online {
            entry.connections += 1;
            entry.connections == 1
        } else {
            assert!(entry.connections > 0, "user connection count underflow");
            entry.connections -= 1;
            entry.connections == 0
        };
        let watchers: Vec<Arc<str>> = if changed {
            entry.watchers.keys().cloned().collect()
        } else {
            Vec::new()
        };
        if entry.connections == 0 && entry.watchers.is_empty() {
            self.users.remove(&key);
        }
        if !self.apps.get(app).enable_watchlist_events {
            return;
        }
        let ids = [&*user_id];
        let text = if online {
            outbound::watchlist_events(&ids, &[])
        } else {
            outbound::watchlist_events(&[], &ids)
        };
        let frame = frame::encode_text(text.as_bytes());
        for watcher in watchers {
            let channel = ChannelKey::new(app, &format!("{SERVER_TO_USER_PREFIX}{watcher}"));
            self.publish(channel, frame.clone(), None, None);
        }
    }

    /// Owner side: a watcher connection registers interest and learns the current status.
    pub(super) fn owner_watch(
        &mut self,
        from: usize,
        app: u32,
        watcher: Arc<str>,
        watched: Arc<str>,
        conn: ConnRef,
    ) {
        let entry = self.users.entry((app, Arc::clone(&watched))).or_default();
        *entry.watchers.entry(watcher).or_default() += 1;
        let online = entry.connections > 0;
        let reply = ShardMessage::WatchStatus {
            conn,
            watched,
            online,
        };
        if from == self.core {
            self.handle_message(from, reply);
        } else {
            self.outbox.push(from, reply);
        }
    }

    pub(super) fn owner_unwatch(&mut self, app: u32, watcher: Arc<str>, watched: Arc<str>) {
        let key = (app, watched);
        let Some(entry) = self.users.get_mut(&key) else {
            return;
        };
        if let Some(count) = entry.watchers.get_mut(&watcher) {
            *count -= 1;
            if *count == 0 {
                entry.watchers.remove(&watcher);
            }
        }
        if entry.connections == 0 && entry.watchers.is_empty() {
            self.users.remove(&key);
        }
    }

    /// Connection side: one watched user's status; once all are in, one
    /// `pusher_internal:watchlist_events` with the online and offline lists.
    pub(super) fn watch_status(&mut self, conn: ConnRef, watched: Arc<str>, online: bool) {
        let key = conn.key;
        let live = self
            .conns
            .get(key as usize)
            .is_some_and(|c| c.generation == conn.generation && !c.closing && !c.dead);
        if !live {
            return;
        }
        let enabled = self.conns[key as usize]
            .ws()
            .is_some_and(|ws| self.apps.get(ws.app).enable_watchlist_events);
        let Some(ws) = self.conns[key as usize].ws_mut() else {
            return;
        };
        let Some(watchlist) = ws.watchlist.as_mut() else {
            return;
        };
        if watchlist.pending == 0 {
            return;
        }
        watchlist.pending -= 1;
        if online {
            watchlist.online.push(watched);
        } else {
            watchlist.offline.push(watched);
        }
        if watchlist.pending > 0 || !enabled {
            return;
        }
        let online: Vec<Arc<str>> = std::mem::take(&mut watchlist.online);
        let offline: Vec<Arc<str>> = std::mem::take(&mut watchlist.offline);
        let online: Vec<&str> = online.iter().map(|id| &**id).collect();
        let offline: Vec<&str> = offline.iter().map(|id| &**id).collect();
        let text = outbound::watchlist_events(&online, &offline);
        self.send_text(key, &text);
    }
}
