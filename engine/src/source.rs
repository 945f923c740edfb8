//! Sources: the producer ends users write into ([`PcmWriter`], [`OpusWriter`]), the handle that
//! controls a playing source ([`SourceHandle`]), and the mixer-side slot that reads them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::frame::{EncodedFrame, FRAME_SAMPLES, FrameKind};
use crate::latency::LatencyCap;
use crate::packets::{PacketConsumer, packet_ring};
use crate::pcm::{MixFrame, PcmFormat};
use crate::pool::{PooledDecoder, prepare_decoder};
use crate::resample::SourceResampler;
use crate::seek::{SeekCursor, SeekShared};
use crate::writer::{OpusPacket, OpusWriter, PcmWriter};
use crate::{CallId, SourceId};

/// Highest accepted volume (+18 dB); the limiter handles what goes over full scale.
pub const MAX_VOLUME: f32 = 8.0;

/// The silence frame (`F8 FF FE`): a 20 ms Opus packet that decodes to silence.
pub const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// State shared between a source's handle, its writer and its mixer slot. Only atomics, so the
/// mixer thread reads it without locks.
#[derive(Debug)]
pub(crate) struct SourceShared {
    volume_bits: AtomicU32,
    paused: AtomicBool,
    stop_requested: AtomicBool,
    /// The producer is done: drain what is buffered, then end.
    finished: AtomicBool,
    /// The producer failed (a file could not be decoded further): end as failed, not finished.
    failed: AtomicBool,
    /// The mixer has ended the source; writers fail from now on.
    ended: AtomicBool,
    frames_mixed: AtomicU64,
    underruns: AtomicU64,
    /// Audio dropped by the latency cap, in microseconds.
    latency_dropped_us: AtomicU64,
    /// The writer found the ring full: it writes ahead of real time on purpose (backpressure),
    /// so its backlog is wanted and the latency cap stays off for good.
    pub(crate) ahead: AtomicBool,
    /// Length of the input in milliseconds when known (files), else `u64::MAX`.
    duration_ms: AtomicU64,
    /// The decoder can reposition (files, HTTP with range requests).
    seekable: AtomicBool,
    /// The input starts again at its end (for the position).
    looping: AtomicBool,
    pub(crate) seek: SeekShared,
    /// The thread that decodes the input, woken when a seek is asked for.
    decoder_thread: OnceLock<Thread>,
    /// The child process's id, for child-process inputs (0 otherwise).
    process_id: AtomicU32,
}

impl SourceShared {
    pub(crate) fn new(volume: f32, paused: bool) -> Self {
        Self {
            volume_bits: AtomicU32::new(sanitize_volume(volume).to_bits()),
            paused: AtomicBool::new(paused),
            stop_requested: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            frames_mixed: AtomicU64::new(0),
            underruns: AtomicU64::new(0),
            latency_dropped_us: AtomicU64::new(0),
            ahead: AtomicBool::new(false),
            duration_ms: AtomicU64::new(u64::MAX),
            seekable: AtomicBool::new(false),
            looping: AtomicBool::new(false),
            seek: SeekShared::new(Duration::ZERO),
            decoder_thread: OnceLock::new(),
            process_id: AtomicU32::new(0),
        }
    }

    /// Makes [`SourceHandle::seek`] available.
    pub(crate) fn set_seekable(&self) {
        self.seekable.store(true, Ordering::Release);
    }

    /// The thread that decodes the input, woken when a seek is asked for.
    pub(crate) fn set_decoder_thread(&self, thread: Thread) {
        let _ = self.decoder_thread.set(thread);
    }

    pub(crate) fn set_looping(&self, looping: bool) {
        self.looping.store(looping, Ordering::Relaxed);
    }

