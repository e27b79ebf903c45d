//! The harness works end to end: start, connect, subscribe, publish, receive.

use serde_json::json;

use crate::support::Server;

#[test]
fn publish_reaches_a_subscriber() {
    let server = Server::start();
    let mut client = server.client();
    assert!(
        client
            .socket_id
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    );
    client.subscribe("my-channel");
    server.trigger(
        &json!({"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}),
    );
    assert_eq!(
        client.recv_text(),
        r#"{"event":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#
    );
}

#[test]
fn presence_members_are_per_user() {
    use ringcast::http::signature::hmac_sha256_hex;
    let server = Server::start();
    let join = |client: &mut crate::support::Client, user: &str| {
        let data = format!(r#"{{"user_id":"{user}","user_info":{{"name":"{user}"}}}}"#);
        let sig = hmac_sha256_hex(
            crate::support::APP_SECRET,
            &format!("{}:presence-room:{data}", client.socket_id),
        );
        client.send(&json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":format!("app-key:{sig}"),"channel_data":data}}));
    };
    let mut a = server.client();
    join(&mut a, "1");
    let reply = a.recv_event();
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
    let mut b = server.client();
    join(&mut b, "2");
    let reply = b.recv_event();
    let data: serde_json::Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2, "{data}");
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"2\",\"user_info\":{\"name\":\"2\"}}"}"#
    );
    b.close();
    assert_eq!(
        a.recv_text(),
        r#"{"event":"pusher_internal:member_removed","channel":"presence-room","data":"{\"user_id\":\"2\"}"}"#
    );
}
