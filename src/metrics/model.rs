//! The one result model every exporter reads. Its JSON form is described by
//! `schema/result.schema.json`, which a test checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::latency::Percentiles;
use crate::scenario::{BackendKind, Mode, Scenario};

/// Version of the result format; bumped when a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything one `busbench run` measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Version of this format ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The scenario that was run.
    pub scenario: ScenarioInfo,
    /// Where it ran.
    pub environment: Environment,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// When the run ended (UTC, RFC 3339).
    pub finished_at: String,
    /// How many times each cell ran (`--repeat`); each cell reports its median run.
    #[serde(default = "one")]
    pub repeat: u32,
    /// One result per backend and mode.
    pub cells: Vec<CellResult>,
    /// Whether every cell passed its thresholds.
    pub passed: bool,
    /// The run's id: it names the run's topics and streams, and every shard of a split run
    /// carries the same one (`--run-id`, or derived from the start time).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// The shard this process ran (`--shard I/N`); absent when the run was not split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// The shards a merged result adds up (`busbench merge`), one per process, in shard
    /// order; empty for a result of one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedShard>,
}

/// Which part of a split run one process ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    /// This shard's index, from 0.
    pub index: u32,
    /// How many shards the run has.
    pub count: u32,
    /// The host the shard ran on.
    pub host: String,
    /// When the shards' measured phase was to begin (`--start-at`), UTC, RFC 3339; absent
    /// when each shard began as soon as it was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
}

/// One shard of a merged result, as its own result file describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergedShard {
    /// The shard's index, from 0.
    pub index: u32,
    /// The host it ran on.
    pub host: String,
    /// The result file it was read from.
    pub file: String,
    /// When its run started (UTC, RFC 3339).
    pub started_at: String,
    /// When its run ended (UTC, RFC 3339).
    pub finished_at: String,
    /// Whether every cell of the shard passed.
    pub passed: bool,
    /// Its machine, software and brokers.
    pub environment: Environment,
}

/// The scenario, as run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioInfo {
    /// The scenario's name.
    pub name: String,
    /// The file it was read from.
    pub file: String,
    /// FNV-1a 64 hash of the scenario's settings, to tell whether two runs did the same work.
    pub hash: String,
    /// Every setting, defaults filled in.
    pub settings: Scenario,
    /// Settings changed on the command line (`--set KEY=VALUE`), as given; the settings
    /// above include them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// The machine, software and brokers of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory, in bytes.
    pub memory_bytes: u64,
    /// Operating system name and version.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// busbench's version.
    pub busbench_version: String,
    /// The git commit busbench was built from (`unknown` outside a checkout).
    pub git_commit: String,
    /// Broker name to version, for the brokers the run used (`unknown` when the broker does
    /// not report it).
    pub brokers: BTreeMap<String, String>,
    /// Broker name to address.
    pub broker_addresses: BTreeMap<String, String>,
}

impl Environment {
    /// What must be equal for two runs' absolute figures (msg/s, µs) to be comparable: CPU
    /// model, logical cores, memory (whole GiB), OS, kernel and broker versions, in one line.
    pub fn fingerprint_text(&self) -> String {
        let brokers: Vec<String> = self
            .brokers
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .collect();
        format!(
            "{} x{}, {} GiB, {}, kernel {}, {}",
            self.cpu_model,
            self.cores,
            (self.memory_bytes as f64 / f64::from(1u32 << 30)).round(),
            self.os,
            self.kernel,
            brokers.join(", ")
        )
    }

    /// A short hash of [`Environment::fingerprint_text`].
    pub fn fingerprint(&self) -> String {
        fnv1a_64_hex(self.fingerprint_text().as_bytes())[..12].to_owned()
    }
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    /// Completed and passed its thresholds.
    Ok,
    /// Completed but failed a threshold, or did not complete (timeout, broker error).
    Failed,
    /// Stopped by the user (Ctrl-C).
    Interrupted,
}

/// Throughput of a cell.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Acknowledged publishes per second: acknowledged / (first send to last acknowledgement).
    pub publish_msgs_per_sec: f64,
    /// Handled messages per second: distinct received / (first send to last handled).
    pub e2e_msgs_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second, end to end.
    pub e2e_mb_per_sec: f64,
}

/// Latency percentiles of a cell, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// From the intended send time to the broker's acknowledgement.
    pub publish: Percentiles,
    /// From the intended send time to the start of the handler (same process, monotonic clock).
    pub e2e: Percentiles,
    /// Under a target rate, from the intended send time to the moment the harness handed the
    /// message to the bus: the part of both figures above that passed before the bus had the
    /// message (the pacing timer's lateness, and earlier sends that waited). All zero, with no
    /// samples, without a target rate.
    #[serde(default)]
    pub send_lag: Percentiles,
}

