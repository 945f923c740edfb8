//! The producer ends users (and decoders) write into: [`PcmWriter`] for PCM, [`OpusWriter`] for
//! pre-encoded 20 ms Opus packets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::frame::{FRAME_SAMPLES, MAX_OPUS_PACKET};
use crate::packets::PacketProducer;
use crate::pcm::{PcmFormat, i16_to_f32};
use crate::source::SourceShared;

/// How long a blocking write sleeps when the ring is full before trying again. The mixer drains
/// 20 ms per tick, so a few milliseconds keeps the ring topped up without spinning.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(2);

/// The producer end of a source's lock-free PCM ring: interleaved f32 or i16 samples at the
/// source's own rate and channel count.
///
/// Writes never block the mixer. A full ring is backpressure on the writer: the non-blocking
/// `write_*` methods accept what fits and the `write_all_*` methods wait for room. Dropping the
/// writer or calling [`PcmWriter::finish`] lets the source play out what is buffered and end.
pub struct PcmWriter {
    ring: rtrb::Producer<f32>,
    format: PcmFormat,
    shared: Arc<SourceShared>,
    /// Samples written so far, for seek marks.
    written: u64,
}

impl std::fmt::Debug for PcmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmWriter")
            .field("format", &self.format)
            .field("free_samples", &self.ring.slots())
            .finish()
    }
}

impl PcmWriter {
    pub(crate) fn new(
        ring: rtrb::Producer<f32>,
        format: PcmFormat,
        shared: Arc<SourceShared>,
    ) -> Self {
        Self {
            ring,
            format,
            shared,
            written: 0,
        }
    }

    /// The format the samples written here are read as.
    pub fn format(&self) -> PcmFormat {
        self.format
    }

    /// Interleaved samples that fit right now (a multiple of the channel count).
    pub fn free_samples(&self) -> usize {
        let channels = usize::from(self.format.channels());
        self.ring.slots() / channels * channels
    }

    /// Writes as many whole frames of `samples` as fit and returns how many samples it wrote.
    /// Fails once the source has ended.
    pub fn write_f32(&mut self, samples: &[f32]) -> Result<usize> {
        self.check_alive()?;
        let count = self
            .free_samples()
            .min(whole_frames(samples.len(), self.format));
        let (written, _) = self.ring.push_partial_slice(&samples[..count]);
        self.written += written.len() as u64;
        self.note_full(written.len(), samples.len());
        Ok(written.len())
    }

    /// Like [`PcmWriter::write_f32`] for 16-bit samples.
    pub fn write_i16(&mut self, samples: &[i16]) -> Result<usize> {
        self.check_alive()?;
        let count = self
            .free_samples()
            .min(whole_frames(samples.len(), self.format));
        if count == 0 {
            return Ok(0);
        }
        let chunk = self
            .ring
            .write_chunk_uninit(count)
            .map_err(|_| Error::SourceEnded)?;
        let written = chunk.fill_from_iter(samples[..count].iter().copied().map(i16_to_f32));
        self.written += written as u64;
        self.note_full(written, samples.len());
        Ok(written)
    }

    /// Writes every whole frame of `samples`, waiting for room while the ring is full.
    /// Fails if the source ends first (for example after [`crate::SourceHandle::stop`]).
    pub fn write_all_f32(&mut self, samples: &[f32]) -> Result<()> {
        let mut rest = &samples[..whole_frames(samples.len(), self.format)];
        while !rest.is_empty() {
            let written = self.write_f32(rest)?;
            rest = &rest[written..];
            if !rest.is_empty() {
                std::thread::sleep(BACKPRESSURE_POLL);
            }
        }
        Ok(())
    }

    /// Like [`PcmWriter::write_all_f32`] for 16-bit samples.
    pub fn write_all_i16(&mut self, samples: &[i16]) -> Result<()> {
        let mut rest = &samples[..whole_frames(samples.len(), self.format)];
        while !rest.is_empty() {
            let written = self.write_i16(rest)?;
            rest = &rest[written..];
            if !rest.is_empty() {
                std::thread::sleep(BACKPRESSURE_POLL);
            }
        }
        Ok(())
    }

    /// Ends the input: the source plays what is buffered, then ends with an event.
    pub fn finish(self) {
        // Drop does the work, so finishing and dropping behave the same.
    }

    /// Whether the source has ended; writes fail from then on.
    pub fn is_ended(&self) -> bool {
        self.shared.is_ended()
    }

    /// Samples written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// A write that did not fit means the producer runs ahead of real time on purpose.
    fn note_full(&self, written: usize, asked: usize) {
        if written < whole_frames(asked, self.format) {
            self.shared.ahead.store(true, Ordering::Relaxed);
        }
    }

