//! Per-second figures of a cell's measured phase: what was offered, acknowledged and handled
//! in each second, the backlog at its end, and the end-to-end latency of the messages handled
//! in it.
//!
//! Publishers count what they offered and what was acknowledged into their own
//! [`SecondCounts`], merged when they finish; handlers count into a [`SecondLatencies`] of
//! atomic counters shared by all workers, with a small log-linear histogram per second
//! (allocated on the second's first message) so that the per-second percentiles cost one
//! atomic increment per message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::latency::MAX_LATENCY_US;
use super::model::{TimelineSecond, TimelineSummary};

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Seconds a timeline covers at most (a day); later events count in the last second.
const MAX_SECONDS: usize = 86_400;
/// Sub-buckets per power of two: a bucket spans at most 1/32 of its values (about 3%).
const SUB_BITS: u32 = 5;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Buckets covering 0 ..= [`MAX_LATENCY_US`] (below 2^32).
const BUCKETS: usize = SUB_BUCKETS * (32 - SUB_BITS as usize + 1);

/// Events of one task counted per second since an origin (a publisher's intended send times,
/// its acknowledgements). Kept by the task itself and merged at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecondCounts {
    counts: Vec<u64>,
}

impl SecondCounts {
    /// Counts one event at `at` nanoseconds, `origin` being the start of second 0 (events
    /// before the origin count in second 0).
    pub fn add(&mut self, origin: u64, at: u64) {
        let second = ((at.saturating_sub(origin) / NANOS_PER_SECOND) as usize).min(MAX_SECONDS);
        if second >= self.counts.len() {
            self.counts.resize(second + 1, 0);
        }
        self.counts[second] += 1;
    }

    /// Adds another task's counts to these.
    pub fn merge(&mut self, other: &SecondCounts) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// The count of each second, from second 0 to the last one with an event.
    pub fn as_slice(&self) -> &[u64] {
        &self.counts
    }

    /// The total over every second.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Handled messages and their end-to-end latency per second, shared by every handler worker.
pub struct SecondLatencies {
    origin: AtomicU64,
    /// Per second, the latency bucket counts (their sum is the messages handled), allocated on
    /// the second's first message.
    histograms: Vec<OnceLock<Box<[AtomicU32]>>>,
}

/// What was handled in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandledSecond {
    /// Messages handled.
    pub handled: u64,
    /// Median end-to-end latency, µs (upper edge of its bucket; `None` when nothing was
    /// handled).
    pub p50_us: Option<u64>,
    /// 99th percentile, µs (as `p50_us`).
    pub p99_us: Option<u64>,
}

