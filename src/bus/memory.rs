//! The in-process backend: the reference implementation of the bus's semantics, and the
//! embedded default for runs without brokers.
//!
//! Each topic keeps one bounded queue per consumer group; a publish waits for room in every
//! group's queue (up to the publish timeout) and is acknowledged once queued in all of them.
//! Messages published before any group subscribed wait in a bounded backlog that the first
//! group to subscribe takes over. Order per topic is publish order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::fetch::{FetchTask, Source};
use super::{
    Ack, Acker, BusConfig, BusError, ConnectionState, Consumer, Delivery, DeliverySink,
    MemoryConfig, Message, Record, Transport,
};

/// The most records the consuming task takes off a topic queue at once (one release of the
/// queue's room per batch); each is dispatched in order.
const CONSUME_BATCH: usize = 32;

type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Record>>>;

struct Topic {
    name: Arc<str>,
    groups: Vec<(String, mpsc::Sender<Record>, SharedReceiver)>,
    /// Messages published while no group existed, with the sender that feeds it.
    backlog: Option<(mpsc::Sender<Record>, SharedReceiver)>,
    /// Where a publish goes: every group's queue, or the backlog while there is no group.
    targets: Arc<[mpsc::Sender<Record>]>,
}

impl Topic {
    fn new(name: &str) -> Self {
        Topic {
            name: Arc::from(name),
            groups: Vec::new(),
            backlog: None,
            targets: Arc::from([]),
        }
    }

    fn refresh_targets(&mut self) {
        self.targets = match &self.backlog {
            Some((sender, _)) if self.groups.is_empty() => Arc::from([sender.clone()]),
            _ => self.groups.iter().map(|(_, s, _)| s.clone()).collect(),
        };
    }
}

/// FNV-1a (64 bits) over a topic's name: a publish looks its topic up, and for names of a few
/// bytes SipHash's set-up costs more than the name. Topic names come from the bus's user, not
/// from the network.
struct TopicHasher(u64);