    pub(crate) fn set_process_id(&self, id: u32) {
        self.process_id.store(id, Ordering::Relaxed);
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Relaxed)
    }

    fn volume(&self) -> f32 {
        f32::from_bits(self.volume_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn mark_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// A seek after the end of a seekable input: more input comes after all. (If the mixer
    /// already ended the source, this changes nothing.)
    pub(crate) fn unfinish(&self) {
        self.finished.store(false, Ordering::Release);
    }

    pub(crate) fn duration(&self) -> Option<Duration> {
        match self.duration_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(crate) fn set_duration(&self, duration: Duration) {
        self.duration_ms
            .store(duration.as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks the producer as failed; the source plays out what is buffered and ends as failed.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.finish();
    }

    fn end_of_input(&self) -> EndReason {
        if self.failed.load(Ordering::Relaxed) {
            EndReason::Failed
        } else {
            EndReason::Finished
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

fn sanitize_volume(volume: f32) -> f32 {
    if volume.is_nan() {
        0.0
    } else {
        volume.clamp(0.0, MAX_VOLUME)
    }
}

/// Counters of one source, read at any time from its [`SourceHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceStats {
    /// 20 ms frames this source contributed to its call.
    pub frames_mixed: u64,
    /// Frames for which the producer had not written enough (filled with silence).
    pub underruns: u64,
    /// Audio the latency cap dropped ([`SourceOptions::latency_cap`]).
    pub latency_dropped: Duration,
    /// The source has ended and left its call.
    pub ended: bool,
}

/// Controls one playing source: volume, pause, stop, stats. Cheap to clone; every clone controls
/// the same source. Dropping handles does not stop the source.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    call: CallId,
    id: SourceId,
    shared: Arc<SourceShared>,
}

impl SourceHandle {
    pub(crate) fn new(call: CallId, id: SourceId, shared: Arc<SourceShared>) -> Self {
        Self { call, id, shared }
    }

    /// The source's id (as in [`crate::Event::SourceEnded`]).
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// The call this source plays in.
    pub fn call(&self) -> CallId {
        self.call
    }

    /// Sets the linear gain (1.0 = unchanged, 0.0 = mute, at most [`MAX_VOLUME`]; NaN counts as
    /// 0). The mixer ramps to it over one frame, so changes never click.
    pub fn set_volume(&self, volume: f32) {
        self.shared
            .volume_bits
            .store(sanitize_volume(volume).to_bits(), Ordering::Relaxed);
    }

    /// The volume last set (the target the mixer ramps to).
    pub fn volume(&self) -> f32 {
        self.shared.volume()
    }

    /// Fades out over one frame and stops consuming input until [`SourceHandle::resume`].
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Relaxed);
    }

    /// Fades back in over one frame.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// Whether [`SourceHandle::pause`] is in effect.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Relaxed)
    }

    /// Fades out over one frame and ends the source, discarding what is still buffered.
    pub fn stop(&self) {
        self.shared.stop_requested.store(true, Ordering::Relaxed);
    }

    /// Whether the source has ended (finished, stopped, failed, or its call was removed).
    pub fn is_ended(&self) -> bool {
        self.shared.is_ended()
    }

    /// Where playback is in the input: the start position plus 20 ms per mixed frame, moved by
    /// seeks (and wrapped at the end of a looping input of known length).
    pub fn position(&self) -> Duration {
        let position = self.shared.seek.position();
        match self.duration() {
            Some(duration)
                if self.shared.looping.load(Ordering::Relaxed) && !duration.is_zero() =>
            {
                Duration::from_micros(
                    (position.as_micros() % duration.as_micros())
                        .try_into()
                        .unwrap_or(0),
                )
            }
            _ => position,
        }
    }

    /// Moves playback to `to` while the call keeps playing: the decoder repositions and
    /// refills, and the mixer drops what was buffered before, so the next audio heard is from
    /// `to` (faded in over one frame). Past the end, the source finishes. Only inputs that can
    /// reposition support it (files, and HTTP streams whose server accepts range requests).
    pub fn seek(&self, to: Duration) -> Result<()> {
        if !self.is_seekable() {
            return Err(Error::NotSeekable(self.id));
        }
        if self.is_ended() {
            return Err(Error::SourceEnded);
        }
        self.shared.seek.request(to);
        if let Some(thread) = self.shared.decoder_thread.get() {
            thread.unpark();
        }
        Ok(())
    }

    /// Whether [`SourceHandle::seek`] is available for this source.
    pub fn is_seekable(&self) -> bool {
        self.shared.seekable.load(Ordering::Acquire)
    }

    /// The child process's id, for a source playing a command's output.
    pub fn process_id(&self) -> Option<u32> {
        match self.shared.process_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// The input's length, when known (files whose container states it).
    pub fn duration(&self) -> Option<Duration> {
        self.shared.duration()
    }

    /// The source's counters now.
    pub fn stats(&self) -> SourceStats {
        SourceStats {
            frames_mixed: self.shared.frames_mixed.load(Ordering::Relaxed),
            underruns: self.shared.underruns.load(Ordering::Relaxed),
            latency_dropped: Duration::from_micros(
                self.shared.latency_dropped_us.load(Ordering::Relaxed),
            ),
            ended: self.shared.is_ended(),
        }
    }
}

/// Why a source left its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// Its producer finished and everything buffered was played.
    Finished,
    /// [`SourceHandle::stop`] was called.
    Stopped,
    /// Its call was removed.
    CallRemoved,
    /// Its input could not be read or decoded any further (an [`crate::Event::SourceError`]
    /// came first).
    Failed,
}

/// What the slot's input is: PCM through an optional resampler, or pre-encoded Opus.
enum Input {
    Pcm {
        ring: rtrb::Consumer<f32>,
        resampler: SourceResampler,
    },
    Opus {
        ring: PacketConsumer<(), PRIME_PACKETS>,
        /// Only while the source is mixed (see [`crate::pool`]): a passed-through source has
        /// none, and takes a spare one when it leaves passthrough.
        decoder: Option<PooledDecoder>,
        /// What keeps the decoder in step with packets that were passed through undecoded.
        resync: OpusResync,
    },
}

/// Packets passed through since the decoder last ran, kept to bring the decoder up to date
/// when the source leaves passthrough.
///
/// Opus decoders carry state from packet to packet (CELT predicts each band's energy from the
/// previous frame and overlaps its windows with it), so a decoder that skipped the passthrough
/// packets decodes the first mixed frames too quietly and without the overlap: measured on a
/// 400 Hz tone, up to 25 % low for three frames (see the mixing test
/// `leaving_and_rejoining_passthrough_keeps_the_level_and_does_not_click`). Two ways to avoid
/// it: decode every passthrough packet (a libopus decode per frame on every passthrough call,
/// forever — the cost passthrough exists to avoid), or keep the last packets and decode them only when
/// the source leaves passthrough. The latter is used, and [`PRIME_PACKETS`] decodes once per
/// switch. Measured in that test: catching up on one packet still left a dip to 34 % (CELT's
/// energy prediction halves an error per frame); two and four packets both keep the level
/// within the ramp. The packets stay where they are, in the source's ring, which keeps the
/// last ones taken (see [`crate::packets`]): a copy of them in every Opus source was 2.6 KB of
/// each passthrough call's memory, rewritten every tick.
pub(crate) struct OpusResync {
    /// How many of the packets the ring keeps (the newest ones) were passed through since the
    /// decoder last ran.
    recent_len: usize,
    /// The next packet is decoded ahead, for a call going back to passthrough (into its
    /// decoder's `ahead`, see [`crate::pool::SourceDecoder`]).
    ahead_ready: bool,
}

/// The decoded audio of the packets a source passed through last, made in the tick it leaves
/// passthrough and read by its call's encoder in that same tick (see
/// [`crate::mixer::TickBuffers`]): one per mixer thread rather than 15 KB in every Opus
/// source, which a passthrough call never uses.
pub(crate) struct PassthroughTail {
    older: MixFrame,
    newest: MixFrame,
    /// How many of `older`/`newest` hold audio this tick (0: no source left passthrough).
    decoded: usize,
}

impl PassthroughTail {
    pub(crate) fn new() -> Self {
        Self {
            older: [0.0; crate::pcm::MIX_FRAME_LEN],
            newest: [0.0; crate::pcm::MIX_FRAME_LEN],
            decoded: 0,
        }
    }

    /// Forgets the last tick's audio; called as each call's tick starts.
    pub(crate) fn clear(&mut self) {
        self.decoded = 0;
    }

    /// The decoded audio of the last passed-through packets, oldest first (`None` where there
    /// were fewer), when a source left passthrough in this tick: what the listener heard just
    /// before.
    pub(crate) fn frames(&self) -> Option<(Option<&MixFrame>, &MixFrame)> {
        match self.decoded {
            0 => None,
            1 => Some((None, &self.newest)),
            _ => Some((Some(&self.older), &self.newest)),
        }
    }
}

/// Passed-through packets decoded to catch the decoder up when a source leaves passthrough.
pub(crate) const PRIME_PACKETS: usize = 2;

impl Input {
    fn available_frames(&self) -> usize {
        match self {
            Input::Pcm { ring, resampler } => ring.slots() / resampler.channels(),
            Input::Opus { ring, .. } => ring.len() * FRAME_SAMPLES,
        }
    }

    fn needed_frames(&self) -> usize {
        match self {
            Input::Pcm { resampler, .. } => resampler.input_frames_next(),
            Input::Opus { .. } => FRAME_SAMPLES,
        }
    }

    /// Drops about `frames` input frames, oldest first (whole packets for Opus); returns the
    /// items (samples or packets) dropped.
    fn discard_frames(&mut self, frames: usize) -> usize {
        let items = match self {
            Input::Pcm { resampler, .. } => frames.saturating_mul(resampler.channels()),
            Input::Opus { .. } => frames / FRAME_SAMPLES,
        };
        self.discard(items as u64)
    }

    /// Drops up to `items` buffered samples or packets (stale after a seek) and the state
    /// built from them. Returns how many were dropped.
    fn discard(&mut self, items: u64) -> usize {
        match self {
            Input::Pcm { ring, resampler } => {
                let count = ring
                    .slots()
                    .min(usize::try_from(items).unwrap_or(usize::MAX));
                if let Ok(chunk) = ring.read_chunk(count) {
                    chunk.commit_all();
                }
                resampler.reset();
                count
            }
            Input::Opus {
                ring,
                decoder,
                resync,
            } => {
                let count = ring.discard(usize::try_from(items).unwrap_or(usize::MAX));
                if let Some(decoder) = decoder {
                    let _ = audiopus::coder::GenericCtl::reset_state(&mut decoder.decoder);
                }
                resync.recent_len = 0;
                resync.ahead_ready = false;
                count
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing played yet: waits until a whole frame of input is buffered, so a fresh source
    /// does not count underruns while its producer starts up.
    Prebuffering,
    Playing,
}

/// What a source does in one tick, decided before any audio is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Step {
    /// Render a frame, ramping the gain from `from` to `to` across it.
    Render { from: f32, to: f32 },
    /// Contribute nothing this tick (prebuffering or paused).
    Silent,
    /// Keep the call's stream going with silence: the source is refilling after a seek.
    Gap,
    /// Leave the call.
    Ended(EndReason),
}

/// The mixer-side state of one source. Built on the control side, moved to the mixer thread
/// through a lock-free queue, and moved back for dropping, so the real-time path never
/// allocates or frees.
pub(crate) struct SourceSlot {
    pub(crate) id: SourceId,
    pub(crate) shared: Arc<SourceShared>,
    input: Input,
    gain: f32,
    phase: Phase,
    /// Zero-input ticks still to render after the producer finished, so the resampler's delay
    /// line is flushed and the end of the audio is not cut off.
    tail_ticks: u32,
    /// What was read from the ring, to apply seek marks.
    cursor: SeekCursor,
    /// Input frames per second (48,000 for Opus), to tell how long the buffered input lasts.
    rate: u32,
    /// A queue crossfade's gain on top of the volume, and its change per tick.
    fade: f32,
    fade_step: f32,
    /// A seek dropped the buffered input; silence until a whole frame of new input is there.
    refilling: bool,
    /// Live sources only (see [`SourceOptions::latency_cap`]).
    latency_cap: Option<LatencyCap>,
    /// `gain` and `fade` before the last [`SourceSlot::step`], for
    /// [`SourceSlot::undo_ramp`].
    before_step: (f32, f32),
}

/// Everything created for a new PCM source: the slot for the mixer and the user's ends.
pub(crate) struct NewPcmSource {
    pub(crate) slot: Box<SourceSlot>,
    pub(crate) writer: PcmWriter,
    pub(crate) shared: Arc<SourceShared>,
}

/// Everything created for a new Opus source.
pub(crate) struct NewOpusSource {
    pub(crate) slot: Box<SourceSlot>,
    pub(crate) writer: OpusWriter,
    pub(crate) shared: Arc<SourceShared>,
}

/// Options for a new source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceOptions {
    /// How much audio the ring holds: the most a producer can be ahead of the mixer.
    pub buffer: Duration,
    /// Initial linear gain.
    pub volume: f32,
    /// Start paused.
    pub paused: bool,
    /// For live writers: the most queueing a source may keep. Each producer underrun or mixer
    /// stall leaves the rest of the stream queued 20 ms later; when the queue never drained
    /// below this for a second, its oldest audio is dropped down to half of it (counted in
    /// [`SourceStats::latency_dropped`]). A writer that ever finds the ring full is writing
    /// ahead on purpose and is left alone. `None` keeps every sample. Files, commands and HTTP
    /// streams never use it.
    pub latency_cap: Option<Duration>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            buffer: Duration::from_millis(200),
            volume: 1.0,
            paused: false,
            latency_cap: Some(Duration::from_millis(60)),
        }
    }
}

