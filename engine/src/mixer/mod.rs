//! The clock-free mixer core: every call's sources resampled, mixed with ramped gains, limited,
//! encoded, and queued as frames. [`Mixer::tick`] runs one 20 ms frame for every call; the
//! mixer thread (see [`crate::Engine`]) calls it on the clock, tests and offline rendering call it
//! as fast as they like.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod calls;

use calls::Calls;

use crate::codec::OpusConfig;
use crate::event::Event;
use crate::frame::{EncodedFrame, FRAME_SAMPLES, FrameKind};
use crate::frame_queue::FrameSender;
use crate::limiter::Limiter;
use crate::overload::{self, Governor, Rung, Verdict};
use crate::pcm::{MIX_FRAME_LEN, MixFrame};
use crate::pool::{PooledDecoder, PooledEncoder, Spares, prepare_encoder};
use crate::rebalance::MixerLoad;
use crate::source::{EndReason, OPUS_SILENCE, PassthroughTail, SourceSlot, Step};
use crate::stats::{MixerCounters, MixerHistograms, StatsPublisher};
use crate::{CallId, SourceId};

/// Work for the mixer, built on the control side (where allocation is allowed).
pub(crate) enum Command {
    AddCall(Box<CallSlot>),
    RemoveCall(CallId),
    /// A source for the call, with an encoder when the control side knows the call will mix
    /// (see [`crate::pool`]); the call keeps it if it has none, else it becomes a spare.
    AddSource(CallId, Box<SourceSlot>, Option<PooledEncoder>),
    /// Points the call at a new frame queue (its consumer moved to a new sender session).
    ReplaceFrames(CallId, Box<FrameSender>),
    /// The call's next queued track, prebuffering until the current one ends (or until its
    /// crossfade starts); it starts at once when no track plays.
    QueueNext {
        call: CallId,
        slot: Box<SourceSlot>,
        crossfade_ticks: u32,
        /// As for [`Command::AddSource`].
        encoder: Option<PooledEncoder>,
    },
    /// Drops the call's next queued track, if any (the queue was cleared).
    ClearNext(CallId),
    /// After this tick's frame, hand the call to mixer `to` (see [`crate::rebalance`]).
    MoveCall {
        call: CallId,
        to: usize,
    },
    /// The call's packets are due this long (µs) after the grid's deadline: its phase in the
    /// sender's staggered grid. The mixer builds calls in phase order.
    SetPhase {
        call: CallId,
        phase_us: u32,
    },
}

/// Slots the mixer no longer needs, sent back to be dropped off the real-time thread.
#[allow(
    dead_code,
    reason = "the slots are only held so that they are dropped by the receiver"
)]
pub(crate) enum Garbage {
    Call(Box<CallSlot>),
    Source {
        call: CallId,
        slot: Box<SourceSlot>,
    },
    Frames(Box<FrameSender>),
    /// Codecs no call or source needs now and the mixer has no room to keep as spares: they
    /// go back to the control side's spares, or are dropped there.
    Encoder(PooledEncoder),
    Decoder(PooledDecoder),
    /// A [`Command::MoveCall`] went through: the call is on its way to mixer `to`.
    Moved {
        call: CallId,
        to: usize,
    },
    /// A [`Command::MoveCall`] could not be done (the call is gone, or the ring to the other
    /// mixer is full); the call stays where it was.
    MoveFailed {
        call: CallId,
    },
}

/// Call settings the control side may change while the call plays.
#[derive(Debug)]
pub(crate) struct CallShared {
    master_volume_bits: AtomicU32,
    /// What building the call's frame costs its mixer, a moving average in nanoseconds.
    cost_ns: AtomicU32,
}

