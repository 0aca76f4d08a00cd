//! The event bus: one API over Apache Kafka, NATS JetStream and an in-process memory backend.
//!
//! Publishing resolves when the broker acknowledged the message; [`EventBus::publish_pipelined`]
//! hands back a [`PublishReceipt`] so that a caller keeps a bounded window of acknowledgements in
//! flight. Subscribing runs an async handler for each message in a worker pool: envelopes in a
//! keyed pool (one aggregate's events in order, different aggregates in parallel), raw messages
//! in a round-robin pool. A message is acknowledged (NATS) or its offset committed (Kafka) only
//! after its handler succeeded. A failing handler is retried in its worker, so order still
//! holds, and past the retry bound the message goes to a dead-letter topic or is reported as
//! failed. Every queue and window is bounded: when full, the caller waits up to a timeout and
//! then gets [`BusError::Backpressure`]; nothing is ever dropped.

mod config;
pub mod envelope;
mod error;
mod fetch;
mod headers;
mod kafka;
mod known_topics;
mod memory;
mod nats;
mod nats_publish;
mod pool;
mod shared_str;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fetch::FetchTask;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::{
    BackendConfig, BusConfig, DeadLetter, KafkaConfig, MemoryConfig, NatsConfig, NatsStorage,
    PoolConfig, RetryPolicy,
};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{BusError, BusErrorKind, HandlerError};
pub use headers::{Headers, HeadersBuilder};
pub(crate) use kafka::owned_headers as kafka_headers;
pub use nats::connect_options as nats_connect_options;
pub(crate) use nats::header_map as nats_header_map;
pub(crate) use nats_publish::JetStreamPublisher;
pub use shared_str::SharedStr;

/// A message as delivered to a handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic (Kafka topic, NATS subject) it was published to.
    pub topic: Arc<str>,
    /// The record key (Kafka) or aggregate id (envelopes), if any.
    pub key: Option<SharedStr>,
    /// Headers, in the order they were sent.
    pub headers: Headers,
    /// The message body.
    pub payload: Bytes,
    /// Which attempt at handling this is, starting at 1.
    pub attempt: u32,
}

impl Message {
    /// The first header with this name (case-sensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// What is handed to a backend for sending.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub key: Option<SharedStr>,
    pub headers: Headers,
    pub payload: Bytes,
}

/// Connection state as seen by the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected to the broker.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Reconnecting,
    /// The bus was closed.
    Closed,
}

/// A message handler: async, returning `Ok` when the message was handled.
pub type Handler =
    Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

/// An envelope handler: async, returning `Ok` when the event was handled.
pub type EnvelopeHandler =
    Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

/// Wraps an async closure into a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(move |message| Box::pin(f(message)))
}

/// Wraps an async closure into an [`EnvelopeHandler`].
pub fn envelope_handler<F, Fut>(f: F) -> EnvelopeHandler
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(move |envelope| Box::pin(f(envelope)))
}

/// How a subscription consumes.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Consumer group (Kafka group id, NATS durable consumer name). Subscribers of one group
    /// share the messages; each group gets every message.
    pub group: String,
}

impl SubscribeOptions {
    /// Options for the given consumer group.
    pub fn group(group: impl Into<String>) -> Self {
        SubscribeOptions {
            group: group.into(),
        }
    }
}

/// Counters of one subscription.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    failed: AtomicU64,
}

/// A point-in-time copy of [`SubscriptionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionCounts {
    /// Messages whose handler succeeded and which were acknowledged.
    pub handled: u64,
    /// Handler attempts that failed and were retried.
    pub retried: u64,
    /// Messages sent to the dead-letter topic after the last attempt failed.
    pub dead_lettered: u64,
    /// Messages whose last attempt failed and that could not be dead-lettered (or
    /// [`DeadLetter::Report`] is set); never acknowledged silently.
    pub failed: u64,
}

