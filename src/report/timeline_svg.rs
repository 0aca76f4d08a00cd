//! The timeline chart: for every cell, one panel of offered, acknowledged and handled messages
//! per second (left axis) and the backlog at the end of each second (right axis), as a
//! standalone SVG.

use std::fmt::Write;

use super::Exporter;
use super::svg::{begin, nice_ceiling, short};

use crate::metrics::model::{CellResult, RunResult, TimelineSecond};

/// The chart exporter.
pub struct TimelineChart;

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 190.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 60.0;
const PANEL_GAP: f64 = 45.0;
const OFFERED: &str = "#999999";
const ACKNOWLEDGED: &str = "#2ca02c";
const HANDLED: &str = "#1f77b4";
const BACKLOG: &str = "#d62728";

impl Exporter for TimelineChart {
    fn extension(&self) -> &'static str {
        "svg"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let cells: Vec<&CellResult> = result
            .cells
            .iter()
            .filter(|c| !c.timeline.is_empty())
            .collect();
        let height = TOP + (PANEL_HEIGHT + PANEL_GAP) * cells.len().max(1) as f64 + 30.0;
        let mut svg = String::new();
        begin(
            &mut svg,
            (WIDTH, height),
            WIDTH / 2.0,
            &format!(
                "{}: messages per second and backlog over time",
                result.scenario.name
            ),
        )?;
        for (index, (colour, label, dashed)) in [
            (OFFERED, "offered/s", false),
            (ACKNOWLEDGED, "acknowledged/s", false),
            (HANDLED, "handled/s", false),
            (BACKLOG, "backlog (right axis)", true),
        ]
        .iter()
        .enumerate()
        {
            let x = LEFT + 150.0 * index as f64;
            let dash = if *dashed {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="44" x2="{:.1}" y2="44" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="48">{label}</text>"#,
                x + 20.0,
                x + 25.0
            )?;
        }
        for (index, cell) in cells.iter().enumerate() {
            let top = TOP + 15.0 + (PANEL_HEIGHT + PANEL_GAP) * index as f64;
            panel(&mut svg, cell, top)?;
        }
        if cells.is_empty() {
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no timeline recorded</text>"#,
                WIDTH / 2.0,
                TOP + PANEL_HEIGHT / 2.0
            )?;
        }
        writeln!(svg, "</svg>")?;
        Ok(svg.into_bytes())
    }
}

/// One cell's panel, its plot area starting at `top`.
fn panel(svg: &mut String, cell: &CellResult, top: f64) -> anyhow::Result<()> {
    let plot_w = WIDTH - LEFT - RIGHT;
    let seconds = cell.timeline.len().max(2) as f64;
    let highest_rate = cell
        .timeline
        .iter()
        .flat_map(|s| [s.offered, s.acknowledged, s.handled])
        .max()
        .unwrap_or(0)
        .max(1);
    let highest_backlog = cell
        .timeline
        .iter()
        .map(|s| s.backlog)
        .max()
        .unwrap_or(0)
        .max(1);
    let rate_max = nice_ceiling(highest_rate);
    let backlog_max = nice_ceiling(highest_backlog);
    // Each second's value is drawn at the middle of its second.
    let x_at = |second: u32| LEFT + plot_w * (f64::from(second) + 0.5) / seconds;
    let y_at = |value: u64, max: u64| top + PANEL_HEIGHT * (1.0 - value as f64 / max as f64);
    writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}/{}</text>"#,
        top - 6.0,
        cell.backend,
        cell.mode
    )?;
    writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{PANEL_HEIGHT}" fill="none" stroke="#bbb"/>"##
    )?;
    for step in 0..=4u64 {
        let y = top + PANEL_HEIGHT * (1.0 - step as f64 / 4.0);
        writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            LEFT + plot_w
        )?;
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            short_tick(rate_max, step)
        )?;
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{BACKLOG}">{}</text>"#,
            LEFT + plot_w + 6.0,
            y + 4.0,
            short_tick(backlog_max, step)
        )?;
    }
    let tick_every = (seconds / 10.0).ceil().max(1.0) as u32;
    for second in (0..cell.timeline.len() as u32).step_by(tick_every as usize) {
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{second}s</text>"#,
            LEFT + plot_w * f64::from(second) / seconds,
            top + PANEL_HEIGHT + 16.0
        )?;
    }
    type Value = fn(&TimelineSecond) -> u64;
    let series: [(&str, &str, Value, u64); 4] = [
        (OFFERED, "", |s| s.offered, rate_max),
        (ACKNOWLEDGED, "", |s| s.acknowledged, rate_max),
        (HANDLED, "", |s| s.handled, rate_max),
        (
            BACKLOG,
            r#" stroke-dasharray="5,3""#,
            |s| s.backlog,
            backlog_max,
        ),
    ];
    for (colour, dash, value, max) in series {
        let points: Vec<String> = cell
            .timeline
            .iter()
            .map(|s| format!("{:.1},{:.1}", x_at(s.second), y_at(value(s), max)))
            .collect();
        writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        )?;
    }
    Ok(())
}

/// The label of tick `step` of 4 on an axis up to `max`: whole counts, or one decimal where a
/// quarter of a small axis falls between them.
fn short_tick(max: u64, step: u64) -> String {
    if (max * step).is_multiple_of(4) {
        short(max * step / 4)
    } else {
        format!("{:.1}", max as f64 * step as f64 / 4.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::svg::{nice_ceiling, short};
    use super::short_tick;

    #[test]
    fn axes_end_on_round_figures() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(101), 200);
        assert_eq!(nice_ceiling(50_000), 50_000);
        assert_eq!(short(1500), "1.5k");
        assert_eq!(short(20_000_000), "20M");
        assert_eq!(short_tick(1, 1), "0.2");
        assert_eq!(short_tick(200_000, 3), "150k");
    }
}
