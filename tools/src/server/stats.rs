//! Per-SSRC receive measurements: sequence accounting (loss, reordering, duplicates), timestamp
//! step checks, lateness against the sender's ideal 20 ms grid and RFC 3550 inter-arrival
//! jitter, both in hdrhistogram.
//!
//! The jitter is kept in nanoseconds, not in the RFC's timestamp units: one 48 kHz tick is
//! 20.8 µs, and a good sender on loopback jitters by a few µs, which whole ticks (and the
//! RFC sample code's integer division) round to 0 at every percentile.

use hdrhistogram::Histogram;

/// RTP clock rate of Opus.
const CLOCK_HZ: i64 = 48_000;
/// Expected timestamp step per packet (20 ms at 48 kHz).
pub(crate) const TS_STEP: u32 = 960;
/// Sequence numbers remembered for duplicate detection.
const WINDOW: u64 = 1024;
/// A silence longer than this between two packets starts a new stretch of the lateness grid:
/// the sender stopped and restarted, so its grid has no reason to line up with the old one.
const STRETCH_GAP_NS: i64 = 500_000_000;
/// A stretch is closed after this many packets so its buffer stays bounded: a minute of
/// packets, 24 KB a stream. At 10 minutes (30,000) a 1,000-call soak grew the server by
/// 0.4 MB/s for its whole length; a minute still anchors a 60 s benchmark run once.
const STRETCH_MAX: usize = 3_000;
/// Histogram ceiling in µs (60 s); larger values are clamped.
const HIST_MAX_US: u64 = 60_000_000;
/// The same ceiling for the jitter, kept in ns.
const HIST_MAX_NS: u64 = HIST_MAX_US * 1_000;

/// p50/p99/p99.9/max (and min, mean) of one metric, in µs (with fractions where the metric
/// was measured finer than a µs).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples recorded (0: nothing measured, and every other field is 0).
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summary of a histogram in µs (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        Self::of_scaled(h, 1.0)
    }

    /// Summary of a histogram in ns, in µs (all zero when empty).
    pub fn of_ns(h: &Histogram<u64>) -> Self {
        Self::of_scaled(h, 1_000.0)
    }

    fn of_scaled(h: &Histogram<u64>, divisor: f64) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min() as f64 / divisor,
            p50: h.value_at_quantile(0.5) as f64 / divisor,
            p99: h.value_at_quantile(0.99) as f64 / divisor,
            p999: h.value_at_quantile(0.999) as f64 / divisor,
            max: h.max() as f64 / divisor,
            mean: h.mean() / divisor,
        }
    }
}

// Two significant figures (exact below 256 units, within 1 % above): with three, each stream's
// two histograms took ~350 KB, and the first packets of 3,000 streams arriving together had the
// UDP thread zeroing a gigabyte while the kernel dropped 65,536 datagrams at its socket.

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Invariant: 1..=60e6 with 2 significant digits is a valid hdrhistogram configuration.
    Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds")
}

fn new_ns_histogram() -> Histogram<u64> {
    // Invariant: 1..=60e9 with 2 significant digits is a valid hdrhistogram configuration.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 2).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.min(HIST_MAX_US));
}

/// How a packet arrived relative to the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Newer than every packet so far; `gap` sequence numbers were skipped before it.
    InOrder { gap: u16 },
    /// Older than the newest packet (reordered), first time seen.
    Late,
    /// Seen before.
    Duplicate,
}

/// Receive-side accounting for one SSRC. Times are kernel receive timestamps in ns.
#[derive(Debug)]
pub(crate) struct StreamMeter {
    /// Packets accepted (after decryption), duplicates included.
    pub packets: u64,
    pub bytes: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub timestamp_step_errors: u64,
    /// Highest extended sequence number and the first one.
    max_ext_seq: Option<u64>,
    base_ext_seq: u64,
    /// Unique packets received.
    unique: u64,
    seen: [u64; (WINDOW / 64) as usize],
    last_ts: u32,
    /// RFC 3550 §6.4.1 state in ns, scaled by 16 as in the RFC's sample code (A.8).
    jitter_ns_q4: i64,
    /// The previous packet's transit time, in ns.
    last_transit: Option<i64>,
    /// The jitter after each in-order packet, in ns.
    pub jitter_ns: Histogram<u64>,
    /// Lateness of closed stretches.
    lateness_closed: Histogram<u64>,
    /// Current stretch: anchor timestamp (extended) and each packet's offset from its ideal
    /// arrival relative to the stretch's first packet, in ns.
    stretch_ext_ts0: i64,
    stretch_offsets: Vec<i64>,
    last_arrival_ns: Option<i64>,
    ext_ts: i64,
}

