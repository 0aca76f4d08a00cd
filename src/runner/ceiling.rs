//! The ceiling: the same raw load through the client alone (rdkafka, async-nats, a tokio
//! channel for memory), without the bus, against the same broker in the same run.
//!
//! Two figures. The client ceiling pays for what the bus's guarantee and the harness need, so
//! that the bus is judged against the same work: NATS explicit acks of every message, Kafka
//! offset commits at the bus's cadence, and the harness's per-message accounting (stamp
//! decode, HDR record, loss and duplicate bitmaps). The bus's efficiency is its end-to-end
//! throughput divided by this. The bare client (no acks, no commits, no accounting) shows the
//! client's raw limit beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::bus::{BackendConfig, BusConfig, Headers, SharedStr};
use crate::chunks::ByteChunks;
use crate::metrics::recorder::{Recorder, Stamp};
use crate::runner::load::AckTally;
use crate::runner::receipts::ReceiptWindow;

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
    /// Acknowledgements in flight, over all publishers.
    pub max_in_flight: usize,
    /// Publishing tasks, each with its share of the messages and of the window, as in the
    /// cells.
    pub publishers: u32,
    /// A topic name no one else uses: the prefix of the load's topics.
    pub topic: String,
    /// Topics the messages are spread over (message `seq` goes to topic `seq % topics`), as
    /// in the cells: the same partitions, streams and consumers for the broker to serve.
    pub topics: u32,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// The client ceiling (acks, commits and the harness's accounting) rather than the bare
    /// client.
    pub fair: bool,
    /// Records shaped like envelopes for this many aggregates (the envelope cells' load), or
    /// `None` for raw records. Envelope records carry what the bus's envelopes carry on the
    /// wire, so that the client pays for the same bytes: the aggregate id as the record key
    /// (Kafka, and the memory channel's records), the five envelope headers (on Kafka the four
    /// besides the aggregate id, which the key carries, as the bus sends them), each message's
    /// topic chosen by its aggregate; the consumer reads every header. Building and parsing
    /// the envelopes themselves (event ids, timestamps, validation) is left to the bus: that
    /// is part of what it costs.
    pub envelope_aggregates: Option<u64>,
    /// Publish only, with no consumer: the figure to hold against the brokers' own publish
    /// tools (`nats bench js pub async`, Kafka's `ProducerPerformance`). Not for the memory
    /// backend, whose channel fills without a consumer.
    pub publish_only: bool,
}

impl CeilingLoad {
    /// The names of the load's topics.
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics.max(1))
            .map(|index| format!("{}.{index}", self.topic))
            .collect()
    }

    /// The topic of message `seq`, among `names` (or what is kept per topic): by sequence for
    /// raw records, by aggregate for envelope records, as in the cells.
    fn topic_of<'a, Topic>(&self, names: &'a [Topic], seq: u64) -> &'a Topic {
        let spread = match self.envelope_aggregates {
            Some(aggregates) => seq % aggregates.max(1),
            None => seq,
        };
        super::load::topic_of(names, spread)
    }

    /// The key and headers of message `seq`, for envelope records.
    fn shape_of<'a, Shape>(&self, shapes: &'a [Shape], seq: u64) -> Option<&'a Shape> {
        self.envelope_aggregates
            .map(|aggregates| &shapes[(seq % aggregates.max(1)) as usize])
    }

    /// How many of messages `0..messages` each topic gets, in the order of
    /// [`CeilingLoad::topic_names`].
    fn topic_shares(&self, messages: u64) -> Vec<u64> {
        let topics = u64::from(self.topics.max(1));
        let mut shares = vec![0u64; topics as usize];
        // Messages spread by `spread % topics`, where `spread` runs over `0..width` in turn.
        let width = self
            .envelope_aggregates
            .map_or(topics, |aggregates| aggregates.max(1));
        for spread in 0..width.min(messages) {
            let count = messages / width + u64::from(spread < messages % width);
            shares[(spread % topics) as usize] += count;
        }
        shares
    }

    /// One key and header set per aggregate, built once: the values have the length and form
    /// of the bus's (a UUID, an RFC 3339 timestamp with nanoseconds).
    fn envelope_shapes(&self) -> Vec<EnvelopeShape> {
        let Some(aggregates) = self.envelope_aggregates else {
            return Vec::new();
        };
        let template = crate::bus::Envelope::new("aggregate", "BenchmarkEvent", 1, Bytes::new());
        (0..aggregates.max(1))
            .map(|aggregate| {
                let mut envelope = template.clone();
                envelope.aggregate_id = super::load::aggregate_id(aggregate).into();
                let headers = envelope
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect();
                EnvelopeShape {
                    key: envelope.aggregate_id.into(),
                    headers,
                }
            })
            .collect()
    }
}

