//! Comparing a run with a baseline: per cell and metric, the baseline, the current value and
//! the change; regressions past the thresholds, and correctness regressions (any loss, order
//! violation, leaked task or thread, failed cell) whatever the thresholds. Repeated runs
//! (`--repeat`) give medians and a spread; a change inside the spread is called inconclusive
//! rather than a regression.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};

use crate::metrics::model::{CellResult, CellStatus, RunResult, SCHEMA_VERSION, median};
use crate::scenario::RegressionThresholds;

/// Why two results cannot be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A file could not be read or is not a busbench result.
    #[error("{}: not a busbench result: {reason}", path.display())]
    NotAResult {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A result was written in another format version.
    #[error("{}: result format version {found}; this busbench reads version {SCHEMA_VERSION}", path.display())]
    SchemaVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// The two runs did different work.
    #[error(
        "the runs used different scenarios ({baseline_name} {baseline_hash} vs {current_name} {current_hash}); comparing them would mean nothing"
    )]
    ScenarioMismatch {
        /// The baseline's scenario name.
        baseline_name: String,
        /// The baseline's workload hash.
        baseline_hash: String,
        /// The current run's scenario name.
        current_name: String,
        /// The current run's workload hash.
        current_hash: String,
    },
}

/// The judgement on one metric of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the threshold.
    Ok,
    /// Better by more than the threshold.
    Improved,
    /// Worse by more than the threshold (and than the runs' spread).
    Regressed,
    /// Worse by more than the threshold, but within the spread of repeated runs.
    Inconclusive,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Improved => "improved",
            Verdict::Regressed => "REGRESSED",
            Verdict::Inconclusive => "too noisy",
        }
    }
}

/// One metric of one cell, baseline against current.
#[derive(Debug, Clone)]
pub struct MetricChange {
    /// `backend/mode`.
    pub cell: String,
    /// The metric's name.
    pub metric: &'static str,
    /// The baseline's value.
    pub baseline: f64,
    /// The current value.
    pub current: f64,
    /// (current - baseline) / baseline, percent.
    pub change_pct: f64,
    /// The judgement.
    pub verdict: Verdict,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Every compared metric.
    pub changes: Vec<MetricChange>,
    /// Correctness regressions and missing cells: each fails the comparison.
    pub correctness: Vec<String>,
    /// Differences of machine or software between the runs (allowed, but flagged).
    pub notes: Vec<String>,
}

impl Comparison {
    /// Whether anything regressed.
    pub fn regressed(&self) -> bool {
        !self.correctness.is_empty() || self.changes.iter().any(|c| c.verdict == Verdict::Regressed)
    }
}

