//! The output contract: standard output carries the results only, in the format asked for
//! (table, JSON, CSV, markdown), JUnit XML on request, the exit-code table, the refusal to save
//! a failed run as a baseline, `--version`, shell completions and the man page, and
//! `--keep-topics` against the real NATS broker.

mod common;

use std::path::{Path, PathBuf};

use busbench::metrics::model::RunResult;
use common::busbench;

/// A small memory-only scenario; `extra` is appended (a `[thresholds]` section, say).
fn scenario(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"small\"\nbackends = [\"memory\"]\nmodes = [\"raw\", \"envelope\"]\n\
             messages = 2000\nwarmup = 100\ntopics = 2\naggregates = 20\npayload_bytes = 64\n\
             publishers = 2\nmax_in_flight = 64\ntimeout = \"30s\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(dir: &Path, scenario: &Path, extra: &[&str]) -> std::process::Output {
    common::run_into(scenario, &dir.join("out"), extra)
}

fn result_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON result")
}

#[test]
fn csv_on_stdout_parses_back_to_the_json_figures() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(dir.path(), "");
    let output = run(dir.path(), &file, &["--format", "csv"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header, busbench::report::csv::COLUMNS);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "one row per cell: {stdout}");
    let result: RunResult =
        serde_json::from_str(&std::fs::read_to_string(result_file(dir.path())).unwrap()).unwrap();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (row, cell) in rows.iter().zip(&result.cells) {
        assert_eq!(row.len(), header.len());
        assert_eq!(row[column("backend")], cell.backend.name());
        assert_eq!(row[column("mode")], cell.mode.name());
        assert_eq!(row[column("received")], cell.received.to_string());
        assert_eq!(row[column("received")], "2000");
        let e2e: f64 = row[column("e2e_msgs_per_sec")].parse().unwrap();
        // serde_json's default float parsing may land one unit in the last place away from
        // the value the CSV spells exactly.
        let json_e2e = cell.throughput.e2e_msgs_per_sec;
        assert!(
            (e2e - json_e2e).abs() <= json_e2e.abs() * 1e-12,
            "{e2e} vs {json_e2e}"
        );
        let p99: u64 = row[column("e2e_p99_us")].parse().unwrap();
        assert_eq!(p99, cell.latency_us.e2e.p99);
        let summary = cell.timeline_summary.expect("a timeline");
        assert_eq!(
            row[column("peak_backlog")],
            summary.peak_backlog.to_string()
        );
        assert_eq!(
            row[column("max_rate_at_p99_target")],
            "",
            "no search: empty"
        );
    }
    // Diagnostics and the files written are on standard error, not mixed into the CSV.
    let stderr = text(&output.stderr);
    assert!(stderr.contains("wrote "), "{stderr}");
    assert!(!stdout.contains("wrote "), "{stdout}");
}

