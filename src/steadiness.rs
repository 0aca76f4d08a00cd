//! How steady this machine's CPU speed is: one fixed piece of CPU work, timed again and again.
//!
//! Every figure busbench compares across moments (an efficiency against a ceiling measured
//! before it, a result against a baseline, one rate-search step against the next) assumes the
//! machine ran at the same speed at both moments. On a shared virtual machine it may not: a
//! neighbour on the core's other hyperthread can halve the speed for seconds at a time, with
//! no steal time in the guest's own counters. Timing the same work in short slices shows it:
//! on a steady machine every slice takes about as long as the fastest.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The time one slice of work aims at, measured when the check starts.
pub const SLICE: Duration = Duration::from_millis(50);

/// A slice at least this many times as long as the fastest counts as slow.
pub const SLOW_FACTOR: f64 = 1.5;

/// The shortest check.
pub const MIN_DURATION: Duration = Duration::from_secs(1);

/// The longest check.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// What the check saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steadiness {
    /// How long each slice of the same work took, milliseconds, in the order they ran.
    pub slice_ms: Vec<f64>,
    /// The fastest slice, milliseconds: the machine's speed at its best during the check.
    pub fastest_ms: f64,
    /// The median slice, milliseconds.
    pub median_ms: f64,
    /// The slowest slice, milliseconds.
    pub slowest_ms: f64,
    /// The slowest slice over the fastest: by how much a figure taken at one moment can
    /// differ from the same figure taken at another, from the machine alone.
    pub range: f64,
    /// Share of the check's time spent in slow slices (at least [`SLOW_FACTOR`] times the
    /// fastest), 0 to 1.
    pub slow_share: f64,
    /// The longest run of consecutive slow slices, milliseconds.
    pub longest_slow_spell_ms: f64,
}

impl Steadiness {
    /// The figures of a series of slice times (milliseconds); `None` without any.
    pub fn from_slices(slice_ms: Vec<f64>) -> Option<Self> {
        if slice_ms.is_empty() {
            return None;
        }
        let fastest_ms = slice_ms.iter().copied().fold(f64::MAX, f64::min);
        let slowest_ms = slice_ms.iter().copied().fold(0.0, f64::max);
        let median_ms = crate::metrics::model::median(&slice_ms);
        let slow_limit = fastest_ms * SLOW_FACTOR;
        let total_ms: f64 = slice_ms.iter().sum();
        let (mut slow_ms, mut spell_ms, mut longest_slow_spell_ms) = (0.0, 0.0, 0.0_f64);
        for &slice in &slice_ms {
            if slice >= slow_limit {
                slow_ms += slice;
                spell_ms += slice;
                longest_slow_spell_ms = longest_slow_spell_ms.max(spell_ms);
            } else {
                spell_ms = 0.0;
            }
        }
        Some(Steadiness {
            range: if fastest_ms > 0.0 {
                slowest_ms / fastest_ms
            } else {
                1.0
            },
            slow_share: if total_ms > 0.0 {
                slow_ms / total_ms
            } else {
                0.0
            },
            fastest_ms,
            median_ms,
            slowest_ms,
            longest_slow_spell_ms,
            slice_ms,
        })
    }

    /// Whether the machine stayed within [`SLOW_FACTOR`] of its best speed throughout.
    pub fn is_steady(&self) -> bool {
        self.range < SLOW_FACTOR
    }

    /// One paragraph for a reader: the figures and what they mean for measuring here.
    pub fn summary(&self) -> String {
        let figures = format!(
            "{} slices of the same work: fastest {:.1} ms, median {:.1} ms, slowest {:.1} ms \
             ({:.2}x the fastest)",
            self.slice_ms.len(),
            self.fastest_ms,
            self.median_ms,
            self.slowest_ms,
            self.range
        );
        if self.is_steady() {
            format!("{figures}: steady")
        } else {
            format!(
                "{figures}: unsteady, {:.0}% of the time at least {SLOW_FACTOR}x slower than \
                 the fastest, the longest such spell {:.1} s. Figures taken at different \
                 moments (a result against a baseline, one run against the next) can move by \
                 up to {:.1}x from the machine alone: compare builds with `busbench ab`, which \
                 interleaves them, and repeat runs (`--repeat`) before trusting a change.",
                self.slow_share * 100.0,
                self.longest_slow_spell_ms / 1000.0,
                self.range
            )
        }
    }
}

/// A fixed piece of CPU work: `rounds` steps of an integer mix that the compiler cannot skip
/// or shorten.
fn work(rounds: u64) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..rounds {
        state =
            std::hint::black_box(state.rotate_left(5) ^ round).wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    state
}

/// The rounds of [`work`] that take about `target` now.
fn calibrate(target: Duration) -> u64 {
    let mut rounds = 1_000_u64;
    loop {
        let started = Instant::now();
        std::hint::black_box(work(rounds));
        let took = started.elapsed();
        // A quarter of the target is long enough to scale from without the clock's grain.
        if took >= target / 4 || rounds >= u64::MAX / 8 {
            let scale = target.as_secs_f64() / took.as_secs_f64().max(1e-9);
            return ((rounds as f64 * scale) as u64).max(1);
        }
        rounds *= 4;
    }
}

/// Times the same work in slices of about [`SLICE`] for `duration`, on the calling thread.
pub fn measure(duration: Duration) -> Steadiness {
    let rounds = calibrate(SLICE);
    let began = Instant::now();
    let mut slice_ms = Vec::with_capacity((duration.as_millis() / SLICE.as_millis()) as usize + 1);
    while slice_ms.is_empty() || began.elapsed() < duration {
        let started = Instant::now();
        std::hint::black_box(work(rounds));
        slice_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Steadiness::from_slices(slice_ms).expect("at least one slice was timed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_series_has_no_slow_time() {
        let steady = Steadiness::from_slices(vec![50.0, 51.0, 52.0, 50.5]).unwrap();
        assert!(steady.is_steady());
        assert_eq!(steady.fastest_ms, 50.0);
        assert_eq!(steady.slowest_ms, 52.0);
        assert_eq!(steady.slow_share, 0.0);
        assert_eq!(steady.longest_slow_spell_ms, 0.0);
        assert!(steady.summary().ends_with("steady"));
    }

    #[test]
    fn spells_at_half_speed_are_found_and_measured() {
        // Two slow spells, of two and three slices, between fast ones.
        let slices = vec![50.0, 100.0, 100.0, 50.0, 50.0, 100.0, 100.0, 100.0, 50.0];
        let unsteady = Steadiness::from_slices(slices).unwrap();
        assert!(!unsteady.is_steady());
        assert_eq!(unsteady.range, 2.0);
        assert_eq!(unsteady.longest_slow_spell_ms, 300.0);
        assert!((unsteady.slow_share - 500.0 / 700.0).abs() < 1e-12);
        assert!(unsteady.summary().contains("unsteady"));
        assert!(Steadiness::from_slices(Vec::new()).is_none());
    }

    #[test]
    fn a_short_check_times_at_least_one_slice() {
        let rounds = calibrate(Duration::from_millis(5));
        assert!(rounds > 0);
        let measured = measure(Duration::from_millis(20));
        assert!(!measured.slice_ms.is_empty());
        assert!(measured.fastest_ms > 0.0);
    }
}
