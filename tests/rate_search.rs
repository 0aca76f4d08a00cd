//! The rate search and the per-second timeline, on the memory backend with a handler of known
//! capacity (a simulated downstream taking 1 ms per message: 1,000 msg/s), and the search's
//! bad input.

mod common;

use std::path::{Path, PathBuf};

use busbench::metrics::model::{CellStatus, RunResult};
use common::busbench;

/// A memory scenario whose handler serves 1,000 messages per second; `extra` is appended.
fn scenario(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("capacity.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"capacity\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 1000\nwarmup = 20\n\
             topics = 1\npayload_bytes = 64\npublishers = 1\nmax_in_flight = 64\n\
             timeout = \"30s\"\n\n[handler]\nservice_time = \"1ms\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn search(dir: &Path, scenario: &Path, p99: &str) -> (std::process::Output, Option<RunResult>) {
    let out = dir.join(format!("out-{p99}"));
    let output = busbench(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-progress",
        "--find-max-rate",
        "--p99",
        p99,
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) {
        let errors: Vec<String> = common::result_schema()
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "schema violations: {errors:?}");
    }
    let result = serde_json::from_slice(&output.stdout).ok();
    (output, result)
}

#[test]
fn the_search_finds_a_known_capacity_and_says_when_no_rate_meets_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(
        dir.path(),
        "\n[search]\np99 = \"1s\"\nstep = \"2s\"\nmin_rate = 200\nmax_rate = 4000\nprecision = 0.05\n",
    );
    let (output, result) = search(dir.path(), &path, "20ms");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let result = result.expect("a JSON result on stdout");
    let cell = &result.cells[0];
    let found = cell.search.as_ref().expect("the search's figures");
    assert_eq!(
        found.target_p99_us, 20_000,
        "--p99 replaces the scenario's target"
    );
    assert_eq!(
        result.scenario.overrides,
        ["search.p99=20ms (--find-max-rate --p99)"],
        "the report lists what the command line changed"
    );
    let max = found.max_rate.expect("a passing rate") as f64;
    assert!(
        (900.0..=1100.0).contains(&max),
        "max rate {max} is not within 10% of the capacity of 1000 msg/s: {:#?}",
        found.steps
    );
    // The reported rate's step really met the target, and a step above it really failed.
    let step = found
        .steps
        .iter()
        .find(|s| s.passed && s.offered_rate as f64 == max)
        .expect("the passing step of the max rate");
    assert!(
        step.e2e_p99_us <= 20_000 && step.e2e_p99_us >= 1000,
        "{step:?}"
    );
    assert!(step.reasons.is_empty());
    assert!(
        found
            .steps
            .iter()
            .any(|s| !s.passed && s.offered_rate >= 1000 && !s.reasons.is_empty()),
        "{:#?}",
        found.steps
    );
    assert_eq!(found.steps[0].offered_rate, 200);
    assert_eq!(found.steps[1].offered_rate, 400);
    let warm_up = found.warm_up.as_ref().expect("an unjudged warm-up run");
    assert_eq!(warm_up.offered_rate, 200);
    assert!(!warm_up.passed, "a warm-up is never judged a pass");
    // The cell's figures are those of the max-rate step, second by second.
    assert_eq!(cell.status, CellStatus::Ok);
    assert_eq!(cell.lost, 0);
    let offered: u64 = cell.timeline.iter().map(|s| s.offered).sum();
    let handled: u64 = cell.timeline.iter().map(|s| s.handled).sum();
    assert_eq!(
        offered, cell.planned,
        "every planned message is in the timeline"
    );
    assert_eq!(handled, cell.received);
    assert!(!cell.timeline_summary.unwrap().backlog_growing);
    // The failing steps above capacity fell behind: their backlog grew.
    assert!(
        found
            .steps
            .iter()
            .filter(|s| s.offered_rate >= 1600)
            .all(|s| !s.passed && s.backlog_growing),
        "{:#?}",
        found.steps
    );
    let reports: Vec<String> = std::fs::read_dir(dir.path().join("out-20ms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        reports.iter().any(|n| n.ends_with("-max-rate.svg")),
        "{reports:?}"
    );
    assert!(
        reports.iter().any(|n| n.ends_with("-timeline.svg")),
        "{reports:?}"
    );

    // A target below the handler's own service time: no rate can pass.
    let (output, result) = search(dir.path(), &path, "500us");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let result = result.expect("a JSON result on stdout");
    let cell = &result.cells[0];
    let found = cell.search.as_ref().unwrap();
    assert_eq!(found.max_rate, None);
    assert_eq!(
        found.steps.len(),
        1,
        "the first step failed: the search stops"
    );
    assert!(found.ended.contains("no rate passed"), "{}", found.ended);
    assert_eq!(cell.status, CellStatus::Failed);
    assert!(
        cell.failures
            .iter()
            .any(|f| f.contains("no offered rate met the end-to-end p99 target of 500 µs")),
        "{:?}",
        cell.failures
    );
}

#[test]
fn bad_search_input_exits_2_naming_the_flag_or_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let plain = scenario(dir.path(), "");
    let plain = plain.to_str().unwrap();
    for (args, expected) in [
        (vec!["--find-max-rate", "--p99", "0ms"], "--p99"),
        (vec!["--find-max-rate", "--p99=-5ms"], "--p99"),
        (vec!["--find-max-rate", "--p99", "soon"], "--p99"),
        (
            vec!["--find-max-rate"],
            "--find-max-rate needs a p99 target",
        ),
        (vec!["--p99", "10ms"], "--find-max-rate"),
    ] {
        let mut all = vec!["run", plain, "--no-progress"];
        all.extend(args.iter().copied());
        let output = busbench(&all);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    for (table, key, line) in [
        ("p99 = \"0s\"", "search.p99", 16),
        (
            "p99 = \"10ms\"\nmin_rate = 9000\nmax_rate = 10",
            "search.max_rate",
            18,
        ),
        ("p99 = \"10ms\"\nstep = \"200ms\"", "search.step", 17),
    ] {
        let path = scenario(dir.path(), &format!("\n[search]\n{table}\n"));
        let output = busbench(&["run", path.to_str().unwrap(), "--no-progress"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{table}: {stderr}");
        assert!(
            stderr.contains(&format!("capacity.toml:{line}: key `{key}`")),
            "{table}: {stderr}"
        );
    }
}
