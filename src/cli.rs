//! The command line: `busbench run SCENARIO`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::{self, compare};
use crate::runner::{self, RunOptions};
use crate::scenario::{BackendKind, RegressionThresholds, Scenario, SearchSection};
use crate::shard::{ShardSpec, StartAt};

/// Exit code: every cell passed.
pub const EXIT_OK: i32 = 0;
/// Exit code: a threshold failed.
pub const EXIT_THRESHOLD: i32 = 1;
/// Exit code: bad input or usage.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: a broker could not be reached, or another infrastructure failure.
pub const EXIT_INFRASTRUCTURE: i32 = 3;
/// Exit code: every cell passed its thresholds, but the comparison with a baseline (`run
/// --baseline`, `compare`, `ab`) found a regression.
pub const EXIT_REGRESSION: i32 = 4;
/// Exit code: interrupted by SIGINT (Ctrl-C); the reports of what ran were written.
pub const EXIT_SIGINT: i32 = 130;
/// Exit code: stopped by SIGTERM; the reports of what ran were written.
pub const EXIT_SIGTERM: i32 = 143;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    every cell passed (and no regression against a baseline)
  1    a cell failed a threshold (success rate, order, leaks, p99, publish errors) or lost
       acknowledged messages
  2    bad input or usage (scenario file, flags, baseline file)
  3    a broker could not be reached, or another infrastructure failure (writing reports)
  4    every cell passed, but a comparison with a baseline found a regression
  130  interrupted by SIGINT (Ctrl-C); the reports of what ran were written
  143  stopped by SIGTERM; the reports of what ran were written";

/// Benchmarks an event bus on Apache Kafka and NATS JetStream, side by side.
#[derive(Debug, Parser)]
#[command(name = "busbench", about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a scenario file and writes its reports.
    Run(RunArgs),
    /// Compares a result with a baseline result; exit 4 on regression.
    Compare(CompareArgs),
    /// Runs a base build and the head interleaved on this machine and judges the head's
    /// absolute figures with a statistical test; exit 4 on regression.
    Ab(AbArgs),
    /// Merges the results of a split run's shards (`run --shard I/N`) into one result and
    /// writes the same reports as `run`: counts summed, histograms merged exactly,
    /// throughput over the union of the shards' measured windows.
    Merge(MergeArgs),
    /// Measures the bare client publishing a scenario's load alone (no consumer, no bus) on
    /// each broker backend: the figure to hold against the brokers' own publish tools
    /// (`nats bench js pub async`, Kafka's `ProducerPerformance`) on the same machine.
    Ceiling(CeilingArgs),
    /// Times one fixed piece of CPU work again and again and reports how much this machine's
    /// speed moves: on a shared virtual machine it can halve for seconds at a time, which
    /// moves every figure compared across moments. Exit 0 either way.
    Steadiness(SteadinessArgs),
    /// Prints a shell completion script (install: see the README).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) of busbench.
    Man,
}

/// What `run` and `compare` print on standard output; everything else (progress, the files
/// written, diagnostics) goes to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// The comparison tables (drawn as `--style` says).
    #[default]
    Table,
    /// The full result as JSON (`compare`: the comparison as JSON).
    Json,
    /// One row per cell (`compare`: per cell and metric) for spreadsheets.
    Csv,
    /// The markdown report (`compare`: the comparison in markdown).
    Markdown,
}

/// How results are printed.
#[derive(Debug, clap::Args)]
struct OutputArgs {
    /// What to print on standard output.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// How tables on standard output are drawn.
    #[arg(long, value_enum, default_value_t = report::TableStyle::Unicode)]
    style: report::TableStyle,
}

