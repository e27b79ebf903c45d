//! Fan-out on one core: one delivered frame written to the queues of N local subscribers (what
//! a core does per event per channel), plus the bookkeeping when the writes complete. Built on
//! the real `Shard`, driven without sockets.

mod support;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ringcast::mesh::{ChannelKey, ShardMessage};
use ringcast::shard::Shard;
use support::NOW;

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A one-core shard with `subscribers` WebSocket connections on channel `c`.
fn shard_with(subscribers: usize) -> (Shard, Vec<u32>) {
    let mut shard = support::one_core_shard();
    let upgrade = b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let subscribe = masked(br#"{"event":"pusher:subscribe","data":{"channel":"c"}}"#);
    let mut keys = Vec::with_capacity(subscribers);
    for n in 0..subscribers {
        let key = shard.accept(1000 + n as i32, NOW).unwrap();
        shard.on_recv(key, upgrade, NOW);
        shard.on_recv(key, &subscribe, NOW);
        keys.push(key);
    }
    drain(&mut shard, &keys);
    (shard, keys)
}

/// Completes every queued write, as the driver does around `sendmsg`: takes the frames, then
/// reports them all written.
fn drain(shard: &mut Shard, keys: &[u32]) {
    let mut dirty = Vec::new();
    let mut frames = Vec::new();
    shard.take_dirty(&mut dirty);
    for &key in keys {
        let queued = shard.conn(key).out_bytes;
        shard.take_for_send(key, &mut frames, usize::MAX);
        shard.on_sent(key, queued, &mut frames);
    }
}

fn fanout(c: &mut Criterion) {
    let channel = ChannelKey::new(0, "c");
    let frame = Bytes::from(vec![b'x'; 120]);
    let mut group = c.benchmark_group("fanout");
    for subscribers in [10usize, 100, 1000] {
        let (mut shard, keys) = shard_with(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("deliver_to_local_subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let message = ShardMessage::Deliver {
                        channel: channel.clone(),
                        frame: frame.clone(),
                        exclude: None,
                        published_us: 0,
                    };
                    shard.on_mesh(0, message, NOW);
                    drain(&mut shard, &keys);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
