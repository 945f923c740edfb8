//! Engine statistics: hdrhistograms recorded on the mixer thread and handed to the control side
//! by swapping preallocated histograms through lock-free rings (no locks, no allocation on the
//! real-time path), plus plain atomic counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Highest value the histograms track exactly (60 s in µs); larger values saturate.
const HIGHEST_US: u64 = 60_000_000;
/// Spare histogram sets in circulation between the mixer and the control side.
const SPARE_SETS: usize = 3;
/// Ticks between hand-overs of the mixer's histograms (0.5 s).
const PUBLISH_EVERY_TICKS: u32 = 25;

/// The mixer's timing histograms, all in microseconds.
#[derive(Debug, Clone)]
pub struct MixerHistograms {
    /// Wall time of a whole tick (every call's mix and encode).
    pub tick_us: Histogram<u64>,
    /// Time to encode one call's frame with libopus.
    pub encode_us: Histogram<u64>,
    /// How late the mixer thread woke for a tick, against its planned wake-up time.
    pub lateness_us: Histogram<u64>,
}

impl MixerHistograms {
    pub(crate) fn new() -> Self {
        let make = || {
            // Two significant figures: exact below 256 µs, within 1 % above. With three, each
            // histogram was 139 KB, and adding and clearing them on hand-over was most of the
            // worker's CPU for a single call (perf: `Histogram::add` and `memset`).
            // Invariant: constant, valid bounds (1 ≤ low, high ≥ 2·low, sigfig ≤ 5).
            Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
        };
        Self {
            tick_us: make(),
            encode_us: make(),
            lateness_us: make(),
        }
    }

    fn reset(&mut self) {
        for h in [
            &mut self.tick_us,
            &mut self.encode_us,
            &mut self.lateness_us,
        ] {
            // An empty histogram (no encodes in a passthrough mixer) needs no clearing.
            if !h.is_empty() {
                h.reset();
            }
        }
    }

    pub(crate) fn add(&mut self, other: &Self) {
        for (to, from) in [
            (&mut self.tick_us, &other.tick_us),
            (&mut self.encode_us, &other.encode_us),
            (&mut self.lateness_us, &other.lateness_us),
        ] {
            if !from.is_empty() {
                // Same bounds on both sides and no auto-resize, so adding cannot fail.
                let _ = to.add(from);
            }
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value recorded.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarises `histogram` (all zero when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (n={})",
            self.p50, self.p99, self.p999, self.max, self.count
        )
    }
}

/// Counters the mixer thread updates with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct MixerCounters {
    pub(crate) ticks: AtomicU64,
    pub(crate) skipped_ticks: AtomicU64,
    pub(crate) frames_encoded: AtomicU64,
    pub(crate) frames_passed_through: AtomicU64,
    pub(crate) frames_dropped: AtomicU64,
    pub(crate) encode_errors: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) realtime_priority: AtomicBool,
    pub(crate) complexity_steps_down: AtomicU64,
    pub(crate) complexity_steps_up: AtomicU64,
    pub(crate) calls_lowered: AtomicU64,
    pub(crate) frames_rushed: AtomicU64,
    pub(crate) codec_shortages: AtomicU64,
}

