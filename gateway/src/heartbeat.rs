//! Heartbeat scheduling and ACK tracking, in virtual time.

use std::time::{Duration, Instant};

/// Nonces stay below 2^53 so a JavaScript server can hold them exactly.
const NONCE_MASK: u64 = (1 << 53) - 1;

/// What a heartbeat timer tick asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send a heartbeat with this nonce.
    Send {
        /// The nonce to put in `t`.
        nonce: u64,
    },
    /// Too many heartbeats went unanswered: the connection is presumed dead.
    Dead {
        /// How many in a row were missed.
        missed: u32,
    },
}

/// Sends a heartbeat every interval and counts the ones left unanswered.
#[derive(Debug, Clone)]
pub struct Heartbeater {
    interval: Duration,
    next_due: Instant,
    next_nonce: u64,
    outstanding: Option<(u64, Instant)>,
    missed: u32,
    missed_limit: u32,
    last_rtt: Option<Duration>,
}

impl Heartbeater {
    /// Start beating: the first heartbeat is due one interval after `now`.
    /// `missed_limit` unanswered heartbeats in a row make the connection dead (at least 1).
    pub fn new(interval: Duration, missed_limit: u32, first_nonce: u64, now: Instant) -> Self {
        Heartbeater {
            interval,
            next_due: now + interval,
            next_nonce: first_nonce & NONCE_MASK,
            outstanding: None,
            missed: 0,
            missed_limit: missed_limit.max(1),
            last_rtt: None,
        }
    }

    /// Like [`Heartbeater::new`] but with the first heartbeat due at `first_due` (the main
    /// gateway wants the first one after a random fraction of the interval).
    pub fn starting_at(interval: Duration, missed_limit: u32, first_due: Instant) -> Self {
        let mut h = Heartbeater::new(interval, missed_limit, 1, first_due);
        h.next_due = first_due;
        h
    }

    /// Record an ACK that carries no nonce (main gateway op 11): it answers the last heartbeat.
    pub fn on_ack_latest(&mut self, now: Instant) {
        if let Some((nonce, _)) = self.outstanding {
            self.on_ack(nonce, now);
        }
    }

    /// Convert Hello's `heartbeat_interval` (float milliseconds) into a sane duration; NaN,
    /// negative or absurd values are clamped rather than trusted.
    pub fn interval_from_ms(ms: f64) -> Duration {
        let ms = if ms.is_finite() { ms } else { 0.0 };
        Duration::from_secs_f64(ms.clamp(1.0, 3_600_000.0) / 1000.0)
    }

    /// The configured interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next heartbeat is due.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Round-trip time of the last acknowledged heartbeat.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Drive the timer. Returns `None` before the deadline.
    pub fn poll(&mut self, now: Instant) -> Option<Beat> {
        if now < self.next_due {
            return None;
        }
        if self.outstanding.is_some() {
            self.missed += 1;
            if self.missed >= self.missed_limit {
                return Some(Beat::Dead {
                    missed: self.missed,
                });
            }
        }
        let nonce = self.next_nonce;
        self.next_nonce = (self.next_nonce + 1) & NONCE_MASK;
        self.outstanding = Some((nonce, now));
        // Schedule from the previous deadline so the cadence doesn't drift with late wake-ups,
        // but never into the past after a long stall.
        self.next_due = (self.next_due + self.interval).max(now + self.interval / 2);
        Some(Beat::Send { nonce })
    }

    /// Record an ACK. Stale or unknown nonces are ignored; returns whether it matched.
    pub fn on_ack(&mut self, nonce: u64, now: Instant) -> bool {
        match self.outstanding {
            Some((n, sent)) if n == nonce => {
                self.outstanding = None;
                self.missed = 0;
                self.last_rtt = Some(now.saturating_duration_since(sent));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_misses() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(100);
        let mut h = Heartbeater::new(iv, 3, 5, t0);
        assert_eq!(h.poll(t0), None);
        assert_eq!(h.poll(t0 + iv), Some(Beat::Send { nonce: 5 }));
        assert!(h.on_ack(5, t0 + iv + Duration::from_millis(7)));
        assert_eq!(h.last_rtt(), Some(Duration::from_millis(7)));
        assert_eq!(h.next_due(), t0 + 2 * iv);
        assert_eq!(h.poll(t0 + 2 * iv), Some(Beat::Send { nonce: 6 }));
        assert!(!h.on_ack(99, t0 + 2 * iv));
        assert_eq!(h.poll(t0 + 3 * iv), Some(Beat::Send { nonce: 7 }));
        assert_eq!(h.poll(t0 + 4 * iv), Some(Beat::Send { nonce: 8 }));
        assert_eq!(h.poll(t0 + 5 * iv), Some(Beat::Dead { missed: 3 }));
    }

    #[test]
    fn nonce_stays_below_2_pow_53() {
        let t0 = Instant::now();
        let mut h = Heartbeater::new(Duration::from_millis(1), 3, u64::MAX, t0);
        let Some(Beat::Send { nonce }) = h.poll(t0 + Duration::from_millis(1)) else {
            panic!("a heartbeat is due");
        };
        assert!(nonce < 1 << 53);
        h.on_ack(nonce, t0);
        let Some(Beat::Send { nonce }) = h.poll(t0 + Duration::from_millis(2)) else {
            panic!("a heartbeat is due");
        };
        assert_eq!(nonce, 0);
    }

    #[test]
    fn odd_intervals_are_clamped() {
        assert_eq!(
            Heartbeater::interval_from_ms(f64::NAN),
            Duration::from_millis(1)
        );
        assert_eq!(
            Heartbeater::interval_from_ms(-5.0),
            Duration::from_millis(1)
        );
        assert_eq!(
            Heartbeater::interval_from_ms(13750.5),
            Duration::from_secs_f64(13.7505)
        );
        assert_eq!(
            Heartbeater::interval_from_ms(1e300),
            Duration::from_secs(3600)
        );
    }
}
