//! Measurements: the result model, HDR latency, process resources, and the recorder that
//! counts deliveries while a cell runs.

pub mod alloc;
pub mod latency;
pub mod model;
pub mod recorder;
pub mod resources;
pub mod stats;
pub mod timeline;
