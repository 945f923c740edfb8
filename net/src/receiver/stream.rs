//! One remote user's stream: their DAVE decryptor, playout buffer, decoder and output ring, and
//! the handle the application reads it through.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quaver_engine::MAX_OPUS_PACKET;

use super::{FRAME_PCM_LEN, ListenSlot, ReceiveMode, ReceiverError, ReceiverEvent, StreamConfig};
use crate::dave::{DaveError, FrameDecryptor, Installed, Passthrough, PreparedKey};
use crate::playout::{Next, Playout, PlayoutStats, Pushed, Rendered, Speaking, StreamDecoder};

/// Where a [`ReceivedFrame`]'s audio came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameOrigin {
    /// The packet arrived: decoded from it ([`ReceiveMode::Decode`]) or handed out as it is.
    Packet,
    /// The packet was lost; decoded from the in-band FEC of the one after it.
    FecRecovered,
    /// The packet was lost (or would not decode); libopus concealed it.
    Concealed,
    /// The packet was lost ([`ReceiveMode::Opus`]: no payload; a decoder would conceal it).
    Lost,
}

/// 20 ms of one user's audio, in play-out order.
#[derive(Clone)]
pub struct ReceivedFrame {
    /// The engine grid tick it was played out on: frames of different users with the same tick
    /// are simultaneous (what a recorder aligns on).
    pub tick: u64,
    /// When the receive thread played it out.
    pub at: Instant,
    /// When its packet arrived (`None` for a lost packet): `at - arrived` is the time it spent
    /// in the playout buffer.
    pub arrived: Option<Instant>,
    /// RTP sequence number (of the lost packet, for concealed frames).
    pub sequence: u16,
    /// RTP timestamp (48 kHz; extrapolated for lost packets).
    pub timestamp: u32,
    /// Where the audio came from.
    pub origin: FrameOrigin,
    pcm: [i16; FRAME_PCM_LEN],
    decoded: bool,
    opus: [u8; MAX_OPUS_PACKET],
    opus_len: u16,
}

impl ReceivedFrame {
    fn empty() -> Self {
        Self {
            tick: 0,
            at: Instant::now(),
            arrived: None,
            sequence: 0,
            timestamp: 0,
            origin: FrameOrigin::Lost,
            pcm: [0; FRAME_PCM_LEN],
            decoded: false,
            opus: [0; MAX_OPUS_PACKET],
            opus_len: 0,
        }
    }

    /// 960 interleaved stereo samples at 48 kHz ([`ReceiveMode::Decode`] only).
    pub fn pcm(&self) -> Option<&[i16; FRAME_PCM_LEN]> {
        self.decoded.then_some(&self.pcm)
    }

    /// The decrypted Opus packet, when one arrived for this frame.
    pub fn opus(&self) -> Option<&[u8]> {
        (self.opus_len > 0).then(|| &self.opus[..usize::from(self.opus_len)])
    }
}

impl fmt::Debug for ReceivedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedFrame")
            .field("tick", &self.tick)
            .field("sequence", &self.sequence)
            .field("timestamp", &self.timestamp)
            .field("origin", &self.origin)
            .field("decoded", &self.decoded)
            .field("opus_len", &self.opus_len)
            .finish()
    }
}

/// A user stream's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets filed into the playout buffer.
    pub received: u64,
    /// Packets that arrived twice (a DAVE frame's copy is caught as a replay before the
    /// buffer; both count here).
    pub duplicates: u64,
    /// Packets that arrived after their turn had played (dropped).
    pub late: u64,
    /// Packets refused by the playout buffer (not Opus, or not 20 ms long).
    pub rejected: u64,
    /// Sequence numbers that played out without their packet (lost on the way, late, or
    /// refused).
    pub lost: u64,
    /// Lost frames recovered from the next packet's in-band FEC.
    pub fec_recovered: u64,
    /// Frames concealed by libopus (lost without FEC, undecodable, or waiting for a late
    /// packet).
    pub concealed: u64,
    /// Frames concealed while the buffer was empty (a late packet, or the tail of an
    /// utterance before the pause is declared): not loss.
    pub stalled: u64,
    /// Frames played out (every origin).
    pub played: u64,
    /// DAVE frames that would not decrypt (no key yet, replayed, forged).
    pub undecryptable: u64,
    /// Frames dropped because the application did not read the ring in time.
    pub ring_overflows: u64,
    /// Buffering delay of the last played packet, arrival to play-out, in microseconds.
    pub buffer_delay_us: u64,
    /// The same, averaged (weight 1/16), in microseconds.
    pub buffer_delay_avg_us: u64,
    /// The playout buffer's current target, in 20 ms frames.
    pub target_delay_frames: u64,
    /// Times this user started speaking.
    pub speaking_starts: u64,
}

