//! Unit tests of the shard, driven without sockets or threads: several `Shard`s and a `Mesh`,
//! bytes fed in by hand, mesh messages pumped by the test in an order it chooses (seeded), and
//! the queued output read back as frames. This is where cross-core ordering and bookkeeping are
//! checked deterministically.

use std::sync::Arc;

use rand::{RngExt, SeedableRng};

use super::*;
use crate::config;
use crate::control::Control;
use crate::mesh::Mesh;
use crate::ws::frame::{Decoder, Message};

const NOW: Now = Now {
    mono_ms: 1_000,
    mono_us: 1_000_000,
    unix_secs: 1_700_000_000,
    unix_ms: 1_700_000_000_000,
};

struct World {
    shards: Vec<Shard>,
    mesh: Arc<Mesh>,
}

impl World {
    fn new(cores: usize) -> World {
        let loaded = config::parse(config::EMBEDDED_DEFAULT).unwrap();
        let config = Arc::new(loaded.config);
        let apps = Arc::new(Apps::new(&config));
        let mesh = Arc::new(Mesh::new(cores).unwrap());
        let control = Arc::new(Control::new(cores));
        let metrics = Arc::new(Metrics::new(Arc::clone(&control), Arc::clone(&mesh)));
        let shards = (0..cores)
            .map(|core| {
                let (config, apps) = (Arc::clone(&config), Arc::clone(&apps));
                Shard::new(
                    core,
                    cores,
                    config,
                    apps,
                    42,
                    Arc::clone(&metrics),
                    Arc::new(crate::webhook::WebhookQueues::new(cores)),
                )
            })
            .collect();
        World { shards, mesh }
    }

    /// Moves every outbox into the mesh, then delivers messages until all queues are empty,
    /// taking the next source core at random (any interleaving the real loops could produce).
    fn pump(&mut self, rng: &mut rand::rngs::StdRng) {
        loop {
            for shard in &mut self.shards {
                shard.outbox().flush(&self.mesh);
            }
            let cores = self.shards.len();
            let pairs: Vec<(usize, usize)> = (0..cores)
                .flat_map(|from| (0..cores).map(move |to| (from, to)))
                .filter(|&(from, to)| from != to && self.mesh.depth(from, to) > 0)
                .collect();
            if pairs.is_empty() && self.shards.iter_mut().all(|s| s.outbox().is_empty()) {
                return;
            }
            if pairs.is_empty() {
                continue;
            }
            let (from, to) = pairs[rng.random_range(0..pairs.len())];
            let message = self.mesh.try_recv(from, to).unwrap();
            self.shards[to].on_mesh(from, message, NOW);
        }
    }
}

