//! Helpers shared by the integration tests: broker addresses and unique names.
#![allow(dead_code)]

use busbench::bus::BusConfig;

/// Kafka bootstrap servers of the test brokers (`scripts/brokers.sh up`).
pub fn kafka_bootstrap() -> String {
    std::env::var("BUSBENCH_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// NATS URL of the test brokers (`scripts/brokers.sh up`).
pub fn nats_url() -> String {
    std::env::var("BUSBENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The default configuration of a backend by name.
pub fn config(backend: &str) -> BusConfig {
    match backend {
        "memory" => BusConfig::memory(),
        "kafka" => BusConfig::kafka(kafka_bootstrap()),
        "nats" => BusConfig::nats(nats_url()),
        other => panic!("unknown backend {other}"),
    }
}

/// A topic name no earlier run used.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}
