//! Counts what the handlers receive: distinct messages, duplicates, per-aggregate order, and
//! end-to-end latency. Shared by all handler workers: the latency histogram and the counters
//! every message moves are kept per thread (each on its own cache lines), merged or added up
//! when read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

use super::latency;
use super::timeline::{HandledSecond, SecondLatencies};
use crate::scenario::HARNESS_HEADER_BYTES;

/// How many copies of the per-message counters and of the latency histogram there are: each
/// thread that handles messages counts in one of its own (shared only past this many
/// threads), so that handlers on different cores do not take turns at the same cache lines
/// for every message.
const STRIPES: usize = 8;
/// Set in the sequence number of warm-up messages.
const WARMUP_FLAG: u64 = 1 << 63;

/// What the harness writes at the start of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Intended send time, nanoseconds since the run's epoch.
    pub intended_nanos: u64,
    /// Sequence number of the message in its cell (0-based), or a warm-up message.
    pub seq: u64,
    /// Index of the message's aggregate.
    pub aggregate: u32,
    /// The aggregate's version carried by this message (1-based).
    pub version: u32,
}

impl Stamp {
    /// A warm-up message's stamp.
    pub fn warmup(seq: u64) -> Self {
        Stamp {
            intended_nanos: 0,
            seq: seq | WARMUP_FLAG,
            aggregate: 0,
            version: 0,
        }
    }

    /// A payload of `size` bytes starting with this stamp, zero-padded.
    pub fn payload(&self, size: usize) -> Bytes {
        let mut buffer = BytesMut::with_capacity(size.max(HARNESS_HEADER_BYTES));
        self.write(size, &mut buffer);
        buffer.freeze()
    }

    /// [`Stamp::payload`], cut from `chunks`: a publisher's payloads without one allocation
    /// each.
    pub fn payload_in(&self, size: usize, chunks: &mut crate::chunks::ByteChunks) -> Bytes {
        chunks.write(size.max(HARNESS_HEADER_BYTES), |buffer| {
            self.write(size, buffer)
        })
    }

    /// Appends the payload of `size` bytes to `buffer`.
    fn write(&self, size: usize, buffer: &mut BytesMut) {
        buffer.put_u64(self.intended_nanos);
        buffer.put_u64(self.seq);
        buffer.put_u32(self.aggregate);
        buffer.put_u32(self.version);
        buffer.put_bytes(0, size.max(HARNESS_HEADER_BYTES) - HARNESS_HEADER_BYTES);
    }

    /// Reads the stamp at the start of a payload.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let header = payload.get(..HARNESS_HEADER_BYTES)?;
        let u64_at = |i: usize| u64::from_be_bytes(header[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().unwrap());
        Some(Stamp {
            intended_nanos: u64_at(0),
            seq: u64_at(8),
            aggregate: u32_at(16),
            version: u32_at(20),
        })
    }
}

/// The counters every handled message moves, one copy per [`STRIPES`], each on a cache line
/// of its own; read by adding them up.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    distinct: AtomicU64,
    deliveries: AtomicU64,
    last_handled_nanos: AtomicU64,
}

/// One stripe's latency histogram, on cache lines of its own (recording writes its totals).
#[repr(align(128))]
struct StripeHistogram(Mutex<Histogram<u64>>);

/// The calling thread's stripe: threads take the stripes in turn as they first count.
fn own_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|index| *index)
}

