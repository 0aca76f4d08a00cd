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

/// Busy and total CPU time of the whole machine so far, in clock ticks (`/proc/stat`'s first
/// line: busy is everything but idle and I/O wait); `None` where it cannot be read.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// What the machine was doing when a measured phase began (see [`quiet_start`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuietStart {
    /// How long the flush and the wait took, ms.
    pub waited_ms: f64,
    /// The machine's busy share of all its CPUs over the last sample before the measured
    /// phase, 0 to 1 (`None` where `/proc/stat` cannot be read).
    pub busy_share: Option<f64>,
}

/// The busy share of all CPUs under which the machine counts as quiet.
pub const QUIET_BUSY_SHARE: f64 = 0.15;
/// One sample of the machine's CPU while waiting for quiet.
const QUIET_SAMPLE: Duration = Duration::from_millis(200);

/// Before a measured phase: writes the file system's dirty pages out (`sync`), so the page
/// cache a previous cell filled (a broker's log) is not written back during this one, then
/// waits until the machine's CPUs are at most [`QUIET_BUSY_SHARE`] busy over one sample (a
/// broker still deleting the previous cell's topics, collecting garbage), for at most
/// `max_wait`. Only the flush and the sampling run; on a machine that never quiets down it
/// returns after `max_wait` with the busy share it saw.
pub async fn quiet_start(max_wait: Duration) -> QuietStart {
    let began = std::time::Instant::now();
    // SAFETY: sync takes no arguments and only asks the kernel to write dirty pages out.
    let flush = tokio::task::spawn_blocking(|| unsafe { libc::sync() });
    let _ = tokio::time::timeout(max_wait, flush).await;
    let mut busy_share = None;
    let mut previous = machine_cpu_ticks();
    while previous.is_some() {
        tokio::time::sleep(QUIET_SAMPLE).await;
        let current = machine_cpu_ticks();
        if let (Some((busy_before, total_before)), Some((busy, total))) = (previous, current) {
            let elapsed = total.saturating_sub(total_before);
            if elapsed > 0 {
                busy_share = Some(busy.saturating_sub(busy_before) as f64 / elapsed as f64);
            }
        }
        previous = current;
        if busy_share.is_some_and(|share| share <= QUIET_BUSY_SHARE) || began.elapsed() >= max_wait
        {
            break;
        }
    }
    QuietStart {
        waited_ms: began.elapsed().as_secs_f64() * 1000.0,
        busy_share,
    }
}

/// Counters of work that does not depend on the CPU's speed, read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkCounters {
    /// Heap allocations so far (none without the counting allocator).
    pub allocations: Option<crate::metrics::alloc::AllocationCounts>,
    /// Context switches so far.
    pub context_switches: u64,
    /// Process CPU time (user + system) so far.
    pub cpu: Duration,
}

impl WorkCounters {
    /// The counters now.
    pub fn read() -> Self {
        WorkCounters {
            allocations: crate::metrics::alloc::AllocationCounts::read(),
            context_switches: context_switches(),
            cpu: cpu_time(),
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
    fn the_machine_cpu_counters_read_and_a_quiet_start_is_bounded() {
        let (busy, total) = machine_cpu_ticks().expect("/proc/stat on Linux");
        assert!(busy <= total && total > 0, "{busy} of {total}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // No wait allowed: one flush and one sample, then it returns whatever it saw.
        let quiet = runtime.block_on(quiet_start(Duration::ZERO));
        assert!(quiet.waited_ms < 2000.0, "{quiet:?}");
        assert!(
            quiet.busy_share.is_some_and(|b| (0.0..=1.0).contains(&b)),
            "{quiet:?}"
        );
    }

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
