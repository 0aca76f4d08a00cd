//! Runs a scenario: for each mode and backend one cell, measured in isolation (a fresh bus in
//! a fresh tokio runtime), in phases: set-up, warm-up, measure, drain, teardown.
//!
//! Timing ends when the last expected message is handled, never after a fixed sleep; a cell
//! that does not finish within the scenario's timeout fails.

pub mod barrier;
pub mod ceiling;
pub mod downstream;
mod environment;
pub mod faults;
pub mod load;
mod progress;
mod receipts;
pub mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bus::{
    BusConfig, EventBus, KafkaConfig, NatsConfig, NatsStorage, SubscribeOptions, envelope_handler,
    handler,
};
use crate::metrics::latency::{self, Percentiles};
use crate::metrics::model::{
    CellResult, CellStatus, Histograms, Latency, Memory, RepeatSpread, RunResult, ScenarioInfo,
    ShardInfo, Tasks, Threads, Throughput, per_second, success_rate,
};
use crate::metrics::recorder::{Recorder, Stamp};
use crate::metrics::resources;
use crate::metrics::timeline::{self, SecondCounts};
use crate::scenario::{BackendKind, Mode, Scenario, StorageKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use environment::collect_environment;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INTERRUPT_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Asks the running scenario to stop: the current cell ends as interrupted (its figures so far
/// are kept), later cells are skipped, and the reports are still written.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::Release);
}

/// [`interrupt`], remembering the signal that asked for it (2 for SIGINT, 15 for SIGTERM) so
/// that the process exits with 128 + that number once the reports are written.
pub fn interrupt_by_signal(signal: i32) {
    let _ = INTERRUPT_SIGNAL.compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire);
    interrupt();
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// The signal that interrupted the run, if a signal did.
pub fn interrupt_signal() -> Option<i32> {
    match INTERRUPT_SIGNAL.load(Ordering::Acquire) {
        0 => None,
        signal => Some(signal),
    }
}

/// Resolves once the run is interrupted; checked every 10 ms, so any phase that races its
/// work against this ends within that.
pub async fn until_interrupted() {
    while !interrupted() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where the brokers are, and how the run reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// NATS URL.
    pub nats_url: String,
    /// The Kafka broker's version, when known (the protocol does not report it).
    pub kafka_version: Option<String>,
    /// Only these backends, overriding the scenario's list.
    pub backends: Option<Vec<BackendKind>>,
    /// Draw live progress bars (on a terminal).
    pub progress: bool,
    /// The scenario file's path, for the report.
    pub scenario_file: PathBuf,
    /// Runs of each cell; the median run is reported, with the spread.
    pub repeat: u32,
    /// Leave each cell's topics (Kafka) and streams (NATS) in place after the cell, for
    /// inspection with the brokers' own tools; the report names them.
    pub keep_topics: bool,
    /// Settings changed on the command line (`--set`), for the report.
    pub overrides: Vec<(String, String)>,
    /// The run's id (`--run-id`), naming its topics and streams; derived from the start
    /// time when absent.
    pub run_id: Option<String>,
    /// The part of the run this process runs, when the run is split over several (`--shard`).
    pub shard: Option<ShardRun>,
    /// When the first cell's measured phase begins (`--start-at`): after set-up and warm-up,
    /// the cell waits for it, so that every shard measures over the same window.
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The shards' barrier (`--barrier HOST:PORT`): before every cell's measured phase, each
    /// shard waits for all of them; shard 0 listens there.
    pub barrier: Option<String>,
}

impl RunOptions {
    /// Options for the brokers at these addresses, everything else at its default: one run
    /// of each cell, no progress bars, topics deleted, one process.
    pub fn new(kafka_bootstrap: &str, nats_url: &str, scenario_file: &std::path::Path) -> Self {
        RunOptions {
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            nats_url: nats_url.to_owned(),
            kafka_version: None,
            backends: None,
            progress: false,
            scenario_file: scenario_file.to_owned(),
            repeat: 1,
            keep_topics: false,
            overrides: Vec::new(),
            run_id: None,
            shard: None,
            start_at: None,
            barrier: None,
        }
    }
}

/// One shard of a split run: which one, and the share of the scenario it runs.
#[derive(Debug, Clone)]
pub struct ShardRun {
    /// Shard I of N.
    pub spec: crate::shard::ShardSpec,
    /// Its share of the scenario's load ([`crate::shard::scenario_share`]).
    pub share: Scenario,
}

impl ShardRun {
    /// Shard `spec` of `scenario`, when the scenario can be split that way.
    pub fn new(scenario: &Scenario, spec: crate::shard::ShardSpec) -> Result<Self, String> {
        Ok(ShardRun {
            spec,
            share: crate::shard::scenario_share(scenario, spec)?,
        })
    }
}

/// A run that could not be carried out at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A broker could not be reached or another part of the infrastructure failed.
    #[error("{0}")]
    Infrastructure(String),
}

/// Cell count, tasks, and the outcome of a run.
pub struct RunOutcome {
    /// The result model.
    pub result: RunResult,
    /// Whether some cell could not reach its broker.
    pub infrastructure_failure: bool,
}

/// The bus configuration a scenario asks for on a backend.
pub fn bus_config(scenario: &Scenario, backend: BackendKind, options: &RunOptions) -> BusConfig {
    let mut config = match backend {
        BackendKind::Memory => BusConfig::memory(),
        BackendKind::Kafka => {
            let mut kafka = KafkaConfig::new(&options.kafka_bootstrap);
            kafka.partitions = scenario.partitions;
            kafka.properties = scenario.kafka.properties.clone();
            kafka.producer_properties = scenario.kafka.producer.clone();
            kafka.consumer_properties = scenario.kafka.consumer.clone();
            BusConfig::new(crate::bus::BackendConfig::Kafka(kafka))
        }
        BackendKind::Nats => {
            let mut nats = NatsConfig::new(&options.nats_url);
            nats.storage = match scenario.nats.storage {
                StorageKind::File => NatsStorage::File,
                StorageKind::Memory => NatsStorage::Memory,
            };
            nats.replicas = scenario.nats.replicas.get();
            let section = &scenario.nats;
            nats.credentials_file = section.credentials_file.clone();
            nats.user_password = section.user.clone().zip(section.password.clone());
            nats.token = section.token.clone();
            nats.tls_required = section.tls_required;
            nats.tls_ca_file = section.tls_ca_file.clone();
            nats.tls_client_cert = section
                .tls_cert_file
                .clone()
                .zip(section.tls_key_file.clone());
            BusConfig::new(crate::bus::BackendConfig::Nats(nats))
        }
    };
    config.publish_window = scenario.max_in_flight.get();
    let bound = scenario.timeout();
    config.publish_timeout = bound;
    config.ack_timeout = bound;
    config.pool.enqueue_timeout = bound;
    config
}

