//! Authorized channels and users (spec §2.3–2.7, §3, §4, §5, §6, §7.3–7.8, §11.1): private,
//! presence, encrypted and cache channels, client events, signin, server-to-user channels,
//! watchlists, terminate_connections, authorized connections, subscription counts, REST `info`,
//! several apps and the Origin allow-list. Every test starts its own server with two cores.
//!
//! Absence checks are ordering-based, not timing-based: the owner core of a channel sequences
//! everything published on it (member_added/removed, subscription counts, client events, REST
//! events), so once a client has seen the effect of an action, a REST "marker" published
//! afterwards reaches every subscriber after anything that action could have caused; "the next
//! frame is the marker" then proves that nothing else came. Short `expect_silence` is used only
//! where no channel exists to carry a marker.

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringcast::http::signature::hmac_sha256_hex;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

use crate::support::{APP_ID, APP_KEY, APP_SECRET, Client, Options, Server, WAIT};

const PONG: &str = r#"{"event":"pusher:pong","data":"{}"}"#;

/// The second app of the multi-app tests.
const APP2_ID: &str = "777";
const APP2_KEY: &str = "key-2";
const APP2_SECRET: &str = "secret-2";
const APP2_TOML: &str = "[[apps]]\nid = \"777\"\nkey = \"key-2\"\nsecret = \"secret-2\"\n";

static NEXT_MARKER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn server_with_app(extra_app: &str) -> Server {
    Server::with(Options {
        extra_app: extra_app.to_string(),
        ..Options::default()
    })
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// `key:hex` with hex = HMAC-SHA256(secret, string_to_sign) (spec §2.3).
fn auth_for(key: &str, secret: &str, string_to_sign: &str) -> String {
    format!("{key}:{}", hmac_sha256_hex(secret, string_to_sign))
}

fn private_auth(socket_id: &str, channel: &str) -> String {
    auth_for(APP_KEY, APP_SECRET, &format!("{socket_id}:{channel}"))
}

fn presence_auth(socket_id: &str, channel: &str, channel_data: &str) -> String {
    auth_for(
        APP_KEY,
        APP_SECRET,
        &format!("{socket_id}:{channel}:{channel_data}"),
    )
}

fn signin_auth(socket_id: &str, user_data: &str) -> String {
    auth_for(
        APP_KEY,
        APP_SECRET,
        &format!("{socket_id}::user::{user_data}"),
    )
}

fn succeeded_text(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":"{{}}"}}"#,
        quoted(channel)
    )
}

/// The exact frame of a REST-published event (`data` is the string as triggered).
fn event_text(name: &str, channel: &str, data: &str) -> String {
    format!(
        r#"{{"event":{},"channel":{},"data":{}}}"#,
        quoted(name),
        quoted(channel),
        quoted(data)
    )
}

fn member_added_text(channel: &str, user_id: &str, info_json: &str) -> String {
    let data = format!(
        r#"{{"user_id":{},"user_info":{info_json}}}"#,
        quoted(user_id)
    );
    format!(
        r#"{{"event":"pusher_internal:member_added","channel":{},"data":{}}}"#,
        quoted(channel),
        quoted(&data)
    )
}

fn member_removed_text(channel: &str, user_id: &str) -> String {
    let data = format!(r#"{{"user_id":{}}}"#, quoted(user_id));
    format!(
        r#"{{"event":"pusher_internal:member_removed","channel":{},"data":{}}}"#,
        quoted(channel),
        quoted(&data)
    )
}

fn subscription_count_text(channel: &str, count: u64) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_count","channel":{},"data":"{{\"subscription_count\":{count}}}"}}"#,
        quoted(channel)
    )
}

fn signin_success_text(user_data: &str) -> String {
    format!(
        r#"{{"event":"pusher:signin_success","data":{{"user_data":{}}}}}"#,
        quoted(user_data)
    )
}

fn send_subscribe(client: &mut Client, channel: &str, auth: Option<&str>) {
    let data = match auth {
        Some(auth) => json!({"auth":auth,"channel":channel}),
        None => json!({"auth":"","channel":channel}),
    };
    client.send(&json!({"event":"pusher:subscribe","data":data}));
}

/// Subscribes with `auth` (None: a public channel) and asserts the exact success reply.
fn subscribe_exact(client: &mut Client, channel: &str, auth: Option<&str>) {
    send_subscribe(client, channel, auth);
    assert_eq!(client.recv_text(), succeeded_text(channel));
}

fn subscribe_private(client: &mut Client, channel: &str) {
    let auth = private_auth(&client.socket_id, channel);
    subscribe_exact(client, channel, Some(&auth));
}

/// Sends a presence subscribe whose signature covers the exact `channel_data` string.
fn send_presence(client: &mut Client, channel: &str, channel_data: &str) {
    let auth = presence_auth(&client.socket_id, channel, channel_data);
    client.send(&json!({"event":"pusher:subscribe","data":{
        "auth":auth,"channel":channel,"channel_data":channel_data}}));
}

/// Joins a presence channel and returns the decoded `presence` object of the success reply.
fn join_presence(client: &mut Client, channel: &str, channel_data: &str) -> Value {
    send_presence(client, channel, channel_data);
    presence_of(&client.recv_event(), channel)
}

/// The `presence` object of a presence `subscription_succeeded` frame.
fn presence_of(reply: &Value, channel: &str) -> Value {
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
    assert_eq!(reply["channel"], channel, "{reply}");
    let data: Value = serde_json::from_str(reply["data"].as_str().expect("string data")).unwrap();
    data["presence"].clone()
}

/// `ids` of a presence object, sorted (the spec does not order them).
fn sorted_ids(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids is not an array: {presence}"))
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_string())
        .collect();
    ids.sort();
    ids
}

/// Asserts a `pusher:subscription_error` for `channel` with `type` and `status`.
fn assert_subscription_error(reply: &Value, channel: &str, error_type: &str, status: u64) {
    assert_eq!(reply["event"], "pusher:subscription_error", "{reply}");
    assert_eq!(reply["channel"], channel, "{reply}");
    assert_eq!(reply["data"]["type"], error_type, "{reply}");
    assert_eq!(reply["data"]["status"], status, "{reply}");
    assert!(reply["data"]["error"].is_string(), "{reply}");
}

