//! The JSON result: every figure and the serialised histograms, as described by
//! `schema/result.schema.json`.

use super::Exporter;
use crate::metrics::model::RunResult;

/// Pretty-printed JSON of the result model.
pub struct JsonExporter;

impl Exporter for JsonExporter {
    fn extension(&self) -> &'static str {
        "json"
    }

    fn render(&self, result: &RunResult) -> anyhow::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(result)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Reads a result written by [`JsonExporter`].
pub fn read(bytes: &[u8]) -> anyhow::Result<RunResult> {
    Ok(serde_json::from_slice(bytes)?)
}
