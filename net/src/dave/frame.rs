//! The DAVE frame layout (PROTOCOL.md §6 "Frame format"):
//!
//! ```text
//! [ ciphertext ][ tag: 8 ][ ULEB128 nonce ][ ULEB128 (offset, len) pairs ][ supp_size: u8 ][ FA FA ]
//! supp_size = 8 + len(nonce) + len(ranges) + 1 + 2
//! ```
//!
//! Opus frames carry no unencrypted ranges, so the supplemental section of an Opus frame is
//! 12–16 bytes.

use super::{DaveError, leb128};

/// The marker that ends every DAVE frame.
pub const MARKER: [u8; 2] = [0xFA, 0xFA];
/// The truncated AES-GCM tag (NIST SP 800-38D short tag) carried in a frame.
pub const TAG_LEN: usize = 8;
/// The smallest supplemental section: tag, size byte and marker (a frame needs a nonce too).
pub const MIN_SUPPLEMENTAL: usize = TAG_LEN + 1 + MARKER.len();
/// The most a frame without unencrypted ranges adds to its payload: tag, a five-byte nonce, the
/// size byte and the marker.
pub const MAX_OVERHEAD: usize = TAG_LEN + 5 + 1 + MARKER.len();

/// A frame that passed the protocol-frame check, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame<'a> {
    /// The frame body before the supplemental section: the ciphertext, with any unencrypted
    /// ranges in place.
    pub body: &'a [u8],
    /// The truncated tag.
    pub tag: [u8; TAG_LEN],
    /// The 32-bit frame nonce; its top byte is the ratchet generation (modulo 256).
    pub nonce: u32,
    /// The encoded unencrypted ranges (ULEB128 offset/length pairs, already validated against
    /// the body); empty for Opus.
    pub ranges: &'a [u8],
}

impl ParsedFrame<'_> {
    /// Whether parts of the body are sent in the clear (never for Opus).
    pub fn has_unencrypted_ranges(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// The low eight bits of the frame's ratchet generation.
    pub fn generation_byte(&self) -> u8 {
        (self.nonce >> 24) as u8
    }
}

/// The protocol-frame check of libdave and davey: at least [`MIN_SUPPLEMENTAL`] bytes, ends in
/// `FA FA`, a supplemental size that fits the frame, a nonce that parses (and fits 32 bits) and
/// well-formed, ordered unencrypted ranges inside the body. Anything else is an error (a
/// plaintext frame, or garbage), never a panic.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame<'_>, DaveError> {
    let len = frame.len();
    if len < MIN_SUPPLEMENTAL {
        return Err(DaveError::FrameTooShort { len });
    }
    if frame[len - MARKER.len()..] != MARKER {
        return Err(DaveError::NoMarker);
    }
    let supplemental = usize::from(frame[len - MARKER.len() - 1]);
    if supplemental < MIN_SUPPLEMENTAL || supplemental > len {
        return Err(DaveError::BadSupplementalSize {
            size: supplemental as u8,
            frame_len: len,
        });
    }
    let (body, trailer) = frame.split_at(len - supplemental);
    let (tag, rest) = trailer.split_at(TAG_LEN);
    // Between the tag and the size byte: the nonce, then the ranges.
    let variable = &rest[..rest.len() - 1 - MARKER.len()];
    let (nonce, nonce_len) = leb128::read(variable).ok_or(DaveError::BadNonce)?;
    let nonce = u32::try_from(nonce).map_err(|_| DaveError::BadNonce)?;
    let ranges = &variable[nonce_len..];
    validate_ranges(ranges, body.len())?;
    let mut tag_bytes = [0u8; TAG_LEN];
    tag_bytes.copy_from_slice(tag);
    Ok(ParsedFrame {
        body,
        tag: tag_bytes,
        nonce,
        ranges,
    })
}

/// Each range must end at or before the next one starts, and the last inside the body.
fn validate_ranges(mut ranges: &[u8], body_len: usize) -> Result<(), DaveError> {
    let mut previous_end: Option<u64> = None;
    while !ranges.is_empty() {
        let (offset, a) = leb128::read(ranges).ok_or(DaveError::BadRanges)?;
        let (size, b) = leb128::read(&ranges[a..]).ok_or(DaveError::BadRanges)?;
        ranges = &ranges[a + b..];
        if previous_end.is_some_and(|end| end > offset) {
            return Err(DaveError::BadRanges);
        }
        let end = offset.checked_add(size).ok_or(DaveError::BadRanges)?;
        previous_end = Some(end);
    }
    match previous_end {
        Some(end) if end > body_len as u64 => Err(DaveError::BadRanges),
        _ => Ok(()),
    }
}

