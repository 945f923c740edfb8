//! The per-SSRC playout (jitter) buffer and its Opus decoding, for the receive thread.
//!
//! One [`Playout`] and one [`StreamDecoder`] per received stream. The receive thread
//! [`Playout::push`]es each decrypted Opus packet as it arrives and, once per 20 ms tick,
//! [`Playout::pull`]s what to play and hands it to [`StreamDecoder::render`], then reports the
//! outcome back with [`Playout::count`] so the statistics carry it:
//!
//! ```no_run
//! # use quaver_net::playout::*;
//! # let now = std::time::Instant::now();
//! let mut playout = Playout::new(&PlayoutConfig::default());
//! let mut decoder = StreamDecoder::new()?;
//! let mut pcm = [0i16; PCM_SAMPLES];
//! // per packet:
//! playout.push(now, 1234, 960 * 77, &[0xF8, 0xFF, 0xFE]);
//! // per tick:
//! let rendered = decoder.render(&playout.pull(now), &mut pcm);
//! playout.count(rendered);
//! if let Some(edge) = playout.take_edge() { /* speaking started / stopped */ }
//! if rendered.is_audio() { /* 20 ms of 48 kHz stereo in `pcm` */ }
//! # Ok::<(), PlayoutError>(())
//! ```
//!
//! A recorder that keeps Opus as it is uses [`Playout`] alone: [`Next::Packet`] is the packet to
//! store, [`Next::Missing`] a gap.
//!
//! All memory is allocated in [`Playout::new`] and [`StreamDecoder::new`]; `push`, `pull`,
//! `count`, `take_edge` and `render` allocate nothing and never panic (`tests/playout_no_alloc.rs`,
//! `fuzz/fuzz_targets/playout.rs`).
//!
//! # The algorithm, and why
//!
//! **Keyed on the RTP sequence number**, compared by wrapping 16-bit distance. Discord clients
//! number every packet they send (+1) but stop sending in silence, and the RTP timestamp then
//! jumps by the length of the pause. So a sequence gap is loss, a timestamp jump is a pause and
//! never loss. Packet `s` lives in slot `s mod capacity` (`capacity` rounded up to a power of two;
//! each slot holds up to 1,275 bytes, so the default 64 slots take ~80 KB per stream).
//! A packet before the next one to play is late (or a duplicate, when its slot still holds
//! the packet already played); one `capacity` or more ahead is a sender restart: the buffer starts over
//! with it (three such packets in a row far behind do the same).
//!
//! **States.** *Idle* until the first packet; *buffering* until the target delay is reached (the
//! packets buffered span `target` sequence numbers, or the oldest has waited `target × 20 ms`);
//! then *playing*, one frame per pull, with a speaking-started edge on the first. Each pull while
//! playing:
//! 1. the expected packet is there: [`Next::Packet`];
//! 2. it is missing but a later one is buffered: loss, [`Next::Missing`] with the next packet as
//!    the FEC candidate (Opus in-band FEC in packet `n+1` rebuilds packet `n`); counted `lost`.
//!    If the buffer is still shallower than the target, the pull waits instead (step 3's
//!    concealment without advancing): the packet may only be reordered, and the wait is how the
//!    delay grows to a raised target;
//! 3. nothing at or after it is buffered: the stream is late or has stopped. The pull conceals
//!    without advancing (`Missing` without FEC, counted `stalled`, not lost), so a packet that
//!    was merely delayed still plays. After `pause_after` such frames the stream is *paused*:
//!    [`Next::Idle`] and a speaking-stopped edge. The next packet re-buffers to the target and
//!    starts speaking again; sequence numbers skipped meanwhile count as lost.
//!
//! When the stream comes back after stalled frames with a gap, the stalled frames stand in for
//! the missing packets (they were already concealed): as long as the buffer is deeper than the
//! target, those sequence numbers are passed over as lost without a second concealment. What is
//! left of the stall was added delay.
//!
//! **Target delay from measured jitter.** Each packet's relative transit time
//! (arrival − timestamp ÷ 48 kHz, accumulated packet to packet so timestamp wrap-around and long
//! calls cost nothing) goes into a ring of the last 128 (~2.5 s). A packet whose transit exceeds
//! the ring's minimum by `j` raises the target at once to `ceil(j / 20 ms) + 1` (a spike must be
//! absorbed now, and the packet that revealed it may already be late). Once a second the target
//! is recomputed as `clamp(ceil((p95 − min) / 20 ms) + 1, min_delay, max_delay)`; if that is
//! lower and nothing raised it for a second, the target steps down by one frame. One step per
//! second, because NetEq and songbird both show that a buffer that shrinks as fast as it grows
//! oscillates under periodic Wi-Fi jitter. The ring is cleared on resume (a client might not
//! advance the timestamp across a pause, which would look like a huge spike).
//!
//! **Shrinking the real delay.** Once a second, if the buffer held at least `target + k`
//! frames over that second, `k` frames may go. How deep the buffer is comes from how long each
//! played packet waited (`k` whole periods: `k + 1` frames deep), ignoring the four shortest
//! waits of the second (packets that came late). Counting the packets buffered at each pull
//! instead, every lost or held-back packet was a dip, and a stream losing or reordering a few
//! packets a second kept a frame of extra delay for good. A silence frame (`F8 FF FE`, or any
//! packet of three bytes or less, i.e. DTX) is dropped as soon as it comes: nothing audible
//! goes. If no silence frame came for a whole second, one ordinary frame is dropped (at most one
//! per second, so speech is never sped up audibly); if the buffer holds more than `max_delay`,
//! the excess is dropped at once, since a second of extra latency is worse than a skip. Dropped
//! frames count as `skipped`.
//!
//! **Buffer delay** is the time from a packet's push to its pull: the last value and an
//! exponential average (weight 1/16, close to the median for a steady stream).
//!
//! **Durations.** Discord sends 20 ms packets and its RTP timestamp advances 960 per packet, so
//! any other duration would break the timeline: [`Playout::push`] refuses them
//! ([`Pushed::WrongDuration`], counted `rejected`), and the gap they leave is concealed like loss.

