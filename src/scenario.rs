//! Scenario files: what a run does, read from TOML.
//!
//! Unknown keys, wrong types and impossible values are rejected with one message naming the
//! file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bytes the harness embeds at the start of every payload: intended send time, sequence
/// number, aggregate index and version.
pub const HARNESS_HEADER_BYTES: usize = 24;

/// A broker backend of the bus.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Apache Kafka.
    Kafka,
    /// NATS JetStream.
    Nats,
    /// The in-process memory backend.
    Memory,
}

impl BackendKind {
    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Kafka => "kafka",
            BackendKind::Nats => "nats",
            BackendKind::Memory => "memory",
        }
    }

    /// Parses `kafka`, `nats` or `memory`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kafka" => Some(BackendKind::Kafka),
            "nats" => Some(BackendKind::Nats),
            "memory" => Some(BackendKind::Memory),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of messages a cell sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Raw bytes, handled in the round-robin pool.
    Raw,
    /// Envelopes, handled in the keyed pool (per-aggregate order).
    Envelope,
}

impl Mode {
    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Envelope => "envelope",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// NATS stream storage, as written in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// On disk.
    #[default]
    File,
    /// In the server's memory.
    Memory,
}

/// The `[kafka]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// librdkafka properties for every client, passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// The target rate of Kafka's cells, messages per second, instead of the scenario's
    /// `rate` (brokers differ by an order of magnitude: one rate cannot be half of both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

/// The `[nats]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Stream storage: `file` or `memory`.
    #[serde(default)]
    pub storage: StorageKind,
    /// Stream replicas.
    #[serde(default = "one")]
    pub replicas: NonZeroUsize,
    /// The target rate of NATS's cells, messages per second, instead of the scenario's
    /// `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// A credentials file (`.creds`: the user's JWT and NKey seed), for servers with
    /// decentralised authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// User name, with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password; masked in every output. Better given as `--nats-password` or
    /// `BUSBENCH_NATS_PASSWORD`, out of the scenario file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An authentication token; masked in every output. Better given as `--nats-token` or
    /// `BUSBENCH_NATS_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Demand TLS (implied by a `tls://` URL and by any TLS file below).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_required: bool,
    /// PEM file of the certificate authorities to trust for the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// PEM file of the client certificate, for servers that verify clients (with
    /// `tls_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    /// PEM file of the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            storage: StorageKind::File,
            replicas: NonZeroUsize::MIN,
            rate: None,
            credentials_file: None,
            user: None,
            password: None,
            token: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

impl NatsSection {
    /// The first inconsistency of the authentication and TLS settings, as the key at fault
    /// and what is wrong.
    pub fn auth_problem(&self) -> Option<(&'static str, String)> {
        match (&self.user, &self.password) {
            (Some(_), None) => {
                return Some((
                    "user",
                    "needs a password (`password`, `--nats-password`)".into(),
                ));
            }
            (None, Some(_)) => {
                return Some(("password", "needs a user (`user`, `--nats-user`)".into()));
            }
            _ => {}
        }
        if self.token.is_some() && self.user.is_some() {
            return Some(("token", "a token and a user cannot both be given".into()));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let key = if self.tls_cert_file.is_some() {
                "tls_cert_file"
            } else {
                "tls_key_file"
            };
            return Some((key, "needs both tls_cert_file and tls_key_file".into()));
        }
        for (key, path) in [
            ("credentials_file", &self.credentials_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(path) = path
                && !Path::new(path).is_file()
            {
                return Some((key, format!("{path}: no such file")));
            }
        }
        None
    }
}

/// The `[thresholds]` section: what a cell must achieve to pass.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Smallest acceptable success rate (distinct planned messages handled / planned), 0 to 1.
    #[serde(default = "full_success")]
    pub min_success_rate: f64,
    /// Most acceptable order violations.
    #[serde(default)]
    pub max_order_violations: u64,
    /// Most acceptable tokio tasks left after the bus closed.
    #[serde(default)]
    pub max_leaked_tasks: u64,
    /// Most acceptable OS threads left after the bus closed.
    #[serde(default)]
    pub max_leaked_threads: u64,
    /// Largest acceptable end-to-end p99 latency, in milliseconds (none when absent).
    #[serde(default)]
    pub max_e2e_p99_ms: Option<f64>,
    /// Most acceptable failed publishes (refused, or whose acknowledgement failed or timed
    /// out). 0 by default; a scenario that restarts a broker on purpose allows the publishes
    /// caught in the outage. Acknowledged messages lost are never acceptable.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_publish_errors: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn full_success() -> f64 {
    1.0
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_success_rate: 1.0,
            max_order_violations: 0,
            max_leaked_tasks: 0,
            max_leaked_threads: 0,
            max_e2e_p99_ms: None,
            max_publish_errors: 0,
        }
    }
}

/// Version of the workload hash's field list. The hash covers: the messages per cell (or the
/// duration), warm-up, topics, Kafka partitions, aggregates, payload size, publishers, target
/// rate (and the per-broker rates), the in-flight window, whether ceilings are measured, the
/// Kafka properties (secret ones left out), NATS storage and replicas, and the faults. Not:
/// the name, description, backends and modes (cells are matched one by one), the timeout,
/// thresholds, regression limits or credentials. The handler's service time, the client's
/// threads, the warm-up's duration and the rate search are covered when set (a scenario
/// without them hashes as before they existed).
/// Bumped whenever that list changes for existing scenarios, so that a baseline hashed under
/// another list is told apart from a different workload.
pub const WORKLOAD_HASH_VERSION: u32 = 1;

