//! The command line: `busbench run SCENARIO`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report;
use crate::runner::{self, RunOptions};
use crate::scenario::{BackendKind, Scenario};

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
    }
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
    };
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
    if outcome.infrastructure_failure {
        EXIT_INFRASTRUCTURE
    } else if outcome.result.passed {
        EXIT_OK
    } else {
        EXIT_THRESHOLD
    }
}
