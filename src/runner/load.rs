//! The load loop: publishers that send on schedule and record publish latency, each with its
//! own counters and histogram, handed over when done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Envelope, EventBus, PublishReceipt, SharedStr};
use crate::chunks::ByteChunks;
use crate::metrics::latency;
use crate::metrics::recorder::{Recorder, Stamp};
use crate::metrics::timeline::SecondCounts;
use crate::runner::receipts::ReceiptWindow;
use crate::scenario::Mode;

/// How many messages a publisher sends between two looks at its stop token.
const STOP_CHECK_EVERY: u64 = 64;

/// The shape of one cell's load.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Raw messages or envelopes.
    pub mode: Mode,
    /// Topics, messages spread over them (envelopes: by aggregate).
    pub topics: Arc<[String]>,
    /// Messages in all.
    pub messages: u64,
    /// Aggregates (envelope mode).
    pub aggregates: u64,
    /// Concurrent publishers.
    pub publishers: u32,
    /// Target rate over all publishers, messages per second (0: as fast as possible).
    pub rate: u64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Receipts a publisher keeps in flight (the bus's window bounds the total).
    pub in_flight_per_publisher: usize,
}

/// What one publisher did.
#[derive(Debug)]
pub struct PublisherReport {
    /// Messages handed to the bus.
    pub sent: u64,
    /// Publishes acknowledged.
    pub acknowledged: u64,
    /// Publishes that failed: refused by the bus before sending, or whose acknowledgement
    /// failed or timed out.
    pub errors: u64,
    /// Messages sent whose acknowledgement had neither arrived nor failed when the publisher
    /// was stopped (the cell's deadline passed or the run was interrupted).
    pub unconfirmed: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Publish latency from the intended send time to the acknowledgement.
    pub latency: Histogram<u64>,
    /// Under a target rate, how far behind its intended send time each message was handed to
    /// the bus; `None` without a rate (a message is then intended when it is sent), so that a
    /// flat-out publisher allocates no histogram for it.
    pub send_lag: Option<Histogram<u64>>,
    /// When the last acknowledgement arrived, nanoseconds since the epoch.
    pub last_ack_nanos: u64,
    /// Messages per second of their intended send time (the offered load).
    pub offered: SecondCounts,
    /// Acknowledgements per second of their arrival.
    pub acknowledged_per_second: SecondCounts,
}

/// Messages of publisher `index`: an even share, the first ones taking the remainder.
pub fn share(messages: u64, publishers: u32, index: u32) -> (u64, u64) {
    let publishers = u64::from(publishers);
    let index = u64::from(index);
    let base = messages / publishers;
    let extra = messages % publishers;
    let count = base + u64::from(index < extra);
    let first = index * base + index.min(extra);
    (first, count)
}

