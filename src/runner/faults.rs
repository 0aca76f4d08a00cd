//! Faults injected into a cell's measured phase: a command (restart a broker, pause it, delete
//! a pod) run at a set time, and what it did to the cell: when it ran, how long handling
//! stopped, and the handled messages per second around it.

use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::model::FaultResult;
use crate::metrics::recorder::{Recorder, TIMELINE_STEP};

/// A fault as one cell runs it.
#[derive(Debug, Clone)]
pub struct PlannedFault {
    /// The command, with `{backend}` replaced.
    pub command: String,
    /// When, into the measured phase.
    pub at: Duration,
    /// Bound on the command.
    pub timeout: Duration,
}

/// What running one fault did.
#[derive(Debug, Clone)]
pub struct FaultRun {
    /// The fault.
    pub planned: PlannedFault,
    /// When the measured phase started, nanoseconds since the recorder's epoch.
    pub phase_start_nanos: u64,
    /// When the command started and ended, nanoseconds since the epoch.
    pub started_nanos: Option<u64>,
    /// See `started_nanos`.
    pub finished_nanos: Option<u64>,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Why the fault did not run as planned.
    pub error: Option<String>,
}

/// Waits until the fault is due, runs it (bounded by its timeout and `deadline`) and reports.
/// Cancelling `phase_over` before the fault is due means it was not reached.
pub async fn run(
    planned: PlannedFault,
    recorder: std::sync::Arc<Recorder>,
    phase_start: tokio::time::Instant,
    phase_over: CancellationToken,
    deadline: tokio::time::Instant,
) -> FaultRun {
    let mut outcome = FaultRun {
        phase_start_nanos: recorder.now_nanos(),
        planned,
        started_nanos: None,
        finished_nanos: None,
        exit_code: None,
        error: None,
    };
    tokio::select! {
        _ = tokio::time::sleep_until(phase_start + outcome.planned.at) => {}
        _ = phase_over.cancelled() => {
            outcome.error = Some("not reached: the measured phase ended first".into());
            return outcome;
        }
    }
    outcome.started_nanos = Some(recorder.now_nanos());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&outcome.planned.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            outcome.error = Some(format!("could not start: {e}"));
            return outcome;
        }
    };
    let bound = (tokio::time::Instant::now() + outcome.planned.timeout).min(deadline);
    let result = tokio::select! {
        output = child.wait_with_output() => Some(output),
        _ = tokio::time::sleep_until(bound) => None,
        _ = super::until_interrupted() => {
            outcome.error = Some("interrupted".into());
            return outcome;
        }
    };
    outcome.finished_nanos = Some(recorder.now_nanos());
    match result {
        None => {
            outcome.error = Some(format!(
                "did not finish within its timeout of {:?} (or the cell's); killed",
                outcome.planned.timeout
            ));
        }
        Some(Err(e)) => outcome.error = Some(format!("could not run: {e}")),
        Some(Ok(output)) => {
            outcome.exit_code = output.status.code();
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                outcome.error = Some(format!("exited with {}: {last}", output.status));
            }
        }
    }
    outcome
}

/// Seconds of handled-per-second counts shown before a fault.
const BEFORE: u64 = 2;
/// Seconds shown after recovery (or after the command ended, if handling never stopped).
const AFTER: u64 = 3;

/// The report of a fault, from its run and the cell's timeline of handled messages.
pub fn analyse(run: &FaultRun, timeline: &[u32]) -> FaultResult {
    let step = TIMELINE_STEP.as_nanos() as u64;
    let seconds = |nanos: u64| nanos.saturating_sub(run.phase_start_nanos) as f64 / 1e9;
    let mut result = FaultResult {
        command: run.planned.command.clone(),
        at_seconds: run.planned.at.as_secs_f64(),
        started_seconds: run.started_nanos.map(seconds),
        finished_seconds: run.finished_nanos.map(seconds),
        exit_code: run.exit_code,
        error: run.error.clone(),
        recovery_seconds: None,
        handled_per_second: Vec::new(),
        window_start_seconds: 0.0,
    };
    let Some(started) = run.started_nanos else {
        return result;
    };
    let first = (started / step) as usize;
    let last_busy = timeline.iter().rposition(|&count| count > 0);
    let recovery_bucket = match last_busy {
        Some(last_busy) if first <= last_busy => {
            // Handling stopped if some bucket from the fault on is empty before the last busy
            // one; it recovered at the next busy bucket.
            match (first..=last_busy).find(|&i| timeline[i] == 0) {
                Some(stopped) => (stopped..=last_busy).find(|&i| timeline[i] > 0),
                None => Some(first),
            }
        }
        _ => None,
    };
    if let Some(bucket) = recovery_bucket {
        let resumed = bucket as u64 * step;
        result.recovery_seconds = Some(resumed.saturating_sub(started) as f64 / 1e9);
    }
    let per_second = (1_000_000_000 / step) as usize;
    let start_second = (started / 1_000_000_000).saturating_sub(BEFORE);
    let end_nanos = recovery_bucket
        .map(|b| b as u64 * step)
        .unwrap_or(started)
        .max(run.finished_nanos.unwrap_or(started));
    let end_second = end_nanos / 1_000_000_000 + AFTER;
    for second in start_second..=end_second {
        let from = second as usize * per_second;
        if from >= timeline.len() {
            break;
        }
        let to = (from + per_second).min(timeline.len());
        result
            .handled_per_second
            .push(timeline[from..to].iter().map(|&c| u64::from(c)).sum());
    }
    result.window_start_seconds = seconds(start_second * 1_000_000_000);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_at(started_s: f64, finished_s: f64) -> FaultRun {
        FaultRun {
            planned: PlannedFault {
                command: "restart".into(),
                at: Duration::from_secs_f64(started_s),
                timeout: Duration::from_secs(60),
            },
            phase_start_nanos: 0,
            started_nanos: Some((started_s * 1e9) as u64),
            finished_nanos: Some((finished_s * 1e9) as u64),
            exit_code: Some(0),
            error: None,
        }
    }

    #[test]
    fn recovery_runs_from_the_fault_to_the_first_message_after_the_gap() {
        // 10 buckets a second: busy for 3 s, nothing from 3.2 s to 5.5 s, busy again to 8 s.
        let mut timeline = vec![100u32; 80];
        for bucket in &mut timeline[32..55] {
            *bucket = 0;
        }
        let result = analyse(&run_at(3.0, 4.0), &timeline);
        let recovery = result.recovery_seconds.unwrap();
        assert!((recovery - 2.5).abs() < 1e-6, "{recovery}");
        // From second 1 (2 s before) to second 8 (3 s after recovery at 5.5 s): 8 seconds,
        // but the timeline ends at 8 s.
        assert_eq!(result.window_start_seconds, 1.0);
        assert_eq!(result.handled_per_second[0], 1000);
        assert_eq!(
            result.handled_per_second[2], 200,
            "second 3: two busy buckets"
        );
        assert_eq!(result.handled_per_second[3], 0, "second 4: nothing handled");
    }

    #[test]
    fn a_fault_that_never_stopped_handling_recovers_at_once() {
        let timeline = vec![50u32; 60];
        let result = analyse(&run_at(2.0, 2.5), &timeline);
        assert_eq!(result.recovery_seconds, Some(0.0));
    }

    #[test]
    fn a_fault_not_reached_has_no_figures() {
        let mut run = run_at(2.0, 2.5);
        run.started_nanos = None;
        run.finished_nanos = None;
        let result = analyse(&run, &[1, 2, 3]);
        assert_eq!(result.recovery_seconds, None);
        assert!(result.handled_per_second.is_empty());
    }
}