#[derive(Debug, clap::Args)]
struct MergeArgs {
    /// The shards' result files (JSON written by `busbench run --shard I/N`), every shard of
    /// one run.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Folder for the merged reports.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
struct CeilingArgs {
    /// The scenario file (TOML): its messages, payload size, topics, publishers, window and
    /// producer settings are used.
    scenario: PathBuf,
    #[command(flatten)]
    brokers: BrokerArgs,
}

#[derive(Debug, clap::Args)]
struct SteadinessArgs {
    /// How long to measure, such as `10s` (1 s to 10 min).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_check_duration)]
    duration: std::time::Duration,
    /// Print the figures, every slice's time included, as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct AbArgs {
    /// The scenario file both builds run.
    scenario: PathBuf,
    /// The base: a git revision, built in release mode in its own worktree and target folder.
    #[arg(
        long,
        required_unless_present = "base_bin",
        conflicts_with = "base_bin"
    )]
    base: Option<String>,
    /// The base as an executable already built, instead of a revision.
    #[arg(long)]
    base_bin: Option<PathBuf>,
    /// The head as a git revision (default: this executable).
    #[arg(long, conflicts_with = "head_bin")]
    head: Option<String>,
    /// The head as an executable already built.
    #[arg(long)]
    head_bin: Option<PathBuf>,
    /// Runs of each side (at least 4).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Folder for the builds, every run's result and the A/B report.
    #[arg(long, default_value = "target/ab")]
    out: PathBuf,
    #[command(flatten)]
    brokers: BrokerArgs,
    /// An environment variable for the base runs only (KEY=VALUE; repeatable).
    #[arg(long, value_parser = parse_key_value)]
    base_env: Vec<(String, String)>,
    /// An environment variable for the head runs only (KEY=VALUE; repeatable).
    #[arg(long, value_parser = parse_key_value)]
    head_env: Vec<(String, String)>,
    /// Largest allowed throughput drop, percent (default: the scenario's `[regression]`).
    #[arg(long, value_parser = parse_percent)]
    throughput_drop: Option<f64>,
    /// Largest allowed p99 rise, percent.
    #[arg(long, value_parser = parse_percent)]
    latency_rise: Option<f64>,
    /// Largest allowed rise of CPU time per message, percent.
    #[arg(long, value_parser = parse_percent)]
    cpu_rise: Option<f64>,
    /// The largest Mann-Whitney p-value that counts as significant.
    #[arg(long, value_parser = parse_probability)]
    significance: Option<f64>,
    /// Also write the report as markdown (for a pull-request comment) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// When a figure regresses, run the flagged cells' backends again (as many runs a side)
    /// and count the regression only if that figure regresses again.
    #[arg(long)]
    confirm: bool,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a percentage of 0 or more")),
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value < 1.0 => Ok(value),
        _ => Err(format!("{text:?} is not a probability between 0 and 1")),
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Overrides of the scenario's `[regression]` thresholds.
#[derive(Debug, clap::Args)]
struct ThresholdArgs {
    /// Largest allowed throughput drop, percent.
    #[arg(long, value_parser = parse_percent)]
    throughput_drop: Option<f64>,
    /// Largest allowed p99 latency rise, percent.
    #[arg(long, value_parser = parse_percent)]
    latency_rise: Option<f64>,
    /// Largest allowed rise of CPU time per message, percent.
    #[arg(long, value_parser = parse_percent)]
    cpu_rise: Option<f64>,
    /// Largest allowed peak-RSS rise, percent.
    #[arg(long, value_parser = parse_percent)]
    rss_rise: Option<f64>,
    /// Largest allowed rise of heap allocations or bytes per message, percent.
    #[arg(long, value_parser = parse_percent)]
    allocations_rise: Option<f64>,
    /// Largest allowed drop of a ratio within a run (efficiency, envelope/raw,
    /// handled/published), percent.
    #[arg(long, value_parser = parse_percent)]
    ratio_drop: Option<f64>,
    /// Also write the comparison as markdown (for a pull-request comment) to this file.
    #[arg(long)]
    comparison_markdown: Option<PathBuf>,
    /// The baseline comes from this very machine: refuse it if its environment fingerprint
    /// differs, and let absolute figures (msg/s, µs, RSS) fail the comparison.
    #[arg(long, conflicts_with = "machine_free_only")]
    same_machine: bool,
    /// Absolute figures only warn, whatever the fingerprints; machine-free figures gate.
    #[arg(long)]
    machine_free_only: bool,
}

impl ThresholdArgs {
    fn apply(&self, mut thresholds: RegressionThresholds) -> RegressionThresholds {
        if let Some(value) = self.throughput_drop {
            thresholds.throughput_drop_pct = value;
        }
        if let Some(value) = self.latency_rise {
            thresholds.latency_rise_pct = value;
        }
        if let Some(value) = self.cpu_rise {
            thresholds.cpu_rise_pct = value;
        }
        if let Some(value) = self.rss_rise {
            thresholds.rss_rise_pct = value;
        }
        if let Some(value) = self.allocations_rise {
            thresholds.allocations_rise_pct = value;
        }
        if let Some(value) = self.ratio_drop {
            thresholds.ratio_drop_pct = value;
        }
        thresholds
    }

