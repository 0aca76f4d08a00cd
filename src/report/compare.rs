//! Comparing a run with a baseline: per cell and metric, the baseline, the current value and
//! the change; regressions past the thresholds, and correctness regressions (any loss, order
//! violation, leaked task or thread, failed cell) whatever the thresholds. Repeated runs
//! (`--repeat`) give medians and a spread; a change inside the spread is called inconclusive
//! rather than a regression.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use comfy_table::{CellAlignment, Table};

use crate::metrics::model::{
    CellResult, CellStatus, RepeatSpread, RunResult, SCHEMA_VERSION, median,
};
use crate::scenario::{Mode, RegressionThresholds};

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
    /// The two workload hashes were computed over different field lists (one of them by an
    /// older busbench): the baseline must be recorded again.
    #[error(
        "the baseline's workload hash ({baseline}) was computed by another busbench version than \
         this run's ({current}); record the baseline again with this version"
    )]
    HashVersion {
        /// The baseline's workload hash.
        baseline: String,
        /// The current run's workload hash.
        current: String,
    },
    /// `--same-machine` was asked for, and the runs' environments differ.
    #[error(
        "--same-machine: the runs come from different environments (baseline: {baseline}; current: {current})"
    )]
    DifferentMachines {
        /// The baseline's fingerprint text.
        baseline: String,
        /// The current run's fingerprint text.
        current: String,
    },
}

/// What kind of figure a metric is, which decides where it may gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureClass {
    /// Does not depend on the machine's speed: exact counts, allocations per message, ratios
    /// taken within one run. Gated against a baseline from any machine of the same kind.
    MachineFree,
    /// Depends on the machine (msg/s, µs, RSS): gated only on the same machine.
    Absolute,
}

impl FigureClass {
    fn label(self) -> &'static str {
        match self {
            FigureClass::MachineFree => "machine-free",
            FigureClass::Absolute => "absolute",
        }
    }
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
    /// An absolute figure worse by more than the threshold, on another machine: reported,
    /// never failing.
    Warning,
}

impl Verdict {
    /// The word shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Improved => "improved",
            Verdict::Regressed => "REGRESSED",
            Verdict::Inconclusive => "too noisy",
            Verdict::Warning => "warning",
        }
    }
}

/// Whether absolute figures may fail a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AbsolutePolicy {
    /// Gate them when both runs have the same environment fingerprint, warn otherwise.
    #[default]
    Auto,
    /// Demand the same fingerprint (refuse to compare otherwise) and gate them.
    SameMachine,
    /// Never gate them, only warn (machine-free figures still gate).
    Warn,
}

/// One metric of one cell, baseline against current.
#[derive(Debug, Clone)]
pub struct MetricChange {
    /// `backend/mode`, or `backend/envelope÷raw` for a ratio across modes.
    pub cell: String,
    /// The metric's name.
    pub metric: &'static str,
    /// Machine-free or absolute.
    pub class: FigureClass,
    /// The baseline's value (median of its runs).
    pub baseline: f64,
    /// The current value (median of its runs).
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
    /// Differences of machine or software between the runs, and figures left out.
    pub notes: Vec<String>,
    /// Whether absolute figures could fail this comparison.
    pub absolute_gated: bool,
    /// Whether ratios could fail it: only between machines with as many cores, since the
    /// bus's worker pools use them all while a bare client may not.
    pub ratios_gated: bool,
    /// The baseline's environment fingerprint, and its text.
    pub baseline_fingerprint: (String, String),
    /// The current run's environment fingerprint, and its text.
    pub current_fingerprint: (String, String),
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
    Cpu,
    Memory,
    Allocations,
    Ratio,
}

impl Kind {
    fn class(self) -> FigureClass {
        match self {
            Kind::Allocations | Kind::Ratio => FigureClass::MachineFree,
            Kind::Throughput | Kind::Latency | Kind::Cpu | Kind::Memory => FigureClass::Absolute,
        }
    }