#[derive(Default)]
pub(super) struct SharedStats {
    received: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    rejected: AtomicU64,
    lost: AtomicU64,
    fec_recovered: AtomicU64,
    concealed: AtomicU64,
    stalled: AtomicU64,
    played: AtomicU64,
    undecryptable: AtomicU64,
    /// DAVE frames refused as replays: a packet that came twice, caught before the buffer.
    replayed: AtomicU64,
    ring_overflows: AtomicU64,
    buffer_delay_us: AtomicU64,
    buffer_delay_avg_us: AtomicU64,
    target_delay_frames: AtomicU64,
    speaking_starts: AtomicU64,
    speaking: AtomicBool,
}

impl SharedStats {
    fn snapshot(&self) -> StreamStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamStats {
            received: get(&self.received),
            duplicates: get(&self.duplicates) + get(&self.replayed),
            late: get(&self.late),
            rejected: get(&self.rejected),
            lost: get(&self.lost),
            fec_recovered: get(&self.fec_recovered),
            concealed: get(&self.concealed),
            stalled: get(&self.stalled),
            played: get(&self.played),
            undecryptable: get(&self.undecryptable),
            ring_overflows: get(&self.ring_overflows),
            buffer_delay_us: get(&self.buffer_delay_us),
            buffer_delay_avg_us: get(&self.buffer_delay_avg_us),
            target_delay_frames: get(&self.target_delay_frames),
            speaking_starts: get(&self.speaking_starts),
        }
    }

    /// Mirrors the playout buffer's figures (relaxed stores: a reader sees each one current,
    /// not all of them from one instant).
    fn publish(&self, p: &PlayoutStats) {
        let store = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        store(&self.received, p.received);
        store(&self.duplicates, p.duplicates);
        store(&self.late, p.late);
        store(&self.rejected, p.rejected);
        store(&self.lost, p.lost);
        store(&self.fec_recovered, p.fec_recovered);
        store(&self.concealed, p.concealed);
        store(&self.stalled, p.stalled);
        store(&self.played, p.played);
        store(&self.buffer_delay_us, p.buffer_delay_last_us);
        store(&self.buffer_delay_avg_us, p.buffer_delay_avg_us);
        store(&self.target_delay_frames, u64::from(p.target_delay_frames));
        store(&self.speaking_starts, p.started);
    }
}

/// The application's end of one user's stream: frames in play-out order on a lock-free ring,
/// and live figures. Read it at least every [`StreamOptions::ring_frames`](super::StreamOptions)
/// × 20 ms; frames that find the ring full are dropped and counted.
pub struct UserAudio {
    user_id: u64,
    ssrc: u32,
    frames: rtrb::Consumer<ReceivedFrame>,
    shared: Arc<SharedStats>,
}

impl fmt::Debug for UserAudio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAudio")
            .field("user_id", &self.user_id)
            .field("ssrc", &self.ssrc)
            .field("queued", &self.frames.slots())
            .finish()
    }
}

impl UserAudio {
    /// Whose audio this is.
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// Their SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The next frame, if one is ready.
    pub fn pop(&mut self) -> Option<ReceivedFrame> {
        self.frames.pop().ok()
    }

    /// Frames ready to read.
    pub fn ready(&self) -> usize {
        self.frames.slots()
    }

    /// Whether the user is speaking now (their packets are playing out).
    pub fn is_speaking(&self) -> bool {
        self.shared.speaking.load(Ordering::Relaxed)
    }

    /// The stream's figures now.
    pub fn stats(&self) -> StreamStats {
        self.shared.snapshot()
    }

    /// Whether the receive side has closed the stream (the user left, or the call stopped
    /// listening); frames still queued can be read.
    pub fn is_closed(&self) -> bool {
        self.frames.is_abandoned()
    }
}

/// The receive thread's side of one user stream.
pub(crate) struct Stream {
    pub(super) user_id: u64,
    pub(super) ssrc: u32,
    decryptor: FrameDecryptor,
    playout: Playout,
    decoder: Option<StreamDecoder>,
    frames: rtrb::Producer<ReceivedFrame>,
    shared: Arc<SharedStats>,
    /// The frame being built (5 KB: kept off the receive thread's stack).
    scratch: Box<ReceivedFrame>,
}

