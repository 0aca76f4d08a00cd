//! busbench under faults, end to end through the binary: a stalled broker, a broker killed and
//! restarted mid-run, signals, a closed stdout, an unwritable output folder, runs started
//! together, and every outcome's counts. Tests that stop or kill a broker run a private
//! nats-server (`BUSBENCH_NATS_SERVER`, set by `scripts/test.sh`) on a port of their own, so
//! the shared brokers are never disturbed.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::busbench_command as busbench;

/// A nats-server of this test's own, with JetStream on a file store.
struct PrivateNats {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
}

impl PrivateNats {
    fn start(port: u16) -> Self {
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, store.path());
        let nats = PrivateNats { child, port, store };
        nats.wait_listening();
        nats
    }

    fn spawn(port: u16, store: &Path) -> Child {
        let binary = common::nats_server_binary();
        Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server")
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child this test owns.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGKILL, then a new server on the same port and store.
    fn kill_and_restart(&mut self, down_for: Duration) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down_for);
        self.child = Self::spawn(self.port, self.store.path());
        self.wait_listening();
    }

    /// Names of the streams on the server.
    fn streams(&self) -> Vec<String> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            use futures::StreamExt;
            let client = async_nats::connect(self.url()).await.unwrap();
            let context = async_nats::jetstream::new(client);
            let mut names = context.stream_names();
            let mut all = Vec::new();
            while let Some(name) = names.next().await {
                all.push(name.unwrap());
            }
            all
        })
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scenario(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// The JSON results written into `dir`.
fn results(dir: &Path) -> Vec<Value> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    found.sort();
    found
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

fn only_result(dir: &Path) -> Value {
    let mut all = results(dir);
    assert_eq!(all.len(), 1, "one result file in {}", dir.display());
    all.pop().unwrap()
}

fn count(cell: &Value, key: &str) -> u64 {
    cell[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {cell}"))
}

/// The counts' invariants, in every outcome.
fn assert_consistent(cell: &Value) {
    let (planned, sent, acked, errors, unconfirmed, received, lost) = (
        count(cell, "planned"),
        count(cell, "sent"),
        count(cell, "acknowledged"),
        count(cell, "publish_errors"),
        count(cell, "unconfirmed"),
        count(cell, "received"),
        count(cell, "lost"),
    );
    assert!(sent <= planned, "sent {sent} <= planned {planned}");
    assert!(
        acked + unconfirmed <= sent,
        "acknowledged {acked} + unconfirmed {unconfirmed} <= sent {sent}"
    );
    assert!(
        sent <= acked + unconfirmed + errors,
        "every sent message ends acknowledged, unconfirmed or failed: {cell}"
    );
    assert!(received <= planned);
    assert!(lost <= acked);
    let rate = cell["success_rate"].as_f64().unwrap();
    assert!(
        (rate - received as f64 / planned as f64).abs() < 1e-9,
        "success rate is received / planned"
    );
}

/// Waits, at most `bound`, for the line busbench prints (without progress bars) when a cell's
/// measured phase begins, then lets the phase run for `then`; the rest of the child's
/// standard error is drained in the background.
fn await_measured_phase(child: &mut Child, bound: Duration, then: Duration) {
    let stderr = child.stderr.take().expect("standard error piped");
    let (began, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.ends_with("measured phase began") {
                let _ = began.send(());
            }
        }
    });
    if wait.recv_timeout(bound).is_err() {
        let _ = child.kill();
        panic!("no measured phase began within {bound:?}");
    }
    std::thread::sleep(then);
}