impl SecondLatencies {
    /// Per-second counters for `seconds` seconds (later messages count in the last one).
    pub fn new(seconds: usize) -> Self {
        let seconds = seconds.clamp(1, MAX_SECONDS);
        SecondLatencies {
            origin: AtomicU64::new(0),
            histograms: (0..seconds).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Sets the start of second 0, nanoseconds on the recorder's clock.
    pub fn start_at(&self, origin: u64) {
        self.origin.store(origin, Ordering::Release);
    }

    /// The start of second 0.
    pub fn origin(&self) -> u64 {
        self.origin.load(Ordering::Acquire)
    }

    /// Counts one message handled at `now` nanoseconds with an end-to-end latency of `micros`.
    pub fn record(&self, now: u64, micros: u64) {
        let second = ((now.saturating_sub(self.origin()) / NANOS_PER_SECOND) as usize)
            .min(self.histograms.len() - 1);
        let buckets = self.histograms[second]
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU32::new(0)).collect());
        buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every second from 0 to the last one in which a message was handled.
    pub fn seconds(&self) -> Vec<HandledSecond> {
        let mut seconds: Vec<HandledSecond> = self
            .histograms
            .iter()
            .map(|histogram| {
                let counts: Vec<u32> = histogram
                    .get()
                    .map(|b| b.iter().map(|c| c.load(Ordering::Acquire)).collect())
                    .unwrap_or_default();
                HandledSecond {
                    handled: counts.iter().map(|&c| u64::from(c)).sum(),
                    p50_us: quantile(&counts, 0.50),
                    p99_us: quantile(&counts, 0.99),
                }
            })
            .collect();
        let last = seconds.iter().rposition(|s| s.handled > 0);
        seconds.truncate(last.map_or(0, |last| last + 1));
        seconds
    }
}

/// The bucket of a latency: exact below 32 µs, then 32 buckets per power of two.
fn bucket_of(micros: u64) -> usize {
    let value = micros.min(MAX_LATENCY_US);
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let power = 63 - value.leading_zeros();
    let sub = ((value >> (power - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    SUB_BUCKETS * (power - SUB_BITS + 1) as usize + sub
}

/// The highest latency a bucket holds.
fn bucket_upper(bucket: usize) -> u64 {
    if bucket < SUB_BUCKETS {
        return bucket as u64;
    }
    let power = (bucket / SUB_BUCKETS) as u32 + SUB_BITS - 1;
    let sub = (bucket % SUB_BUCKETS) as u64;
    let width = 1u64 << (power - SUB_BITS);
    ((SUB_BUCKETS as u64 + sub) << (power - SUB_BITS)) + width - 1
}

/// The value at quantile `q` of bucket counts: the upper edge of the bucket holding the
/// sample of rank ceil(q × total).
fn quantile(counts: &[u32], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (bucket, &count) in counts.iter().enumerate() {
        seen += u64::from(count);
        if seen >= rank {
            return Some(bucket_upper(bucket));
        }
    }
    None
}

/// The timeline of a cell from its parts: offered and acknowledged counts (merged from the
/// publishers) and what the handlers saw. The backlog at the end of a second is what was
/// acknowledged so far minus what was handled so far (0 when handling ran ahead of the
/// acknowledgements, as it may: a subscriber can see a message before its publisher sees the
/// broker's acknowledgement).
pub fn build(
    offered: &SecondCounts,
    acknowledged: &SecondCounts,
    handled: &[HandledSecond],
) -> Vec<TimelineSecond> {
    let length = offered
        .as_slice()
        .len()
        .max(acknowledged.as_slice().len())
        .max(handled.len());
    let (mut acknowledged_so_far, mut handled_so_far) = (0u64, 0u64);
    (0..length)
        .map(|second| {
            let offered = offered.as_slice().get(second).copied().unwrap_or(0);
            let acked = acknowledged.as_slice().get(second).copied().unwrap_or(0);
            let seen = handled.get(second).copied().unwrap_or_default();
            acknowledged_so_far += acked;
            handled_so_far += seen.handled;
            TimelineSecond {
                second: second as u32,
                offered,
                acknowledged: acked,
                handled: seen.handled,
                backlog: acknowledged_so_far.saturating_sub(handled_so_far),
                e2e_p50_us: seen.p50_us,
                e2e_p99_us: seen.p99_us,
            }
        })
        .collect()
}

/// The backlog grows when its least-squares trend over the seconds in which messages were
/// offered rises, over those seconds, by more than this share of one second's offered load.
pub const BACKLOG_GROWTH_SHARE: f64 = 0.1;

/// What a reader wants first from a timeline: the steady handled rate, the peak backlog and
/// whether the backlog kept growing while messages were offered.
pub fn summarise(timeline: &[TimelineSecond]) -> Option<TimelineSummary> {
    let offered: Vec<&TimelineSecond> = timeline.iter().filter(|s| s.offered > 0).collect();
    if offered.is_empty() {
        return None;
    }
    // The first and the last offered seconds are partial; leave them out when there is more.
    let steady: Vec<&TimelineSecond> = if offered.len() > 2 {
        offered[1..offered.len() - 1].to_vec()
    } else {
        offered.clone()
    };
    let mut handled: Vec<f64> = steady.iter().map(|s| s.handled as f64).collect();
    handled.sort_by(f64::total_cmp);
    let steady_handled_per_sec = handled[handled.len() / 2];
    let mean_offered = steady.iter().map(|s| s.offered as f64).sum::<f64>() / steady.len() as f64;
    // The trend runs over the seconds of load. A last second that carried less than half a
    // second's load is mostly drain (sending stopped early in it, handling went on), and its
    // falling backlog would tilt the trend of a run that fell behind every second before it.
    let trend: &[&TimelineSecond] = match offered.split_last() {
        Some((last, before)) if before.len() >= 2 && (last.offered as f64) < mean_offered / 2.0 => {
            before
        }
        _ => &offered,
    };
    let slope = slope(trend);
    let backlog_growing =
        trend.len() >= 2 && slope * (trend.len() - 1) as f64 > BACKLOG_GROWTH_SHARE * mean_offered;
    Some(TimelineSummary {
        steady_handled_per_sec,
        steady_offered_per_sec: mean_offered,
        peak_backlog: timeline.iter().map(|s| s.backlog).max().unwrap_or(0),
        backlog_slope_per_sec: slope,
        backlog_growing,
    })
}

/// Least-squares slope of the backlog against the second.
fn slope(seconds: &[&TimelineSecond]) -> f64 {
    let n = seconds.len() as f64;
    if seconds.len() < 2 {
        return 0.0;
    }
    let mean_x = seconds.iter().map(|s| f64::from(s.second)).sum::<f64>() / n;
    let mean_y = seconds.iter().map(|s| s.backlog as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for s in seconds {
        let dx = f64::from(s.second) - mean_x;
        covariance += dx * (s.backlog as f64 - mean_y);
        variance += dx * dx;
    }
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut previous = 0;
        for value in (0..5000u64).chain([65_535, 1 << 20, MAX_LATENCY_US]) {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS, "{value}");
            assert!(bucket >= previous || value >= 5000, "{value}");
            previous = bucket;
            let upper = bucket_upper(bucket);
            assert!(upper >= value, "{value} above its bucket's edge {upper}");
            assert!(
                (upper - value) as f64 <= value as f64 / 32.0 + 0.5,
                "{value} in a bucket up to {upper}"
            );
        }
    }

    #[test]
    fn per_second_quantiles_come_from_the_samples_of_that_second() {
        let seconds = SecondLatencies::new(10);
        seconds.start_at(5 * NANOS_PER_SECOND);
        for micros in 1..=100u64 {
            seconds.record(5 * NANOS_PER_SECOND + 10, micros * 100);
        }
        seconds.record(7 * NANOS_PER_SECOND + 1, 42);
        let all = seconds.seconds();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].handled, 100);
        let p50 = all[0].p50_us.unwrap();
        let p99 = all[0].p99_us.unwrap();
        assert!((5000..=5000 + 5000 / 32).contains(&p50), "{p50}");
        assert!((9900..=9900 + 9900 / 32).contains(&p99), "{p99}");
        assert_eq!(all[1].handled, 0);
        assert_eq!(all[1].p99_us, None);
        assert_eq!(all[2].p50_us, Some(42));
    }

    #[test]
    fn a_backlog_that_keeps_rising_is_growing_and_a_steady_one_is_not() {
        let mut offered = SecondCounts::default();
        let mut acknowledged = SecondCounts::default();
        for second in 0..6u64 {
            for _ in 0..1000 {
                offered.add(0, second * NANOS_PER_SECOND);
                acknowledged.add(0, second * NANOS_PER_SECOND + 1);
            }
        }
        let keeping_up: Vec<HandledSecond> = (0..6)
            .map(|_| HandledSecond {
                handled: 1000,
                ..Default::default()
            })
            .collect();
        let steady = summarise(&build(&offered, &acknowledged, &keeping_up)).unwrap();
        assert!(!steady.backlog_growing);
        assert_eq!(steady.peak_backlog, 0);
        assert_eq!(steady.steady_handled_per_sec, 1000.0);
        let falling_behind: Vec<HandledSecond> = (0..6)
            .map(|_| HandledSecond {
                handled: 700,
                ..Default::default()
            })
            .collect();
        let timeline = build(&offered, &acknowledged, &falling_behind);
        assert_eq!(timeline[5].backlog, 1800);
        let behind = summarise(&timeline).unwrap();
        assert!(behind.backlog_growing);
        assert_eq!(behind.peak_backlog, 1800);
        assert!((behind.backlog_slope_per_sec - 300.0).abs() < 1e-9);
    }

    #[test]
    fn a_last_second_of_drain_does_not_hide_a_backlog_that_grew() {
        // Two full seconds at 1,600 msg/s handled at 1,000, then the schedule's last two
        // messages a moment into a third second, in which the handlers drained the backlog.
        let timeline: Vec<TimelineSecond> = [(1598, 604), (1600, 1204), (2, 207), (0, 0)]
            .iter()
            .enumerate()
            .map(|(second, &(offered, backlog))| TimelineSecond {
                second: second as u32,
                offered,
                acknowledged: offered,
                handled: 1000,
                backlog,
                e2e_p50_us: Some(1000),
                e2e_p99_us: Some(2000),
            })
            .collect();
        let summary = summarise(&timeline).unwrap();
        assert!(summary.backlog_growing, "{summary:?}");
        assert!((summary.backlog_slope_per_sec - 600.0).abs() < 1e-9);
        // A last second with most of a second's load stays in the trend.
        let mut held = timeline.clone();
        held[2].offered = 1000;
        let summary = summarise(&held).unwrap();
        assert!((summary.backlog_slope_per_sec - (207.0 - 604.0) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn merged_counts_add_up() {
        let mut a = SecondCounts::default();
        let mut b = SecondCounts::default();
        a.add(0, 10);
        b.add(0, 3 * NANOS_PER_SECOND);
        b.add(0, 0);
        a.merge(&b);
        assert_eq!(a.as_slice(), &[2, 0, 0, 1]);
        assert_eq!(a.total(), 3);
    }
}
