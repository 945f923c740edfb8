//! Reading an Opus packet's framing (RFC 6716 §3) without libopus: its duration, its first
//! frame and whether that frame carries in-band FEC (LBRR) data.
//!
//! The playout buffer checks each packet on push (a Discord stream advances 960 samples per
//! packet, so anything but 20 ms would break the timeline), and the decoder asks "does the next
//! packet carry LBRR?" before choosing FEC over PLC. libopus 1.3 (Debian's) has no
//! `opus_packet_has_lbrr` (added in 1.5), so the check is done here the way 1.5 does it.

/// The most bytes one Opus frame may hold (RFC 6716 §3.2.1, R2).
pub const MAX_FRAME_BYTES: usize = 1275;

/// 48 kHz samples per channel in a 20 ms packet, the only duration the buffer accepts.
pub const SAMPLES_PER_PACKET: u32 = 960;

/// Why a packet's framing is not valid Opus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// Zero bytes: not even a table-of-contents byte.
    #[error("empty Opus packet")]
    Empty,
    /// A frame length, count or padding runs past the end, or breaks one of RFC 6716's rules.
    #[error("malformed Opus packet framing")]
    Malformed,
}

/// What the framing of one Opus packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Samples per channel at 48 kHz the whole packet decodes to.
    pub samples: u32,
    /// Whether the first frame carries LBRR (in-band FEC) data for the previous packet.
    pub has_lbrr: bool,
}

/// Samples per channel at 48 kHz of one frame of TOC configuration `config` (0–31).
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only: 10, 20, 40, 60 ms per bandwidth.
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config & 1)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    }
}

/// Reads a frame length (1 or 2 bytes, RFC 6716 §3.2.1) from the front of `bytes`.
fn frame_length(bytes: &[u8]) -> Result<(usize, usize), FramingError> {
    match bytes {
        [first @ 0..=251, ..] => Ok((usize::from(*first), 1)),
        [first, second, ..] => Ok((usize::from(*second) * 4 + usize::from(*first), 2)),
        _ => Err(FramingError::Malformed),
    }
}

/// Parses the framing of `packet`; every rule libopus's `opus_packet_parse` enforces is
/// enforced here, so a packet accepted here fails in libopus only for its coded content.
pub fn parse(packet: &[u8]) -> Result<PacketInfo, FramingError> {
    let (&toc, rest) = packet.split_first().ok_or(FramingError::Empty)?;
    let config = toc >> 3;
    let per_frame = frame_samples(config);
    // (number of frames, first frame)
    let (count, first): (u32, &[u8]) = match toc & 3 {
        0 => (1, rest),
        1 => {
            if rest.len() % 2 != 0 {
                return Err(FramingError::Malformed);
            }
            (2, &rest[..rest.len() / 2])
        }
        2 => {
            let (len, used) = frame_length(rest)?;
            let body = &rest[used..];
            if len > body.len() || body.len() - len > MAX_FRAME_BYTES {
                return Err(FramingError::Malformed);
            }
            (2, &body[..len])
        }
        _ => code3(rest, per_frame)?,
    };
    if first.len() > MAX_FRAME_BYTES {
        return Err(FramingError::Malformed);
    }
    let samples = per_frame * count;
    Ok(PacketInfo {
        samples,
        has_lbrr: has_lbrr(toc, per_frame, first),
    })
}

/// Code 3: a frame-count byte, optional padding, then CBR or VBR frames (RFC 6716 §3.2.5).
fn code3(rest: &[u8], per_frame: u32) -> Result<(u32, &[u8]), FramingError> {
    let (&count_byte, mut rest) = rest.split_first().ok_or(FramingError::Malformed)?;
    let count = u32::from(count_byte & 0x3F);
    let vbr = count_byte & 0x80 != 0;
    // R5: at least one frame, and at most 120 ms of audio.
    if count == 0 || count * per_frame > 5_760 {
        return Err(FramingError::Malformed);
    }
    if count_byte & 0x40 != 0 {
        let mut padding = 0usize;
        loop {
            let (&byte, after) = rest.split_first().ok_or(FramingError::Malformed)?;
            rest = after;
            padding += if byte == 255 { 254 } else { usize::from(byte) };
            if byte != 255 {
                break;
            }
        }
        rest = rest
            .len()
            .checked_sub(padding)
            .map(|end| &rest[..end])
            .ok_or(FramingError::Malformed)?;
    }
    if vbr {
        let mut lengths_total = 0usize;
        let mut first_len = None;
        for _ in 0..count - 1 {
            let (len, used) = frame_length(rest)?;
            rest = &rest[used..];
            if len > MAX_FRAME_BYTES {
                return Err(FramingError::Malformed);
            }
            first_len.get_or_insert(len);
            lengths_total += len;
        }
        // The last frame takes what is left, and must be non-negative and within the limit.
        let last = rest
            .len()
            .checked_sub(lengths_total)
            .ok_or(FramingError::Malformed)?;
        if last > MAX_FRAME_BYTES {
            return Err(FramingError::Malformed);
        }
        let first = first_len.unwrap_or(last);
        Ok((count, &rest[..first]))
    } else {
        let n = count as usize;
        if rest.len() % n != 0 || rest.len() / n > MAX_FRAME_BYTES {
            return Err(FramingError::Malformed);
        }
        Ok((count, &rest[..rest.len() / n]))
    }
}