/// The latency histograms themselves (HdrHistogram V2 deflate, base64).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Histograms {
    /// Publish-to-acknowledgement histogram.
    pub publish: String,
    /// End-to-end histogram.
    pub e2e: String,
    /// Send-lag histogram (empty without a target rate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub send_lag: String,
}

/// Resident memory of the process during a cell.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// RSS before the bus was created.
    pub rss_baseline_bytes: u64,
    /// Highest RSS while the cell ran.
    pub rss_peak_bytes: u64,
    /// RSS after the bus closed minus the baseline (negative when memory was returned).
    pub rss_growth_bytes: i64,
}

/// Tokio tasks during a cell.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Tasks {
    /// Live tasks before the bus was created.
    pub baseline: u64,
    /// Most live tasks sampled while the cell ran.
    pub peak: u64,
    /// Live tasks left after the bus closed, above the baseline.
    pub leaked: u64,
}

/// OS threads during a cell.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Threads {
    /// Threads before the bus was created.
    pub baseline: u64,
    /// Most threads sampled while the cell ran.
    pub peak: u64,
    /// Threads left after the bus closed, above the baseline.
    pub leaked: u64,
}

/// Everything measured for one backend in one mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellResult {
    /// The backend.
    pub backend: BackendKind,
    /// The message kind.
    pub mode: Mode,
    /// How the cell ended.
    pub status: CellStatus,
    /// Why it failed: errors and failed thresholds (empty when ok).
    pub failures: Vec<String>,
    /// Messages the scenario asks this cell to publish in its measured phase.
    #[serde(default)]
    pub planned: u64,
    /// Messages the bus accepted for publishing (a publish returned a receipt): every one of
    /// them ends acknowledged, failed (counted in `publish_errors`) or unconfirmed.
    pub sent: u64,
    /// Sent messages the broker acknowledged.
    pub acknowledged: u64,
    /// Publishes that failed: refused by the bus before sending (backpressure, a closed bus,
    /// an invalid message) or sent and then failed or timed out waiting for the broker's
    /// acknowledgement.
    pub publish_errors: u64,
    /// Sent messages whose acknowledgement had neither arrived nor failed when the cell ended
    /// (its deadline passed or the run was interrupted).
    #[serde(default)]
    pub unconfirmed: u64,
    /// Distinct planned messages handled by a subscriber (acknowledged or not).
    pub received: u64,
    /// Messages the broker acknowledged that no subscriber ever handled, counted message by
    /// message: the bus's losses. Must be 0 in every outcome.
    pub lost: u64,
    /// Deliveries of a message already handled.
    pub duplicates: u64,
    /// Envelopes handled after a later event of their aggregate (a version missing because
    /// its publish failed is a gap, not a reordering).
    pub order_violations: u64,
    /// received / planned: the share of the planned messages handled end to end (0 when
    /// nothing was sent).
    pub success_rate: f64,
    /// Seconds from the first send to the last acknowledgement.
    pub publish_seconds: f64,
    /// Seconds from the first send to the last handled message.
    pub e2e_seconds: f64,
    /// Throughput figures.
    pub throughput: Throughput,
    /// Latency percentiles, microseconds.
    pub latency_us: Latency,
    /// The latency histograms.
    pub histograms: Histograms,
    /// Process memory.
    pub memory: Memory,
    /// Tokio tasks.
    pub tasks: Tasks,
    /// OS threads.
    pub threads: Threads,
    /// Process CPU time (user + system) per handled message over the measured phase, from
    /// the first measured send to the last message handled, microseconds: the span the
    /// client ceiling's `ceiling_cpu_us_per_msg` covers too.
    pub cpu_us_per_msg: f64,
    /// Process CPU time per handled message over the whole cell, microseconds: connecting,
    /// creating topics, the warm-up, the measured phase, draining and closing, spread over
    /// the measured messages. Above `cpu_us_per_msg` by the cell's fixed costs, which weigh
    /// more the fewer messages a scenario sends.
    #[serde(default)]
    pub whole_cell_cpu_us_per_msg: f64,
    /// End-to-end throughput of the client alone (no bus) on the same broker and load,
    /// paying what the bus's guarantee and the harness need: NATS acks, Kafka commits at the
    /// bus's cadence, and the per-message accounting. The bus's efficiency is measured
    /// against this. A repeated cell measures it before each of its runs and reports the
    /// median.
    pub ceiling_msgs_per_sec: Option<f64>,
    /// End-to-end throughput of the bare client on the same broker and load: no acks, no
    /// commits, no accounting; the client's raw limit, shown beside the ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_client_msgs_per_sec: Option<f64>,
    /// Process CPU time per message of the client ceiling's measured phase, microseconds:
    /// what the client alone spends on the work the bus is judged against, beside
    /// `cpu_us_per_msg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_cpu_us_per_msg: Option<f64>,
    /// The bus's efficiency: e2e_msgs_per_sec / ceiling_msgs_per_sec for one run. A repeated
    /// cell reports the median of its runs' efficiencies (`repeats.efficiency`), each run's
    /// taken against the ceiling run measured just before it.
    pub efficiency: Option<f64>,
    /// Work the process did per handled message during the measured phase, figures that do
    /// not depend on the CPU's speed.
    #[serde(default)]
    pub work_per_msg: WorkPerMessage,
    /// Figures to distrust, with the reason (for instance an efficiency above 1, which says
    /// the ceiling was not one). A warning does not fail the cell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The topics (Kafka) or streams (NATS) this cell left on the broker for inspection
    /// (`--keep-topics`); empty when they were deleted, as by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_topics: Vec<String>,
    /// Faults injected into the measured phase (`[[faults]]`), with what each did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultResult>,
    /// The figures of every run when the cell ran more than once; the cell's own figures are
    /// those of the run with the median end-to-end throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<RepeatSpread>,
    /// The measured phase second by second, from the first send to the last message handled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineSecond>,
    /// What the timeline says in short (absent when nothing was offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_summary: Option<TimelineSummary>,
    /// The rate search of this cell (`--find-max-rate` or a `[search]` table); the cell's own
    /// figures are those of the highest passing step, or of the first step when none passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<RateSearch>,
    /// When the measured phase began (the first send) on this host's wall clock, UTC: how
    /// the shards of a split run line up. (Every duration is measured on the monotonic
    /// clock; this is only where the window sits.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_from: Option<chrono::DateTime<chrono::Utc>>,
    /// How long after the run's `--start-at` the measured phase began, ms: 0 on time, more
    /// when set-up and warm-up took longer than the time left, or the time was already past
    /// when the process started. Absent without `--start-at`, and for cells after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_late_ms: Option<f64>,
    /// Warm-up messages sent and handled before the measured phase (`warmup`, or those of
    /// `warmup_duration`); merged: the sum over the shards. Absent for a cell that never got
    /// that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_messages: Option<u64>,
    /// How long the warm-up took, from its first send until its last message was handled, ms
    /// (monotonic clock); merged: the longest of the shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ms: Option<f64>,
    /// How long the cell waited, after its warm-up, for a quiet machine before measuring, ms:
    /// the file system's dirty pages written out (`sync`), then CPU samples until the
    /// machine's CPUs were at most 15% busy (up to 3 s). Absent for the memory backend (no
    /// broker leaves work behind) and for a cell that never got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_wait_ms: Option<f64>,
    /// The machine's busy share of all its CPUs, 0 to 1, over the last sample before the
    /// measured phase: above 0.15, another load was running (the cell warns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_at_start: Option<f64>,
    /// A merged cell's figures per shard (`busbench merge`), in shard order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<CellShard>,
}

