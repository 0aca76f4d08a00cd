//! Split runs: `busbench run --shard I/N` in several processes, `busbench merge`, the start
//! barrier, and the input both refuse. The memory backend checks the arithmetic; Kafka and
//! NATS check that shards running at once on one broker keep to their own topics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use busbench::metrics::latency;
use busbench::metrics::model::{CellStatus, RunResult};
use common::{busbench, busbench_command};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scenario of `messages` messages on `backends`, both modes.
fn scenario(dir: &Path, backends: &str, messages: u64) -> PathBuf {
    let path = dir.join("split.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"split\"\nbackends = [{backends}]\nmodes = [\"raw\", \"envelope\"]\n\
             messages = {messages}\nwarmup = 30\ntopics = 2\npartitions = 2\naggregates = 20\n\
             payload_bytes = 64\npublishers = 4\nmax_in_flight = 256\ntimeout = \"60s\"\n"
        ),
    )
    .unwrap();
    path
}

/// The JSON result a run wrote into `out` (the only JSON file there).
fn result_in(out: &Path) -> (PathBuf, RunResult) {
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "one result in {}: {files:?}", out.display());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let errors: Vec<String> = common::result_schema()
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:?}");
    (files[0].clone(), serde_json::from_value(json).unwrap())
}

/// Runs `count` shards of `scenario` at once, each in its own process and folder, with
/// `extra` flags; returns each shard's result file.
fn run_shards(dir: &Path, scenario: &Path, count: u32, extra: &[&str]) -> Vec<PathBuf> {
    let children: Vec<_> = (0..count)
        .map(|index| {
            let out = dir.join(format!("shard{index}"));
            let child = busbench_command()
                .args([
                    "run",
                    scenario.to_str().unwrap(),
                    "--no-progress",
                    "--format",
                    "json",
                    "--out",
                    out.to_str().unwrap(),
                    "--shard",
                    &format!("{index}/{count}"),
                ])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting a shard");
            (out, child)
        })
        .collect();
    children
        .into_iter()
        .map(|(out, child)| {
            let output = child.wait_with_output().unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "a shard failed: {}",
                text(&output.stderr)
            );
            result_in(&out).0
        })
        .collect()
}

