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
    format!(
        r#"{{"event":{},"channel":{},"data":{data_json}}}"#,
        json_string(event),
        json_string(channel)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