impl Stream {
    /// Makes a stream and its reader (control side: this allocates).
    pub(crate) fn build(
        config: StreamConfig,
        mode: ReceiveMode,
        now: Instant,
    ) -> Result<(Box<Self>, UserAudio), ReceiverError> {
        let decoder = match mode {
            ReceiveMode::Decode => Some(StreamDecoder::new()?),
            ReceiveMode::Opus => None,
        };
        let mut decryptor = FrameDecryptor::new();
        decryptor.set_passthrough(config.passthrough);
        for key in config.keys {
            // Fresh decryptor, keys oldest first: whatever comes back is dropped right here.
            let _ = decryptor.install_prepared(key, now);
        }
        let (frames, reader) = rtrb::RingBuffer::new(config.options.ring_frames.max(1));
        let shared = Arc::new(SharedStats::default());
        let stream = Box::new(Self {
            user_id: config.user_id,
            ssrc: config.ssrc,
            decryptor,
            playout: Playout::new(&config.options.playout),
            decoder,
            frames,
            shared: Arc::clone(&shared),
            scratch: Box::new(ReceivedFrame::empty()),
        });
        let audio = UserAudio {
            user_id: config.user_id,
            ssrc: config.ssrc,
            frames: reader,
            shared,
        };
        Ok((stream, audio))
    }

    /// Installs a DAVE key; what it displaced comes back.
    pub(super) fn install_key(&mut self, key: PreparedKey, now: Instant) -> Option<PreparedKey> {
        match self.decryptor.install_prepared(key, now) {
            Installed::Fresh(displaced) => displaced,
            Installed::AlreadyLive(key) => Some(key),
        }
    }

    pub(super) fn set_passthrough(&mut self, passthrough: Passthrough) {
        self.decryptor.set_passthrough(passthrough);
    }

    /// Files one transport-opened payload (a DAVE frame, or plain Opus before E2EE).
    pub(super) fn receive(
        &mut self,
        now: Instant,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
        scratch: &mut [u8],
    ) {
        let opus = match self.decryptor.decrypt_into(payload, scratch, now) {
            Ok(n) => &scratch[..n],
            Err(DaveError::Replayed { .. }) => {
                self.shared.replayed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                self.shared.undecryptable.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Pushed::Restarted = self.playout.push(now, sequence, timestamp, opus)
            && let Some(decoder) = &mut self.decoder
        {
            // A sender restart: the decoder's state belongs to the old stream.
            decoder.reset();
        }
        self.shared.publish(self.playout.stats());
    }

    /// Plays one tick out onto the ring; speaking changes go to `events`.
    pub(super) fn play(
        &mut self,
        call: ListenSlot,
        tick: u64,
        now: Instant,
        events: &mut impl FnMut(ReceiverEvent),
    ) {
        let next = self.playout.pull(now);
        let frame = &mut *self.scratch;
        let (sequence, timestamp, opus, origin) = match &next {
            Next::Idle => (0, 0, None, None),
            Next::Packet {
                sequence,
                timestamp,
                opus,
            } => (
                *sequence,
                *timestamp,
                Some(*opus),
                Some(FrameOrigin::Packet),
            ),
            Next::Missing { sequence, .. } => (*sequence, 0, None, Some(FrameOrigin::Lost)),
        };
        let mut rendered = Rendered::Idle;
        if let Some(origin) = origin {
            frame.tick = tick;
            frame.at = now;
            frame.sequence = sequence;
            frame.timestamp = timestamp;
            frame.origin = origin;
            let n = opus.map_or(0, |o| o.len().min(MAX_OPUS_PACKET));
            if let Some(o) = opus {
                frame.opus[..n].copy_from_slice(&o[..n]);
            }
            frame.opus_len = n as u16;
            frame.decoded = false;
            // Nobody reads a dropped reader's frames: no decode for them.
            if let Some(decoder) = &mut self.decoder
                && !self.frames.is_abandoned()
            {
                rendered = decoder.render(&next, &mut frame.pcm);
                frame.origin = match rendered {
                    Rendered::Decoded => FrameOrigin::Packet,
                    Rendered::FecRecovered => FrameOrigin::FecRecovered,
                    _ => FrameOrigin::Concealed,
                };
                frame.decoded = true;
            }
        }
        self.playout.count(rendered);
        let stats = self.playout.stats();
        if origin == Some(FrameOrigin::Packet) {
            frame.arrived = now.checked_sub(Duration::from_micros(stats.buffer_delay_last_us));
        } else {
            frame.arrived = None;
        }
        self.shared.publish(stats);
        match self.playout.take_edge() {
            Some(Speaking::Started) => {
                self.shared.speaking.store(true, Ordering::Relaxed);
                events(ReceiverEvent::SpeakingStarted {
                    call,
                    user_id: self.user_id,
                });
            }
            Some(Speaking::Stopped) => {
                self.shared.speaking.store(false, Ordering::Relaxed);
                events(ReceiverEvent::SpeakingStopped {
                    call,
                    user_id: self.user_id,
                });
            }
            None => {}
        }
        if origin.is_some() && self.frames.push(frame.clone()).is_err() {
            self.shared.ring_overflows.fetch_add(1, Ordering::Relaxed);
        }
    }
}
