//! The playout buffer itself: timing, reordering, loss versus pause, adaptive delay. No libopus
//! here (the algorithm is described in [`super`]).

use std::time::Instant;

use super::jitter::Jitter;
use super::opus_packet::{self, FramingError, MAX_FRAME_BYTES, SAMPLES_PER_PACKET};
use super::{FRAME, Next, PlayoutConfig, PlayoutStats, Pushed, Rendered, Speaking};

/// Pulls per evaluation of the delay (one second of 20 ms ticks).
const WINDOW: u16 = 50;
/// The shallow moments of a window that do not keep the delay from shrinking. Depth is read
/// from how long each played packet waited, not from the packets buffered at each pull: every
/// lost or held-back packet made the newest one missing for a pull, so with the shallowest
/// buffered span as the rule a stream losing or reordering a few packets a second never
/// shrank (the local server's 5 % loss and 5 % reordering kept 74 ms against a 3-frame target,
/// 54 ms). A packet that came late (reordered) still waits less than the rest: four such dips a
/// second (8 %) are let pass.
const DIPS_IGNORED: usize = 4;
/// Packets in a row far behind the stream after which the sender is taken to have restarted.
const FAR_BEHIND_RESTART: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Empty,
    Buffered,
    /// Played (or skipped); kept so that a copy arriving later is known as a duplicate.
    Played,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    sequence: u16,
    timestamp: u32,
    len: u16,
    quiet: bool,
    arrival: Option<Instant>,
}

const EMPTY: Slot = Slot {
    state: SlotState::Empty,
    sequence: 0,
    timestamp: 0,
    len: 0,
    quiet: false,
    arrival: None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No packet yet (or after `reset`).
    Fresh,
    /// Waiting until the buffered packets reach the target delay.
    Buffering,
    /// One frame per pull.
    Playing,
    /// Nothing came for `pause_after` frames: the speaker stopped.
    Paused,
}

/// The playout (jitter) buffer of one received stream. See the [module docs](super).
pub struct Playout {
    min_delay: u8,
    max_delay: u8,
    pause_after: u8,
    mask: u16,
    slots: Box<[Slot]>,
    bytes: Box<[u8]>,
    state: State,
    /// The next sequence number to play (the first not yet played or passed over).
    next: u16,
    /// The highest sequence number buffered (meaningful while `buffered > 0`).
    highest: u16,
    /// The lowest sequence number buffered since buffering began.
    lowest: u16,
    buffered: u16,
    /// Whether anything of this stream has played (then nothing before `next` may come back).
    played_any: bool,
    buffering_since: Option<Instant>,
    /// Consecutive pulls with an empty buffer.
    empty_run: u16,
    /// Frames concealed without advancing since the last packet played.
    debt: u16,
    far_behind: u8,
    target: u8,
    jitter: Jitter,
    pulls: u64,
    last_raise: u64,
    window_pulls: u16,
    /// The `DIPS_IGNORED + 1` shallowest depths of the window (from the waits of the packets
    /// played), ascending; the last decides.
    window_low: [u16; DIPS_IGNORED + 1],
    excess: u16,
    force: u16,
    speaking: bool,
    edge: Option<Speaking>,
    stats: PlayoutStats,
}