/// What one shard measured of a merged cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellShard {
    /// The shard's index, from 0.
    pub index: u32,
    /// The host it ran on.
    pub host: String,
    /// How the shard's cell ended.
    pub status: CellStatus,
    /// Messages the shard sent.
    pub sent: u64,
    /// Distinct messages the shard's subscribers handled.
    pub received: u64,
    /// Acknowledged messages the shard never handled.
    pub lost: u64,
    /// The shard's own end-to-end throughput, msgs/s.
    pub e2e_msgs_per_sec: f64,
    /// The shard's own end-to-end p99, µs.
    pub e2e_p99_us: u64,
    /// The shard process's peak RSS during the cell, bytes.
    pub rss_peak_bytes: u64,
    /// The shard process's CPU time per handled message, µs.
    pub cpu_us_per_msg: f64,
    /// How long after the earliest shard this shard's measured phase began, ms (absent when
    /// a shard did not record its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_offset_ms: Option<f64>,
    /// How long after `--start-at` it began, ms (as the shard reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_late_ms: Option<f64>,
}

impl CellResult {
    /// The highest rate the cell's rate search found under its p99 target, msgs/s (absent
    /// without a search, or when no rate passed).
    pub fn max_rate_at_p99_target(&self) -> Option<u64> {
        self.search.as_ref().and_then(|search| search.max_rate)
    }
}