/// Reads a result file for comparison.
pub fn read_result(path: &Path) -> Result<RunResult, CompareError> {
    let not_a_result = |reason: String| CompareError::NotAResult {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| not_a_result(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| not_a_result(e.to_string()))?;
    match value.get("schema_version").and_then(|v| v.as_u64()) {
        Some(version) if version == u64::from(SCHEMA_VERSION) => {}
        Some(found) => {
            return Err(CompareError::SchemaVersion {
                path: path.to_owned(),
                found,
            });
        }
        None => return Err(not_a_result("it has no schema_version".into())),
    }
    serde_json::from_value(value).map_err(|e| not_a_result(e.to_string()))
}

/// Which way a metric is better, and which threshold applies.
#[derive(Clone, Copy)]
enum Kind {
    Throughput,
    Latency,
    Memory,
}

fn values(
    cell: &CellResult,
    pick: fn(&CellResult) -> f64,
    spread: Option<fn(&CellResult) -> Vec<f64>>,
) -> (f64, Vec<f64>) {
    match (&cell.repeats, spread) {
        (Some(_), Some(all)) => {
            let runs = all(cell);
            (median(&runs), runs)
        }
        _ => (pick(cell), vec![pick(cell)]),
    }
}

/// Compares `current` with `baseline` under `thresholds`.
pub fn compare(
    baseline: &RunResult,
    current: &RunResult,
    thresholds: &RegressionThresholds,
) -> Result<Comparison, CompareError> {
    if baseline.scenario.hash != current.scenario.hash {
        return Err(CompareError::ScenarioMismatch {
            baseline_name: baseline.scenario.name.clone(),
            baseline_hash: baseline.scenario.hash.clone(),
            current_name: current.scenario.name.clone(),
            current_hash: current.scenario.hash.clone(),
        });
    }
    let mut comparison = Comparison::default();
    let (b, c) = (&baseline.environment, &current.environment);
    if b.cpu_model != c.cpu_model || b.cores != c.cores {
        comparison.notes.push(format!(
            "different machines: baseline {} ({} cores), current {} ({} cores)",
            b.cpu_model, b.cores, c.cpu_model, c.cores
        ));
    }
    if b.brokers != c.brokers {
        comparison.notes.push(format!(
            "different broker versions: baseline {:?}, current {:?}",
            b.brokers, c.brokers
        ));
    }
    if b.busbench_version != c.busbench_version {
        comparison.notes.push(format!(
            "different busbench versions: baseline {}, current {}",
            b.busbench_version, c.busbench_version
        ));
    }
    type Pick = fn(&CellResult) -> f64;
    type Runs = Option<fn(&CellResult) -> Vec<f64>>;
    let metrics: [(&str, Kind, Pick, Runs); 5] = [
        (
            "end-to-end msg/s",
            Kind::Throughput,
            |c| c.throughput.e2e_msgs_per_sec,
            Some(|c| {
                c.repeats
                    .as_ref()
                    .map(|r| r.e2e_msgs_per_sec.clone())
                    .unwrap_or_default()
            }),
        ),
        (
            "publish msg/s",
            Kind::Throughput,
            |c| c.throughput.publish_msgs_per_sec,
            Some(|c| {
                c.repeats
                    .as_ref()
                    .map(|r| r.publish_msgs_per_sec.clone())
                    .unwrap_or_default()
            }),
        ),
        (
            "e2e p99 µs",
            Kind::Latency,
            |c| c.latency_us.e2e.p99 as f64,
            Some(|c| {
                c.repeats
                    .as_ref()
                    .map(|r| r.e2e_p99_us.iter().map(|v| *v as f64).collect())
                    .unwrap_or_default()
            }),
        ),
        (
            "publish p99 µs",
            Kind::Latency,
            |c| c.latency_us.publish.p99 as f64,
            None,
        ),
        (
            "peak RSS bytes",
            Kind::Memory,
            |c| c.memory.rss_peak_bytes as f64,
            None,
        ),
    ];
    for base in &baseline.cells {
        let name = format!("{}/{}", base.backend, base.mode);
        let Some(now) = current
            .cells
            .iter()
            .find(|c| c.backend == base.backend && c.mode == base.mode)
        else {
            comparison
                .correctness
                .push(format!("{name}: missing from the current run"));
            continue;
        };
        if now.status != CellStatus::Ok {
            comparison
                .correctness
                .push(format!("{name}: failed: {}", now.failures.join("; ")));
        }
        for (what, count) in [
            ("messages lost", now.lost),
            ("order violations", now.order_violations),
            ("tasks left after close", now.tasks.leaked),
            ("threads left after close", now.threads.leaked),
        ] {
            if count > 0 {
                comparison
                    .correctness
                    .push(format!("{name}: {count} {what}"));
            }
        }
        for (metric, kind, pick, runs) in metrics {
            let (base_value, base_runs) = values(base, pick, runs);
            let (now_value, now_runs) = values(now, pick, runs);
            if base_value <= 0.0 {
                continue;
            }
            let change_pct = (now_value - base_value) / base_value * 100.0;
            // Positive "worse" means the metric moved the wrong way.
            let (worse_pct, threshold) = match kind {
                Kind::Throughput => (-change_pct, thresholds.throughput_drop_pct),
                Kind::Latency => (change_pct, thresholds.latency_rise_pct),
                Kind::Memory => (change_pct, thresholds.rss_rise_pct),
            };
            let noise = spread_pct(&base_runs).max(spread_pct(&now_runs));
            let verdict = if worse_pct > threshold {
                if worse_pct <= noise {
                    Verdict::Inconclusive
                } else {
                    Verdict::Regressed
                }
            } else if -worse_pct > threshold {
                Verdict::Improved
            } else {
                Verdict::Ok
            };
            comparison.changes.push(MetricChange {
                cell: name.clone(),
                metric,
                baseline: base_value,
                current: now_value,
                change_pct,
                verdict,
            });
        }
    }
    for now in &current.cells {
        if !baseline
            .cells
            .iter()
            .any(|b| b.backend == now.backend && b.mode == now.mode)
        {
            comparison
                .notes
                .push(format!("{}/{}: not in the baseline", now.backend, now.mode));
        }
    }
    Ok(comparison)
}

fn spread_pct(runs: &[f64]) -> f64 {
    crate::metrics::model::RepeatSpread::spread_of(runs)
}

fn format_value(metric: &str, value: f64) -> String {
    if metric.contains("bytes") {
        format!("{:.1} MiB", value / (1024.0 * 1024.0))
    } else {
        format!("{value:.0}")
    }
}

fn table(comparison: &Comparison, markdown: bool) -> Table {
    let mut table = Table::new();
    table.load_style(if markdown {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    table.force_no_tty();
    table.set_header(["cell", "metric", "baseline", "current", "change", "verdict"]);
    for change in &comparison.changes {
        table.add_row([
            change.cell.clone(),
            change.metric.to_owned(),
            format_value(change.metric, change.baseline),
            format_value(change.metric, change.current),
            format!("{:+.1}%", change.change_pct),
            change.verdict.label().to_owned(),
        ]);
    }
    for index in 2..5 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn render(comparison: &Comparison, thresholds: &RegressionThresholds, markdown: bool) -> String {
    let mut out = String::new();
    let verdict = if comparison.regressed() {
        "REGRESSION"
    } else {
        "no regression"
    };
    if markdown {
        let _ = writeln!(out, "### busbench: {verdict}\n");
    } else {
        let _ = writeln!(out, "busbench compare: {verdict}");
    }
    let _ = writeln!(
        out,
        "Thresholds: throughput drop {}%, p99 rise {}%, RSS rise {}%; any loss, order violation, \
         leaked task or thread fails.\n",
        thresholds.throughput_drop_pct, thresholds.latency_rise_pct, thresholds.rss_rise_pct
    );
    out.push_str(&table(comparison, markdown).to_string());
    out.push('\n');
    for problem in &comparison.correctness {
        let _ = writeln!(out, "- correctness: {problem}");
    }
    for note in &comparison.notes {
        let _ = writeln!(out, "- note: {note}");
    }
    out
}

/// The comparison for the terminal.
pub fn terminal(comparison: &Comparison, thresholds: &RegressionThresholds) -> String {
    render(comparison, thresholds, false)
}

/// The comparison as markdown, fit for a pull-request comment.
pub fn markdown(comparison: &Comparison, thresholds: &RegressionThresholds) -> String {
    render(comparison, thresholds, true)
}
