//! The bus API in a few lines: publish envelopes, handle them per aggregate in order.
//! Runs on the in-process memory backend; use `BusConfig::kafka("127.0.0.1:9092")` or
//! `BusConfig::nats("nats://127.0.0.1:4222")` for a real broker.

use std::time::Duration;

use busbench::bus::{BusConfig, Envelope, EventBus, SubscribeOptions, envelope_handler};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = EventBus::connect(BusConfig::memory()).await?;

    let (done, mut finished) = tokio::sync::mpsc::channel(16);
    let orders = bus
        .subscribe_envelope(
            "orders",
            SubscribeOptions::group("billing"),
            envelope_handler(move |event: Envelope| {
                let done = done.clone();
                async move {
                    println!(
                        "{} v{}: {}",
                        event.aggregate_id, event.event_version, event.event_type
                    );
                    done.send(()).await.ok();
                    Ok(()) // acknowledged (NATS) or committed (Kafka) only now
                }
            }),
        )
        .await?;

    for version in 1..=3 {
        let event = Envelope::new("order:42", "OrderUpdated", version, r#"{"total":12}"#);
        bus.publish_envelope("orders", event).await?; // resolves on the broker's ack
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), finished.recv()).await?;
    }
    orders.close().await?;
    bus.close().await?;
    Ok(())
}
