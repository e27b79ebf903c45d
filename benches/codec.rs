//! Hot-path codecs: WebSocket frame encode/decode, Pusher envelope parse, REST signature and
//! channel-auth HMAC checks. Numbers go to docs/BENCHMARKS.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use ringcast::http::signature;
use ringcast::protocol::{envelope, outbound};
use ringcast::ws::frame;

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x81];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn codec(c: &mut Criterion) {
    let event = outbound::channel_event(
        "my-event",
        "my-channel",
        &serde_json::to_string(&"x".repeat(100)).unwrap(),
    );
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_text_100B_event", |b| {
        b.iter(|| frame::encode_text(black_box(event.as_bytes())))
    });
    let subscribe = br#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#;
    let wire = masked(subscribe);
    group.bench_function("decode_masked_subscribe", |b| {
        let mut decoder = frame::Decoder::new(100 * 1024);
        let mut out = Vec::with_capacity(4);
        b.iter(|| {
            out.clear();
            decoder.feed(black_box(&wire), &mut out).unwrap();
            black_box(&out);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("envelope");
    group.bench_function("parse_subscribe", |b| {
        b.iter(|| envelope::parse(black_box(subscribe)).unwrap())
    });
    let client_event = br#"{"event":"client-typing","channel":"private-chat","data":{"user":"ada","typing":true}}"#;
    group.bench_function("parse_client_event", |b| {
        b.iter(|| envelope::parse(black_box(client_event)).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("auth");
    let body = br#"{"name":"my-event","channel":"my-channel","data":"{\"message\":\"hello\"}"}"#;
    let query = signature::sign_query(
        "POST",
        "/apps/123456/events",
        &[],
        body,
        "app-key",
        "app-secret",
        1_700_000_000,
    );
    let pairs = signature::parse_query(&query);
    group.bench_function("verify_rest_signature", |b| {
        b.iter(|| {
            let request = signature::SignedRequest {
                method: "POST",
                path: "/apps/123456/events",
                query: &pairs,
                body,
            };
            signature::verify(
                black_box(&request),
                "app-key",
                "app-secret",
                1_700_000_000,
                600,
            )
            .unwrap()
        })
    });
    group.bench_function("channel_auth_hmac", |b| {
        b.iter(|| {
            signature::hmac_sha256_hex(
                black_box("app-secret"),
                black_box("1234.1234:private-foobar"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