impl SourceSlot {
    pub(crate) fn new_pcm(
        id: SourceId,
        format: PcmFormat,
        options: &SourceOptions,
    ) -> Result<NewPcmSource> {
        let resampler = SourceResampler::new(format)?;
        // At least two mixer frames of input, so a producer that writes exactly one frame per
        // tick never sees a full ring.
        let minimum = resampler.input_frames_max() * usize::from(format.channels()) * 2;
        let capacity = format.samples_in(options.buffer).max(minimum);
        let (producer, consumer) = rtrb::RingBuffer::new(capacity);
        let shared = Arc::new(SourceShared::new(options.volume, options.paused));
        let tail_ticks = resampler.tail_ticks();
        let slot = Box::new(SourceSlot {
            id,
            shared: Arc::clone(&shared),
            input: Input::Pcm {
                ring: consumer,
                resampler,
            },
            gain: 0.0,
            phase: Phase::Prebuffering,
            tail_ticks,
            cursor: SeekCursor::default(),
            rate: format.sample_rate(),
            fade: 1.0,
            fade_step: 0.0,
            refilling: false,
            latency_cap: options.latency_cap.map(|cap| {
                LatencyCap::new(format.samples_in(cap) / usize::from(format.channels()))
            }),
            before_step: (0.0, 1.0),
        });
        let writer = PcmWriter::new(producer, format, Arc::clone(&shared));
        Ok(NewPcmSource {
            slot,
            writer,
            shared,
        })
    }

