//! Latency histograms (HdrHistogram, microseconds) and their summaries.

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (one hour); larger values are clamped to it.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A new histogram for latencies in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    let _ = histogram.record(micros.clamp(1, MAX_LATENCY_US));
}

/// Percentiles of one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summarises a histogram (all zeros when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// A latency in µs as people read it: µs below 1 ms, ms with two decimals below 100 ms (so
/// that a figure just over a target never reads as equal to it), one decimal above, seconds
/// from 10 s.
pub fn readable(micros: u64) -> String {
    match micros {
        m if m >= 10_000_000 => format!("{:.1} s", m as f64 / 1e6),
        m if m >= 100_000 => format!("{:.1} ms", m as f64 / 1e3),
        m if m >= 1_000 => format!("{:.2} ms", m as f64 / 1e3),
        m => format!("{m} µs"),
    }
}

/// Serialises a histogram as base64 of HdrHistogram's V2 deflate format, so that results can
/// be merged and re-analysed exactly.
pub fn encode(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .expect("serialising into memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// [`encode`], or an empty string for a histogram with no samples (a figure that was not
/// measured, such as the send lag without a target rate).
pub fn encode_if_any(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        String::new()
    } else {
        encode(histogram)
    }
}

/// Reads a histogram written by [`encode`].
pub fn decode(text: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut histogram = new_histogram();
        for value in 1..=1000 {
            record(&mut histogram, value);
        }
        let p = Percentiles::of(&histogram);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert!((p.mean - 500.5).abs() < 0.5);
    }

    #[test]
    fn empty_histograms_summarise_to_zero() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn histograms_survive_encoding() {
        let mut histogram = new_histogram();
        for value in [3, 70, 70, 12_000, 9_000_000] {
            record(&mut histogram, value);
        }
        let decoded = decode(&encode(&histogram)).unwrap();
        assert_eq!(Percentiles::of(&decoded), Percentiles::of(&histogram));
    }
}
