//! The WebSocket side of a connection on its home core: completing the upgrade and validating
//! the app (in-band errors, spec §1.1), decoding frames, answering pings, dispatching Pusher
//! events, the activity ping, and the close handshake. Channel bookkeeping is in `channels.rs`.

use bytes::Bytes;

use super::Shard;
use super::conn::{Phase, SubState, WsState};
use crate::http::request::Request;
use crate::http::signature;
use crate::limits;
use std::sync::Arc;

use super::apps::ConnectRefusal;
use crate::mesh::message::{Member, PublishCommand};
use crate::mesh::{ChannelKey, ShardMessage};
use crate::metrics::{self, CoreMetrics};
use crate::protocol::channel::{self, ChannelKind, ChannelNameError};
use crate::protocol::close_code::{self, CloseCode};
use crate::protocol::envelope::{self, ClientMessage, ResumeAfter};
use crate::protocol::outbound;
use crate::webhook::WebhookKind;
use crate::ws::frame::{self, Decoder, Message};
use crate::ws::handshake;

impl Shard {
    /// Completes a WebSocket upgrade on any path, then validates path, app and protocol version
    /// in-band (browsers cannot read the status of a failed upgrade, spec §1.1).
    pub(super) fn upgrade(&mut self, key: u32, request: &Request, leftover: Vec<u8>) {
        let headers: Vec<(&str, &[u8])> = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        let response =
            match handshake::accept(&request.method_text, request.version_minor, &headers) {
                Ok(response) => response,
                Err(error) => {
                    let extra: &[(&str, &str)] = if error.status == 426 {
                        &[("Sec-WebSocket-Version", "13")]
                    } else {
                        &[]
                    };
                    self.respond_error(key, error.status, error.message, false, extra);
                    return;
                }
            };
        self.queue_always(key, Bytes::from(response));
        if self.conns[key as usize].dead {
            return;
        }
        self.core_metrics()
            .http_call(crate::metrics::Endpoint::Upgrade, 101);
        let now = self.now;
        let ws = WsState {
            app: 0,
            socket_id: self.socket_ids.next_id(),
            decoder: Decoder::new(self.config.server.ws_message_bytes_max),
            subscriptions: Vec::new(),
            last_seen_ms: now.mono_ms,
            partial_since: None,
            ping_sent_ms: None,
            counted: false,
            user_id: None,
            user_info_json: None,
            watchlist: None,
            auth_deadline_ms: 0,
            client_events_window_ms: 0,
            client_events_in_window: 0,
        };
        self.conns[key as usize].phase = Phase::WebSocket(Box::new(ws));
        match self.admit(key, request) {
            Ok(()) => {}
            Err(Refusal::Fixed(close)) => return self.close_ws(key, close, true),
            Err(Refusal::UnknownApp(message)) => {
                return self.close_ws_with(key, close_code::APP_NOT_FOUND, &message, true);
            }
        }
        let ws = self.conns[key as usize].ws().expect("just upgraded");
        let established = outbound::connection_established(
            ws.socket_id,
            self.config.server.activity_timeout_secs,
        );
        self.queue_always(key, frame::encode_text(established.as_bytes()));
        if !leftover.is_empty() {
            self.process_ws(key, &leftover);
        }
    }

