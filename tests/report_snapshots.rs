//! Snapshot tests of the terminal table and the markdown report, on a fixed result.
//! Run with `UPDATE_SNAPSHOTS=1` to rewrite the snapshots after an intended change.

use std::collections::BTreeMap;
use std::path::Path;

use busbench::metrics::latency::{self, Percentiles};
use busbench::metrics::model::*;
use busbench::report::Exporter;
use busbench::report::markdown::MarkdownExporter;
use busbench::scenario::{BackendKind, Mode, Scenario};

fn cell(backend: BackendKind, mode: Mode, scale: f64) -> CellResult {
    let mut e2e = latency::new_histogram();
    for v in 1..=1000u64 {
        latency::record(&mut e2e, (v as f64 * scale) as u64);
    }
    let p = Percentiles::of(&e2e);
    // Handed to the bus a tenth as late as the messages were handled.
    let mut send_lag = latency::new_histogram();
    for v in 1..=1000u64 {
        latency::record(&mut send_lag, (v as f64 * scale / 10.0) as u64);
    }
    let mut cell = CellResult {
        backend,
        mode,
        status: if scale > 2.0 {
            CellStatus::Failed
        } else {
            CellStatus::Ok
        },
        failures: if scale > 2.0 {
            vec!["end-to-end p99 2970.0 ms is above 1000 ms".into()]
        } else {
            vec![]
        },
        planned: 1000,
        sent: 1000,
        acknowledged: 1000,
        publish_errors: 0,
        unconfirmed: 0,
        received: 1000,
        lost: 0,
        duplicates: 0,
        order_violations: 0,
        success_rate: 1.0,
        publish_seconds: 0.5 * scale,
        e2e_seconds: 1.0 * scale,
        throughput: Throughput {
            publish_msgs_per_sec: 2000.0 / scale,
            e2e_msgs_per_sec: 1000.0 / scale,
            e2e_mb_per_sec: 0.128 / scale,
        },
        latency_us: Latency {
            publish: p,
            e2e: p,
            send_lag: Percentiles::of(&send_lag),
        },
        histograms: Histograms {
            publish: latency::encode(&e2e),
            e2e: latency::encode(&e2e),
            send_lag: latency::encode(&send_lag),
        },
        memory: Memory {
            rss_baseline_bytes: 10 << 20,
            rss_peak_bytes: 20 << 20,
            rss_growth_bytes: 1 << 20,
        },
        tasks: Tasks {
            baseline: 1,
            peak: 40,
            leaked: 0,
        },
        threads: Threads {
            baseline: 4,
            peak: 12,
            leaked: 0,
        },
        cpu_us_per_msg: 10.0 * scale,
        whole_cell_cpu_us_per_msg: 12.0 * scale,
        ceiling_msgs_per_sec: Some(4000.0),
        bare_client_msgs_per_sec: Some(5000.0),
        ceiling_cpu_us_per_msg: Some(3.5),
        efficiency: Some(if scale == 1.5 { 1.25 } else { 0.25 / scale }),
        work_per_msg: WorkPerMessage {
            allocations: Some(12.0 * scale),
            allocated_bytes: Some(2048.0 * scale),
            context_switches: 0.05,
        },
        faults: vec![],
        kept_topics: Vec::new(),
        warnings: if scale == 1.5 {
            vec!["bus efficiency 125% is above 100% by more than the noise (5%): the client ceiling was not a ceiling on this load; do not read it as the bus beating its client".into()]
        } else {
            vec![]
        },
        repeats: None,
        timeline: Vec::new(),
        timeline_summary: None,
        search: None,
        measured_from: None,
        start_late_ms: None,
        warmup_messages: None,
        warmup_ms: None,
        quiet_wait_ms: None,
        busy_at_start: None,
        shards: Vec::new(),
    };
    let (mut acknowledged, mut handled) = (0, 0);
    cell.timeline = (0..4u32)
        .map(|second| {
            let offered = if second < 3 { 400 } else { 0 };
            let handled_now = ((1200.0 / scale / 3.0) as u64).min(1200 - handled);
            acknowledged += offered;
            handled += handled_now;
            TimelineSecond {
                second,
                offered,
                acknowledged: offered,
                handled: handled_now,
                backlog: acknowledged - handled,
                e2e_p50_us: Some(p.p50),
                e2e_p99_us: Some(p.p99),
            }
        })
        .collect();
    cell.timeline_summary = busbench::metrics::timeline::summarise(&cell.timeline);
    if backend == BackendKind::Kafka && mode == Mode::Raw {
        let step = |rate: u64, p99: u64, reasons: Vec<String>| SearchStep {
            offered_rate: rate,
            passed: reasons.is_empty(),
            reasons,
            planned: rate * 5,
            sent: rate * 5,
            received: rate * 5,
            lost: 0,
            handled_per_sec: rate as f64,
            e2e_p50_us: p99 / 3,
            e2e_p99_us: p99,
            publish_p99_us: p99 / 2,
            peak_backlog: rate / 100,
            backlog_growing: false,
        };
        cell.search = Some(RateSearch {
            target_p99_us: 10_000,
            step_seconds: 5.0,
            runs_per_rate: 1,
            max_rate: Some(4000),
            ended: "the precision of 10% was reached".into(),
            steps: vec![
                step(1000, 2000, vec![]),
                step(2000, 3000, vec![]),
                step(4000, 8000, vec![]),
                step(
                    8000,
                    50_000,
                    vec!["end-to-end p99 50.0 ms is above the target of 10.0 ms".into()],
                ),
            ],
            warm_up: None,
        });
    }
    cell
}