    /// A pre-encoded Opus source, without a decoder: the control side gives it one when it
    /// knows the source will be mixed ([`SourceSlot::install_decoder`]), else it takes a spare
    /// one from its mixer if it ever leaves passthrough (see [`crate::pool`]).
    pub(crate) fn new_opus(id: SourceId, options: &SourceOptions) -> Result<NewOpusSource> {
        let packets = (options.buffer.as_millis() / 20).max(2) as usize;
        let (producer, consumer) = packet_ring(packets);
        let shared = Arc::new(SourceShared::new(options.volume, options.paused));
        let slot = Box::new(SourceSlot {
            id,
            shared: Arc::clone(&shared),
            input: Input::Opus {
                ring: consumer,
                decoder: None,
                resync: OpusResync {
                    recent_len: 0,
                    ahead_ready: false,
                },
            },
            gain: 0.0,
            phase: Phase::Prebuffering,
            tail_ticks: 0,
            cursor: SeekCursor::default(),
            rate: crate::pcm::MIX_RATE,
            fade: 1.0,
            fade_step: 0.0,
            refilling: false,
            latency_cap: options.latency_cap.map(|cap| {
                LatencyCap::new(
                    usize::try_from(cap.as_micros() * u128::from(crate::pcm::MIX_RATE) / 1_000_000)
                        .unwrap_or(usize::MAX),
                )
            }),
            before_step: (0.0, 1.0),
        });
        let writer = OpusWriter::new(producer, Arc::clone(&shared));
        Ok(NewOpusSource {
            slot,
            writer,
            shared,
        })
    }