#[test]
fn json_on_stdout_is_one_result_and_junit_has_a_case_per_cell_and_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(dir.path(), "[thresholds]\nmax_e2e_p99_ms = 60000.0\n");
    let junit = dir.path().join("junit.xml");
    let output = run(
        dir.path(),
        &file,
        &["--format", "json", "--junit", junit.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let result: RunResult = serde_json::from_slice(&output.stdout).expect("stdout is the result");
    assert_eq!(result.cells.len(), 2);
    let xml = std::fs::read_to_string(&junit).unwrap();
    // Per cell: the run itself and five thresholds (success, order, tasks, threads, p99).
    assert_eq!(xml.matches("<testcase ").count(), 2 * 6, "{xml}");
    assert!(
        xml.contains("tests=\"12\" failures=\"0\" skipped=\"0\""),
        "{xml}"
    );
    assert!(
        xml.contains("name=\"end-to-end p99 &lt;= 60000 ms\""),
        "{xml}"
    );
}

#[test]
fn a_failed_run_is_not_saved_as_a_baseline_and_its_thresholds_fail_in_junit() {
    let dir = tempfile::tempdir().unwrap();
    // No handler starts within a nanosecond of its send: every cell fails its p99.
    let file = scenario(dir.path(), "[thresholds]\nmax_e2e_p99_ms = 0.000001\n");
    let baseline = dir.path().join("baseline.json");
    let junit = dir.path().join("junit.xml");
    let output = run(
        dir.path(),
        &file,
        &[
            "--save-baseline",
            baseline.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!baseline.exists(), "a failed run was saved as a baseline");
    assert!(
        stderr.contains("not saving the baseline") && stderr.contains("memory/raw"),
        "{stderr}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("failures=\"2\""), "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 2, "{xml}");
}

#[test]
fn a_regression_exits_4_a_failed_threshold_1_and_help_lists_every_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(dir.path(), "");
    let output = run(dir.path(), &file, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let good = result_file(dir.path());
    // The same result with a message lost: a correctness regression.
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&good).unwrap()).unwrap();
    value["cells"][0]["lost"] = 1.into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&value).unwrap()).unwrap();
    let same = busbench(&["compare", good.to_str().unwrap(), good.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stdout));
    let worse = busbench(&["compare", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(worse.status.code(), Some(4), "{}", text(&worse.stdout));
    // The comparison as JSON and as CSV.
    let json = busbench(&[
        "compare",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let verdict: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdict["regressed"], true);
    let csv = busbench(&[
        "compare",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    let csv = text(&csv.stdout);
    assert!(csv.starts_with("cell,metric,figure,baseline,current,change_pct,verdict\n"));
    assert!(csv.lines().any(|l| l.contains(",correctness,")), "{csv}");

    let help = text(&busbench(&["--help"]).stdout);
    for code in [
        busbench::cli::EXIT_OK,
        busbench::cli::EXIT_THRESHOLD,
        busbench::cli::EXIT_USAGE,
        busbench::cli::EXIT_INFRASTRUCTURE,
        busbench::cli::EXIT_REGRESSION,
        busbench::cli::EXIT_SIGINT,
        busbench::cli::EXIT_SIGTERM,
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit code {code} missing from --help: {help}"
        );
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for code in [0, 1, 2, 3, 4, 130, 143] {
        assert!(
            readme.contains(&format!("| {code} |")),
            "exit code {code} missing from the README's table"
        );
    }
}

#[test]
fn version_completions_man_page_and_backend_names() {
    let version = text(&busbench(&["--version"]).stdout);
    assert!(version.starts_with("busbench "), "{version}");
    assert!(version.contains("(commit "), "{version}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = busbench(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0));
        let script = text(&output.stdout);
        assert!(
            script.contains("busbench") && script.contains("save-baseline"),
            "{shell}: {script}"
        );
    }
    let man = text(&busbench(&["man"]).stdout);
    assert!(man.contains(".TH busbench 1"), "{man}");
    let unknown = busbench(&["run", "scenarios/ci.toml", "--backends", "rabbit"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = text(&unknown.stderr);
    assert!(
        stderr.contains("kafka") && stderr.contains("nats") && stderr.contains("memory"),
        "the possible values are listed: {stderr}"
    );
    let help = text(&busbench(&["run", "--help"]).stdout);
    assert!(
        help.contains("Possible values") && help.contains("- memory"),
        "{help}"
    );
}

#[test]
fn keep_topics_leaves_the_nats_streams_and_the_report_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keep.toml");
    std::fs::write(
        &file,
        "name = \"keep\"\nbackends = [\"nats\"]\nmodes = [\"raw\"]\nmessages = 500\nwarmup = 10\n\
         topics = 2\npayload_bytes = 32\npublishers = 1\nmax_in_flight = 64\ntimeout = \"60s\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &file, &["--keep-topics", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let result: RunResult = serde_json::from_slice(&output.stdout).unwrap();
    let kept = &result.cells[0].kept_topics;
    assert_eq!(kept.len(), 2, "{kept:?}");
    let report = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .unwrap();
    let report = std::fs::read_to_string(report).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(common::nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        for stream in kept {
            assert!(report.contains(stream.as_str()), "{report}");
            let mut info = jetstream
                .get_stream(stream)
                .await
                .expect("the stream was kept");
            let messages = info.info().await.unwrap().state.messages;
            assert!(messages > 0, "{stream} holds the run's messages");
            jetstream.delete_stream(stream).await.unwrap();
        }
    });
}

#[test]
fn set_overrides_scenario_values_and_the_report_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(dir.path(), "");
    let output = run(
        dir.path(),
        &file,
        &[
            "--set",
            "messages=500",
            "--set",
            "payload_bytes=40",
            "--format",
            "json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let result: RunResult = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        result
            .cells
            .iter()
            .all(|c| c.planned == 500 && c.received == 500)
    );
    assert_eq!(result.scenario.settings.payload_bytes, 40);
    assert_eq!(
        result.scenario.overrides,
        ["messages=500", "payload_bytes=40"]
    );
    let plain = busbench::scenario::Scenario::load(&file).unwrap();
    assert_ne!(result.scenario.hash, plain.workload_hash());
    let markdown = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .unwrap();
    let markdown = std::fs::read_to_string(markdown).unwrap();
    assert!(
        markdown.contains("Overridden on the command line: `messages=500`, `payload_bytes=40`."),
        "{markdown}"
    );

    for (set, key) in [("messages=0", "messages"), ("no_such_key=1", "no_such_key")] {
        let refused = run(dir.path(), &file, &["--set", set]);
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{set}: {stderr}");
        assert!(
            stderr.contains(&format!("--set {set}")) && stderr.contains(key),
            "{set}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }
}