impl Default for TopicHasher {
    fn default() -> Self {
        TopicHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for TopicHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The queues a publish to one topic goes to.
type Route = Arc<[mpsc::Sender<Record>]>;

/// Topology generations, unique across every transport of the process: a generation names one
/// transport's topics in one state.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Routes a thread has looked up most recently, valid for one topology generation (so for one
/// transport). A publish that finds its topic here takes no lock and writes no shared memory
/// (the shared map's lock and a shared reference count were a tenth of a raw publish's cost).
struct RouteCache {
    generation: u64,
    routes: Vec<(Box<str>, Route)>,
}

/// A thread's cache holds at most this many topics; a further one replaces the oldest.
const CACHED_ROUTES: usize = 16;

thread_local! {
    static ROUTES: RefCell<RouteCache> = const {
        RefCell::new(RouteCache { generation: 0, routes: Vec::new() })
    };
}

pub(crate) struct MemoryTransport {
    topics: Mutex<HashMap<String, Topic, BuildHasherDefault<TopicHasher>>>,
    /// Replaced by a new one (under the `topics` lock) whenever a topic's queues change:
    /// threads' cached routes read under another generation are stale.
    generation: AtomicU64,
    capacity: usize,
    publish_timeout: Duration,
    closed: AtomicBool,
}

impl MemoryTransport {
    pub fn new(config: MemoryConfig, bus: &BusConfig) -> Self {
        MemoryTransport {
            topics: Mutex::new(HashMap::default()),
            generation: AtomicU64::new(NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)),
            capacity: config.queue_capacity.max(1),
            publish_timeout: bus.publish_timeout,
            closed: AtomicBool::new(false),
        }
    }

    fn new_queue(&self) -> (mpsc::Sender<Record>, SharedReceiver) {
        let (sender, receiver) = mpsc::channel(self.capacity);
        (sender, Arc::new(tokio::sync::Mutex::new(receiver)))
    }

    /// The queues a publish to `topic` goes to (created on first use), and the topology
    /// generation they belong to.
    fn senders_for(&self, topic: &str) -> (Route, u64) {
        let mut topics = self.topics.lock().unwrap();
        if let Some(state) = topics.get(topic)
            && !state.targets.is_empty()
        {
            return (
                state.targets.clone(),
                self.generation.load(Ordering::Acquire),
            );
        }
        let state = topics
            .entry(topic.to_owned())
            .or_insert_with(|| Topic::new(topic));
        if state.groups.is_empty() && state.backlog.is_none() {
            state.backlog = Some(self.new_queue());
            state.refresh_targets();
            self.topology_changed();
        }
        (
            state.targets.clone(),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// Marks every cached route stale; called with the `topics` lock held.
    fn topology_changed(&self) {
        self.generation.store(
            NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            Ordering::Release,
        );
    }

    /// Calls `f` with the queues of `topic`, from this thread's route cache when it is current.
    fn with_route<R>(&self, topic: &str, f: impl FnOnce(&[mpsc::Sender<Record>]) -> R) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        ROUTES.with_borrow_mut(|cache| {
            if cache.generation != generation {
                cache.routes.clear();
                cache.generation = generation;
            }
            if let Some((_, route)) = cache.routes.iter().find(|(name, _)| &**name == topic) {
                return f(route);
            }
            let (route, read_at) = self.senders_for(topic);
            if read_at == cache.generation {
                if cache.routes.len() == CACHED_ROUTES {
                    cache.routes.remove(0);
                }
                cache.routes.push((topic.into(), route.clone()));
            }
            f(&route)
        })
    }
}

impl Transport for MemoryTransport {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn send<'a>(&'a self, topic: &'a str, record: Record) -> BoxFuture<'a, Result<Ack, BusError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(BusError::Closed);
            }
            // The general path: several groups, or a full queue (`try_send` takes the rest).
            for sender in self.senders_for(topic).0.iter() {
                let record = match sender.try_send(record.clone()) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(record)) => record,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(BusError::Closed),
                };
                match sender.send_timeout(record, self.publish_timeout).await {
                    Ok(()) => {}
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(BusError::Closed),
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        return Err(BusError::Backpressure {
                            what: "the memory topic queue",
                            waited: self.publish_timeout,
                        });
                    }
                }
            }
            Ok(Ack::Ready(Ok(())))
        })
    }

    fn acknowledges_when_taken(&self) -> bool {
        true
    }

    fn try_send(&self, topic: &str, record: Record) -> Result<Result<Ack, BusError>, Record> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(Err(BusError::Closed));
        }
        // One group (or the backlog): queued at once or not at all. Several groups take the
        // general path, which waits for room in each queue in turn.
        self.with_route(topic, |senders| {
            let [sender] = senders else {
                return Err(record);
            };
            match sender.try_send(record) {
                Ok(()) => Ok(Ok(Ack::Ready(Ok(())))),
                Err(mpsc::error::TrySendError::Full(record)) => Err(record),
                Err(mpsc::error::TrySendError::Closed(_)) => Ok(Err(BusError::Closed)),
            }
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        sink: DeliverySink,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>, BusError>> {
        Box::pin(async move {
            let (name, receiver) = {
                let mut topics = self.topics.lock().unwrap();
                let state = topics
                    .entry(topic.to_owned())
                    .or_insert_with(|| Topic::new(topic));
                let receiver = match state.groups.iter().find(|(g, _, _)| g == group) {
                    Some((_, _, receiver)) => receiver.clone(),
                    None => {
                        let (sender, receiver) = match state.backlog.take() {
                            Some(backlog) => backlog,
                            None => self.new_queue(),
                        };
                        state
                            .groups
                            .push((group.to_owned(), sender, receiver.clone()));
                        state.refresh_targets();
                        self.topology_changed();
                        receiver
                    }
                };
                (state.name.clone(), receiver)
            };
            let source = MemorySource {
                topic: name,
                receiver,
                held: None,
                records: Vec::with_capacity(CONSUME_BATCH),
            };
            let consumer: Box<dyn Consumer> = Box::new(MemoryConsumer {
                fetch: FetchTask::spawn(source, sink),
            });
            Ok(consumer)
        })
    }

    fn ensure_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let _ = self.senders_for(topic);
            Ok(())
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut topics = self.topics.lock().unwrap();
            topics.remove(topic);
            self.topology_changed();
            Ok(())
        })
    }

    fn state(&self) -> ConnectionState {
        if self.closed.load(Ordering::Acquire) {
            ConnectionState::Closed
        } else {
            ConnectionState::Connected
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            let mut topics = self.topics.lock().unwrap();
            topics.clear();
            self.topology_changed();
            Ok(())
        })
    }
}

/// Takes a topic queue's records, in batches, for one group.
struct MemorySource {
    topic: Arc<str>,
    receiver: SharedReceiver,
    /// The queue's receiving end, once this group's subscription holds it.
    held: Option<tokio::sync::OwnedMutexGuard<mpsc::Receiver<Record>>>,
    records: Vec<Record>,
}

impl Source for MemorySource {
    async fn receive(&mut self, batch: &mut Vec<Delivery>) -> bool {
        let receiver = match &mut self.held {
            Some(held) => held,
            None => self.held.insert(self.receiver.clone().lock_owned().await),
        };
        if receiver.recv_many(&mut self.records, CONSUME_BATCH).await == 0 {
            return false;
        }
        batch.extend(self.records.drain(..).map(|record| Delivery {
            message: Message {
                topic: self.topic.clone(),
                key: record.key,
                headers: record.headers,
                payload: record.payload,
                attempt: 1,
            },
            acker: Acker::Nothing,
        }));
        true
    }
}

struct MemoryConsumer {
    fetch: FetchTask,
}

impl Consumer for MemoryConsumer {
    fn fetch_task(&mut self) -> &mut FetchTask {
        &mut self.fetch
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}
