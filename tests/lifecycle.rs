//! After `close()`, the tokio runtime's live tasks and the process's OS threads return to
//! their values from before the bus was created, on every backend. One test, so that no other
//! test's threads run in this process meanwhile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use busbench::bus::{Envelope, EventBus, SubscribeOptions, envelope_handler, handler};
use busbench::metrics::resources::{alive_tasks, settle, thread_count};
use bytes::Bytes;

fn exercise_and_close(backend: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let tasks_before = alive_tasks(&handle);
    let threads_before = thread_count();

    let peak_tasks = runtime.block_on(async {
        let bus = EventBus::connect(common::config(backend)).await.unwrap();
        let raw_topic = common::unique("life-raw");
        let envelope_topic = common::unique("life-env");
        let handled = Arc::new(AtomicU64::new(0));
        let (a, b) = (handled.clone(), handled.clone());
        let raw = bus
            .subscribe(
                &raw_topic,
                SubscribeOptions::group("g"),
                handler(move |_| {
                    let a = a.clone();
                    async move {
                        a.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap();
        let envelopes = bus
            .subscribe_envelope(
                &envelope_topic,
                SubscribeOptions::group("g"),
                envelope_handler(move |_| {
                    let b = b.clone();
                    async move {
                        b.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap();
        for i in 0..50 {
            bus.publish(&raw_topic, Bytes::from(format!("{i}")))
                .await
                .unwrap();
            let envelope = Envelope::new(
                format!("agg-{}", i % 5),
                "E",
                i / 5 + 1,
                Bytes::from_static(b"{}"),
            );
            bus.publish_envelope(&envelope_topic, envelope)
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while handled.load(Ordering::SeqCst) < 100 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend}: messages not handled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let peak = alive_tasks(&tokio::runtime::Handle::current());
        drop(raw);
        drop(envelopes);
        bus.delete_topic(&raw_topic).await.unwrap();
        bus.delete_topic(&envelope_topic).await.unwrap();
        bus.close().await.unwrap();
        peak
    });
    assert!(
        peak_tasks > tasks_before,
        "{backend}: the bus ran tasks of its own"
    );
    let tasks_after = settle(tasks_before, Duration::from_secs(10), || {
        alive_tasks(&handle)
    });
    let threads_after = settle(threads_before, Duration::from_secs(10), thread_count);
    assert_eq!(
        tasks_after, tasks_before,
        "{backend}: tasks left after close"
    );
    assert_eq!(
        threads_after, threads_before,
        "{backend}: threads left after close"
    );
    drop(runtime);
}

#[test]
fn close_ends_every_task_and_thread_the_bus_started() {
    for backend in ["memory", "kafka", "nats"] {
        exercise_and_close(backend);
    }
}
