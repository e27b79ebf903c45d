//! Server → client message bodies (spec §1.2 table): the exact JSON text of each event, with the
//! per-event `data` encodings (string for most, object for `pusher:error` and
//! `pusher:subscription_error`). Returns JSON text; WebSocket framing is `ws::frame`'s job. No IO.

use super::socket_id::SocketId;

/// A JSON string literal for `text`, quotes included.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("serializing a str cannot fail")
}

pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u32) -> String {
    let data =
        format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout_secs}}}"#);
    format!(
        r#"{{"event":"pusher:connection_established","data":{}}}"#,
        json_string(&data)
    )
}

/// `pusher:error` with an object `data`; `code` None is sent as `null` (hosted Pusher does this).
pub fn error(code: Option<u16>, message: &str) -> String {
    let code = code.map_or_else(|| "null".to_string(), |code| code.to_string());
    format!(
        r#"{{"event":"pusher:error","data":{{"code":{code},"message":{}}}}}"#,
        json_string(message)
    )
}

/// `pusher:error` about one channel (client-event refusals carry the channel, spec §3).
pub fn channel_error(channel: &str, code: Option<u16>, message: &str) -> String {
    let code = code.map_or_else(|| "null".to_string(), |code| code.to_string());
    format!(
        r#"{{"event":"pusher:error","channel":{},"data":{{"code":{code},"message":{}}}}}"#,
        json_string(channel),
        json_string(message)
    )
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":"{}"}"#;
pub const PING: &str = r#"{"event":"pusher:ping","data":"{}"}"#;

pub fn subscription_succeeded(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":"{{}}"}}"#,
        json_string(channel)
    )
}

/// The soketi-form failed-subscription reply (spec §2.5 [REC]).
pub fn subscription_error(channel: &str, error_type: &str, error: &str, status: u16) -> String {
    format!(
        r#"{{"event":"pusher:subscription_error","channel":{},"data":{{"type":{},"error":{},"status":{status}}}}}"#,
        json_string(channel),
        json_string(error_type),
        json_string(error)
    )
}

