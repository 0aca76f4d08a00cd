//! A NATS server restart in the middle of a run: the bus reconnects by itself, and every
//! message whose publish it acknowledged to the caller is handled afterwards. A stalled server:
//! a publish fails with a timeout once the ack timeout has passed. The tests run a
//! private nats-server (file storage, its own port and folder) from `BUSBENCH_NATS_SERVER` or
//! the binary `scripts/brokers.sh nats-bin` finds, so the shared brokers are not disturbed.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busbench::bus::{
    BusConfig, BusErrorKind, ConnectionState, EventBus, SubscribeOptions, handler,
};
use bytes::Bytes;

const PORT: u16 = 14_222;

fn start_server(store: &std::path::Path) -> Child {
    start_server_on(PORT, store)
}

fn start_server_on(port: u16, store: &std::path::Path) -> Child {
    let binary = common::nats_server_binary();
    Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server")
}

async fn wait_for(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_port() {
    wait_for_port_of(PORT).await
}

async fn wait_for_port_of(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_server_restart() {
    let store = tempfile::tempdir().unwrap();
    let mut server = start_server(store.path());
    wait_for_port().await;

    let mut config = BusConfig::nats(format!("nats://127.0.0.1:{PORT}"));
    config.ack_timeout = Duration::from_secs(2);
    if let busbench::bus::BackendConfig::Nats(nats) = &mut config.backend {
        nats.ack_wait = Duration::from_secs(2);
    }
    let bus = EventBus::connect(config).await.unwrap();
    let received: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let sink = received.clone();
    let subscription = bus
        .subscribe(
            "restart.events",
            SubscribeOptions::group("survivor"),
            handler(move |message| {
                let sink = sink.clone();
                async move {
                    let n = std::str::from_utf8(&message.payload)?.parse::<u32>()?;
                    sink.lock().unwrap().insert(n);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();

    let mut acknowledged = HashSet::new();
    let mut failed = 0;
    for n in 0..300u32 {
        if n == 100 {
            // Stop the server (SIGKILL: nothing is flushed politely), then start it again on
            // the same store while the bus keeps going.
            server.kill().unwrap();
            server.wait().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while bus.state() == ConnectionState::Connected {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the bus did not notice the outage"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            server = start_server(store.path());
            wait_for_port().await;
        }
        // A publish either fails visibly or is acknowledged; acknowledged ones must arrive.
        match bus
            .publish("restart.events", Bytes::from(n.to_string()))
            .await
        {
            Ok(()) => {
                acknowledged.insert(n);
            }
            Err(_) => failed += 1,
        }
    }
    let reconnect_deadline = Duration::from_secs(30);
    wait_for("the bus to reconnect", reconnect_deadline, || {
        bus.state() == ConnectionState::Connected
    })
    .await;
    assert!(
        acknowledged.len() >= 250,
        "most publishes succeed ({failed} failed)"
    );
    eprintln!(
        "{} acknowledged, {failed} failed visibly across the restart",
        acknowledged.len()
    );
    wait_for(
        "every acknowledged message",
        Duration::from_secs(60),
        || {
            let got = received.lock().unwrap();
            acknowledged.iter().all(|n| got.contains(n))
        },
    )
    .await;
    subscription.close().await.unwrap();
    bus.close().await.unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A server killed (and reaped) when the test ends, a failed assertion included, so that it
/// never outlives the test on its port.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child this test owns; SIGCONT first, in case it is stopped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGSTOPs `server` and waits (up to 10 s) until every one of its threads is stopped: kill(2)
/// returns before they are, and a thread still running could answer one more publish.
fn stop_and_wait_until_stopped(server: &Child) {
    // SAFETY: kill(2) on a child this test owns.
    unsafe { libc::kill(server.id() as i32, libc::SIGSTOP) };
    let tasks = format!("/proc/{}/task", server.id());
    let all_stopped = || {
        std::fs::read_dir(&tasks).unwrap().all(|task| {
            let stat =
                std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
            // The state is the first field after the command name's closing parenthesis.
            matches!(
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next()),
                Some('T' | 't')
            )
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !all_stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_fails_the_publish_with_a_timeout_after_the_ack_timeout() {
    const STALLED_PORT: u16 = 14_223;
    let store = tempfile::tempdir().unwrap();
    let server = KilledOnDrop(start_server_on(STALLED_PORT, store.path()));
    wait_for_port_of(STALLED_PORT).await;
    let mut config = BusConfig::nats(format!("nats://127.0.0.1:{STALLED_PORT}"));
    let ack_timeout = Duration::from_secs(1);
    config.ack_timeout = ack_timeout;
    let bus = EventBus::connect(config).await.unwrap();
    bus.publish("stalled.events", Bytes::from_static(b"before"))
        .await
        .unwrap();

    stop_and_wait_until_stopped(&server.0);
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        ack_timeout * 10,
        bus.publish("stalled.events", Bytes::from_static(b"during")),
    )
    .await
    .expect("the publish outlived ten ack timeouts");
    let waited = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGCONT) };

    let error = outcome.expect_err("a stalled server acknowledged a publish");
    assert_eq!(error.kind(), BusErrorKind::Timeout, "{error}");
    assert!(
        waited >= ack_timeout,
        "failed after {waited:?}, before the ack timeout of {ack_timeout:?}"
    );
    bus.close().await.unwrap();
}
