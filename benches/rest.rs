//! One REST publish on one core: a signed `POST /apps/{id}/events` (as the Pusher SDKs send
//! it, 100-byte data, one channel without subscribers) parsed, authenticated, published and
//! answered by the real `Shard`, driven without sockets. This is the user-space share of a
//! REST publish; the rest of its server CPU is the kernel's receive and send.

mod support;

use criterion::{Criterion, criterion_group, criterion_main};

use ringcast::http::signature;
use ringcast::shard::Shard;
use support::NOW;

// The binary's allocator: allocation is part of this path's cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn publish_request() -> Vec<u8> {
    let body = format!(
        r#"{{"name":"bench","channels":["rcb-1"],"data":"{}"}}"#,
        "x".repeat(100)
    );
    let path = "/apps/123456/events";
    let query = signature::sign_query(
        "POST",
        path,
        &[],
        body.as_bytes(),
        "app-key",
        "app-secret",
        NOW.unix_secs,
    );
    format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:6001\r\nContent-Type: application/json\r\n\
         X-Pusher-Library: pusher-http-node 5.2.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn rest(c: &mut Criterion) {
    let mut shard = support::one_core_shard();
    let key = shard.accept(1000, NOW).unwrap();
    let request = publish_request();
    // Once outside the loop, to check it is answered 200 and not refused.
    shard.on_recv(key, &request, NOW);
    let answer: Vec<u8> = shard.conn(key).out.iter().flatten().copied().collect();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut dirty = Vec::new();
    let mut frames = Vec::new();
    let mut complete = |shard: &mut Shard| {
        shard.take_dirty(&mut dirty);
        dirty.clear();
        let queued = shard.conn(key).out_bytes;
        shard.take_for_send(key, &mut frames, usize::MAX);
        shard.on_sent(key, queued, &mut frames);
    };
    complete(&mut shard);
    c.bench_function("rest/publish_one_event", |b| {
        b.iter(|| {
            shard.on_recv(key, &request, NOW);
            complete(&mut shard);
        })
    });
}

criterion_group!(benches, rest);
criterion_main!(benches);
