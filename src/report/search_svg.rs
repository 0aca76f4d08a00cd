//! The rate search chart: end-to-end p99 of every step against its offered rate, one curve per
//! searched cell, the target as a dashed line; passing steps filled, failing ones hollow.

use std::fmt::Write;

use super::Exporter;
use super::svg::{COLOURS, begin, human_micros, nice_ceiling, short};
use crate::metrics::model::RunResult;

/// The chart exporter.
pub struct SearchChart;

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

impl Exporter for SearchChart {
    fn extension(&self) -> &'static str {
        "svg"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let searched: Vec<_> = result
            .cells
            .iter()
            .filter_map(|c| c.search.as_ref().map(|s| (c, s)))
            .filter(|(_, s)| !s.steps.is_empty())
            .collect();
        let target = searched.first().map_or(1, |(_, s)| s.target_p99_us.max(1));
        let highest_rate = searched
            .iter()
            .flat_map(|(_, s)| s.steps.iter().map(|step| step.offered_rate))
            .max()
            .unwrap_or(1)
            .max(1);
        let p99s = || {
            searched
                .iter()
                .flat_map(|(_, s)| s.steps.iter().map(|step| step.e2e_p99_us.max(1)))
                .chain([target])
        };
        // The y axis spans the decades the figures fall in, the x axis round rates.
        let log_min = (p99s().min().unwrap_or(1) as f64).log10().floor();
        let log_max = (p99s().max().unwrap_or(1) as f64)
            .log10()
            .ceil()
            .max(log_min + 1.0);
        let rate_tick = nice_ceiling(highest_rate.div_ceil(5).max(1));
        let rate_max = rate_tick * highest_rate.div_ceil(rate_tick);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x_at = |rate: u64| LEFT + plot_w * rate as f64 / rate_max as f64;
        let y_at = |micros: u64| {
            let log = (micros.max(1) as f64).log10();
            TOP + plot_h * (1.0 - (log - log_min) / (log_max - log_min))
        };
        let mut svg = String::new();
        begin(
            &mut svg,
            (WIDTH, HEIGHT),
            LEFT + plot_w / 2.0,
            &format!(
                "{}: end-to-end p99 against offered rate",
                result.scenario.name
            ),
        )?;
        for decade in (log_min as u32)..=(log_max as u32) {
            let y = y_at(10u64.pow(decade));
            writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                human_micros(10u64.pow(decade))
            )?;
        }
        for rate in (0..=rate_max).step_by(rate_tick as usize) {
            let x = x_at(rate);
            writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 18.0,
                short(rate)
            )?;
        }
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered rate, messages per second</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 8.0
        )?;
        let target_y = y_at(target);
        writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{target_y:.1}" x2="{:.1}" y2="{target_y:.1}" stroke="#000" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}">target p99 {}</text>"##,
            LEFT + plot_w,
            LEFT + plot_w + 6.0,
            target_y + 4.0,
            human_micros(target)
        )?;
        for (index, (cell, search)) in searched.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let mut steps: Vec<_> = search.steps.iter().collect();
            steps.sort_by_key(|s| s.offered_rate);
            let points: Vec<String> = steps
                .iter()
                .map(|s| format!("{:.1},{:.1}", x_at(s.offered_rate), y_at(s.e2e_p99_us)))
                .collect();
            writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            )?;
            for step in &steps {
                writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" stroke="{colour}" stroke-width="2" fill="{}"/>"#,
                    x_at(step.offered_rate),
                    y_at(step.e2e_p99_us),
                    if step.passed { colour } else { "white" }
                )?;
            }
            let legend_y = TOP + 10.0 + 20.0 * index as f64;
            writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}/{}: {}</text>"#,
                WIDTH - RIGHT + 10.0,
                WIDTH - RIGHT + 30.0,
                WIDTH - RIGHT + 35.0,
                legend_y + 4.0,
                cell.backend,
                cell.mode,
                search
                    .max_rate
                    .map_or("none passed".to_owned(), |r| format!("max {r}/s"))
            )?;
        }
        if searched.is_empty() {
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no rate search in this run</text>"#,
                LEFT + plot_w / 2.0,
                TOP + plot_h / 2.0
            )?;
        }
        writeln!(svg, "</svg>")?;
        Ok(svg.into_bytes())
    }
}
