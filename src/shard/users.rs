//! Signed-in users on the connection's core (spec §4.3): telling the user's owner core (the
//! owner of `user_key(app, id)`, whose registry is in `owner.rs`) that a connection signed in
//! or out, registering the connection's watchlist there, and sending the connection its first
//! `watchlist_events` once every watched user's status is in. Later online/offline changes come
//! from the owner over each watcher's `#server-to-user-{id}` channel.

use std::sync::Arc;

use super::Shard;
use crate::mesh::message::user_key;
use crate::mesh::{ConnRef, ShardMessage};
use crate::protocol::outbound;

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