/// Receive-side accounting of one cell.
pub struct Recorder {
    epoch: Instant,
    expected: u64,
    seen: Vec<AtomicU64>,
    acknowledged: Vec<AtomicU64>,
    last_version: Vec<AtomicU32>,
    check_order: bool,
    /// Distinct and all deliveries, and the last one's time, counted per thread.
    stripes: Box<[Stripe; STRIPES]>,
    duplicates: AtomicU64,
    order_violations: AtomicU64,
    malformed: AtomicU64,
    warmup_received: AtomicU64,
    /// End-to-end latency, one histogram per stripe.
    e2e: Vec<StripeHistogram>,
    /// Measured messages handled in each [`TIMELINE_STEP`] since the epoch (empty unless
    /// asked for with [`Recorder::with_timeline`]).
    timeline: Vec<AtomicU32>,
    /// Handled messages and their latency per second of the measured phase (absent unless
    /// asked for with [`Recorder::with_seconds`]).
    seconds: Option<SecondLatencies>,
}

/// The width of one timeline bucket.
pub const TIMELINE_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// A copy of a recorder's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Distinct messages handled.
    pub distinct: u64,
    /// Every handler call for a measured message.
    pub deliveries: u64,
    /// Handler calls for a message already handled.
    pub duplicates: u64,
    /// Messages handled out of their aggregate's order.
    pub order_violations: u64,
    /// Payloads without a readable stamp or with an out-of-range sequence number.
    pub malformed: u64,
    /// Warm-up messages handled.
    pub warmup: u64,
    /// When the last message was handled, nanoseconds since the epoch.
    pub last_handled_nanos: u64,
}

