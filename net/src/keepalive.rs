//! UDP keepalives (PROTOCOL.md §3, observed behaviour): while no audio flows, send a small datagram
//! every 5 s so that NAT mappings stay open. Sans-IO: the caller owns the socket and the clock.

use std::time::{Duration, Instant};

/// How often discord.js and songbird send keepalives.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Length of a keepalive datagram.
pub const KEEPALIVE_LEN: usize = 8;

/// Keepalive schedule of one voice socket: discord.js's 8-byte datagram (u32 LE counter, 4 zeros)
/// whenever the socket has been idle for [`INTERVAL`].
#[derive(Debug, Clone)]
pub struct Keepalive {
    counter: u32,
    last_activity: Instant,
    interval: Duration,
}

impl Keepalive {
    /// A schedule starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self::with_interval(now, INTERVAL)
    }

    /// A schedule with a custom interval.
    pub fn with_interval(now: Instant, interval: Duration) -> Self {
        Self {
            counter: 0,
            last_activity: now,
            interval,
        }
    }

    /// Records that audio (or anything else) went out at `now`, postponing the next keepalive.
    pub fn on_activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// When the next keepalive is due.
    pub fn next_due(&self) -> Instant {
        self.last_activity + self.interval
    }

    /// The datagram to send now, if one is due; the caller sends it on the voice socket.
    pub fn poll(&mut self, now: Instant) -> Option<[u8; KEEPALIVE_LEN]> {
        if now < self.next_due() {
            return None;
        }
        self.last_activity = now;
        let mut d = [0u8; KEEPALIVE_LEN];
        d[..4].copy_from_slice(&self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_when_idle() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0);
        assert!(k.poll(t0 + Duration::from_secs(4)).is_none());
        assert_eq!(k.poll(t0 + INTERVAL), Some([0, 0, 0, 0, 0, 0, 0, 0]));
        k.on_activity(t0 + Duration::from_secs(8));
        assert!(k.poll(t0 + Duration::from_secs(12)).is_none());
        assert_eq!(
            k.poll(t0 + Duration::from_secs(13)),
            Some([1, 0, 0, 0, 0, 0, 0, 0])
        );
    }
}