impl std::fmt::Debug for Playout {
    // Not derived: the slots hold ~80 KB of (end-to-end decrypted) audio.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playout")
            .field("state", &self.state)
            .field("next", &self.next)
            .field("buffered", &self.buffered)
            .field("capacity", &self.slots.len())
            .field("target", &self.target)
            .field("speaking", &self.speaking)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Playout {
    /// Allocates every slot up front: `push` and `pull` never allocate.
    pub fn new(config: &PlayoutConfig) -> Self {
        let capacity = usize::from(config.capacity.clamp(16, 32_768)).next_power_of_two();
        let min_delay = config.min_delay.max(1);
        let max_delay = config
            .max_delay
            .max(min_delay)
            .min(u8::try_from(capacity / 2).unwrap_or(u8::MAX));
        let min_delay = min_delay.min(max_delay);
        Self {
            min_delay,
            max_delay,
            pause_after: config.pause_after,
            mask: u16::try_from(capacity - 1).unwrap_or(u16::MAX),
            slots: vec![EMPTY; capacity].into_boxed_slice(),
            bytes: vec![0; capacity * MAX_FRAME_BYTES].into_boxed_slice(),
            state: State::Fresh,
            next: 0,
            highest: 0,
            lowest: 0,
            buffered: 0,
            played_any: false,
            buffering_since: None,
            empty_run: 0,
            debt: 0,
            far_behind: 0,
            target: min_delay,
            jitter: Jitter::new(),
            pulls: 0,
            last_raise: 0,
            window_pulls: 0,
            window_low: [u16::MAX; DIPS_IGNORED + 1],
            excess: 0,
            force: 0,
            speaking: false,
            edge: None,
            stats: PlayoutStats {
                target_delay_frames: min_delay,
                ..PlayoutStats::default()
            },
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &PlayoutStats {
        &self.stats
    }

    /// Whether the stream is speaking (between a [`Speaking::Started`] and a
    /// [`Speaking::Stopped`] edge).
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// The speaking edge the last pull (or `reset`) produced, if any. Call it after each pull:
    /// a pull produces at most one edge and the next pull replaces it.
    pub fn take_edge(&mut self) -> Option<Speaking> {
        self.edge.take()
    }

    /// Folds the decoder's outcome for the last pull into the statistics.
    pub fn count(&mut self, rendered: Rendered) {
        match rendered {
            Rendered::Idle | Rendered::Decoded => {}
            Rendered::FecRecovered => self.stats.fec_recovered += 1,
            Rendered::Concealed => self.stats.concealed += 1,
            Rendered::Failed(_) => {
                self.stats.decode_failed += 1;
                self.stats.concealed += 1;
            }
        }
    }

    /// Forgets the stream (new owner of the SSRC, rejoin); statistics are kept. A stream that
    /// was speaking leaves a [`Speaking::Stopped`] edge.
    pub fn reset(&mut self) {
        self.clear();
        self.state = State::Fresh;
        self.target = self.min_delay;
        self.stats.target_delay_frames = self.target;
        self.stats.restarts += 1;
        if self.speaking {
            self.speaking = false;
            self.stats.stopped += 1;
            self.edge = Some(Speaking::Stopped);
        }
    }

    /// A received, decrypted Opus packet: copied into its slot.
    pub fn push(&mut self, now: Instant, sequence: u16, timestamp: u32, opus: &[u8]) -> Pushed {
        self.stats.received += 1;
        if let Some(refused) = refuse(opus) {
            self.stats.rejected += 1;
            return refused;
        }
        if self.state == State::Fresh {
            self.start(now, sequence);
            self.raise(timestamp, now);
            self.store(now, sequence, timestamp, opus);
            return Pushed::Buffered;
        }
        let ahead = i32::from(sequence.wrapping_sub(self.next) as i16);
        let capacity = i32::from(self.mask) + 1;
        if ahead >= capacity {
            return self.restart(now, sequence, timestamp, opus);
        }
        if ahead < 0 {
            let may_precede = !self.played_any
                && self.state == State::Buffering
                && i32::from(self.highest.wrapping_sub(sequence) as i16) < capacity;
            if may_precede {
                self.next = sequence;
            } else {
                return self.behind(now, sequence, timestamp, ahead, capacity, opus);
            }
        }
        self.far_behind = 0;
        let slot = &self.slots[self.index(sequence)];
        if slot.state == SlotState::Buffered && slot.sequence == sequence {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        if self.state == State::Paused {
            // A new utterance: its timestamps may not follow on from the last one's.
            self.state = State::Buffering;
            self.buffering_since = Some(now);
            self.jitter.clear();
        }
        self.raise(timestamp, now);
        self.store(now, sequence, timestamp, opus);
        Pushed::Buffered
    }

    /// What to play for this 20 ms tick.
    pub fn pull(&mut self, now: Instant) -> Next<'_> {
        self.pulls += 1;
        match self.state {
            State::Fresh | State::Paused => return Next::Idle,
            State::Buffering => {
                if !self.ready(now) {
                    return Next::Idle;
                }
                // Sequence numbers between the last one played and this utterance's first
                // were sent (numbering continues across pauses) and never arrived.
                let skipped = self.lowest.wrapping_sub(self.next);
                self.stats.lost += u64::from(skipped);
                self.next = self.lowest;
                self.state = State::Playing;
                self.empty_run = 0;
                self.debt = 0;
                if !self.speaking {
                    self.speaking = true;
                    self.stats.started += 1;
                    self.edge = Some(Speaking::Started);
                }
            }
            State::Playing => {}
        }
        self.track_depth();
        self.play(now)
    }

    fn play(&mut self, now: Instant) -> Next<'_> {
        loop {
            let depth = self.depth();
            let index = self.index(self.next);
            if self.is_buffered(self.next) {
                let shrink = self.excess > 0
                    && self.is_buffered(self.next.wrapping_add(1))
                    && (self.slots[index].quiet || self.force > 0);
                self.consume(index);
                if shrink {
                    if !self.slots[index].quiet {
                        self.force -= 1;
                    }
                    self.excess -= 1;
                    self.stats.skipped += 1;
                    continue;
                }
                return self.emit(index, now);
            }
            if depth > 0 {
                // A hole with later packets buffered.
                if self.debt > 0 && depth > u16::from(self.target) {
                    // Already concealed by a stalled frame: pass over it.
                    self.debt -= 1;
                    self.stats.lost += 1;
                    self.next = self.next.wrapping_add(1);
                    continue;
                }
                self.empty_run = 0;
                if self.debt < u16::from(self.target).saturating_sub(depth) {
                    // Shallower than the target: wait a frame, it may only be reordered.
                    return self.stall();
                }
                let sequence = self.next;
                self.next = self.next.wrapping_add(1);
                self.stats.lost += 1;
                let fec = self
                    .is_buffered(self.next)
                    .then(|| self.bytes_of(self.next));
                return Next::Missing { sequence, fec };
            }
            self.empty_run += 1;
            if self.empty_run > u16::from(self.pause_after) {
                self.pause();
                return Next::Idle;
            }
            return self.stall();
        }
    }

    /// Conceals a frame without advancing.
    fn stall(&mut self) -> Next<'_> {
        self.debt = self.debt.saturating_add(1);
        self.stats.stalled += 1;
        Next::Missing {
            sequence: self.next,
            fec: None,
        }
    }

    fn emit(&mut self, index: usize, now: Instant) -> Next<'_> {
        self.debt = 0;
        self.empty_run = 0;
        self.stats.played += 1;
        let slot = self.slots[index];
        if let Some(arrival) = slot.arrival {
            let waited = now.saturating_duration_since(arrival);
            // A packet that waited k whole periods had k frames behind it in a buffer fed on
            // time: the depth the delay amounts to, whatever was lost or held back meanwhile.
            let periods = waited.as_nanos() / FRAME.as_nanos();
            self.note_depth(u16::try_from(periods + 1).unwrap_or(u16::MAX));
            let waited = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.stats.buffer_delay_last_us = waited;
            self.stats.buffer_delay_avg_us = if self.stats.played == 1 {
                waited
            } else {
                let avg = self.stats.buffer_delay_avg_us;
                (avg - avg / 16).saturating_add(waited / 16)
            };
        }
        let start = index * MAX_FRAME_BYTES;
        Next::Packet {
            sequence: slot.sequence,
            timestamp: slot.timestamp,
            opus: &self.bytes[start..start + usize::from(slot.len)],
        }
    }

