//! Exponential backoff with injected jitter and a retry limit.

use std::time::{Duration, Instant};

/// A source of jitter in `[0, 1)`. Injected so tests are deterministic.
pub trait JitterSource: Send {
    /// The next fraction in `[0, 1)`.
    fn next_fraction(&mut self) -> f64;
}

/// The next fraction from `j`, forced into `[0, 1]` so a misbehaving source (NaN, negative)
/// cannot make duration arithmetic panic.
pub fn unit_fraction(j: &mut dyn JitterSource) -> f64 {
    let f = j.next_fraction();
    if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Always the same fraction; for tests.
#[derive(Clone, Copy, Debug)]
pub struct FixedJitter(pub f64);

impl JitterSource for FixedJitter {
    fn next_fraction(&mut self) -> f64 {
        self.0.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

/// SplitMix64: small, fast, good enough to spread reconnects apart.
#[derive(Clone, Debug)]
pub struct SplitMixJitter(u64);

impl SplitMixJitter {
    /// Seed explicitly.
    pub fn new(seed: u64) -> Self {
        SplitMixJitter(seed)
    }

    /// Seed from the process's hash randomisation, so separate processes spread differently.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        SplitMixJitter(RandomState::new().hash_one(0x5157_u64))
    }
}

impl JitterSource for SplitMixJitter {
    fn next_fraction(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Backoff tuning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay ceiling before jitter for the first retry.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Retries allowed before giving up (reset once a connection stays up for `stable_after`);
    /// [`UNLIMITED_RETRIES`] never gives up.
    pub max_retries: u32,
    /// How long a connection must stay up before the retry count starts again from zero. A
    /// server that accepts the handshake and then drops every connection at once (an oversized
    /// dispatch, a crash loop) must not reset the backoff each time: that hammered it with 18
    /// connections in 12 s.
    pub stable_after: Duration,
}

/// `max_retries` that never runs out (Discord outages last minutes; the delay is capped).
pub const UNLIMITED_RETRIES: u32 = u32::MAX;

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retries: 8,
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff: retry `n` waits uniformly in `[d/2, d)` with `d = min(max, base·2^n)`
/// ("equal jitter": never zero, so a crashing server is not hammered, but spread out).
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    /// When the current connection came up, if it is up.
    connected_at: Option<Instant>,
    jitter: Box<dyn JitterSource>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("config", &self.config)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Backoff {
    /// New backoff with no retries used.
    pub fn new(config: BackoffConfig, jitter: Box<dyn JitterSource>) -> Self {
        Backoff {
            config,
            attempt: 0,
            connected_at: None,
            jitter,
        }
    }

    /// The delay before the next retry, or `None` once the retry limit is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.config.max_retries != UNLIMITED_RETRIES && self.attempt >= self.config.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.config.base.saturating_mul(factor).min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        Some(half + half.mul_f64(unit_fraction(self.jitter.as_mut())))
    }

    /// Retries used since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A connection succeeded: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.connected_at = None;
    }

    /// A connection came up at `now`. The retry count is kept until it has stayed up for
    /// [`BackoffConfig::stable_after`] (see [`Backoff::disconnected`]).
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection that came up in [`Backoff::connected`] went down at `now`: the retry count
    /// starts again from zero only if it stayed up long enough.
    pub fn disconnected(&mut self, now: Instant) {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= self.config.stable_after
        {
            self.attempt = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_stops() {
        let cfg = BackoffConfig {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            max_retries: 6,
            ..BackoffConfig::default()
        };
        let mut b = Backoff::new(cfg, Box::new(FixedJitter(0.0)));
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(50)));
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_count() {
        let cfg = BackoffConfig {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_retries: UNLIMITED_RETRIES,
            stable_after: Duration::from_secs(30),
        };
        let mut b = Backoff::new(cfg, Box::new(FixedJitter(0.0)));
        let t0 = Instant::now();
        // Up and straight down again, three times: the delays keep growing.
        let mut ms = Vec::new();
        for n in 0..3 {
            let t = t0 + Duration::from_secs(n);
            b.connected(t);
            b.disconnected(t + Duration::from_millis(10));
            ms.push(b.next_delay().unwrap().as_millis());
        }
        assert_eq!(ms, vec![50, 100, 200]);
        // Up for longer than `stable_after`: back to the base delay.
        b.connected(t0 + Duration::from_secs(10));
        b.disconnected(t0 + Duration::from_secs(41));
        assert_eq!(b.next_delay(), Some(Duration::from_millis(50)));
        // Unlimited: the count saturates, the delay stays capped, it never gives up.
        b.attempt = u32::MAX - 1;
        for _ in 0..3 {
            assert_eq!(b.next_delay(), Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let mut j = SplitMixJitter::new(1);
        for _ in 0..10_000 {
            let f = j.next_fraction();
            assert!((0.0..1.0).contains(&f));
        }
        let mut b = Backoff::new(BackoffConfig::default(), Box::new(FixedJitter(0.999)));
        let d = b.next_delay().unwrap();
        assert!(d >= Duration::from_millis(250) && d < Duration::from_millis(500));
    }
}
