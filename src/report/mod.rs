//! Exporters: one file per format, each turning the one result model into bytes.

pub mod ab;
pub mod compare;
pub mod csv;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod search_svg;
pub mod svg;
pub mod table;
pub mod timeline_svg;

use std::path::{Path, PathBuf};

use comfy_table::Table;
use std::sync::atomic::{AtomicU8, Ordering};

use comfy_table::presets::{ASCII_FULL_CONDENSED, ASCII_MARKDOWN, UTF8_FULL_CONDENSED};

use crate::metrics::model::RunResult;

/// How tables printed on standard output are drawn (`--style`); files in markdown always use
/// markdown tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TableStyle {
    /// Box-drawing characters.
    #[default]
    Unicode,
    /// Plain ASCII (`+`, `-`, `|`), for terminals and logs without UTF-8.
    Ascii,
    /// GitHub markdown.
    Markdown,
}

static TERMINAL_STYLE: AtomicU8 = AtomicU8::new(0);

/// Chooses how tables for standard output are drawn, for the whole process.
pub fn set_terminal_style(style: TableStyle) {
    TERMINAL_STYLE.store(style as u8, Ordering::Relaxed);
}

fn terminal_style() -> TableStyle {
    match TERMINAL_STYLE.load(Ordering::Relaxed) {
        1 => TableStyle::Ascii,
        2 => TableStyle::Markdown,
        _ => TableStyle::Unicode,
    }
}

/// An empty table in the reports' style: GitHub markdown, or for standard output the style
/// chosen with [`set_terminal_style`] (never resized to a terminal's width, so output is the
/// same wherever it goes).
pub fn styled_table(markdown: bool) -> Table {
    let style = if markdown {
        TableStyle::Markdown
    } else {
        terminal_style()
    };
    let mut table = Table::new();
    table.load_style(match style {
        TableStyle::Unicode => UTF8_FULL_CONDENSED,
        TableStyle::Ascii => ASCII_FULL_CONDENSED,
        TableStyle::Markdown => ASCII_MARKDOWN,
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

/// The file stem of a run's reports: `<scenario>-<UTC timestamp>`, with `-shard<I>of<N>`
/// for a shard of a split run and `-merged` for the shards merged.
pub fn file_stem(result: &RunResult) -> String {
    let stamp: String = result
        .started_at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let name = &result.scenario.name;
    match &result.shard {
        Some(shard) => format!("{name}-{stamp}-shard{}of{}", shard.index, shard.count),
        None if !result.merged_from.is_empty() => format!("{name}-{stamp}-merged"),
        None => format!("{name}-{stamp}"),
    }
}

/// Checks, before anything runs, that reports can be written into `dir`: the folder exists
/// or can be made, and a file can be created in it. (Scenario names are bounded so that the
/// report file names always fit.)
pub fn check_output_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the folder {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".busbench-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Reports written before a write failed, and the failure.
#[derive(Debug, thiserror::Error)]
#[error("{error:#} (written before the failure: {})", list(.written))]
pub struct PartialWrite {
    /// Files completely written.
    pub written: Vec<PathBuf>,
    /// What failed.
    pub error: anyhow::Error,
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the JSON result, the markdown report and its charts (latency; timeline when the
/// cells have one; rate search when the run searched) into `dir`; returns the paths written. The stem is claimed by creating the JSON file exclusively, so two runs
/// started in the same second get different names (`-2`, `-3`, ...) instead of overwriting
/// each other. Each file is written to a temporary name and renamed into place; on a failure
/// the temporary file is removed and the error lists what was written.
pub fn write_reports(result: &RunResult, dir: &Path) -> Result<Vec<PathBuf>, PartialWrite> {
    let partial = |written: &[PathBuf], error: anyhow::Error| PartialWrite {
        written: written.to_vec(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(|e| partial(&[], e.into()))?;
    let base = file_stem(result);
    let mut stem = base.clone();
    for attempt in 2.. {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{stem}.json")))
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                stem = format!("{base}-{attempt}");
            }
            Err(e) => return Err(partial(&[], e.into())),
        }
    }
    let json_path = dir.join(format!("{stem}.json"));
    let svg_name = format!("{stem}-latency.svg");
    let timeline_name = result
        .cells
        .iter()
        .any(|c| !c.timeline.is_empty())
        .then(|| format!("{stem}-timeline.svg"));
    let search_name = result
        .cells
        .iter()
        .any(|c| c.search.is_some())
        .then(|| format!("{stem}-max-rate.svg"));
    let rendered = (|| -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut outputs = vec![
            (json_path.clone(), json::JsonExporter.render(result)?),
            (dir.join(&svg_name), svg::LatencyChart.render(result)?),
        ];
        if let Some(name) = &timeline_name {
            outputs.push((dir.join(name), timeline_svg::TimelineChart.render(result)?));
        }
        if let Some(name) = &search_name {
            outputs.push((dir.join(name), search_svg::SearchChart.render(result)?));
        }
        outputs.push((
            dir.join(format!("{stem}.md")),
            markdown::MarkdownExporter {
                chart_file: Some(svg_name.clone()),
                timeline_chart_file: timeline_name.clone(),
                search_chart_file: search_name.clone(),
            }
            .render(result)?,
        ));
        Ok(outputs)
    })();
    let outputs = match rendered {
        Ok(outputs) => outputs,
        Err(error) => {
            let _ = std::fs::remove_file(&json_path);
            return Err(partial(&[], error));
        }
    };
    let mut written = Vec::new();
    for (path, bytes) in outputs {
        if let Err(error) = write_atomically(&path, &bytes) {
            if written.is_empty() {
                // The claimed, still empty JSON file would read as a broken result.
                let _ = std::fs::remove_file(&json_path);
            }
            return Err(partial(&written, error));
        }
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
    let written =
        std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error.into());
    }
    Ok(())
}
