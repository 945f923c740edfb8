//! The clock-free mixer core: every call's sources resampled, mixed with ramped gains, limited,
//! encoded, and queued as frames. [`Mixer::tick`] runs one 20 ms frame for every call; the
//! mixer thread (see [`crate::Engine`]) calls it on the clock, tests and offline rendering call it
//! as fast as they like.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use audiopus::coder::Encoder;

use crate::event::Event;
use crate::frame::{EncodedFrame, FRAME_SAMPLES, FrameKind};
use crate::limiter::Limiter;
use crate::pcm::{MIX_FRAME_LEN, MixFrame};
use crate::source::{EndReason, SourceSlot, Step};
use crate::stats::{MixerCounters, MixerHistograms, StatsPublisher};
use crate::{CallId, SourceId};

/// Work for the mixer, built on the control side (where allocation is allowed).
pub(crate) enum Command {
    AddCall(Box<CallSlot>),
    RemoveCall(CallId),
    AddSource(CallId, Box<SourceSlot>),
    /// Points the call at a new frame queue (its consumer moved to a new sender session).
    ReplaceFrames(CallId, Box<rtrb::Producer<EncodedFrame>>),
}

/// Slots the mixer no longer needs, sent back to be dropped off the real-time thread.
#[allow(
    dead_code,
    reason = "the slots are only held so that they are dropped by the receiver"
)]
pub(crate) enum Garbage {
    Call(Box<CallSlot>),
    Source { call: CallId, slot: Box<SourceSlot> },
    Frames(Box<rtrb::Producer<EncodedFrame>>),
}

/// Call settings the control side may change while the call plays.
#[derive(Debug)]
pub(crate) struct CallShared {
    master_volume_bits: AtomicU32,
}

impl CallShared {
    pub(crate) fn new() -> Self {
        Self {
            master_volume_bits: AtomicU32::new(1.0_f32.to_bits()),
        }
    }