    fn policy(&self) -> compare::AbsolutePolicy {
        if self.same_machine {
            compare::AbsolutePolicy::SameMachine
        } else if self.machine_free_only {
            compare::AbsolutePolicy::Warn
        } else {
            compare::AbsolutePolicy::Auto
        }
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
    #[command(flatten)]
    output: OutputArgs,
}

/// Which backends to run and where their brokers are.
#[derive(Debug, clap::Args)]
struct BrokerArgs {
    /// Only these backends (comma-separated), overriding the scenario.
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Option<Vec<BackendKind>>,
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
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
}

/// NATS authentication and TLS; each overrides the scenario's `[nats]` key of the same
/// meaning. Secrets are masked in every output.
#[derive(Debug, Clone, Default, clap::Args)]
struct NatsAuthArgs {
    /// NATS credentials file (`.creds`).
    #[arg(long, env = "BUSBENCH_NATS_CREDS")]
    nats_creds: Option<String>,
    /// NATS user (with a password).
    #[arg(long, env = "BUSBENCH_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "BUSBENCH_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "BUSBENCH_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// Demand TLS from the NATS server.
    #[arg(long)]
    nats_tls: bool,
    /// PEM file of the authorities to trust for the NATS server's certificate.
    #[arg(long, env = "BUSBENCH_NATS_TLS_CA")]
    nats_tls_ca: Option<String>,
    /// PEM file of the client certificate for NATS (with --nats-tls-key).
    #[arg(long, env = "BUSBENCH_NATS_TLS_CERT")]
    nats_tls_cert: Option<String>,
    /// PEM file of the client certificate's key.
    #[arg(long, env = "BUSBENCH_NATS_TLS_KEY")]
    nats_tls_key: Option<String>,
}

impl NatsAuthArgs {
    /// Writes the flags given over the scenario's `[nats]` settings.
    fn apply(&self, nats: &mut crate::scenario::NatsSection) {
        let pairs = [
            (&self.nats_creds, &mut nats.credentials_file),
            (&self.nats_user, &mut nats.user),
            (&self.nats_password, &mut nats.password),
            (&self.nats_token, &mut nats.token),
            (&self.nats_tls_ca, &mut nats.tls_ca_file),
            (&self.nats_tls_cert, &mut nats.tls_cert_file),
            (&self.nats_tls_key, &mut nats.tls_key_file),
        ];
        for (flag, setting) in pairs {
            if let Some(value) = flag {
                *setting = Some(value.clone());
            }
        }
        nats.tls_required |= self.nats_tls;
    }

    /// The settings given, as the environment variables the runs of `ab` read: secrets stay
    /// out of the runs' command lines (and `ps`), and a base build without these flags
    /// ignores them instead of refusing its command line. (`--nats-tls` has no variable:
    /// `ab` passes it as a flag.)
    fn to_env(&self) -> Vec<(String, String)> {
        [
            ("BUSBENCH_NATS_CREDS", &self.nats_creds),
            ("BUSBENCH_NATS_USER", &self.nats_user),
            ("BUSBENCH_NATS_PASSWORD", &self.nats_password),
            ("BUSBENCH_NATS_TOKEN", &self.nats_token),
            ("BUSBENCH_NATS_TLS_CA", &self.nats_tls_ca),
            ("BUSBENCH_NATS_TLS_CERT", &self.nats_tls_cert),
            ("BUSBENCH_NATS_TLS_KEY", &self.nats_tls_key),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|value| (name.to_owned(), value)))
        .collect()
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Folder for the reports.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    #[command(flatten)]
    brokers: BrokerArgs,
    /// The Kafka broker's version, for the report (Kafka's protocol does not tell it).
    #[arg(long, env = "BUSBENCH_KAFKA_VERSION")]
    kafka_version: Option<String>,
    /// Never draw progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Runs of each cell; the median run is reported with the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// After the run, compare it with this baseline result; exit 4 on regression.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Save this run's result as a baseline file (written atomically); refused when a cell
    /// failed or the run was interrupted.
    #[arg(long)]
    save_baseline: Option<PathBuf>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Also write the result as JUnit XML (one test case per cell and threshold) to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Leave the run's topics (Kafka) and streams (NATS) on the brokers instead of deleting
    /// them; the report names them.
    #[arg(long)]
    keep_topics: bool,
    /// Override a scenario setting (repeatable): `--set messages=100000`, `--set
    /// kafka.producer.linger.ms=10`; the report lists the overrides.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    overrides: Vec<(String, String)>,
    /// Search each cell for the highest rate whose end-to-end p99 stays at or under a target
    /// (`--p99`, or the scenario's `[search]` table): ramp up, then bisect; every step on
    /// fresh topics. A cell where no rate passes fails (exit 1).
    #[arg(long)]
    find_max_rate: bool,
    /// The rate search's end-to-end p99 target, such as `10ms` (replaces the scenario's
    /// `[search] p99`).
    #[arg(long, value_name = "DURATION", requires = "find_max_rate", value_parser = parse_p99)]
    p99: Option<std::time::Duration>,
    #[command(flatten)]
    sharding: ShardArgs,
}

/// Splitting a run over several processes or hosts, merged afterwards with `busbench merge`.
#[derive(Debug, clap::Args)]
struct ShardArgs {
    /// Run shard I of N (numbered from 0, as Kubernetes numbers an Indexed Job's pods): the
    /// messages (or rate), publishers, in-flight window, aggregates and warm-up are split so
    /// that the N shards add up to the scenario; each shard uses topics of its own. Every
    /// shard needs the same run id (`--run-id`, or `--start-at` as a time).
    #[arg(
        long,
        value_name = "I/N",
        env = "BUSBENCH_SHARD",
        conflicts_with = "shards"
    )]
    shard: Option<ShardSpec>,
    /// Run shard $JOB_COMPLETION_INDEX of N (the index Kubernetes gives each pod of an
    /// Indexed Job).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    shards: Option<u32>,
    /// The run's id (letters, digits, `-`, `_`; at most 40): names its topics and streams,
    /// and tells `merge` which shards belong together. Default: from `--start-at` when it is
    /// a time, otherwise from the start time.
    #[arg(long, env = "BUSBENCH_RUN_ID")]
    run_id: Option<String>,
    /// Begin the first cell's measured phase at this time, once set-up and warm-up are done:
    /// RFC 3339 (`2026-11-23T05:00:00Z`, the same for every shard) or a duration from now
    /// (`90s`). A shard that is ready late starts at once and says so in its result.
    #[arg(long, value_name = "TIME|DURATION", env = "BUSBENCH_START_AT")]
    start_at: Option<StartAt>,
    /// Line up every cell, not only the first: shard 0 listens at HOST:PORT and the other
    /// shards connect to it; before each cell's measured phase, every shard waits until all
    /// are ready for it.
    #[arg(long, value_name = "HOST:PORT", env = "BUSBENCH_BARRIER")]
    barrier: Option<String>,
}