/// Runs every cell of the scenario.
pub fn run(scenario: &Scenario, options: &RunOptions) -> RunOutcome {
    let started_at = chrono::Utc::now();
    // The result describes the whole scenario (its settings and workload hash, which every
    // shard shares); a shard runs its share.
    let whole = scenario;
    let scenario = options.shard.as_ref().map_or(whole, |shard| &shard.share);
    let given_run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}", started_at.format("%Y%m%d%H%M%S%3f")));
    // Shards never share topics, streams or consumer groups.
    let run_id = match &options.shard {
        Some(shard) => format!("{given_run_id}s{}", shard.spec.index),
        None => given_run_id.clone(),
    };
    let mut start_at = options.start_at;
    // The shards' barrier, joined before the first cell (shard 0 waits for the others).
    let mut barrier_problem = None;
    let barrier = match (&options.shard, &options.barrier) {
        (Some(shard), Some(address)) => {
            let until_start = start_at
                .and_then(|at| (at - started_at).to_std().ok())
                .unwrap_or_default();
            match barrier::Barrier::join(
                address,
                &given_run_id,
                shard.spec.index,
                shard.spec.count,
                until_start + scenario.timeout(),
            ) {
                Ok(barrier) => Some(barrier),
                Err(error) => {
                    let problem = format!(
                        "the shards' barrier could not be set up ({error}): this cell began \
                         without waiting for the other shards"
                    );
                    eprintln!("busbench: {problem}");
                    barrier_problem = Some(problem);
                    None
                }
            }
        }
        _ => None,
    };
    let mut cell_number: i64 = 0;
    let backends: Vec<BackendKind> = match &options.backends {
        Some(list) => list.clone(),
        None => scenario.backends.clone(),
    };
    let mut infrastructure_failure = false;
    // Backends the ceiling found unreachable: their cells fail at once with that error.
    let mut unreachable_backends: BTreeMap<BackendKind, String> = BTreeMap::new();
    let mut cells = Vec::new();
    let mut broker_versions = BTreeMap::new();
    // A rate search judges each step against its latency target, not against a ceiling.
    let measure_ceilings = scenario.ceiling && scenario.search.is_none();
    // Brokers already warmed up in this run (see `warm_up_broker`).
    let mut warmed_up: BTreeSet<BackendKind> = BTreeSet::new();
    for &mode in &scenario.modes {
        for &backend in &backends {
            if interrupted() {
                break;
            }
            if let Some(search) = &scenario.search {
                let (cell, version, unreachable) = search::search_cell(
                    scenario,
                    backend,
                    mode,
                    options,
                    &format!("{run_id}x"),
                    search,
                    unreachable_backends.get(&backend).map(String::as_str),
                );
                if let Some(version) = version {
                    broker_versions.insert(backend.name().to_owned(), version);
                }
                if unreachable {
                    infrastructure_failure = true;
                    unreachable_backends
                        .entry(backend)
                        .or_insert_with(|| cell.failures.join("; "));
                }
                cells.push(cell);
                continue;
            }
            let mut runs = Vec::new();
            let mut ceilings = CeilingSamples::default();
            for attempt in 0..options.repeat.max(1) {
                // The ceiling runs are interleaved with the cell's runs, one before each, so
                // that both sides of the efficiency see the same spells of a machine whose
                // speed drifts (a shared core's neighbour, frequency changes).
                if measure_ceilings
                    && backend != BackendKind::Memory
                    && !unreachable_backends.contains_key(&backend)
                    && warmed_up.insert(backend)
                    && let Err(ceiling::CeilingError::Unreachable(error)) =
                        warm_up_broker(scenario, backend, options, &format!("{run_id}w"))
                {
                    let error = crate::redact::text(&error);
                    eprintln!("busbench: {backend}: the broker warm-up failed: {error}");
                    unreachable_backends.insert(backend, error);
                }
                if measure_ceilings
                    && ceilings.failure.is_none()
                    && !unreachable_backends.contains_key(&backend)
                {
                    let id = format!(
                        "{run_id}c{attempt}{}",
                        mode.name().chars().next().unwrap_or('m')
                    );
                    if let Err(error) = ceilings.measure(scenario, backend, mode, options, &id) {
                        if let ceiling::CeilingError::Unreachable(e) = &error {
                            unreachable_backends.insert(backend, e.clone());
                        }
                        let error = crate::redact::text(&error.to_string());
                        eprintln!("busbench: {backend}/{mode}: client ceiling failed: {error}");
                        ceilings.failure = Some(error);
                    }
                    if interrupted() {
                        break;
                    }
                }
                let run_id = format!("{run_id}r{attempt}");
                let gate = StartGate {
                    at: start_at,
                    barrier: barrier.as_ref().map(|b| (b, cell_number)),
                };
                let (mut cell, version, unreachable) = run_cell(
                    scenario,
                    backend,
                    mode,
                    options,
                    &run_id,
                    unreachable_backends.get(&backend).map(String::as_str),
                    gate,
                );
                if let Some(barrier) = &barrier {
                    barrier.done(cell_number);
                }
                cell.warnings.extend(barrier_problem.clone());
                cell_number += 1;
                // The start time lines up the first measured phase; later ones follow.
                if cell.start_late_ms.is_some() {
                    start_at = None;
                }
                if let Some(version) = version {
                    broker_versions.insert(backend.name().to_owned(), version);
                }
                infrastructure_failure |= unreachable;
                runs.push(cell);
                if unreachable || interrupted() {
                    break;
                }
            }
            ceilings.apply_to(&mut runs);
            let mut cell = representative(runs, &ceilings);
            if let Some(error) = &ceilings.failure
                && cell.status != CellStatus::Interrupted
                && !unreachable_backends.contains_key(&backend)
            {
                cell.failures
                    .push(format!("the client ceiling failed: {error}"));
                cell.status = CellStatus::Failed;
            }
            flag_suspect_efficiency(&mut cell);
            cells.push(cell);
        }
    }
    if let Some(version) = &options.kafka_version
        && backends.contains(&BackendKind::Kafka)
    {
        broker_versions.insert("kafka".into(), version.clone());
    }
    let mut environment = collect_environment(broker_versions);
    for backend in &backends {
        let address = match backend {
            BackendKind::Kafka => crate::redact::url(&options.kafka_bootstrap),
            BackendKind::Nats => crate::redact::url(&options.nats_url),
            BackendKind::Memory => "in-process".into(),
        };
        environment
            .broker_addresses
            .insert(backend.name().to_owned(), address);
        environment
            .brokers
            .entry(backend.name().to_owned())
            .or_insert_with(|| match backend {
                BackendKind::Memory => env!("CARGO_PKG_VERSION").to_owned(),
                _ => "unknown".to_owned(),
            });
    }
    let passed = !interrupted() && cells.iter().all(|c| c.status == CellStatus::Ok);
    RunOutcome {
        result: RunResult {
            schema_version: crate::metrics::model::SCHEMA_VERSION,
            scenario: ScenarioInfo {
                name: whole.name.clone(),
                file: options.scenario_file.display().to_string(),
                hash: whole.workload_hash(),
                settings: whole.redacted(),
                overrides: options
                    .overrides
                    .iter()
                    .map(|(key, value)| crate::redact::text(&format!("{key}={value}")))
                    .collect(),
            },
            environment,
            started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            repeat: options.repeat.max(1),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            cells,
            passed,
            run_id: given_run_id,
            shard: options.shard.as_ref().map(|shard| ShardInfo {
                index: shard.spec.index,
                count: shard.spec.count,
                host: crate::shard::host_name(),
                start_at: options
                    .start_at
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            }),
            merged_from: Vec::new(),
        },
        infrastructure_failure,
    }
}

