//! The rate search: for one cell, the highest offered rate whose end-to-end p99 stays at or
//! under a target while the subscribers keep up. Open loop: every step offers its rate on a
//! schedule, and latency runs from each message's intended send time, so a step that cannot
//! keep up shows it in its p99 and its backlog instead of quietly sending less.
//!
//! The search offers `min_rate` first and doubles the rate while steps pass (up to
//! `max_rate`), then bisects between the highest passing and the lowest failing rate until
//! they are within the precision. A failed rate whose runs all fell behind it bounds the search
//! by the most they handled instead of by the rate offered. Every step is a whole cell run of its own (set-up, warm-up,
//! measured phase, drain, teardown) on topics named after the step, so a step never sees the
//! backlog of the one before.

use crate::metrics::latency;
use crate::metrics::model::{CellResult, CellStatus, RateSearch, SearchStep};
use crate::scenario::{BackendKind, Mode, Scenario, SearchSection};

use super::{RunOptions, interrupted, run_cell};

/// The conditions a step missed; empty when it passed.
pub fn judge(cell: &CellResult, offered_rate: u64, search: &SearchSection) -> Vec<String> {
    let mut reasons = Vec::new();
    let target = search.p99.as_micros() as u64;
    if cell.status != CellStatus::Ok {
        reasons.push(format!("the run failed: {}", cell.failures.join("; ")));
    }
    if cell.lost > 0 {
        reasons.push(format!("{} acknowledged messages lost", cell.lost));
    }
    if cell.latency_us.e2e.count == 0 {
        reasons.push("nothing was handled".into());
    } else if cell.latency_us.e2e.p99 > target {
        reasons.push(format!(
            "end-to-end p99 {} is above the target of {}",
            latency::readable(cell.latency_us.e2e.p99),
            latency::readable(target)
        ));
    }
    let least = offered_rate as f64 * (1.0 - search.tolerance);
    if cell.throughput.e2e_msgs_per_sec < least {
        reasons.push(format!(
            "handled {:.0} msg/s, below {:.0} ({:.0}% of the offered rate)",
            cell.throughput.e2e_msgs_per_sec,
            least,
            (1.0 - search.tolerance) * 100.0
        ));
    }
    if cell.timeline_summary.is_some_and(|s| s.backlog_growing) {
        reasons.push("the backlog kept growing".into());
    }
    reasons
}

/// The scenario one step runs: the cell's scenario offering `rate` for the search's step,
/// without a ceiling or faults.
pub fn step_scenario(scenario: &Scenario, rate: u64, search: &SearchSection) -> Scenario {
    let mut step = scenario.clone();
    step.rate = rate;
    step.kafka.rate = None;
    step.nats.rate = None;
    step.messages = None;
    step.duration = Some(search.step);
    step.ceiling = false;
    step.faults.clear();
    step.search = None;
    step
}

/// Whether a rate's runs so far decide it: `Some(true)` once more than half of its `runs`
/// passed, `Some(false)` once that can no longer happen, `None` while it is open. With two
/// runs both must pass (a failing run ends the rate); with three, two of three.
fn rate_verdict(passed: u32, failed: u32, runs: u32) -> Option<bool> {
    let majority = RateSearch::runs_to_pass(runs);
    if passed >= majority {
        Some(true)
    } else if failed > runs - majority {
        Some(false)
    } else {
        None
    }
}

/// The search's next rate, or `None` when it has ended (with why).
fn next_rate(
    highest_passing: Option<u64>,
    lowest_failing: Option<u64>,
    search: &SearchSection,
) -> Result<u64, String> {
    match (highest_passing, lowest_failing) {
        (None, None) => Ok(search.min_rate),
        (None, Some(_)) => Err(format!(
            "no rate passed: the first step, at min_rate {} msg/s, failed",
            search.min_rate
        )),
        (Some(passing), None) if passing >= search.max_rate => Err(format!(
            "every step passed up to max_rate {} msg/s",
            search.max_rate
        )),
        (Some(passing), None) => Ok((passing.saturating_mul(2)).min(search.max_rate)),
        (Some(passing), Some(failing)) => {
            if failing as f64 <= passing as f64 * (1.0 + search.precision) {
                return Err(format!(
                    "the precision of {:.0}% was reached",
                    search.precision * 100.0
                ));
            }
            let middle = passing + (failing - passing) / 2;
            if middle == passing {
                Err(format!(
                    "the precision of {:.0}% was reached",
                    search.precision * 100.0
                ))
            } else {
                Ok(middle)
            }
        }
    }
}