/// Runs publisher `index` of the plan to completion, or until `stop` is cancelled: then it
/// sends nothing more, stops waiting for acknowledgements (those still out count as
/// unconfirmed) and reports what it did. `sent_counter` is shared for progress.
pub async fn publish(
    bus: Arc<EventBus>,
    plan: Arc<LoadPlan>,
    index: u32,
    recorder: Arc<Recorder>,
    sent_counter: Arc<AtomicU64>,
    stop: CancellationToken,
) -> PublisherReport {
    let (first_seq, count) = share(plan.messages, plan.publishers, index);
    // Aggregates owned by this publisher: a % publishers == index, so each aggregate has one
    // publisher and a well-defined publish order.
    let owned: Vec<u64> = (u64::from(index)..plan.aggregates.max(1))
        .step_by(plan.publishers as usize)
        .collect();
    let mut versions = vec![0u32; owned.len()];
    let mut payloads = ByteChunks::new();
    // Shared strings: each envelope takes a reference to its aggregate id, not a copy.
    let aggregate_ids: Vec<SharedStr> = match plan.mode {
        Mode::Envelope => owned
            .iter()
            .map(|a| SharedStr::from(aggregate_id(*a)))
            .collect(),
        Mode::Raw => Vec::new(),
    };
    let mut receipts = ReceiptWindow::new(plan.in_flight_per_publisher);
    let mut acks = AckTally::new();
    let origin = recorder.seconds_origin();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let per_publisher_rate = plan.rate as f64 / f64::from(plan.publishers);
    let start = recorder.now_nanos();
    let mut sent = 0;
    let mut send_errors = 0;
    let mut first_send_error = None;
    let mut offered = SecondCounts::default();
    let mut send_lag = (per_publisher_rate > 0.0).then(latency::new_histogram);
    'sending: for k in 0..count {
        // The token's check takes a lock: every 64th message is soon enough (a publish that
        // waits also watches the token).
        if k % STOP_CHECK_EVERY == 0 && stop.is_cancelled() {
            break;
        }
        // This publisher's share of the window used up: wait for the oldest answer.
        while receipts.is_full() {
            tokio::select! {
                biased;
                Some((outcome, intended, seq)) = receipts.oldest() => {
                    acks.count(outcome, intended, seq, &recorder, origin);
                }
                _ = &mut stopped => break 'sending,
            }
        }
        let seq = first_seq + k;
        let intended = if per_publisher_rate > 0.0 {
            let due = start + (k as f64 * 1e9 / per_publisher_rate) as u64;
            let mut now = recorder.now_nanos();
            if due > now {
                // Until the send time, take the answers as they arrive.
                let sleep = tokio::time::sleep(Duration::from_nanos(due - now));
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stopped => break 'sending,
                        _ = &mut sleep => break,
                        Some((outcome, intended, seq)) = receipts.oldest() => {
                            acks.count(outcome, intended, seq, &recorder, origin);
                        }
                    }
                }
                now = recorder.now_nanos();
            }
            if let Some(send_lag) = &mut send_lag {
                latency::record(send_lag, now.saturating_sub(due) / 1000);
            }
            due
        } else {
            recorder.now_nanos()
        };
        let result: Result<PublishReceipt, BusError> = match plan.mode {
            Mode::Raw => {
                let stamp = Stamp {
                    intended_nanos: intended,
                    seq,
                    aggregate: 0,
                    version: 0,
                };
                let topic = topic_of(&plan.topics, seq);
                tokio::select! {
                    biased;
                    result = bus.publish_pipelined(topic, stamp.payload_in(plan.payload_bytes, &mut payloads)) => result,
                    _ = &mut stopped => break,
                }
            }
            Mode::Envelope => {
                let slot = (k % owned.len() as u64) as usize;
                versions[slot] += 1;
                let aggregate = owned[slot];
                let stamp = Stamp {
                    intended_nanos: intended,
                    seq,
                    aggregate: aggregate as u32,
                    version: versions[slot],
                };
                let topic = topic_of(&plan.topics, aggregate);
                let envelope = Envelope::new(
                    aggregate_ids[slot].clone(),
                    SharedStr::from_static("BenchmarkEvent"),
                    i64::from(versions[slot]),
                    stamp.payload_in(plan.payload_bytes, &mut payloads),
                );
                tokio::select! {
                    biased;
                    result = bus.publish_envelope_pipelined(topic, envelope) => result,
                    _ = &mut stopped => break,
                }
            }
        };
        offered.add(origin, intended);
        match result {
            Ok(receipt) => {
                sent += 1;
                sent_counter.fetch_add(1, Ordering::Relaxed);
                match receipt.into_ready() {
                    // An answer already known (the memory backend's) is counted here.
                    Ok(outcome) => acks.count(outcome, intended, seq, &recorder, origin),
                    Err(receipt) => receipts.push(receipt, intended, seq),
                }
                while let Some((outcome, intended, seq)) = receipts.ready() {
                    acks.count(outcome, intended, seq, &recorder, origin);
                }
            }
            Err(error) => {
                send_errors += 1;
                first_send_error.get_or_insert_with(|| error.to_string());
                if matches!(error, BusError::Closed) {
                    break;
                }
            }
        }
    }
    // The answers still to come, until they are all in or the publisher is stopped; those
    // still out then are unconfirmed (any that had arrived are counted first).
    while !receipts.is_empty() {
        tokio::select! {
            biased;
            Some((outcome, intended, seq)) = receipts.oldest() => {
                acks.count(outcome, intended, seq, &recorder, origin);
            }
            _ = &mut stopped => {
                while let Some((outcome, intended, seq)) = receipts.ready() {
                    acks.count(outcome, intended, seq, &recorder, origin);
                }
                acks.unconfirmed += receipts.len() as u64;
                break;
            }
        }
    }
    PublisherReport {
        sent,
        acknowledged: acks.acknowledged,
        errors: send_errors + acks.errors,
        unconfirmed: acks.unconfirmed,
        first_error: first_send_error.or(acks.first_error),
        latency: acks.histogram,
        send_lag,
        last_ack_nanos: acks.last_ack,
        offered,
        acknowledged_per_second: acks.per_second,
    }
}

impl AckTally {
    pub(crate) fn new() -> Self {
        AckTally {
            histogram: latency::new_histogram(),
            acknowledged: 0,
            errors: 0,
            unconfirmed: 0,
            first_error: None,
            last_ack: 0,
            per_second: SecondCounts::default(),
        }
    }

    /// Counts the outcome of the publish of message `seq`, intended at `intended`.
    pub(crate) fn count(
        &mut self,
        outcome: Result<(), BusError>,
        intended: u64,
        seq: u64,
        recorder: &Recorder,
        origin: u64,
    ) {
        match outcome {
            Ok(()) => {
                let now = recorder.now_nanos();
                latency::record(&mut self.histogram, now.saturating_sub(intended) / 1000);
                recorder.on_acknowledged(seq);
                self.acknowledged += 1;
                self.last_ack = self.last_ack.max(now);
                self.per_second.add(origin, now);
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// The topic of a message among the load's `topics`: a raw message's by its sequence number,
/// an envelope's by its aggregate (so that one aggregate's events share a topic and stay in
/// order). The warm-up and the ceilings place their messages the same way.
pub(crate) fn topic_of<Topic>(topics: &[Topic], seq_or_aggregate: u64) -> &Topic {
    &topics[(seq_or_aggregate % topics.len() as u64) as usize]
}

/// The id of aggregate number `aggregate` in the load (the warm-up and the ceilings use the
/// same ids, so that they reach the same partitions, streams and workers).
pub(crate) fn aggregate_id(aggregate: u64) -> String {
    format!("aggregate-{aggregate}")
}

/// What a publisher counted of its acknowledgements. The client ceilings' publishers keep
/// one too, so that they pay for the same accounting per message as a cell's.
pub(crate) struct AckTally {
    histogram: Histogram<u64>,
    acknowledged: u64,
    errors: u64,
    unconfirmed: u64,
    first_error: Option<String>,
    last_ack: u64,
    per_second: SecondCounts,
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_message_once() {
        for (messages, publishers) in [(10, 3), (9, 3), (1, 1), (1000, 7)] {
            let mut next = 0;
            for index in 0..publishers {
                let (first, count) = share(messages, publishers, index);
                assert_eq!(first, next);
                next += count;
            }
            assert_eq!(next, messages);
        }
    }
}