fn wait_with_bound(child: &mut Child, bound: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            panic!("busbench ran past {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_broker_ends_the_cell_within_its_timeout_with_its_counts() {
    let nats = PrivateNats::start(14_231);
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"stalled\"\nbackends = [\"nats\"]\nmodes = [\"raw\"]\nmessages = 50000000\n\
         warmup = 100\ntopics = 3\npayload_bytes = 64\nmax_in_flight = 256\ntimeout = \"12s\"\n\
         ceiling = false\n",
    );
    let started = Instant::now();
    let mut child = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path())
        .args(["--nats-url", &nats.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second of the measured phase first, so that some messages are acknowledged.
    await_measured_phase(&mut child, Duration::from_secs(10), Duration::from_secs(1));
    nats.signal(libc::SIGSTOP);
    let (code, _) = wait_with_bound(&mut child, Duration::from_secs(30));
    let elapsed = started.elapsed();
    nats.signal(libc::SIGCONT);
    assert_eq!(code, Some(1), "a timed-out cell fails");
    // The timeout covers set-up, measuring, drain and teardown; the process adds start-up
    // and writing the reports.
    assert!(
        elapsed < Duration::from_secs(12 + 4),
        "the run took {elapsed:?} with a 12 s cell timeout"
    );
    let result = only_result(dir.path());
    let cell = &result["cells"][0];
    assert_eq!(cell["status"], "failed");
    let failures = cell["failures"].to_string();
    assert!(failures.contains("timed out after 12s"), "{failures}");
    assert!(
        count(cell, "acknowledged") > 0,
        "messages acknowledged before the stall are kept: {cell}"
    );
    assert!(cell["throughput"]["publish_msgs_per_sec"].as_f64().unwrap() > 0.0);
    assert_consistent(cell);
}

#[test]
fn publishing_resumes_after_a_nats_kill_and_restart_with_nothing_acknowledged_lost() {
    let mut nats = PrivateNats::start(14_232);
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the kill lands in the measured phase; publishes caught in the outage
    // may fail (their acknowledgement went down with the connection), none may be lost.
    let file = scenario(
        dir.path(),
        "name = \"restarted\"\nbackends = [\"nats\"]\nmodes = [\"raw\"]\nmessages = 600000\n\
         warmup = 100\ntopics = 2\npayload_bytes = 64\nmax_in_flight = 512\ntimeout = \"90s\"\n\
         ceiling = false\n[thresholds]\nmax_publish_errors = 100000\nmin_success_rate = 0.5\n",
    );
    let started = Instant::now();
    let mut child = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path())
        .args(["--nats-url", &nats.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    await_measured_phase(&mut child, Duration::from_secs(30), Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run outlasts the kill"
    );
    nats.kill_and_restart(Duration::from_millis(500));
    let (code, _) = wait_with_bound(&mut child, Duration::from_secs(120));
    let elapsed = started.elapsed();
    let result = only_result(dir.path());
    let cell = &result["cells"][0];
    assert_eq!(code, Some(0), "the cell completes: {cell}");
    assert_eq!(count(cell, "lost"), 0, "{cell}");
    assert_eq!(count(cell, "unconfirmed"), 0, "{cell}");
    assert_eq!(
        count(cell, "sent"),
        600_000,
        "publishing resumed and sent every message: {cell}"
    );
    assert!(
        count(cell, "received") >= count(cell, "acknowledged"),
        "{cell}"
    );
    // Acknowledgements lost with the connection fail at once instead of waiting out the
    // 90 s acknowledgement timeout.
    assert!(
        elapsed < Duration::from_secs(60),
        "the run took {elapsed:?}"
    );
    assert_consistent(cell);
}

#[test]
fn warm_up_respects_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"long-warm-up\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 1000\n\
         warmup = 50000000\ntimeout = \"2s\"\nceiling = false\n",
    );
    let started = Instant::now();
    let output = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1));
    let result = only_result(dir.path());
    let cell = &result["cells"][0];
    assert!(
        cell["failures"]
            .to_string()
            .contains("warm-up did not finish within the cell's timeout"),
        "{cell}"
    );
    assert_eq!(count(cell, "sent"), 0);
    assert_eq!(cell["success_rate"].as_f64(), Some(0.0));
    assert_consistent(cell);
}

#[test]
fn the_ceiling_reports_a_send_error_at_once_and_removes_its_stream() {
    let nats = PrivateNats::start(14_233);
    let dir = tempfile::tempdir().unwrap();
    // Larger than the server's max_payload (1 MiB): every publish is refused.
    let file = scenario(
        dir.path(),
        "name = \"oversized\"\nbackends = [\"nats\"]\nmodes = [\"raw\"]\nmessages = 20\n\
         payload_bytes = 2000000\ntimeout = \"60s\"\n",
    );
    let started = Instant::now();
    let output = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path())
        .args(["--nats-url", &nats.url()])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(stderr.contains("client ceiling failed"), "stderr: {stderr}");
    assert!(
        !stderr.contains("did not finish within"),
        "the real error, not a timeout: {stderr}"
    );
    assert_eq!(output.status.code(), Some(1));
    let result = only_result(dir.path());
    let cell = &result["cells"][0];
    // Nothing was sent and every publish failed: 0% success, nothing lost.
    assert_eq!(count(cell, "sent"), 0, "{cell}");
    assert_eq!(count(cell, "publish_errors"), 20, "{cell}");
    assert_eq!(count(cell, "lost"), 0);
    assert_eq!(cell["success_rate"].as_f64(), Some(0.0));
    assert_consistent(cell);
    let left: Vec<String> = nats.streams();
    assert!(left.is_empty(), "streams left behind: {left:?}");
}

