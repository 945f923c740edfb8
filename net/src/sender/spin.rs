//! How long the sender spins before a deadline: as long as the timer's wake-up error needs,
//! no longer. A fixed 200 µs spin per wake-up is ~1 % of a core on its own (the largest part of
//! one passthrough call's 2.9 %, against songbird's 1.3 %), while at `SCHED_FIFO` the sleep
//! wakes within ~15 µs and ~65 µs at p99 on these VMs. So the window follows the recent
//! worst wake-up error (a decaying maximum: one slow wake-up widens it at once, and it narrows
//! again with a quarter-second half-life), with a margin, between a floor and the configured
//! ceiling.
//!
//! The decay is in time, not per wake-up: one call wakes the thread 50 times a second, 100 calls
//! in ten phase groups 500 times. Decaying by 1 % a wake-up kept one call's window wide for
//! seconds after each slow wake-up (1.50–1.53 % of a core for the call) while 100 calls' window
//! halved in 0.14 s; at 5 % a wake-up one call cost 1.15 % with the same receiver lateness
//! (p50 14–16 µs, p99 ~160 µs), but 100 calls' worst-stream p99 went from 109 to 154 µs
//! (`quaver jitter --calls 1|100 --seconds 60`, steal ≤ 0.03 %).

use std::time::{Duration, Instant};

/// The window never goes below this: a spin shorter than a vDSO clock read or two is noise.
const FLOOR: Duration = Duration::from_micros(20);
/// Added to the recent worst error.
const MARGIN: Duration = Duration::from_micros(15);
/// The recent worst error halves in this long without a worse one.
const HALF_LIFE_S: f64 = 0.25;

/// The adaptive spin window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpinWindow {
    ceiling: Duration,
    recent_worst: Duration,
    /// When the last error was observed.
    last: Option<Instant>,
}

impl SpinWindow {
    /// A window that never exceeds `ceiling` (`SenderConfig::spin`); it starts there.
    pub(crate) fn new(ceiling: Duration) -> Self {
        Self {
            ceiling,
            recent_worst: ceiling,
            last: None,
        }
    }

    /// How long before the next deadline to stop sleeping.
    pub(crate) fn window(&self) -> Duration {
        (self.recent_worst + MARGIN).clamp(FLOOR.min(self.ceiling), self.ceiling)
    }

    /// A sleep aimed at `deadline − window()` woke `error` after its target, at `now`.
    pub(crate) fn observe(&mut self, error: Duration, now: Instant) {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        let decay = 0.5_f64.powf(elapsed.as_secs_f64() / HALF_LIFE_S);
        self.recent_worst = error.max(self.recent_worst.mul_f64(decay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);
    const TICK: Duration = Duration::from_millis(20);

    /// Feeds `n` wake-ups with `error`, one a tick from `*at`.
    fn feed(w: &mut SpinWindow, at: &mut Instant, n: usize, error: Duration) {
        for _ in 0..n {
            *at += TICK;
            w.observe(error, *at);
        }
    }

    #[test]
    fn narrows_to_what_the_timer_needs() {
        let mut w = SpinWindow::new(200 * US);
        let mut at = Instant::now();
        assert_eq!(w.window(), 200 * US, "starts at the ceiling");
        feed(&mut w, &mut at, 1_000, 10 * US);
        assert_eq!(w.window(), 25 * US, "10 µs errors + 15 µs margin");
    }

    #[test]
    fn one_slow_wake_up_widens_it_at_once_and_it_narrows_with_time() {
        let mut w = SpinWindow::new(200 * US);
        let mut at = Instant::now();
        feed(&mut w, &mut at, 1_000, 5 * US);
        feed(&mut w, &mut at, 1, 120 * US);
        assert_eq!(w.window(), 135 * US);
        // A quarter-second later (12 ticks of 20 ms, 240 ms) about half of it is left.
        feed(&mut w, &mut at, 12, 5 * US);
        let half = w.window() - MARGIN;
        assert!((55 * US..=65 * US).contains(&half), "{half:?}");
        feed(&mut w, &mut at, 1_000, 5 * US);
        assert_eq!(w.window(), FLOOR);
    }

    #[test]
    fn never_beyond_the_ceiling_nor_below_the_floor() {
        let mut w = SpinWindow::new(200 * US);
        let now = Instant::now();
        w.observe(Duration::from_millis(5), now);
        assert_eq!(w.window(), 200 * US);
        let mut none = SpinWindow::new(Duration::ZERO);
        none.observe(50 * US, now);
        assert_eq!(
            none.window(),
            Duration::ZERO,
            "a zero ceiling turns spinning off"
        );
    }
}
