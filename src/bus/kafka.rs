//! The Apache Kafka backend (rdkafka, librdkafka).
//!
//! Publishing: one producer whose deliveries resolve one receipt each; the bus's publish
//! window bounds how many are in flight, and librdkafka's own queue is sized above that window
//! so it never reports "queue full" in normal operation. Consuming: one consumer per
//! subscription, in a consumer group, with auto-commit off. Handlers of one partition run in
//! parallel across aggregates, so each partition keeps a watermark: only the contiguous prefix
//! of handled offsets is committed, and a slow message holds back the commit of later ones.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{
    BorrowedHeaders, BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders,
};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::fetch::{FetchTask, Source};
use super::known_topics::KnownTopics;
use super::{
    Ack, Acker, BusConfig, BusError, ConnectionState, Consumer, Delivery, DeliverySink, Headers,
    KafkaConfig, Message, Record, SharedStr, Transport,
};
use crate::chunks::ByteChunks;

const BACKEND: &str = "kafka";
const STATE_CONNECTED: u8 = 0;
const STATE_RECONNECTING: u8 = 1;

/// Tracks whether librdkafka reports every broker down; the next successful delivery marks the
/// connection as up again.
struct StateContext {
    state: Arc<AtomicU8>,
}

impl ClientContext for StateContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.state.store(STATE_RECONNECTING, Ordering::Relaxed);
        }
    }
}

/// A received record's key: the aggregate-id header's text when the key repeats it (an
/// envelope's), so the two share one copy; otherwise a copy of its own.
fn received_key(key: &[u8], headers: &Headers) -> SharedStr {
    match headers.get(super::envelope::HEADER_AGGREGATE_ID) {
        Some(aggregate_id) if aggregate_id.as_bytes() == key => {
            SharedStr::in_headers(headers, aggregate_id)
        }
        _ => SharedStr::from(String::from_utf8_lossy(key).as_ref()),
    }
}

pub(crate) struct KafkaTransport {
    config: KafkaConfig,
    producer: FutureProducer<StateContext>,
    admin: AdminClient<DefaultClientContext>,
    known_topics: KnownTopics,
    state: Arc<AtomicU8>,
    publish_timeout: Duration,
    ack_timeout: Duration,
    close_timeout: Duration,
}

fn client_config(
    config: &KafkaConfig,
    specific: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in config.properties.iter().chain(specific) {
        client.set(key, value);
    }
    client
}

impl KafkaTransport {
    pub async fn connect(config: KafkaConfig, bus: &BusConfig) -> Result<Self, BusError> {
        let state = Arc::new(AtomicU8::new(STATE_CONNECTED));
        let mut producer_config = ClientConfig::new();
        producer_config
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set(
                "queue.buffering.max.messages",
                (bus.publish_window * 2).max(100_000).to_string(),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // librdkafka bounds every delivery report by this: the bus's ack timeout.
            .set(
                "message.timeout.ms",
                bus.ack_timeout
                    .as_millis()
                    .clamp(1, i32::MAX as u128)
                    .to_string(),
            );
        for (key, value) in config.properties.iter().chain(&config.producer_properties) {
            producer_config.set(key, value);
        }
        let producer: FutureProducer<StateContext> = producer_config
            .create_with_context(StateContext {
                state: state.clone(),
            })
            .map_err(|e| BusError::broker(BACKEND, e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&config, &Default::default())
            .create()
            .map_err(|e| BusError::broker(BACKEND, e))?;
        // Fail early, with a clear error, when no broker answers.
        let probe = producer.clone();
        let metadata_timeout = Duration::from_secs(10);
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, metadata_timeout))
            .await
            .map_err(|e| BusError::broker(BACKEND, e))?
            .map_err(|e| BusError::Broker {
                backend: BACKEND,
                message: format!(
                    "no broker answered at {} within {metadata_timeout:?}: {e}",
                    config.bootstrap_servers
                ),
            })?;
        Ok(KafkaTransport {
            config,
            producer,
            admin,
            known_topics: KnownTopics::default(),
            state,
            publish_timeout: bus.publish_timeout,
            ack_timeout: bus.ack_timeout,
            close_timeout: bus.close_timeout,
        })
    }