impl Recorder {
    /// A recorder for `expected` messages over `aggregates` aggregates; order is checked when
    /// `check_order` is set.
    pub fn new(epoch: Instant, expected: u64, aggregates: u64, check_order: bool) -> Self {
        Recorder {
            epoch,
            expected,
            seen: (0..expected.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            acknowledged: (0..expected.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            last_version: (0..aggregates).map(|_| AtomicU32::new(0)).collect(),
            check_order,
            stripes: Box::default(),
            duplicates: AtomicU64::new(0),
            order_violations: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            warmup_received: AtomicU64::new(0),
            e2e: (0..STRIPES)
                .map(|_| StripeHistogram(Mutex::new(latency::new_histogram())))
                .collect(),
            timeline: Vec::new(),
            seconds: None,
        }
    }

    /// Also counts handled messages and their latency per second of the measured phase, for
    /// `span` (later messages count in the last second); second 0 starts at
    /// [`Recorder::start_seconds`].
    pub fn with_seconds(mut self, span: std::time::Duration) -> Self {
        self.seconds = Some(SecondLatencies::new(span.as_secs() as usize + 1));
        self
    }

    /// Starts second 0 of the per-second counts at `origin` nanoseconds.
    pub fn start_seconds(&self, origin: u64) {
        if let Some(seconds) = &self.seconds {
            seconds.start_at(origin);
        }
    }

    /// The start of second 0 of the per-second counts, nanoseconds (0 unless started).
    pub fn seconds_origin(&self) -> u64 {
        self.seconds.as_ref().map_or(0, SecondLatencies::origin)
    }

    /// What was handled in each second of the measured phase (empty unless asked for).
    pub fn handled_seconds(&self) -> Vec<HandledSecond> {
        self.seconds
            .as_ref()
            .map(SecondLatencies::seconds)
            .unwrap_or_default()
    }

    /// Also counts handled messages per [`TIMELINE_STEP`] for `span` after the epoch (later
    /// messages count in the last bucket).
    pub fn with_timeline(mut self, span: std::time::Duration) -> Self {
        let buckets = (span.as_millis() / TIMELINE_STEP.as_millis()) as usize + 1;
        self.timeline = (0..buckets).map(|_| AtomicU32::new(0)).collect();
        self
    }

    /// Messages handled per [`TIMELINE_STEP`] since the epoch.
    pub fn timeline(&self) -> Vec<u32> {
        self.timeline
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect()
    }

    /// Nanoseconds since the run's epoch, on the monotonic clock.
    pub fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Accounts for one handled payload.
    pub fn on_message(&self, payload: &[u8]) {
        let now = self.now_nanos();
        let Some(stamp) = Stamp::read(payload) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if stamp.seq & WARMUP_FLAG != 0 {
            self.warmup_received.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if stamp.seq >= self.expected {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let own = own_stripe();
        let stripe = &self.stripes[own];
        stripe.deliveries.fetch_add(1, Ordering::Relaxed);
        let bit = 1u64 << (stamp.seq % 64);
        let before = self.seen[(stamp.seq / 64) as usize].fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.check_order
            && let Some(last) = self.last_version.get(stamp.aggregate as usize)
        {
            // Out of order: handled after a later event of its aggregate. A gap (a version
            // never stored because its publish failed) is not a reordering; a missing
            // acknowledged message is counted as lost instead.
            let previous = last.fetch_max(stamp.version, Ordering::AcqRel);
            if stamp.version < previous {
                self.order_violations.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = now.saturating_sub(stamp.intended_nanos) / 1000;
        latency::record(&mut self.e2e[own].0.lock().unwrap(), micros);
        stripe.last_handled_nanos.fetch_max(now, Ordering::Relaxed);
        if let Some(seconds) = &self.seconds {
            seconds.record(now, micros);
        }
        if !self.timeline.is_empty() {
            let bucket =
                ((now / TIMELINE_STEP.as_nanos() as u64) as usize).min(self.timeline.len() - 1);
            self.timeline[bucket].fetch_add(1, Ordering::Relaxed);
        }
        stripe.distinct.fetch_add(1, Ordering::Release);
    }

    /// Marks message `seq` as acknowledged by the broker (a publisher's receipt resolved).
    pub fn on_acknowledged(&self, seq: u64) {
        let Some(word) = self.acknowledged.get((seq / 64) as usize) else {
            return;
        };
        word.fetch_or(1u64 << (seq % 64), Ordering::AcqRel);
    }

    /// Distinct messages acknowledged by the broker so far (counted from the marks: for
    /// reports and checks, not for the hot path).
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
            .iter()
            .map(|word| word.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }

    /// Messages the broker acknowledged that no handler has handled (yet): at the end of a
    /// cell, the acknowledged messages the bus lost.
    pub fn acknowledged_not_handled(&self) -> u64 {
        self.acknowledged
            .iter()
            .zip(&self.seen)
            .map(|(acked, seen)| {
                (acked.load(Ordering::Acquire) & !seen.load(Ordering::Acquire)).count_ones() as u64
            })
            .sum()
    }

    /// Whether every acknowledged message was handled, given how many were acknowledged
    /// (the publishers' own count); cheap while fewer than that were handled.
    pub fn all_acknowledged_handled(&self, acknowledged: u64) -> bool {
        self.distinct() >= acknowledged && self.acknowledged_not_handled() == 0
    }

    /// Distinct measured messages handled so far.
    pub fn distinct(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.distinct.load(Ordering::Acquire))
            .sum()
    }

    /// Warm-up messages handled so far.
    pub fn warmup_received(&self) -> u64 {
        self.warmup_received.load(Ordering::Acquire)
    }

    /// The counters now.
    pub fn snapshot(&self) -> Received {
        Received {
            distinct: self.distinct(),
            deliveries: self
                .stripes
                .iter()
                .map(|stripe| stripe.deliveries.load(Ordering::Relaxed))
                .sum(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            order_violations: self.order_violations.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            warmup: self.warmup_received(),
            last_handled_nanos: self
                .stripes
                .iter()
                .map(|stripe| stripe.last_handled_nanos.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        }
    }

    /// The end-to-end histogram, shards merged.
    pub fn e2e_histogram(&self) -> Histogram<u64> {
        let mut merged = latency::new_histogram();
        for shard in &self.e2e {
            merged.add(&*shard.0.lock().unwrap()).expect("same bounds");
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64, aggregate: u32, version: u32) -> Bytes {
        Stamp {
            intended_nanos: 0,
            seq,
            aggregate,
            version,
        }
        .payload(32)
    }

    #[test]
    fn stamps_round_trip() {
        let s = Stamp {
            intended_nanos: 123_456_789,
            seq: 42,
            aggregate: 7,
            version: 3,
        };
        let payload = s.payload(100);
        assert_eq!(payload.len(), 100);
        assert_eq!(Stamp::read(&payload), Some(s));
        assert_eq!(Stamp::read(&payload[..10]), None);
    }

    #[test]
    fn counts_distinct_duplicates_and_order() {
        let recorder = Recorder::new(Instant::now(), 6, 2, true);
        // Aggregate 0: versions 1, 2, 3 in order. Aggregate 1: 1, then 3 before 2.
        for payload in [
            stamp(0, 0, 1),
            stamp(1, 1, 1),
            stamp(2, 0, 2),
            stamp(4, 1, 3),
            stamp(3, 1, 2),
            stamp(2, 0, 2), // duplicate delivery
            stamp(5, 0, 3),
        ] {
            recorder.on_message(&payload);
        }
        recorder.on_message(&Stamp::warmup(9).payload(32));
        recorder.on_message(b"short");
        recorder.on_message(&stamp(99, 0, 1)); // out of range
        let r = recorder.snapshot();
        assert_eq!(r.distinct, 6);
        assert_eq!(r.deliveries, 7);
        assert_eq!(r.duplicates, 1);
        assert_eq!(
            r.order_violations, 1,
            "2 after 3; the gap from 1 to 3 is not one"
        );
        assert_eq!(r.warmup, 1);
        assert_eq!(r.malformed, 2);
        assert_eq!(recorder.e2e_histogram().len(), 6);
    }

    #[test]
    fn acknowledged_but_unhandled_messages_are_counted_exactly() {
        let recorder = Recorder::new(Instant::now(), 130, 1, false);
        for seq in [0, 5, 64, 129] {
            recorder.on_acknowledged(seq);
        }
        recorder.on_acknowledged(5); // a second receipt for one message counts once
        recorder.on_message(&stamp(5, 0, 1));
        recorder.on_message(&stamp(7, 0, 1)); // handled without an acknowledgement
        assert_eq!(recorder.acknowledged(), 4);
        assert_eq!(recorder.acknowledged_not_handled(), 3);
        assert!(!recorder.all_acknowledged_handled(4));
        for seq in [0, 64, 129] {
            recorder.on_message(&stamp(seq, 0, 1));
        }
        assert_eq!(recorder.acknowledged_not_handled(), 0);
        assert!(recorder.all_acknowledged_handled(4));
    }

    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        // More threads than stripes: some share one.
        let threads = STRIPES as u64 + 4;
        let per_thread = 1000;
        let recorder = Recorder::new(Instant::now(), threads * per_thread, 1, false);
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let recorder = &recorder;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        recorder.on_message(&stamp(thread * per_thread + i, 0, 1));
                    }
                    // One duplicate per thread.
                    recorder.on_message(&stamp(thread * per_thread, 0, 1));
                });
            }
        });
        let before = recorder.now_nanos();
        let r = recorder.snapshot();
        assert_eq!(r.distinct, threads * per_thread);
        assert_eq!(recorder.distinct(), threads * per_thread);
        assert_eq!(r.deliveries, threads * (per_thread + 1));
        assert_eq!(r.duplicates, threads);
        assert!(r.last_handled_nanos > 0 && r.last_handled_nanos <= before);
        assert_eq!(recorder.e2e_histogram().len(), threads * per_thread);
    }

    #[test]
    fn raw_mode_does_not_check_order() {
        let recorder = Recorder::new(Instant::now(), 2, 1, false);
        recorder.on_message(&stamp(1, 0, 2));
        recorder.on_message(&stamp(0, 0, 1));
        assert_eq!(recorder.snapshot().order_violations, 0);
        assert_eq!(recorder.snapshot().distinct, 2);
    }
}