impl StreamMeter {
    pub fn new() -> Self {
        StreamMeter {
            packets: 0,
            bytes: 0,
            duplicates: 0,
            reordered: 0,
            timestamp_step_errors: 0,
            max_ext_seq: None,
            base_ext_seq: 0,
            unique: 0,
            seen: [0; (WINDOW / 64) as usize],
            last_ts: 0,
            jitter_ns_q4: 0,
            last_transit: None,
            jitter_ns: new_ns_histogram(),
            lateness_closed: new_histogram(),
            stretch_ext_ts0: 0,
            stretch_offsets: Vec::new(),
            last_arrival_ns: None,
            ext_ts: 0,
        }
    }

    fn bit(&mut self, ext: u64) -> (&mut u64, u64) {
        let i = (ext % WINDOW) as usize;
        (&mut self.seen[i / 64], 1u64 << (i % 64))
    }

    /// Accounts one packet and says how it arrived.
    pub fn on_packet(&mut self, seq: u16, ts: u32, len: usize, arrival_ns: i64) -> Arrival {
        self.packets += 1;
        self.bytes += len as u64;
        let Some(max) = self.max_ext_seq else {
            self.max_ext_seq = Some(u64::from(seq) + (1 << 16) * 4);
            self.base_ext_seq = u64::from(seq) + (1 << 16) * 4;
            let (w, b) = self.bit(u64::from(seq) + (1 << 16) * 4);
            *w |= b;
            self.unique = 1;
            self.last_ts = ts;
            self.ext_ts = 0;
            self.start_stretch(arrival_ns);
            self.last_transit = Some(self.transit(arrival_ns));
            return Arrival::InOrder { gap: 0 };
        };
        // Extend the 16-bit sequence number to the value nearest the current maximum.
        let delta = i64::from(seq.wrapping_sub(max as u16) as i16);
        let ext = (max as i64 + delta).max(0) as u64;
        if ext + WINDOW <= max {
            // Too old to tell apart from a duplicate; count it as reordered.
            self.reordered += 1;
            return Arrival::Late;
        }
        if ext > max {
            for e in max + 1..=ext.min(max + WINDOW) {
                let (w, b) = self.bit(e);
                *w &= !b;
            }
            if ext == max + 1 && ts.wrapping_sub(self.last_ts) != TS_STEP {
                self.timestamp_step_errors += 1;
            }
            // Timestamps come from the network: a sender jumping ±2³¹ per packet must not
            // overflow the extended timestamp (or anything computed from it).
            self.ext_ts = self
                .ext_ts
                .saturating_add(i64::from(ts.wrapping_sub(self.last_ts) as i32));
            self.last_ts = ts;
            self.max_ext_seq = Some(ext);
        }
        let (w, b) = self.bit(ext);
        if *w & b != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *w |= b;
        self.unique += 1;
        if ext < max {
            self.reordered += 1;
        }
        if ext < self.base_ext_seq {
            self.base_ext_seq = ext;
        }
        // Only in-order packets feed the grid and the jitter: a reordered one has an older
        // timestamp and would otherwise need the extended-timestamp bookkeeping twice.
        if ext > max {
            self.on_timing(arrival_ns);
            Arrival::InOrder {
                gap: (ext - max - 1).min(u64::from(u16::MAX)) as u16,
            }
        } else {
            Arrival::Late
        }
    }