    /// Whether a rise is bad, and the allowed change.
    fn threshold(self, thresholds: &RegressionThresholds) -> (bool, f64) {
        match self {
            Kind::Throughput => (false, thresholds.throughput_drop_pct),
            Kind::Latency => (true, thresholds.latency_rise_pct),
            Kind::Cpu => (true, thresholds.cpu_rise_pct),
            Kind::Memory => (true, thresholds.rss_rise_pct),
            Kind::Allocations => (true, thresholds.allocations_rise_pct),
            Kind::Ratio => (false, thresholds.ratio_drop_pct),
        }
    }
}

/// Every run's value of a metric in a cell: the repeats when the cell was repeated and they
/// carry the metric, else the cell's own value; empty when the cell lacks the metric.
type RunValues = fn(&CellResult) -> Vec<f64>;

fn runs_or(
    cell: &CellResult,
    per_run: fn(&RepeatSpread) -> Vec<f64>,
    single: Option<f64>,
) -> Vec<f64> {
    match cell.repeats.as_ref().map(per_run) {
        Some(runs) if !runs.is_empty() => runs,
        _ => single.into_iter().collect(),
    }
}

/// A cell's bus efficiency, one value per run.
fn efficiency_runs(cell: &CellResult) -> Vec<f64> {
    runs_or(cell, |r| r.efficiency.clone(), cell.efficiency)
}

/// A cell's end-to-end throughput, one value per run.
fn throughput_runs(cell: &CellResult) -> Vec<f64> {
    runs_or(
        cell,
        |r| r.e2e_msgs_per_sec.clone(),
        Some(cell.throughput.e2e_msgs_per_sec),
    )
}