    /// Path, app key, app state, protocol version and the app's connection quota.
    fn admit(&mut self, key: u32, request: &Request) -> Result<(), Refusal> {
        if self.conns[key as usize].over_capacity {
            // Accepted on the spare descriptor: the process is out of descriptors, whatever the
            // request asks for.
            self.core_metrics().reject(metrics::REJECT_DESCRIPTOR_LIMIT);
            return Err(Refusal::Fixed(close_code::OVER_CAPACITY_CLOSE));
        }
        let app_key = request
            .path
            .strip_prefix("/app/")
            .filter(|k| !k.is_empty() && !k.contains('/'));
        let Some(app_key) = app_key else {
            return Err(Refusal::Fixed(close_code::PATH_NOT_FOUND_CLOSE));
        };
        if self.control.is_draining() {
            self.core_metrics().reject(metrics::REJECT_DRAINING);
            return Err(Refusal::Fixed(close_code::SERVER_CLOSING));
        }
        let Some(app) = self.apps.by_key(app_key) else {
            return Err(Refusal::UnknownApp(format!(
                "App key {app_key} does not exist."
            )));
        };
        if !self.apps.get(app).enabled {
            return Err(Refusal::Fixed(close_code::APP_DISABLED_CLOSE));
        }
        let query = signature::parse_query(&request.query);
        if let Some((_, version)) = query.iter().find(|(name, _)| name == "protocol") {
            match version.parse::<u32>() {
                Ok(4..=7) => {}
                _ => return Err(Refusal::Fixed(close_code::UNSUPPORTED_PROTOCOL_CLOSE)),
            }
        }
        let app_config = self.apps.get(app);
        if !app_config.allowed_origins.is_empty() {
            let origin = request
                .header("origin")
                .and_then(|o| std::str::from_utf8(o).ok())
                .unwrap_or("");
            if !app_config
                .allowed_origins
                .iter()
                .any(|allowed| allowed == "*" || allowed == origin)
            {
                self.core_metrics().reject(metrics::REJECT_ORIGIN);
                return Err(Refusal::Fixed(CloseCode {
                    code: close_code::UNAUTHORIZED,
                    message: "Origin not allowed",
                }));
            }
        }
        let auth_deadline_ms = if app_config.enable_user_authentication {
            self.now.mono_ms + app_config.user_authentication_timeout_ms
        } else {
            0
        };
        if !self.take_accept_token() {
            self.core_metrics().reject(metrics::REJECT_ACCEPT_RATE);
            return Err(Refusal::Fixed(close_code::OVER_CAPACITY_CLOSE));
        }
        match self.apps.try_connect(app) {
            Ok(()) => {}
            Err(ConnectRefusal::OverCapacity) => {
                self.core_metrics().reject(metrics::REJECT_OVER_CAPACITY);
                return Err(Refusal::Fixed(close_code::OVER_CAPACITY_CLOSE));
            }
            Err(ConnectRefusal::AppQuota) => {
                self.core_metrics().reject(metrics::REJECT_APP_QUOTA);
                return Err(Refusal::Fixed(close_code::APP_OVER_QUOTA_CLOSE));
            }
        }
        let core_metrics = self.core_metrics();
        CoreMetrics::add(&core_metrics.new_connections, 1);
        CoreMetrics::add(&core_metrics.connected, 1);
        let ws = self.conns[key as usize].ws_mut().expect("upgraded");
        ws.app = app;
        ws.counted = true;
        ws.auth_deadline_ms = auth_deadline_ms;
        Ok(())
    }

    pub(super) fn process_ws(&mut self, key: u32, data: &[u8]) {
        let now = self.now;
        let mut messages = Vec::new();
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        let held_before = ws.decoder.buffered_bytes();
        let result = ws.decoder.feed(data, &mut messages);
        let held_after = ws.decoder.buffered_bytes();
        ws.last_seen_ms = now.mono_ms;
        ws.ping_sent_ms = None;
        // A unit the decoder had not started before this input started now.
        ws.partial_since = match (ws.decoder.partial(), ws.partial_since) {
            (None, _) => None,
            (Some(unit), Some((seen, since))) if unit == seen => Some((seen, since)),
            (Some(unit), _) => Some((unit, now.mono_ms)),
        };
        // Accounted before any message is handled: a close on the way releases what the
        // decoder then holds (`release_connection_state`).
        self.ws_partial_bytes = self.ws_partial_bytes + held_after - held_before;
        let over_budget = held_after > held_before
            && self.ws_partial_bytes > self.config.server.ws_partial_bytes_per_core_max;
        for message in messages {
            if self.conns[key as usize].closing {
                return;
            }
            self.handle_ws_message(key, message);
        }
        if let Err(error) = result {
            let close = CloseCode {
                code: error.close_code,
                message: error.reason,
            };
            self.close_ws(key, close, false);
        } else if over_budget {
            // The connection whose message grew past the core's budget goes, not the others
            // that were within it before (counted with the other closes, by code).
            self.close_ws(key, close_code::PARTIAL_BUDGET_CLOSE, false);
        }
    }

