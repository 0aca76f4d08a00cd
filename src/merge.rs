//! `busbench merge`: the results of a split run's shards (`busbench run --shard I/N`), added
//! up into one result that every exporter and `busbench compare` read like any other.
//!
//! Counts are summed; latency histograms are merged exactly (HdrHistogram `add`: percentiles
//! cannot be averaged, histograms can); throughput is counted over the union of the shards'
//! measured windows on the wall clock, so a shard that started late lowers it instead of
//! inflating it; peak RSS and CPU are listed per host.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::metrics::latency::{self, Percentiles};
use crate::metrics::model::{
    CellResult, CellShard, CellStatus, Histograms, Latency, MergedShard, RunResult, Throughput,
    TimelineSecond, WorkPerMessage, per_second, success_rate,
};
use crate::metrics::timeline;
use crate::report::compare::{self, CompareError};
use crate::scenario::{BackendKind, Mode};

/// Shards whose measured phases began further apart than this share of the merged window
/// (and more than [`SKEW_FLOOR_MS`]) get a warning: they did not all load the brokers at once.
pub const SKEW_WARNING_SHARE: f64 = 0.02;
/// Start offsets up to this are never flagged, ms.
pub const SKEW_FLOOR_MS: f64 = 100.0;

/// Why shard results cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file could not be read, or is not a busbench result.
    #[error("{0}")]
    Read(#[from] CompareError),
    /// A result of one process, not of a shard.
    #[error(
        "{}: not a shard of a split run (it has no `shard`); merge the results of `busbench run --shard I/N`",
        .0.display()
    )]
    NotAShard(PathBuf),
    /// Two files come from different runs.
    #[error(
        "{} and {} are shards of different runs (run ids {first} and {other})",
        .first_path.display(), .other_path.display()
    )]
    DifferentRuns {
        /// The first file.
        first_path: PathBuf,
        /// Its run id.
        first: String,
        /// The file that differs.
        other_path: PathBuf,
        /// Its run id.
        other: String,
    },
    /// Two files did different work.
    #[error(
        "{} and {} ran different workloads (hashes {first} and {other}); shards must run the same scenario",
        .first_path.display(), .other_path.display()
    )]
    DifferentWorkloads {
        /// The first file.
        first_path: PathBuf,
        /// Its workload hash.
        first: String,
        /// The file that differs.
        other_path: PathBuf,
        /// Its workload hash.
        other: String,
    },
    /// Two files disagree on the number of shards.
    #[error(
        "{} is shard {first_index} of {first} and {} is shard {other_index} of {other}: the shard counts differ",
        .first_path.display(), .other_path.display()
    )]
    DifferentCounts {
        /// The first file.
        first_path: PathBuf,
        /// Its index.
        first_index: u32,
        /// Its count.
        first: u32,
        /// The file that differs.
        other_path: PathBuf,
        /// Its index.
        other_index: u32,
        /// Its count.
        other: u32,
    },
    /// Two files are the same shard.
    #[error("{} and {} are both shard {index}", .first.display(), .other.display())]
    DuplicateShard {
        /// The shard.
        index: u32,
        /// The first file.
        first: PathBuf,
        /// The second.
        other: PathBuf,
    },
    /// No result was given.
    #[error("no result to merge")]
    NoResults,
    /// Shards are missing.
    #[error("run {run_id} has {count} shards; missing: {}", list(.missing))]
    MissingShards {
        /// The run.
        run_id: String,
        /// How many it has.
        count: u32,
        /// The missing indexes.
        missing: Vec<u32>,
    },
}