/// One second of a cell's measured phase. Second 0 starts at the first send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSecond {
    /// Seconds since the first send.
    pub second: u32,
    /// Messages whose intended send time fell in this second (the offered load; under a
    /// target rate, the schedule, whether or not the publishers kept up).
    pub offered: u64,
    /// Publishes the broker acknowledged in this second.
    pub acknowledged: u64,
    /// Measured messages handled by a subscriber in this second (first handling only).
    pub handled: u64,
    /// Acknowledged so far minus handled so far at the end of this second: messages stored by
    /// the broker and not yet handled (0 when handling ran ahead of the acknowledgements).
    pub backlog: u64,
    /// Median end-to-end latency of the messages handled in this second, µs, to within 1/32
    /// (the upper edge of a log-linear bucket); absent when none was handled.
    pub e2e_p50_us: Option<u64>,
    /// 99th percentile end-to-end latency of the messages handled in this second, µs, as
    /// `e2e_p50_us`.
    pub e2e_p99_us: Option<u64>,
}

/// A timeline in short.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelineSummary {
    /// Median messages handled per second over the seconds in which messages were offered,
    /// the first and last of them (partial seconds) left out when there are more than two.
    pub steady_handled_per_sec: f64,
    /// Mean messages offered per second over the same seconds.
    pub steady_offered_per_sec: f64,
    /// The largest backlog at the end of any second.
    pub peak_backlog: u64,
    /// Least-squares slope of the backlog over the seconds in which messages were offered
    /// (a last one that carried less than half a second's load left out: it is mostly
    /// drain), messages per second.
    pub backlog_slope_per_sec: f64,
    /// Whether the backlog kept growing while messages were offered: its trend rose, over
    /// those seconds, by more than a tenth of one second's offered load. A growing backlog
    /// means the subscribers did not keep up and latency rose with time.
    pub backlog_growing: bool,
}

/// A search for the highest rate a cell sustains with its end-to-end p99 under a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateSearch {
    /// The end-to-end p99 a step must stay at or under, µs.
    pub target_p99_us: u64,
    /// The seconds each step offered load for.
    pub step_seconds: f64,
    /// Runs of each rate; a rate passed when more than half of them passed (its runs stop
    /// once that is decided, so a rate may show fewer steps).
    #[serde(default = "one")]
    pub runs_per_rate: u32,
    /// The highest offered rate whose step passed, msgs/s; absent when no step passed.
    pub max_rate: Option<u64>,
    /// Why the search stopped where it did (the bound reached, the precision reached, no step
    /// passing, an interruption, a broker that could not be used).
    pub ended: String,
    /// Every step, in the order run.
    pub steps: Vec<SearchStep>,
    /// The unjudged run at the first rate before the steps, which warms the brokers and the
    /// client (a broker just started fails rates it sustains a minute later); `passed` is
    /// always false, `reasons` say what it would have missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<SearchStep>,
}

impl RateSearch {
    /// How many of a rate's `runs_per_rate` runs must pass for the rate to pass: more than
    /// half (all of one or two, two of three, three of four).
    pub fn runs_to_pass(runs_per_rate: u32) -> u32 {
        runs_per_rate / 2 + 1
    }
}

/// One step of a rate search: a run of the cell at one offered rate on fresh topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// The offered (target) rate, msgs/s.
    pub offered_rate: u64,
    /// Whether the step met every condition.
    pub passed: bool,
    /// The conditions it missed (empty when it passed).
    pub reasons: Vec<String>,
    /// Messages planned, sent, and distinct ones handled.
    pub planned: u64,
    /// Messages sent.
    pub sent: u64,
    /// Distinct messages handled.
    pub received: u64,
    /// Acknowledged messages never handled.
    pub lost: u64,
    /// Handled messages per second, first send to last handled.
    pub handled_per_sec: f64,
    /// End-to-end median, µs.
    pub e2e_p50_us: u64,
    /// End-to-end p99, µs.
    pub e2e_p99_us: u64,
    /// Publish p99, µs.
    pub publish_p99_us: u64,
    /// The step's largest backlog.
    pub peak_backlog: u64,
    /// Whether the step's backlog kept growing.
    pub backlog_growing: bool,
}

