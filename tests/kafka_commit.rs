//! Kafka's commit watermark, on the real broker: a slow message holds back the commit of the
//! later offsets of its partition, so a restarted consumer skips nothing unhandled.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use busbench::bus::{
    BusConfig, BusErrorKind, Envelope, EventBus, SubscribeOptions, envelope_handler,
};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn committed_offset(topic: &str, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    match committed.elements()[0].offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// The test brokers' Kafka with one partition per topic, committing every `commit_interval`.
fn one_partition(commit_interval: Duration) -> BusConfig {
    let mut config = BusConfig::kafka(common::kafka_bootstrap());
    if let busbench::bus::BackendConfig::Kafka(kafka) = &mut config.backend {
        kafka.partitions = 1;
        kafka.commit_interval = commit_interval;
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_holds_back_the_commit_and_is_redelivered_after_restart() {
    let mut config = one_partition(Duration::from_millis(20));
    config.close_timeout = Duration::from_millis(500);
    let bus = EventBus::connect(config).await.unwrap();
    let topic = common::unique("watermark");
    let group = "watermark-group";

    // Offset 0: aggregate "slow"; offsets 1..=9: aggregate "fast" (another worker).
    bus.publish_envelope(
        &topic,
        Envelope::new("slow", "Step", 1, Bytes::from_static(b"s1")),
    )
    .await
    .unwrap();
    for version in 1..=9 {
        bus.publish_envelope(
            &topic,
            Envelope::new("fast", "Step", version, Bytes::from_static(b"f")),
        )
        .await
        .unwrap();
    }

    // First consumer: the slow message never finishes.
    let fast_handled = Arc::new(Mutex::new(0u32));
    let counter = fast_handled.clone();
    let first = bus
        .subscribe_envelope(
            &topic,
            SubscribeOptions::group(group),
            envelope_handler(move |envelope| {
                let counter = counter.clone();
                async move {
                    if envelope.aggregate_id == "slow" {
                        futures::future::pending::<()>().await;
                    }
                    *counter.lock().unwrap() += 1;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    eventually("the 9 fast events", || *fast_handled.lock().unwrap() == 9).await;
    // Closing cannot drain the stuck handler: it is abandoned after close_timeout, unacked.
    let error = first.close().await.unwrap_err();
    assert_eq!(error.kind(), BusErrorKind::Timeout);
    assert_eq!(
        committed_offset(&topic, group),
        None,
        "offsets 1..=9 were handled, but offset 0 was not: nothing may be committed"
    );

    // Second consumer in the same group: the unhandled offset 0 comes back (and the handled
    // ones after it, at least once).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let second = bus
        .subscribe_envelope(
            &topic,
            SubscribeOptions::group(group),
            envelope_handler(move |envelope| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .unwrap()
                        .push((envelope.aggregate_id.to_string(), envelope.event_version));
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    eventually("all 10 events again", || seen.lock().unwrap().len() >= 10).await;
    second.close().await.unwrap();
    assert!(seen.lock().unwrap().contains(&("slow".to_owned(), 1)));
    assert_eq!(
        committed_offset(&topic, group),
        Some(10),
        "everything handled is committed"
    );
    bus.delete_topic(&topic).await.unwrap();
    bus.close().await.unwrap();
}

/// A topic deleted while a subscription still reads it leaves handled offsets that cannot be
/// committed any more: closing the bus afterwards succeeds, as nothing is left to redeliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_after_the_topic_was_deleted_is_not_an_error() {
    // The periodic commit never comes round: every handled offset waits for the final one.
    let config = one_partition(Duration::from_secs(3600));
    let bus = EventBus::connect(config).await.unwrap();
    let topic = common::unique("deleted-under");
    let handled = Arc::new(Mutex::new(0u32));
    let counter = handled.clone();
    let subscription = bus
        .subscribe(
            &topic,
            SubscribeOptions::group("deleted-under-group"),
            busbench::bus::handler(move |_| {
                let counter = counter.clone();
                async move {
                    *counter.lock().unwrap() += 1;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    for n in 0..5u32 {
        bus.publish(&topic, Bytes::from(n.to_string()))
            .await
            .unwrap();
    }
    eventually("5 handled", || *handled.lock().unwrap() == 5).await;
    bus.delete_topic(&topic).await.unwrap();
    drop(subscription);
    bus.close().await.unwrap();
}
