//! Graceful overload: when a mixer thread's work nears the 20 ms period, Opus complexity steps
//! down call by call (newest first) instead of every call's frames going out late; it steps back
//! up (oldest first) once there has been room for a while. libopus is nearly all of an encoded
//! call's cost (~190 µs a frame at complexity 10, ~86 µs at 5 on these machines), so this is the
//! one knob that buys real headroom. No peer does this: songbird and Lavalink send late or drop.

use std::time::Duration;

use crate::frame::FRAME_DURATION;

/// The complexities a call steps through, capped by its configured complexity.
pub(crate) const LADDER: [u8; 5] = [10, 8, 5, 2, 0];

/// Work per tick above this share of the period is overload (the sender, the decoder workers
/// and the kernel need the rest of the core).
const HIGH_SHARE: f64 = 0.70;
/// Below this share there is room to step back up.
const LOW_SHARE: f64 = 0.40;
/// Ticks in a row above the high mark before stepping down: one slow tick (a preemption, steal)
/// is not overload.
const OVER_TICKS: u32 = 3;
/// Ticks in a row below the low mark before stepping up (5 s): quality comes back slowly so it
/// does not oscillate.
const CALM_TICKS: u32 = 250;
/// Ticks to wait after a step, so its effect shows in the measurements.
const SETTLE_TICKS: u32 = 10;

/// What the governor asks the mixer to do after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Lower the complexity of some calls, newest first.
    StepDown,
    /// Raise the complexity of some lowered calls, oldest first.
    StepUp,
    /// Nothing.
    Hold,
}

/// Judges one mixer thread's load from its tick durations.
#[derive(Debug, Clone)]
pub(crate) struct Governor {
    high: Duration,
    low: Duration,
    over: u32,
    calm: u32,
    settle: u32,
}

impl Default for Governor {
    fn default() -> Self {
        Self {
            high: FRAME_DURATION.mul_f64(HIGH_SHARE),
            low: FRAME_DURATION.mul_f64(LOW_SHARE),
            over: 0,
            calm: 0,
            settle: 0,
        }
    }
}

impl Governor {
    /// Records one tick's work.
    pub(crate) fn observe(&mut self, work: Duration) -> Verdict {
        if work > self.high {
            self.over += 1;
            self.calm = 0;
        } else if work < self.low {
            self.calm += 1;
            self.over = 0;
        } else {
            self.over = 0;
            self.calm = 0;
        }
        if self.settle > 0 {
            self.settle -= 1;
            return Verdict::Hold;
        }
        if self.over >= OVER_TICKS {
            self.over = 0;
            self.settle = SETTLE_TICKS;
            return Verdict::StepDown;
        }
        if self.calm >= CALM_TICKS {
            self.calm = 0;
            self.settle = SETTLE_TICKS;
            return Verdict::StepUp;
        }
        Verdict::Hold
    }
}

/// Calls to move one step at a time: an eighth of them, at least one, so a thread of 90 calls
/// sheds load within a few steps without dropping everyone's quality at once.
pub(crate) fn batch(calls: usize) -> usize {
    (calls / 8).max(1)
}

/// One call's place on the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rung {
    configured: u8,
    level: u8,
}

impl Rung {
    pub(crate) fn new(configured: u8) -> Self {
        Self {
            configured: configured.min(10),
            level: 0,
        }
    }

    /// The complexity in force.
    pub(crate) fn complexity(&self) -> u8 {
        LADDER[usize::from(self.level)].min(self.configured)
    }

    /// Whether the call runs below its configured complexity.
    pub(crate) fn lowered(&self) -> bool {
        self.complexity() < self.configured
    }

    /// One step down (skipping rungs that would not change the complexity); `None` at the
    /// bottom.
    pub(crate) fn down(&mut self) -> Option<u8> {
        let now = self.complexity();
        while usize::from(self.level) + 1 < LADDER.len() {
            self.level += 1;
            if self.complexity() < now {
                return Some(self.complexity());
            }
        }
        None
    }

    /// One step up; `None` when already at the configured complexity.
    pub(crate) fn up(&mut self) -> Option<u8> {
        let now = self.complexity();
        while self.level > 0 {
            self.level -= 1;
            if self.complexity() > now {
                return Some(self.complexity());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSY: Duration = Duration::from_millis(16);
    const IDLE: Duration = Duration::from_millis(2);
    const MIDDLE: Duration = Duration::from_millis(10);

    #[test]
    fn three_overloaded_ticks_step_down_and_then_it_waits_to_see() {
        let mut g = Governor::default();
        assert_eq!(g.observe(BUSY), Verdict::Hold);
        assert_eq!(g.observe(BUSY), Verdict::Hold);
        assert_eq!(g.observe(BUSY), Verdict::StepDown);
        for _ in 0..SETTLE_TICKS {
            assert_eq!(g.observe(BUSY), Verdict::Hold, "settling");
        }
        assert_eq!(
            g.observe(BUSY),
            Verdict::StepDown,
            "still over after settling"
        );
    }

    #[test]
    fn a_single_slow_tick_is_not_overload() {
        let mut g = Governor::default();
        for _ in 0..100 {
            assert_eq!(g.observe(BUSY), Verdict::Hold);
            assert_eq!(g.observe(MIDDLE), Verdict::Hold);
        }
    }

    #[test]
    fn five_calm_seconds_step_up() {
        let mut g = Governor::default();
        for _ in 0..CALM_TICKS - 1 {
            assert_eq!(g.observe(IDLE), Verdict::Hold);
        }
        assert_eq!(g.observe(IDLE), Verdict::StepUp);
        // A tick between the marks restarts the count.
        for _ in 0..CALM_TICKS - 1 {
            g.observe(IDLE);
        }
        g.observe(MIDDLE);
        assert_eq!(g.observe(IDLE), Verdict::Hold);
    }

    #[test]
    fn the_ladder_respects_the_configured_complexity() {
        let mut r = Rung::new(10);
        assert_eq!(r.complexity(), 10);
        assert_eq!(r.down(), Some(8));
        assert_eq!(r.down(), Some(5));
        assert_eq!(r.down(), Some(2));
        assert_eq!(r.down(), Some(0));
        assert_eq!(r.down(), None);
        assert!(r.lowered());
        assert_eq!(r.up(), Some(2));
        assert_eq!(r.up(), Some(5));
        assert_eq!(r.up(), Some(8));
        assert_eq!(r.up(), Some(10));
        assert_eq!(r.up(), None);
        assert!(!r.lowered());

        // A call configured at 6 goes 6 → 5 → 2 → 0 and back to 6, never above.
        let mut r = Rung::new(6);
        assert_eq!(r.down(), Some(5));
        assert_eq!(r.down(), Some(2));
        assert_eq!(r.up(), Some(5));
        assert_eq!(r.up(), Some(6));
        assert_eq!(r.up(), None);
    }

    #[test]
    fn batches_are_an_eighth_of_the_calls() {
        assert_eq!(batch(0), 1);
        assert_eq!(batch(7), 1);
        assert_eq!(batch(90), 11);
    }
}