/// The longest scenario name, in bytes.
pub const MAX_NAME_BYTES: usize = 100;
/// The most messages (or warm-up messages) per cell.
pub const MAX_MESSAGES: u64 = 1_000_000_000;
/// The largest payload.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// The most payload bytes in flight at once (payload_bytes × max_in_flight).
pub const MAX_IN_FLIGHT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// The longest cell timeout.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A scenario as written in its file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in result file names.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Backends to compare.
    pub backends: Vec<BackendKind>,
    /// Message kinds to compare.
    pub modes: Vec<Mode>,
    /// Messages to send per cell (exclusive with `duration`).
    #[serde(default)]
    pub messages: Option<u64>,
    /// How long to send per cell, such as `"30s"` or `"2m 30s"` (exclusive with
    /// `messages`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    /// Messages sent and received before measuring, per cell.
    #[serde(default)]
    pub warmup: u64,
    /// How long the warm-up offers the cell's load before measuring, such as `"2s"`: at the
    /// cell's target rate (as fast as the in-flight window allows when it has none), and at
    /// least `warmup` messages. A fresh client on fresh topics can be slow in its first
    /// second of load (a Kafka producer here stalls for 50 to 190 ms, which a few hundred
    /// messages sent at once do not absorb); warming up at the measured rate keeps that out
    /// of the measured phase. Not set: the warm-up is `warmup` messages, sent at once.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub warmup_duration: Option<Duration>,
    /// Topics the messages are spread over.
    #[serde(default = "default_topics")]
    pub topics: NonZeroU32,
    /// Partitions per Kafka topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Distinct aggregates (envelope mode), spread over the topics.
    #[serde(default = "default_aggregates")]
    pub aggregates: u64,
    /// Payload size in bytes; at least the 24 bytes the harness embeds.
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    /// Concurrent publishing tasks.
    #[serde(default = "default_publishers")]
    pub publishers: NonZeroU32,
    /// Target rate in messages per second over all publishers (0: as fast as possible).
    #[serde(default)]
    pub rate: u64,
    /// Most publishes awaiting their acknowledgement at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: NonZeroUsize,
    /// Worker threads of the client's async runtime, which runs the bus, its handlers and
    /// the harness (publishers, recorder) of a cell. 1 keeps every task on one thread: the
    /// figures lose the cross-thread hand-offs (and their run-to-run placement noise), and a
    /// cell can use one core at most.
    #[serde(
        default = "default_client_threads",
        skip_serializing_if = "is_default_client_threads"
    )]
    pub client_threads: NonZeroUsize,
    /// Bound on one cell, such as `"120s"` or `"10m"`; a cell not finished by then fails.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Also measure the client alone (no bus): the client ceiling (with acks or commits and
    /// the harness's accounting) and the bare client.
    #[serde(default = "yes")]
    pub ceiling: bool,
    /// Kafka settings.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// NATS settings.
    #[serde(default)]
    pub nats: NatsSection,
    /// Pass/fail thresholds.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// How much worse than a baseline a run may be before `compare` calls it a regression.
    #[serde(default)]
    pub regression: RegressionThresholds,
    /// Faults injected into every cell's measured phase (`[[faults]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Simulated handler work (`[handler]`).
    #[serde(default, skip_serializing_if = "HandlerSection::is_default")]
    pub handler: HandlerSection,
    /// A search for the highest rate under a p99 target (`[search]`): when present, each cell
    /// runs the search instead of one run of `messages` or `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSection>,
}

/// The `[handler]` section: work the benchmark's handler does for each message, standing for
/// a real handler's call to a database or another service.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// Each handled message occupies a simulated downstream for this long, such as
    /// `"200us"`; the downstream serves one message at a time (its schedule runs on the
    /// monotonic clock, not on sleeps adding up), so a cell can handle at most
    /// 1 / service_time messages per second. End-to-end latency includes it. 0 (the default):
    /// the handler only records the message.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub service_time: Duration,
}

impl HandlerSection {
    fn is_default(&self) -> bool {
        *self == HandlerSection::default()
    }
}

/// The `[search]` section: find, per cell, the highest offered rate whose end-to-end p99
/// stays at or under a target. The search offers `min_rate` first and doubles the rate until
/// a step fails (or `max_rate` is reached), then bisects between the highest passing and the
/// lowest failing rate until they are within `precision`. Each step runs on fresh topics.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SearchSection {
    /// The end-to-end p99 target, such as `"10ms"`.
    #[serde(with = "humantime_serde")]
    pub p99: Duration,
    /// How long each step offers its rate, such as `"5s"`; at least one second.
    #[serde(default = "default_search_step", with = "humantime_serde")]
    pub step: Duration,
    /// The first rate offered, msgs/s.
    #[serde(default = "default_search_min_rate")]
    pub min_rate: u64,
    /// The highest rate offered, msgs/s.
    #[serde(default = "default_search_max_rate")]
    pub max_rate: u64,
    /// The search ends when the lowest failing rate is within this share above the highest
    /// passing one (0.1: within 10%).
    #[serde(default = "default_search_precision")]
    pub precision: f64,
    /// How far below the offered rate the handled rate may fall in a passing step, as a
    /// share (0.05: the subscribers handle at least 95% of the offered rate).
    #[serde(default = "default_search_tolerance")]
    pub tolerance: f64,
    /// Runs of each rate: it passes when more than half of its runs pass, and its runs stop
    /// as soon as that is decided (with 2, both must pass; with 3, two of three). Near the
    /// knee, where p99 is at its noisiest, one run, lucky or unlucky, then does not decide the
    /// result.
    #[serde(default = "default_runs_per_rate")]
    pub runs_per_rate: NonZeroU32,
}

fn default_search_step() -> Duration {
    Duration::from_secs(5)
}
fn default_search_min_rate() -> u64 {
    1000
}
fn default_search_max_rate() -> u64 {
    1_000_000
}
fn default_search_precision() -> f64 {
    0.1
}
fn default_search_tolerance() -> f64 {
    0.05
}
fn default_runs_per_rate() -> NonZeroU32 {
    NonZeroU32::MIN
}

impl SearchSection {
    /// A search for `p99` with every other setting at its default.
    pub fn for_target(p99: Duration) -> Self {
        SearchSection {
            p99,
            step: default_search_step(),
            min_rate: default_search_min_rate(),
            max_rate: default_search_max_rate(),
            precision: default_search_precision(),
            tolerance: default_search_tolerance(),
            runs_per_rate: default_runs_per_rate(),
        }
    }

    /// The first setting that cannot be used, as its key and the reason.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.p99.is_zero() {
            return Some(("p99", "must be longer than 0, such as \"10ms\"".into()));
        }
        if self.step < Duration::from_secs(1) {
            return Some((
                "step",
                format!(
                    "{} is shorter than 1s: a step needs whole seconds to judge its backlog",
                    humantime::format_duration(self.step)
                ),
            ));
        }
        if self.step > MAX_TIMEOUT {
            return Some(("step", "is longer than a week".into()));
        }
        if self.min_rate == 0 {
            return Some(("min_rate", "must be greater than 0".into()));
        }
        if self.max_rate < self.min_rate {
            return Some((
                "max_rate",
                format!(
                    "{} is below min_rate {}: the bounds are reversed",
                    self.max_rate, self.min_rate
                ),
            ));
        }
        if self.max_rate as f64 * self.step.as_secs_f64() > MAX_MESSAGES as f64 {
            return Some((
                "max_rate",
                format!("max_rate x step is more than {MAX_MESSAGES} messages"),
            ));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Some(("precision", "must be between 0 and 1, such as 0.1".into()));
        }
        if self.runs_per_rate.get() > 10 {
            return Some(("runs_per_rate", "must be at most 10".into()));
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Some((
                "tolerance",
                "must be at least 0 and below 1, such as 0.05".into(),
            ));
        }
        None
    }
}