/// The bound a failed rate sets on the search: the rate itself, or, when none of its runs kept
/// up with it (each handled less than `1 - tolerance` of it), the most any of them handled. A
/// saturated step shows what the cell can handle at most, and bisecting below that instead of
/// below the offered rate keeps the search out of deep overload: a doubling step far past the
/// knee (Kafka offered twice what it handles) leaves the broker writing back and compacting for
/// a while, and the steps after it then fail rates it passes when rested.
fn failing_bound(rate: u64, handled_per_run: &[f64], search: &SearchSection) -> u64 {
    let least = rate as f64 * (1.0 - search.tolerance);
    let most_handled = handled_per_run.iter().copied().fold(0.0_f64, f64::max);
    if handled_per_run.is_empty() || most_handled >= least {
        rate
    } else {
        (most_handled.ceil() as u64).clamp(1, rate)
    }
}

/// Searches one cell; returns the cell (the figures of its highest passing step, or of its
/// first step when none passed, with every step attached), the broker version, and whether
/// the broker could not be reached.
pub fn search_cell(
    scenario: &Scenario,
    backend: BackendKind,
    mode: Mode,
    options: &RunOptions,
    run_id: &str,
    search: &SearchSection,
    known_unreachable: Option<&str>,
) -> (CellResult, Option<String>, bool) {
    let scenario = scenario.for_backend(backend);
    let mut steps: Vec<SearchStep> = Vec::new();
    let mut best: Option<CellResult> = None;
    let mut first: Option<CellResult> = None;
    let mut version = None;
    let mut unreachable = false;
    let (mut highest_passing, mut lowest_failing) = (None::<u64>, None::<u64>);
    let runs_per_rate = search.runs_per_rate.get();
    // One unjudged run at the first rate: brokers just started (a cold JVM, cold caches) fail
    // rates they sustain a minute later, and no judged step should measure that.
    let (warm, warm_version, warm_unreachable) = run_cell(
        &step_scenario(&scenario, search.min_rate, search),
        backend,
        mode,
        options,
        &format!("{run_id}w"),
        known_unreachable,
        super::StartGate::default(),
    );
    version = version.or(warm_version);
    let warm_up = Some(search_step(
        search.min_rate,
        false,
        judge(&warm, search.min_rate, search),
        &warm,
    ));
    let warm_up_ended = if warm_unreachable || warm.status == CellStatus::Interrupted {
        unreachable = warm_unreachable;
        first = Some(warm);
        Some(if warm_unreachable {
            format!("{backend} could not be used")
        } else {
            "interrupted".to_owned()
        })
    } else {
        eprintln!(
            "busbench: {backend}/{mode}: warm-up at {} msg/s (not judged): p99 {}, handled {:.0} msg/s",
            search.min_rate,
            latency::readable(warm.latency_us.e2e.p99),
            warm.throughput.e2e_msgs_per_sec
        );
        None
    };
    let ended = if let Some(ended) = warm_up_ended {
        ended
    } else {
        'search: loop {
            if interrupted() && !steps.is_empty() {
                break "interrupted".to_owned();
            }
            let rate = match next_rate(highest_passing, lowest_failing, search) {
                Ok(rate) => rate,
                Err(ended) => break ended,
            };
            let (mut runs_passed, mut runs_failed) = (0, 0);
            let mut handled_per_run = Vec::new();
            let mut last = None;
            let mut rate_passed = false;
            for attempt in 1..=runs_per_rate {
                let step_run_id = format!("{run_id}s{}", steps.len());
                let (cell, step_version, step_unreachable) = run_cell(
                    &step_scenario(&scenario, rate, search),
                    backend,
                    mode,
                    options,
                    &step_run_id,
                    known_unreachable,
                    super::StartGate::default(),
                );
                version = version.or(step_version);
                if step_unreachable || cell.status == CellStatus::Interrupted {
                    unreachable = step_unreachable;
                    first.get_or_insert(cell);
                    break 'search if step_unreachable {
                        format!("{backend} could not be used")
                    } else {
                        "interrupted".to_owned()
                    };
                }
                let reasons = judge(&cell, rate, search);
                let passed = reasons.is_empty();
                eprintln!(
                    "busbench: {backend}/{mode}: step {} at {rate} msg/s{}: {} (p99 {}, handled {:.0} msg/s)",
                    steps.len() + 1,
                    if runs_per_rate > 1 {
                        format!(" (run {attempt} of {runs_per_rate})")
                    } else {
                        String::new()
                    },
                    if passed {
                        "pass".to_owned()
                    } else {
                        format!("fail: {}", reasons.join("; "))
                    },
                    latency::readable(cell.latency_us.e2e.p99),
                    cell.throughput.e2e_msgs_per_sec
                );
                steps.push(search_step(rate, passed, reasons, &cell));
                handled_per_run.push(cell.throughput.e2e_msgs_per_sec);
                last = Some(cell);
                if passed {
                    runs_passed += 1;
                } else {
                    runs_failed += 1;
                }
                if let Some(verdict) = rate_verdict(runs_passed, runs_failed, runs_per_rate) {
                    rate_passed = verdict;
                    break;
                }
            }
            // The last run decided the rate, so it is a passing run when the rate passed.
            let cell = last.expect("a rate runs at least once");
            if rate_passed {
                highest_passing = Some(rate);
                best = Some(cell);
            } else {
                let bound = failing_bound(rate, &handled_per_run, search);
                if bound < rate {
                    eprintln!(
                        "busbench: {backend}/{mode}: {rate} msg/s saturated the cell (at most {bound} msg/s handled): the search continues below that"
                    );
                }
                lowest_failing = Some(lowest_failing.map_or(bound, |f: u64| f.min(bound)));
                if first.is_none() && best.is_none() {
                    first = Some(cell);
                }
            }
        }
    };
    // The first step always runs (an interruption ends it early, as any cell), so there is a
    // cell to report.
    let mut cell = best.or(first).expect("the search ran its first step");
    if highest_passing.is_none() && cell.status == CellStatus::Ok {
        cell.status = CellStatus::Failed;
    }
    if highest_passing.is_none() && !unreachable && !interrupted() {
        cell.failures.push(format!(
            "no offered rate met the end-to-end p99 target of {}: {ended}",
            latency::readable(search.p99.as_micros() as u64)
        ));
        cell.status = CellStatus::Failed;
    }
    cell.search = Some(RateSearch {
        target_p99_us: search.p99.as_micros() as u64,
        step_seconds: search.step.as_secs_f64(),
        runs_per_rate,
        max_rate: highest_passing,
        ended,
        steps,
        warm_up,
    });
    (cell, version, unreachable)
}

