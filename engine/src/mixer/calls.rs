//! The mixer's call table: the calls that tick, in the order their packets are due, and the
//! idle ones, which do not tick at all.
//!
//! DESIGN.md: idle calls (joined, nothing playing) must not tick; 1,000 of them within 2 % of a
//! core. Walking every call each tick to find it has nothing to do was a cache miss a call:
//! 1,000 idle calls kept each of two mixer threads at ~0.9 % of a core. A call leaves the tick
//! once it has no source, no queued track, has ended its stretch of frames and handed its
//! encoder back; the command that gives it something to play brings it back, in time for the
//! same tick.

use super::CallSlot;
use crate::CallId;

/// Every call of one mixer, split by whether it ticks. Both lists are allocated for the whole
/// capacity up front, so moving a call between them never allocates.
pub(super) struct Calls {
    /// In phase order, joining order within a phase (see [`Calls::place`]).
    // Boxed: slots arrive boxed from the control side and leave boxed as garbage; unboxing them
    // here would free the box on the real-time thread.
    #[allow(clippy::vec_box)]
    ticking: Vec<Box<CallSlot>>,
    /// In no particular order.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<CallSlot>>,
}

impl Calls {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            ticking: Vec::with_capacity(capacity),
            idle: Vec::with_capacity(capacity),
        }
    }

    /// Calls in both lists.
    pub(super) fn len(&self) -> usize {
        self.ticking.len() + self.idle.len()
    }

    /// Whether another call fits without allocating.
    pub(super) fn has_room(&self) -> bool {
        self.len() < self.ticking.capacity().min(self.idle.capacity())
    }

    /// The calls that tick, in build order.
    #[cfg(test)]
    pub(super) fn ticking(&self) -> &[Box<CallSlot>] {
        &self.ticking
    }

    /// The calls that tick, in build order.
    pub(super) fn ticking_mut(&mut self) -> &mut [Box<CallSlot>] {
        &mut self.ticking
    }

    /// Every call, ticking or not.
    pub(super) fn all_mut(&mut self) -> impl Iterator<Item = &mut Box<CallSlot>> {
        self.ticking.iter_mut().chain(self.idle.iter_mut())
    }

    /// Adds a call (within capacity, checked by the caller) to the ticking ones: a new call or
    /// one handed over may have frames to finish; [`Calls::settle`] moves it out if not.
    pub(super) fn insert(&mut self, call: Box<CallSlot>) {
        Self::place(&mut self.ticking, call);
    }

    /// The call `id`, wherever it is.
    pub(super) fn find_mut(&mut self, id: CallId) -> Option<&mut CallSlot> {
        self.all_mut()
            .find(|call| call.id == id)
            .map(|call| &mut **call)
    }

    /// The call `id`, brought back to the ticking ones if it was idle: it is about to get
    /// something to play, and builds from `tick` on.
    pub(super) fn wake(&mut self, id: CallId, tick: u64) -> Option<&mut CallSlot> {
        if let Some(index) = self.idle.iter().position(|call| call.id == id) {
            let mut call = self.idle.swap_remove(index);
            call.next_tick = tick;
            let at = Self::place(&mut self.ticking, call);
            return Some(&mut self.ticking[at]);
        }
        self.ticking
            .iter_mut()
            .find(|call| call.id == id)
            .map(|call| &mut **call)
    }

    /// Takes the call `id` out of the table.
    pub(super) fn take(&mut self, id: CallId) -> Option<Box<CallSlot>> {
        if let Some(index) = self.ticking.iter().position(|call| call.id == id) {
            // `remove`, not `swap_remove`: the ticking calls stay in phase order.
            return Some(self.ticking.remove(index));
        }
        let index = self.idle.iter().position(|call| call.id == id)?;
        Some(self.idle.swap_remove(index))
    }

    /// Sets the call's phase (µs after the grid's deadline), keeping the build order.
    pub(super) fn set_phase(&mut self, id: CallId, phase_us: u32) {
        if let Some(index) = self.ticking.iter().position(|call| call.id == id) {
            let mut call = self.ticking.remove(index);
            call.phase_us = phase_us;
            Self::place(&mut self.ticking, call);
        } else if let Some(call) = self.idle.iter_mut().find(|call| call.id == id) {
            call.phase_us = phase_us;
        }
    }

    /// Moves the calls with nothing left to do out of the tick, keeping the others' order.
    pub(super) fn settle(&mut self) {
        let mut kept = 0;
        for index in 0..self.ticking.len() {
            if !self.ticking[index].is_idle() {
                self.ticking.swap(kept, index);
                kept += 1;
            }
        }
        // Within capacity: both lists hold every call's room.
        self.idle.extend(self.ticking.drain(kept..));
    }

    /// Puts `call` in `calls` in phase order, and in joining order within a phase; returns
    /// where. Built in this order, the calls whose packets are due first are ready first, and a
    /// tick that runs long delays only calls with the most slack (up to 18 ms with ten phase
    /// groups); in joining order alone a call due at the grid's instant could be built last,
    /// after its packet was due. Groups fill in joining order, so the end of the table, which
    /// the governor lowers first, is still the newest calls.
    #[allow(clippy::vec_box)] // see `Calls::ticking`
    fn place(calls: &mut Vec<Box<CallSlot>>, call: Box<CallSlot>) -> usize {
        let at = calls.partition_point(|c| (c.phase_us, c.id.0) <= (call.phase_us, call.id.0));
        calls.insert(at, call);
        at
    }
}