/// What the sharding flags ask for.
struct Sharding {
    /// The shard to run, if the run is split.
    shard: Option<runner::ShardRun>,
    /// The run id given or derived.
    run_id: Option<String>,
    /// The start time.
    start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The shards' barrier address.
    barrier: Option<String>,
}

/// The shard to run, the run id and the start time the flags ask for; on bad input, the
/// message to print (exit 2).
fn resolve_sharding(args: &ShardArgs, scenario: &Scenario) -> Result<Sharding, String> {
    let spec = match (args.shard, args.shards) {
        (Some(spec), _) => Some(spec),
        (None, Some(count)) => {
            let index = std::env::var(crate::shard::JOB_COMPLETION_INDEX).map_err(|_| {
                format!(
                    "--shards {count} takes the shard's index from ${}, which is not set (use \
                     --shard I/{count} outside a Kubernetes Indexed Job)",
                    crate::shard::JOB_COMPLETION_INDEX
                )
            })?;
            let index = index.trim().parse::<u32>().map_err(|_| {
                format!(
                    "${}={index:?} is not a shard index",
                    crate::shard::JOB_COMPLETION_INDEX
                )
            })?;
            Some(ShardSpec::new(index, count).map_err(|e| format!("--shards {count}: {e}"))?)
        }
        (None, None) => None,
    };
    if let Some(run_id) = &args.run_id {
        crate::shard::check_run_id(run_id).map_err(|e| format!("--run-id {e}"))?;
    }
    let now = chrono::Utc::now();
    let start_at = args.start_at.map(|start| start.moment(now));
    let run_id = args.run_id.clone().or(match args.start_at {
        Some(StartAt::Time(time)) => Some(crate::shard::run_id_from_time(time)),
        _ => None,
    });
    let shard = match spec {
        None => None,
        Some(spec) => {
            if run_id.is_none() {
                return Err(format!(
                    "--shard {spec}: the shards of a run must share one run id: give --run-id, \
                     or --start-at as a time (RFC 3339), the same for every shard"
                ));
            }
            Some(
                runner::ShardRun::new(scenario, spec)
                    .map_err(|e| format!("--shard {spec}: {e}"))?,
            )
        }
    };
    if let Some(address) = &args.barrier {
        if shard.is_none() {
            return Err("--barrier lines up the shards of a split run: it needs --shard".into());
        }
        let port = address
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
            return Err(format!(
                "--barrier {address:?} is not HOST:PORT, such as busbench-0.busbench:7070"
            ));
        }
    }
    Ok(Sharding {
        shard,
        run_id,
        start_at,
        barrier: args.barrier.clone(),
    })
}

/// A latency target: a duration longer than 0.
fn parse_p99(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write a duration such as 10ms or 1.5s)"))?;
    if duration.is_zero() {
        return Err("must be longer than 0, such as 10ms".into());
    }
    Ok(duration)
}

