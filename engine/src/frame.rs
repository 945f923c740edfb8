//! Encoded frames: what the mixer hands to the sender, one bounded queue per call.

use std::time::{Duration, Instant};

/// Largest Opus packet for one 20 ms frame (RFC 6716 §3.4, code 0/1/2 packets).
pub const MAX_OPUS_PACKET: usize = 1275;

/// Length of one frame: Discord voice is 20 ms Opus at 48 kHz.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Samples per channel in one 20 ms frame at 48 kHz (also the RTP timestamp step).
pub const FRAME_SAMPLES: usize = 960;

/// What a queued frame asks the sender to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An Opus packet to send at the deadline of its tick.
    Audio,
    /// The call stopped producing audio: from this tick on the sender sends the five
    /// `F8 FF FE` silence frames and then Speaking off. Carries no payload.
    EndOfStream,
}

/// One 20 ms Opus frame (or an end-of-stream marker) for one call, built ahead of its deadline.
///
/// Fixed size, so the mixer builds one in place without allocating; a frame queue keeps only its
/// head and Opus bytes (see [`FrameReceiver`]).
#[derive(Clone)]
pub struct EncodedFrame {
    /// Grid index: the frame is due at `epoch + tick * 20 ms` (see [`Grid`]).
    pub tick: u64,
    /// Audio, or the marker that ends a stretch of audio.
    pub kind: FrameKind,
    len: u16,
    data: [u8; MAX_OPUS_PACKET],
}

impl EncodedFrame {
    /// An empty audio frame for `tick`, to be filled with [`EncodedFrame::buffer_mut`] and
    /// [`EncodedFrame::set_len`].
    pub fn new(tick: u64, kind: FrameKind) -> Self {
        Self {
            tick,
            kind,
            len: 0,
            data: [0; MAX_OPUS_PACKET],
        }
    }

    /// An audio frame holding a copy of `packet`; `None` when it exceeds [`MAX_OPUS_PACKET`].
    pub fn from_packet(tick: u64, packet: &[u8]) -> Option<Self> {
        let mut frame = Self::new(tick, FrameKind::Audio);
        frame.data.get_mut(..packet.len())?.copy_from_slice(packet);
        frame.len = packet.len() as u16;
        Some(frame)
    }

    /// The Opus packet (empty for [`FrameKind::EndOfStream`]).
    pub fn opus(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }

    /// The whole backing buffer, for encoding straight into the frame.
    pub fn buffer_mut(&mut self) -> &mut [u8; MAX_OPUS_PACKET] {
        &mut self.data
    }

    /// Sets the packet length after writing into [`EncodedFrame::buffer_mut`].
    /// Lengths beyond [`MAX_OPUS_PACKET`] are clamped.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(MAX_OPUS_PACKET) as u16;
    }
}

impl std::fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("tick", &self.tick)
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish()
    }
}

pub use crate::frame_queue::{
    FrameHead, FrameReceiver, FrameSender, FrameSignal, QueueFull, frame_queue,
};

/// The shared 20 ms grid: frame `n` of every call is due at `epoch + n * 20 ms`.
///
/// Deadlines are absolute, never `last + 20 ms`, so compute jitter never moves send times.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    epoch: Instant,
}

impl Grid {
    /// A grid whose tick 0 is due at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// When tick 0 is due.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// When frame `tick` is due.
    pub fn deadline(&self, tick: u64) -> Instant {
        let nanos = tick.saturating_mul(FRAME_DURATION.as_nanos() as u64);
        self.epoch + Duration::from_nanos(nanos)
    }

    /// The first tick whose deadline is at or after `at`.
    pub fn tick_at_or_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let step = FRAME_DURATION.as_nanos();
        since.div_ceil(step) as u64
    }
}