impl SubscriptionStats {
    fn snapshot(&self) -> SubscriptionCounts {
        SubscriptionCounts {
            handled: self.handled.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A received message with the means to acknowledge it.
pub(crate) struct Delivery {
    pub message: Message,
    pub acker: Acker,
}

/// Acknowledges one delivered message to its backend.
pub(crate) enum Acker {
    /// Nothing to acknowledge: the memory backend is done with a message once it is taken.
    Nothing,
    /// A JetStream message's acknowledgement (large: boxed, so deliveries stay small).
    Nats(Box<nats::NatsAcker>),
    /// A Kafka record's offset, committable once handled.
    Kafka(kafka::KafkaAcker),
}

impl Acker {
    /// The message was handled (or dead-lettered): acknowledge or mark it committable.
    pub async fn ack(self) {
        match self {
            Acker::Nothing => {}
            Acker::Nats(acker) => acker.ack().await,
            Acker::Kafka(acker) => acker.ack(),
        }
    }

    /// The message could not be handled: let the broker redeliver it if it can.
    pub async fn nak(self) {
        match self {
            Acker::Nothing => {}
            Acker::Nats(acker) => acker.nak().await,
            Acker::Kafka(acker) => acker.nak(),
        }
    }
}

/// Where a backend's consumer hands its deliveries: the subscription's worker pool, which
/// waits while the chosen worker's queue is full, up to the enqueue timeout.
pub(crate) type DeliverySink = Arc<pool::Pool>;

/// A broker acknowledgement: already known, or still to come (bounded by the ack timeout).
pub(crate) enum Ack {
    /// The outcome is known at sending (the memory backend: queued is acknowledged).
    Ready(Result<(), BusError>),
    /// The broker's answer, to wait for.
    Pending(BoxFuture<'static, Result<(), BusError>>),
    /// librdkafka's delivery report, to wait for (its own future: no box per publish).
    Kafka(kafka::KafkaAck),
}

impl Ack {
    /// An acknowledgement to come from `answer`, which bounds its own wait: the backend hands
    /// the bus's `ack_timeout` to its client (the JetStream context's timeout; Kafka's
    /// [`Ack::Kafka`] is bounded the same way by librdkafka's `message.timeout.ms`), so no
    /// second timer is armed per publish.
    pub fn pending<F>(answer: F) -> Ack
    where
        F: Future<Output = Result<(), BusError>> + Send + 'static,
    {
        Ack::Pending(Box::pin(answer))
    }

    /// Waits for the outcome.
    pub async fn outcome(self) -> Result<(), BusError> {
        match self {
            Ack::Ready(result) => result,
            Ack::Pending(answer) => answer.await,
            Ack::Kafka(answer) => answer.await,
        }
    }
}

/// The transport half of a backend.
pub(crate) trait Transport: Send + Sync + 'static {
    /// `kafka`, `nats` or `memory`.
    fn backend(&self) -> &'static str;
    /// Hands the record to the client; resolves once it was taken, with the ack to come.
    fn send<'a>(&'a self, topic: &'a str, record: Record) -> BoxFuture<'a, Result<Ack, BusError>>;
    /// [`Transport::send`] without a future, when the client can take the record at once (the
    /// common case on a backend whose sending only waits when a queue is full); gives the record
    /// back when sending would have to wait.
    fn try_send(&self, _topic: &str, record: Record) -> Result<Result<Ack, BusError>, Record> {
        Err(record)
    }
    /// Whether every ack is known when the record is taken ([`Ack::Ready`]): then no receipt
    /// is ever outstanding, and publishes need no slot of the window.
    fn acknowledges_when_taken(&self) -> bool {
        false
    }
    /// Starts consuming `topic` as `group`, handing each message to `sink`.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        sink: DeliverySink,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>, BusError>>;
    /// Makes sure the topic exists (Kafka topic, NATS stream).
    fn ensure_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>>;
    /// Deletes a topic and its messages.
    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>>;
    /// The connection state.
    fn state(&self) -> ConnectionState;
    /// Flushes what is in flight and releases the client.
    fn close(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// The consuming half of one subscription on a backend.
pub(crate) trait Consumer: Send {
    /// The subscription's fetch task.
    fn fetch_task(&mut self) -> &mut FetchTask;
    /// Called after every handler finished: final commit, release of the client.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>>;
    /// Whether the consumer is ready to receive (Kafka: partitions assigned).
    fn is_ready(&self) -> bool {
        true
    }
    /// Stops fetching; resolves when the fetch task has ended.
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.fetch_task().stop())
    }
    /// The error that ended the fetch task early, if any.
    fn take_error(&mut self) -> Option<BusError> {
        self.fetch_task().take_error()
    }
}

/// The event bus.
pub struct EventBus {
    transport: Arc<dyn Transport>,
    config: BusConfig,
    /// Bounds the receipts outstanding; none for a transport that acknowledges when taken.
    window: Option<Arc<Semaphore>>,
    closed: AtomicBool,
    subscriptions: Mutex<Vec<Arc<SubscriptionInner>>>,
}

impl EventBus {
    /// Connects to the configured backend.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let transport: Arc<dyn Transport> = match &config.backend {
            BackendConfig::Memory(memory) => {
                Arc::new(memory::MemoryTransport::new(memory.clone(), &config))
            }
            BackendConfig::Kafka(kafka) => {
                Arc::new(kafka::KafkaTransport::connect(kafka.clone(), &config).await?)
            }
            BackendConfig::Nats(nats) => {
                Arc::new(nats::NatsTransport::connect(nats.clone(), &config).await?)
            }
        };
        let window = (!transport.acknowledges_when_taken())
            .then(|| Arc::new(Semaphore::new(config.publish_window)));
        Ok(EventBus {
            transport,
            window,
            config,
            closed: AtomicBool::new(false),
            subscriptions: Mutex::new(Vec::new()),
        })
    }

    /// The backend's name: `kafka`, `nats` or `memory`.
    pub fn backend(&self) -> &'static str {
        self.transport.backend()
    }

