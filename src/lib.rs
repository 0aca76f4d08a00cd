//! busbench: a benchmark for event buses on Apache Kafka and NATS JetStream.
//!
//! The library holds everything: the [`bus`] itself, and the benchmark that drives it.
//! `main.rs` only parses the command line and calls [`cli::main`].

pub mod bus;
pub mod metrics;
