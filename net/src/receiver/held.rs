//! Packets of SSRCs that no op 5 has mapped yet, kept in a fixed pool until the mapping comes.

use std::time::{Duration, Instant};

use super::MAX_DATAGRAM;

/// One held, transport-opened payload.
struct HeldPacket {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    at: Instant,
    len: u16,
    payload: [u8; MAX_DATAGRAM],
}

/// A fixed pool (allocated whole up front; a slot with `len == 0` is free); the oldest packet
/// makes room for a new one.
pub(super) struct Held {
    slots: Box<[HeldPacket]>,
    hold_for: Duration,
}

impl Held {
    pub(super) fn new(capacity: usize, hold_for: Duration, now: Instant) -> Self {
        Self {
            slots: (0..capacity)
                .map(|_| HeldPacket {
                    ssrc: 0,
                    sequence: 0,
                    timestamp: 0,
                    at: now,
                    len: 0,
                    payload: [0; MAX_DATAGRAM],
                })
                .collect(),
            hold_for,
        }
    }

    /// Keeps a payload; returns whether an older held packet was displaced for it.
    pub(super) fn hold(
        &mut self,
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        let free = self.slots.iter().position(|p| p.len == 0);
        let index = free.or_else(|| {
            self.slots
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.at)
                .map(|(i, _)| i)
        });
        let Some(p) = index.and_then(|i| self.slots.get_mut(i)) else {
            return true; // a pool of zero slots holds nothing
        };
        let len = payload.len().min(MAX_DATAGRAM);
        p.ssrc = ssrc;
        p.sequence = sequence;
        p.timestamp = timestamp;
        p.at = now;
        p.len = len as u16;
        p.payload[..len].copy_from_slice(&payload[..len]);
        free.is_none()
    }

    /// Hands every live packet of `ssrc` to `f` (with its arrival time) in arrival order and
    /// frees their slots.
    pub(super) fn release(
        &mut self,
        ssrc: u32,
        now: Instant,
        mut f: impl FnMut(u16, u32, &[u8], Instant),
    ) {
        let hold_for = self.hold_for;
        loop {
            let next = self
                .slots
                .iter_mut()
                .filter(|p| {
                    p.ssrc == ssrc && p.len > 0 && now.saturating_duration_since(p.at) <= hold_for
                })
                .min_by_key(|p| p.at);
            let Some(p) = next else { break };
            f(
                p.sequence,
                p.timestamp,
                &p.payload[..usize::from(p.len)],
                p.at,
            );
            p.len = 0;
        }
    }

    /// Forgets packets held longer than the hold time; returns how many.
    pub(super) fn expire(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        for p in self.slots.iter_mut() {
            if p.len > 0 && now.saturating_duration_since(p.at) > self.hold_for {
                p.len = 0;
                expired += 1;
            }
        }
        expired
    }
}