    async fn create_topic(&self, topic: &str) -> Result<(), BusError> {
        self.known_topics
            .ensure(topic, || async {
                let new_topic = NewTopic::new(
                    topic,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication_factor),
                );
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
                let results = self
                    .admin
                    .create_topics([&new_topic], &options)
                    .await
                    .map_err(|e| BusError::broker(BACKEND, e))?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            return Err(BusError::broker(
                                BACKEND,
                                format!("creating topic {name}: {code}"),
                            ));
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    /// The ack to come of a record librdkafka took.
    fn ack_for(&self, delivery: rdkafka::producer::DeliveryFuture) -> Ack {
        Ack::Kafka(KafkaAck {
            delivery,
            state: self.state.clone(),
            ack_timeout: self.ack_timeout,
        })
    }
}

/// librdkafka's header list of a record's `headers` (`count` of them), in their order, but for
/// an envelope's aggregate id when the record's `key` already carries it: the key is where
/// Kafka keeps what partitions a record (as CloudEvents' Kafka binding keeps its partition key),
/// and a header per record costs librdkafka an allocation, a free and an encoding on each side.
/// [`received_headers`] puts it back for the handler.
pub(crate) fn owned_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    count: usize,
    key: Option<&str>,
) -> OwnedHeaders {
    let key_carries_aggregate = key.is_some()
        && headers
            .clone()
            .any(|(name, _)| name == super::envelope::HEADER_EVENT_ID);
    headers
        .filter(|&(name, value)| {
            !(key_carries_aggregate
                && name == super::envelope::HEADER_AGGREGATE_ID
                && Some(value) == key)
        })
        .fold(
            OwnedHeaders::new_with_capacity(count),
            |list, (key, value)| {
                list.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        )
}

/// A received record's headers, with the aggregate-id header of an envelope whose key carried
/// it alone (see [`owned_headers`]) put back from the key, after the others.
fn received_headers(received: Option<&BorrowedHeaders>, key: Option<&[u8]>) -> Headers {
    let Some(received) = received else {
        return Headers::new();
    };
    let mut headers = Headers::builder_for(received.count() + 1);
    let (mut event_id, mut aggregate_id) = (false, false);
    for header in received.iter() {
        event_id |= header.key == super::envelope::HEADER_EVENT_ID;
        aggregate_id |= header.key == super::envelope::HEADER_AGGREGATE_ID;
        headers.push(
            header.key,
            &String::from_utf8_lossy(header.value.unwrap_or_default()),
        );
    }
    if let Some(key) = key.filter(|_| event_id && !aggregate_id) {
        headers.push(
            super::envelope::HEADER_AGGREGATE_ID,
            &String::from_utf8_lossy(key),
        );
    }
    headers.build()
}

/// The acknowledgement of one record: librdkafka's delivery report, which its
/// `message.timeout.ms` (the bus's ack timeout) bounds.
pub(crate) struct KafkaAck {
    delivery: rdkafka::producer::DeliveryFuture,
    state: Arc<AtomicU8>,
    ack_timeout: Duration,
}

impl Future for KafkaAck {
    type Output = Result<(), BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let report = std::task::ready!(Pin::new(&mut self.delivery).poll(cx));
        Poll::Ready(match report {
            Ok(Ok(_)) => {
                // A delivery report from the broker: connected again.
                self.state.store(STATE_CONNECTED, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(BusError::ack_timed_out(self.ack_timeout))
            }
            Ok(Err((error, _))) => Err(BusError::broker(BACKEND, error)),
            Err(_) => Err(BusError::broker(
                BACKEND,
                "the producer was dropped before the delivery report",
            )),
        })
    }
}

/// The librdkafka record of `record`, borrowing its payload, key and headers.
fn future_record<'a>(topic: &'a str, record: &'a Record) -> FutureRecord<'a, str, [u8]> {
    let mut future_record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).payload(&record.payload[..]);
    // No header list at all for raw records: librdkafka allocates one even when empty.
    if !record.headers.is_empty() {
        future_record = future_record.headers(owned_headers(
            record.headers.iter(),
            record.headers.len(),
            record.key.as_deref(),
        ));
    }
    if let Some(key) = record.key.as_deref() {
        future_record = future_record.key(key);
    }
    future_record
}

impl Transport for KafkaTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn send<'a>(&'a self, topic: &'a str, record: Record) -> BoxFuture<'a, Result<Ack, BusError>> {
        Box::pin(async move {
            self.create_topic(topic).await?;
            let started = tokio::time::Instant::now();
            let mut future_record = future_record(topic, &record);
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => return Ok(self.ack_for(delivery)),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        if started.elapsed() >= self.publish_timeout {
                            return Err(BusError::Backpressure {
                                what: "librdkafka's producer queue",
                                waited: self.publish_timeout,
                            });
                        }
                        future_record = returned;
                        // librdkafka frees room as deliveries complete on its own threads.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => return Err(BusError::broker(BACKEND, error)),
                }
            }
        })
    }

    fn try_send(&self, topic: &str, record: Record) -> Result<Result<Ack, BusError>, Record> {
        // A topic not created yet, or a full producer queue, takes the waiting path.
        if !self.known_topics.is_known(topic) {
            return Err(record);
        }
        let result = self.producer.send_result(future_record(topic, &record));
        match result {
            Ok(delivery) => Ok(Ok(self.ack_for(delivery))),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(record),
            Err((error, _)) => Ok(Err(BusError::broker(BACKEND, error))),
        }
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        sink: DeliverySink,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>, BusError>> {
        Box::pin(async move {
            self.create_topic(topic).await?;
            let tracker = Arc::new(CommitTracker::default());
            let ready = Arc::new(AtomicBool::new(false));
            let mut consumer_config = ClientConfig::new();
            consumer_config
                .set("bootstrap.servers", &self.config.bootstrap_servers)
                .set("auto.offset.reset", "earliest")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", "10000");
            // Settings the caller chose win over the defaults above ...
            for (key, value) in self
                .config
                .properties
                .iter()
                .chain(&self.config.consumer_properties)
            {
                consumer_config.set(key, value);
            }
            // ... except these, on which the commit watermark depends.
            consumer_config
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
            let consumer: StreamConsumer<TrackingContext> = consumer_config
                .create_with_context(TrackingContext {
                    tracker: tracker.clone(),
                    ready: ready.clone(),
                })
                .map_err(|e| BusError::broker(BACKEND, e))?;
            consumer
                .subscribe(&[topic])
                .map_err(|e| BusError::broker(BACKEND, e))?;
            let consumer = Arc::new(consumer);
            let source = KafkaSource {
                consumer: consumer.clone(),
                topic: Arc::from(topic),
                tracker: tracker.clone(),
                payloads: ByteChunks::new(),
            };
            let mut fetch = FetchTask::spawn(source, sink);
            let interval = self.config.commit_interval;
            fetch.spawn_beside(|stop| {
                commit_loop(consumer.clone(), tracker.clone(), interval, stop)
            });
            let handle: Box<dyn Consumer> = Box::new(KafkaConsumer {
                consumer,
                tracker,
                ready,
                fetch,
                close_timeout: self.close_timeout,
            });
            Ok(handle)
        })
    }

    fn ensure_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.create_topic(topic))
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.known_topics.forget(topic);
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let results = self
                .admin
                .delete_topics(&[topic], &options)
                .await
                .map_err(|e| BusError::broker(BACKEND, e))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((name, code)) => {
                        return Err(BusError::broker(
                            BACKEND,
                            format!("deleting topic {name}: {code}"),
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn state(&self) -> ConnectionState {
        match self.state.load(Ordering::Relaxed) {
            STATE_CONNECTED => ConnectionState::Connected,
            _ => ConnectionState::Reconnecting,
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let producer = self.producer.clone();
            let timeout = self.close_timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| BusError::broker(BACKEND, e))?
                .map_err(|_| BusError::Timeout {
                    operation: "flushing the Kafka producer",
                    waited: timeout,
                })
        })
    }
}