/// Writes the supplemental section for an Opus frame (no ranges) at `out[body_len..]`; returns
/// the whole frame's length.
pub(crate) fn write_trailer(
    out: &mut [u8],
    body_len: usize,
    tag: &[u8; TAG_LEN],
    nonce: u32,
) -> Result<usize, DaveError> {
    let nonce_len = leb128::encoded_len(u64::from(nonce));
    let supplemental = TAG_LEN + nonce_len + 1 + MARKER.len();
    let total = body_len + supplemental;
    let have = out.len();
    let trailer = out
        .get_mut(body_len..total)
        .ok_or(DaveError::BufferTooSmall {
            needed: total,
            have,
        })?;
    trailer[..TAG_LEN].copy_from_slice(tag);
    leb128::write(u64::from(nonce), &mut trailer[TAG_LEN..]).ok_or(DaveError::BufferTooSmall {
        needed: total,
        have,
    })?;
    trailer[supplemental - 3] = supplemental as u8;
    trailer[supplemental - 2..].copy_from_slice(&MARKER);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8], nonce: u32) -> Vec<u8> {
        let mut out = vec![0u8; body.len() + MAX_OVERHEAD];
        out[..body.len()].copy_from_slice(body);
        let n = write_trailer(&mut out, body.len(), &[0xAB; TAG_LEN], nonce).expect("room");
        out.truncate(n);
        out
    }

    #[test]
    fn written_frames_parse() {
        for nonce in [0u32, 1, 127, 128, 0x00FF_FFFF, 0x0100_0000, u32::MAX] {
            let f = frame(b"opus bytes", nonce);
            let nonce_len = leb128::encoded_len(u64::from(nonce));
            assert_eq!(f.len(), 10 + TAG_LEN + nonce_len + 3);
            assert_eq!(usize::from(f[f.len() - 3]), TAG_LEN + nonce_len + 3);
            let p = parse_frame(&f).expect("well formed");
            assert_eq!(p.body, b"opus bytes");
            assert_eq!(p.nonce, nonce);
            assert_eq!(p.tag, [0xAB; TAG_LEN]);
            assert!(!p.has_unencrypted_ranges());
            assert_eq!(p.generation_byte(), (nonce >> 24) as u8);
        }
        // An empty body is a valid frame.
        assert_eq!(parse_frame(&frame(b"", 5)).expect("valid").body, b"");
        // supp_size is 12 for small nonces, as PROTOCOL.md says.
        assert_eq!(frame(b"x", 1)[13 - 3], 12);
    }

    #[test]
    fn ranges_parse_and_are_checked() {
        // Body of 10 bytes, ranges (0,2) and (5,1).
        let mut f = vec![0u8; 10];
        f.extend_from_slice(&[0xCD; TAG_LEN]);
        f.push(3); // nonce
        f.extend_from_slice(&[0, 2, 5, 1]);
        f.push((TAG_LEN + 1 + 4 + 3) as u8);
        f.extend_from_slice(&MARKER);
        let p = parse_frame(&f).expect("valid ranges");
        assert_eq!(p.ranges, &[0, 2, 5, 1]);
        assert_eq!(p.body.len(), 10);
        assert!(p.has_unencrypted_ranges());

        for bad in [
            &[5u8, 1, 0, 2][..], // out of order
            &[0, 2, 1, 1],       // overlapping
            &[8, 3],             // past the body
            &[0x80],             // truncated offset
            &[1],                // offset without length
        ] {
            let mut f = vec![0u8; 10];
            f.extend_from_slice(&[0xCD; TAG_LEN]);
            f.push(3);
            f.extend_from_slice(bad);
            f.push((TAG_LEN + 1 + bad.len() + 3) as u8);
            f.extend_from_slice(&MARKER);
            assert_eq!(parse_frame(&f), Err(DaveError::BadRanges), "{bad:?}");
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(
            parse_frame(&[]),
            Err(DaveError::FrameTooShort { len: 0 })
        ));
        assert!(matches!(
            parse_frame(&[0xF8, 0xFF, 0xFE]),
            Err(DaveError::FrameTooShort { len: 3 })
        ));
        assert_eq!(parse_frame(&[0u8; 40]), Err(DaveError::NoMarker));
        let good = frame(b"some opus payload", 0x1234);
        // Every truncation from the front either fails or still parses consistently, and every
        // truncation from the back loses the marker or the size.
        for cut in 1..good.len() {
            let tail = &good[cut..];
            if let Ok(p) = parse_frame(tail) {
                assert_eq!(p.nonce, 0x1234);
                assert_eq!(p.body, &good[cut..good.len() - 13]);
            }
            assert!(parse_frame(&good[..good.len() - cut]).is_err(), "cut {cut}");
        }
        // supp_size too small, too large.
        let mut f = good.clone();
        let at = f.len() - 3;
        f[at] = 10;
        assert!(matches!(
            parse_frame(&f),
            Err(DaveError::BadSupplementalSize { size: 10, .. })
        ));
        f[at] = 255;
        assert!(matches!(
            parse_frame(&f),
            Err(DaveError::BadSupplementalSize { size: 255, .. })
        ));
        // supp_size of exactly 11 leaves no room for a nonce.
        let mut f = vec![0u8; 20];
        f.extend_from_slice(&[1; TAG_LEN]);
        f.push(11);
        f.extend_from_slice(&MARKER);
        assert_eq!(parse_frame(&f), Err(DaveError::BadNonce));
        // A nonce beyond 32 bits.
        let mut f = vec![0u8; 4];
        f.extend_from_slice(&[1; TAG_LEN]);
        f.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]);
        f.push((TAG_LEN + 5 + 3) as u8);
        f.extend_from_slice(&MARKER);
        assert_eq!(parse_frame(&f), Err(DaveError::BadNonce));
    }

    #[test]
    fn trailer_needs_room() {
        let mut out = [0u8; 20];
        assert!(matches!(
            write_trailer(&mut out, 10, &[0; TAG_LEN], 1),
            Err(DaveError::BufferTooSmall {
                needed: 22,
                have: 20
            })
        ));
    }
}
