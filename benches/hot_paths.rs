//! The bus's and the harness's per-message work, one piece at a time: `cargo bench`.
//!
//! - `envelope/*`: an envelope to its headers (publishing) and back from a message (receiving).
//! - `recorder/on_message`: the harness's accounting of one received message (stamp decode,
//!   HDR record, loss and duplicate bitmaps).
//! - `bus/*`: one message through the in-process bus, publish to handled: the publish window,
//!   the topic queue, the pool's dispatch to a worker, the handler call and the ack.
//!
//! Criterion reports time per iteration; each `bus/*` iteration is one message (a batch is
//! published and waited for, and the time divided by the batch).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use busbench::bus::{
    BackendConfig, BusConfig, Envelope, EventBus, MemoryConfig, Message, SharedStr,
    SubscribeOptions, envelope_handler, handler,
};
use busbench::metrics::recorder::{Recorder, Stamp};

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    let event = Envelope::new(
        "aggregate-42",
        "BenchmarkEvent",
        7,
        Bytes::from(vec![0; 256]),
    );
    group.bench_function("to_headers", |b| b.iter(|| black_box(&event).headers()));
    let message = Message {
        topic: Arc::from("orders"),
        key: Some(event.aggregate_id.clone()),
        headers: event.headers(),
        payload: event.payload.clone(),
        attempt: 1,
    };
    group.bench_function("from_message", |b| {
        b.iter(|| Envelope::from_message(black_box(&message)).unwrap())
    });
    group.bench_function("new", |b| {
        b.iter(|| Envelope::new("aggregate-42", "BenchmarkEvent", 7, Bytes::new()))
    });
    // As the load generator makes them: one shared aggregate id per aggregate, a literal type.
    let aggregate_id = SharedStr::from("aggregate-42");
    group.bench_function("new_shared", |b| {
        b.iter(|| {
            Envelope::new(
                aggregate_id.clone(),
                SharedStr::from_static("BenchmarkEvent"),
                7,
                Bytes::new(),
            )
        })
    });
    group.finish();
}

fn recorder(c: &mut Criterion) {
    const MESSAGES: u64 = 100_000;
    let epoch = Instant::now();
    let payloads: Vec<Bytes> = (0..MESSAGES)
        .map(|seq| {
            Stamp {
                intended_nanos: 1,
                seq,
                aggregate: 0,
                version: 0,
            }
            .payload(256)
        })
        .collect();
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("on_message", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            let mut done = 0;
            while done < iterations {
                let batch = (iterations - done).min(MESSAGES);
                let recorder = Recorder::new(epoch, MESSAGES, 1, false);
                let start = Instant::now();
                for payload in &payloads[..batch as usize] {
                    recorder.on_message(payload);
                }
                elapsed += start.elapsed();
                done += batch;
            }
            elapsed
        })
    });
    group.finish();
}

/// Publishes `batch` messages through an in-process bus and waits until every handler ran.
fn bus_round_trip(c: &mut Criterion, envelopes: bool) {
    const BATCH: u64 = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let config = BusConfig::new(BackendConfig::Memory(MemoryConfig::default()));
    let bus = Arc::new(
        runtime
            .block_on(EventBus::connect(config))
            .expect("a memory bus"),
    );
    // The handlers count, and wake the waiting benchmark once the batch's target is reached
    // (no busy wait stealing a core from the bus's workers).
    let handled = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let reached = Arc::new(tokio::sync::Notify::new());
    let count = {
        let (handled, target, reached) = (handled.clone(), target.clone(), reached.clone());
        move || {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 >= target.load(Ordering::Relaxed) {
                reached.notify_one();
            }
        }
    };
    let counter = count.clone();
    let subscription = runtime.block_on(async {
        if envelopes {
            bus.subscribe_envelope(
                "bench",
                SubscribeOptions::group("bench"),
                envelope_handler(move |_| {
                    counter();
                    async { Ok(()) }
                }),
            )
            .await
        } else {
            bus.subscribe(
                "bench",
                SubscribeOptions::group("bench"),
                handler(move |_| {
                    counter();
                    async { Ok(()) }
                }),
            )
            .await
        }
        .expect("a subscription")
    });
    let payload = Bytes::from(vec![0u8; 256]);
    let name = if envelopes {
        "memory_envelope"
    } else {
        "memory_raw"
    };
    let mut group = c.benchmark_group("bus");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let batches = iterations.div_ceil(BATCH).max(1);
            let start = Instant::now();
            for _ in 0..batches {
                let goal = handled.load(Ordering::Relaxed) + BATCH;
                target.store(goal, Ordering::Relaxed);
                runtime.block_on(async {
                    let mut receipts = Vec::with_capacity(BATCH as usize);
                    for k in 0..BATCH {
                        let receipt = if envelopes {
                            let event = Envelope::new(
                                format!("aggregate-{}", k % 100),
                                "BenchmarkEvent",
                                (k / 100 + 1) as i64,
                                payload.clone(),
                            );
                            bus.publish_envelope_pipelined("bench", event).await
                        } else {
                            bus.publish_pipelined("bench", payload.clone()).await
                        };
                        receipts.push(receipt.expect("published"));
                        if receipts.len() >= 1024 {
                            for receipt in receipts.drain(..) {
                                receipt.await.expect("acknowledged");
                            }
                        }
                    }
                    for receipt in receipts {
                        receipt.await.expect("acknowledged");
                    }
                    while handled.load(Ordering::Relaxed) < goal {
                        tokio::time::timeout(Duration::from_secs(30), reached.notified())
                            .await
                            .expect("handlers did not finish in 30 s");
                    }
                });
            }
            start
                .elapsed()
                .mul_f64(iterations as f64 / (batches * BATCH) as f64)
        })
    });
    group.finish();
    runtime.block_on(async {
        subscription.close().await.expect("closed");
    });
    if let Ok(bus) = Arc::try_unwrap(bus) {
        runtime.block_on(bus.close()).expect("bus closed");
    }
}

fn bus(c: &mut Criterion) {
    bus_round_trip(c, false);
    bus_round_trip(c, true);
}

criterion_group!(benches, envelope, recorder, bus);
criterion_main!(benches);
