//! Many connections spread over both cores, one REST publisher: every subscriber receives every
//! event of its channel exactly once and in publish order. Counts, never timings, decide.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::support::{Client, Options, Server};

/// Connections in the test process: each needs one descriptor here and one in the server,
/// well under the 20,000-descriptor limit of a process.
const CONNECTIONS: usize = 3000;
const CHANNELS: usize = 10;
const EVENTS_PER_CHANNEL: usize = 50;

#[test]
fn thousands_of_subscribers_lose_and_reorder_nothing() {
    let server = Server::with(Options {
        cores: 2,
        ..Options::default()
    });
    let mut clients: Vec<(usize, Client)> = Vec::with_capacity(CONNECTIONS);
    let mut socket_ids = std::collections::HashSet::new();
    for n in 0..CONNECTIONS {
        let mut client = server.client();
        assert!(
            socket_ids.insert(client.socket_id.clone()),
            "duplicate socket id"
        );
        let channel = n % CHANNELS;
        client.send(
            &json!({"event":"pusher:subscribe","data":{"channel":format!("load-{channel}")}}),
        );
        clients.push((channel, client));
    }
    for (channel, client) in &mut clients {
        let reply = client.recv_event();
        assert_eq!(reply["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(reply["channel"], format!("load-{channel}"));
    }
    // Both cores host subscribers: the listing is gathered from both owners, and the counts add
    // up to every connection.
    let (status, body) = server.rest(
        "GET",
        "/apps/123456/channels",
        &[("info", "subscription_count")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    let total: u64 = (0..CHANNELS)
        .map(|c| {
            listing["channels"][format!("load-{c}")]["subscription_count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, CONNECTIONS as u64);

    // Interleave channels so every owner core sequences concurrently with the others.
    for sequence in 0..EVENTS_PER_CHANNEL {
        let channels: Vec<String> = (0..CHANNELS).map(|c| format!("load-{c}")).collect();
        server.trigger(&json!({"name":"tick","channels":channels,"data":sequence.to_string()}));
    }
    let mut received: HashMap<usize, usize> = HashMap::new();
    for (index, (channel, client)) in clients.iter_mut().enumerate() {
        for expected in 0..EVENTS_PER_CHANNEL {
            let event = client.recv_event();
            assert_eq!(event["event"], "tick", "client {index}: {event}");
            assert_eq!(event["channel"], format!("load-{channel}"));
            assert_eq!(
                event["data"],
                expected.to_string(),
                "client {index} got an event out of order"
            );
        }
        *received.entry(*channel).or_default() += EVENTS_PER_CHANNEL;
    }
    let delivered: usize = received.values().sum();
    assert_eq!(delivered, CONNECTIONS * EVENTS_PER_CHANNEL);
    // Nothing extra is queued: one more event per channel is the very next frame everywhere.
    server.trigger(&json!({"name":"last","channels":(0..CHANNELS).map(|c| format!("load-{c}")).collect::<Vec<_>>(),"data":"end"}));
    for (_, client) in clients.iter_mut() {
        assert_eq!(client.recv_event()["event"], "last");
    }
}