    /// Marks the slot at `next` played and advances.
    fn consume(&mut self, index: usize) {
        self.slots[index].state = SlotState::Played;
        self.buffered = self.buffered.saturating_sub(1);
        self.played_any = true;
        self.next = self.next.wrapping_add(1);
    }

    fn pause(&mut self) {
        self.state = State::Paused;
        self.empty_run = 0;
        self.debt = 0;
        self.reset_window();
        if self.speaking {
            self.speaking = false;
            self.stats.stopped += 1;
            self.edge = Some(Speaking::Stopped);
        }
    }

    fn ready(&self, now: Instant) -> bool {
        if self.buffered == 0 {
            return false;
        }
        let span = self.highest.wrapping_sub(self.lowest).wrapping_add(1);
        let waited = self.buffering_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= FRAME * u32::from(self.target)
        });
        span >= u16::from(self.target) || waited
    }

    /// Frames from `next` to the highest buffered, holes included; 0 when nothing is buffered.
    fn depth(&self) -> u16 {
        if self.buffered == 0 {
            0
        } else {
            self.highest.wrapping_sub(self.next).wrapping_add(1)
        }
    }

    /// Once per pull while playing: at the end of each second, the depth of its shallow
    /// moments (all but a few dips) decides what may go.
    fn track_depth(&mut self) {
        self.window_pulls += 1;
        if self.window_pulls < WINDOW {
            return;
        }
        let calm = self.pulls.saturating_sub(self.last_raise) >= u64::from(WINDOW);
        if let Some(estimate) = self.jitter.estimate() {
            let estimate = self.clamp_delay(estimate);
            if estimate < self.target && calm {
                self.target -= 1;
                self.stats.target_delay_frames = self.target;
            }
        }
        // Fewer packets played than dips let pass (a stalled second): nothing to go by.
        let shallow = match self.window_low[DIPS_IGNORED] {
            u16::MAX => 0,
            depth => depth,
        };
        let excess = shallow.saturating_sub(u16::from(self.target));
        if excess == 0 {
            self.force = 0;
        } else if shallow > u16::from(self.max_delay) {
            // Far too deep: latency is worse than a skip.
            self.force = excess;
        } else if self.excess > 0 {
            // A whole second without a silence frame to drop: drop one ordinary frame.
            self.force = 1;
        }
        self.excess = excess;
        self.window_pulls = 0;
        self.window_low = [u16::MAX; DIPS_IGNORED + 1];
    }

    /// Keeps `depth` among the window's shallowest, in order.
    fn note_depth(&mut self, depth: u16) {
        let low = &mut self.window_low;
        let Some(at) = low.iter().position(|&d| depth < d) else {
            return;
        };
        low.copy_within(at..DIPS_IGNORED, at + 1);
        low[at] = depth;
    }

    fn reset_window(&mut self) {
        self.window_pulls = 0;
        self.window_low = [u16::MAX; DIPS_IGNORED + 1];
        self.excess = 0;
        self.force = 0;
    }

    /// Feeds the jitter estimate and raises the target at once if this packet calls for more.
    fn raise(&mut self, timestamp: u32, now: Instant) {
        let frames = self.jitter.record(now, timestamp);
        let wanted = self.clamp_delay(frames);
        if wanted > self.target {
            self.target = wanted;
            self.stats.target_delay_frames = wanted;
            self.last_raise = self.pulls;
        }
    }

    fn clamp_delay(&self, frames: u32) -> u8 {
        u8::try_from(frames)
            .unwrap_or(u8::MAX)
            .clamp(self.min_delay, self.max_delay)
    }

    /// A packet before `next`: a duplicate of one played, late, or (several in a row far
    /// behind) a restarted sender.
    fn behind(
        &mut self,
        now: Instant,
        sequence: u16,
        timestamp: u32,
        ahead: i32,
        capacity: i32,
        opus: &[u8],
    ) -> Pushed {
        if ahead <= -capacity {
            self.far_behind += 1;
            if self.far_behind >= FAR_BEHIND_RESTART {
                return self.restart(now, sequence, timestamp, opus);
            }
            self.stats.late += 1;
            return Pushed::Late;
        }
        self.far_behind = 0;
        let slot = &self.slots[self.index(sequence)];
        if slot.state == SlotState::Played && slot.sequence == sequence {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        // Its lateness is exactly what the target must absorb.
        self.raise(timestamp, now);
        self.stats.late += 1;
        Pushed::Late
    }

    fn restart(&mut self, now: Instant, sequence: u16, timestamp: u32, opus: &[u8]) -> Pushed {
        self.clear();
        self.stats.restarts += 1;
        self.start(now, sequence);
        self.raise(timestamp, now);
        self.store(now, sequence, timestamp, opus);
        Pushed::Restarted
    }

    fn start(&mut self, now: Instant, sequence: u16) {
        self.state = State::Buffering;
        self.next = sequence;
        self.lowest = sequence;
        self.buffering_since = Some(now);
        self.jitter.clear();
    }

    fn store(&mut self, now: Instant, sequence: u16, timestamp: u32, opus: &[u8]) {
        if self.state == State::Buffering
            && (self.buffered == 0 || (sequence.wrapping_sub(self.lowest) as i16) < 0)
        {
            self.lowest = sequence;
        }
        if self.buffered == 0 || (sequence.wrapping_sub(self.highest) as i16) > 0 {
            self.highest = sequence;
        }
        if self.state == State::Buffering && self.buffered == 0 {
            self.buffering_since = Some(now);
        }
        let index = self.index(sequence);
        // Every buffered packet lies in [next, next + capacity), so its slot is free; should that
        // ever not hold, the count must still not drift.
        if self.slots[index].state != SlotState::Buffered {
            self.buffered += 1;
        }
        let start = index * MAX_FRAME_BYTES;
        self.bytes[start..start + opus.len()].copy_from_slice(opus);
        self.slots[index] = Slot {
            state: SlotState::Buffered,
            sequence,
            timestamp,
            // `refuse` bounded it by MAX_FRAME_BYTES.
            len: u16::try_from(opus.len()).unwrap_or(0),
            quiet: opus.len() <= 3,
            arrival: Some(now),
        };
    }

    fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.buffered = 0;
        self.played_any = false;
        self.empty_run = 0;
        self.debt = 0;
        self.far_behind = 0;
        self.buffering_since = None;
        self.jitter.clear();
        self.reset_window();
    }

    fn index(&self, sequence: u16) -> usize {
        usize::from(sequence & self.mask)
    }

    fn is_buffered(&self, sequence: u16) -> bool {
        let slot = &self.slots[self.index(sequence)];
        slot.state == SlotState::Buffered && slot.sequence == sequence
    }

    fn bytes_of(&self, sequence: u16) -> &[u8] {
        let index = self.index(sequence);
        let start = index * MAX_FRAME_BYTES;
        &self.bytes[start..start + usize::from(self.slots[index].len)]
    }
}

/// Packets the buffer cannot hold or play in a 20 ms slot.
fn refuse(opus: &[u8]) -> Option<Pushed> {
    if opus.len() > MAX_FRAME_BYTES {
        return Some(Pushed::TooLarge);
    }
    match opus_packet::parse(opus) {
        Err(FramingError::Empty | FramingError::Malformed) => Some(Pushed::Malformed),
        Ok(info) if info.samples != SAMPLES_PER_PACKET => Some(Pushed::WrongDuration),
        Ok(_) => None,
    }
}
