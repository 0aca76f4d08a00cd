//! Settings of the bus and its backends.

use std::collections::BTreeMap;
use std::time::Duration;

use super::BusError;

/// Settings of an [`EventBus`](super::EventBus).
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Which broker to use, with its own settings.
    pub backend: BackendConfig,
    /// Most publishes awaiting their broker acknowledgement at once. The memory backend
    /// acknowledges a publish when it is queued (its bounded queues hold back the publishers),
    /// so none ever awaits and the window does not apply.
    pub publish_window: usize,
    /// How long a publish waits for a slot in a full window before failing with
    /// [`BusError::Backpressure`].
    pub publish_timeout: Duration,
    /// How long a publish receipt waits for the broker's acknowledgement. The clients enforce
    /// it (Kafka: librdkafka's `message.timeout.ms`, unless the producer properties set their
    /// own; NATS: the JetStream context's timeout); a late answer fails with
    /// [`BusError::Timeout`].
    pub ack_timeout: Duration,
    /// Handler worker pools.
    pub pool: PoolConfig,
    /// Retries of a failing handler.
    pub retry: RetryPolicy,
    /// What happens to a message whose last handler attempt failed.
    pub dead_letter: DeadLetter,
    /// Bound on each step of closing (draining handlers, flushing publishes).
    pub close_timeout: Duration,
}

impl BusConfig {
    /// Defaults for the given backend.
    pub fn new(backend: BackendConfig) -> Self {
        BusConfig {
            backend,
            publish_window: 4096,
            publish_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(30),
            pool: PoolConfig::default(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetter::default(),
            close_timeout: Duration::from_secs(30),
        }
    }

    /// An in-process memory bus with default settings.
    pub fn memory() -> Self {
        BusConfig::new(BackendConfig::Memory(MemoryConfig::default()))
    }

    /// A Kafka bus with default settings.
    pub fn kafka(bootstrap_servers: impl Into<String>) -> Self {
        BusConfig::new(BackendConfig::Kafka(KafkaConfig::new(bootstrap_servers)))
    }

    /// A NATS JetStream bus with default settings.
    pub fn nats(url: impl Into<String>) -> Self {
        BusConfig::new(BackendConfig::Nats(NatsConfig::new(url)))
    }

    pub(crate) fn validate(&self) -> Result<(), BusError> {
        let positive = [
            ("publish_window", self.publish_window),
            ("pool.keyed_workers", self.pool.keyed_workers),
            ("pool.keyed_queue", self.pool.keyed_queue),
            ("pool.global_workers", self.pool.global_workers),
            ("pool.global_queue", self.pool.global_queue),
            ("retry.max_attempts", self.retry.max_attempts as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(BusError::Config(format!("{name} must be greater than 0")));
            }
        }
        Ok(())
    }
}

/// The broker behind the bus.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// In-process, no broker.
    Memory(MemoryConfig),
    /// Apache Kafka.
    Kafka(KafkaConfig),
    /// NATS JetStream.
    Nats(NatsConfig),
}

/// Settings of the in-process backend.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Capacity of each consumer group's queue, in messages.
    pub queue_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            queue_capacity: 65_536,
        }
    }
}

/// Settings of the Kafka backend.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// librdkafka properties for every client (security settings, for example).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (`acks`, `linger.ms`, ...).
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer_properties: BTreeMap<String, String>,
    /// Partitions of topics the bus creates.
    pub partitions: i32,
    /// Replication factor of topics the bus creates.
    pub replication_factor: i32,
    /// How often handled offsets are committed.
    pub commit_interval: Duration,
}

impl KafkaConfig {
    /// Defaults for the given bootstrap servers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            partitions: 3,
            replication_factor: 1,
            commit_interval: Duration::from_millis(200),
        }
    }
}

/// Storage of the JetStream streams the bus creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsStorage {
    /// Persisted to disk.
    File,
    /// Kept in the server's memory.
    Memory,
}

/// Settings of the NATS JetStream backend.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Storage of created streams.
    pub storage: NatsStorage,
    /// Replicas of created streams.
    pub replicas: usize,
    /// Prefix of stream names; one stream per topic, named prefix + topic with `.` as `_`.
    pub stream_prefix: String,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Most deliveries of one message by the server (-1: unbounded).
    pub max_deliver: i64,
    /// Most unacknowledged messages per consumer.
    pub max_ack_pending: i64,
    /// Messages requested per pull.
    pub fetch_batch: usize,
    /// A credentials file, if the server needs one.
    pub credentials_file: Option<String>,
    /// User and password, if the server needs them.
    pub user_password: Option<(String, String)>,
    /// A token, if the server needs one.
    pub token: Option<String>,
    /// Require TLS.
    pub tls_required: bool,
    /// PEM file of the certificate authorities to trust for the server's certificate.
    pub tls_ca_file: Option<String>,
    /// PEM files of the client certificate and its private key, for servers that verify
    /// clients.
    pub tls_client_cert: Option<(String, String)>,
}

impl NatsConfig {
    /// The JetStream stream holding `topic`: `prefix`, then the topic with the characters
    /// that stream names may not hold replaced by `_`.
    pub fn stream_name(prefix: &str, topic: &str) -> String {
        let mut name = prefix.to_owned();
        name.extend(topic.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        }));
        name
    }

    /// Defaults for the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            storage: NatsStorage::File,
            replicas: 1,
            stream_prefix: "BUS_".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 20_000,
            fetch_batch: 500,
            credentials_file: None,
            user_password: None,
            token: None,
            tls_required: false,
            tls_ca_file: None,
            tls_client_cert: None,
        }
    }
}

/// Sizes of the handler worker pools. Each worker is one tokio task with a bounded queue.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Workers of the keyed (envelope) pool.
    pub keyed_workers: usize,
    /// Queue capacity of each keyed worker.
    pub keyed_queue: usize,
    /// Workers of the round-robin (raw message) pool.
    pub global_workers: usize,
    /// Queue capacity of each round-robin worker.
    pub global_queue: usize,
    /// How long a delivery waits for room in a full worker queue before the subscription
    /// stops with [`BusError::Backpressure`] (the message stays unacknowledged).
    pub enqueue_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            keyed_workers: (cpus * 16).clamp(16, 256),
            keyed_queue: 256,
            global_workers: (cpus * 2).max(4),
            global_queue: 1024,
            enqueue_timeout: Duration::from_secs(30),
        }
    }
}

/// Retries of a failing handler, inside its worker (so one aggregate's order holds).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Pause before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// What happens after the last attempt failed.
#[derive(Debug, Clone)]
pub enum DeadLetter {
    /// Publish the message to `topic + suffix` (with `X-Dead-Letter-*` headers), then
    /// acknowledge it. If that publish fails, the message is counted as failed and not
    /// acknowledged.
    Topic {
        /// Appended to the topic's name.
        suffix: String,
    },
    /// Count the message as failed in the subscription's counts, and acknowledge it.
    Report,
}

impl Default for DeadLetter {
    fn default() -> Self {
        DeadLetter::Topic {
            suffix: ".dlq".into(),
        }
    }
}