/// How long the steadiness check runs: 1 s to 10 min.
fn parse_check_duration(text: &str) -> Result<std::time::Duration, String> {
    use crate::steadiness::{MAX_DURATION, MIN_DURATION};
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write a duration such as 10s)"))?;
    if duration < MIN_DURATION || duration > MAX_DURATION {
        return Err(format!(
            "must be from {} to {}",
            humantime::format_duration(MIN_DURATION),
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

fn steadiness(args: SteadinessArgs) -> i32 {
    let measured = crate::steadiness::measure(args.duration);
    if args.json {
        match serde_json::to_string_pretty(&measured) {
            Ok(json) => say(json),
            Err(error) => {
                eprintln!("error: writing JSON: {error}");
                return EXIT_INFRASTRUCTURE;
            }
        }
    } else {
        say(format!("busbench steadiness: {}", measured.summary()));
    }
    EXIT_OK
}

/// The version line: the package version, the commit it was built from, and `-dirty` when
/// tracked files had uncommitted changes.
pub fn version_text() -> String {
    format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        crate::build_commit()
    )
}

/// The command-line definition, with its version line.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let version: &'static str = Box::leak(version_text().into_boxed_str());
    Cli::command().version(version)
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    use clap::FromArgMatches;
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
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
        Command::Ab(args) => ab(args),
        Command::Ceiling(args) => ceiling(args),
        Command::Merge(args) => merge(args),
        Command::Steadiness(args) => steadiness(args),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command(), "busbench", &mut out);
            say(String::from_utf8_lossy(&out).trim_end());
            EXIT_OK
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(command()).render(&mut out) {
                Ok(()) => {
                    say(String::from_utf8_lossy(&out).trim_end());
                    EXIT_OK
                }
                Err(error) => {
                    eprintln!("error: rendering the man page: {error}");
                    EXIT_INFRASTRUCTURE
                }
            }
        }
    }
}