    /// Transit time in ns: the arrival minus the RTP timestamp's time (RFC 3550 §6.4.1 works
    /// in timestamp units; only differences of transit times matter, so any unit will do).
    fn transit(&self, arrival_ns: i64) -> i64 {
        clamp(
            i128::from(arrival_ns) - i128::from(self.ext_ts) * 1_000_000_000 / i128::from(CLOCK_HZ),
        )
    }

    fn on_timing(&mut self, arrival_ns: i64) {
        let transit = self.transit(arrival_ns);
        if let Some(prev) = self.last_transit {
            let d = transit.saturating_sub(prev).saturating_abs();
            // J += (|D| - J) / 16, kept scaled by 16 (RFC 3550 A.8).
            self.jitter_ns_q4 = self
                .jitter_ns_q4
                .saturating_add(d.saturating_sub(self.jitter_ns_q4.saturating_add(8) >> 4));
            let jitter_ns = (self.jitter_ns_q4.saturating_add(8) >> 4).max(0) as u64;
            self.jitter_ns.saturating_record(jitter_ns.min(HIST_MAX_NS));
        }
        self.last_transit = Some(transit);
        let gap = self
            .last_arrival_ns
            .map_or(0, |l| arrival_ns.saturating_sub(l));
        if gap > STRETCH_GAP_NS || self.stretch_offsets.len() >= STRETCH_MAX {
            self.close_stretch();
            self.start_stretch(arrival_ns);
            return;
        }
        self.push_offset(arrival_ns);
    }

    fn start_stretch(&mut self, arrival_ns: i64) {
        self.stretch_ext_ts0 = self.ext_ts;
        self.stretch_offsets.clear();
        self.push_offset(arrival_ns);
    }

    /// Offset of this packet from the stretch's grid, up to the (unknown yet) best-case anchor.
    fn push_offset(&mut self, arrival_ns: i64) {
        let ideal_ns = (self.ext_ts as i128 - self.stretch_ext_ts0 as i128) * 1_000_000_000
            / i128::from(CLOCK_HZ);
        self.stretch_offsets
            .push(clamp(i128::from(arrival_ns) - ideal_ns));
        self.last_arrival_ns = Some(arrival_ns);
    }

    fn close_stretch(&mut self) {
        let offsets = std::mem::take(&mut self.stretch_offsets);
        fill_lateness(&mut self.lateness_closed, &offsets);
        self.stretch_offsets = offsets;
    }

    /// Lateness of every in-order packet so far: `arrival − ideal`, where the grid of each
    /// stretch is anchored at its earliest packet (so the best packet has lateness 0).
    pub fn lateness(&self) -> Histogram<u64> {
        let mut h = self.lateness_closed.clone();
        fill_lateness(&mut h, &self.stretch_offsets);
        h
    }

    /// Packets expected from the sequence range seen minus unique packets received.
    pub fn lost(&self) -> u64 {
        match self.max_ext_seq {
            Some(max) => (max - self.base_ext_seq + 1).saturating_sub(self.unique),
            None => 0,
        }
    }

    /// Unique packets received.
    pub fn unique(&self) -> u64 {
        self.unique
    }
}

fn fill_lateness(h: &mut Histogram<u64>, offsets: &[i64]) {
    let Some(min) = offsets.iter().copied().min() else {
        return;
    };
    for o in offsets {
        record(h, o.abs_diff(min) / 1000);
    }
}