/// What an envelope record carries besides its payload.
#[derive(Debug, Clone)]
struct EnvelopeShape {
    key: String,
    headers: Vec<(String, String)>,
}

/// How long removing the ceiling's topic or stream may take once the run ended.
const CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker has to answer a metadata request before it is called unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the bare-client load and returns its end-to-end throughput in messages per second.
/// The first send error ends the run with that error; the run also ends at its timeout or
/// when the run is interrupted; in every case its topic (Kafka) or stream (NATS) is removed.
pub async fn measure(
    config: &BusConfig,
    load: &CeilingLoad,
) -> Result<CeilingFigures, CeilingError> {
    let reachable = tokio::select! {
        reachable = reachable(config) => reachable,
        _ = super::until_interrupted() => return Err(CeilingError::Failed("interrupted".into())),
    };
    reachable.map_err(CeilingError::Unreachable)?;
    let recorder = load
        .fair
        .then(|| Arc::new(Recorder::new(Instant::now(), load.messages, 1, false)));
    let run = async {
        let figures = match &config.backend {
            BackendConfig::Memory(_) => memory(load, recorder.clone()).await,
            BackendConfig::Kafka(kafka) => kafka_ceiling(kafka, load, recorder.clone()).await,
            BackendConfig::Nats(nats) => nats_ceiling(nats, load, recorder.clone()).await,
        }?;
        if let Some(recorder) = &recorder {
            let handled = recorder.distinct();
            if handled != load.messages {
                return Err(format!(
                    "the client ceiling handled {handled} of {} messages",
                    load.messages
                ));
            }
        }
        Ok(figures)
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

/// What a ceiling run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeilingFigures {
    /// Messages per second, end to end (or published, for a publish-only run).
    pub msgs_per_sec: f64,
    /// Process CPU time (user + system) per message over the measured phase, microseconds:
    /// what the client alone costs, beside the bus's figure.
    pub cpu_us_per_msg: f64,
}

/// The start of a ceiling's measured phase: wall clock and process CPU time.
struct MeasuredPhase {
    start: Instant,
    cpu: Duration,
}

impl MeasuredPhase {
    fn begin() -> Self {
        MeasuredPhase {
            start: Instant::now(),
            cpu: crate::metrics::resources::cpu_time(),
        }
    }

    /// The figures of `messages` done by `end`.
    fn figures(&self, messages: u64, end: Instant) -> CeilingFigures {
        let cpu = crate::metrics::resources::cpu_time().saturating_sub(self.cpu);
        let messages_f = messages.max(1) as f64;
        CeilingFigures {
            msgs_per_sec: messages as f64 / end.duration_since(self.start).as_secs_f64(),
            cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / messages_f,
        }
    }
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
            let options = crate::bus::nats_connect_options(nats)
                .await
                .map_err(|e| e.to_string())?;
            let connect = options
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
                let names = load.topic_names();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let _ = admin
                    .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
                    .await;
            }
        }
        BackendConfig::Nats(nats) => {
            let connected = match crate::bus::nats_connect_options(nats).await {
                Ok(options) => options.connect(nats.url.as_str()).await.ok(),
                Err(_) => None,
            };
            if let Some(client) = connected {
                let context = async_nats::jetstream::new(client.clone());
                for topic in load.topic_names() {
                    let _ = context.delete_stream(nats_stream_name(&topic)).await;
                }
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

fn nats_stream_name(topic: &str) -> String {
    crate::bus::NatsConfig::stream_name("CEILING_", topic)
}

/// Receives the load's `messages` from its streams (in the order of its topics): one task per
/// stream, each taking its topic's share, as the bus runs one fetch task per subscription.
/// Returns when the last one arrived; the streams are put back for the next phase.
async fn nats_receive_all(
    load: &CeilingLoad,
    streams: &mut Vec<async_nats::jetstream::consumer::pull::Stream>,
    messages: u64,
    recorder: Option<Arc<Recorder>>,
) -> Result<Instant, String> {
    let shares = load.topic_shares(messages);
    let count = streams.len();
    // Dropped early (the publishers failed, or the run's bound passed), the set aborts them.
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (mut stream, share)) in std::mem::take(streams).into_iter().zip(shares).enumerate()
    {
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let result = nats_receive(&mut stream, share, recorder.as_deref()).await;
            (index, stream, result)
        });
    }
    let mut returned: Vec<Option<_>> = (0..count).map(|_| None).collect();
    let mut last = None;
    while let Some(joined) = tasks.join_next().await {
        let (index, stream, result) = joined.map_err(|e| e.to_string())?;
        returned[index] = Some(stream);
        let end = result?;
        last = Some(last.map_or(end, |last: Instant| last.max(end)));
    }
    streams.extend(returned.into_iter().flatten());
    Ok(last.unwrap_or_else(Instant::now))
}