    /// Ticks of audio left when the input is complete (its producer finished), else `None`.
    pub(crate) fn remaining_ticks(&self) -> Option<u32> {
        if !self.shared.finished.load(Ordering::Acquire) {
            return None;
        }
        let frames = self.input.available_frames() as u64;
        Some((frames * 50 / u64::from(self.rate.max(1))) as u32)
    }

    /// Starts a queue crossfade: in from silence, or out to silence, over `ticks` ticks.
    pub(crate) fn fade(&mut self, ticks: u32, fade_in: bool) {
        let step = 1.0 / ticks.max(1) as f32;
        if fade_in {
            self.fade = 0.0;
            self.fade_step = step;
        } else {
            self.fade_step = -step;
        }
    }

    pub(crate) fn is_opus(&self) -> bool {
        matches!(self.input, Input::Opus { .. })
    }

    /// Decides what this source does this tick and updates its counters. Reads only atomics
    /// and ring fill levels.
    pub(crate) fn step(&mut self) -> Step {
        let shared = &self.shared;
        let stop = shared.stop_requested.load(Ordering::Relaxed);
        let paused = shared.paused.load(Ordering::Relaxed);
        if let Some(stale) = self.cursor.poll(&shared.seek) {
            let dropped = self.input.discard(stale);
            self.cursor.consumed(dropped);
            self.refilling = true;
            if let Some(cap) = &mut self.latency_cap {
                cap.restart();
            }
            // The new position fades in over a frame instead of jumping mid-waveform.
            self.gain = 0.0;
        }
        // Acquire before reading the fill level: samples written before `finish` are visible.
        let finished = shared.finished.load(Ordering::Acquire);
        let available = self.input.available_frames();
        let needed = self.input.needed_frames();

        if stop && (self.gain == 0.0 || self.phase == Phase::Prebuffering) {
            return Step::Ended(EndReason::Stopped);
        }
        if self.refilling {
            if available < needed && !finished {
                return if self.phase == Phase::Playing {
                    Step::Gap
                } else {
                    Step::Silent
                };
            }
            self.refilling = false;
        }
        if self.phase == Phase::Prebuffering {
            if available == 0 && finished {
                return Step::Ended(shared.end_of_input());
            }
            if available < needed && !finished {
                return Step::Silent;
            }
            self.phase = Phase::Playing;
            // The first frame starts at the target gain: fading in from silence would alter
            // the start of the producer's audio.
            self.gain = if paused { 0.0 } else { shared.volume() };
        }
        if paused && !stop && self.gain == 0.0 {
            if let Some(cap) = &mut self.latency_cap {
                cap.restart();
            }
            return Step::Silent;
        }
        if !finished {
            Self::cap_latency(
                &mut self.latency_cap,
                &mut self.input,
                &mut self.cursor,
                shared,
                self.rate,
                (available, needed),
            );
        }
        if available == 0 && finished {
            if self.tail_ticks == 0 {
                return Step::Ended(shared.end_of_input());
            }
            self.tail_ticks -= 1;
        } else if available < needed && !finished {
            shared.underruns.fetch_add(1, Ordering::Relaxed);
            // The shortfall plays as silence: the rest of the input is that much later.
            if let Some(cap) = &mut self.latency_cap {
                cap.owe(needed - available);
            }
        }
        let target = if stop || paused { 0.0 } else { shared.volume() };
        self.before_step = (self.gain, self.fade);
        let from = std::mem::replace(&mut self.gain, target);
        shared.frames_mixed.fetch_add(1, Ordering::Relaxed);
        shared.seek.advance(crate::frame::FRAME_DURATION);
        let fade_from = self.fade;
        self.fade = (self.fade + self.fade_step).clamp(0.0, 1.0);
        Step::Render {
            from: from * fade_from,
            to: target * self.fade,
        }
    }

