//! The comparison table: metrics as rows, backends side by side per mode, and the winner of
//! each row with its margin. Rendered for the terminal and as GitHub markdown.

use comfy_table::{CellAlignment, Table};

use crate::metrics::model::{CellResult, CellStatus, RunResult};
use crate::scenario::{BackendKind, Mode};

/// Which way a metric is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Not ranked.
    Neither,
}

struct Metric {
    name: &'static str,
    better: Better,
    value: fn(&CellResult) -> Option<f64>,
    format: fn(f64) -> String,
}

fn count(v: f64) -> String {
    format!("{}", v as u64)
}
fn rate(v: f64) -> String {
    format!("{v:.0}")
}
fn two(v: f64) -> String {
    format!("{v:.2}")
}
fn three(v: f64) -> String {
    format!("{v:.3}")
}
fn micros(v: f64) -> String {
    format!("{}", v as u64)
}
fn mebibytes(v: f64) -> String {
    format!("{:.1}", v / (1024.0 * 1024.0))
}
fn percent(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn metrics() -> Vec<Metric> {
    vec![
        Metric {
            name: "max msg/s at p99 target",
            better: Better::Higher,
            value: |c| c.max_rate_at_p99_target().map(|r| r as f64),
            format: rate,
        },
        Metric {
            name: "planned",
            better: Better::Neither,
            value: |c| Some(c.planned as f64),
            format: count,
        },
        Metric {
            name: "sent",
            better: Better::Neither,
            value: |c| Some(c.sent as f64),
            format: count,
        },
        Metric {
            name: "acknowledged",
            better: Better::Neither,
            value: |c| Some(c.acknowledged as f64),
            format: count,
        },
        Metric {
            name: "publish errors",
            better: Better::Lower,
            value: |c| Some(c.publish_errors as f64),
            format: count,
        },
        Metric {
            name: "unconfirmed",
            better: Better::Lower,
            value: |c| Some(c.unconfirmed as f64),
            format: count,
        },
        Metric {
            name: "received",
            better: Better::Neither,
            value: |c| Some(c.received as f64),
            format: count,
        },
        Metric {
            name: "lost",
            better: Better::Lower,
            value: |c| Some(c.lost as f64),
            format: count,
        },
        Metric {
            name: "duplicates",
            better: Better::Lower,
            value: |c| Some(c.duplicates as f64),
            format: count,
        },
        Metric {
            name: "order violations",
            better: Better::Lower,
            value: |c| Some(c.order_violations as f64),
            format: count,
        },
        Metric {
            name: "success rate",
            better: Better::Higher,
            value: |c| Some(c.success_rate),
            format: percent,
        },
        Metric {
            name: "publish msg/s",
            better: Better::Higher,
            value: |c| Some(c.throughput.publish_msgs_per_sec),
            format: rate,
        },
        Metric {
            name: "end-to-end msg/s",
            better: Better::Higher,
            value: |c| Some(c.throughput.e2e_msgs_per_sec),
            format: rate,
        },
        Metric {
            name: "end-to-end MB/s",
            better: Better::Higher,
            value: |c| Some(c.throughput.e2e_mb_per_sec),
            format: two,
        },
        Metric {
            name: "publish p50 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.publish.p50 as f64),
            format: micros,
        },
        Metric {
            name: "publish p99 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.publish.p99 as f64),
            format: micros,
        },
        Metric {
            name: "send lag p99 µs",
            better: Better::Lower,
            value: |c| {
                (c.latency_us.send_lag.count > 0).then_some(c.latency_us.send_lag.p99 as f64)
            },
            format: micros,
        },
        Metric {
            name: "e2e p50 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.e2e.p50 as f64),
            format: micros,
        },
        Metric {
            name: "e2e p90 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.e2e.p90 as f64),
            format: micros,
        },
        Metric {
            name: "e2e p99 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.e2e.p99 as f64),
            format: micros,
        },
        Metric {
            name: "e2e p99.9 µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.e2e.p999 as f64),
            format: micros,
        },
        Metric {
            name: "e2e max µs",
            better: Better::Lower,
            value: |c| Some(c.latency_us.e2e.max as f64),
            format: micros,
        },
        Metric {
            name: "peak RSS MiB",
            better: Better::Lower,
            value: |c| Some(c.memory.rss_peak_bytes as f64),
            format: mebibytes,
        },
        Metric {
            name: "RSS growth MiB",
            better: Better::Lower,
            value: |c| Some(c.memory.rss_growth_bytes as f64),
            format: mebibytes,
        },
        Metric {
            name: "CPU µs/msg",
            better: Better::Lower,
            value: |c| Some(c.cpu_us_per_msg),
            format: two,
        },
        Metric {
            name: "CPU µs/msg, whole cell",
            better: Better::Lower,
            value: |c| Some(c.whole_cell_cpu_us_per_msg),
            format: two,
        },
        Metric {
            name: "heap allocs/msg",
            better: Better::Lower,
            value: |c| c.work_per_msg.allocations,
            format: two,
        },
        Metric {
            name: "heap bytes/msg",
            better: Better::Lower,
            value: |c| c.work_per_msg.allocated_bytes,
            format: rate,
        },
        Metric {
            name: "ctx switches/msg",
            better: Better::Lower,
            value: |c| Some(c.work_per_msg.context_switches),
            format: three,
        },
        Metric {
            name: "peak tasks",
            better: Better::Neither,
            value: |c| Some(c.tasks.peak as f64),
            format: count,
        },
        Metric {
            name: "leaked tasks",
            better: Better::Lower,
            value: |c| Some(c.tasks.leaked as f64),
            format: count,
        },
        Metric {
            name: "leaked threads",
            better: Better::Lower,
            value: |c| Some(c.threads.leaked as f64),
            format: count,
        },
        Metric {
            name: "no-ack client msg/s",
            better: Better::Higher,
            value: |c| c.bare_client_msgs_per_sec,
            format: rate,
        },
        Metric {
            name: "client ceiling msg/s",
            better: Better::Higher,
            value: |c| c.ceiling_msgs_per_sec,
            format: rate,
        },
        Metric {
            name: "client ceiling CPU µs/msg",
            better: Better::Lower,
            value: |c| c.ceiling_cpu_us_per_msg,
            format: two,
        },
        Metric {
            name: "bus efficiency",
            better: Better::Higher,
            value: |c| c.efficiency,
            format: percent,
        },
    ]
}

/// Header and rows of the comparison for one mode.
pub fn comparison_rows(result: &RunResult, mode: Mode) -> (Vec<String>, Vec<Vec<String>>) {
    let cells: Vec<&CellResult> = result.cells.iter().filter(|c| c.mode == mode).collect();
    let mut header = vec![format!("{mode}")];
    header.extend(cells.iter().map(|c| c.backend.name().to_owned()));
    // The question a reader has is which broker does better: the memory backend is a
    // reference column, never ranked.
    let ranked = cells
        .iter()
        .filter(|c| c.backend != BackendKind::Memory)
        .count()
        > 1;
    if ranked {
        header.push("best broker".into());
    }
    let mut rows = Vec::new();
    let mut status = vec!["status".to_owned()];
    status.extend(cells.iter().map(|c| match c.status {
        CellStatus::Ok => "ok".to_owned(),
        CellStatus::Failed => "FAILED".to_owned(),
        CellStatus::Interrupted => "interrupted".to_owned(),
    }));
    if ranked {
        status.push(String::new());
    }
    rows.push(status);
    for metric in metrics() {
        let mut values: Vec<Option<f64>> = cells.iter().map(|c| (metric.value)(c)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![metric.name.to_owned()];
        row.extend(values.iter().map(|v| v.map_or("-".into(), metric.format)));
        if metric.name == "bus efficiency" {
            // An efficiency above 1 is a measurement error: marked, and never "best".
            for (index, cell) in cells.iter().enumerate() {
                if efficiency_suspect(cell) {
                    row[index + 1].push_str(" (suspect)");
                    values[index] = None;
                }
            }
        }
        if ranked {
            row.push(winner(&cells, &values, metric.better));
        }
        rows.push(row);
    }
    (header, rows)
}

/// Whether the cell's efficiency was flagged as a measurement error.
pub fn efficiency_suspect(cell: &CellResult) -> bool {
    cell.warnings
        .iter()
        .any(|w| w.starts_with("bus efficiency"))
}

/// The best backend of a row and its margin over the runner-up ("kafka 1.8x"), "tie", or "".
fn winner(cells: &[&CellResult], values: &[Option<f64>], better: Better) -> String {
    if better == Better::Neither {
        return String::new();
    }
    let mut ranked: Vec<(f64, &str)> = values
        .iter()
        .zip(cells)
        .filter(|(_, c)| c.backend != BackendKind::Memory)
        .filter_map(|(v, c)| v.map(|v| (v, c.backend.name())))
        .collect();
    if ranked.len() < 2 {
        return String::new();
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    if better == Better::Higher {
        ranked.reverse();
    }
    let (best, name) = ranked[0];
    let (second, _) = ranked[1];
    if (best - second).abs() <= f64::EPSILON * best.abs().max(1.0) {
        return "tie".into();
    }
    let ratio = match better {
        Better::Higher if second > 0.0 => best / second,
        Better::Lower if best > 0.0 => second / best,
        _ => return name.to_owned(),
    };
    format!("{name} {ratio:.2}x")
}

fn build(header: Vec<String>, rows: Vec<Vec<String>>, markdown: bool) -> Table {
    let mut table = super::styled_table(markdown);
    table.set_header(header);
    for row in rows {
        // A `|` inside a markdown cell would split it.
        table.add_row(row.into_iter().map(|cell| {
            if markdown {
                cell.replace('|', "\\|")
            } else {
                cell
            }
        }));
    }
    for index in 1..table.column_count() {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The comparison tables, one per mode, for the terminal.
pub fn terminal(result: &RunResult) -> String {
    render(result, false)
}

/// The comparison tables as GitHub markdown.
pub fn markdown(result: &RunResult) -> String {
    render(result, true)
}

fn render(result: &RunResult, markdown: bool) -> String {
    let mut modes: Vec<Mode> = result.cells.iter().map(|c| c.mode).collect();
    modes.dedup();
    let mut out = String::new();
    for mode in modes {
        let (header, rows) = comparison_rows(result, mode);
        out.push_str(&build(header, rows, markdown).to_string());
        out.push_str("\n\n");
    }
    out
}