/// Receives `messages` from a NATS pull consumer (transient errors skipped); with a recorder,
/// accounts for each message and acks it, as the bus does after its handler. Returns when the
/// last one arrived.
async fn nats_receive(
    stream: &mut async_nats::jetstream::consumer::pull::Stream,
    messages: u64,
    recorder: Option<&Recorder>,
) -> Result<Instant, String> {
    let mut received = 0u64;
    while received < messages {
        match stream.next().await {
            Some(Ok(message)) => {
                if let Some(headers) = &message.headers {
                    for (name, values) in headers.iter() {
                        std::hint::black_box((name, values));
                    }
                }
                if let Some(recorder) = recorder {
                    let (message, acker) = message.split();
                    recorder.on_message(&message.payload);
                    acker.ack().await.map_err(|e| format!("acking: {e}"))?;
                }
                received += 1;
            }
            Some(Err(_)) => continue,
            None => return Err(ended(received, messages)),
        }
    }
    Ok(Instant::now())
}

fn ended(received: u64, messages: u64) -> String {
    format!("the consumer stream ended after {received} of {messages} messages")
}

/// The next offset to commit, per topic and partition.
type NextOffsets = HashMap<(String, i32), i64>;

/// The next offsets to commit, per partition, and when they were last committed: the bus's
/// commit cadence, for the client ceiling.
struct KafkaCommits {
    interval: Duration,
    state: std::sync::Mutex<(NextOffsets, Instant)>,
}

impl KafkaCommits {
    fn new(interval: Duration) -> Self {
        KafkaCommits {
            interval,
            state: std::sync::Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    /// Records a handled offset; commits every partition's next offset once per interval.
    fn handled(&self, consumer: &StreamConsumer, topic: &str, partition: i32, offset: i64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state
            .0
            .iter_mut()
            .find(|((t, p), _)| t == topic && *p == partition)
        {
            Some((_, next)) => *next = offset + 1,
            None => {
                state.0.insert((topic.to_owned(), partition), offset + 1);
            }
        }
        if state.1.elapsed() >= self.interval {
            let mut list = rdkafka::TopicPartitionList::new();
            for ((topic, partition), next) in &state.0 {
                let _ =
                    list.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*next));
            }
            let _ = consumer.commit(&list, rdkafka::consumer::CommitMode::Async);
            state.1 = Instant::now();
        }
    }
}

/// Receives `messages` from a Kafka consumer (transient errors skipped); with a recorder,
/// accounts for each message and commits offsets at the bus's cadence. Returns when the last
/// one arrived.
async fn kafka_receive(
    consumer: &StreamConsumer,
    stream: &mut rdkafka::consumer::MessageStream<'_, rdkafka::consumer::DefaultConsumerContext>,
    messages: u64,
    recorder: Option<&Recorder>,
    commits: Option<&KafkaCommits>,
) -> Result<Instant, String> {
    use rdkafka::Message as _;
    let mut received = 0u64;
    while received < messages {
        match stream.next().await {
            Some(Ok(message)) => {
                if let Some(recorder) = recorder {
                    recorder.on_message(message.payload().unwrap_or_default());
                }
                if let Some(headers) = message.headers() {
                    use rdkafka::message::Headers as _;
                    for header in headers.iter() {
                        std::hint::black_box((header.key, header.value));
                    }
                }
                if let Some(commits) = commits {
                    commits.handled(
                        consumer,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    );
                }
                received += 1;
            }
            Some(Err(_)) => continue,
            None => return Err(ended(received, messages)),
        }
    }
    Ok(Instant::now())
}

