//! Decoding of client → server messages (spec §1.2, §2.2, §3): the JSON envelope
//! `{event, channel?, data?}` into a closed enum. Bad input is a value (`EnvelopeError`), never a
//! panic: the shard answers it with `pusher:error` and keeps the connection. No IO.

use serde::Deserialize;

use super::socket_id::SocketId;
use serde_json::value::RawValue;

/// One decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        /// The exact string that was signed (presence); an object sent by an old client is
        /// serialized compactly.
        channel_data: Option<String>,
        /// `resume_after: {"epoch": E, "seq": N, "socket_id"?: S}` (apps with
        /// `event_sequence`): the last event the client saw, and the socket id it had then. A
        /// malformed one is kept as epoch 0, which never matches (the client is told
        /// `recovered: false` rather than silently ignored).
        resume_after: Option<ResumeAfter>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data_json` is the raw JSON text of `data` as sent (relayed unchanged).
    ClientEvent {
        event: String,
        channel: String,
        data_json: String,
    },
    /// Any other event: ignored by the server (spec §1.6).
    Unknown {
        event: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    pub message: &'static str,
}

const INVALID: EnvelopeError = EnvelopeError {
    message: "Invalid message format",
};

#[derive(Deserialize)]
struct Envelope<'a> {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<serde_json::Value>,
    #[serde(default)]
    resume_after: Option<serde_json::Value>,
}

/// Where a resuming client stands: the last event it saw (`epoch`, `seq`) and the socket id of
/// the connection it saw it on (events published excluding that socket were never meant for
/// it, so they are not replayed to it either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeAfter {
    pub epoch: u64,
    pub seq: u64,
    pub socket_id: Option<SocketId>,
}

/// `resume_after` as a position; anything malformed becomes epoch 0, which no channel has.
fn resume_point(value: &serde_json::Value) -> ResumeAfter {
    let epoch = value
        .get("epoch")
        .and_then(serde_json::Value::as_str)
        .and_then(super::outbound::parse_epoch);
    let seq = value.get("seq").and_then(serde_json::Value::as_u64);
    let socket_id = value
        .get("socket_id")
        .and_then(serde_json::Value::as_str)
        .and_then(SocketId::parse);
    match (epoch, seq) {
        (Some(epoch), Some(seq)) => ResumeAfter {
            epoch,
            seq,
            socket_id,
        },
        _ => ResumeAfter {
            epoch: 0,
            seq: 0,
            socket_id: None,
        },
    }
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// `data` may be an object or, from old clients, a string holding a JSON object (spec §1.2).
fn data_object<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Result<T, EnvelopeError> {
    let raw = data.ok_or(INVALID)?.get();
    // Objects only: serde would also fill a struct from an array, by position.
    let is_object = |text: &str| text.trim_start().starts_with('{');
    if is_object(raw) {
        return serde_json::from_str::<T>(raw).map_err(|_| INVALID);
    }
    let text: String = serde_json::from_str(raw).map_err(|_| INVALID)?;
    if !is_object(&text) {
        return Err(INVALID);
    }
    serde_json::from_str::<T>(&text).map_err(|_| INVALID)
}

pub fn parse(text: &[u8]) -> Result<ClientMessage, EnvelopeError> {
    // serde would accept a JSON array for a struct (by position); the protocol wants an object.
    if text.trim_ascii_start().first() != Some(&b'{') {
        return Err(INVALID);
    }
    let envelope: Envelope = serde_json::from_slice(text).map_err(|_| INVALID)?;
    let message = match envelope.event.as_str() {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => {
            let data: SubscribeData = data_object(envelope.data)?;
            let channel_data = match data.channel_data {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(text)) => Some(text),
                Some(other) => Some(other.to_string()),
            };
            ClientMessage::Subscribe {
                channel: data.channel,
                auth: data.auth,
                channel_data,
                resume_after: data.resume_after.as_ref().map(resume_point),
            }
        }
        "pusher:unsubscribe" => {
            let data: UnsubscribeData = data_object(envelope.data)?;
            ClientMessage::Unsubscribe {
                channel: data.channel,
            }
        }
        "pusher:signin" => {
            let data: SigninData = data_object(envelope.data)?;
            ClientMessage::Signin {
                auth: data.auth,
                user_data: data.user_data,
            }
        }
        event if event.starts_with("client-") => ClientMessage::ClientEvent {
            channel: envelope.channel.ok_or(INVALID)?,
            data_json: envelope
                .data
                .map_or_else(|| "null".to_string(), |raw| raw.get().to_string()),
            event: envelope.event,
        },
        _ => ClientMessage::Unknown {
            event: envelope.event,
        },
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_js_forms() {
        assert_eq!(
            parse(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "my-channel".into(),
                auth: Some(String::new()),
                channel_data: None,
                resume_after: None
            })
        );
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":\"10\"}","channel":"presence-x"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "presence-x".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"10"}"#.into()),
                resume_after: None
            })
        );
        assert_eq!(
            parse(br#"{"event":"pusher:unsubscribe","data":{"channel":"my-channel"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "my-channel".into()
            })
        );
        assert_eq!(
            parse(br#"{"event":"client-typing","data":{"x":1},"channel":"private-chat"}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-chat".into(),
                data_json: r#"{"x":1}"#.into()
            })
        );
    }

    #[test]
    fn resume_after_is_parsed_and_malformed_ones_never_match() {
        let parsed = parse(
            br#"{"event":"pusher:subscribe","data":{"channel":"c","resume_after":{"epoch":"00000000000000ab","seq":7}}}"#,
        );
        let Ok(ClientMessage::Subscribe { resume_after, .. }) = parsed else {
            panic!("{parsed:?}");
        };
        let expected = ResumeAfter {
            epoch: 0xab,
            seq: 7,
            socket_id: None,
        };
        assert_eq!(resume_after, Some(expected));
        let parsed = parse(
            br#"{"event":"pusher:subscribe","data":{"channel":"c","resume_after":{"epoch":"ab","seq":7,"socket_id":"12.34"}}}"#,
        );
        let Ok(ClientMessage::Subscribe { resume_after, .. }) = parsed else {
            panic!("{parsed:?}");
        };
        let socket_id = Some(SocketId { high: 12, low: 34 });
        assert_eq!(resume_after.and_then(|r| r.socket_id), socket_id);
        for bad in [
            r#"{"epoch":5,"seq":7}"#,
            r#"{"epoch":"zz","seq":7}"#,
            r#""x""#,
            "{}",
        ] {
            let text = format!(
                r#"{{"event":"pusher:subscribe","data":{{"channel":"c","resume_after":{bad}}}}}"#
            );
            let parsed = parse(text.as_bytes());
            let Ok(ClientMessage::Subscribe { resume_after, .. }) = parsed else {
                panic!("{parsed:?}");
            };
            assert_eq!(
                resume_after.map(|r| (r.epoch, r.seq)),
                Some((0, 0)),
                "{bad}"
            );
        }
    }

    #[test]
    fn string_encoded_data_from_old_clients() {
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None,
                resume_after: None
            })
        );
    }

    #[test]
    fn bad_input_is_an_error_value() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"event\":5}",
            b"{\"event\":\"pusher:subscribe\"}",
            b"{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":5}}",
            b"{\"event\":\"client-x\",\"data\":{}}",
        ] {
            assert_eq!(parse(bad), Err(INVALID), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(br#"{"event":"something"}"#),
            Ok(ClientMessage::Unknown {
                event: "something".into()
            })
        );
    }
}