/// Sends `pusher:ping` and asserts the very next text message is the pong: the connection is
/// open and nothing else was queued before it.
fn assert_alive(client: &mut Client) {
    client.send_text(r#"{"event":"pusher:ping","data":{}}"#);
    assert_eq!(client.recv_text(), PONG);
}

/// Publishes a unique marker on `channel` and asserts it is the next frame of every client.
fn assert_next_is_marker(server: &Server, channel: &str, clients: &mut [&mut Client]) {
    let data = format!("marker-{}", NEXT_MARKER.fetch_add(1, Ordering::Relaxed));
    server.trigger(&json!({"name":"marker","channel":channel,"data":data}));
    let expected = event_text("marker", channel, &data);
    for client in clients.iter_mut() {
        assert_eq!(client.recv_text(), expected, "socket {}", client.socket_id);
    }
}

/// Signs in with `user_data` and asserts the exact `pusher:signin_success`.
fn signin(client: &mut Client, user_data: &str) {
    let auth = signin_auth(&client.socket_id, user_data);
    client.send(&json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    assert_eq!(client.recv_text(), signin_success_text(user_data));
}

/// Signs in as `id` and, like pusher-js, subscribes to `#server-to-user-{id}`; once that is
/// confirmed the user channel is live, so sendToUser and watchlist events reach the connection.
fn sign_in_as(client: &mut Client, id: &str) {
    signin(client, &format!(r#"{{"id":{}}}"#, quoted(id)));
    subscribe_exact(client, &format!("#server-to-user-{id}"), None);
}

/// Sends a Close frame and reads until the server's Close (or the end of the stream): by then
/// the server has released the connection's subscriptions and user state.
fn close_and_wait(mut client: Client) {
    let _ = client.ws.close(None);
    let _ = client.ws.flush();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match client.ws.read() {
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        }
    }
    panic!("no close reply within {WAIT:?}");
}

/// The core a connection lives on: socket ids carry it in the low part (`low % cores`,
/// src/protocol/socket_id.rs). Used only to spread connections over both cores, never asserted.
fn core_of(client: &Client) -> Option<u64> {
    let low = client.socket_id.split_once('.')?.1;
    low.parse::<u64>().ok().map(|low| low % 2)
}

/// `n` connected clients alternating between the two cores where the kernel lets us (it spreads
/// accepted connections over the per-core listeners); the spare connections are closed.
fn spread(server: &Server, n: usize) -> Vec<Client> {
    let mut pools: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    let mut chosen = Vec::new();
    let mut attempts = 0;
    while chosen.len() < n {
        let want = (chosen.len() % 2) as u64;
        if let Some(client) = pools[want as usize].pop() {
            chosen.push(client);
            continue;
        }
        if attempts >= 12 * n {
            // Could not find one on that core: take any.
            let client = pools[1 - want as usize]
                .pop()
                .unwrap_or_else(|| server.client());
            chosen.push(client);
            continue;
        }
        attempts += 1;
        let client = server.client();
        let core = core_of(&client).unwrap_or(want);
        pools[core as usize].push(client);
    }
    for client in pools.into_iter().flatten() {
        client.close();
    }
    chosen
}

/// A client of another app (by key) that has read `pusher:connection_established`.
fn client_for(server: &Server, key: &str) -> Client {
    let mut client = Client::connect(
        server.addr,
        &format!("/app/{key}?protocol=7&client=js&version=8.4.0&flash=false"),
    );
    read_established(&mut client);
    client
}

fn read_established(client: &mut Client) {
    let established = client.recv_event();
    assert_eq!(
        established["event"], "pusher:connection_established",
        "{established}"
    );
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    client.socket_id = data["socket_id"].as_str().unwrap().to_string();
}

/// A WebSocket to `/app/{key}` whose upgrade request carries `Origin: origin`.
fn connect_with_origin(server: &Server, key: &str, origin: &str) -> Client {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!(
        "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false",
        server.addr
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    let (ws, _) = tungstenite::client(request, stream).expect("WebSocket handshake");
    Client {
        ws,
        socket_id: String::new(),
    }
}

fn json_body(status: u16, body: &str) -> Value {
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn get_json(server: &Server, path: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = server.rest("GET", &format!("/apps/{APP_ID}{path}"), params, "");
    json_body(status, &body)
}

fn client_event_text(event: &str, channel: &str, data_json: &str) -> String {
    format!(
        r#"{{"event":{},"channel":{},"data":{data_json}}}"#,
        quoted(event),
        quoted(channel)
    )
}

/// Waits (bounded) until the owner of cache channel `channel` holds `data`. The REST answer to a
/// trigger does not wait for the owner core to store the event, so a subscribe that lands on the
/// owner right after the 200 may overtake the publish still in flight between cores.
fn wait_cached(server: &Server, channel: &str, data: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let described = get_json(
            server,
            &format!("/channels/{channel}"),
            &[("info", "cache")],
        );
        if described["cache"]["data"] == data {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} does not hold {data:?} after {WAIT:?}: {described}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Auth strings (spec §11.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn auth_strings_match_spec_test_vectors() {
    let a = ("278d425bdf160c739803", "7ad3773142a6692b25b8");
    let b = ("app-key", "app-secret");
    let vectors = [
        (
            a,
            "1234.1234:private-foobar",
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
        ),
        (
            a,
            "1234.1234:private-encrypted-foobar",
            "e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533",
        ),
        (
            a,
            r#"1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
        ),
        (
            a,
            r#"1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#,
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c",
        ),
        (
            a,
            r#"1234.1234:presence-foobar:{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#,
            "4c6d8fc42a207ba96a0779844171b0bb819d96ffceef9609f5cce596ab17a800",
        ),
        (
            a,
            "1234.1234:presence-foobar",
            "71506e66e7fdca106571b8999a849ad34245bc653772e51e0026c1a2475b92ba",
        ),
        (
            a,
            r#"1234.1234::user::{"id":"12345"}"#,
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
        ),
        (
            a,
            r#"1234.1234::user::{"id":"12345","user_info":{"name":"Ada"},"watchlist":["2","3"]}"#,
            "f0b975953a201ad748193c9176fcddb95098b3e0c8918112003649c937e6219a",
        ),
        (
            b,
            "123.456:private-test",
            "0beac6f13e39cd0a672f059f0394f4aed469adf4e553233b58eebf22c5c67c52",
        ),
        (
            b,
            r#"123.456:presence-room:{"user_id":"1","user_info":{"name":"A"}}"#,
            "ca287d77e1e66ba2cc156c0efbb18ab889ec3512b52373d109a861bf1c2dd94c",
        ),
        (
            b,
            r#"123.456::user::{"id":"1"}"#,
            "cf3b7edbf1f87b10cfa4fe3005dca31398fb257dab5994499c29f8540fe6b0e9",
        ),
    ];
    for ((key, secret), string_to_sign, hex) in vectors {
        assert_eq!(
            auth_for(key, secret, string_to_sign),
            format!("{key}:{hex}"),
            "string to sign {string_to_sign:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Private and encrypted channels (spec §2.3–2.5, §6)
// ---------------------------------------------------------------------------------------------

#[test]
fn private_channel_auth_success_and_forged_signature() {
    let server = Server::start();
    let mut client = server.client();
    subscribe_private(&mut client, "private-a");

    // Signed for another socket id: a forgery.
    let forged = private_auth("1234.1234", "private-b");
    send_subscribe(&mut client, "private-b", Some(&forged));
    let reply = client.recv_event();
    assert_subscription_error(&reply, "private-b", "AuthError", 401);
    // A key that is not the app's, and no auth at all.
    let other_key = auth_for(
        "other-key",
        APP_SECRET,
        &format!("{}:private-b", client.socket_id),
    );
    send_subscribe(&mut client, "private-b", Some(&other_key));
    assert_subscription_error(&client.recv_event(), "private-b", "AuthError", 401);
    send_subscribe(&mut client, "private-b", None);
    assert_subscription_error(&client.recv_event(), "private-b", "AuthError", 401);

    // The connection stays usable: no success followed, and a correct auth still works.
    assert_alive(&mut client);
    subscribe_private(&mut client, "private-b");
    assert_next_is_marker(&server, "private-a", &mut [&mut client]);
    assert_next_is_marker(&server, "private-b", &mut [&mut client]);
}

#[test]
fn encrypted_channel_subscribes_and_relays_payload_byte_for_byte() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let channel = "private-encrypted-x";
    for client in clients.iter_mut() {
        subscribe_private(client, channel);
    }
    // A NaCl secretbox payload as the server SDKs send it; odd spacing and escapes must survive.
    let data = r#"{"nonce":"4Gh+QoJpVx1Fiz0bBx6/WNU2UwC1UVcK","ciphertext":"y3n+X0m\/4Vs= =","extra" : 1}"#;
    server.trigger(&json!({"name":"secret","channel":channel,"data":data}));
    let expected = event_text("secret", channel, data);
    for client in clients.iter_mut() {
        assert_eq!(client.recv_text(), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Presence channels (spec §2.6, §7.7)
// ---------------------------------------------------------------------------------------------

#[test]
fn presence_subscription_succeeded_exact_data() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    send_presence(
        a,
        "presence-x",
        r#"{"user_id":"1","user_info":{"name":"A"}}"#,
    );
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[\"1\"],\"hash\":{\"1\":{\"name\":\"A\"}},\"count\":1}}"}"#
    );
    // No user_info: stored as null.
    let presence = join_presence(b, "presence-x", r#"{"user_id":"2"}"#);
    assert_eq!(sorted_ids(&presence), ["1", "2"], "{presence}");
    assert_eq!(
        presence["hash"],
        json!({"1":{"name":"A"},"2":null}),
        "{presence}"
    );
    assert_eq!(presence["count"], 2, "{presence}");
    assert_eq!(a.recv_text(), member_added_text("presence-x", "2", "null"));
}

#[test]
fn presence_membership_is_per_user_across_cores() {
    let server = Server::start();
    let room = "presence-room";
    let mut clients = spread(&server, 3).into_iter();
    let (mut a, mut b1, mut b2) = (
        clients.next().unwrap(),
        clients.next().unwrap(),
        clients.next().unwrap(),
    );
    let presence = join_presence(&mut a, room, r#"{"user_id":"1","user_info":{"name":"A"}}"#);
    assert_eq!(presence["count"], 1);

    let presence = join_presence(&mut b1, room, r#"{"user_id":"2","user_info":{"name":"B"}}"#);
    assert_eq!(sorted_ids(&presence), ["1", "2"]);
    assert_eq!(presence["count"], 2);
    assert_eq!(
        a.recv_text(),
        member_added_text(room, "2", r#"{"name":"B"}"#)
    );
    // The joining socket never gets its own member_added.
    assert_next_is_marker(&server, room, &mut [&mut a, &mut b1]);

    // The same user from a second connection: still one member, no member_added.
    let presence = join_presence(
        &mut b2,
        room,
        r#"{"user_id":"2","user_info":{"name":"B2"}}"#,
    );
    assert_eq!(sorted_ids(&presence), ["1", "2"], "{presence}");
    assert_eq!(presence["count"], 2, "{presence}");
    assert_eq!(
        presence["hash"],
        json!({"1":{"name":"A"},"2":{"name":"B2"}}),
        "last writer wins: {presence}"
    );
    assert_next_is_marker(&server, room, &mut [&mut a, &mut b1, &mut b2]);

    // One of user 2's connections leaves: user 2 is still present, no member_removed.
    close_and_wait(b1);
    assert_next_is_marker(&server, room, &mut [&mut a, &mut b2]);
    let (status, body) = server.rest(
        "GET",
        &format!("/apps/{APP_ID}/channels/{room}/users"),
        &[],
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"users":[{"id":"1"},{"id":"2"}]}"#)
    );

    // The last one leaves: exactly one member_removed.
    close_and_wait(b2);
    assert_eq!(a.recv_text(), member_removed_text(room, "2"));
    assert_next_is_marker(&server, room, &mut [&mut a]);
}

/// A repeated `pusher:subscribe` to a presence channel (issue 11, item 2): the confirmation
/// carries the member list, as the first one did (pusher-js reads `presence.hash` from it and
/// throws on `"{}"`), and the connection is counted once: no `member_added` for the repeat, and
/// one unsubscribe is enough to leave.
#[test]
fn presence_repeated_subscribe_answers_with_the_member_list() {
    let server = Server::start();
    let room = "presence-again";
    let mut clients = spread(&server, 3).into_iter();
    let (mut a, mut b, mut c) = (
        clients.next().unwrap(),
        clients.next().unwrap(),
        clients.next().unwrap(),
    );
    let a_data = r#"{"user_id":"1","user_info":{"name":"A"}}"#;
    join_presence(&mut a, room, a_data);
    join_presence(&mut b, room, r#"{"user_id":"2","user_info":{"name":"B"}}"#);
    assert_eq!(
        a.recv_text(),
        member_added_text(room, "2", r#"{"name":"B"}"#)
    );

    // The repeat of an Active subscription: the same presence data as a first subscribe.
    let presence = join_presence(&mut a, room, a_data);
    assert_eq!(sorted_ids(&presence), ["1", "2"], "{presence}");
    assert_eq!(
        presence["hash"],
        json!({"1":{"name":"A"},"2":{"name":"B"}}),
        "{presence}"
    );
    assert_eq!(presence["count"], 2, "{presence}");
    // Nothing else: one confirmation for `a`, no member_added for `b`.
    assert_next_is_marker(&server, room, &mut [&mut a, &mut b]);
    let described = get_json(
        &server,
        &format!("/channels/{room}"),
        &[("info", "user_count,subscription_count")],
    );
    assert_eq!(
        described,
        json!({"occupied":true,"user_count":2,"subscription_count":2}),
        "the repeat counted the connection again"
    );

    // A repeat sent right behind the first subscribe (whose owner may not have answered yet):
    // every confirmation `c` gets carries the member list, and `c` is still counted once.
    let c_data = r#"{"user_id":"3"}"#;
    let auth = presence_auth(&c.socket_id, room, c_data);
    let subscribe = json!({"event":"pusher:subscribe","data":{
        "auth":auth,"channel":room,"channel_data":c_data}});
    for _ in 0..2 {
        c.ws.write(Message::text(subscribe.to_string())).unwrap();
    }
    c.ws.flush().unwrap();
    let presence = presence_of(&c.recv_event(), room);
    assert_eq!(sorted_ids(&presence), ["1", "2", "3"], "{presence}");
    assert_eq!(a.recv_text(), member_added_text(room, "3", "null"));
    assert_eq!(b.recv_text(), member_added_text(room, "3", "null"));
    let marker = format!("marker-{}", NEXT_MARKER.fetch_add(1, Ordering::Relaxed));
    server.trigger(&json!({"name":"marker","channel":room,"data":marker}));
    let marker_text = event_text("marker", room, &marker);
    loop {
        let text = c.recv_text();
        if text == marker_text {
            break;
        }
        // At most the second confirmation (when the first subscribe was already Active).
        let presence = presence_of(&serde_json::from_str(&text).unwrap(), room);
        assert_eq!(sorted_ids(&presence), ["1", "2", "3"], "{presence}");
        assert_eq!(presence["count"], 3, "{presence}");
    }
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.recv_text(),
            marker_text,
            "only one member_added for 3"
        );
    }

    // One unsubscribe leaves: the others hear member_removed once.
    a.send(&json!({"event":"pusher:unsubscribe","data":{"channel":room}}));
    assert_eq!(b.recv_text(), member_removed_text(room, "1"));
    assert_eq!(c.recv_text(), member_removed_text(room, "1"));
    assert_next_is_marker(&server, room, &mut [&mut b, &mut c]);
    let described = get_json(
        &server,
        &format!("/channels/{room}"),
        &[("info", "user_count,subscription_count")],
    );
    assert_eq!(
        described,
        json!({"occupied":true,"user_count":2,"subscription_count":2})
    );
}

#[test]
fn presence_integer_user_id_becomes_a_string() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    let presence = join_presence(a, "presence-int", r#"{"user_id":"1"}"#);
    assert_eq!(presence["count"], 1);
    // Laravel sends integer ids.
    let presence = join_presence(b, "presence-int", r#"{"user_id":42,"user_info":{"n":1}}"#);
    assert_eq!(sorted_ids(&presence), ["1", "42"], "{presence}");
    assert_eq!(presence["hash"]["42"], json!({"n":1}), "{presence}");
    assert_eq!(
        a.recv_text(),
        member_added_text("presence-int", "42", r#"{"n":1}"#)
    );
    let (status, body) = server.rest(
        "GET",
        &format!("/apps/{APP_ID}/channels/presence-int/users"),
        &[],
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"users":[{"id":"1"},{"id":"42"}]}"#)
    );
}

#[test]
fn presence_bad_channel_data_is_auth_error() {
    let server = Server::start();
    let mut client = server.client();
    let channel = "presence-x";
    let socket_id = client.socket_id.clone();

    // No channel_data on a connection that is not signed in (signature over socket:channel).
    let auth = private_auth(&socket_id, channel);
    send_subscribe(&mut client, channel, Some(&auth));
    assert_subscription_error(&client.recv_event(), channel, "AuthError", 401);

    // Correctly signed but not a JSON object with a usable user_id.
    for channel_data in [
        "not json",
        r#"{"user_info":{"name":"no id"}}"#,
        r#"{"user_id":""}"#,
        r#"{"user_id":null}"#,
        r#"{"user_id":{"id":"1"}}"#,
    ] {
        send_presence(&mut client, channel, channel_data);
        let reply = client.recv_event();
        assert_subscription_error(&reply, channel, "AuthError", 401);
    }

    // The signature covers the exact string sent: one signed over a different serialization of
    // the same JSON is refused ...
    let sent = r#"{"user_id": "5", "user_info": {"name": "Five"}}"#;
    let compact = r#"{"user_id":"5","user_info":{"name":"Five"}}"#;
    let auth = presence_auth(&socket_id, channel, compact);
    client.send(&json!({"event":"pusher:subscribe","data":{
        "auth":auth,"channel":channel,"channel_data":sent}}));
    assert_subscription_error(&client.recv_event(), channel, "AuthError", 401);
    // ... and one over the exact bytes is accepted.
    let presence = join_presence(&mut client, channel, sent);
    assert_eq!(sorted_ids(&presence), ["5"]);
    assert_eq!(presence["hash"], json!({"5":{"name":"Five"}}));
    assert_alive(&mut client);
}

/// `channel_data` must be a JSON *object* (spec §2.6); a JSON array is not one, even though a
/// derived serde struct would read `["1"]` positionally as `user_id = "1"`.
#[test]
fn presence_channel_data_array_is_auth_error() {
    let server = Server::start();
    let mut client = server.client();
    for channel_data in [r#"["1"]"#, r#"["1",{"name":"A"}]"#] {
        send_presence(&mut client, "presence-arr", channel_data);
        let reply = client.recv_event();
        assert_subscription_error(&reply, "presence-arr", "AuthError", 401);
    }
    assert_alive(&mut client);
}

#[test]
fn presence_members_max_refuses_a_third_user() {
    let server = server_with_app("presence_members_max = 2");
    let mut clients = spread(&server, 4).into_iter();
    let mut c1 = clients.next().unwrap();
    let mut c2 = clients.next().unwrap();
    let mut c3 = clients.next().unwrap();
    let mut c1_again = clients.next().unwrap();
    let channel = "presence-full";
    join_presence(&mut c1, channel, r#"{"user_id":"1"}"#);
    join_presence(&mut c2, channel, r#"{"user_id":"2"}"#);
    assert_eq!(c1.recv_text(), member_added_text(channel, "2", "null"));

    send_presence(&mut c3, channel, r#"{"user_id":"3"}"#);
    assert_subscription_error(&c3.recv_event(), channel, "LimitReached", 4100);
    assert_alive(&mut c3);

    // A user already present may join from another connection.
    let presence = join_presence(&mut c1_again, channel, r#"{"user_id":"1"}"#);
    assert_eq!(presence["count"], 2, "{presence}");
    // Nobody heard about user 3, nor about user 1's second connection.
    assert_next_is_marker(&server, channel, &mut [&mut c1, &mut c2, &mut c1_again]);
    let (status, body) = server.rest(
        "GET",
        &format!("/apps/{APP_ID}/channels/{channel}/users"),
        &[],
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"users":[{"id":"1"},{"id":"2"}]}"#)
    );
}

#[test]
fn presence_user_info_over_limit_is_limit_reached() {
    let server = server_with_app("presence_user_info_bytes_max = 16");
    let mut client = server.client();
    let channel = "presence-info";
    send_presence(
        &mut client,
        channel,
        r#"{"user_id":"1","user_info":{"name":"a name that is far too long"}}"#,
    );
    let reply = client.recv_event();
    assert_subscription_error(&reply, channel, "LimitReached", 4301);
    assert_alive(&mut client);
    // Within the limit it joins.
    let presence = join_presence(
        &mut client,
        channel,
        r#"{"user_id":"1","user_info":{"n":1}}"#,
    );
    assert_eq!(presence["count"], 1);
}

#[test]
fn presence_rest_users_and_user_counts() {
    let server = Server::start();
    let mut clients = spread(&server, 4).into_iter();
    let mut c2 = clients.next().unwrap();
    let mut c1 = clients.next().unwrap();
    let mut c2_again = clients.next().unwrap();
    let mut c3 = clients.next().unwrap();
    // Joined out of order; user 2 from two connections.
    join_presence(&mut c2, "presence-x", r#"{"user_id":"2"}"#);
    join_presence(&mut c1, "presence-x", r#"{"user_id":"1"}"#);
    join_presence(&mut c2_again, "presence-x", r#"{"user_id":"2"}"#);
    join_presence(&mut c3, "presence-y", r#"{"user_id":"3"}"#);
    subscribe_exact(&mut c3, "public-x", None);

    let (status, body) = server.rest(
        "GET",
        &format!("/apps/{APP_ID}/channels/presence-x/users"),
        &[],
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"users":[{"id":"1"},{"id":"2"}]}"#)
    );

    let listing = get_json(
        &server,
        "/channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
    );
    assert_eq!(
        listing,
        json!({"channels":{"presence-x":{"user_count":2},"presence-y":{"user_count":1}}})
    );

    let described = get_json(&server, "/channels/presence-x", &[("info", "user_count")]);
    assert_eq!(described, json!({"occupied":true,"user_count":2}));

    for channel in ["public-x", "private-x", "cache-x"] {
        let (status, body) = server.rest(
            "GET",
            &format!("/apps/{APP_ID}/channels/{channel}/users"),
            &[],
            "",
        );
        assert_eq!(status, 400, "{channel}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Client events (spec §3)
// ---------------------------------------------------------------------------------------------

const CLIENT_EVENTS: &str = "enable_client_events = true";

#[test]
fn client_events_relayed_on_private_channel_not_echoed() {
    let server = server_with_app(CLIENT_EVENTS);
    let mut clients = spread(&server, 3);
    let [a, b, c] = clients.as_mut_slice() else {
        unreachable!()
    };
    let channel = "private-chat";
    for client in [&mut *a, &mut *b, &mut *c] {
        subscribe_private(client, channel);
    }
    a.send_text(r#"{"event":"client-typing","channel":"private-chat","data":{"x":1}}"#);
    let expected = client_event_text("client-typing", channel, r#"{"x":1}"#);
    assert_eq!(b.recv_text(), expected);
    assert_eq!(c.recv_text(), expected);
    // Never echoed to the sender.
    assert_next_is_marker(&server, channel, &mut [a, b, c]);
}

#[test]
fn client_events_on_presence_carry_sender_user_id() {
    let server = server_with_app(CLIENT_EVENTS);
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    let channel = "presence-chat";
    join_presence(a, channel, r#"{"user_id":"10"}"#);
    join_presence(b, channel, r#"{"user_id":"11"}"#);
    assert_eq!(a.recv_text(), member_added_text(channel, "11", "null"));
    // The user_id comes from the sender's channel_data, never from `data`.
    a.send_text(r#"{"event":"client-typing","channel":"presence-chat","data":{"user_id":"evil"}}"#);
    assert_eq!(
        b.recv_text(),
        r#"{"event":"client-typing","channel":"presence-chat","data":{"user_id":"evil"},"user_id":"10"}"#
    );
    assert_next_is_marker(&server, channel, &mut [a, b]);
}

#[test]
fn client_events_rejected_on_public_channel_and_when_not_subscribed() {
    let server = server_with_app(CLIENT_EVENTS);
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    subscribe_exact(a, "public-chat", None);
    subscribe_exact(b, "public-chat", None);
    a.send_text(r#"{"event":"client-typing","channel":"public-chat","data":{}}"#);
    let reply = a.recv_event();
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    assert_eq!(reply["data"]["code"], Value::Null, "{reply}");
    assert!(reply["data"]["message"].is_string(), "{reply}");

    // Not subscribed to the private channel b is on.
    subscribe_private(b, "private-chat");
    a.send_text(r#"{"event":"client-typing","channel":"private-chat","data":{}}"#);
    let reply = a.recv_event();
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    assert_eq!(reply["data"]["code"], Value::Null, "{reply}");
    assert!(reply["data"]["message"].is_string(), "{reply}");

    // Nothing was relayed, and the sender is still connected.
    assert_next_is_marker(&server, "public-chat", &mut [a, b]);
    assert_next_is_marker(&server, "private-chat", &mut [b]);
    assert_alive(a);
}

#[test]
fn client_events_disabled_by_default() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    subscribe_private(a, "private-chat");
    subscribe_private(b, "private-chat");
    a.send_text(r#"{"event":"client-typing","channel":"private-chat","data":{}}"#);
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher:error","channel":"private-chat","data":{"code":4301,"message":"The app does not have client messaging enabled."}}"#
    );
    assert_next_is_marker(&server, "private-chat", &mut [a, b]);
}

#[test]
fn client_events_rate_limited_without_close() {
    let server = server_with_app("enable_client_events = true\nclient_events_per_sec_max = 3");
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    let channel = "private-rl";
    subscribe_private(a, channel);
    subscribe_private(b, channel);
    for n in 0..6 {
        a.send_text(&format!(
            r#"{{"event":"client-n","channel":"private-rl","data":{{"n":{n}}}}}"#
        ));
    }
    // The server answers in order, so everything about the six events precedes the pong.
    a.send_text(r#"{"event":"pusher:ping","data":{}}"#);
    let mut rejected = 0;
    loop {
        let text = a.recv_text();
        if text == PONG {
            break;
        }
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["event"], "pusher:error", "{text}");
        assert_eq!(reply["data"]["code"], 4301, "{text}");
        assert_eq!(
            reply["data"]["message"], "Client event rejected due to rate limit",
            "{text}"
        );
        rejected += 1;
    }
    assert!(rejected >= 1, "no rate-limit error for 6 events at 3/s");
    let relayed = 6 - rejected;
    assert!(relayed <= 3, "{relayed} relayed within one second at 3/s");
    // The first `relayed` events arrive, in order, and nothing more.
    for n in 0..relayed {
        assert_eq!(
            b.recv_text(),
            client_event_text("client-n", channel, &format!(r#"{{"n":{n}}}"#))
        );
    }
    assert_next_is_marker(&server, channel, &mut [a, b]);
    assert_alive(a);
}

// ---------------------------------------------------------------------------------------------
// 5. Cache channels (spec §5, §7.6)
// ---------------------------------------------------------------------------------------------

#[test]
fn cache_channel_replays_last_event_to_new_subscribers() {
    let server = Server::start();
    server.trigger(&json!({"name":"first","channel":"cache-x","data":"one"}));
    server.trigger(&json!({"name":"second","channel":"cache-x","data":"{\"n\":2}"}));
    wait_cached(&server, "cache-x", "{\"n\":2}");
    let mut clients = spread(&server, 2);
    for client in clients.iter_mut() {
        subscribe_exact(client, "cache-x", None);
        assert_eq!(
            client.recv_text(),
            event_text("second", "cache-x", "{\"n\":2}")
        );
    }
    let described = get_json(&server, "/channels/cache-x", &[("info", "cache")]);
    assert_eq!(described["occupied"], true, "{described}");
    assert_eq!(described["cache"]["data"], "{\"n\":2}", "{described}");
    let ttl = described["cache"]["ttl"].as_u64().expect("ttl");
    assert!((1..=1800).contains(&ttl), "{described}");

    let empty = get_json(&server, "/channels/cache-never", &[("info", "cache")]);
    assert_eq!(empty, json!({"occupied":false,"cache":null}));
}

#[test]
fn cache_miss_on_empty_cache_channel() {
    let server = Server::start();
    let mut client = server.client();
    subscribe_exact(&mut client, "cache-y", None);
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:cache_miss","channel":"cache-y","data":"{}"}"#
    );
    assert_alive(&mut client);
}

#[test]
fn private_cache_channel_requires_auth() {
    let server = Server::start();
    let mut client = server.client();
    let channel = "private-cache-z";
    send_subscribe(&mut client, channel, None);
    assert_subscription_error(&client.recv_event(), channel, "AuthError", 401);
    assert_alive(&mut client);
    server.trigger(&json!({"name":"e","channel":channel,"data":"cached"}));
    wait_cached(&server, channel, "cached");
    subscribe_private(&mut client, channel);
    assert_eq!(client.recv_text(), event_text("e", channel, "cached"));
}

#[test]
fn client_events_are_not_cached() {
    let server = server_with_app(CLIENT_EVENTS);
    let mut clients = spread(&server, 3);
    let [a, b, c] = clients.as_mut_slice() else {
        unreachable!()
    };
    let channel = "private-cache-c";
    let miss = format!(r#"{{"event":"pusher:cache_miss","channel":"{channel}","data":"{{}}"}}"#);
    for client in [&mut *a, &mut *b] {
        subscribe_private(client, channel);
        assert_eq!(client.recv_text(), miss);
    }
    a.send_text(r#"{"event":"client-x","channel":"private-cache-c","data":{"k":"v"}}"#);
    assert_eq!(
        b.recv_text(),
        client_event_text("client-x", channel, r#"{"k":"v"}"#)
    );
    subscribe_private(c, channel);
    assert_eq!(c.recv_text(), miss);
}

#[test]
fn cache_entry_expires_after_ttl() {
    let server = server_with_app("cache_ttl_secs = 1");
    server.trigger(&json!({"name":"e","channel":"cache-t","data":"d"}));
    let deadline = Instant::now() + WAIT;
    loop {
        let described = get_json(&server, "/channels/cache-t", &[("info", "cache")]);
        if described["cache"].is_null() {
            break;
        }
        assert_eq!(described["cache"]["data"], "d", "{described}");
        assert!(described["cache"]["ttl"].as_u64() <= Some(1), "{described}");
        assert!(
            Instant::now() < deadline,
            "cache entry with a 1 s TTL still there after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = server.client();
    subscribe_exact(&mut client, "cache-t", None);
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:cache_miss","channel":"cache-t","data":"{}"}"#
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Signin and server-to-user channels (spec §4.1, §4.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn signin_success_and_server_to_user_channel() {
    let server = Server::start();
    let mut client = server.client();
    let user_data = r#"{"id":"12345","user_info":{"name":"Ada"}}"#;
    let auth = signin_auth(&client.socket_id, user_data);
    client.send(&json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    assert_eq!(
        client.recv_text(),
        r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"12345\",\"user_info\":{\"name\":\"Ada\"}}"}}"#
    );
    subscribe_exact(&mut client, "#server-to-user-12345", None);
    send_subscribe(&mut client, "#server-to-user-999", None);
    assert_subscription_error(
        &client.recv_event(),
        "#server-to-user-999",
        "AuthError",
        401,
    );
    assert_alive(&mut client);
}

#[test]
fn signin_bad_signature_closes_with_4009() {
    let server = Server::start();
    let mut client = server.client();
    let user_data = r#"{"id":"1"}"#;
    let auth = signin_auth("1234.1234", user_data);
    client.send(&json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    let reply = client.recv_event();
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    assert_eq!(reply["data"]["code"], 4009, "{reply}");
    assert_eq!(client.expect_close(), 4009);
}

/// `user_data` must be a JSON object with an `id` (spec §4.1); an array is invalid user data.
#[test]
fn signin_user_data_array_is_refused_with_4009() {
    let server = Server::start();
    let mut client = server.client();
    let user_data = r#"["1"]"#;
    let auth = signin_auth(&client.socket_id, user_data);
    client.send(&json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    let reply = client.recv_event();
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    assert_eq!(reply["data"]["code"], 4009, "{reply}");
    assert_eq!(client.expect_close(), 4009);
}

#[test]
fn send_to_user_reaches_every_connection_of_that_user() {
    let server = Server::start();
    let mut clients = spread(&server, 4).into_iter();
    let mut u1a = clients.next().unwrap();
    let mut u1b = clients.next().unwrap();
    let mut u2 = clients.next().unwrap();
    let mut anonymous = clients.next().unwrap();
    sign_in_as(&mut u1a, "1");
    sign_in_as(&mut u1b, "1");
    sign_in_as(&mut u2, "2");

    let data = r#"{"x":1}"#;
    server.trigger(&json!({"name":"notice","channel":"#server-to-user-1","data":data}));
    let expected = event_text("notice", "#server-to-user-1", data);
    assert_eq!(u1a.recv_text(), expected);
    assert_eq!(u1b.recv_text(), expected);
    assert_next_is_marker(&server, "#server-to-user-2", &mut [&mut u2]);
    assert_next_is_marker(&server, "#server-to-user-1", &mut [&mut u1a, &mut u1b]);
    // The anonymous connection has no channel to carry a marker: a short absence check.
    anonymous.expect_silence(Duration::from_millis(300));
    assert_alive(&mut anonymous);
}

#[test]
fn presence_without_channel_data_after_signin_joins_as_signed_in_user() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    let channel = "presence-s";
    join_presence(b, channel, r#"{"user_id":"8"}"#);
    signin(a, r#"{"id":"7","user_info":{"name":"G"}}"#);
    let auth = private_auth(&a.socket_id, channel);
    send_subscribe(a, channel, Some(&auth));
    let presence = presence_of(&a.recv_event(), channel);
    assert_eq!(sorted_ids(&presence), ["7", "8"], "{presence}");
    assert_eq!(presence["hash"], json!({"7":{"name":"G"},"8":null}));
    assert_eq!(presence["count"], 2);
    assert_eq!(
        b.recv_text(),
        member_added_text(channel, "7", r#"{"name":"G"}"#)
    );
}

#[test]
fn signin_watchlist_over_limit_is_truncated_with_4302() {
    let server = server_with_app("watchlist_max = 2");
    let mut client = server.client();
    signin(&mut client, r#"{"id":"w","watchlist":["a","b","c"]}"#);
    // Then the 4302 error and the initial status of the first two ids, in either order.
    let mut error = None;
    let mut status = None;
    for _ in 0..2 {
        let reply = client.recv_event();
        match reply["event"].as_str() {
            Some("pusher:error") => error = Some(reply),
            Some("pusher_internal:watchlist_events") => status = Some(reply),
            _ => panic!("unexpected {reply}"),
        }
    }
    let error = error.expect("pusher:error 4302");
    assert_eq!(error["data"]["code"], 4302, "{error}");
    let message = error["data"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Watchlist limit exceeded."), "{error}");
    let status = status.expect("watchlist_events");
    let events = status["data"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{status}");
    assert_eq!(events[0]["name"], "offline", "{status}");
    let mut ids: Vec<&str> = events[0]["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"], "{status}");
    assert_alive(&mut client);
}

// ---------------------------------------------------------------------------------------------
// 7. Watchlist (spec §4.3)
// ---------------------------------------------------------------------------------------------

#[test]
fn watchlist_online_offline_events() {
    let server = Server::start();
    let mut clients = spread(&server, 3).into_iter();
    let mut a = clients.next().unwrap();
    let mut b = clients.next().unwrap();
    let mut c = clients.next().unwrap();
    sign_in_as(&mut b, "B");

    signin(&mut a, r#"{"id":"A","watchlist":["B","C"]}"#);
    send_subscribe(&mut a, "#server-to-user-A", None);
    let mut replies = [a.recv_text(), a.recv_text()];
    replies.sort();
    assert_eq!(
        replies,
        [
            succeeded_text("#server-to-user-A"),
            r#"{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":["B"]},{"name":"offline","user_ids":["C"]}]}}"#.to_string(),
        ]
    );

    sign_in_as(&mut c, "C");
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":["C"]}]}}"#
    );
    close_and_wait(b);
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"offline","user_ids":["B"]}]}}"#
    );
    assert_next_is_marker(&server, "#server-to-user-A", &mut [&mut a]);
}

// ---------------------------------------------------------------------------------------------
// 8. terminate_connections (spec §4.4, §7.8)
// ---------------------------------------------------------------------------------------------

#[test]
fn terminate_connections_closes_every_connection_of_the_user() {
    let server = Server::start();
    let mut clients = spread(&server, 4).into_iter();
    let mut u1a = clients.next().unwrap();
    let mut u1b = clients.next().unwrap();
    let mut u2 = clients.next().unwrap();
    let mut member = clients.next().unwrap();
    sign_in_as(&mut u1a, "1");
    sign_in_as(&mut u1b, "1");
    sign_in_as(&mut u2, "2");
    // Presence membership as user 1 without signin does not count.
    join_presence(&mut member, "presence-t", r#"{"user_id":"1"}"#);

    let (status, body) = server.rest(
        "POST",
        &format!("/apps/{APP_ID}/users/1/terminate_connections"),
        &[],
        "{}",
    );
    assert_eq!((status, body.as_str()), (200, "{}"));
    for client in [&mut u1a, &mut u1b] {
        assert_eq!(
            client.recv_text(),
            r#"{"event":"pusher:error","data":{"code":4009,"message":"You got disconnected by the app."}}"#
        );
        assert_eq!(client.expect_close(), 4009);
    }
    assert_alive(&mut u2);
    assert_alive(&mut member);
    assert_next_is_marker(&server, "#server-to-user-2", &mut [&mut u2]);
    assert_next_is_marker(&server, "presence-t", &mut [&mut member]);
}

// ---------------------------------------------------------------------------------------------
// 9. Authorized connections (spec §4.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn unauthenticated_connection_is_closed_after_timeout() {
    let server =
        server_with_app("enable_user_authentication = true\nuser_authentication_timeout_ms = 500");
    let mut idle = server.client();
    let mut signed = server.client();
    signin(&mut signed, r#"{"id":"u"}"#);
    let mut private = server.client();
    subscribe_private(&mut private, "private-ok");

    assert_eq!(
        idle.recv_text(),
        r#"{"event":"pusher:error","data":{"code":4009,"message":"Connection not authorized within timeout."}}"#
    );
    assert_eq!(idle.expect_close(), 4009);

    // Well past the timeout, the signed-in and the private-channel connections are open.
    signed.expect_silence(Duration::from_millis(600));
    assert_alive(&mut signed);
    assert_alive(&mut private);
}

// ---------------------------------------------------------------------------------------------
// 10. Subscription count (spec §2.7)
// ---------------------------------------------------------------------------------------------

#[test]
fn subscription_count_on_subscribe_and_unsubscribe() {
    let server = server_with_app("enable_subscription_count = true");
    let mut clients = spread(&server, 3);
    let [a, b, c] = clients.as_mut_slice() else {
        unreachable!()
    };
    subscribe_exact(a, "c", None);
    assert_eq!(a.recv_text(), subscription_count_text("c", 1));
    subscribe_exact(b, "c", None);
    assert_eq!(b.recv_text(), subscription_count_text("c", 2));
    assert_eq!(a.recv_text(), subscription_count_text("c", 2));
    subscribe_private(c, "private-c");
    assert_eq!(c.recv_text(), subscription_count_text("private-c", 1));

    a.send_text(r#"{"event":"pusher:unsubscribe","data":{"channel":"c"}}"#);
    assert_eq!(b.recv_text(), subscription_count_text("c", 1));
    assert_next_is_marker(&server, "c", &mut [b]);

    // Never on presence channels.
    join_presence(a, "presence-sc", r#"{"user_id":"1"}"#);
    join_presence(b, "presence-sc", r#"{"user_id":"2"}"#);
    assert_eq!(a.recv_text(), member_added_text("presence-sc", "2", "null"));
    assert_next_is_marker(&server, "presence-sc", &mut [a, b]);
}

#[test]
fn subscription_count_off_by_default() {
    let server = Server::start();
    let mut clients = spread(&server, 2);
    let [a, b] = clients.as_mut_slice() else {
        unreachable!()
    };
    subscribe_exact(a, "c", None);
    subscribe_exact(b, "c", None);
    assert_next_is_marker(&server, "c", &mut [a, b]);
}

// ---------------------------------------------------------------------------------------------
// 11. REST `info` on publish (spec §7.3, §7.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn trigger_and_batch_with_info() {
    let server = server_with_app("enable_subscription_count = true");
    let mut clients = spread(&server, 3).into_iter();
    let mut a = clients.next().unwrap();
    let mut a_again = clients.next().unwrap();
    let mut b = clients.next().unwrap();
    // presence-p: one user on two connections; pub: two subscribers.
    join_presence(&mut a, "presence-p", r#"{"user_id":"1"}"#);
    join_presence(&mut a_again, "presence-p", r#"{"user_id":"1"}"#);
    subscribe_exact(&mut a, "pub", None);
    assert_eq!(a.recv_text(), subscription_count_text("pub", 1));
    subscribe_exact(&mut b, "pub", None);
    assert_eq!(b.recv_text(), subscription_count_text("pub", 2));
    assert_eq!(a.recv_text(), subscription_count_text("pub", 2));

    let body = json!({"name":"e","channels":["presence-p","pub"],"data":"x",
        "info":"subscription_count,user_count"});
    let (status, text) = server.rest(
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        &body.to_string(),
    );
    assert_eq!(
        json_body(status, &text),
        json!({"channels":{
            "presence-p":{"user_count":1,"subscription_count":2},
            "pub":{"subscription_count":2}}})
    );
    // One frame per channel; the two channels are sequenced independently.
    let mut frames = [a.recv_text(), a.recv_text()];
    frames.sort();
    assert_eq!(
        frames,
        [
            event_text("e", "presence-p", "x"),
            event_text("e", "pub", "x")
        ]
    );

    let body = json!({"batch":[
        {"channel":"presence-p","name":"e","data":"1","info":"user_count"},
        {"channel":"pub","name":"e","data":"2"},
        {"channel":"pub","name":"e","data":"3","info":"subscription_count"}]});
    let (status, text) = server.rest(
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        &[],
        &body.to_string(),
    );
    assert_eq!(
        json_body(status, &text),
        json!({"batch":[{"user_count":1},{},{"subscription_count":2}]})
    );
    // Without info the answer stays {}.
    let body = json!({"batch":[{"channel":"pub","name":"e","data":"4"}]});
    let (status, text) = server.rest(
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        &[],
        &body.to_string(),
    );
    assert_eq!((status, text.as_str()), (200, "{}"));
}

// ---------------------------------------------------------------------------------------------
// 12. Several apps; Origin allow-list
// ---------------------------------------------------------------------------------------------

#[test]
fn apps_never_see_each_others_channels() {
    let server = Server::with(Options {
        extra_toml: APP2_TOML.to_string(),
        ..Options::default()
    });
    let mut one = server.client();
    let mut two = client_for(&server, APP2_KEY);
    subscribe_exact(&mut one, "shared", None);
    subscribe_exact(&mut one, "only-one", None);
    subscribe_exact(&mut two, "shared", None);

    // App 1 publishes: only app 1's subscriber receives it.
    server.trigger(&json!({"name":"e1","channel":"shared","data":"from one"}));
    assert_eq!(one.recv_text(), event_text("e1", "shared", "from one"));
    let events2 = format!("/apps/{APP2_ID}/events");
    let body = json!({"name":"e2","channel":"shared","data":"from two"}).to_string();
    let (status, text) = server.rest_as((APP2_KEY, APP2_SECRET), "POST", &events2, &[], &body);
    assert_eq!((status, text.as_str()), (200, "{}"));
    assert_eq!(two.recv_text(), event_text("e2", "shared", "from two"));
    assert_next_is_marker(&server, "shared", &mut [&mut one]);

    // Listings are per app.
    assert_eq!(
        get_json(&server, "/channels", &[]),
        json!({"channels":{"only-one":{},"shared":{}}})
    );
    let (status, text) = server.rest_as(
        (APP2_KEY, APP2_SECRET),
        "GET",
        &format!("/apps/{APP2_ID}/channels"),
        &[],
        "",
    );
    assert_eq!(json_body(status, &text), json!({"channels":{"shared":{}}}));

    // App 1's credentials do not sign for app 2.
    let (status, _) = server.rest_as((APP_KEY, APP_SECRET), "POST", &events2, &[], &body);
    assert_eq!(status, 401);

    // Channel auth is per app: app 1's key and secret are refused on app 2.
    let wrong = private_auth(&two.socket_id, "private-2");
    send_subscribe(&mut two, "private-2", Some(&wrong));
    assert_subscription_error(&two.recv_event(), "private-2", "AuthError", 401);
    let right = auth_for(
        APP2_KEY,
        APP2_SECRET,
        &format!("{}:private-2", two.socket_id),
    );
    subscribe_exact(&mut two, "private-2", Some(&right));
}

#[test]
fn origin_allow_list() {
    let server = Server::with(Options {
        extra_app: r#"allowed_origins = ["https://good.example"]"#.to_string(),
        extra_toml: APP2_TOML.to_string(),
        ..Options::default()
    });
    let mut evil = connect_with_origin(&server, APP_KEY, "https://evil.example");
    let reply = evil.recv_event();
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    assert_eq!(reply["data"]["code"], 4009, "{reply}");
    assert_eq!(evil.expect_close(), 4009);

    let mut good = connect_with_origin(&server, APP_KEY, "https://good.example");
    read_established(&mut good);
    subscribe_exact(&mut good, "room", None);
    assert_next_is_marker(&server, "room", &mut [&mut good]);

    // The allow-list is per app: app 2 has none, so any origin connects.
    let mut other = connect_with_origin(&server, APP2_KEY, "https://evil.example");
    read_established(&mut other);
    assert_alive(&mut other);
}

// Regression: a 200 from POST /events means the owner core has sequenced the event, so a
// subscribe sent right after it sees the cached event (on channels owned by either core).
#[test]
fn publish_answer_means_sequenced_cache_is_read_after_write() {
    let server = Server::start();
    for n in 0..16 {
        let channel = format!("cache-raw-{n}");
        server.trigger(&json!({"name":"stored","channel":channel,"data":format!("v{n}")}));
        let mut client = server.client();
        client.subscribe(&channel);
        let event = client.recv_event();
        assert_eq!(event["event"], "stored", "{channel}: {event}");
        assert_eq!(event["data"], format!("v{n}"));
    }
}