#[test]
fn an_unreachable_broker_is_reported_within_seconds_and_nothing_counts_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"unreachable\"\nbackends = [\"kafka\", \"nats\", \"memory\"]\n\
         modes = [\"raw\", \"envelope\"]\nmessages = 20000\ntimeout = \"120s\"\n",
    );
    let started = Instant::now();
    let output = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path())
        .args([
            "--kafka-bootstrap",
            "127.0.0.1:1",
            "--nats-url",
            "nats://127.0.0.1:2",
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(3));
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let result = only_result(dir.path());
    for cell in result["cells"].as_array().unwrap() {
        assert_consistent(cell);
        if cell["backend"] == "memory" {
            assert_eq!(cell["status"], "ok", "the other cells still run: {cell}");
            continue;
        }
        assert_eq!(count(cell, "planned"), 20_000);
        assert_eq!(count(cell, "sent"), 0);
        assert_eq!(count(cell, "lost"), 0, "nothing was sent, nothing lost");
        assert_eq!(cell["success_rate"].as_f64(), Some(0.0));
    }
}

/// A memory run long enough to be stopped by a signal in its measured phase.
fn long_memory_run(dir: &Path) -> Child {
    let file = scenario(
        dir,
        "name = \"signalled\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\n\
         messages = 100000000\nrate = 50000\ntimeout = \"600s\"\nceiling = false\n",
    );
    busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigterm_and_sigint_write_the_reports_and_exit_143_and_130() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = long_memory_run(dir.path());
        await_measured_phase(
            &mut child,
            Duration::from_secs(20),
            Duration::from_millis(500),
        );
        // SAFETY: kill(2) on a child this test owns.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let (exit, took) = wait_with_bound(&mut child, Duration::from_secs(20));
        assert_eq!(exit, Some(code), "signal {signal}");
        assert!(took < Duration::from_secs(8), "stopped in {took:?}");
        let result = only_result(dir.path());
        let cell = &result["cells"][0];
        assert_eq!(cell["status"], "interrupted");
        assert_eq!(result["passed"], false);
        assert!(count(cell, "acknowledged") > 0, "{cell}");
        assert!(
            cell["throughput"]["publish_msgs_per_sec"].as_f64().unwrap() > 0.0,
            "{cell}"
        );
        assert_consistent(cell);
    }
}

#[test]
fn a_closed_stdout_does_not_stop_the_run_or_its_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"piped\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 2000\n\
         ceiling = false\n",
    );
    // `| true`: the reader goes away before anything is written.
    let mut run = busbench();
    run.args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path());
    let (code, stderr) = with_stdout_closed(run, Duration::from_secs(60));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json = only_result(dir.path());
    // `compare ... | head`: the same for a comparison.
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let mut compare = busbench();
    compare.arg("compare").args([&path, &path]);
    let (code, stderr) = with_stdout_closed(compare, Duration::from_secs(30));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(json["passed"], true);
}

/// Runs `command` with its standard output closed from the start; returns its exit code and
/// standard error.
fn with_stdout_closed(mut command: Command, bound: Duration) -> (Option<i32>, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let (code, _) = wait_with_bound(&mut child, bound);
    (code, stderr)
}

#[test]
fn output_problems_are_found_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"quick\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 100\n",
    );
    // A file where the folder should be.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"").unwrap();
    let started = Instant::now();
    let output = busbench()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(blocker.join("reports"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--out"), "{stderr}");
    assert!(
        !stderr.contains("memory/raw"),
        "nothing ran before the check: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A name too long for the report file names: refused with the scenario's own checks.
    let long = scenario(
        dir.path(),
        &format!(
            "name = \"{}\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 100\n",
            "n".repeat(250)
        ),
    );
    let output = busbench()
        .args(["run", long.to_str().unwrap(), "--no-progress", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("scenario.toml:1: key `name`") && stderr.contains("report files"),
        "{stderr}"
    );
}

#[test]
fn runs_started_together_into_one_folder_keep_both_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "name = \"twins\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 500\n\
         ceiling = false\n",
    );
    let out = dir.path().join("out");
    let spawn = || {
        busbench()
            .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut children = [spawn(), spawn(), spawn()];
    for child in &mut children {
        let (code, _) = wait_with_bound(child, Duration::from_secs(60));
        assert_eq!(code, Some(0));
    }
    let written = results(&out);
    assert_eq!(written.len(), 3, "three runs, three results");
    let markdown = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "md")
        })
        .count();
    assert_eq!(markdown, 3);
}
