//! Receive side (PROTOCOL.md §7): demultiplex RTP from RTCP, open transport encryption into a
//! caller buffer, skip the decrypted extension body and strip padding.
//!
//! Every function here takes untrusted bytes and returns an error for garbage; none panics.

use thiserror::Error;

use crate::crypto::{CryptoError, TransportCipher};
use crate::rtp::{HEADER_LEN, PAYLOAD_TYPE_OPUS, RtpError, RtpHeader};

/// Fixed RTCP header length, the AAD of transport-encrypted RTCP.
pub const RTCP_HEADER_LEN: usize = 8;

/// What a datagram on the voice socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// RTP (any payload type).
    Rtp,
    /// RTCP: byte 1 in 192..=223 (RFC 5761).
    Rtcp,
    /// Too short or not version 2.
    Unknown,
}

/// Classifies a datagram by its first two bytes.
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet {
        [b0, b1, ..] if b0 >> 6 == 2 => {
            if (192..=223).contains(b1) {
                PacketKind::Rtcp
            } else {
                PacketKind::Rtp
            }
        }
        _ => PacketKind::Unknown,
    }
}

/// Why a received packet was rejected.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Not RTP/RTCP version 2.
    #[error("not an RTP or RTCP packet")]
    NotRtp,
    /// RTP payload type other than Opus (e.g. video); ignore it.
    #[error("payload type {0} is not Opus")]
    PayloadType(u8),
    /// Header problem.
    #[error(transparent)]
    Rtp(#[from] RtpError),
    /// Decryption problem.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// An opened Opus RTP packet; `payload` borrows the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedRtp<'a> {
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Sender's SSRC.
    pub ssrc: u32,
    /// The marker bit.
    pub marker: bool,
    /// The media payload (Opus or a DAVE frame) without extension body and padding.
    pub payload: &'a [u8],
}

/// Opens an Opus RTP packet: checks the header, decrypts into `out` (which receives the cleartext
/// header too), skips the extension body and strips padding.
pub fn open_rtp<'o>(
    cipher: &TransportCipher,
    packet: &[u8],
    out: &'o mut [u8],
) -> Result<ReceivedRtp<'o>, ReceiveError> {
    if classify(packet) != PacketKind::Rtp {
        return Err(ReceiveError::NotRtp);
    }
    let outer = RtpHeader::parse(packet)?;
    if outer.payload_type != PAYLOAD_TYPE_OPUS {
        return Err(ReceiveError::PayloadType(outer.payload_type));
    }
    // The rtpsize modes leave CSRCs and the extension preamble in the clear; the legacy ones
    // encrypt everything after the fixed header, so the header is parsed again after decryption.
    let clear = if cipher.mode().is_rtpsize() {
        outer.cleartext_len
    } else {
        HEADER_LEN
    };
    let have = out.len();
    let head = out.get_mut(..clear).ok_or(RtpError::BufferTooSmall {
        needed: clear,
        have,
    })?;
    head.copy_from_slice(&packet[..clear]);
    let n = cipher.open_into(packet, clear, &mut out[clear..])?;
    let plain = &out[..clear + n];
    let header = RtpHeader::parse(plain)?;
    let body = plain
        .get(header.cleartext_len..)
        .ok_or(RtpError::Truncated {
            needed: header.cleartext_len,
            have: plain.len(),
        })?;
    let payload = header.split_extension(body)?;
    Ok(ReceivedRtp {
        sequence: header.sequence,
        timestamp: header.timestamp,
        ssrc: header.ssrc,
        marker: header.marker,
        payload,
    })
}

/// Opens a transport-encrypted RTCP packet (AAD = the 8-byte fixed header) into `out`; returns
/// the decrypted body after that header.
pub fn open_rtcp<'o>(
    cipher: &TransportCipher,
    packet: &[u8],
    out: &'o mut [u8],
) -> Result<&'o [u8], ReceiveError> {
    if classify(packet) != PacketKind::Rtcp {
        return Err(ReceiveError::NotRtp);
    }
    let n = cipher.open_into(packet, RTCP_HEADER_LEN, out)?;
    Ok(&out[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{EncryptionMode, Sealer, SecretKey};

    #[test]
    fn demux() {
        assert_eq!(classify(&[0x80, 0x78]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0xF8]), PacketKind::Rtp); // marker + 120
        assert_eq!(classify(&[0x80, 200]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x81, 223]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
        assert_eq!(classify(&[0x00, 0x78]), PacketKind::Unknown);
    }

    #[test]
    fn opens_extension_and_padding() {
        let key = SecretKey::new([3; 32]);
        for mode in EncryptionMode::PREFERENCE {
            let mut sealer = Sealer::new(mode, &key);
            // V=2 P=1 X=1, one-byte-header extension with one word, payload "hi", 2 pad bytes.
            let mut buf = [0u8; 128];
            let clear = [0xB0, 0x78, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0xBE, 0xDE, 0, 1];
            buf[..16].copy_from_slice(&clear);
            let body = [0x10, 0xAA, 0, 0, b'h', b'i', 0, 2];
            buf[16..24].copy_from_slice(&body);
            // Legacy non-rtpsize modes encrypt the extension preamble too.
            let aad = if mode.is_rtpsize() { 16 } else { 12 };
            let n = sealer.seal(&mut buf, aad, 24 - aad).unwrap(); // invariant: fits
            let cipher = TransportCipher::new(mode, &key);
            let mut out = [0u8; 128];
            let r = open_rtp(&cipher, &buf[..n], &mut out).unwrap(); // invariant: valid packet
            assert_eq!((r.sequence, r.timestamp, r.ssrc), (5, 6, 7));
            assert_eq!(r.payload, b"hi");
        }
    }

    #[test]
    fn rejects_other_payload_types_and_rtcp() {
        let cipher =
            TransportCipher::new(EncryptionMode::Aes256GcmRtpSize, &SecretKey::new([0; 32]));
        let mut out = [0u8; 64];
        let mut p = [0u8; 40];
        p[0] = 0x80;
        p[1] = 101;
        assert_eq!(
            open_rtp(&cipher, &p, &mut out),
            Err(ReceiveError::PayloadType(101))
        );
        p[1] = 200;
        assert_eq!(open_rtp(&cipher, &p, &mut out), Err(ReceiveError::NotRtp));
        assert!(open_rtcp(&cipher, &p, &mut out).is_err());
    }
}