    fn handle_ws_message(&mut self, key: u32, message: Message) {
        match message {
            Message::Text(text) => {
                CoreMetrics::add(&self.core_metrics().ws_messages_received, 1);
                self.handle_pusher(key, &text);
            }
            // Not part of the protocol; like soketi, treat valid UTF-8 JSON as if it were text.
            Message::Binary(bytes) => {
                if std::str::from_utf8(&bytes).is_ok() {
                    self.handle_pusher(key, &bytes);
                }
            }
            Message::Ping(payload) => {
                self.queue_always(key, frame::encode_pong(&payload));
            }
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                // Echo the peer's code (RFC 6455 §5.5.1) and finish the close handshake.
                let code = code.unwrap_or(frame::CLOSE_NORMAL);
                self.queue_always(key, frame::encode_close(code, ""));
                self.core_metrics().close(code);
                self.begin_close(key);
            }
        }
    }

    fn handle_pusher(&mut self, key: u32, text: &[u8]) {
        let message = match envelope::parse(text) {
            Ok(message) => message,
            Err(error) => {
                self.send_text(key, &outbound::error(None, error.message));
                return;
            }
        };
        match message {
            ClientMessage::Ping => self.send_text(key, outbound::PONG),
            ClientMessage::Pong | ClientMessage::Unknown { .. } => {}
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
                resume_after,
            } => {
                let credentials = (auth.as_deref(), channel_data.as_deref());
                self.subscribe(key, &channel, credentials, resume_after);
            }
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(key, &channel),
            ClientMessage::Signin { auth, user_data } => self.signin(key, &auth, &user_data),
            ClientMessage::ClientEvent {
                event,
                channel,
                data_json,
            } => self.client_event(key, &event, &channel, &data_json),
        }
    }

    fn subscribe(
        &mut self,
        key: u32,
        name: &str,
        (auth, channel_data): (Option<&str>, Option<&str>),
        resume_after: Option<ResumeAfter>,
    ) {
        let kind = match channel::validate(name, self.config.server.channel_name_bytes_max) {
            Ok(kind) => kind,
            Err(error) => {
                let error_type = if error == ChannelNameError::TooLong {
                    "LimitReached"
                } else {
                    "InvalidChannel"
                };
                self.send_text(
                    key,
                    &outbound::subscription_error(
                        name,
                        error_type,
                        error.message(),
                        close_code::UNAUTHORIZED,
                    ),
                );
                return;
            }
        };
        let member = match self.authorize(key, name, kind, auth, channel_data) {
            Ok(member) => member,
            Err(refusal) => {
                let text = outbound::subscription_error(
                    name,
                    refusal.error_type,
                    &refusal.message,
                    refusal.status,
                );
                self.send_text(key, &text);
                return;
            }
        };
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        if kind != ChannelKind::Public {
            // A successful authorization counts as authenticating the connection.
            ws.auth_deadline_ms = 0;
        }
        if let Some(existing) = ws
            .subscriptions
            .iter_mut()
            .find(|s| &*s.channel.name == name)
        {
            // Idempotent (spec §2.2 step 4): no double count and no `member_added`, but the
            // client gets its confirmation again, in the same form as the first one (soketi).
            existing.announce = true;
            match existing.state {
                // A presence confirmation carries the member list (pusher-js reads
                // `presence.hash` from it), which only the channel's owner knows.
                SubState::Active if kind == ChannelKind::Presence => {
                    let channel = existing.channel.clone();
                    let conn = self.conn_ref(key);
                    self.route_to_owner(
                        &channel.clone(),
                        ShardMessage::Resubscribe { channel, conn },
                    );
                }
                SubState::Active => self.send_text(key, &outbound::subscription_succeeded(name)),
                // The owner's answer to the first subscribe confirms both, once.
                SubState::Pending => {}
                SubState::PendingCancelled => existing.state = SubState::Pending,
            }
            return;
        }
        if ws.subscriptions.len() >= limits::SUBSCRIPTIONS_PER_CONNECTION_MAX {
            // Hosted Pusher has no such limit, so there is no frame of its to copy: this is the
            // spec's soketi form (§2.5) with the type and status of the other client-caused
            // channel limit there (a name too long: `LimitReached`, 4009), and a message that
            // names the bound. The connection stays open and its other channels stay joined.
            let message = format!(
                "Too many channels on one connection (at most {})",
                limits::SUBSCRIPTIONS_PER_CONNECTION_MAX
            );
            self.send_text(
                key,
                &outbound::subscription_error(
                    name,
                    "LimitReached",
                    &message,
                    close_code::UNAUTHORIZED,
                ),
            );
            return;
        }
        let app = ws.app;
        self.start_subscription(key, ChannelKey::new(app, name), member, true, resume_after);
    }

    /// Checks the right to join `name` (spec §2.3); presence channels also yield the member.
    fn authorize(
        &self,
        key: u32,
        name: &str,
        kind: ChannelKind,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<Option<Member>, SubscribeRefusal> {
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        let app = self.apps.get(ws.app);
        let socket_id = ws.socket_id.to_string();
        match kind {
            ChannelKind::Public => Ok(None),
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                check_channel_auth(auth, &app.key, &app.secret, &format!("{socket_id}:{name}"))
                    .map_err(SubscribeRefusal::auth)?;
                Ok(None)
            }
            ChannelKind::ServerToUser => {
                let user = &name[channel::SERVER_TO_USER_PREFIX.len()..];
                match &ws.user_id {
                    Some(signed_in) if &**signed_in == user => Ok(None),
                    _ => Err(SubscribeRefusal::auth(format!(
                        "Connection is not signed in as user {user}, required for {name}"
                    ))),
                }
            }
            ChannelKind::Presence => {
                let Some(channel_data) = channel_data else {
                    // Signed-in connections may omit channel_data: they join as their user.
                    let Some(user_id) = ws.user_id.clone() else {
                        return Err(SubscribeRefusal::auth(format!(
                            "channel_data is required to subscribe to {name}"
                        )));
                    };
                    check_channel_auth(auth, &app.key, &app.secret, &format!("{socket_id}:{name}"))
                        .map_err(SubscribeRefusal::auth)?;
                    let info_json = ws.user_info_json.clone().unwrap_or_else(|| "null".into());
                    return Ok(Some(Member { user_id, info_json }));
                };
                check_channel_auth(
                    auth,
                    &app.key,
                    &app.secret,
                    &format!("{socket_id}:{name}:{channel_data}"),
                )
                .map_err(SubscribeRefusal::auth)?;
                let member = parse_member(channel_data).map_err(SubscribeRefusal::auth)?;
                if member.user_id.len() > app.presence_user_id_bytes_max {
                    return Err(SubscribeRefusal::limit(
                        format!(
                            "user_id is longer than {} characters",
                            app.presence_user_id_bytes_max
                        ),
                        close_code::UNAUTHORIZED,
                    ));
                }
                if member.info_json.len() > app.presence_user_info_bytes_max {
                    return Err(SubscribeRefusal::limit(
                        format!(
                            "user_info is larger than {} bytes",
                            app.presence_user_info_bytes_max
                        ),
                        close_code::CLIENT_EVENT_REJECTED,
                    ));
                }
                Ok(Some(member))
            }
        }
    }

    /// `pusher:signin` (spec §4.1): verify, remember the user, answer, and join the user's
    /// `#server-to-user-{id}` channel so `sendToUser` reaches every signed-in connection.
    fn signin(&mut self, key: u32, auth: &str, user_data: &str) {
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        let app = self.apps.get(ws.app);
        let string_to_sign = format!("{}::user::{user_data}", ws.socket_id);
        let verified = check_channel_auth(Some(auth), &app.key, &app.secret, &string_to_sign)
            .map_err(|_| "Invalid signature for pusher:signin".to_string())
            .and_then(|()| parse_user_data(user_data, self.config.server.channel_name_bytes_max));
        let user = match verified {
            Ok(user) => user,
            Err(message) => {
                return self.close_ws_with(key, close_code::UNAUTHORIZED, &message, true);
            }
        };
        if ws
            .user_id
            .as_deref()
            .is_some_and(|current| current != &*user.id)
        {
            let message = "Connection is already signed in as a different user";
            return self.close_ws_with(key, close_code::UNAUTHORIZED, message, true);
        }
        let app_index = ws.app;
        let watchlist_max = app.watchlist_max;
        let first_signin = ws.user_id.is_none();
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        ws.user_id = Some(Arc::clone(&user.id));
        ws.user_info_json = user.info_json;
        ws.auth_deadline_ms = 0;
        self.send_text(key, &outbound::signin_success(user_data));
        if user.watchlist.len() > watchlist_max {
            let message = format!(
                "Watchlist limit exceeded. Only the first {watchlist_max} user IDs are accepted."
            );
            self.send_text(
                key,
                &outbound::error(Some(close_code::WATCHLIST_LIMIT), &message),
            );
        }
        let channel_name = format!("{}{}", channel::SERVER_TO_USER_PREFIX, user.id);
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        if !ws
            .subscriptions
            .iter()
            .any(|s| *s.channel.name == *channel_name)
        {
            let channel = ChannelKey::new(app_index, &channel_name);
            self.start_subscription(key, channel, None, false, None);
        }
        if first_signin {
            let mut watched = user.watchlist;
            watched.truncate(watchlist_max);
            self.user_signed_in(key, app_index, user.id, watched);
        }
    }

    /// Why a client event may not be relayed (spec §3): the `pusher:error` code and message.
    fn client_event_refusal(
        &self,
        key: u32,
        event: &str,
        name: &str,
        data_json: &str,
    ) -> Option<(Option<u16>, String)> {
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        let app = self.apps.get(ws.app);
        if !app.enable_client_events {
            Some((
                Some(close_code::CLIENT_EVENT_REJECTED),
                "The app does not have client messaging enabled.".to_string(),
            ))
        } else if !matches!(
            channel::kind_of(name),
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        ) {
            Some((
                None,
                "Client event rejected - only supported on private and presence channels"
                    .to_string(),
            ))
        } else if !ws
            .subscriptions
            .iter()
            .any(|s| &*s.channel.name == name && s.state == SubState::Active)
        {
            Some((
                None,
                format!(
                    "Cannot broadcast client event (connection not subscribed to channel {name})"
                ),
            ))
        } else if self.control.frozen || !self.control.primary {
            // A planned switchover froze publishes, or this node stepped down and its clients
            // are being moved: the event would reach only part of the channel, never the
            // history the new primary keeps.
            Some((
                None,
                "Client event rejected - the server is handing over to another node, retry \
                 after reconnecting"
                    .to_string(),
            ))
        } else if event.len() > app.event_name_bytes_max {
            Some((
                Some(close_code::CLIENT_EVENT_REJECTED),
                format!(
                    "Client event name is longer than {} bytes",
                    app.event_name_bytes_max
                ),
            ))
        } else if data_json.len() > app.payload_bytes_max {
            Some((
                Some(close_code::CLIENT_EVENT_REJECTED),
                format!(
                    "Client event data is larger than {} bytes",
                    app.payload_bytes_max
                ),
            ))
        } else {
            None
        }
    }

    /// A `client-*` event (spec §3): checked, rate limited, relayed to the channel's other
    /// subscribers through the channel's owner.
    fn client_event(&mut self, key: u32, event: &str, name: &str, data_json: &str) {
        let now_ms = self.now.mono_ms;
        if let Some((code, message)) = self.client_event_refusal(key, event, name, data_json) {
            return self.send_text(key, &outbound::channel_error(name, code, &message));
        }
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        let app = self.apps.get(ws.app);
        let rate_max = app.client_events_per_sec_max;
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        if now_ms >= ws.client_events_window_ms + 1000 {
            ws.client_events_window_ms = now_ms;
            ws.client_events_in_window = 0;
        }
        ws.client_events_in_window += 1;
        if ws.client_events_in_window > rate_max {
            return self.send_text(
                key,
                &outbound::channel_error(
                    name,
                    Some(close_code::CLIENT_EVENT_REJECTED),
                    "Client event rejected due to rate limit",
                ),
            );
        }
        let subscription = ws
            .subscriptions
            .iter()
            .find(|s| &*s.channel.name == name && s.state == SubState::Active)
            .expect("checked above");
        let channel = subscription.channel.clone();
        let exclude = Some(ws.socket_id);
        let (app, user_id) = (ws.app, subscription.user_id.clone());
        let webhook_user_id = user_id.clone();
        let queues = (&*self.webhooks, self.core);
        let unix_ms = self.now.unix_ms;
        let kind = WebhookKind::ClientEvent;
        super::queue_webhook(
            &self.apps,
            queues,
            unix_ms,
            app,
            kind,
            &channel.name,
            |webhook| {
                webhook.event = Some(event.into());
                webhook.data_json = Some(data_json.into());
                webhook.socket_id = exclude.map(|id| id.to_string().into_boxed_str());
                webhook.user_id = webhook_user_id;
            },
        );
        self.publish(PublishCommand {
            channel,
            event: Arc::from(event),
            data: Arc::from(data_json),
            exclude,
            user_id,
            published_ms: self.now.unix_ms,
            cache: false,
            client: true,
        });
    }

    /// REST `terminate_connections`: closes this core's connections signed in as the user.
    pub(super) fn terminate_user(&mut self, app: u32, user_id: &str) {
        let keys: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, conn)| !conn.closing && !conn.dead)
            .filter(|(_, conn)| {
                conn.ws()
                    .is_some_and(|ws| ws.app == app && ws.user_id.as_deref() == Some(user_id))
            })
            .map(|(key, _)| key as u32)
            .collect();
        for key in keys {
            self.close_ws_with(
                key,
                close_code::UNAUTHORIZED,
                "You got disconnected by the app.",
                true,
            );
        }
    }

    pub(super) fn send_ping(&mut self, key: u32) {
        let now = self.now;
        if let Some(ws) = self.conns[key as usize].ws_mut() {
            ws.ping_sent_ms = Some(now.mono_ms);
            self.send_text(key, outbound::PING);
        }
    }

    /// Sends a Pusher text message, closing the connection as a slow consumer when its queue is
    /// over the bound.
    pub(super) fn send_text(&mut self, key: u32, text: &str) {
        if !self.queue(key, frame::encode_text(text.as_bytes())) {
            self.close_slow_consumer(key);
        }
    }

    /// Queues regardless of the outbound bound: handshakes, pongs and close frames are small and
    /// must not be lost to the bound that protects the process from fan-out backlogs.
    ///
    /// Still bounded: a peer that keeps asking (pings, pipelined requests) without reading
    /// the answers is dropped once its queue passes twice `outbound_bytes_max`.
    pub(super) fn queue_always(&mut self, key: u32, bytes: Bytes) {
        let hard_limit = 2 * self.config.server.outbound_bytes_max;
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return;
        }
        conn.out_bytes += bytes.len();
        conn.out.push_back(bytes);
        if conn.out_bytes > hard_limit {
            CoreMetrics::add(&self.core_metrics().slow_consumer_closes, 1);
            self.core_metrics().close(close_code::SLOW_CONSUMER);
            self.reset(key);
            return;
        }
        self.mark_dirty(key);
    }

    /// Closes a WebSocket connection with a Pusher code: `pusher:error` first when `with_error`
    /// (pusher-js acts on it during the handshake), then the close frame, then the close
    /// handshake.
    pub(super) fn close_ws(&mut self, key: u32, close: CloseCode, with_error: bool) {
        self.close_ws_with(key, close.code, close.message, with_error);
    }

    pub(super) fn close_ws_with(&mut self, key: u32, code: u16, message: &str, with_error: bool) {
        let conn = &self.conns[key as usize];
        if conn.closing || conn.dead {
            return;
        }
        if with_error {
            let error = outbound::error(Some(code), message);
            self.queue_always(key, frame::encode_text(error.as_bytes()));
        }
        self.queue_always(key, frame::encode_close(code, message));
        self.core_metrics().close(code);
        self.begin_close(key);
    }
}