/// Work per handled message in the measured phase (first send to last handled), counted in
/// the whole busbench process: publishers, bus, client library and harness. Librdkafka's own C
/// allocations are not seen by Rust's allocator and are not counted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkPerMessage {
    /// Heap allocations (and reallocations) per handled message; absent when the counting
    /// allocator is not installed.
    #[serde(default)]
    pub allocations: Option<f64>,
    /// Heap bytes requested per handled message; absent when the counting allocator is not
    /// installed.
    #[serde(default)]
    pub allocated_bytes: Option<f64>,
    /// Context switches (voluntary and involuntary, every thread) per handled message.
    #[serde(default)]
    pub context_switches: f64,
}

/// Per-run figures of a repeated cell, and how far apart they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RepeatSpread {
    /// End-to-end throughput of each run, msgs/s.
    pub e2e_msgs_per_sec: Vec<f64>,
    /// Publish throughput of each run, msgs/s.
    pub publish_msgs_per_sec: Vec<f64>,
    /// End-to-end p99 of each run, µs.
    pub e2e_p99_us: Vec<u64>,
    /// Bus efficiency of each run (absent without a ceiling): its end-to-end throughput
    /// over the client ceiling run measured just before it (the same place in
    /// `ceiling_msgs_per_sec`), which saw the same spell of the machine.
    #[serde(default)]
    pub efficiency: Vec<f64>,
    /// Each client ceiling run of the cell, msgs/s, one measured just before each run (absent
    /// without a ceiling): the ceiling's own noise, beside the runs'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ceiling_msgs_per_sec: Vec<f64>,
    /// Heap allocations per message of each run (absent without the counting allocator).
    #[serde(default)]
    pub allocations_per_msg: Vec<f64>,
    /// Heap bytes per message of each run (absent without the counting allocator).
    #[serde(default)]
    pub allocated_bytes_per_msg: Vec<f64>,
    /// CPU µs per message of each run.
    #[serde(default)]
    pub cpu_us_per_msg: Vec<f64>,
    /// (max - min) / median of the end-to-end throughput, percent.
    pub spread_pct: f64,
}

impl RepeatSpread {
    /// The spread of a set of values: (max - min) / median, percent (0 for fewer than two).
    pub fn spread_of(values: &[f64]) -> f64 {
        if values.len() < 2 {
            return 0.0;
        }
        let median = median(values);
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        if median > 0.0 {
            (max - min) / median * 100.0
        } else {
            0.0
        }
    }
}

/// The median of a set of values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn one() -> u32 {
    1
}

/// FNV-1a, 64 bits, as 16 hex digits.
pub fn fnv1a_64_hex(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Throughput in messages per second, 0 when no time passed.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// One fault injected into a cell, and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultResult {
    /// The command run (`{backend}` replaced).
    pub command: String,
    /// When it was due, seconds into the measured phase.
    pub at_seconds: f64,
    /// When it started, seconds into the measured phase (absent when not reached).
    pub started_seconds: Option<f64>,
    /// When the command ended, seconds into the measured phase.
    pub finished_seconds: Option<f64>,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Why the fault did not run as planned (not reached, timed out, non-zero exit).
    pub error: Option<String>,
    /// Seconds from the fault's start until a message was handled again after handling
    /// stopped (for at least 100 ms); 0 when handling never stopped; absent when no message
    /// was handled after the fault.
    pub recovery_seconds: Option<f64>,
    /// Messages handled in each second from 2 s before the fault to 3 s after recovery: the
    /// throughput dip.
    pub handled_per_second: Vec<u64>,
    /// Where `handled_per_second` starts, seconds into the measured phase.
    pub window_start_seconds: f64,
}

/// The success rate: distinct planned messages handled over planned (0 when none planned).
pub fn success_rate(planned: u64, received: u64) -> f64 {
    if planned == 0 {
        0.0
    } else {
        received.min(planned) as f64 / planned as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_on_known_inputs() {
        assert_eq!(per_second(1000, 2.0), 500.0);
        assert_eq!(per_second(1000, 0.0), 0.0);
        assert_eq!(success_rate(100, 97), 0.97);
        assert_eq!(success_rate(100, 100), 1.0);
        assert_eq!(success_rate(20, 0), 0.0, "nothing sent is no success");
        assert_eq!(success_rate(0, 0), 0.0);
        assert_eq!(fnv1a_64_hex(b""), "cbf29ce484222325");
        assert_eq!(fnv1a_64_hex(b"a"), "af63dc4c8601ec8c");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(RepeatSpread::spread_of(&[90.0, 100.0, 110.0]), 20.0);
        assert_eq!(RepeatSpread::spread_of(&[100.0]), 0.0);
    }
}
