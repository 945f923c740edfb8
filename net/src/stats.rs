//! Sender statistics in HDR histograms.
//!
//! The sender thread records into a preallocated [`SenderStats`] and, about once a second, swaps
//! it for an empty one through a pair of rtrb rings; the control side merges what it receives.
//! Recording never allocates (values beyond the range saturate), and the thread never locks.

use hdrhistogram::Histogram;

/// Highest value the histograms track exactly, in nanoseconds (10 s).
const MAX_NS: u64 = 10_000_000_000;

/// Sender statistics for some span of ticks.
#[derive(Debug, Clone)]
pub struct SenderStats {
    /// Per packet: when its send had returned (the kernel has taken the datagram; for io_uring
    /// when the enter call that ran the whole batch returned) minus its deadline, in
    /// nanoseconds (0 if early).
    pub lateness_ns: Histogram<u64>,
    /// Per tick with packets: when the pacer returned minus the tick's deadline, in nanoseconds —
    /// the pacing precision, before any send cost.
    pub wake_ns: Histogram<u64>,
    /// Per tick with packets: time spent building, sealing and sending, in nanoseconds (wall
    /// time on the sender thread, pacing excluded — a CPU-time clock would cost a syscall).
    pub tick_work_ns: Histogram<u64>,
    /// Per tick with packets: datagrams in the on-time batch.
    pub batch_size: Histogram<u64>,
    /// Packets handed to the kernel successfully.
    pub packets_sent: u64,
    /// Packets whose frame arrived after its tick had passed (sent at once, counted here).
    pub late_frames: u64,
    /// Failed sends, all calls together.
    pub send_errors: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Events lost because the event queue was full.
    pub events_dropped: u64,
    /// Opus frames end-to-end encrypted with DAVE (silence frames, never wrapped, excluded).
    pub dave_frames: u64,
    /// Frames dropped because DAVE encryption failed (never sent unprotected).
    pub dave_errors: u64,
    /// Frames dropped unsent while the far end refused the call's packets (`ECONNREFUSED`: the
    /// voice server's port is closed), between the back-off's probes.
    pub refused_frames: u64,
    /// Quiet calls set aside: their frame queue parked, not looked at until it rings.
    pub calls_parked: u64,
    /// Parked calls woken by a frame (or by a command).
    pub calls_woken: u64,
}

impl SenderStats {
    /// Empty statistics with preallocated histograms.
    pub fn new() -> Self {
        // Bounds are constants within hdrhistogram's limits, so creation cannot fail.
        let h = || Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant bounds are valid");
        Self {
            lateness_ns: h(),
            wake_ns: h(),
            tick_work_ns: h(),
            batch_size: Histogram::new_with_bounds(1, 1 << 20, 3)
                .expect("constant bounds are valid"),
            packets_sent: 0,
            late_frames: 0,
            send_errors: 0,
            ticks: 0,
            events_dropped: 0,
            dave_frames: 0,
            dave_errors: 0,
            refused_frames: 0,
            calls_parked: 0,
            calls_woken: 0,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &SenderStats) {
        // Same bounds on both sides, so adding cannot fail for range reasons.
        let _ = self.lateness_ns.add(&other.lateness_ns);
        let _ = self.wake_ns.add(&other.wake_ns);
        let _ = self.tick_work_ns.add(&other.tick_work_ns);
        let _ = self.batch_size.add(&other.batch_size);
        self.packets_sent += other.packets_sent;
        self.late_frames += other.late_frames;
        self.send_errors += other.send_errors;
        self.ticks += other.ticks;
        self.events_dropped += other.events_dropped;
        self.dave_frames += other.dave_frames;
        self.dave_errors += other.dave_errors;
        self.refused_frames += other.refused_frames;
        self.calls_parked += other.calls_parked;
        self.calls_woken += other.calls_woken;
    }

    /// Clears everything, keeping the allocations.
    pub fn reset(&mut self) {
        self.lateness_ns.reset();
        self.wake_ns.reset();
        self.tick_work_ns.reset();
        self.batch_size.reset();
        self.packets_sent = 0;
        self.late_frames = 0;
        self.send_errors = 0;
        self.ticks = 0;
        self.events_dropped = 0;
        self.dave_frames = 0;
        self.dave_errors = 0;
        self.refused_frames = 0;
        self.calls_parked = 0;
        self.calls_woken = 0;
    }
}

impl Default for SenderStats {
    fn default() -> Self {
        Self::new()
    }
}
