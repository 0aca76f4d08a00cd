//! Bad input and secrets through the binary: every malformed number is one clear message
//! naming the file, line and key, with exit 2 and never a crash; no secret from the scenario
//! or a broker URL appears in anything busbench prints or writes.

mod common;

use std::path::Path;
use std::process::Output;

use common::busbench;

const HEAD: &str = "name = \"bad\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\n";

fn run_scenario(dir: &Path, body: &str) -> Output {
    let file = dir.join("bad.toml");
    std::fs::write(&file, body).unwrap();
    busbench(&[
        "run",
        file.to_str().unwrap(),
        "--no-progress",
        "--out",
        dir.join("out").to_str().unwrap(),
    ])
}

#[test]
fn out_of_bounds_numbers_exit_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, usize, &str)] = &[
        ("messages = 100\npayload_bytes = 1e12\n", 5, "payload_bytes"),
        (
            "messages = 100\npayload_bytes = 1000000000000\n",
            5,
            "payload_bytes",
        ),
        ("messages = 9223372036854775000\n", 4, "messages"),
        (
            "messages = 100\nmax_in_flight = 100000000000000\n",
            5,
            "max_in_flight",
        ),
        (
            "messages = 100\naggregates = 9000000000000\n",
            5,
            "aggregates",
        ),
        ("messages = 100\nwarmup = 9000000000000\n", 5, "warmup"),
        ("messages = 100\npublishers = 4000000000\n", 5, "publishers"),
        (
            "messages = 100\nwarmup_duration = \"0s\"\n",
            5,
            "warmup_duration",
        ),
        ("messages = 100\nclient_threads = 0\n", 5, "client_threads"),
        (
            "messages = 100\nclient_threads = 1000\n",
            5,
            "client_threads",
        ),
        (
            "messages = 100\n[thresholds]\nmax_e2e_p99_ms = -5.0\n",
            6,
            "thresholds.max_e2e_p99_ms",
        ),
        (
            "messages = 100\n[thresholds]\nmax_e2e_p99_ms = nan\n",
            6,
            "thresholds.max_e2e_p99_ms",
        ),
        (
            "messages = 100\n[kafka.properties]\n\"no.such.property\" = \"1\"\n",
            6,
            "kafka.properties.no.such.property",
        ),
    ];
    for (body, line, key) in cases {
        let output = run_scenario(dir.path(), &format!("{HEAD}{body}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{body}: {stderr}");
        assert!(
            stderr.contains(&format!("bad.toml:{line}: key `{key}`")),
            "{body}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let duplicates = [
        (
            "name = \"d\"\nbackends = [\"memory\", \"memory\"]\nmodes = [\"raw\"]\nmessages = 10\n",
            "backends",
        ),
        (
            "name = \"d\"\nbackends = [\"memory\"]\nmodes = [\"raw\", \"raw\"]\nmessages = 10\n",
            "modes",
        ),
        (
            &*format!(
                "name = \"{}\"\nbackends = [\"memory\"]\nmodes = [\"raw\"]\nmessages = 10\n",
                "x".repeat(5000)
            ),
            "name",
        ),
    ];
    for (body, key) in duplicates {
        let output = run_scenario(dir.path(), body);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("key `{key}`")), "{stderr}");
    }
}

#[test]
fn bad_threshold_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(&file, format!("{HEAD}messages = 10\n")).unwrap();
    for flag in [
        "--throughput-drop=-50",
        "--throughput-drop=nan",
        "--latency-rise=inf",
        "--allocations-rise=x",
    ] {
        let output = busbench(&["run", file.to_str().unwrap(), flag]);
        assert_eq!(output.status.code(), Some(2), "{flag}");
    }
    let output = busbench(&["run", file.to_str().unwrap(), "--backends", "memory,memory"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn secrets_never_reach_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_secret = "kafka-pa55-7f3e";
    let nats_secret = "nats-pa55-91ab";
    let file = dir.path().join("secret.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"secret\"\nbackends = [\"kafka\", \"nats\"]\nmodes = [\"raw\"]\n\
             messages = 100\ntimeout = \"30s\"\n[kafka.properties]\n\
             \"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
             \"sasl.username\" = \"bench\"\n\"sasl.password\" = \"{kafka_secret}\"\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = busbench(&[
        "run",
        file.to_str().unwrap(),
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
        "--kafka-bootstrap",
        "127.0.0.1:1",
        "--nats-url",
        &format!("nats://bench:{nats_secret}@127.0.0.1:2"),
    ]);
    assert_eq!(output.status.code(), Some(3), "unreachable brokers");
    let mut everything = String::from_utf8_lossy(&output.stdout).into_owned();
    everything.push_str(&String::from_utf8_lossy(&output.stderr));
    let mut files = 0;
    for entry in std::fs::read_dir(&out).unwrap() {
        everything.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        files += 1;
    }
    assert_eq!(files, 3, "json, markdown, chart");
    assert!(everything.contains("sasl.password"), "the key is shown");
    assert!(everything.contains("127.0.0.1:2"), "the address is shown");
    for secret in [kafka_secret, nats_secret] {
        assert!(
            !everything.contains(secret),
            "{secret} appears in the output:\n{everything}"
        );
    }
}
