//! Same-machine A/B: two builds of busbench (a base revision and the head) run one scenario
//! interleaved, N times each, on the same brokers, and a statistical test on the runs decides
//! whether an absolute figure (msg/s, p99, CPU per message) changed. Absolute figures are only
//! comparable on one machine at one time; this is where they gate.
//!
//! Each run is a whole `busbench run` in its own process. The order alternates base-head,
//! head-base (ABBA), so a drift of the machine over time falls on both sides alike. A change is
//! a regression only when it is larger than the scenario's threshold and the Mann-Whitney U
//! test on the runs says it is significant; the bootstrap interval of the change of medians is
//! reported beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::metrics::model::median;
use crate::metrics::stats;
use crate::scenario::RegressionThresholds;

/// Fewest runs a side: with 3 against 3 no difference can reach p < 0.05 two-sided.
pub const MIN_RUNS: u32 = 4;

/// A build of busbench taking part in an A/B.
#[derive(Debug, Clone)]
pub enum Build {
    /// This very executable.
    Current,
    /// A git revision, built in its own target folder.
    Revision(String),
    /// An executable already built.
    Binary(PathBuf),
}

/// What to compare, and how.
#[derive(Debug, Clone)]
pub struct AbOptions {
    /// The scenario both sides run (the same file for both, so both do the same work).
    pub scenario: PathBuf,
    /// The base build.
    pub base: Build,
    /// The head build.
    pub head: Build,
    /// Runs of each side.
    pub runs: u32,
    /// Folder for builds, run results and the A/B report.
    pub out: PathBuf,
    /// Extra arguments for every `busbench run` (backends, broker addresses).
    pub run_args: Vec<String>,
    /// Environment variables set for the base runs only.
    pub base_env: Vec<(String, String)>,
    /// Environment variables set for the head runs only.
    pub head_env: Vec<(String, String)>,
    /// The thresholds.
    pub thresholds: RegressionThresholds,
    /// Whether a regressed figure must regress again in a second, independent set of rounds
    /// (of the flagged cells' backends only) before it counts.
    pub confirm: bool,
}

/// Why an A/B could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum AbError {
    /// The options are unusable (an unknown revision, a missing executable).
    #[error("{0}")]
    Usage(String),
    /// A side refused the scenario or its arguments (its `busbench run` exited 2).
    #[error("the {side} build refused the run (exit 2); its output is in {}:\n{tail}", log.display())]
    Refused {
        /// `base` or `head`.
        side: &'static str,
        /// The run's log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A build, a run or the brokers failed.
    #[error("{0}")]
    Infrastructure(String),
    /// The user stopped the A/B.
    #[error("interrupted")]
    Interrupted,
}

/// Figures of one cell in one run, read leniently from any version of the result JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CellSample {
    /// `backend/mode`.
    pub cell: String,
    /// Whether the cell passed.
    pub ok: bool,
    /// Why it did not.
    pub failures: Vec<String>,
    /// Lost, duplicates, order violations, leaked tasks, leaked threads.
    pub defects: [u64; 5],
    /// End-to-end msg/s.
    pub e2e_msgs_per_sec: f64,
    /// Publish msg/s.
    pub publish_msgs_per_sec: f64,
    /// End-to-end p99, µs.
    pub e2e_p99_us: f64,
    /// CPU µs per message.
    pub cpu_us_per_msg: f64,
    /// Heap allocations per message (when counted).
    pub allocations_per_msg: Option<f64>,
}