/// The run reported for a repeated cell: the first failed run if any failed (a failure is
/// never hidden by a median), otherwise the run with the median end-to-end throughput; with
/// the figures of every run attached, and every ceiling run measured beside them.
fn representative(mut runs: Vec<CellResult>, ceilings: &CeilingSamples) -> CellResult {
    if runs.len() == 1 {
        return runs.pop().expect("one run");
    }
    let spread = RepeatSpread {
        e2e_msgs_per_sec: runs.iter().map(|c| c.throughput.e2e_msgs_per_sec).collect(),
        publish_msgs_per_sec: runs
            .iter()
            .map(|c| c.throughput.publish_msgs_per_sec)
            .collect(),
        e2e_p99_us: runs.iter().map(|c| c.latency_us.e2e.p99).collect(),
        efficiency: runs.iter().filter_map(|c| c.efficiency).collect(),
        ceiling_msgs_per_sec: ceilings.fair.clone(),
        allocations_per_msg: runs
            .iter()
            .filter_map(|c| c.work_per_msg.allocations)
            .collect(),
        allocated_bytes_per_msg: runs
            .iter()
            .filter_map(|c| c.work_per_msg.allocated_bytes)
            .collect(),
        cpu_us_per_msg: runs.iter().map(|c| c.cpu_us_per_msg).collect(),
        spread_pct: RepeatSpread::spread_of(
            &runs
                .iter()
                .map(|c| c.throughput.e2e_msgs_per_sec)
                .collect::<Vec<_>>(),
        ),
    };
    let index = match runs.iter().position(|c| c.status != CellStatus::Ok) {
        Some(failed) => failed,
        None => {
            let mut order: Vec<usize> = (0..runs.len()).collect();
            order.sort_by(|a, b| {
                runs[*a]
                    .throughput
                    .e2e_msgs_per_sec
                    .total_cmp(&runs[*b].throughput.e2e_msgs_per_sec)
            });
            order[order.len() / 2]
        }
    };
    let mut cell = runs.swap_remove(index);
    // The cell's ceiling figures are the medians of its ceiling runs, and its efficiency the
    // median of its runs' own (each against the ceiling run just before it): not the
    // representative run's, whose ceiling run may have caught a spell the others did not.
    if !ceilings.fair.is_empty() {
        cell.ceiling_msgs_per_sec = median_of(&ceilings.fair);
        cell.bare_client_msgs_per_sec = median_of(&ceilings.bare).or(cell.bare_client_msgs_per_sec);
        cell.ceiling_cpu_us_per_msg = median_of(&ceilings.cpu).or(cell.ceiling_cpu_us_per_msg);
        cell.efficiency = median_of(&spread.efficiency);
    }
    cell.repeats = Some(spread);
    cell
}

/// How far above 1 an efficiency may be, without repeats to measure the noise, before it is
/// called a measurement error.
const EFFICIENCY_ALLOWANCE: f64 = 0.05;

/// How far apart (max - min over the median) a repeated cell's efficiencies may be before the
/// figure is called unsteady.
const EFFICIENCY_SPREAD_ALLOWANCE_PCT: f64 = 30.0;

/// A warning when the runs' efficiencies spread (`spread`, percent) past
/// [`EFFICIENCY_SPREAD_ALLOWANCE_PCT`]: the machine's speed moved between a run and the
/// ceiling run beside it, and their median says little.
fn unsteady_efficiency(runs: &[f64], spread: f64) -> Option<String> {
    (spread > EFFICIENCY_SPREAD_ALLOWANCE_PCT).then(|| {
        let each: Vec<String> = runs.iter().map(|e| format!("{:.0}%", e * 100.0)).collect();
        format!(
            "bus efficiency runs spread {spread:.0}% ({}): the machine's speed moved between \
             runs and their ceiling runs; check it with `busbench steadiness` and repeat",
            each.join(", ")
        )
    })
}

/// Flags an efficiency above 1 by more than the noise (the bus cannot beat its client doing
/// the same load, so such a figure says the ceiling was not measured as one), and one whose
/// runs spread too far to be read.
pub fn flag_suspect_efficiency(cell: &mut CellResult) {
    let Some(efficiency) = cell.efficiency else {
        return;
    };
    let runs = cell.repeats.as_ref().map_or(&[][..], |r| &r.efficiency[..]);
    let spread = RepeatSpread::spread_of(runs);
    if let Some(warning) = unsteady_efficiency(runs, spread) {
        cell.warnings.push(warning);
    }
    let noise = (spread / 100.0).max(EFFICIENCY_ALLOWANCE);
    if efficiency > 1.0 + noise {
        cell.warnings.push(format!(
            "bus efficiency {:.0}% is above 100% by more than the noise ({:.0}%): the \
             client ceiling was not a ceiling on this load; do not read it as the bus \
             beating its client",
            efficiency * 100.0,
            noise * 100.0
        ));
    }
}

fn new_runtime(scenario: &Scenario) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(scenario.client_threads.get())
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// The bare client publishing the scenario's load alone, with no consumer, in messages per
/// second: the figure to check against the brokers' own publish tools on the same machine.
pub fn publish_ceiling(
    scenario: &Scenario,
    backend: BackendKind,
    options: &RunOptions,
) -> Result<ceiling::CeilingFigures, ceiling::CeilingError> {
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S%3f").to_string();
    let run_id = format!("{run_id}-publish");
    measure_ceiling(scenario, backend, Mode::Raw, options, &run_id, false, true)
}

/// The ceiling runs of one cell: a client ceiling and a bare client before each of its runs.
#[derive(Debug, Default)]
struct CeilingSamples {
    /// The client ceiling of each attempt, msgs/s.
    fair: Vec<f64>,
    /// Client CPU time per message of each client ceiling run.
    cpu: Vec<f64>,
    /// The bare client of each attempt, msgs/s.
    bare: Vec<f64>,
    /// Why a ceiling run failed (redacted); no more are measured after one failed.
    failure: Option<String>,
}

impl CeilingSamples {
    /// Measures the client ceiling and then the bare client once each.
    fn measure(
        &mut self,
        scenario: &Scenario,
        backend: BackendKind,
        mode: Mode,
        options: &RunOptions,
        id: &str,
    ) -> Result<(), ceiling::CeilingError> {
        let fair = measure_ceiling(scenario, backend, mode, options, id, true, false)?;
        self.fair.push(fair.msgs_per_sec);
        self.cpu.push(fair.cpu_us_per_msg);
        if interrupted() {
            return Ok(());
        }
        let bare_id = format!("{id}-bare");
        let bare = measure_ceiling(scenario, backend, mode, options, &bare_id, false, false)?;
        self.bare.push(bare.msgs_per_sec);
        Ok(())
    }

    /// Sets the ceiling figures on each of the cell's runs: those of the ceiling run measured
    /// just before it, and its efficiency against that ceiling. The two ran in the same spell
    /// of a machine whose speed drifts, so their ratio cancels the drift that a ceiling from
    /// another moment would carry into it. A run without a ceiling run of its own (a ceiling
    /// failed, and no more were measured) is held against the median of those measured.
    fn apply_to(&self, runs: &mut [CellResult]) {
        let fair = paired(&self.fair, runs.len());
        let bare = paired(&self.bare, runs.len());
        let cpu = paired(&self.cpu, runs.len());
        for (index, run) in runs.iter_mut().enumerate() {
            run.ceiling_msgs_per_sec = fair[index];
            run.bare_client_msgs_per_sec = bare[index];
            run.ceiling_cpu_us_per_msg = cpu[index];
            run.efficiency = fair[index]
                .filter(|c| *c > 0.0)
                .map(|c| run.throughput.e2e_msgs_per_sec / c);
        }
    }
}

/// The median of `values`, none when there are none.
fn median_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| crate::metrics::model::median(values))
}

/// For each of `runs` runs, the value of the ceiling run measured just before it, or the
/// median of `measured` when it has none (none at all without any ceiling run).
fn paired(measured: &[f64], runs: usize) -> Vec<Option<f64>> {
    let fallback = median_of(measured);
    (0..runs)
        .map(|index| measured.get(index).copied().or(fallback))
        .collect()
}

/// One unrecorded run of the bare client's load against a broker, before the run's first
/// ceiling on it. The first load a broker takes after it started runs slow while its JVM
/// compiles and its caches fill, and the first thing measured would carry that: a Kafka raw
/// ceiling measured first on a broker started moments before came out at two thirds of the
/// bus's own rate in the cell after it. It sends the scenario's messages, at most
/// [`BROKER_WARM_UP_MESSAGES`] of them, so a long scenario does not pay for a long warm-up.
/// Nothing of this run is kept. An unreachable broker is returned (its cells then fail at
/// once); any other failure is left to the ceiling run after it, which meets the same problem
/// and reports it.
fn warm_up_broker(
    scenario: &Scenario,
    backend: BackendKind,
    options: &RunOptions,
    run_id: &str,
) -> Result<(), ceiling::CeilingError> {
    eprintln!(
        "busbench: {backend}: warming the broker up (one run of the bare client, not recorded)"
    );
    let warm_up = Scenario {
        messages: Some(scenario.total_messages().min(BROKER_WARM_UP_MESSAGES)),
        ..scenario.clone()
    };
    measure_ceiling(&warm_up, backend, Mode::Raw, options, run_id, false, false).map(|_| ())
}

