//! busbench against secured NATS servers of the test's own (private nats-servers on ports of
//! their own): user and password from flags, a token from the scenario's `[nats]`, and TLS with
//! a certificate authority made for the test; the secrets never reach any output, and wrong
//! or missing credentials fail as an unreachable broker (exit 3) instead of hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "pw-7c1e9a5d";
const TOKEN: &str = "tok-3b8f2e61";

/// A nats-server with JetStream and the given extra arguments.
struct SecuredNats {
    child: Child,
    _store: tempfile::TempDir,
}

impl SecuredNats {
    fn start(port: u16, extra: &[&str]) -> Self {
        let store = tempfile::tempdir().unwrap();
        let child = Command::new(common::nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        SecuredNats {
            child,
            _store: store,
        }
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scenario(dir: &Path, nats_section: &str) -> PathBuf {
    let path = dir.join("secured.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"secured\"\nbackends = [\"nats\"]\nmodes = [\"raw\"]\nmessages = 300\n\
             warmup = 10\npayload_bytes = 32\npublishers = 1\nmax_in_flight = 64\n\
             timeout = \"40s\"\n[nats]\nstorage = \"memory\"\n{nats_section}"
        ),
    )
    .unwrap();
    path
}

/// Runs busbench on `url`; returns the output and everything it wrote, files included.
fn run(dir: &Path, file: &Path, url: &str, extra: &[&str]) -> (Output, String) {
    let out = dir.join("out");
    let output = common::busbench_command()
        .args(["run", file.to_str().unwrap(), "--no-progress", "--out"])
        .arg(&out)
        .args(["--nats-url", url, "--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    let mut everything = String::from_utf8_lossy(&output.stdout).into_owned();
    everything.push_str(&String::from_utf8_lossy(&output.stderr));
    if let Ok(entries) = std::fs::read_dir(&out) {
        for entry in entries {
            everything
                .push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
        }
    }
    (output, everything)
}

fn assert_all_received(output: &Output, everything: &str) {
    assert_eq!(output.status.code(), Some(0), "{everything}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["cells"][0]["received"], 300, "{result}");
    assert!(
        result["cells"][0]["ceiling_msgs_per_sec"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "the ceiling connected with the same credentials: {result}"
    );
}

#[test]
fn user_and_password_from_flags_and_a_token_from_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    {
        let _server = SecuredNats::start(14_231, &["--user", "bench", "--pass", PASSWORD]);
        let url = "nats://127.0.0.1:14231";
        let file = scenario(dir.path(), "");
        let (output, everything) = run(
            dir.path(),
            &file,
            url,
            &["--nats-user", "bench", "--nats-password", PASSWORD],
        );
        assert_all_received(&output, &everything);
        assert!(!everything.contains(PASSWORD), "the password leaked");

        let started = Instant::now();
        let (refused, everything) = run(
            dir.path(),
            &file,
            url,
            &["--nats-user", "bench", "--nats-password", "wrong"],
        );
        assert_eq!(refused.status.code(), Some(3), "{everything}");
        assert!(started.elapsed() < Duration::from_secs(30));
        let unpaired = run(dir.path(), &file, url, &["--nats-user", "bench"]).0;
        assert_eq!(unpaired.status.code(), Some(2), "a user needs a password");
    }
    let _server = SecuredNats::start(14_232, &["--auth", TOKEN]);
    let file = scenario(dir.path(), &format!("token = \"{TOKEN}\"\n"));
    let (output, everything) = run(dir.path(), &file, "nats://127.0.0.1:14232", &[]);
    assert_all_received(&output, &everything);
    assert!(!everything.contains(TOKEN), "the token leaked");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["scenario"]["settings"]["nats"]["token"], "***");
}

#[test]
fn tls_with_the_tests_own_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=busbench test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(pki.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    let path = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let _server = SecuredNats::start(
        14_233,
        &[
            "--tls",
            "--tlscert",
            &path("server.pem"),
            "--tlskey",
            &path("server.key"),
        ],
    );
    let url = "nats://127.0.0.1:14233";
    let file = scenario(
        dir.path(),
        &format!("tls_ca_file = \"{}\"\n", path("ca.pem")),
    );
    let (output, everything) = run(dir.path(), &file, url, &[]);
    assert_all_received(&output, &everything);
    // Without the authority, the server's certificate is not trusted: unreachable, exit 3.
    let plain = scenario(dir.path(), "tls_required = true\n");
    let (untrusted, everything) = run(dir.path(), &plain, url, &[]);
    assert_eq!(untrusted.status.code(), Some(3), "{everything}");
}