fn merge(dir: &Path, files: &[PathBuf]) -> Output {
    let mut args = vec![
        "merge".to_owned(),
        "--format".into(),
        "json".into(),
        "--out".into(),
        dir.join("merged").display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    busbench(&args)
}

fn merged(output: &Output) -> RunResult {
    assert_eq!(
        output.status.code(),
        Some(0),
        "merge failed: {}",
        text(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors: Vec<String> = common::result_schema()
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:?}");
    serde_json::from_value(json).unwrap()
}

fn read(path: &Path) -> RunResult {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Three memory shards of a load that does not divide by three: the shares add up to the
/// scenario exactly, and the merged result's counts are the sums.
#[test]
fn three_shards_add_up_to_the_scenario_and_merge_into_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "\"memory\"", 3001);
    let run_id = format!("t{}", uuid::Uuid::now_v7().simple());
    let files = run_shards(dir.path(), &path, 3, &["--run-id", &run_id]);
    let shards: Vec<RunResult> = files.iter().map(|f| read(f)).collect();
    let hash = &shards[0].scenario.hash;
    for (index, shard) in shards.iter().enumerate() {
        let info = shard.shard.as_ref().expect("a shard says which it is");
        assert_eq!((info.index, info.count), (index as u32, 3));
        assert_eq!(&shard.run_id, &run_id);
        assert_eq!(
            &shard.scenario.hash, hash,
            "every shard carries the whole workload"
        );
        assert_eq!(shard.scenario.settings.messages, Some(3001));
    }
    for cell_index in 0..2 {
        let planned: Vec<u64> = shards.iter().map(|s| s.cells[cell_index].planned).collect();
        assert_eq!(
            planned,
            vec![1001, 1000, 1000],
            "the first shard takes the remainder"
        );
    }
    let output = merge(dir.path(), &files);
    let result = merged(&output);
    assert!(result.passed, "{:?}", result.cells);
    assert_eq!(result.merged_from.len(), 3);
    assert_eq!(result.run_id, run_id);
    assert!(result.shard.is_none());
    assert_eq!(result.cells.len(), 2);
    for (cell_index, cell) in result.cells.iter().enumerate() {
        let parts: Vec<_> = shards.iter().map(|s| &s.cells[cell_index]).collect();
        assert_eq!(cell.status, CellStatus::Ok, "{:?}", cell.failures);
        assert_eq!(cell.planned, 3001);
        assert_eq!(cell.sent, 3001);
        assert_eq!(cell.received, 3001);
        assert_eq!(cell.lost, 0);
        assert_eq!(
            cell.duplicates,
            parts.iter().map(|c| c.duplicates).sum::<u64>()
        );
        assert_eq!(
            cell.acknowledged,
            parts.iter().map(|c| c.acknowledged).sum::<u64>()
        );
        assert_eq!(cell.latency_us.e2e.count, 3001);
        assert_eq!(cell.shards.len(), 3);
        // Throughput over the union of the windows: never more than the shards' sum.
        let sum: f64 = parts.iter().map(|c| c.throughput.e2e_msgs_per_sec).sum();
        assert!(cell.throughput.e2e_msgs_per_sec <= sum * 1.0001);
        assert!(cell.e2e_seconds >= parts.iter().map(|c| c.e2e_seconds).fold(0.0, f64::max));
        let handled: u64 = cell.timeline.iter().map(|s| s.handled).sum();
        assert_eq!(
            handled, 3001,
            "the merged timeline adds the shards' seconds"
        );
    }
    let markdown = std::fs::read_dir(dir.path().join("merged"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .expect("a merged markdown report");
    assert!(
        markdown
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-merged.md")
    );
    let markdown = std::fs::read_to_string(markdown).unwrap();
    assert!(markdown.contains("## Shards"), "{markdown}");

    // The merged histogram is exactly the histogram of every sample: shards given known
    // samples merge into the histogram of all of them, at every recorded value.
    let mut everything = latency::new_histogram();
    let mut inputs = Vec::new();
    let mut random = fastrand::Rng::with_seed(7);
    for (file, mut shard) in files.iter().cloned().zip(shards.iter().cloned()) {
        let mut own = latency::new_histogram();
        for _ in 0..20_000 {
            // Spread over six decades, where bucket widths differ.
            let value = 10f64.powf(random.f64() * 6.0) as u64;
            latency::record(&mut own, value);
            latency::record(&mut everything, value);
        }
        for cell in &mut shard.cells {
            cell.histograms.e2e = latency::encode(&own);
        }
        inputs.push((file, shard));
    }
    let result = busbench::merge::merge(&inputs).unwrap();
    let merged = latency::decode(&result.cells[0].histograms.e2e).unwrap();
    assert_eq!(merged.len(), everything.len());
    for recorded in everything.iter_recorded() {
        let value = recorded.value_iterated_to();
        assert_eq!(
            merged.count_at(value),
            everything.count_at(value),
            "count at {value}"
        );
    }
    for per_mille in 0..=1000 {
        let quantile = f64::from(per_mille) / 1000.0;
        assert_eq!(
            merged.value_at_quantile(quantile),
            everything.value_at_quantile(quantile),
            "quantile {quantile}"
        );
    }
    assert_eq!(
        result.cells[0].latency_us.e2e,
        latency::Percentiles::of(&everything)
    );
}

/// `merge` refuses, with exit 2 and one line, anything that is not every shard of one run.
#[test]
fn merge_refuses_shards_of_other_runs_duplicates_and_files_that_are_not_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "\"memory\"", 300);
    let run_id = format!("t{}", uuid::Uuid::now_v7().simple());
    let files = run_shards(dir.path(), &path, 3, &["--run-id", &run_id]);
    let doctored = |name: &str, change: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
        change(&mut json);
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        path
    };
    let other_run = doctored("other-run.json", &|json| {
        json["run_id"] = "another-run".into();
    });
    let other_workload = doctored("other-workload.json", &|json| {
        json["scenario"]["hash"] = "w1-0000000000000000".into();
    });
    let unsharded = doctored("unsharded.json", &|json| {
        json.as_object_mut().unwrap().remove("shard");
    });
    let copy = dir.path().join("copy.json");
    std::fs::copy(&files[0], &copy).unwrap();
    let not_json = dir.path().join("notes.txt");
    std::fs::write(&not_json, "not a result\n").unwrap();
    let cases: Vec<(Vec<&PathBuf>, &str)> = vec![
        (vec![&files[0], &other_run, &files[2]], "different runs"),
        (
            vec![&files[0], &other_workload, &files[2]],
            "different workloads",
        ),
        (vec![&files[0], &copy, &files[1], &files[2]], "both shard 0"),
        (vec![&files[0], &files[1]], "missing: shard 2"),
        (
            vec![&files[0], &not_json, &files[2]],
            "not a busbench result",
        ),
        (vec![&files[0], &unsharded, &files[2]], "not a shard"),
    ];
    for (inputs, expected) in cases {
        let inputs: Vec<PathBuf> = inputs.into_iter().cloned().collect();
        let output = merge(dir.path(), &inputs);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The shards themselves merge.
    let result = merged(&merge(dir.path(), &files));
    assert!(result.cells.iter().all(|c| c.received == 300));
}

/// Bad `--shard`, `--shards`, `--run-id` and `--start-at` values: exit 2 naming the flag,
/// before anything runs.
#[test]
fn bad_shard_flags_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "\"memory\"", 300);
    let path = path.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let base = ["run", path, "--no-progress", "--out", out];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--shard", "0/0"], "--shard"),
        (vec!["--shard", "5/3", "--run-id", "r"], "--shard"),
        (vec!["--shard", "1/3"], "--run-id"),
        (vec!["--shard", "0/2", "--run-id", "a.b"], "--run-id"),
        (vec!["--start-at", "soon"], "--start-at"),
        (vec!["--shard", "0/400", "--run-id", "r"], "cannot be split"),
        (
            vec!["--shards", "3", "--run-id", "r"],
            "JOB_COMPLETION_INDEX",
        ),
    ];
    for (flags, named) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(&flags);
        let output = busbench_command()
            .args(&args)
            .env_remove("JOB_COMPLETION_INDEX")
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{flags:?} must name {named}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = busbench_command()
        .args(base)
        .args(["--shards", "3", "--run-id", "r"])
        .env("JOB_COMPLETION_INDEX", "3")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("numbered from 0 to 2"), "{stderr}");
    assert!(
        !dir.path().join("out").exists()
            || std::fs::read_dir(dir.path().join("out")).unwrap().count() == 0,
        "nothing ran"
    );
}