    pub(crate) fn set_master_volume(&self, volume: f32) {
        let volume = if volume.is_nan() {
            0.0
        } else {
            volume.clamp(0.0, crate::source::MAX_VOLUME)
        };
        self.master_volume_bits
            .store(volume.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn master_volume(&self) -> f32 {
        f32::from_bits(self.master_volume_bits.load(Ordering::Relaxed))
    }
}

/// The mixer-side state of one call.
pub(crate) struct CallSlot {
    pub(crate) id: CallId,
    shared: Arc<CallShared>,
    // Boxed on purpose: slots arrive boxed from the control side and leave boxed as garbage;
    // unboxing them here would free the box on the real-time thread.
    #[allow(clippy::vec_box)]
    sources: Vec<Box<SourceSlot>>,
    encoder: Encoder,
    frames: rtrb::Producer<EncodedFrame>,
    mix: Box<MixFrame>,
    scratch: Box<MixFrame>,
    frame: Box<EncodedFrame>,
    master_gain: f32,
    limiter: Limiter,
    /// Whether the last tick produced audio, to mark the end of a stretch of frames.
    producing: bool,
}

impl CallSlot {
    pub(crate) fn new(
        id: CallId,
        shared: Arc<CallShared>,
        encoder: Encoder,
        frames: rtrb::Producer<EncodedFrame>,
        max_sources: usize,
    ) -> Box<Self> {
        Box::new(Self {
            id,
            shared,
            sources: Vec::with_capacity(max_sources),
            encoder,
            frames,
            mix: Box::new([0.0; MIX_FRAME_LEN]),
            scratch: Box::new([0.0; MIX_FRAME_LEN]),
            frame: Box::new(EncodedFrame::new(0, FrameKind::Audio)),
            master_gain: 1.0,
            limiter: Limiter::default(),
            producing: false,
        })
    }

    fn tick(&mut self, tick: u64, encode: bool, out: &mut Outboxes<'_>) {
        if self.sources.is_empty() && !self.producing {
            return;
        }
        let master_target = self.shared.master_volume();
        // A lone pre-encoded source at unity gain is sent as it is: no decode, no re-encode.
        let passthrough_possible = self.sources.len() == 1
            && self.master_gain == 1.0
            && master_target == 1.0
            && self.sources[0].is_opus();
        let mut mixed_any = false;
        let mut passed_through = false;
        self.mix.fill(0.0);

        let mut index = 0;
        while index < self.sources.len() {
            let source = &mut self.sources[index];
            match source.step() {
                Step::Ended(reason) => {
                    let slot = self.sources.swap_remove(index);
                    out.end_source(self.id, slot, reason);
                    continue;
                }
                Step::Silent => {}
                step @ Step::Render { from, to } => {
                    if passthrough_possible && SourceSlot::is_unity(step) {
                        source.render_passthrough(&mut self.frame);
                        passed_through = true;
                    } else {
                        source.render(&mut self.scratch);
                        mix_with_ramp(&mut self.mix, &self.scratch, from, to);
                        mixed_any = true;
                    }
                }
            }
            index += 1;
        }

        if passed_through {
            self.frame.tick = tick;
            out.send_frame(&mut self.frames, &self.frame);
            MixerCounters::bump(&out.counters.frames_passed_through);
            self.producing = true;
        } else if mixed_any {
            apply_ramp(&mut self.mix, self.master_gain, master_target);
            self.master_gain = master_target;
            self.limiter.process(&mut self.mix);
            if encode {
                self.encode_and_send(tick, out);
            } else {
                self.frame.set_len(0);
                self.frame.tick = tick;
                out.send_frame(&mut self.frames, &self.frame);
            }
            self.producing = true;
        } else if self.producing {
            self.producing = false;
            self.master_gain = master_target;
            out.send_frame(
                &mut self.frames,
                &EncodedFrame::new(tick, FrameKind::EndOfStream),
            );
        } else {
            self.master_gain = master_target;
        }
    }

    fn encode_and_send(&mut self, tick: u64, out: &mut Outboxes<'_>) {
        let started = Instant::now();
        let encoded = self
            .encoder
            .encode_float(&self.mix[..], &mut self.frame.buffer_mut()[..]);
        out.histograms
            .encode_us
            .saturating_record(started.elapsed().as_micros() as u64);
        match encoded {
            Ok(len) => {
                self.frame.set_len(len);
                self.frame.kind = FrameKind::Audio;
                self.frame.tick = tick;
                out.send_frame(&mut self.frames, &self.frame);
                MixerCounters::bump(&out.counters.frames_encoded);
            }
            Err(_) => MixerCounters::bump(&out.counters.encode_errors),
        }
    }
}

/// Adds `input` scaled by a gain ramped linearly from `from` to `to` across the frame.
fn mix_with_ramp(mix: &mut MixFrame, input: &MixFrame, from: f32, to: f32) {
    if from == to {
        for (m, s) in mix.iter_mut().zip(input.iter()) {
            *m += s * to;
        }
        return;
    }
    let step = (to - from) / FRAME_SAMPLES as f32;
    for (i, (m, s)) in mix
        .chunks_exact_mut(2)
        .zip(input.chunks_exact(2))
        .enumerate()
    {
        let gain = from + step * i as f32;
        m[0] += s[0] * gain;
        m[1] += s[1] * gain;
    }
}

/// Scales `frame` in place by a gain ramped from `from` to `to`.
fn apply_ramp(frame: &mut MixFrame, from: f32, to: f32) {
    if from == 1.0 && to == 1.0 {
        return;
    }
    let step = (to - from) / FRAME_SAMPLES as f32;
    for (i, pair) in frame.chunks_exact_mut(2).enumerate() {
        let gain = from + step * i as f32;
        pair[0] *= gain;
        pair[1] *= gain;
    }
}

/// Where a tick's side effects go; borrowed from the mixer so calls can use them while the
/// mixer iterates over its calls.
struct Outboxes<'a> {
    events: &'a mut rtrb::Producer<Event>,
    garbage: &'a mut rtrb::Producer<Garbage>,
    histograms: &'a mut MixerHistograms,
    counters: &'a MixerCounters,
}

impl Outboxes<'_> {
    fn event(&mut self, event: Event) {
        if self.events.push(event).is_err() {
            MixerCounters::bump(&self.counters.events_dropped);
        }
    }

    fn send_frame(&mut self, frames: &mut rtrb::Producer<EncodedFrame>, frame: &EncodedFrame) {
        if frames.push(frame.clone()).is_err() {
            MixerCounters::bump(&self.counters.frames_dropped);
        }
    }

    fn end_source(&mut self, call: CallId, slot: Box<SourceSlot>, reason: EndReason) {
        slot.shared.mark_ended();
        let source: SourceId = slot.id;
        self.event(Event::SourceEnded {
            call,
            source,
            reason,
        });
        self.discard(Garbage::Source { call, slot });
    }

    fn discard(&mut self, garbage: Garbage) {
        if let Err(rtrb::PushError::Full(garbage)) = self.garbage.push(garbage) {
            // The ring is sized for every slot that can exist, so this means a broken
            // invariant; leaking beats freeing memory on the real-time thread.
            std::mem::forget(garbage);
        }
    }
}

/// The clock-free mixer core.
///
/// Obtain one from [`crate::Engine::manual`] to drive it yourself (offline rendering, tests), or
/// let [`crate::Engine::new`] run it on its real-time mixer thread.
pub struct Mixer {
    // Boxed for the same reason as `CallSlot::sources`.
    #[allow(clippy::vec_box)]
    calls: Vec<Box<CallSlot>>,
    commands: rtrb::Consumer<Command>,
    events: rtrb::Producer<Event>,
    garbage: rtrb::Producer<Garbage>,
    stats: StatsPublisher,
    counters: Arc<MixerCounters>,
    next_tick: u64,
    encode: bool,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("calls", &self.calls.len())
            .field("next_tick", &self.next_tick)
            .finish()
    }
}