/// Reads the cells of a result file written by any busbench version.
pub fn read_samples(path: &Path) -> Result<Vec<CellSample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cells = value
        .get("cells")
        .and_then(|c| c.as_array())
        .ok_or_else(|| format!("{}: not a busbench result (no cells)", path.display()))?;
    let number = |cell: &serde_json::Value, pointer: &str| {
        cell.pointer(pointer)
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    let count = |cell: &serde_json::Value, pointer: &str| {
        cell.pointer(pointer).and_then(|v| v.as_u64()).unwrap_or(0)
    };
    Ok(cells
        .iter()
        .map(|cell| CellSample {
            cell: format!(
                "{}/{}",
                cell["backend"].as_str().unwrap_or("?"),
                cell["mode"].as_str().unwrap_or("?")
            ),
            ok: cell["status"].as_str() == Some("ok"),
            failures: cell["failures"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            defects: [
                count(cell, "/lost"),
                count(cell, "/duplicates"),
                count(cell, "/order_violations"),
                count(cell, "/tasks/leaked"),
                count(cell, "/threads/leaked"),
            ],
            e2e_msgs_per_sec: number(cell, "/throughput/e2e_msgs_per_sec"),
            publish_msgs_per_sec: number(cell, "/throughput/publish_msgs_per_sec"),
            e2e_p99_us: number(cell, "/latency_us/e2e/p99"),
            cpu_us_per_msg: number(cell, "/cpu_us_per_msg"),
            allocations_per_msg: cell
                .pointer("/work_per_msg/allocations")
                .and_then(|v| v.as_f64()),
        })
        .collect())
}

/// The judgement on one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbVerdict {
    /// Within the threshold.
    Unchanged,
    /// Better by more than the threshold, significantly.
    Improved,
    /// Worse by more than the threshold, significantly.
    Regressed,
    /// Beyond the threshold, but the runs do not show it significantly.
    NotSignificant,
    /// Regressed in the first set of rounds, but not again in the confirming set.
    NotConfirmed,
}

impl AbVerdict {
    /// The word shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            AbVerdict::Unchanged => "unchanged",
            AbVerdict::Improved => "improved",
            AbVerdict::Regressed => "REGRESSED",
            AbVerdict::NotSignificant => "not significant",
            AbVerdict::NotConfirmed => "not confirmed",
        }
    }
}

/// One figure of one cell: base against head.
#[derive(Debug, Clone, Serialize)]
pub struct AbRow {
    /// `backend/mode`.
    pub cell: String,
    /// The figure.
    pub metric: &'static str,
    /// Every base run's value.
    pub base: Vec<f64>,
    /// Every head run's value.
    pub head: Vec<f64>,
    /// Median of the base runs.
    pub base_median: f64,
    /// Median of the head runs.
    pub head_median: f64,
    /// Change of the medians, percent.
    pub change_pct: f64,
    /// 95% bootstrap interval of the change, percent.
    pub interval_pct: (f64, f64),
    /// Two-sided Mann-Whitney U p-value.
    pub p_value: f64,
    /// The judgement.
    pub verdict: AbVerdict,
}

/// The outcome of an A/B.
#[derive(Debug, Clone, Serialize)]
pub struct AbReport {
    /// The scenario file.
    pub scenario: String,
    /// What the base was (revision and commit, or executable).
    pub base: String,
    /// What the head was.
    pub head: String,
    /// Runs of each side.
    pub runs: u32,
    /// The thresholds applied.
    pub thresholds: RegressionThresholds,
    /// Every compared figure.
    pub rows: Vec<AbRow>,
    /// The confirming rounds, when a figure regressed and `--confirm` asked for them: the
    /// flagged cells' figures judged on fresh runs. A first-round regression stands only when
    /// its figure regressed here too; otherwise its verdict is "not confirmed".
    pub confirmation: Option<Vec<AbRow>>,
    /// Head cells that failed or lost, duplicated, reordered or leaked: each fails the A/B.
    pub correctness: Vec<String>,
    /// Everything else worth knowing (base failures, cells missing on one side).
    pub notes: Vec<String>,
}