/// Per partition, the offsets handed to handlers and which of them were handled. A consumer has
/// a few partitions: a short list searched by partition number beats hashing the topic name
/// twice per message.
#[derive(Default)]
pub(crate) struct CommitTracker {
    partitions: Mutex<Vec<PartitionProgress>>,
}

struct PartitionProgress {
    topic: Arc<str>,
    partition: i32,
    /// Offsets in flight, ascending, with whether each was handled.
    in_flight: VecDeque<(i64, bool)>,
    /// The next offset to commit (last handled contiguous offset + 1), not yet committed.
    pending_commit: Option<i64>,
}

fn find<'a>(
    partitions: &'a mut [PartitionProgress],
    topic: &str,
    partition: i32,
) -> Option<&'a mut PartitionProgress> {
    partitions
        .iter_mut()
        .find(|p| p.partition == partition && &*p.topic == topic)
}

impl CommitTracker {
    /// Records that `offset` was handed to a handler.
    pub fn track(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let mut partitions = self.partitions.lock().unwrap();
        let progress = match find(&mut partitions, topic, partition) {
            Some(progress) => progress,
            None => {
                partitions.push(PartitionProgress {
                    topic: topic.clone(),
                    partition,
                    in_flight: VecDeque::new(),
                    pending_commit: None,
                });
                partitions.last_mut().expect("just pushed")
            }
        };
        progress.in_flight.push_back((offset, false));
    }