/// The most messages a broker's warm-up sends: the heavy scenario's cell, a few seconds of
/// load on a 2-core machine, which took a just-started Kafka to its warm figures.
const BROKER_WARM_UP_MESSAGES: u64 = 500_000;

/// One ceiling run of `backend` in `mode`: the client ceiling (`fair`) or the bare client,
/// end to end or (`publish_only`) publishing alone.
fn measure_ceiling(
    scenario: &Scenario,
    backend: BackendKind,
    mode: Mode,
    options: &RunOptions,
    run_id: &str,
    fair: bool,
    publish_only: bool,
) -> Result<ceiling::CeilingFigures, ceiling::CeilingError> {
    let scenario = &scenario.for_backend(backend);
    let runtime = new_runtime(scenario);
    let config = bus_config(scenario, backend, options);
    let load = ceiling::CeilingLoad {
        messages: scenario.total_messages(),
        warmup: scenario.warmup,
        payload_bytes: scenario.payload_bytes,
        max_in_flight: scenario.max_in_flight.get(),
        topic: format!("busbench.{}.{run_id}.ceiling", scenario.name),
        topics: scenario.topics.get(),
        timeout: scenario.timeout(),
        publishers: scenario.publishers.get(),
        fair,
        publish_only,
        envelope_aggregates: (mode == Mode::Envelope).then_some(scenario.aggregates),
    };
    let outcome = runtime.block_on(ceiling::measure(&config, &load));
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// What the measuring phase produced.
struct Measured {
    sent: u64,
    acknowledged: u64,
    publish_errors: u64,
    unconfirmed: u64,
    first_error: Option<String>,
    publish_histogram: hdrhistogram::Histogram<u64>,
    /// How late the harness handed messages to the bus (under a target rate).
    send_lag_histogram: hdrhistogram::Histogram<u64>,
    last_ack_nanos: u64,
    first_send_nanos: u64,
    completed: bool,
    broker_version: Option<String>,
    /// Live tasks when the last message was handled, before anything closed.
    tasks_at_end: u64,
    /// The user stopped the run while this cell was measuring.
    interrupted: bool,
    /// Why closing the bus failed, if it did.
    close_error: Option<String>,
    /// Teardown did not finish before the cell's deadline: what was still running.
    teardown_cut: Option<String>,
    /// Work counters at the first send and when the last message was handled.
    work: (resources::WorkCounters, resources::WorkCounters),
    /// The faults injected into the measured phase.
    fault_runs: Vec<faults::FaultRun>,
    /// The topics or streams left on the broker (`--keep-topics`).
    kept_topics: Vec<String>,
    /// Messages offered per second of the measured phase, all publishers.
    offered: SecondCounts,
    /// Acknowledgements per second of the measured phase, all publishers.
    acknowledged_per_second: SecondCounts,
    /// The wall-clock time of the first send.
    measured_from: chrono::DateTime<chrono::Utc>,
    /// How long after the start time (`--start-at`) the measured phase began, ms.
    start_late_ms: Option<f64>,
    /// Warm-up messages sent and handled, and how long that took (ms).
    warm_up: (u64, f64),
    /// The wait for a quiet machine before the measured phase (broker cells).
    quiet: Option<resources::QuietStart>,
    /// The shards' barrier was gone when this cell reached it.
    barrier_lost: bool,
}

/// How a cell failed before its measured phase produced figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The broker could not be reached.
    Unreachable,
    /// Another error (set-up, warm-up, a phase past the deadline).
    Failed,
    /// The run was interrupted.
    Interrupted,
}

/// Fails the cell, with what kind of failure it was.
struct CellFailure {
    message: String,
    kind: FailureKind,
    /// Teardown did not finish before the cell's deadline.
    teardown_cut: Option<String>,
}

impl CellFailure {
    fn failed(message: String) -> Self {
        CellFailure {
            message,
            kind: FailureKind::Failed,
            teardown_cut: None,
        }
    }

    /// A phase that was cut by the deadline or an interruption.
    fn cut(cut: Cut, phase: &str, timeout: Duration) -> Self {
        match cut {
            Cut::Deadline => CellFailure::failed(format!(
                "{phase} did not finish within the cell's timeout of {timeout:?}"
            )),
            Cut::Interrupted => CellFailure {
                message: format!("interrupted during {phase}"),
                kind: FailureKind::Interrupted,
                teardown_cut: None,
            },
        }
    }
}

/// Why a bounded phase ended before its work did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The cell's deadline passed.
    Deadline,
    /// The run was interrupted.
    Interrupted,
}

/// Runs `work` until it ends, the deadline passes, or the run is interrupted, whichever comes
/// first; the work is dropped (cancelled) in the last two cases.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Cut> {
    tokio::select! {
        value = work => Ok(value),
        _ = tokio::time::sleep_until(deadline) => Err(Cut::Deadline),
        _ = until_interrupted() => Err(Cut::Interrupted),
    }
}

/// The part of a cell's timeout kept for teardown (deleting topics, closing the bus) when the
/// earlier phases run long: a tenth of the timeout, at most 10 seconds.
fn teardown_reserve(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_secs(10))
}

/// How long teardown may go on after an interruption: enough to delete the cell's topics on a
/// healthy broker, short enough to be prompt on a stalled one.
const TEARDOWN_AFTER_INTERRUPT: Duration = Duration::from_secs(3);

/// What a cell's measured phase waits for before its first send.
#[derive(Clone, Copy, Default)]
pub struct StartGate<'a> {
    /// A time (`--start-at`).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The shards' barrier, and this cell's number in it.
    pub barrier: Option<(&'a barrier::Barrier, i64)>,
}

/// How late after `--start-at` a measured phase may begin before its cell says so, ms.
const LATE_START_MS: f64 = 100.0;

/// The longest a cell waits for a quiet machine before its measured phase.
const QUIET_MAX_WAIT: Duration = Duration::from_secs(3);