impl AbReport {
    /// Whether the head regressed.
    pub fn regressed(&self) -> bool {
        !self.correctness.is_empty() || self.rows.iter().any(|r| r.verdict == AbVerdict::Regressed)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

type Figure = (
    &'static str,
    Direction,
    fn(&RegressionThresholds) -> f64,
    fn(&CellSample) -> Option<f64>,
);

const FIGURES: [Figure; 5] = [
    (
        "end-to-end msg/s",
        Direction::HigherIsBetter,
        |t| t.throughput_drop_pct,
        |c| Some(c.e2e_msgs_per_sec),
    ),
    (
        "publish msg/s",
        Direction::HigherIsBetter,
        |t| t.throughput_drop_pct,
        |c| Some(c.publish_msgs_per_sec),
    ),
    (
        "e2e p99 µs",
        Direction::LowerIsBetter,
        |t| t.latency_rise_pct,
        |c| Some(c.e2e_p99_us),
    ),
    (
        "CPU µs/msg",
        Direction::LowerIsBetter,
        |t| t.cpu_rise_pct,
        |c| Some(c.cpu_us_per_msg),
    ),
    (
        "heap allocations/msg",
        Direction::LowerIsBetter,
        |t| t.allocations_rise_pct,
        |c| c.allocations_per_msg,
    ),
];

/// Judges the head's runs against the base's runs (each a list of cells).
pub fn analyse(
    base_runs: &[Vec<CellSample>],
    head_runs: &[Vec<CellSample>],
    thresholds: &RegressionThresholds,
) -> (Vec<AbRow>, Vec<String>, Vec<String>) {
    let mut rows = Vec::new();
    let mut correctness = Vec::new();
    let mut notes = Vec::new();
    let mut cells: Vec<String> = Vec::new();
    for sample in base_runs.iter().chain(head_runs).flatten() {
        if !cells.contains(&sample.cell) {
            cells.push(sample.cell.clone());
        }
    }
    const DEFECTS: [&str; 5] = [
        "messages lost",
        "duplicate deliveries",
        "order violations",
        "tasks left after close",
        "threads left after close",
    ];
    for cell in &cells {
        let of = |runs: &[Vec<CellSample>]| -> Vec<CellSample> {
            runs.iter()
                .filter_map(|run| run.iter().find(|c| &c.cell == cell).cloned())
                .collect()
        };
        let (base, head) = (of(base_runs), of(head_runs));
        for (run, sample) in head.iter().enumerate() {
            if !sample.ok {
                correctness.push(format!(
                    "{cell}: head run {} failed: {}",
                    run + 1,
                    sample.failures.join("; ")
                ));
            }
            for (what, count) in DEFECTS.iter().zip(sample.defects) {
                if count > 0 {
                    correctness.push(format!("{cell}: head run {}: {count} {what}", run + 1));
                }
            }
        }
        if base.iter().any(|s| !s.ok) {
            notes.push(format!(
                "{cell}: {} of {} base runs failed",
                base.iter().filter(|s| !s.ok).count(),
                base.len()
            ));
        }
        if base.len() != base_runs.len() || head.len() != head_runs.len() {
            notes.push(format!(
                "{cell}: in {} base and {} head runs of {} and {}",
                base.len(),
                head.len(),
                base_runs.len(),
                head_runs.len()
            ));
        }
        for (metric, direction, threshold, pick) in FIGURES {
            let base_values: Vec<f64> = base.iter().filter_map(pick).collect();
            let head_values: Vec<f64> = head.iter().filter_map(pick).collect();
            if base_values.is_empty() || head_values.is_empty() {
                continue;
            }
            let seed = crate::metrics::model::fnv1a_64_hex(format!("{cell}{metric}").as_bytes());
            let seed = u64::from_str_radix(&seed, 16).unwrap_or(0);
            let Some((change, low, high)) =
                stats::median_change_interval(&base_values, &head_values, 0.95, 4000, seed)
            else {
                continue;
            };
            let p_value = stats::mann_whitney_p(&base_values, &head_values);
            let change_pct = change * 100.0;
            let worse_pct = match direction {
                Direction::HigherIsBetter => -change_pct,
                Direction::LowerIsBetter => change_pct,
            };
            let limit = threshold(thresholds);
            let significant = p_value <= thresholds.significance;
            let verdict = if worse_pct.abs() <= limit {
                AbVerdict::Unchanged
            } else if !significant {
                AbVerdict::NotSignificant
            } else if worse_pct > 0.0 {
                AbVerdict::Regressed
            } else {
                AbVerdict::Improved
            };
            rows.push(AbRow {
                cell: cell.clone(),
                metric,
                base_median: median(&base_values),
                head_median: median(&head_values),
                base: base_values,
                head: head_values,
                change_pct,
                interval_pct: (low * 100.0, high * 100.0),
                p_value,
                verdict,
            });
        }
    }
    (rows, correctness, notes)
}

fn git(args: &[&str]) -> Result<String, AbError> {
    let output = Command::new("git")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AbError::Infrastructure(format!("running git: {e}")))?;
    if !output.status.success() {
        return Err(AbError::Usage(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds `revision` in release mode in its own worktree and target folder under `dir`, and
/// returns the executable and the full commit. A revision built before is reused.
pub fn build_revision(revision: &str, dir: &Path) -> Result<(PathBuf, String), AbError> {
    let commit = git(&["rev-parse", "--verify", &format!("{revision}^{{commit}}")])
        .map_err(|e| AbError::Usage(format!("unknown revision {revision:?}: {e}")))?;
    let short = &commit[..12.min(commit.len())];
    let binary = dir.join("bin").join(format!("busbench-{short}"));
    if binary.is_file() {
        return Ok((binary, commit));
    }
    std::fs::create_dir_all(dir.join("bin"))
        .map_err(|e| AbError::Infrastructure(format!("creating {}: {e}", dir.display())))?;
    let source = std::path::absolute(dir.join(format!("src-{short}")))
        .map_err(|e| AbError::Infrastructure(e.to_string()))?;
    let _ = git(&["worktree", "prune"]);
    if !source.join("Cargo.toml").is_file() {
        let _ = std::fs::remove_dir_all(&source);
        git(&[
            "worktree",
            "add",
            "--detach",
            "--force",
            source.to_str().unwrap_or_default(),
            &commit,
        ])?;
    }
    let target = std::path::absolute(dir.join("target"))
        .map_err(|e| AbError::Infrastructure(e.to_string()))?;
    let log = dir.join(format!("build-{short}.log"));
    let log_file = std::fs::File::create(&log)
        .map_err(|e| AbError::Infrastructure(format!("creating {}: {e}", log.display())))?;
    eprintln!(
        "busbench ab: building {revision} ({short}) in release mode (log: {})",
        log.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "--bin", "busbench"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&source)
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .map_err(|e| AbError::Infrastructure(e.to_string()))?,
        )
        .stderr(log_file)
        .status()
        .map_err(|e| AbError::Infrastructure(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(AbError::Infrastructure(format!(
            "building {revision} ({short}) failed; {}:\n{}",
            log.display(),
            tail(&log, 20)
        )));
    }
    std::fs::copy(target.join("release").join("busbench"), &binary)
        .map_err(|e| AbError::Infrastructure(format!("copying the built busbench: {e}")))?;
    let _ = git(&[
        "worktree",
        "remove",
        "--force",
        source.to_str().unwrap_or_default(),
    ]);
    Ok((binary, commit))
}

fn resolve(build: &Build, dir: &Path) -> Result<(PathBuf, String), AbError> {
    match build {
        Build::Current => {
            let exe = std::env::current_exe()
                .map_err(|e| AbError::Infrastructure(format!("finding this executable: {e}")))?;
            Ok((
                exe,
                format!("this build (commit {})", crate::build_commit()),
            ))
        }
        Build::Binary(path) => {
            if !path.is_file() {
                return Err(AbError::Usage(format!(
                    "{}: no such executable",
                    path.display()
                )));
            }
            Ok((path.clone(), path.display().to_string()))
        }
        Build::Revision(revision) => {
            let (binary, commit) = build_revision(revision, dir)?;
            Ok((
                binary,
                format!("{revision} ({})", &commit[..12.min(commit.len())]),
            ))
        }
    }
}

/// Runs one side once; returns its cells.
fn run_once(
    side: &'static str,
    binary: &Path,
    options: &AbOptions,
    run_args: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> Result<Vec<CellSample>, AbError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AbError::Infrastructure(format!("creating {}: {e}", dir.display())))?;
    let log = dir.join("run.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| AbError::Infrastructure(format!("creating {}: {e}", log.display())))?;
    let status = Command::new(binary)
        .arg("run")
        .arg(&options.scenario)
        .args(["--no-progress", "--out"])
        .arg(dir)
        .args(run_args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .map_err(|e| AbError::Infrastructure(e.to_string()))?,
        )
        .stderr(log_file)
        .status()
        .map_err(|e| AbError::Infrastructure(format!("running {}: {e}", binary.display())))?;
    if crate::runner::interrupted() {
        return Err(AbError::Interrupted);
    }
    match status.code() {
        Some(0 | 1) => {}
        Some(2) => {
            return Err(AbError::Refused {
                side,
                log: log.clone(),
                tail: tail(&log, 5),
            });
        }
        other => {
            return Err(AbError::Infrastructure(format!(
                "the {side} run exited with {}; its output is in {}:\n{}",
                other.map_or("a signal".to_owned(), |c| format!("code {c}")),
                log.display(),
                tail(&log, 10)
            )));
        }
    }
    let result = std::fs::read_dir(dir)
        .map_err(|e| AbError::Infrastructure(e.to_string()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "json"))
        .ok_or_else(|| {
            AbError::Infrastructure(format!(
                "the {side} run wrote no result into {}",
                dir.display()
            ))
        })?;
    read_samples(&result).map_err(AbError::Infrastructure)
}

/// The cells of one run.
type Run = Vec<CellSample>;

/// Runs both sides `options.runs` times each, interleaved ABBA, with `run_args` for every run;
/// returns the base runs and the head runs.
fn rounds(
    options: &AbOptions,
    base_binary: &Path,
    head_binary: &Path,
    run_args: &[String],
    runs_dir: &Path,
) -> Result<(Vec<Run>, Vec<Run>), AbError> {
    let mut base_runs = Vec::new();
    let mut head_runs = Vec::new();
    for round in 0..options.runs {
        // ABBA: base first in even rounds, head first in odd ones.
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["base", "head"]
        } else {
            ["head", "base"]
        };
        for side in order {
            eprintln!("busbench ab: round {}/{}: {side}", round + 1, options.runs);
            let (binary, env, into) = if side == "base" {
                (base_binary, &options.base_env, &mut base_runs)
            } else {
                (head_binary, &options.head_env, &mut head_runs)
            };
            let dir = runs_dir.join(format!("{side}-{}", round + 1));
            into.push(run_once(side, binary, options, run_args, env, &dir)?);
        }
    }
    Ok((base_runs, head_runs))
}

/// The backends of the cells with a regressed figure, each once, in order.
fn regressed_backends(rows: &[AbRow]) -> Vec<String> {
    let mut backends: Vec<String> = Vec::new();
    for row in rows.iter().filter(|r| r.verdict == AbVerdict::Regressed) {
        let backend = row.cell.split('/').next().unwrap_or_default().to_owned();
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    backends
}

/// Keeps a first-round regression only where the confirming rounds regressed the same figure
/// of the same cell; the others become "not confirmed".
pub fn apply_confirmation(rows: &mut [AbRow], confirming: &[AbRow]) {
    for row in rows
        .iter_mut()
        .filter(|r| r.verdict == AbVerdict::Regressed)
    {
        let again = confirming.iter().any(|c| {
            c.cell == row.cell && c.metric == row.metric && c.verdict == AbVerdict::Regressed
        });
        if !again {
            row.verdict = AbVerdict::NotConfirmed;
        }
    }
}

/// Builds both sides, runs them interleaved and judges the head.
pub fn run(options: &AbOptions) -> Result<AbReport, AbError> {
    if options.runs < MIN_RUNS {
        return Err(AbError::Usage(format!(
            "--runs {}: at least {MIN_RUNS} runs a side are needed for a significant result",
            options.runs
        )));
    }
    let (base_binary, base_label) = resolve(&options.base, &options.out)?;
    let (head_binary, head_label) = resolve(&options.head, &options.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let runs_dir = options.out.join(format!("runs-{stamp}"));
    let (base_runs, head_runs) = rounds(
        options,
        &base_binary,
        &head_binary,
        &options.run_args,
        &runs_dir,
    )?;
    let (mut rows, mut correctness, mut notes) =
        analyse(&base_runs, &head_runs, &options.thresholds);
    notes.push(format!("every run's result is in {}", runs_dir.display()));
    let flagged = regressed_backends(&rows);
    let mut confirmation = None;
    if options.confirm && !flagged.is_empty() {
        eprintln!(
            "busbench ab: a figure regressed; confirming with {} more runs a side of {}",
            options.runs,
            flagged.join(",")
        );
        // The flagged backends replace any --backends of the first rounds.
        let mut run_args = Vec::new();
        let mut args = options.run_args.iter();
        while let Some(arg) = args.next() {
            if arg == "--backends" {
                args.next();
            } else {
                run_args.push(arg.clone());
            }
        }
        run_args.extend(["--backends".to_owned(), flagged.join(",")]);
        let confirm_dir = runs_dir.join("confirmation");
        let (base_again, head_again) =
            rounds(options, &base_binary, &head_binary, &run_args, &confirm_dir)?;
        let (confirming, confirm_correctness, confirm_notes) =
            analyse(&base_again, &head_again, &options.thresholds);
        apply_confirmation(&mut rows, &confirming);
        correctness.extend(
            confirm_correctness
                .into_iter()
                .map(|problem| format!("confirmation: {problem}")),
        );
        notes.extend(
            confirm_notes
                .into_iter()
                .map(|note| format!("confirmation: {note}")),
        );
        notes.push(format!(
            "the confirming runs' results are in {}",
            confirm_dir.display()
        ));
        confirmation = Some(confirming);
    }
    Ok(AbReport {
        scenario: options.scenario.display().to_string(),
        base: base_label,
        head: head_label,
        runs: options.runs,
        thresholds: options.thresholds,
        rows,
        confirmation,
        correctness,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cell: &str, e2e: f64, cpu: f64) -> CellSample {
        CellSample {
            cell: cell.into(),
            ok: true,
            e2e_msgs_per_sec: e2e,
            publish_msgs_per_sec: e2e,
            e2e_p99_us: 1000.0,
            cpu_us_per_msg: cpu,
            allocations_per_msg: Some(10.0),
            ..CellSample::default()
        }
    }

    fn runs(values: &[(f64, f64)]) -> Vec<Vec<CellSample>> {
        values
            .iter()
            .map(|(e2e, cpu)| vec![sample("memory/raw", *e2e, *cpu)])
            .collect()
    }

    /// Five base runs within 4% of 100 msg/s and 1 µs per message.
    fn steady_base() -> Vec<Vec<CellSample>> {
        runs(&[
            (100.0, 1.0),
            (104.0, 1.02),
            (97.0, 0.98),
            (101.0, 1.0),
            (99.0, 1.01),
        ])
    }

    fn verdict(rows: &[AbRow], metric: &str) -> AbVerdict {
        rows.iter().find(|r| r.metric == metric).unwrap().verdict
    }

    #[test]
    fn a_halved_throughput_is_a_significant_regression() {
        let base = steady_base();
        let head = runs(&[
            (50.0, 2.0),
            (52.0, 2.1),
            (49.0, 1.9),
            (51.0, 2.0),
            (48.0, 2.05),
        ]);
        let (rows, correctness, _) = analyse(&base, &head, &RegressionThresholds::default());
        assert!(correctness.is_empty());
        assert_eq!(verdict(&rows, "end-to-end msg/s"), AbVerdict::Regressed);
        assert_eq!(verdict(&rows, "CPU µs/msg"), AbVerdict::Regressed);
        assert_eq!(verdict(&rows, "heap allocations/msg"), AbVerdict::Unchanged);
        let e2e = rows
            .iter()
            .find(|r| r.metric == "end-to-end msg/s")
            .unwrap();
        assert!((e2e.change_pct + 50.0).abs() < 1.0);
        assert!(e2e.interval_pct.1 < -40.0);
        assert!(e2e.p_value < 0.01);
    }

    #[test]
    fn a_small_change_or_a_noisy_one_is_not_a_regression() {
        let base = runs(&[
            (100.0, 1.0),
            (104.0, 1.0),
            (97.0, 1.0),
            (101.0, 1.0),
            (99.0, 1.0),
        ]);
        let slower = runs(&[
            (90.0, 1.1),
            (93.0, 1.1),
            (88.0, 1.1),
            (91.0, 1.1),
            (92.0, 1.1),
        ]);
        let (rows, _, _) = analyse(&base, &slower, &RegressionThresholds::default());
        assert_eq!(verdict(&rows, "end-to-end msg/s"), AbVerdict::Unchanged);
        // Past the threshold in the median, but the runs overlap: not significant.
        let noisy = runs(&[
            (40.0, 1.0),
            (150.0, 1.0),
            (60.0, 1.0),
            (110.0, 1.0),
            (70.0, 1.0),
        ]);
        let (rows, _, _) = analyse(&base, &noisy, &RegressionThresholds::default());
        assert_eq!(
            verdict(&rows, "end-to-end msg/s"),
            AbVerdict::NotSignificant
        );
    }

    #[test]
    fn a_regression_counts_only_when_the_confirming_rounds_show_it_again() {
        let base = steady_base();
        let slower = runs(&[
            (50.0, 1.0),
            (52.0, 1.02),
            (49.0, 0.98),
            (51.0, 1.0),
            (48.0, 1.01),
        ]);
        let thresholds = RegressionThresholds::default();
        let (first, _, _) = analyse(&base, &slower, &thresholds);
        assert_eq!(regressed_backends(&first), vec!["memory".to_owned()]);

        // The confirming rounds show the same drop: it stands.
        let mut rows = first.clone();
        let (again, _, _) = analyse(&base, &slower, &thresholds);
        apply_confirmation(&mut rows, &again);
        assert_eq!(verdict(&rows, "end-to-end msg/s"), AbVerdict::Regressed);
        assert_eq!(verdict(&rows, "CPU µs/msg"), AbVerdict::Unchanged);

        // The confirming rounds show no drop: the first verdict was chance.
        let mut rows = first;
        let (again, _, _) = analyse(&base, &base, &thresholds);
        apply_confirmation(&mut rows, &again);
        assert_eq!(verdict(&rows, "end-to-end msg/s"), AbVerdict::NotConfirmed);
        assert!(regressed_backends(&rows).is_empty());
        let report = AbReport {
            scenario: "ci.toml".into(),
            base: "base".into(),
            head: "head".into(),
            runs: 5,
            thresholds,
            rows,
            confirmation: Some(again),
            correctness: Vec::new(),
            notes: Vec::new(),
        };
        assert!(!report.regressed());
    }

    #[test]
    fn a_failed_head_cell_is_a_correctness_failure() {
        let base = runs(&[(100.0, 1.0); 4]);
        let mut head = runs(&[(100.0, 1.0); 4]);
        head[2][0].ok = false;
        head[2][0].failures = vec!["timed out".into()];
        head[3][0].defects[0] = 7;
        let (_, correctness, _) = analyse(&base, &head, &RegressionThresholds::default());
        assert_eq!(correctness.len(), 2, "{correctness:?}");
        assert!(correctness[1].contains("7 messages lost"));
    }
}