/// A channel event; `data_json` is already JSON text (a string literal for REST events).
pub fn channel_event(event: &str, channel: &str, data_json: &str) -> String {
    // Once per event and channel on the publish path: one buffer, no format machinery.
    let event = json_string(event);
    let channel = json_string(channel);
    let mut out = String::with_capacity(30 + event.len() + channel.len() + data_json.len());
    out.push_str(r#"{"event":"#);
    out.push_str(&event);
    out.push_str(r#","channel":"#);
    out.push_str(&channel);
    out.push_str(r#","data":"#);
    out.push_str(data_json);
    out.push('}');
    out
}

/// A channel's history epoch as clients see it (16 hex digits).
pub fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// The reverse of `epoch_text`; `None` for anything that is not 1..=16 hex digits.
pub fn parse_epoch(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Adds the top-level `"seq"` (channels with `event_sequence`) to an event's JSON text.
pub fn with_sequence(mut text: String, seq: u64) -> String {
    assert_eq!(text.pop(), Some('}'), "an event is a JSON object");
    text.push_str(r#","seq":"#);
    text.push_str(&seq.to_string());
    text.push('}');
    text
}

/// Adds the channel's position (`"epoch"` and the last `"seq"`) to a `subscription_succeeded`.
pub fn with_position(mut text: String, epoch: u64, seq: u64) -> String {
    assert_eq!(text.pop(), Some('}'), "an event is a JSON object");
    text.push_str(&format!(
        r#","epoch":"{}","seq":{seq}}}"#,
        epoch_text(epoch)
    ));
    text
}

/// `ringcast:resume`: whether every missed event was replayed, and the channel's position.
pub fn resume(channel: &str, recovered: bool, epoch: u64, seq: u64) -> String {
    let data = format!(
        r#"{{"channel":{},"recovered":{recovered},"epoch":"{}","seq":{seq}}}"#,
        json_string(channel),
        epoch_text(epoch)
    );
    format!(
        r#"{{"event":"ringcast:resume","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

/// Presence `subscription_succeeded`; `presence_data` is the JSON text of
/// `{"presence":{"ids":[..],"hash":{..},"count":N}}` (sent string-encoded).
pub fn presence_subscription_succeeded(channel: &str, presence_data: &str) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(presence_data)
    )
}

/// The `presence` object for `subscription_succeeded`, from (user id, user_info JSON) pairs.
pub fn presence_data<'a>(members: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    let mut count = 0usize;
    for (user_id, info_json) in members {
        if count > 0 {
            ids.push(',');
            hash.push(',');
        }
        let id = json_string(user_id);
        ids.push_str(&id);
        hash.push_str(&id);
        hash.push(':');
        hash.push_str(info_json);
        count += 1;
    }
    ids.push(']');
    hash.push('}');
    format!(r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{count}}}}}"#)
}

pub fn member_added(channel: &str, user_id: &str, info_json: &str) -> String {
    let data = format!(
        r#"{{"user_id":{},"user_info":{info_json}}}"#,
        json_string(user_id)
    );
    format!(
        r#"{{"event":"pusher_internal:member_added","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = format!(r#"{{"user_id":{}}}"#, json_string(user_id));
    format!(
        r#"{{"event":"pusher_internal:member_removed","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

pub fn subscription_count(channel: &str, count: u64) -> String {
    let data = format!(r#"{{"subscription_count":{count}}}"#);
    format!(
        r#"{{"event":"pusher_internal:subscription_count","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

pub fn cache_miss(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:cache_miss","channel":{},"data":"{{}}"}}"#,
        json_string(channel)
    )
}

/// `pusher:signin_success` with `user_data` as the exact string the client signed.
pub fn signin_success(user_data: &str) -> String {
    format!(
        r#"{{"event":"pusher:signin_success","data":{{"user_data":{}}}}}"#,
        json_string(user_data)
    )
}

/// A relayed client event; `user_id` is added on presence channels (spec §3).
pub fn client_event(event: &str, channel: &str, data_json: &str, user_id: Option<&str>) -> String {
    match user_id {
        Some(user_id) => format!(
            r#"{{"event":{},"channel":{},"data":{data_json},"user_id":{}}}"#,
            json_string(event),
            json_string(channel),
            json_string(user_id)
        ),
        None => channel_event(event, channel, data_json),
    }
}

/// `pusher_internal:watchlist_events` with one entry per non-empty list.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let mut events = Vec::new();
    for (name, ids) in [("online", online), ("offline", offline)] {
        if !ids.is_empty() {
            let ids: Vec<String> = ids.iter().map(|id| json_string(id)).collect();
            events.push(format!(
                r#"{{"name":"{name}","user_ids":[{}]}}"#,
                ids.join(",")
            ));
        }
    }
    format!(
        r#"{{"event":"pusher_internal:watchlist_events","data":{{"events":[{}]}}}}"#,
        events.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_position_and_resume_encodings() {
        let event = channel_event("e", "c", r#""d""#);
        assert_eq!(
            with_sequence(event, 42),
            r#"{"event":"e","channel":"c","data":"d","seq":42}"#
        );
        assert_eq!(
            with_position(subscription_succeeded("c"), 0xab, 7),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}","epoch":"00000000000000ab","seq":7}"#
        );
        assert_eq!(
            resume("c", true, 0xab, 7),
            r#"{"event":"ringcast:resume","channel":"c","data":"{\"channel\":\"c\",\"recovered\":true,\"epoch\":\"00000000000000ab\",\"seq\":7}"}"#
        );
        assert_eq!(parse_epoch(&epoch_text(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_epoch("xyz"), None);
        assert_eq!(parse_epoch(""), None);
        assert_eq!(parse_epoch("00000000000000001"), None);
    }

    #[test]
    fn exact_spec_encodings() {
        assert_eq!(
            connection_established(
                SocketId {
                    high: 123,
                    low: 456
                },
                120
            ),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#
        );
        assert_eq!(
            error(Some(4001), "App key foo does not exist."),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"App key foo does not exist."}}"#
        );
        assert_eq!(
            error(None, "Invalid message format"),
            r#"{"event":"pusher:error","data":{"code":null,"message":"Invalid message format"}}"#
        );
        assert_eq!(
            subscription_succeeded("my-channel"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"}"#
        );
        assert_eq!(
            channel_event("my-event", "my-channel", r#""{\"message\":\"hello\"}""#),
            r#"{"event":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#
        );
        assert_eq!(
            subscription_error("private-foobar", "AuthError", "Invalid signature", 401),
            r#"{"event":"pusher:subscription_error","channel":"private-foobar","data":{"type":"AuthError","error":"Invalid signature","status":401}}"#
        );
    }

    #[test]
    fn presence_and_user_encodings() {
        let data =
            presence_data([("10", r#"{"name":"Mr. Channels"}"#), ("11", "null")].into_iter());
        assert_eq!(
            presence_subscription_succeeded("presence-foobar", &data),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-foobar","data":"{\"presence\":{\"ids\":[\"10\",\"11\"],\"hash\":{\"10\":{\"name\":\"Mr. Channels\"},\"11\":null},\"count\":2}}"}"#
        );
        assert_eq!(
            member_added("presence-foobar", "10", r#"{"name":"Mr. Channels"}"#),
            r#"{"event":"pusher_internal:member_added","channel":"presence-foobar","data":"{\"user_id\":\"10\",\"user_info\":{\"name\":\"Mr. Channels\"}}"}"#
        );
        assert_eq!(
            member_removed("presence-foobar", "10"),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-foobar","data":"{\"user_id\":\"10\"}"}"#
        );
        assert_eq!(
            subscription_count("my-channel", 3),
            r#"{"event":"pusher_internal:subscription_count","channel":"my-channel","data":"{\"subscription_count\":3}"}"#
        );
        assert_eq!(
            signin_success(r#"{"id":"1"}"#),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#
        );
        assert_eq!(
            client_event("client-typing", "presence-room", r#"{"x":1}"#, Some("10")),
            r#"{"event":"client-typing","channel":"presence-room","data":{"x":1},"user_id":"10"}"#
        );
        assert_eq!(
            watchlist_events(&["2"], &["3"]),
            r#"{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":["2"]},{"name":"offline","user_ids":["3"]}]}}"#
        );
        assert_eq!(
            cache_miss("cache-x"),
            r#"{"event":"pusher:cache_miss","channel":"cache-x","data":"{}"}"#
        );
    }
}
