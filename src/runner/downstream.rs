//! A simulated downstream for the benchmark's handler: a service that takes a fixed time per
//! message and serves one message at a time, standing for the database or service a real
//! handler calls. Its schedule is kept on the monotonic clock: each message reserves the next
//! free slot (`max(now, end of the previous slot) + service time`) and waits for the slot's
//! end, so the timer's granularity delays single messages but never adds up: the downstream
//! serves exactly 1 / service_time messages per second while it has work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One downstream shared by every handler of a cell.
#[derive(Debug)]
pub struct Downstream {
    epoch: Instant,
    service_nanos: u64,
    /// When the last reserved slot ends, nanoseconds since `epoch`.
    free_at: AtomicU64,
}

impl Downstream {
    /// A downstream taking `service_time` per message, its clock counted from `epoch`.
    pub fn new(epoch: Instant, service_time: Duration) -> Self {
        Downstream {
            epoch,
            service_nanos: service_time.as_nanos() as u64,
            free_at: AtomicU64::new(0),
        }
    }

    /// Reserves the next slot for a message arriving at `now` (nanoseconds since the epoch);
    /// returns when the slot ends.
    pub fn reserve(&self, now: u64) -> u64 {
        let mut end = 0;
        let _ = self
            .free_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free_at| {
                end = free_at.max(now) + self.service_nanos;
                Some(end)
            });
        end
    }

    /// Serves one message: waits until its slot has ended.
    pub async fn serve(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let end = self.reserve(now);
        tokio::time::sleep_until((self.epoch + Duration::from_nanos(end)).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_and_idle_time_is_not_banked() {
        let downstream = Downstream::new(Instant::now(), Duration::from_micros(100));
        assert_eq!(downstream.reserve(1_000), 101_000);
        assert_eq!(
            downstream.reserve(1_000),
            201_000,
            "queued behind the first"
        );
        assert_eq!(
            downstream.reserve(5_000_000),
            5_100_000,
            "idle time is not saved up"
        );
    }
}
