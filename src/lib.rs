//! busbench: a benchmark for event buses on Apache Kafka and NATS JetStream.
//!
//! The library holds everything: the [`bus`] itself, the [`scenario`] model, the [`runner`]
//! that drives the bus and measures it, the [`metrics`] it records and the [`report`]
//! exporters; [`ab`] compares two builds on one machine. `main.rs` only calls
//! [`cli::main`].

pub mod ab;
pub mod bus;
pub mod chunks;
pub mod cli;
pub mod merge;
pub mod metrics;
pub mod redact;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shard;
pub mod steadiness;

/// The git commit this build came from (12 hex digits), with `-dirty` when tracked files had
/// uncommitted changes at build time; `unknown` outside a git checkout.
pub fn build_commit() -> String {
    match option_env!("BUSBENCH_GIT_COMMIT") {
        Some(commit) if option_env!("BUSBENCH_GIT_DIRTY") == Some("true") => {
            format!("{commit}-dirty")
        }
        Some(commit) => commit.to_owned(),
        None => "unknown".to_owned(),
    }
}
