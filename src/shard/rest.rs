//! HTTP on a connection's home core: the request loop (pipelining, keep-alive, the slow-request
//! deadline), routing, and the Pusher REST API (spec §7): signature check, publish, channel
//! listing and description. Answers that need other cores (listings, channels owned elsewhere)
//! park the connection as a `Query` until every core has answered; responses stay in request order.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Shard;
use super::conn::Phase;
use crate::config::AckMode;
use crate::http::request::{self, Method, Parsed, Request};
use crate::http::rest::{self, EventLimits, TriggerEvent};
use crate::http::{response, signature};
use crate::limits;
use crate::mesh::message::{
    AckOutcome, ChannelInfo, ChannelSummary, Durability, PublishCommand, PublishRefusal, QueryRef,
};
use crate::mesh::{ChannelKey, ShardMessage};
use crate::metrics::Endpoint;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::outbound;
use crate::protocol::socket_id::SocketId;
use crate::shard::HistoryPage;
use crate::ws::handshake;

/// A REST request waiting for other cores.
#[derive(Debug)]
pub(super) struct Query {
    endpoint: Endpoint,
    conn: u32,
    conn_generation: u32,
    generation: u32,
    remaining: usize,
    keep_alive: bool,
    kind: QueryKind,
    /// Publishes: the weakest durability the owners reported, or the first refusal.
    acked: Result<Durability, PublishRefusal>,
}

#[derive(Debug)]
enum QueryKind {
    /// `GET /channels`: summaries gathered from every core.
    List {
        channels: Vec<ChannelSummary>,
        attributes: Attributes,
    },
    /// `GET /channels/{name}`.
    Describe { attributes: Attributes },
    /// `GET /channels/{name}/users`.
    Users,
    /// `GET /channels/{name}/history`.
    History,
    /// `POST /events` or `/batch_events` without `info`: waits for the owners' barriers.
    Published,
    /// `info` on `POST /events` or `/batch_events`: one description per target, filled by index.
    TriggerInfo {
        targets: Vec<InfoTarget>,
        results: Vec<ChannelInfo>,
        batch: Option<usize>,
    },
}

/// One channel whose attributes a trigger asked for.
#[derive(Debug)]
struct InfoTarget {
    name: String,
    /// The batch element it belongs to (0 for a single trigger).
    event: usize,
    attributes: Attributes,
}

/// Attributes asked for with `info=`.
#[derive(Debug, Clone, Copy, Default)]
struct Attributes {
    subscription_count: bool,
    user_count: bool,
    cache: bool,
}

impl Attributes {
    /// From a comma-separated `info` value; unknown names are ignored.
    fn parse_list(info: &str) -> Attributes {
        let names: Vec<String> = info
            .split(',')
            .map(|name| name.trim().to_string())
            .collect();
        Attributes::parse(&names)
    }

    fn parse(names: &[String]) -> Attributes {
        let mut attributes = Attributes::default();
        for name in names {
            match name.as_str() {
                "subscription_count" => attributes.subscription_count = true,
                "user_count" => attributes.user_count = true,
                "cache" => attributes.cache = true,
                _ => {}
            }
        }
        attributes
    }

    fn insert_counts(&self, body: &mut Map<String, Value>, info: &ChannelInfo) {
        if self.user_count {
            body.insert("user_count".into(), json!(info.user_count));
        }
        if self.subscription_count {
            body.insert("subscription_count".into(), json!(info.subscription_count));
        }
    }
}

impl Shard {
    /// Parses and handles every complete request in the connection's input, in order.
    pub(super) fn process_http(&mut self, key: u32) {
        let limits = request::Limits {
            head_bytes_max: self.config.server.http_head_bytes_max,
            body_bytes_max: self.config.server.http_body_bytes_max,
            headers_max: limits::HTTP_HEADERS_MAX,
        };
        loop {
            let conn = &mut self.conns[key as usize];
            if conn.closing || conn.dead {
                return;
            }
            let Phase::Http { input, awaiting } = &mut conn.phase else {
                return;
            };
            if awaiting.is_some() || input.is_empty() {
                return;
            }
            match request::parse(input, &limits) {
                Ok(Parsed::Partial) => return,
                Err(error) => {
                    self.endpoint = Endpoint::Other;
                    self.respond_error(key, error.status, error.message, false, &[]);
                    return;
                }
                Ok(Parsed::Complete { request, consumed }) => {
                    input.drain(..consumed);
                    let leftover = if input.is_empty() {
                        *input = Vec::new();
                        Vec::new()
                    } else if handshake::is_upgrade(&header_refs(&request)) {
                        std::mem::take(input)
                    } else {
                        Vec::new()
                    };
                    conn.deadline_ms = self.now.mono_ms + self.config.server.request_timeout_ms;
                    self.handle_request(key, request, leftover);
                }
            }
        }
    }

