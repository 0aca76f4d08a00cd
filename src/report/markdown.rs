//! The markdown report: environment, scenario, comparison tables, percentiles per cell, and a
//! link to the latency chart.

use std::fmt::Write;

use super::{Exporter, table};
use crate::metrics::latency::readable;
use crate::metrics::model::{CellStatus, RateSearch, RunResult};

/// The markdown report; the charts' file names are linked when given.
#[derive(Debug, Clone, Default)]
pub struct MarkdownExporter {
    /// The latency chart, relative to the report.
    pub chart_file: Option<String>,
    /// The timeline chart (rates and backlog over time), relative to the report.
    pub timeline_chart_file: Option<String>,
    /// The rate search chart (p99 against offered rate), relative to the report.
    pub search_chart_file: Option<String>,
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
            "{} per cell ({}), {} topics, {} Kafka partitions, {} aggregates, \
             {}-byte payloads, {} publishers, {} in flight, rate {}, timeout {}. \
             Scenario hash `{}`, file `{}`.",
            match scenario.workload() {
                _ if scenario.search.is_some() => "A rate search".to_owned(),
                crate::scenario::Workload::Duration(duration)
                    if scenario.kafka.rate.is_some() || scenario.nats.rate.is_some() =>
                {
                    format!("{duration:?} at the target rate")
                }
                _ => format!("{} messages", scenario.total_messages()),
            },
            match scenario.warmup_duration {
                Some(duration) => format!(
                    "{} of warm-up at the cell's rate, at least {} messages",
                    humantime::format_duration(duration),
                    scenario.warmup
                ),
                None => format!("{} warm-up", scenario.warmup),
            },
            scenario.topics,
            scenario.partitions,
            scenario.aggregates,
            scenario.payload_bytes,
            scenario.publishers,
            scenario.max_in_flight,
            if scenario.search.is_some() {
                "set by the search".to_owned()
            } else if scenario.rate == 0 {
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
        repeats_section(&mut out, result)?;
        writeln!(out, "## Latency percentiles per cell (µs)")?;
        writeln!(out)?;
        writeln!(
            out,
            "| cell | kind | p50 | p90 | p99 | p99.9 | max | mean | samples |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for cell in &result.cells {
            let send_lag = &cell.latency_us.send_lag;
            for (kind, p) in [
                ("publish", &cell.latency_us.publish),
                ("end-to-end", &cell.latency_us.e2e),
                ("send lag", send_lag),
            ] {
                // Without a target rate there is no send lag to show.
                if kind == "send lag" && send_lag.count == 0 {
                    continue;
                }
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
        shards_section(&mut out, result)?;
        self.search_section(&mut out, result)?;
        self.timeline_section(&mut out, result)?;
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
        if result.cells.iter().any(|c| c.latency_us.send_lag.count > 0) {
            writeln!(out)?;
            writeln!(
                out,
                "Send lag is how far behind its intended send time each message was handed to \
                 the bus (the publishers' timer, waits behind earlier sends): a part of both \
                 latencies that passed before the bus had the message."
            )?;
        }
        Ok(out.into_bytes())
    }
}

/// Every run of the repeated cells: what the comparison's medians were taken from, and each
/// run's efficiency against the ceiling run measured just before it.
fn repeats_section(out: &mut String, result: &RunResult) -> anyhow::Result<()> {
    let repeated: Vec<_> = result
        .cells
        .iter()
        .filter_map(|cell| cell.repeats.as_ref().map(|r| (cell, r)))
        .collect();
    if repeated.is_empty() {
        return Ok(());
    }
    let joined = |values: &[f64], scale: f64, decimals: usize| {
        if values.is_empty() {
            return "-".to_owned();
        }
        values
            .iter()
            .map(|v| format!("{:.*}", decimals, v * scale))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    writeln!(out, "## Repeated runs")?;
    writeln!(out)?;
    writeln!(
        out,
        "The comparison shows each repeated cell's run with the median end-to-end throughput, \
         the median of its ceiling runs, and the median of its runs' efficiencies: each run's \
         end-to-end throughput over the client ceiling run measured just before it, in the \
         same spell of the machine."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| cell | end-to-end msg/s | client ceiling msg/s | bus efficiency % | CPU µs/msg | spread % |"
    )?;
    writeln!(out, "|---|---|---|---|---|---:|")?;
    for (cell, runs) in repeated {
        writeln!(
            out,
            "| {}/{} | {} | {} | {} | {} | {:.1} |",
            cell.backend,
            cell.mode,
            joined(&runs.e2e_msgs_per_sec, 1.0, 0),
            joined(&runs.ceiling_msgs_per_sec, 1.0, 0),
            joined(&runs.efficiency, 100.0, 1),
            joined(&runs.cpu_us_per_msg, 1.0, 2),
            runs.spread_pct
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// A shard's own place in its run, or the shards a merged result adds up: hosts, start
/// offsets and each shard's figures.
fn shards_section(out: &mut String, result: &RunResult) -> anyhow::Result<()> {
    if let Some(shard) = &result.shard {
        writeln!(out, "## Shard")?;
        writeln!(out)?;
        writeln!(
            out,
            "Shard {} of {} (numbered from 0) of run `{}`, on host `{}`{}: its share of the \
             scenario's load, on topics of its own. `busbench merge` adds the shards up.",
            shard.index,
            shard.count,
            result.run_id,
            shard.host,
            shard
                .start_at
                .as_ref()
                .map_or(String::new(), |at| format!(", measured phase from {at}"))
        )?;
        writeln!(out)?;
        return Ok(());
    }
    if result.merged_from.is_empty() {
        return Ok(());
    }
    writeln!(out, "## Shards")?;
    writeln!(out)?;
    writeln!(
        out,
        "Run `{}` was split over {} processes and merged: counts are sums, latency histograms \
         are merged exactly, throughput counts the union of the shards' measured windows. \
         Latency never crosses hosts: each message is sent and handled by one shard.",
        result.run_id,
        result.merged_from.len()
    )?;
    writeln!(out)?;
    writeln!(out, "| shard | host | started | passed | environment |")?;
    writeln!(out, "|---:|---|---|---|---|")?;
    for shard in &result.merged_from {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} (`{}`) |",
            shard.index,
            shard.host,
            shard.started_at,
            if shard.passed { "yes" } else { "no" },
            shard.environment.fingerprint_text(),
            shard.file
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| cell | shard | start offset ms | late ms | sent | received | lost | msg/s e2e | p99 µs | peak RSS MiB | CPU µs/msg |"
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for cell in &result.cells {
        for shard in &cell.shards {
            let ms = |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
            writeln!(
                out,
                "| {}/{} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.1} | {:.2} |",
                cell.backend,
                cell.mode,
                shard.index,
                ms(shard.start_offset_ms),
                ms(shard.start_late_ms),
                shard.sent,
                shard.received,
                shard.lost,
                shard.e2e_msgs_per_sec,
                shard.e2e_p99_us,
                shard.rss_peak_bytes as f64 / (1024.0 * 1024.0),
                shard.cpu_us_per_msg
            )?;
        }
    }
    writeln!(out)?;
    Ok(())
}

impl MarkdownExporter {
    /// Each cell's timeline in short, and the chart.
    fn timeline_section(&self, out: &mut String, result: &RunResult) -> anyhow::Result<()> {
        if result.cells.iter().all(|c| c.timeline_summary.is_none()) {
            return Ok(());
        }
        writeln!(out, "## Timeline")?;
        writeln!(out)?;
        writeln!(
            out,
            "Per second of the measured phase (every second is in the JSON result): the offered \
             load, what the subscribers handled, and the backlog (acknowledged but not yet \
             handled). A backlog that keeps growing while load is offered means the subscribers \
             did not keep up, and latency rose with every second."
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "| cell | offered msg/s | handled msg/s | peak backlog | backlog trend msg/s | backlog kept growing |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---|")?;
        for cell in &result.cells {
            let Some(summary) = &cell.timeline_summary else {
                continue;
            };
            writeln!(
                out,
                "| {}/{} | {:.0} | {:.0} | {} | {:+.0} | {} |",
                cell.backend,
                cell.mode,
                summary.steady_offered_per_sec,
                summary.steady_handled_per_sec,
                summary.peak_backlog,
                summary.backlog_slope_per_sec,
                if summary.backlog_growing {
                    "**yes**"
                } else {
                    "no"
                }
            )?;
        }
        writeln!(out)?;
        if let Some(chart) = &self.timeline_chart_file {
            writeln!(out, "![Rates and backlog over time]({chart})")?;
            writeln!(out)?;
        }
        Ok(())
    }

    /// The rate search: the highest passing rate per cell, then every step.
    fn search_section(&self, out: &mut String, result: &RunResult) -> anyhow::Result<()> {
        let searched: Vec<_> = result
            .cells
            .iter()
            .filter_map(|c| c.search.as_ref().map(|s| (c, s)))
            .collect();
        let Some((_, first)) = searched.first() else {
            return Ok(());
        };
        writeln!(
            out,
            "## Highest rate with end-to-end p99 <= {}",
            readable(first.target_p99_us)
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "Each step offers one rate for {:.0} s on fresh topics; it passes when its \
             end-to-end p99 is at or under the target, the subscribers handle the offered rate, \
             the backlog does not keep growing, and nothing is lost.{}",
            first.step_seconds,
            if first.runs_per_rate > 1 {
                let majority = RateSearch::runs_to_pass(first.runs_per_rate);
                if majority == first.runs_per_rate {
                    format!(
                        " A rate passes only when all {} of its runs pass.",
                        first.runs_per_rate
                    )
                } else {
                    format!(
                        " A rate passes when {majority} of its {} runs pass (its runs stop once \
                         that is decided).",
                        first.runs_per_rate
                    )
                }
            } else {
                String::new()
            }
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "| cell | max rate msg/s | p50 at max | p99 at max | steps | search ended |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---|")?;
        for (cell, search) in &searched {
            let best = search.max_rate.and_then(|rate| {
                search
                    .steps
                    .iter()
                    .find(|s| s.passed && s.offered_rate == rate)
            });
            writeln!(
                out,
                "| {}/{} | {} | {} | {} | {} | {} |",
                cell.backend,
                cell.mode,
                search
                    .max_rate
                    .map_or("**none passed**".to_owned(), |r| r.to_string()),
                best.map_or("-".to_owned(), |s| readable(s.e2e_p50_us)),
                best.map_or("-".to_owned(), |s| readable(s.e2e_p99_us)),
                search.steps.len(),
                search.ended
            )?;
        }
        writeln!(out)?;
        if let Some(chart) = &self.search_chart_file {
            writeln!(out, "![p99 against offered rate]({chart})")?;
            writeln!(out)?;
        }
        for (cell, search) in &searched {
            writeln!(out, "### Steps of {}/{}", cell.backend, cell.mode)?;
            writeln!(out)?;
            writeln!(
                out,
                "| offered msg/s | handled msg/s | p50 | p99 | peak backlog | lost | result |"
            )?;
            writeln!(out, "|---:|---:|---:|---:|---:|---:|---|")?;
            for step in &search.steps {
                writeln!(
                    out,
                    "| {} | {:.0} | {} | {} | {} | {} | {} |",
                    step.offered_rate,
                    step.handled_per_sec,
                    readable(step.e2e_p50_us),
                    readable(step.e2e_p99_us),
                    step.peak_backlog,
                    step.lost,
                    if step.passed {
                        "pass".to_owned()
                    } else {
                        format!("fail: {}", step.reasons.join("; "))
                    }
                )?;
            }
            writeln!(out)?;
        }
        Ok(())
    }
}
