//! The sender thread's loop: commands at tick boundaries, pacing, statistics hand-over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::core::{Pace, SenderCore};
use super::handle::STATS_EVERY_TICKS;
use super::spin::SpinWindow;
use super::{Command, EventNotifier, Returned};
use crate::pacer::Pacer;
use crate::stats::SenderStats;

pub(super) struct Worker {
    pub(super) core: SenderCore,
    pub(super) pacing: Pacing,
    pub(super) commands: rtrb::Consumer<Command>,
    pub(super) garbage: rtrb::Producer<Returned>,
    pub(super) stats_full: rtrb::Producer<Box<SenderStats>>,
    pub(super) stats_free: rtrb::Consumer<Box<SenderStats>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) notify: Option<EventNotifier>,
    /// `EventQueue::pushed` when the reader was last woken.
    pub(super) notified: u64,
}

/// Bounds of the build-ahead time; the mixer's lead (`EngineConfig::min_lead`, 6 ms by
/// default) must stay above the upper bound's typical values.
pub(super) const MIN_BUILD_AHEAD: Duration = Duration::from_micros(600);
pub(super) const MAX_BUILD_AHEAD: Duration = Duration::from_millis(5);

/// The thread's [`Pace`]: sleep to build time, then sleep and spin to the deadline.
pub(super) struct Pacing {
    pub(super) pacer: Pacer,
    /// How long before each send deadline to stop sleeping and spin (see [`super::spin`]).
    pub(super) spin: SpinWindow,
    /// How long before a deadline the tick's packets are built. The mixer builds frame `n`
    /// only shortly before `deadline(n)`, so building right after the previous send would find
    /// it missing and send it a tick late.
    pub(super) build_ahead: Duration,
    /// Recent worst build time (decaying), from which `build_ahead` follows.
    pub(super) recent_build: Duration,
}

impl Pace for Pacing {
    fn waits(&self) -> bool {
        true
    }

    fn until_build(&mut self, deadline: Instant) {
        self.pacer
            .sleep_until(deadline.checked_sub(self.build_ahead).unwrap_or(deadline));
    }

    fn until_send(&mut self, deadline: Instant, build: Duration) -> Instant {
        self.recent_build = build.max(self.recent_build.mul_f32(0.99));
        self.build_ahead = (self.recent_build * 2 + Duration::from_micros(300))
            .clamp(MIN_BUILD_AHEAD, MAX_BUILD_AHEAD);
        let wake_at = deadline.checked_sub(self.spin.window()).unwrap_or(deadline);
        self.pacer.sleep_until(wake_at);
        let woke = Instant::now();
        self.spin
            .observe(woke.saturating_duration_since(wake_at), woke);
        while Instant::now() < deadline {
            std::hint::spin_loop();
        }
        Instant::now()
    }

    fn idle(&mut self, deadline: Instant) {
        // Nothing to send: no need for precision, so no spin.
        self.pacer.sleep_until(deadline);
    }
}

impl Worker {
    pub(super) fn run(&mut self) {
        let grid = self.core.grid;
        let mut n = grid.tick_at_or_after(Instant::now());
        while !self.stop.load(Ordering::Acquire) {
            // Commands apply between ticks: a re-key lands on a frame boundary. Each command
            // returns at most one object, so only take one when the return queue has room.
            while self.garbage.slots() > 0 {
                match self.commands.pop() {
                    Ok(c) => self.core.apply(c, &mut self.garbage),
                    Err(_) => break,
                }
            }
            self.core.tick(n, &mut self.pacing);
            if self.core.events.pushed != self.notified
                && let Some(notify) = &self.notify
            {
                self.notified = self.core.events.pushed;
                (notify.0)();
            }
            if self.core.stats.ticks >= STATS_EVERY_TICKS {
                self.hand_over_stats();
            }
            n += 1;
            // Far behind (stalled thread, suspended VM): jump ahead rather than race through
            // every missed tick; queued frames for those ticks go out as late frames.
            let now_tick = grid.tick_at_or_after(Instant::now());
            if now_tick > n + 1 {
                n = now_tick - 1;
            }
        }
        self.hand_over_stats();
    }

    fn hand_over_stats(&mut self) {
        if self.stats_full.slots() == 0 {
            return;
        }
        if let Ok(fresh) = self.stats_free.pop() {
            let full = std::mem::replace(&mut self.core.stats, fresh);
            // Checked for room just above; the control side only ever pops from this ring.
            let _ = self.stats_full.push(full);
        }
    }
}
