//! The A/B report: base against head medians per cell and figure, the change with its 95%
//! bootstrap interval, the Mann-Whitney p-value and the verdict; for the terminal, as markdown
//! for a pull-request comment, and as JSON with every run's value.

use std::fmt::Write;

use comfy_table::{CellAlignment, Table};

use crate::ab::{AbReport, AbRow};

fn value(metric: &str, value: f64) -> String {
    if metric.contains("msg/s") || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn table(rows: &[AbRow], markdown: bool) -> Table {
    let mut table = super::styled_table(markdown);
    table.set_header([
        "cell",
        "metric",
        "base median",
        "head median",
        "change",
        "95% interval",
        "p",
        "verdict",
    ]);
    for row in rows {
        table.add_row([
            row.cell.clone(),
            row.metric.to_owned(),
            value(row.metric, row.base_median),
            value(row.metric, row.head_median),
            format!("{:+.1}%", row.change_pct),
            format!("{:+.1}% .. {:+.1}%", row.interval_pct.0, row.interval_pct.1),
            format!("{:.3}", row.p_value),
            row.verdict.label().to_owned(),
        ]);
    }
    for index in 2..7 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn render(report: &AbReport, markdown: bool) -> String {
    let mut out = String::new();
    let verdict = if report.regressed() {
        "REGRESSION"
    } else {
        "no regression"
    };
    if markdown {
        let _ = writeln!(out, "### busbench A/B: {verdict}\n");
    } else {
        let _ = writeln!(out, "busbench ab: {verdict}");
    }
    let t = &report.thresholds;
    let _ = writeln!(
        out,
        "Base {}, head {}; {} runs each, interleaved, of `{}`. A change is a regression when it \
         exceeds its threshold (throughput drop {}%, p99 rise {}%, CPU rise {}%, allocations \
         rise {}%) and the Mann-Whitney U test gives p <= {}.\n",
        report.base,
        report.head,
        report.runs,
        report.scenario,
        t.throughput_drop_pct,
        t.latency_rise_pct,
        t.cpu_rise_pct,
        t.allocations_rise_pct,
        t.significance
    );
    out.push_str(&table(&report.rows, markdown).to_string());
    out.push('\n');
    if let Some(confirming) = &report.confirmation {
        let _ = writeln!(
            out,
            "\nConfirming rounds ({} more runs a side of the flagged cells' backends): a \
             regression above stands only when its figure regressed here too.\n",
            report.runs
        );
        out.push_str(&table(confirming, markdown).to_string());
        out.push('\n');
    }
    for problem in &report.correctness {
        let _ = writeln!(out, "- correctness: {problem}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "- note: {note}");
    }
    out
}

/// The A/B report for the terminal.
pub fn terminal(report: &AbReport) -> String {
    render(report, false)
}

/// The A/B report as markdown, fit for a pull-request comment.
pub fn markdown(report: &AbReport) -> String {
    render(report, true)
}

/// The A/B report as JSON, every run's value included.
pub fn json(report: &AbReport) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    Ok(bytes)
}
