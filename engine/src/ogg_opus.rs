//! Ogg Opus (RFC 7845) reading and writing: pre-encoded input for passthrough, and the output
//! of offline renders.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use ogg::writing::PacketWriteEndInfo;

/// Samples the decoder discards at the start; libopus's encoder look-ahead at 48 kHz.
pub const DEFAULT_PRE_SKIP: u16 = 312;

/// What the identification header (`OpusHead`) says about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Channels of the stream (1 or 2 once parsed).
    pub channels: u8,
    /// Samples at 48 kHz to discard from the start of the decoded audio.
    pub pre_skip: u16,
    /// The original input's sample rate (informational; Opus always decodes at 48 kHz here).
    pub input_sample_rate: u32,
}

/// Why an Ogg Opus stream was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OggOpusError {
    /// The stream is not Ogg Opus (missing or malformed headers).
    #[error("not an Ogg Opus stream: {0}")]
    NotOpus(&'static str),
    /// Ogg Opus, but a variant Quaver does not play (version, channel mapping).
    #[error("unsupported Ogg Opus stream: {0}")]
    Unsupported(&'static str),
    /// The Ogg container is corrupt.
    #[error("ogg: {0}")]
    Ogg(#[from] ogg::OggReadError),
    /// Reading the stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses an `OpusHead` packet (RFC 7845 §5.1). Rejects anything malformed without panicking.
pub fn parse_opus_head(packet: &[u8]) -> Result<OpusHead, OggOpusError> {
    if packet.len() < 19 || &packet[..8] != b"OpusHead" {
        return Err(OggOpusError::NotOpus("missing OpusHead"));
    }
    if packet[8] >> 4 != 0 {
        return Err(OggOpusError::Unsupported("major version above 0"));
    }
    let channels = packet[9];
    let pre_skip = u16::from_le_bytes([packet[10], packet[11]]);
    let input_sample_rate = u32::from_le_bytes([packet[12], packet[13], packet[14], packet[15]]);
    let mapping_family = packet[18];
    if mapping_family != 0 || !(1..=2).contains(&channels) {
        return Err(OggOpusError::Unsupported(
            "only mono and stereo (channel mapping family 0)",
        ));
    }
    Ok(OpusHead {
        channels,
        pre_skip,
        input_sample_rate,
    })
}

/// Reads the audio packets of an Ogg Opus stream, after its two header packets.
pub struct OggOpusReader<R: Read + Seek> {
    packets: ogg::PacketReader<R>,
    head: OpusHead,
    serial: u32,
    /// Packets read ahead while seeking, returned before reading further.
    queued: VecDeque<Vec<u8>>,
}

/// Samples per packet at 48 kHz: the only packet length Quaver plays (20 ms).
const PACKET_SAMPLES: u64 = 960;

/// How far from the end [`OggOpusReader::duration`] looks for the last page: a page is at most
/// 65,307 bytes, so the last page's header is always within this.
const LAST_PAGE_WINDOW: u64 = 65_536 + 27;

impl<R: Read + Seek> OggOpusReader<R> {
    /// Reads and checks the two header packets (`OpusHead`, `OpusTags`).
    pub fn new(reader: R) -> Result<Self, OggOpusError> {
        let mut packets = ogg::PacketReader::new(reader);
        let first = packets
            .read_packet()?
            .ok_or(OggOpusError::NotOpus("empty stream"))?;
        let head = parse_opus_head(&first.data)?;
        let serial = first.stream_serial();
        let tags = packets
            .read_packet()?
            .ok_or(OggOpusError::NotOpus("missing OpusTags"))?;
        if !tags.data.starts_with(b"OpusTags") {
            return Err(OggOpusError::NotOpus("missing OpusTags"));
        }
        Ok(Self {
            packets,
            head,
            serial,
            queued: VecDeque::new(),
        })
    }

    /// The stream's length, from the granule position of its last page (RFC 7845 §4), or
    /// `None` when no page states one. Reads the end of the stream and comes back.
    pub fn duration(&mut self) -> Result<Option<Duration>, OggOpusError> {
        let inner = self.packets.get_mut();
        let here = inner.stream_position()?;
        let end = inner.seek(SeekFrom::End(0))?;
        let start = end.saturating_sub(LAST_PAGE_WINDOW);
        inner.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity((end - start) as usize);
        inner.take(end - start).read_to_end(&mut tail)?;
        self.packets.get_mut().seek(SeekFrom::Start(here))?;
        let serial = self.serial.to_le_bytes();
        let last = (0..tail.len().saturating_sub(27)).rev().find_map(|at| {
            let header = &tail[at..at + 27];
            let granule = u64::from_le_bytes(header[6..14].try_into().ok()?);
            (header.starts_with(b"OggS")
                && header[4] == 0
                && header[14..18] == serial
                && granule != u64::MAX)
                .then_some(granule)
        });
        Ok(last.map(|granule| samples_to_duration(granule.saturating_sub(self.pre_skip()))))
    }

    /// Moves to the packet that contains `to` (bisecting on page granule positions) and returns
    /// where that packet starts, or `None` when `to` is past the end.
    pub fn seek(&mut self, to: Duration) -> Result<Option<Duration>, OggOpusError> {
        self.queued.clear();
        let to_samples = u64::try_from(to.as_micros() * 48 / 1000).unwrap_or(u64::MAX);
        let goal = self.pre_skip().saturating_add(to_samples);
        if !self.packets.seek_absgp(Some(self.serial), goal)? {
            return Ok(None);
        }
        // A page's granule position is where its last packet ends; its packets, 20 ms each,
        // tell where the first one starts. The bisection can land a page or more early (on
        // the headers, or before a packet continued across pages), so whole pages that end
        // before the goal are read past.
        let mut page = Vec::new();
        loop {
            let Some(packet) = self.packets.read_packet()? else {
                return Ok(None);
            };
            if packet.stream_serial() != self.serial {
                continue;
            }
            let last = packet.last_in_page();
            let end = packet.absgp_page();
            page.push(packet.data);
            if !last {
                continue;
            }
            if end <= goal {
                page.clear();
                continue;
            }
            let mut start = end.saturating_sub(page.len() as u64 * PACKET_SAMPLES);
            for packet in page {
                if start + PACKET_SAMPLES <= goal && self.queued.is_empty() {
                    start += PACKET_SAMPLES;
                } else {
                    self.queued.push_back(packet);
                }
            }
            return Ok(Some(samples_to_duration(
                start.saturating_sub(self.pre_skip()),
            )));
        }
    }

    fn pre_skip(&self) -> u64 {
        u64::from(self.head.pre_skip)
    }

    /// The stream's identification header.
    pub fn head(&self) -> OpusHead {
        self.head
    }

    /// The next audio packet of the first logical stream, or `None` at its end.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, OggOpusError> {
        if let Some(packet) = self.queued.pop_front() {
            return Ok(Some(packet));
        }
        loop {
            let Some(packet) = self.packets.read_packet()? else {
                return Ok(None);
            };
            if packet.stream_serial() == self.serial {
                return Ok(Some(packet.data));
            }
        }
    }
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_micros(samples.saturating_mul(1000) / 48)
}

/// Writes a standard Ogg Opus file: headers, then one page entry per 20 ms packet.
pub struct OggOpusWriter<W: Write> {
    packets: ogg::PacketWriter<'static, W>,
    serial: u32,
    pre_skip: u64,
    samples: u64,
    pending: Option<Vec<u8>>,
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes both header packets for a stereo stream.
    pub fn new(
        writer: W,
        pre_skip: u16,
        input_sample_rate: u32,
        serial: u32,
    ) -> std::io::Result<Self> {
        let mut packets = ogg::PacketWriter::new(writer);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(2); // channels
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&input_sample_rate.to_le_bytes());
        head.extend_from_slice(&0_i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0
        packets.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;

        let vendor = concat!("quaver ", env!("CARGO_PKG_VERSION"));
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0_u32.to_le_bytes()); // no user comments
        packets.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(Self {
            packets,
            serial,
            pre_skip: u64::from(pre_skip),
            samples: 0,
            pending: None,
        })
    }

    /// Appends one packet of `samples` 48 kHz samples per channel.
    pub fn write_packet(&mut self, packet: &[u8], samples: u64) -> std::io::Result<()> {
        // Held back one packet so the last one can carry the end-of-stream flag.
        if let Some(previous) = self.pending.take() {
            let granule = self.pre_skip + self.samples;
            self.packets.write_packet(
                previous,
                self.serial,
                PacketWriteEndInfo::NormalPacket,
                granule,
            )?;
        }
        self.samples += samples;
        self.pending = Some(packet.to_vec());
        Ok(())
    }

    /// Writes the last packet with the end-of-stream flag and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let granule = self.pre_skip + self.samples;
        let last = self.pending.take().unwrap_or_default();
        self.packets
            .write_packet(last, self.serial, PacketWriteEndInfo::EndStream, granule)?;
        Ok(self.packets.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn written_streams_read_back() {
        let mut writer = OggOpusWriter::new(Vec::new(), 312, 44_100, 7).unwrap();
        for i in 0..10_u8 {
            writer.write_packet(&[0xFC, i], 960).unwrap();
        }
        let bytes = writer.finish().unwrap();
        let mut reader = OggOpusReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(
            reader.head(),
            OpusHead {
                channels: 2,
                pre_skip: 312,
                input_sample_rate: 44_100
            }
        );
        let mut count = 0;
        while let Some(packet) = reader.next_packet().unwrap() {
            assert_eq!(packet, vec![0xFC, count]);
            count += 1;
        }
        assert_eq!(count, 10);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert!(OggOpusReader::new(Cursor::new(Vec::new())).is_err());
        assert!(OggOpusReader::new(Cursor::new(b"OggS garbage".to_vec())).is_err());
        let mut seed = 0x2545_f491_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = parse_opus_head(&bytes);
            let _ = OggOpusReader::new(Cursor::new(bytes));
        }
        assert!(parse_opus_head(b"OpusHead\x01\x03\x00\x00\x80\xbb\x00\x00\x00\x00\x00").is_err());
    }
}

#[cfg(test)]
mod seek_tests {
    use super::*;
    use std::io::Cursor;

    /// 150 packets (3 s); packet `i` carries `i` so a seek's landing is visible.
    fn numbered() -> Vec<u8> {
        let mut writer = OggOpusWriter::new(Vec::new(), 312, 48_000, 9).unwrap();
        for i in 0..150_u16 {
            let mut packet = vec![0xFC];
            packet.extend_from_slice(&i.to_le_bytes());
            packet.resize(120, 0x55);
            writer.write_packet(&packet, 960).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn seeks_land_on_the_packet_holding_the_time_and_the_duration_is_read() {
        let mut reader = OggOpusReader::new(Cursor::new(numbered())).unwrap();
        assert_eq!(reader.duration().unwrap(), Some(Duration::from_secs(3)));
        for (to_ms, packet) in [
            (1_500, 75_u16),
            (0, 0),
            (2_990, 149),
            (10, 0),
            (20, 1),
            (1_234, 61),
        ] {
            let at = reader.seek(Duration::from_millis(to_ms)).unwrap();
            assert_eq!(
                at,
                Some(Duration::from_millis(u64::from(packet) * 20)),
                "{to_ms} ms"
            );
            let next = reader.next_packet().unwrap().unwrap();
            assert_eq!(u16::from_le_bytes([next[1], next[2]]), packet, "{to_ms} ms");
        }
        assert_eq!(reader.seek(Duration::from_secs(4)).unwrap(), None);
    }
}