/// Why a subscription is refused: the `pusher:subscription_error` fields.
struct SubscribeRefusal {
    error_type: &'static str,
    message: String,
    status: u16,
}

impl SubscribeRefusal {
    fn auth(message: String) -> SubscribeRefusal {
        SubscribeRefusal {
            error_type: "AuthError",
            message,
            status: 401,
        }
    }

    fn limit(message: String, status: u16) -> SubscribeRefusal {
        SubscribeRefusal {
            error_type: "LimitReached",
            message,
            status,
        }
    }
}

/// A user id as the protocol types it: a string; numbers (Laravel sends them) become their
/// decimal text (spec §2.6).
fn user_id_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Decodes a verified presence `channel_data`: `{"user_id": String|Number, "user_info"?: any}`.
fn parse_member(channel_data: &str) -> Result<Member, String> {
    #[derive(serde::Deserialize)]
    struct ChannelData<'a> {
        user_id: serde_json::Value,
        #[serde(borrow, default)]
        user_info: Option<&'a serde_json::value::RawValue>,
    }
    if !channel_data.trim_start().starts_with('{') {
        return Err("channel_data is not a JSON object with a user_id".to_string());
    }
    let data: ChannelData = serde_json::from_str(channel_data)
        .map_err(|_| "channel_data is not a JSON object with a user_id".to_string())?;
    let user_id = user_id_text(&data.user_id)
        .ok_or_else(|| "channel_data.user_id must be a non-empty string or a number".to_string())?;
    Ok(Member {
        user_id: Arc::from(user_id),
        info_json: data
            .user_info
            .map_or_else(|| "null".into(), |raw| raw.get().into()),
    })
}