/// The metrics compared per cell.
fn cell_metrics() -> [(&'static str, Kind, RunValues); 10] {
    [
        ("heap allocations/msg", Kind::Allocations, |c| {
            runs_or(
                c,
                |r| r.allocations_per_msg.clone(),
                c.work_per_msg.allocations,
            )
        }),
        ("heap bytes/msg", Kind::Allocations, |c| {
            runs_or(
                c,
                |r| r.allocated_bytes_per_msg.clone(),
                c.work_per_msg.allocated_bytes,
            )
        }),
        ("bus efficiency", Kind::Ratio, efficiency_runs),
        ("handled/published", Kind::Ratio, |c| {
            let ratio = |e2e: f64, publish: f64| (publish > 0.0).then(|| e2e / publish);
            match &c.repeats {
                Some(r) if !r.e2e_msgs_per_sec.is_empty() => r
                    .e2e_msgs_per_sec
                    .iter()
                    .zip(&r.publish_msgs_per_sec)
                    .filter_map(|(e2e, publish)| ratio(*e2e, *publish))
                    .collect(),
                _ => ratio(
                    c.throughput.e2e_msgs_per_sec,
                    c.throughput.publish_msgs_per_sec,
                )
                .into_iter()
                .collect(),
            }
        }),
        ("end-to-end msg/s", Kind::Throughput, throughput_runs),
        ("max msg/s at p99 target", Kind::Throughput, |c| {
            c.max_rate_at_p99_target()
                .map(|rate| rate as f64)
                .into_iter()
                .collect()
        }),
        ("publish msg/s", Kind::Throughput, |c| {
            runs_or(
                c,
                |r| r.publish_msgs_per_sec.clone(),
                Some(c.throughput.publish_msgs_per_sec),
            )
        }),
        ("e2e p99 µs", Kind::Latency, |c| {
            runs_or(
                c,
                |r| r.e2e_p99_us.iter().map(|v| *v as f64).collect(),
                Some(c.latency_us.e2e.p99 as f64),
            )
        }),
        ("CPU µs/msg", Kind::Cpu, |c| {
            runs_or(c, |r| r.cpu_us_per_msg.clone(), Some(c.cpu_us_per_msg))
        }),
        ("peak RSS bytes", Kind::Memory, |c| {
            vec![c.memory.rss_peak_bytes as f64]
        }),
    ]
}

/// The judgement of one change.
fn judge_change(
    kind: Kind,
    change_pct: f64,
    noise_pct: f64,
    gated: bool,
    thresholds: &RegressionThresholds,
) -> Verdict {
    let (rise_is_bad, threshold) = kind.threshold(thresholds);
    let worse_pct = if rise_is_bad { change_pct } else { -change_pct };
    if worse_pct > threshold {
        if !gated {
            Verdict::Warning
        } else if worse_pct <= noise_pct {
            Verdict::Inconclusive
        } else {
            Verdict::Regressed
        }
    } else if -worse_pct > threshold {
        Verdict::Improved
    } else {
        Verdict::Ok
    }
}

/// Compares `current` with `baseline` under `thresholds`; `policy` says whether absolute
/// figures may fail the comparison.
pub fn compare(
    baseline: &RunResult,
    current: &RunResult,
    thresholds: &RegressionThresholds,
    policy: AbsolutePolicy,
) -> Result<Comparison, CompareError> {
    let version = |hash: &str| hash.split_once('-').map(|(v, _)| v.to_owned());
    if version(&baseline.scenario.hash) != version(&current.scenario.hash) {
        return Err(CompareError::HashVersion {
            baseline: baseline.scenario.hash.clone(),
            current: current.scenario.hash.clone(),
        });
    }
    if baseline.scenario.hash != current.scenario.hash {
        return Err(CompareError::ScenarioMismatch {
            baseline_name: baseline.scenario.name.clone(),
            baseline_hash: baseline.scenario.hash.clone(),
            current_name: current.scenario.name.clone(),
            current_hash: current.scenario.hash.clone(),
        });
    }
    let (b, c) = (&baseline.environment, &current.environment);
    let same_machine = b.fingerprint() == c.fingerprint();
    if policy == AbsolutePolicy::SameMachine && !same_machine {
        return Err(CompareError::DifferentMachines {
            baseline: b.fingerprint_text(),
            current: c.fingerprint_text(),
        });
    }
    let mut comparison = Comparison {
        absolute_gated: match policy {
            AbsolutePolicy::Auto => same_machine,
            AbsolutePolicy::SameMachine => true,
            AbsolutePolicy::Warn => false,
        },
        ratios_gated: b.cores == c.cores,
        baseline_fingerprint: (b.fingerprint(), b.fingerprint_text()),
        current_fingerprint: (c.fingerprint(), c.fingerprint_text()),
        ..Comparison::default()
    };
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
    let mut missing_metrics = std::collections::BTreeSet::new();
    for base in &baseline.cells {
        let name = format!("{}/{}", base.backend, base.mode);
        let Some(now) = find_cell(current, base) else {
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
            ("duplicate deliveries", now.duplicates),
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
        for (metric, kind, runs) in cell_metrics() {
            let (base_runs, now_runs) = (runs(base), runs(now));
            if base_runs.is_empty() || now_runs.is_empty() {
                if !base_runs.is_empty() || !now_runs.is_empty() {
                    missing_metrics.insert(metric);
                }
                continue;
            }
            comparison.push_change(
                name.clone(),
                metric,
                kind,
                &base_runs,
                &now_runs,
                thresholds,
            );
        }
    }
    // Envelope against raw of each backend: what the envelope path costs. The two cells ran at
    // different moments, and a machine's speed drifts between them, so when both results have
    // ceilings the ratio is taken between the two cells' efficiencies (each against a ceiling
    // measured beside it, so the speed at either moment cancels); otherwise between their
    // end-to-end throughputs. Either way it carries the noise of both cells: the sum of their
    // runs' spreads.
    for base_raw in baseline.cells.iter().filter(|c| c.mode == Mode::Raw) {
        let backend = base_raw.backend;
        let pair = |result: &RunResult, figure: RunValues| {
            let runs = |mode: Mode| {
                result
                    .cells
                    .iter()
                    .find(|c| c.backend == backend && c.mode == mode)
                    .map(figure)
                    .filter(|runs| !runs.is_empty())
            };
            match (runs(Mode::Envelope), runs(Mode::Raw)) {
                (Some(envelope), Some(raw)) if median(&raw) > 0.0 => Some((
                    median(&envelope) / median(&raw),
                    spread_pct(&envelope) + spread_pct(&raw),
                )),
                _ => None,
            }
        };
        let (metric, was, now) = match (
            pair(baseline, efficiency_runs),
            pair(current, efficiency_runs),
        ) {
            (Some(was), Some(now)) => ("bus efficiency ratio", Some(was), Some(now)),
            _ => (
                "end-to-end msg/s ratio",
                pair(baseline, throughput_runs),
                pair(current, throughput_runs),
            ),
        };
        if let (Some((was, was_noise)), Some((now, now_noise))) = (was, now) {
            comparison.push_judged(
                format!("{backend}/envelope÷raw"),
                metric,
                Kind::Ratio,
                (was, now),
                was_noise.max(now_noise),
                thresholds,
            );
        }
    }
    for metric in missing_metrics {
        comparison.notes.push(format!(
            "{metric}: in only one of the two results, not compared"
        ));
    }
    for now in &current.cells {
        if find_cell(baseline, now).is_none() {
            comparison
                .notes
                .push(format!("{}/{}: not in the baseline", now.backend, now.mode));
        }
    }
    Ok(comparison)
}

fn find_cell<'a>(result: &'a RunResult, like: &CellResult) -> Option<&'a CellResult> {
    result
        .cells
        .iter()
        .find(|c| c.backend == like.backend && c.mode == like.mode)
}