fn ceiling(args: CeilingArgs) -> i32 {
    let Some(scenario) = load_scenario(&args.scenario, &args.brokers, &[]) else {
        return EXIT_USAGE;
    };
    let backends = match parse_backends(args.brokers.backends.as_deref()) {
        Ok(Some(backends)) => backends,
        Ok(None) => scenario.backends.clone(),
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let options = RunOptions::new(
        &args.brokers.kafka_bootstrap,
        &args.brokers.nats_url,
        &args.scenario,
    );
    watch_for_signals();
    let mut status = EXIT_OK;
    for backend in backends {
        if backend == BackendKind::Memory {
            continue;
        }
        match crate::runner::publish_ceiling(&scenario, backend, &options) {
            Ok(figures) => say(format!(
                "{backend}: {:.0} msg/s publishing alone, {:.2} CPU µs/msg ({} messages of {} B \
                 over {} topic(s), {} publisher(s), {} acknowledgements in flight)",
                figures.msgs_per_sec,
                figures.cpu_us_per_msg,
                scenario.total_messages(),
                scenario.payload_bytes,
                scenario.topics,
                scenario.publishers,
                scenario.max_in_flight
            )),
            Err(error) => {
                eprintln!(
                    "busbench: {backend}: {}",
                    crate::redact::text(&error.to_string())
                );
                status = EXIT_INFRASTRUCTURE;
            }
        }
        if let Some(code) = interrupted_exit_code() {
            return code;
        }
    }
    status
}

/// What the command line changed in the scenario, as `key=value` for the report: every `--set`,
/// then the p99 target `--find-max-rate --p99` gave.
fn run_overrides(args: &RunArgs) -> Vec<(String, String)> {
    let mut overrides = args.overrides.clone();
    if let (true, Some(p99)) = (args.find_max_rate, args.p99) {
        overrides.push((
            "search.p99".to_owned(),
            format!(
                "{} (--find-max-rate --p99)",
                humantime::format_duration(p99)
            ),
        ));
    }
    overrides
}

/// Loads the scenario with the brokers' and its own secrets registered for masking; on bad
/// input, says why on one line and returns `None` (exit 2).
fn load_scenario(
    path: &std::path::Path,
    brokers: &BrokerArgs,
    overrides: &[(String, String)],
) -> Option<Scenario> {
    crate::redact::register_url(&brokers.nats_url);
    crate::redact::register_url(&brokers.kafka_bootstrap);
    match Scenario::load_with_overrides(path, overrides) {
        Ok(mut scenario) => {
            brokers.nats_auth.apply(&mut scenario.nats);
            scenario.register_secrets();
            if let Some((key, problem)) = scenario.nats.auth_problem() {
                eprintln!(
                    "error: NATS settings (the scenario's [nats] {key}, or its flag): {}",
                    crate::redact::text(&problem)
                );
                return None;
            }
            Some(scenario)
        }
        Err(error) => {
            eprintln!("error: {}", crate::redact::text(&error.to_string()));
            None
        }
    }
}

/// The `--backends` list, each named once.
fn parse_backends(kinds: Option<&[BackendKind]>) -> Result<Option<Vec<BackendKind>>, String> {
    let Some(kinds) = kinds else {
        return Ok(None);
    };
    let mut parsed = Vec::new();
    for &kind in kinds {
        if parsed.contains(&kind) {
            return Err(format!("--backends: {kind} is listed twice"));
        }
        parsed.push(kind);
    }
    Ok(Some(parsed))
}

fn ab(args: AbArgs) -> i32 {
    let scenario = match Scenario::load(&args.scenario) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let mut thresholds = scenario.regression;
    for (value, slot) in [
        (args.throughput_drop, &mut thresholds.throughput_drop_pct),
        (args.latency_rise, &mut thresholds.latency_rise_pct),
        (args.cpu_rise, &mut thresholds.cpu_rise_pct),
        (args.significance, &mut thresholds.significance),
    ] {
        if let Some(value) = value {
            *slot = value;
        }
    }
    if !(thresholds.significance > 0.0 && thresholds.significance < 1.0) {
        eprintln!("error: --significance must be between 0 and 1");
        return EXIT_USAGE;
    }
    let mut run_args = vec![
        "--kafka-bootstrap".to_owned(),
        args.brokers.kafka_bootstrap,
        "--nats-url".to_owned(),
        args.brokers.nats_url,
    ];
    if args.brokers.nats_auth.nats_tls {
        run_args.push("--nats-tls".into());
    }
    let nats_env = args.brokers.nats_auth.to_env();
    if let Some(backends) = &args.brokers.backends {
        let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
        run_args.push("--backends".into());
        run_args.push(names.join(","));
    }
    let build = |revision: Option<String>, binary: Option<PathBuf>| match (revision, binary) {
        (Some(revision), _) => crate::ab::Build::Revision(revision),
        (None, Some(binary)) => crate::ab::Build::Binary(binary),
        (None, None) => crate::ab::Build::Current,
    };
    let options = crate::ab::AbOptions {
        scenario: args.scenario,
        base: build(args.base, args.base_bin),
        head: build(args.head, args.head_bin),
        runs: args.runs,
        out: args.out,
        run_args,
        base_env: [nats_env.clone(), args.base_env].concat(),
        head_env: [nats_env, args.head_env].concat(),
        thresholds,
        confirm: args.confirm,
    };
    watch_for_signals();
    let report = match crate::ab::run(&options) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return match error {
                crate::ab::AbError::Usage(_) | crate::ab::AbError::Refused { .. } => EXIT_USAGE,
                crate::ab::AbError::Interrupted => interrupted_exit_code().unwrap_or(130),
                crate::ab::AbError::Infrastructure(_) => EXIT_INFRASTRUCTURE,
            };
        }
    };
    say(report::ab::terminal(&report));
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let json_path = options.out.join(format!("ab-{stamp}.json"));
    let mut outputs = vec![(
        json_path,
        report::ab::json(&report).map_err(|e| e.to_string()),
    )];
    if let Some(path) = args.markdown {
        outputs.push((path, Ok(report::ab::markdown(&report).into_bytes())));
    }
    for (path, bytes) in outputs {
        let written = bytes
            .map_err(anyhow::Error::msg)
            .and_then(|bytes| report::write_atomically(&path, &bytes));
        match written {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(error) => {
                eprintln!("error: writing {}: {error:#}", path.display());
                return EXIT_INFRASTRUCTURE;
            }
        }
    }
    if report.regressed() {
        EXIT_REGRESSION
    } else {
        EXIT_OK
    }
}

fn merge(args: MergeArgs) -> i32 {
    report::set_terminal_style(args.output.style);
    let result = match crate::merge::merge_files(&args.results) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    if let Err(error) = report::check_output_dir(&args.out) {
        eprintln!("error: --out {}: {error:#}", args.out.display());
        return EXIT_USAGE;
    }
    if !print_and_write_reports(&result, args.output.format, &args.out) {
        return EXIT_INFRASTRUCTURE;
    }
    print_failures(&result);
    if result.passed {
        EXIT_OK
    } else {
        EXIT_THRESHOLD
    }
}

/// Prints a result on standard output in `format` and writes its reports into `out` (the
/// files written, or why not, on standard error); returns whether the reports were written.
fn print_and_write_reports(
    result: &crate::metrics::model::RunResult,
    format: OutputFormat,
    out: &std::path::Path,
) -> bool {
    let printed = match format {
        OutputFormat::Table => Ok(report::table::terminal(result).into_bytes()),
        OutputFormat::Json => report::Exporter::render(&report::json::JsonExporter, result),
        OutputFormat::Csv => report::Exporter::render(&report::csv::CsvExporter, result),
        OutputFormat::Markdown => {
            report::Exporter::render(&report::markdown::MarkdownExporter::default(), result)
        }
    };
    match printed {
        Ok(bytes) => say(String::from_utf8_lossy(&bytes).trim_end()),
        Err(error) => eprintln!("error: rendering the result: {error:#}"),
    }
    match report::write_reports(result, out) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
            true
        }
        Err(error) => {
            eprintln!("error: writing the reports into {}: {error}", out.display());
            false
        }
    }
}