    /// Why `/readyz` answers 503: a standby (and a standby whose disk is full, which takes no
    /// records from the primary until space is back), starting, draining, or unable to persist
    /// publishes (a full WAL disk: subscribers are still served, publishes get 503 until space
    /// is back). None when ready.
    fn not_ready(&self) -> Option<&'static [u8]> {
        if !self.control.primary && self.journal.storage_full() {
            Some(
                b"standby: storage full: not taking the primary's records until disk space is back",
            )
        } else if !self.control.primary {
            Some(b"standby: serves no clients until promoted")
        } else if self.control.is_draining() {
            Some(b"draining")
        } else if !self.control.is_ready() {
            Some(b"starting")
        } else if self.journal.storage_full() {
            Some(b"storage full: publishes are refused until disk space is back")
        } else {
            None
        }
    }

    fn handle_request(&mut self, key: u32, request: Request, leftover: Vec<u8>) {
        if self.refused_as_standby(key, &request.path) {
            return;
        }
        if handshake::is_upgrade(&header_refs(&request)) {
            self.endpoint = Endpoint::Upgrade;
            self.upgrade(key, &request, leftover);
            return;
        }
        self.endpoint = endpoint_of(&request.path);
        let keep_alive = request.keep_alive;
        let path = request.path.as_str();
        if self.conns[key as usize].over_capacity {
            // Accepted on the spare descriptor: nothing can be served while the process is out
            // of descriptors; the client retries, and the descriptor comes back when it closes.
            self.core_metrics()
                .reject(crate::metrics::REJECT_DESCRIPTOR_LIMIT);
            return self.respond_error(
                key,
                503,
                "Over capacity, retry shortly",
                false,
                &[("Retry-After", "1")],
            );
        }
        if let Some(rest) = path.strip_prefix("/apps/") {
            let rest = rest.to_string();
            self.rest_api(key, &request, &rest);
            return;
        }
        if path.starts_with("/users/") && path.ends_with("/terminate_connections") {
            // pusher-http-python (3.3.x) sends terminate_user_connections without the
            // `/apps/{id}` prefix; the app is the one whose key signed the request, and the
            // signature covers the path as sent.
            let query = signature::parse_query(&request.query);
            let app = query
                .iter()
                .find(|(name, _)| name == "auth_key")
                .and_then(|(_, app_key)| self.apps.by_key(app_key));
            if let Some(app) = app {
                let rest = format!("{}{}", self.apps.get(app).id, path);
                self.endpoint = Endpoint::TerminateConnections;
                self.rest_api(key, &request, &rest);
                return;
            }
        }
        match (request.method, path) {
            (Method::Get | Method::Head, "/" | "/healthz") => {
                // Alive when every core loop ran recently (this one obviously did), as the
                // driver last reported.
                if self.control.cores_alive {
                    self.respond(key, 200, "text/plain", b"OK", keep_alive, &[]);
                } else {
                    let body = b"a core loop is stuck";
                    self.respond(key, 503, "text/plain", body, keep_alive, &[]);
                }
            }
            (Method::Get | Method::Head, "/readyz") => {
                let not_ready = self.not_ready();
                let ready: &[u8] = match self.config.replication.on_standby_loss {
                    _ if !self.control.standby_lost => b"ready",
                    crate::config::StandbyLoss::Degrade => {
                        b"ready; degraded: the standby is unavailable, publishes are acknowledged from the local WAL"
                    }
                    crate::config::StandbyLoss::Reject => {
                        b"ready; degraded: the standby is unavailable, publishes that need it get 503"
                    }
                };
                match not_ready {
                    None => self.respond(key, 200, "text/plain", ready, keep_alive, &[]),
                    Some(body) => self.respond(key, 503, "text/plain", body, keep_alive, &[]),
                }
            }
            (_, path) if path.starts_with("/app/") => {
                self.respond_error(
                    key,
                    426,
                    "WebSocket upgrade required",
                    keep_alive,
                    &[("Upgrade", "websocket")],
                );
            }
            _ => self.respond_error(key, 404, "Not found", keep_alive, &[]),
        }
    }

    /// A standby serves no client (pusher-js and the load balancer go to the primary): every
    /// request but the health checks gets 503 naming the role. Returns whether it answered.
    fn refused_as_standby(&mut self, key: u32, path: &str) -> bool {
        if self.control.primary || matches!(path, "/" | "/healthz" | "/readyz") {
            return false;
        }
        self.endpoint = endpoint_of(path);
        self.core_metrics()
            .reject(crate::metrics::REJECT_STANDBY_ROLE);
        let body = json!({
            "error": "This node is a standby: it serves no clients until it is promoted",
            "role": "standby",
        })
        .to_string();
        let retry = [("Retry-After", "1")];
        self.respond(key, 503, "application/json", body.as_bytes(), false, &retry);
        true
    }

    /// `/apps/{id}/...`: app, signature, then the endpoint.
    fn rest_api(&mut self, key: u32, request: &Request, rest: &str) {
        let keep_alive = request.keep_alive;
        let mut segments = rest.split('/');
        let app_id = segments.next().unwrap_or_default();
        let Some(app) = self.apps.by_id(app_id) else {
            return self.respond_error(
                key,
                404,
                &format!("Unknown app id {app_id}"),
                keep_alive,
                &[],
            );
        };
        let app_config = self.apps.get(app);
        if !app_config.enabled {
            return self.respond_error(key, 403, "The app is not enabled", keep_alive, &[]);
        }
        let query = signature::parse_query(&request.query);
        let signed = signature::SignedRequest {
            method: &request.method_text,
            path: &request.path,
            query: &query,
            body: &request.body,
        };
        if let Err(error) = signature::verify(
            &signed,
            &app_config.key,
            &app_config.secret,
            self.now.unix_secs,
            limits::REST_TIMESTAMP_WINDOW_SECS,
        ) {
            return self.respond_error(key, error.status, &error.message, keep_alive, &[]);
        }
        let segments: Vec<String> = segments.map(signature::decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match (request.method, segments.as_slice()) {
            (Method::Post, ["events"]) => self.trigger(key, app, &request.body, keep_alive),
            (Method::Post, ["batch_events"]) => {
                self.batch_trigger(key, app, &request.body, keep_alive)
            }
            (Method::Get, ["channels"]) => {
                let prefix = param("filter_by_prefix").unwrap_or_default().to_string();
                let info = param("info").unwrap_or_default().to_string();
                self.list_channels(key, app, &prefix, &info, keep_alive);
            }
            (Method::Get, ["channels", name]) => {
                let info = param("info").unwrap_or_default().to_string();
                self.describe_channel(key, app, name, &info, keep_alive);
            }
            (Method::Get, ["channels", name, "users"]) => {
                self.channel_users(key, app, name, keep_alive)
            }
            (Method::Get, ["channels", name, "history"]) => {
                let after = param("after").unwrap_or("0").to_string();
                let limit = param("limit").unwrap_or("100").to_string();
                self.channel_history(key, app, name, (&after, &limit), keep_alive);
            }
            (Method::Post, ["users", user_id, "terminate_connections"]) => {
                self.terminate_connections(key, app, user_id, keep_alive);
            }
            (
                _,
                ["events" | "batch_events" | "channels"]
                | ["channels", _]
                | ["channels", _, "users" | "history"],
            )
            | (_, ["users", _, "terminate_connections"]) => {
                self.respond_error(key, 405, "Method not allowed", keep_alive, &[]);
            }
            _ => self.respond_error(key, 404, "Not found", keep_alive, &[]),
        }
    }

    fn event_limits(&self, app: u32) -> EventLimits {
        let app = self.apps.get(app);
        EventLimits {
            payload_bytes_max: app.payload_bytes_max,
            channels_per_trigger_max: app.channels_per_trigger_max,
            batch_size_max: app.batch_size_max,
            event_name_bytes_max: app.event_name_bytes_max,
        }
    }

    fn trigger(&mut self, key: u32, app: u32, body: &[u8], keep_alive: bool) {
        let event = match rest::parse_trigger(body, &self.event_limits(app)) {
            Ok(event) => event,
            Err(error) => {
                return self.respond_error(key, error.status, &error.message, keep_alive, &[]);
            }
        };
        if let Err(message) = self.check_event(&event) {
            return self.respond_error(key, 400, &message, keep_alive, &[]);
        }
        if event.channels.len() > 1
            && event
                .channels
                .iter()
                .any(|c| channel::kind_of(c) == ChannelKind::PrivateEncrypted)
        {
            return self.respond_error(
                key,
                400,
                "Cannot trigger an event on several channels when one of them is encrypted",
                keep_alive,
                &[],
            );
        }
        self.publish_events(key, app, std::slice::from_ref(&event), false, keep_alive);
    }

    fn batch_trigger(&mut self, key: u32, app: u32, body: &[u8], keep_alive: bool) {
        let events = match rest::parse_batch(body, &self.event_limits(app)) {
            Ok(events) => events,
            Err(error) => {
                return self.respond_error(key, error.status, &error.message, keep_alive, &[]);
            }
        };
        for event in &events {
            if let Err(message) = self.check_event(event) {
                return self.respond_error(key, 400, &message, keep_alive, &[]);
            }
        }
        self.publish_events(key, app, &events, true, keep_alive);
    }

    /// Channel names are validated here (the body decoder does not know the naming rules).
    fn check_event(&self, event: &TriggerEvent) -> Result<(), String> {
        for name in &event.channels {
            if let Err(error) = channel::validate(name, self.config.server.channel_name_bytes_max) {
                return Err(format!(
                    "Invalid channel name `{name}`: {}",
                    error.message()
                ));
            }
        }
        Ok(())
    }

    /// Publishes validated events, or sheds the whole request with 503 when an owner core is
    /// backed up (nothing is published in that case, so a retry cannot duplicate). With `info`,
    /// the answer waits for each channel's owner to describe it.
    fn publish_events(
        &mut self,
        key: u32,
        app: u32,
        events: &[TriggerEvent],
        batch: bool,
        keep_alive: bool,
    ) {
        let backed_up = events.iter().flat_map(|e| &e.channels).any(|name| {
            let owner = ChannelKey::owner_of(app, name, self.cores);
            owner != self.core && self.outbox.backlog(owner) >= limits::MESH_BACKLOG_MAX
        });
        if self.control.frozen {
            return self.refuse_frozen(key, keep_alive);
        }
        if backed_up {
            self.core_metrics()
                .reject(crate::metrics::REJECT_MESH_BACKLOG);
            return self.respond_error(
                key,
                503,
                "Server is busy, retry shortly",
                keep_alive,
                &[("Retry-After", "1")],
            );
        }
        let mut targets = Vec::new();
        let published_ms = self.now.unix_ms;
        for (index, event) in events.iter().enumerate() {
            let exclude = event.socket_id.as_deref().and_then(SocketId::parse);
            let attributes = Attributes::parse(&event.info);
            let event_name: Arc<str> = Arc::from(event.name.as_str());
            let data: Arc<str> = Arc::from(event.data_json.as_str());
            for name in &event.channels {
                self.publish(PublishCommand {
                    channel: ChannelKey::new(app, name),
                    event: Arc::clone(&event_name),
                    data: Arc::clone(&data),
                    exclude,
                    user_id: None,
                    published_ms,
                    cache: channel::is_cache(name),
                    client: false,
                });
                if attributes.user_count || attributes.subscription_count {
                    targets.push(InfoTarget {
                        name: name.clone(),
                        event: index,
                        attributes,
                    });
                }
            }
        }
        // Every owner (this core included) answers a barrier once it has sequenced everything
        // this core sent it before and its WAL records are durable; the response waits for
        // those answers (and for the channel descriptions when `info` was asked).
        let mut owners: Vec<usize> = events
            .iter()
            .flat_map(|e| &e.channels)
            .map(|name| ChannelKey::owner_of(app, name, self.cores))
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let channels: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let kind = if targets.is_empty() {
            QueryKind::Published
        } else {
            QueryKind::TriggerInfo {
                results: vec![ChannelInfo::default(); targets.len()],
                targets,
                batch: batch.then_some(events.len()),
            }
        };
        let remaining = channels.len() + owners.len();
        let Some(query) = self.new_query(key, keep_alive, remaining, kind) else {
            return;
        };
        for owner in owners {
            let ack = self.ack_mode(app);
            self.send_to_core(owner, ShardMessage::Barrier { query, ack });
        }
        for (index, name) in channels.iter().enumerate() {
            self.describe(query, index as u32, ChannelKey::new(app, name), false);
        }
    }

    /// Asks the owner of `channel` for its description (answered into `query` at `index`).
    fn describe(&mut self, query: QueryRef, index: u32, channel: ChannelKey, with_users: bool) {
        let message = ShardMessage::DescribeChannel {
            query,
            index,
            channel: channel.clone(),
            with_users,
        };
        self.route_to_owner(&channel, message);
    }

    fn channel_users(&mut self, key: u32, app: u32, name: &str, keep_alive: bool) {
        match channel::validate(name, self.config.server.channel_name_bytes_max) {
            Ok(ChannelKind::Presence) => {}
            Ok(_) => {
                return self.respond_error(
                    key,
                    400,
                    "Users are only available for presence channels",
                    keep_alive,
                    &[],
                );
            }
            Err(error) => return self.respond_error(key, 400, error.message(), keep_alive, &[]),
        }
        let Some(query) = self.new_query(key, keep_alive, 1, QueryKind::Users) else {
            return;
        };
        self.describe(query, 0, ChannelKey::new(app, name), true);
    }

    fn terminate_connections(&mut self, key: u32, app: u32, user_id: &str, keep_alive: bool) {
        let user_id: Arc<str> = Arc::from(user_id);
        for core in (0..self.cores).filter(|&core| core != self.core) {
            let message = ShardMessage::TerminateUser {
                app,
                user_id: Arc::clone(&user_id),
            };
            self.outbox.push(core, message);
        }
        self.terminate_user(app, &user_id);
        self.respond(key, 200, "application/json", b"{}", keep_alive, &[]);
    }

    /// What a publish of `app` waits for: its `ack`, else `[replication] ack`; `Local` when
    /// no standby is configured.
    fn ack_mode(&self, app: u32) -> AckMode {
        if !self.config.replication.enabled() {
            return AckMode::Local;
        }
        self.apps
            .get(app)
            .ack
            .unwrap_or(self.config.replication.ack)
    }

    fn new_query(
        &mut self,
        key: u32,
        keep_alive: bool,
        remaining: usize,
        kind: QueryKind,
    ) -> Option<QueryRef> {
        if self.queries.len() >= self.config.server.rest_in_flight_max {
            self.core_metrics()
                .reject(crate::metrics::REJECT_REST_IN_FLIGHT);
            self.respond_error(
                key,
                503,
                "Server is busy, retry shortly",
                keep_alive,
                &[("Retry-After", "1")],
            );
            return None;
        }
        self.query_generation = self.query_generation.wrapping_add(1);
        let conn_generation = self.conns[key as usize].generation;
        let slot = self.queries.insert(Query {
            endpoint: self.endpoint,
            conn: key,
            conn_generation,
            generation: self.query_generation,
            remaining,
            keep_alive,
            kind,
            // The strongest level: every owner's answer can only lower it.
            acked: Ok(Durability::ReplicaDurable),
        }) as u32;
        if let Phase::Http { awaiting, .. } = &mut self.conns[key as usize].phase {
            *awaiting = Some(slot);
        }
        Some(QueryRef {
            core: self.core as u16,
            slot,
            generation: self.query_generation,
        })
    }

    fn list_channels(&mut self, key: u32, app: u32, prefix: &str, info: &str, keep_alive: bool) {
        let attributes = Attributes::parse_list(info);
        if attributes.user_count && !prefix.starts_with("presence-") {
            let message = "info=user_count is only allowed with filter_by_prefix=presence-";
            return self.respond_error(key, 400, message, keep_alive, &[]);
        }
        let kind = QueryKind::List {
            channels: Vec::new(),
            attributes,
        };
        let Some(query) = self.new_query(key, keep_alive, self.cores, kind) else {
            return;
        };
        let prefix: Arc<str> = Arc::from(prefix);
        for core in 0..self.cores {
            let message = ShardMessage::ListChannels {
                query,
                app,
                prefix: Arc::clone(&prefix),
            };
            self.send_to_core(core, message);
        }
    }

    /// `GET /channels/{name}/history?after=SEQ&limit=N`: the owner's retained events.
    fn channel_history(
        &mut self,
        key: u32,
        app: u32,
        name: &str,
        (after, limit): (&str, &str),
        keep_alive: bool,
    ) {
        if let Err(error) = channel::validate(name, self.config.server.channel_name_bytes_max) {
            return self.respond_error(key, 400, error.message(), keep_alive, &[]);
        }
        let Ok(after) = after.parse::<u64>() else {
            let message = "after must be a non-negative integer";
            return self.respond_error(key, 400, message, keep_alive, &[]);
        };
        let limit = match limit.parse::<usize>() {
            Ok(limit @ 1..=limits::HISTORY_PAGE_EVENTS_MAX) => limit,
            _ => {
                let message = format!(
                    "limit must be an integer from 1 to {}",
                    limits::HISTORY_PAGE_EVENTS_MAX
                );
                return self.respond_error(key, 400, &message, keep_alive, &[]);
            }
        };
        let Some(query) = self.new_query(key, keep_alive, 1, QueryKind::History) else {
            return;
        };
        let channel = ChannelKey::new(app, name);
        let message = ShardMessage::History {
            query,
            channel: channel.clone(),
            after,
            limit,
        };
        self.route_to_owner(&channel, message);
    }

    /// The owner's history page: the JSON body of the history API.
    pub(super) fn query_history_reply(&mut self, query: QueryRef, page: HistoryPage) {
        let Some(pending) = self.live_query(query) else {
            return;
        };
        pending.remaining -= 1;
        let events: Vec<Value> = page
            .events
            .iter()
            .map(|event| {
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                let mut body = json!({
                    "seq": event.seq,
                    "event": &*event.event,
                    "data": data,
                    "published_ms": event.published_ms,
                });
                if let Some(user_id) = &event.user_id {
                    body["user_id"] = json!(&**user_id);
                }
                body
            })
            .collect();
        let body = json!({
            "epoch": page.epoch.map(outbound::epoch_text),
            "first_seq": page.first_seq,
            "last_seq": page.last_seq,
            "complete": page.complete,
            "events": events,
        });
        self.finish_query(query.slot, body);
    }

    fn describe_channel(&mut self, key: u32, app: u32, name: &str, info: &str, keep_alive: bool) {
        let kind = match channel::validate(name, self.config.server.channel_name_bytes_max) {
            Ok(kind) => kind,
            Err(error) => return self.respond_error(key, 400, error.message(), keep_alive, &[]),
        };
        let attributes = Attributes::parse_list(info);
        let not_available = if attributes.user_count && kind != ChannelKind::Presence {
            Some("user_count")
        } else if attributes.cache && !channel::is_cache(name) {
            Some("cache")
        } else {
            None
        };
        if let Some(attribute) = not_available {
            let message = format!("info={attribute} is not available for channel {name}");
            return self.respond_error(key, 400, &message, keep_alive, &[]);
        }
        let Some(query) = self.new_query(key, keep_alive, 1, QueryKind::Describe { attributes })
        else {
            return;
        };
        self.describe(query, 0, ChannelKey::new(app, name), false);
    }

    fn live_query(&mut self, query: QueryRef) -> Option<&mut Query> {
        assert_eq!(usize::from(query.core), self.core);
        self.queries
            .get_mut(query.slot as usize)
            .filter(|pending| pending.generation == query.generation)
    }

    pub(super) fn query_list_reply(&mut self, query: QueryRef, mut channels: Vec<ChannelSummary>) {
        let Some(pending) = self.live_query(query) else {
            return;
        };
        if let QueryKind::List {
            channels: gathered, ..
        } = &mut pending.kind
        {
            gathered.append(&mut channels);
        }
        pending.remaining -= 1;
        self.finish_query_if_done(query.slot);
    }

    pub(super) fn query_describe_reply(&mut self, query: QueryRef, index: u32, info: ChannelInfo) {
        let Some(pending) = self.live_query(query) else {
            return;
        };
        pending.remaining -= 1;
        let body = match &mut pending.kind {
            QueryKind::Describe { attributes } => {
                let mut body = Map::new();
                body.insert("occupied".into(), Value::Bool(info.subscription_count > 0));
                attributes.insert_counts(&mut body, &info);
                if attributes.cache {
                    let cache = info.cache.map_or(Value::Null, |(data_json, ttl)| {
                        let data: Value = serde_json::from_str(&data_json).unwrap_or(Value::Null);
                        json!({ "data": data, "ttl": ttl })
                    });
                    body.insert("cache".into(), cache);
                }
                Value::Object(body)
            }
            QueryKind::Users => {
                let users: Vec<Value> = info
                    .users
                    .unwrap_or_default()
                    .iter()
                    .map(|id| json!({ "id": &**id }))
                    .collect();
                json!({ "users": users })
            }
            QueryKind::TriggerInfo { results, .. } => {
                results[index as usize] = info;
                if pending.remaining > 0 {
                    return;
                }
                self.trigger_info_body(query.slot)
            }
            QueryKind::List { .. } | QueryKind::Published | QueryKind::History => {
                unreachable!("only describe, users and trigger-info queries get descriptions")
            }
        };
        self.finish_query(query.slot, body);
    }

    /// An owner's barrier answer for a publish: the response goes out with the last answer.
    pub(super) fn query_barrier_reply(&mut self, query: QueryRef, outcome: AckOutcome) {
        let Some(pending) = self.live_query(query) else {
            return;
        };
        pending.remaining -= 1;
        pending.acked = match (pending.acked, outcome) {
            (Err(refusal), _) | (Ok(_), AckOutcome::Refused(refusal)) => Err(refusal),
            (Ok(so_far), AckOutcome::Durable(durability)) => Ok(so_far.min(durability)),
        };
        if pending.remaining > 0 {
            return;
        }
        let body = match pending.kind {
            QueryKind::Published => json!({}),
            QueryKind::TriggerInfo { .. } => self.trigger_info_body(query.slot),
            _ => unreachable!("barriers belong to publishes"),
        };
        self.finish_query(query.slot, body);
    }

    /// The `info` answer of a trigger: per channel, or per batch element (spec §7.3, §7.4).
    fn trigger_info_body(&mut self, slot: u32) -> Value {
        let QueryKind::TriggerInfo {
            targets,
            results,
            batch,
        } = &self.queries[slot as usize].kind
        else {
            unreachable!("trigger info query");
        };
        let describe = |target: &InfoTarget, info: &ChannelInfo| {
            let mut attributes = Map::new();
            let presence = channel::kind_of(&target.name) == ChannelKind::Presence;
            let wanted = Attributes {
                user_count: target.attributes.user_count && presence,
                ..target.attributes
            };
            wanted.insert_counts(&mut attributes, info);
            Value::Object(attributes)
        };
        match batch {
            Some(events) => {
                let mut elements = vec![json!({}); *events];
                for (target, info) in targets.iter().zip(results) {
                    elements[target.event] = describe(target, info);
                }
                json!({ "batch": elements })
            }
            None => {
                let mut channels = Map::new();
                for (target, info) in targets.iter().zip(results) {
                    channels.insert(target.name.clone(), describe(target, info));
                }
                json!({ "channels": channels })
            }
        }
    }

    fn finish_query_if_done(&mut self, slot: u32) {
        let pending = &mut self.queries[slot as usize];
        if pending.remaining > 0 {
            return;
        }
        let QueryKind::List {
            channels,
            attributes,
        } = &mut pending.kind
        else {
            unreachable!("only list queries finish here");
        };
        let attributes = *attributes;
        let mut sorted: Vec<ChannelSummary> = std::mem::take(channels);
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut listing = Map::new();
        for summary in sorted {
            let info = ChannelInfo {
                subscription_count: summary.subscription_count,
                user_count: summary.user_count,
                ..ChannelInfo::default()
            };
            let mut body = Map::new();
            attributes.insert_counts(&mut body, &info);
            listing.insert(summary.name.to_string(), Value::Object(body));
        }
        self.finish_query(slot, json!({ "channels": listing }));
    }

    /// Answers the parked request and resumes the connection's pipeline.
    fn finish_query(&mut self, slot: u32, body: Value) {
        let pending = self.queries.remove(slot as usize);
        let live = self.conns.get(pending.conn as usize).is_some_and(|conn| {
            conn.generation == pending.conn_generation && !conn.dead && !conn.closing
        });
        if !live {
            return;
        }
        let key = pending.conn;
        self.endpoint = pending.endpoint;
        if let Phase::Http { awaiting, .. } = &mut self.conns[key as usize].phase {
            assert_eq!(*awaiting, Some(slot));
            *awaiting = None;
        }
        let publish = matches!(
            pending.kind,
            QueryKind::Published | QueryKind::TriggerInfo { .. }
        );
        match pending.acked {
            Ok(durability) if publish => {
                let header = [(DURABILITY_HEADER, durability.header_value())];
                let text = body.to_string();
                let body = text.as_bytes();
                self.respond(
                    key,
                    200,
                    "application/json",
                    body,
                    pending.keep_alive,
                    &header,
                );
            }
            Ok(_) => {
                let text = body.to_string();
                let body = text.as_bytes();
                self.respond(key, 200, "application/json", body, pending.keep_alive, &[]);
            }
            Err(PublishRefusal::Busy) => {
                let retry = [("Retry-After", "1")];
                let message = "Server is busy, retry shortly";
                self.respond_error(key, 503, message, pending.keep_alive, &retry);
            }
            Err(PublishRefusal::StandbyUnavailable) => {
                self.core_metrics()
                    .reject(crate::metrics::REJECT_STANDBY_UNAVAILABLE);
                let message = "The standby is unavailable and this app's publishes need it \
                               (on_standby_loss = \"reject\"); retry later";
                let retry = [("Retry-After", "1")];
                self.respond_error(key, 503, message, pending.keep_alive, &retry);
            }
            Err(PublishRefusal::NoLease) => {
                self.core_metrics().reject(crate::metrics::REJECT_NO_LEASE);
                let message = "no lease: this primary cannot prove its lease at the witness \
                               (it may have been replaced); the event may not be acknowledged, \
                               retry later";
                let retry = [("Retry-After", "1")];
                self.respond_error(key, 503, message, pending.keep_alive, &retry);
            }
            Err(PublishRefusal::Switchover) => self.refuse_frozen(key, pending.keep_alive),
            Err(PublishRefusal::StorageFull) => {
                self.core_metrics()
                    .reject(crate::metrics::REJECT_STORAGE_FULL);
                let message = "Storage is full: the event was not persisted; retry later";
                let retry = [("Retry-After", "5")];
                self.respond_error(key, 503, message, pending.keep_alive, &retry);
            }
        }
        self.process_http(key);
    }

    /// A publish during a planned switchover (`ringcast switchover`): 503 with a short
    /// `Retry-After`; nothing of it was published, or the standby did not have it when this
    /// node stepped down (the client retries, at the new primary).
    fn refuse_frozen(&mut self, key: u32, keep_alive: bool) {
        self.core_metrics()
            .reject(crate::metrics::REJECT_SWITCHOVER);
        let message = "switchover: publishes are frozen while this primary hands over to its \
                       standby; retry in a moment (on the new primary)";
        let retry = [("Retry-After", "1")];
        self.respond_error(key, 503, message, keep_alive, &retry);
    }

    pub(super) fn respond(
        &mut self,
        key: u32,
        status: u16,
        content_type: &str,
        body: &[u8],
        keep_alive: bool,
        extra_headers: &[(&str, &str)],
    ) {
        let keep_alive = keep_alive && !self.control.is_draining();
        self.core_metrics().http_call(self.endpoint, status);
        let mut out = Vec::with_capacity(128 + body.len());
        response::write(
            &mut out,
            status,
            content_type,
            body,
            keep_alive,
            extra_headers,
        );
        self.queue_always(key, Bytes::from(out));
        if !keep_alive {
            self.begin_close(key);
        }
    }

    pub(super) fn respond_error(
        &mut self,
        key: u32,
        status: u16,
        message: &str,
        keep_alive: bool,
        extra_headers: &[(&str, &str)],
    ) {
        let keep_alive = keep_alive && !self.control.is_draining();
        self.core_metrics().http_call(self.endpoint, status);
        let mut out = Vec::with_capacity(128);
        response::write_json_error(&mut out, status, message, keep_alive, extra_headers);
        self.queue_always(key, Bytes::from(out));
        if !keep_alive {
            self.begin_close(key);
        }
    }
}

/// The response header that says how durable an acknowledged publish is.
pub const DURABILITY_HEADER: &str = "X-Ringcast-Durability";

/// Which endpoint a path is, for metrics.
fn endpoint_of(path: &str) -> Endpoint {
    let Some(rest) = path.strip_prefix("/apps/") else {
        return match path {
            "/" | "/healthz" | "/readyz" => Endpoint::Health,
            _ => Endpoint::Other,
        };
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        ["events"] => Endpoint::Events,
        ["batch_events"] => Endpoint::BatchEvents,
        ["channels"] => Endpoint::Channels,
        ["channels", _] => Endpoint::Channel,
        ["channels", _, "users"] => Endpoint::Users,
        ["channels", _, "history"] => Endpoint::History,
        ["users", _, "terminate_connections"] => Endpoint::TerminateConnections,
        _ => Endpoint::Other,
    }
}

fn header_refs(request: &Request) -> Vec<(&str, &[u8])> {
    request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect()
}
