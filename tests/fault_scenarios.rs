//! `[[faults]]` end to end: a scenario whose fault command kills and restarts the cell's
//! broker mid-run, on private brokers started by `scripts/brokers.sh` on ports and folders of
//! their own (the shared brokers are never touched). Every cell must complete within its
//! timeout with no acknowledged message lost, and report the fault's recovery time, the
//! duplicates and the per-second dip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A broker of this test's own, run by `scripts/brokers.sh` with its state in a temporary
/// folder; stopped when dropped.
struct PrivateBroker {
    state: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl PrivateBroker {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push((
            "BUSBENCH_BROKER_DIR".into(),
            state.path().display().to_string(),
        ));
        let broker = PrivateBroker { state, env };
        let status = broker.script(&["start", name]).status().unwrap();
        assert!(status.success(), "scripts/brokers.sh start {name}");
        broker
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(project().join("scripts/brokers.sh"));
        command.args(args).envs(self.env.iter().cloned());
        command
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self
            .script(&["resume", "nats"])
            .stderr(Stdio::null())
            .status();
        let _ = self.script(&["down"]).stderr(Stdio::null()).status();
        let _ = self.state.path();
    }
}

fn write(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("faults.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn run(broker: &PrivateBroker, scenario: &Path, out: &Path, address: &[&str]) -> (i32, Value) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_busbench"))
        .current_dir(project())
        .args(["run", scenario.to_str().unwrap(), "--no-progress", "--out"])
        .arg(out)
        .args(address)
        .envs(broker.env.iter().cloned())
        .env_remove("BUSBENCH_SLOWDOWN_NS")
        .output()
        .unwrap();
    eprintln!(
        "run took {:?}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a result file");
    let result = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (output.status.code().unwrap_or(-1), result)
}

/// `order_kept`: whether the broker keeps per-aggregate order across the restart (Kafka
/// does; NATS redelivers messages lost on the wire only after `ack_wait`, after later ones).
fn assert_recovered(cell: &Value, planned: u64, order_kept: bool) {
    assert_eq!(cell["status"], "ok", "{cell}");
    assert_eq!(cell["lost"], 0, "no acknowledged message lost: {cell}");
    assert_eq!(cell["unconfirmed"], 0, "{cell}");
    assert_eq!(cell["sent"], planned, "publishing resumed: {cell}");
    let violations = cell["order_violations"]
        .as_u64()
        .expect("order violations are counted");
    if order_kept {
        assert_eq!(violations, 0, "{cell}");
    }
    let faults = cell["faults"].as_array().expect("the fault is reported");
    assert_eq!(faults.len(), 1);
    let fault = &faults[0];
    assert!(fault["error"].is_null(), "{fault}");
    assert_eq!(fault["exit_code"], 0);
    let recovery = fault["recovery_seconds"].as_f64().expect("a recovery time");
    assert!(
        recovery > 0.0,
        "handling stopped while the broker was down: {fault}"
    );
    let dip = fault["handled_per_second"].as_array().unwrap();
    assert!(
        dip.iter().any(|n| n.as_u64() == Some(0)),
        "a second with nothing handled: {fault}"
    );
    assert!(cell["duplicates"].as_u64().is_some());
}

/// The restart tests run one at a time: a broker restarting (a JVM starting, for Kafka)
/// beside the other test's measured phase would starve it of CPU on a small machine.
static ONE_RESTART_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_restart_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_RESTART_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_nats_restart_mid_run_loses_nothing_acknowledged_and_reports_its_recovery() {
    let _alone = one_restart_at_a_time();
    let broker = PrivateBroker::start(
        "nats",
        &[
            ("BUSBENCH_NATS_PORT", "14241"),
            ("BUSBENCH_NATS_MONITOR_PORT", "18241"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(
        dir.path(),
        "name = \"nats-restart\"\nbackends = [\"nats\"]\nmodes = [\"envelope\"]\n\
         messages = 300000\nwarmup = 100\ntopics = 2\naggregates = 100\npayload_bytes = 64\n\
         max_in_flight = 512\ntimeout = \"90s\"\nceiling = false\n\
         [thresholds]\nmax_publish_errors = 5000\nmin_success_rate = 0.95\n\
         max_order_violations = 300000\n\
         [[faults]]\nat = \"1500ms\"\nrun = \"scripts/brokers.sh restart {backend}\"\n\
         timeout = \"60s\"\n",
    );
    let out = dir.path().join("out");
    let started = Instant::now();
    let (code, result) = run(
        &broker,
        &scenario,
        &out,
        &["--nats-url", "nats://127.0.0.1:14241"],
    );
    assert!(started.elapsed() < Duration::from_secs(90));
    assert_eq!(code, 0, "{result}");
    assert_recovered(&result["cells"][0], 300_000, false);
}

#[test]
fn a_kafka_kill_and_restart_mid_run_loses_nothing_acknowledged_and_reports_its_recovery() {
    let _alone = one_restart_at_a_time();
    let broker = PrivateBroker::start(
        "kafka",
        &[
            ("BUSBENCH_KAFKA_PORT", "19192"),
            ("BUSBENCH_KAFKA_CONTROLLER_PORT", "19193"),
            ("BUSBENCH_KAFKA_HEAP", "512M"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(
        dir.path(),
        "name = \"kafka-restart\"\nbackends = [\"kafka\"]\nmodes = [\"raw\"]\n\
         messages = 300000\nwarmup = 100\ntopics = 2\npartitions = 3\npayload_bytes = 64\n\
         max_in_flight = 512\ntimeout = \"180s\"\nceiling = false\n\
         [thresholds]\nmax_publish_errors = 5000\nmin_success_rate = 0.95\n\
         [[faults]]\nat = \"1500ms\"\nrun = \"scripts/brokers.sh restart {backend}\"\n\
         timeout = \"120s\"\n",
    );
    let out = dir.path().join("out");
    let (code, result) = run(
        &broker,
        &scenario,
        &out,
        &["--kafka-bootstrap", "127.0.0.1:19192"],
    );
    assert_eq!(code, 0, "{result}");
    assert_recovered(&result["cells"][0], 300_000, true);
}
