//! How long the sender spins before a deadline: as long as the timer's wake-up error needs,
//! no longer. A fixed 200 µs spin per wake-up is ~1 % of a core on its own (the largest part of
//! one passthrough call's 2.9 %, against songbird's 1.3 %), while at `SCHED_FIFO` the sleep
//! wakes within ~15 µs and ~65 µs at p99 on these VMs. So the window follows the recent
//! worst wake-up error (a decaying maximum: one slow wake-up widens it at once, and it narrows
//! again over a few seconds), with a margin, between a floor and the configured ceiling.

use std::time::Duration;

/// The window never goes below this: a spin shorter than a vDSO clock read or two is noise.
const FLOOR: Duration = Duration::from_micros(20);
/// Added to the recent worst error.
const MARGIN: Duration = Duration::from_micros(15);
/// Per wake-up, the recent worst error decays by this factor (halves in ~70 wake-ups).
const DECAY: f64 = 0.99;

/// The adaptive spin window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpinWindow {
    ceiling: Duration,
    recent_worst: Duration,
}

impl SpinWindow {
    /// A window that never exceeds `ceiling` (`SenderConfig::spin`); it starts there.
    pub(crate) fn new(ceiling: Duration) -> Self {
        Self {
            ceiling,
            recent_worst: ceiling,
        }
    }

    /// How long before the next deadline to stop sleeping.
    pub(crate) fn window(&self) -> Duration {
        (self.recent_worst + MARGIN).clamp(FLOOR.min(self.ceiling), self.ceiling)
    }

    /// A sleep aimed at `deadline − window()` woke `error` after its target.
    pub(crate) fn observe(&mut self, error: Duration) {
        self.recent_worst = error.max(self.recent_worst.mul_f64(DECAY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn narrows_to_what_the_timer_needs() {
        let mut w = SpinWindow::new(200 * US);
        assert_eq!(w.window(), 200 * US, "starts at the ceiling");
        for _ in 0..1_000 {
            w.observe(10 * US);
        }
        assert_eq!(w.window(), 25 * US, "10 µs errors + 15 µs margin");
    }

    #[test]
    fn one_slow_wake_up_widens_it_at_once_and_it_narrows_again() {
        let mut w = SpinWindow::new(200 * US);
        for _ in 0..1_000 {
            w.observe(5 * US);
        }
        w.observe(120 * US);
        assert_eq!(w.window(), 135 * US);
        for _ in 0..70 {
            w.observe(5 * US);
        }
        assert!(w.window() < 80 * US, "{:?}", w.window());
        for _ in 0..1_000 {
            w.observe(5 * US);
        }
        assert_eq!(w.window(), FLOOR);
    }

    #[test]
    fn never_beyond_the_ceiling_nor_below_the_floor() {
        let mut w = SpinWindow::new(200 * US);
        w.observe(Duration::from_millis(5));
        assert_eq!(w.window(), 200 * US);
        let mut none = SpinWindow::new(Duration::ZERO);
        none.observe(50 * US);
        assert_eq!(
            none.window(),
            Duration::ZERO,
            "a zero ceiling turns spinning off"
        );
    }
}