/// An i128 intermediate back in i64 range (saturating).
fn clamp(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn clean_stream_has_no_loss_and_zero_lateness() {
        let mut m = StreamMeter::new();
        for i in 0..100u32 {
            let seq = 65_500u16.wrapping_add(i as u16);
            let ts = (u32::MAX - 2000).wrapping_add(i * 960);
            let a = m.on_packet(seq, ts, 100, 1_000 * MS + i64::from(i) * 20 * MS);
            assert_eq!(a, Arrival::InOrder { gap: 0 });
        }
        assert_eq!((m.lost(), m.reordered, m.duplicates), (0, 0, 0));
        assert_eq!(m.timestamp_step_errors, 0);
        let l = m.lateness();
        assert_eq!((l.len(), l.max()), (100, 0));
        assert_eq!(m.jitter_ns.max(), 0);
    }

    #[test]
    fn loss_reorder_duplicate_and_lateness() {
        let mut m = StreamMeter::new();
        let send = |m: &mut StreamMeter, i: u16, late_ms: i64| {
            m.on_packet(
                i,
                u32::from(i) * 960,
                10,
                i64::from(i) * 20 * MS + late_ms * MS,
            )
        };
        send(&mut m, 0, 0);
        send(&mut m, 1, 0);
        send(&mut m, 3, 0); // 2 missing for now
        send(&mut m, 2, 5); // reordered
        assert_eq!(send(&mut m, 2, 6), Arrival::Duplicate);
        assert_eq!(send(&mut m, 5, 3), Arrival::InOrder { gap: 1 }); // 4 lost, 3 ms late
        // A packet earlier than the first one re-anchors the grid.
        send(&mut m, 6, -2);
        assert_eq!(m.lost(), 1);
        assert_eq!(m.reordered, 1);
        assert_eq!(m.duplicates, 1);
        assert_eq!(m.timestamp_step_errors, 0);
        let l = m.lateness();
        assert_eq!(l.min(), 0);
        // 5 ms relative to the best case (−2 ms), within the histograms' 1 %.
        assert!((4_950..=5_050).contains(&l.max()), "{}", l.max());
        assert!(m.jitter_ns.max() > 0);
    }

    /// A stream whose packets arrive alternately on the grid and 10 µs late: every transit
    /// difference is 10 µs, so the RFC 3550 jitter converges on 10 µs. Kept in whole 48 kHz
    /// ticks (20.8 µs) it read 0 (or a whole tick), and a good run printed 0.0 everywhere.
    #[test]
    fn jitter_keeps_sub_tick_precision() {
        let mut m = StreamMeter::new();
        for i in 0..400u16 {
            let late_ns = if i % 2 == 1 { 10_000 } else { 0 };
            m.on_packet(i, u32::from(i) * 960, 10, i64::from(i) * 20 * MS + late_ns);
        }
        let jitter = Percentiles::of_ns(&m.jitter_ns);
        assert_eq!(jitter.count, 399);
        assert!(
            (9.9..=10.1).contains(&jitter.p50),
            "jitter p50 {} µs, expected 10 µs",
            jitter.p50
        );
        assert!(jitter.max <= 10.1, "{jitter:?}");
        // A steadier stream has less jitter, however small both are: 2 µs alternation.
        let mut steady = StreamMeter::new();
        for i in 0..400u16 {
            let late_ns = if i % 2 == 1 { 2_000 } else { 0 };
            steady.on_packet(i, u32::from(i) * 960, 10, i64::from(i) * 20 * MS + late_ns);
        }
        let steady = Percentiles::of_ns(&steady.jitter_ns);
        assert!((1.9..=2.1).contains(&steady.p50), "{steady:?}");
    }

    #[test]
    fn timestamp_step_is_checked() {
        let mut m = StreamMeter::new();
        m.on_packet(10, 0, 10, 0);
        m.on_packet(11, 480, 10, 20 * MS);
        assert_eq!(m.timestamp_step_errors, 1);
    }

    #[test]
    fn timestamps_and_arrivals_from_anywhere_never_overflow() {
        // Found by the stream_meter fuzz target: RTP timestamps jumping by ±2³¹ per packet
        // overflowed the grid arithmetic (`attempt to multiply with overflow`).
        // fuzz/corpus/stream_meter/regression-timestamp-jumps
        let crash: &[u8] = &[
            0xdc, 0xff, 0x00, 0x00, 0x00, 0x00, 0x78, 0x00, 0x58, 0x1b, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0xdd, 0xff, 0xc0, 0x03, 0x00, 0x00, 0x78, 0x00, 0x58, 0x48, 0x31, 0x01,
            0x00, 0x00, 0x00, 0x00, 0xde, 0xff, 0x67, 0x07, 0x00, 0x00, 0x78, 0x00, 0x58, 0x75,
            0x62, 0x02, 0x00, 0x00, 0x00, 0x00, 0xdf, 0xff, 0x40, 0x0b, 0x00, 0x00, 0x78, 0x00,
            0x58, 0xa2, 0x93, 0x03, 0x00, 0x00, 0x00, 0x00, 0xe0, 0xff, 0x00, 0x0f, 0x00, 0x00,
            0x78, 0x00, 0x58, 0xcf, 0xc4, 0x04, 0x00, 0x00, 0x00, 0x00, 0xe1, 0xff, 0xc0, 0x12,
            0x00, 0x00, 0x78, 0x00, 0x58, 0xfc, 0xf5, 0x05, 0x00, 0x00, 0x00, 0x00, 0xe2, 0xff,
            0x80, 0x16, 0x00, 0x00, 0x78, 0x00, 0x58, 0x29, 0x27, 0x07, 0x00, 0x00, 0x00, 0x00,
            0xe3, 0xff, 0x40, 0x1a, 0x00, 0x00, 0x78, 0x00, 0x58, 0x56, 0x58, 0x08, 0x00, 0x00,
            0x00, 0x00, 0xe4, 0xff, 0x10, 0x00, 0x00, 0x00, 0x00, 0xeb, 0xff, 0x40, 0x38, 0x00,
            0x00, 0x78, 0x00, 0x58, 0xbe, 0xe1, 0x11, 0x00, 0x00, 0x00, 0x00, 0xec, 0xff, 0x00,
            0x3c, 0x00, 0x00, 0x78, 0x00, 0x58, 0xeb, 0x12, 0x13, 0x00, 0x00, 0x00, 0x00, 0xed,
            0xff, 0xc0, 0x3f, 0x00, 0x00, 0x78, 0x00, 0x58, 0x18, 0x44, 0x14, 0x00, 0x00, 0x00,
            0x00, 0xee, 0xff, 0x80, 0x43, 0x00, 0x00, 0x78, 0x00, 0x58, 0x45, 0x75, 0x15, 0x00,
            0x00, 0x00, 0x00, 0xef, 0xff, 0x40, 0x47, 0x00, 0x00, 0x78, 0x00, 0x58, 0x72, 0xa6,
            0x16, 0x00, 0x00, 0x00, 0x00, 0xf0, 0xff, 0x00, 0x4b, 0x00, 0x00, 0x78, 0x00, 0x58,
            0x9f, 0xd7, 0x17, 0x00, 0x00, 0x00, 0x00, 0xf1, 0xff, 0xc0, 0x4e, 0x00, 0x00, 0x78,
            0x00, 0x58, 0xcc, 0x08, 0x19, 0x00, 0x00, 0x00, 0x00, 0xf2, 0xff, 0x80, 0x52, 0x00,
            0x00, 0x78, 0x00, 0x58, 0xf9, 0x39, 0x1a, 0x00, 0x00, 0x00, 0x00, 0xf3, 0xff, 0x40,
            0x56, 0x00, 0x00, 0x78, 0x00, 0x58, 0x26, 0x6b, 0x1b, 0x00, 0x00, 0x00, 0x00, 0xf4,
            0xff, 0x00, 0x5a, 0x00, 0x00, 0x78, 0x00, 0x58, 0x53, 0x9c, 0x1c, 0x00, 0x00, 0x00,
            0x00, 0xf5, 0xff, 0xc0, 0x5d, 0x00, 0x00, 0x78, 0x00, 0x58, 0x80, 0xcd, 0x1d, 0x00,
            0x00, 0x00, 0x00, 0xf6, 0xff, 0x80, 0x61, 0x00, 0x00, 0x78, 0x00, 0x58, 0xad, 0xfe,
            0x1e, 0x00, 0x00, 0x00, 0x00, 0xf7, 0xff, 0x40, 0x65, 0x00, 0x00, 0x78, 0x00, 0x58,
            0xda, 0x2f, 0x20, 0x00, 0x00, 0x00, 0x00, 0xf8, 0xff, 0x00, 0x69, 0x00, 0x00, 0x78,
            0x00, 0x58, 0x07, 0x61, 0x21, 0x00, 0x00, 0x00, 0x00, 0xf9, 0xff, 0xc0, 0x6c, 0x00,
            0x00, 0x78, 0x00, 0x58, 0x34, 0x92, 0x22, 0x00, 0x00, 0x00, 0x00, 0xfa, 0xff, 0x80,
            0x70, 0x00, 0x00, 0x78, 0x00, 0x58, 0x61, 0xc3, 0x23, 0x00, 0x00, 0x00, 0x00, 0xfb,
            0xff, 0x40, 0x74, 0x00, 0x00, 0x78, 0x00, 0x58, 0x8e, 0xf4, 0x24, 0x00, 0x00, 0x00,
            0x00, 0xfc, 0xff, 0x00, 0x78, 0x00, 0x00, 0x78, 0x00, 0x58, 0xbb, 0x25, 0x26, 0x00,
            0x00, 0x00, 0x00, 0xfd, 0xff, 0xc0, 0x7b, 0x00, 0x00, 0x78, 0x00, 0x58, 0xe8, 0x56,
            0x27, 0x00, 0x00, 0x00, 0x00, 0xfe, 0xff, 0x80, 0x7f, 0x00, 0x00, 0x78, 0x00, 0x58,
            0x15, 0x88, 0x28, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x40, 0x83, 0x00, 0x00, 0x78,
            0x00, 0x58, 0x42, 0xb9, 0x29, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x87, 0x00,
            0x00, 0x78, 0x00, 0x58, 0x6f, 0xea, 0x2a, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xc0,
            0x8a, 0x00, 0x00, 0x78, 0x00, 0x58, 0x9c, 0x1b, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x80, 0x8e, 0x00, 0x00, 0x78, 0x00, 0x58, 0xc9, 0x4c, 0x2d, 0x00, 0x00, 0x00,
            0x78, 0x00, 0x58, 0xbb, 0x25, 0x26, 0x00, 0x00, 0x00, 0x00, 0xfd, 0xff, 0xc0, 0x7b,
            0x00, 0x00, 0x78, 0x00, 0x58, 0xe8, 0x56, 0x27, 0x00, 0x00, 0x00, 0x00, 0xfe, 0xff,
            0x80, 0x7f, 0x00, 0x00, 0x78, 0x00, 0x58, 0x15, 0x88, 0x28, 0x00, 0x00, 0x00, 0x00,
            0xff, 0xff, 0x40, 0x83, 0x00, 0x00, 0x78, 0x00, 0x58, 0x42, 0xb9, 0x29, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x87, 0x00, 0x00, 0x78, 0x00, 0x58, 0x6f, 0xea, 0x2a,
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xc0, 0x8a, 0x00, 0x00, 0x78, 0x00, 0x58, 0x9c,
            0x1b, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x80, 0x8e, 0x00, 0x00, 0x78, 0x00,
            0x58, 0xc9, 0x4c, 0x2d, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x40, 0x92, 0x00, 0x00,
            0x78, 0x00, 0x58, 0xf6, 0x7d, 0x2e, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x96,
            0x00, 0x00, 0x78, 0x00, 0x58, 0x23, 0xaf, 0x2f, 0x00, 0x00, 0x35, 0x00, 0x05, 0x00,
            0xc0, 0x99, 0x00, 0x00, 0x78, 0x00, 0x58, 0x50, 0xe0, 0x30, 0x00, 0x00, 0x00, 0x00,
            0x06, 0x00, 0x80, 0x9d, 0x00, 0x00, 0x78, 0x00, 0x58, 0x7d, 0x11, 0x32, 0x00, 0x00,
            0x00, 0x00, 0x07, 0x00, 0x40, 0xa1, 0x00, 0x00, 0x78, 0x00, 0x58, 0xaa, 0x42, 0x33,
            0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0xa5, 0x00, 0x00, 0x78, 0x00, 0x58, 0xd7,
            0x73, 0x34, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0xc0, 0xa8, 0x00, 0x00, 0x78, 0x00,
            0x58, 0x04, 0xa5, 0x35, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x80, 0xac, 0x00, 0x00,
            0x78, 0x00, 0x58, 0x31, 0xd6, 0x36, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x40, 0xb0,
            0x00, 0x00, 0x78, 0x00, 0x58, 0x5e, 0x07, 0x38, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00,
            0x00, 0xb4, 0x00, 0x00, 0x78, 0x00, 0x58, 0x8b, 0x38, 0x39, 0x00, 0x00, 0x00, 0x00,
            0x0d, 0x00, 0xc0, 0xb7, 0x00, 0x00, 0x78, 0x00, 0x58, 0xb8, 0x69, 0x3a, 0x00, 0x00,
            0x00, 0x00, 0x0e, 0x00, 0x80, 0xbb, 0x00, 0x00, 0x78, 0x00, 0x58, 0xe5, 0x9a, 0x3b,
            0x00, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x40, 0xbf, 0x00, 0x00, 0x78, 0x00, 0x58, 0x12,
            0xcc, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0xc3, 0x00, 0x00, 0x78, 0x00,
            0x58, 0x3f, 0xfd, 0x3d, 0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0xc0, 0xc6, 0x00, 0x00,
            0x78, 0x00, 0x58, 0x6c, 0x2e, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x12, 0x00, 0x80, 0xca,
            0x00, 0x00, 0x78, 0x00, 0x58, 0x99, 0x5f, 0x40, 0x00, 0x00, 0x00, 0x00, 0x13, 0x00,
            0x40, 0xce, 0x00, 0x00, 0x78, 0x00, 0x58, 0xc6, 0x90, 0x41, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x00, 0xd2, 0x00, 0x00, 0x78, 0x00, 0x58, 0xf3, 0xc1, 0x42, 0x00, 0x00,
            0x00, 0x00, 0x15, 0x00, 0xc0, 0xd5, 0x00, 0x00, 0x78, 0x00, 0x58, 0x20, 0xf3, 0x43,
            0x00, 0x00, 0x00, 0x00, 0x16, 0x00, 0x80, 0xd9, 0x00, 0x00, 0x78, 0x00, 0x58, 0x4d,
            0x24, 0x45, 0x00, 0x00, 0x00, 0x00, 0x17, 0x00, 0x40, 0xdd, 0x00, 0x00, 0x78, 0x00,
            0x58, 0x7a, 0x55, 0x46, 0x00, 0x00, 0x00, 0x00, 0x1a, 0x00, 0x80, 0xe8, 0x00, 0x00,
            0x78, 0x00, 0x58, 0xa7, 0x86, 0x47, 0x00, 0x00, 0x00, 0x00, 0x19, 0x00, 0xc0, 0xe4,
            0x00, 0x00, 0x78, 0x00, 0x58, 0xd4, 0xb7, 0x48, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00,
            0x40, 0xec, 0x00, 0x00, 0x78, 0x00, 0x58, 0x01, 0xe9, 0x49, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut m = StreamMeter::new();
        for r in crash.chunks_exact(16) {
            let seq = u16::from_le_bytes([r[0], r[1]]);
            let ts = u32::from_le_bytes([r[2], r[3], r[4], r[5]]);
            let len = usize::from(u16::from_le_bytes([r[6], r[7]]));
            let at = i64::from_le_bytes(r[8..16].try_into().unwrap());
            m.on_packet(seq, ts, len, at);
        }
        let mut m2 = StreamMeter::new();
        for (i, at) in [i64::MIN, i64::MAX, 0, i64::MAX, i64::MIN]
            .into_iter()
            .enumerate()
        {
            let ts = if i % 2 == 0 { 0 } else { 1 << 31 };
            m2.on_packet(i as u16, ts, 1, at);
        }
        for meter in [&m, &m2] {
            let _ = (meter.lost(), Percentiles::of(&meter.lateness()));
            let _ = Percentiles::of_ns(&meter.jitter_ns);
        }
        assert_eq!(m2.unique(), 5);
    }
}
