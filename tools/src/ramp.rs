//! `quaver jitter --ramp`: capacity in one command. Runs the jitter measurement with more
//! calls each step (like Lavamark adds players) until a step has late frames, skipped ticks or
//! lost audio, and reports the last clean step as the capacity, in calls and calls per core.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::Error;
use crate::jitter::JitterOptions;
use crate::report::Report;

/// Each step runs this many times the calls of the one before (at least one more).
const GROWTH: f64 = 1.5;

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    /// Calls in this step.
    pub calls: usize,
    /// Frames the sender had to send after their tick.
    pub late_frames: u64,
    /// Ticks the mixer skipped.
    pub skipped_ticks: u64,
    /// Packets that never reached the server, when it could tell.
    pub lost: Option<u64>,
    /// Opus complexity steps taken down under overload.
    pub complexity_steps_down: u64,
    /// Arrival lateness at the server, p99 over the streams (µs), when measured.
    pub recv_lateness_p99_us: Option<f64>,
    /// CPU of Quaver's threads in percent of one core.
    pub cpu_percent: f64,
    /// Steal during the step, in percent, when measured.
    pub steal_percent: Option<f64>,
    /// Nothing late, skipped or lost.
    pub clean: bool,
}

impl RampStep {
    fn of(report: &Report) -> Self {
        let lost = report.audio_lost();
        let clean = report.late_frames == 0 && report.skipped_ticks == 0 && lost.is_none();
        Self {
            calls: report.calls,
            late_frames: report.late_frames,
            skipped_ticks: report.skipped_ticks,
            lost,
            complexity_steps_down: report.complexity_steps_down,
            recv_lateness_p99_us: report.recv_lateness_us.map(|q| q.p99),
            cpu_percent: report.cpu_percent,
            steal_percent: report.steal_percent,
            clean,
        }
    }
}

/// What a ramp found.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    /// What the calls played ("pre-encoded Opus, passthrough" or "PCM source, mixed and encoded").
    pub mode: String,
    /// Every step run, in order.
    pub steps: Vec<RampStep>,
    /// The most calls of a clean step (`None` if even the first step was not clean).
    pub capacity: Option<usize>,
    /// Cores this machine offers.
    pub cores: usize,
    /// `capacity / cores`.
    pub calls_per_core: Option<f64>,
    /// The ramp stopped at the tool's call limit, not at a failing step: the capacity is at
    /// least this.
    pub reached_limit: bool,
    /// Ctrl-C ended it early.
    pub interrupted: bool,
}

/// The calls of each step, from `start` up to `max`.
pub fn schedule(start: usize, max: usize) -> Vec<usize> {
    let mut calls = start.clamp(1, max.max(1));
    let mut steps = vec![calls];
    while calls < max {
        calls = ((calls as f64 * GROWTH) as usize).max(calls + 1).min(max);
        steps.push(calls);
    }
    steps
}

/// Runs the ramp: `options.calls` is the first step, `options.seconds` each step's length,
/// `max_calls` the last step at most.
pub fn run(
    options: &JitterOptions,
    max_calls: usize,
    stop: &AtomicBool,
) -> Result<RampReport, Error> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = schedule(options.calls, max_calls.min(crate::args::MAX_CALLS));
    let mut steps = Vec::new();
    let mut mode = String::new();
    let mut interrupted = false;
    for &calls in &plan {
        eprintln!(
            "quaver jitter --ramp: {calls} call(s) for {} s",
            options.seconds.as_secs_f64()
        );
        let step_options = JitterOptions {
            calls,
            announce: None,
            ..options.clone()
        };
        let report = crate::jitter::run(&step_options, stop)?;
        if report.interrupted || stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        mode.clone_from(&report.mode);
        let step = RampStep::of(&report);
        let clean = step.clean;
        steps.push(step);
        if !clean {
            break;
        }
    }
    let capacity = steps.iter().filter(|s| s.clean).map(|s| s.calls).max();
    let reached_limit = !interrupted && steps.iter().all(|s| s.clean) && steps.len() == plan.len();
    Ok(RampReport {
        mode,
        capacity,
        cores,
        calls_per_core: capacity.map(|c| c as f64 / cores as f64),
        reached_limit,
        interrupted,
        steps,
    })
}

impl std::fmt::Display for RampReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "quaver jitter --ramp ({})", self.mode)?;
        writeln!(
            f,
            "  {:>6}  {:>6}  {:>7}  {:>5}  {:>10}  {:>13}  {:>7}  {:>6}",
            "calls", "late", "skipped", "lost", "cx steps", "recv p99 µs", "CPU %", "steal"
        )?;
        for s in &self.steps {
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
            };
            writeln!(
                f,
                "  {:>6}  {:>6}  {:>7}  {:>5}  {:>10}  {:>13}  {:>7.1}  {:>6}{}",
                s.calls,
                s.late_frames,
                s.skipped_ticks,
                s.lost.map_or_else(|| "0".to_string(), |l| l.to_string()),
                s.complexity_steps_down,
                opt(s.recv_lateness_p99_us, 0),
                s.cpu_percent,
                opt(s.steal_percent, 0),
                if s.clean {
                    ""
                } else {
                    "  <- first failing step"
                }
            )?;
        }
        match (self.capacity, self.calls_per_core) {
            (Some(capacity), Some(per_core)) => writeln!(
                f,
                "capacity: {}{capacity} calls ({per_core:.1} per core, {} cores){}",
                if self.reached_limit { "at least " } else { "" },
                self.cores,
                if self.interrupted {
                    "; interrupted"
                } else {
                    ""
                }
            ),
            _ => writeln!(
                f,
                "capacity: not even the first step ran clean{}",
                if self.interrupted {
                    " (interrupted)"
                } else {
                    ""
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_by_half_and_end_at_the_limit() {
        assert_eq!(schedule(10, 40), [10, 15, 22, 33, 40]);
        assert_eq!(schedule(1, 3), [1, 2, 3]);
        assert_eq!(schedule(0, 5), [1, 2, 3, 4, 5]);
        assert_eq!(schedule(50, 20), [20]);
    }

    #[test]
    fn a_step_with_late_frames_or_loss_is_not_clean() {
        let mut report = Report {
            calls: 10,
            ..Report::default()
        };
        assert!(RampStep::of(&report).clean);
        report.late_frames = 1;
        assert!(!RampStep::of(&report).clean);
        report.late_frames = 0;
        report.skipped_ticks = 2;
        assert!(!RampStep::of(&report).clean);
    }
}
