//! RTP headers (RFC 3550) as Discord voice uses them (PROTOCOL.md §4).
//!
//! Sending writes the fixed 12-byte header (`0x80 0x78 seq ts ssrc`); parsing accepts anything a
//! peer may send — CSRCs, the extension bit, padding — and rejects malformed input with an error.

use thiserror::Error;

/// Length of the fixed RTP header without CSRCs or extension.
pub const HEADER_LEN: usize = 12;
/// Payload type Discord uses for Opus.
pub const PAYLOAD_TYPE_OPUS: u8 = 120;
/// RTP timestamp advance per 20 ms frame at 48 kHz.
pub const TIMESTAMP_STEP: u32 = 960;
/// The 3-byte Opus silence frame sent five times when a call stops producing audio.
pub const SILENCE_FRAME: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// How many silence frames follow the end of a stream.
pub const SILENCE_FRAMES_AT_STOP: u8 = 5;
/// Largest datagram the sender builds (songbird's limit; safely below common MTUs).
pub const MAX_PACKET: usize = 1460;

/// Why an RTP header could not be parsed or written.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtpError {
    /// Fewer bytes than the header claims.
    #[error("packet truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0} (expected 2)")]
    Version(u8),
    /// The padding count is zero or larger than the payload.
    #[error("invalid RTP padding")]
    Padding,
    /// The destination buffer is too small.
    #[error("buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Sequence number, timestamp and SSRC of one outgoing stream.
///
/// Starts at random sequence and timestamp (as discord.js does) so that a restarted stream is not
/// mistaken for a replay; both wrap around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpStream {
    /// Synchronisation source from the gateway's Ready.
    pub ssrc: u32,
    /// Sequence number of the next packet.
    pub sequence: u16,
    /// Timestamp of the next packet.
    pub timestamp: u32,
}

impl RtpStream {
    /// A stream with random initial sequence number and timestamp.
    pub fn new(ssrc: u32) -> Self {
        Self::with_start(ssrc, rand::random(), rand::random())
    }

    /// A stream starting at the given sequence number and timestamp.
    pub fn with_start(ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        Self {
            ssrc,
            sequence,
            timestamp,
        }
    }

    /// Writes the header of the next 20 ms packet into `buf` and advances the stream.
    /// Returns the header length ([`HEADER_LEN`]).
    pub fn write_next(&mut self, buf: &mut [u8]) -> Result<usize, RtpError> {
        let len = write_header(buf, self.sequence, self.timestamp, self.ssrc)?;
        self.advance();
        Ok(len)
    }

    /// Moves on by one 20 ms frame: sequence +1, timestamp +960, both wrapping.
    pub fn advance(&mut self) {
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(TIMESTAMP_STEP);
    }
}

/// Writes a plain 12-byte Opus RTP header (V=2, no padding, extension or CSRC, marker 0).
pub fn write_header(
    buf: &mut [u8],
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) -> Result<usize, RtpError> {
    let have = buf.len();
    let header = buf.get_mut(..HEADER_LEN).ok_or(RtpError::BufferTooSmall {
        needed: HEADER_LEN,
        have,
    })?;
    header[0] = 0x80;
    header[1] = PAYLOAD_TYPE_OPUS;
    header[2..4].copy_from_slice(&sequence.to_be_bytes());
    header[4..8].copy_from_slice(&timestamp.to_be_bytes());
    header[8..12].copy_from_slice(&ssrc.to_be_bytes());
    Ok(HEADER_LEN)
}

/// A parsed RTP header, borrowing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader<'a> {
    /// The P bit: the payload ends in padding whose last byte is the pad count.
    pub padding: bool,
    /// The X bit: a header extension follows the CSRCs.
    pub extension: bool,
    /// The M bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// CSRC list, raw (4 bytes each, big-endian).
    pub csrcs: &'a [u8],
    /// Extension profile (e.g. `0xBEDE`) when [`RtpHeader::extension`] is set.
    pub extension_profile: u16,
    /// Extension body length in bytes (`4 * length field`) when [`RtpHeader::extension`] is set.
    pub extension_body_len: usize,
    /// Bytes of the "rtpsize" cleartext header: 12 + 4·CC, plus the 4-byte extension preamble if X.
    /// This is the AAD of the current transport-encryption modes.
    pub cleartext_len: usize,
}

