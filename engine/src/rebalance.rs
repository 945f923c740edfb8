//! Moving calls between mixer threads while they play.
//!
//! Calls are placed on the thread with the fewest calls, but calls do not cost the same (an
//! encoded call ~200 µs a tick, a passthrough call ~1 µs) and they come and go, so a thread can
//! end up with far more work than another while that one idles; then its last calls' frames
//! come out late although a core is free. songbird moves its most expensive mixer once a
//! thread passes 90 % of the tick; Quaver acts earlier, on the imbalance itself.
//!
//! Each mixer thread publishes its tick work (a moving average) and each call its own cost.
//! The control side's housekeeping ([`choose`]) picks the call whose move halves the gap
//! between the busiest and the idlest thread at most — never one that would just flip the
//! imbalance — and asks the busy mixer to hand it over. The mixer builds the call's frame for
//! the tick, then passes the slot through a lock-free ring straight to the other mixer; that
//! one takes it at its next tick, skipping a tick the first already built (or building one it
//! missed), so the call's frames stay one per tick. Commands for a call in flight wait on the
//! control side until the hand-over is confirmed, then go to the new thread in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::CallId;
use crate::frame::FRAME_DURATION;

/// A thread this busy (share of the period) may give calls away.
const BUSY_SHARE: f64 = 0.5;
/// Only a gap between the busiest and the idlest thread this large (share of the period) is
/// worth a move.
const GAP_SHARE: f64 = 0.1;
/// After a move, wait this long before the next, so the moving averages show its effect.
pub(crate) const COOLDOWN: Duration = Duration::from_millis(250);

/// One mixer thread's recent tick work, published for the control side.
#[derive(Debug, Default)]
pub(crate) struct MixerLoad {
    work_ns: AtomicU64,
}

impl MixerLoad {
    /// Folds one tick's work into the average (1/16 per tick: ~300 ms to settle).
    pub(crate) fn record(&self, work: Duration) {
        let old = self.work_ns.load(Ordering::Relaxed);
        let new = work.as_nanos().min(u128::from(u64::MAX)) as u64;
        let average = if old == 0 {
            new
        } else {
            old - old / 16 + new / 16
        };
        self.work_ns.store(average, Ordering::Relaxed);
    }

    /// Overwrites the average (tests).
    #[cfg(test)]
    pub(crate) fn set(&self, work: Duration) {
        self.work_ns
            .store(work.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The average tick work, in nanoseconds.
    pub(crate) fn work_ns(&self) -> u64 {
        self.work_ns.load(Ordering::Relaxed)
    }
}

/// A call that could move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) call: CallId,
    pub(crate) mixer: usize,
    pub(crate) cost_ns: u64,
}

/// A move to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) call: CallId,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// The move that best evens out `loads_ns` (per mixer), if one is worth making. `candidates`
/// are only looked at when the loads call for a move: the worker asks every few milliseconds,
/// and walking a thousand calls each time was most of what an idle engine cost.
pub(crate) fn choose(
    loads_ns: &[u64],
    candidates: impl IntoIterator<Item = Candidate>,
) -> Option<Move> {
    let period = FRAME_DURATION.as_nanos() as f64;
    let (from, &busiest) = loads_ns.iter().enumerate().max_by_key(|(_, l)| **l)?;
    let (to, &idlest) = loads_ns.iter().enumerate().min_by_key(|(_, l)| **l)?;
    let gap = busiest.saturating_sub(idlest);
    if (busiest as f64) < BUSY_SHARE * period || (gap as f64) < GAP_SHARE * period {
        return None;
    }
    candidates
        .into_iter()
        .filter(|c| c.mixer == from && c.cost_ns > 0 && c.cost_ns <= gap / 2)
        .max_by_key(|c| c.cost_ns)
        .map(|c| Move {
            call: c.call,
            from,
            to,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn candidate(call: u32, mixer: usize, cost_ns: u64) -> Candidate {
        Candidate {
            call: CallId(call),
            mixer,
            cost_ns,
        }
    }

    #[test]
    fn the_largest_call_that_halves_the_gap_at_most_moves_to_the_idlest_thread() {
        let calls = [
            candidate(1, 0, MS / 5),
            candidate(2, 0, 3 * MS),
            candidate(3, 0, 7 * MS),
            candidate(4, 1, MS),
        ];
        // Thread 0 at 14 ms, thread 1 at 2 ms: gap 12 ms, so at most 6 ms may move.
        assert_eq!(
            choose(&[14 * MS, 2 * MS, 5 * MS], calls),
            Some(Move {
                call: CallId(2),
                from: 0,
                to: 1
            })
        );
    }

    #[test]
    fn balanced_or_idle_threads_are_left_alone() {
        let calls = [candidate(1, 0, MS), candidate(2, 1, MS)];
        assert_eq!(choose(&[12 * MS, 11 * MS], calls), None, "gap under 2 ms");
        assert_eq!(choose(&[9 * MS, 0], calls), None, "under half the period");
        assert_eq!(choose(&[], calls), None);
    }

    #[test]
    fn a_call_bigger_than_half_the_gap_stays() {
        // Moving the 8 ms call would only flip the imbalance.
        let calls = [candidate(1, 0, 8 * MS)];
        assert_eq!(choose(&[14 * MS, 4 * MS], calls), None);
    }

    #[test]
    fn the_average_follows_the_work() {
        let load = MixerLoad::default();
        load.record(Duration::from_millis(16));
        assert_eq!(load.work_ns(), 16 * MS);
        for _ in 0..200 {
            load.record(Duration::from_millis(4));
        }
        assert!(load.work_ns() < 5 * MS, "{}", load.work_ns());
    }
}