/// Names each failed cell and why, on standard error.
fn print_failures(result: &crate::metrics::model::RunResult) {
    for cell in result.cells.iter().filter(|c| !c.failures.is_empty()) {
        eprintln!(
            "{}/{} failed: {}",
            cell.backend,
            cell.mode,
            cell.failures.join("; ")
        );
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
    report::set_terminal_style(args.output.style);
    let thresholds = args.thresholds.apply(current.scenario.settings.regression);
    judge(
        &baseline,
        &current,
        &thresholds,
        &args.thresholds,
        args.output.format,
        &|text| say(text),
    )
}

/// Compares, prints, and returns the exit code of a comparison.
fn judge(
    baseline: &crate::metrics::model::RunResult,
    current: &crate::metrics::model::RunResult,
    thresholds: &RegressionThresholds,
    args: &ThresholdArgs,
    format: OutputFormat,
    print: &dyn Fn(&str),
) -> i32 {
    match compare::compare(baseline, current, thresholds, args.policy()) {
        Ok(comparison) => {
            print(&match format {
                OutputFormat::Table => compare::terminal(&comparison, thresholds),
                OutputFormat::Markdown => compare::markdown(&comparison, thresholds),
                OutputFormat::Csv => compare::csv(&comparison).trim_end().to_owned(),
                OutputFormat::Json => compare::json(&comparison).to_string(),
            });
            if let Some(path) = &args.comparison_markdown {
                let text = compare::markdown(&comparison, thresholds);
                if let Err(error) = report::write_atomically(path, text.as_bytes()) {
                    eprintln!("error: writing {}: {error:#}", path.display());
                    return EXIT_INFRASTRUCTURE;
                }
            }
            if comparison.regressed() {
                EXIT_REGRESSION
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

/// On SIGINT (Ctrl-C) or SIGTERM (how CI runners and Kubernetes stop a process), stops the
/// run gracefully: the current phase ends within milliseconds, the cell is reported as
/// interrupted and the reports are still written; the process then exits 130 (SIGINT) or
/// 143 (SIGTERM). A second signal exits at once with the same code.
fn watch_for_signals() {
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
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut interrupt), Ok(mut terminate)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let mut first = true;
                loop {
                    let number = tokio::select! {
                        _ = interrupt.recv() => libc::SIGINT,
                        _ = terminate.recv() => libc::SIGTERM,
                    };
                    if !first {
                        std::process::exit(exit_code_for_signal(number));
                    }
                    first = false;
                    let name = if number == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    eprintln!(
                        "busbench: {name}: stopping the current cell and writing the reports \
                         (a second signal quits at once)"
                    );
                    runner::interrupt_by_signal(number);
                }
            });
        });
}

/// The exit code of a run stopped by `signal`: 128 + its number, as shells report it.
pub fn exit_code_for_signal(signal: i32) -> i32 {
    128 + signal
}

/// The exit code of an interrupted run, if it was interrupted.
fn interrupted_exit_code() -> Option<i32> {
    if !runner::interrupted() {
        return None;
    }
    Some(exit_code_for_signal(
        runner::interrupt_signal().unwrap_or(libc::SIGINT),
    ))
}