impl MixerCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the engine's statistics.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Ticks the mixer has run.
    pub ticks: u64,
    /// Ticks skipped because the mixer thread was suspended or overloaded for a whole frame.
    pub skipped_ticks: u64,
    /// Frames mixed and Opus-encoded.
    pub frames_encoded: u64,
    /// Frames sent without re-encoding (a lone pre-encoded Opus source at unity volume).
    pub frames_passed_through: u64,
    /// Frames dropped because a call's frame queue was full (nobody drained it).
    pub frames_dropped: u64,
    /// Frames libopus failed to encode (dropped).
    pub encode_errors: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Whether the mixer thread runs at a real-time (SCHED_FIFO) priority.
    pub realtime_priority: bool,
    /// libopus encoders that exist now (~48 KB each): those calls hold while they mix, plus
    /// the mixers' spares ([`crate::EngineConfig::spare_codecs`]) and any on their way to be
    /// freed. A passthrough call holds none.
    pub opus_encoders: u64,
    /// Encoders held by calls now (calls that mix, or mixed a moment ago).
    pub opus_encoders_in_use: u64,
    /// libopus decoders that exist now (~27 KB each), as [`EngineStats::opus_encoders`]; a
    /// passed-through Opus source holds none.
    pub opus_decoders: u64,
    /// Decoders held by Opus sources now.
    pub opus_decoders_in_use: u64,
    /// Times a call or source had to wait a tick to start mixing because its mixer had no
    /// spare codec (see [`crate::EngineConfig::spare_codecs`]).
    pub codec_shortages: u64,
    /// Opus complexity steps taken down under overload (one per call per step), and back up
    /// once there was room ([`crate::EngineConfig::adaptive_complexity`]).
    pub complexity_steps_down: u64,
    /// See [`EngineStats::complexity_steps_down`].
    pub complexity_steps_up: u64,
    /// Calls encoding below their configured complexity now.
    pub calls_lowered: u64,
    /// Frames encoded at the lowest complexity because at full complexity they would have
    /// been ready after their packet was due (a tick that started late or ran long, such as
    /// the first tick after many calls start at once). Threaded engines with
    /// [`crate::EngineConfig::adaptive_complexity`] only.
    pub frames_rushed: u64,
    /// Time the mixer spent per tick, all calls together (µs).
    pub tick: Summary,
    /// Time one Opus encode took (µs).
    pub encode: Summary,
    /// How late the mixer thread woke for its ticks (µs).
    pub lateness: Summary,
    /// The cumulative histograms behind the summaries.
    pub histograms: MixerHistograms,
}

/// Mixer side of the histogram hand-over.
pub(crate) struct StatsPublisher {
    pub(crate) local: MixerHistograms,
    full: rtrb::Producer<MixerHistograms>,
    spare: rtrb::Consumer<MixerHistograms>,
    ticks_since_publish: u32,
}

impl StatsPublisher {
    /// Called once per tick; every [`PUBLISH_EVERY_TICKS`] it swaps its histograms for an
    /// empty spare and queues the full ones. Only moves values: no allocation, no lock.
    pub(crate) fn after_tick(&mut self) {
        self.ticks_since_publish += 1;
        if self.ticks_since_publish < PUBLISH_EVERY_TICKS || self.full.slots() == 0 {
            return;
        }
        if let Ok(mut spare) = self.spare.pop() {
            std::mem::swap(&mut self.local, &mut spare);
            // Cannot fail: a free slot was checked above and only this thread pushes.
            let _ = self.full.push(spare);
            self.ticks_since_publish = 0;
        }
    }
}

/// Control side of the hand-over: accumulates everything the mixer published.
pub(crate) struct StatsCollector {
    full: rtrb::Consumer<MixerHistograms>,
    spare: rtrb::Producer<MixerHistograms>,
    pub(crate) total: MixerHistograms,
}

impl StatsCollector {
    pub(crate) fn collect(&mut self) {
        while let Ok(mut published) = self.full.pop() {
            self.total.add(&published);
            published.reset();
            // Cannot fail: the spare ring holds every set in circulation.
            let _ = self.spare.push(published);
        }
    }
}

pub(crate) fn stats_channel() -> (StatsPublisher, StatsCollector) {
    let (full_tx, full_rx) = rtrb::RingBuffer::new(SPARE_SETS + 1);
    let (mut spare_tx, spare_rx) = rtrb::RingBuffer::new(SPARE_SETS + 1);
    for _ in 0..SPARE_SETS {
        // Cannot fail: capacity is SPARE_SETS + 1.
        let _ = spare_tx.push(MixerHistograms::new());
    }
    let publisher = StatsPublisher {
        local: MixerHistograms::new(),
        full: full_tx,
        spare: spare_rx,
        ticks_since_publish: 0,
    };
    let collector = StatsCollector {
        full: full_rx,
        spare: spare_tx,
        total: MixerHistograms::new(),
    };
    (publisher, collector)
}
