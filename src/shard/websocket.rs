//! The WebSocket side of a connection on its home core: completing the upgrade and validating
//! the app (in-band errors, spec §1.1), decoding frames, answering pings, dispatching Pusher
//! events, the activity ping, and the close handshake. Channel bookkeeping is in `channels.rs`.

use bytes::Bytes;

use super::Shard;
use super::conn::{Phase, SubState, WsState};
use crate::http::request::Request;
use crate::http::signature;
use crate::limits;
use crate::mesh::ChannelKey;
use crate::protocol::channel::{self, ChannelKind, ChannelNameError};
use crate::protocol::close_code::{self, CloseCode};
use crate::protocol::envelope::{self, ClientMessage};
use crate::protocol::outbound;
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
        let response = match handshake::accept(&request.method_text, &headers) {
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
        let now = self.now;
        let ws = WsState {
            app: 0,
            socket_id: self.socket_ids.next_id(),
            decoder: Decoder::new(self.config.server.ws_message_bytes_max),
            subscriptions: Vec::new(),
            last_seen_ms: now.mono_ms,
            ping_sent_ms: None,
            counted: false,
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
        let app_key = request
            .path
            .strip_prefix("/app/")
            .filter(|k| !k.is_empty() && !k.contains('/'));
        let Some(app_key) = app_key else {
            return Err(Refusal::Fixed(close_code::PATH_NOT_FOUND_CLOSE));
        };
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
        if !self.apps.try_connect(app) {
            return Err(Refusal::Fixed(close_code::APP_OVER_QUOTA_CLOSE));
        }
        let ws = self.conns[key as usize].ws_mut().expect("upgraded");
        ws.app = app;
        ws.counted = true;
        Ok(())
    }

    pub(super) fn process_ws(&mut self, key: u32, data: &[u8]) {
        let now = self.now;
        let mut messages = Vec::new();
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        let result = ws.decoder.feed(data, &mut messages);
        ws.last_seen_ms = now.mono_ms;
        ws.ping_sent_ms = None;
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
        }
    }

    fn handle_ws_message(&mut self, key: u32, message: Message) {
        match message {
            Message::Text(text) => self.handle_pusher(key, &text),
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
            } => self.subscribe(key, &channel, auth.as_deref(), channel_data.as_deref()),
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(key, &channel),
            ClientMessage::Signin { .. } => {
                self.send_text(
                    key,
                    &outbound::error(
                        None,
                        "User authentication (pusher:signin) is not supported by this server yet",
                    ),
                );
            }
            ClientMessage::ClientEvent { channel, .. } => {
                let _ = channel;
                self.send_text(
                    key,
                    &outbound::error(
                        Some(4301),
                        "The app does not have client messaging enabled.",
                    ),
                );
            }
        }
    }

    fn subscribe(&mut self, key: u32, name: &str, auth: Option<&str>, channel_data: Option<&str>) {
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
                    &outbound::subscription_error(name, error_type, error.message(), 4009),
                );
                return;
            }
        };
        let ws = self.conns[key as usize].ws().expect("WebSocket phase");
        let app = self.apps.get(ws.app);
        let socket_id = ws.socket_id.to_string();
        let denial = match kind {
            ChannelKind::Public => None,
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                check_channel_auth(auth, &app.key, &app.secret, &format!("{socket_id}:{name}"))
                    .err()
            }
            ChannelKind::Presence => {
                let _ = channel_data;
                Some("Presence channels are not supported by this server yet".to_string())
            }
            ChannelKind::ServerToUser => {
                Some(format!("Connection is not signed in as the user of {name}"))
            }
        };
        if let Some(reason) = denial {
            self.send_text(
                key,
                &outbound::subscription_error(name, "AuthError", &reason, 401),
            );
            return;
        }
        let ws = self.conns[key as usize].ws_mut().expect("WebSocket phase");
        if let Some(existing) = ws
            .subscriptions
            .iter_mut()
            .find(|s| &*s.channel.name == name)
        {
            match existing.state {
                // Idempotent: no double count, but confirm again (soketi).
                SubState::Active => self.send_text(key, &outbound::subscription_succeeded(name)),
                SubState::Pending => {}
                SubState::PendingCancelled => existing.state = SubState::Pending,
            }
            return;
        }
        if ws.subscriptions.len() >= limits::SUBSCRIPTIONS_PER_CONNECTION_MAX {
            self.send_text(
                key,
                &outbound::subscription_error(
                    name,
                    "LimitReached",
                    "Too many channels on one connection",
                    4009,
                ),
            );
            return;
        }
        let app = ws.app;
        self.start_subscription(key, ChannelKey::new(app, name));
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
    pub(super) fn queue_always(&mut self, key: u32, bytes: Bytes) {
        let conn = &mut self.conns[key as usize];
        if conn.dead {
            return;
        }
        conn.out_bytes += bytes.len();
        conn.out.push_back(bytes);
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
        self.begin_close(key);
    }
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