/// A `[[faults]]` entry: a command run at a set time into each cell's measured phase, such as
/// `scripts/brokers.sh restart {backend}` or `kubectl delete pod kafka-0`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, into the measured phase, such as `"3s"`. A cell that finishes publishing and
    /// draining earlier reports the fault as not reached.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// The command, run with `sh -c` in the current folder. `{backend}` becomes the cell's
    /// backend (`kafka` or `nats`); a command naming `{backend}` is skipped in memory cells.
    pub run: String,
    /// Bound on the command, such as `"120s"`; a command still running then is killed and the
    /// cell fails.
    #[serde(default = "default_fault_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_fault_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Fault {
    /// When the fault runs, into the measured phase.
    pub fn at(&self) -> Duration {
        self.at
    }

    /// The bound on the command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The command for a cell of `backend`, or `None` when it does not apply there.
    pub fn command_for(&self, backend: BackendKind) -> Option<String> {
        if self.run.contains("{backend}") {
            if backend == BackendKind::Memory {
                return None;
            }
            return Some(self.run.replace("{backend}", backend.name()));
        }
        Some(self.run.clone())
    }
}

/// The `[regression]` section: how much worse than a baseline a run may be, in percent.
///
/// Absolute figures (msg/s, latency, CPU time, RSS) depend on the machine: they gate a
/// comparison only on the same machine (`busbench ab`, or `compare --same-machine`).
/// Machine-free figures (heap allocations per message, and ratios taken within one run) gate
/// against a baseline from any machine of the same kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegressionThresholds {
    /// Absolute: largest allowed drop of publish or end-to-end throughput, percent.
    #[serde(default = "default_throughput_drop")]
    pub throughput_drop_pct: f64,
    /// Absolute: largest allowed rise of publish or end-to-end p99 latency, percent.
    #[serde(default = "default_latency_rise")]
    pub latency_rise_pct: f64,
    /// Absolute: largest allowed rise of CPU time per message, percent.
    #[serde(default = "default_cpu_rise")]
    pub cpu_rise_pct: f64,
    /// Absolute: largest allowed rise of peak RSS, percent.
    #[serde(default = "default_rss_rise")]
    pub rss_rise_pct: f64,
    /// Machine-free: largest allowed rise of heap allocations or allocated bytes per message,
    /// percent.
    #[serde(default = "default_allocations_rise")]
    pub allocations_rise_pct: f64,
    /// Machine-free: largest allowed drop of a ratio taken within one run (bus efficiency,
    /// envelope/raw efficiency or throughput, handled/published throughput), percent.
    #[serde(default = "default_ratio_drop")]
    pub ratio_drop_pct: f64,
    /// A/B: the largest Mann-Whitney p-value that counts as a significant change.
    #[serde(default = "default_significance")]
    pub significance: f64,
}

fn default_throughput_drop() -> f64 {
    20.0
}
fn default_latency_rise() -> f64 {
    100.0
}
fn default_cpu_rise() -> f64 {
    20.0
}
fn default_rss_rise() -> f64 {
    50.0
}
fn default_allocations_rise() -> f64 {
    10.0
}
fn default_ratio_drop() -> f64 {
    35.0
}
fn default_significance() -> f64 {
    0.05
}

impl Default for RegressionThresholds {
    fn default() -> Self {
        RegressionThresholds {
            throughput_drop_pct: default_throughput_drop(),
            latency_rise_pct: default_latency_rise(),
            cpu_rise_pct: default_cpu_rise(),
            rss_rise_pct: default_rss_rise(),
            allocations_rise_pct: default_allocations_rise(),
            ratio_drop_pct: default_ratio_drop(),
            significance: default_significance(),
        }
    }
}

fn default_topics() -> NonZeroU32 {
    NonZeroU32::MIN
}
fn default_partitions() -> i32 {
    3
}
fn default_aggregates() -> u64 {
    100
}
fn default_payload() -> usize {
    128
}
fn default_publishers() -> NonZeroU32 {
    NonZeroU32::MIN
}
fn default_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}
/// The client runtime's worker threads unless a scenario sets `client_threads`.
pub const DEFAULT_CLIENT_THREADS: usize = 2;
fn default_client_threads() -> NonZeroUsize {
    NonZeroUsize::new(DEFAULT_CLIENT_THREADS).unwrap_or(NonZeroUsize::MIN)
}
fn is_default_client_threads(threads: &NonZeroUsize) -> bool {
    threads.get() == DEFAULT_CLIENT_THREADS
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}
fn yes() -> bool {
    true
}

/// How much work a cell does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A fixed number of messages.
    Messages(u64),
    /// Send for this long (at the target rate, or as fast as possible).
    Duration(Duration),
}

