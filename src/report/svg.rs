//! The latency-by-percentile chart: end-to-end latency of every cell against the percentile,
//! on a logarithmic "nines" axis (50%, 90%, 99%, 99.9%, ...), as a standalone SVG.

use std::fmt::Write;

use super::Exporter;
use crate::metrics::latency;
use crate::metrics::model::RunResult;

/// The chart exporter.
pub struct LatencyChart;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// One colour per series.
pub(super) const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// The x axis runs to 99.999%.
const MAX_NINES: f64 = 5.0;

impl Exporter for LatencyChart {
    fn extension(&self) -> &'static str {
        "svg"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let mut series = Vec::new();
        let mut highest: u64 = 1;
        for cell in &result.cells {
            let Some(histogram) = latency::decode(&cell.histograms.e2e) else {
                continue;
            };
            if histogram.is_empty() {
                continue;
            }
            let points: Vec<(f64, u64)> = (0..=100)
                .map(|i| {
                    let x = MAX_NINES * f64::from(i) / 100.0;
                    let quantile = 1.0 - 10f64.powf(-x);
                    (x, histogram.value_at_quantile(quantile).max(1))
                })
                .collect();
            highest = highest.max(histogram.max());
            series.push((format!("{}/{}", cell.backend, cell.mode), points));
        }
        let log_max = (highest as f64).log10().ceil().max(1.0);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x_at = |x: f64| LEFT + plot_w * x / MAX_NINES;
        let y_at = |micros: u64| TOP + plot_h * (1.0 - (micros.max(1) as f64).log10() / log_max);
        let mut svg = String::new();
        begin(
            &mut svg,
            (WIDTH, HEIGHT),
            LEFT + plot_w / 2.0,
            &format!("{}: end-to-end latency by percentile", result.scenario.name),
        )?;
        for decade in 0..=(log_max as u32) {
            let micros = 10u64.pow(decade);
            let y = y_at(micros);
            writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                LEFT + plot_w
            )?;
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                human_micros(micros)
            )?;
        }
        for (x, label) in [
            (0.0, "0%"),
            (1.0, "90%"),
            (2.0, "99%"),
            (3.0, "99.9%"),
            (4.0, "99.99%"),
            (5.0, "99.999%"),
        ] {
            let px = x_at(x);
            writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                TOP + plot_h
            )?;
            writeln!(
                svg,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                TOP + plot_h + 18.0
            )?;
        }
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 8.0
        )?;
        for (index, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let path: Vec<String> = points
                .iter()
                .map(|(x, v)| format!("{:.1},{:.1}", x_at(*x), y_at(*v)))
                .collect();
            writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            )?;
            let legend_y = TOP + 10.0 + 20.0 * index as f64;
            writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/>"#,
                WIDTH - RIGHT + 15.0,
                WIDTH - RIGHT + 35.0
            )?;
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                WIDTH - RIGHT + 40.0,
                legend_y + 4.0,
                escape(name)
            )?;
        }
        if series.is_empty() {
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no latency recorded</text>"#,
                LEFT + plot_w / 2.0,
                TOP + plot_h / 2.0
            )?;
        }
        writeln!(svg, "</svg>")?;
        Ok(svg.into_bytes())
    }
}

/// Starts a standalone SVG of `size` (width, height) on a white background, with `title`
/// centred on `title_x`.
pub(super) fn begin(
    svg: &mut String,
    (width, height): (f64, f64),
    title_x: f64,
    title: &str,
) -> std::fmt::Result {
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{title_x}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        escape(title)
    )
}

/// A round latency in µs, with its unit.
pub(super) fn human_micros(micros: u64) -> String {
    match micros {
        m if m >= 1_000_000 => format!("{} s", m / 1_000_000),
        m if m >= 1_000 => format!("{} ms", m / 1_000),
        m => format!("{m} µs"),
    }
}

/// Text made safe inside SVG.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value`.
pub(super) fn nice_ceiling(value: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for factor in [1, 2, 5] {
            if factor * power >= value {
                return factor * power;
            }
        }
        power *= 10;
    }
}

/// A count in few characters: 1.5k, 20M.
pub(super) fn short(value: u64) -> String {
    match value {
        v if v >= 1_000_000 => format!("{}M", trim(v as f64 / 1e6)),
        v if v >= 1_000 => format!("{}k", trim(v as f64 / 1e3)),
        v => v.to_string(),
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.1}");
    text.trim_end_matches(".0").to_owned()
}
