//! Checking media files at the door: before `play` joins a channel, `demo` starts its calls or
//! `render` creates its output, every file is opened and demuxed to its end (packets are read,
//! not decoded, so this costs a read of the file). A missing, empty, non-audio or truncated
//! file then fails with one line naming it, instead of a library log line, an error repeated
//! twice, or a track that silently stops early.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::TrackType;
use symphonia::core::io::ReadBytes as _;
use symphonia::core::units::{Duration as Ticks, TimeBase};

/// Why a file cannot be played.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaProblem {
    /// The file cannot be opened or read.
    #[error("cannot open: {0}")]
    Unreadable(#[source] std::io::Error),
    /// A directory was named where a file was expected.
    #[error("a directory, not an audio file")]
    Directory,
    /// The file has no bytes at all.
    #[error("empty file (0 bytes)")]
    Empty,
    /// No known container was found in the file.
    #[error("not an audio file (no wav, flac, mp3, ogg vorbis or ogg opus stream found)")]
    NotAudio,
    /// A container without an audio track, or an audio codec Quaver cannot decode.
    #[error("no audio track Quaver can decode")]
    NoPlayableTrack,
    /// The file stops short of the length its header declares.
    #[error("truncated: it ends after {ends_after_seconds:.1} s of its {declared_seconds:.1} s")]
    TruncatedShort {
        /// Where the audio that is there ends.
        ends_after_seconds: f64,
        /// The length the file's header declares.
        declared_seconds: f64,
    },
    /// The file is cut off in the middle of a packet or page.
    #[error("truncated: it is cut off in the middle of a packet after {bytes} bytes")]
    TruncatedMidPacket {
        /// The file's size.
        bytes: u64,
    },
    /// The container is damaged beyond what a player would skip.
    #[error("damaged: unreadable from byte {byte}")]
    Damaged {
        /// Where the damage starts (as near as the container tells).
        byte: u64,
    },
}

/// Checks that `path` is a whole audio file Quaver can play.
pub fn check(path: &Path) -> Result<(), crate::Error> {
    check_file(path).map_err(|problem| crate::Error::Media {
        path: path.to_path_buf(),
        problem,
    })
}

/// Checks every file in order, stopping at the first bad one.
pub fn check_all<'a>(
    paths: impl IntoIterator<Item = &'a std::path::PathBuf>,
) -> Result<(), crate::Error> {
    paths.into_iter().try_for_each(|path| check(path))
}