/// Whether `first` (the packet's first frame) carries LBRR data, as libopus 1.5's
/// `opus_packet_has_lbrr` decides it: in SILK and hybrid modes the frame's first range-coded
/// symbols are equiprobable bits (the voice-activity flags of each 20 ms SILK frame, then the
/// LBRR flag, per channel), so they can be read straight from the first byte. CELT-only
/// packets never carry LBRR.
fn has_lbrr(toc: u8, per_frame: u32, first: &[u8]) -> bool {
    let config = toc >> 3;
    let Some(&byte) = first.first() else {
        return false;
    };
    if config >= 16 {
        return false;
    }
    // SILK frames inside one Opus frame: 1 for 10/20 ms, 2 for 40 ms, 3 for 60 ms.
    let silk_frames = (per_frame / 960).max(1);
    let mid = (byte >> (7 - silk_frames)) & 1 == 1;
    let stereo = toc & 0x04 != 0;
    let side = stereo && (byte >> (6 - 2 * silk_frames)) & 1 == 1;
    mid || side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_frame_is_one_20_ms_celt_frame_without_lbrr() {
        let info = parse(&[0xF8, 0xFF, 0xFE]).expect("valid");
        assert_eq!(info.samples, 960);
        assert!(!info.has_lbrr);
    }

    #[test]
    fn durations_follow_the_toc() {
        // SILK NB 60 ms, code 0.
        assert_eq!(parse(&[3 << 3, 0x00]).expect("valid").samples, 2880);
        // CELT FB 10 ms, code 1 (two equal frames) = 20 ms.
        assert_eq!(parse(&[(30 << 3) | 1, 1, 2]).expect("valid").samples, 960);
        // Code 1 with an odd payload is malformed.
        assert_eq!(
            parse(&[(30 << 3) | 1, 1, 2, 3]),
            Err(FramingError::Malformed)
        );
        // Code 2: first frame 1 byte long, second takes the rest.
        assert_eq!(
            parse(&[(31 << 3) | 2, 1, 9, 8, 7]).expect("valid").samples,
            1920
        );
        assert_eq!(parse(&[(31 << 3) | 2, 9, 1]), Err(FramingError::Malformed));
        // Code 3, CBR, 3 frames of 2.5 ms, padding 2 bytes.
        assert_eq!(
            parse(&[(16 << 3) | 3, 0x40 | 3, 2, 1, 1, 1, 0, 0])
                .expect("valid")
                .samples,
            360
        );
        // Code 3 with zero frames, or more than 120 ms.
        assert_eq!(parse(&[(16 << 3) | 3, 0]), Err(FramingError::Malformed));
        assert_eq!(parse(&[(3 << 3) | 3, 3]), Err(FramingError::Malformed));
        assert_eq!(parse(&[]), Err(FramingError::Empty));
    }

    #[test]
    fn lbrr_flag_is_read_from_the_first_silk_byte() {
        // SILK WB 20 ms mono: VAD bit then the LBRR bit.
        let toc = 9 << 3;
        assert!(parse(&[toc, 0b0100_0000]).expect("valid").has_lbrr);
        assert!(!parse(&[toc, 0b1000_0000]).expect("valid").has_lbrr);
        // Stereo: the side channel's LBRR bit is the fourth.
        assert!(parse(&[toc | 4, 0b0001_0000]).expect("valid").has_lbrr);
        // A DTX frame (no bytes) carries nothing.
        assert!(!parse(&[toc]).expect("valid").has_lbrr);
    }
}
