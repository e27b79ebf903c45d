//! Decoding and validation of the Pusher REST publish bodies: `POST /events` (spec §7.3) and
//! `POST /batch_events` (§7.4), with the event limits of §9. This module turns JSON bytes into
//! [`TriggerEvent`]s; it does no IO, never reads the clock, does not validate channel names
//! (the caller owns channel rules) and does not publish anything.
//!
//! Event `data` is kept as the exact JSON text received (via `RawValue`), so the outbound frame
//! carries the bytes the publisher signed and no re-escaping can change them.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest `data`, in bytes of the decoded string (spec §7.3: 10 KB by default).
    pub payload_bytes_max: usize,
    /// Most distinct channels one `POST /events` may target (100).
    pub channels_per_trigger_max: usize,
    /// Most events in one `POST /batch_events` (10).
    pub batch_size_max: usize,
    /// Longest event name, in bytes (200).
    pub event_name_bytes_max: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    /// 400 for invalid bodies, 413 when event data is over the payload limit.
    pub status: u16,
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> RestError {
    RestError {
        status: 400,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerEvent {
    pub name: String,
    /// The data exactly as it must appear as the `data` value of the outbound frame, as JSON
    /// text. For a string `data` this is the JSON string literal as received, quotes included
    /// (e.g. `"{\"message\":\"hello\"}"`), kept raw so no re-escaping happens; any other JSON
    /// value (object, number, ...) is forwarded as its raw text.
    pub data_json: String,
    /// Size checked against the payload limit: the UTF-8 length of the decoded string for a
    /// string `data`, the raw text length otherwise.
    pub data_bytes: usize,
    /// De-duplicated, order preserved; union of `channel` and `channels`.
    pub channels: Vec<String>,
    pub socket_id: Option<String>,
    /// `info` split on ',' and trimmed, empty when absent.
    pub info: Vec<String>,
}

/// The fields of one event, each kept raw so every type error gets its own precise message
/// instead of serde's generic one. Unknown fields are ignored, as Pusher does; a duplicated
/// known field is refused by serde, which is right since it would be ambiguous.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    socket_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
}

/// Decodes a `POST /events` body. Every failure is a 400 except oversized data (413), checked
/// in this order: not a JSON object; `name` missing, empty, not a string or over the name
/// limit; `data` missing; `data` over the payload limit (413); `channel` not a string or
/// `channels` not an array of strings; no channel at all; more distinct channels than
/// `channels_per_trigger_max`; `socket_id` not a string matching `^\d+\.\d+$`; `info` not a
/// string. Channel names are not validated here (the caller does that).
pub fn parse_trigger(body: &[u8], limits: &EventLimits) -> Result<TriggerEvent, RestError> {
    let raw: RawEvent = parse_object(body, "Request body")?;
    parse_event(raw, limits, ChannelRule::Trigger)
}

/// Decodes a `POST /batch_events` body, `{"batch":[...]}`. More than `batch_size_max` events is
/// a 400. Each event follows the rules of [`parse_trigger`] except that it needs exactly one
/// channel: a single `channel`, or a `channels` array with exactly one element (more is a 400).
/// All events are validated before any is returned, so the caller publishes all or none.
///
/// When several events are invalid, a 413 wins over earlier 400s so an oversized batch is
/// reported as such; otherwise the first error in batch order is returned. Error messages name
/// the event's index, e.g. `batch[2]: Missing event name`.
pub fn parse_batch(body: &[u8], limits: &EventLimits) -> Result<Vec<TriggerEvent>, RestError> {
    let raw: RawBatch = parse_object(body, "Request body")?;
    let Some(batch) = raw.batch else {
        return Err(bad_request("Missing batch: expected {\"batch\":[...]}"));
    };
    let elements: Vec<&RawValue> = serde_json::from_str(batch.get())
        .map_err(|_| bad_request("batch must be an array of event objects"))?;
    if elements.len() > limits.batch_size_max {
        return Err(bad_request(format!(
            "Batch too large: {} events, at most {} allowed",
            elements.len(),
            limits.batch_size_max
        )));
    }

    let mut events = Vec::with_capacity(elements.len());
    let mut first_error: Option<RestError> = None;
    for (index, element) in elements.iter().enumerate() {
        let parsed = parse_object::<RawEvent>(element.get().as_bytes(), "Each batch element")
            .and_then(|raw| parse_event(raw, limits, ChannelRule::Batch));
        match parsed {
            Ok(event) => events.push(event),
            Err(error) => {
                let error = RestError {
                    status: error.status,
                    message: format!("batch[{index}]: {}", error.message),
                };
                if error.status == 413 {
                    return Err(error);
                }
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(events),
    }
}

/// Whether `s` is a socket id (^\d+\.\d+$).
pub fn is_socket_id(s: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    s.split_once('.')
        .is_some_and(|(high, low)| digits(high) && digits(low))
}

/// Deserializes a JSON object. The object check comes first because a derived struct would
/// also accept a JSON array positionally, which no client means.
fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, RestError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad_request(format!("{what} must be a JSON object")));
    }
    serde_json::from_slice(bytes).map_err(|e| bad_request(format!("Invalid JSON: {e}")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChannelRule {
    /// `POST /events`: one or more channels, up to the per-trigger limit.
    Trigger,
    /// `POST /batch_events`: exactly one channel per event.
    Batch,
}

/// Validates one event, in the order the errors are documented on [`parse_trigger`].
fn parse_event(
    raw: RawEvent,
    limits: &EventLimits,
    rule: ChannelRule,
) -> Result<TriggerEvent, RestError> {
    let name = match raw.name {
        None => return Err(bad_request("Missing event name")),
        Some(value) => string_field(value, "name")?,
    };
    if name.is_empty() {
        return Err(bad_request("Missing event name"));
    }
    if name.len() > limits.event_name_bytes_max {
        return Err(bad_request(format!(
            "Event name too long: {} bytes, at most {} allowed",
            name.len(),
            limits.event_name_bytes_max
        )));
    }

    let Some(data) = raw.data else {
        return Err(bad_request("Missing data"));
    };
    let data_json = data.get().to_owned();
    let data_bytes = if data_json.starts_with('"') {
        // The raw text of a string is its JSON literal; the limit applies to the string the
        // subscriber will see, so escapes such as \u00e9 count as the bytes they decode to.
        string_field(data, "data")?.len()
    } else {
        data_json.len()
    };
    if data_bytes > limits.payload_bytes_max {
        return Err(RestError {
            status: 413,
            message: format!(
                "Event data too large: {data_bytes} bytes, at most {} allowed",
                limits.payload_bytes_max
            ),
        });
    }

    let channels = channels(raw.channel, raw.channels)?;
    match rule {
        ChannelRule::Trigger => {
            if channels.is_empty() {
                return Err(bad_request("Missing channel or channels"));
            }
            if channels.len() > limits.channels_per_trigger_max {
                return Err(bad_request(format!(
                    "Too many channels: {}, at most {} allowed",
                    channels.len(),
                    limits.channels_per_trigger_max
                )));
            }
        }
        ChannelRule::Batch => {
            if channels.is_empty() {
                return Err(bad_request("Missing channel"));
            }
            if channels.len() > 1 {
                return Err(bad_request("A batch event must have exactly one channel"));
            }
        }
    }

    let socket_id = match raw.socket_id {
        None => None,
        Some(value) => {
            let socket_id = string_field(value, "socket_id")?;
            if !is_socket_id(&socket_id) {
                return Err(bad_request(format!(
                    "Invalid socket_id {socket_id:?}: expected digits.digits"
                )));
            }
            Some(socket_id)
        }
    };

    let info = match raw.info {
        None => Vec::new(),
        Some(value) => string_field(value, "info")?
            .split(',')
            .map(str::trim)
            .filter(|attribute| !attribute.is_empty())
            .map(str::to_owned)
            .collect(),
    };

    Ok(TriggerEvent {
        name,
        data_json,
        data_bytes,
        channels,
        socket_id,
        info,
    })
}

/// Decodes a raw value that must be a JSON string.
fn string_field(value: &RawValue, field: &str) -> Result<String, RestError> {
    serde_json::from_str::<String>(value.get())
        .map_err(|_| bad_request(format!("{field} must be a string")))
}

/// The union of `channel` and `channels`, `channel` first, without duplicates. pusher-http-php
/// sends `channel` for a single target (spec §10 item 6), other SDKs `channels`.
fn channels(
    channel: Option<&RawValue>,
    channels: Option<&RawValue>,
) -> Result<Vec<String>, RestError> {
    let mut all = Vec::new();
    if let Some(value) = channel {
        all.push(string_field(value, "channel")?);
    }
    if let Some(value) = channels {
        let list: Vec<String> = serde_json::from_str(value.get())
            .map_err(|_| bad_request("channels must be an array of strings"))?;
        all.extend(list);
    }
    let mut seen = HashSet::with_capacity(all.len());
    all.retain(|name| seen.insert(name.clone()));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        payload_bytes_max: 10_240,
        channels_per_trigger_max: 100,
        batch_size_max: 10,
        event_name_bytes_max: 200,
    };

    fn trigger(body: &str) -> Result<TriggerEvent, RestError> {
        parse_trigger(body.as_bytes(), &LIMITS)
    }

    fn status(result: Result<impl Sized, RestError>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(e) => e.status,
        }
    }

    #[test]
    fn spec_docs_example() {
        let event =
            trigger(r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#)
                .expect("valid");
        assert_eq!(
            event,
            TriggerEvent {
                name: "foo".to_owned(),
                data_json: r#""{\"some\":\"data\"}""#.to_owned(),
                data_bytes: r#"{"some":"data"}"#.len(),
                channels: vec!["project-3".to_owned()],
                socket_id: None,
                info: vec![],
            }
        );
    }

    #[test]
    fn spec_single_channel_example_keeps_data_text() {
        let event = trigger(
            r#"{"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#,
        )
        .expect("valid");
        assert_eq!(event.data_json, r#""{\"message\":\"hello\"}""#);
        assert_eq!(event.channels, vec!["my-channel"]);
    }

    #[test]
    fn data_escapes_are_not_normalized() {
        let event =
            trigger(r#"{"name":"e","channel":"c","data":"caf\u00e9 \/ ok"}"#).expect("valid");
        assert_eq!(event.data_json, r#""caf\u00e9 \/ ok""#);
        assert_eq!(event.data_bytes, "café / ok".len());
    }

    #[test]
    fn channel_and_channels_union() {
        let event = trigger(
            r#"{"name":"e","data":"x","channel":"b","channels":["a","b","c","a"],"socket_id":"1.2","info":"user_count, subscription_count,"}"#,
        )
        .expect("valid");
        assert_eq!(event.channels, vec!["b", "a", "c"]);
        assert_eq!(event.socket_id.as_deref(), Some("1.2"));
        assert_eq!(event.info, vec!["user_count", "subscription_count"]);
        // An empty `channels` array is fine when `channel` is present.
        let event =
            trigger(r#"{"name":"e","data":"x","channel":"only","channels":[]}"#).expect("valid");
        assert_eq!(event.channels, vec!["only"]);
    }

    #[test]
    fn non_string_data_forwarded_raw() {
        let event =
            trigger(r#"{"name":"e","channel":"c","data":{"x": [1, 2.50]}}"#).expect("valid");
        assert_eq!(event.data_json, r#"{"x": [1, 2.50]}"#);
        assert_eq!(event.data_bytes, event.data_json.len());
        let event = trigger(r#"{"name":"e","channel":"c","data":42}"#).expect("valid");
        assert_eq!(event.data_json, "42");
        assert_eq!(event.data_bytes, 2);
    }

    #[test]
    fn payload_limit_counts_utf8_bytes() {
        // 6 000 'é' are 6 000 characters but 12 000 bytes: over a 10 240-byte limit.
        let body = format!(
            r#"{{"name":"e","channel":"c","data":"{}"}}"#,
            "é".repeat(6_000)
        );
        let err = trigger(&body).expect_err("too large");
        assert_eq!(err.status, 413);
        let body = format!(
            r#"{{"name":"e","channel":"c","data":"{}"}}"#,
            "é".repeat(5_120)
        );
        assert_eq!(trigger(&body).expect("exactly at limit").data_bytes, 10_240);
        let body = format!(
            r#"{{"name":"e","channel":"c","data":"{}"}}"#,
            "a".repeat(10_241)
        );
        assert_eq!(status(trigger(&body)), 413);
    }

    #[test]
    fn payload_limit_for_raw_json() {
        let limits = EventLimits {
            payload_bytes_max: 5,
            ..LIMITS
        };
        let ok = br#"{"name":"e","channel":"c","data":[1,2]}"#;
        assert_eq!(status(parse_trigger(ok, &limits)), 200);
        let big = br#"{"name":"e","channel":"c","data":[1,2,3]}"#;
        assert_eq!(status(parse_trigger(big, &limits)), 413);
    }

    #[test]
    fn not_an_object_or_bad_json() {
        for body in [
            "",
            "[]",
            r#"["e","x","c"]"#,
            "\"str\"",
            "42",
            "null",
            "{",
            r#"{"name":"e",}"#,
            "{} x",
        ] {
            assert_eq!(status(trigger(body)), 400, "{body:?}");
        }
        assert_eq!(status(parse_trigger(b"\xff{", &LIMITS)), 400);
    }

    #[test]
    fn name_rules() {
        assert_eq!(status(trigger(r#"{"data":"x","channel":"c"}"#)), 400);
        assert_eq!(
            status(trigger(r#"{"name":"","data":"x","channel":"c"}"#)),
            400
        );
        assert_eq!(
            status(trigger(r#"{"name":5,"data":"x","channel":"c"}"#)),
            400
        );
        assert_eq!(
            status(trigger(r#"{"name":null,"data":"x","channel":"c"}"#)),
            400
        );
        let long = format!(
            r#"{{"name":"{}","data":"x","channel":"c"}}"#,
            "n".repeat(201)
        );
        let err = trigger(&long).expect_err("too long");
        assert_eq!(err.status, 400);
        let exact = format!(
            r#"{{"name":"{}","data":"x","channel":"c"}}"#,
            "n".repeat(200)
        );
        assert_eq!(status(trigger(&exact)), 200);
        // Laravel-style names are not channel-name-like and must be accepted.
        let laravel = trigger(r#"{"name":"App\\Events\\OrderShipped","data":"x","channel":"c"}"#)
            .expect("valid");
        assert_eq!(laravel.name, "App\\Events\\OrderShipped");
    }

    #[test]
    fn missing_data() {
        let err = trigger(r#"{"name":"e","channel":"c"}"#).expect_err("no data");
        assert_eq!(err, bad_request("Missing data"));
    }

    #[test]
    fn channel_rules() {
        assert_eq!(status(trigger(r#"{"name":"e","data":"x"}"#)), 400);
        assert_eq!(
            status(trigger(r#"{"name":"e","data":"x","channels":[]}"#)),
            400
        );
        assert_eq!(
            status(trigger(r#"{"name":"e","data":"x","channels":"c"}"#)),
            400
        );
        assert_eq!(
            status(trigger(r#"{"name":"e","data":"x","channels":["a",1]}"#)),
            400
        );
        assert_eq!(
            status(trigger(r#"{"name":"e","data":"x","channel":["a"]}"#)),
            400
        );
        let names = |n: usize| {
            (0..n)
                .map(|i| format!("\"c{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at = format!(r#"{{"name":"e","data":"x","channels":[{}]}}"#, names(100));
        assert_eq!(trigger(&at).expect("100 is allowed").channels.len(), 100);
        let over = format!(r#"{{"name":"e","data":"x","channels":[{}]}}"#, names(101));
        assert_eq!(status(trigger(&over)), 400);
        // Channel names are the caller's business: odd names pass through.
        let odd =
            trigger(r##"{"name":"e","data":"x","channel":"#server-to-user-1"}"##).expect("ok");
        assert_eq!(odd.channels, vec!["#server-to-user-1"]);
    }

    #[test]
    fn socket_id_rules() {
        for bad in [
            r#""""#,
            r#""1""#,
            r#""1.""#,
            r#"".1""#,
            r#""a.1""#,
            r#""1.2.3""#,
            "12",
            r#""1. 2""#,
        ] {
            let body = format!(r#"{{"name":"e","data":"x","channel":"c","socket_id":{bad}}}"#);
            assert_eq!(status(trigger(&body)), 400, "{bad}");
        }
        assert!(is_socket_id("123.456"));
        assert!(!is_socket_id("-1.2"));
        assert!(!is_socket_id("１.2"));
    }

    #[test]
    fn info_must_be_string() {
        assert_eq!(
            status(trigger(
                r#"{"name":"e","data":"x","channel":"c","info":["a"]}"#
            )),
            400
        );
        let event = trigger(r#"{"name":"e","data":"x","channel":"c","info":""}"#).expect("ok");
        assert!(event.info.is_empty());
    }

    #[test]
    fn unknown_fields_ignored_duplicate_fields_refused() {
        assert_eq!(
            status(trigger(
                r#"{"name":"e","data":"x","channel":"c","extra":{"a":1}}"#
            )),
            200
        );
        assert_eq!(
            status(trigger(
                r#"{"name":"e","name":"f","data":"x","channel":"c"}"#
            )),
            400
        );
    }

    #[test]
    fn batch_spec_example() {
        let body = br#"{"batch":[{"channel":"my-channel","name":"my-event","data":"{\"x\":1}"},{"channel":"presence-foobar","name":"my-event","data":"hi","info":"user_count"}]}"#;
        let events = parse_batch(body, &LIMITS).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].channels, vec!["my-channel"]);
        assert_eq!(events[0].data_json, r#""{\"x\":1}""#);
        assert_eq!(events[1].channels, vec!["presence-foobar"]);
        assert_eq!(events[1].info, vec!["user_count"]);
    }

    #[test]
    fn batch_channel_rules() {
        let one = br#"{"batch":[{"channels":["a"],"name":"e","data":"x"}]}"#;
        assert_eq!(
            parse_batch(one, &LIMITS).expect("one-element channels")[0].channels,
            vec!["a"]
        );
        let two = br#"{"batch":[{"channels":["a","b"],"name":"e","data":"x"}]}"#;
        assert_eq!(status(parse_batch(two, &LIMITS)), 400);
        let both = br#"{"batch":[{"channel":"a","channels":["b"],"name":"e","data":"x"}]}"#;
        assert_eq!(status(parse_batch(both, &LIMITS)), 400);
        let none = br#"{"batch":[{"name":"e","data":"x"}]}"#;
        assert_eq!(status(parse_batch(none, &LIMITS)), 400);
    }

    #[test]
    fn batch_size_and_shape() {
        let event = r#"{"channel":"c","name":"e","data":"x"}"#;
        let batch = |n: usize| format!(r#"{{"batch":[{}]}}"#, vec![event; n].join(","));
        assert_eq!(
            parse_batch(batch(10).as_bytes(), &LIMITS)
                .expect("10 ok")
                .len(),
            10
        );
        assert_eq!(status(parse_batch(batch(11).as_bytes(), &LIMITS)), 400);
        assert_eq!(
            parse_batch(batch(0).as_bytes(), &LIMITS)
                .expect("empty ok")
                .len(),
            0
        );
        for body in [
            "{}",
            r#"{"batch":{}}"#,
            r#"{"batch":"x"}"#,
            "[]",
            r#"{"batch":[1]}"#,
            r#"{"batch":[[]]}"#,
        ] {
            assert_eq!(status(parse_batch(body.as_bytes(), &LIMITS)), 400, "{body}");
        }
    }

    #[test]
    fn batch_reports_first_error_and_prefers_413() {
        let body = br#"{"batch":[{"channel":"c","name":"e","data":"x"},{"channel":"c","data":"x"},{"channel":"c","name":"","data":"x"}]}"#;
        let err = parse_batch(body, &LIMITS).expect_err("invalid");
        assert_eq!(err, bad_request("batch[1]: Missing event name"));

        let big = "a".repeat(10_241);
        let body = format!(
            r#"{{"batch":[{{"channel":"c","data":"x"}},{{"channel":"c","name":"e","data":"{big}"}}]}}"#
        );
        let err = parse_batch(body.as_bytes(), &LIMITS).expect_err("too large");
        assert_eq!(err.status, 413);
        assert!(
            err.message.starts_with("batch[1]: Event data too large"),
            "{}",
            err.message
        );
    }
}