impl Comparison {
    fn push_change(
        &mut self,
        cell: String,
        metric: &'static str,
        kind: Kind,
        base_runs: &[f64],
        now_runs: &[f64],
        thresholds: &RegressionThresholds,
    ) {
        let values = (median(base_runs), median(now_runs));
        // Both spreads in percent of the baseline's median, the unit the change is in: the
        // current runs' spread taken against their own median would swell as a regression
        // shrinks that median, until a large regression read as noise.
        let noise = spread_pct(base_runs).max(spread_against(now_runs, values.0));
        self.push_judged(cell, metric, kind, values, noise, thresholds);
    }

    /// Judges the change from `values.0` (the baseline's) to `values.1` (the current run's),
    /// inside noise of `noise` percent.
    fn push_judged(
        &mut self,
        cell: String,
        metric: &'static str,
        kind: Kind,
        (base_value, now_value): (f64, f64),
        noise: f64,
        thresholds: &RegressionThresholds,
    ) {
        if base_value <= 0.0 {
            return;
        }
        let change_pct = (now_value - base_value) / base_value * 100.0;
        let gated = match kind {
            Kind::Allocations => true,
            Kind::Ratio => self.ratios_gated || self.absolute_gated,
            _ => self.absolute_gated,
        };
        self.changes.push(MetricChange {
            cell,
            metric,
            class: kind.class(),
            baseline: base_value,
            current: now_value,
            change_pct,
            verdict: judge_change(kind, change_pct, noise, gated, thresholds),
        });
    }
}

fn spread_pct(runs: &[f64]) -> f64 {
    crate::metrics::model::RepeatSpread::spread_of(runs)
}

/// The runs' spread (largest less smallest) in percent of `reference` instead of their median.
fn spread_against(runs: &[f64], reference: f64) -> f64 {
    if reference <= 0.0 {
        return 0.0;
    }
    spread_pct(runs) * median(runs) / reference
}

fn format_value(metric: &str, value: f64) -> String {
    if metric.contains("bytes") && metric.contains("RSS") {
        format!("{:.1} MiB", value / (1024.0 * 1024.0))
    } else if metric.contains("ratio")
        || metric.contains("efficiency")
        || metric.contains('/') && !metric.contains("msg")
    {
        format!("{value:.3}")
    } else if value.abs() < 100.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.0}")
    }
}

