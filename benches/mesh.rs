//! The cross-core hand-off: one message through a mesh queue, same thread (the queue's own
//! cost) and between two threads (what cores pay, cache-line transfers included).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringcast::mesh::{ChannelKey, Mesh, ShardMessage};

fn deliver(channel: &ChannelKey, frame: &Bytes) -> ShardMessage {
    ShardMessage::Deliver {
        channel: channel.clone(),
        frame: frame.clone(),
        exclude: None,
        published_us: 0,
    }
}

fn mesh(c: &mut Criterion) {
    let channel = ChannelKey::new(0, "my-channel");
    let frame = Bytes::from_static(b"{\"event\":\"e\",\"channel\":\"my-channel\",\"data\":\"x\"}");
    let mut group = c.benchmark_group("mesh");
    group.throughput(Throughput::Elements(1));
    let queue = Mesh::new(2).unwrap();
    group.bench_function("send_recv_same_thread", |b| {
        b.iter(|| {
            queue.try_send(0, 1, deliver(&channel, &frame)).unwrap();
            queue.try_recv(0, 1).unwrap()
        })
    });
    // Two threads: the consumer spins on its queue and echoes nothing; we time sends that must
    // wait for the consumer to keep up (steady-state throughput per message).
    let shared = Arc::new(Mesh::new(2).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                while shared.try_recv(0, 1).is_some() {}
                std::hint::spin_loop();
            }
        })
    };
    group.bench_function("send_cross_thread", |b| {
        b.iter(|| {
            let mut message = deliver(&channel, &frame);
            loop {
                match shared.try_send(0, 1, message) {
                    Ok(()) => break,
                    Err(back) => {
                        message = back;
                        std::hint::spin_loop();
                    }
                }
            }
        })
    });
    stop.store(true, Ordering::Relaxed);
    consumer.join().unwrap();
    group.finish();
}

criterion_group!(benches, mesh);
criterion_main!(benches);