    fn check_alive(&self) -> Result<()> {
        if self.shared.is_ended() {
            Err(Error::SourceEnded)
        } else {
            Ok(())
        }
    }
}

impl Drop for PcmWriter {
    fn drop(&mut self) {
        self.shared.finish();
    }
}

fn whole_frames(samples: usize, format: PcmFormat) -> usize {
    let channels = usize::from(format.channels());
    samples / channels * channels
}

/// One pre-encoded 20 ms Opus packet, as the mixer reads it from a source's ring (see
/// [`crate::packets`]) or keeps it. Fixed size, so it lives on the stack or in place.
#[derive(Clone, Copy)]
pub(crate) struct OpusPacket {
    pub(crate) len: u16,
    pub(crate) data: [u8; MAX_OPUS_PACKET],
}

impl OpusPacket {
    pub(crate) const EMPTY: Self = Self {
        len: 0,
        data: [0; MAX_OPUS_PACKET],
    };

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }

    /// Holds a copy of `bytes`, cut at [`MAX_OPUS_PACKET`] (a ring never holds longer).
    pub(crate) fn set(&mut self, bytes: &[u8]) {
        let len = bytes.len().min(MAX_OPUS_PACKET);
        self.data[..len].copy_from_slice(&bytes[..len]);
        self.len = len as u16;
    }
}

/// Checks that `packet` is one Opus packet of exactly 20 ms, the only duration a Discord RTP
/// stream advancing 960 samples per packet can carry.
pub fn validate_opus_packet(packet: &[u8]) -> Result<()> {
    if packet.is_empty() {
        return Err(Error::InvalidOpusPacket("empty packet"));
    }
    if packet.len() > MAX_OPUS_PACKET {
        return Err(Error::InvalidOpusPacket("longer than 1275 bytes"));
    }
    let parsed = audiopus::packet::Packet::try_from(packet)
        .map_err(|_| Error::InvalidOpusPacket("unreadable packet"))?;
    match audiopus::packet::nb_samples(parsed, audiopus::SampleRate::Hz48000) {
        Ok(FRAME_SAMPLES) => Ok(()),
        Ok(_) => Err(Error::InvalidOpusPacket("packet is not 20 ms long")),
        Err(_) => Err(Error::InvalidOpusPacket("malformed table-of-contents byte")),
    }
}

/// The producer end of a pre-encoded Opus source: one 20 ms packet per write.
///
/// When the source is alone in its call at unity volume, its packets are sent as they are
/// (passthrough, no re-encoding); otherwise they are decoded and mixed.
pub struct OpusWriter {
    ring: PacketProducer,
    shared: Arc<SourceShared>,
    /// Packets written so far, for seek marks.
    written: u64,
}

impl std::fmt::Debug for OpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusWriter")
            .field("free_packets", &self.ring.free_packets())
            .finish()
    }
}

impl OpusWriter {
    pub(crate) fn new(ring: PacketProducer, shared: Arc<SourceShared>) -> Self {
        Self {
            ring,
            shared,
            written: 0,
        }
    }

    /// Queues one 20 ms packet. Returns `Ok(false)` when the ring is full (try again after a
    /// frame); fails for packets that are not valid 20 ms Opus and once the source has ended.
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<bool> {
        if self.shared.is_ended() {
            return Err(Error::SourceEnded);
        }
        validate_opus_packet(packet)?;
        if !self.ring.fits(packet.len()) {
            // The producer runs ahead of real time on purpose: no latency cap for it.
            self.shared.ahead.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let pushed = self.ring.push((), packet);
        self.written += u64::from(pushed);
        Ok(pushed)
    }

    /// Queues one packet, waiting while the ring is full.
    pub fn write_packet_blocking(&mut self, packet: &[u8]) -> Result<()> {
        while !self.write_packet(packet)? {
            std::thread::sleep(BACKPRESSURE_POLL);
        }
        Ok(())
    }

    /// Packets that surely fit right now, whatever their size (smaller ones may fit more:
    /// the ring holds [`SourceOptions::buffer`](crate::SourceOptions::buffer) of packets
    /// averaging up to 533 bytes, a 213 kb/s stream, beside the last two it played).
    pub fn free_packets(&self) -> usize {
        self.ring.free_packets()
    }

    /// Ends the input: the source plays what is buffered, then ends with an event.
    pub fn finish(self) {}

    /// Whether the source has ended; writes fail from then on.
    pub fn is_ended(&self) -> bool {
        self.shared.is_ended()
    }

    /// Packets written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for OpusWriter {
    fn drop(&mut self) {
        self.shared.finish();
    }
}