    /// Takes back the gain change of the last [`Step::Render`]: the frame was passed through
    /// unchanged instead (no codec was spare, see [`crate::pool`]), so the ramp starts again
    /// next tick from where it was.
    pub(crate) fn undo_ramp(&mut self) {
        (self.gain, self.fade) = self.before_step;
    }

    /// Whether the source starts below unity or paused, so it is mixed from its first frame.
    pub(crate) fn starts_mixed(&self) -> bool {
        self.shared.volume() != 1.0 || self.shared.paused.load(Ordering::Relaxed)
    }

    /// Whether this source would have to take a spare decoder to be mixed.
    pub(crate) fn needs_decoder(&self) -> bool {
        matches!(self.input, Input::Opus { decoder: None, .. })
    }

    /// Gives the source a decoder (a spare from its mixer).
    pub(crate) fn install_decoder(&mut self, mut new: PooledDecoder) -> Option<PooledDecoder> {
        match &mut self.input {
            Input::Opus { decoder, .. } if decoder.is_none() => {
                prepare_decoder(&mut new);
                *decoder = Some(new);
                None
            }
            _ => Some(new),
        }
    }

    /// The source's decoder, once passing through has kept enough packets that leaving
    /// passthrough can bring a fresh decoder up to date ([`PRIME_PACKETS`]): from then on the
    /// decoder's own state is never read again before a reset-equivalent catch-up.
    pub(crate) fn take_settled_decoder(&mut self) -> Option<PooledDecoder> {
        match &mut self.input {
            Input::Opus {
                decoder, resync, ..
            } if resync.recent_len == PRIME_PACKETS && !resync.ahead_ready => decoder.take(),
            _ => None,
        }
    }