/// Drives one cell inside one deadline: connect, set-up, warm-up, measure and drain must end
/// by `timeout - teardown_reserve`, teardown by `timeout`; an interruption ends the current
/// phase within milliseconds and teardown within [`TEARDOWN_AFTER_INTERRUPT`].
#[allow(clippy::too_many_arguments)]
async fn drive(
    scenario: &Scenario,
    backend: BackendKind,
    mode: Mode,
    options: &RunOptions,
    run_id: &str,
    recorder: Arc<Recorder>,
    sent_counter: Arc<AtomicU64>,
    gate: StartGate<'_>,
) -> Result<Measured, CellFailure> {
    let timeout = scenario.timeout();
    // Waiting for the start time does not eat into the cell's own bound.
    let until_start = gate
        .at
        .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + until_start + timeout;
    let work_deadline = deadline - teardown_reserve(timeout);
    let config = bus_config(scenario, backend, options);
    let nats_config = match &config.backend {
        crate::bus::BackendConfig::Nats(nats) => Some(nats.clone()),
        _ => None,
    };
    let kept_stream_prefix = nats_config.as_ref().map(|n| n.stream_prefix.clone());
    let bus = match bounded(work_deadline, EventBus::connect(config)).await {
        Ok(Ok(bus)) => Arc::new(bus),
        Ok(Err(e)) => {
            return Err(CellFailure {
                message: format!("cannot use {backend}: {e}"),
                kind: FailureKind::Unreachable,
                teardown_cut: None,
            });
        }
        Err(cut) => {
            let mut failure = CellFailure::cut(cut, &format!("connecting to {backend}"), timeout);
            if cut == Cut::Deadline {
                failure.kind = FailureKind::Unreachable;
            }
            return Err(failure);
        }
    };
    let broker_version = bounded(
        work_deadline,
        broker_version(backend, options, nats_config.as_ref()),
    )
    .await
    .ok()
    .flatten();
    let topics: Arc<[String]> = (0..scenario.topics.get())
        .map(|i| format!("busbench.{}.{run_id}.{mode}.{i}", scenario.name))
        .collect();
    let mut subscriptions = Vec::new();
    let result = measure(
        scenario,
        backend,
        mode,
        &bus,
        &topics,
        &mut subscriptions,
        recorder,
        sent_counter,
        work_deadline,
        gate,
        !options.progress,
    )
    .await;
    let teardown = async {
        for subscription in subscriptions {
            let _ = subscription.close().await;
        }
        if !options.keep_topics {
            for topic in topics.iter() {
                let _ = bus.delete_topic(topic).await;
            }
        }
        match Arc::into_inner(bus) {
            Some(bus) => bus.close().await,
            None => Err(crate::bus::BusError::Config(
                "a publisher still held the bus; it was not closed".into(),
            )),
        }
    };
    let cut_after_interrupt = async {
        until_interrupted().await;
        tokio::time::sleep(TEARDOWN_AFTER_INTERRUPT).await;
    };
    let (close, teardown_cut) = tokio::select! {
        close = teardown => (Some(close), None),
        _ = tokio::time::sleep_until(deadline) => (None, Some(format!(
            "teardown (closing subscriptions, deleting topics, closing the bus) did not \
             finish within the cell's timeout of {timeout:?}; it was abandoned"
        ))),
        _ = cut_after_interrupt => (None, Some(format!(
            "teardown was abandoned {TEARDOWN_AFTER_INTERRUPT:?} after the interruption"
        ))),
    };
    let mut measured = match result {
        Ok(measured) => measured,
        Err(mut failure) => {
            failure.teardown_cut = teardown_cut;
            return Err(failure);
        }
    };
    measured.broker_version = broker_version;
    measured.teardown_cut = teardown_cut;
    if options.keep_topics {
        measured.kept_topics = match &kept_stream_prefix {
            Some(prefix) => topics
                .iter()
                .map(|t| crate::bus::NatsConfig::stream_name(prefix, t))
                .collect(),
            None if backend == BackendKind::Kafka => topics.to_vec(),
            None => Vec::new(),
        };
    }
    if let Some(Err(e)) = close {
        measured.close_error = Some(format!("closing the bus: {e}"));
    }
    Ok(measured)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    scenario: &Scenario,
    backend: BackendKind,
    mode: Mode,
    bus: &Arc<EventBus>,
    topics: &Arc<[String]>,
    subscriptions: &mut Vec<crate::bus::Subscription>,
    recorder: Arc<Recorder>,
    sent_counter: Arc<AtomicU64>,
    deadline: tokio::time::Instant,
    gate: StartGate<'_>,
    announce_phase: bool,
) -> Result<Measured, CellFailure> {
    let timeout = scenario.timeout();
    // Set-up: topics and subscriptions, ready before anything is sent.
    // One consumer group per topic: subscriptions of one group to different topics would
    // rebalance each other as each joins (on Kafka, seconds of set-up per cell).
    let group_of = |topic: &str| format!("busbench-{}", topic.replace('.', "-"));
    let service_time = scenario.handler.service_time;
    let downstream = (!service_time.is_zero())
        .then(|| Arc::new(downstream::Downstream::new(Instant::now(), service_time)));
    let set_up = async {
        for topic in topics.iter() {
            bus.ensure_topic(topic)
                .await
                .map_err(|e| format!("creating {topic}: {e}"))?;
            let recorder = recorder.clone();
            let subscription = match (mode, downstream.clone()) {
                (Mode::Raw, Some(downstream)) => {
                    bus.subscribe(
                        topic,
                        SubscribeOptions::group(group_of(topic)),
                        handler(move |message| {
                            let recorder = recorder.clone();
                            let downstream = downstream.clone();
                            async move {
                                downstream.serve().await;
                                recorder.on_message(&message.payload);
                                Ok(())
                            }
                        }),
                    )
                    .await
                }
                (Mode::Envelope, Some(downstream)) => {
                    bus.subscribe_envelope(
                        topic,
                        SubscribeOptions::group(group_of(topic)),
                        envelope_handler(move |envelope| {
                            let recorder = recorder.clone();
                            let downstream = downstream.clone();
                            async move {
                                downstream.serve().await;
                                recorder.on_message(&envelope.payload);
                                Ok(())
                            }
                        }),
                    )
                    .await
                }
                (Mode::Raw, None) => {
                    bus.subscribe(
                        topic,
                        SubscribeOptions::group(group_of(topic)),
                        handler(move |message| {
                            recorder.on_message(&message.payload);
                            async { Ok(()) }
                        }),
                    )
                    .await
                }
                (Mode::Envelope, None) => {
                    bus.subscribe_envelope(
                        topic,
                        SubscribeOptions::group(group_of(topic)),
                        envelope_handler(move |envelope| {
                            recorder.on_message(&envelope.payload);
                            async { Ok(()) }
                        }),
                    )
                    .await
                }
            }
            .map_err(|e| format!("subscribing to {topic}: {e}"))?;
            subscriptions.push(subscription);
        }
        for subscription in subscriptions.iter() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            subscription
                .wait_ready(left)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    bounded(deadline, set_up)
        .await
        .map_err(|cut| CellFailure::cut(cut, "set-up", timeout))?
        .map_err(CellFailure::failed)?;
    // Warm-up: messages outside the measurement, all handled before measuring starts.
    // Sent within the cell's in-flight window, not one acknowledgement at a time: a broker that
    // batches (Kafka's linger) would otherwise take seconds for a few hundred messages. With a
    // warm-up duration, the messages go out on the cell's schedule (its rate) for that long,
    // or as fast as the window allows for that long when the cell has no rate.
    let warm_up = async {
        let began = tokio::time::Instant::now();
        // Messages always sent, and how long to go on sending after them (as fast as the
        // window allows) when their number is not known before the warm-up.
        let (paced, count, for_at_least) = match scenario.warmup_duration {
            Some(_) if scenario.rate > 0 => (true, scenario.warmup_messages(), Duration::ZERO),
            Some(duration) => (false, scenario.warmup, duration),
            None => (false, scenario.warmup, Duration::ZERO),
        };
        let mut sends = futures::stream::iter(0..)
            .take_while(move |&seq| {
                futures::future::ready(seq < count || began.elapsed() < for_at_least)
            })
            .map(|seq| async move {
                if paced {
                    let due = Duration::from_nanos(
                        (seq as u128 * 1_000_000_000 / u128::from(scenario.rate)) as u64,
                    );
                    tokio::time::sleep_until(began + due).await;
                }
                let payload = Stamp::warmup(seq).payload(scenario.payload_bytes);
                match mode {
                    Mode::Raw => {
                        let topic = load::topic_of(topics, seq);
                        bus.publish(topic, payload).await
                    }
                    Mode::Envelope => {
                        // Over the load's aggregates and their topics, as the measured phase
                        // spreads them: every partition, stream and keyed worker is warm
                        // before measuring, not the one a single warm-up aggregate reaches.
                        let aggregates = scenario.aggregates.max(1);
                        let aggregate = seq % aggregates;
                        let topic = load::topic_of(topics, aggregate);
                        let envelope = crate::bus::Envelope::new(
                            load::aggregate_id(aggregate),
                            "Warmup",
                            (seq / aggregates) as i64 + 1,
                            payload,
                        );
                        bus.publish_envelope(topic, envelope).await
                    }
                }
            })
            .buffer_unordered(scenario.max_in_flight.get());
        let mut done = 0u64;
        while let Some(sent) = sends.next().await {
            sent.map_err(|e| format!("warm-up publish: {e}"))?;
            done += 1;
            if done.is_multiple_of(256) {
                // A backend that never waits (memory) must still let the deadline be seen.
                tokio::task::yield_now().await;
            }
        }
        while recorder.warmup_received() < done {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, String>((done, began.elapsed().as_secs_f64() * 1000.0))
    };
    let warm_up = bounded(deadline, warm_up)
        .await
        .map_err(|cut| CellFailure::cut(cut, "warm-up", timeout))?
        .map_err(CellFailure::failed)?;
    // A quiet start: what the previous cell left a broker to do (its log written back, its
    // topics deleted) is not done during this cell's measured phase. The in-process backend
    // leaves nothing behind.
    let quiet = if backend == BackendKind::Memory {
        None
    } else {
        Some(
            bounded(deadline, resources::quiet_start(QUIET_MAX_WAIT))
                .await
                .map_err(|cut| CellFailure::cut(cut, "waiting for a quiet machine", timeout))?,
        )
    };
    // Measure: publishers run until done, or until the deadline or an interruption stops
    // them; either way they report what they sent and what was acknowledged.
    let plan = Arc::new(load::LoadPlan {
        mode,
        topics: topics.clone(),
        messages: scenario.total_messages(),
        aggregates: scenario.aggregates,
        publishers: scenario.publishers.get(),
        rate: scenario.rate,
        payload_bytes: scenario.payload_bytes,
        in_flight_per_publisher: scenario
            .max_in_flight
            .get()
            .div_ceil(scenario.publishers.get() as usize),
    });
    let stop = CancellationToken::new();
    let watchdog = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = until_interrupted() => {}
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        }
    });
    // The shards' barrier: every shard is ready for this cell before any measures it.
    if let Some((barrier, cell)) = gate.barrier {
        barrier.ready(cell);
        bounded(deadline, async {
            while !barrier.released(cell) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .map_err(|cut| {
            CellFailure::cut(cut, "waiting for the other shards (--barrier)", timeout)
        })?;
    }
    let barrier_lost = gate.barrier.is_some_and(|(barrier, _)| barrier.broken());
    // The start time: every shard's first measured phase begins at the same time.
    let start_late_ms = match gate.at {
        None => None,
        Some(at) => {
            if let Ok(wait) = (at - chrono::Utc::now()).to_std() {
                bounded(deadline, tokio::time::sleep(wait))
                    .await
                    .map_err(|cut| CellFailure::cut(cut, "waiting for the start time", timeout))?;
            }
            let late = (chrono::Utc::now() - at)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            Some(late.max(0) as f64 / 1000.0)
        }
    };
    let work_at_start = resources::WorkCounters::read();
    let measured_from = chrono::Utc::now();
    let first_send_nanos = recorder.now_nanos();
    recorder.start_seconds(first_send_nanos);
    if announce_phase {
        // Without progress bars, a line marks where set-up and warm-up end (a log reader, or
        // a script waiting to inject a fault into the measured phase, sees it).
        eprintln!("busbench: {backend}/{mode}: measured phase began");
    }
    let phase_start = tokio::time::Instant::now();
    let phase_over = CancellationToken::new();
    let fault_tasks: Vec<_> = scenario
        .faults
        .iter()
        .filter_map(|fault| {
            let command = fault.command_for(backend)?;
            Some(tokio::spawn(faults::run(
                faults::PlannedFault {
                    command,
                    at: fault.at(),
                    timeout: fault.timeout(),
                },
                recorder.clone(),
                phase_start,
                phase_over.clone(),
                deadline,
            )))
        })
        .collect();
    let publishers: Vec<_> = (0..scenario.publishers.get())
        .map(|index| {
            tokio::spawn(load::publish(
                bus.clone(),
                plan.clone(),
                index,
                recorder.clone(),
                sent_counter.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut reports = Vec::new();
    let mut publisher_failures = 0;
    for publisher in publishers {
        match publisher.await {
            Ok(report) => reports.push(report),
            Err(_) => publisher_failures += 1,
        }
    }
    let stopped_early = stop.is_cancelled();
    // Every message handed to the bus counts as sent, finished publisher or not.
    let sent = sent_counter.load(Ordering::Acquire);
    let unconfirmed: u64 = reports.iter().map(|r| r.unconfirmed).sum();
    let publish_errors: u64 = reports.iter().map(|r| r.errors).sum();
    let acknowledged: u64 = reports.iter().map(|r| r.acknowledged).sum();
    // Drain: every acknowledged message must be handled; messages whose acknowledgement
    // failed may still have been stored, so they get a short grace to arrive too.
    let mut completed = !stopped_early
        && publisher_failures == 0
        && bounded(deadline, async {
            while !recorder.all_acknowledged_handled(acknowledged) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .is_ok();
    if completed && recorder.distinct() < sent {
        let grace = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        let _ = bounded(grace, async {
            while recorder.distinct() < sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
    completed &= !interrupted();
    stop.cancel();
    let _ = watchdog.await;
    // Faults not yet due are not reached; one still running ends by its own bound.
    phase_over.cancel();
    let mut fault_runs = Vec::new();
    for task in fault_tasks {
        if let Ok(run) = task.await {
            fault_runs.push(run);
        }
    }
    let work_at_end = resources::WorkCounters::read();
    let tasks_at_end = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks() as u64;
    let mut publish_histogram = latency::new_histogram();
    let mut send_lag_histogram = latency::new_histogram();
    let mut offered = SecondCounts::default();
    let mut acknowledged_per_second = SecondCounts::default();
    for report in &reports {
        let _ = publish_histogram.add(&report.latency);
        if let Some(send_lag) = &report.send_lag {
            let _ = send_lag_histogram.add(send_lag);
        }
        offered.merge(&report.offered);
        acknowledged_per_second.merge(&report.acknowledged_per_second);
    }
    let mut first_error = reports.iter().find_map(|r| r.first_error.clone());
    if publisher_failures > 0 {
        first_error.get_or_insert_with(|| format!("{publisher_failures} publishers panicked"));
    }
    Ok(Measured {
        sent,
        acknowledged,
        publish_errors,
        unconfirmed,
        first_error,
        publish_histogram,
        send_lag_histogram,
        last_ack_nanos: reports.iter().map(|r| r.last_ack_nanos).max().unwrap_or(0),
        first_send_nanos,
        completed,
        broker_version: None,
        tasks_at_end,
        interrupted: interrupted(),
        close_error: None,
        teardown_cut: None,
        work: (work_at_start, work_at_end),
        fault_runs,
        kept_topics: Vec::new(),
        offered,
        acknowledged_per_second,
        measured_from,
        start_late_ms,
        warm_up,
        quiet,
        barrier_lost,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_cell(
    scenario: &Scenario,
    backend: BackendKind,
    mode: Mode,
    options: &RunOptions,
    run_id: &str,
    known_unreachable: Option<&str>,
    gate: StartGate<'_>,
) -> (CellResult, Option<String>, bool) {
    let scenario = &scenario.for_backend(backend);
    release_freed_memory();
    reset_peak_rss();
    let runtime = new_runtime(scenario);
    let handle = runtime.handle().clone();
    // The sampler thread exists before the baseline, so it is not counted as a leak.
    let sampler = progress::Sampler::start(handle.clone());
    let tasks_baseline = resources::alive_tasks(&handle);
    let threads_baseline = resources::thread_count();
    let rss_baseline = resources::rss_bytes();
    let cpu_before = resources::cpu_time();
    let total = scenario.total_messages();
    let epoch = Instant::now();
    let mut recorder = Recorder::new(epoch, total, scenario.aggregates, mode == Mode::Envelope);
    if !scenario.faults.is_empty() {
        recorder = recorder.with_timeline(scenario.timeout() + Duration::from_secs(10));
    }
    recorder = recorder.with_seconds(scenario.timeout() + Duration::from_secs(10));
    let recorder = Arc::new(recorder);
    let bar = progress::CellProgress::new(options.progress, backend, mode, total);
    let sent_counter = Arc::new(AtomicU64::new(0));
    sampler.watch(recorder.clone(), sent_counter.clone(), bar.clone());
    let measured = match known_unreachable {
        Some(error) => Err(CellFailure {
            message: format!("cannot use {backend}: {error}"),
            kind: FailureKind::Unreachable,
            teardown_cut: None,
        }),
        None => runtime.block_on(drive(
            scenario,
            backend,
            mode,
            options,
            run_id,
            recorder.clone(),
            sent_counter,
            gate,
        )),
    };
    let cpu = resources::cpu_time().saturating_sub(cpu_before);
    // Closed buses end their tasks within moments; after an abandoned teardown or an
    // interruption nothing more is waited for (what is left is reported as leaked).
    let abandoned = match &measured {
        Ok(m) => m.teardown_cut.is_some(),
        Err(f) => f.teardown_cut.is_some(),
    };
    let settle = if abandoned || interrupted() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let tasks_after = resources::settle(tasks_baseline, settle, || resources::alive_tasks(&handle));
    let threads_after = resources::settle(threads_baseline, settle, resources::thread_count);
    let rss_after = resources::rss_bytes();
    let samples = sampler.stop();
    bar.finish();
    // A client call stuck in a blocking thread must not hold the run past the cell.
    runtime.shutdown_timeout(Duration::from_secs(1));

    let received = recorder.snapshot();
    let mut failures = Vec::new();
    let mut unreachable = false;
    let mut interrupted_cell = false;
    let measured = match measured {
        Ok(measured) => Some(measured),
        Err(failure) => {
            unreachable = failure.kind == FailureKind::Unreachable;
            interrupted_cell = failure.kind == FailureKind::Interrupted;
            failures.push(failure.message);
            failures.extend(failure.teardown_cut);
            None
        }
    };
    let (sent, acknowledged, publish_errors, unconfirmed, first_send, last_ack) = match &measured {
        Some(m) => (
            m.sent,
            m.acknowledged,
            m.publish_errors,
            m.unconfirmed,
            m.first_send_nanos,
            m.last_ack_nanos,
        ),
        None => (0, 0, 0, 0, 0, 0),
    };
    let (publish_histogram, send_lag_histogram) = match &measured {
        Some(m) => (m.publish_histogram.clone(), m.send_lag_histogram.clone()),
        None => (latency::new_histogram(), latency::new_histogram()),
    };
    if let Some(m) = &measured {
        interrupted_cell |= m.interrupted;
        if let Some(error) = &m.first_error
            && m.publish_errors > scenario.thresholds.max_publish_errors
        {
            failures.push(format!(
                "{} publishes failed (at most {}); first: {error}",
                m.publish_errors, scenario.thresholds.max_publish_errors
            ));
        }
        if let Some(error) = &m.close_error {
            failures.push(error.clone());
        }
        if !m.completed && !m.interrupted {
            failures.push(format!(
                "timed out after {:?}: {} of {} messages handled ({} sent, {} acknowledged, {} \
                 unconfirmed)",
                scenario.timeout(),
                received.distinct,
                total,
                m.sent,
                m.acknowledged,
                m.unconfirmed
            ));
        }
        failures.extend(m.teardown_cut.clone());
    }
    let lost = recorder.acknowledged_not_handled();
    if lost > 0 {
        failures.push(if measured.as_ref().is_some_and(|m| m.completed) {
            format!("{lost} messages acknowledged by the broker were never handled")
        } else {
            format!(
                "{lost} messages acknowledged by the broker were not handled when the cell ended"
            )
        });
    }
    let per_message = |cpu: Duration| {
        if received.distinct > 0 {
            cpu.as_secs_f64() * 1e6 / received.distinct as f64
        } else {
            0.0
        }
    };
    let whole_cell_cpu_us_per_msg = per_message(cpu);
    let e2e_histogram = recorder.e2e_histogram();
    let publish_seconds = last_ack.saturating_sub(first_send) as f64 / 1e9;
    let e2e_seconds = received.last_handled_nanos.saturating_sub(first_send) as f64 / 1e9;
    let success_rate = success_rate(total, received.distinct);
    let e2e_rate = per_second(received.distinct, e2e_seconds);
    let mut cell = CellResult {
        backend,
        mode,
        status: CellStatus::Ok,
        failures,
        planned: total,
        sent,
        acknowledged,
        publish_errors,
        unconfirmed,
        received: received.distinct,
        lost,
        duplicates: received.duplicates,
        order_violations: received.order_violations,
        success_rate,
        publish_seconds,
        e2e_seconds,
        throughput: Throughput {
            publish_msgs_per_sec: per_second(acknowledged, publish_seconds),
            e2e_msgs_per_sec: e2e_rate,
            e2e_mb_per_sec: e2e_rate * scenario.payload_bytes as f64 / 1e6,
        },
        latency_us: Latency {
            publish: Percentiles::of(&publish_histogram),
            e2e: Percentiles::of(&e2e_histogram),
            send_lag: Percentiles::of(&send_lag_histogram),
        },
        histograms: Histograms {
            publish: latency::encode(&publish_histogram),
            e2e: latency::encode(&e2e_histogram),
            send_lag: latency::encode_if_any(&send_lag_histogram),
        },
        memory: Memory {
            rss_baseline_bytes: rss_baseline,
            rss_peak_bytes: samples.rss_peak.max(resources::rss_peak_bytes()),
            rss_growth_bytes: rss_after as i64 - rss_baseline as i64,
        },
        tasks: Tasks {
            baseline: tasks_baseline,
            peak: samples
                .tasks_peak
                .max(measured.as_ref().map_or(0, |m| m.tasks_at_end)),
            leaked: tasks_after.saturating_sub(tasks_baseline),
        },
        threads: Threads {
            baseline: threads_baseline,
            peak: samples.threads_peak,
            leaked: threads_after.saturating_sub(threads_baseline),
        },
        cpu_us_per_msg: measured.as_ref().map_or(whole_cell_cpu_us_per_msg, |m| {
            per_message(m.work.1.cpu.saturating_sub(m.work.0.cpu))
        }),
        whole_cell_cpu_us_per_msg,
        ceiling_msgs_per_sec: None,
        bare_client_msgs_per_sec: None,
        ceiling_cpu_us_per_msg: None,
        efficiency: None,
        work_per_msg: measured.as_ref().map_or_else(Default::default, |m| {
            m.work.1.per_message_since(&m.work.0, received.distinct)
        }),
        warnings: Vec::new(),
        kept_topics: measured
            .as_ref()
            .map(|m| m.kept_topics.clone())
            .unwrap_or_default(),
        faults: Vec::new(),
        repeats: None,
        timeline: Vec::new(),
        timeline_summary: None,
        search: None,
        measured_from: measured.as_ref().map(|m| m.measured_from),
        start_late_ms: measured.as_ref().and_then(|m| m.start_late_ms),
        warmup_messages: measured.as_ref().map(|m| m.warm_up.0),
        warmup_ms: measured.as_ref().map(|m| m.warm_up.1),
        quiet_wait_ms: measured.as_ref().and_then(|m| m.quiet.map(|q| q.waited_ms)),
        busy_at_start: measured
            .as_ref()
            .and_then(|m| m.quiet.and_then(|q| q.busy_share)),
        shards: Vec::new(),
    };
    if measured.as_ref().is_some_and(|m| m.barrier_lost) {
        cell.warnings.push(
            "the shards' barrier was lost (shard 0 went away): this cell began without waiting \
             for the other shards"
                .into(),
        );
    }
    if let Some(busy) = cell
        .busy_at_start
        .filter(|busy| *busy > resources::QUIET_BUSY_SHARE)
    {
        cell.warnings.push(format!(
            "the machine was still {:.0}% busy when the measured phase began (after waiting \
             {:.1} s for it to quiet down): another load shares its CPUs, and the figures move \
             with it",
            busy * 100.0,
            cell.quiet_wait_ms.unwrap_or_default() / 1000.0
        ));
    }
    if let Some(late) = cell.start_late_ms.filter(|late| *late > LATE_START_MS) {
        cell.warnings.push(format!(
            "the measured phase began {:.2} s after the start time (--start-at): set-up and \
             warm-up took longer than the time left, or the time had passed",
            late / 1000.0
        ));
    }
    if let Some(m) = &measured {
        cell.timeline = timeline::build(
            &m.offered,
            &m.acknowledged_per_second,
            &recorder.handled_seconds(),
        );
        cell.timeline_summary = timeline::summarise(&cell.timeline);
        let timeline = recorder.timeline();
        for run in &m.fault_runs {
            let fault = faults::analyse(run, &timeline);
            if let Some(error) = &fault.error {
                cell.failures
                    .push(format!("fault `{}`: {error}", fault.command));
            }
            cell.faults.push(fault);
        }
    }
    apply_thresholds(&mut cell, scenario);
    for line in cell.failures.iter_mut().chain(cell.warnings.iter_mut()) {
        *line = crate::redact::text(line);
    }
    if interrupted_cell {
        cell.status = CellStatus::Interrupted;
        if measured.is_some() {
            cell.failures.insert(0, "interrupted".into());
        }
    }
    for fault in &cell.faults {
        eprintln!(
            "busbench: {backend}/{mode}: fault `{}` at {:.1}s: recovery {}, {} acknowledged lost, {} duplicates",
            fault.command,
            fault.started_seconds.unwrap_or(fault.at_seconds),
            fault
                .recovery_seconds
                .map_or("none".to_owned(), |r| format!("{r:.1}s")),
            cell.lost,
            cell.duplicates
        );
    }
    if !options.progress {
        eprintln!(
            "busbench: {backend}/{mode}: {} sent, {} received, {:.0} msg/s end to end, {}",
            cell.sent,
            cell.received,
            cell.throughput.e2e_msgs_per_sec,
            match cell.status {
                CellStatus::Ok => "ok".to_owned(),
                _ => format!("FAILED: {}", cell.failures.join("; ")),
            }
        );
    }
    let version = measured.and_then(|m| m.broker_version);
    (cell, version, unreachable)
}

/// Checks a cell against the scenario's thresholds; any failure marks it failed.
pub fn apply_thresholds(cell: &mut CellResult, scenario: &Scenario) {
    for check in threshold_checks(cell, &scenario.thresholds) {
        if let Some(failure) = check.failure {
            cell.failures.push(failure);
        }
    }
    if !cell.failures.is_empty() {
        cell.status = CellStatus::Failed;
    }
}

/// One `[thresholds]` limit checked against a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdCheck {
    /// What was checked, with its limit (`success rate >= 1`).
    pub name: String,
    /// Why the cell failed it; `None` when it passed.
    pub failure: Option<String>,
}

/// Every threshold of `thresholds` checked against `cell`'s figures, in a fixed order (the
/// end-to-end p99 only when the scenario sets it). Failed publishes beyond the allowance are
/// judged by the run itself, which knows the first error.
pub fn threshold_checks(cell: &CellResult, t: &crate::scenario::Thresholds) -> Vec<ThresholdCheck> {
    let check = |name: String, failed: bool, failure: String| ThresholdCheck {
        name,
        failure: failed.then_some(failure),
    };
    let mut checks = vec![
        check(
            format!("success rate >= {}", t.min_success_rate),
            cell.success_rate < t.min_success_rate,
            format!(
                "success rate {:.4} is below {}",
                cell.success_rate, t.min_success_rate
            ),
        ),
        check(
            format!("order violations <= {}", t.max_order_violations),
            cell.order_violations > t.max_order_violations,
            format!(
                "{} order violations (at most {})",
                cell.order_violations, t.max_order_violations
            ),
        ),
        check(
            format!("leaked tasks <= {}", t.max_leaked_tasks),
            cell.tasks.leaked > t.max_leaked_tasks,
            format!(
                "{} tasks left after close (at most {})",
                cell.tasks.leaked, t.max_leaked_tasks
            ),
        ),
        check(
            format!("leaked threads <= {}", t.max_leaked_threads),
            cell.threads.leaked > t.max_leaked_threads,
            format!(
                "{} threads left after close (at most {})",
                cell.threads.leaked, t.max_leaked_threads
            ),
        ),
    ];
    if let Some(limit_ms) = t.max_e2e_p99_ms {
        let p99_ms = cell.latency_us.e2e.p99 as f64 / 1000.0;
        checks.push(check(
            format!("end-to-end p99 <= {limit_ms} ms"),
            p99_ms > limit_ms,
            format!("end-to-end p99 {p99_ms:.1} ms is above {limit_ms} ms"),
        ));
    }
    checks
}

async fn broker_version(
    backend: BackendKind,
    options: &RunOptions,
    nats: Option<&crate::bus::NatsConfig>,
) -> Option<String> {
    match backend {
        BackendKind::Nats => {
            let nats = nats?;
            let client = crate::bus::nats_connect_options(nats)
                .await
                .ok()?
                .connect(nats.url.as_str())
                .await
                .ok()?;
            let version = client.server_info().version;
            let _ = client.drain().await;
            Some(version)
        }
        BackendKind::Kafka => options.kafka_version.clone(),
        BackendKind::Memory => Some(env!("CARGO_PKG_VERSION").to_owned()),
    }
}

/// Returns memory freed by earlier cells to the OS, so that each cell's RSS starts clean.
fn release_freed_memory() {
    // SAFETY: mi_collect only frees and returns unused memory of mimalloc's heaps.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    // The C libraries (librdkafka) allocate with the system's malloc.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resets the kernel's peak-RSS mark (VmHWM) so that it covers this cell only.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::{RepeatSpread, paired, unsteady_efficiency};

    #[test]
    fn efficiencies_that_spread_widely_are_called_unsteady() {
        let unsteady = |runs: &[f64]| unsteady_efficiency(runs, RepeatSpread::spread_of(runs));
        assert_eq!(unsteady(&[0.92, 0.75, 0.98]), None);
        let warning = unsteady(&[1.18, 0.50, 1.12]).expect("61% apart");
        assert!(
            warning.starts_with("bus efficiency runs spread 61% (118%, 50%, 112%)"),
            "{warning}"
        );
        assert_eq!(unsteady(&[0.9]), None);
    }

    #[test]
    fn each_run_is_paired_with_the_ceiling_run_before_it() {
        // A slow spell caught the first ceiling run and the first run alike.
        assert_eq!(
            paired(&[280.0, 357.0, 359.0], 3),
            vec![Some(280.0), Some(357.0), Some(359.0)]
        );
        // The ceiling failed after two runs: the third is held against their median.
        assert_eq!(
            paired(&[280.0, 360.0], 3),
            vec![Some(280.0), Some(360.0), Some(320.0)]
        );
        // An interrupted cell measured a ceiling run it never ran the cell after.
        assert_eq!(paired(&[300.0, 310.0], 1), vec![Some(300.0)]);
        assert_eq!(paired(&[], 2), vec![None, None]);
    }
}
