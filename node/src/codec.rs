//! Lavalink's binary track encoding (the `encoded` string of every track): base64 of one
//! Lavaplayer "message" — a big-endian `i32` header holding the flags in its top two bits and
//! the body's size in the other 30, then the body as Java's `DataOutput` writes it.
//!
//! Body, version 3 (flag bit 0 set, then a version byte): title, author (UTF), length (i64 ms),
//! identifier (UTF), isStream (bool), uri, artworkUrl, isrc (each a bool then a UTF when true),
//! sourceName (UTF), the source's own fields, and the position (i64 ms) as the last 8 bytes.
//! Version 2 has no artworkUrl/isrc, version 1 (no version byte) no uri either. "UTF" is Java's
//! modified UTF-8 behind a u16 byte length: NUL as two bytes, characters outside the BMP as two
//! three-byte surrogates.
//!
//! Tracks come from clients, so decoding is a parser of network input: every malformed input
//! is an error, never a panic (fuzz target `lavalink_track`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The version this node writes.
const VERSION: u8 = 3;
/// Header flag: a version byte follows.
const FLAG_VERSIONED: u32 = 1;
/// The header's size field has 30 bits.
const MAX_MESSAGE: usize = (1 << 30) - 1;

/// What a track is, as Lavalink's `info` object and binary encoding hold it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrackInfo {
    /// Title.
    pub title: String,
    /// Author (artist).
    pub author: String,
    /// Length in milliseconds (`i64::MAX` for a stream of unknown length, as Lavalink says).
    pub length: i64,
    /// What the source manager loads the track by (a path or a URL here).
    pub identifier: String,
    /// Whether it is a live stream.
    pub is_stream: bool,
    /// Where it can be found, if it has an address.
    pub uri: Option<String>,
    /// Its artwork's address.
    pub artwork_url: Option<String>,
    /// Its International Standard Recording Code.
    pub isrc: Option<String>,
    /// Which source manager made it (`local`, `http` here).
    pub source_name: String,
    /// Bytes a source manager wrote after `sourceName` (kept as they are, so tracks made by
    /// other nodes survive a round trip).
    pub source_data: Vec<u8>,
    /// Where to start, in milliseconds.
    pub position: i64,
}

/// Why an encoded track was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackCodecError {
    /// Not base64.
    #[error("the track is not valid base64")]
    Base64,
    /// The bytes end before the header's size, or a field runs past the message.
    #[error("the track is truncated")]
    Truncated,
    /// Bytes follow the message the header announces.
    #[error("the track has {0} bytes after its message")]
    Trailing(usize),
    /// A version this node does not know.
    #[error("unknown track version {0}")]
    UnknownVersion(u8),
    /// A text field is not valid modified UTF-8.
    #[error("a text field of the track is not valid modified UTF-8")]
    BadText,
    /// A boolean byte other than 0 or 1.
    #[error("a boolean field of the track is {0}")]
    BadBool(u8),
    /// A text field longer than Java's 65,535-byte limit (when encoding).
    #[error("a text field is longer than 65535 bytes encoded")]
    TextTooLong,
    /// The whole message is longer than the header can state (when encoding).
    #[error("the track is too long to encode")]
    MessageTooLong,
}

/// Encodes a track as Lavalink's base64 string (version 3).
pub fn encode(info: &TrackInfo) -> Result<String, TrackCodecError> {
    let mut body = vec![VERSION];
    write_text(&mut body, &info.title)?;
    write_text(&mut body, &info.author)?;
    body.extend_from_slice(&info.length.to_be_bytes());
    write_text(&mut body, &info.identifier)?;
    body.push(u8::from(info.is_stream));
    write_nullable(&mut body, info.uri.as_deref())?;
    write_nullable(&mut body, info.artwork_url.as_deref())?;
    write_nullable(&mut body, info.isrc.as_deref())?;
    write_text(&mut body, &info.source_name)?;
    body.extend_from_slice(&info.source_data);
    body.extend_from_slice(&info.position.to_be_bytes());
    if body.len() > MAX_MESSAGE {
        return Err(TrackCodecError::MessageTooLong);
    }
    let header = (FLAG_VERSIONED << 30) | body.len() as u32;
    let mut message = Vec::with_capacity(4 + body.len());
    message.extend_from_slice(&header.to_be_bytes());
    message.extend_from_slice(&body);
    Ok(STANDARD.encode(message))
}

/// Decodes Lavalink's base64 track string (versions 1 to 3).
pub fn decode(encoded: &str) -> Result<TrackInfo, TrackCodecError> {
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| TrackCodecError::Base64)?;
    decode_message(&bytes)
}

