//! The latency cap of live sources: a producer that fell behind once (an underrun, a mixer
//! stall) leaves its later audio queued behind the gap, so without a cap every hiccup adds 20 ms
//! for the rest of the stream (a 1,000-call run measured latency p50 45 ms against 11 ms for one
//! call).
//!
//! Only the standing part of the queue is latency: a producer that writes in bursts (100 ms of
//! TTS every 100 ms) fills the ring high and then lets it run nearly dry, and none of that may be
//! dropped. So the cap looks at the *floor* of the fill level over a window of one second, the
//! part of the queue that never drained (WebRTC's NetEq judges its buffer level the same way).
//! When the floor stays above the cap for a whole window, the oldest audio is dropped down to
//! half the cap — but never more than the gaps the engine itself put in front of that audio
//! (underruns filled with silence, ticks a stalled mixer skipped): a producer that queued two
//! seconds up front on purpose plays all of it.

/// Ticks (20 ms each) over which the fill level's floor is taken.
pub(crate) const WINDOW_TICKS: u32 = 50;

/// The cap's state in one source, in input frames (samples per channel at the source's rate).
#[derive(Debug, Clone)]
pub(crate) struct LatencyCap {
    cap: usize,
    floor: usize,
    ticks: u32,
    /// Frames of delay the engine added (silence played for missing input, skipped ticks)
    /// that have not been dropped back out.
    debt: usize,
}

impl LatencyCap {
    /// A cap of `cap` input frames.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            floor: usize::MAX,
            ticks: 0,
            debt: 0,
        }
    }

    /// The engine delayed the input by `frames` (an underrun's shortfall, skipped ticks).
    pub(crate) fn owe(&mut self, frames: usize) {
        self.debt = self.debt.saturating_add(frames);
    }

    /// Records this tick's fill level (`available` frames buffered, `needed` of them about to
    /// be played). Returns how many of the oldest frames to drop, at the end of a window whose
    /// floor stayed above the cap.
    pub(crate) fn observe(&mut self, available: usize, needed: usize) -> Option<usize> {
        self.floor = self.floor.min(available);
        self.ticks += 1;
        if self.ticks < WINDOW_TICKS {
            return None;
        }
        let floor = std::mem::replace(&mut self.floor, usize::MAX);
        self.ticks = 0;
        let keep = (self.cap / 2).max(needed);
        if floor <= self.cap || floor <= keep || self.debt == 0 {
            return None;
        }
        let drop = (floor - keep).min(self.debt);
        self.debt -= drop;
        Some(drop)
    }

    /// Starts a new window (after a seek, a pause or a prebuffer: the old levels say nothing).
    pub(crate) fn restart(&mut self) {
        self.floor = usize::MAX;
        self.ticks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: usize = 960;

    #[test]
    fn a_standing_backlog_is_trimmed_to_half_the_cap_once_a_window() {
        let mut cap = LatencyCap::new(3 * FRAME);
        cap.owe(10 * FRAME);
        // Five frames queued behind underruns, never draining.
        for tick in 1..WINDOW_TICKS {
            assert_eq!(cap.observe(5 * FRAME, FRAME), None, "tick {tick}");
        }
        assert_eq!(
            cap.observe(5 * FRAME, FRAME),
            Some(5 * FRAME - 3 * FRAME / 2)
        );
        // The next window starts afresh.
        assert_eq!(cap.observe(FRAME, FRAME), None);
    }

    #[test]
    fn bursts_that_drain_are_never_trimmed() {
        let mut cap = LatencyCap::new(3 * FRAME);
        cap.owe(100 * FRAME);
        for window in 0..4 {
            for tick in 0..WINDOW_TICKS {
                // 100 ms arrives every 100 ms: 5, 4, 3, 2, 1 frames buffered.
                let level = (5 - (tick as usize % 5)) * FRAME;
                assert_eq!(
                    cap.observe(level, FRAME),
                    None,
                    "window {window} tick {tick}"
                );
            }
        }
    }

    #[test]
    fn at_or_below_the_cap_nothing_is_dropped() {
        let mut cap = LatencyCap::new(3 * FRAME);
        cap.owe(100 * FRAME);
        for _ in 0..WINDOW_TICKS - 1 {
            cap.observe(3 * FRAME, FRAME);
        }
        assert_eq!(cap.observe(3 * FRAME, FRAME), None);
    }

    #[test]
    fn one_drained_tick_in_the_window_keeps_the_backlog() {
        let mut cap = LatencyCap::new(3 * FRAME);
        cap.owe(100 * FRAME);
        cap.observe(FRAME, FRAME);
        cap.restart();
        for _ in 0..WINDOW_TICKS - 2 {
            cap.observe(6 * FRAME, FRAME);
        }
        cap.observe(2 * FRAME, FRAME);
        assert_eq!(
            cap.observe(6 * FRAME, FRAME),
            None,
            "the floor was 2 frames"
        );
    }

    #[test]
    fn never_trims_below_what_the_tick_needs() {
        // A cap below one frame of input still leaves the frame being played.
        let mut cap = LatencyCap::new(FRAME / 2);
        cap.owe(100 * FRAME);
        for _ in 0..WINDOW_TICKS - 1 {
            cap.observe(4 * FRAME, FRAME);
        }
        assert_eq!(cap.observe(4 * FRAME, FRAME), Some(3 * FRAME));
    }

    #[test]
    fn audio_queued_on_purpose_is_kept_and_only_the_debt_is_dropped() {
        let mut cap = LatencyCap::new(3 * FRAME);
        // Two seconds written up front: a standing backlog, but the engine added none of it.
        for _ in 0..WINDOW_TICKS {
            assert_eq!(cap.observe(100 * FRAME, FRAME), None);
        }
        // Two underruns put two frames of delay in front of it: only those go.
        cap.owe(2 * FRAME);
        for _ in 0..WINDOW_TICKS - 1 {
            cap.observe(100 * FRAME, FRAME);
        }
        assert_eq!(cap.observe(100 * FRAME, FRAME), Some(2 * FRAME));
        for _ in 0..WINDOW_TICKS {
            assert_eq!(cap.observe(100 * FRAME, FRAME), None, "the debt is paid");
        }
    }
}
