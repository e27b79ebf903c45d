//! Channel history and resume against the real binary: the REST history API (pages, limits,
//! `complete`, bad parameters), event sequence numbers on the wire (`event_sequence`), and a
//! subscribe with `resume_after` getting exactly the missed events then `ringcast:resume`, or
//! `recovered: false` and nothing when they are not all retained. The WAL is off here (history
//! is in memory); `tests/it/wal.rs` and the crash harness cover it across restarts.

use serde_json::{Value, json};

use crate::support::*;

/// Channel names that land on every core of a two-core server (owners differ by hash).
const CHANNELS: [&str; 4] = ["room-a", "room-b", "room-c", "room-d"];

fn publish(server: &Server, channel: &str, event: &str, data: &str) {
    server.trigger(&json!({"name": event, "channels": [channel], "data": data}));
}

fn history(server: &Server, channel: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let path = format!("/apps/{APP_ID}/channels/{channel}/history");
    let (status, body) = server.rest("GET", &path, params, "");
    let value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, value)
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn history_api_pages_retained_events_in_order() {
    let server = Server::with(Options {
        extra_toml: "[history]\nevents_per_channel_max = 3\n".into(),
        ..Options::default()
    });
    for channel in CHANNELS {
        for n in 1..=5 {
            publish(&server, channel, "tick", &format!("{channel}-{n}"));
        }
    }
    for channel in CHANNELS {
        let (status, page) = history(&server, channel, &[]);
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["first_seq"], 3, "{page}");
        assert_eq!(page["last_seq"], 5, "{page}");
        assert_eq!(page["complete"], false, "events 1 and 2 are gone: {page}");
        assert_eq!(page["epoch"].as_str().unwrap().len(), 16, "{page}");
        assert_eq!(seqs(&page), [3, 4, 5]);
        let first = &page["events"][0];
        assert_eq!(first["event"], "tick");
        assert_eq!(first["data"], format!("{channel}-3"));
        assert!(first["published_ms"].as_u64().unwrap() > 1_600_000_000_000);
        let (_, page) = history(&server, channel, &[("after", "2")]);
        assert_eq!(
            (seqs(&page), &page["complete"]),
            (vec![3, 4, 5], &json!(true))
        );
        let (_, page) = history(&server, channel, &[("after", "3"), ("limit", "1")]);
        assert_eq!(seqs(&page), [4]);
        let (_, page) = history(&server, channel, &[("after", "5")]);
        assert_eq!((seqs(&page).len(), &page["complete"]), (0, &json!(true)));
    }
    let (status, page) = history(&server, "never-used", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({"epoch": null, "first_seq": 1, "last_seq": 0, "complete": true, "events": []})
    );
    let (_, page) = history(&server, "never-used", &[("after", "4")]);
    assert_eq!(
        page["complete"], false,
        "a position in a lost history: {page}"
    );
}