    /// Whether a passed-through source keeps enough packets to prime a fresh encoder when it
    /// leaves passthrough (see [`crate::mixer`]'s `prime_encoder`).
    pub(crate) fn passthrough_settled(&self) -> bool {
        matches!(&self.input, Input::Opus { resync, .. }
            if resync.recent_len == PRIME_PACKETS && !resync.ahead_ready)
    }

    /// The mixer skipped `ticks` ticks (a stall): a live producer's input is that much later.
    pub(crate) fn note_skipped(&mut self, ticks: u64) {
        if let Some(cap) = &mut self.latency_cap {
            let per_tick = self.input.needed_frames() as u64;
            cap.owe(usize::try_from(ticks.saturating_mul(per_tick)).unwrap_or(usize::MAX));
        }
    }

    /// Applies the latency cap of a live source (see [`crate::latency`]). Takes the fields it
    /// needs, so [`SourceSlot::step`] can call it while it holds `shared`.
    fn cap_latency(
        slot_cap: &mut Option<LatencyCap>,
        input: &mut Input,
        cursor: &mut SeekCursor,
        shared: &SourceShared,
        rate: u32,
        (available, needed): (usize, usize),
    ) {
        let Some(cap) = slot_cap else {
            return;
        };
        if shared.ahead.load(Ordering::Relaxed) {
            *slot_cap = None;
            return;
        }
        let Some(excess) = cap.observe(available, needed) else {
            return;
        };
        let dropped = input.discard_frames(excess);
        cursor.consumed(dropped);
        let frames = available.saturating_sub(input.available_frames()) as u64;
        shared.latency_dropped_us.fetch_add(
            frames * 1_000_000 / u64::from(rate.max(1)),
            Ordering::Relaxed,
        );
    }

    /// Renders this tick's audio as 48 kHz stereo into `out`, consuming up to one frame of input
    /// and filling any shortfall with silence. An Opus source leaving passthrough decodes the
    /// packets it passed through last into `tail` (when no other source of the call did so this
    /// tick), for its call's encoder.
    pub(crate) fn render(&mut self, out: &mut MixFrame, tail: &mut PassthroughTail) {
        match &mut self.input {
            Input::Pcm { ring, resampler } => {
                let read = resampler.render(ring, out);
                self.cursor.consumed(read);
            }
            Input::Opus {
                ring,
                decoder,
                resync,
            } => {
                // Catch up on the packets passed through since the decoder last ran. Only one
                // source of a call passes through (a lone one), so `tail` is normally free; if
                // it is not, the decoder still catches up, into `out`, which is overwritten below.
                let keep = tail.decoded == 0;
                for i in 0..resync.recent_len {
                    let target = match (keep, i + 1 == resync.recent_len) {
                        (true, true) => &mut tail.newest,
                        (true, false) => &mut tail.older,
                        (false, _) => &mut *out,
                    };
                    let age = resync.recent_len - 1 - i;
                    let decoder = decoder.as_deref_mut().map(|d| &mut d.decoder);
                    ring.kept(age, |packet| decode_into(decoder, Some(packet), target));
                }
                if keep {
                    tail.decoded = resync.recent_len;
                }
                resync.recent_len = 0;
                if resync.ahead_ready {
                    // Decoded last tick already (see `decode_ahead`): only consume it.
                    resync.ahead_ready = false;
                    self.cursor.consumed(ring.discard(1));
                    match decoder {
                        Some(decoder) => out.copy_from_slice(&decoder.ahead[..]),
                        // Not reached: a source gives its decoder back only with nothing
                        // decoded ahead.
                        None => out.fill(0.0),
                    }
                    return;
                }
                let mut packet = OpusPacket::EMPTY;
                let popped = ring.pop_into(&mut packet);
                self.cursor.consumed(usize::from(popped));
                // A missing packet (`None`): libopus conceals the gap.
                decode_into(
                    decoder.as_deref_mut().map(|d| &mut d.decoder),
                    (popped && packet.len > 0).then(|| packet.bytes()),
                    out,
                );
            }
        }
    }

