//! The ceiling: the same raw load through the bare client (rdkafka, async-nats, a tokio
//! channel for memory), without the bus, against the same broker in the same run. The bus's
//! efficiency is its end-to-end throughput divided by this.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::bus::{BackendConfig, BusConfig};
use crate::metrics::recorder::Stamp;

/// The load of a ceiling run.
#[derive(Debug, Clone)]
pub struct CeilingLoad {
    /// Messages to send and receive, measured.
    pub messages: u64,
    /// Messages sent and received first, unmeasured, as the bus's cells do: connections,
    /// metadata and the consumer's first fetch are paid before the clock starts.
    pub warmup: u64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Acknowledgements in flight.
    pub max_in_flight: usize,
    /// A topic name no one else uses.
    pub topic: String,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// How long removing the ceiling's topic or stream may take once the run ended.
const CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker has to answer a metadata request before it is called unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the bare-client load and returns its end-to-end throughput in messages per second.
/// The first send error ends the run with that error; the run also ends at its timeout or
/// when the run is interrupted; in every case its topic (Kafka) or stream (NATS) is removed.
pub async fn measure(config: &BusConfig, load: &CeilingLoad) -> Result<f64, CeilingError> {
    let reachable = tokio::select! {
        reachable = reachable(config) => reachable,
        _ = super::until_interrupted() => return Err(CeilingError::Failed("interrupted".into())),
    };
    reachable.map_err(CeilingError::Unreachable)?;
    let run = async {
        match &config.backend {
            BackendConfig::Memory(_) => memory(load).await,
            BackendConfig::Kafka(kafka) => kafka_ceiling(kafka, load).await,
            BackendConfig::Nats(nats) => nats_ceiling(nats, load).await,
        }
    };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(load.timeout, run) => outcome.unwrap_or_else(|_| {
            Err(format!(
                "the bare-client run did not finish within {:?}",
                load.timeout
            ))
        }),
        _ = super::until_interrupted() => Err("interrupted".to_owned()),
    };
    let _ = tokio::time::timeout(CLEAN_UP_TIMEOUT, clean_up(config, load)).await;
    outcome.map_err(CeilingError::Failed)
}

/// Why a ceiling run gave no figure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CeilingError {
    /// The broker did not answer within seconds: the backend's cells need not try.
    #[error("{0}")]
    Unreachable(String),
    /// The run failed: a send error, the timeout, an interruption.
    #[error("{0}")]
    Failed(String),
}

/// Whether the broker answers, within [`PROBE_TIMEOUT`].
async fn reachable(config: &BusConfig) -> Result<(), String> {
    match &config.backend {
        BackendConfig::Memory(_) => Ok(()),
        BackendConfig::Kafka(kafka) => {
            let producer: FutureProducer = kafka_client_config(kafka, &kafka.properties)
                .create()
                .map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, PROBE_TIMEOUT)
            })
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "no broker answered at {} within {PROBE_TIMEOUT:?}: {e}",
                    kafka.bootstrap_servers
                )
            })
        }
        BackendConfig::Nats(nats) => {
            let connect = async_nats::ConnectOptions::new()
                .connection_timeout(PROBE_TIMEOUT)
                .connect(nats.url.as_str());
            match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(client)) => {
                    let _ = client.drain().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("could not connect to {}: {e}", nats.url)),
                Err(_) => Err(format!(
                    "no server answered at {} within {PROBE_TIMEOUT:?}",
                    nats.url
                )),
            }
        }
    }
}

/// Removes what a ceiling run created on the broker, whether it finished or not.
async fn clean_up(config: &BusConfig, load: &CeilingLoad) {
    match &config.backend {
        BackendConfig::Memory(_) => {}
        BackendConfig::Kafka(kafka) => {
            let admin: Result<
                rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
                _,
            > = kafka_client_config(kafka, &kafka.properties).create();
            if let Ok(admin) = admin {
                let _ = admin
                    .delete_topics(&[&load.topic], &rdkafka::admin::AdminOptions::new())
                    .await;
            }
        }
        BackendConfig::Nats(nats) => {
            if let Ok(client) = async_nats::connect(nats.url.as_str()).await {
                let context = async_nats::jetstream::new(client.clone());
                let _ = context.delete_stream(nats_stream_name(load)).await;
                let _ = client.drain().await;
            }
        }
    }
}

fn kafka_client_config(
    kafka: &crate::bus::KafkaConfig,
    properties: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

fn nats_stream_name(load: &CeilingLoad) -> String {
    format!("CEILING_{}", load.topic.replace(['.', '*', '>'], "_"))
}

/// Counts messages off a consumer stream until `messages` arrived (transient errors skipped);
/// returns when the last one did.
async fn receive_all<S, T, E>(stream: &mut S, messages: u64) -> Result<Instant, String>
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
{
    let mut received = 0u64;
    while received < messages {
        match stream.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(_)) => continue,
            None => {
                return Err(format!(
                    "the consumer stream ended after {received} of {messages} messages"
                ));
            }
        }
    }
    Ok(Instant::now())
}

fn payload(load: &CeilingLoad, seq: u64) -> bytes::Bytes {
    Stamp {
        intended_nanos: 0,
        seq,
        aggregate: 0,
        version: 0,
    }
    .payload(load.payload_bytes)
}

