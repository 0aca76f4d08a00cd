//! Exporters: one file per format, each turning the one result model into bytes.

pub mod ab;
pub mod compare;
pub mod json;
pub mod markdown;
pub mod svg;
pub mod table;

use std::path::{Path, PathBuf};

use comfy_table::Table;
use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};

use crate::metrics::model::RunResult;

/// An empty table in the reports' style: GitHub markdown, or box drawing for the terminal
/// (never resized to a terminal's width, so output is the same wherever it goes).
pub fn styled_table(markdown: bool) -> Table {
    let mut table = Table::new();
    table.load_style(if markdown {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    table.force_no_tty();
    table
}

/// Writes a result in one format.
pub trait Exporter {
    /// The file extension of this format.
    fn extension(&self) -> &'static str;
    /// The result, rendered.
    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>>;
}

/// The file stem of a run's reports: `<scenario>-<UTC timestamp>`.
pub fn file_stem(result: &RunResult) -> String {
    let stamp: String = result
        .started_at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{}-{stamp}", result.scenario.name)
}

/// Writes the JSON result, the markdown report and its latency chart into `dir`; returns the
/// paths written. Each file is written to a temporary name and renamed into place.
pub fn write_reports(result: &RunResult, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let stem = file_stem(result);
    let svg_name = format!("{stem}-latency.svg");
    let outputs: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            dir.join(format!("{stem}.json")),
            json::JsonExporter.render(result)?,
        ),
        (dir.join(&svg_name), svg::LatencyChart.render(result)?),
        (
            dir.join(format!("{stem}.md")),
            markdown::MarkdownExporter {
                chart_file: Some(svg_name),
            }
            .render(result)?,
        ),
    ];
    let mut written = Vec::new();
    for (path, bytes) in outputs {
        write_atomically(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that
/// readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}
