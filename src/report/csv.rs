//! CSV for spreadsheets: a header row, then one row per cell (backend and mode) with its
//! counts, throughput, latency percentiles, resources, ceiling figures, the timeline's peak
//! backlog and the rate search's max rate. Numbers are plain
//! (no thousands separators, no units: the unit is in the column name); an absent figure is an
//! empty field; fields holding a comma, quote or line break are quoted (RFC 4180).

use std::fmt::Write;

use super::Exporter;
use crate::metrics::latency::Percentiles;
use crate::metrics::model::{CellResult, CellStatus, RunResult};

/// One row per cell, as described in the module's documentation.
pub struct CsvExporter;

/// The header row's column names, in order.
pub const COLUMNS: &[&str] = &[
    "scenario",
    "backend",
    "mode",
    "status",
    "planned",
    "sent",
    "acknowledged",
    "publish_errors",
    "unconfirmed",
    "received",
    "lost",
    "duplicates",
    "order_violations",
    "success_rate",
    "publish_msgs_per_sec",
    "e2e_msgs_per_sec",
    "e2e_mb_per_sec",
    "publish_p50_us",
    "publish_p90_us",
    "publish_p99_us",
    "publish_p999_us",
    "publish_max_us",
    "e2e_p50_us",
    "e2e_p90_us",
    "e2e_p99_us",
    "e2e_p999_us",
    "e2e_max_us",
    "send_lag_p50_us",
    "send_lag_p99_us",
    "cpu_us_per_msg",
    "whole_cell_cpu_us_per_msg",
    "allocations_per_msg",
    "rss_peak_bytes",
    "tasks_leaked",
    "threads_leaked",
    "ceiling_msgs_per_sec",
    "ceiling_cpu_us_per_msg",
    "bare_client_msgs_per_sec",
    "efficiency",
    "peak_backlog",
    "backlog_growing",
    "max_rate_at_p99_target",
    "p99_target_us",
    "failures",
];

impl Exporter for CsvExporter {
    fn extension(&self) -> &'static str {
        "csv"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let mut out = String::new();
        writeln!(out, "{}", COLUMNS.join(","))?;
        for cell in &result.cells {
            let fields = row(&result.scenario.name, cell);
            debug_assert_eq!(fields.len(), COLUMNS.len());
            let quoted: Vec<String> = fields.iter().map(|field| quote(field)).collect();
            writeln!(out, "{}", quoted.join(","))?;
        }
        Ok(out.into_bytes())
    }
}

fn row(scenario: &str, cell: &CellResult) -> Vec<String> {
    let optional = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    let percentiles = |p: &Percentiles| {
        [p.p50, p.p90, p.p99, p.p999, p.max]
            .into_iter()
            .map(|v| v.to_string())
    };
    let status = match cell.status {
        CellStatus::Ok => "ok",
        CellStatus::Failed => "failed",
        CellStatus::Interrupted => "interrupted",
    };
    let mut fields = vec![
        scenario.to_owned(),
        cell.backend.name().to_owned(),
        cell.mode.name().to_owned(),
        status.to_owned(),
    ];
    fields.extend(
        [
            cell.planned,
            cell.sent,
            cell.acknowledged,
            cell.publish_errors,
            cell.unconfirmed,
            cell.received,
            cell.lost,
            cell.duplicates,
            cell.order_violations,
        ]
        .map(|n| n.to_string()),
    );
    fields.extend(
        [
            cell.success_rate,
            cell.throughput.publish_msgs_per_sec,
            cell.throughput.e2e_msgs_per_sec,
            cell.throughput.e2e_mb_per_sec,
        ]
        .map(|v| v.to_string()),
    );
    fields.extend(percentiles(&cell.latency_us.publish));
    fields.extend(percentiles(&cell.latency_us.e2e));
    let send_lag = &cell.latency_us.send_lag;
    fields.extend([send_lag.p50, send_lag.p99].map(|v| {
        if send_lag.count > 0 {
            v.to_string()
        } else {
            String::new()
        }
    }));
    fields.push(cell.cpu_us_per_msg.to_string());
    fields.push(cell.whole_cell_cpu_us_per_msg.to_string());
    fields.push(optional(cell.work_per_msg.allocations));
    fields.extend(
        [
            cell.memory.rss_peak_bytes,
            cell.tasks.leaked,
            cell.threads.leaked,
        ]
        .map(|n| n.to_string()),
    );
    fields.push(optional(cell.ceiling_msgs_per_sec));
    fields.push(optional(cell.ceiling_cpu_us_per_msg));
    fields.push(optional(cell.bare_client_msgs_per_sec));
    fields.push(optional(cell.efficiency));
    let summary = cell.timeline_summary;
    fields.push(summary.map_or(String::new(), |s| s.peak_backlog.to_string()));
    fields.push(summary.map_or(String::new(), |s| s.backlog_growing.to_string()));
    let search = cell.search.as_ref();
    fields.push(
        cell.max_rate_at_p99_target()
            .map_or(String::new(), |rate| rate.to_string()),
    );
    fields.push(search.map_or(String::new(), |s| s.target_p99_us.to_string()));
    fields.push(cell.failures.join("; "));
    fields
}

/// A field as RFC 4180 wants it: quoted (with doubled quotes) when it holds a comma, a quote
/// or a line break.
pub fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_separators_are_quoted() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a, b"), "\"a, b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote("two\nlines"), "\"two\nlines\"");
    }
}
