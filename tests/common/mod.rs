//! Helpers shared by the integration tests: broker addresses and unique names.
#![allow(dead_code)]

use std::process::{Command, Output};

use busbench::bus::BusConfig;

/// The busbench binary, pointed at the test brokers, with no test switch inherited.
pub fn busbench_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_busbench"));
    command
        .env("BUSBENCH_KAFKA_BOOTSTRAP", kafka_bootstrap())
        .env("BUSBENCH_NATS_URL", nats_url())
        .env_remove("BUSBENCH_SLOWDOWN_NS");
    command
}

/// Runs busbench with `args` to the end.
pub fn busbench(args: &[&str]) -> Output {
    busbench_command()
        .args(args)
        .output()
        .expect("running busbench")
}

/// Kafka bootstrap servers of the test brokers (`scripts/brokers.sh up`).
pub fn kafka_bootstrap() -> String {
    std::env::var("BUSBENCH_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// NATS URL of the test brokers (`scripts/brokers.sh up`).
pub fn nats_url() -> String {
    std::env::var("BUSBENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The default configuration of a backend by name.
pub fn config(backend: &str) -> BusConfig {
    match backend {
        "memory" => BusConfig::memory(),
        "kafka" => BusConfig::kafka(kafka_bootstrap()),
        "nats" => BusConfig::nats(nats_url()),
        other => panic!("unknown backend {other}"),
    }
}

/// A topic name no earlier run used.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// The nats-server binary for tests that run a private server: `BUSBENCH_NATS_SERVER` when
/// set, else the one `scripts/brokers.sh nats-bin` finds (or builds), the binary the shared
/// broker runs from. Fails, naming what to set, when neither gives one: never skipped.
pub fn nats_server_binary() -> String {
    if let Ok(binary) = std::env::var("BUSBENCH_NATS_SERVER")
        && !binary.is_empty()
    {
        return binary;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/brokers.sh");
    let found = Command::new(script)
        .arg("nats-bin")
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|path| std::path::Path::new(path).is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no nats-server binary: `scripts/brokers.sh nats-bin` found none; set \
             BUSBENCH_NATS_SERVER to the path of a nats-server binary"
        )
    })
}

/// A validator for `schema/result.schema.json`.
pub fn result_schema() -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/result.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

/// The result a `busbench run --out DIR` wrote: the one JSON file in `dir`.
pub fn only_result(dir: &std::path::Path) -> busbench::metrics::model::RunResult {
    let path = std::fs::read_dir(dir)
        .expect("the output folder")
        .map(|entry| entry.expect("a folder entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "json"))
        .expect("a result");
    busbench::report::json::read(&std::fs::read(path).expect("the result file"))
        .expect("a valid result")
}

/// `busbench run SCENARIO --no-progress --out OUT` with `extra` arguments, to the end.
pub fn run_into(scenario: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        scenario.to_str().unwrap(),
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    busbench(&args)
}

/// Writes `text` as scenario `name` in `dir`, runs it with `extra` arguments into a folder of
/// its own, asserts that it exited 0 and returns its result.
pub fn run_scenario_ok(
    dir: &std::path::Path,
    name: &str,
    text: &str,
    extra: &[&str],
) -> busbench::metrics::model::RunResult {
    let scenario = dir.join(format!("{name}.toml"));
    std::fs::write(&scenario, text).expect("writing the scenario");
    let out = dir.join(format!("out-{name}"));
    let output = run_into(&scenario, &out, extra);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    only_result(&out)
}
