//! Process resources: resident memory, OS threads, CPU time, and tokio's live tasks.

use std::time::Duration;

/// Reads one `Key:  value kB` line of `/proc/self/status`.
fn proc_status_field(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The process's OS threads, the main thread included (exact, from `/proc/self/status`).
pub fn thread_count() -> u64 {
    proc_status_field("Threads").unwrap_or(0)
}

/// The process's resident set size, in bytes.
pub fn rss_bytes() -> u64 {
    proc_status_field("VmRSS").unwrap_or(0) * 1024
}

/// The process's peak resident set size so far (`VmHWM`), in bytes.
pub fn rss_peak_bytes() -> u64 {
    proc_status_field("VmHWM").unwrap_or(0) * 1024
}

/// CPU time (user + system) the process used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer is always defined.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Context switches (voluntary and involuntary) of every thread of the process so far.
pub fn context_switches() -> u64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer is always defined.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    (usage.ru_nvcsw + usage.ru_nivcsw) as u64
}

/// Counters of work that does not depend on the CPU's speed, read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkCounters {
    /// Heap allocations so far (none without the counting allocator).
    pub allocations: Option<crate::metrics::alloc::AllocationCounts>,
    /// Context switches so far.
    pub context_switches: u64,
}

impl WorkCounters {
    /// The counters now.
    pub fn read() -> Self {
        WorkCounters {
            allocations: crate::metrics::alloc::AllocationCounts::read(),
            context_switches: context_switches(),
        }
    }

    /// The work between `earlier` and `self`, per message over `messages` (zeros for none).
    pub fn per_message_since(
        &self,
        earlier: &WorkCounters,
        messages: u64,
    ) -> crate::metrics::model::WorkPerMessage {
        let per = |count: u64| {
            if messages == 0 {
                0.0
            } else {
                count as f64 / messages as f64
            }
        };
        let allocations = match (self.allocations, earlier.allocations) {
            (Some(now), Some(then)) => Some(now.since(then)),
            _ => None,
        };
        crate::metrics::model::WorkPerMessage {
            allocations: allocations.map(|a| per(a.allocations)),
            allocated_bytes: allocations.map(|a| per(a.bytes)),
            context_switches: per(self
                .context_switches
                .saturating_sub(earlier.context_switches)),
        }
    }
}

/// Tasks alive in the given tokio runtime.
pub fn alive_tasks(handle: &tokio::runtime::Handle) -> u64 {
    handle.metrics().num_alive_tasks() as u64
}

/// Polls `read` until it is at most `target` or `timeout` passes (counts of tasks and threads
/// settle asynchronously after a close); returns the last value read.
pub fn settle(target: u64, timeout: Duration, read: impl Fn() -> u64) -> u64 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let value = read();
        if value <= target || std::time::Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(thread_count() >= 1);
        assert!(rss_bytes() > 0);
        assert!(rss_peak_bytes() >= rss_bytes() / 2);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        assert!(cpu_time() > Duration::ZERO);
    }

    #[test]
    fn settle_returns_early_when_the_target_is_met() {
        assert_eq!(settle(3, Duration::from_secs(5), || 2), 2);
        assert_eq!(settle(0, Duration::from_millis(50), || 7), 7);
    }
}