/// Decodes one binary message (the bytes under the base64).
pub fn decode_message(bytes: &[u8]) -> Result<TrackInfo, TrackCodecError> {
    let mut outer = Reader(bytes);
    let header = u32::from_be_bytes(outer.array()?);
    let size = (header & 0x3FFF_FFFF) as usize;
    let flags = header >> 30;
    let body = outer.take(size)?;
    if !outer.0.is_empty() {
        return Err(TrackCodecError::Trailing(outer.0.len()));
    }
    let mut r = Reader(body);
    let version = if flags & FLAG_VERSIONED != 0 {
        r.byte()?
    } else {
        1
    };
    if !(1..=VERSION).contains(&version) {
        return Err(TrackCodecError::UnknownVersion(version));
    }
    let title = r.text()?;
    let author = r.text()?;
    let length = i64::from_be_bytes(r.array()?);
    let identifier = r.text()?;
    let is_stream = r.bool()?;
    let uri = if version >= 2 { r.nullable()? } else { None };
    let (artwork_url, isrc) = if version >= 3 {
        (r.nullable()?, r.nullable()?)
    } else {
        (None, None)
    };
    let source_name = r.text()?;
    let rest = r.0;
    let Some(split) = rest.len().checked_sub(8) else {
        return Err(TrackCodecError::Truncated);
    };
    let (source_data, position) = rest.split_at(split);
    let position = i64::from_be_bytes(Reader(position).array()?);
    Ok(TrackInfo {
        title,
        author,
        length,
        identifier,
        is_stream,
        uri,
        artwork_url,
        isrc,
        source_name,
        source_data: source_data.to_vec(),
        position,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TrackCodecError> {
        if self.0.len() < n {
            return Err(TrackCodecError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TrackCodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, TrackCodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, TrackCodecError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(TrackCodecError::BadBool(other)),
        }
    }

    fn text(&mut self) -> Result<String, TrackCodecError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        from_modified_utf8(self.take(len)?)
    }

    fn nullable(&mut self) -> Result<Option<String>, TrackCodecError> {
        if self.bool()? {
            self.text().map(Some)
        } else {
            Ok(None)
        }
    }
}

fn write_text(out: &mut Vec<u8>, text: &str) -> Result<(), TrackCodecError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    for unit in text.encode_utf16() {
        match unit {
            0x0001..=0x007F => out.push(unit as u8),
            0x0000 | 0x0080..=0x07FF => {
                out.push(0xC0 | (unit >> 6) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
            _ => {
                out.push(0xE0 | (unit >> 12) as u8);
                out.push(0x80 | ((unit >> 6) & 0x3F) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
        }
    }
    let len = u16::try_from(out.len() - start - 2).map_err(|_| TrackCodecError::TextTooLong)?;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn write_nullable(out: &mut Vec<u8>, text: Option<&str>) -> Result<(), TrackCodecError> {
    match text {
        Some(text) => {
            out.push(1);
            write_text(out, text)
        }
        None => {
            out.push(0);
            Ok(())
        }
    }
}

fn from_modified_utf8(bytes: &[u8]) -> Result<String, TrackCodecError> {
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let cont = |b: Option<&u8>| match b {
        Some(&b) if b & 0xC0 == 0x80 => Ok(u16::from(b & 0x3F)),
        _ => Err(TrackCodecError::BadText),
    };
    while let Some(&a) = bytes.get(i) {
        if a & 0x80 == 0 {
            units.push(u16::from(a));
            i += 1;
        } else if a & 0xE0 == 0xC0 {
            units.push((u16::from(a & 0x1F) << 6) | cont(bytes.get(i + 1))?);
            i += 2;
        } else if a & 0xF0 == 0xE0 {
            units.push(
                (u16::from(a & 0x0F) << 12)
                    | (cont(bytes.get(i + 1))? << 6)
                    | cont(bytes.get(i + 2))?,
            );
            i += 3;
        } else {
            return Err(TrackCodecError::BadText);
        }
    }
    String::from_utf16(&units).map_err(|_| TrackCodecError::BadText)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TrackInfo {
        TrackInfo {
            title: "Beat — ünïcode 🎵 and \0 NUL".into(),
            author: "Unknown artist".into(),
            length: 212_000,
            identifier: "/music/beat.flac".into(),
            is_stream: false,
            uri: Some("/music/beat.flac".into()),
            artwork_url: None,
            isrc: Some("USUM71703861".into()),
            source_name: "local".into(),
            source_data: Vec::new(),
            position: 1_500,
        }
    }

    #[test]
    fn round_trips() {
        let info = sample();
        assert_eq!(decode(&encode(&info).unwrap()).unwrap(), info);
    }

    /// A track Lavalink 4 encoded (from its API documentation's example: a YouTube track).
    #[test]
    fn decodes_a_lavalink_track() {
        let encoded = "QAAAjQIAJVJpY2sgQXN0bGV5IC0gTmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXAADlJpY2tBc3RsZXlWRVZPAAAAAAADPCAAC2RRdzR3OVdnWGNRAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9ZFF3NHc5V2dYY1EAB3lvdXR1YmUAAAAAAAAAAA==";
        let info = decode(encoded).unwrap();
        assert_eq!(info.title, "Rick Astley - Never Gonna Give You Up");
        assert_eq!(info.author, "RickAstleyVEVO");
        assert_eq!(info.length, 212_000);
        assert_eq!(info.identifier, "dQw4w9WgXcQ");
        assert_eq!(info.source_name, "youtube");
        assert_eq!(
            info.uri.as_deref(),
            Some("https://www.youtube.com/watch?v=dQw4w9WgXcQ")
        );
        assert_eq!(info.position, 0);
        assert_eq!(decode(&encode(&info).unwrap()).unwrap(), info);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(decode("not base64!"), Err(TrackCodecError::Base64));
        assert_eq!(decode(""), Err(TrackCodecError::Truncated));
        let good = STANDARD.decode(encode(&sample()).unwrap()).unwrap();
        for cut in 0..good.len() {
            assert!(decode_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_message(&long), Err(TrackCodecError::Trailing(1)));
        let mut version = good.clone();
        version[4] = 9;
        assert_eq!(
            decode_message(&version),
            Err(TrackCodecError::UnknownVersion(9))
        );
    }

    #[test]
    fn overlong_text_is_refused_when_encoding() {
        let mut info = sample();
        info.title = "x".repeat(70_000);
        assert_eq!(encode(&info), Err(TrackCodecError::TextTooLong));
    }
}