fn check_file(path: &Path) -> Result<(), MediaProblem> {
    let mut file = File::open(path).map_err(MediaProblem::Unreadable)?;
    let metadata = file.metadata().map_err(MediaProblem::Unreadable)?;
    if metadata.is_dir() {
        return Err(MediaProblem::Directory);
    }
    let bytes = metadata.len();
    if bytes == 0 {
        return Err(MediaProblem::Empty);
    }
    let mut start = [0_u8; 64];
    let filled = read_up_to(&mut file, &mut start).map_err(MediaProblem::Unreadable)?;
    let start = &start[..filled];
    if start.starts_with(b"OggS") {
        file.seek(SeekFrom::Start(0))
            .map_err(MediaProblem::Unreadable)?;
        check_ogg_pages(&mut BufReader::new(&mut file), bytes)?;
        // Ogg Opus is read by the engine's own Ogg reader, not symphonia; its pages are whole.
        if start.windows(8).any(|w| w == b"OpusHead") {
            return Ok(());
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(MediaProblem::Unreadable)?;
    demux_to_end(path, file, bytes)
}

fn read_up_to(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Walks the Ogg pages (RFC 3533 §6) by their headers: a file cut anywhere but at a page
/// boundary has a last page whose header or body runs past the end.
fn check_ogg_pages(file: &mut (impl Read + Seek), bytes: u64) -> Result<(), MediaProblem> {
    const HEADER: u64 = 27;
    let truncated = MediaProblem::TruncatedMidPacket { bytes };
    let mut page = 0_u64;
    let mut header = [0_u8; HEADER as usize];
    let mut lacing = [0_u8; 255];
    while page < bytes {
        if bytes - page < HEADER {
            return Err(truncated);
        }
        file.seek(SeekFrom::Start(page))
            .map_err(MediaProblem::Unreadable)?;
        file.read_exact(&mut header)
            .map_err(MediaProblem::Unreadable)?;
        if &header[..4] != b"OggS" {
            return Err(MediaProblem::Damaged { byte: page });
        }
        let segments = usize::from(header[26]);
        if bytes - page - HEADER < segments as u64 {
            return Err(truncated);
        }
        file.read_exact(&mut lacing[..segments])
            .map_err(MediaProblem::Unreadable)?;
        let body: u64 = lacing[..segments].iter().map(|&l| u64::from(l)).sum();
        let end = page + HEADER + segments as u64 + body;
        if end > bytes {
            return Err(truncated);
        }
        page = end;
    }
    Ok(())
}

/// Probes the container, checks its audio track has a decoder, and reads every packet: a
/// stream that ends inside a packet, or before the length its header declares, is truncated.
fn demux_to_end(path: &Path, file: File, bytes: u64) -> Result<(), MediaProblem> {
    let mut reader = quaver::engine::probe_container(path, file).map_err(|error| match error {
        SymphoniaError::IoError(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
            MediaProblem::Unreadable(e)
        }
        _ => MediaProblem::NotAudio,
    })?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or(MediaProblem::NoPlayableTrack)?;
    let track_id = track.id;
    let time_base = track.time_base;
    let declared = track.duration;
    let start = track.start_ts;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(MediaProblem::NoPlayableTrack)?;
    symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|_| MediaProblem::NoPlayableTrack)?;
    let mut end: Option<i64> = None;
    loop {
        match reader.next_packet() {
            Ok(Some(packet)) => {
                if packet.track_id == track_id {
                    let dur = i64::try_from(packet.dur.get()).unwrap_or(i64::MAX);
                    let packet_end = packet.pts.get().saturating_add(dur);
                    end = Some(end.map_or(packet_end, |e| e.max(packet_end)));
                }
            }
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Say how much is there, when the header says how much should be.
                return Err(
                    short_of_declared(time_base, declared, start.get(), end.unwrap_or(0))
                        .unwrap_or(MediaProblem::TruncatedMidPacket { bytes }),
                );
            }
            Err(SymphoniaError::IoError(e)) => return Err(MediaProblem::Unreadable(e)),
            Err(SymphoniaError::ResetRequired) => {}
            // A bad packet is skipped by players (and by the engine); keep reading.
            Err(SymphoniaError::DecodeError(_)) => {}
            Err(_) => {
                return Err(MediaProblem::Damaged {
                    byte: reader.into_inner().pos(),
                });
            }
        }
    }
    let Some(end) = end else {
        return Err(MediaProblem::NoPlayableTrack);
    };
    match short_of_declared(time_base, declared, start.get(), end) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The truncation, if the audio ending at `end` stops short of the `declared` length.
fn short_of_declared(
    time_base: Option<TimeBase>,
    declared: Option<Ticks>,
    start: i64,
    end: i64,
) -> Option<MediaProblem> {
    let (time_base, declared) = (time_base?, declared?);
    let played = Ticks::new(u64::try_from(end.saturating_sub(start)).unwrap_or(0));
    let ended = time_base.calc_duration_saturating(played).as_secs_f64();
    let declared = time_base.calc_duration_saturating(declared).as_secs_f64();
    // Encoder padding and rounding differ by a frame or so, never by this much.
    let slack = (declared * 0.01).max(0.1);
    (ended + slack < declared).then_some(MediaProblem::TruncatedShort {
        ends_after_seconds: ended,
        declared_seconds: declared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tracks")
            .join(name)
    }

    #[test]
    fn whole_files_pass() {
        for name in ["bass.mp3", "beat.flac", "chords.ogg"] {
            assert!(check_file(&track(name)).is_ok(), "{name}");
        }
    }

    #[test]
    fn an_ogg_stream_cut_at_a_page_boundary_is_whole_and_cut_inside_a_page_is_not() {
        let ogg = std::fs::read(track("chords.ogg")).unwrap();
        // The end of the second page, from its header.
        let page_end = |at: usize| {
            let segments = usize::from(ogg[at + 26]);
            let body: usize = ogg[at + 27..at + 27 + segments]
                .iter()
                .map(|&l| usize::from(l))
                .sum();
            at + 27 + segments + body
        };
        let boundary = page_end(page_end(0));
        assert_eq!(&ogg[boundary..boundary + 4], b"OggS");
        let walk =
            |bytes: &[u8]| check_ogg_pages(&mut std::io::Cursor::new(bytes), bytes.len() as u64);
        assert!(walk(&ogg[..boundary]).is_ok());
        assert!(matches!(
            walk(&ogg[..boundary + 30]),
            Err(MediaProblem::TruncatedMidPacket { bytes }) if bytes == boundary as u64 + 30
        ));
        assert!(matches!(
            walk(&ogg[..boundary - 1]),
            Err(MediaProblem::TruncatedMidPacket { .. })
        ));
        let mut damaged = ogg[..boundary + 30].to_vec();
        damaged[boundary] = b'X';
        assert!(matches!(
            walk(&damaged),
            Err(MediaProblem::Damaged { byte }) if byte == boundary as u64
        ));
    }
}