fn table(comparison: &Comparison, markdown: bool) -> Table {
    let mut table = super::styled_table(markdown);
    table.set_header([
        "cell", "metric", "figure", "baseline", "current", "change", "verdict",
    ]);
    for change in &comparison.changes {
        table.add_row([
            change.cell.clone(),
            change.metric.to_owned(),
            change.class.label().to_owned(),
            format_value(change.metric, change.baseline),
            format_value(change.metric, change.current),
            format!("{:+.1}%", change.change_pct),
            change.verdict.label().to_owned(),
        ]);
    }
    for index in 3..6 {
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
    let (base_id, base_text) = &comparison.baseline_fingerprint;
    let (now_id, now_text) = &comparison.current_fingerprint;
    if base_id == now_id {
        let _ = writeln!(out, "Environment {now_id} ({now_text}) for both runs.");
    } else {
        let _ = writeln!(
            out,
            "Environments differ: baseline {base_id} ({base_text}); current {now_id} ({now_text})."
        );
    }
    let _ = writeln!(
        out,
        "Machine-free figures gate: allocations rise {}%, ratio drop {}%. Absolute figures {}: \
         throughput drop {}%, p99 rise {}%, CPU rise {}%, RSS rise {}%. Any loss, duplicate, \
         order violation, leaked task or thread, or failed cell fails.\n",
        thresholds.allocations_rise_pct,
        thresholds.ratio_drop_pct,
        if comparison.absolute_gated {
            "gate (same machine)"
        } else {
            "only warn (not asserted to be one machine; `busbench ab` gates them)"
        },
        thresholds.throughput_drop_pct,
        thresholds.latency_rise_pct,
        thresholds.cpu_rise_pct,
        thresholds.rss_rise_pct
    );
    if !comparison.ratios_gated && !comparison.absolute_gated {
        let _ = writeln!(
            out,
            "The runs had different core counts: ratios only warn too.\n"
        );
    }
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

/// The comparison as JSON: the verdict, every metric's change, the correctness problems and
/// the notes.
pub fn json(comparison: &Comparison) -> serde_json::Value {
    let changes: Vec<serde_json::Value> = comparison
        .changes
        .iter()
        .map(|change| {
            serde_json::json!({
                "cell": change.cell,
                "metric": change.metric,
                "figure": change.class.label(),
                "baseline": change.baseline,
                "current": change.current,
                "change_pct": change.change_pct,
                "verdict": change.verdict.label().to_lowercase(),
            })
        })
        .collect();
    serde_json::json!({
        "regressed": comparison.regressed(),
        "absolute_gated": comparison.absolute_gated,
        "ratios_gated": comparison.ratios_gated,
        "baseline_fingerprint": comparison.baseline_fingerprint.0,
        "current_fingerprint": comparison.current_fingerprint.0,
        "changes": changes,
        "correctness": comparison.correctness,
        "notes": comparison.notes,
    })
}

/// The comparison as CSV: one row per cell and metric (`cell,metric,figure,baseline,current,
/// change_pct,verdict`); correctness problems as rows whose metric is `correctness`.
pub fn csv(comparison: &Comparison) -> String {
    let mut out = String::from("cell,metric,figure,baseline,current,change_pct,verdict\n");
    for change in &comparison.changes {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{}",
            super::csv::quote(&change.cell),
            super::csv::quote(change.metric),
            change.class.label(),
            change.baseline,
            change.current,
            change.change_pct,
            change.verdict.label().to_lowercase()
        );
    }
    for problem in &comparison.correctness {
        let _ = writeln!(
            out,
            ",correctness,,,,,{}",
            super::csv::quote(&format!("regressed: {problem}"))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{median, spread_against, spread_pct};

    #[test]
    fn a_large_drop_is_judged_against_the_baseline_s_scale() {
        let base = [0.53, 0.54, 0.55];
        let now = [0.10, 0.154, 0.22];
        assert!(
            spread_pct(&now) > 70.0,
            "against their own small median the runs would read as noise"
        );
        let noise = spread_pct(&base).max(spread_against(&now, median(&base)));
        assert!((noise - 0.12 / 0.54 * 100.0).abs() < 1e-9, "{noise}");
        assert!(noise < 71.0, "a 71% drop is past that noise");
        assert_eq!(spread_against(&[1.0], 2.0), 0.0);
        assert_eq!(spread_against(&now, 0.0), 0.0);
    }
}