/// A verified `pusher:signin` user.
struct SignedUser {
    id: Arc<str>,
    info_json: Option<Box<str>>,
    watchlist: Vec<Arc<str>>,
}

/// Decodes a verified signin `user_data`: `{"id": String, "user_info"?: any, "watchlist"?: [ids]}`.
fn parse_user_data(user_data: &str, id_bytes_max: usize) -> Result<SignedUser, String> {
    #[derive(serde::Deserialize)]
    struct UserData<'a> {
        id: serde_json::Value,
        #[serde(borrow, default)]
        user_info: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        watchlist: Vec<serde_json::Value>,
    }
    if !user_data.trim_start().starts_with('{') {
        return Err("user_data is not a JSON object with an id".to_string());
    }
    let data: UserData = serde_json::from_str(user_data)
        .map_err(|_| "user_data is not a JSON object with an id".to_string())?;
    let id = user_id_text(&data.id)
        .ok_or_else(|| "user_data.id must be a non-empty string".to_string())?;
    if channel::validate(&id, id_bytes_max).is_err() {
        return Err("user_data.id contains characters that are not allowed".to_string());
    }
    Ok(SignedUser {
        id: Arc::from(id),
        info_json: data.user_info.map(|raw| raw.get().into()),
        watchlist: data
            .watchlist
            .iter()
            .filter_map(user_id_text)
            .map(Arc::from)
            .collect(),
    })
}

/// Why an upgraded connection is turned away.
enum Refusal {
    Fixed(CloseCode),
    /// 4001, with a message that names the key.
    UnknownApp(String),
}

/// Checks a channel auth string `key:hex` against HMAC-SHA256(secret, string_to_sign) in
/// constant time (spec §2.3). The error is the message for the subscription error.
pub(super) fn check_channel_auth(
    auth: Option<&str>,
    app_key: &str,
    app_secret: &str,
    string_to_sign: &str,
) -> Result<(), String> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or_else(|| {
        let channel = string_to_sign.split(':').nth(1).unwrap_or_default();
        format!("Auth info required to subscribe to {channel}")
    })?;
    let Some((key, signature)) = auth.split_once(':') else {
        return Err(
            "Auth value for subscription is invalid: should be of format 'key:signature'"
                .to_string(),
        );
    };
    if key != app_key {
        return Err(format!("Invalid key in subscription auth data: '{key}'"));
    }
    let expected = signature::hmac_sha256_hex(app_secret, string_to_sign);
    if !signature::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(format!(
            "Invalid signature: Expected HMAC SHA256 hex digest of {string_to_sign}, but got {signature}"
        ));
    }
    Ok(())
}