    /// Records that `offset` was handled; advances the partition's watermark over the
    /// contiguous prefix of handled offsets.
    pub fn done(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let mut partitions = self.partitions.lock().unwrap();
        let Some(progress) = find(&mut partitions, topic, partition) else {
            return; // the partition was revoked meanwhile
        };
        if let Ok(index) = progress
            .in_flight
            .binary_search_by_key(&offset, |(o, _)| *o)
        {
            progress.in_flight[index].1 = true;
        }
        while let Some(&(front, true)) = progress.in_flight.front() {
            progress.in_flight.pop_front();
            progress.pending_commit = Some(front + 1);
        }
    }

    /// Takes the watermarks not yet committed.
    pub fn take_commits(&self) -> Vec<(Arc<str>, i32, i64)> {
        let mut partitions = self.partitions.lock().unwrap();
        partitions
            .iter_mut()
            .filter_map(|progress| {
                progress
                    .pending_commit
                    .take()
                    .map(|offset| (progress.topic.clone(), progress.partition, offset))
            })
            .collect()
    }

    /// Puts back watermarks whose commit failed, unless newer ones exist.
    fn restore(&self, commits: &[(Arc<str>, i32, i64)]) {
        let mut partitions = self.partitions.lock().unwrap();
        for (topic, partition, offset) in commits {
            if let Some(progress) = find(&mut partitions, topic, *partition) {
                progress.pending_commit.get_or_insert(*offset);
            }
        }
    }

    fn forget(&self, revoked: &TopicPartitionList) {
        let mut partitions = self.partitions.lock().unwrap();
        for element in revoked.elements() {
            partitions
                .retain(|p| !(p.partition == element.partition() && &*p.topic == element.topic()));
        }
    }
}

