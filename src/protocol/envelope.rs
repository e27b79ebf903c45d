//! Decoding of client → server messages (spec §1.2, §2.2, §3): the JSON envelope
//! `{event, channel?, data?}` into a closed enum. Bad input is a value (`EnvelopeError`), never a
//! panic: the shard answers it with `pusher:error` and keeps the connection. No IO.

use serde::Deserialize;
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
                channel_data: None
            })
        );
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":\"10\"}","channel":"presence-x"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "presence-x".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"10"}"#.into())
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
    fn string_encoded_data_from_old_clients() {
        assert_eq!(
            parse(br#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None
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
