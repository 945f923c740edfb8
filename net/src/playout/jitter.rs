//! The jitter estimate behind the target delay (see the module docs of [`super`]).

use std::time::Instant;

/// Transit samples kept: 128 packets, ~2.5 s of a 50 packet/s stream.
const RING: usize = 128;

/// One frame in transit units: transit is kept in thirds of a nanosecond, the unit in which both
/// an arrival in nanoseconds (×3) and a 48 kHz timestamp (×62,500) are whole numbers.
const FRAME_UNITS: i64 = 20_000_000 * 3;
const UNITS_PER_SAMPLE: i64 = 62_500;

/// Relative transit times of the last [`RING`] packets.
pub(super) struct Jitter {
    ring: [i64; RING],
    scratch: [i64; RING],
    len: usize,
    head: usize,
    /// Arrival and timestamp of the previous packet, and its transit.
    last: Option<(Instant, u32, i64)>,
}

impl Jitter {
    pub(super) fn new() -> Self {
        Self {
            ring: [0; RING],
            scratch: [0; RING],
            len: 0,
            head: 0,
            last: None,
        }
    }

    /// Forgets every sample (new stream, or a resume whose timestamps may not follow on).
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.head = 0;
        self.last = None;
    }

    /// Records a packet; returns the delay in frames it alone calls for:
    /// `ceil((transit − min) / 20 ms) + 1`.
    pub(super) fn record(&mut self, arrival: Instant, timestamp: u32) -> u32 {
        let transit = match self.last {
            None => 0,
            Some((at, ts, transit)) => {
                // Packets may be reordered: the arrival delta is signed as well.
                let arrived = if arrival >= at {
                    to_units(arrival - at)
                } else {
                    -to_units(at - arrival)
                };
                let advanced = i64::from(timestamp.wrapping_sub(ts) as i32) * UNITS_PER_SAMPLE;
                transit.saturating_add(arrived).saturating_sub(advanced)
            }
        };
        self.last = Some((arrival, timestamp, transit));
        self.ring[self.head] = transit;
        self.head = (self.head + 1) % RING;
        self.len = (self.len + 1).min(RING);
        let min = self.ring[..self.len]
            .iter()
            .copied()
            .min()
            .unwrap_or(transit);
        frames_for(transit.saturating_sub(min))
    }

    /// The delay in frames the ring calls for: `ceil((p95 − min) / 20 ms) + 1`; `None` with
    /// too few samples to say.
    pub(super) fn estimate(&mut self) -> Option<u32> {
        if self.len < 16 {
            return None;
        }
        let samples = &mut self.scratch[..self.len];
        samples.copy_from_slice(&self.ring[..self.len]);
        let min = samples.iter().copied().min().unwrap_or(0);
        let rank = (self.len * 95).div_ceil(100) - 1;
        let (_, p95, _) = samples.select_nth_unstable(rank);
        Some(frames_for(p95.saturating_sub(min)))
    }
}

fn to_units(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos())
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4)
        * 3
}

fn frames_for(spread: i64) -> u32 {
    let frames = spread.max(0).saturating_add(FRAME_UNITS - 1) / FRAME_UNITS + 1;
    u32::try_from(frames).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steady_stream_needs_one_frame_and_a_40_ms_spike_needs_three() {
        let base = Instant::now();
        let mut jitter = Jitter::new();
        for i in 0..50u32 {
            let at = base + Duration::from_millis(u64::from(i) * 20);
            assert_eq!(
                jitter.record(at, i.wrapping_mul(960).wrapping_add(u32::MAX - 5_000)),
                1
            );
        }
        assert_eq!(jitter.estimate(), Some(1));
        let late = base + Duration::from_millis(50 * 20 + 40);
        assert_eq!(
            jitter.record(late, (50u32 * 960).wrapping_add(u32::MAX - 5_000)),
            3
        );
    }
}