async fn memory(load: &CeilingLoad) -> Result<f64, String> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(load.max_in_flight.max(1));
    let (warmed, warmed_up) = tokio::sync::oneshot::channel();
    let mut warmed = Some(warmed);
    let (warmup, messages) = (load.warmup, load.messages);
    let consumer = tokio::spawn(async move {
        let mut received = 0u64;
        while received < warmup + messages {
            if received == warmup
                && let Some(warmed) = warmed.take()
            {
                let _ = warmed.send(());
            }
            match receiver.recv().await {
                Some(_payload) => received += 1,
                None => break,
            }
        }
        (received.saturating_sub(warmup), Instant::now())
    });
    for seq in 0..warmup {
        sender
            .send(payload(load, seq))
            .await
            .map_err(|_| "the channel closed".to_owned())?;
    }
    if warmup > 0 {
        warmed_up
            .await
            .map_err(|_| "the warm-up was not received".to_owned())?;
    }
    let start = Instant::now();
    for seq in 0..messages {
        sender
            .send(payload(load, seq))
            .await
            .map_err(|_| "the channel closed".to_owned())?;
    }
    let (received, end) = consumer.await.map_err(|e| e.to_string())?;
    Ok(received as f64 / (end - start).as_secs_f64())
}

async fn kafka_ceiling(kafka: &crate::bus::KafkaConfig, load: &CeilingLoad) -> Result<f64, String> {
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "queue.buffering.max.messages",
            load.max_in_flight.max(100_000).to_string(),
        );
    for (key, value) in kafka.properties.iter().chain(&kafka.producer_properties) {
        producer_config.set(key, value);
    }
    let producer: FutureProducer = producer_config.create().map_err(|e| e.to_string())?;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap_servers)
            .create()
            .map_err(|e| e.to_string())?;
    let topic = rdkafka::admin::NewTopic::new(
        &load.topic,
        kafka.partitions,
        rdkafka::admin::TopicReplication::Fixed(kafka.replication_factor),
    );
    admin
        .create_topics([&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("{}-ceiling", load.topic))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (key, value) in kafka.properties.iter().chain(&kafka.consumer_properties) {
        consumer_config.set(key, value);
    }
    let consumer: StreamConsumer = consumer_config.create().map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[&load.topic])
        .map_err(|e| e.to_string())?;
    // Wait for the assignment so that group joining is not counted as throughput.
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            return Err("the bare consumer got no partitions within 30s".into());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = consumer.recv() => return Err("a message arrived on a fresh topic".into()),
        }
    }
    let mut stream = consumer.stream();
    if load.warmup > 0 {
        tokio::try_join!(
            kafka_send(&producer, load, load.warmup),
            receive_all(&mut stream, load.warmup)
        )?;
    }
    let messages = load.messages;
    let start = Instant::now();
    let ((), end) = tokio::try_join!(
        kafka_send(&producer, load, messages),
        receive_all(&mut stream, messages)
    )?;
    Ok(messages as f64 / (end - start).as_secs_f64())
}

/// Sends `messages` records with at most `max_in_flight` deliveries outstanding, and waits
/// for the last delivery report.
async fn kafka_send(
    producer: &FutureProducer,
    load: &CeilingLoad,
    messages: u64,
) -> Result<(), String> {
    let mut in_flight = VecDeque::with_capacity(load.max_in_flight);
    for seq in 0..messages {
        let body = payload(load, seq);
        let mut record: FutureRecord<'_, (), [u8]> =
            FutureRecord::to(&load.topic).payload(&body[..]);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(format!("producing: {error}")),
            }
        }
        if in_flight.len() >= load.max_in_flight
            && let Some(delivery) = in_flight.pop_front()
        {
            delivery
                .await
                .map_err(|e| e.to_string())?
                .map_err(|(e, _)| e.to_string())?;
        }
    }
    for delivery in in_flight {
        delivery
            .await
            .map_err(|e| e.to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(())
}

async fn nats_ceiling(nats: &crate::bus::NatsConfig, load: &CeilingLoad) -> Result<f64, String> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(nats.url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let context = jetstream::new(client.clone());
    let stream_name = nats_stream_name(load);
    let stream = context
        .get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![load.topic.clone()],
            storage: match nats.storage {
                crate::bus::NatsStorage::File => stream::StorageType::File,
                crate::bus::NatsStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: nats.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pull: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "ceiling",
            consumer::pull::Config {
                durable_name: Some("ceiling".into()),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages_stream = pull
        .stream()
        .max_messages_per_batch(nats.fetch_batch)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    if load.warmup > 0 {
        tokio::try_join!(
            nats_send(&context, load, load.warmup),
            receive_all(&mut messages_stream, load.warmup)
        )?;
    }
    let messages = load.messages;
    let start = Instant::now();
    let ((), end) = tokio::try_join!(
        nats_send(&context, load, messages),
        receive_all(&mut messages_stream, messages)
    )?;
    drop(messages_stream);
    let _ = client.drain().await;
    Ok(messages as f64 / (end - start).as_secs_f64())
}

/// Publishes `messages` with at most `max_in_flight` acknowledgements outstanding, and waits
/// for the last one.
async fn nats_send(
    context: &async_nats::jetstream::Context,
    load: &CeilingLoad,
    messages: u64,
) -> Result<(), String> {
    let mut in_flight = VecDeque::with_capacity(load.max_in_flight);
    for seq in 0..messages {
        let ack = context
            .publish(load.topic.clone(), payload(load, seq))
            .await
            .map_err(|e| e.to_string())?;
        in_flight.push_back(ack);
        if in_flight.len() >= load.max_in_flight
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await.map_err(|e| e.to_string())?;
        }
    }
    for ack in in_flight {
        ack.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
