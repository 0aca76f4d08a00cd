//! JUnit XML, for CI systems that show test results (GitLab, Jenkins, GitHub's test
//! reporters): one test suite per run, and per cell one test case for the run itself (it
//! completed, nothing acknowledged was lost, no error) and one per `[thresholds]` limit.
//! An interrupted cell's cases are skipped, not failed.

use std::fmt::Write;

use super::Exporter;
use crate::metrics::model::{CellResult, CellStatus, RunResult};
use crate::runner::threshold_checks;

/// The JUnit XML report described in the module's documentation.
pub struct JunitExporter;

/// One test case: its name, and its failure message when it failed.
struct Case {
    name: String,
    failure: Option<String>,
}

fn cases(cell: &CellResult, result: &RunResult) -> Vec<Case> {
    let checks = threshold_checks(cell, &result.scenario.settings.thresholds);
    let threshold_failures: Vec<&String> =
        checks.iter().filter_map(|c| c.failure.as_ref()).collect();
    let run_failures: Vec<&str> = cell
        .failures
        .iter()
        .filter(|failure| !threshold_failures.contains(failure))
        .map(String::as_str)
        .collect();
    let mut cases = vec![Case {
        name: "completed without loss or error".to_owned(),
        failure: (!run_failures.is_empty()).then(|| run_failures.join("; ")),
    }];
    cases.extend(checks.into_iter().map(|check| Case {
        name: check.name,
        failure: check.failure,
    }));
    cases
}

impl Exporter for JunitExporter {
    fn extension(&self) -> &'static str {
        "xml"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let mut body = String::new();
        let (mut tests, mut failures, mut skipped) = (0, 0, 0);
        for cell in &result.cells {
            let class = format!("busbench.{}.{}", cell.backend.name(), cell.mode.name());
            let seconds = cell.e2e_seconds.max(0.0);
            for case in cases(cell, result) {
                tests += 1;
                write!(
                    body,
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{seconds:.3}\"",
                    escape(&class),
                    escape(&case.name)
                )?;
                if cell.status == CellStatus::Interrupted {
                    skipped += 1;
                    writeln!(
                        body,
                        ">\n      <skipped message=\"interrupted\"/>\n    </testcase>"
                    )?;
                } else if let Some(failure) = &case.failure {
                    failures += 1;
                    writeln!(
                        body,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(failure),
                        escape(failure)
                    )?;
                } else {
                    writeln!(body, "/>")?;
                }
            }
        }
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        writeln!(
            out,
            "<testsuites name=\"busbench\" tests=\"{tests}\" failures=\"{failures}\" \
             skipped=\"{skipped}\">"
        )?;
        writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" \
             skipped=\"{skipped}\" timestamp=\"{}\">",
            escape(&result.scenario.name),
            escape(&result.started_at)
        )?;
        out.push_str(&body);
        writeln!(out, "  </testsuite>")?;
        writeln!(out, "</testsuites>")?;
        Ok(out.into_bytes())
    }
}

/// Text made safe inside XML attributes and elements.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Control characters other than tab and line breaks are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(escape("bell\u{7}"), "bell ");
    }
}