fn fixture() -> RunResult {
    let settings = Scenario::parse(
        Path::new("fixture.toml"),
        "name = \"fixture\"\ndescription = \"A fixed result.\"\nbackends = [\"kafka\", \"nats\"]\nmodes = [\"raw\", \"envelope\"]\nmessages = 1000\n",
    )
    .unwrap();
    let mut repeated = cell(BackendKind::Kafka, Mode::Raw, 1.0);
    // Three runs; the second's ceiling run caught a fast spell the run did not.
    repeated.repeats = Some(RepeatSpread {
        e2e_msgs_per_sec: vec![900.0, 1000.0, 950.0],
        publish_msgs_per_sec: vec![900.0, 1000.0, 950.0],
        e2e_p99_us: vec![990, 1000, 995],
        efficiency: vec![0.9, 0.5, 0.95],
        ceiling_msgs_per_sec: vec![1000.0, 2000.0, 1000.0],
        allocations_per_msg: vec![12.0, 12.0, 12.0],
        allocated_bytes_per_msg: vec![2048.0, 2048.0, 2048.0],
        cpu_us_per_msg: vec![4.0, 4.5, 4.2],
        spread_pct: 10.5,
    });
    repeated.ceiling_msgs_per_sec = Some(1000.0);
    repeated.efficiency = Some(0.9);
    RunResult {
        schema_version: SCHEMA_VERSION,
        scenario: ScenarioInfo {
            name: "fixture".into(),
            file: "fixture.toml".into(),
            hash: "w1-0123456789abcdef".into(),
            settings,
            overrides: Vec::new(),
        },
        environment: Environment {
            cpu_model: "Test CPU".into(),
            cores: 2,
            memory_bytes: 24 << 30,
            os: "Linux".into(),
            kernel: "6.1".into(),
            busbench_version: "0.1.0".into(),
            git_commit: "abcdef123456".into(),
            brokers: BTreeMap::from([
                ("kafka".into(), "4.3.1".into()),
                ("nats".into(), "2.14.9".into()),
            ]),
            broker_addresses: BTreeMap::from([
                ("kafka".into(), "127.0.0.1:9092".into()),
                ("nats".into(), "nats://127.0.0.1:4222".into()),
            ]),
        },
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:01:00Z".into(),
        repeat: 1,
        cells: vec![
            repeated,
            cell(BackendKind::Nats, Mode::Raw, 2.0),
            cell(BackendKind::Kafka, Mode::Envelope, 1.5),
            cell(BackendKind::Nats, Mode::Envelope, 3.0),
        ],
        passed: false,
        run_id: String::new(),
        shard: None,
        merged_from: Vec::new(),
    }
}