impl Mixer {
    pub(crate) fn new(
        max_calls: usize,
        commands: rtrb::Consumer<Command>,
        events: rtrb::Producer<Event>,
        garbage: rtrb::Producer<Garbage>,
        stats: StatsPublisher,
        counters: Arc<MixerCounters>,
    ) -> Self {
        Self {
            calls: Vec::with_capacity(max_calls),
            commands,
            events,
            garbage,
            stats,
            counters,
            next_tick: 0,
            encode: true,
        }
    }

    /// For benchmarks: with `false`, frames are mixed and limited but not Opus-encoded (they
    /// come out empty), so the cost of everything but libopus can be measured on its own.
    #[doc(hidden)]
    pub fn set_encoding(&mut self, encode: bool) {
        self.encode = encode;
    }

    /// Runs the next tick: applies pending commands, then builds one frame for every call that
    /// has something to play. Returns the tick's grid index.
    pub fn tick(&mut self) -> u64 {
        let tick = self.next_tick;
        self.run_tick(tick);
        tick
    }

    /// The grid index the next [`Mixer::tick`] will build.
    pub fn next_tick(&self) -> u64 {
        self.next_tick
    }

    /// Moves the mixer to grid index `tick` (the mixer thread does this when it starts and
    /// after it had to skip ticks).
    pub(crate) fn set_next_tick(&mut self, tick: u64) {
        self.next_tick = tick;
    }

    pub(crate) fn record_lateness(&mut self, micros: u64) {
        self.stats.local.lateness_us.saturating_record(micros);
    }

    pub(crate) fn run_tick(&mut self, tick: u64) {
        let started = Instant::now();
        let mut out = Outboxes {
            events: &mut self.events,
            garbage: &mut self.garbage,
            histograms: &mut self.stats.local,
            counters: &self.counters,
        };
        while let Ok(command) = self.commands.pop() {
            apply_command(&mut self.calls, command, tick, &mut out);
        }
        for call in self.calls.iter_mut() {
            call.tick(tick, self.encode, &mut out);
        }
        out.histograms
            .tick_us
            .saturating_record(started.elapsed().as_micros() as u64);
        self.stats.after_tick();
        MixerCounters::bump(&self.counters.ticks);
        self.next_tick = tick + 1;
    }
}

#[allow(clippy::vec_box)] // see `Mixer::calls`
fn apply_command(
    calls: &mut Vec<Box<CallSlot>>,
    command: Command,
    tick: u64,
    out: &mut Outboxes<'_>,
) {
    match command {
        Command::AddCall(call) => {
            if calls.len() < calls.capacity() {
                calls.push(call);
            } else {
                // The control side counts calls, so this means a broken invariant.
                out.discard(Garbage::Call(call));
            }
        }
        Command::RemoveCall(id) => {
            let Some(index) = calls.iter().position(|call| call.id == id) else {
                return;
            };
            let mut call = calls.swap_remove(index);
            if call.producing {
                out.send_frame(
                    &mut call.frames,
                    &EncodedFrame::new(tick, FrameKind::EndOfStream),
                );
            }
            for source in call.sources.iter() {
                source.shared.mark_ended();
                out.event(Event::SourceEnded {
                    call: id,
                    source: source.id,
                    reason: EndReason::CallRemoved,
                });
            }
            out.discard(Garbage::Call(call));
            out.event(Event::CallRemoved { call: id });
        }
        Command::ReplaceFrames(id, mut frames) => {
            if let Some(call) = calls.iter_mut().find(|call| call.id == id) {
                std::mem::swap(&mut *frames, &mut call.frames);
                // A new queue starts a new stretch: the next audio frame starts speaking again.
                call.producing = false;
            }
            out.discard(Garbage::Frames(frames));
        }
        Command::AddSource(id, source) => match calls.iter_mut().find(|call| call.id == id) {
            Some(call) if call.sources.len() < call.sources.capacity() => call.sources.push(source),
            Some(_) => out.end_source(id, source, EndReason::Failed),
            None => out.end_source(id, source, EndReason::CallRemoved),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_are_linear_and_hit_their_end_points() {
        let mut mix = [0.0; MIX_FRAME_LEN];
        let input = [1.0; MIX_FRAME_LEN];
        mix_with_ramp(&mut mix, &input, 0.0, 1.0);
        assert_eq!(mix[0], 0.0);
        assert_eq!(mix[0], mix[1]);
        let last = mix[MIX_FRAME_LEN - 1];
        assert!((last - (1.0 - 1.0 / FRAME_SAMPLES as f32)).abs() < 1e-6);
        // No step larger than one ramp increment anywhere: no click.
        let largest_step = mix
            .chunks_exact(2)
            .map(|p| p[0])
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0_f32, f32::max);
        assert!(largest_step <= 1.0 / FRAME_SAMPLES as f32 + 1e-6);

        let mut frame = [0.5; MIX_FRAME_LEN];
        apply_ramp(&mut frame, 1.0, 0.0);
        assert_eq!(frame[0], 0.5);
        assert!(frame[MIX_FRAME_LEN - 1] < 0.001);
    }
}