    /// The bus's configuration.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        if self.closed.load(Ordering::Acquire) {
            ConnectionState::Closed
        } else {
            self.transport.state()
        }
    }

    /// Publishes raw bytes; resolves once the broker acknowledged them.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        self.publish_pipelined(topic, payload).await?.await
    }

    /// Publishes raw bytes; resolves once the message was handed to the client and returns the
    /// receipt of the broker's acknowledgement. At most `publish_window` receipts are
    /// outstanding at once: past that, this waits up to `publish_timeout` for one to resolve.
    pub async fn publish_pipelined(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishReceipt, BusError> {
        let record = Record {
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
        };
        self.send(topic, record).await
    }

    /// Validates and publishes an envelope; resolves once the broker acknowledged it. The
    /// envelope is taken, not copied: its payload and aggregate id go out as they are.
    pub async fn publish_envelope(&self, topic: &str, envelope: Envelope) -> Result<(), BusError> {
        self.publish_envelope_pipelined(topic, envelope)
            .await?
            .await
    }

    /// Validates and publishes an envelope, returning the receipt of its acknowledgement.
    pub async fn publish_envelope_pipelined(
        &self,
        topic: &str,
        envelope: Envelope,
    ) -> Result<PublishReceipt, BusError> {
        envelope.validate()?;
        let headers = envelope.headers();
        let record = Record {
            key: Some(envelope.aggregate_id),
            headers,
            payload: envelope.payload,
        };
        self.send(topic, record).await
    }

    async fn send(&self, topic: &str, record: Record) -> Result<PublishReceipt, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let permit = match &self.window {
            Some(window) => Some(acquire_window(window, self.config.publish_timeout).await?),
            None => None,
        };
        let ack = match self.transport.try_send(topic, record) {
            Ok(taken) => {
                // Taken without waiting: count it against the task's scheduling budget, as a
                // channel send does, so that a tight publish loop still lets the consumers on
                // its thread run.
                tokio::task::consume_budget().await;
                taken?
            }
            Err(record) => self.transport.send(topic, record).await?,
        };
        Ok(PublishReceipt {
            ack,
            _permit: permit,
        })
    }

    /// Subscribes to raw messages of `topic`; handlers run in the round-robin pool.
    pub async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        self.start_subscription(
            topic,
            options,
            pool::PoolHandler::Raw(handler),
            pool::Dispatch::RoundRobin,
        )
        .await
    }

    /// Subscribes to envelopes of `topic`; handlers run in the keyed pool, so that the events
    /// of one aggregate are handled one at a time, in order. A message that is not a valid
    /// envelope fails like a failing handler (retried, then dead-lettered).
    pub async fn subscribe_envelope(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: EnvelopeHandler,
    ) -> Result<Subscription, BusError> {
        self.start_subscription(
            topic,
            options,
            pool::PoolHandler::Envelope(handler),
            pool::Dispatch::Keyed,
        )
        .await
    }

    async fn start_subscription(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: pool::PoolHandler,
        dispatch: pool::Dispatch,
    ) -> Result<Subscription, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if options.group.is_empty() {
            return Err(BusError::Config("the consumer group is empty".into()));
        }
        let stats = Arc::new(SubscriptionStats::default());
        let dead_letter = match &self.config.dead_letter {
            DeadLetter::Topic { suffix } => Some(format!("{topic}{suffix}")),
            DeadLetter::Report => None,
        };
        let workers = pool::WorkerContext {
            handler,
            retry: self.config.retry.clone(),
            dead_letter: dead_letter.map(|topic| (self.transport.clone(), topic)),
            stats: stats.clone(),
        };
        let pool = Arc::new(pool::Pool::start(&self.config.pool, dispatch, workers));
        let consumer = match self
            .transport
            .subscribe(topic, &options.group, pool.clone())
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => {
                pool_drain(pool, self.config.close_timeout).await;
                return Err(error);
            }
        };
        let inner = Arc::new(SubscriptionInner {
            topic: topic.to_owned(),
            consumer: tokio::sync::Mutex::new(Some(consumer)),
            pool: Mutex::new(Some(pool)),
            stats,
            close_timeout: self.config.close_timeout,
        });
        self.subscriptions.lock().unwrap().push(inner.clone());
        Ok(Subscription { inner })
    }

    /// Makes sure a topic exists (created with the configured partitions on Kafka, a stream on
    /// NATS). Publishing and subscribing do this on their own; this is for set-up steps.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        self.transport.ensure_topic(topic).await
    }

    /// Deletes a topic and its messages.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), BusError> {
        self.transport.delete_topic(topic).await
    }

    /// Stops taking new work, closes every subscription (draining its handlers and committing
    /// what they handled), flushes in-flight publishes and ends every task the bus started.
    pub async fn close(self) -> Result<(), BusError> {
        self.closed.store(true, Ordering::Release);
        let subscriptions = std::mem::take(&mut *self.subscriptions.lock().unwrap());
        let mut first_error = None;
        for subscription in subscriptions {
            if let Err(error) = subscription.close().await {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.transport.close().await {
            first_error.get_or_insert(error);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

async fn acquire_window(
    window: &Arc<Semaphore>,
    timeout: Duration,
) -> Result<OwnedSemaphorePermit, BusError> {
    if let Ok(permit) = window.clone().try_acquire_owned() {
        return Ok(permit);
    }
    match tokio::time::timeout(timeout, window.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(BusError::Closed),
        Err(_) => Err(BusError::Backpressure {
            what: "the publish window",
            waited: timeout,
        }),
    }
}

async fn pool_drain(pool: Arc<pool::Pool>, timeout: Duration) -> Option<BusError> {
    pool.drain(timeout).await.err()
}

/// The receipt of one publish: resolves with the broker's acknowledgement (or an error, or a
/// [`BusError::Timeout`] after `ack_timeout`). Holding it holds one slot of the publish window.
#[must_use = "a receipt does nothing unless awaited; dropping it frees its window slot early"]
pub struct PublishReceipt {
    ack: Ack,
    _permit: Option<OwnedSemaphorePermit>,
}

impl PublishReceipt {
    /// The outcome at once when it is already known (the memory backend acknowledges a publish
    /// as soon as it is queued), freeing the window slot; the receipt back when the broker's
    /// answer is still to come.
    pub fn into_ready(self) -> Result<Result<(), BusError>, PublishReceipt> {
        match self.ack {
            Ack::Ready(result) => Ok(result),
            Ack::Pending(_) | Ack::Kafka(_) => Err(self),
        }
    }
}

impl Future for PublishReceipt {
    type Output = Result<(), BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.ack {
            Ack::Ready(result) => Poll::Ready(std::mem::replace(result, Ok(()))),
            Ack::Pending(answer) => answer.as_mut().poll(cx),
            Ack::Kafka(answer) => Pin::new(answer).poll(cx),
        }
    }
}

/// A running subscription. Closing the bus closes it too.
pub struct Subscription {
    inner: Arc<SubscriptionInner>,
}

struct SubscriptionInner {
    topic: String,
    consumer: tokio::sync::Mutex<Option<Box<dyn Consumer>>>,
    pool: Mutex<Option<Arc<pool::Pool>>>,
    stats: Arc<SubscriptionStats>,
    close_timeout: Duration,
}

impl Subscription {
    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The subscription's counters so far.
    pub fn counts(&self) -> SubscriptionCounts {
        self.inner.stats.snapshot()
    }

    /// Waits until the consumer can receive (on Kafka: until its partitions are assigned), up
    /// to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let consumer = self.inner.consumer.lock().await;
                match consumer.as_ref() {
                    Some(consumer) if consumer.is_ready() => return Ok(()),
                    Some(_) => {}
                    None => return Err(BusError::Closed),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Timeout {
                    operation: "waiting for the subscription to be ready",
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops consuming, waits for the handlers of received messages to finish (up to the
    /// bus's `close_timeout`), acknowledges or commits what they handled, and ends the
    /// subscription's tasks.
    pub async fn close(self) -> Result<(), BusError> {
        self.inner.close().await
    }
}

impl SubscriptionInner {
    async fn close(&self) -> Result<(), BusError> {
        let Some(mut consumer) = self.consumer.lock().await.take() else {
            return Ok(());
        };
        consumer.stop().await;
        let fetch_error = consumer.take_error();
        let pool = self.pool.lock().unwrap().take();
        let drain_error = match pool {
            Some(pool) => pool_drain(pool, self.close_timeout).await,
            None => None,
        };
        let finish_result = consumer.finish().await;
        if let Some(error) = fetch_error.or(drain_error) {
            return Err(error);
        }
        finish_result
    }
}
