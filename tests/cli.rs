//! The command line end to end: bad input, an unreachable broker, and a real run of
//! `scenarios/ci.toml` on memory, Kafka and NATS whose JSON is checked against the schema.

mod common;

use std::path::{Path, PathBuf};

use common::busbench;

fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn validator() -> jsonschema::Validator {
    common::result_schema()
}

#[test]
fn bad_scenarios_exit_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 100\npayload_bytes = 10\n",
    )
    .unwrap();
    let output = busbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}:5: key `payload_bytes`:", file.display());
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    assert!(!stderr.contains("panicked"));

    let missing = busbench(&["run", "no/such/file.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    let usage = busbench(&["run"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn an_unreachable_broker_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let output = busbench(&[
        "run",
        project("scenarios/ci.toml").to_str().unwrap(),
        "--backends",
        "nats",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_publish_ceiling_measures_each_broker_and_names_an_unreachable_one() {
    let output = busbench(&["ceiling", project("scenarios/ci.toml").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for backend in ["kafka", "nats"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{backend}: ")))
            .unwrap_or_else(|| panic!("no {backend} line in {stdout}"));
        let rate: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|figure| figure.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {line:?}"));
        assert!(rate > 0.0, "{line}");
    }
    assert!(!stdout.contains("memory"), "{stdout}");
    let unreachable = busbench(&[
        "ceiling",
        project("scenarios/ci.toml").to_str().unwrap(),
        "--backends",
        "nats",
        "--nats-url",
        "nats://127.0.0.1:1",
    ]);
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("nats"));
}

#[test]
fn ci_scenario_runs_on_every_backend_and_writes_valid_reports() {
    let dir = tempfile::tempdir().unwrap();
    let output = busbench(&[
        "run",
        project("scenarios/ci.toml").to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let find = |suffix: &str| {
        files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {files:?}"))
            .clone()
    };
    let json_path = find(".json");
    let markdown = std::fs::read_to_string(find(".md")).unwrap();
    let svg = std::fs::read_to_string(find("-latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    assert!(
        markdown.contains("-latency.svg)"),
        "the report links its chart"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let validator = validator();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:?}");

    let result = busbench::report::json::read(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(result.cells.len(), 6, "3 backends x 2 modes");
    for cell in &result.cells {
        let name = format!("{}/{}", cell.backend, cell.mode);
        assert_eq!(cell.sent, 20000, "{name}");
        assert_eq!(cell.received, 20000, "{name}");
        assert_eq!(cell.acknowledged, 20000, "{name}");
        assert_eq!(cell.lost, 0, "{name}");
        assert_eq!(cell.order_violations, 0, "{name}");
        assert_eq!(cell.tasks.leaked, 0, "{name}");
        assert_eq!(cell.threads.leaked, 0, "{name}");
        assert_eq!(
            cell.latency_us.e2e.count, 20000,
            "{name}: one e2e sample per message"
        );
        assert_eq!(
            cell.latency_us.publish.count, 20000,
            "{name}: one ack sample per message"
        );
        assert!(cell.throughput.e2e_msgs_per_sec > 0.0, "{name}");
        // The figures are what was counted: throughput = received / elapsed.
        let recomputed = cell.received as f64 / cell.e2e_seconds;
        assert!(
            (recomputed - cell.throughput.e2e_msgs_per_sec).abs() < 1e-6 * recomputed,
            "{name}"
        );
        assert!(cell.ceiling_msgs_per_sec.unwrap() > 0.0, "{name}");
    }
    // Each broker is warmed up once, before its first ceiling run (both modes share it); the
    // in-process backend has no broker to warm.
    for (backend, warm_ups) in [("kafka", 1), ("nats", 1), ("memory", 0)] {
        let line = format!("busbench: {backend}: warming the broker up");
        assert_eq!(
            stderr.matches(&line).count(),
            warm_ups,
            "{backend}: {stderr}"
        );
    }
    assert!(
        stdout.contains("end-to-end msg/s"),
        "the comparison table is printed"
    );
    assert_eq!(
        result.environment.brokers.get("nats").map(|v| v.is_empty()),
        Some(false)
    );
}

#[test]
fn the_schema_rejects_a_result_missing_a_required_key() {
    let validator = validator();
    let mut json: serde_json::Value = serde_json::json!({
        "schema_version": 1,
        "scenario": {},
        "environment": {},
        "started_at": "",
        "finished_at": "",
        "cells": [],
        "passed": true
    });
    assert!(
        !validator.is_valid(&json),
        "an empty scenario object lacks its keys"
    );
    json.as_object_mut().unwrap().remove("cells");
    assert!(!validator.is_valid(&json));
}

/// The client runtime's worker threads come from `client_threads`: they exist before the bus
/// is created, so a cell's thread baseline moves with them.
#[test]
fn client_threads_sets_the_runtime_threads_and_repeats_keep_every_ceiling_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: usize| {
        common::run_scenario_ok(
            dir.path(),
            &format!("threads-{threads}"),
            &format!(
                "name = \"threads-{threads}\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\n\
                 messages = 5000\nclient_threads = {threads}\n"
            ),
            &["--repeat", "2"],
        )
    };
    let (one, three) = (run(1), run(3));
    let (one, three) = (&one.cells[0], &three.cells[0]);
    assert_eq!(three.threads.baseline, one.threads.baseline + 2);
    for cell in [one, three] {
        assert_eq!(cell.threads.leaked, 0);
        let repeats = cell.repeats.as_ref().expect("two runs");
        assert_eq!(repeats.ceiling_msgs_per_sec.len(), 2, "one ceiling per run");
        // The figures went through JSON: equal to the last few digits.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        let median = busbench::metrics::model::median(&repeats.ceiling_msgs_per_sec);
        let ceiling = cell.ceiling_msgs_per_sec.expect("a ceiling");
        assert!(close(ceiling, median), "{ceiling} vs {median}");
        // Each run against the ceiling run just before it; the cell: their median.
        for ((efficiency, e2e), ceiling) in repeats
            .efficiency
            .iter()
            .zip(&repeats.e2e_msgs_per_sec)
            .zip(&repeats.ceiling_msgs_per_sec)
        {
            assert!(
                close(*efficiency, e2e / ceiling),
                "{efficiency} vs {e2e} / {ceiling}"
            );
        }
        assert_eq!(repeats.efficiency.len(), 2);
        let efficiency = cell.efficiency.expect("an efficiency");
        let expected = busbench::metrics::model::median(&repeats.efficiency);
        assert!(close(efficiency, expected), "{efficiency} vs {expected}");
    }
}

/// Runs a scenario named `name` on the memory backend, both modes, no ceiling, 10 warm-up
/// messages, with `work` (the load's keys) added.
fn run_memory(dir: &Path, name: &str, work: &str) -> busbench::metrics::model::RunResult {
    common::run_scenario_ok(
        dir,
        name,
        &format!(
            "name = \"{name}\"\nbackends = [\"memory\"]\nmodes = [\"raw\", \"envelope\"]\n\
             ceiling = false\nwarmup = 10\n{work}\n"
        ),
        &[],
    )
}

#[test]
fn a_warm_up_duration_offers_the_cells_rate_for_that_long_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, work: &str| run_memory(dir.path(), name, work);
    // At a rate: rate x duration messages, the last one due 1 s - 1/4000 s after the first.
    let paced = run(
        "paced",
        "duration = \"1s\"\nrate = 4000\nwarmup_duration = \"1s\"",
    );
    // Without a rate: as fast as it goes, for at least the duration.
    let flat_out = run("flat-out", "messages = 2000\nwarmup_duration = \"300ms\"");
    // Without a duration: the `warmup` messages, at once.
    let counted = run("counted", "messages = 2000");
    for cell in &paced.cells {
        assert_eq!(cell.warmup_messages, Some(4000), "{}", cell.mode);
        assert!(cell.warmup_ms.unwrap() >= 999.75, "{:?}", cell.warmup_ms);
        assert_eq!(cell.received, 4000, "the warm-up is not measured");
    }
    for cell in &flat_out.cells {
        assert!(
            cell.warmup_messages.unwrap() > 10,
            "{:?}",
            cell.warmup_messages
        );
        assert!(cell.warmup_ms.unwrap() >= 300.0, "{:?}", cell.warmup_ms);
        assert_eq!(cell.received, 2000);
    }
    for cell in &counted.cells {
        assert_eq!(cell.warmup_messages, Some(10));
    }
}

#[test]
fn a_paced_cell_records_each_message_s_send_lag_and_a_flat_out_one_none() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, work: &str| run_memory(dir.path(), name, work);
    let paced = run("paced", "duration = \"1s\"\nrate = 3000");
    let flat_out = run("flat-out", "messages = 3000");
    for cell in &paced.cells {
        let lag = cell.latency_us.send_lag;
        assert_eq!(lag.count, 3000, "{}: one sample per message", cell.mode);
        assert!(lag.p50 <= lag.p99 && lag.p99 <= lag.max, "{lag:?}");
        // The lag is a part of the latency measured from the same intended send time.
        assert!(lag.p50 <= cell.latency_us.e2e.p50, "{lag:?}");
        let histogram = busbench::metrics::latency::decode(&cell.histograms.send_lag).unwrap();
        assert_eq!(histogram.len(), 3000);
    }
    for cell in &flat_out.cells {
        assert_eq!(cell.latency_us.send_lag.count, 0, "{}", cell.mode);
        assert!(cell.histograms.send_lag.is_empty());
    }
}

#[test]
fn steadiness_times_the_same_work_in_slices_and_refuses_a_bad_duration() {
    let output = busbench(&["steadiness", "--duration", "1s", "--json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let slices = json["slice_ms"].as_array().expect("every slice's time");
    // Slices of about 50 ms for a second, however slow the machine is at times.
    assert!(slices.len() >= 5, "{json}");
    let figure = |key: &str| json[key].as_f64().unwrap();
    assert!(figure("fastest_ms") > 0.0);
    assert!(figure("fastest_ms") <= figure("median_ms"));
    assert!(figure("median_ms") <= figure("slowest_ms"));
    assert!((figure("range") - figure("slowest_ms") / figure("fastest_ms")).abs() < 1e-9);
    let text = busbench(&["steadiness", "--duration", "1s"]);
    assert_eq!(text.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&text.stdout).contains("slices of the same work"));
    for bad in ["0s", "500ms", "11m", "soon"] {
        let refused = busbench(&["steadiness", "--duration", bad]);
        assert_eq!(refused.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("--duration"),
            "{bad}"
        );
    }
}