/// A step's figures, as the search keeps them.
fn search_step(rate: u64, passed: bool, reasons: Vec<String>, cell: &CellResult) -> SearchStep {
    let summary = cell.timeline_summary;
    SearchStep {
        offered_rate: rate,
        passed,
        reasons,
        planned: cell.planned,
        sent: cell.sent,
        received: cell.received,
        lost: cell.lost,
        handled_per_sec: cell.throughput.e2e_msgs_per_sec,
        e2e_p50_us: cell.latency_us.e2e.p50,
        e2e_p99_us: cell.latency_us.e2e.p99,
        publish_p99_us: cell.latency_us.publish.p99,
        peak_backlog: summary.map_or(0, |s| s.peak_backlog),
        backlog_growing: summary.is_some_and(|s| s.backlog_growing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rate_passes_on_a_majority_of_its_runs_and_stops_once_decided() {
        assert_eq!(rate_verdict(1, 0, 1), Some(true));
        assert_eq!(rate_verdict(0, 1, 1), Some(false));
        // Two runs: both must pass; the first failure ends the rate.
        assert_eq!(rate_verdict(1, 0, 2), None);
        assert_eq!(rate_verdict(2, 0, 2), Some(true));
        assert_eq!(rate_verdict(0, 1, 2), Some(false));
        // Three runs: two of three, decided after two runs when they agree.
        assert_eq!(rate_verdict(1, 0, 3), None);
        assert_eq!(rate_verdict(0, 1, 3), None);
        assert_eq!(rate_verdict(2, 0, 3), Some(true));
        assert_eq!(rate_verdict(0, 2, 3), Some(false));
        assert_eq!(rate_verdict(1, 1, 3), None);
        assert_eq!(rate_verdict(2, 1, 3), Some(true));
        assert_eq!(rate_verdict(1, 2, 3), Some(false));
        // Four runs: three of four.
        assert_eq!(rate_verdict(2, 1, 4), None);
        assert_eq!(rate_verdict(2, 2, 4), Some(false));
        assert_eq!(rate_verdict(3, 1, 4), Some(true));
    }

    /// What a search offers to a cell that keeps up to `capacity` msg/s and, offered more,
    /// handles at most `most_handled` (a step handles no more than it is offered): the rates
    /// offered in order, the highest passing and lowest failing bound, and why it ended.
    fn simulate(
        search: &SearchSection,
        capacity: u64,
        most_handled: f64,
    ) -> (Vec<u64>, Option<u64>, Option<u64>, String) {
        let (mut passing, mut failing) = (None, None);
        let mut offered = Vec::new();
        let ended = loop {
            match next_rate(passing, failing, search) {
                Ok(rate) => {
                    offered.push(rate);
                    if rate <= capacity {
                        passing = Some(rate);
                    } else {
                        let handled = (rate as f64).min(most_handled);
                        let bound = failing_bound(rate, &[handled], search);
                        failing = Some(failing.map_or(bound, |f: u64| f.min(bound)));
                    }
                }
                Err(ended) => break ended,
            }
        };
        (offered, passing, failing, ended)
    }

    #[test]
    fn the_search_doubles_then_bisects_to_its_precision() {
        let search = SearchSection {
            min_rate: 1000,
            max_rate: 100_000,
            ..SearchSection::for_target(Duration::from_millis(10))
        };
        // A cell whose capacity is 5,500 msg/s and whose failing steps keep up (fail on p99).
        let (offered, passing, failing, ended) = simulate(&search, 5500, f64::INFINITY);
        assert_eq!(&offered[..4], &[1000, 2000, 4000, 8000]);
        let found = passing.unwrap();
        assert!((5000..=5500).contains(&found), "{offered:?}");
        assert!(failing.unwrap() as f64 <= found as f64 * 1.1);
        assert!(ended.contains("precision"), "{ended}");
        assert!(
            next_rate(None, Some(1000), &search)
                .unwrap_err()
                .contains("no rate passed")
        );
        assert!(
            next_rate(Some(100_000), None, &search)
                .unwrap_err()
                .contains("max_rate")
        );
        assert_eq!(next_rate(Some(64_000), None, &search), Ok(100_000));
        // A bound at or below the highest passing rate ends the search.
        assert!(
            next_rate(Some(5000), Some(4800), &search)
                .unwrap_err()
                .contains("precision")
        );
    }

    #[test]
    fn a_saturated_rate_bounds_the_search_by_what_it_handled() {
        let search = SearchSection {
            tolerance: 0.05,
            ..SearchSection::for_target(Duration::from_millis(10))
        };
        // Kept up (failed on p99 alone): the bound is the offered rate.
        assert_eq!(failing_bound(320_000, &[319_000.0], &search), 320_000);
        // One run kept up, one did not: still the offered rate.
        assert_eq!(
            failing_bound(320_000, &[150_000.0, 310_000.0], &search),
            320_000
        );
        // No run kept up: the most any of them handled.
        assert_eq!(
            failing_bound(320_000, &[158_469.2, 177_645.1], &search),
            177_646
        );
        assert_eq!(failing_bound(320_000, &[], &search), 320_000);
        assert_eq!(failing_bound(320_000, &[0.0], &search), 1);
    }

    #[test]
    fn after_a_saturated_doubling_step_the_search_bisects_below_what_it_handled() {
        let search = SearchSection {
            min_rate: 10_000,
            max_rate: 400_000,
            ..SearchSection::for_target(Duration::from_millis(50))
        };
        // A cell that keeps up to 170,000 msg/s and handles at most 175,000 when overloaded.
        let (offered, passing, _, ended) = simulate(&search, 170_000, 175_000.0);
        // 320,000 saturates at 175,000: no step is offered above that afterwards.
        assert_eq!(
            &offered[..6],
            &[10_000, 20_000, 40_000, 80_000, 160_000, 320_000]
        );
        assert!(
            offered[6..].iter().all(|&rate| rate <= 175_000),
            "{offered:?}"
        );
        assert_eq!(passing, Some(160_000), "{offered:?}");
        assert!(ended.contains("precision"), "{ended}");
    }
}
