//! The markdown report: environment, scenario, comparison tables, percentiles per cell, and a
//! link to the latency chart.

use std::fmt::Write;

use super::{Exporter, table};
use crate::metrics::model::{CellStatus, RunResult};

/// The markdown report; `chart_file` is the SVG chart's file name, linked when given.
pub struct MarkdownExporter {
    /// The latency chart, relative to the report.
    pub chart_file: Option<String>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

impl Exporter for MarkdownExporter {
    fn extension(&self) -> &'static str {
        "md"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let mut out = String::new();
        let scenario = &result.scenario.settings;
        let env = &result.environment;
        writeln!(out, "# busbench: {}", result.scenario.name)?;
        writeln!(out)?;
        if !scenario.description.is_empty() {
            writeln!(out, "{}", scenario.description.trim())?;
            writeln!(out)?;
        }
        writeln!(
            out,
            "Run from {} to {}: **{}**.",
            result.started_at,
            result.finished_at,
            if result.passed {
                "all cells passed"
            } else {
                "some cells FAILED"
            }
        )?;
        writeln!(out)?;
        writeln!(out, "## Environment")?;
        writeln!(out)?;
        writeln!(out, "| | |")?;
        writeln!(out, "|---|---|")?;
        writeln!(
            out,
            "| CPU | {} ({} logical cores) |",
            env.cpu_model, env.cores
        )?;
        writeln!(out, "| RAM | {} |", mib(env.memory_bytes))?;
        writeln!(out, "| OS | {} (kernel {}) |", env.os, env.kernel)?;
        writeln!(
            out,
            "| busbench | {} (commit {}) |",
            env.busbench_version, env.git_commit
        )?;
        for (broker, version) in &env.brokers {
            let address = env.broker_addresses.get(broker).map_or("", String::as_str);
            writeln!(out, "| {broker} backend | {version} at {address} |")?;
        }
        writeln!(
            out,
            "| fingerprint | `{}` (absolute figures compare only within one fingerprint) |",
            env.fingerprint()
        )?;
        writeln!(out)?;
        writeln!(out, "## Scenario")?;
        writeln!(out)?;
        writeln!(
            out,
            "{} per cell ({} warm-up), {} topics, {} Kafka partitions, {} aggregates, \
             {}-byte payloads, {} publishers, {} in flight, rate {}, timeout {}. \
             Scenario hash `{}`, file `{}`.",
            match scenario.workload() {
                crate::scenario::Workload::Duration(duration)
                    if scenario.kafka.rate.is_some() || scenario.nats.rate.is_some() =>
                {
                    format!("{duration:?} at the target rate")
                }
                _ => format!("{} messages", scenario.total_messages()),
            },
            scenario.warmup,
            scenario.topics,
            scenario.partitions,
            scenario.aggregates,
            scenario.payload_bytes,
            scenario.publishers,
            scenario.max_in_flight,
            if scenario.rate == 0 {
                "as fast as possible".to_owned()
            } else {
                let mut rate = format!("{} msg/s", scenario.rate);
                for (backend, own) in [("Kafka", scenario.kafka.rate), ("NATS", scenario.nats.rate)]
                {
                    if let Some(own) = own {
                        rate.push_str(&format!(" ({backend}: {own} msg/s)"));
                    }
                }
                rate
            },
            humantime::format_duration(scenario.timeout),
            result.scenario.hash,
            result.scenario.file,
        )?;
        writeln!(out)?;
        if !result.scenario.overrides.is_empty() {
            let overrides: Vec<String> = result
                .scenario
                .overrides
                .iter()
                .map(|o| format!("`{o}`"))
                .collect();
            writeln!(
                out,
                "Overridden on the command line: {}.",
                overrides.join(", ")
            )?;
            writeln!(out)?;
        }
        writeln!(out, "## Comparison")?;
        writeln!(out)?;
        out.push_str(&table::markdown(result));
        writeln!(out, "## Latency percentiles per cell (µs)")?;
        writeln!(out)?;
        writeln!(
            out,
            "| cell | kind | p50 | p90 | p99 | p99.9 | max | mean | samples |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for cell in &result.cells {
            for (kind, p) in [
                ("publish", &cell.latency_us.publish),
                ("end-to-end", &cell.latency_us.e2e),
            ] {
                writeln!(
                    out,
                    "| {}/{} | {kind} | {} | {} | {} | {} | {} | {:.0} | {} |",
                    cell.backend, cell.mode, p.p50, p.p90, p.p99, p.p999, p.max, p.mean, p.count
                )?;
            }
        }
        writeln!(out)?;
        if let Some(chart) = &self.chart_file {
            writeln!(out, "![Latency by percentile]({chart})")?;
            writeln!(out)?;
        }
        if result.cells.iter().any(|c| !c.faults.is_empty()) {
            writeln!(out, "## Faults")?;
            writeln!(out)?;
            writeln!(
                out,
                "Recovery runs from the fault's start to the first message handled after \
                 handling stopped; lost counts acknowledged messages never handled (must be 0)."
            )?;
            writeln!(out)?;
            writeln!(
                out,
                "| cell | command | due s | ran s | recovery s | lost | duplicates | publish errors | handled per second (from s) |"
            )?;
            writeln!(out, "|---|---|---:|---|---:|---:|---:|---:|---|")?;
            for cell in &result.cells {
                for fault in &cell.faults {
                    let ran = match (fault.started_seconds, fault.finished_seconds) {
                        (Some(start), Some(end)) => format!("{start:.1} to {end:.1}"),
                        (Some(start), None) => format!("{start:.1}, did not end"),
                        _ => "not run".to_owned(),
                    };
                    let recovery = fault
                        .recovery_seconds
                        .map_or("none".to_owned(), |r| format!("{r:.1}"));
                    let dip = fault
                        .handled_per_second
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ");
                    writeln!(
                        out,
                        "| {}/{} | `{}` | {:.1} | {ran}{} | {recovery} | {} | {} | {} | {dip} (from {:.0}) |",
                        cell.backend,
                        cell.mode,
                        fault.command,
                        fault.at_seconds,
                        fault
                            .error
                            .as_ref()
                            .map_or(String::new(), |e| format!(" ({e})")),
                        cell.lost,
                        cell.duplicates,
                        cell.publish_errors,
                        fault.window_start_seconds,
                    )?;
                }
            }
            writeln!(out)?;
        }
        let failed: Vec<_> = result
            .cells
            .iter()
            .filter(|c| c.status != CellStatus::Ok)
            .collect();
        if !failed.is_empty() {
            writeln!(out, "## Failures")?;
            writeln!(out)?;
            for cell in failed {
                writeln!(
                    out,
                    "- {}/{}: {}",
                    cell.backend,
                    cell.mode,
                    cell.failures.join("; ")
                )?;
            }
            writeln!(out)?;
        }
        let warned: Vec<_> = result
            .cells
            .iter()
            .filter(|c| !c.warnings.is_empty())
            .collect();
        if !warned.is_empty() {
            writeln!(out, "## Warnings")?;
            writeln!(out)?;
            for cell in warned {
                for warning in &cell.warnings {
                    writeln!(out, "- {}/{}: {warning}", cell.backend, cell.mode)?;
                }
            }
            writeln!(out)?;
        }
        let kept: Vec<_> = result
            .cells
            .iter()
            .filter(|c| !c.kept_topics.is_empty())
            .collect();
        if !kept.is_empty() {
            writeln!(out, "## Topics and streams left on the brokers")?;
            writeln!(out)?;
            for cell in kept {
                let names: Vec<String> =
                    cell.kept_topics.iter().map(|t| format!("`{t}`")).collect();
                writeln!(
                    out,
                    "- {}/{}: {}",
                    cell.backend,
                    cell.mode,
                    names.join(", ")
                )?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "Latency is measured from the intended send time (so a stalled sender cannot hide \
             queueing); end-to-end latency runs to the start of the handler, on one monotonic \
             clock in one process. Throughput ends at the last handled message."
        )?;
        Ok(out.into_bytes())
    }
}
