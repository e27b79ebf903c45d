//! The harness works end to end: start, connect, subscribe, publish, receive.

use serde_json::json;

use crate::support::Server;

#[test]
fn publish_reaches_a_subscriber() {
    let server = Server::start();
    let mut client = server.client();
    assert!(client.socket_id.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
    client.subscribe("my-channel");
    server.trigger(&json!({"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}));
    assert_eq!(
        client.recv_text(),
        r#"{"event":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#
    );
}