fn to_partition_list(commits: &[(Arc<str>, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

/// Commits handled offsets before partitions are revoked, and reports readiness.
struct TrackingContext {
    tracker: Arc<CommitTracker>,
    ready: Arc<AtomicBool>,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let commits = self.tracker.take_commits();
            if !commits.is_empty() {
                let _ = consumer.commit(&to_partition_list(&commits), CommitMode::Sync);
            }
            self.tracker.forget(revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            self.ready.store(assigned > 0, Ordering::Release);
        }
    }
}

/// Marks one Kafka record committable once handled.
pub(crate) struct KafkaAcker {
    tracker: Arc<CommitTracker>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

impl KafkaAcker {
    /// The record was handled: the commit loop may move the partition's watermark past it.
    pub fn ack(self) {
        self.tracker.done(&self.topic, self.partition, self.offset);
    }

    /// Left uncommitted: the watermark stays below it, so it is delivered again after a
    /// restart or rebalance.
    pub fn nak(self) {}
}

/// The most records one receive takes from librdkafka's queue when they are already there.
const RECEIVE_BATCH: usize = 32;

/// Takes a Kafka consumer's records, tracking each for the commit loop: the first one waited
/// for, then those already fetched, up to [`RECEIVE_BATCH`].
struct KafkaSource {
    consumer: Arc<StreamConsumer<TrackingContext>>,
    topic: Arc<str>,
    tracker: Arc<CommitTracker>,
    payloads: ByteChunks,
}

impl KafkaSource {
    fn take(&mut self, message: &BorrowedMessage<'_>, batch: &mut Vec<Delivery>) {
        let partition = message.partition();
        let offset = message.offset();
        let headers = received_headers(message.headers(), message.key());
        batch.push(Delivery {
            message: Message {
                topic: self.topic.clone(),
                key: message.key().map(|key| received_key(key, &headers)),
                headers,
                payload: self.payloads.copy(message.payload().unwrap_or_default()),
                attempt: 1,
            },
            acker: Acker::Kafka(KafkaAcker {
                tracker: self.tracker.clone(),
                topic: self.topic.clone(),
                partition,
                offset,
            }),
        });
        self.tracker.track(&self.topic, partition, offset);
    }
}

impl Source for KafkaSource {
    async fn receive(&mut self, batch: &mut Vec<Delivery>) -> bool {
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        match stream.next().await {
            Some(Ok(message)) => self.take(&message, batch),
            // Consumer errors (a broker restart, a rebalance) are transient: librdkafka
            // reconnects and fetches again on its own.
            Some(Err(_)) => return true,
            None => return false,
        }
        while batch.len() < RECEIVE_BATCH {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => self.take(&message, batch),
                _ => break,
            }
        }
        true
    }
}

async fn commit_loop(
    consumer: Arc<StreamConsumer<TrackingContext>>,
    tracker: Arc<CommitTracker>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let commits = tracker.take_commits();
        if commits.is_empty() {
            continue;
        }
        if consumer
            .commit(&to_partition_list(&commits), CommitMode::Async)
            .is_err()
        {
            tracker.restore(&commits);
        }
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<TrackingContext>>,
    tracker: Arc<CommitTracker>,
    ready: Arc<AtomicBool>,
    fetch: FetchTask,
    close_timeout: Duration,
}

impl Consumer for KafkaConsumer {
    fn fetch_task(&mut self) -> &mut FetchTask {
        &mut self.fetch
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move {
            let KafkaConsumer {
                consumer,
                tracker,
                close_timeout,
                ..
            } = *self;
            let commits = tracker.take_commits();
            tokio::task::spawn_blocking(move || {
                let result = if commits.is_empty() {
                    Ok(())
                } else {
                    match consumer.commit(&to_partition_list(&commits), CommitMode::Sync) {
                        // The topic was deleted under the subscription: its offsets have
                        // nothing left to protect, as no message of it can come again.
                        Err(KafkaError::ConsumerCommit(
                            RDKafkaErrorCode::UnknownTopicOrPartition,
                        )) => Ok(()),
                        other => other,
                    }
                };
                consumer.unsubscribe();
                // Dropping the last handle closes the consumer and joins librdkafka's threads.
                drop(consumer);
                result
            })
            .await
            .map_err(|e| BusError::broker(BACKEND, e))?
            .map_err(|e| BusError::Broker {
                backend: BACKEND,
                message: format!("final offset commit failed (bounded by {close_timeout:?}): {e}"),
            })
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_commits_only_the_contiguous_prefix() {
        let tracker = CommitTracker::default();
        let topic: Arc<str> = Arc::from("t");
        for offset in 10..15 {
            tracker.track(&topic, 0, offset);
        }
        tracker.done(&topic, 0, 11);
        tracker.done(&topic, 0, 12);
        assert!(tracker.take_commits().is_empty(), "10 is not handled yet");
        tracker.done(&topic, 0, 10);
        assert_eq!(tracker.take_commits(), vec![(topic.clone(), 0, 13)]);
        tracker.done(&topic, 0, 14);
        assert!(tracker.take_commits().is_empty(), "13 is not handled yet");
        tracker.done(&topic, 0, 13);
        assert_eq!(tracker.take_commits(), vec![(topic.clone(), 0, 15)]);
        assert!(tracker.take_commits().is_empty());
    }

    fn names(headers: &OwnedHeaders) -> Vec<&str> {
        headers.iter().map(|header| header.key).collect()
    }

    #[test]
    fn an_envelope_s_aggregate_id_travels_as_its_key_and_comes_back_as_its_header() {
        use super::super::envelope::{HEADER_AGGREGATE_ID, HEADER_EVENT_ID};
        use super::super::{Envelope, Message};
        let sent = Envelope::new(
            "order-7",
            "OrderPlaced",
            3,
            bytes::Bytes::from_static(b"{}"),
        );
        let headers = sent.headers();
        let wire = owned_headers(headers.iter(), headers.len(), Some("order-7"));
        assert_eq!(wire.count(), headers.len() - 1);
        assert!(!names(&wire).contains(&HEADER_AGGREGATE_ID));

        let received = received_headers(Some(wire.as_borrowed()), Some(b"order-7"));
        assert_eq!(received.len(), headers.len());
        assert_eq!(received.get(HEADER_AGGREGATE_ID), Some("order-7"));
        let message = Message {
            topic: Arc::from("orders"),
            key: Some(received_key(b"order-7", &received)),
            headers: received,
            payload: sent.payload.clone(),
            attempt: 1,
        };
        let decoded = Envelope::from_message(&message).unwrap();
        assert_eq!(decoded.aggregate_id, sent.aggregate_id);
        assert_eq!(decoded.event_id, sent.event_id);

        // A key other than the aggregate id leaves the header on the wire.
        let wire = owned_headers(headers.iter(), headers.len(), Some("another"));
        assert_eq!(wire.count(), headers.len());
        // Records that are not envelopes keep every header they were given.
        let plain = Headers::from(vec![(HEADER_AGGREGATE_ID.to_owned(), "k".to_owned())]);
        let wire = owned_headers(plain.iter(), plain.len(), Some("k"));
        assert_eq!(names(&wire), [HEADER_AGGREGATE_ID]);
        let back = received_headers(Some(wire.as_borrowed()), Some(b"k"));
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            [(HEADER_AGGREGATE_ID, "k")]
        );
        // A record written with both keeps the one it has; one with neither key nor headers
        // gets none.
        let both = owned_headers(headers.iter(), headers.len(), None);
        let back = received_headers(Some(both.as_borrowed()), Some(b"order-7"));
        assert_eq!(back.len(), headers.len());
        assert!(received_headers(None, None).is_empty());
        let event_only = Headers::from(vec![(HEADER_EVENT_ID.to_owned(), "e".to_owned())]);
        let wire = owned_headers(event_only.iter(), 1, None);
        assert_eq!(received_headers(Some(wire.as_borrowed()), None).len(), 1);
    }
}
