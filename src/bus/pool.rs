//! Handler worker pools: a keyed pool (a stable hash of the key picks the worker, so one key's
//! messages are handled one at a time, in order) and a round-robin pool for raw messages.
//! Every worker is one tokio task with a bounded queue; a full queue makes the dispatcher wait,
//! up to the enqueue timeout.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::envelope::HEADER_AGGREGATE_ID;
use super::{
    BusError, Delivery, Envelope, EnvelopeHandler, Handler, HandlerError, Message, PoolConfig,
    Record, RetryPolicy, SubscriptionStats, Transport,
};

/// How deliveries are spread over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// By a stable hash of the message key (the aggregate id).
    Keyed,
    /// In turn.
    RoundRobin,
}

/// The handler a pool's workers call.
pub(crate) enum PoolHandler {
    /// Called with the message as received.
    Raw(Handler),
    /// Called with the envelope decoded from the message; a message that is not a valid
    /// envelope fails like a failing handler.
    Envelope(EnvelopeHandler),
}

impl PoolHandler {
    /// One attempt at handling `message`.
    async fn call(&self, message: &Message) -> Result<(), HandlerError> {
        match self {
            PoolHandler::Raw(handler) => handler(message.clone()).await,
            PoolHandler::Envelope(handler) => {
                let envelope = Envelope::from_message(message)
                    .map_err(|e| HandlerError::msg(format!("not an envelope: {e}")))?;
                handler(envelope).await
            }
        }
    }
}

/// What every worker of a pool shares.
pub(crate) struct WorkerContext {
    pub handler: PoolHandler,
    pub retry: RetryPolicy,
    pub dead_letter: Option<(Arc<dyn Transport>, String)>,
    pub stats: Arc<SubscriptionStats>,
}

pub(crate) struct Pool {
    dispatch: Dispatch,
    senders: RwLock<Option<Box<[mpsc::Sender<Delivery>]>>>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
    enqueue_timeout: Duration,
}

/// FNV-1a, 32 bits: stable across runs and platforms.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

impl Pool {
    pub fn start(config: &PoolConfig, dispatch: Dispatch, context: WorkerContext) -> Pool {
        let (count, capacity) = match dispatch {
            Dispatch::Keyed => (config.keyed_workers, config.keyed_queue),
            Dispatch::RoundRobin => (config.global_workers, config.global_queue),
        };
        let context = Arc::new(context);
        let mut senders = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        for _ in 0..count {
            let (sender, receiver) = mpsc::channel(capacity);
            senders.push(sender);
            workers.push(tokio::spawn(run_worker(receiver, context.clone())));
        }
        Pool {
            dispatch,
            senders: RwLock::new(Some(senders.into_boxed_slice())),
            workers: std::sync::Mutex::new(workers),
            next: AtomicUsize::new(0),
            enqueue_timeout: config.enqueue_timeout,
        }
    }

    /// Queues a delivery for its worker, waiting up to the enqueue timeout for room.
    pub async fn dispatch(&self, delivery: Delivery) -> Result<(), BusError> {
        let (sender, delivery) = {
            let senders = self.senders.read().unwrap();
            let Some(senders) = senders.as_deref() else {
                return Err(BusError::Closed);
            };
            let index = match self.dispatch {
                Dispatch::Keyed => {
                    let key = delivery
                        .message
                        .key
                        .as_deref()
                        .or_else(|| delivery.message.header(HEADER_AGGREGATE_ID))
                        .unwrap_or("");
                    fnv1a_32(key.as_bytes()) as usize % senders.len()
                }
                Dispatch::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % senders.len(),
            };
            match senders[index].try_send(delivery) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(BusError::Closed),
                // Full: wait for room outside the lock.
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    (senders[index].clone(), delivery)
                }
            }
        };
        match sender.send_timeout(delivery, self.enqueue_timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(BusError::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(BusError::Backpressure {
                what: "the handler queue",
                waited: self.enqueue_timeout,
            }),
        }
    }

    /// Stops taking deliveries and waits, up to `timeout`, for the workers to finish what
    /// they hold. Workers still busy after that are aborted and a timeout is reported.
    pub async fn drain(&self, timeout: Duration) -> Result<(), BusError> {
        self.senders.write().unwrap().take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
        let all = futures::future::join_all(workers);
        match tokio::time::timeout(timeout, all).await {
            Ok(_) => Ok(()),
            Err(_) => {
                for abort in aborts {
                    abort.abort();
                }
                Err(BusError::Timeout {
                    operation: "draining the handler workers",
                    waited: timeout,
                })
            }
        }
    }
}

/// The environment variable of the test switch that makes every handler worker burn this many
/// nanoseconds of CPU before each delivery: a deliberately slower bus, to check that
/// regression gates catch one. Unset (the default), it costs nothing.
pub const SLOWDOWN_VARIABLE: &str = "BUSBENCH_SLOWDOWN_NS";

fn slowdown_from_env() -> Option<Duration> {
    std::env::var(SLOWDOWN_VARIABLE)
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|nanos| *nanos > 0)
        .map(Duration::from_nanos)
}

/// Keeps the CPU busy for `duration` (work, not a sleep).
fn burn(duration: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// The most deliveries a worker takes off its queue at once: one release of the queue's room
/// per batch instead of one per delivery (the queue's lock is the hot spot otherwise). They are
/// handled one after another, in order, as before.
const WORKER_BATCH: usize = 32;

async fn run_worker(mut receiver: mpsc::Receiver<Delivery>, context: Arc<WorkerContext>) {
    let slowdown = slowdown_from_env();
    let mut batch = Vec::with_capacity(WORKER_BATCH);
    while receiver.recv_many(&mut batch, WORKER_BATCH).await > 0 {
        for delivery in batch.drain(..) {
            if let Some(duration) = slowdown {
                burn(duration);
            }
            handle(delivery, &context).await;
        }
    }
}

async fn handle(delivery: Delivery, context: &WorkerContext) {
    let Delivery { mut message, acker } = delivery;
    let mut backoff = context.retry.initial_backoff;
    let mut attempt = 1;
    let last_error = loop {
        message.attempt = attempt;
        let outcome = AssertUnwindSafe(context.handler.call(&message))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandlerError::msg("the handler panicked")));
        match outcome {
            Ok(()) => {
                acker.ack().await;
                context.stats.handled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) if attempt >= context.retry.max_attempts => break error,
            Err(_) => {
                context.stats.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(context.retry.max_backoff);
                attempt += 1;
            }
        }
    };
    match &context.dead_letter {
        Some((transport, topic)) => {
            match dead_letter(transport.as_ref(), topic, &message, &last_error).await {
                Ok(()) => {
                    acker.ack().await;
                    context.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    acker.nak().await;
                    context.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None => {
            acker.ack().await;
            context.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn dead_letter(
    transport: &dyn Transport,
    topic: &str,
    message: &Message,
    error: &HandlerError,
) -> Result<(), BusError> {
    let mut headers = message.headers.extended();
    headers
        .push("X-Dead-Letter-Topic", &message.topic)
        .push_with("X-Dead-Letter-Reason", |text| {
            let _ = write!(text, "{error}");
        })
        .push_with("X-Dead-Letter-Attempts", |text| {
            let _ = write!(text, "{}", message.attempt);
        });
    let record = Record {
        key: message.key.clone(),
        headers: headers.build(),
        payload: message.payload.clone(),
    };
    transport.send(topic, record).await?.outcome().await
}

#[cfg(test)]
mod tests {
    use super::fnv1a_32;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }
}