impl<'a> RtpHeader<'a> {
    /// Parses the header at the start of `packet`. The extension body is not checked here: in the
    /// "rtpsize" modes it sits inside the ciphertext (see [`RtpHeader::split_extension`]).
    pub fn parse(packet: &'a [u8]) -> Result<Self, RtpError> {
        let have = packet.len();
        if have < HEADER_LEN {
            return Err(RtpError::Truncated {
                needed: HEADER_LEN,
                have,
            });
        }
        let version = packet[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = packet[0] & 0x20 != 0;
        let extension = packet[0] & 0x10 != 0;
        let csrc_count = usize::from(packet[0] & 0x0F);
        let csrc_end = HEADER_LEN + 4 * csrc_count;
        let csrcs = packet
            .get(HEADER_LEN..csrc_end)
            .ok_or(RtpError::Truncated {
                needed: csrc_end,
                have,
            })?;
        let (extension_profile, extension_body_len, cleartext_len) = if extension {
            let preamble = packet
                .get(csrc_end..csrc_end + 4)
                .ok_or(RtpError::Truncated {
                    needed: csrc_end + 4,
                    have,
                })?;
            let profile = u16::from_be_bytes([preamble[0], preamble[1]]);
            let words = u16::from_be_bytes([preamble[2], preamble[3]]);
            (profile, 4 * usize::from(words), csrc_end + 4)
        } else {
            (0, 0, csrc_end)
        };
        Ok(Self {
            padding,
            extension,
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7F,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            csrcs,
            extension_profile,
            extension_body_len,
            cleartext_len,
        })
    }

    /// Number of CSRCs.
    pub fn csrc_count(&self) -> usize {
        self.csrcs.len() / 4
    }

    /// Given the bytes after the cleartext header (decrypted, for the "rtpsize" modes), skips the
    /// extension body and strips padding, returning the media payload.
    pub fn split_extension<'b>(&self, body: &'b [u8]) -> Result<&'b [u8], RtpError> {
        let payload = body
            .get(self.extension_body_len..)
            .ok_or(RtpError::Truncated {
                needed: self.extension_body_len,
                have: body.len(),
            })?;
        strip_padding(payload, self.padding)
    }
}

/// Removes RTP padding: when `padding` is set the last byte counts the pad bytes (itself included).
pub fn strip_padding(payload: &[u8], padding: bool) -> Result<&[u8], RtpError> {
    if !padding {
        return Ok(payload);
    }
    let count = usize::from(*payload.last().ok_or(RtpError::Padding)?);
    if count == 0 || count > payload.len() {
        return Err(RtpError::Padding);
    }
    Ok(&payload[..payload.len() - count])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_advance() {
        let mut stream = RtpStream::with_start(0xDEAD_BEEF, 7, 100);
        let mut buf = [0u8; HEADER_LEN];
        stream.write_next(&mut buf).unwrap(); // invariant: buffer is exactly HEADER_LEN
        let h = RtpHeader::parse(&buf).unwrap(); // invariant: we just wrote a valid header
        assert_eq!((h.sequence, h.timestamp, h.ssrc), (7, 100, 0xDEAD_BEEF));
        assert_eq!(h.payload_type, PAYLOAD_TYPE_OPUS);
        assert_eq!(h.cleartext_len, HEADER_LEN);
        assert_eq!((stream.sequence, stream.timestamp), (8, 1060));
    }

    #[test]
    fn wraps_around() {
        let mut stream = RtpStream::with_start(1, u16::MAX, u32::MAX - 100);
        stream.advance();
        assert_eq!(stream.sequence, 0);
        assert_eq!(stream.timestamp, 859);
    }

    #[test]
    fn random_starts_differ() {
        let a = RtpStream::new(1);
        let b = RtpStream::new(1);
        // 48 random bits: a collision here would mean the generator is broken.
        assert!(a.sequence != b.sequence || a.timestamp != b.timestamp);
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        // V=2 P=1 X=1 CC=2, M=1 PT=120
        let mut p = vec![0xB2, 0xF8, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // CSRCs
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1]); // extension preamble, 1 word
        p.extend_from_slice(&[9, 9, 9, 9]); // extension body
        p.extend_from_slice(&[0xAA, 0xBB, 0, 0, 3]); // payload + 3 bytes padding
        let h = RtpHeader::parse(&p).unwrap(); // invariant: valid packet built above
        assert!(h.padding && h.extension && h.marker);
        assert_eq!(h.csrc_count(), 2);
        assert_eq!(h.extension_profile, 0xBEDE);
        assert_eq!(h.cleartext_len, 24);
        let payload = h.split_extension(&p[h.cleartext_len..]).unwrap(); // invariant: as built
        assert_eq!(payload, &[0xAA, 0xBB]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(RtpHeader::parse(&[0x80; 5]).is_err());
        assert!(matches!(
            RtpHeader::parse(&[0x40; 12]),
            Err(RtpError::Version(1))
        ));
        assert!(RtpHeader::parse(&[0x8F; 20]).is_err()); // 15 CSRCs, truncated
        assert!(strip_padding(&[1, 2, 0], true).is_err());
        assert!(strip_padding(&[1, 2, 9], true).is_err());
        assert!(strip_padding(&[], true).is_err());
        assert!(write_header(&mut [0u8; 11], 0, 0, 0).is_err());
    }
}
