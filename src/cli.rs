//! The command line: `busbench run SCENARIO`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::{self, compare};
use crate::runner::{self, RunOptions};
use crate::scenario::{BackendKind, RegressionThresholds, Scenario};

/// Exit code: every cell passed.
pub const EXIT_OK: i32 = 0;
/// Exit code: a threshold failed.
pub const EXIT_THRESHOLD: i32 = 1;
/// Exit code: bad input or usage.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: a broker could not be reached, or another infrastructure failure.
pub const EXIT_INFRASTRUCTURE: i32 = 3;

/// Benchmarks an event bus on Apache Kafka and NATS JetStream, side by side.
#[derive(Debug, Parser)]
#[command(name = "busbench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a scenario file and writes its reports.
    Run(RunArgs),
    /// Compares a result with a baseline result; exit 1 on regression.
    Compare(CompareArgs),
}

/// Overrides of the scenario's `[regression]` thresholds.
#[derive(Debug, clap::Args)]
struct ThresholdArgs {
    /// Largest allowed throughput drop, percent.
    #[arg(long)]
    throughput_drop: Option<f64>,
    /// Largest allowed p99 latency rise, percent.
    #[arg(long)]
    latency_rise: Option<f64>,
    /// Largest allowed peak-RSS rise, percent.
    #[arg(long)]
    rss_rise: Option<f64>,
    /// Also write the comparison as markdown (for a pull-request comment) to this file.
    #[arg(long)]
    comparison_markdown: Option<PathBuf>,
}

impl ThresholdArgs {
    fn apply(&self, mut thresholds: RegressionThresholds) -> RegressionThresholds {
        if let Some(value) = self.throughput_drop {
            thresholds.throughput_drop_pct = value;
        }
        if let Some(value) = self.latency_rise {
            thresholds.latency_rise_pct = value;
        }
        if let Some(value) = self.rss_rise {
            thresholds.rss_rise_pct = value;
        }
        thresholds
    }
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// The baseline result (JSON written by `busbench run`).
    baseline: PathBuf,
    /// The result to judge.
    current: PathBuf,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Folder for the reports.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Only these backends (comma-separated: kafka,nats,memory), overriding the scenario.
    #[arg(long, value_delimiter = ',')]
    backends: Option<Vec<String>>,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "BUSBENCH_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
    /// NATS server URL.
    #[arg(
        long,
        env = "BUSBENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The Kafka broker's version, for the report (Kafka's protocol does not tell it).
    #[arg(long, env = "BUSBENCH_KAFKA_VERSION")]
    kafka_version: Option<String>,
    /// Never draw progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Runs of each cell; the median run is reported with the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// After the run, compare it with this baseline result; exit 1 on regression.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Save this run's result as a baseline file (written atomically).
    #[arg(long)]
    save_baseline: Option<PathBuf>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
        }
    };
    match cli.command {
        Command::Run(args) => run(args),
        Command::Compare(args) => compare(args),
    }
}

fn compare(args: CompareArgs) -> i32 {
    let read = |path: &PathBuf| compare::read_result(path);
    let (baseline, current) = match (read(&args.baseline), read(&args.current)) {
        (Ok(baseline), Ok(current)) => (baseline, current),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let thresholds = args.thresholds.apply(current.scenario.settings.regression);
    judge(
        &baseline,
        &current,
        &thresholds,
        args.thresholds.comparison_markdown.as_deref(),
    )
}

/// Compares, prints, and returns the exit code of a comparison.
fn judge(
    baseline: &crate::metrics::model::RunResult,
    current: &crate::metrics::model::RunResult,
    thresholds: &RegressionThresholds,
    markdown_file: Option<&std::path::Path>,
) -> i32 {
    match compare::compare(baseline, current, thresholds) {
        Ok(comparison) => {
            println!("{}", compare::terminal(&comparison, thresholds));
            if let Some(path) = markdown_file {
                let text = compare::markdown(&comparison, thresholds);
                if let Err(error) = report::write_atomically(path, text.as_bytes()) {
                    eprintln!("error: writing {}: {error:#}", path.display());
                    return EXIT_INFRASTRUCTURE;
                }
            }
            if comparison.regressed() {
                EXIT_THRESHOLD
            } else {
                EXIT_OK
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            EXIT_USAGE
        }
    }
}

/// On Ctrl-C, stops the run gracefully: the current cell ends as interrupted and the reports
/// are still written. A second Ctrl-C exits at once.
fn watch_for_ctrl_c() {
    let _ = std::thread::Builder::new()
        .name("busbench-signal".into())
        .spawn(|| {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!(
                        "busbench: interrupted; finishing the current cell (Ctrl-C again to quit)"
                    );
                    runner::interrupt();
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
        });
}

fn run(args: RunArgs) -> i32 {
    let scenario = match Scenario::load(&args.scenario) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let backends = match &args.backends {
        None => None,
        Some(names) => {
            let mut parsed = Vec::new();
            for name in names {
                match BackendKind::parse(name.trim()) {
                    Some(kind) => parsed.push(kind),
                    None => {
                        eprintln!(
                            "error: --backends: unknown backend {name:?} (kafka, nats, memory)"
                        );
                        return EXIT_USAGE;
                    }
                }
            }
            Some(parsed)
        }
    };
    let options = RunOptions {
        kafka_bootstrap: args.kafka_bootstrap,
        nats_url: args.nats_url,
        kafka_version: args.kafka_version,
        backends,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        scenario_file: args.scenario.clone(),
        repeat: args.repeat,
    };
    let baseline = match &args.baseline {
        None => None,
        Some(path) => match compare::read_result(path) {
            Ok(baseline) => Some(baseline),
            Err(error) => {
                eprintln!("error: {error}");
                return EXIT_USAGE;
            }
        },
    };
    watch_for_ctrl_c();
    let outcome = runner::run(&scenario, &options);
    println!("{}", report::table::terminal(&outcome.result));
    match report::write_reports(&outcome.result, &args.out) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
        }
        Err(error) => {
            eprintln!(
                "error: writing the reports into {}: {error:#}",
                args.out.display()
            );
            return EXIT_INFRASTRUCTURE;
        }
    }
    for cell in outcome
        .result
        .cells
        .iter()
        .filter(|c| !c.failures.is_empty())
    {
        eprintln!(
            "{}/{} failed: {}",
            cell.backend,
            cell.mode,
            cell.failures.join("; ")
        );
    }
    if let Some(path) = &args.save_baseline {
        let bytes = match report::Exporter::render(&report::json::JsonExporter, &outcome.result) {
            Ok(bytes) => bytes,
            Err(error) => {
                eprintln!("error: {error:#}");
                return EXIT_INFRASTRUCTURE;
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(error) = report::write_atomically(path, &bytes) {
            eprintln!("error: saving the baseline {}: {error:#}", path.display());
            return EXIT_INFRASTRUCTURE;
        }
        println!("saved baseline {}", path.display());
    }
    if outcome.infrastructure_failure {
        return EXIT_INFRASTRUCTURE;
    }
    let mut code = if outcome.result.passed {
        EXIT_OK
    } else {
        EXIT_THRESHOLD
    };
    if let Some(baseline) = &baseline {
        let thresholds = args.thresholds.apply(scenario.regression);
        let judged = judge(
            baseline,
            &outcome.result,
            &thresholds,
            args.thresholds.comparison_markdown.as_deref(),
        );
        code = code.max(judged);
    }
    code
}