fn list(indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(|i| format!("shard {i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the shard results at `paths` and merges them.
pub fn merge_files(paths: &[PathBuf]) -> Result<RunResult, MergeError> {
    let mut shards = Vec::new();
    for path in paths {
        shards.push((path.clone(), compare::read_result(path)?));
    }
    merge(&shards)
}

/// Merges the results of every shard of one run (each with the file it came from), after
/// checking that they are exactly that: the same run id, workload and shard count, each
/// shard once, none missing.
pub fn merge(shards: &[(PathBuf, RunResult)]) -> Result<RunResult, MergeError> {
    let mut by_index: BTreeMap<u32, &(PathBuf, RunResult)> = BTreeMap::new();
    let Some((first_path, first)) = shards.first() else {
        return Err(MergeError::NoResults);
    };
    let first_shard = first
        .shard
        .as_ref()
        .ok_or_else(|| MergeError::NotAShard(first_path.clone()))?;
    for entry in shards {
        let (path, result) = entry;
        let shard = result
            .shard
            .as_ref()
            .ok_or_else(|| MergeError::NotAShard(path.clone()))?;
        if result.run_id != first.run_id {
            return Err(MergeError::DifferentRuns {
                first_path: first_path.clone(),
                first: first.run_id.clone(),
                other_path: path.clone(),
                other: result.run_id.clone(),
            });
        }
        if result.scenario.hash != first.scenario.hash {
            return Err(MergeError::DifferentWorkloads {
                first_path: first_path.clone(),
                first: first.scenario.hash.clone(),
                other_path: path.clone(),
                other: result.scenario.hash.clone(),
            });
        }
        if shard.count != first_shard.count {
            return Err(MergeError::DifferentCounts {
                first_path: first_path.clone(),
                first_index: first_shard.index,
                first: first_shard.count,
                other_path: path.clone(),
                other_index: shard.index,
                other: shard.count,
            });
        }
        if let Some((earlier, _)) = by_index.insert(shard.index, entry) {
            return Err(MergeError::DuplicateShard {
                index: shard.index,
                first: earlier.clone(),
                other: path.clone(),
            });
        }
    }
    let missing: Vec<u32> = (0..first_shard.count)
        .filter(|i| !by_index.contains_key(i))
        .collect();
    if !missing.is_empty() {
        return Err(MergeError::MissingShards {
            run_id: first.run_id.clone(),
            count: first_shard.count,
            missing,
        });
    }
    let ordered: Vec<&(PathBuf, RunResult)> = by_index.into_values().collect();
    // Every cell any shard ran, in the order the first shard ran them.
    let mut keys: Vec<(BackendKind, Mode)> = Vec::new();
    for (_, result) in &ordered {
        for cell in &result.cells {
            if !keys.contains(&(cell.backend, cell.mode)) {
                keys.push((cell.backend, cell.mode));
            }
        }
    }
    let cells: Vec<CellResult> = keys
        .iter()
        .map(|&(backend, mode)| {
            let parts: Vec<ShardCell> = ordered
                .iter()
                .map(|(_, result)| ShardCell {
                    index: result.shard.as_ref().map_or(0, |s| s.index),
                    host: result
                        .shard
                        .as_ref()
                        .map_or_else(String::new, |s| s.host.clone()),
                    cell: result
                        .cells
                        .iter()
                        .find(|c| c.backend == backend && c.mode == mode),
                })
                .collect();
            merge_cell(backend, mode, &parts, first)
        })
        .collect();
    let merged_from: Vec<MergedShard> = ordered
        .iter()
        .map(|(path, result)| {
            let shard = result.shard.as_ref().expect("checked above");
            MergedShard {
                index: shard.index,
                host: shard.host.clone(),
                file: path.display().to_string(),
                started_at: result.started_at.clone(),
                finished_at: result.finished_at.clone(),
                passed: result.passed,
                environment: result.environment.clone(),
            }
        })
        .collect();
    let passed =
        cells.iter().all(|c| c.status == CellStatus::Ok) && ordered.iter().all(|(_, r)| r.passed);
    Ok(RunResult {
        schema_version: first.schema_version,
        scenario: first.scenario.clone(),
        environment: first.environment.clone(),
        started_at: ordered
            .iter()
            .map(|(_, r)| r.started_at.clone())
            .min()
            .unwrap_or_default(),
        finished_at: ordered
            .iter()
            .map(|(_, r)| r.finished_at.clone())
            .max()
            .unwrap_or_default(),
        repeat: first.repeat,
        cells,
        passed,
        run_id: first.run_id.clone(),
        shard: None,
        merged_from,
    })
}

/// One shard's cell (absent when the shard did not run it).
struct ShardCell<'a> {
    index: u32,
    host: String,
    cell: Option<&'a CellResult>,
}

fn merge_cell(
    backend: BackendKind,
    mode: Mode,
    parts: &[ShardCell],
    first: &RunResult,
) -> CellResult {
    let present: Vec<(&ShardCell, &CellResult)> = parts
        .iter()
        .filter_map(|part| part.cell.map(|cell| (part, cell)))
        .collect();
    let sum = |field: fn(&CellResult) -> u64| present.iter().map(|(_, c)| field(c)).sum::<u64>();
    // The largest of the shards' figures, where any has one.
    let largest = |field: fn(&CellResult) -> Option<f64>| {
        present
            .iter()
            .filter_map(|(_, c)| field(c))
            .reduce(f64::max)
    };
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    for part in parts.iter().filter(|p| p.cell.is_none()) {
        failures.push(format!("shard {} has no {backend}/{mode} cell", part.index));
    }
    for (part, cell) in &present {
        failures.extend(
            cell.failures
                .iter()
                .map(|f| format!("shard {}: {f}", part.index)),
        );
        warnings.extend(
            cell.warnings
                .iter()
                .map(|w| format!("shard {}: {w}", part.index)),
        );
    }
    // Histograms merged exactly.
    let mut publish = latency::new_histogram();
    let mut e2e = latency::new_histogram();
    let mut send_lag = latency::new_histogram();
    for (part, cell) in &present {
        for (name, text, into) in [
            ("publish", &cell.histograms.publish, &mut publish),
            ("end-to-end", &cell.histograms.e2e, &mut e2e),
            ("send-lag", &cell.histograms.send_lag, &mut send_lag),
        ] {
            match latency::decode(text) {
                Some(histogram) => {
                    if into.add(&histogram).is_err() {
                        failures.push(format!(
                            "shard {}'s {name} histogram does not fit the merged one",
                            part.index
                        ));
                    }
                }
                None if text.is_empty() => {}
                None => failures.push(format!(
                    "shard {}'s {name} histogram cannot be read",
                    part.index
                )),
            }
        }
    }
    // The union of the measured windows on the wall clock.
    let earliest = present
        .iter()
        .filter_map(|(_, cell)| cell.measured_from)
        .min();
    // How long after the earliest shard a shard's measured phase began, s.
    let offset_of = |cell: &CellResult| -> f64 {
        match (earliest, cell.measured_from) {
            (Some(earliest), Some(from)) => seconds_between(earliest, from),
            _ => 0.0,
        }
    };
    let window_end = |seconds: fn(&CellResult) -> f64| -> f64 {
        present
            .iter()
            .map(|(_, cell)| offset_of(cell) + seconds(cell))
            .fold(0.0, f64::max)
    };
    let publish_seconds = window_end(|c| c.publish_seconds);
    let e2e_seconds = window_end(|c| c.e2e_seconds);
    let offsets: BTreeMap<u32, f64> = present
        .iter()
        .filter(|(_, cell)| cell.measured_from.is_some())
        .map(|(part, cell)| (part.index, offset_of(cell) * 1000.0))
        .collect();
    let largest_offset_ms = offsets.values().copied().fold(0.0, f64::max);
    if largest_offset_ms > SKEW_FLOOR_MS
        && largest_offset_ms > SKEW_WARNING_SHARE * e2e_seconds * 1000.0
    {
        warnings.push(format!(
            "the shards' measured phases began up to {:.2} s apart ({:.0}% of the merged \
             window): they did not all load the brokers at once, and the throughput, counted \
             over the union of their windows, is lower than what ran together (line them up \
             with --barrier)",
            largest_offset_ms / 1000.0,
            largest_offset_ms / (e2e_seconds * 1000.0).max(1.0) * 100.0
        ));
    }
    let received = sum(|c| c.received);
    let acknowledged = sum(|c| c.acknowledged);
    let planned = sum(|c| c.planned);
    let e2e_rate = per_second(received, e2e_seconds);
    let payload_bytes = first.scenario.settings.payload_bytes as f64;
    let weighted = |value: fn(&CellResult) -> f64| -> f64 {
        if received == 0 {
            return 0.0;
        }
        present
            .iter()
            .map(|(_, c)| value(c) * c.received as f64)
            .sum::<f64>()
            / received as f64
    };
    let weighted_option = |value: fn(&CellResult) -> Option<f64>| -> Option<f64> {
        if received == 0 {
            return None;
        }
        let mut total = 0.0;
        for (_, cell) in &present {
            total += value(cell)? * cell.received as f64;
        }
        Some(total / received as f64)
    };
    let max = |field: fn(&CellResult) -> u64| present.iter().map(|(_, c)| field(c)).max();
    let status = if present
        .iter()
        .any(|(_, c)| c.status == CellStatus::Interrupted)
    {
        CellStatus::Interrupted
    } else {
        CellStatus::Ok
    };
    let mut cell = CellResult {
        backend,
        mode,
        status,
        failures,
        planned,
        sent: sum(|c| c.sent),
        acknowledged,
        publish_errors: sum(|c| c.publish_errors),
        unconfirmed: sum(|c| c.unconfirmed),
        received,
        lost: sum(|c| c.lost),
        duplicates: sum(|c| c.duplicates),
        order_violations: sum(|c| c.order_violations),
        success_rate: success_rate(planned, received),
        publish_seconds,
        e2e_seconds,
        throughput: Throughput {
            publish_msgs_per_sec: per_second(acknowledged, publish_seconds),
            e2e_msgs_per_sec: e2e_rate,
            e2e_mb_per_sec: e2e_rate * payload_bytes / 1e6,
        },
        latency_us: Latency {
            publish: Percentiles::of(&publish),
            e2e: Percentiles::of(&e2e),
            send_lag: Percentiles::of(&send_lag),
        },
        histograms: Histograms {
            publish: latency::encode(&publish),
            e2e: latency::encode(&e2e),
            send_lag: latency::encode_if_any(&send_lag),
        },
        memory: crate::metrics::model::Memory {
            rss_baseline_bytes: max(|c| c.memory.rss_baseline_bytes).unwrap_or(0),
            rss_peak_bytes: max(|c| c.memory.rss_peak_bytes).unwrap_or(0),
            rss_growth_bytes: present
                .iter()
                .map(|(_, c)| c.memory.rss_growth_bytes)
                .max()
                .unwrap_or(0),
        },
        tasks: crate::metrics::model::Tasks {
            baseline: max(|c| c.tasks.baseline).unwrap_or(0),
            peak: max(|c| c.tasks.peak).unwrap_or(0),
            leaked: sum(|c| c.tasks.leaked),
        },
        threads: crate::metrics::model::Threads {
            baseline: max(|c| c.threads.baseline).unwrap_or(0),
            peak: max(|c| c.threads.peak).unwrap_or(0),
            leaked: sum(|c| c.threads.leaked),
        },
        cpu_us_per_msg: weighted(|c| c.cpu_us_per_msg),
        whole_cell_cpu_us_per_msg: weighted(|c| c.whole_cell_cpu_us_per_msg),
        // A ceiling is one process's figure; a sharded run does not measure it.
        ceiling_msgs_per_sec: None,
        bare_client_msgs_per_sec: None,
        ceiling_cpu_us_per_msg: None,
        efficiency: None,
        work_per_msg: WorkPerMessage {
            allocations: weighted_option(|c| c.work_per_msg.allocations),
            allocated_bytes: weighted_option(|c| c.work_per_msg.allocated_bytes),
            context_switches: weighted(|c| c.work_per_msg.context_switches),
        },
        warnings,
        kept_topics: present
            .iter()
            .flat_map(|(_, c)| c.kept_topics.iter().cloned())
            .collect(),
        faults: present
            .iter()
            .flat_map(|(_, c)| c.faults.iter().cloned())
            .collect(),
        repeats: None,
        timeline: Vec::new(),
        timeline_summary: None,
        search: None,
        measured_from: earliest,
        start_late_ms: largest(|c| c.start_late_ms),
        warmup_messages: present
            .iter()
            .map(|(_, c)| c.warmup_messages)
            .sum::<Option<u64>>(),
        warmup_ms: largest(|c| c.warmup_ms),
        quiet_wait_ms: largest(|c| c.quiet_wait_ms),
        busy_at_start: largest(|c| c.busy_at_start),
        shards: parts
            .iter()
            .filter_map(|part| {
                let cell = part.cell?;
                Some(CellShard {
                    index: part.index,
                    host: part.host.clone(),
                    status: cell.status,
                    sent: cell.sent,
                    received: cell.received,
                    lost: cell.lost,
                    e2e_msgs_per_sec: cell.throughput.e2e_msgs_per_sec,
                    e2e_p99_us: cell.latency_us.e2e.p99,
                    rss_peak_bytes: cell.memory.rss_peak_bytes,
                    cpu_us_per_msg: cell.cpu_us_per_msg,
                    start_offset_ms: offsets.get(&part.index).copied(),
                    start_late_ms: cell.start_late_ms,
                })
            })
            .collect(),
    };
    cell.timeline = merge_timelines(
        present
            .iter()
            .map(|(_, c)| (offset_of(c).round() as u32, c.timeline.as_slice()))
            .collect(),
    );
    cell.timeline_summary = timeline::summarise(&cell.timeline);
    crate::runner::apply_thresholds(&mut cell, &first.scenario.settings.for_backend(backend));
    if !cell.failures.is_empty() && cell.status == CellStatus::Ok {
        cell.status = CellStatus::Failed;
    }
    cell
}

/// Seconds from `earlier` to `later` (negative when `later` is earlier).
fn seconds_between(
    earlier: chrono::DateTime<chrono::Utc>,
    later: chrono::DateTime<chrono::Utc>,
) -> f64 {
    (later - earlier)
        .num_microseconds()
        .map_or(0.0, |us| us as f64 / 1e6)
}

/// The shards' timelines added second by second, each shifted by its start (whole seconds
/// after the earliest shard). Counts and backlogs add up; per-second percentiles cannot be
/// merged from percentiles, so the merged seconds have none.
pub fn merge_timelines(shards: Vec<(u32, &[TimelineSecond])>) -> Vec<TimelineSecond> {
    let length = shards
        .iter()
        .map(|(offset, seconds)| *offset as usize + seconds.len())
        .max()
        .unwrap_or(0);
    let mut merged: Vec<TimelineSecond> = (0..length)
        .map(|second| TimelineSecond {
            second: second as u32,
            offered: 0,
            acknowledged: 0,
            handled: 0,
            backlog: 0,
            e2e_p50_us: None,
            e2e_p99_us: None,
        })
        .collect();
    for (offset, seconds) in shards {
        let mut last_backlog = 0;
        for (i, slot) in merged.iter_mut().enumerate().skip(offset as usize) {
            match seconds.get(i - offset as usize) {
                Some(second) => {
                    slot.offered += second.offered;
                    slot.acknowledged += second.acknowledged;
                    slot.handled += second.handled;
                    slot.backlog += second.backlog;
                    last_backlog = second.backlog;
                }
                // A shard that finished keeps its last backlog (0 when it drained).
                None => slot.backlog += last_backlog,
            }
        }
    }
    merged
}
