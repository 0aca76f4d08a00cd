//! Measurements: the result model, HDR latency, and process resources.

pub mod resources;