    /// The next packet's audio, once [`SourceSlot::decode_ahead`] has decoded it.
    pub(crate) fn ahead(&self) -> Option<&MixFrame> {
        match &self.input {
            Input::Opus {
                resync,
                decoder: Some(decoder),
                ..
            } if resync.ahead_ready => Some(&decoder.ahead),
            _ => None,
        }
    }

    /// Decodes the next queued packet ahead of time, for a call about to go back to
    /// passthrough: its encoder needs the audio right after this frame to end the mixed
    /// stretch where the passed-through packets continue. `None` when no packet is queued
    /// (or, not reached, the source holds no decoder: the mixer gives it one to mix it).
    pub(crate) fn decode_ahead(&mut self) -> Option<&MixFrame> {
        let Input::Opus {
            ring,
            decoder: Some(decoder),
            resync,
        } = &mut self.input
        else {
            return None;
        };
        if !resync.ahead_ready {
            let mut packet = OpusPacket::EMPTY;
            if !ring.peek_into(&mut packet) {
                return None;
            }
            let decoder = &mut **decoder;
            decode_into(
                Some(&mut decoder.decoder),
                (packet.len > 0).then(|| packet.bytes()),
                &mut decoder.ahead,
            );
            resync.ahead_ready = true;
        }
        Some(&decoder.ahead)
    }

    /// Passthrough: copies this tick's packet into `frame` without decoding. A missing packet
    /// becomes the 20 ms silence packet so the stream keeps its timing.
    pub(crate) fn render_passthrough(&mut self, frame: &mut EncodedFrame) {
        let Input::Opus { ring, resync, .. } = &mut self.input else {
            return;
        };
        let opus = frame.buffer_mut();
        let copied = ring.read(true, |_, packet| {
            opus[..packet.len()].copy_from_slice(packet);
            packet.len()
        });
        self.cursor.consumed(usize::from(copied.is_some()));
        // `recent_len` counts the newest packets the ring keeps, so every packet taken here
        // either counts or resets it.
        if resync.ahead_ready {
            // The decoder has seen this packet already (and none since it last ran).
            resync.ahead_ready = false;
            resync.recent_len = 0;
        } else {
            match copied {
                Some(0) => resync.recent_len = 0,
                Some(_) => resync.recent_len = (resync.recent_len + 1).min(PRIME_PACKETS),
                None => {}
            }
        }
        // A missing packet (`None`), or an empty one (not reached: writers refuse them), becomes
        // the silence packet.
        let len = match copied {
            Some(len) if len > 0 => len,
            _ => {
                opus[..OPUS_SILENCE.len()].copy_from_slice(&OPUS_SILENCE);
                OPUS_SILENCE.len()
            }
        };
        frame.kind = FrameKind::Audio;
        frame.set_len(len);
    }

    /// True when the source would play unchanged this tick: unity gain with no ramp.
    pub(crate) fn is_unity(step: Step) -> bool {
        matches!(step, Step::Render { from, to } if from == 1.0 && to == 1.0)
    }
}

/// Decodes one packet (or conceals a missing one) into `out`, silence where libopus fails or
/// no decoder is held (the mixer takes one before it renders an Opus source, so that is a
/// broken invariant, heard as silence rather than a panic).
fn decode_into(
    decoder: Option<&mut audiopus::coder::Decoder>,
    packet: Option<&[u8]>,
    out: &mut MixFrame,
) {
    let Some(decoder) = decoder else {
        out.fill(0.0);
        return;
    };
    let decoded = match audiopus::MutSignals::try_from(out.as_mut_slice()) {
        Ok(signals) => match packet {
            Some(bytes) => audiopus::packet::Packet::try_from(bytes)
                .and_then(|packet| decoder.decode_float(Some(packet), signals, false)),
            None => decoder.decode_float(None, signals, false),
        },
        Err(error) => Err(error),
    };
    let frames = decoded.unwrap_or(0).min(FRAME_SAMPLES);
    out[frames * 2..].fill(0.0);
}