/// Message `seq` of the warm-up or of the measured load, stamped with its send time when the
/// harness accounts for it, and that send time.
fn payload(
    load: &CeilingLoad,
    seq: u64,
    warmup: bool,
    recorder: Option<&Recorder>,
    chunks: &mut ByteChunks,
) -> (Bytes, u64) {
    let intended = if warmup {
        0
    } else {
        recorder.map_or(0, Recorder::now_nanos)
    };
    let stamp = if warmup {
        Stamp::warmup(seq)
    } else {
        Stamp {
            intended_nanos: intended,
            seq,
            aggregate: 0,
            version: 0,
        }
    };
    (stamp.payload_in(load.payload_bytes, chunks), intended)
}

/// A ceiling publisher's accounting for its acknowledgements, the same as a cell's publisher
/// keeps (each one's publish latency from its send time, the acknowledged mark that the loss
/// count reads, the per-second count); nothing for the warm-up or the bare client.
struct PublishAccounting<'r> {
    recorder: Option<&'r Recorder>,
    tally: AckTally,
    origin: u64,
}

impl<'r> PublishAccounting<'r> {
    fn new(recorder: Option<&'r Recorder>, warmup: bool) -> Self {
        let recorder = recorder.filter(|_| !warmup);
        PublishAccounting {
            recorder,
            tally: AckTally::new(),
            origin: recorder.map_or(0, Recorder::now_nanos),
        }
    }

    /// Accounts for the acknowledgement of message `seq`, sent at `intended`.
    fn acknowledged(&mut self, intended: u64, seq: u64) {
        if let Some(recorder) = self.recorder {
            self.tally
                .count(Ok(()), intended, seq, recorder, self.origin);
        }
    }
}

/// What the memory ceiling's channel carries: a payload and, for envelope loads, the key and
/// headers a bus record carries.
struct MemoryRecord {
    payload: Bytes,
    key: Option<SharedStr>,
    headers: Headers,
}

async fn memory(
    load: &CeilingLoad,
    recorder: Option<Arc<Recorder>>,
) -> Result<CeilingFigures, String> {
    if load.publish_only {
        return Err("a publish-only ceiling has no meaning for the memory backend".into());
    }
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<MemoryRecord>(load.max_in_flight.max(1));
    let consumer_recorder = recorder.clone();
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
                Some(record) => {
                    for header in record.headers.iter() {
                        std::hint::black_box(header);
                    }
                    std::hint::black_box(&record.key);
                    if let Some(recorder) = &consumer_recorder {
                        recorder.on_message(&record.payload);
                    }
                    received += 1;
                }
                None => break,
            }
        }
        (received.saturating_sub(warmup), Instant::now())
    });
    memory_send_all(&sender, load, warmup, true, None).await?;
    if warmup > 0 {
        warmed_up
            .await
            .map_err(|_| "the warm-up was not received".to_owned())?;
    }
    let start = MeasuredPhase::begin();
    memory_send_all(&sender, load, messages, false, recorder).await?;
    let (received, end) = consumer.await.map_err(|e| e.to_string())?;
    Ok(start.figures(received, end))
}

/// Sends `messages` into the channel from the load's publishers, as the cell's publishers do;
/// a message in the channel is acknowledged, as the memory backend's are.
async fn memory_send_all(
    sender: &tokio::sync::mpsc::Sender<MemoryRecord>,
    load: &CeilingLoad,
    messages: u64,
    warmup: bool,
    recorder: Option<Arc<Recorder>>,
) -> Result<(), String> {
    from_publishers(load, messages, |seqs, _window| {
        let (sender, load, recorder) = (sender.clone(), load.clone(), recorder.clone());
        async move {
            let shapes: Vec<(SharedStr, Headers)> = load
                .envelope_shapes()
                .into_iter()
                .map(|shape| (SharedStr::from(shape.key), Headers::from(shape.headers)))
                .collect();
            let mut accounting = PublishAccounting::new(recorder.as_deref(), warmup);
            let mut chunks = ByteChunks::new();
            for seq in seqs {
                let (payload, intended) =
                    payload(&load, seq, warmup, recorder.as_deref(), &mut chunks);
                let (key, headers) = match load.shape_of(&shapes, seq) {
                    Some((key, headers)) => (Some(key.clone()), headers.clone()),
                    None => (None, Headers::new()),
                };
                sender
                    .send(MemoryRecord {
                        payload,
                        key,
                        headers,
                    })
                    .await
                    .map_err(|_| "the channel closed".to_owned())?;
                accounting.acknowledged(intended, seq);
            }
            Ok(())
        }
    })
    .await
}