/// Writes a line to standard output; a closed pipe (`| head`, `| true`) is not an error: the
/// run goes on and its files are still written.
fn say(text: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn run(args: RunArgs) -> i32 {
    report::set_terminal_style(args.output.style);
    let Some(mut scenario) = load_scenario(&args.scenario, &args.brokers, &args.overrides) else {
        return EXIT_USAGE;
    };
    if args.find_max_rate {
        match (&mut scenario.search, args.p99) {
            (Some(search), Some(p99)) => search.p99 = p99,
            (None, Some(p99)) => scenario.search = Some(SearchSection::for_target(p99)),
            (Some(_), None) => {}
            (None, None) => {
                eprintln!(
                    "error: --find-max-rate needs a p99 target: --p99 10ms, or a [search] table \
                     with p99 in {}",
                    args.scenario.display()
                );
                return EXIT_USAGE;
            }
        }
        if let Some((key, problem)) = scenario.search.as_ref().and_then(SearchSection::problem) {
            eprintln!(
                "error: {}: key `search.{key}` (with --find-max-rate): {problem}",
                args.scenario.display()
            );
            return EXIT_USAGE;
        }
    }
    let backends = match parse_backends(args.brokers.backends.as_deref()) {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let Sharding {
        shard,
        run_id,
        start_at,
        barrier,
    } = match resolve_sharding(&args.sharding, &scenario) {
        Ok(resolved) => resolved,
        Err(error) => {
            eprintln!("error: {}: {error}", args.scenario.display());
            return EXIT_USAGE;
        }
    };
    if let Some(at) = start_at {
        let now = chrono::Utc::now();
        if at <= now {
            eprintln!(
                "busbench: --start-at {} passed {:.1} s ago: the measured phase begins as soon as \
                 set-up and warm-up end, and the result says how late it was",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                (now - at).num_milliseconds() as f64 / 1000.0
            );
        }
    }
    let overrides = run_overrides(&args);
    let options = RunOptions {
        kafka_bootstrap: args.brokers.kafka_bootstrap,
        nats_url: args.brokers.nats_url,
        kafka_version: args.kafka_version,
        backends,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        scenario_file: args.scenario.clone(),
        repeat: args.repeat,
        keep_topics: args.keep_topics,
        overrides,
        run_id,
        shard,
        start_at,
        barrier,
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
    if let Err(error) = report::check_output_dir(&args.out) {
        eprintln!("error: --out {}: {error:#}", args.out.display());
        return EXIT_USAGE;
    }
    watch_for_signals();
    let outcome = runner::run(&scenario, &options);
    let result = &outcome.result;
    let mut status = EXIT_OK;
    if !print_and_write_reports(result, args.output.format, &args.out) {
        status = EXIT_INFRASTRUCTURE;
    }
    if let Some(path) = &args.junit {
        let written = report::Exporter::render(&report::junit::JunitExporter, result)
            .and_then(|bytes| report::write_atomically(path, &bytes));
        match written {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(error) => {
                eprintln!("error: writing {}: {error:#}", path.display());
                status = EXIT_INFRASTRUCTURE;
            }
        }
    }
    print_failures(result);
    let interrupted = interrupted_exit_code();
    if let Some(path) = &args.save_baseline {
        if let Some(refusal) = baseline_refusal(result, interrupted.is_some()) {
            eprintln!(
                "error: not saving the baseline {}: {refusal}",
                path.display()
            );
            status = status.max(EXIT_THRESHOLD);
        } else if let Err(error) = save_baseline(result, path) {
            eprintln!("error: saving the baseline {}: {error:#}", path.display());
            status = EXIT_INFRASTRUCTURE;
        } else {
            eprintln!("saved baseline {}", path.display());
        }
    }
    let mut judged = EXIT_OK;
    if let Some(baseline) = baseline.as_ref().filter(|_| interrupted.is_none()) {
        let thresholds = args.thresholds.apply(scenario.regression);
        // With a machine-readable format on standard output, the comparison goes to standard
        // error so that standard output stays one document.
        let print: &dyn Fn(&str) = match args.output.format {
            OutputFormat::Table => &|text| say(text),
            _ => &|text| eprintln!("{text}"),
        };
        let format = match args.output.format {
            OutputFormat::Markdown => OutputFormat::Markdown,
            _ => OutputFormat::Table,
        };
        judged = judge(
            baseline,
            result,
            &thresholds,
            &args.thresholds,
            format,
            print,
        );
    }
    // One outcome, the most serious first.
    if let Some(code) = interrupted {
        code
    } else if outcome.infrastructure_failure || status == EXIT_INFRASTRUCTURE {
        EXIT_INFRASTRUCTURE
    } else if judged == EXIT_USAGE {
        EXIT_USAGE
    } else if !result.passed || status == EXIT_THRESHOLD {
        EXIT_THRESHOLD
    } else {
        judged
    }
}

/// Why a run must not become a baseline: a failed cell, or an interrupted run.
pub fn baseline_refusal(
    result: &crate::metrics::model::RunResult,
    interrupted: bool,
) -> Option<String> {
    if interrupted
        || result
            .cells
            .iter()
            .any(|c| c.status == crate::metrics::model::CellStatus::Interrupted)
    {
        return Some("the run was interrupted".into());
    }
    let failed: Vec<String> = result
        .cells
        .iter()
        .filter(|c| c.status != crate::metrics::model::CellStatus::Ok)
        .map(|c| format!("{}/{}", c.backend, c.mode))
        .collect();
    if !failed.is_empty() {
        return Some(format!("cells failed: {}", failed.join(", ")));
    }
    None
}

fn save_baseline(
    result: &crate::metrics::model::RunResult,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = report::Exporter::render(&report::json::JsonExporter, result)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    report::write_atomically(path, &bytes)
}