fn check(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}; run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{name} changed; run with UPDATE_SNAPSHOTS=1 if intended"
    );
}

#[test]
fn terminal_table_snapshot() {
    check("table.txt", &busbench::report::table::terminal(&fixture()));
}

#[test]
fn markdown_report_snapshot() {
    let bytes = MarkdownExporter {
        chart_file: Some("fixture-latency.svg".into()),
        timeline_chart_file: Some("fixture-timeline.svg".into()),
        search_chart_file: Some("fixture-max-rate.svg".into()),
    }
    .render(&fixture())
    .unwrap();
    check("report.md", &String::from_utf8(bytes).unwrap());
}

#[test]
fn winners_and_ratios_follow_the_figures() {
    let (header, rows) = busbench::report::table::comparison_rows(&fixture(), Mode::Raw);
    assert_eq!(header, ["raw", "kafka", "nats", "best broker"]);
    let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap().clone();
    assert_eq!(
        row("end-to-end msg/s"),
        ["end-to-end msg/s", "1000", "500", "kafka 2.00x"]
    );
    assert_eq!(
        row("CPU µs/msg"),
        ["CPU µs/msg", "10.00", "20.00", "kafka 2.00x"]
    );
    assert_eq!(row("lost")[3], "tie");
    assert_eq!(row("status"), ["status", "ok", "ok", ""]);
    let (_, envelope_rows) = busbench::report::table::comparison_rows(&fixture(), Mode::Envelope);
    assert_eq!(envelope_rows[0], ["status", "ok", "FAILED", ""]);

    // The memory backend is a reference column: shown, never ranked, even when fastest.
    let mut with_memory = fixture();
    let mut memory = with_memory.cells[0].clone();
    memory.backend = BackendKind::Memory;
    memory.throughput.e2e_msgs_per_sec = 1_000_000.0;
    with_memory.cells.insert(2, memory);
    let (header, rows) = busbench::report::table::comparison_rows(&with_memory, Mode::Raw);
    assert_eq!(header, ["raw", "kafka", "nats", "memory", "best broker"]);
    let e2e = rows.iter().find(|r| r[0] == "end-to-end msg/s").unwrap();
    assert_eq!(e2e[4], "kafka 2.00x", "{e2e:?}");
}

#[test]
fn an_efficiency_above_one_is_marked_and_never_best() {
    let (_, rows) = busbench::report::table::comparison_rows(&fixture(), Mode::Envelope);
    let row = rows.iter().find(|r| r[0] == "bus efficiency").unwrap();
    assert_eq!(row[1], "125.00% (suspect)");
    assert_eq!(row[3], "", "one ranked value left: no winner");
    let markdown = MarkdownExporter::default().render(&fixture()).unwrap();
    let markdown = String::from_utf8(markdown).unwrap();
    assert!(markdown.contains("## Warnings"));
    assert!(markdown.contains("kafka/envelope: bus efficiency 125%"));
}

#[test]
fn a_failed_write_leaves_no_temporary_file_and_names_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    // The markdown's name is taken by a folder, as a write that fails midway (a full disk)
    // would leave it: the JSON and the chart are written, the markdown is not.
    std::fs::create_dir(dir.path().join("fixture-20260101T000000Z.md")).unwrap();
    std::fs::write(dir.path().join("fixture-20260101T000000Z.md/keep"), b"x").unwrap();
    let error = busbench::report::write_reports(&fixture(), dir.path()).unwrap_err();
    let names: Vec<String> = error
        .written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "fixture-20260101T000000Z.json",
            "fixture-20260101T000000Z-latency.svg",
            "fixture-20260101T000000Z-timeline.svg",
            "fixture-20260101T000000Z-max-rate.svg"
        ]
    );
    assert!(error.to_string().contains("written before the failure"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reports_of_the_same_second_get_their_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let first = busbench::report::write_reports(&fixture(), dir.path()).unwrap();
    let second = busbench::report::write_reports(&fixture(), dir.path()).unwrap();
    assert_ne!(first, second);
    assert!(
        second[0]
            .to_string_lossy()
            .ends_with("fixture-20260101T000000Z-2.json")
    );
}
