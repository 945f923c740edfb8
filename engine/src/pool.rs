//! Spare Opus encoders and decoders for the mixer threads.
//!
//! A passthrough call (a lone pre-encoded source at unity) sends its packets as they are: it
//! needs no encoder and its source no decoder — 75 KB of libopus state per call that would sit
//! unused. They are needed only while the call mixes (a volume ramp, a pause or stop fade, a
//! second source, a seek). libopus allocates when it creates them and the mixer thread must not
//! allocate, so each mixer keeps a few ready ones: it takes one when a call starts mixing and
//! hands it back when the call is passing through again (or idle). The control side refills
//! the spares off the real-time thread (the engine's housekeeping), recycling what the mixer
//! handed back, as kira hands finished resources back from its audio thread.
//!
//! Every codec is counted while it exists and while a call or source holds it
//! ([`CodecCount`]), so tests and [`crate::EngineStats`] show that a passthrough call holds
//! none.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use audiopus::coder::{Decoder, Encoder, GenericCtl};
use audiopus::{Application, Bitrate, Channels, SampleRate, Signal};

use crate::codec::{OpusApplication, OpusConfig};
use crate::error::Result;
use crate::pcm::{MIX_FRAME_LEN, MixFrame};

/// How many codecs of one kind exist and how many of them calls or sources hold.
#[derive(Debug, Default)]
pub(crate) struct CodecCount {
    live: AtomicU64,
    in_use: AtomicU64,
}

impl CodecCount {
    /// Codecs of this kind that exist (held, spare, or on their way to be freed).
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Codecs of this kind held by a call (encoders) or a source (decoders).
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// An encoder or decoder that counts itself in its [`CodecCount`].
pub(crate) struct Counted<T> {
    codec: T,
    count: Arc<CodecCount>,
    /// Held by a call or source (counted in `in_use`), not spare.
    held: bool,
}

impl<T> Counted<T> {
    fn new(codec: T, count: &Arc<CodecCount>) -> Self {
        count.live.fetch_add(1, Ordering::Relaxed);
        Self {
            codec,
            count: Arc::clone(count),
            held: false,
        }
    }

