//! One conformance suite for the bus, run against every backend: memory in-process, Kafka and
//! NATS JetStream on the real brokers that `scripts/brokers.sh up` starts.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busbench::bus::{
    BusConfig, BusErrorKind, DeadLetter, Envelope, EnvelopeError, EventBus, HandlerError,
    SubscribeOptions, envelope_handler, handler,
};
use bytes::Bytes;

const WAIT: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds, failing the test after `timeout`.
async fn eventually(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect(backend: &str, adjust: impl FnOnce(&mut BusConfig)) -> EventBus {
    let mut config = common::config(backend);
    adjust(&mut config);
    EventBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting to {backend}: {e}"))
}

async fn raw_round_trip(backend: &str) {
    let bus = connect(backend, |_| {}).await;
    let topic = common::unique("raw");
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let subscription = bus
        .subscribe(
            &topic,
            SubscribeOptions::group("g"),
            handler(move |message| {
                let sink = sink.clone();
                async move {
                    assert_eq!(message.attempt, 1);
                    sink.lock().unwrap().push(message.payload);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    subscription.wait_ready(WAIT).await.unwrap();
    for i in 0..100u32 {
        bus.publish(&topic, Bytes::from(format!("message-{i}")))
            .await
            .unwrap();
    }
    eventually("100 raw messages", WAIT, || {
        received.lock().unwrap().len() >= 100
    })
    .await;
    subscription.close().await.unwrap();
    let mut payloads: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("message-{i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    bus.delete_topic(&topic).await.unwrap();
    bus.close().await.unwrap();
}

async fn envelope_round_trip(backend: &str) {
    let bus = connect(backend, |_| {}).await;
    let topic = common::unique("envelope");
    let mut sent = Envelope::new(
        "order:42/line-7",
        "OrderPlaced",
        3,
        Bytes::from_static(b"{\"total\":12}"),
    );
    sent.trace_id = Some("trace-1".into());
    sent.correlation_id = Some("corr-2".into());
    sent.tenant_id = Some("tenant-3".into());
    let received = Arc::new(Mutex::new(None));
    let sink = received.clone();
    let subscription = bus
        .subscribe_envelope(
            &topic,
            SubscribeOptions::group("g"),
            envelope_handler(move |envelope| {
                let sink = sink.clone();
                async move {
                    *sink.lock().unwrap() = Some(envelope);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    subscription.wait_ready(WAIT).await.unwrap();
    bus.publish_envelope(&topic, sent.clone()).await.unwrap();
    eventually("the envelope", WAIT, || received.lock().unwrap().is_some()).await;
    subscription.close().await.unwrap();
    let got = received.lock().unwrap().take().unwrap();
    assert_eq!(got, sent, "every field survives the round trip");
    bus.delete_topic(&topic).await.unwrap();
    bus.close().await.unwrap();
}

async fn envelope_validation(backend: &str) {
    let bus = connect(backend, |_| {}).await;
    let topic = common::unique("invalid");
    let valid = Envelope::new("a-1", "Created", 1, Bytes::from_static(b"{}"));
    type Breaker = fn(&mut Envelope);
    let cases: [(Breaker, EnvelopeError); 5] = [
        (|e| e.event_id = "".into(), EnvelopeError::EmptyEventId),
        (
            |e| e.aggregate_id = "".into(),
            EnvelopeError::EmptyAggregateId,
        ),
        (
            |e| e.aggregate_id = "bad id".into(),
            EnvelopeError::AggregateIdCharacter(' '),
        ),
        (|e| e.event_type = "".into(), EnvelopeError::EmptyEventType),
        (
            |e| e.event_version = 0,
            EnvelopeError::NonPositiveVersion(0),
        ),
    ];
    for (break_it, expected) in cases {
        let mut envelope = valid.clone();
        break_it(&mut envelope);
        let error = bus.publish_envelope(&topic, envelope).await.unwrap_err();
        assert_eq!(error.kind(), BusErrorKind::InvalidEnvelope);
        match error {
            busbench::bus::BusError::InvalidEnvelope(inner) => assert_eq!(inner, expected),
            other => panic!("expected an invalid envelope error, got {other}"),
        }
    }
    bus.close().await.unwrap();
}

/// Many aggregates, several concurrent publishers, handlers with random small delays: every
/// aggregate's events are handled exactly in publish order, and none is lost.
async fn per_aggregate_order(backend: &str) {
    const AGGREGATES: u64 = 60;
    const EVENTS_PER_AGGREGATE: i64 = 25;
    const PUBLISHERS: u64 = 4;
    let bus = Arc::new(connect(backend, |_| {}).await);
    let topic = common::unique("order");
    let last_version: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let violations = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let (seen, bad, count) = (last_version.clone(), violations.clone(), handled.clone());
    let subscription = bus
        .subscribe_envelope(
            &topic,
            SubscribeOptions::group("g"),
            envelope_handler(move |envelope| {
                let (seen, bad, count) = (seen.clone(), bad.clone(), count.clone());
                async move {
                    let previous = seen
                        .lock()
                        .unwrap()
                        .get(envelope.aggregate_id.as_str())
                        .copied()
                        .unwrap_or(0);
                    if envelope.event_version != previous + 1 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..1500))).await;
                    seen.lock()
                        .unwrap()
                        .insert(envelope.aggregate_id.to_string(), envelope.event_version);
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    subscription.wait_ready(WAIT).await.unwrap();
    let mut publishers = Vec::new();
    for publisher in 0..PUBLISHERS {
        let bus = bus.clone();
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for version in 1..=EVENTS_PER_AGGREGATE {
                for aggregate in (publisher..AGGREGATES).step_by(PUBLISHERS as usize) {
                    let envelope = Envelope::new(
                        format!("agg-{aggregate}"),
                        "Incremented",
                        version,
                        Bytes::from(format!("{aggregate}:{version}")),
                    );
                    receipts.push(
                        bus.publish_envelope_pipelined(&topic, envelope)
                            .await
                            .unwrap(),
                    );
                }
            }
            for receipt in receipts {
                receipt.await.unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let expected = AGGREGATES * EVENTS_PER_AGGREGATE as u64;
    eventually("every event handled", WAIT, || {
        handled.load(Ordering::Relaxed) >= expected
    })
    .await;
    subscription.close().await.unwrap();
    assert_eq!(violations.load(Ordering::Relaxed), 0, "order violations");
    assert_eq!(
        handled.load(Ordering::Relaxed),
        expected,
        "handled exactly once each"
    );
    {
        let versions = last_version.lock().unwrap();
        assert_eq!(versions.len() as u64, AGGREGATES);
        assert!(versions.values().all(|v| *v == EVENTS_PER_AGGREGATE));
    }
    bus.delete_topic(&topic).await.unwrap();
    Arc::into_inner(bus).unwrap().close().await.unwrap();
}

/// A handler that fails some messages: those failing once are retried and handled; those
/// failing every time reach the dead-letter topic. None is lost.
async fn failing_handler(backend: &str) {
    let bus = connect(backend, |config| {
        config.retry.initial_backoff = Duration::from_millis(1);
        config.retry.max_attempts = 3;
    })
    .await;
    let topic = common::unique("failing");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let sink = handled.clone();
    let subscription = bus
        .subscribe(
            &topic,
            SubscribeOptions::group("g"),
            handler(move |message| {
                let sink = sink.clone();
                async move {
                    let n: u32 = std::str::from_utf8(&message.payload)
                        .unwrap()
                        .parse()
                        .unwrap();
                    if n.is_multiple_of(10) {
                        return Err(HandlerError::msg("poison"));
                    }
                    if n.is_multiple_of(3) && message.attempt == 1 {
                        return Err(HandlerError::msg("transient"));
                    }
                    sink.lock().unwrap().push(n);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let dead = Arc::new(Mutex::new(Vec::new()));
    let dead_sink = dead.clone();
    let dead_letters = bus
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::group("dlq-reader"),
            handler(move |message| {
                let sink = dead_sink.clone();
                async move {
                    assert_eq!(message.header("X-Dead-Letter-Attempts"), Some("3"));
                    assert_eq!(message.header("X-Dead-Letter-Reason"), Some("poison"));
                    let n: u32 = std::str::from_utf8(&message.payload)
                        .unwrap()
                        .parse()
                        .unwrap();
                    sink.lock().unwrap().push(n);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    subscription.wait_ready(WAIT).await.unwrap();
    dead_letters.wait_ready(WAIT).await.unwrap();
    for n in 1..=50u32 {
        bus.publish(&topic, Bytes::from(n.to_string()))
            .await
            .unwrap();
    }
    // The dead-letter reader can see a message before the publishing worker has counted it, so
    // the wait covers the subscription's own counters too.
    eventually("45 handled and 5 dead-lettered", WAIT, || {
        let counts = subscription.counts();
        handled.lock().unwrap().len() >= 45
            && dead.lock().unwrap().len() >= 5
            && counts.handled + counts.dead_lettered >= 50
    })
    .await;
    let counts = subscription.counts();
    subscription.close().await.unwrap();
    dead_letters.close().await.unwrap();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(
        handled,
        (1..=50)
            .filter(|n: &u32| !n.is_multiple_of(10))
            .collect::<Vec<_>>()
    );
    let mut dead = dead.lock().unwrap().clone();
    dead.sort_unstable();
    assert_eq!(dead, vec![10, 20, 30, 40, 50]);
    assert_eq!(counts.dead_lettered, 5);
    assert_eq!(counts.failed, 0);
    // The 16 multiples of 3 but 30 fail once; the 5 poison messages fail 3 times (2 retries).
    assert_eq!(counts.retried, 15 + 5 * 2);
    bus.delete_topic(&topic).await.unwrap();
    bus.delete_topic(&format!("{topic}.dlq")).await.unwrap();
    bus.close().await.unwrap();
}

/// A slow handler with small queues and a fast publisher: the publisher is slowed down, not
/// the messages dropped; the pool never holds more than its bounded capacity.
async fn backpressure_never_drops(backend: &str) {
    let bus = Arc::new(
        connect(backend, |config| {
            config.pool.global_workers = 2;
            config.pool.global_queue = 4;
            config.publish_window = 32;
        })
        .await,
    );
    let topic = common::unique("slow");
    let handled = Arc::new(AtomicU64::new(0));
    let in_handler = Arc::new(AtomicU64::new(0));
    let most_in_handler = Arc::new(AtomicU64::new(0));
    let (count, busy, most) = (handled.clone(), in_handler.clone(), most_in_handler.clone());
    let subscription = bus
        .subscribe(
            &topic,
            SubscribeOptions::group("g"),
            handler(move |_| {
                let (count, busy, most) = (count.clone(), busy.clone(), most.clone());
                async move {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    busy.fetch_sub(1, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    subscription.wait_ready(WAIT).await.unwrap();
    // Keep at most 16 acknowledgements in flight, as a pipelining caller would.
    let mut receipts = std::collections::VecDeque::new();
    for n in 0..600u32 {
        if receipts.len() == 16 {
            let oldest: busbench::bus::PublishReceipt = receipts.pop_front().unwrap();
            oldest.await.unwrap();
        }
        receipts.push_back(
            bus.publish_pipelined(&topic, Bytes::from(n.to_string()))
                .await
                .unwrap(),
        );
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
    eventually("600 slow messages", WAIT, || {
        handled.load(Ordering::SeqCst) >= 600
    })
    .await;
    subscription.close().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 600);
    assert!(
        most_in_handler.load(Ordering::SeqCst) <= 2,
        "never more handlers than workers"
    );
    bus.delete_topic(&topic).await.unwrap();
    Arc::into_inner(bus).unwrap().close().await.unwrap();
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raw_round_trip() {
                super::raw_round_trip(stringify!($backend)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envelope_round_trip() {
                super::envelope_round_trip(stringify!($backend)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envelope_validation() {
                super::envelope_validation(stringify!($backend)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_aggregate_order() {
                super::per_aggregate_order(stringify!($backend)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failing_handler() {
                super::failing_handler(stringify!($backend)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn backpressure_never_drops() {
                super::backpressure_never_drops(stringify!($backend)).await
            }
        }
    };
}

conformance!(memory);
conformance!(kafka);
conformance!(nats);

/// The memory backend's queue is bounded: a publisher facing a full queue with no consumer
/// gets a typed backpressure error after the timeout, and nothing is dropped.
#[tokio::test]
async fn memory_full_queue_gives_a_typed_error() {
    let mut config = BusConfig::memory();
    if let busbench::bus::BackendConfig::Memory(memory) = &mut config.backend {
        memory.queue_capacity = 5;
    }
    config.publish_timeout = Duration::from_millis(50);
    config.dead_letter = DeadLetter::Report;
    let bus = EventBus::connect(config).await.unwrap();
    for n in 0..5u32 {
        bus.publish("full", Bytes::from(n.to_string()))
            .await
            .unwrap();
    }
    let error = bus
        .publish("full", Bytes::from_static(b"6"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BusErrorKind::Backpressure);
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let subscription = bus
        .subscribe(
            "full",
            SubscribeOptions::group("late"),
            handler(move |_| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    eventually("the 5 queued messages", WAIT, || {
        received.load(Ordering::SeqCst) >= 5
    })
    .await;
    subscription.close().await.unwrap();
    assert_eq!(received.load(Ordering::SeqCst), 5);
    bus.close().await.unwrap();
}

/// Subscribes group `group` of `topic` on `bus`, collecting the payloads it handles.
async fn collect(
    bus: &EventBus,
    topic: &str,
    group: &str,
) -> (busbench::bus::Subscription, Arc<Mutex<Vec<Bytes>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let subscription = bus
        .subscribe(
            topic,
            SubscribeOptions::group(group),
            handler(move |message| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(message.payload);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    (subscription, received)
}

/// A publish finds its queues in a per-thread cache: a group that subscribes between two
/// publishes on the same thread gets the later ones, and two buses on one thread, each with a
/// topic of the same name, never receive each other's messages.
#[tokio::test]
async fn memory_publishes_follow_new_groups_and_stay_within_their_bus() {
    let bus = EventBus::connect(BusConfig::memory()).await.unwrap();
    let other = EventBus::connect(BusConfig::memory()).await.unwrap();
    let payload = |text: &'static str| Bytes::from_static(text.as_bytes());
    bus.publish("orders", payload("1")).await.unwrap();
    other.publish("orders", payload("other-1")).await.unwrap();
    let (first, first_got) = collect(&bus, "orders", "first").await;
    bus.publish("orders", payload("2")).await.unwrap();
    let (second, second_got) = collect(&bus, "orders", "second").await;
    bus.publish("orders", payload("3")).await.unwrap();
    other.publish("orders", payload("other-2")).await.unwrap();
    let (other_sub, other_got) = collect(&other, "orders", "first").await;
    eventually("every message handled", WAIT, || {
        first_got.lock().unwrap().len() >= 3
            && !second_got.lock().unwrap().is_empty()
            && other_got.lock().unwrap().len() >= 2
    })
    .await;
    for subscription in [first, second, other_sub] {
        subscription.close().await.unwrap();
    }
    assert_eq!(
        *first_got.lock().unwrap(),
        [payload("1"), payload("2"), payload("3")]
    );
    assert_eq!(*second_got.lock().unwrap(), [payload("3")]);
    assert_eq!(
        *other_got.lock().unwrap(),
        [payload("other-1"), payload("other-2")]
    );
    bus.close().await.unwrap();
    other.close().await.unwrap();
}