#[test]
fn history_api_refuses_bad_parameters() {
    let server = Server::start();
    for params in [
        &[("after", "-1")][..],
        &[("after", "x")],
        &[("limit", "0")],
        &[("limit", "1001")],
    ] {
        let (status, body) = history(&server, "room-a", params);
        assert_eq!(status, 400, "{params:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, _) = history(&server, "bad%20name", &[]);
    assert_eq!(status, 400);
    let path = format!("/apps/{APP_ID}/channels/room-a/history");
    let (status, _) = server.rest("POST", &path, &[], "");
    assert_eq!(status, 405);
    let (status, _) = server.rest_as(("app-key", "wrong"), "GET", &path, &[], "");
    assert_eq!(status, 401);
}

#[test]
fn a_publish_says_how_durable_it_is() {
    let server = Server::start();
    let body = json!({"name": "e", "channels": CHANNELS, "data": "x"});
    let response = post_events_raw(server.addr, &body);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\r\nX-Ringcast-Durability: memory\r\n"),
        "without a WAL the event is sequenced in memory only: {response}"
    );
}

/// A server whose app sends sequence numbers.
fn sequenced_server(extra_toml: &str) -> Server {
    Server::with(Options {
        extra_app: "event_sequence = true\n".into(),
        extra_toml: extra_toml.into(),
        ..Options::default()
    })
}

/// Subscribes `client` (optionally resuming) and returns the `subscription_succeeded` frame.
fn subscribe(client: &mut Client, channel: &str, resume_after: Option<Value>) -> Value {
    let mut data = json!({"auth": "", "channel": channel});
    if let Some(resume_after) = resume_after {
        data["resume_after"] = resume_after;
    }
    client.send(&json!({"event": "pusher:subscribe", "data": data}));
    let reply = client.recv_event();
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
    reply
}

#[test]
fn event_frames_carry_sequence_numbers_and_the_position() {
    let server = sequenced_server("");
    for channel in CHANNELS {
        let mut client = server.client();
        let reply = subscribe(&mut client, channel, None);
        let epoch = reply["epoch"].as_str().unwrap().to_string();
        assert_eq!(epoch.len(), 16, "{reply}");
        assert_eq!(reply["seq"], 0, "{reply}");
        publish(&server, channel, "e", "one");
        publish(&server, channel, "e", "two");
        assert_eq!(
            client.recv_text(),
            format!(r#"{{"event":"e","channel":"{channel}","data":"one","seq":1}}"#)
        );
        assert_eq!(
            client.recv_text(),
            format!(r#"{{"event":"e","channel":"{channel}","data":"two","seq":2}}"#)
        );
        let mut late = server.client();
        let reply = subscribe(&mut late, channel, None);
        assert_eq!(
            (reply["epoch"].as_str(), &reply["seq"]),
            (Some(&*epoch), &json!(2))
        );
        let (_, page) = history(&server, channel, &[]);
        assert_eq!(
            page["epoch"], epoch,
            "the REST history names the same epoch"
        );
    }
}

#[test]
fn resume_replays_exactly_the_missed_events_then_goes_live() {
    let server = sequenced_server("");
    for channel in CHANNELS {
        let mut first = server.client();
        let reply = subscribe(&mut first, channel, None);
        let epoch = reply["epoch"].clone();
        for n in 1..=4 {
            publish(&server, channel, "e", &format!("m{n}"));
        }
        for _ in 1..=4 {
            first.recv_event();
        }
        // A client that saw up to seq 2 comes back.
        let mut back = server.client();
        let reply = subscribe(&mut back, channel, Some(json!({"epoch": epoch, "seq": 2})));
        assert_eq!(reply["seq"], 4, "{reply}");
        assert_eq!(
            back.recv_text(),
            format!(r#"{{"event":"e","channel":"{channel}","data":"m3","seq":3}}"#)
        );
        assert_eq!(
            back.recv_text(),
            format!(r#"{{"event":"e","channel":"{channel}","data":"m4","seq":4}}"#)
        );
        let resume = back.recv_event();
        assert_eq!(resume["event"], "ringcast:resume", "{resume}");
        assert_eq!(resume["channel"], channel);
        let data: Value = serde_json::from_str(resume["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"channel": channel, "recovered": true, "epoch": epoch, "seq": 4})
        );
        publish(&server, channel, "e", "m5");
        assert_eq!(
            back.recv_text(),
            format!(r#"{{"event":"e","channel":"{channel}","data":"m5","seq":5}}"#),
            "live events follow with no gap and no duplicate"
        );
        // Up to date already: nothing to replay, still told it is complete.
        let mut current = server.client();
        subscribe(
            &mut current,
            channel,
            Some(json!({"epoch": epoch, "seq": 5})),
        );
        let resume = current.recv_event();
        assert_eq!(resume["event"], "ringcast:resume", "{resume}");
        assert!(
            resume["data"]
                .as_str()
                .unwrap()
                .contains(r#""recovered":true"#)
        );
    }
}

#[test]
fn resume_is_all_or_nothing() {
    let server = sequenced_server("[history]\nevents_per_channel_max = 2\n");
    let channel = "room-a";
    let mut watcher = server.client();
    let epoch = subscribe(&mut watcher, channel, None)["epoch"].clone();
    for n in 1..=5 {
        publish(&server, channel, "e", &format!("m{n}"));
    }
    let cases = [
        (
            json!({"epoch": epoch, "seq": 1}),
            "events 2 and 3 are no longer retained",
        ),
        (
            json!({"epoch": "0000000000000001", "seq": 4}),
            "another history",
        ),
        (
            json!({"epoch": epoch, "seq": 9}),
            "a position the channel never reached",
        ),
        (json!("garbage"), "a malformed resume_after"),
    ];
    for (last_seq, (resume_after, why)) in (5..).zip(cases) {
        let mut client = server.client();
        subscribe(&mut client, channel, Some(resume_after));
        let resume = client.recv_event();
        assert_eq!(resume["event"], "ringcast:resume", "{why}: {resume}");
        let data: Value = serde_json::from_str(resume["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["recovered"], false, "{why}: {data}");
        assert_eq!(
            (&data["epoch"], &data["seq"]),
            (&epoch, &json!(last_seq)),
            "{why}"
        );
        publish(&server, channel, "e", "next");
        let next = client.recv_event();
        assert_eq!(next["data"], "next", "{why}: nothing was replayed: {next}");
    }
}

#[test]
fn without_event_sequence_frames_stay_exactly_pushers() {
    let server = Server::start();
    let mut client = server.client();
    client.send(&json!({"event": "pusher:subscribe", "data": {
        "channel": "room-a", "resume_after": {"epoch": "00000000000000aa", "seq": 1}}}));
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"room-a","data":"{}"}"#
    );
    publish(&server, "room-a", "e", "x");
    assert_eq!(
        client.recv_text(),
        r#"{"event":"e","channel":"room-a","data":"x"}"#,
        "no seq, and no ringcast:resume for an app without event_sequence"
    );
}

#[test]
fn resume_skips_events_that_excluded_the_clients_previous_socket() {
    let server = sequenced_server("");
    let channel = "room-a";
    let mut client = server.client();
    let epoch = subscribe(&mut client, channel, None)["epoch"].clone();
    let old_socket = client.socket_id.clone();
    publish(&server, channel, "e", "seen");
    assert_eq!(client.recv_event()["seq"], 1);
    drop(client);
    // While the client is away: one event for everyone, one that excludes its old socket
    // (its own publish, say), then another for everyone.
    publish(&server, channel, "e", "for-all-1");
    server.trigger(
        &json!({"name": "e", "channels": [channel], "data": "not-for-it",
        "socket_id": old_socket}),
    );
    publish(&server, channel, "e", "for-all-2");
    let mut back = server.client();
    let resume_after = json!({"epoch": epoch, "seq": 1, "socket_id": old_socket});
    subscribe(&mut back, channel, Some(resume_after));
    assert_eq!(back.recv_event()["data"], "for-all-1");
    assert_eq!(back.recv_event()["data"], "for-all-2");
    let resume = back.recv_event();
    assert_eq!(resume["event"], "ringcast:resume", "{resume}");
    assert!(
        resume["data"]
            .as_str()
            .unwrap()
            .contains(r#""recovered":true"#)
    );
    assert!(resume["data"].as_str().unwrap().contains(r#""seq":4"#));
}