/// A WebSocket client on one shard: its slab key and a decoder for what the shard wrote.
struct TestClient {
    core: usize,
    key: u32,
    decoder: Decoder,
    /// Output bytes already consumed.
    seen: usize,
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl World {
    fn connect(&mut self, core: usize, fd: i32) -> TestClient {
        let shard = &mut self.shards[core];
        let key = shard.accept(fd, NOW).unwrap();
        let request = "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        shard.on_recv(key, request.as_bytes(), NOW);
        let mut client = TestClient {
            core,
            key,
            decoder: Decoder::new(1 << 20),
            seen: 0,
        };
        // Skip the 101 response: everything up to the blank line.
        let out = self.output(&client);
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        client.seen = head_end;
        let frames = self.frames(&mut client);
        assert!(
            frames[0].contains("pusher:connection_established"),
            "{frames:?}"
        );
        client
    }

    fn output(&self, client: &TestClient) -> Vec<u8> {
        let conn = self.shards[client.core].conn(client.key);
        conn.out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// Frames written to `client` since the last call.
    fn frames(&mut self, client: &mut TestClient) -> Vec<String> {
        let out = self.output(client);
        let fresh = &out[client.seen..];
        client.seen = out.len();
        // The decoder expects masked client frames; unmasked server frames are re-masked here.
        let mut texts = Vec::new();
        let mut rest = fresh;
        while !rest.is_empty() {
            let (header, len) = match rest[1] & 0x7f {
                126 => (4, u16::from_be_bytes([rest[2], rest[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            let payload = &rest[header..header + len];
            if rest[0] & 0x0f == 1 {
                let mut messages = Vec::new();
                client
                    .decoder
                    .feed(&masked_text(payload), &mut messages)
                    .unwrap();
                for message in messages {
                    if let Message::Text(text) = message {
                        texts.push(String::from_utf8(text).unwrap());
                    }
                }
            }
            rest = &rest[header + len..];
        }
        texts
    }

    fn send(&mut self, client: &TestClient, json: &str) {
        self.shards[client.core].on_recv(client.key, &masked_text(json.as_bytes()), NOW);
    }

    fn subscribe(&mut self, client: &TestClient, channel: &str) {
        let json = format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#);
        self.send(client, &json);
    }

    /// Publishes `data` on `channel` as if a REST request arrived on `core`.
    fn publish(&mut self, core: usize, channel: &str, data: &str) {
        self.shards[core].publish(crate::mesh::message::PublishCommand {
            channel: ChannelKey::new(0, channel),
            event: Arc::from("e"),
            data: Arc::from(format!("\"{data}\"")),
            exclude: None,
            user_id: None,
            published_ms: 0,
            cache: false,
            client: false,
        });
    }
}

/// A channel owned by `owner` among `cores` cores.
fn channel_owned_by(owner: usize, cores: usize) -> String {
    (0..)
        .map(|n| format!("chan-{n}"))
        .find(|name| ChannelKey::new(0, name).owner(cores) == owner)
        .unwrap()
}

#[test]
fn subscription_succeeds_only_after_the_owner_counted_it() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut world = World::new(2);
    let channel = channel_owned_by(1, 2);
    let mut client = world.connect(0, 100);
    world.subscribe(&client, &channel);
    assert!(
        world.frames(&mut client).is_empty(),
        "no reply before the owner answers"
    );
    world.pump(&mut rng);
    assert_eq!(
        world.frames(&mut client),
        vec![format!(
            r#"{{"event":"pusher_internal:subscription_succeeded","channel":"{channel}","data":"{{}}"}}"#
        )]
    );
    assert_eq!(
        world.shards[1]
            .owner
            .subscribers(&ChannelKey::new(0, &channel)),
        Some(1)
    );
}

#[test]
fn a_connection_gone_while_pending_is_uncounted() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut world = World::new(2);
    let channel = channel_owned_by(1, 2);
    let client = world.connect(0, 100);
    world.subscribe(&client, &channel);
    world.shards[0].on_peer_closed(client.key);
    world.pump(&mut rng);
    assert!(
        world.shards[1].owner.occupied_channels() == 0,
        "the owner's count was undone"
    );
    assert!(world.shards[0].local.is_empty());
}

/// A repeated presence subscribe (issue 11, item 2): while the first is pending, the owner's one
/// answer confirms both, once; once the subscription is Active, the owner answers a repeat with
/// the member list and counts nothing.
#[test]
fn a_repeated_presence_subscribe_gets_the_members_and_is_counted_once() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut world = World::new(2);
    let channel = (0..)
        .map(|n| format!("presence-{n}"))
        .find(|name| ChannelKey::new(0, name).owner(2) == 1)
        .unwrap();
    let mut client = world.connect(0, 100);
    let socket_id = world.shards[0]
        .conn(client.key)
        .ws()
        .unwrap()
        .socket_id
        .to_string();
    let channel_data = r#"{"user_id":"1"}"#;
    let auth = crate::http::signature::hmac_sha256_hex(
        "app-secret",
        &format!("{socket_id}:{channel}:{channel_data}"),
    );
    let subscribe = serde_json::json!({"event":"pusher:subscribe","data":{
        "auth":format!("app-key:{auth}"),"channel":channel,"channel_data":channel_data}})
    .to_string();
    let confirmation = crate::protocol::outbound::presence_subscription_succeeded(
        &channel,
        &crate::protocol::outbound::presence_data([("1", "null")].into_iter()),
    );

    world.send(&client, &subscribe);
    world.send(&client, &subscribe);
    assert!(
        world.frames(&mut client).is_empty(),
        "both wait for the owner"
    );
    world.pump(&mut rng);
    assert_eq!(world.frames(&mut client), vec![confirmation.clone()]);

    world.send(&client, &subscribe);
    assert!(
        world.frames(&mut client).is_empty(),
        "the member list comes from the owner"
    );
    world.pump(&mut rng);
    assert_eq!(world.frames(&mut client), vec![confirmation]);
    let key = ChannelKey::new(0, &channel);
    let info = world.shards[1].owner.describe(&key);
    assert_eq!((info.subscription_count, info.user_count), (1, 1));
}

/// Seeded interleavings: subscribers on three cores, publishes from every core to channels
/// owned by every core, mesh messages delivered in random order. Every subscriber of a channel
/// sees the same sequence, and it contains every event published after it subscribed.
#[test]
fn every_subscriber_sees_the_same_order_under_random_interleavings() {
    for seed in 0..30u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let cores = 3;
        let mut world = World::new(cores);
        let channels: Vec<String> = (0..cores)
            .map(|owner| channel_owned_by(owner, cores))
            .collect();
        let mut clients = Vec::new();
        for n in 0..9 {
            let mut client = world.connect(n % cores, 100 + n as i32);
            let channel = channels[rng.random_range(0..channels.len())].clone();
            world.subscribe(&client, &channel);
            world.pump(&mut rng);
            assert_eq!(
                world.frames(&mut client).len(),
                1,
                "seed {seed}: subscription_succeeded"
            );
            clients.push((client, channel));
        }
        let mut published = 0;
        let mut per_channel: std::collections::HashMap<String, usize> = Default::default();
        for round in 0..20 {
            // Several publishes before any pump, from random cores, so they race in the mesh.
            for _ in 0..rng.random_range(1..5) {
                let channel = channels[rng.random_range(0..channels.len())].clone();
                world.publish(
                    rng.random_range(0..cores),
                    &channel,
                    &format!("{round}-{published}"),
                );
                *per_channel.entry(channel).or_default() += 1;
                published += 1;
            }
            if rng.random_bool(0.5) {
                world.pump(&mut rng);
            }
        }
        world.pump(&mut rng);
        for channel in &channels {
            let sequences: Vec<Vec<String>> = clients
                .iter_mut()
                .filter(|(_, c)| c == channel)
                .map(|(client, _)| std::mem::take(client))
                .map(|mut client| world.frames(&mut client))
                .collect();
            let expected = per_channel.get(channel).copied().unwrap_or(0);
            for sequence in &sequences {
                assert_eq!(
                    sequence.len(),
                    expected,
                    "seed {seed}: lost or extra events on {channel}"
                );
                assert_eq!(
                    sequence, &sequences[0],
                    "seed {seed}: subscribers of {channel} disagree"
                );
            }
        }
    }
}

impl Default for TestClient {
    fn default() -> TestClient {
        TestClient {
            core: 0,
            key: 0,
            decoder: Decoder::new(1 << 20),
            seen: 0,
        }
    }
}

// A client that stops reading is reset when its queue passes the hard cap (its queued output
// will never be read); an idle keep-alive HTTP connection that times out gets an orderly close.
#[test]
fn only_peers_that_stopped_reading_are_reset() {
    let mut world = World::new(1);
    let client = world.connect(0, 3);
    let mask = [9u8, 8, 7, 6];
    let mut ping = vec![0x89, 0x80 | 125];
    ping.extend_from_slice(&mask);
    ping.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    let cap = 2 * world.shards[0].config.server.outbound_bytes_max;
    for _ in 0..=cap / 125 {
        if world.shards[0].conn(client.key).dead {
            break;
        }
        world.shards[0].on_recv(client.key, &ping, NOW);
    }
    let conn = world.shards[0].conn(client.key);
    assert!(
        conn.dead && conn.aborted,
        "a slow consumer is dropped and reset"
    );

    let shard = &mut world.shards[0];
    let idle = shard.accept(4, NOW).unwrap();
    let timeout_ms = shard.config.server.request_timeout_ms;
    let later = Now {
        mono_ms: NOW.mono_ms + timeout_ms + 1,
        mono_us: (NOW.mono_ms + timeout_ms + 1) * 1000,
        ..NOW
    };
    shard.on_timer(later);
    let conn = shard.conn(idle);
    assert!(conn.dead, "an idle keep-alive connection times out");
    assert!(!conn.aborted, "and is closed in order, not reset");
}

/// A masked client frame with the first header byte `first` (FIN bit and opcode).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = masked_text(payload);
    frame[0] = first;
    frame
}

/// A message left unfinished is closed with 1008 once `ws_message_timeout_ms` has passed since
/// its first byte, however the client keeps the connection busy meanwhile; the bytes it held
/// are released, and the core's count of them returns to zero however a connection ends.
#[test]
fn an_unfinished_message_is_closed_at_its_deadline_and_its_bytes_released() {
    let mut world = World::new(1);
    let timeout_ms = world.shards[0].config.server.ws_message_timeout_ms;
    let at = |ms: u64| Now {
        mono_ms: NOW.mono_ms + ms,
        mono_us: (NOW.mono_ms + ms) * 1000,
        ..NOW
    };
    let stalled = world.connect(0, 100);
    let gone = world.connect(0, 101);
    let first = masked_frame(0x01, &[b' '; 1000]);
    world.shards[0].on_recv(stalled.key, &first, NOW);
    world.shards[0].on_recv(gone.key, &first[..8], NOW);
    assert_eq!(world.shards[0].ws_partial_bytes, 2000);

    // Pings inside the message keep the connection alive but not the message.
    world.shards[0].on_recv(stalled.key, &masked_frame(0x89, b"p"), at(timeout_ms - 1));
    world.shards[0].on_timer(at(timeout_ms - 1));
    assert!(!world.shards[0].conn(stalled.key).closing);
    world.shards[0].on_peer_closed(gone.key);
    assert_eq!(world.shards[0].ws_partial_bytes, 1000);
    world.shards[0].on_timer(at(timeout_ms));
    assert!(world.shards[0].conn(stalled.key).closing);
    assert_eq!(world.shards[0].ws_partial_bytes, 0);
    let out = world.output(&stalled);
    assert!(
        out.ends_with(&crate::ws::frame::encode_close(
            1008,
            "Message not completed in time"
        )),
        "{out:?}"
    );

    // A message that finishes in time holds nothing afterwards, and the next one gets its own
    // deadline.
    let mut fine = world.connect(0, 102);
    let later = at(timeout_ms);
    world.shards[0].on_recv(
        fine.key,
        &masked_frame(0x01, br#"{"event":"pusher:"#),
        later,
    );
    world.shards[0].on_recv(
        fine.key,
        &masked_frame(0x80, br#"ping"}"#),
        at(2 * timeout_ms - 1),
    );
    assert!(
        world
            .frames(&mut fine)
            .iter()
            .any(|f| f.contains("pusher:pong"))
    );
    assert_eq!(world.shards[0].ws_partial_bytes, 0);
    world.shards[0].on_recv(fine.key, &first[..8], at(2 * timeout_ms - 1));
    world.shards[0].on_timer(at(2 * timeout_ms));
    assert!(!world.shards[0].conn(fine.key).closing, "a new deadline");
}

/// The frame of one published event, as `World::publish` makes it.
fn event_frame(channel: &str, data: &str) -> Bytes {
    let text = crate::protocol::outbound::channel_event("e", channel, &format!("\"{data}\""));
    crate::ws::frame::encode_text(text.as_bytes())
}

impl World {
    /// One core with one client subscribed to `channel`, its `subscription_succeeded` read
    /// (and still queued for the socket).
    fn one_written_subscriber(channel: &str) -> (World, TestClient) {
        let mut world = World::new(1);
        let mut client = world.connect(0, 3);
        world.subscribe(&client, channel);
        assert_eq!(world.frames(&mut client).len(), 1, "subscription_succeeded");
        (world, client)
    }
}

// A send owns the frames it took from the queue: a partial write puts the unsent rest back at
// the front, in order and ahead of frames queued meanwhile, and `out_bytes` counts queued and
// in-flight bytes alike, so a peer with a send in flight still reaches its bound.
#[test]
fn a_partial_send_puts_the_rest_back_first_and_in_flight_bytes_count() {
    let (mut world, client) = World::one_written_subscriber("c");
    let shard = &mut world.shards[0];
    let mut frames = Vec::new();
    shard.take_for_send(client.key, &mut frames, usize::MAX);
    let written_so_far: usize = frames.iter().map(Bytes::len).sum();
    shard.on_sent(client.key, written_so_far, &mut frames);
    assert!(frames.is_empty() && shard.conn(client.key).out_bytes == 0);

    for data in ["a", "b", "c"] {
        shard.deliver_local(&ChannelKey::new(0, "c"), &event_frame("c", data), None, 0);
    }
    shard.take_for_send(client.key, &mut frames, 2);
    assert_eq!(frames, [event_frame("c", "a"), event_frame("c", "b")]);
    let in_flight: usize = frames.iter().map(Bytes::len).sum();
    let total = in_flight + event_frame("c", "c").len();
    assert_eq!(
        shard.conn(client.key).out_bytes,
        total,
        "in flight still counted"
    );
    shard.deliver_local(&ChannelKey::new(0, "c"), &event_frame("c", "d"), None, 0);
    // Written: all of "a" and 5 bytes of "b".
    let written = event_frame("c", "a").len() + 5;
    shard.on_sent(client.key, written, &mut frames);
    assert!(frames.is_empty());
    let conn = shard.conn(client.key);
    let queued: Vec<Bytes> = conn.out.iter().cloned().collect();
    assert_eq!(
        queued,
        [
            event_frame("c", "b").slice(5..),
            event_frame("c", "c"),
            event_frame("c", "d")
        ]
    );
    assert_eq!(conn.out_bytes, queued.iter().map(Bytes::len).sum::<usize>());

    // Everything in flight, nothing queued: the bound still sees the in-flight bytes.
    shard.take_for_send(client.key, &mut frames, usize::MAX);
    assert!(shard.conn(client.key).out.is_empty());
    let limit = shard.config.server.outbound_bytes_max;
    let big = Bytes::from(vec![b'x'; limit]);
    assert!(
        !shard.queue(client.key, big),
        "over the bound with bytes in flight"
    );
}

// Regression (issue 11): the close-linger expiry resets a connection whose send is in flight.
// The reset clears the queue; the frames the send took are untouched (still the op's, still the
// same bytes), and its completion on the dead connection drops them without requeueing.
#[test]
fn a_reset_leaves_the_frames_of_a_send_in_flight_alone() {
    let (mut world, client) = World::one_written_subscriber("c");
    let shard = &mut world.shards[0];
    let mut frames = Vec::new();
    shard.take_for_send(client.key, &mut frames, usize::MAX);
    let written: usize = frames.iter().map(Bytes::len).sum();
    shard.on_sent(client.key, written, &mut frames);
    for data in ["a", "b"] {
        shard.deliver_local(&ChannelKey::new(0, "c"), &event_frame("c", data), None, 0);
    }
    shard.take_for_send(client.key, &mut frames, 1);
    let pointer = frames[0].as_ptr();
    // The client closes; the server's close frame waits behind the send, which never ends.
    let mask = [1u8, 2, 3, 4];
    let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ mask[0], 0xe8 ^ mask[1]];
    shard.on_recv(client.key, &close, NOW);
    assert!(shard.conn(client.key).closing);
    let linger_over = NOW.mono_ms + limits::CLOSE_LINGER_MS;
    shard.on_timer(Now {
        mono_ms: linger_over,
        mono_us: linger_over * 1000,
        ..NOW
    });
    let conn = shard.conn(client.key);
    assert!(conn.dead && conn.aborted, "reset at the linger's end");
    assert!(conn.out.is_empty() && conn.out_bytes == 0);
    assert_eq!(
        frames,
        [event_frame("c", "a")],
        "the send's frame is intact"
    );
    assert_eq!(frames[0].as_ptr(), pointer, "and is the same memory");
    shard.on_sent(client.key, 0, &mut frames);
    assert!(frames.is_empty());
    assert!(shard.conn(client.key).out.is_empty(), "nothing requeued");
}

// A connection the driver accepted on its spare descriptor is answered "over capacity": an
// upgrade with the 101, then pusher:error and close 4100; anything else with 503 + Retry-After.
// Both close the connection and count a `descriptor_limit` rejection.
#[test]
fn a_connection_on_the_spare_descriptor_is_refused_over_capacity() {
    let mut world = World::new(1);
    let shard = &mut world.shards[0];
    let upgrade = shard.accept_over_capacity(3, false, NOW).unwrap();
    let request = "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    shard.on_recv(upgrade, request.as_bytes(), NOW);
    let mut client = TestClient {
        key: upgrade,
        ..TestClient::default()
    };
    let out = world.output(&client);
    assert!(out.starts_with(b"HTTP/1.1 101 "), "{out:?}");
    client.seen = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        world.frames(&mut client),
        [r#"{"event":"pusher:error","data":{"code":4100,"message":"Over capacity"}}"#]
    );
    // The close frame (skipped by `frames`) ends the output: code 4100, "Over capacity".
    let close: Vec<u8> = [0x88, 15, 0x10, 0x04]
        .into_iter()
        .chain(*b"Over capacity")
        .collect();
    assert!(world.output(&client).ends_with(&close));
    let shard = &mut world.shards[0];
    assert!(shard.conn(upgrade).closing);

    let rest = shard.accept_over_capacity(4, false, NOW).unwrap();
    shard.on_recv(
        rest,
        b"GET /apps/123456/channels HTTP/1.1\r\nHost: x\r\n\r\n",
        NOW,
    );
    let out: Vec<u8> = shard.conn(rest).out.iter().flatten().copied().collect();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
    assert!(shard.conn(rest).closing);
    let rejected = &shard.core_metrics().rejected[crate::metrics::REJECT_DESCRIPTOR_LIMIT];
    assert_eq!(rejected.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// An owner whose backlog toward a core with subscribers is at `MESH_BACKLOG_MAX` refuses new
/// publishes: a REST publish hears it from its barrier (503), a client event is only counted and
/// never blames the next REST request of its core.
#[test]
fn a_backed_up_fan_out_refuses_publishes_without_blaming_others() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut world = World::new(2);
    let channel = channel_owned_by(0, 2);
    let mut client = world.connect(1, 100);
    world.subscribe(&client, &channel);
    world.pump(&mut rng);
    assert_eq!(world.frames(&mut client).len(), 1, "subscription_succeeded");
    let filler = || ShardMessage::Deliver {
        channel: ChannelKey::new(0, "elsewhere"),
        frame: Bytes::from_static(b"x"),
        exclude: None,
        published_us: 0,
    };
    for _ in 0..limits::MESH_BACKLOG_MAX {
        world.shards[0].outbox().push(1, filler());
    }
    let query = |slot| crate::mesh::message::QueryRef {
        core: 0,
        slot,
        generation: 1,
    };
    let command = |client: bool| crate::mesh::message::PublishCommand {
        channel: ChannelKey::new(0, &channel),
        event: Arc::from(if client { "client-e" } else { "e" }),
        data: Arc::from("\"x\""),
        exclude: None,
        user_id: None,
        published_ms: 0,
        cache: false,
        client,
    };
    let shard = &mut world.shards[0];
    let publish = |client: bool| ShardMessage::Publish {
        publish: Box::new(command(client)),
        published_us: 0,
    };
    shard.handle_message(0, publish(true));
    shard.handle_message(
        0,
        ShardMessage::Barrier {
            query: query(1),
            ack: crate::config::AckMode::Local,
        },
    );
    shard.handle_message(0, publish(false));
    shard.handle_message(
        0,
        ShardMessage::Barrier {
            query: query(2),
            ack: crate::config::AckMode::Local,
        },
    );
    let mut effects = Vec::new();
    shard.owner.take_effects(&mut effects);
    let rejected = &shard.core_metrics().rejected[crate::metrics::REJECT_MESH_BACKLOG];
    assert_eq!(rejected.load(std::sync::atomic::Ordering::Relaxed), 2);
    let page = shard.owner.history(&ChannelKey::new(0, &channel));
    assert_eq!(page.last_seq, 0, "nothing was sequenced");
}