mod buffer;
mod decode;
mod jitter;
pub mod opus_packet;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use buffer::Playout;
pub use decode::{PCM_SAMPLES, StreamDecoder};

/// Playout buffer settings; [`Default`] is what a Discord receiver should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Lowest target delay in 20 ms frames, and the delay a stream starts with. Default 2.
    pub min_delay: u8,
    /// Highest target delay in frames. Default 10 (200 ms).
    pub max_delay: u8,
    /// Slots (packets held at most), rounded up to a power of two, at least 16. Default 64.
    pub capacity: u16,
    /// Frames with nothing to play (empty buffer) after which the stream counts as paused
    /// (speaking stopped) rather than late. Default 5: Discord clients end each utterance with
    /// five silence frames, so a gap longer than that is a pause.
    pub pause_after: u8,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        Self {
            min_delay: 2,
            max_delay: 10,
            capacity: 64,
            pause_after: 5,
        }
    }
}

/// The length of one frame (and one pull).
pub const FRAME: Duration = Duration::from_millis(20);

/// What [`Playout::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushed {
    /// Stored; it will play in turn.
    Buffered,
    /// The same sequence number is already buffered or was just played; dropped.
    Duplicate,
    /// Its turn has passed (played as missing, or before the stream's start); dropped.
    Late,
    /// Longer than an Opus packet can be; dropped.
    TooLarge,
    /// Not valid Opus framing (RFC 6716 §3), or empty; dropped.
    Malformed,
    /// Valid Opus but not 20 ms long; dropped (see the module docs).
    WrongDuration,
    /// So far from the stream's position that the sender must have restarted: the buffer was
    /// emptied and this packet starts a new stream. The caller should reset the decoder.
    Restarted,
}

/// What to play for one 20 ms tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    /// Not playing (before the start, while buffering, or paused): emit nothing.
    Idle,
    /// The expected packet is here.
    Packet {
        /// Its RTP sequence number.
        sequence: u16,
        /// Its RTP timestamp.
        timestamp: u32,
        /// The Opus packet.
        opus: &'a [u8],
    },
    /// The expected packet is missing (lost, or the stream is late): conceal it.
    Missing {
        /// The sequence number that should have played.
        sequence: u16,
        /// The next packet, when it is buffered: its in-band FEC may rebuild this one.
        fec: Option<&'a [u8]>,
    },
}

/// A speaking edge, taken with [`Playout::take_edge`] after each pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaking {
    /// The stream started playing (first frame after buffering).
    Started,
    /// The stream paused (nothing to play for `pause_after` frames) or was reset.
    Stopped,
}

/// What [`StreamDecoder::render`] put in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendered {
    /// [`Next::Idle`]: the output was zeroed and should not be emitted.
    Idle,
    /// The packet decoded normally.
    Decoded,
    /// A missing packet rebuilt from the next packet's in-band FEC.
    FecRecovered,
    /// A missing packet concealed by libopus's PLC.
    Concealed,
    /// The packet could not be decoded; PLC was rendered in its place.
    Failed(DecodeFailure),
}

impl Rendered {
    /// True when the output holds 20 ms of audio to emit (everything but [`Rendered::Idle`]).
    pub fn is_audio(self) -> bool {
        !matches!(self, Rendered::Idle)
    }
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeFailure {
    /// Its framing is not valid Opus.
    Malformed,
    /// It is not 20 ms long.
    WrongDuration,
    /// libopus refused its content.
    Codec,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlayoutError {
    /// libopus could not create the decoder.
    #[error("creating the Opus decoder: {0}")]
    Decoder(#[from] audiopus::Error),
}

/// Counters of one stream; plain values, copied out by [`Playout::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Packets pushed (every call to [`Playout::push`]).
    pub received: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets that arrived after their turn.
    pub late: u64,
    /// Packets refused: too large, malformed or not 20 ms.
    pub rejected: u64,
    /// Sequence numbers that never played (lost, late or refused).
    pub lost: u64,
    /// Frames concealed with PLC, including packets that failed to decode (from
    /// [`Playout::count`]).
    pub concealed: u64,
    /// Frames rebuilt from in-band FEC (from [`Playout::count`]).
    pub fec_recovered: u64,
    /// Packets libopus could not decode (from [`Playout::count`]; PLC played instead).
    pub decode_failed: u64,
    /// Packets played ([`Next::Packet`]).
    pub played: u64,
    /// Frames concealed while the buffer was empty (waiting for a late stream, or before a pause).
    pub stalled: u64,
    /// Packets dropped to shrink the delay (silence first).
    pub skipped: u64,
    /// Sender restarts detected (and [`Playout::reset`] calls).
    pub restarts: u64,
    /// Speaking-started edges.
    pub started: u64,
    /// Speaking-stopped edges.
    pub stopped: u64,
    /// Current target delay in frames.
    pub target_delay_frames: u8,
    /// Time from push to pull of the last packet played, in microseconds.
    pub buffer_delay_last_us: u64,
    /// Exponential average (weight 1/16) of the push-to-pull time, in microseconds.
    pub buffer_delay_avg_us: u64,
}