/// A scenario file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: key `{key}`: {message}", path.display())]
pub struct ScenarioError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line (0 when the problem concerns the whole file).
    pub line: usize,
    /// The key at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let source = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            path: path.to_owned(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read the file: {e}"),
        })?;
        Scenario::parse(path, &source)
    }

    /// Reads and checks a scenario file, then applies command-line overrides (`--set
    /// KEY=VALUE`, dotted keys for tables: `kafka.producer."linger.ms"` is written
    /// `kafka.producer.linger.ms`) and checks the result again. A value is read as TOML
    /// (`100000`, `true`, `"30s"`), or as a string when it is not valid TOML (`30s`).
    /// Problems of an override are named by its `--set` text.
    pub fn load_with_overrides(
        path: &Path,
        overrides: &[(String, String)],
    ) -> Result<Scenario, ScenarioError> {
        let scenario = Scenario::load(path)?;
        if overrides.is_empty() {
            return Ok(scenario);
        }
        let text = overrides
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        let refuse = |key: &str, message: String| ScenarioError {
            path: PathBuf::from(format!("--set {text}")),
            line: 0,
            key: key.to_owned(),
            message,
        };
        let mut document = toml::Value::try_from(&scenario)
            .map_err(|e| refuse("-", format!("cannot apply the overrides: {e}")))?;
        let mut overridden = scenario;
        // One at a time, so that a value the scenario's types refuse is named by its key.
        for (key, value) in overrides {
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut table| table.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            set_dotted(&mut document, key, value).map_err(|message| refuse(key, message))?;
            overridden = document
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| refuse(key, e.message().to_owned()))?;
        }
        overridden
            .check(path, "")
            .map_err(|error| refuse(&error.key, error.message))?;
        Ok(overridden)
    }

    /// Parses and checks scenario text; `path` is used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(source).map_err(|error| {
            let (line, key) = match error.span() {
                Some(span) => locate_span(source, span.start),
                None => (0, "-".to_owned()),
            };
            let message = error.message().to_owned();
            // A missing field has no span of its own: name it from the message.
            // Its error spans the table it is missing from: a `[table]` header names the table.
            let key = match message.strip_prefix("missing field `") {
                Some(rest) => {
                    let field = rest.trim_end_matches('`');
                    let header = error
                        .span()
                        .and_then(|span| source.get(span.start..))
                        .and_then(|rest| rest.strip_prefix('['))
                        .and_then(|rest| rest.split_once(']'))
                        .map(|(table, _)| table.trim_matches(|c| c == '[' || c == ' '));
                    match header {
                        Some(table) => format!("{table}.{field}"),
                        None => field.to_owned(),
                    }
                }
                None => key,
            };
            ScenarioError {
                path: path.to_owned(),
                line,
                key,
                message,
            }
        })?;
        scenario.check(path, source)?;
        Ok(scenario)
    }

    fn check(&self, path: &Path, source: &str) -> Result<(), ScenarioError> {
        let fail = |table: Option<&str>, key: &str, message: String| ScenarioError {
            path: path.to_owned(),
            line: find_key_line(source, table, key),
            key: match table {
                Some(table) => format!("{table}.{key}"),
                None => key.to_owned(),
            },
            message,
        };
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(fail(
                None,
                "name",
                "must be non-empty letters, digits, - or _".into(),
            ));
        }
        if self.backends.is_empty() {
            return Err(fail(
                None,
                "backends",
                "name at least one of kafka, nats, memory".into(),
            ));
        }
        if self.modes.is_empty() {
            return Err(fail(
                None,
                "modes",
                "name at least one of raw, envelope".into(),
            ));
        }
        match (self.messages, &self.duration) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    None,
                    "duration",
                    "give either messages or duration, not both".into(),
                ));
            }
            (None, None) if self.search.is_some() => {}
            (None, None) => {
                return Err(fail(
                    None,
                    "messages",
                    "give the amount of work: messages or duration".into(),
                ));
            }
            (Some(0), None) => return Err(fail(None, "messages", "must be greater than 0".into())),
            (None, Some(duration)) if duration.is_zero() => {
                return Err(fail(
                    None,
                    "duration",
                    "must be longer than 0, such as \"30s\"".into(),
                ));
            }
            (None, Some(_)) if self.rate == 0 => {
                return Err(fail(
                    None,
                    "duration",
                    "a duration needs a target rate (rate > 0), so the amount of work is known"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err(fail(
                None,
                "timeout",
                "must be longer than 0, such as \"120s\"".into(),
            ));
        }
        if self.partitions <= 0 {
            return Err(fail(None, "partitions", "must be greater than 0".into()));
        }
        if self.payload_bytes < HARNESS_HEADER_BYTES {
            return Err(fail(
                None,
                "payload_bytes",
                format!(
                    "{} is smaller than the {HARNESS_HEADER_BYTES} bytes the harness embeds",
                    self.payload_bytes
                ),
            ));
        }
        // A rate search's smallest step is its first.
        let messages = match &self.search {
            Some(search) => (search.min_rate as f64 * search.step.as_secs_f64()).round() as u64,
            None => self.total_messages(),
        };
        if self.modes.contains(&Mode::Envelope) {
            if self.aggregates == 0 {
                return Err(fail(None, "aggregates", "must be greater than 0".into()));
            }
            if self.aggregates > messages {
                return Err(fail(
                    None,
                    "aggregates",
                    format!(
                        "{} aggregates is more than the {messages} messages sent",
                        self.aggregates
                    ),
                ));
            }
        }
        if u64::from(self.publishers.get()) > messages {
            return Err(fail(
                None,
                "publishers",
                format!(
                    "{} publishers is more than the {messages} messages sent",
                    self.publishers
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.thresholds.min_success_rate) {
            return Err(fail(
                Some("thresholds"),
                "min_success_rate",
                "must be between 0 and 1".into(),
            ));
        }
        for (key, value) in [
            ("throughput_drop_pct", self.regression.throughput_drop_pct),
            ("latency_rise_pct", self.regression.latency_rise_pct),
            ("cpu_rise_pct", self.regression.cpu_rise_pct),
            ("rss_rise_pct", self.regression.rss_rise_pct),
            ("allocations_rise_pct", self.regression.allocations_rise_pct),
            ("ratio_drop_pct", self.regression.ratio_drop_pct),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(fail(
                    Some("regression"),
                    key,
                    "must be a percentage of 0 or more".into(),
                ));
            }
        }
        let significance = self.regression.significance;
        if !(significance > 0.0 && significance < 1.0) {
            return Err(fail(
                Some("regression"),
                "significance",
                "must be a probability between 0 and 1, such as 0.05".into(),
            ));
        }
        if self.modes.contains(&Mode::Envelope)
            && self.aggregates < u64::from(self.publishers.get())
        {
            return Err(fail(
                None,
                "aggregates",
                format!(
                    "{} aggregates cannot give each of the {} publishers one of its own",
                    self.aggregates, self.publishers
                ),
            ));
        }
        if let Some((key, problem)) = self.nats.auth_problem() {
            return Err(fail(Some("nats"), key, problem));
        }
        self.check_bounds(&fail)?;
        self.check_kafka_properties(&fail)?;
        self.check_faults(path, source)?;
        if let Some((key, message)) = self.search.as_ref().and_then(SearchSection::problem) {
            return Err(fail(Some("search"), key, message));
        }
        Ok(())
    }

    fn check_faults(&self, path: &Path, source: &str) -> Result<(), ScenarioError> {
        // The n-th `[[faults]]` header starts entry n.
        let headers: Vec<usize> = source
            .lines()
            .enumerate()
            .filter(|(_, line)| line.trim() == "[[faults]]")
            .map(|(index, _)| index)
            .collect();
        let line_of = |entry: usize, key: &str| {
            let start = headers.get(entry).copied().unwrap_or(0);
            source
                .lines()
                .enumerate()
                .skip(start + 1)
                .take_while(|(_, line)| !line.trim().starts_with('['))
                .find(|(_, line)| {
                    line.split_once('=')
                        .is_some_and(|(name, _)| name.trim() == key)
                })
                .map_or(start + 1, |(index, _)| index + 1)
        };
        let timeout = self.timeout();
        for (entry, fault) in self.faults.iter().enumerate() {
            let fail = |key: &str, message: String| ScenarioError {
                path: path.to_owned(),
                line: line_of(entry, key),
                key: format!("faults.{key}"),
                message,
            };
            if fault.at >= timeout {
                return Err(fail(
                    "at",
                    format!(
                        "{} is not before the cell's timeout of {}",
                        humantime::format_duration(fault.at),
                        humantime::format_duration(timeout)
                    ),
                ));
            }
            if fault.timeout.is_zero() || fault.timeout > MAX_TIMEOUT {
                return Err(fail(
                    "timeout",
                    format!(
                        "must be longer than 0 and at most {}",
                        humantime::format_duration(MAX_TIMEOUT)
                    ),
                ));
            }
            if fault.run.trim().is_empty() {
                return Err(fail("run", "names no command".into()));
            }
        }
        Ok(())
    }

    /// Bounds every number to what one machine can do, so that a typo is a clear error
    /// instead of an allocation failure or a run that never ends.
    fn check_bounds(
        &self,
        fail: &dyn Fn(Option<&str>, &str, String) -> ScenarioError,
    ) -> Result<(), ScenarioError> {
        let at_most = |key: &str, value: u64, limit: u64, why: &str| {
            if value > limit {
                Err(fail(
                    None,
                    key,
                    format!("{value} is more than the {limit} busbench allows ({why})"),
                ))
            } else {
                Ok(())
            }
        };
        if self.name.len() > MAX_NAME_BYTES {
            return Err(fail(
                None,
                "name",
                format!(
                    "is {} characters long; at most {MAX_NAME_BYTES} (it names the report files)",
                    self.name.len()
                ),
            ));
        }
        at_most(
            if self.messages.is_some() {
                "messages"
            } else {
                "duration"
            },
            self.total_messages(),
            MAX_MESSAGES,
            "the receiving side keeps two bits per message",
        )?;
        at_most(
            "warmup",
            self.warmup,
            MAX_MESSAGES,
            "the same bound as messages",
        )?;
        if let Some(warmup_duration) = self.warmup_duration {
            if warmup_duration.is_zero() {
                return Err(fail(
                    None,
                    "warmup_duration",
                    "must be longer than 0, such as \"2s\" (leave it out for a warm-up of \
                     `warmup` messages only)"
                        .into(),
                ));
            }
            if warmup_duration >= self.timeout {
                return Err(fail(
                    None,
                    "warmup_duration",
                    format!(
                        "{} is not shorter than the cell's timeout of {}",
                        humantime::format_duration(warmup_duration),
                        humantime::format_duration(self.timeout)
                    ),
                ));
            }
            at_most(
                "warmup_duration",
                self.warmup_messages(),
                MAX_MESSAGES,
                "rate x warmup_duration, the same bound as messages",
            )?;
        }
        at_most(
            "topics",
            self.topics.get().into(),
            10_000,
            "one stream or topic each",
        )?;
        at_most(
            "partitions",
            self.partitions as u64,
            10_000,
            "per Kafka topic",
        )?;
        at_most(
            "publishers",
            self.publishers.get().into(),
            10_000,
            "one task each",
        )?;
        at_most(
            "aggregates",
            self.aggregates,
            100_000_000,
            "the order check keeps 4 bytes per aggregate",
        )?;
        at_most("rate", self.rate, 100_000_000, "messages per second")?;
        for (table, rate) in [("kafka", self.kafka.rate), ("nats", self.nats.rate)] {
            let Some(rate) = rate else { continue };
            if rate == 0 || self.rate == 0 {
                return Err(fail(
                    Some(table),
                    "rate",
                    "a backend's rate must be greater than 0, and only replaces a scenario \
                     rate greater than 0 (an open-loop load stays one)"
                        .into(),
                ));
            }
            if rate > 100_000_000 {
                return Err(fail(
                    Some(table),
                    "rate",
                    format!(
                        "{rate} is more than the 100000000 messages per second busbench allows"
                    ),
                ));
            }
        }
        at_most(
            "client_threads",
            self.client_threads.get() as u64,
            256,
            "runtime worker threads",
        )?;
        at_most(
            "max_in_flight",
            self.max_in_flight.get() as u64,
            1_000_000,
            "acknowledgements awaited at once",
        )?;
        at_most(
            "payload_bytes",
            self.payload_bytes as u64,
            MAX_PAYLOAD_BYTES,
            "64 MiB",
        )?;
        let in_flight_bytes = self.payload_bytes as u64 * self.max_in_flight.get() as u64;
        if in_flight_bytes > MAX_IN_FLIGHT_BYTES {
            return Err(fail(
                None,
                "max_in_flight",
                format!(
                    "{} messages of {} bytes in flight is {in_flight_bytes} bytes, more than \
                     the {MAX_IN_FLIGHT_BYTES} busbench allows",
                    self.max_in_flight, self.payload_bytes
                ),
            ));
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(fail(
                None,
                "timeout",
                format!(
                    "{} is longer than {}",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            ));
        }
        for (key, list) in [
            (
                "backends",
                self.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
            ),
            (
                "modes",
                self.modes
                    .iter()
                    .map(|m| if *m == Mode::Raw { "raw" } else { "envelope" })
                    .collect(),
            ),
        ] {
            if let Some(repeated) = list
                .iter()
                .enumerate()
                .find(|(i, name)| list[..*i].contains(name))
            {
                return Err(fail(None, key, format!("{} is listed twice", repeated.1)));
            }
        }
        if let Some(limit) = self.thresholds.max_e2e_p99_ms
            && !(limit.is_finite() && limit > 0.0)
        {
            return Err(fail(
                Some("thresholds"),
                "max_e2e_p99_ms",
                format!("{limit} is not a positive number of milliseconds"),
            ));
        }
        if !self.thresholds.min_success_rate.is_finite() {
            return Err(fail(
                Some("thresholds"),
                "min_success_rate",
                "must be between 0 and 1".into(),
            ));
        }
        Ok(())
    }

    /// Hands the Kafka properties to librdkafka before anything runs, so that a misspelt or
    /// invalid property is bad input (exit 2), not a failed cell.
    fn check_kafka_properties(
        &self,
        fail: &dyn Fn(Option<&str>, &str, String) -> ScenarioError,
    ) -> Result<(), ScenarioError> {
        // Each client as the bus creates it: the shared properties with its own on top.
        for (table, own) in [
            ("kafka.properties", &BTreeMap::new()),
            ("kafka.producer", &self.kafka.producer),
            ("kafka.consumer", &self.kafka.consumer),
        ] {
            let mut config = rdkafka::ClientConfig::new();
            config.set("bootstrap.servers", "127.0.0.1:9");
            if table == "kafka.consumer" {
                config.set("group.id", "busbench-check");
            }
            for (key, value) in self.kafka.properties.iter().chain(own) {
                config.set(key, value);
            }
            let created = if table == "kafka.consumer" {
                config
                    .create::<rdkafka::consumer::BaseConsumer>()
                    .map(|_| ())
            } else {
                config
                    .create::<rdkafka::producer::BaseProducer>()
                    .map(|_| ())
            };
            let Err(error) = created else {
                continue;
            };
            let mut message = error.to_string();
            for (key, value) in self.kafka.properties.iter().chain(own) {
                if crate::redact::is_secret_key(key) && !value.is_empty() {
                    message = message.replace(value.as_str(), crate::redact::MASK);
                }
            }
            // The property librdkafka names, else the first one of the section.
            let named = |properties: &BTreeMap<String, String>| {
                properties
                    .keys()
                    .find(|key| message.contains(&format!("\"{key}\"")))
                    .cloned()
            };
            let (table, key) = match named(own) {
                Some(key) => (table, key),
                None => match named(&self.kafka.properties) {
                    Some(key) => ("kafka.properties", key),
                    None => match own.keys().next() {
                        Some(key) => (table, key.clone()),
                        None => (
                            "kafka.properties",
                            self.kafka
                                .properties
                                .keys()
                                .next()
                                .cloned()
                                .unwrap_or_default(),
                        ),
                    },
                },
            };
            return Err(fail(
                Some(table),
                &key,
                format!("librdkafka refuses it: {message}"),
            ));
        }
        Ok(())
    }

    /// Registers every secret the scenario holds (credential properties) with
    /// [`crate::redact`], so that no output repeats them.
    pub fn register_secrets(&self) {
        for secret in [&self.nats.password, &self.nats.token]
            .into_iter()
            .flatten()
        {
            crate::redact::register(secret);
        }
        for properties in [
            &self.kafka.properties,
            &self.kafka.producer,
            &self.kafka.consumer,
        ] {
            for (key, value) in properties {
                if crate::redact::is_secret_key(key) {
                    crate::redact::register(value);
                }
            }
        }
    }

    /// A copy fit for reports: credential properties masked.
    pub fn redacted(&self) -> Scenario {
        let mut copy = self.clone();
        copy.kafka.properties = crate::redact::properties(&self.kafka.properties);
        copy.kafka.producer = crate::redact::properties(&self.kafka.producer);
        copy.kafka.consumer = crate::redact::properties(&self.kafka.consumer);
        for secret in [&mut copy.nats.password, &mut copy.nats.token]
            .into_iter()
            .flatten()
        {
            *secret = crate::redact::MASK.to_owned();
        }
        copy
    }

    /// The amount of work per cell.
    pub fn workload(&self) -> Workload {
        match (self.messages, &self.duration) {
            (Some(messages), _) => Workload::Messages(messages),
            (None, Some(duration)) => Workload::Duration(*duration),
            (None, None) => Workload::Messages(0),
        }
    }

    /// The scenario as `backend`'s cells run it: its `[kafka]` or `[nats]` rate, when given,
    /// replaces the scenario's.
    pub fn for_backend(&self, backend: BackendKind) -> Scenario {
        let rate = match backend {
            BackendKind::Kafka => self.kafka.rate,
            BackendKind::Nats => self.nats.rate,
            BackendKind::Memory => None,
        };
        let mut scenario = self.clone();
        if let Some(rate) = rate {
            scenario.rate = rate;
        }
        scenario
    }

    /// Warm-up messages sent per cell when their number is known before the warm-up: `warmup`,
    /// or rate x `warmup_duration` when that is more (a cell without a rate warms up for its
    /// duration as fast as it can, so sends `warmup` at least and an unknown number more).
    pub fn warmup_messages(&self) -> u64 {
        match self.warmup_duration {
            Some(duration) if self.rate > 0 => self
                .warmup
                .max((self.rate as f64 * duration.as_secs_f64()).ceil() as u64),
            _ => self.warmup,
        }
    }

    /// Messages sent per cell (for a duration: rate x duration).
    pub fn total_messages(&self) -> u64 {
        match self.workload() {
            Workload::Messages(messages) => messages,
            Workload::Duration(duration) => {
                (self.rate as f64 * duration.as_secs_f64()).round() as u64
            }
        }
    }

    /// The workload hash: `w<version>-` and the FNV-1a 64 of the fields that change what a
    /// cell measures, listed explicitly (see [`WORKLOAD_HASH_VERSION`]). Two runs with the same
    /// hash did the same work; adding a scenario field that does not change the work leaves
    /// every hash as it was.
    pub fn workload_hash(&self) -> String {
        let kafka_properties = |properties: &BTreeMap<String, String>| {
            properties
                .iter()
                .filter(|(key, _)| !crate::redact::is_secret_key(key))
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
        };
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{:?}@{:?}", f.run, f.at()))
            .collect();
        let workload = serde_json::json!({
            "workload": match self.workload() {
                Workload::Messages(messages) => format!("messages={messages}"),
                Workload::Duration(duration) => format!("duration={duration:?}"),
            },
            "warmup": self.warmup,
            "topics": self.topics,
            "partitions": self.partitions,
            "aggregates": self.aggregates,
            "payload_bytes": self.payload_bytes,
            "publishers": self.publishers,
            "rate": self.rate,
            "max_in_flight": self.max_in_flight,
            "ceiling": self.ceiling,
            "kafka": {
                "properties": kafka_properties(&self.kafka.properties),
                "producer": kafka_properties(&self.kafka.producer),
                "consumer": kafka_properties(&self.kafka.consumer),
                "rate": self.kafka.rate,
            },
            "nats": {
                "storage": self.nats.storage,
                "replicas": self.nats.replicas,
                "rate": self.nats.rate,
            },
            "faults": faults,
        });
        // Added to the list after version 1 without changing any hash of version 1: present
        // only when set.
        let mut workload = workload;
        if !self.handler.service_time.is_zero() {
            workload["service_time"] =
                serde_json::json!(format!("{:?}", self.handler.service_time));
        }
        if let Some(warmup_duration) = self.warmup_duration {
            workload["warmup_duration"] = serde_json::json!(format!("{warmup_duration:?}"));
        }
        if self.client_threads.get() != DEFAULT_CLIENT_THREADS {
            workload["client_threads"] = serde_json::json!(self.client_threads);
        }
        if let Some(search) = &self.search {
            workload["search"] = serde_json::json!(format!(
                "p99={:?} step={:?} rates={}..{} precision={} tolerance={} runs={}",
                search.p99,
                search.step,
                search.min_rate,
                search.max_rate,
                search.precision,
                search.tolerance,
                search.runs_per_rate
            ));
        }
        let digest = crate::metrics::model::fnv1a_64_hex(workload.to_string().as_bytes());
        format!("w{WORKLOAD_HASH_VERSION}-{digest}")
    }

    /// The bound on one cell.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Sets `key` (dotted, for tables; tables are created as needed) in a TOML document.
fn set_dotted(document: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), String> {
    // A dotted librdkafka property inside `kafka.properties`/`producer`/`consumer` stays
    // whole: `kafka.producer.linger.ms` sets the property `linger.ms`.
    let parts: Vec<&str> = key.split('.').collect();
    let (path, last): (Vec<&str>, String) = match parts.as_slice() {
        [
            "kafka",
            table @ ("properties" | "producer" | "consumer"),
            rest @ ..,
        ] if !rest.is_empty() => (vec!["kafka", table], rest.join(".")),
        [path @ .., last] if !last.is_empty() => (path.to_vec(), (*last).to_owned()),
        _ => return Err("is not a key".into()),
    };
    let mut table = document
        .as_table_mut()
        .ok_or_else(|| "the scenario is not a table".to_owned())?;
    for part in path {
        table = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    table.insert(last, value);
    Ok(())
}

/// The line of a byte offset, and the key written on that line.
fn locate_span(source: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(source.len());
    let line = source[..offset].matches('\n').count() + 1;
    // The key whose value holds the offset, with its tables (`nats.replicas`), from the
    // parser's spans; when the text does not parse, the key written on that line.
    if let Ok(root) = toml::de::DeTable::parse(source)
        && let Some(path) = key_at(root.get_ref(), offset)
    {
        return (line, path);
    }
    let text = source.lines().nth(line - 1).unwrap_or("");
    let key = match text.split_once('=') {
        Some((key, _)) => key.trim().trim_matches('"').to_owned(),
        None => text.trim().trim_matches(['[', ']']).to_owned(),
    };
    (line, if key.is_empty() { "-".into() } else { key })
}

/// The dotted path of the innermost key whose name or value spans `offset`.
fn key_at(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    for (name, value) in table {
        // A table's own span may cover only its header, so its keys are searched whatever.
        if let toml::de::DeValue::Table(inner) = value.get_ref()
            && let Some(rest) = key_at(inner, offset)
        {
            return Some(format!("{}.{rest}", name.get_ref()));
        }
        if name.span().contains(&offset) || value.span().contains(&offset) {
            return Some(name.get_ref().to_string());
        }
    }
    None
}

/// The line where `key` is set (inside `[table]` when given); 0 when it is not written.
fn find_key_line(source: &str, table: Option<&str>, key: &str) -> usize {
    // The parser's own spans: comments, quoting, dotted keys and inline tables are read as
    // TOML reads them.
    let Ok(root) = toml::de::DeTable::parse(source) else {
        return 0;
    };
    let mut current = root.get_ref();
    for part in table.into_iter().flat_map(|t| t.split('.')) {
        let nested = current
            .iter()
            .find(|(name, _)| name.get_ref().as_ref() == part)
            .map(|(_, value)| value.get_ref());
        match nested {
            Some(toml::de::DeValue::Table(inner)) => current = inner,
            _ => return 0,
        }
    }
    current
        .iter()
        .find(|(name, _)| name.get_ref().as_ref() == key)
        .map_or(0, |(name, _)| {
            source[..name.span().start.min(source.len())]
                .matches('\n')
                .count()
                + 1
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
backends = ["memory"]
modes = ["raw", "envelope"]
messages = 1000
aggregates = 10
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("s.toml"), text)
    }

    #[test]
    fn every_bad_value_is_named_at_its_line_in_a_commented_template() {
        let template = r#"# A template with comments everywhere.
name = "t"            # the name
backends = ["memory"] # where
modes = ["raw", "envelope"]
messages = 1000
aggregates = 10

[kafka.producer]  # producer settings
"linger.ms" = "5" # batching

[nats]  # stream settings
replicas = 1      # one copy

[thresholds] # what passes
min_success_rate = 1.0

[regression]   # what regresses
significance = 0.05
"#;
        parse(template).unwrap();
        let cases = [
            ("replicas = 1 ", "replicas = 0 ", 12, "nats.replicas"),
            (
                "min_success_rate = 1.0",
                "min_success_rate = 2.0",
                15,
                "thresholds.min_success_rate",
            ),
            (
                "significance = 0.05",
                "significance = 1.5",
                18,
                "regression.significance",
            ),
            ("messages = 1000", "messages = 0", 5, "messages"),
        ];
        for (good, bad, line, key) in cases {
            let text = template.replace(good, bad);
            assert_ne!(text, template, "{bad}");
            let e = error(&text);
            assert_eq!((e.line, e.key.as_str()), (line, key), "{bad}: {e}");
        }
    }

    #[test]
    fn the_workload_hash_covers_the_work_and_nothing_else() {
        let base = parse(GOOD).unwrap().workload_hash();
        assert!(
            base.starts_with(&format!("w{WORKLOAD_HASH_VERSION}-")),
            "{base}"
        );
        assert_eq!(base.len(), "w1-".len() + 16);
        let same_work = [
            "description = \"another text\"\n",
            "timeout = \"300s\"\n",
            "[thresholds]\nmax_order_violations = 3\n",
            "[regression]\nthroughput_drop_pct = 5.0\n",
            "[kafka.properties]\n\"sasl.password\" = \"secret\"\n",
        ];
        for extra in same_work {
            let hash = parse(&format!("{GOOD}{extra}")).unwrap().workload_hash();
            assert_eq!(hash, base, "{extra:?} changed the hash");
        }
        let other_backends = GOOD.replace("backends = [\"memory\"]", "backends = [\"nats\"]");
        assert_eq!(parse(&other_backends).unwrap().workload_hash(), base);
        let other_work = [
            GOOD.replace("messages = 1000", "messages = 1001"),
            format!("{GOOD}payload_bytes = 256\n"),
            format!("{GOOD}rate = 10\n"),
            format!("{GOOD}[kafka.producer]\n\"linger.ms\" = \"7\"\n"),
            format!("{GOOD}[nats]\nstorage = \"memory\"\n"),
            format!("{GOOD}[handler]\nservice_time = \"1ms\"\n"),
            format!("{GOOD}[search]\np99 = \"10ms\"\n"),
        ];
        assert_eq!(
            parse(&format!("{GOOD}[handler]\nservice_time = \"0s\"\n"))
                .unwrap()
                .workload_hash(),
            base,
            "an explicit default service time is the same work"
        );
        for text in other_work {
            let hash = parse(&text).unwrap().workload_hash();
            assert_ne!(hash, base, "{text:?} kept the hash");
        }
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let scenario = parse(GOOD).unwrap();
        assert_eq!(scenario.total_messages(), 1000);
        assert_eq!(scenario.payload_bytes, 128);
        assert_eq!(scenario.thresholds.min_success_rate, 1.0);
        assert_eq!(scenario.timeout(), Duration::from_secs(120));
    }

    #[test]
    fn a_backend_rate_replaces_the_scenario_rate_for_that_backend_only() {
        let text = GOOD.replace("messages = 1000", "duration = \"2s\"\nrate = 100");
        let scenario = parse(&format!("{text}[kafka]\nrate = 1000\n")).unwrap();
        assert_eq!(
            scenario.for_backend(BackendKind::Kafka).total_messages(),
            2000
        );
        assert_eq!(
            scenario.for_backend(BackendKind::Nats).total_messages(),
            200
        );
        assert_eq!(scenario.for_backend(BackendKind::Memory).rate, 100);
        let zero = error(&format!("{text}[nats]\nrate = 0\n"));
        assert_eq!((zero.key.as_str(), zero.line), ("nats.rate", 9));
        let open_loop = GOOD.to_owned() + "[kafka]\nrate = 1000\n";
        assert_eq!(error(&open_loop).key, "kafka.rate");
    }

    #[test]
    fn durations_parse() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1m 30s", Duration::from_secs(90)),
        ] {
            let scenario = parse(&format!("{GOOD}timeout = \"{text}\"\n")).unwrap();
            assert_eq!(scenario.timeout(), expected, "{text}");
        }
        for bad in ["soon", "5 parsecs", "-3s"] {
            let e = error(&format!("{GOOD}timeout = \"{bad}\"\n"));
            assert_eq!((e.line, e.key.as_str()), (7, "timeout"), "{bad}: {e}");
        }
    }

    fn error(text: &str) -> ScenarioError {
        parse(text).unwrap_err()
    }

    #[test]
    fn a_warm_up_duration_sends_the_cells_rate_for_that_long_and_at_least_warmup() {
        let plain = parse(&format!("{GOOD}warmup = 300\n")).unwrap();
        assert_eq!(
            (plain.warmup_duration, plain.warmup_messages()),
            (None, 300)
        );
        let paced = parse(&GOOD.replace(
            "messages = 1000",
            "duration = \"5s\"\nrate = 2500\nwarmup = 300\nwarmup_duration = \"2s\"",
        ))
        .unwrap();
        assert_eq!(paced.warmup_duration, Some(Duration::from_secs(2)));
        assert_eq!(paced.warmup_messages(), 5000);
        let few = Scenario {
            warmup: 9000,
            ..paced.clone()
        };
        assert_eq!(few.warmup_messages(), 9000, "warmup is the floor");
        // Without a rate, the number is not known before the warm-up: `warmup` at least.
        let flat_out = parse(&format!("{GOOD}warmup = 300\nwarmup_duration = \"1s\"\n")).unwrap();
        assert_eq!(flat_out.warmup_messages(), 300);
        // The hash moves with the warm-up's duration, and only when it is set.
        assert_ne!(
            paced.workload_hash(),
            Scenario {
                warmup_duration: None,
                ..paced.clone()
            }
            .workload_hash()
        );
        for (bad, why) in [
            ("\"0s\"", "longer than 0"),
            ("\"10m\"", "timeout"),
            ("\"soon\"", ""),
        ] {
            let e = error(&format!("{GOOD}warmup_duration = {bad}\n"));
            assert_eq!(
                (e.line, e.key.as_str()),
                (7, "warmup_duration"),
                "{bad}: {e}"
            );
            assert!(e.message.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = error(&format!("{GOOD}colour = \"blue\"\n"));
        assert_eq!((e.line, e.key.as_str()), (7, "colour"));
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert!(e.to_string().starts_with("s.toml:7: key `colour`:"), "{e}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line() {
        let e = error(&GOOD.replace("messages = 1000", "messages = \"many\""));
        assert_eq!((e.line, e.key.as_str()), (5, "messages"));
    }

    #[test]
    fn an_unknown_key_in_a_section_is_named() {
        let e = error(&format!("{GOOD}[nats]\nstorage = \"file\"\nshards = 3\n"));
        assert_eq!((e.line, e.key.as_str()), (9, "nats.shards"));
    }

    #[test]
    fn impossible_values_are_rejected() {
        let cases = [
            ("messages = 1000", "messages = 0", "messages", 5),
            ("aggregates = 10", "aggregates = 5000", "aggregates", 6),
            (
                "aggregates = 10",
                "aggregates = 10\npayload_bytes = 8",
                "payload_bytes",
                7,
            ),
            (
                "aggregates = 10",
                "aggregates = 10\ntopics = 0",
                "topics",
                7,
            ),
            (
                "aggregates = 10",
                "aggregates = 10\ntimeout = \"never\"",
                "timeout",
                7,
            ),
            ("backends = [\"memory\"]", "backends = []", "backends", 3),
            (
                "backends = [\"memory\"]",
                "backends = [\"redis\"]",
                "backends",
                3,
            ),
            (
                "messages = 1000",
                "messages = 1000\nduration = \"10s\"",
                "duration",
                6,
            ),
        ];
        for (from, to, key, line) in cases {
            let e = error(&GOOD.replace(from, to));
            assert_eq!((e.key.as_str(), e.line), (key, line), "{to}: {e}");
        }
        let e = error(&format!("{GOOD}[thresholds]\nmin_success_rate = 1.5\n"));
        assert_eq!((e.key.as_str(), e.line), ("thresholds.min_success_rate", 8));
    }

    #[test]
    fn a_search_that_cannot_run_is_named_at_its_line() {
        for (table, key, line) in [
            ("p99 = \"0s\"\n", "search.p99", 8),
            ("p99 = \"-5ms\"\n", "search.p99", 8),
            ("p99 = \"10ms\"\nstep = \"500ms\"\n", "search.step", 9),
            (
                "p99 = \"10ms\"\nmin_rate = 5000\nmax_rate = 100\n",
                "search.max_rate",
                10,
            ),
            ("p99 = \"10ms\"\nprecision = 0.0\n", "search.precision", 9),
            ("step = \"5s\"\n", "search.p99", 7),
        ] {
            let e = error(&format!("{GOOD}[search]\n{table}"));
            assert_eq!((e.key.as_str(), e.line), (key, line), "{table}: {e}");
        }
        let searched = parse(&format!(
            "{}[search]\np99 = \"10ms\"\n",
            GOOD.replace("messages = 1000\n", "")
        ))
        .unwrap();
        assert_eq!(
            searched.search.unwrap().min_rate,
            1000,
            "no workload is needed"
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = error("name = \"t\"\nbackends = [\"memory\"]\nmessages = 5\n");
        assert_eq!(e.key, "modes");
    }
}