    pub(crate) fn hold(&mut self) {
        if !self.held {
            self.held = true;
            self.count.in_use.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(&mut self) {
        if self.held {
            self.held = false;
            self.count.in_use.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> std::ops::Deref for Counted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.codec
    }
}

impl<T> std::ops::DerefMut for Counted<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.codec
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.release();
        self.count.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A counted libopus encoder.
pub(crate) type PooledEncoder = Counted<Encoder>;
/// A counted libopus decoder with what only a mixed Opus source needs beside it.
pub(crate) type PooledDecoder = Counted<SourceDecoder>;

/// What an Opus source needs only while it is mixed.
pub(crate) struct SourceDecoder {
    pub(crate) decoder: Decoder,
    /// The next packet decoded a tick ahead (see [`crate::source`]'s `decode_ahead`): 7.5 KB
    /// that a passed-through source need not carry.
    pub(crate) ahead: Box<MixFrame>,
}

/// Makes counted codecs (off the real-time thread: libopus allocates).
#[derive(Debug, Clone)]
pub(crate) struct CodecFactory {
    pub(crate) encoders: Arc<CodecCount>,
    pub(crate) decoders: Arc<CodecCount>,
    opus: OpusConfig,
}

impl CodecFactory {
    pub(crate) fn new(opus: OpusConfig) -> Self {
        Self {
            encoders: Arc::default(),
            decoders: Arc::default(),
            opus,
        }
    }

    /// A new encoder with the engine's settings (a call reconfigures it to its own).
    pub(crate) fn encoder(&self) -> Result<PooledEncoder> {
        Ok(Counted::new(self.opus.build_encoder()?, &self.encoders))
    }

    /// A new 48 kHz stereo decoder.
    pub(crate) fn decoder(&self) -> Result<PooledDecoder> {
        let decoder = SourceDecoder {
            decoder: Decoder::new(SampleRate::Hz48000, Channels::Stereo)?,
            ahead: Box::new([0.0; MIX_FRAME_LEN]),
        };
        Ok(Counted::new(decoder, &self.decoders))
    }
}

/// Gives a call a spare encoder: clears the state of whatever call had it last
/// (`OPUS_RESET_STATE`, no allocation) and applies the call's settings and complexity.
pub(crate) fn prepare_encoder(encoder: &mut PooledEncoder, opus: &OpusConfig, complexity: u8) {
    // The controls only fail on values out of range, which these are not; a failed one leaves
    // the previous setting, which is still a working encoder.
    let _ = encoder.reset_state();
    let _ = encoder.set_application(match opus.application {
        OpusApplication::Voice => Application::Voip,
        OpusApplication::Music => Application::Audio,
        OpusApplication::LowDelay => Application::LowDelay,
    });
    let _ = encoder.set_bitrate(Bitrate::BitsPerSecond(
        opus.bitrate.clamp(6_000, 510_000) as i32
    ));
    let _ = encoder.set_complexity(complexity.min(10));
    let _ = encoder.set_signal(match opus.application {
        OpusApplication::Voice => Signal::Voice,
        _ => Signal::Music,
    });
    let _ = encoder.set_inband_fec(opus.inband_fec);
    let _ = encoder.set_packet_loss_perc(opus.expected_loss_percent.min(100));
    encoder.hold();
}

/// Gives a source a spare decoder, its state cleared (`OPUS_RESET_STATE`, no allocation).
pub(crate) fn prepare_decoder(decoder: &mut PooledDecoder) {
    let _ = decoder.decoder.reset_state();
    decoder.hold();
}

/// One mixer thread's spare codecs: what the control side sent ahead (`*_in`) and what the
/// mixer's own calls handed back (kept up to the same number, the rest goes back as garbage).
pub(crate) struct Spares {
    encoders_in: rtrb::Consumer<PooledEncoder>,
    decoders_in: rtrb::Consumer<PooledDecoder>,
    encoders: Vec<PooledEncoder>,
    decoders: Vec<PooledDecoder>,
}

/// The control side's end of one mixer's [`Spares`].
pub(crate) struct SpareFeed {
    encoders: rtrb::Producer<PooledEncoder>,
    decoders: rtrb::Producer<PooledDecoder>,
}

/// A mixer's spares and the control side's end of them, with `count` of each kind ready.
pub(crate) fn spares(count: usize, factory: &CodecFactory) -> Result<(Spares, SpareFeed)> {
    let count = count.max(1);
    let (encoders_tx, encoders_rx) = rtrb::RingBuffer::new(count);
    let (decoders_tx, decoders_rx) = rtrb::RingBuffer::new(count);
    let mut feed = SpareFeed {
        encoders: encoders_tx,
        decoders: decoders_tx,
    };
    feed.refill(factory)?;
    let spares = Spares {
        encoders_in: encoders_rx,
        decoders_in: decoders_rx,
        encoders: Vec::with_capacity(count),
        decoders: Vec::with_capacity(count),
    };
    Ok((spares, feed))
}

impl SpareFeed {
    /// Tops the spares up with new codecs (control side: libopus allocates).
    pub(crate) fn refill(&mut self, factory: &CodecFactory) -> Result<()> {
        while self.encoders.slots() > 0 {
            // Cannot fail: a slot is free and only this side pushes.
            let _ = self.encoders.push(factory.encoder()?);
        }
        while self.decoders.slots() > 0 {
            let _ = self.decoders.push(factory.decoder()?);
        }
        Ok(())
    }

    /// Puts an encoder the mixer handed back among the spares again, if there is room (it is
    /// reset when a call takes it); otherwise it is dropped here.
    pub(crate) fn recycle_encoder(&mut self, encoder: PooledEncoder) {
        let _ = self.encoders.push(encoder);
    }

    /// As [`SpareFeed::recycle_encoder`], for a decoder.
    pub(crate) fn recycle_decoder(&mut self, decoder: PooledDecoder) {
        let _ = self.decoders.push(decoder);
    }
}

impl Spares {
    /// A spare encoder, if one is left (never allocates).
    pub(crate) fn take_encoder(&mut self) -> Option<PooledEncoder> {
        self.encoders.pop().or_else(|| self.encoders_in.pop().ok())
    }

    /// A spare decoder, if one is left (never allocates).
    pub(crate) fn take_decoder(&mut self) -> Option<PooledDecoder> {
        self.decoders.pop().or_else(|| self.decoders_in.pop().ok())
    }

    /// Takes an encoder back; returns it when there is no room to keep it (the caller sends
    /// it to be dropped off the real-time thread).
    pub(crate) fn give_encoder(&mut self, encoder: PooledEncoder) -> Option<PooledEncoder> {
        keep(&mut self.encoders, encoder)
    }

    /// As [`Spares::give_encoder`], for a decoder.
    pub(crate) fn give_decoder(&mut self, decoder: PooledDecoder) -> Option<PooledDecoder> {
        keep(&mut self.decoders, decoder)
    }
}

/// Keeps `codec` as a spare, released, within the list's capacity (no allocation); returns it
/// when the list is full.
fn keep<T>(spares: &mut Vec<Counted<T>>, mut codec: Counted<T>) -> Option<Counted<T>> {
    codec.release();
    if spares.len() < spares.capacity() {
        spares.push(codec);
        None
    } else {
        Some(codec)
    }
}