impl CallShared {
    pub(crate) fn new() -> Self {
        Self {
            master_volume_bits: AtomicU32::new(1.0_f32.to_bits()),
            cost_ns: AtomicU32::new(0),
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

    /// What the call's frames cost its mixer thread per tick (nanoseconds, moving average).
    pub(crate) fn cost_ns(&self) -> u64 {
        u64::from(self.cost_ns.load(Ordering::Relaxed))
    }

    fn record_cost(&self, cost: Duration) {
        let new = cost.as_nanos().min(u128::from(u32::MAX)) as u32;
        let old = self.cost_ns.load(Ordering::Relaxed);
        self.cost_ns
            .store(old - old / 8 + new / 8, Ordering::Relaxed);
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
    /// Only while the call mixes (see [`crate::pool`]): taken from the mixer's spares when it
    /// starts, handed back once the call passes through again or falls idle.
    encoder: Option<PooledEncoder>,
    /// The settings a spare encoder is given when this call takes it.
    opus: OpusConfig,
    frames: FrameSender,
    master_gain: f32,
    limiter: Limiter,
    /// Whether the last tick produced audio, to mark the end of a stretch of frames.
    producing: bool,
    /// Whether the last tick's frame was passed through.
    passed_through: bool,
    /// How the encoder's output lines up with the source's packets.
    timing: Timing,
    /// The encoder's delay in 48 kHz sample frames (312 for libopus at 48 kHz).
    lookahead: usize,
    /// The queue's next track, built and prebuffering, not yet mixed.
    next: Option<Box<SourceSlot>>,
    /// The queue's track playing now.
    track: Option<SourceId>,
    /// A queue track fading out under the next one.
    fading_track: Option<SourceId>,
    /// Ticks the queue crossfades over (0: back to back).
    crossfade_ticks: u32,
    /// Where the call's Opus complexity stands under overload (see [`crate::overload`]).
    rung: Rung,
    /// The next tick to build: a call handed over from another mixer may find this one a tick
    /// behind or ahead (see [`crate::rebalance`]). 0 until the first tick.
    next_tick: u64,
    /// Just handed over from another mixer: its first tick here may have to catch one up.
    handed_over: bool,
    /// When its frames are due after the grid's deadline, in µs (see [`Command::SetPhase`]).
    phase_us: u32,
}

impl CallSlot {
    /// `lookahead` is the delay of an encoder with `opus`'s settings
    /// ([`OpusConfig::lookahead_samples`]).
    pub(crate) fn new(
        id: CallId,
        shared: Arc<CallShared>,
        opus: OpusConfig,
        lookahead: usize,
        frames: FrameSender,
        max_sources: usize,
    ) -> Box<Self> {
        Box::new(Self {
            id,
            shared,
            sources: Vec::with_capacity(max_sources),
            encoder: None,
            opus,
            frames,
            master_gain: 1.0,
            limiter: Limiter::default(),
            producing: false,
            passed_through: false,
            timing: Timing::Aligned { settled: true },
            lookahead: lookahead.min(FRAME_SAMPLES / 2),
            next: None,
            track: None,
            fading_track: None,
            crossfade_ticks: 0,
            rung: Rung::new(opus.complexity),
            next_tick: 0,
            handed_over: false,
            phase_us: 0,
        })
    }

    /// Whether the call has nothing to do until a command brings it something: no source, no
    /// queued track, its stretch of frames ended and its encoder handed back.
    fn is_idle(&self) -> bool {
        self.sources.is_empty() && !self.producing && self.next.is_none() && self.encoder.is_none()
    }

    /// Takes a spare encoder if the call holds none. False when none is spare.
    fn ensure_encoder(&mut self, out: &mut Outboxes<'_>) -> bool {
        if self.encoder.is_some() {
            return true;
        }
        let Some(mut encoder) = out.spares.take_encoder() else {
            return false;
        };
        prepare_encoder(&mut encoder, &self.opus, self.rung.complexity());
        self.encoder = Some(encoder);
        true
    }

    /// An encoder the control side sent with a command: kept if the call holds none.
    fn offer_encoder(&mut self, encoder: Option<PooledEncoder>, out: &mut Outboxes<'_>) {
        let Some(mut encoder) = encoder else {
            return;
        };
        if self.encoder.is_none() {
            prepare_encoder(&mut encoder, &self.opus, self.rung.complexity());
            self.encoder = Some(encoder);
        } else if let Err(encoder) = out.give_encoder(encoder) {
            // The garbage ring is sized for every slot and spare, so this is a broken
            // invariant; leaking beats freeing on the real-time thread.
            std::mem::forget(encoder);
        }
    }

    /// What mixing source `index` takes: the call's encoder and, for an Opus source, a
    /// decoder. False when a spare was missing (what could be taken is kept).
    fn ensure_codecs(&mut self, index: usize, out: &mut Outboxes<'_>) -> bool {
        if !self.ensure_encoder(out) {
            // Not a decoder either: it would sit unused until an encoder is spare.
            return false;
        }
        let source = &mut self.sources[index];
        !source.needs_decoder()
            || match out.spares.take_decoder() {
                Some(decoder) => {
                    // `None`: the source needed it, so it took it.
                    let _ = source.install_decoder(decoder);
                    true
                }
                None => false,
            }
    }

    /// Hands the call's encoder back (the call passes through or is idle). Kept when there
    /// is nowhere to put it without freeing on this thread.
    fn release_encoder(&mut self, out: &mut Outboxes<'_>) {
        if let Some(encoder) = self.encoder.take()
            && let Err(mut encoder) = out.give_encoder(encoder)
        {
            encoder.hold();
            self.encoder = Some(encoder);
        }
    }

    /// Starts the queue's next track in this tick: it joins the sources (at the end, so the
    /// tick's loop still reaches it) and the event says so. Returns whether one started.
    fn start_next_track(&mut self, out: &mut Outboxes<'_>) -> bool {
        let Some(next) = self.next.take() else {
            return false;
        };
        let id = next.id;
        if self.sources.len() == self.sources.capacity() {
            out.end_source(self.id, next, EndReason::Failed);
            return false;
        }
        self.sources.push(next);
        self.track = Some(id);
        out.event(Event::TrackStarted {
            call: self.id,
            source: id,
        });
        true
    }

    /// Whether the playing track is close enough to its end for the crossfade to start: its
    /// input is complete and what is left fits in the crossfade.
    fn crossfade_due(&self, index: usize) -> Option<u32> {
        let source = &self.sources[index];
        if self.crossfade_ticks == 0 || self.next.is_none() || Some(source.id) != self.track {
            return None;
        }
        source
            .remaining_ticks()
            .filter(|left| *left <= self.crossfade_ticks)
    }

    /// Builds the call's frame for `tick`; `rush` encodes it at the lowest complexity (see
    /// [`RUSH_COMPLEXITY`]). Returns whether it was Opus-encoded.
    fn tick(
        &mut self,
        tick: u64,
        encode: bool,
        rush: bool,
        work: &mut TickBuffers,
        out: &mut Outboxes<'_>,
    ) -> bool {
        if self.track.is_none() && self.next.is_some() {
            self.start_next_track(out);
        }
        if self.sources.is_empty() && !self.producing {
            // Idle: nothing to encode until a source comes.
            self.release_encoder(out);
            return false;
        }
        work.tail.clear();
        let mut master_target = self.shared.master_volume();
        if (master_target != 1.0 || self.master_gain != 1.0)
            && !self.sources.is_empty()
            && !self.ensure_encoder(out)
            && self.master_gain == 1.0
        {
            // A passthrough call's master volume changed and no encoder is spare: the change
            // waits a tick (the volume is read again then).
            MixerCounters::bump(&out.counters.codec_shortages);
            master_target = 1.0;
        }
        // A lone pre-encoded source at unity gain is sent as it is: no decode, no re-encode.
        let lone_opus_at_unity = self.sources.len() == 1
            && self.master_gain == 1.0
            && master_target == 1.0
            && self.sources[0].is_opus();
        // Back from mixing, passthrough waits for one mixed frame at unity in the packets' own
        // timing (see `Timing`), so the listener's decoder is close to where the original
        // encoder was when its packets resume.
        let passthrough_possible = lone_opus_at_unity
            && (!self.producing
                || matches!(
                    self.timing,
                    Timing::Aligned { settled: true } | Timing::Rejoin
                ));
        let mut mixed_any = false;
        let mut passed_through = false;
        let mut encoded = false;
        // Passed through only because no codec was spare: the call is about to mix.
        let mut deferred = false;
        // A source waits for a spare codec: the call has not stopped producing.
        let mut waiting = false;
        // The gain a lone Opus source ends this frame with, and whether it played at unity.
        let mut lone_gain = None;
        let mut unity = false;
        work.mix.fill(0.0);

        let lone = self.sources.len() == 1;
        // Fed early, the encoder has already taken this frame's first `lookahead` samples at
        // the previous tick's final gain; ramps start after them so the gain does not jump.
        let ramp_start = match self.timing {
            Timing::Aligned { .. } if lone => self.lookahead,
            _ => 0,
        };
        let mut index = 0;
        while index < self.sources.len() {
            if let Some(left) = self.crossfade_due(index) {
                // Fade the track out over what is left of it and the next one in under it.
                self.sources[index].fade(left.max(1), false);
                self.fading_track = self.track.take();
                if let Some(next) = self.next.as_mut() {
                    next.fade(self.crossfade_ticks, true);
                }
                self.start_next_track(out);
            }
            // A lone Opus source at unity gain needs no codec; anything else is mixed, and
            // waits a tick (nothing stepped, nothing read) if no codec is spare for it. A lone
            // Opus source is checked after its step instead: it can pass through meanwhile.
            let lone_opus_now = self.sources.len() == 1
                && self.sources[index].is_opus()
                && self.master_gain == 1.0
                && master_target == 1.0;
            if !lone_opus_now && !self.ensure_codecs(index, out) {
                MixerCounters::bump(&out.counters.codec_shortages);
                waiting = true;
                index += 1;
                continue;
            }
            let step = self.sources[index].step();
            match step {
                Step::Ended(reason) => {
                    let slot = self.sources.swap_remove(index);
                    let id = slot.id;
                    out.end_source(self.id, slot, reason);
                    if Some(id) == self.fading_track {
                        self.fading_track = None;
                        out.event(Event::TrackEnded {
                            call: self.id,
                            source: id,
                            reason,
                        });
                    } else if Some(id) == self.track {
                        self.track = None;
                        out.event(Event::TrackEnded {
                            call: self.id,
                            source: id,
                            reason,
                        });
                        // Gapless: the next track plays in this very tick.
                        self.start_next_track(out);
                    }
                    continue;
                }
                Step::Silent => {}
                // A seeking source keeps the call's stream going with silence.
                Step::Gap => mixed_any = true,
                Step::Render { from, to } => {
                    if passthrough_possible && SourceSlot::is_unity(step) {
                        self.sources[index].render_passthrough(&mut work.frame);
                        passed_through = true;
                    } else if lone_opus_now && !self.ensure_codecs(index, out) {
                        // No codec spare to leave passthrough with: the packet goes out as it
                        // is and the volume change waits a tick (it ramps from where it was).
                        MixerCounters::bump(&out.counters.codec_shortages);
                        let source = &mut self.sources[index];
                        source.undo_ramp();
                        source.render_passthrough(&mut work.frame);
                        passed_through = true;
                        deferred = true;
                    } else {
                        let source = &mut self.sources[index];
                        source.render(&mut work.scratch, &mut work.tail);
                        mix_with_ramp(&mut work.mix, &work.scratch, from, to, ramp_start);
                        mixed_any = true;
                        if lone && source.is_opus() {
                            lone_gain = Some(to * master_target);
                            unity = lone_opus_at_unity && SourceSlot::is_unity(step);
                        }
                    }
                }
            }
            index += 1;
        }

        let was_passed_through = std::mem::replace(&mut self.passed_through, passed_through);
        if passed_through {
            work.frame.tick = tick;
            out.send_frame(&mut self.frames, &work.frame);
            MixerCounters::bump(&out.counters.frames_passed_through);
            self.producing = true;
            self.timing = Timing::Aligned { settled: true };
            // Passed through long enough that leaving passthrough primes fresh codecs from
            // the kept packets (see `prime_encoder`, `OpusResync`): the codecs go back.
            // (Kept for a queued crossfade, which mixes two sources soon.)
            let crossfade_coming = self.next.is_some() && self.crossfade_ticks > 0;
            if !deferred
                && !crossfade_coming
                && self.sources.len() == 1
                && self.sources[0].passthrough_settled()
            {
                self.release_encoder(out);
                if let Some(decoder) = self.sources[0].take_settled_decoder()
                    && let Err(mut decoder) = out.give_decoder(decoder)
                {
                    decoder.hold();
                    let _ = self.sources[0].install_decoder(decoder);
                }
            }
        } else if mixed_any && encode && !self.ensure_encoder(out) {
            // Only a seek's gap comes here without an encoder (every rendered source took
            // one): its silence needs none.
            MixerCounters::bump(&out.counters.codec_shortages);
            work.frame.kind = FrameKind::Audio;
            work.frame.buffer_mut()[..OPUS_SILENCE.len()].copy_from_slice(&OPUS_SILENCE);
            work.frame.set_len(OPUS_SILENCE.len());
            work.frame.tick = tick;
            out.send_frame(&mut self.frames, &work.frame);
            self.master_gain = master_target;
            self.producing = true;
        } else if mixed_any {
            apply_ramp(&mut work.mix, self.master_gain, master_target, ramp_start);
            self.master_gain = master_target;
            self.limiter.process(&mut work.mix);
            if encode {
                let fresh = !self.producing;
                self.choose_timing(work, fresh, was_passed_through, lone_gain, unity);
                self.encode_and_send(work, tick, rush, out);
                encoded = true;
            } else {
                work.frame.kind = FrameKind::Audio;
                work.frame.set_len(0);
                work.frame.tick = tick;
                out.send_frame(&mut self.frames, &work.frame);
            }
            self.producing = true;
        } else if waiting {
            // Nothing this tick (the listener conceals 20 ms); the stretch goes on once a
            // codec is spare, with nothing read meanwhile.
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
        encoded
    }

    /// Prepares the encoder and this frame's input (`mix`) so the frame continues what the
    /// listener heard last, and records the timing the frame leaves the stream in.
    ///
    /// The encoder delays its input by `lookahead` samples; passed-through packets are not
    /// delayed. Switching between the two naively is heard (measured on a 400 Hz tone in the
    /// mixing test `leaving_and_rejoining_passthrough_keeps_the_level_and_does_not_click`):
    /// leaving passthrough, the first mixed frame started with 6.5 ms of whatever the encoder
    /// last saw (silence for a fresh call) — a dip to 16 % of the level — and rejoining skipped
    /// 6.5 ms ahead, a dip to 41 %. So while a lone Opus source is mixed (its volume ramps, or it pauses), the
    /// encoder is fed `lookahead` samples early — the start of the next packet, decoded one tick
    /// ahead — and its output keeps the packets' timing; gain ramps start where the early-fed
    /// samples end, 6.5 ms into the frame. Leaving passthrough, the encoder is
    /// first primed (two encodes, output discarded) with the audio of the last passed-through
    /// packets, so its state matches what the listener's decoder played. Only when the next
    /// packet is not queued yet (a producer writing just in time) or other sources join does
    /// the call fall back to the delayed timing, crossfading into it over one frame (no click,
    /// but two copies 6.5 ms apart can partly cancel: a 400 Hz tone dips to 31 %). Costs, once
    /// per switch: two decodes and two encodes (an encode is ~120 µs here); on a steady mixed stretch the next
    /// packet is decoded a tick early instead of on time, so nothing extra.
    fn choose_timing(
        &mut self,
        work: &mut TickBuffers,
        fresh: bool,
        was_passed_through: bool,
        lone_gain: Option<f32>,
        unity: bool,
    ) {
        let has_next = lone_gain.is_some()
            && self
                .sources
                .first_mut()
                .and_then(|s| s.decode_ahead())
                .is_some();
        if was_passed_through {
            self.prime_encoder(work);
        } else if fresh {
            // A new stretch: nothing was heard that this frame has to continue, but its first
            // `lookahead` samples must reach the encoder's delay line.
            self.timing = if has_next {
                self.prime_fresh_encoder(work);
                Timing::Aligned { settled: false }
            } else {
                Timing::Delayed
            };
        }
        let ahead = match lone_gain {
            Some(gain) if has_next => self
                .sources
                .first()
                .and_then(|s| s.ahead())
                .map(|next| (next, gain)),
            _ => None,
        };
        let lookahead = self.lookahead;
        self.timing = match (self.timing, ahead) {
            (Timing::Aligned { .. }, Some((next, gain))) => {
                feed_early(&mut work.mix, lookahead, next, gain);
                Timing::Aligned { settled: unity }
            }
            (Timing::Aligned { .. }, None) => {
                crossfade_timing(&mut work.mix, lookahead, Shift::ToDelayed, None);
                Timing::Delayed
            }
            (Timing::Delayed | Timing::Rejoin, Some((next, gain))) if unity => {
                crossfade_timing(
                    &mut work.mix,
                    lookahead,
                    Shift::ToAligned,
                    Some((next, gain)),
                );
                Timing::Aligned { settled: false }
            }
            // Nothing queued ahead to crossfade with: passthrough resumes next tick, skipping
            // `lookahead` samples ahead, rather than this call re-encoding forever.
            (Timing::Delayed | Timing::Rejoin, None) if unity => Timing::Rejoin,
            (Timing::Delayed | Timing::Rejoin, _) => Timing::Delayed,
        };
    }

    /// Leaving passthrough: primes the encoder with the decoded audio of the last
    /// passed-through packets, shifted `lookahead` samples early and ending with the start of
    /// this frame, so its next output continues exactly where the last packet ended and its
    /// inter-frame state (band energies, overlap) matches what the listener's decoder holds.
    fn prime_encoder(&mut self, work: &mut TickBuffers) {
        let TickBuffers {
            mix,
            scratch,
            frame,
            tail,
        } = work;
        let Some((older, newest)) = tail.frames() else {
            return;
        };
        let early = self.lookahead * 2;
        let buffer = &mut frame.buffer_mut()[..];
        let first = older.unwrap_or(newest);
        scratch[..MIX_FRAME_LEN - early].copy_from_slice(&first[early..]);
        scratch[MIX_FRAME_LEN - early..].copy_from_slice(&newest[..early]);
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        let _ = encoder.encode_float(&scratch[..], buffer);
        scratch[..MIX_FRAME_LEN - early].copy_from_slice(&newest[early..]);
        scratch[MIX_FRAME_LEN - early..].copy_from_slice(&mix[..early]);
        let _ = encoder.encode_float(&scratch[..], buffer);
    }

    /// Starting a stretch fed early: the encoder's delay line gets silence, then the start of
    /// this frame, which feeding early would otherwise skip.
    fn prime_fresh_encoder(&mut self, work: &mut TickBuffers) {
        let early = self.lookahead * 2;
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        work.scratch[..MIX_FRAME_LEN - early].fill(0.0);
        work.scratch[MIX_FRAME_LEN - early..].copy_from_slice(&work.mix[..early]);
        let _ = encoder.encode_float(&work.scratch[..], &mut work.frame.buffer_mut()[..]);
    }

    fn encode_and_send(
        &mut self,
        work: &mut TickBuffers,
        tick: u64,
        rush: bool,
        out: &mut Outboxes<'_>,
    ) {
        let complexity = self.rung.complexity();
        let Some(encoder) = self.encoder.as_mut() else {
            MixerCounters::bump(&out.counters.encode_errors);
            return;
        };
        let started = Instant::now();
        let rush = rush && complexity > RUSH_COMPLEXITY;
        if rush {
            let _ = encoder.set_complexity(RUSH_COMPLEXITY);
            MixerCounters::bump(&out.counters.frames_rushed);
        }
        let encoded = encoder.encode_float(&work.mix[..], &mut work.frame.buffer_mut()[..]);
        if rush {
            let _ = encoder.set_complexity(complexity);
        }
        out.histograms
            .encode_us
            .saturating_record(started.elapsed().as_micros() as u64);
        match encoded {
            Ok(len) => {
                work.frame.set_len(len);
                work.frame.kind = FrameKind::Audio;
                work.frame.tick = tick;
                out.send_frame(&mut self.frames, &work.frame);
                MixerCounters::bump(&out.counters.frames_encoded);
            }
            Err(_) => MixerCounters::bump(&out.counters.encode_errors),
        }
    }
}

/// Working buffers of one call's tick, shared by every call of a mixer thread.
///
/// A call's mix, its sources' rendered audio, the decoded tail of a source leaving passthrough
/// and the frame being built only live from the start of the call's tick until its frame is
/// queued, and a thread ticks one call at a time: one set per thread (~33 KB) instead of one
/// per call, which a passthrough call would carry without ever mixing.
pub(crate) struct TickBuffers {
    mix: MixFrame,
    scratch: MixFrame,
    frame: EncodedFrame,
    tail: PassthroughTail,
}

impl TickBuffers {
    fn new() -> Box<Self> {
        Box::new(Self {
            mix: [0.0; MIX_FRAME_LEN],
            scratch: [0.0; MIX_FRAME_LEN],
            frame: EncodedFrame::new(0, FrameKind::Audio),
            tail: PassthroughTail::new(),
        })
    }
}

/// The gain at sample `i` of a frame ramping linearly from `from` to `to`, starting at sample
/// `start` (before it the gain is `from`).
fn ramp_gain(from: f32, to: f32, start: usize, i: usize) -> f32 {
    if i < start {
        from
    } else {
        from + (to - from) * (i - start) as f32 / (FRAME_SAMPLES - start) as f32
    }
}

/// Adds `input` scaled by a gain ramped linearly from `from` to `to` across the frame from
/// sample `start` on.
fn mix_with_ramp(mix: &mut MixFrame, input: &MixFrame, from: f32, to: f32, start: usize) {
    if from == to {
        for (m, s) in mix.iter_mut().zip(input.iter()) {
            *m += s * to;
        }
        return;
    }
    for (i, (m, s)) in mix
        .chunks_exact_mut(2)
        .zip(input.chunks_exact(2))
        .enumerate()
    {
        let gain = ramp_gain(from, to, start, i);
        m[0] += s[0] * gain;
        m[1] += s[1] * gain;
    }
}

/// How a call's encoded frames line up with its lone Opus source's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The encoder is fed `lookahead` samples early, so its output keeps the packets' timing
    /// and passthrough can resume seamlessly; `settled` while passing through and once a frame
    /// was mixed at unity so.
    Aligned { settled: bool },
    /// The encoder's output is `lookahead` samples late (every frame of a multi-source mix).
    Delayed,
    /// Delayed, but the lone Opus source is back at unity with nothing queued ahead to realign
    /// with: passthrough may resume (skipping `lookahead` samples ahead).
    Rejoin,
}

/// Shifts the encoder's input `lookahead` samples early: the frame without its first
/// `lookahead` samples, then the start of the next packet's audio (`next`, scaled by `gain`,
/// the gain the next frame starts at).
fn feed_early(mix: &mut MixFrame, lookahead: usize, next: &MixFrame, gain: f32) {
    let early = lookahead * 2;
    mix.copy_within(early.., 0);
    for (m, n) in mix[MIX_FRAME_LEN - early..].iter_mut().zip(&next[..early]) {
        *m = n * gain;
    }
}

/// Which way [`crossfade_timing`] moves a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shift {
    /// From the packets' timing to `lookahead` samples later.
    ToDelayed,
    /// From `lookahead` samples late back to the packets' timing.
    ToAligned,
}

/// Rewrites the encoder's input `mix` so its output (delayed by `lookahead`) moves smoothly
/// between the packets' timing and the delayed one. Output sample `lookahead + j` comes from
/// input `j`; played aligned it should be `mix[j + lookahead]`, delayed `mix[j]`, so the frame
/// crossfades between the two over its first `960 − lookahead` samples. The remaining input is
/// only heard in the next frame: delayed audio, or for `ToAligned` (when the next frame is a
/// passed-through packet) the start of that packet's audio (`next`) for the encoder's look-ahead.
fn crossfade_timing(
    mix: &mut MixFrame,
    lookahead: usize,
    shift: Shift,
    next: Option<(&MixFrame, f32)>,
) {
    let span = FRAME_SAMPLES - lookahead;
    if lookahead == 0 || span == 0 {
        return;
    }
    // Ascending: `mix[j + lookahead]` is read before it is overwritten.
    for j in 0..span {
        let w = j as f32 / span as f32;
        let aligned_weight = match shift {
            Shift::ToDelayed => 1.0 - w,
            Shift::ToAligned => w,
        };
        for c in 0..2 {
            let aligned = mix[(j + lookahead) * 2 + c];
            let delayed = mix[j * 2 + c];
            mix[j * 2 + c] = aligned_weight * aligned + (1.0 - aligned_weight) * delayed;
        }
    }
    if let (Shift::ToAligned, Some((next, gain))) = (shift, next) {
        for (m, n) in mix[span * 2..].iter_mut().zip(&next[..lookahead * 2]) {
            *m = n * gain;
        }
    }
}

/// Scales `frame` in place by a gain ramped from `from` to `to` from sample `start` on.
fn apply_ramp(frame: &mut MixFrame, from: f32, to: f32, start: usize) {
    if from == 1.0 && to == 1.0 {
        return;
    }
    for (i, pair) in frame.chunks_exact_mut(2).enumerate() {
        let gain = ramp_gain(from, to, start, i);
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
    spares: &'a mut Spares,
}

impl Outboxes<'_> {
    /// Takes back an encoder no call needs: kept as a spare, or sent to the control side.
    /// `Err` when neither has room (the caller keeps it rather than free it here).
    fn give_encoder(&mut self, encoder: PooledEncoder) -> Result<(), PooledEncoder> {
        match self.spares.give_encoder(encoder) {
            None => Ok(()),
            Some(encoder) => self.discard_if_room(encoder, Garbage::Encoder),
        }
    }

    /// As [`Outboxes::give_encoder`], for a decoder.
    fn give_decoder(&mut self, decoder: PooledDecoder) -> Result<(), PooledDecoder> {
        match self.spares.give_decoder(decoder) {
            None => Ok(()),
            Some(decoder) => self.discard_if_room(decoder, Garbage::Decoder),
        }
    }

    /// Sends `value` to be dropped off this thread, or hands it back when the ring is full.
    fn discard_if_room<T>(&mut self, value: T, wrap: fn(T) -> Garbage) -> Result<(), T> {
        if self.garbage.slots() == 0 {
            return Err(value);
        }
        // A slot is free and this thread is the ring's only producer: the push succeeds.
        let _ = self.garbage.push(wrap(value));
        Ok(())
    }

    fn event(&mut self, event: Event) {
        if self.events.push(event).is_err() {
            MixerCounters::bump(&self.counters.events_dropped);
        }
    }

    fn send_frame(&mut self, frames: &mut FrameSender, frame: &EncodedFrame) {
        if frames.push(frame).is_err() {
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

    /// An encoder sent with a command that could not be carried out.
    fn discard_encoder(&mut self, encoder: Option<PooledEncoder>) {
        if let Some(encoder) = encoder
            && let Err(encoder) = self.give_encoder(encoder)
        {
            // See `Mixer::discard`.
            std::mem::forget(encoder);
        }
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
    calls: Calls,
    commands: rtrb::Consumer<Command>,
    events: rtrb::Producer<Event>,
    garbage: rtrb::Producer<Garbage>,
    stats: StatsPublisher,
    counters: Arc<MixerCounters>,
    next_tick: u64,
    encode: bool,
    /// Steps Opus complexity with the load; `None` in manual mode, which has no deadline.
    governor: Option<Governor>,
    /// Calls handed to other mixers (indexed by mixer; `None` for this one) and from them.
    transfers_out: Vec<Option<rtrb::Producer<Box<CallSlot>>>>,
    transfers_in: Vec<rtrb::Consumer<Box<CallSlot>>>,
    /// Moves asked for this tick, done after the frames are built.
    moves: [Option<(CallId, usize)>; MAX_MOVES_PER_TICK],
    /// This thread's tick work, for the control side's rebalancing.
    load: Arc<MixerLoad>,
    /// Every call's tick works in these (see [`TickBuffers`]).
    work: Box<TickBuffers>,
    /// What building an encoded call's frame at its own complexity takes here, recently (a
    /// moving average), to tell which frames must be rushed (see [`RUSH_COMPLEXITY`]).
    encode_cost: Duration,
    /// Codecs for calls that start mixing (see [`crate::pool`]).
    spares: Spares,
}

/// The complexity a frame is encoded at when, at its call's own, it would be ready after its
/// packet is due: libopus at 0 costs a fraction of 10 (~190 µs a stereo frame here). A mixer
/// whose calls all start in the same tick (a bot's calls unpaused together, `jitter --encode`)
/// woke with the lead of idle calls, a few ms; 90 calls at full complexity then took 17 ms, and
/// the last ones' packets went out a tick late. The governor lowers complexity for good only
/// after three overloaded ticks; this covers the ticks before, and any tick that starts late.
pub(crate) const RUSH_COMPLEXITY: u8 = 0;
/// The cost assumed before a thread has encoded anything: complexity 10 here.
const ENCODE_COST_PRIOR: Duration = Duration::from_micros(200);
/// Frames count as due this long before the sender's build for their phase (which reads the
/// queue a little ahead of the deadline).
const RUSH_MARGIN: Duration = Duration::from_millis(1);

/// Moves one mixer makes in one tick at most (the control side asks for one at a time).
const MAX_MOVES_PER_TICK: usize = 4;

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
        spares: Spares,
    ) -> Self {
        Self {
            calls: Calls::with_capacity(max_calls),
            commands,
            events,
            garbage,
            stats,
            counters,
            next_tick: 0,
            encode: true,
            governor: None,
            transfers_out: Vec::new(),
            transfers_in: Vec::new(),
            moves: [None; MAX_MOVES_PER_TICK],
            load: Arc::default(),
            work: TickBuffers::new(),
            encode_cost: ENCODE_COST_PRIOR,
            spares,
        }
    }

    /// Connects this mixer to the others: `outs[i]` carries calls to mixer `i` (`None` for
    /// itself); `load` is where it publishes its tick work.
    pub(crate) fn connect_out(
        &mut self,
        outs: Vec<Option<rtrb::Producer<Box<CallSlot>>>>,
        load: Arc<MixerLoad>,
    ) {
        self.transfers_out = outs;
        self.load = load;
    }

    /// The rings that bring calls from the other mixers.
    pub(crate) fn connect_in(&mut self, ins: Vec<rtrb::Consumer<Box<CallSlot>>>) {
        self.transfers_in = ins;
    }

    /// Lets the mixer step Opus complexity down under overload and back up (threaded engines
    /// with [`crate::EngineConfig::adaptive_complexity`]).
    pub(crate) fn set_adaptive_complexity(&mut self, on: bool) {
        self.governor = on.then(Governor::default);
    }

    /// The calls that tick, in the order they are built.
    #[cfg(test)]
    pub(crate) fn build_order(&self) -> Vec<CallId> {
        self.calls.ticking().iter().map(|c| c.id).collect()
    }

    /// Each ticking call's Opus complexity now, in build order.
    #[cfg(test)]
    pub(crate) fn complexities(&self) -> Vec<u8> {
        self.calls
            .ticking()
            .iter()
            .map(|c| c.rung.complexity())
            .collect()
    }

    /// Acts on one tick's work time (see [`crate::overload`]); returns the calls that moved.
    pub(crate) fn govern(&mut self, work: Duration) -> usize {
        let Some(governor) = &mut self.governor else {
            return 0;
        };
        let verdict = governor.observe(work);
        let counters = &self.counters;
        let mut moved = 0;
        // Idle calls encode nothing: only the ticking ones take part.
        let calls = self.calls.ticking_mut();
        let want = overload::batch(calls.len());
        match verdict {
            Verdict::Hold => {}
            // Newest first: the calls that came last give up quality first.
            Verdict::StepDown => {
                for call in calls.iter_mut().rev() {
                    if moved == want {
                        break;
                    }
                    let was_lowered = call.rung.lowered();
                    if let Some(complexity) = call.rung.down() {
                        if let Some(encoder) = call.encoder.as_mut() {
                            let _ = encoder.set_complexity(complexity);
                        }
                        moved += 1;
                        if !was_lowered {
                            counters.calls_lowered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                counters
                    .complexity_steps_down
                    .fetch_add(moved as u64, Ordering::Relaxed);
            }
            Verdict::StepUp => {
                for call in calls.iter_mut() {
                    if moved == want {
                        break;
                    }
                    if let Some(complexity) = call.rung.up() {
                        if let Some(encoder) = call.encoder.as_mut() {
                            let _ = encoder.set_complexity(complexity);
                        }
                        moved += 1;
                        if !call.rung.lowered() {
                            counters.calls_lowered.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                counters
                    .complexity_steps_up
                    .fetch_add(moved as u64, Ordering::Relaxed);
            }
        }
        moved
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

    /// The thread skipped `ticks` ticks: live sources' input is that much later (see
    /// [`crate::latency`]).
    pub(crate) fn note_skipped(&mut self, ticks: u64) {
        for call in self.calls.ticking_mut() {
            for source in call.sources.iter_mut() {
                source.note_skipped(ticks);
            }
        }
    }

    pub(crate) fn record_lateness(&mut self, micros: u64) {
        self.stats.local.lateness_us.saturating_record(micros);
    }

    pub(crate) fn run_tick(&mut self, tick: u64) {
        self.run_tick_due(tick, None);
    }

    /// Runs tick `tick`, whose frames are due at `deadline` plus each call's phase (`None`: no
    /// deadline, as in manual mode).
    pub(crate) fn run_tick_due(&mut self, tick: u64, deadline: Option<Instant>) {
        let started = Instant::now();
        let mut out = Outboxes {
            events: &mut self.events,
            garbage: &mut self.garbage,
            histograms: &mut self.stats.local,
            counters: &self.counters,
            spares: &mut self.spares,
        };
        // Calls from other mixers first: commands that follow a hand-over may name them.
        for ring in &mut self.transfers_in {
            while let Ok(mut call) = ring.pop() {
                if self.calls.has_room() {
                    call.handed_over = true;
                    self.calls.insert(call);
                } else {
                    out.discard(Garbage::Call(call));
                }
            }
        }
        while let Ok(command) = self.commands.pop() {
            if let Command::MoveCall { call, to } = command {
                match self.moves.iter_mut().find(|m| m.is_none()) {
                    Some(free) => *free = Some((call, to)),
                    None => out.discard(Garbage::MoveFailed { call }),
                }
                continue;
            }
            apply_command(&mut self.calls, command, tick, &mut out);
        }
        // Rushing is part of graceful overload: only where the governor runs.
        let deadline = deadline.filter(|_| self.governor.is_some());
        let mut previous = Instant::now();
        let mut settled = true;
        for call in self.calls.ticking_mut() {
            // Handed over from a mixer that already built this tick: skip it. Handed over from
            // one a tick behind: build the tick it missed first, so no frame goes missing.
            if call.next_tick > tick {
                continue;
            }
            let rush = deadline.is_some_and(|d| {
                previous + self.encode_cost + RUSH_MARGIN
                    > d + Duration::from_micros(u64::from(call.phase_us))
            });
            // (Only after a hand-over: ticks this thread skipped itself stay skipped.)
            if std::mem::take(&mut call.handed_over) && call.next_tick + 1 == tick {
                let late = deadline.is_some();
                call.tick(call.next_tick, self.encode, late, &mut self.work, &mut out);
            }
            // An idle call costs nothing to tick; no clock read for it (1,000 idle calls).
            let idle = call.sources.is_empty() && !call.producing && call.next.is_none();
            let encoded = call.tick(tick, self.encode, rush, &mut self.work, &mut out);
            call.next_tick = tick + 1;
            if idle {
                settled &= !call.is_idle();
                continue;
            }
            let now = Instant::now();
            let cost = now - previous;
            call.shared.record_cost(cost);
            if encoded && !rush {
                self.encode_cost = (self.encode_cost * 7 + cost) / 8;
            }
            previous = now;
        }
        for pending in &mut self.moves {
            let Some((id, to)) = pending.take() else {
                continue;
            };
            let ring = self.transfers_out.get_mut(to).and_then(Option::as_mut);
            match ring {
                Some(ring) if ring.slots() > 0 => match self.calls.take(id) {
                    // It keeps its complexity step; `calls_lowered` is engine-wide.
                    Some(call) => {
                        let _ = ring.push(call);
                        out.discard(Garbage::Moved { call: id, to });
                    }
                    None => out.discard(Garbage::MoveFailed { call: id }),
                },
                _ => out.discard(Garbage::MoveFailed { call: id }),
            }
        }
        if !settled {
            self.calls.settle();
        }
        let work = started.elapsed();
        self.load.record(work);
        out.histograms
            .tick_us
            .saturating_record(work.as_micros() as u64);
        self.govern(work);
        self.stats.after_tick();
        MixerCounters::bump(&self.counters.ticks);
        self.next_tick = tick + 1;
    }
}

fn apply_command(calls: &mut Calls, command: Command, tick: u64, out: &mut Outboxes<'_>) {
    match command {
        Command::AddCall(call) => {
            if calls.has_room() {
                calls.insert(call);
            } else {
                // The control side counts calls, so this means a broken invariant.
                out.discard(Garbage::Call(call));
            }
        }
        Command::RemoveCall(id) => {
            let Some(mut call) = calls.take(id) else {
                return;
            };
            if call.rung.lowered() {
                out.counters.calls_lowered.fetch_sub(1, Ordering::Relaxed);
            }
            if call.producing {
                out.send_frame(
                    &mut call.frames,
                    &EncodedFrame::new(tick, FrameKind::EndOfStream),
                );
            }
            for source in call.sources.iter().chain(call.next.as_ref()) {
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
            if let Some(call) = calls.find_mut(id) {
                std::mem::swap(&mut *frames, &mut call.frames);
                // A new queue starts a new stretch: the next audio frame starts speaking again.
                call.producing = false;
            }
            out.discard(Garbage::Frames(frames));
        }
        Command::QueueNext {
            call: id,
            slot,
            crossfade_ticks,
            encoder,
        } => match calls.wake(id, tick) {
            Some(call) => {
                call.offer_encoder(encoder, out);
                call.crossfade_ticks = crossfade_ticks;
                if let Some(old) = call.next.replace(slot) {
                    out.end_source(id, old, EndReason::Stopped);
                }
            }
            None => {
                out.discard_encoder(encoder);
                out.end_source(id, slot, EndReason::CallRemoved);
            }
        },
        Command::ClearNext(id) => {
            if let Some(call) = calls.find_mut(id)
                && let Some(next) = call.next.take()
            {
                out.end_source(id, next, EndReason::Stopped);
            }
        }
        Command::AddSource(id, source, encoder) => match calls.wake(id, tick) {
            Some(call) if call.sources.len() < call.sources.capacity() => {
                call.offer_encoder(encoder, out);
                call.sources.push(source);
            }
            Some(_) => {
                out.discard_encoder(encoder);
                out.end_source(id, source, EndReason::Failed);
            }
            None => {
                out.discard_encoder(encoder);
                out.end_source(id, source, EndReason::CallRemoved);
            }
        },
        Command::SetPhase { call: id, phase_us } => calls.set_phase(id, phase_us),
        // Taken by `Mixer::run_tick` before it gets here.
        Command::MoveCall { call, .. } => out.discard(Garbage::MoveFailed { call }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_are_linear_and_hit_their_end_points() {
        let mut mix = [0.0; MIX_FRAME_LEN];
        let input = [1.0; MIX_FRAME_LEN];
        mix_with_ramp(&mut mix, &input, 0.0, 1.0, 0);
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
        apply_ramp(&mut frame, 1.0, 0.0, 0);
        assert_eq!(frame[0], 0.5);
        assert!(frame[MIX_FRAME_LEN - 1] < 0.001);
    }
}