/// A start time in the past starts at once and says so; one in the future is waited for, and
/// the measured phase never begins before it.
#[test]
fn the_start_barrier_waits_for_its_time_and_a_past_time_starts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "\"memory\"", 300);
    let run = |out: &str, start_at: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let output = busbench_command()
            .args([
                "run",
                path.to_str().unwrap(),
                "--no-progress",
                "--out",
                out.to_str().unwrap(),
                "--start-at",
                start_at,
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        (text(&output.stderr), result_in(&out).1)
    };
    let (stderr, result) = run("past", "2020-01-01T00:00:00Z", &[]);
    assert!(stderr.contains("passed"), "{stderr}");
    let first = &result.cells[0];
    assert!(
        first.start_late_ms.unwrap() > 1e9,
        "{:?}",
        first.start_late_ms
    );
    assert!(
        first.warnings.iter().any(|w| w.contains("--start-at")),
        "{:?}",
        first.warnings
    );
    assert_eq!(
        result.run_id, "20200101T000000Z",
        "the run id comes from the time"
    );
    assert!(
        result.cells[1].start_late_ms.is_none(),
        "only the first measured phase waits"
    );

    let (_, result) = run("future", "4s", &["--shard", "0/1", "--run-id", "barrier"]);
    let start_at = result.shard.as_ref().unwrap().start_at.clone().unwrap();
    let start_at = chrono::DateTime::parse_from_rfc3339(&start_at).unwrap();
    let first = &result.cells[0];
    let began = first.measured_from.unwrap();
    assert!(
        began >= start_at,
        "the measured phase began at {began}, before the start time {start_at}"
    );
    assert!(
        first.start_late_ms.unwrap() < 1000.0,
        "{:?}",
        first.start_late_ms
    );
    assert_eq!(first.received, 300);
}

/// Two shards at once on the real brokers, lined up by an absolute start time and the
/// barrier: each keeps to its own topics (nothing lost, nothing taken from the other), every
/// cell's measured phases begin together, and the merge adds up to the scenario.
#[test]
fn shards_on_kafka_and_nats_run_at_once_on_their_own_topics_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "\"kafka\", \"nats\"", 4001);
    let start_at = (chrono::Utc::now() + chrono::Duration::seconds(20))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let barrier = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let files = run_shards(
        dir.path(),
        &path,
        2,
        &["--start-at", &start_at, "--barrier", &barrier],
    );
    let shards: Vec<RunResult> = files.iter().map(|f| read(f)).collect();
    assert_eq!(
        shards[0].run_id, shards[1].run_id,
        "the run id comes from the time"
    );
    let result = merged(&merge(dir.path(), &files));
    assert_eq!(result.cells.len(), 4);
    for cell in &result.cells {
        assert_eq!(cell.status, CellStatus::Ok, "{:?}", cell.failures);
        assert_eq!(
            (
                cell.planned,
                cell.sent,
                cell.received,
                cell.lost,
                cell.duplicates
            ),
            (4001, 4001, 4001, 0, 0),
            "{}/{}",
            cell.backend,
            cell.mode
        );
        assert_eq!(cell.order_violations, 0);
        // Broker cells wait for a quiet machine before measuring (bounded by 3 s, plus one
        // 200 ms sample).
        let quiet = cell.quiet_wait_ms.expect("a broker cell's quiet start");
        assert!((0.0..=3500.0).contains(&quiet), "{quiet} ms");
        assert!(
            cell.busy_at_start.is_some_and(|b| (0.0..=1.0).contains(&b)),
            "{:?}",
            cell.busy_at_start
        );
    }
    for cell in &result.cells {
        let offsets: Vec<f64> = cell
            .shards
            .iter()
            .map(|s| s.start_offset_ms.unwrap())
            .collect();
        assert!(
            offsets.iter().all(|o| *o < 500.0),
            "{}/{}: the measured phases began {offsets:?} ms apart",
            cell.backend,
            cell.mode
        );
        assert!(
            cell.warnings.iter().all(|w| !w.contains("apart")),
            "{:?}",
            cell.warnings
        );
    }
    let first = &result.cells[0];
    assert!(
        first
            .shards
            .iter()
            .all(|s| s.start_late_ms.unwrap() < 1000.0),
        "{:?}",
        first.shards
    );
}