async fn kafka_ceiling(
    kafka: &crate::bus::KafkaConfig,
    load: &CeilingLoad,
    recorder: Option<Arc<Recorder>>,
) -> Result<CeilingFigures, String> {
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
    let names = load.topic_names();
    let topics: Vec<_> = names
        .iter()
        .map(|name| {
            rdkafka::admin::NewTopic::new(
                name,
                kafka.partitions,
                rdkafka::admin::TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    admin
        .create_topics(&topics, &rdkafka::admin::AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    if load.publish_only {
        kafka_send_all(&producer, load, load.warmup, true, None).await?;
        let start = MeasuredPhase::begin();
        kafka_send_all(&producer, load, load.messages, false, None).await?;
        return Ok(start.figures(load.messages, Instant::now()));
    }
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
    let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&subscribed).map_err(|e| e.to_string())?;
    // Wait for the assignment so that group joining is not counted as throughput.
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = names.len() * kafka.partitions.max(1) as usize;
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) < partitions {
        if Instant::now() > deadline {
            return Err("the bare consumer got no partitions within 30s".into());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = consumer.recv() => return Err("a message arrived on a fresh topic".into()),
        }
    }
    let mut stream = consumer.stream();
    let commits = recorder
        .as_ref()
        .map(|_| KafkaCommits::new(kafka.commit_interval));
    if load.warmup > 0 {
        tokio::try_join!(
            kafka_send_all(&producer, load, load.warmup, true, recorder.clone()),
            kafka_receive(
                &consumer,
                &mut stream,
                load.warmup,
                recorder.as_deref(),
                commits.as_ref()
            )
        )?;
    }
    let messages = load.messages;
    let start = MeasuredPhase::begin();
    let ((), end) = tokio::try_join!(
        kafka_send_all(&producer, load, messages, false, recorder.clone()),
        kafka_receive(
            &consumer,
            &mut stream,
            messages,
            recorder.as_deref(),
            commits.as_ref()
        )
    )?;
    Ok(start.figures(messages, end))
}

/// Sends `messages` records from the load's publishers, each with its share of the window.
async fn kafka_send_all(
    producer: &FutureProducer,
    load: &CeilingLoad,
    messages: u64,
    warmup: bool,
    recorder: Option<Arc<Recorder>>,
) -> Result<(), String> {
    from_publishers(load, messages, |seqs, window| {
        let (producer, load, recorder) = (producer.clone(), load.clone(), recorder.clone());
        async move { kafka_send(&producer, &load, seqs, window, warmup, recorder.as_deref()).await }
    })
    .await
}

/// A ceiling publisher's acknowledgements, kept as a cell's publisher keeps its receipts (the
/// same [`ReceiptWindow`]: the arrived ones taken after each send, the oldest waited for when
/// the publisher's share of the window is used up) and each accounted for as it arrives. The
/// first failed one ends the ceiling run.
struct CeilingAcks<'r, F: std::future::Future> {
    window: ReceiptWindow<F>,
    accounting: PublishAccounting<'r>,
    /// An acknowledgement's outcome, in the ceiling's terms.
    outcome: fn(F::Output) -> Result<(), String>,
}

impl<'r, F: std::future::Future + Unpin> CeilingAcks<'r, F> {
    fn new(
        window: usize,
        accounting: PublishAccounting<'r>,
        outcome: fn(F::Output) -> Result<(), String>,
    ) -> Self {
        CeilingAcks {
            window: ReceiptWindow::new(window),
            accounting,
            outcome,
        }
    }

    /// Waits, with the window full, for room for one more.
    async fn make_room(&mut self) -> Result<(), String> {
        while self.window.is_full() {
            if let Some((outcome, intended, seq)) = self.window.oldest().await {
                self.account(outcome, intended, seq)?;
            }
        }
        Ok(())
    }

    /// Adds the acknowledgement to come of message `seq`, sent at `intended`, and takes those
    /// that have arrived.
    fn push(&mut self, ack: F, intended: u64, seq: u64) -> Result<(), String> {
        self.window.push(ack, intended, seq);
        while let Some((outcome, intended, seq)) = self.window.ready() {
            self.account(outcome, intended, seq)?;
        }
        Ok(())
    }

    /// Waits for every acknowledgement still out.
    async fn finish(mut self) -> Result<(), String> {
        while let Some((outcome, intended, seq)) = self.window.oldest().await {
            self.account(outcome, intended, seq)?;
        }
        Ok(())
    }

    fn account(&mut self, outcome: F::Output, intended: u64, seq: u64) -> Result<(), String> {
        (self.outcome)(outcome)?;
        self.accounting.acknowledged(intended, seq);
        Ok(())
    }
}

/// Runs the load's publishers as tasks of their own, each sending its share of `messages`
/// with its share of the in-flight window; the first error ends the wait.
async fn from_publishers<Spawn, Fut>(
    load: &CeilingLoad,
    messages: u64,
    send: Spawn,
) -> Result<(), String>
where
    Spawn: Fn(std::ops::Range<u64>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let publishers = load.publishers.max(1);
    let window = load.max_in_flight.div_ceil(publishers as usize).max(1);
    let tasks: Vec<_> = (0..publishers)
        .map(|index| {
            let (first, count) = super::load::share(messages, publishers, index);
            tokio::spawn(send(first..first + count, window))
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Sends the records `seqs` with at most `window` deliveries outstanding, and waits for the
/// last delivery report.
async fn kafka_send(
    producer: &FutureProducer,
    load: &CeilingLoad,
    seqs: std::ops::Range<u64>,
    window: usize,
    warmup: bool,
    recorder: Option<&Recorder>,
) -> Result<(), String> {
    let names = load.topic_names();
    let shapes = load.envelope_shapes();
    let mut in_flight = CeilingAcks::new(
        window,
        PublishAccounting::new(recorder, warmup),
        |delivered: <rdkafka::producer::DeliveryFuture as std::future::Future>::Output| {
            match delivered {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(canceled) => Err(canceled.to_string()),
            }
        },
    );
    let mut chunks = ByteChunks::new();
    for seq in seqs {
        in_flight.make_room().await?;
        let (body, intended) = payload(load, seq, warmup, recorder, &mut chunks);
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(load.topic_of(&names, seq).as_str()).payload(&body[..]);
        if let Some(shape) = load.shape_of(&shapes, seq) {
            let headers = crate::bus::kafka_headers(
                shape.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                shape.headers.len(),
                Some(shape.key.as_str()),
            );
            record = record.key(shape.key.as_str()).headers(headers);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery, intended, seq)?;
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
    }
    in_flight.finish().await
}

async fn nats_ceiling(
    nats: &crate::bus::NatsConfig,
    load: &CeilingLoad,
    recorder: Option<Arc<Recorder>>,
) -> Result<CeilingFigures, String> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = crate::bus::nats_connect_options(nats)
        .await
        .map_err(|e| e.to_string())?
        .connect(nats.url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let context = jetstream::new(client.clone());
    // Publishing as the bus does. The connection is not expected to drop during a ceiling run:
    // its acknowledgements are bounded by the run's timeout instead.
    let (_connection_kept, disconnections) = tokio::sync::watch::channel(0u64);
    let publisher =
        crate::bus::JetStreamPublisher::start(client.clone(), load.timeout, disconnections)
            .await
            .map_err(|e| e.to_string())?;
    // One stream and one pull consumer per topic, as the bus has, each received on its own task.
    let mut consumers = Vec::new();
    for topic in load.topic_names() {
        let stream = context
            .get_or_create_stream(stream::Config {
                name: nats_stream_name(&topic),
                subjects: vec![topic.clone()],
                storage: match nats.storage {
                    crate::bus::NatsStorage::File => stream::StorageType::File,
                    crate::bus::NatsStorage::Memory => stream::StorageType::Memory,
                },
                num_replicas: nats.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        if load.publish_only {
            continue;
        }
        let pull: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "ceiling",
                consumer::pull::Config {
                    durable_name: Some("ceiling".into()),
                    // The client ceiling acks every message, as the bus does after its handler.
                    ack_policy: if recorder.is_some() {
                        consumer::AckPolicy::Explicit
                    } else {
                        consumer::AckPolicy::None
                    },
                    ack_wait: nats.ack_wait,
                    max_ack_pending: nats.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        consumers.push(
            pull.stream()
                .max_messages_per_batch(nats.fetch_batch)
                .messages()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    if load.publish_only {
        nats_send_all(&publisher, load, load.warmup, true, None).await?;
        let start = MeasuredPhase::begin();
        nats_send_all(&publisher, load, load.messages, false, None).await?;
        let figures = start.figures(load.messages, Instant::now());
        let _ = client.drain().await;
        publisher.stop().await;
        return Ok(figures);
    }
    if load.warmup > 0 {
        tokio::try_join!(
            nats_send_all(&publisher, load, load.warmup, true, recorder.clone()),
            nats_receive_all(load, &mut consumers, load.warmup, recorder.clone())
        )?;
    }
    let messages = load.messages;
    let start = MeasuredPhase::begin();
    let ((), end) = tokio::try_join!(
        nats_send_all(&publisher, load, messages, false, recorder.clone()),
        nats_receive_all(load, &mut consumers, messages, recorder.clone())
    )?;
    drop(consumers);
    let _ = client.drain().await;
    publisher.stop().await;
    Ok(start.figures(messages, end))
}

/// Publishes `messages` from the load's publishers, each with its share of the window.
async fn nats_send_all(
    publisher: &crate::bus::JetStreamPublisher,
    load: &CeilingLoad,
    messages: u64,
    warmup: bool,
    recorder: Option<Arc<Recorder>>,
) -> Result<(), String> {
    from_publishers(load, messages, |seqs, window| {
        let (publisher, load, recorder) = (publisher.clone(), load.clone(), recorder.clone());
        async move { nats_send(&publisher, &load, seqs, window, warmup, recorder.as_deref()).await }
    })
    .await
}

/// Publishes the messages `seqs` with at most `window` acknowledgements outstanding, and
/// waits for the last one.
async fn nats_send(
    publisher: &crate::bus::JetStreamPublisher,
    load: &CeilingLoad,
    seqs: std::ops::Range<u64>,
    window: usize,
    warmup: bool,
    recorder: Option<&Recorder>,
) -> Result<(), String> {
    let names = load.topic_names();
    // One subject per topic, cloned for each message (as the bus keeps one per topic).
    let subjects: Vec<async_nats::Subject> =
        names.iter().map(|name| name.as_str().into()).collect();
    let shapes = load.envelope_shapes();
    let mut in_flight = CeilingAcks::new(
        window,
        PublishAccounting::new(recorder, warmup),
        |acknowledged: Result<(), crate::bus::BusError>| acknowledged.map_err(|e| e.to_string()),
    );
    let mut chunks = ByteChunks::new();
    for seq in seqs {
        in_flight.make_room().await?;
        let subject = load.topic_of(&subjects, seq).clone();
        let (body, intended) = payload(load, seq, warmup, recorder, &mut chunks);
        let headers = load.shape_of(&shapes, seq).map(|shape| {
            crate::bus::nats_header_map(shape.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        });
        let ack = publisher
            .publish(subject, headers, body)
            .await
            .map_err(|e| e.to_string())?;
        in_flight.push(ack, intended, seq)?;
    }
    in_flight.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(topics: u32, envelope_aggregates: Option<u64>) -> CeilingLoad {
        CeilingLoad {
            messages: 0,
            warmup: 0,
            payload_bytes: 64,
            max_in_flight: 16,
            publishers: 2,
            topic: "shares".into(),
            topics,
            timeout: Duration::from_secs(1),
            fair: true,
            envelope_aggregates,
            publish_only: false,
        }
    }

    /// Each topic's share, counted one message at a time with the rule that places them.
    fn counted(load: &CeilingLoad, messages: u64) -> Vec<u64> {
        let indexes: Vec<usize> = (0..load.topics.max(1) as usize).collect();
        let mut shares = vec![0u64; indexes.len()];
        for seq in 0..messages {
            shares[*load.topic_of(&indexes, seq)] += 1;
        }
        shares
    }

    #[test]
    fn topic_shares_match_where_each_message_goes() {
        for (topics, aggregates) in [
            (5, None),
            (5, Some(500)),
            (3, Some(7)),
            (4, Some(2)),
            (1, None),
        ] {
            let load = load(topics, aggregates);
            for messages in [0, 1, 3, 6, 499, 500, 501, 2_003] {
                assert_eq!(
                    load.topic_shares(messages),
                    counted(&load, messages),
                    "{topics} topics, {aggregates:?} aggregates, {messages} messages"
                );
            }
        }
    }
}
